#include "train/args.h"

#include <climits>
#include <filesystem>
#include <functional>

#include "kernels/common.h"
#include "model/config.h"
#include "train/cli.h"
#include "train/select.h"

namespace tune {
namespace {

// A list of files given again replaces the earlier one, as a repeated single value does (a script's common options
// and then its own); said, since a user may have meant both.
std::function<void(const std::string&)> file_list(const char* flag, std::vector<std::string>* target,
                                                  std::vector<std::string>* notes) {
    return [=](const std::string& v) {
        if (!target->empty())
            notes->push_back(std::string(flag) + " given twice: the later list replaces the earlier (" +
                             std::to_string(target->size()) + " files); give one comma-separated list for both");
        *target = split_file_list(flag, v);
    };
}

// Declares every option of bin/train against `a`; --help shows a's current values as defaults.
Cli train_cli(TrainArgs& a) {
    Cli c("usage: bin/train [options]\n"
          "Trains or fine-tunes a GPT-2 model on token shards (see bin/prepare) and writes a run directory.\n"
          "bin/train alone, with no options at all, runs the default job instead: a synthetic corpus and task, a\n"
          "tiny GPT-2 pretrained and then fine-tuned on it, into runs/default/ (README.md, \"The two commands\").");
    auto one_of = [](const std::string& flag, std::vector<std::string> allowed, std::string* target) {
        return [=](const std::string& v) {
            std::string list;
            for (const auto& x : allowed) {
                if (x == v) {
                    *target = v;
                    return;
                }
                list += (list.empty() ? "" : ", ") + x;
            }
            throw UsageError(flag + ": expected one of " + list + ", got '" + v + "'");
        };
    };
    c.custom("--device", "cpu|cuda|auto", "backend; auto picks cuda when a GPU is present, else cpu", a.device,
             one_of("--device", {"cpu", "cuda", "auto"}, &a.device));
    c.custom("--precision", "fp32|bf16|fp16", "compute precision (bf16 and fp16 on cuda only: the cpu backend "
             "refuses them)", a.precision,
             one_of("--precision", {"fp32", "bf16", "fp16"}, &a.precision));
    c.custom("--attention", "auto|cudnn|matmul", "cuda attention: cudnn = cuDNN's fused flash attention (bf16/fp16; "
             "saves NH floats per token, not NH*T), matmul = cuBLAS products with the T x T probabilities kept, "
             "auto = cudnn where it runs, else matmul", a.attention,
             one_of("--attention", {"auto", "cudnn", "matmul"}, &a.attention));
    c.flag("--stochastic-rounding", "bf16: round the working weights from the fp32 master stochastically "
           "(reproducible: the bits hash the element, the step and --seed)", &a.stochastic_rounding);
    c.custom("--model", "PRESET", "model to train from random initialisation (tiny, small, gpt2, gpt2-medium, ...)",
             a.model, [&a](const std::string& v) {
                 preset_config(v);  // throws for an unknown name
                 a.model = v;
             });
    c.option("--init", "WEIGHTS",
             "start from these weights: a tune.cu checkpoint, a Hugging Face GPT-2 directory (or its "
             "model.safetensors), or an llm.c .bin",
             &a.init);
    c.option("--resume", "CKPT", "continue exactly where a resume checkpoint left off: add it to the run's own command "
             "(--init and --model may stay; options that differ are named)",
             &a.resume);
    c.option("--adapter", "FILE", "go on training this adapter (an adapter.ckpt: LoRA, virtual tokens) on the --init "
             "base it was trained on, with fresh optimizer state; its PEFT settings come with it (with --resume it "
             "may stay: the resume checkpoint holds the adapter; --distill's default teacher is the base without it)",
             &a.adapter);
    c.custom("--train-data", "FILES", "comma-separated token shards to train on (made by bin/prepare)", "(none)",
             file_list("--train-data", &a.train_data, &a.parse_notes));
    c.custom("--val-data", "FILES", "comma-separated token shards for validation loss", "(none)",
             file_list("--val-data", &a.val_data, &a.parse_notes));
    c.custom("--sequential", "", "read training windows in file order instead of shuffling", "off",
             [&a](const std::string&) { a.shuffle = false; });
    c.custom("--windows", "auto|fixed|documents|single|isolated", "how --train-data and --val-data are cut into "
             "windows of --seq: fixed (every --seq tokens; an example may start in one window and end in the next, "
             "without its prompt), documents (each window starts at an <|endoftext|> and holds whole documents, "
             "padded; longer ones are cut), single (the same, one document a window: none attends to another, more "
             "padding), isolated (packed as documents, but each attends only to itself and the virtual tokens, at "
             "positions from 0, as in single; on cuda it takes --attention matmul), or auto: documents when "
             "--train-data is prompt/completion data (some target's loss weight is 0) and --vocab's <|endoftext|> is "
             "in the model's vocabulary, else fixed; --val-data follows, a --resume goes on with the run's own. Replay "
             "and Fisher data stay fixed",
             "auto", [&a](const std::string& v) { a.windows_auto = parse_windows_flag(v, &a.windows); });
    c.option("--train-top", "K", "train only the top K blocks and the final LayerNorm (0: everything)", &a.train_top, 0,
             1 << 20);
    c.option("--train-only", "PATTERNS", "train only parameters matching these comma-separated patterns "
             "(e.g. 'h.11.*,ln_f.*')", &a.train_only);
    c.custom("--lr-layer-factor", "F|ulmfit", "discriminative rates: block l at lr * F^(L-1-l); ulmfit: F = 1/2.6 "
             "(Howard and Ruder's)", "0 (off)", [&a](const std::string& v) {
                 a.lr_layer_factor = v == "ulmfit" ? kUlmfitLayerFactor : (float)parse_double("--lr-layer-factor", v, 0, 1);
             });
    c.option("--unfreeze-every", "N", "gradual unfreezing (ULMFiT): train the top block (and ln_f) first, one more block "
             "every N steps, the embeddings last (0: off); with --train-top or --train-only, only blocks in that set "
             "ever join", &a.unfreeze_every, 0, INT_MAX);
    c.option("--lora-rank", "R", "LoRA rank r: trains low-rank updates of the --lora-targets layers, base frozen (0: off)",
             &a.peft.lora_rank, 0, 1 << 16);
    c.option("--lora-alpha", "A", "LoRA scale: the update is multiplied by A / r", &a.peft.lora_alpha, 1e-6, 1e6);
    c.option("--lora-dropout", "P", "dropout on the LoRA branch's input during training (alone with --adapter or "
             "--resume: this run's, over the one they hold)", &a.peft.lora_dropout, 0, 0.99);
    c.custom("--lora-targets", "LIST", "layers LoRA adapts: all, or some of qkv, attn_proj, mlp_up, mlp_down", "all",
             [&a](const std::string& v) { a.peft.lora_targets = parse_lora_targets(v, "--lora-targets"); });
    c.custom("--virtual", "KIND",
             "virtual tokens before every sequence, base frozen: prompt (soft prompt tuning), ptune (P-tuning: "
             "made by a small network, folded into a prompt at the end), prefix (prefix tuning: every layer's "
             "keys and values, through a network)",
             "none", [&a](const std::string& v) {
                 if (v != "none" && v != "prompt" && v != "ptune" && v != "prefix")
                     throw UsageError("--virtual: expected one of none, prompt, ptune, prefix, got '" + v + "'");
                 a.peft.virt = parse_virtual(v, "--virtual");
             });
    c.custom("--virtual-tokens", "P", "number of virtual tokens (1 to 65536; needed with --virtual)", "(none)",
             [&a](const std::string& v) { a.peft.n_virtual = parse_int("--virtual-tokens", v, 1, 1 << 16); });
    c.custom("--virtual-hidden", "H", "hidden width of the ptune/prefix network (needed with those)", "(none)",
             [&a](const std::string& v) { a.peft.hidden = parse_int("--virtual-hidden", v, 1, 1 << 20); });
    c.option("--virtual-init", "HOW", "virtual-token start: random, vocab (embeddings of random common tokens), or "
             "text:WORDS (the embeddings of WORDS' tokens)", &a.virtual_init);
    c.option("--vocab", "DIR", "GPT-2 vocabulary (encoder.json, vocab.bpe) for --virtual-init text: and --windows "
             "auto, documents, single or isolated (which token ends a document)", &a.vocab);
    c.custom("--recompute", "MODE", "activation checkpointing: none, selective (LayerNorm and GELU outputs, and the attention "
             "probabilities where attention keeps them: fp32, the cpu backend, --attention matmul, --windows "
             "isolated), full (each block's forward up to its GELU output; only its output is kept)",
             "none", [&a](const std::string& v) { a.recompute = parse_recompute(v); });
    c.option("--head-chunk", "ROWS", "rows of LM-head logits kept at once; a micro-batch with more counted tokens "
             "runs the head in chunks inside the loss, saving Vp values per token (98 KiB in bf16) for one "
             "chunk's buffer, and the same for --distill's teacher (0: keep every row)", &a.head_chunk, 0, INT_MAX);
    c.option("--l2sp", "LAMBDA", "L2-SP: add LAMBDA/2 * |theta - theta0|^2 over trainable parameters (0: off)",
             &a.l2sp, 0, 1e12);
    c.option("--ewc", "LAMBDA", "EWC: add LAMBDA/2 * sum F (theta - theta0)^2 with the diagonal Fisher F (0: off)",
             &a.ewc, 0, 1e12);
    c.option("--fisher", "FILE", "EWC's Fisher (safetensors): read when it exists, else estimated on --fisher-data "
             "and written there", &a.fisher);
    c.custom("--fisher-data", "FILES", "comma-separated base-data shards for the Fisher estimate", "(none)",
             file_list("--fisher-data", &a.fisher_data, &a.parse_notes));
    c.option("--fisher-batches", "N", "micro-batches of the Fisher estimate", &a.fisher_batches, 1, INT_MAX);
    c.option("--distill", "ALPHA", "knowledge distillation: loss = (1-ALPHA) CE + ALPHA T^2 KL(teacher || student) "
             "(0: off)", &a.distill, 0, 1);
    c.option("--distill-temp", "T", "distillation temperature", &a.distill_temp, 1e-3, 1e3);
    c.option("--teacher", "WEIGHTS", "distillation teacher (default: the --init weights)", &a.teacher);
    c.custom("--replay-data", "FILES", "comma-separated base-data shards mixed into training (replay)", "(none)",
             file_list("--replay-data", &a.replay_data, &a.parse_notes));
    c.option("--replay-frac", "F", "fraction of micro-batches drawn from --replay-data", &a.replay_frac, 0, 1);
    c.option("--replay-weight", "W", "loss weight of replayed tokens", &a.replay_weight, 0, 1e6);
    c.option("--batch", "B", "sequences per micro-batch", &a.batch, 1, 1 << 20);
    c.option("--seq", "T", "tokens per sequence (at most the model's block size, less any virtual tokens)", &a.seq, 1,
             1 << 20);
    c.option("--grad-accum", "K", "micro-batches per optimizer step", &a.grad_accum, 1, 1 << 20);
    c.custom("--steps", "N", "optimizer steps in the whole run (with --lr-find: of the sweep)", "100; 300 with --lr-find",
             [&a](const std::string& v) {
                 a.steps = parse_int("--steps", v, 1, INT_MAX);
                 a.steps_given = true;
             });
    c.option("--halt-at", "STEP", "stop once STEP steps are done, writing a resume checkpoint (0: run to the end)",
             &a.halt_at, 0, INT_MAX);
    c.option("--lr", "LR", "peak learning rate", &a.sched.lr, 1e-12, 10);
    c.custom("--schedule", "KIND",
             "learning-rate schedule: constant, cosine, linear, triangular, triangular2, exp_range (cyclical), "
             "stlr (slanted triangular)",
             a.sched.kind,
             one_of("--schedule", {"constant", "cosine", "linear", "triangular", "triangular2", "exp_range", "stlr"},
                    &a.sched.kind));
    c.option("--warmup", "N", "steps of linear warmup", &a.sched.warmup, 0, INT_MAX);
    c.option("--min-lr-frac", "F", "floor of cosine/linear decay, base of cyclical schedules, as a fraction of --lr",
             &a.sched.min_frac, 0, 1);
    c.option("--half-cycle", "N", "cyclical schedules: steps from base to peak", &a.sched.half_cycle, 1, INT_MAX);
    c.option("--gamma", "G", "exp_range: amplitude factor per step", &a.sched.gamma, 1e-9, 1);
    c.option("--cut-frac", "F", "stlr: fraction of steps spent rising", &a.sched.cut_frac, 1e-6, 0.999999);
    c.option("--ratio", "R", "stlr: peak / lowest learning rate", &a.sched.ratio, 1, 1e9);
    c.option("--beta1", "B1", "Adam beta1", &a.adam.beta1, 0, 0.999999);
    // At most the largest float below 1: a beta2 that rounds to 1 in single precision zeroes Adam's bias
    // correction, and every weight becomes 0/0.
    c.option("--beta2", "B2", "Adam beta2", &a.adam.beta2, 0, 0.99999994);
    c.option("--eps", "EPS", "Adam epsilon", &a.adam.eps, 1e-30, 1);
    c.option("--weight-decay", "WD", "decoupled weight decay on 2-D matmul weights", &a.adam.weight_decay, 0, 10);
    c.flag("--decay-embeddings", "also apply weight decay to the embedding tables: wte, wpe and the virtual tokens' "
           "(prompt, P-tuning and prefix inputs)", &a.adam.decay_embeddings);
    c.option("--grad-clip", "NORM", "clip the global gradient norm to NORM (0: off)", &a.grad_clip, 0, 1e9);
    c.custom("--loss-scaling", "auto|on|off", "dynamic loss scaling (auto: on for fp16)", a.loss_scaling,
             one_of("--loss-scaling", {"auto", "on", "off"}, &a.loss_scaling));
    c.option("--loss-scale", "S", "initial dynamic loss scale (a resume goes on with the checkpoint's scale unless this or the scaling changed)", &a.loss_scale, 1, 3e38);
    c.option("--max-bad-steps", "N", "stop after N consecutive steps with a NaN/Inf loss or gradient (each is skipped)",
             &a.max_bad_steps, 1, INT_MAX);
    c.custom("--seed", "S", "seed for initialisation, data order, dropout and stochastic rounding (--resume: the "
             "checkpoint's when not given)", std::to_string(a.seed), [&a](const std::string& v) {
                 a.seed = parse_u64("--seed", v);
                 a.seed_given = true;
             });
    c.option("--val-every", "N", "validation loss every N steps (0: only before the first step and at the end)", &a.val_every, 0, INT_MAX);
    c.option("--val-batches", "M", "micro-batches per validation (at most one pass over --val-data: no window twice)", &a.val_batches, 1, INT_MAX);
    c.option("--ckpt-minutes", "M", "also write the resume checkpoint whenever M minutes have passed since the last "
             "one, so a kill -9 or an out-of-memory kill loses at most that much (0: off)", &a.ckpt_minutes, 0, 1e9);
    c.option("--ckpt-every", "N", "write a resume checkpoint every N steps (0: only at the end)", &a.ckpt_every, 0,
             INT_MAX);
    c.option("--out", "DIR", "run directory: metrics.jsonl, loss.svg, model.ckpt, resume.ckpt ('': write nothing)",
             &a.out_dir, /*empty_ok=*/true);
    c.flag("--overwrite", "start a new run in an --out that holds an earlier run's checkpoints (refused without it): "
           "they, its metrics and its plot are replaced (not files this run reads: --init, --teacher, --adapter)",
           &a.overwrite);
    c.flag("--memory-map", "print where every byte goes (each tensor of each arena: offset, bytes, shape, name) "
           "and exit without training (no --train-data needed); planned, nothing allocated, so also for a run too "
           "big for this machine or --device cuda without a GPU", &a.memory_map);
    c.flag("--lr-find", "learning-rate range test over --steps steps (300 unless given; exponential from --lr-find-lo "
           "to --lr-find-hi): writes lr_find.svg and lr_find.jsonl and prints a suggested --lr; the schedule, "
           "validation and checkpoint flags have no part in it (refused)", &a.lr_find);
    c.option("--lr-find-lo", "LR", "lr-find: lowest rate", &a.lr_find_lo, 1e-12, 10);
    c.option("--lr-find-hi", "LR", "lr-find: highest rate", &a.lr_find_hi, 1e-12, 100);
    c.option("--log-every", "N", "a progress line every N steps", &a.log_every, 1, INT_MAX);
    c.option("--profile-step", "STEP", "time every op of step STEP (CUDA: each launcher's GPU time, by CUDA events; "
             "CPU: each op's wall time) and print where the step's time went, by model part and op; --out gets "
             "profile.json (0: off)", &a.profile_step, 0, INT_MAX);
    c.flag("--quiet", "nothing on standard output but what a flag asks for (--profile-step's table): no model and "
           "memory lines, progress, validation losses or closing line; notes and errors still go to standard error",
           &a.quiet);
    // DIST
    c.option("--zero", "0|1|2", "data parallel: 1 shards the optimizer state (Adam moments, FP32 master weights) "
             "across ranks (ZeRO-1); 2 shards the reduced gradients too, and the blocks' gradients share two slots "
             "(ZeRO-2); 0 replicates everything", &a.zero, 0, 2);
    c.option("--comm-timeout", "S", "data parallel: seconds a collective may wait for the other ranks before "
             "the job stops, naming the rank that did not answer", &a.comm_timeout, 1, 1e6);
    c.custom("--comm-overlap", "on|off", "data parallel: reduce each layer's gradients while backward goes on (off: all "
             "after backward, to measure what the overlap saves; with --zero 2 each is waited for as its layer ends)", "on", [&a](const std::string& v) {
                 if (v != "on" && v != "off") throw UsageError("--comm-overlap: expected on or off, got '" + v + "'");
                 a.comm_overlap = v == "on";
             });
    return c;
}

}  // namespace

bool parse_train_args(int argc, char** argv, TrainArgs& a) {
    a.windows_auto = true;  // the command line's default; a program that fills TrainArgs itself says what it wants
    if (!train_cli(a).parse(argc, argv)) return false;
    if (a.lr_find && !a.steps_given) a.steps = 300;  // a range test wants a few hundred
    return true;
}

std::string train_help() {
    TrainArgs defaults;
    return train_cli(defaults).help();
}

void validate_train_args(const TrainArgs& a) {
    validate_schedule(a.sched);
    if (a.halt_at > a.steps)
        throw UsageError("--halt-at: " + std::to_string(a.halt_at) + " is beyond --steps " + std::to_string(a.steps));
    if (a.profile_step > a.steps)
        throw UsageError("--profile-step: " + std::to_string(a.profile_step) + " is beyond --steps " +
                         std::to_string(a.steps));
    if (a.halt_at > 0 && a.profile_step > a.halt_at)
        throw UsageError("--profile-step: " + std::to_string(a.profile_step) + " is beyond --halt-at " +
                         std::to_string(a.halt_at) + ": it would never run");
    if (a.halt_at > 0 && a.out_dir.empty() && !a.lr_find)
        throw UsageError("--halt-at stops the run to write its resume checkpoint, and --out '' writes nothing: the "
                         "steps would be lost (give --out DIR)");
    if (a.sched.warmup > a.steps)
        throw UsageError("--warmup: " + std::to_string(a.sched.warmup) + " is more than --steps " +
                         std::to_string(a.steps));
    if (a.stochastic_rounding && a.precision != "bf16")
        throw UsageError("--stochastic-rounding: rounds to bf16 only, and --precision is " + a.precision);
    if (a.attention == "cudnn" && (a.device == "cpu" || a.precision == "fp32"))
        throw UsageError("--attention cudnn: cuDNN attention runs on --device cuda in bf16 or fp16, not " + a.device +
                         " " + a.precision);
    if (a.windows == Windows::isolated && !a.windows_auto && a.attention == "cudnn")
        throw UsageError("--attention cudnn: --windows isolated masks attention by document, which the matmul path "
                         "does and cuDNN's fused one here does not (--attention matmul or auto)");
    // Files named on the command line must exist (train/cli.h). Shards and checkpoints are single files; weights
    // (--init, --teacher) may be a Hugging Face directory.
    const char* shard = "a token shard made by bin/prepare";
    for (const auto& p : a.train_data) require_file("--train-data", p, shard);
    for (const auto& p : a.val_data) require_file("--val-data", p, shard);
    require_path("--init", a.init);
    require_path("--teacher", a.teacher);
    for (const auto& p : a.fisher_data) require_file("--fisher-data", p, shard);
    for (const auto& p : a.replay_data) require_file("--replay-data", p, shard);
    if (a.peft.virt != Virtual::none && a.peft.n_virtual < 1)
        throw UsageError("--virtual " + std::string(virtual_name(a.peft.virt)) + " needs --virtual-tokens P");
    if ((a.peft.virt == Virtual::ptune || a.peft.virt == Virtual::prefix) && a.peft.hidden < 1)
        throw UsageError("--virtual " + std::string(virtual_name(a.peft.virt)) + " needs --virtual-hidden H");
    if (a.virtual_init != "random" && a.virtual_init != "vocab" && a.virtual_init.rfind("text:", 0) != 0)
        throw UsageError("--virtual-init: expected random, vocab or text:WORDS, got '" + a.virtual_init + "'");
    if (a.ewc > 0 && a.fisher.empty()) throw UsageError("--ewc needs --fisher FILE (read, or written by the estimate)");
    std::error_code ec;  // a name the system refuses (too long, say) does not exist either
    const bool fisher_there = !a.fisher.empty() && std::filesystem::exists(a.fisher, ec);
    if (fisher_there) require_file("--fisher", a.fisher, "a Fisher file (safetensors), or the name of one to write");
    if (a.ewc > 0 && a.fisher_data.empty() && !fisher_there)
        throw UsageError("--ewc: --fisher " + a.fisher + " does not exist yet; give --fisher-data to estimate it");
    if (a.replay_frac > 0 && a.replay_data.empty()) throw UsageError("--replay-frac needs --replay-data");
    // Settings of a method that is not switched on are a mistake, not something to ignore.
    auto needs = [](bool given, bool on, const char* flag, const char* what) {
        if (given && !on) throw UsageError(std::string(flag) + " has no effect without " + what);
    };
    needs(a.peft.n_virtual != 0 || a.peft.hidden != 0, a.peft.virt != Virtual::none, "--virtual-tokens/--virtual-hidden",
          "--virtual");
    needs(a.peft.hidden != 0 && a.peft.virt == Virtual::prompt, false, "--virtual-hidden",
          "--virtual ptune or prefix (prompt tuning trains the virtual tokens' embeddings directly, through no network)");
    needs(a.peft.lora_targets != kLoraAll, a.peft.lora_rank > 0, "--lora-targets", "--lora-rank");
    // A LoRA adapter trained further, or a resumed LoRA run, brings its rank; the dropout is this run's to choose.
    needs(a.peft.lora_dropout > 0, a.peft.lora_rank > 0 || !a.adapter.empty() || !a.resume.empty(), "--lora-dropout",
          "--lora-rank, --adapter or --resume");
    needs(!a.teacher.empty(), a.distill > 0, "--teacher", "--distill");
    needs(!a.replay_data.empty(), a.replay_frac > 0, "--replay-data", "--replay-frac");
    needs(!a.fisher.empty() || !a.fisher_data.empty(), a.ewc > 0, "--fisher/--fisher-data", "--ewc");
    const TrainArgs d;  // the defaults: a value other than its default was given
    needs(a.peft.lora_alpha != d.peft.lora_alpha, a.peft.lora_rank > 0, "--lora-alpha", "--lora-rank");
    needs(a.distill_temp != d.distill_temp, a.distill > 0, "--distill-temp", "--distill");
    needs(a.replay_weight != d.replay_weight, a.replay_frac > 0, "--replay-weight", "--replay-frac");
    needs(a.fisher_batches != d.fisher_batches, a.ewc > 0, "--fisher-batches", "--ewc");
    needs(a.virtual_init != d.virtual_init, a.peft.virt != Virtual::none, "--virtual-init", "--virtual");
    needs(a.vocab != d.vocab,
          a.virtual_init.rfind("text:", 0) == 0 || a.windows != Windows::fixed || a.windows_auto, "--vocab",
          "--virtual-init text:WORDS or --windows auto|documents|single|isolated");
    // Written after the estimate, its folders made then: a file in their way is said now, not after the estimate.
    if (a.ewc > 0 && !fisher_there && !a.fisher_data.empty()) require_output_file("--fisher", a.fisher, true);
    needs(a.loss_scale != d.loss_scale,
          a.loss_scaling == "on" || (a.loss_scaling == "auto" && a.precision == "fp16"), "--loss-scale",
          "dynamic loss scaling (--precision fp16, or --loss-scaling on)");
    const std::string& k = a.sched.kind;
    const bool cyclical = k == "triangular" || k == "triangular2" || k == "exp_range";
    needs(a.sched.half_cycle != d.sched.half_cycle, cyclical, "--half-cycle",
          "a cyclical --schedule (triangular, triangular2, exp_range)");
    needs(a.sched.gamma != d.sched.gamma, k == "exp_range", "--gamma", "--schedule exp_range");
    needs(a.sched.min_frac != d.sched.min_frac, k != "constant" && k != "stlr", "--min-lr-frac",
          "a --schedule that decays or cycles (cosine, linear, triangular, triangular2, exp_range)");
    needs(a.sched.cut_frac != d.sched.cut_frac || a.sched.ratio != d.sched.ratio, k == "stlr", "--cut-frac/--ratio",
          "--schedule stlr");
    needs(a.lr_find_lo != d.lr_find_lo || a.lr_find_hi != d.lr_find_hi, a.lr_find, "--lr-find-lo/--lr-find-hi",
          "--lr-find");
    if (a.lr_find && a.profile_step > 0)
        throw UsageError("--profile-step profiles a training step, and --lr-find trains none");
    if (a.lr_find && a.halt_at > 0) throw UsageError("--halt-at has no effect with --lr-find (the sweep is not a run to resume)");
    if (a.lr_find) {  // the sweep replaces the run: named all at once, so one edit of the command does
        std::string idle;
        int n = 0;
        auto unused = [&](bool given, const char* flag) {
            if (!given) return;
            idle += (n++ ? ", " : "") + std::string(flag);
        };
        unused(a.sched.lr != d.sched.lr, "--lr");
        unused(a.sched.kind != d.sched.kind, "--schedule");
        unused(a.sched.warmup != d.sched.warmup, "--warmup");
        unused(a.sched.min_frac != d.sched.min_frac, "--min-lr-frac");
        unused(a.sched.half_cycle != d.sched.half_cycle, "--half-cycle");
        unused(a.sched.gamma != d.sched.gamma, "--gamma");
        unused(a.sched.cut_frac != d.sched.cut_frac, "--cut-frac");
        unused(a.sched.ratio != d.sched.ratio, "--ratio");
        unused(!a.val_data.empty(), "--val-data");
        unused(a.val_every != d.val_every, "--val-every");
        unused(a.val_batches != d.val_batches, "--val-batches");
        unused(a.ckpt_every != d.ckpt_every, "--ckpt-every");
        unused(a.ckpt_minutes != d.ckpt_minutes, "--ckpt-minutes");
        if (n)
            throw UsageError(idle + (n > 1 ? " have" : " has") + " no effect with --lr-find: the sweep sets the rate "
                             "itself (from --lr-find-lo to --lr-find-hi, exponentially), validates nothing and writes "
                             "no checkpoint (leave " + (n > 1 ? "them" : "it") + " out for the sweep, and give " +
                             (n > 1 ? "them" : "it") + " to the run after it)");
    }
    auto float_str = [](double v) {
        char b[32];
        std::snprintf(b, sizeof b, "%g", v);
        return std::string(b);
    };
    if (a.lr_find && !(a.lr_find_lo < a.lr_find_hi))
        throw UsageError("--lr-find-lo " + float_str(a.lr_find_lo) + " must be below --lr-find-hi " +
                         float_str(a.lr_find_hi));
    if (!a.model.empty() && a.model != d.model && !a.init.empty() && a.resume.empty())
        throw UsageError("--model " + a.model + " has no effect with --init: the weights carry their config");
    if (a.distill > 0 && a.teacher.empty() && a.init.empty() && a.resume.empty())
        throw UsageError("--distill needs a teacher: --teacher WEIGHTS, or --init (the starting model is the default)");
    if (a.unfreeze_every > 0 && (a.peft.any() || !a.adapter.empty()))
        throw UsageError("--unfreeze-every works on the model's own blocks; it does not combine with LoRA or virtual "
                         "tokens" + std::string(a.adapter.empty() ? "" : " (--adapter brings them)"));
    require_file("--resume", a.resume, "a resume.ckpt written by bin/train");
    require_file("--adapter", a.adapter, "an adapter.ckpt written by bin/train");
    require_output_dir("--out", a.out_dir);
    if (!a.adapter.empty() && a.init.empty())
        throw UsageError("--adapter " + a.adapter + " needs --init: the base weights it was trained on");
}

}  // namespace tune
