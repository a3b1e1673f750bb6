// The training loop: builds the backend, model, optimizer and data loaders from TrainArgs, runs steps
// with gradient accumulation and clipping, evaluates, logs, and checkpoints. bin/train is a thin wrapper;
// tests drive the same class.
#pragma once

#include <csignal>
#include <memory>

#include "data/fileio.h"
#include "data/shard.h"
#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/gpt2.h"
#include "train/args.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace tune {

struct StepStats {
    int step = 0;            // 1-based index of the step just done
    double loss = 0;         // mean loss over counted tokens of the step
    double grad_norm = 0;    // global norm before clipping
    float lr = 0;
    size_t counted = 0;      // tokens with non-zero loss weight
    double seconds = 0;
    bool skipped = false;    // non-finite loss or gradient: no update
    bool empty = false;      // no counted token on any rank (and no L2-SP/EWC term): nothing to learn, no update
    double loss_scale = 1;   // FP16 dynamic loss scale this step used (1 otherwise)
    double penalty = 0;      // L2-SP + EWC terms added to the loss (already in the gradients)
    double kl = 0;           // distillation term per counted token (tau^2 KL), when distilling
    int replay_batches = 0;  // micro-batches drawn from the replay data
    int frozen_below = -1;   // gradual unfreezing: blocks below this one did not train (-1: none frozen)
};

// FP16 dynamic loss scaling, with PyTorch GradScaler's semantics: dloss is multiplied by the scale so
// small gradients survive fp16's range, and the optimizer divides it back out. The scale starts at 2^16,
// halves (and the step is skipped) when a gradient overflows, and doubles after kLossScaleWindow clean
// steps in a row. Its state lives in TrainState, so resume continues it exactly (when the resumed run also
// scales dynamically, from the same --loss-scale; otherwise it starts afresh).
constexpr uint64_t kLossScaleWindow = 2000;
void update_loss_scale(TrainState& state, bool gradients_finite);

// The element type of --precision fp32|bf16|fp16.
DType dtype_of_precision(const std::string& precision);
// Picks the backend from --device/--precision; prints a one-line notice when auto falls back to cpu.
std::unique_ptr<Backend> make_backend(const std::string& device, const std::string& precision, bool quiet,
                                      const CudaOptions& cuda = {});

// A model with its backend, loaded from weights (any format model/weights.h reads) for inference tools.
struct LoadedModel {
    std::unique_ptr<Backend> be;
    std::unique_ptr<GPT2> model;
    // What the run that wrote the adapter (when there is one) or the weights recorded (tune.cu checkpoints;
    // other formats record nothing), and which of the two files said it.
    TrainedOn trained_on;
    std::string trained_on_file;
};
// T = 0 means the model's block size (less any virtual tokens). `adapter`: an adapter checkpoint to put on
// top of `weights` (LoRA, virtual tokens).
LoadedModel load_model(const std::string& weights, const std::string& device, const std::string& precision, int B,
                       int T, const std::string& adapter = "");
// The token documents end with for --windows documents, single or isolated (bin/train, bin/evaluate): the
// <|endoftext|> of the vocabulary in vocab_dir, which the model's vocabulary must hold (else a UsageError); -1 for
// fixed windows.
int32_t document_end_token(Windows windows, const std::string& vocab_dir, int vocab_size);
// --windows auto (bin/train, bin/evaluate): document windows for prompt/completion data (some target of `shards` has
// loss weight 0) where the vocabulary in vocab_dir has an <|endoftext|> below vocab_size, whose id it returns; else
// -1, fixed windows. A vocabulary that cannot be read is an error when vocab_dir was given (not the default), else
// fixed windows with a note.
int32_t auto_document_end(const std::vector<Shard>& shards, const std::string& vocab_dir, int vocab_size, bool quiet);

// Whether micro-batch number mb (counting from 0 over the whole run) is drawn from the replay data: exactly
// a fraction `frac` of them, evenly spread and deterministic (nothing to save for resume).
bool is_replay_batch(uint64_t mb, double frac);

class Trainer {
   public:
    explicit Trainer(const TrainArgs& args);

