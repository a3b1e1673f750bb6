#include "kernels/cpu/residual.h"
#include "kernels/cpu/parallel.h"

namespace tune::cpu {

template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
#pragma omp parallel for if (n >= kParallelMinElems)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);

}  // namespace tune::cpu
