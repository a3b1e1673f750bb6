// Residual connection on CUDA. Reference: kernels/cpu/residual.h.
//   forward:  out = a + b   (fp32 add, rounded once)
//   backward: da = db = dout; the model passes the residual stream's gradient straight through, so there
//             is no backward launcher. Saves nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace tune::cuda {

template <class T>
void residual_forward(T* out,      // (n); may alias a or b
                      const T* a,  // (n)
                      const T* b,  // (n)
                      size_t n, cudaStream_t stream);

}  // namespace tune::cuda
