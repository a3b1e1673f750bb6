// Pieces the fine-tuning methods add to the model, on CUDA. Reference: kernels/cpu/finetune.h.
// T is float, __nv_bfloat16 or __half; arithmetic is fp32 (reductions of the returned penalty in double),
// results rounded to nearest once. Nothing is saved for a backward: each op's backward is below it.
//   scale:        out = s * inp
//   dropout:      out[i] = keep(seed, c) ? inp[i] * (1 / (1 - p)) : 0,  c = dropout_counter(layout, i),
//                 keep(seed, c) = dropout_hash(seed, c) >= (uint64_t)(p * 2^32)   (kernels/common.h)
//                 The mask is a pure function of (seed, layout, i), the same bits as the CPU's, so the backward
//                 is the same call on dout and nothing is stored.
//   prefix rows:  x[b, j, col0:col0+w] = src[j, 0:w]  for every b and j < P   (soft prompts, prefix tuning)
//                 backward: dsrc[j, 0:w] += sum over b of dx[b, j, col0:col0+w], b in order (one thread per
//                 dsrc element: deterministic, no atomics); then those dx entries are set to zero.
//   distillation: q = softmax(teacher / tau), p = softmax(logits / tau) over the first V of Vp columns,
//                 losses[i] = w_i tau^2 KL(q || p),  dlogits[i] = w_i dloss tau (p - q), 0 in the padding.
//                 One block per row, like kernels/crossentropy.cu.
//   anchor penalty (L2-SP, EWC), over the optimizer's segments, with w = master (fp32, gradient-arena layout)
//                 or, when master is null, params (act type, at param_offset):
//                 *result = sum F (w - a)^2 (double, fixed order), grads += grad_mult * lambda * F (w - a).
//   accumulate squares (EWC's Fisher estimate): out += s * x^2, out fp32.
// Gradient contract: dsrc, grads and the Fisher sum accumulate (+=); dropout's and scale's outputs and
// dlogits are written (=), as the matching forward outputs are.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/backend.h"
#include "kernels/cuda/scratch.h"

namespace tune::cuda {

template <class T>
void scale(T* out,        // (n); may alias inp
           const T* inp,  // (n)
           float s, size_t n, cudaStream_t stream);

// Element i of the mask is keep(seed, dropout_counter(layout, i)), i counted from `inp`, whatever the pointers'
// alignment.
template <class T>
void dropout(T* out,        // (n); may alias inp
             const T* inp,  // (n)
             float p, uint64_t seed, const DropoutLayout& layout, size_t n, cudaStream_t stream);

template <class T>
void prefix_rows_forward(T* x,          // (B, T, W): rows j < P, columns col0..col0+w-1 written
                         const T* src,  // (P, src_ld)
                         int src_ld, int B, int T_, int P, int W, int col0, int w, cudaStream_t stream);

template <class T>
void prefix_rows_backward(T* dsrc,  // (P, src_ld): columns 0..w-1 accumulated; null when frozen
                          T* dx,    // (B, T, W): the entries prefix_rows_forward wrote are zeroed
                          int src_ld, int B, int T_, int P, int W, int col0, int w, cudaStream_t stream);

template <class T>
void distill_forward_backward(T* losses,                // (N)
                              T* dlogits,               // (N, Vp) or null; may alias teacher_logits
                              const T* logits,          // (N, Vp)
                              const T* teacher_logits,  // (N, Vp)
                              const float* weights,     // (N)
                              float tau, float dloss, size_t N, int V, int Vp, cudaStream_t stream);

// The segment table is the optimizer's kind (kernels/adamw.h); pass one kept for this op, so the optimizer's
// cached table is not thrown away every step.
template <class T>
void anchor_penalty(double* result,          // (1) on the device: sum F (w - a)^2
                    T* grads,                // grad arena, act type: accumulated at [grad_offset, +n)
                    const T* params,         // param arena, act type: read at [param_offset, +n) when !master
                    const float* master,     // (grad arena) fp32, or null
                    const float* anchor,     // (grad arena) fp32
                    const float* fisher,     // (grad arena) fp32, or null for F = 1
                    const std::vector<OptSegment>& segments, float lambda, float grad_mult, AdamWTable& table,
                    Scratch& scratch, cudaStream_t stream);

template <class T>
void accumulate_squares(float* out,  // (n) fp32, accumulated
                        const T* x,  // (n)
                        float s, size_t n, cudaStream_t stream);

}  // namespace tune::cuda
