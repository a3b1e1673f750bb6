// Pieces the fine-tuning methods add to the model, CPU reference (CUDA: kernels/finetune.h).
//   scale:     out = s * inp
//   dropout:   out[i] = keep(seed, c) ? inp[i] / (1 - p) : 0, c = dropout_counter(layout, i); keep from
//              dropout_hash (kernels/common.h), so the mask is a pure function of (seed, layout, i): the backward
//              is the same call on dout.
//   prefix rows (soft prompts, prefix tuning): x[b, j, col0:col0+w] = src[j, 0:w] for j < P;
//              backward: dsrc[j] += sum_b dx[b, j, col0:col0+w], then those dx entries are zeroed.
//   distillation: losses_i = w_i tau^2 KL(q || p), dlogits_i = w_i dloss tau (p - q),
//              p = softmax(z / tau), q = softmax(z_teacher / tau), over the first V columns.
//   anchor penalty (L2-SP, EWC): returns sum F (w - a)^2; grads += grad_mult * lambda * F * (w - a).
//   accumulate_squares: out += s * x^2.
// Saves nothing; the gradient contract is in each line above (dsrc and grads accumulate, the rest write).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tune::cpu {

template <class T>
void scale(T* out,        // (n); may alias inp
           const T* inp,  // (n)
           float s, size_t n);

template <class T>
void dropout(T* out,        // (n); may alias inp
             const T* inp,  // (n)
             float p, uint64_t seed, const DropoutLayout& layout, size_t n);

template <class T>
void prefix_rows_forward(T* x,          // (B, T, W)
                         const T* src,  // (P, src_ld)
                         int src_ld, int B, int T_, int P, int W, int col0, int w);
template <class T>
void prefix_rows_backward(T* dsrc,  // (P, src_ld) accumulated; may be null
                          T* dx,    // (B, T, W) prefix entries zeroed
                          int src_ld, int B, int T_, int P, int W, int col0, int w);

template <class T>
void distill_forward_backward(T* losses,                // (N)
                              T* dlogits,               // (N, Vp) or null; may alias teacher_logits
                              const T* logits,          // (N, Vp)
                              const T* teacher_logits,  // (N, Vp)
                              const float* weights,     // (N)
                              float tau, float dloss, size_t N, int V, int Vp);

// params are used (at param_offset) only when master is null.
template <class T>
double anchor_penalty(T* grads,          // (grad arena) accumulated
                      const T* params,   // (param arena)
                      const T* master,   // (grad arena) or null
                      const T* anchor,   // (grad arena)
                      const T* fisher,   // (grad arena) or null (L2-SP)
                      const std::vector<OptSegment>& segments, float lambda, float grad_mult);

template <class T>
void accumulate_squares(T* out,      // (n) accumulated: out += s * x^2
                        const T* x,  // (n)
                        float s, size_t n);

}  // namespace tune::cpu
