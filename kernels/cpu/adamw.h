// AdamW (Loshchilov & Hutter) with decoupled weight decay, CPU reference. For each element,
// with g = grad * grad_scale and lr' = lr * lr_scale of its segment:
//   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2
//   mhat = m / (1 - b1^t'); vhat = v / (1 - b2^t')     t' = t - t_offset of the segment
//   p -= lr' * (mhat / (sqrt(vhat) + eps) + wd * p)
// When master is non-null the update runs on the master copy and p receives its rounded value; here
// (float or double throughout) the CPU backend updates p in place and master is null.
#pragma once
#include <vector>

#include "kernels/backend.h"

namespace tune::cpu {

template <class T>
void adamw_update(T* params, const T* grads, T* m, T* v, const std::vector<OptSegment>& segments,
                  const AdamWStep& step);

// Sum of squares, accumulated in double in a fixed order.
template <class T>
double sum_squares(const T* x, size_t n);

}  // namespace tune::cpu
