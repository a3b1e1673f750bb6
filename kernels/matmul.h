// Linear layer y = x W^T + b on CUDA through cuBLASLt. Reference: kernels/cpu/matmul.h.
//   forward:  out(N,OC) = inp(N,IC) @ weight(OC,IC)^T + bias(OC)
//   backward: dinp(N,IC) = dout @ weight            (written; skipped when dinp is null)
//             dweight(OC,IC) += dout^T @ inp        (accumulated with beta = 1; null = frozen)
//             dbias(OC) += sum over rows of dout    (accumulated; null = frozen or no bias)
// Saves nothing: backward reads the forward's input.
//
// Row-major to cuBLAS's column-major: a row-major (R, C) matrix is a column-major (C, R) one, so
//   out^T(OC,N)     = W(OC,IC) @ inp^T(IC,N):    m=OC, n=N,  k=IC, A=W transposed, B=inp
//   dinp^T(IC,N)    = W^T(IC,OC) @ dout^T(OC,N): m=IC, n=N,  k=OC, A=W,            B=dout
//   dweight^T(IC,OC)= inp^T(IC,N) @ dout(N,OC):  m=IC, n=OC, k=N,  A=inp,          B=dout transposed
// FP32 accumulation everywhere (no TF32). The bias is fused as cuBLASLt's BIAS epilogue when it offers one
// for the shape, else added by a separate kernel. dbias is a column sum over rows in fixed slices, reduced
// in a fixed order (deterministic, no atomics), not cuBLASLt's BGRAD epilogue, which cannot accumulate.
// The MLP's GELU backward rides on the next layer's dinp GEMM as cuBLASLt's DGELU epilogue (below). Its
// forward stays a kernel of its own: see GPT2::block_forward.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/cublaslt.h"
#include "kernels/cuda/scratch.h"

namespace tune::cuda {

template <class T>
void matmul_forward(T* out,           // (N, OC)
                    const T* inp,     // (N, IC)
                    const T* weight,  // (OC, IC)
                    const T* bias,    // (OC) or null
                    size_t N, int IC, int OC, Gemm& gemm);

template <class T>
void matmul_backward(T* dinp,          // (N, IC) written, or null
                     T* dweight,       // (OC, IC) accumulated, or null
                     T* dbias,         // (OC) accumulated, or null
                     const T* dout,    // (N, OC)
                     const T* inp,     // (N, IC)
                     const T* weight,  // (OC, IC)
                     size_t N, int IC, int OC, Gemm& gemm, Scratch& scratch);

// matmul_backward for the layer after the GELU, its dinp GEMM with the GELU's backward as epilogue
// (cuBLASLt's DGELU): dinp = (dout @ W) * gelu'(pre), one pass instead of writing dout @ W and reading it
// back. Returns false (having done nothing) for fp32 (held to the reference's exact gelu') and where cuBLASLt
// has no such kernel (IC not a multiple of 8, an unaligned pre); the caller then runs matmul_backward and
// gelu_backward, which is also its reference (Backend::matmul_backward_gelu's default in kernels/backend.h).
template <class T>
bool matmul_backward_gelu(T* dinp,          // (N, IC) written
                          T* dweight,       // (OC, IC) accumulated, or null
                          T* dbias,         // (OC) accumulated, or null
                          const T* dout,    // (N, OC)
                          const T* inp,     // (N, IC) gelu(pre)
                          const T* weight,  // (OC, IC)
                          const T* pre,     // (N, IC)
                          size_t N, int IC, int OC, Gemm& gemm, Scratch& scratch);

// The cuBLAS element type of T (CUDA_R_32F, CUDA_R_16BF, CUDA_R_16F).
template <class T>
cudaDataType_t cuda_type();

}  // namespace tune::cuda
