// Linear layer y = x W^T + b, CPU reference through CBLAS (OpenBLAS).
//   forward:  out(N,OC) = inp(N,IC) @ weight(OC,IC)^T + bias(OC)
//   backward: dinp(N,IC) = dout @ weight            (written; skipped when dinp is null)
//             dweight(OC,IC) += dout^T @ inp        (accumulated; null = frozen)
//             dbias(OC) += sum over rows of dout    (accumulated; null = frozen or no bias)
// Weights are stored (out, in) like torch.nn.Linear; Hugging Face GPT-2's Conv1D stores (in, out) and is
// transposed when loaded. Saves nothing: backward reads the forward's input.
#pragma once
#include <cstddef>

namespace tune::cpu {

template <class T>
void matmul_forward(T* out,            // (N, OC)
                    const T* inp,      // (N, IC)
                    const T* weight,   // (OC, IC)
                    const T* bias,     // (OC) or null
                    size_t N, int IC, int OC);

template <class T>
void matmul_backward(T* dinp,           // (N, IC) or null
                     T* dweight,        // (OC, IC) or null
                     T* dbias,          // (OC) or null
                     const T* dout,     // (N, OC)
                     const T* inp,      // (N, IC)
                     const T* weight,   // (OC, IC)
                     size_t N, int IC, int OC);

}  // namespace tune::cpu
