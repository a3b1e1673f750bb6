// AdamW (Loshchilov & Hutter) with decoupled weight decay, CPU reference. For each element,
// with g = grad * grad_scale and lr' = lr * lr_scale of its segment:
//   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2
//   mhat = m / (1 - b1^t'); vhat = v / (1 - b2^t')     t' = t - t_offset of the segment
//   p -= lr' * (mhat / (sqrt(vhat) + eps) + wd * p)
// The CPU reference computes in float or double throughout, so it has no master copy: params are updated in place
// (the CUDA update, with fp32 master weights beside bf16/fp16 params, is kernels/adamw.h). The argument order is
// llm.c's, params and their gradients first, then the moments m and v (state updated in place).
#pragma once
#include <vector>

#include "kernels/backend.h"

namespace tune::cpu {

template <class T>
void adamw_update(T* params,       // (param arena) updated in place
                  const T* grads,  // (grad arena)
                  T* m,            // (grad arena) first moment, updated in place
                  T* v,            // (grad arena) second moment, updated in place
                  const std::vector<OptSegment>& segments, const AdamWStep& step);

// Sum of squares, accumulated in double in a fixed order.
template <class T>
double sum_squares(const T* x,  // (n)
                   size_t n);

}  // namespace tune::cpu
