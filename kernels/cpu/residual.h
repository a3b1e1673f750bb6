// Residual connection and row gather/scatter, CPU reference.
//   forward:  out = a + b
//   backward: da = db = dout. The model passes the residual stream's gradient straight through, so
//             there is no backward function: see model/gpt2.cpp.
#pragma once
#include <cstddef>
#include <cstdint>

namespace tune::cpu {

template <class T>
void residual_forward(T* out,      // (n); may alias a or b
                      const T* a,  // (n)
                      const T* b,  // (n)
                      size_t n);

// Row gather and scatter (the LM head runs only on positions whose loss counts; see model/gpt2.cpp).
//   gather:  out(n,C) = inp[rows[i], :]
//   scatter: out(N,C) = 0, then out[rows[i], :] = inp(i, :)        (rows distinct)
template <class T>
void gather_rows(T* out,               // (n, C)
                 const T* inp,         // (N, C)
                 const int32_t* rows,  // (n) row indices into inp
                 size_t n, int C);
template <class T>
void scatter_rows(T* out,               // (N, C) written whole
                  const T* inp,         // (n, C)
                  const int32_t* rows,  // (n) distinct row indices into out
                  size_t n, size_t N, int C);

}  // namespace tune::cpu
