#include "kernels/cpu/finetune.h"

#include <cmath>
#include <vector>

#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tune::cpu {

template <class T>
void scale(T* out, const T* inp, float s, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = inp[i] * (T)s;
}

template <class T>
void dropout(T* out, const T* inp, float p, uint64_t seed, const DropoutLayout& layout, size_t n) {
    // keep when the 32-bit hash is at or above p * 2^32: probability 1 - p, up to 2^-32.
    const uint64_t threshold = (uint64_t)((double)p * 4294967296.0);
    const T keep_scale = (T)(1.0 / (1.0 - (double)p));
    for (size_t i = 0; i < n; i++)
        out[i] = dropout_hash(seed, dropout_counter(layout, i)) >= threshold ? inp[i] * keep_scale : T(0);
}

template <class T>
void prefix_rows_forward(T* x, const T* src, int src_ld, int B, int T_, int P, int W, int col0, int w) {
    for (int b = 0; b < B; b++)
        for (int j = 0; j < P; j++) {
            T* row = x + ((size_t)b * T_ + j) * W + col0;
            const T* s = src + (size_t)j * src_ld;
            for (int c = 0; c < w; c++) row[c] = s[c];
        }
}

template <class T>
void prefix_rows_backward(T* dsrc, T* dx, int src_ld, int B, int T_, int P, int W, int col0, int w) {
    for (int j = 0; j < P; j++)
        for (int b = 0; b < B; b++) {  // b in order: a fixed summation order
            T* row = dx + ((size_t)b * T_ + j) * W + col0;
            for (int c = 0; c < w; c++) {
                if (dsrc) dsrc[(size_t)j * src_ld + c] += row[c];
                row[c] = T(0);
            }
        }
}

template <class T>
void distill_forward_backward(T* losses, T* dlogits, const T* logits, const T* teacher, const float* weights,
                              float tau, float dloss, size_t N, int V, int Vp) {
    const double inv_tau = 1.0 / tau;
#pragma omp parallel for if (N * Vp >= kParallelMinElems)
    for (size_t i = 0; i < N; i++) {
        const T* z = logits + i * Vp;
        const T* zt = teacher + i * Vp;
        double maxs = -INFINITY, maxt = -INFINITY;
        for (int v = 0; v < V; v++) {
            maxs = std::fmax(maxs, (double)z[v] * inv_tau);
            maxt = std::fmax(maxt, (double)zt[v] * inv_tau);
        }
        double sums = 0, sumt = 0;
        for (int v = 0; v < V; v++) {
            sums += std::exp((double)z[v] * inv_tau - maxs);
            sumt += std::exp((double)zt[v] * inv_tau - maxt);
        }
        const double lse_s = maxs + std::log(sums), lse_t = maxt + std::log(sumt);
        const double w = weights[i];
        double kl = 0;
        T* d = dlogits ? dlogits + i * Vp : nullptr;
        for (int v = 0; v < V; v++) {
            const double log_p = (double)z[v] * inv_tau - lse_s;
            const double log_q = (double)zt[v] * inv_tau - lse_t;  // read before d[v] (may alias) is written
            const double q = std::exp(log_q);
            kl += q * (log_q - log_p);
            if (d) d[v] = (T)(w * dloss * tau * (std::exp(log_p) - q));
        }
        if (d)
            for (int v = V; v < Vp; v++) d[v] = T(0);
        losses[i] = w == 0.0 ? T(0) : (T)(w * (double)tau * tau * kl);
    }
}

template <class T>
double anchor_penalty(T* grads, const T* params, const T* master, const T* anchor, const T* fisher,
                      const std::vector<OptSegment>& segments, float lambda, float grad_mult) {
    double total = 0;
    const double coef = (double)grad_mult * lambda;
    for (const OptSegment& s : segments) {
        const T* wv = master ? master + s.grad_offset : params + s.param_offset;
        double seg = 0;
        for (size_t i = 0; i < s.n; i++) {
            const size_t gi = s.grad_offset + i;
            const double diff = (double)wv[i] - (double)anchor[gi];
            const double f = fisher ? (double)fisher[gi] : 1.0;
            seg += f * diff * diff;
            grads[gi] += (T)(coef * f * diff);
        }
        total += seg;
    }
    return total;
}

template <class T>
void accumulate_squares(T* out, const T* x, float s, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] += (T)s * x[i] * x[i];
}

#define INSTANTIATE(T)                                                                                       \
    template void scale<T>(T*, const T*, float, size_t);                                                    \
    template void dropout<T>(T*, const T*, float, uint64_t, const DropoutLayout&, size_t);                  \
    template void prefix_rows_forward<T>(T*, const T*, int, int, int, int, int, int, int);                  \
    template void prefix_rows_backward<T>(T*, T*, int, int, int, int, int, int, int);                       \
    template void distill_forward_backward<T>(T*, T*, const T*, const T*, const float*, float, float, size_t, \
                                              int, int);                                                    \
    template double anchor_penalty<T>(T*, const T*, const T*, const T*, const T*,                           \
                                      const std::vector<OptSegment>&, float, float);                        \
    template void accumulate_squares<T>(T*, const T*, float, size_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace tune::cpu
