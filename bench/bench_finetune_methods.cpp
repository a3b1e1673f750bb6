// The fine-tuning methods side by side: every method starts from the same base model (pretrained here on the
// default job's synthetic corpus), fine-tunes on the same task (pick the animal, loss on the answers only)
// for the same number of steps, and is measured for what it costs and what it keeps:
//   trainable parameters, gradient + optimizer memory, time per step, held-out task accuracy (greedy exact
//   match on prompts never trained on), and the base-corpus loss before -> after (how much it forgot).
// Writes runs/methods/results.json and the table in docs/finetuning.md (between its markers; --windows documents,
// single and isolated have a table each).
//
// Not a Google Benchmark: each "iteration" is a whole training run and the result is a table of outcomes,
// not a timing distribution. On the CPU machine (tiny model) it takes about 15 minutes; on a GPU run it
// with --device cuda --model small (or larger) and more steps.
//
//   build/bench/bench_finetune_methods [--device cpu|cuda] [--model tiny] [--base-steps 150] [--steps 700]
//                                      [--only full,lora,...] [--doc docs/finetuning.md] [--out runs/methods]
//                                      [--windows fixed|documents|single|isolated]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/fileio.h"
#include "train/cli.h"
#include "train/default_job.h"
#include "train/select.h"
#include "train/trainer.h"

using namespace tune;

