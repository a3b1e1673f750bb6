// GELU, tanh approximation (GPT-2's "gelu_new"), on CUDA. Reference: kernels/cpu/gelu.h.
//   forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dx = dy * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3*0.044715 x^2))
// Forward saves nothing beyond its input, which the model keeps. dinp is written (=).
// T is float, __nv_bfloat16 or __half; arithmetic is fp32, results rounded to nearest once.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace tune::cuda {

template <class T>
void gelu_forward(T* out,        // (n)
                  const T* inp,  // (n)
                  size_t n, cudaStream_t stream);

template <class T>
void gelu_backward(T* dinp,        // (n) written; may alias dout
                   const T* dout,  // (n)
                   const T* inp,   // (n)
                   size_t n, cudaStream_t stream);

}  // namespace tune::cuda
