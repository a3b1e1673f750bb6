// Residual connection, CPU reference.
//   forward:  out = a + b
//   backward: da = db = dout. The model passes the residual stream's gradient straight through, so
//             there is no backward function: see model/gpt2.cpp.
#pragma once
#include <cstddef>

namespace tune::cpu {

template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n);

}  // namespace tune::cpu
