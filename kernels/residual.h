// Residual connection and row gather/scatter on CUDA. Reference: kernels/cpu/residual.h.
//   forward:  out = a + b   (fp32 add, rounded once)
//   backward: da = db = dout; the model passes the residual stream's gradient straight through, so there
//             is no backward launcher. Saves nothing.
//   gather:   out(n,C) = inp[rows[i], :]
//   scatter:  out(N,C) = 0, then out[rows[i], :] = inp(i, :)   (rows distinct, so no two writers collide)
// The LM head runs on the gathered counted rows only (model/gpt2.cpp); scatter puts its input gradient back.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tune::cuda {

template <class T>
void residual_forward(T* out,      // (n); may alias a or b
                      const T* a,  // (n)
                      const T* b,  // (n)
                      size_t n, cudaStream_t stream);

template <class T>
void gather_rows(T* out,               // (n, C)
                 const T* inp,         // (N, C)
                 const int32_t* rows,  // (n), each in [0, N)
                 size_t n, int C, cudaStream_t stream);

template <class T>
void scatter_rows(T* out,               // (N, C) written entirely
                  const T* inp,         // (n, C)
                  const int32_t* rows,  // (n), distinct, each in [0, N)
                  size_t n, size_t N, int C, cudaStream_t stream);

}  // namespace tune::cuda