namespace {

std::string slurp_text(const std::string& path) {
    const std::vector<uint8_t> b = read_file_bytes(path);
    return std::string(b.begin(), b.end());
}

struct Method {
    std::string key, name, settings;
    std::function<void(TrainArgs&)> apply;
};

// One method over every fine-tuning seed. With one tiny model and one synthetic task, a method's accuracy
// can swing by tens of points with nothing but the data order changed, so the table reports the spread.
struct Result {
    std::string key, name, settings;
    size_t trainable = 0, grad_opt_bytes = 0;
    double base_before = 0;
    std::vector<double> ms_per_step, accuracy, base_after, task_after;  // one per seed
    std::vector<double> accuracy_eot;  // the prompts after an <|endoftext|> (the document-window table's first column)
};

double mean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0 : s / (double)v.size();
}
double lowest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double highest(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// The knobs a sweep may turn (defaults: the values the table uses).
struct Knobs {
    float l2sp = 0.01f, ewc = 1e3f, prompt_lr = 3e-2f, ptune_lr = 1e-2f, prefix_lr = 1e-2f, lora_lr = 1e-2f;
};

std::string num(float v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return b;
}

std::vector<Method> methods(int steps, int L, const std::string& fisher, const DefaultData& d, const Knobs& k) {
    const int period = std::max(1, steps / (L + 2));  // every block and then the embeddings get their turn
    return {
        {"full", "Full fine-tuning", "lr 5e-3", [](TrainArgs&) {}},
        {"top1", "Frozen except the top block", "--train-top 1", [](TrainArgs& a) { a.train_top = 1; }},
        {"mlp", "Only the MLPs and ln_f, by name", "--train-only 'h.*.mlp.*,ln_f.*'",
         [](TrainArgs& a) { a.train_only = "h.*.mlp.*,ln_f.*"; }},
        {"disc", "Discriminative LR alone", "--lr-layer-factor ulmfit", [](TrainArgs& a) { a.lr_layer_factor = kUlmfitLayerFactor; }},
        {"cyclic", "Full, cyclical LR (triangular2)",
         "--schedule triangular2 --half-cycle " + std::to_string(std::max(1, steps / 4)),
         [steps](TrainArgs& a) {
             a.sched.kind = "triangular2";
             a.sched.half_cycle = std::max(1, steps / 4);
         }},
        {"ulmfit", "Gradual unfreezing + discriminative LR",
         "--unfreeze-every " + std::to_string(period) + " --lr-layer-factor ulmfit --schedule stlr",
         [period](TrainArgs& a) {
             a.unfreeze_every = period;
             a.lr_layer_factor = kUlmfitLayerFactor;
             a.sched.kind = "stlr";
         }},
        {"lora", "LoRA r=8 (all four sites)", "--lora-rank 8 --lora-alpha 16 --lr " + num(k.lora_lr),
         [k](TrainArgs& a) {
             a.peft.lora_rank = 8;
             a.peft.lora_alpha = 16;
             a.sched.lr = k.lora_lr;
         }},
        {"prompt", "Soft prompt tuning, 16 tokens", "--virtual prompt --virtual-tokens 16 --lr " + num(k.prompt_lr),
         [k](TrainArgs& a) {
             a.peft.virt = Virtual::prompt;
             a.peft.n_virtual = 16;
             a.sched.lr = k.prompt_lr;
         }},
        {"ptune", "P-tuning, 16 tokens, H=128",
         "--virtual ptune --virtual-tokens 16 --virtual-hidden 128 --lr " + num(k.ptune_lr),
         [k](TrainArgs& a) {
             a.peft.virt = Virtual::ptune;
             a.peft.n_virtual = 16;
             a.peft.hidden = 128;
             a.sched.lr = k.ptune_lr;
         }},
        {"prefix", "Prefix tuning, 8 tokens, H=128",
         "--virtual prefix --virtual-tokens 8 --virtual-hidden 128 --lr " + num(k.prefix_lr),
         [k](TrainArgs& a) {
             a.peft.virt = Virtual::prefix;
             a.peft.n_virtual = 8;
             a.peft.hidden = 128;
             a.sched.lr = k.prefix_lr;
         }},
        {"l2sp", "Full + L2-SP", "--l2sp " + num(k.l2sp), [k](TrainArgs& a) { a.l2sp = k.l2sp; }},
        {"ewc", "Full + EWC", "--ewc " + num(k.ewc) + " (Fisher: 32 base batches)",
         [fisher, d, k](TrainArgs& a) {
             a.ewc = k.ewc;
             a.fisher = fisher;
             a.fisher_data = {d.base_train};
             a.fisher_batches = 32;
         }},
        {"distill", "Full + distillation from the base", "--distill 0.5 --distill-temp 2",
         [](TrainArgs& a) {
             a.distill = 0.5f;
             a.distill_temp = 2.0f;
         }},
        {"replay", "Full + replay of base data", "--replay-frac 0.25",
         [d](TrainArgs& a) {
             a.replay_data = {d.base_train};
             a.replay_frac = 0.25f;
         }},
    };
}

// The median step: the first ones (lazy loading, cuBLASLt heuristics, scratch growth) do not count, which on a GPU,
// where a step takes milliseconds, would move a mean by tens of percent.
double median_ms_per_step(const std::string& run_dir, size_t tokens_per_step) {
    std::istringstream in(slurp_text(run_dir + "/metrics.jsonl"));
    std::vector<double> ms;
    for (std::string line; std::getline(in, line);) {
        auto j = nlohmann::json::parse(line);
        if (j.contains("tokens_per_s") && j["tokens_per_s"].get<double>() > 0)
            ms.push_back(1000.0 * (double)tokens_per_step / j["tokens_per_s"].get<double>());
    }
    return ms.empty() ? 0 : median(ms);
}

std::string range(const std::vector<double>& v, int seeds) {
    char b[64];
    if (seeds > 1)
        std::snprintf(b, sizeof b, "%.0f%% (%.0f-%.0f)", 100 * mean(v), 100 * lowest(v), 100 * highest(v));
    else
        std::snprintf(b, sizeof b, "%.0f%%", 100 * mean(v));
    return b;
}

// With document windows, a model saw every example right after an <|endoftext|>: it is scored both ways, asked
// as it was trained first.
std::string table(const std::vector<Result>& rs, const std::string& machine, double acc_base, double acc_base_eot,
                  int seeds, Windows windows) {
    const bool documents = windows != Windows::fixed;
    std::ostringstream os;
    os << "| Method | Settings | Trainable params | Grad + optimizer memory | ms / step | "
       << (documents ? "Task accuracy after `<|endoftext|>` | prompt alone | " : "Task accuracy | ")
       << "Base-corpus loss before → after |\n|---|---|---:|---:|---:|---:|" << (documents ? "---:|" : "")
       << "---|\n";
    char buf[512];
    for (const Result& r : rs) {
        // mean (lowest-highest over the seeds); one seed prints its value alone
        char after[64];
        if (seeds > 1)
            std::snprintf(after, sizeof after, "%.2f (%.2f-%.2f)", mean(r.base_after), lowest(r.base_after),
                          highest(r.base_after));
        else
            std::snprintf(after, sizeof after, "%.3f", mean(r.base_after));
        const std::string acc = documents ? range(r.accuracy_eot, seeds) + " | " + range(r.accuracy, seeds)
                                          : range(r.accuracy, seeds);
        std::snprintf(buf, sizeof buf, "| %s | `%s` | %zu | %.1f KiB | %.1f | %s | %.3f → %s |\n", r.name.c_str(),
                      r.settings.c_str(), r.trainable, r.grad_opt_bytes / 1024.0, median(r.ms_per_step), acc.c_str(),
                      r.base_before, after);
        os << buf;
    }
    std::snprintf(buf, sizeof buf,
                  "\nBase model before fine-tuning: task accuracy %.0f%%%s. Each method fine-tuned with %d seed%s "
                  "(data order and initialisation)%s%s; ms / step is the median step, over seeds the median. Measured "
                  "on %s.\n",
                  100 * acc_base,
                  documents ? (" (" + range({acc_base_eot}, 1) + " after `<|endoftext|>`)").c_str() : "",
                  seeds, seeds > 1 ? "s" : "", seeds > 1 ? ": mean (lowest-highest)" : "",
                  documents ? (std::string(", on document windows (`--windows ") + windows_name(windows) + "`)").c_str()
                            : "",
                  machine.c_str());
    os << buf;
    return os.str();
}

}  // namespace

