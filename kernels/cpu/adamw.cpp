#include "kernels/cpu/adamw.h"
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <cmath>

namespace tune::cpu {

template <class T>
void adamw_update(T* params, const T* grads, T* m, T* v, const std::vector<OptSegment>& segments,
                  const AdamWStep& s) {
    for (const OptSegment& seg : segments) {
        const double bc1 = 1.0 - std::pow((double)s.beta1, s.t - seg.t_offset);
        const double bc2 = 1.0 - std::pow((double)s.beta2, s.t - seg.t_offset);
        T* p = params + seg.param_offset;
        const T* g = grads + seg.grad_offset;
        T* mm = m + seg.grad_offset;
        T* vv = v + seg.grad_offset;
        const T lr = (T)((double)s.lr * seg.lr_scale);
        const T wd = (T)seg.weight_decay;
#pragma omp parallel for if (seg.n >= kParallelMinElems)
        for (size_t i = 0; i < seg.n; i++) {
            T gi = g[i] * (T)s.grad_scale;
            mm[i] = (T)s.beta1 * mm[i] + (T)(1 - s.beta1) * gi;
            vv[i] = (T)s.beta2 * vv[i] + (T)(1 - s.beta2) * gi * gi;
            T mhat = mm[i] / (T)bc1;
            T vhat = vv[i] / (T)bc2;
            p[i] -= lr * (mhat / (std::sqrt(vhat) + (T)s.eps) + wd * p[i]);
        }
    }
}

template <class T>
double sum_squares(const T* x, size_t n) {
    // Fixed-size chunks summed in order: the same total however many threads run.
    constexpr size_t kChunk = 1 << 16;
    const size_t nchunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(nchunks, 0.0);
#pragma omp parallel for if (n >= kParallelMinElems)
    for (size_t c = 0; c < nchunks; c++) {
        double s = 0;
        size_t end = std::min(n, (c + 1) * kChunk);
        for (size_t i = c * kChunk; i < end; i++) s += (double)x[i] * (double)x[i];
        partial[c] = s;
    }
    double total = 0;
    for (double s : partial) total += s;
    return total;
}

template void adamw_update<float>(float*, const float*, float*, float*, const std::vector<OptSegment>&,
                                  const AdamWStep&);
template void adamw_update<double>(double*, const double*, double*, double*, const std::vector<OptSegment>&,
                                   const AdamWStep&);
template double sum_squares<float>(const float*, size_t);
template double sum_squares<double>(const double*, size_t);

}  // namespace tune::cpu
