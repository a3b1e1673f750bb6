#include "kernels/cpu/encoder.h"
#include "kernels/cpu/parallel.h"

#include <cstddef>

namespace tune::cpu {

template <class T>
void encoder_forward(T* out, const int32_t* tokens, const int32_t* pos, const T* wte, const T* wpe, int B, int T_,
                     int C) {
#pragma omp parallel for collapse(2) if ((size_t)B * T_ * C >= kParallelMinElems)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T_; t++) {
            T* o = out + ((size_t)b * T_ + t) * C;
            const T* we = wte + (size_t)tokens[(size_t)b * T_ + t] * C;
            const T* pe = wpe + (size_t)(pos ? pos[(size_t)b * T_ + t] : t) * C;
            for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
        }
}

template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, const int32_t* pos, int B, int T_,
                      int C) {
    // TEACH: the same token can appear many times in a batch, so its rows of dwte receive several
    // additions. Walking (b, t) in a fixed order keeps the sum deterministic; the GPU kernel must
    // preserve that property too (no float atomics in a run-dependent order).
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T_; t++) {
            const T* d = dout + ((size_t)b * T_ + t) * C;
            if (dwte) {
                T* g = dwte + (size_t)tokens[(size_t)b * T_ + t] * C;
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
            if (dwpe) {
                T* g = dwpe + (size_t)(pos ? pos[(size_t)b * T_ + t] : t) * C;
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
        }
}

template void encoder_forward<float>(float*, const int32_t*, const int32_t*, const float*, const float*, int, int,
                                     int);
template void encoder_forward<double>(double*, const int32_t*, const int32_t*, const double*, const double*, int, int,
                                      int);
template void encoder_backward<float>(float*, float*, const float*, const int32_t*, const int32_t*, int, int, int);
template void encoder_backward<double>(double*, double*, const double*, const int32_t*, const int32_t*, int, int,
                                       int);

}  // namespace tune::cpu
