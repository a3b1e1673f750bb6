// GELU, tanh approximation (GPT-2's "gelu_new"), CPU reference.
//   forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dx = dy * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3*0.044715 x^2))
// Forward saves nothing beyond its input, which the model keeps. dinp is written (=).
#pragma once
#include <cstddef>

namespace tune::cpu {

template <class T>
void gelu_forward(T* out,        // (n)
                  const T* inp,  // (n) the pre-activation
                  size_t n);

template <class T>
void gelu_backward(T* dinp,        // (n) written
                   const T* dout,  // (n)
                   const T* inp,   // (n) the forward's pre-activation
                   size_t n);

}  // namespace tune::cpu
