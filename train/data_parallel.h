// Data parallelism inside the training step: N replicas of the model, each on its own slice of the data
// (Loader rank/world), kept identical by reducing gradients before every update.
//
// One optimizer step on N ranks, each with K micro-batches of B windows:
//   1. counted tokens: summed over ranks, so every rank scales its loss gradient by 1 / (global count) and
//      N ranks x B equal one rank x N*B (the sum over ranks of the gradients is the global-batch gradient);
//   2. backward of the last micro-batch: as soon as layer l's gradients are complete, its bucket (the
//      gradient-arena ranges of h.l.*) is reduced: all-reduce (ZeRO-0) or reduce-scatter to the owners of
//      the ZeRO partition (ZeRO-1). On a GPU this overlaps the backward pass of the layers below; what is
//      left (embeddings, final LayerNorm) follows when backward returns;
//   3. the gradient norm is the sum over the partition's pieces of their sums of squares, added in rank
//      order: the same bits on every rank, and for ZeRO-0 and ZeRO-1 whenever their reduced gradients are
//      (always over MPI; NCCL may add 3 or more ranks' values in another order in a reduce-scatter than in an
//      all-reduce, so there the two can differ in the last bits);
//   4. the update: every rank updates everything (ZeRO-0), or its own piece and then the parameters are
//      all-gathered (ZeRO-1, in AdamW).
// Communication per step (ring algorithms, gradient bytes G): all-reduce 2(N-1)/N x G per rank; ZeRO-1 the
// same, as a reduce-scatter of the gradients plus an all-gather of the parameters (docs/scaling.md).
//
// For whoever adds to the step: a term added to the gradients outside backward (an L2-SP/EWC penalty) must
// come after finish_gradients(), computed the same way on every rank, or it is counted once per rank; under
// ZeRO-1 only the rank's own piece of the gradients is read, and AdamW's master weights hold only that
// piece. Any other data source (replay) must be sliced by rank like the training Loader, and random draws
// (dropout) seeded per rank.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/gpt2.h"
#include "train/dist.h"
#include "train/optimizer.h"

namespace tune {

// Gradient buckets: the ranges of the gradient arena that become final together. Layer l's bucket holds the
// tensors named h.<l>.*; layer -1 holds the rest (embeddings, ln_f), final only when backward returns.
// Consecutive tensors of one bucket merge into one range (alignment gaps included).
struct GradBucket {
    int layer = -1;
    std::vector<std::pair<size_t, size_t>> ranges;  // [begin, end) in elements
};
std::vector<GradBucket> grad_buckets(const Table& grad_table);

class DataParallel {
   public:
    // zero: 0 (replicated optimizer state) or 1 (sharded, see OptimizerShard).
    DataParallel(Comm& comm, GPT2& model, int zero);
    ~DataParallel();
    DataParallel(const DataParallel&) = delete;
    DataParallel& operator=(const DataParallel&) = delete;

    Comm& comm() { return comm_; }
    int rank() const { return comm_.rank(); }
    int world() const { return comm_.world(); }
    int zero() const { return zero_; }
    // The shard to build AdamW with: the partition under ZeRO-1, none otherwise.
    OptimizerShard optimizer_shard();
    std::string describe() const;

    void start_step(int step);  // TUNE_TEST_FAIL injection (train/dist.h)
    // The next backward is the step's last: reduce each layer's bucket as backward finishes it.
    void arm() { armed_ = true; }
    // Reduces the buckets still pending and waits: afterwards the gradients (under ZeRO-1, those of this rank's
    // piece) hold the sums over ranks.
    void finish_gradients();
    // Sum of squares of the reduced gradients: the same value on every rank and for ZeRO-0 and 1.
    double grad_sum_squares();

    uint64_t sum(uint64_t x, const char* what) { return comm_.sum(x, what); }
    double sum(double x, const char* what) { return comm_.sum(x, what); }
    bool any(bool x, const char* what) { return comm_.any(x, what); }

    // Hash of this replica's parameters, and whether every rank's equals it (a collective).
    bool replicas_agree(uint64_t* hash);

   private:
    void reduce(size_t bucket);
    void on_layer_done(int layer);

    Comm& comm_;
    GPT2& model_;
    int zero_;
    std::vector<size_t> bounds_;  // the ZeRO partition of the gradient arena (also the norm's pieces)
    std::vector<GradBucket> buckets_;
    std::vector<bool> reduced_;
    bool armed_ = false;
};

}  // namespace tune
