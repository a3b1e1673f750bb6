// Token + position embeddings, CPU reference.
//   forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[p,:]
//   backward: dwte[tokens[b,t],:] += dout[b,t,:];  dwpe[p,:] += dout[b,t,:]
// with p = pos[b,t] (positions restarting in each packed document, `--windows isolated`), or p = t when pos is
// null.
// Saves nothing (backward needs only the tokens). Gradients accumulate; a null table is frozen.
#pragma once
#include <cstdint>

namespace tune::cpu {

template <class T>
void encoder_forward(T* out,                 // (B, T, C)
                     const int32_t* tokens,  // (B, T)
                     const int32_t* pos,     // (B, T) each < maxT, or null
                     const T* wte,           // (Vp, C)
                     const T* wpe,           // (maxT, C)
                     int B, int T_, int C);

template <class T>
void encoder_backward(T* dwte,                // (Vp, C) or null
                      T* dwpe,                // (maxT, C) or null
                      const T* dout,          // (B, T, C)
                      const int32_t* tokens,  // (B, T)
                      const int32_t* pos,     // (B, T), or null
                      int B, int T_, int C);

}  // namespace tune::cpu
