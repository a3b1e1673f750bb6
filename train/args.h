// Command-line options of bin/train, declared once in a table that both the parser and --help read, so
// the help text always shows the real defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/gpt2.h"
#include "model/peft.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace tune {

struct TrainArgs {
    TrainArgs() { peft.lora_targets = kLoraAll; }  // --lora-rank alone adapts every site
    // where and how
    std::string device = "auto";  // auto | cpu | cuda
    std::string precision = "fp32";
    std::string attention = "auto";  // auto | cudnn | matmul (kernels/cuda/backend_cuda.h)
    bool stochastic_rounding = false;
    // model
    std::string model = "tiny";  // preset used when training from scratch
    std::string init;            // start from these weights
    std::string resume;          // continue a run exactly from a resume checkpoint
    std::string adapter;         // go on training this adapter (LoRA, virtual tokens) on the --init base
    // data
    std::vector<std::string> train_data, val_data;
    bool shuffle = true;
    Windows windows = Windows::fixed;  // --windows: how the data is cut into windows (data/shard.h)
    // --windows auto (bin/train's default): documents for prompt/completion data (a training shard with a target
    // whose loss weight is 0) where the vocabulary has an <|endoftext|>, else fixed; a --resume goes on with the
    // run's own. The Trainer decides, and sets `windows`.
    bool windows_auto = false;
    // which parameters train (train/select.h)
    int train_top = 0;            // only the top k blocks + ln_f (0: all)
    std::string train_only;       // comma-separated name patterns
    float lr_layer_factor = 0;    // discriminative rates: block l at lr * factor^(L-1-l) (0: off)
    int unfreeze_every = 0;       // gradual unfreezing: one more block every N steps (0: off)
    // parameter-efficient methods (model/peft.h); the base model is frozen when any is on
    PeftConfig peft;
    std::string virtual_init = "vocab";  // random | vocab | text:SOME TEXT
    std::string vocab = kDefaultVocab;     // GPT-2 vocabulary, for --virtual-init text:... and document --windows
    Recompute recompute = Recompute::none;
    int head_chunk = 8192;  // rows of LM-head logits kept at once (ModelOptions::head_chunk; 0: all)
    // keeping what the model knew
    float l2sp = 0;                  // lambda of L2-SP (0: off)
    float ewc = 0;                   // lambda of EWC (0: off)
    std::string fisher;              // EWC's Fisher file: read if it exists, else estimated and written
    std::vector<std::string> fisher_data;  // base-data shards for the estimate
    int fisher_batches = 16;
    float distill = 0;               // alpha of knowledge distillation (0: off)
    float distill_temp = 2.0f;       // tau
    std::string teacher;             // teacher weights (default: the starting weights, --init)
    std::vector<std::string> replay_data;  // base-data shards to replay
    float replay_frac = 0;           // fraction of micro-batches drawn from them
    float replay_weight = 1.0f;      // loss weight of replayed tokens
    // batch
    int batch = 4;  // B
    int seq = 64;   // T
    int grad_accum = 1;
    int steps = 100;           // 300 for --lr-find when not given (parse_train_args)
    bool steps_given = false;  // --steps was on the command line
    int halt_at = 0;  // stop (with a resume checkpoint) once this many steps are done; 0 = run to the end
    // optimizer
    ScheduleConfig sched;
    AdamWConfig adam;
    float grad_clip = 1.0f;
    std::string loss_scaling = "auto";  // auto (on for fp16) | on | off
    float loss_scale = 65536.0f;        // initial dynamic loss scale
    int max_bad_steps = 10;  // consecutive non-finite steps before giving up
    uint64_t seed = 1337;
    bool seed_given = false;  // --seed was on the command line (a resume without it goes on with the checkpoint's)
    std::vector<std::string> parse_notes;  // what parsing noticed for bin/train to say ("--val-data given twice ...")
    // evaluation, logging, checkpoints
    int val_every = 50;
    int val_batches = 8;
    int ckpt_every = 0;  // resume checkpoint every N steps (0: only at the end)
    float ckpt_minutes = 30;  // ... and whenever this long has passed since the last one (0: off)
    std::string out_dir = "runs/train";
    bool overwrite = false;  // a new run may replace the checkpoints an earlier run left in out_dir (else refused)
    int log_every = 1;  // a progress line every N steps
    int profile_step = 0;  // time every op of this step and print where its time went (0: off)
    bool lr_find = false;  // run a learning-rate range test instead of training
    bool memory_map = false;  // print every tensor of every arena, then exit without training
    float lr_find_lo = 1e-7f, lr_find_hi = 1.0f;
    bool quiet = false;
    // An interrupted run says how to continue (--resume ...); off where the caller says it its own way (the
    // default job: `bin/train` with no arguments).
    bool resume_hint = true;
    // Whether to note prompt/completion examples that fixed windows cut (the default job's fine-tuning keeps
    // fixed windows on purpose, and has no --windows flag to give).
    bool window_advice = true;
    // DIST: data parallelism (train/dist.h, train/data_parallel.h)
    int zero = 0;                // 1: shard the optimizer state across ranks; 2: the gradients too
    float comm_timeout = 600;    // seconds a collective may wait before the job stops
    bool comm_overlap = true;    // reduce each layer's gradients while backward continues (off: all at the end)
};

// Parses argv. Returns false when --help was asked for (print train_help()). Throws tune::UsageError
// with a one-line message for an unknown flag, a missing or malformed value, or an out-of-range number.
bool parse_train_args(int argc, char** argv, TrainArgs& args);
std::string train_help();

// Cross-field checks that need the model config (sequence length against block size, ...).
void validate_train_args(const TrainArgs& args);

}  // namespace tune
