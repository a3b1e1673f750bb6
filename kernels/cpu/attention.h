// Causal multi-head self-attention, CPU reference. qkv(B,T,3C) = [q | k | v], head h owning channels
// h*HS .. h*HS+HS-1 of each third (the layout of GPT-2's c_attn output).
//   forward:  s[t,u] = q[t].k[u] / sqrt(HS) for u <= t;  p = softmax_u(s);  out[t] = sum_u p[t,u] v[u]
//   backward: dp[t,u] = dout[t].v[u];  dv[u] += p[t,u] dout[t]
//             ds[t,u] = p[t,u] (dp[t,u] - sum_u' p[t,u'] dp[t,u'])
//             dq[t] = sum_u ds[t,u] k[u] / sqrt(HS);  dk[u] += ds[t,u] q[t] / sqrt(HS)
// Forward saves the probabilities p (B,NH,T,T) (entries above the diagonal are zero). The GPU's fused
// kernel saves less; that is why `saved` is the backend's business. dqkv is written (=).
// Document masking (packed documents that must not see each other, `--windows isolated`; kernels/common.h's
// DocMask): with mask.pos(B,T), the position of each token in its document, query t attends to u in
// [t - pos[t], t] only, the tokens of its own document, and to the mask.prefix virtual tokens every document
// shares; every sum above then runs over those u and p is 0 elsewhere. mask.pos null: u in [0, t].
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/common.h"

namespace tune::cpu {

inline size_t attention_saved_elems(int B, int T, int NH) { return (size_t)B * NH * T * T; }

template <class T>
void attention_forward(T* out,            // (B, T, C)
                       T* probs,          // (B, NH, T, T)
                       const T* qkv,      // (B, T, 3C)
                       DocMask mask,      // positions in the documents, or none
                       int B, int T_, int C, int NH);

template <class T>
void attention_backward(T* dqkv,         // (B, T, 3C) written
                        const T* dout,   // (B, T, C)
                        const T* qkv,    // (B, T, 3C)
                        const T* probs,  // (B, NH, T, T)
                        DocMask mask,    // as in forward
                        int B, int T_, int C, int NH);

// Incremental attention for generation with a KV cache: n new positions pos0..pos0+n-1 of each row.
// Writes their keys and values into kcache/vcache at pos0.., then out[i] attends over cache positions
// 0..pos0+i (causal). With pos0 = 0 and n = T this equals attention_forward; saves nothing (no backward).
template <class T>
void attention_forward_cached(T* out,        // (B, n, C)
                              T* kcache,     // (B, maxT, C)
                              T* vcache,     // (B, maxT, C)
                              const T* qkv,  // (B, n, 3C)
                              int B, int n, int pos0, int maxT, int C, int NH);

}  // namespace tune::cpu
