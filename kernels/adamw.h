// AdamW (decoupled weight decay) and the gradient-norm reduction on CUDA. Reference: kernels/cpu/adamw.h.
// For each element, with g = grad * grad_scale and lr' = lr * lr_scale of its segment:
//   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2
//   mhat = m / (1 - b1^t'); vhat = v / (1 - b2^t')     t' = t - t_offset of the segment
//   p -= lr' * (mhat / (sqrt(vhat) + eps) + wd * p)
// With FP32 master weights (bf16/fp16 activations) the update runs on the master copy and the same kernel
// writes the working copy, rounded to nearest even, or stochastically (bf16 only; fp16 always rounds to
// nearest) when asked: the random bits are a hash of (element, step, seed), so runs still reproduce bit for
// bit. Without a master (fp32 training) the parameters update in place. Moments are always fp32.
//
// One launch covers every segment: the host turns the segment list into a table of (offsets, n, lr_scale,
// wd, t_offset, first block) kept on the device (re-uploaded only when the list changes), and each block
// finds its segment by binary search and computes its segment's bias corrections from t - t_offset (so the
// table stays the same from step to step). Elements of the arenas outside every segment are never touched.
//
// sum_squares: a fixed grid (a function of n only) accumulates x^2 in double per thread, reduces each
// block in a fixed tree, then one block adds the block sums in a fixed tree: the same bits every run.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/scratch.h"

namespace tune::cuda {

// The device copy of a segment list, uploaded once and reused while the list stays the same.
class AdamWTable {
   public:
    struct Entry {
        size_t param_offset, grad_offset, n, first_block;
        float lr_scale, weight_decay;
        int t_offset;
        bool operator==(const Entry& o) const {
            return param_offset == o.param_offset && grad_offset == o.grad_offset && n == o.n &&
                   first_block == o.first_block && lr_scale == o.lr_scale && weight_decay == o.weight_decay &&
                   t_offset == o.t_offset;
        }
    };
    AdamWTable() = default;
    ~AdamWTable();
    AdamWTable(const AdamWTable&) = delete;
    AdamWTable& operator=(const AdamWTable&) = delete;

    // Device table for `segments` (uploading it on `stream` if it changed); sets the block count. Every field
    // of an entry is part of the list's identity: a changed lr_scale or t_offset uploads a new table.
    const Entry* prepare(const std::vector<OptSegment>& segments, size_t elems_per_block, cudaStream_t stream,
                         unsigned* total_blocks, int* count);

   private:
    std::vector<Entry> host_;
    size_t elems_per_block_ = 0;
    Entry* device_ = nullptr;
    size_t capacity_ = 0;
};

template <class T>
void adamw_update(T* params,       // param arena, act type: written at [param_offset, +n) of each segment
                  float* master,   // (grad arena) fp32 master weights, or null: update params in place
                  const T* grads,  // grad arena
                  float* m,        // (grad arena) fp32
                  float* v,        // (grad arena) fp32
                  const std::vector<OptSegment>& segments, const AdamWStep& step, bool stochastic_rounding,
                  uint64_t seed, AdamWTable& table, cudaStream_t stream);

// *result (device, one double) = sum of x[i]^2 over n elements.
template <class T>
void sum_squares(double* result,  // (1) on the device
                 const T* x,      // (n)
                 size_t n, Scratch& scratch, cudaStream_t stream);

}  // namespace tune::cuda
