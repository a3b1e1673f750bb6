// Token + position embeddings, CPU reference.
//   forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
//   backward: dwte[tokens[b,t],:] += dout[b,t,:];  dwpe[t,:] += dout[b,t,:]
// Saves nothing (backward needs only the tokens). Gradients accumulate; a null table is frozen.
#pragma once
#include <cstdint>

namespace tune::cpu {

template <class T>
void encoder_forward(T* out,                 // (B, T, C)
                     const int32_t* tokens,  // (B, T)
                     const T* wte,           // (Vp, C)
                     const T* wpe,           // (maxT, C)
                     int B, int T_, int C);

template <class T>
void encoder_backward(T* dwte,                // (Vp, C) or null
                      T* dwpe,                // (maxT, C) or null
                      const T* dout,          // (B, T, C)
                      const int32_t* tokens,  // (B, T)
                      int B, int T_, int C);

}  // namespace tune::cpu
