// tune.cu checkpoints.
//
// Layout (little-endian):
//   offset  0  char[8]  magic "TUNECKPT"
//           8  u32      version (1)
//          12  u32      header length H (bytes of JSON)
//          16  JSON     {"kind": "weights"|"resume"|"adapter", "config": {...}, "peft": {...}, "tensors":
//                       [{"name", "shape", "offset", "bytes"}...], "state": {...}, "windows": "documents"}
//                       (state only in resume checkpoints; peft only when the model has LoRA or virtual
//                       tokens; windows only when the run trained on document windows)
//        16+H  data     every tensor as float32, at its offset from here; the file ends exactly at the last
// A weights checkpoint holds the parameters (the FP32 master values where the backend keeps them). A resume
// checkpoint adds Adam's moments (m/<name>, v/<name>) for trainable tensors, the L2-SP/EWC anchor
// (anchor/<name>) when there is one, the bf16 working weights of trainable tensors (working/<name>) when
// they were stochastically rounded, and the training state: step, optimizer step, RNG, data-loader positions.
// An adapter checkpoint holds only the PEFT tensors (LoRA A and B, folded virtual tokens): a few hundred KB
// to put on top of a base model. Everything is validated before use, and files are written atomically
// (data/fileio.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/shard.h"
#include "model/config.h"
#include "model/gpt2.h"
#include "train/optimizer.h"

namespace tune {

constexpr char kCkptMagic[8] = {'T', 'U', 'N', 'E', 'C', 'K', 'P', 'T'};
constexpr uint32_t kCkptVersion = 1;

struct TrainState {
    uint64_t step = 0;      // optimizer steps completed
    uint64_t rng = 0;       // trainer RNG state
    LoaderState loader;     // training data position
    double loss_scale = 1;           // dynamic loss scale (FP16; 1 otherwise)
    uint64_t loss_scale_clean = 0;   // clean steps since the scale last changed
    bool loss_scaling = false;       // whether the scale was dynamic (fp16 or --loss-scaling on)
    uint64_t skipped_steps = 0;
    uint64_t bad_in_a_row = 0;       // the latest steps skipped for a non-finite loss or gradient (--max-bad-steps)
    LoaderState replay_loader;       // replay data position
    // The windows of the training and replay data when saved (0: unknown, or no replay): a resume onto data
    // cut into other windows keeps its position in the epoch but not its order, and says so.
    uint64_t loader_windows = 0, replay_windows = 0;
    std::string init;                // the --init weights the run started from (the default teacher)
    // Also store the bf16/fp16 working weights of trainable tensors: with stochastic rounding they are not the
    // rounding of the master weights to nearest, which is what resume otherwise rebuilds them as.
    bool working_copy = false;
    // The options that shape the run's trajectory, as flag -> value ("--batch" -> "4"): a resume compares
    // them with its own and names what changed (older checkpoints have none).
    std::map<std::string, std::string> options;
    uint64_t base_fingerprint = 0;  // PEFT runs: base_fingerprint() of the weights the run started from
    // PEFT runs: the base tensors that trained in this run or in the PEFT runs it started from (--init of
    // their checkpoint): an adapter must carry them all to rebuild the model on the original base.
    std::vector<std::string> trained_base;
    // Fingerprints of what a resume reads again from files rather than from the checkpoint (0: none, or written
    // before 2026-12-05): --distill's teacher (GPT2::base_fingerprint()) and --ewc's Fisher (fisher_fingerprint()).
    // A resume whose file now holds other values says so.
    uint64_t teacher_hash = 0, fisher_hash = 0;
};

// How the run that writes a checkpoint cut its data, which says how to ask the model: one trained on document
// windows (documents, single or isolated) saw every example after an <|endoftext|> (bin/generate then puts one
// before the prompt).
// And how many positions trained: the most of the runs that trained it, from its start on, each its virtual tokens
// and --seq (0: unknown, for weights trained elsewhere or written before 2026-12-06); the rows of wpe past those
// are as the model's first run initialised them.
struct TrainedOn {
    Windows windows = Windows::fixed;
    int positions = 0;
    bool document_windows() const { return windows != Windows::fixed; }
};

// Writes model weights as they are (LoRA unmerged, virtual tokens unfolded); with opt and state, a resume
// checkpoint (with `anchor`, the L2-SP/EWC reference weights laid out like `opt`'s state, when non-null: gathered
// like it). With a sharded (ZeRO) optimizer every rank calls it (the state is gathered to rank 0) and only
// rank 0 passes write = true. The file is the same whatever the number of ranks, so a run can resume with another.
void save_checkpoint(const std::string& path, const GPT2& model, AdamW* opt, const TrainState* state,
                     const Arena* anchor = nullptr, bool write = true, const TrainedOn& trained_on = {});
// Writes the model for use anywhere: LoRA merged into the base weights, virtual tokens folded (a plain GPT-2
// when there are none).
void save_merged(const std::string& path, GPT2& model, const TrainedOn& trained_on = {});
// Writes only the PEFT tensors (LoRA A and B unmerged, virtual tokens folded), and the base tensors that
// trained beside them (--train-top/--train-only with LoRA: what PEFT libraries call modules to save) or in
// the runs this one started from (`trained_base`, by name), with the fingerprint of the base weights the
// first of those runs started from (GPT2::base_fingerprint(); 0: unknown). Needs PEFT.
void save_adapter(const std::string& path, GPT2& model, uint64_t base_fingerprint,
                  const std::vector<std::string>& trained_base = {}, const TrainedOn& trained_on = {});
// What a resume checkpoint's PEFT run recorded of its base (TrainState::base_fingerprint and trained_base):
// false, leaving both alone, for other files and for checkpoints written before it was recorded.
bool checkpoint_base_lineage(const std::string& path, uint64_t* base_fingerprint, std::vector<std::string>* trained_base);
// A resume checkpoint's TrainState::options from its header alone; empty when it has none (or is no resume
// checkpoint, or is damaged: load_checkpoint says what is wrong).
std::map<std::string, std::string> checkpoint_options(const std::string& path);
// A resume checkpoint's step from its header alone: false, leaving *step alone, for anything else (a missing,
// damaged or plain weights file).
bool checkpoint_step(const std::string& path, uint64_t* step);

// The config and PEFT config stored in a checkpoint (to build the model before loading it). Validates the header.
ModelConfig checkpoint_config(const std::string& path);
PeftConfig checkpoint_peft(const std::string& path);
bool is_adapter_checkpoint(const std::string& path);
// What the checkpoint records of its run's data (TrainedOn; nothing recorded: fixed windows).
TrainedOn checkpoint_trained_on(const std::string& path);

// Loads weights into the model (config must match); with opt and state also the optimizer state and
// training state, which requires a resume checkpoint. A checkpoint without PEFT tensors loads into a model
// with them (only the base tensors: initialise the rest); otherwise the PEFT configs must match. Throws
// tune::Error naming the file and the problem.
void load_checkpoint(const std::string& path, GPT2& model, AdamW* opt, TrainState* state, Arena* anchor = nullptr);
// Loads an adapter checkpoint's tensors into a model built with its PEFT config (checkpoint_peft) and
// holding its base weights: refused when the adapter records another base (a merged model.ckpt, which has
// its adapter in it already, or other weights); the trained base tensors it holds replace the base's.
// `base_tensors`, when given, receives the names of the base tensors the adapter replaced (those that trained
// beside it).
void load_adapter(const std::string& path, GPT2& model, std::vector<std::string>* base_tensors = nullptr);

}  // namespace tune
