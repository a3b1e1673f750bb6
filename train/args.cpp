#include "train/args.h"

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "kernels/common.h"
#include "model/config.h"

namespace tune {
namespace {

struct Option {
    std::string flag;     // "--lr"
    std::string metavar;  // "" for a switch
    std::string help;
    std::function<std::string(const TrainArgs&)> show;  // current (default) value for --help
    std::function<void(TrainArgs&, const std::string&)> set;
};

int to_int(const std::string& flag, const std::string& v, long lo, long hi) {
    errno = 0;
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || errno) throw UsageError(flag + ": expected an integer, got '" + v + "'");
    if (x < lo || x > hi)
        throw UsageError(flag + ": " + v + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return (int)x;
}

float to_float(const std::string& flag, const std::string& v, double lo, double hi) {
    errno = 0;
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end || errno || !std::isfinite(x)) throw UsageError(flag + ": expected a number, got '" + v + "'");
    if (x < lo || x > hi) {
        std::ostringstream s;
        s << flag << ": " << v << " is out of range [" << lo << ", " << hi << "]";
        throw UsageError(s.str());
    }
    return (float)x;
}

std::vector<std::string> split_list(const std::string& v) {
    std::vector<std::string> out;
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
    return s.empty() ? "(none)" : s;
}

std::string num(double v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

const std::vector<Option>& options() {
    static const std::vector<Option> opts = {
        {"--device", "cpu|cuda|auto", "backend; auto picks cuda when a GPU is present, else cpu",
         [](const TrainArgs& a) { return a.device; },
         [](TrainArgs& a, const std::string& v) {
             if (v != "cpu" && v != "cuda" && v != "auto")
                 throw UsageError("--device: expected cpu, cuda or auto, got '" + v + "'");
             a.device = v;
         }},
        {"--precision", "fp32|bf16|fp16", "compute precision (the cpu backend computes in fp32)",
         [](const TrainArgs& a) { return a.precision; },
         [](TrainArgs& a, const std::string& v) {
             if (v != "fp32" && v != "bf16" && v != "fp16")
                 throw UsageError("--precision: expected fp32, bf16 or fp16, got '" + v + "'");
             a.precision = v;
         }},
        {"--model", "PRESET", "model to train from random initialisation (tiny, small, gpt2, gpt2-medium, ...)",
         [](const TrainArgs& a) { return a.model; },
         [](TrainArgs& a, const std::string& v) {
             preset_config(v);  // throws for an unknown name
             a.model = v;
         }},
        {"--init", "CKPT", "start from the weights in this checkpoint instead of random initialisation",
         [](const TrainArgs& a) { return a.init.empty() ? "(none)" : a.init; },
         [](TrainArgs& a, const std::string& v) { a.init = v; }},
        {"--resume", "CKPT", "continue exactly where a resume checkpoint left off (same options otherwise)",
         [](const TrainArgs& a) { return a.resume.empty() ? "(none)" : a.resume; },
         [](TrainArgs& a, const std::string& v) { a.resume = v; }},
        {"--train-data", "FILES", "comma-separated token shards to train on (made by ./prepare)",
         [](const TrainArgs& a) { return join(a.train_data); },
         [](TrainArgs& a, const std::string& v) { a.train_data = split_list(v); }},
        {"--val-data", "FILES", "comma-separated token shards for validation loss",
         [](const TrainArgs& a) { return join(a.val_data); },
         [](TrainArgs& a, const std::string& v) { a.val_data = split_list(v); }},
        {"--sequential", "", "read training windows in file order instead of shuffling",
         [](const TrainArgs& a) { return a.shuffle ? "off" : "on"; },
         [](TrainArgs& a, const std::string&) { a.shuffle = false; }},
        {"--batch", "B", "sequences per micro-batch", [](const TrainArgs& a) { return std::to_string(a.batch); },
         [](TrainArgs& a, const std::string& v) { a.batch = to_int("--batch", v, 1, 1 << 20); }},
        {"--seq", "T", "tokens per sequence (at most the model's block size)",
         [](const TrainArgs& a) { return std::to_string(a.seq); },
         [](TrainArgs& a, const std::string& v) { a.seq = to_int("--seq", v, 1, 1 << 20); }},
        {"--grad-accum", "K", "micro-batches per optimizer step",
         [](const TrainArgs& a) { return std::to_string(a.grad_accum); },
         [](TrainArgs& a, const std::string& v) { a.grad_accum = to_int("--grad-accum", v, 1, 1 << 20); }},
        {"--steps", "N", "optimizer steps in the whole run", [](const TrainArgs& a) { return std::to_string(a.steps); },
         [](TrainArgs& a, const std::string& v) { a.steps = to_int("--steps", v, 1, INT_MAX); }},
        {"--halt-at", "STEP", "stop once STEP steps are done, writing a resume checkpoint (0: run to the end)",
         [](const TrainArgs& a) { return std::to_string(a.halt_at); },
         [](TrainArgs& a, const std::string& v) { a.halt_at = to_int("--halt-at", v, 0, INT_MAX); }},
        {"--lr", "LR", "peak learning rate", [](const TrainArgs& a) { return num(a.sched.lr); },
         [](TrainArgs& a, const std::string& v) { a.sched.lr = to_float("--lr", v, 1e-12, 10); }},
        {"--schedule", "constant|cosine", "learning-rate schedule after warmup",
         [](const TrainArgs& a) { return a.sched.kind; },
         [](TrainArgs& a, const std::string& v) {
             a.sched.kind = v;
             validate_schedule(a.sched);
         }},
        {"--warmup", "N", "steps of linear warmup", [](const TrainArgs& a) { return std::to_string(a.sched.warmup); },
         [](TrainArgs& a, const std::string& v) { a.sched.warmup = to_int("--warmup", v, 0, INT_MAX); }},
        {"--min-lr-frac", "F", "cosine floor as a fraction of --lr",
         [](const TrainArgs& a) { return num(a.sched.min_frac); },
         [](TrainArgs& a, const std::string& v) { a.sched.min_frac = to_float("--min-lr-frac", v, 0, 1); }},
        {"--beta1", "B1", "Adam beta1", [](const TrainArgs& a) { return num(a.adam.beta1); },
         [](TrainArgs& a, const std::string& v) { a.adam.beta1 = to_float("--beta1", v, 0, 0.999999); }},
        {"--beta2", "B2", "Adam beta2", [](const TrainArgs& a) { return num(a.adam.beta2); },
         [](TrainArgs& a, const std::string& v) { a.adam.beta2 = to_float("--beta2", v, 0, 0.999999999); }},
        {"--eps", "EPS", "Adam epsilon", [](const TrainArgs& a) { return num(a.adam.eps); },
         [](TrainArgs& a, const std::string& v) { a.adam.eps = to_float("--eps", v, 1e-30, 1); }},
        {"--weight-decay", "WD", "decoupled weight decay on 2-D matmul weights",
         [](const TrainArgs& a) { return num(a.adam.weight_decay); },
         [](TrainArgs& a, const std::string& v) { a.adam.weight_decay = to_float("--weight-decay", v, 0, 10); }},
        {"--decay-embeddings", "", "also apply weight decay to wte and wpe",
         [](const TrainArgs& a) { return a.adam.decay_embeddings ? "on" : "off"; },
         [](TrainArgs& a, const std::string&) { a.adam.decay_embeddings = true; }},
        {"--grad-clip", "NORM", "clip the global gradient norm to NORM (0: off)",
         [](const TrainArgs& a) { return num(a.grad_clip); },
         [](TrainArgs& a, const std::string& v) { a.grad_clip = to_float("--grad-clip", v, 0, 1e9); }},
        {"--max-bad-steps", "N", "stop after N consecutive steps with a NaN/Inf loss or gradient (each is skipped)",
         [](const TrainArgs& a) { return std::to_string(a.max_bad_steps); },
         [](TrainArgs& a, const std::string& v) { a.max_bad_steps = to_int("--max-bad-steps", v, 1, INT_MAX); }},
        {"--seed", "S", "seed for initialisation and data order", [](const TrainArgs& a) { return std::to_string(a.seed); },
         [](TrainArgs& a, const std::string& v) { a.seed = (uint64_t)to_int("--seed", v, 0, INT_MAX); }},
        {"--val-every", "N", "validation loss every N steps (0: only at the end)",
         [](const TrainArgs& a) { return std::to_string(a.val_every); },
         [](TrainArgs& a, const std::string& v) { a.val_every = to_int("--val-every", v, 0, INT_MAX); }},
        {"--val-batches", "M", "micro-batches per validation", [](const TrainArgs& a) { return std::to_string(a.val_batches); },
         [](TrainArgs& a, const std::string& v) { a.val_batches = to_int("--val-batches", v, 1, INT_MAX); }},
        {"--ckpt-every", "N", "write a resume checkpoint every N steps (0: only at the end)",
         [](const TrainArgs& a) { return std::to_string(a.ckpt_every); },
         [](TrainArgs& a, const std::string& v) { a.ckpt_every = to_int("--ckpt-every", v, 0, INT_MAX); }},
        {"--out", "DIR", "run directory: metrics.jsonl, loss.svg, model.ckpt, resume.ckpt",
         [](const TrainArgs& a) { return a.out_dir; }, [](TrainArgs& a, const std::string& v) { a.out_dir = v; }},
        {"--quiet", "", "no per-step progress lines", [](const TrainArgs& a) { return a.quiet ? "on" : "off"; },
         [](TrainArgs& a, const std::string&) { a.quiet = true; }},
    };
    return opts;
}

}  // namespace

bool parse_train_args(int argc, char** argv, TrainArgs& a) {
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i], value;
        if (arg == "--help" || arg == "-h") return false;
        bool has_inline = false;
        if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
            value = arg.substr(eq + 1);
            arg = arg.substr(0, eq);
            has_inline = true;
        }
        const Option* opt = nullptr;
        for (const Option& o : options())
            if (o.flag == arg) opt = &o;
        if (!opt) throw UsageError("unknown option '" + arg + "' (see ./train --help)");
        if (!opt->metavar.empty() && !has_inline) {
            if (i + 1 >= argc) throw UsageError(arg + ": missing value " + opt->metavar);
            value = argv[++i];
        }
        opt->set(a, value);
    }
    return true;
}

std::string train_help() {
    TrainArgs defaults;
    std::ostringstream s;
    s << "usage: bin/train [options]\n"
         "Trains or fine-tunes a GPT-2 model on token shards (see ./prepare) and writes a run directory.\n\n"
         "options (default in brackets):\n";
    for (const Option& o : options()) {
        std::string left = "  " + o.flag + (o.metavar.empty() ? "" : " " + o.metavar);
        s << left << std::string(left.size() < 30 ? 30 - left.size() : 1, ' ') << o.help << " [" << o.show(defaults)
          << "]\n";
    }
    s << "  --help                      this text\n";
    return s.str();
}

void validate_train_args(const TrainArgs& a) {
    validate_schedule(a.sched);
    if (a.halt_at > a.steps)
        throw UsageError("--halt-at: " + std::to_string(a.halt_at) + " is beyond --steps " + std::to_string(a.steps));
    if (a.sched.warmup > a.steps)
        throw UsageError("--warmup: " + std::to_string(a.sched.warmup) + " is more than --steps " +
                         std::to_string(a.steps));
    if (!a.init.empty() && !a.resume.empty()) throw UsageError("--init and --resume: give one, not both");
}

}  // namespace tune
