// Causal multi-head self-attention on CUDA. Reference: kernels/cpu/attention.h.
// qkv(B,T,3C) = [q | k | v], head h owning channels h*HS .. h*HS+HS-1 of each third; out(B,T,C).
//   forward:  S = q k^T / sqrt(HS) (causal: u <= t);  P = softmax_u(S);  out = P v
//   backward: dP = dout v^T;  dv = P^T dout
//             dS = P * (dP - rowsum(P * dP)) / sqrt(HS)
//             dq = dS k;  dk = dS^T q
// Forward saves P (B,NH,T,T) in the activation type (zeros above the diagonal): attention_saved_elems.
// dqkv is written (=). With a DocMask (packed documents, `--windows isolated`: kernels/common.h) query t sees only
// the keys of its own document and the mask's virtual prefix, as in the reference; the softmax kernels apply it,
// the GEMMs are unchanged.
//
// This is the fp32 path and the fallback; bf16/fp16 go to cuDNN's fused flash attention where it runs
// (kernels/cuda/attention_cudnn.h, chosen by CudaOptions::attention).
// Algorithm (correctness first):
// the heads are split out of qkv into contiguous (B,NH,T,HS) q, k, v; the scores and the two products per
// pass are strided-batched cuBLASLt GEMMs over B*NH heads with FP32 accumulation; scores and dP are kept in
// fp32 so the softmax and its backward read unrounded values; one warp per row does the causal softmax and
// its backward in fixed order. No atomics anywhere: deterministic. The full T x T products are computed and
// the upper triangle masked, so it does about twice the FLOPs of a causal kernel. Scratch (not saved):
// forward 4*B*T*C activations + B*NH*T*T floats; backward 7*B*T*C activations + B*NH*T*T (float + act).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common.h"
#include "kernels/cuda/cublaslt.h"
#include "kernels/cuda/scratch.h"

namespace tune::cuda {

inline size_t attention_saved_elems(int B, int T, int NH) { return (size_t)B * NH * T * T; }

template <class T>
void attention_forward(T* out,        // (B, T, C)
                       T* probs,      // (B, NH, T, T) saved
                       const T* qkv,  // (B, T, 3C)
                       DocMask mask,  // positions in the documents, or none
                       int B, int T_, int C, int NH, Gemm& gemm, Scratch& scratch);

// Incremental attention for generation with a KV cache: n new positions pos0..pos0+n-1 of each row. Copies
// their keys and values into kcache/vcache at pos0.., then out[i] attends over cache positions 0..pos0+i.
// Saves nothing (no backward). One block per (b, h, i): scores in shared memory (pos0+n floats), softmax
// with block reductions in fixed order, then one thread per head channel sums p[u] v[u] in order of u.
// Correct and deterministic, not fast: decoding is latency-bound and not yet a target.
template <class T>
void attention_forward_cached(T* out,        // (B, n, C)
                              T* kcache,     // (B, maxT, C)
                              T* vcache,     // (B, maxT, C)
                              const T* qkv,  // (B, n, 3C)
                              int B, int n, int pos0, int maxT, int C, int NH, cudaStream_t stream);

template <class T>
void attention_backward(T* dqkv,         // (B, T, 3C) written
                        const T* dout,   // (B, T, C)
                        const T* qkv,    // (B, T, 3C)
                        const T* probs,  // (B, NH, T, T) from forward
                        DocMask mask,    // as in forward
                        int B, int T_, int C, int NH, Gemm& gemm, Scratch& scratch);

}  // namespace tune::cuda
