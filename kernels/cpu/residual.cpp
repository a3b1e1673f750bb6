#include "kernels/cpu/residual.h"
#include "kernels/cpu/parallel.h"

namespace tune::cpu {

template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
#pragma omp parallel for if (n >= kParallelMinElems)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <class T>
void gather_rows(T* out, const T* inp, const int32_t* rows, size_t n, int C) {
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < C; c++) out[i * C + c] = inp[(size_t)rows[i] * C + c];
}

template <class T>
void scatter_rows(T* out, const T* inp, const int32_t* rows, size_t n, size_t N, int C) {
    for (size_t i = 0; i < N * C; i++) out[i] = 0;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < C; c++) out[(size_t)rows[i] * C + c] = inp[i * C + c];
}

template void gather_rows<float>(float*, const float*, const int32_t*, size_t, int);
template void gather_rows<double>(double*, const double*, const int32_t*, size_t, int);
template void scatter_rows<float>(float*, const float*, const int32_t*, size_t, size_t, int);
template void scatter_rows<double>(double*, const double*, const int32_t*, size_t, size_t, int);
template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);

}  // namespace tune::cpu
