// LayerNorm over the channel dimension on CUDA (eps = 1e-5 as in GPT-2). Reference: kernels/cpu/layernorm.h.
//   forward:  mean = avg(x), rstd = 1/sqrt(var(x) + eps), n = (x - mean)*rstd, out = n*w + b
//   backward: dn = dout*w
//             dx += rstd * (dn - avg(dn) - n*avg(dn*n))
//             dw += sum_rows(dout*n), db += sum_rows(dout)
// Forward saves mean and rstd per row, in the activation type. So that backward differentiates exactly the
// function forward computed, forward rounds mean and rstd to that type first and normalises with the
// rounded values (a no-op in fp32; in bf16 rstd's rounding scales a whole row by up to 2^-9, about as much
// as rounding each output moves it, though the same way across the row).
// dinp is ACCUMULATED (+=): LayerNorm reads the residual stream, whose gradient buffer already holds the
// skip connection's share. dweight/dbias accumulate; null = frozen.
//
// The residual add before a LayerNorm is fused into it (residual_layernorm_forward: the sum is written and
// normalised in one pass): in the model, every LayerNorm but block 0's ln_1, which reads the embeddings. In
// backward the skip connection's gradient is fused by accumulating dinp.
// Algorithms: forward is one warp per row (two-pass statistics in fp32, row re-read from L1/L2). Backward is one
// warp per row too, reading dout and inp once for both gradients: while a warp reads a row for dinp's two
// averages it adds dout*n and dout into its own fp32 column accumulators in shared memory; each block of a fixed
// grid (its rows depend on N, its warps on C and the type) writes its warps' sums, in order, as one row of fp32
// partials, and a second kernel adds the blocks in order: deterministic, no atomics. A C too large for the accumulators (over 6144) reads the
// rows a second time for the column sums instead. Every kernel reads a row in groups of 16 bytes' worth of
// elements: one 16-byte access where C is a multiple of the group and the rows are aligned, element by element
// otherwise, in the same order, so both give the same bits. Outputs must not alias inputs (dinp: dout or inp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/scratch.h"

namespace tune::cuda {

template <class T>
void layernorm_forward(T* out,           // (N, C)
                       T* mean,          // (N)
                       T* rstd,          // (N)
                       const T* inp,     // (N, C)
                       const T* weight,  // (C)
                       const T* bias,    // (C)
                       size_t N, int C, cudaStream_t stream);

// res = a + b (the residual connection, rounded as residual_forward rounds it), then out = LayerNorm(res):
// the same bits as residual_forward followed by layernorm_forward, with one pass over memory fewer. Its reference
// is that composition: Backend::residual_layernorm_forward's default in kernels/backend.h.
template <class T>
void residual_layernorm_forward(T* res,           // (N, C)
                                T* out,           // (N, C)
                                T* mean,          // (N)
                                T* rstd,          // (N)
                                const T* a,       // (N, C)
                                const T* b,       // (N, C)
                                const T* weight,  // (C)
                                const T* bias,    // (C)
                                size_t N, int C, cudaStream_t stream);

template <class T>
void layernorm_backward(T* dinp,          // (N, C) accumulated
                        T* dweight,       // (C) accumulated, or null
                        T* dbias,         // (C) accumulated, or null
                        const T* dout,    // (N, C)
                        const T* inp,     // (N, C)
                        const T* weight,  // (C)
                        const T* mean,    // (N)
                        const T* rstd,    // (N)
                        size_t N, int C, Scratch& scratch, cudaStream_t stream);

}  // namespace tune::cuda