    StepStats step(float lr = -1);   // one optimizer step (at this learning rate, else the schedule's)
    // Learning-rate range test: `steps` steps with the rate rising exponentially from lo to hi, stopping
    // early once the smoothed loss exceeds 4x its best. Writes lr_find.svg (loss against rate) and
    // lr_find.jsonl to the run directory and returns the suggested rate: where the smoothed loss falls
    // fastest. The model's weights are changed by the test; start the real run afresh.
    double lr_find(int steps, double lo, double hi);
    double evaluate();               // mean validation loss (NaN without validation data)
    // The whole job: steps, progress, metrics, plot, checkpoints. Returns 0 when every step ran (model.ckpt
    // and resume.ckpt written) or it halted at --halt-at (resume.ckpt only), or kInterrupted when a stop was
    // requested (resume.ckpt only).
    int run();
    static constexpr int kInterrupted = 130;  // the shell's status for Ctrl-C (128 + SIGINT)
    static constexpr double kCheckpointWriteTimeout = 1800;  // seconds the other ranks wait for rank 0's write
    void save(const std::string& path, bool resume);
    TrainedOn trained_on() const { return {args_.windows, trained_positions_}; }  // in every checkpoint written
    int resume_checkpoints_written() const { return resume_written_; }  // by run(), this process
    // Finish the current step, write a resume checkpoint, return (run) or stop the sweep (lr_find).
    // Async-signal-safe: called from the SIGINT/SIGTERM handler.
    void request_stop() { stop_requested_ = 1; }
    bool stop_requested() const { return stop_requested_ != 0 || stopped_; }  // here or, DIST, on any rank

    GPT2& model() { return *model_; }
    Backend& backend() { return *be_; }
    AdamW& optimizer() { return *opt_; }
    const TrainState& state() const { return state_; }

    // EWC's Fisher: read from `path`, or estimated on `data` (`batches` micro-batches at the current weights)
    // and written there. F_i = mean over batches of (d mean-loss / d theta_i)^2, the empirical Fisher of
    // mini-batch gradients (see docs/finetuning.md).
    void load_or_estimate_fisher(const std::string& path, const std::vector<std::string>& data, int batches);
    bool fisher_read_ = false;  // --fisher was read from its file (not estimated by this run)
    void note_other_values(const std::string& what, const char* values, uint64_t was, uint64_t now) const;
    const Arena& fisher() const { return fisher_; }
    const Arena& anchor() const { return anchor_; }
    // --memory-map: the memory map, then every tensor of every arena in address order.
    void print_memory_detail() const;

   private:
    void print_memory_map() const;
    void report_profile(const StepStats& st);
    void update_unfreezing(StepStats& st);
    void capture_anchor(const std::vector<bool>& done);  // theta_0 := the current trainable weights, but `done`
    std::vector<int32_t> virtual_init_tokens() const;

    TrainArgs args_;
    // --out held for this run alone (rank 0's): two runs in one directory would overwrite each other's files.
    // Released last, after everything the run writes.
    std::unique_ptr<DirLock> out_lock_;
    std::unique_ptr<Backend> be_;
    std::unique_ptr<GPT2> model_;
    std::unique_ptr<DataParallel> dp_;  // DIST: null in a single process; see train/data_parallel.h
    bool writer_ = true;                // DIST: this process writes logs, plots and checkpoints (rank 0)
    std::unique_ptr<AdamW> opt_;
    std::unique_ptr<Loader> train_, val_, replay_;
    std::unique_ptr<GPT2> teacher_;  // knowledge distillation
    Arena anchor_, fisher_;           // L2-SP / EWC: theta_0 and F, gradient-arena layout, master dtype
    // Whether L2-SP or EWC is on. DIST: decides their collectives, never anchor_.bytes(): under ZeRO that is this
    // rank's piece, which can be empty on one rank and not on the others.
    bool anchored() const { return args_.l2sp > 0 || args_.ewc > 0; }
    TrainState state_;
    int resume_written_ = 0;
    int trained_positions_ = 0;  // TrainedOn::positions of what this run writes
    bool noted_empty_val_ = false;  // said once that a validation counted no token
    bool dynamic_loss_scale_ = false;  // see update_loss_scale
    double flops_per_token_ = 0;  // 6N + 12 L C T (the PaLM convention), for MFU
    double peak_flops_ = 0;       // the GPU's dense bf16 peak, whatever the precision; 0 on the CPU (no MFU)
    volatile std::sig_atomic_t stop_requested_ = 0;
    bool stopped_ = false;  // stop_now() said yes
    bool stop_now();  // DIST: a stop reaches ranks at different moments; they stop together when any asks
};

}  // namespace tune
