// LayerNorm over the channel dimension, CPU reference (eps = 1e-5 as in GPT-2).
//   forward:  mean = avg(x), rstd = 1/sqrt(var(x) + eps), n = (x - mean)*rstd, out = n*w + b
//   backward: dn = dout*w
//             dx += rstd * (dn - avg(dn) - n*avg(dn*n))
//             dw += sum_rows(dout*n), db += sum_rows(dout)
// Forward saves mean and rstd per row. dinp is ACCUMULATED (+=): LayerNorm reads the residual stream,
// whose gradient buffer already holds the skip connection's share. dweight/dbias accumulate; null = frozen.
#pragma once
#include <cstddef>

namespace tune::cpu {

constexpr double kLayerNormEps = 1e-5;

template <class T>
void layernorm_forward(T* out,         // (N, C)
                       T* mean,        // (N)
                       T* rstd,        // (N)
                       const T* inp,   // (N, C)
                       const T* weight,  // (C)
                       const T* bias,  // (C)
                       size_t N, int C);

template <class T>
void layernorm_backward(T* dinp,          // (N, C) accumulated
                        T* dweight,       // (C) or null
                        T* dbias,         // (C) or null
                        const T* dout,    // (N, C)
                        const T* inp,     // (N, C)
                        const T* weight,  // (C)
                        const T* mean,    // (N)
                        const T* rstd,    // (N)
                        size_t N, int C);

}  // namespace tune::cpu
