// Token + position embeddings on CUDA. Reference: kernels/cpu/encoder.h.
//   forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[p,:]      p = pos[b,t] when given (`--windows isolated`), else t
//   backward: dwte[v,:] += sum over positions (b,t) with tokens[b,t] == v of dout[b,t,:]
//             dwpe[p,:] += sum over (b,t) at position p of dout[b,t,:]
// Saves nothing (backward needs only the tokens). Gradients accumulate (+=); a null table is frozen.
//
// Determinism: no float atomics. dwpe without pos: one thread per (t, c) sums over b in order; with pos as dwte,
// by position instead of token. dwte: the (token, row) pairs are radix-sorted by token on the device (a stable
// sort, so rows stay ascending inside each token's run); the sorted rows are summed in fp32 in segments of 128
// (one block each), a run that crosses segments by partial sums added in segment order, and each run's total is
// added to dwte once.
// The same tokens give the same bits every run, however often a token repeats; a frequent token costs
// run/128 serial steps, not run.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/scratch.h"

namespace tune::cuda {

template <class T>
void encoder_forward(T* out,                 // (B, T, C)
                     const int32_t* tokens,  // (B, T), each in [0, Vp)
                     const int32_t* pos,     // (B, T), each < maxT, or null
                     const T* wte,           // (Vp, C)
                     const T* wpe,           // (maxT, C), maxT >= T
                     int B, int T_, int C, cudaStream_t stream);

template <class T>
void encoder_backward(T* dwte,                // (Vp, C) accumulated, or null
                      T* dwpe,                // (maxT, C) accumulated, or null
                      const T* dout,          // (B, T, C)
                      const int32_t* tokens,  // (B, T)
                      const int32_t* pos,     // (B, T), or null
                      int B, int T_, int C, Scratch& scratch, cudaStream_t stream);

}  // namespace tune::cuda
