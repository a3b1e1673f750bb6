#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include "data/fileio.h"
#include "data/tokenizer.h"
#include "kernels/cuda/backend_cuda.h"
#include "kernels/plan_backend.h"
#include "model/rng.h"
#include "model/weights.h"
#include "train/cli.h"
#include "train/fisher.h"
#include "train/select.h"

namespace tune {

DType dtype_of_precision(const std::string& precision) {
    return precision == "bf16" ? DType::bf16 : precision == "fp16" ? DType::f16 : DType::f32;
}

std::unique_ptr<Backend> make_backend(const std::string& device, const std::string& precision, bool quiet,
                                      const CudaOptions& cuda) {
    // Every tool comes here (bin/train checks its flags earlier): a device other than these would have meant cuda.
    if (device != "cpu" && device != "cuda" && device != "auto")
        throw UsageError("--device: expected one of cpu, cuda, auto, got '" + device + "'");
    if (precision != "fp32" && precision != "bf16" && precision != "fp16")
        throw UsageError("--precision: expected one of fp32, bf16, fp16, got '" + precision + "'");
    std::string dev = device;
    if (dev == "auto") {
        const std::string no_gpu = cuda_device_problem();
        dev = no_gpu.empty() ? "cuda" : "cpu";
        if (dev == "cpu" && !quiet) std::printf("notice: %s, training on the CPU backend\n", no_gpu.c_str());
    }
    if (dev == "cpu") {
        if (precision != "fp32")
            throw UsageError("--precision " + precision + ": the cpu backend computes in fp32 only");
        return make_cpu_backend(DType::f32);
    }
    return make_cuda_backend(dtype_of_precision(precision), cuda);
}

// A float option as its shortest decimal that reads back as the same float: "0.005", not "0.00499999989".
static std::string float_text(double v) {
    char b[32];
    for (int digits = 1; digits <= 9; digits++) {
        std::snprintf(b, sizeof b, "%.*g", digits, v);
        if ((float)std::strtod(b, nullptr) == (float)v) break;
    }
    return b;
}

// What decides a run's trajectory besides its weights and state, for resume to compare (TrainState::options),
// keyed by the flag that sets it. Not here: what gives the same bits however it is set (--recompute,
// --attention, the number of ranks, --zero, logging, validation and checkpoint intervals) and PEFT settings
// (read from the checkpoint).
static std::map<std::string, std::string> trajectory_options(const TrainArgs& a) {
    auto list = [](const std::vector<std::string>& v) {
        std::string s;
        for (const auto& p : v) s += (s.empty() ? "" : ",") + p;
        return s;
    };
    auto on = [](bool b) { return std::string(b ? "on" : "off"); };
    return {{"--train-data", list(a.train_data)},
            {"--batch", std::to_string(a.batch)},
            {"--seq", std::to_string(a.seq)},
            {"--grad-accum", std::to_string(a.grad_accum)},
            {"--seed", std::to_string(a.seed)},
            {"--sequential", on(!a.shuffle)},
            {"--windows", windows_name(a.windows)},
            {"--precision", a.precision},
            {"--stochastic-rounding", on(a.stochastic_rounding)},
            {"--loss-scaling", a.loss_scaling},
            {"--loss-scale", float_text(a.loss_scale)},
            {"--steps", std::to_string(a.steps)},
            {"--schedule", a.sched.kind},
            {"--lr", float_text(a.sched.lr)},
            {"--warmup", std::to_string(a.sched.warmup)},
            {"--min-lr-frac", float_text(a.sched.min_frac)},
            {"--half-cycle", std::to_string(a.sched.half_cycle)},
            {"--gamma", float_text(a.sched.gamma)},
            {"--cut-frac", float_text(a.sched.cut_frac)},
            {"--ratio", float_text(a.sched.ratio)},
            {"--beta1", float_text(a.adam.beta1)},
            {"--beta2", float_text(a.adam.beta2)},
            {"--eps", float_text(a.adam.eps)},
            {"--weight-decay", float_text(a.adam.weight_decay)},
            {"--decay-embeddings", on(a.adam.decay_embeddings)},
            {"--grad-clip", float_text(a.grad_clip)},
            {"--head-chunk", std::to_string(a.head_chunk)},
            {"--train-top", std::to_string(a.train_top)},
            {"--train-only", a.train_only},
            {"--lr-layer-factor", float_text(a.lr_layer_factor)},
            {"--unfreeze-every", std::to_string(a.unfreeze_every)},
            {"--l2sp", float_text(a.l2sp)},
            {"--ewc", float_text(a.ewc)},
            {"--fisher", a.fisher},
            {"--distill", float_text(a.distill)},
            {"--distill-temp", float_text(a.distill_temp)},
            {"--teacher", a.teacher},
            {"--replay-data", list(a.replay_data)},
            {"--replay-frac", float_text(a.replay_frac)},
            {"--replay-weight", float_text(a.replay_weight)}};
}

// Whether two recorded values are the same setting: equal text, or, for numbers written as floats, equal as floats
// (checkpoints written before float_text recorded "%.9g": 0.00100000005 is --lr 0.001). Integers (a seed above
// 2^24) compare as text.
static bool same_setting(const std::string& a, const std::string& b) {
    if (a == b) return true;
    auto floaty = [](const std::string& v) { return v.find_first_of(".eE") != std::string::npos; };
    if (!floaty(a) && !floaty(b)) return false;
    char *ea = nullptr, *eb = nullptr;
    const double x = std::strtod(a.c_str(), &ea), y = std::strtod(b.c_str(), &eb);
    return !a.empty() && !b.empty() && *ea == 0 && *eb == 0 && (float)x == (float)y;
}

// A resume with other options still runs, but is no longer the run that was checkpointed: say what changed.
// Options the checkpoint did not record (it was written by an older version) are not compared.
// "--flag now (was then), ...": empty when nothing changed or the checkpoint recorded no options.
static std::string changed_options(const std::map<std::string, std::string>& was,
                                   const std::map<std::string, std::string>& now) {
    std::string changed;
    for (const auto& [flag, value] : now) {
        auto it = was.find(flag);
        if (it != was.end() && !same_setting(it->second, value))
            changed += std::string(changed.empty() ? "" : ", ") + flag + " " + (value.empty() ? "(none)" : value) +
                       " (was " + (it->second.empty() ? "(none)" : it->second) + ")";
    }
    return changed;
}

static void note_changed_options(const std::string& ckpt, const std::map<std::string, std::string>& was,
                                 const std::map<std::string, std::string>& now) {
    const std::string changed = changed_options(was, now);
    if (!changed.empty() && launch_info().rank == 0)
        std::fprintf(stderr, "note: resuming %s with changed options: %s; the run goes on, but not as it would have "
                     "with the options it was checkpointed with\n", ckpt.c_str(), changed.c_str());
}

// A resume reads --distill's teacher and --ewc's Fisher again from their files: one that holds other values than
// the run had (a file replaced since, or another under the same name) changes the run as a changed option would.
// `was`: the checkpoint's fingerprint (0 for a new run, or a checkpoint written before they were recorded).
void Trainer::note_other_values(const std::string& what, const char* values, uint64_t was, uint64_t now) const {
    if (args_.resume.empty() || was == 0 || was == now || launch_info().rank != 0) return;
    std::fprintf(stderr, "note: resuming %s: %s holds other %s than the run was checkpointed with (fingerprint "
                 "%016llx, was %016llx); the run goes on with these, but not as it would have\n", args_.resume.c_str(),
                 what.c_str(), values, (unsigned long long)now, (unsigned long long)was);
}

// The loader's position is an index into the epoch's order of windows: over data cut into another number of
// windows (other files, another --seq, a loader that counts shard tails) it points somewhere else.
static void note_changed_windows(const std::string& ckpt, const char* which, uint64_t was, size_t now, int T) {
    if (ckpt.empty() || was == 0 || was == now || launch_info().rank != 0) return;
    std::fprintf(stderr,
                 "note: resuming %s over %s data of %zu windows of %d+1 tokens, where the checkpoint had %llu: the "
                 "data changed (or --seq, or how the loader cuts shards); the run keeps its place in the epoch, not "
                 "the order an uninterrupted run would have read\n",
                 ckpt.c_str(), which, now, T, (unsigned long long)was);
}

int32_t auto_document_end(const std::vector<Shard>& shards, const std::string& vocab_dir, int vocab_size,
                          bool quiet) {
    if (!any_masked(shards)) return -1;  // plain text: documents run on across windows by design
    int32_t eot = -1;
    try {
        eot = Tokenizer::load(vocab_dir).eot_token();
    } catch (const Error& e) {
        if (vocab_dir != TrainArgs().vocab) throw;  // given, so meant: named
        if (!quiet)
            std::fprintf(stderr, "note: --windows auto: fixed windows, as the vocabulary that says where documents "
                         "end could not be read (%s); give --vocab DIR, or --windows fixed\n", e.what());
        return -1;
    }
    return eot < vocab_size ? eot : -1;
}

int32_t document_end_token(Windows windows, const std::string& vocab_dir, int vocab_size) {
    if (windows == Windows::fixed) return -1;
    const int32_t eot = Tokenizer::load(vocab_dir).eot_token();
    if (eot >= vocab_size)
        throw UsageError(std::string("--windows ") + windows_name(windows) + ": the model's vocabulary of " +
                         std::to_string(vocab_size) + " tokens has no <|endoftext|> (id " + std::to_string(eot) +
                         ") to find documents by");
    return eot;
}

LoadedModel load_model(const std::string& weights, const std::string& device, const std::string& precision, int B,
                       int T, const std::string& adapter) {
    LoadedModel m;
    m.be = make_backend(device, precision, true);
    const ModelConfig cfg = weights_config(weights);
    ModelOptions o;
    if (weights_format(weights) == WeightsFormat::tune_checkpoint) o.peft = checkpoint_peft(weights);
    if (!adapter.empty()) {
        if (o.peft.any())
            throw Error(adapter + ": the base weights " + weights + " already carry " + o.peft.describe() +
                        "; an adapter goes on plain base weights");
        if (checkpoint_config(adapter) != cfg)
            throw Error(adapter + ": trained on a model with config " + checkpoint_config(adapter).describe() +
                        ", not the base model's " + cfg.describe());
        o.peft = checkpoint_peft(adapter);
    }
    const int room = cfg.block_size - o.peft.virtual_tokens();
    Trainable none;
    none.tensor.assign(gpt2_param_table(cfg, o.peft).size(), false);  // inference: no gradient buffers
    m.model = std::make_unique<GPT2>(cfg, *m.be, B, T > 0 ? std::min(T, room) : room, &none, o);
    load_weights(weights, *m.model);
    if (!adapter.empty()) load_adapter(adapter, *m.model);
    // The adapter is the latest training; a plain model's own run, where its file records one.
    m.trained_on_file = !adapter.empty() ? adapter
                        : weights_format(weights) == WeightsFormat::tune_checkpoint ? weights
                                                                                    : "";
    if (!m.trained_on_file.empty()) m.trained_on = checkpoint_trained_on(m.trained_on_file);
    return m;
}

bool is_replay_batch(uint64_t mb, double frac) {
    if (frac <= 0) return false;
    return (uint64_t)std::floor((double)(mb + 1) * frac) > (uint64_t)std::floor((double)mb * frac);
}

void update_loss_scale(TrainState& s, bool gradients_finite) {
    if (!gradients_finite) {
        s.loss_scale = std::max(1.0, s.loss_scale * 0.5);
        s.loss_scale_clean = 0;
    } else if (++s.loss_scale_clean >= kLossScaleWindow) {
        s.loss_scale *= 2.0;
        s.loss_scale_clean = 0;
    }
}

static double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A resume without --seed goes on with the seed its run was started with (the checkpoint records it among its
// options): data order, dropout masks and stochastic rounding follow from it. Without --windows (auto), it goes on
// with the run's windows.
static TrainArgs with_resumed_defaults(const TrainArgs& given) {
    TrainArgs a = given;
    if (a.resume.empty() || (a.seed_given && !a.windows_auto)) return a;
    const std::map<std::string, std::string> was = checkpoint_options(a.resume);
    const auto it = was.find("--seed");
    if (!a.seed_given && it != was.end()) a.seed = parse_u64("--seed (in " + a.resume + ")", it->second);
    // --windows auto goes on with the run's windows too, whatever auto would choose for the data now; a
    // checkpoint that records none predates document windows, so its run had fixed ones.
    const auto w = was.find("--windows");
    if (a.windows_auto) {
        a.windows = Windows::fixed;
        if (w != was.end() && !windows_from_name(w->second, &a.windows))
            throw Error(a.resume + ": its options hold --windows '" + w->second + "', which this build does not know");
        a.windows_auto = false;
    }
    return a;
}

// TrainedOn::positions of the weights this run writes: the most positions (virtual tokens and --seq) of the runs
// behind its starting weights (their checkpoints record it) and of its own, `own`; unknown (0) where they were
// trained elsewhere (a Hugging Face or llm.c file, or a checkpoint from before the record). A resume's checkpoint
// holds its adapter's already.
static int trained_positions(const TrainArgs& args, int own) {
    int most = own;
    for (const std::string& from : {args.resume.empty() ? args.init : args.resume,
                                    args.resume.empty() ? args.adapter : std::string()}) {
        if (from.empty()) continue;
        if (weights_format(from) != WeightsFormat::tune_checkpoint) return 0;
        const int was = checkpoint_trained_on(from).positions;
        if (was == 0) return 0;
        most = std::max(most, was);
    }
    return most;
}

// Whether `args` continues the run whose directory is its --out (its own resume.ckpt), rather than starting one
// there.
static bool resumes_own_run(const TrainArgs& args) {
    return !args.resume.empty() && same_file(args.resume, args.out_dir + "/resume.ckpt");
}

// Whether `args` resumes the run whose checkpoints its --out holds: from its own resume.ckpt, or from a copy kept
// of that run (a checkpoint recording the same trajectory options as the directory's resume.ckpt), rather than
// from another run's checkpoint.
static bool resumes_run_of_out(const TrainArgs& args) {
    if (resumes_own_run(args)) return true;
    if (args.resume.empty() || args.out_dir.empty()) return false;
    const auto here = checkpoint_options(args.out_dir + "/resume.ckpt");
    return !here.empty() && checkpoint_options(args.resume) == here;
}

// A new run in a directory that holds an earlier run's checkpoints would replace them (a finished run's weights,
// or hours of one that was stopped): refused, saying what is there, unless --overwrite. So is a --resume of
// another run's checkpoint, which would replace them just the same; a --resume of that run (its own resume.ckpt,
// or a copy kept from it) goes on with it. Files this run reads (--init, --teacher, --adapter in --out) are kept,
// so they do not count.
static void refuse_earlier_run(const TrainArgs& args) {
    const std::string& dir = args.out_dir;
    if (dir.empty() || resumes_run_of_out(args) || args.overwrite || args.memory_map || args.lr_find) return;
    auto read_here = [&](const std::string& path) {
        return same_file(path, args.init) || same_file(path, args.teacher) || same_file(path, args.adapter);
    };
    std::string held;
    std::error_code ec;
    uint64_t step = 0;
    bool finished = false;  // model.ckpt and adapter.ckpt are written by a finished run only
    const std::string resume = dir + "/resume.ckpt";
    const bool resumable = !read_here(resume) && checkpoint_step(resume, &step);
    if (resumable) {
        const auto was = checkpoint_options(resume);
        const auto steps = was.find("--steps");
        held = "resume.ckpt at step " + std::to_string(step) + (steps == was.end() ? "" : " of " + steps->second);
        finished = steps != was.end() && step >= std::strtoull(steps->second.c_str(), nullptr, 10);
    } else if (std::filesystem::exists(resume, ec) && !read_here(resume)) {
        held = "resume.ckpt, which does not read as one: cut short or damaged, perhaps the only copy of a run";
    }
    for (const char* name : {"model.ckpt", "adapter.ckpt"})
        if (std::filesystem::exists(dir + "/" + name, ec) && !read_here(dir + "/" + name)) {
            held += (held.empty() ? "" : ", ") + std::string(name);
            finished = true;
        }
    if (held.empty()) return;
    if (!args.resume.empty())
        throw UsageError("--out " + dir + " holds another run's checkpoints (" + held + (finished ? ": finished" : "") +
                         "; its options differ from those --resume " + args.resume + " records): give another --out "
                         "to go on there (a new directory is fine), or --overwrite to replace that run's checkpoints, "
                         "metrics and plot with this one's");
    throw UsageError("--out " + dir + " holds an earlier run's checkpoints (" + held + (finished ? ": finished" : "") +
                     "): " + (finished || !resumable ? "" : "go on with it with --resume " + resume + ", ") +
                     "give --overwrite to start over there (its checkpoints, metrics and plot are replaced), or "
                     "give another --out");
}

// Prompt/completion data on fixed windows: how many answers are trained without their example's beginning,
// which document windows would keep (docs/finetuning.md measures what that costs on a task).
static void note_cut_examples(const Loader& train, const TrainArgs& args, int vocab_size) {
    constexpr uint64_t kLookAt = 1u << 24;  // targets: a bounded look at a large corpus
    if (!train.masked()) return;  // plain text: documents run on across windows by design
    int32_t eot;
    try {
        eot = Tokenizer::load(args.vocab).eot_token();
    } catch (const Error&) {
        return;  // no vocabulary to find the documents by: nothing to say
    }
    if (eot >= vocab_size) return;
    const Loader::Cuts c = train.cuts(eot, kLookAt);
    if (c.cut == 0) return;
    std::fprintf(stderr, "note: --train-data: %llu of %s%llu counted tokens (%.0f%%) are trained in a window of "
                 "--seq %d that starts inside their example, without its beginning; --windows documents would keep "
                 "those examples whole\n", (unsigned long long)c.cut, c.all ? "its " : "the first ",
                 (unsigned long long)c.counted, 100.0 * (double)c.cut / (double)c.counted, args.seq);
}

Trainer::Trainer(const TrainArgs& given) : args_(with_resumed_defaults(given)) {
    const TrainArgs& args = args_;  // seed and windows as resumed; sched.total_steps and windows (auto) change below
    validate_train_args(given);     // as given: a --vocab that served auto stays allowed when a resume decides
    // A --vocab given is meant: read now (a tenth of a second), also where the data turns out not to need it
    // (--windows auto over plain text), so a mistyped folder is never passed over in silence.
    if (given.vocab != TrainArgs().vocab) Tokenizer::load(given.vocab);
    // --memory-map alone needs no data: where the bytes go depends only on the model, the batch and the options.
    if (args.train_data.empty() && !args.memory_map)
        throw UsageError("--train-data: no training shards given (make them with bin/prepare; bin/train with no "
                         "options at all runs the default job on data of its own)");
    args_.sched.total_steps = args.steps;
    // DIST: a multi-rank GPU run picks its GPU before the backend exists; rank 0 alone prints and writes.
    const LaunchInfo launch = launch_info();
    select_local_device(launch, args.device);
    CudaOptions cuda;
    cuda.attention = parse_attention_impl(args.attention);
    // Isolated documents mask attention per token, which only the matmul path does (validate_train_args refuses
    // --attention cudnn with them given; here with them resumed).
    if (args.windows == Windows::isolated) {
        if (args.attention == "cudnn")
            throw UsageError("--attention cudnn: --resume " + args.resume + " continues a run on --windows isolated, "
                             "which masks attention by document, as the matmul path does and cuDNN's fused one here "
                             "does not (--attention matmul or auto, or --windows to change the windows)");
        cuda.attention = AttentionImpl::matmul;
    }
    cuda.stochastic_rounding = args.stochastic_rounding;
    cuda.seed = args.seed;
    // --memory-map in one process plans (kernels/plan_backend.h): the map of what this run would allocate, printed
    // without allocating it, so also for a run too big for this machine or --device cuda without a GPU.
    if (args.memory_map && launch.world <= 1 && !std::getenv("TUNE_NCCL_ONE_RANK")) {
        const std::string dev =
            args.device == "auto" ? (cuda_device_count() > 0 ? "cuda" : "cpu") : args.device;
        if (dev == "cpu" && args.precision != "fp32")
            throw UsageError("--precision " + args.precision + ": the cpu backend computes in fp32 only");
        be_ = make_plan_backend(dev, dtype_of_precision(args.precision), cuda);
    } else {
        be_ = make_backend(args.device, args.precision, args.quiet || launch.rank != 0, cuda);
    }
    if (args.windows == Windows::isolated && be_->name() == "cuda" && args.precision != "fp32" && !args.quiet &&
        launch.rank == 0)
        std::fprintf(stderr, "note: --windows isolated: attention takes the matmul path (cuDNN's fused one has no "
                     "document mask), which keeps NH x T probabilities a token in every layer; --recompute "
                     "selective recomputes them (docs/finetuning.md)\n");
    Comm& comm = process_comm(*be_, args.comm_timeout);
    writer_ = comm.rank() == 0;
    if (writer_ && !args.memory_map && !args.out_dir.empty()) {  // DIST: a refusal here stops every rank
        out_lock_ = std::make_unique<DirLock>(args.out_dir, "bin/train");
        refuse_earlier_run(args);
    }
    if (!writer_) args_.quiet = true;

    const std::string& ckpt = !args.resume.empty() ? args.resume : args.init;
    ModelConfig cfg = !args.resume.empty() ? checkpoint_config(args.resume)
                      : !args.init.empty() ? weights_config(args.init)
                                           : preset_config(args.model);
    // The same command with --resume added continues the run: --model and --init may stay, if they agree.
    if (!args.resume.empty() && !args.model.empty() && args.model != TrainArgs().model &&
        preset_config(args.model) != cfg)
        throw UsageError("--model " + args.model + ": " + args.resume + " holds a model with config " + cfg.describe());
    if (args.seq > cfg.block_size)
        throw UsageError("--seq: " + std::to_string(args.seq) + " is above the model's block size " +
                         std::to_string(cfg.block_size));
    // The training shards, read once: --windows auto looks at them, then their loader cuts them (below).
    std::vector<Shard> train_shards;
    if (!args.train_data.empty()) train_shards = read_shards(args.train_data, cfg.vocab_size);
    // Where documents end, for the training and validation loaders (-1: fixed windows); the vocabulary is read once.
    int32_t doc_end;
    if (args.windows_auto) {
        doc_end = auto_document_end(train_shards, args.vocab, cfg.vocab_size, args.quiet || launch.rank != 0);
        args_.windows = doc_end >= 0 ? Windows::documents : Windows::fixed;
    } else {
        doc_end = document_end_token(args.windows, args.vocab, cfg.vocab_size);
    }
    ModelOptions mo;
    mo.peft = args.peft;
    if (mo.peft.lora_rank == 0) mo.peft.lora_targets = 0;
    // A resumed PEFT run needs no repeated PEFT flags: the checkpoint says what it was built with; nor does an
    // adapter trained further, but flags that say otherwise are a mistake.
    const float flag_dropout = mo.peft.lora_dropout;  // a training setting, not the model's shape: a flag wins
    // A checkpoint's PEFT; flags that say otherwise are refused.
    auto checked_peft = [&](const std::string& file, const std::string& holds, const char* or_else) {
        const PeftConfig held = checkpoint_peft(file);
        if (mo.peft.any() && !(mo.peft == held))
            throw UsageError(holds + (held.any() ? held.describe() : std::string("no LoRA or virtual tokens")) +
                             ", but the flags ask for " + mo.peft.describe() + ": leave the LoRA and --virtual flags "
                             "out (they come with it)" + or_else);
        return held;
    };
    if (!args.resume.empty()) {
        const PeftConfig held =
            checked_peft(args.resume, "--resume " + args.resume + " continues a run with ", ", or start a new run");
        if (!mo.peft.any()) mo.peft = held;
    }
    if (!args.adapter.empty()) mo.peft = checked_peft(args.adapter, "--adapter " + args.adapter + " holds ", "");
    if (flag_dropout > 0) {
        if (!mo.peft.lora())
            throw UsageError("--lora-dropout: " +
                             (!args.adapter.empty() ? "--adapter " + args.adapter + " holds "
                                                    : "--resume " + args.resume + " continues a run with ") +
                             mo.peft.describe() + ", no LoRA to drop out from");
        mo.peft.lora_dropout = flag_dropout;  // a resume names it when it changed
    }
    // The virtual tokens of the flags, of the adapter or of the resumed checkpoint.
    if (const int P = mo.peft.virtual_tokens(); args.seq + P > cfg.block_size)
        throw UsageError("--seq: " + std::to_string(args.seq) + " real tokens after " +
                         (args.adapter.empty() ? "" : "the adapter's ") + std::to_string(P) +
                         " virtual ones exceed the model's block size " + std::to_string(cfg.block_size));
    if (args.unfreeze_every > 0 && mo.peft.any())  // args.cpp checks the flags; a resumed run brings its own
        throw UsageError("--unfreeze-every works on the model's own blocks; " + args.resume + " continues a run with " +
                         mo.peft.describe() + ", which it does not combine with");
    mo.recompute = args.recompute;
    mo.head_chunk = (size_t)args.head_chunk;
    if (args.zero == 2 && comm.kind() != "single") mo.grad_slots = 2;  // ZeRO-2 (train/data_parallel.h)
    Trainable trainable = select_trainable(cfg, args.train_top, args.train_only);
    // PEFT trains only its own tensors, unless the base selection was asked for explicitly.
    if (mo.peft.any() && args.train_top == 0 && args.train_only.empty())
        trainable.tensor.assign(num_base_tensors(cfg), false);
    // Gradual unfreezing with a set of its own: only its blocks join, each at its turn (block l after L-1-l
    // periods, the embeddings after L), so a set low in the model trains nothing for its first periods.
    if (args.unfreeze_every > 0) {
        const Table t = gpt2_param_table(cfg);
        long long first = LLONG_MAX;  // steps done before the set's first tensor joins
        std::string first_name;
        for (size_t i = 0; i < t.size(); i++) {
            if (!trainable.tensor[i]) continue;
            const int layer = param_layer(t[i].name, cfg.n_layer);
            const long long join = (long long)std::max(0, cfg.n_layer - 1 - layer) * args.unfreeze_every;
            if (join < first) first = join, first_name = t[i].name;
        }
        const std::string set = args.train_top > 0 ? "--train-top " + std::to_string(args.train_top)
                                                    : "--train-only " + args.train_only;
        if (first >= args.steps)
            throw UsageError("--unfreeze-every " + std::to_string(args.unfreeze_every) + " with " + set + ": its top "
                             "tensor " + first_name + " would join after step " + std::to_string(first) + ", and the "
                             "run has " + std::to_string(args.steps) + " --steps: nothing would train (unfreezing "
                             "starts at the model's top block; a smaller --unfreeze-every, or a set that holds it)");
        if (first > 0 && args.resume.empty() && launch_info().rank == 0)
            std::fprintf(stderr, "note: --unfreeze-every %d with %s: unfreezing starts at the model's top block, and "
                         "the set's top tensor %s joins after step %lld; the steps before train nothing\n",
                         args.unfreeze_every, set.c_str(), first_name.c_str(), first);
    }
    model_ = std::make_unique<GPT2>(cfg, *be_, args.batch, args.seq, &trainable, mo);
    if (ckpt.empty() && !be_->plans_only()) model_->init_random(args.seed);
    if (comm.kind() != "single")  // DIST
        dp_ = std::make_unique<DataParallel>(comm, *model_, args.zero, args.comm_overlap);
    opt_ = std::make_unique<AdamW>(*model_, args.adam, dp_ ? dp_->optimizer_shard() : OptimizerShard{});
    if (args.lr_layer_factor > 0) apply_discriminative_lr(*model_, *opt_, args.lr_layer_factor);
    state_.rng = args.seed;
    std::map<std::string, std::string> options = trajectory_options(args);
    // The batch the optimizer sees is --batch on every rank together: 2 ranks x 3 resumed as 3 x 2 (or as one
    // process with 6) is the same run, and 2 x 3 as 3 x 3 is not.
    options.erase("--batch");
    options["--batch x ranks"] = std::to_string((long long)args.batch * (dp_ ? dp_->world() : 1));
    // LoRA's dropout as this run applies it (flags, an --adapter's or a resumed checkpoint's setting).
    if (mo.peft.lora()) options["--lora-dropout"] = float_text(mo.peft.lora_dropout);
    state_.options = options;
    dynamic_loss_scale_ = args.loss_scaling == "on" || (args.loss_scaling == "auto" && be_->act_dtype() == DType::f16);
    state_.loss_scale = dynamic_loss_scale_ ? args.loss_scale : 1.0;  // a resume checkpoint may override it
    state_.loss_scaling = dynamic_loss_scale_;
    state_.working_copy = args.stochastic_rounding;
    flops_per_token_ = 6.0 * (double)num_parameters(cfg) + 12.0 * cfg.n_layer * cfg.n_embd * (double)args.seq;
    // MFU against the dense bf16 tensor-core peak in every precision (PaLM's convention): what the chip could do,
    // so an fp32 run shows what it leaves on the table.
    if (be_->name() == "cuda") peak_flops_ = cuda_peak_bf16_flops();
    if (anchored()) opt_->allocate_like_state(anchor_);  // under ZeRO, this rank's piece only
    if (!args.resume.empty()) {
        try {
            load_checkpoint(args.resume, *model_, opt_.get(), &state_, anchored() ? &anchor_ : nullptr);
        } catch (const Error& e) {
            // Another --train-top or --train-only makes other tensors trainable, so the checkpoint's optimizer
            // state does not fit: name the changed option beside the tensor the load could not find.
            std::map<std::string, std::string> trainable_set;
            for (const char* flag : {"--train-top", "--train-only"}) trainable_set[flag] = options.at(flag);
            const std::string changed = changed_options(checkpoint_options(args.resume), trainable_set);
            if (changed.empty()) throw;
            throw UsageError(std::string(e.what()) + " (this resume trains other tensors: " + changed +
                             "; resume with the options the run was checkpointed with)");
        }
        if (!args.init.empty() && !same_file(args.init, state_.init))
            throw UsageError("--init " + args.init + ": " + args.resume + " continues a run that started from " +
                             (state_.init.empty() ? std::string("random weights") : state_.init) +
                             "; give that --init, or none");
        if ((int)state_.step > args.steps)
            throw UsageError("--steps " + std::to_string(args.steps) + ": " + args.resume + " is at step " +
                             std::to_string(state_.step) + " already; give --steps above it to train on");
        if (args.halt_at > 0 && args.halt_at <= (int)state_.step)
            throw UsageError("--halt-at " + std::to_string(args.halt_at) + ": " + args.resume + " is at step " +
                             std::to_string(state_.step) + " already; give a later step, or leave --halt-at out");
        if (args.profile_step > 0 && args.profile_step <= (int)state_.step && !args.lr_find)
            throw UsageError("--profile-step " + std::to_string(args.profile_step) + ": " + args.resume +
                             " is at step " + std::to_string(state_.step) + " already, so it would never run; give a "
                             "later step");
        note_changed_options(args.resume, state_.options, options);  // state_.options: the checkpoint's
        // The scale goes on where the checkpoint left it only when both runs scale dynamically, from the same
        // --loss-scale; otherwise it starts afresh (1 without dynamic scaling).
        const auto was = state_.options.find("--loss-scale");
        const bool new_start = was != state_.options.end() && !same_setting(was->second, options.at("--loss-scale"));
        if (!dynamic_loss_scale_ || !state_.loss_scaling || new_start) {
            state_.loss_scale = dynamic_loss_scale_ ? args.loss_scale : 1.0;
            state_.loss_scale_clean = 0;
        }
        state_.loss_scaling = dynamic_loss_scale_;
        state_.options = options;
    } else {
        // TEACH: a bf16/fp16 run keeps FP32 master weights; they start from the values as loaded (a pretrained
        // fp32 checkpoint), not from their rounding in the working copy, which is off by up to 2^-9 of each
        // weight: as much as several Adam steps at a fine-tuning learning rate. So does L2-SP/EWC's anchor.
        std::vector<bool> exact(model_->grads().table().size(), false);  // by gradient index
        if (be_->has_master())
            model_->set_param_listener([&](size_t i, const float* host) {
                const int g = model_->grad_index()[i];
                if (g < 0) return;
                opt_->set_state_tensor(AdamW::State::master, g, host);
                if (anchored()) opt_->scatter(anchor_, g, host);
                exact[g] = true;
            });
        if (!args.init.empty()) load_weights(args.init, *model_);
        // A starting checkpoint with these PEFT tensors already holds them (load_checkpoint loaded them); so does
        // an adapter trained further (load_adapter checks that it belongs on this base).
        uint64_t adapter_base = 0;  // the base as loaded, before the adapter replaces any of its tensors
        std::vector<std::string> adapter_trained_base;
        if (!args.adapter.empty()) {
            adapter_base = model_->base_fingerprint();
            load_adapter(args.adapter, *model_, &adapter_trained_base);
        }
        const bool has_peft = !args.adapter.empty() || (!args.init.empty() &&
                                                        weights_format(args.init) == WeightsFormat::tune_checkpoint &&
                                                        checkpoint_peft(args.init).any());
        // Which base an adapter belongs on: load_adapter refuses others (a merged model.ckpt above all). A start
        // from a PEFT run's checkpoint continues that run, whose base tensors may have trained: its record of
        // the original base stands, and the tensors it trained go into this run's adapter too. Without such a
        // record the base as loaded is the base (an adapter then refuses the original: safe, if strict).
        if (mo.peft.any()) {
            state_.trained_base.clear();
            if (!args.adapter.empty()) {
                state_.base_fingerprint = adapter_base;
                state_.trained_base = adapter_trained_base;
            } else if (!has_peft ||
                       !checkpoint_base_lineage(args.init, &state_.base_fingerprint, &state_.trained_base)) {
                state_.base_fingerprint = model_->base_fingerprint();
            }
            const Table& pt = model_->params().table();
            for (size_t i = 0; i < model_->num_base_tensors(); i++)
                if (model_->grad_index()[i] >= 0 &&
                    std::find(state_.trained_base.begin(), state_.trained_base.end(), pt[i].name) ==
                        state_.trained_base.end())
                    state_.trained_base.push_back(pt[i].name);
        }
        if (mo.peft.any() && !has_peft) model_->init_peft(args.seed, virtual_init_tokens());
        if (mo.peft.any() && args.init.empty() && !args.quiet && launch_info().rank == 0)
            std::fprintf(stderr, "note: %s on random weights (no --init): the base is saved nowhere, so adapter.ckpt "
                         "goes on no other model; model.ckpt holds the two merged\n", mo.peft.describe().c_str());
        model_->set_param_listener(nullptr);
        opt_->sync_master_from_params(&exact);
        // Absolute, so a resume from another directory (same --init, or the default --distill teacher) finds it.
        state_.init = args.init.empty() ? std::string() : std::filesystem::absolute(args.init).string();
        if (anchored()) capture_anchor(exact);
    }
    // The files it reads were read above, each refused by name if bad.
    trained_positions_ = trained_positions(args, model_->virtual_tokens() + args.seq);
    // DIST: every rank reads its starting weights itself. A path that holds another file on another node (not a
    // shared file system) would train diverging replicas, found out only by the check at the end of the run.
    if (dp_) {
        const int r = dp_->first_rank_differing(model_->base_fingerprint(), "starting weights' fingerprint");
        if (r >= 0)
            throw Error("rank " + std::to_string(r) + " starts from other weights than rank 0: " +
                        (ckpt.empty() ? std::string("every rank initialises them from --seed; was it the same?")
                                      : "every rank reads " +
                                            (args.resume.empty() ? "--init " + args.init : "--resume " + args.resume) +
                                            " itself; is it the same file on every node?"));
    }
    // --windows auto decided on every rank: by the same shards, but a vocabulary missing on one node would cut its
    // data otherwise, unseen.
    if (dp_ && given.windows_auto && args.resume.empty()) {
        const int r = dp_->first_rank_differing((uint64_t)args.windows, "--windows auto's choice");
        if (r >= 0)
            throw Error("rank " + std::to_string(r) + " chose other windows than rank 0's --windows " +
                        windows_name(args.windows) + " (is --vocab " + args.vocab + " readable on every node?): give "
                        "--windows");
    }
    if (args.ewc > 0) {
        if (be_->plans_only())
            opt_->allocate_like_state(fisher_);  // its place in the map; neither read nor estimated
        else
            load_or_estimate_fisher(args.fisher, args.fisher_data, args.fisher_batches);
    }
    if (args.distill > 0) {
        const std::string teacher = !args.teacher.empty() ? args.teacher : state_.init;
        if (teacher.empty())
            throw UsageError("--distill: no teacher; the run started from random weights, so give --teacher WEIGHTS");
        if (weights_config(teacher) != cfg)
            throw Error(teacher + ": the teacher's config " + weights_config(teacher).describe() +
                        " differs from the student's " + cfg.describe());
        Trainable none;
        none.tensor.assign(num_base_tensors(cfg), false);
        // Forward only: full recomputation's layout keeps one block's activations instead of L.
        ModelOptions to;
        to.recompute = Recompute::full;
        to.head_chunk = (size_t)args.head_chunk;
        teacher_ = std::make_unique<GPT2>(cfg, *be_, args.batch, args.seq, &none, to);
        load_weights(teacher, *teacher_);
        // TEACH: at ALPHA 1 the loss is the KL to the teacher alone; a student that starts as the teacher starts
        // at its minimum, where the KL and every gradient are 0: nothing would train (weight decay aside).
        if (args.distill == 1 && args.resume.empty() && !model_->peft().any() &&
            teacher_->base_fingerprint() == model_->base_fingerprint())
            throw UsageError("--distill 1 trains on the KL to the teacher alone, and the teacher " + teacher +
                             " holds the weights the run starts from: the loss and every gradient would stay 0 "
                             "(give --distill below 1 to add the data's loss, or another --teacher)");
        note_other_values("--distill's teacher " + teacher, "weights", state_.teacher_hash, teacher_->base_fingerprint());
        state_.teacher_hash = teacher_->base_fingerprint();
    }

    // DIST: rank r reads windows r, r+N, r+2N, ... of the shared order (data/shard.h), so N ranks x B windows
    // are the windows one rank would read as a batch of N*B.
    const int rank = dp_ ? dp_->rank() : 0, world = dp_ ? dp_->world() : 1;
    if (rank == 0) {  // allowed, but rarely what was meant (notes, not progress: --quiet keeps them)
        for (size_t i = 0; i < args.train_data.size(); i++)
            for (size_t j = 0; j < i; j++)
                if (same_file(args.train_data[i], args.train_data[j]))
                    std::fprintf(stderr, "note: --train-data names %s twice: its windows are read twice an epoch\n",
                                 args.train_data[i].c_str());
        // Replayed data trains too; the Fisher's gradients are taken on it, which EWC then holds the weights to.
        const bool replayed = args.replay_frac > 0;
        for (const std::string& v : args.val_data)
            for (const auto& [files, flag] :
                 {std::pair<const std::vector<std::string>*, const char*>{&args.train_data, "--train-data"},
                  {replayed ? &args.replay_data : nullptr, "--replay-data"},
                  {args.ewc > 0 ? &args.fisher_data : nullptr, "--fisher-data"}})
                if (files &&
                    std::any_of(files->begin(), files->end(), [&](const std::string& t) { return same_file(v, t); }))
                    std::fprintf(stderr, "note: --val-data %s is also %s: the validation loss measures what the "
                                 "model was fitted to, not how it generalises\n", v.c_str(), flag);
        // Warmup rises to --lr, and a schedule that starts from its low point then falls from there at once.
        const std::string& kind = args.sched.kind;
        if (args.sched.warmup > 0 && kind == "stlr")
            std::fprintf(stderr, "note: --warmup %d with --schedule stlr: warmup rises to --lr, then stlr starts again "
                         "from --lr/--ratio and rises on its own (--cut-frac); --warmup 0 lets stlr rise alone\n",
                         args.sched.warmup);
        else if (args.sched.warmup > 0 && (kind == "triangular" || kind == "triangular2" || kind == "exp_range"))
            std::fprintf(stderr, "note: --warmup %d with --schedule %s: warmup rises to --lr, then the cycles start "
                         "from their base, --lr x --min-lr-frac, a drop at once after warmup\n", args.sched.warmup,
                         kind.c_str());
        // An existing --fisher is read as it is: what would estimate it plays no part.
        if (fisher_read_ && (!args.fisher_data.empty() || args.fisher_batches != TrainArgs{}.fisher_batches))
            std::fprintf(stderr, "note: --fisher %s exists and is read as it is: --fisher-data/--fisher-batches "
                         "estimate a missing file only (remove it to estimate it again)\n", args.fisher.c_str());
        // L2-SP and EWC hold the weights to where the run starts: from random weights, that keeps no knowledge.
        if ((args.l2sp > 0 || args.ewc > 0) && args.init.empty() && args.resume.empty())
            std::fprintf(stderr, "note: %s without --init holds the weights to random ones, which know nothing to "
                         "keep; give --init the pretrained model\n", args.l2sp > 0 ? "--l2sp" : "--ewc");
    }
    if (!args.train_data.empty()) {
        train_ = std::make_unique<Loader>(std::move(train_shards), cfg.vocab_size, args.batch, args.seq,
                                          args.shuffle, args.seed, rank, world, doc_end, args.windows);
        train_->set_state(state_.loader);
    }
    if (!args.val_data.empty())
        val_ = std::make_unique<Loader>(args.val_data, cfg.vocab_size, args.batch, args.seq, false, 0, rank, world,
                                        doc_end, args.windows);
    if (!args.replay_data.empty() && args.replay_frac > 0) {
        replay_ = std::make_unique<Loader>(args.replay_data, cfg.vocab_size, args.batch, args.seq, args.shuffle,
                                           args.seed + 1, rank, world);  // sliced by rank like the training data
        replay_->set_state(state_.replay_loader);
    }
    // Every rank takes a window of its own each micro-batch (validation may leave ranks without).
    for (const auto& [l, flag] : {std::pair<const Loader*, const char*>{train_.get(), "--train-data"},
                                  {replay_.get(), "--replay-data"}})
        if (l && l->num_windows() < (size_t)world)
            throw Error(std::string(flag) + ": " + std::to_string(l->num_windows()) + " windows of --seq " +
                        std::to_string(args.seq) + "+1 tokens, fewer than the " + std::to_string(world) +
                        " ranks: every rank needs one a step");
    if (rank == 0)
        for (const Loader* l : {train_.get(), val_.get(), replay_.get()})
            if (l) l->note_shards();
    for (const auto& [l, flag] : {std::pair<const Loader*, const char*>{train_.get(), "--train-data"},
                                  {val_.get(), "--val-data"}})
        if (rank == 0 && l && l->long_documents())
            std::fprintf(stderr, "note: --windows %s: %llu document%s of %s %s longer than a window of "
                         "--seq %d: each is cut into windows, and those after its first start without its "
                         "beginning (an example's prompt)\n", windows_name(args.windows),
                         (unsigned long long)l->long_documents(),
                         l->long_documents() == 1 ? "" : "s", flag, l->long_documents() == 1 ? "is" : "are",
                         args.seq);
    if (rank == 0 && train_ && args.windows == Windows::fixed && args.window_advice)
        note_cut_examples(*train_, args, cfg.vocab_size);
    if (train_) note_changed_windows(args.resume, "training", state_.loader_windows, train_->num_windows(), args.seq);
    if (replay_) note_changed_windows(args.resume, "replay", state_.replay_windows, replay_->num_windows(), args.seq);
}

std::vector<int32_t> Trainer::virtual_init_tokens() const {
    const std::string& how = args_.virtual_init;
    if (model_->virtual_tokens() == 0 || how == "random") return {};
    if (how.rfind("text:", 0) == 0) {
        const std::string text = how.substr(5);
        std::vector<int32_t> ids = Tokenizer::load(args_.vocab).encode(text);
        if (ids.empty()) throw UsageError("--virtual-init: the text after 'text:' is empty");
        for (int32_t id : ids)
            if (id >= model_->config().vocab_size)
                throw UsageError("--virtual-init: token " + std::to_string(id) + " of the text is outside the model's "
                                 "vocabulary of " + std::to_string(model_->config().vocab_size));
        const size_t P = (size_t)model_->virtual_tokens();
        if (ids.size() != P && launch_info().rank == 0)
            std::fprintf(stderr, "note: --virtual-init text: '%s' is %zu token%s for %zu virtual tokens: %s\n", text.c_str(),
                         ids.size(), ids.size() == 1 ? "" : "s", P,
                         ids.size() < P ? "they repeat in turn to fill them"
                                        : ("the first " + std::to_string(P) + " start them, the rest go unused").c_str());
        return ids;
    }
    // TEACH: Lester et al. found initialising from real token embeddings beats random vectors; GPT-2's ids are
    // roughly in merge (frequency) order, so sampling the first 5000 draws common tokens.
    Rng rng(args_.seed ^ 0x766f636162ull);
    std::vector<int32_t> ids;
    const int range = std::min(model_->config().vocab_size, 5000);
    for (int j = 0; j < model_->virtual_tokens(); j++) ids.push_back((int32_t)rng.below(range));
    return ids;
}

// theta_0: the weights as the run starts, just after the master copy was made from them (so either reads the
// same values; the parameters are whole on every rank, the master copy under ZeRO only a piece). Tensors
// marked in `done` (by gradient index) got theta_0 from the host values as they loaded.
void Trainer::capture_anchor(const std::vector<bool>& done) {
    const Table& ptab = model_->params().table();
    const std::vector<int>& gidx = model_->grad_index();
    std::vector<float> host;
    for (size_t i = 0; i < ptab.size(); i++) {
        if (gidx[i] < 0 || done[gidx[i]]) continue;
        host.resize(ptab[i].numel);
        be_->download(host.data(), model_->params().ptr(i), model_->params().dtype(), host.size());
        opt_->scatter(anchor_, gidx[i], host.data());
    }
}

void Trainer::load_or_estimate_fisher(const std::string& path, const std::vector<std::string>& data, int batches) {
    const Table& g = model_->grads().table();
    opt_->allocate_like_state(fisher_);  // under ZeRO, this rank's piece only
    std::error_code ec;
    // DIST: read or estimate is one choice for every rank (the estimate holds collectives).
    const bool here = std::filesystem::exists(path, ec);
    const uint64_t seen = dp_ ? dp_->sum((uint64_t)here, "ranks that see the Fisher file") : here;
    if (seen > 0 && seen < (uint64_t)(dp_ ? dp_->world() : 1))
        throw Error("--fisher " + path + ": the file exists for some ranks and not for others (a file system the "
                    "ranks do not share?); give every rank the same file, or none to estimate it");
    if (here) {
        uint64_t print = 0;
        read_fisher(path, g, [&](size_t i, const std::vector<float>& v) {
            opt_->scatter(fisher_, i, v.data());
            print = fisher_fingerprint(print, g[i].name, v);
        });
        fisher_read_ = true;
        note_other_values("--fisher " + path, "Fisher values", state_.fisher_hash, print);
        state_.fisher_hash = print;
        if (!args_.quiet) std::printf("ewc: Fisher read from %s\n", path.c_str());
        return;
    }
    if (data.empty()) throw UsageError("--fisher " + path + " does not exist and no --fisher-data was given to estimate it");
    if (!args_.resume.empty())  // the run it continues read or estimated it at its starting weights
        throw UsageError("--fisher " + path + " does not exist: a resumed run reads the Fisher its run used, which "
                         "was estimated at the starting weights (an estimate now would measure the trained ones); "
                         "give that file, or start the run again");
    if (!model_->grads().holds_memory())
        throw UsageError("--fisher " + path + ": --zero 2 keeps no whole gradient to estimate the Fisher from; "
                         "estimate it once with --zero 0 or 1 (or in one process), then give that --fisher file");
    Loader base(data, model_->config().vocab_size, args_.batch, args_.seq, true, args_.seed + 2);
    if (writer_) {
        base.note_shards();
        const size_t wanted = (size_t)batches * (size_t)args_.batch;
        if (base.num_windows() < wanted)
            std::fprintf(stderr, "note: --fisher-data has %zu windows of --seq %d+1 tokens; %d batches of %d take %zu, "
                         "so the estimate sees windows more than once (fewer --fisher-batches, or more data)\n",
                         base.num_windows(), args_.seq, batches, args_.batch, wanted);
    }
    const auto [lo, hi] = opt_->own_range();  // every rank estimates the same values; each keeps its piece
    // Each squared gradient is weighted 1/batches; the loss scale keeps fp16 gradients from underflowing and
    // is divided back out of the square. A batch whose gradient overflows runs again at half the scale (as a
    // training step would be skipped), down to 1.
    double scale = dynamic_loss_scale_ ? args_.loss_scale : 1.0;
    const bool tty = isatty(fileno(stdout));
    // A batch that is all prompt (loss weight 0) has no gradient to square: the next one is taken instead, up to
    // a whole pass of them in a row.
    size_t passed_over = 0, in_a_row = 0;
    const size_t give_up = base.num_windows() / (size_t)args_.batch + 1;
    for (int k = 0; k < batches; k++) {
        Batch b = base.next();
        size_t counted = 0;
        for (float w : b.weights) counted += w != 0.0f;
        if (!counted) {
            passed_over++;
            if (++in_a_row > give_up)
                throw Error(data[0] + ": no Fisher batch counts a token: every window of --fisher-data is all prompt "
                            "(loss weight 0); give data with text the model is scored on");
            k--;
            continue;
        }
        in_a_row = 0;
        for (;;) {
            model_->zero_grads();
            model_->forward(b.inputs.data(), b.B, b.T, b.weights.data());
            model_->loss(b.targets.data(), b.weights.data(), (float)(scale / (double)counted), true);
            model_->backward();
            // DIST: every rank runs the same batch on the same weights; one sum makes the retry one decision
            // even if their bits differ.
            const bool bad = !std::isfinite(be_->sum_squares(model_->grads().base(), model_->grads().elems()));
            if ((dp_ ? dp_->sum((uint64_t)bad, "Fisher batches that overflowed") : (uint64_t)bad) == 0) break;
            if (scale <= 1)
                throw Error(data[0] + ": the gradient of Fisher batch " + std::to_string(k + 1) +
                            " is not finite even without loss scaling (the model's loss overflows on it)");
            scale = std::max(1.0, scale / 2);
        }
        be_->accumulate_squares(fisher_.base(), opt_->own_gradients(), (float)(1.0 / (batches * scale * scale)), hi - lo);
        // On a terminal the count rewrites itself; into a log, a line every tenth of the way (and the last).
        if (!args_.quiet && tty) {  // (below: a line every tenth of the batches)
            std::printf("\rewc: estimating the Fisher on %s: batch %d/%d", data[0].c_str(), k + 1, batches);
            std::fflush(stdout);
        } else if (!args_.quiet && ((k + 1) % ((batches + 9) / 10) == 0 || k + 1 == batches)) {
            std::printf("ewc: estimating the Fisher on %s: batch %d/%d\n", data[0].c_str(), k + 1, batches);
        }
    }
    model_->zero_grads();
    std::vector<std::vector<float>> host(g.size());
    double total = 0, maxv = 0;
    size_t count = 0;
    for (size_t i = 0; i < g.size(); i++) {
        host[i] = opt_->gather(fisher_, i);  // DIST: a collective under ZeRO; rank 0, the writer, gets it whole
        for (float v : host[i]) total += v, maxv = std::max(maxv, (double)v), count++;
    }
    if (writer_) write_fisher(path, g, host, batches);  // every rank estimated the same values from the same batches
    state_.fisher_hash = 0;  // the writer's counts: it writes the checkpoints
    if (writer_)
        for (size_t i = 0; i < g.size(); i++) state_.fisher_hash = fisher_fingerprint(state_.fisher_hash, g[i].name, host[i]);
    if (writer_ && passed_over)
        std::fprintf(stderr, "note: --fisher-data: %zu micro-batches were all prompt (loss weight 0) and were passed "
                     "over\n", passed_over);
    if (!args_.quiet)
        std::printf("%sewc: Fisher estimated on %d batches (mean %.3g, max %.3g), written to %s\n", tty ? "\r" : "", batches,
                    count ? total / count : 0.0, maxv, path.c_str());
}

void Trainer::update_unfreezing(StepStats& st) {
    if (args_.unfreeze_every <= 0) {
        // Every tensor trains: also one a resumed checkpoint had frozen (its run unfroze gradually; this one
        // does not), each starting its own bias correction as a block that joins does. A no-op otherwise.
        for (size_t i = 0; i < model_->grads().table().size(); i++) opt_->set_active(i, true);
        return;
    }
    // ULMFiT: the top block (with ln_f) trains first; every N steps one more block below joins; once every
    // block trains, the embeddings (wte is also the tied LM head) join last.
    const int L = model_->config().n_layer;
    const int k = (int)(state_.step / (uint64_t)args_.unfreeze_every);
    const int floor = L - 1 - k >= 0 ? L - 1 - k : -1;
    const Table& g = model_->grads().table();
    for (size_t i = 0; i < g.size(); i++) opt_->set_active(i, param_layer(g[i].name, L) >= floor);
    model_->set_backward_floor(floor);
    st.frozen_below = floor;
}

StepStats Trainer::step(float lr) {
    if (!train_) throw UsageError("--train-data: no training shards given (--memory-map alone needs none)");
    const double t0 = now_seconds();
    StepStats st;
    st.step = (int)state_.step + 1;
    if (dp_) dp_->start_step(st.step);  // DIST
    update_unfreezing(st);
    // Load the whole step's micro-batches first: the loss is normalised by the counted tokens of all of
    // them together, so every micro-batch's gradient is scaled by the same 1/count.
    std::vector<Batch> batches;
    for (int k = 0; k < args_.grad_accum; k++) {
        const uint64_t mb = state_.step * (uint64_t)args_.grad_accum + (uint64_t)k;
        if (replay_ && is_replay_batch(mb, args_.replay_frac)) {
            // Replay: base data mixed in so the model keeps rehearsing what it knew, at its own loss weight.
            batches.push_back(replay_->next());
            for (float& w : batches.back().weights) w *= args_.replay_weight;
            st.replay_batches++;
        } else {
            batches.push_back(train_->next());
        }
    }
    for (const Batch& b : batches)
        for (float w : b.weights) st.counted += w != 0.0f;
    if (dp_) st.counted = dp_->sum((uint64_t)st.counted, "counted tokens");  // DIST: one 1/count on every rank
    const double scale = state_.loss_scale;
    st.loss_scale = scale;
    const float dloss = st.counted ? (float)(scale / (double)st.counted) : 0.0f;

    if (dp_)
        dp_->zero_gradients();
    else
        model_->zero_grads();
    double loss_sum = 0, kl_sum = 0;
    const int rank = dp_ ? dp_->rank() : 0, world = dp_ ? dp_->world() : 1;
    for (size_t k = 0; k < batches.size(); k++) {
        const Batch& b = batches[k];
        // Dropout masks: a function of (seed, micro-batch) and of each sequence's place in the global batch
        // (rank r's row b is row b * world + r, as the loader deals windows), so a resumed run draws the same
        // ones and N ranks x B draw those of one rank x N*B.
        Rng key(args_.seed ^ ((state_.step * (uint64_t)args_.grad_accum + k) * 0x9E3779B97F4A7C15ull));
        model_->set_training(true, key.next_u64(), world, rank);
        if (teacher_) {
            be_->range_push("teacher");  // its layers share the backend: the profile and Nsight tell them apart
            teacher_->forward(b.inputs.data(), b.B, b.T, b.weights.data(), b.positions_or_null());
            be_->range_pop();
            model_->forward(b.inputs.data(), b.B, b.T, b.weights.data(), b.positions_or_null());
            const float a = args_.distill;
            auto [ce, kl] =
                model_->loss_distill(b.targets.data(), b.weights.data(), dloss, *teacher_, a, args_.distill_temp);
            loss_sum += (1.0 - a) * ce + a * kl;
            kl_sum += kl;
        } else {
            model_->forward(b.inputs.data(), b.B, b.T, b.weights.data(), b.positions_or_null());
            loss_sum += model_->loss(b.targets.data(), b.weights.data(), dloss, true);
        }
        // DIST: reduce each layer's bucket as backward ends it (unarmed, finish_gradients reduces them all)
        if (dp_ && k + 1 == batches.size()) dp_->arm();
        model_->backward();
    }
    model_->set_training(false);
    if (dp_) {  // DIST: gradients and losses summed over ranks
        dp_->finish_gradients();
        loss_sum = dp_->sum(loss_sum, "loss");
        if (teacher_) kl_sum = dp_->sum(kl_sum, "distillation loss");
    }
    // Gradual unfreezing: a frozen tensor may still have received gradient (the tied embedding, from the LM
    // head); zero it so the norm and clipping see exactly what this step updates, on one rank or many.
    if (st.frozen_below >= 0) {
        const Table& g = model_->grads().table();
        for (size_t i = 0; i < g.size(); i++) {
            if (opt_->active(i)) continue;
            if (dp_)
                dp_->zero_grad_tensor(i);
            else
                be_->zero(model_->grad_ptr(i), g[i].numel * dtype_size(model_->grads().dtype()));
        }
    }
    st.loss = st.counted ? loss_sum / (double)st.counted : NAN;  // no counted token: no loss (null in the metrics)
    const BackendRange range(*be_, "optimizer");  // the penalty, the gradient norm and the update
    st.kl = st.counted ? kl_sum / (double)st.counted : 0.0;
    // L2-SP / EWC: lambda/2 sum F (theta - theta_0)^2, its gradient added (times the loss scale, like every
    // gradient here) before the norm is taken, so clipping sees the whole objective. After the reduction over
    // ranks: identically on each (ZeRO-0), or under ZeRO-1/2 by each rank on its own piece, where its master
    // weights and reduced gradients are, the penalty then summed over the pieces.
    if (anchored()) {
        const auto [lo, hi] = opt_->own_range();
        // Laid out like the optimizer's state: from the own range's start (the whole layout when unsharded).
        const std::vector<OptSegment> segs = clip_segments(opt_->active_segments(), lo, hi);
        void* grads = opt_->own_gradients();
        void* master = opt_->master().bytes() ? opt_->master().base() : nullptr;
        const void* anchor = anchor_.base();
        const void* fisher = fisher_.bytes() ? fisher_.base() : nullptr;
        double penalty = 0;
        if (args_.l2sp > 0)
            penalty += 0.5 * args_.l2sp *
                       be_->anchor_penalty(grads, model_->params().base(), master, anchor, nullptr, segs, args_.l2sp,
                                           (float)scale);
        if (args_.ewc > 0)
            penalty += 0.5 * args_.ewc *
                       be_->anchor_penalty(grads, model_->params().base(), master, anchor, fisher, segs, args_.ewc,
                                           (float)scale);
        st.penalty = opt_->sharded() ? dp_->sum(penalty, "L2-SP/EWC penalty") : penalty;
    }
    const double raw_norm = std::sqrt(dp_ ? dp_->grad_sum_squares()
                                          : be_->sum_squares(model_->grads().base(), model_->grads().elems()));
    st.grad_norm = raw_norm / scale;  // the gradients still carry the loss scale
    st.lr = lr >= 0 ? lr : lr_at(args_.sched, (int)state_.step);
    // TEACH: a single NaN would poison every weight through Adam's moments. Skip the update instead and
    // leave weights and optimizer state untouched.
    st.skipped = (st.counted && !std::isfinite(st.loss)) || !std::isfinite(raw_norm);
    // A step whose windows are all prompt (every token masked) has a zero gradient: Adam would still decay the
    // weights, move them by its momentum and count a step in its bias correction. It makes no update instead.
    st.empty = st.counted == 0 && !anchored();
    // With FP16, an overflowing gradient is the loss scale's fault rather than the model's: lower the
    // scale and do not count it towards --max-bad-steps until the scale is down to 1.
    const bool scale_overflow = dynamic_loss_scale_ && scale > 1 && std::isfinite(st.loss) && !std::isfinite(raw_norm);
    if (dynamic_loss_scale_) update_loss_scale(state_, std::isfinite(raw_norm));
    if (st.empty) {
        // neither an update nor a bad step
    } else if (!st.skipped) {
        double clip = 1.0;
        if (args_.grad_clip > 0 && st.grad_norm > args_.grad_clip) clip = args_.grad_clip / st.grad_norm;
        opt_->step(st.lr, (float)(clip / scale));
        state_.bad_in_a_row = 0;
    } else {
        state_.skipped_steps++;
        if (!scale_overflow) state_.bad_in_a_row++;
    }
    state_.step++;
    state_.loader = train_->state();
    state_.loader_windows = train_->num_windows();
    if (replay_) state_.replay_loader = replay_->state();
    state_.replay_windows = replay_ ? replay_->num_windows() : 0;
    be_->synchronize();
    st.seconds = now_seconds() - t0;
    return st;
}

double Trainer::evaluate() {
    if (!val_) return NAN;
    val_->set_state(LoaderState{});  // always the same windows, so validation losses compare across steps
    double sum = 0;
    size_t counted = 0;
    Batch b;
    bool stopped = false;
    for (int i = 0; i < args_.val_batches && val_->next_in_epoch(b); i++) {  // one pass at most: no window twice
        // A stop request (SIGTERM: a scheduler's grace period is short) ends validation at once, unlogged.
        if ((stopped = stop_requested_ != 0)) break;
        model_->forward(b.inputs.data(), b.B, b.T, b.weights.data(), b.positions_or_null());
        sum += model_->loss(b.targets.data(), b.weights.data(), 0.0f, false);
        for (float w : b.weights) counted += w != 0.0f;
    }
    if (dp_) {  // DIST
        sum = dp_->sum(sum, "validation loss");
        counted = dp_->sum((uint64_t)counted, "validation tokens");
        stopped = dp_->any(stopped, "validation stopped");
    }
    if (stopped) stopped_ = true;  // every rank knows the run was asked to stop, whichever rank was signalled
    if (!stopped && counted == 0 && writer_ && !noted_empty_val_) {
        std::fprintf(stderr, "note: the validation counted no token: the first %d micro-batches of --val-data are "
                     "all prompt (loss weight 0), so no validation loss is logged; more --val-batches, or another "
                     "--val-data\n", args_.val_batches);
        noted_empty_val_ = true;
    }
    return counted && !stopped ? sum / (double)counted : NAN;
}

bool Trainer::stop_now() {
    const bool mine = stop_requested_ != 0;
    stopped_ = dp_ ? dp_->any(mine, "stop request") : mine;
    return stopped_;
}

// A number for metrics.jsonl: `fmt` (one printf conversion), or null where it is NaN or infinite, which JSON
// has no literal for (a skipped step's loss, an overflowing fp16 gradient norm).
static std::string jnum(const char* fmt, double v) {
    if (!std::isfinite(v)) return "null";
    char b[48];
    std::snprintf(b, sizeof b, fmt, v);
    return b;
}

// A loss for metrics.jsonl, with the decimals the plot rounds its points to (kLossDecimals).
static std::string jloss(double v) {
    static const std::string fmt = "%." + std::to_string(kLossDecimals) + "f";
    return jnum(fmt.c_str(), v);
}

double Trainer::lr_find(int steps, double lo, double hi) {
    RunLog log(writer_ ? args_.out_dir : "", -1, "lr_find.jsonl");
    Curve curve{"smoothed loss", "#1f77b4", {}};
    std::vector<double> lrs, smooth;
    double avg = 0, best = INFINITY;
    const double beta = 0.9;  // loss smoothing (with bias correction, as in the fastai implementation)
    for (int i = 0; i < steps; i++) {
        if (stop_now()) {
            if (!args_.quiet) std::printf("lr-find: interrupted after %d of %d steps\n", i, steps);
            break;
        }
        const double lr = lo * std::pow(hi / lo, steps > 1 ? (double)i / (steps - 1) : 0.0);
        StepStats st = step((float)lr);
        if (st.counted == 0) continue;  // no counted token: no loss to learn the rate from
        if (!std::isfinite(st.loss)) break;
        avg = beta * avg + (1 - beta) * st.loss;
        const double sm = avg / (1 - std::pow(beta, i + 1));
        lrs.push_back(lr);
        smooth.push_back(sm);
        curve.points.push_back({lr, as_logged_loss(sm)});  // as lr_find.jsonl holds it
        char line[160];
        std::snprintf(line, sizeof line, "{\"lr\":%.9g,\"loss\":%s,\"smoothed\":%s}", lr,
                      jloss(st.loss).c_str(), jloss(sm).c_str());
        log.append(line);
        if (!args_.quiet && (i % args_.log_every == 0))
            std::printf("lr-find %4d/%d | lr %.3e | loss %.4f | smoothed %.4f\n", i + 1, steps, lr, st.loss, sm);
        best = std::min(best, sm);
        if (i > 10 && sm > 4 * best) break;  // diverged: the rest of the range is useless
    }
    // Steepest descent of the smoothed loss per unit of log(lr), ignoring the noisy first tenth.
    double suggestion = NAN;  // a slope needs a point on each side: none from fewer than 3
    double steepest = INFINITY;
    for (size_t i = std::max<size_t>(1, lrs.size() / 10); i + 1 < lrs.size(); i++) {
        const double slope = (smooth[i + 1] - smooth[i - 1]) / std::log(lrs[i + 1] / lrs[i - 1]);
        if (slope < steepest) steepest = slope, suggestion = lrs[i];
    }
    if (!args_.out_dir.empty() && writer_)
        write_line_chart_svg(args_.out_dir + "/lr_find.svg", "learning-rate range test", "learning rate", "loss",
                             {curve}, true);
    return suggestion;
}

// --profile-step: the step's op times, as a table on stdout and as profile.json in the run directory.
void Trainer::report_profile(const StepStats& st) {
    const std::vector<OpTime> times = be_->profile_end();
    if (!writer_) return;  // every rank profiles its own step; rank 0 speaks for them
    const double step_ms = st.seconds * 1e3;
    // Printed under --quiet too: it is what was asked for, not progress (and with --out '', all a profile leaves).
    std::printf("%s", format_profile(times, st.step, step_ms, be_->profile_clock(), 25).c_str());
    if (args_.out_dir.empty()) return;
    const std::string json = profile_json(times, st.step, step_ms, be_->profile_clock());
    write_file_atomic(args_.out_dir + "/profile.json", json.data(), json.size());
}

void Trainer::save(const std::string& path, bool resume) {
    resume_written_ += resume;
    save_checkpoint(path, *model_, opt_.get(), resume ? &state_ : nullptr, anchored() ? &anchor_ : nullptr,
                    writer_, trained_on());
    if (dp_) dp_->wait_for_writer(kCheckpointWriteTimeout);  // DIST
}

static std::string mib(size_t bytes) {
    char b[32];
    std::snprintf(b, sizeof b, "%9.2f MiB", bytes / 1048576.0);
    return b;
}

void Trainer::print_memory_map() const {
    const size_t p = model_->param_bytes(), g = model_->grad_bytes() + (dp_ ? dp_->grad_shard_bytes() : 0),
                 o = opt_->state_bytes(), a = model_->act_bytes();
    size_t trainable = 0;
    for (const TensorInfo& t : model_->grads().table().tensors()) trainable += t.numel;
    const ModelConfig& cfg = model_->config();
    std::printf("model: %s, %zu parameters (%zu trainable), backend %s%s, attention %s\n", cfg.describe().c_str(),
                num_parameters(cfg), trainable, be_->name().c_str(),
                be_->plans_only() ? " (planned, nothing allocated)" : "",
                be_->attention_path(cfg.n_embd, cfg.n_head).c_str());
    const size_t r = anchor_.bytes() + fisher_.bytes() +
                     (teacher_ ? teacher_->param_bytes() + teacher_->act_bytes() : 0);
    std::printf("memory: parameters %s | gradients %s | optimizer %s | activations %s (recompute %s, logits of %zu rows)"
                "%s%s | total %s\n",
                mib(p).c_str(), mib(g).c_str(), mib(o).c_str(), mib(a).c_str(), recompute_name(model_->recompute()),
                model_->head_rows(),
                r ? " | retention " : "", r ? mib(r).c_str() : "", mib(p + g + o + a + r).c_str());
    if (model_->peft().any()) {
        size_t base_trains = 0;
        for (size_t i = 0; i < model_->num_base_tensors(); i++) base_trains += model_->grad_index()[i] >= 0;
        if (base_trains)
            std::printf("peft: %s, and %zu base tensors train too (kept in adapter.ckpt beside it)\n",
                        model_->peft().describe().c_str(), base_trains);
        else
            std::printf("peft: %s (base frozen)\n", model_->peft().describe().c_str());
    }
    if (dp_) std::printf("data parallel: %s (memory above is per rank)\n", dp_->describe().c_str());
}

// One arena as a table: each tensor's offset and size in bytes (the gap after a tensor, up to the next 64-element
// boundary, counted in the arena's total but not in the tensor's bytes).
static void print_arena(const char* title, const Arena& a) {
    if (!a.elems()) return;
    const size_t esize = dtype_size(a.dtype());
    std::printf("%s: %s, %zu tensors, %s\n", title, dtype_name(a.dtype()), a.table().size(),
                a.holds_memory() ? mib(a.bytes()).c_str() : "the layout only (ZeRO-2: below)");
    std::printf("  %14s %14s  %-18s %s\n", "offset", "bytes", "shape", "name");
    for (const TensorInfo& t : a.table().tensors()) {
        std::string shape = "(";
        for (size_t i = 0; i < t.shape.size(); i++) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
        shape += ")";
        std::printf("  %14zu %14zu  %-18s %s\n", t.offset * esize, t.numel * esize, shape.c_str(), t.name.c_str());
    }
}

void Trainer::print_memory_detail() const {
    print_memory_map();
    print_arena("parameters", model_->params());
    print_arena("gradients (trainable tensors only)", model_->grads());
    if (model_->grad_slots()) {  // ZeRO-2: the layout above has no memory of its own
        const Arena& gr = model_->grads();
        std::printf("gradients (ZeRO-2): %s, laid out as %.2f MiB of trainable tensors; held: the embeddings' "
                    "and final LayerNorm's (all of backward) and %d block slot%s, %s, plus this rank's reduced "
                    "piece, %s\n",
                    dtype_name(gr.dtype()), gr.elems() * dtype_size(gr.dtype()) / 1048576.0, model_->grad_slots_held(),
                    model_->grad_slots_held() == 1 ? "" : "s",
                    mib(model_->grad_bytes()).c_str(), mib(dp_ ? dp_->grad_shard_bytes() : 0).c_str());
    }
    if (opt_->state_bytes())
        std::printf("optimizer: Adam moments m and v%s, laid out like the gradients, %s in all\n",
                    be_->has_master() ? " and the fp32 master weights" : "", mib(opt_->state_bytes()).c_str());
    print_arena("activations (kept from forward for backward)", model_->acts());
    print_arena("scratch (one pass's activation gradients)", model_->scratch());
    print_arena("L2-SP/EWC anchor", anchor_);
    print_arena("EWC Fisher", fisher_);
    if (teacher_)
        std::printf("distillation teacher: parameters %s, activations %s\n", mib(teacher_->param_bytes()).c_str(),
                    mib(teacher_->act_bytes()).c_str());
    const std::string note = be_->memory_note();
    if (!note.empty())
        std::printf("the backend's own%s: %s\n",
                    be_->plans_only() ? "" : ", before a step (its scratch grows in the first)", note.c_str());
}

int Trainer::run() {
    if (writer_ && args_.out_dir.empty() && !args_.quiet)
        std::fprintf(stderr, "note: --out is empty: this run writes nothing (no checkpoint, metrics or plot)\n");
    if (writer_ && !args_.out_dir.empty())
        for (const std::string& path : remove_dead_temporaries(args_.out_dir))
            std::fprintf(stderr, "note: %s\n", dead_temporary_note(path).c_str());
    // A new run in a directory an earlier run used (bin/train --overwrite, the default job started again): that
    // run's finished weights must not pass for this run's if it halts, is stopped or dies (the directory
    // describes one run), nor its resume.ckpt, which a --resume would continue beside this run's log if this run
    // died before its first checkpoint. A resume of that run (from a copy kept of it) keeps its resume.ckpt. Not
    // a file this run reads.
    if (writer_ && !args_.out_dir.empty() && !resumes_own_run(args_))
        for (const char* name : {"model.ckpt", "adapter.ckpt", "resume.ckpt"}) {
            const std::string path = args_.out_dir + "/" + name;
            std::error_code ec;
            if (!std::filesystem::exists(path, ec) || same_file(path, args_.init) || same_file(path, args_.teacher) ||
                same_file(path, args_.adapter) || same_file(path, args_.resume))
                continue;
            const bool resume = std::strcmp(name, "resume.ckpt") == 0;
            if (resume && resumes_run_of_out(args_)) continue;
            if (std::filesystem::remove(path, ec))
                std::fprintf(stderr, "note: removed %s of an earlier run (this run writes its own %s)\n", path.c_str(),
                             resume ? "at its first checkpoint" : "when it finishes");
        }
    // A resume keeps its run's lines up to its step; one let replace another run's (--overwrite) starts the log
    // afresh, not on that run's lines.
    const bool keep_log = !args_.resume.empty() && (!args_.overwrite || resumes_run_of_out(args_));
    RunLog log(writer_ ? args_.out_dir : "", keep_log ? (long long)state_.step : -1);
    if (keep_log && state_.step > 0 && log.read_back() && log.last_train_step() < (long long)state_.step)
        std::fprintf(stderr, "note: %s/metrics.jsonl %s, but %s is at step %llu: the lines of the steps between "
                     "are lost (the log goes on from step %llu)\n", args_.out_dir.c_str(),
                     log.last_train_step() < 0 ? "holds no training step"
                                               : ("ends at step " + std::to_string(log.last_train_step())).c_str(),
                     args_.resume.c_str(), (unsigned long long)state_.step, (unsigned long long)state_.step + 1);
    // The log's lines reach the disk before the checkpoint of their step does (a machine that goes down could
    // otherwise keep a checkpoint beside a log that stops short of it).
    auto checkpoint = [&] {
        log.sync();
        save(args_.out_dir + "/resume.ckpt", true);
    };
    if (teacher_)  // the training curve is the distillation objective; validation measures cross-entropy alone
        log.set_title("loss (train: (1-\u03b1) CE + \u03b1 T\u00b2 KL, \u03b1 = " + float_text(args_.distill) +
                      ", T = " + float_text(args_.distill_temp) + "; validation: CE)");
    if (!args_.quiet) {
        print_memory_map();
        std::printf("data: %zu training tokens in %zu %swindows of %d", train_->num_tokens(), train_->num_windows(),
                    args_.windows == Windows::isolated ? "isolated document "
                    : args_.windows != Windows::fixed  ? "document "
                                                       : "",
                    args_.seq);
        if (args_.windows != Windows::fixed)  // what whole documents cost
            std::printf(" (%s%.1f%% of their positions hold a target, the rest is padding)",
                        args_.windows_auto ? "--windows auto, as the data is prompt/completion; " : "",
                        100.0 * train_->filled());
        std::printf("; %s%s\n", args_.out_dir.empty() ? "no run directory (--out '')" : "run directory ",
                    args_.out_dir.c_str());
    }
    const int last = args_.halt_at > 0 ? args_.halt_at : args_.steps;
    const size_t tokens_per_step = (size_t)args_.batch * args_.seq * args_.grad_accum * (dp_ ? dp_->world() : 1);
    const double t_start = now_seconds();
    double last_checkpoint = t_start;  // --ckpt-minutes counts from here
    uint64_t saved_step = ~uint64_t(0);  // the step resume.ckpt holds, once this run has written it
    const uint64_t first = state_.step;
    double val = NAN;
    auto validate = [&](int step) {
        // A resumed run has the validations of its checkpoint's step in the log already (a resume of a finished
        // run, to write model.ckpt again; one stopped before its first step). Only rank 0 reads the log, and every
        // rank must make the same choice: evaluate() holds collectives.
        const bool logged = log.has_val(step);
        if (dp_ ? dp_->any(logged, "whether this validation is in the log") : logged) return;
        val = evaluate();
        if (std::isnan(val)) return;
        log.val_point(step, val);
        char line[128];
        std::snprintf(line, sizeof line, "{\"step\":%d,\"val_loss\":%s}", step, jloss(val).c_str());
        log.append(line);
        if (!args_.quiet) std::printf("step %d: validation loss %.4f\n", step, val);
        log.write_plot();
    };
    // A resumed run first makes up a validation that was due at its checkpoint's step but is not in the log (a
    // stop that cut it short).
    const bool due_now = args_.val_every > 0 && state_.step % args_.val_every == 0 && (int)state_.step != args_.steps;
    if (state_.step == 0 || due_now) validate((int)state_.step);
    bool interrupted = false;
    while ((int)state_.step < last) {
        if (stop_now()) {
            interrupted = true;
            break;
        }
        const bool profiled = args_.profile_step == (int)state_.step + 1;
        if (profiled) be_->profile_begin();
        StepStats st = step();
        if (profiled) report_profile(st);
        const double elapsed = now_seconds() - t_start;
        const double per_step = elapsed / (double)(state_.step - first);
        const double tok_s = tokens_per_step / st.seconds;
        // Every rank's tokens against every rank's GPU: tok_s counts the world's, peak_flops_ is one GPU's.
        const double mfu =
            peak_flops_ > 0 ? 100.0 * tok_s * flops_per_token_ / (peak_flops_ * (dp_ ? dp_->world() : 1)) : 0.0;
        char mfu_text[48] = "";
        if (peak_flops_ > 0) std::snprintf(mfu_text, sizeof mfu_text, " | MFU %4.1f%%", mfu);
        if (dynamic_loss_scale_)
            std::snprintf(mfu_text + std::strlen(mfu_text), sizeof mfu_text - std::strlen(mfu_text), " | scale %g",
                          st.loss_scale);
        log.train_point(st.step, st.loss);
        char line[512];
        std::snprintf(line, sizeof line,
                      "{\"step\":%d,\"loss\":%s,\"lr\":%.6g,\"grad_norm\":%s,\"tokens_per_s\":%s,"
                      "\"counted_tokens\":%zu,\"skipped\":%s,\"skipped_total\":%llu,\"loss_scale\":%g,"
                      "\"mfu_percent\":%s,\"penalty\":%s,\"distill_kl\":%s,\"replay_batches\":%d,"
                      "\"frozen_below\":%d}",
                      st.step, jloss(st.loss).c_str(), st.lr, jnum("%.6g", st.grad_norm).c_str(),
                      jnum("%.1f", tok_s).c_str(), st.counted, st.skipped ? "true" : "false",
                      (unsigned long long)state_.skipped_steps, st.loss_scale,
                      peak_flops_ > 0 ? jnum("%.2f", mfu).c_str() : "null",  // no peak rate known: no MFU
                      jnum("%.6g", st.penalty).c_str(), jnum("%.6g", st.kl).c_str(), st.replay_batches,
                      st.frozen_below);
        log.append(line);
        if (!args_.quiet && (st.step % args_.log_every == 0 || st.step == last || st.skipped || st.empty))
            std::printf("step %5d/%d | loss %.4f | lr %.2e | norm %7.3f | %8.0f tok/s%s | ETA %s%s\n", st.step,
                        args_.steps, st.loss, st.lr, st.grad_norm, tok_s, mfu_text,
                        format_duration(per_step * (last - (int)state_.step)).c_str(),
                        st.skipped ? " | SKIPPED (non-finite)" : st.empty ? " | no counted tokens: no update" : "");
        if (!args_.quiet && state_.step == first + 1) {
            // What the backend holds beside the arenas above (its scratch grows to its size in the first step).
            const std::string note = be_->memory_note();
            if (!note.empty()) std::printf("memory after the first step: %s\n", note.c_str());
        }
        std::fflush(stdout);
        if (state_.bad_in_a_row >= (uint64_t)args_.max_bad_steps) {
            if (writer_)
                std::fprintf(stderr,
                             "error: %d steps in a row had a non-finite loss or gradient; stopping. The weights are "
                             "those of the last good step: %s/resume.ckpt\n",
                             (int)state_.bad_in_a_row, args_.out_dir.c_str());
            if (!args_.out_dir.empty()) checkpoint();
            return 1;
        }
        if (args_.val_every > 0 && st.step % args_.val_every == 0 && st.step != args_.steps) validate(st.step);
        // By steps, or by the clock (rank 0's: every rank must take part in the save, so they agree first).
        bool due = args_.ckpt_every > 0 && st.step % args_.ckpt_every == 0;
        if (args_.ckpt_minutes > 0 && !args_.out_dir.empty()) {
            const bool late = writer_ && now_seconds() - last_checkpoint >= args_.ckpt_minutes * 60.0;
            due = (dp_ ? dp_->any(late, "checkpoint clock") : late) || due;
        }
        if (due && !args_.out_dir.empty()) {
            checkpoint();
            last_checkpoint = now_seconds();
            saved_step = state_.step;
        }
    }
    if ((int)state_.step == args_.steps) {
        validate((int)state_.step);
        // The run is finished (model.ckpt is written), but a stop that came now cut its last validation short.
        if (val_ && std::isnan(val) && stop_requested() && writer_ && !log.has_val((int)state_.step))
            std::fprintf(stderr, "note: the stop cut the final validation short (not logged); the run itself is "
                         "finished%s%s%s\n", args_.out_dir.empty() ? "" : ": to log it, run the same command with "
                         "--resume ", args_.out_dir.c_str(), args_.out_dir.empty() ? "" : "/resume.ckpt");
    }
    if (dp_) {  // DIST: every replica must hold the same weights
        uint64_t hash = 0;
        const bool agree = dp_->replicas_agree(&hash);
        char line[128];
        std::snprintf(line, sizeof line, "{\"step\":%llu,\"weights_hash\":\"%016llx\",\"ranks\":%d,\"ranks_agree\":%s}",
                      (unsigned long long)state_.step, (unsigned long long)hash, dp_->world(), agree ? "true" : "false");
        log.append(line);
        if (!agree) throw Error("the ranks' weights differ after training (a bug in data parallelism)");
        if (!args_.quiet) std::printf("weights: identical on all %d ranks (hash %016llx)\n", dp_->world(),
                                      (unsigned long long)hash);
    }
    log.write_plot();
    if (interrupted || (int)state_.step < args_.steps) {
        // Not a finished run (stopped, or --halt-at): no model.ckpt (a finished run's name); a stop also gets a
        // status scripts can see. A stop in a step whose checkpoint was just written does not write it again (for
        // gpt2-xl, 20 GB inside a scheduler's grace period).
        if (!args_.out_dir.empty() && saved_step != state_.step) checkpoint();
        if (writer_ && (interrupted || !args_.quiet)) {
            const bool hint = args_.resume_hint && !args_.out_dir.empty();
            std::fprintf(interrupted ? stderr : stdout, "train: %s after step %llu of %d%s%s%s\n",
                         interrupted ? "interrupted" : "halted (--halt-at)", (unsigned long long)state_.step,
                         args_.steps, hint ? "; to continue, run the same command with --resume " : "",
                         hint ? args_.out_dir.c_str() : "", hint ? "/resume.ckpt" : "");
        }
        return interrupted ? kInterrupted : 0;
    }
    if (!args_.out_dir.empty()) {
        if (saved_step != state_.step) checkpoint();  // unless the last step's save
        if (model_->peft().any()) {
            // The adapter alone (small, goes on the base with --adapter), and a model usable anywhere:
            // LoRA merged into the base weights, virtual tokens folded.
            if (writer_)
                save_adapter(args_.out_dir + "/adapter.ckpt", *model_, state_.base_fingerprint, state_.trained_base,
                             trained_on());
            if (writer_) save_merged(args_.out_dir + "/model.ckpt", *model_, trained_on());
        } else {
            save(args_.out_dir + "/model.ckpt", false);
            // An earlier PEFT run's adapter beside this run's model would pass for this run's: the directory
            // must describe one run.
            const std::string stale = args_.out_dir + "/adapter.ckpt";
            std::error_code ec;
            if (writer_ && std::filesystem::remove(stale, ec))
                std::fprintf(stderr, "note: removed %s of an earlier run (this run trains no adapter)\n", stale.c_str());
        }
        if (!args_.quiet)
            std::printf("done: %llu steps; wrote %s/{model.ckpt,%sresume.ckpt,metrics.jsonl,loss.svg%s}\n",
                        (unsigned long long)state_.step, args_.out_dir.c_str(),
                        model_->peft().any() ? "adapter.ckpt," : "", args_.profile_step > 0 ? ",profile.json" : "");
    }
    return 0;
}

}  // namespace tune
