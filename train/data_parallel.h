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
//      all-gathered (ZeRO-1 and 2, in AdamW).
// Communication per step (ring algorithms, gradient bytes G): all-reduce 2(N-1)/N x G per rank; ZeRO-1 the
// same, as a reduce-scatter of the gradients plus an all-gather of the parameters (docs/scaling.md).
//
// ZeRO-2 also shards the gradients. The model keeps no whole gradient arena (ModelOptions::grad_slots): block
// l's gradients are written into a slot, and every backward (not only the step's last) reduce-scatters each
// block's bucket as it ends; before the slot is taken again (two blocks further down, or in the next
// micro-batch), the bucket's reduced piece is added into this rank's piece of the step's gradients (acc_),
// which is all the optimizer and the norm read. The rest bucket keeps its memory and accumulates over the
// micro-batches, reduced once, after the last. With one micro-batch per step that is 0 + the ZeRO-1 sum: the
// same bits. With K micro-batches the blocks' sums are taken in another order (over ranks, then micro-
// batches), so they agree to rounding. Cost: the blocks' reduce-scatter runs K times per step instead of once.
//
// For whoever adds to the step: a term added to the gradients outside backward (an L2-SP/EWC penalty) must
// come after finish_gradients(), computed the same way on every rank, or it is counted once per rank; under
// ZeRO-1 and 2 only the rank's own piece of the gradients is read, and AdamW's master weights hold only that
// piece, so there such a term goes into that piece alone (AdamW::own_range, own_gradients). Any other data source (replay) must be sliced by rank like the training Loader, and random draws
// (dropout) seeded per rank.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "model/gpt2.h"
#include "train/dist.h"
#include "train/optimizer.h"

namespace tune {

class DataParallel {
   public:
    // zero: 0 (replicated optimizer state), 1 (sharded, see OptimizerShard) or 2 (gradients sharded too: the
    // model must have been built with gradient slots, ModelOptions::grad_slots). overlap: reduce buckets while
    // backward goes on (--comm-overlap); off, the same sums are taken after backward (ZeRO-2: as each bucket ends).
    DataParallel(Comm& comm, GPT2& model, int zero, bool overlap = true);
    ~DataParallel();
    DataParallel(const DataParallel&) = delete;
    DataParallel& operator=(const DataParallel&) = delete;

    Comm& comm() { return comm_; }
    int rank() const { return comm_.rank(); }
    int world() const { return comm_.world(); }
    int zero() const { return zero_; }
    // The shard to build AdamW with: the partition under ZeRO-1 and 2 (2: with this rank's reduced gradients),
    // none otherwise.
    OptimizerShard optimizer_shard();
    std::string describe() const;
    size_t grad_shard_bytes() const { return acc_bytes_; }  // ZeRO-2: this rank's piece of the step's gradients

    void start_step(int step);  // TUNE_TEST_FAIL injection (train/dist.h)
    // The step's gradients start from zero (the model's, and under ZeRO-2 this rank's piece).
    void zero_gradients();
    // The next backward is the step's last: reduce each layer's bucket as backward finishes it (ZeRO-0 and 1, with
    // overlap; ZeRO-2 reduces every backward's buckets, as it must).
    void arm() { armed_ = overlap_; }
    // After the step's last backward: reduces the buckets still pending (ZeRO-2: the rest bucket, and keeps this
    // rank's share of every bucket still in a slot) and waits: afterwards the gradients of this rank's piece (all
    // of them under ZeRO-0) hold the sums over ranks.
    void finish_gradients();
    // Zeroes the reduced gradient of one gradient tensor (this rank's part of it, under ZeRO-2).
    void zero_grad_tensor(size_t g);
    // Sum of squares of the reduced gradients: the same value on every rank and for ZeRO-0, 1 and 2.
    double grad_sum_squares();
    uint64_t sum(uint64_t x, const char* what) { return comm_.sum(x, what); }
    double sum(double x, const char* what) { return comm_.sum(x, what); }
    bool any(bool x, const char* what) { return comm_.any(x, what); }
    // Every rank waits here for rank 0 to finish writing a checkpoint, for up to `at_least_s` seconds however
    // short --comm-timeout is: a long write (a big model, slow storage) is not a dead rank, and ranks that stop
    // right after a checkpoint must not end the job while rank 0 still writes it.
    void wait_for_writer(double at_least_s) {
        comm_.raise_timeout_for_writer(at_least_s);
        comm_.any(false, "checkpoint written by rank 0");
        comm_.end_raised_timeout();
    }
    // Hash of this replica's parameters, and whether every rank's equals it (a collective).
    bool replicas_agree(uint64_t* hash);
    // The lowest rank whose `value` differs from rank 0's, or -1 when every rank's is the same (a collective).
    int first_rank_differing(uint64_t value, const char* what);

   private:
    void reduce(size_t bucket);
    void on_layer_done(int layer);
    void on_layer_start(int layer);
    void settle(size_t bucket);  // ZeRO-2: add the reduced bucket's own part into acc_
    // Where rank r's piece of the reduced gradients starts: in the model's arena, or (ZeRO-2, r = rank) acc_.
    char* piece_gradients(int r) const;

    Comm& comm_;
    GPT2& model_;
    int zero_;
    bool overlap_;
    std::vector<size_t> bounds_;  // the ZeRO partition of the gradient arena (also the norm's pieces)
    std::vector<GradBucket> buckets_;
    std::vector<bool> reduced_;
    bool armed_ = false;
    // ZeRO-2
    void* acc_ = nullptr;  // (bounds_[rank+1] - bounds_[rank]) this rank's piece, summed over ranks and micro-batches
    size_t acc_bytes_ = 0;
    std::vector<int> slot_bucket_;     // (slots) the bucket reduced in each slot and not yet settled, or -1
    std::vector<uint64_t> slot_mark_;  // (slots) the comm mark after its reduction
};

}  // namespace tune
