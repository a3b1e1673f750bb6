#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/parallel.h"

#include <cmath>

namespace tune::cpu {

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, size_t N, int C) {
#pragma omp parallel for if (N * C >= kParallelMinElems)
    for (size_t i = 0; i < N; i++) {
        const T* x = inp + i * C;
        double m = 0;  // two-pass statistics in double: the reference favours accuracy over speed
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        double v = 0;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        v /= C;
        T s = (T)(1.0 / std::sqrt(v + kLayerNormEps));
        T* o = out + i * C;
        for (int c = 0; c < C; c++) o[c] = ((x[c] - (T)m) * s) * weight[c] + bias[c];
        mean[i] = (T)m;
        rstd[i] = s;
    }
}

template <class T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const T* mean,
                        const T* rstd, size_t N, int C) {
#pragma omp parallel for if (N * C >= kParallelMinElems)
    for (size_t i = 0; i < N; i++) {
        const T* x = inp + i * C;
        const T* d = dout + i * C;
        double sum_dn = 0, sum_dn_n = 0;
        for (int c = 0; c < C; c++) {
            double n = (x[c] - mean[i]) * rstd[i];
            double dn = (double)d[c] * weight[c];
            sum_dn += dn;
            sum_dn_n += dn * n;
        }
        double avg_dn = sum_dn / C, avg_dn_n = sum_dn_n / C;
        T* dx = dinp + i * C;
        for (int c = 0; c < C; c++) {
            double n = (x[c] - mean[i]) * rstd[i];
            double dn = (double)d[c] * weight[c];
            dx[c] += (T)(rstd[i] * (dn - avg_dn - n * avg_dn_n));
        }
    }
    // Parameter gradients: rows in a fixed order so the sums are reproducible.
    if (!dweight && !dbias) return;
    for (size_t i = 0; i < N; i++) {
        const T* x = inp + i * C;
        const T* d = dout + i * C;
        for (int c = 0; c < C; c++) {
            if (dweight) dweight[c] += d[c] * ((x[c] - mean[i]) * rstd[i]);
            if (dbias) dbias[c] += d[c];
        }
    }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, size_t, int);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*,
                                        size_t, int);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, size_t, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, size_t, int);

}  // namespace tune::cpu