int main(int argc, char** argv) {
    return run_tool("bench_finetune_methods", [&]() -> int {
        std::string device = "cpu", precision = "fp32", model = "tiny", only, doc = "docs/finetuning.md",
                    out = "runs/methods", machine = "this machine";
        int base_steps = 150, steps = 700, seeds = 3;
        Knobs knobs;
        Cli cli("usage: build/bench/bench_finetune_methods [options]\n"
                "Fine-tunes one base model with every method and writes the comparison table.");
        cli.option("--device", "cpu|cuda", "backend", &device);
        cli.option("--precision", "fp32|bf16|fp16", "of the fine-tuning runs (the base model pretrains in fp32; "
                   "bf16 and fp16 keep FP32 master weights, counted in the memory column)", &precision);
        cli.option("--model", "PRESET", "base model preset (pretrained here)", &model);
        cli.option("--base-steps", "N", "pretraining steps", &base_steps, 1, 1 << 30);
        cli.option("--steps", "N", "fine-tuning steps per method", &steps, 1, 1 << 30);
        cli.option("--seeds", "N", "fine-tuning runs per method, seeds 1..N (the table shows mean and range)", &seeds, 1,
                   100);
        cli.option("--only", "KEYS", "comma-separated subset: full,top1,mlp,disc,cyclic,ulmfit,lora,prompt,ptune,prefix,"
                   "l2sp,ewc,distill,replay", &only);
        cli.option("--doc", "FILE",
                   "markdown file whose methods table is replaced ('' : none; with --only, none unless given)", &doc,
                   /*empty_ok=*/true);
        cli.option("--out", "DIR", "run directories and results.json", &out);
        cli.option("--machine", "TEXT", "machine description for the table", &machine);
        Windows windows = Windows::fixed;
        cli.custom("--windows", "fixed|documents|single|isolated", "how the task data is cut into windows (bin/train "
                   "--windows)", "fixed", [&](const std::string& v) { windows = parse_windows(v); });
        cli.option("--l2sp", "LAMBDA", "L2-SP strength", &knobs.l2sp, 0, 1e12);
        cli.option("--ewc", "LAMBDA", "EWC strength", &knobs.ewc, 0, 1e12);
        cli.option("--lora-lr", "LR", "LoRA learning rate", &knobs.lora_lr, 1e-9, 10);
        cli.option("--prompt-lr", "LR", "soft prompt learning rate", &knobs.prompt_lr, 1e-9, 10);
        cli.option("--ptune-lr", "LR", "P-tuning learning rate", &knobs.ptune_lr, 1e-9, 10);
        cli.option("--prefix-lr", "LR", "prefix tuning learning rate", &knobs.prefix_lr, 1e-9, 10);
        if (!cli.parse(argc, argv)) {
            std::fputs(cli.help().c_str(), stdout);
            return 0;
        }
        // A subset would replace the whole table with its few rows: only when asked for by name.
        bool doc_given = false;
        for (int i = 1; i < argc; i++) doc_given = doc_given || std::string(argv[i]).rfind("--doc", 0) == 0;
        if (!only.empty() && !doc_given) doc.clear();
        if (device == "cpu" && precision != "fp32")  // before the pretraining, not after it
            throw UsageError("--precision " + precision + ": the cpu backend computes in fp32 only");
        const auto t0 = std::chrono::steady_clock::now();
        auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
        Tokenizer tok = Tokenizer::load("data/gpt2");
        const DefaultData d = prepare_default_data(tok, out + "/data");

        TrainArgs base;
        base.device = device;
        base.model = model;
        base.train_data = {d.base_train};
        base.val_data = {d.base_val};
        base.batch = 4;
        base.seq = 64;
        base.steps = base_steps;
        base.sched.lr = 2e-3f;
        base.sched.warmup = std::min(10, base_steps);
        base.val_every = 0;
        base.out_dir = out + "/base";
        base.overwrite = true;  // each time, every run from the beginning (the methods' runs copy this)
        base.quiet = true;
        std::printf("pretraining the base model (%s, %d steps)...\n", model.c_str(), base_steps);
        if (int rc = Trainer(base).run()) return rc;
        const std::string base_ckpt = base.out_dir + "/model.ckpt";
        const TaskAndBaseLoss before = measure_losses(base_ckpt, device, d);
        double acc_base, acc_base_eot;
        {
            LoadedModel m = load_model(base_ckpt, device, "fp32", 1, 32);
            acc_base = task_accuracy(*m.model, tok, d.test);
            acc_base_eot = task_accuracy(*m.model, tok, d.test, nullptr, true);
        }
        std::printf("base: task accuracy %.0f%%, base-corpus loss %.3f (%.0f s)\n", 100 * acc_base, before.base,
                    elapsed());

        std::vector<Result> results;
        auto write_results = [&] {
            nlohmann::json j = nlohmann::json::array();
            for (const Result& r : results)
                j.push_back({{"method", r.key},
                             {"trainable", r.trainable},
                             {"grad_opt_bytes", r.grad_opt_bytes},
                             {"base_loss_before", r.base_before},
                             {"per_seed", {{"ms_per_step", r.ms_per_step},
                                           {"accuracy", r.accuracy},
                                           {"accuracy_after_eot", r.accuracy_eot},
                                           {"base_loss_after", r.base_after},
                                           {"task_loss_after", r.task_after}}}});
            const std::string js = nlohmann::json{{"model", model},   {"steps", steps},
                                                  {"seeds", seeds},   {"device", device}, {"precision", precision},
                                                  {"windows", windows_name(windows)},
                                                  {"base_accuracy", acc_base},
                                                  {"base_accuracy_after_eot", acc_base_eot},
                                                  {"results", j}}.dump(2) +
                                   "\n";
            write_file_atomic(out + "/results.json", js.data(), js.size());
        };
        const int L = preset_config(model).n_layer;
        for (const Method& meth : methods(steps, L, out + "/fisher.safetensors", d, knobs)) {
            if (!only.empty() && ("," + only + ",").find("," + meth.key + ",") == std::string::npos) continue;
            Result r;
            r.key = meth.key;
            r.name = meth.name;
            r.settings = meth.settings;
            r.base_before = before.base;
            for (int seed = 1; seed <= seeds; seed++) {
                TrainArgs ft = base;
                ft.model.clear();
                ft.init = base_ckpt;
                ft.train_data = {d.task_train};
                ft.val_data = {d.task_val};
                ft.batch = 8;
                ft.seq = 32;
                ft.steps = steps;
                ft.seed = (uint64_t)seed;
                ft.sched.lr = 5e-3f;
                ft.sched.warmup = std::min(10, steps);
                ft.precision = precision;
                ft.windows = windows;
                ft.window_advice = false;  // the comparison of the two is this program's subject
                ft.out_dir = out + "/" + meth.key + (seeds > 1 ? "/seed" + std::to_string(seed) : "");
                meth.apply(ft);
                {
                    Trainer t(ft);
                    r.trainable = 0;
                    for (const TensorInfo& ti : t.model().grads().table().tensors()) r.trainable += ti.numel;
                    r.grad_opt_bytes = t.model().grad_bytes() + t.optimizer().state_bytes();
                    if (int rc = t.run()) return rc;
                }
                r.ms_per_step.push_back(median_ms_per_step(ft.out_dir, (size_t)ft.batch * ft.seq));
                const TaskAndBaseLoss after = measure_losses(ft.out_dir + "/model.ckpt", device, d);
                r.base_after.push_back(after.base);
                r.task_after.push_back(after.task);
                LoadedModel m = load_model(ft.out_dir + "/model.ckpt", device, "fp32", 1, 32);
                r.accuracy.push_back(task_accuracy(*m.model, tok, d.test));
                r.accuracy_eot.push_back(task_accuracy(*m.model, tok, d.test, nullptr, true));
                std::printf("%-42s seed %d  acc %5.1f%% (after <|endoftext|> %5.1f%%)  base loss %.3f -> %.3f  %8zu "
                            "trainable  %7.1f ms/step  (%.0f s)\n",
                            meth.name.c_str(), seed, 100 * r.accuracy.back(), 100 * r.accuracy_eot.back(),
                            r.base_before, r.base_after.back(), r.trainable, r.ms_per_step.back(), elapsed());
                std::fflush(stdout);
            }
            results.push_back(r);
            write_results();  // after every method: a run cut short (a time limit) keeps what it measured
        }
        const std::string t = table(results, machine, acc_base, acc_base_eot, seeds, windows);
        std::fputs(t.c_str(), stdout);
        if (!doc.empty()) {
            // each kind of window has its own table
            const std::string marker =
                windows == Windows::fixed ? "methods-table" : std::string("methods-table-") + windows_name(windows);
            const std::string begin = "<!-- " + marker + ":begin -->", end = "<!-- " + marker + ":end -->";
            std::string text = slurp_text(doc);
            const size_t a = text.find(begin), b = text.find(end);
            if (a == std::string::npos || b == std::string::npos || b < a)
                throw Error(doc + ": no '" + begin + "' ... '" + end + "' markers to put the table between");
            text = text.substr(0, a + begin.size()) + "\n" + t + text.substr(b);
            write_file_atomic(doc, text.data(), text.size());
            std::printf("wrote the table into %s (%.0f s in all)\n", doc.c_str(), elapsed());
        }
        return 0;
    });
}
