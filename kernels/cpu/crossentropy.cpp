#include "kernels/cpu/crossentropy.h"

#include <cmath>

namespace tune::cpu {

template <class T>
void crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                   const float* weights, float dloss, size_t N, int V, int Vp) {
#pragma omp parallel for
    for (size_t i = 0; i < N; i++) {
        const T* z = logits + i * Vp;
        T maxv = z[0];
        for (int v = 1; v < V; v++) maxv = z[v] > maxv ? z[v] : maxv;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += std::exp((double)(z[v] - maxv));
        const double log_sum = std::log(sum);  // log-sum-exp = maxv + log_sum
        const float w = weights[i];
        const int y = targets[i];
        losses[i] = w == 0.0f ? T(0) : (T)(w * (log_sum - (double)(z[y] - maxv)));
        if (!dlogits) continue;
        T* d = dlogits + i * Vp;  // may alias z: each element is read before it is overwritten
        const double scale = (double)w * dloss;
        for (int v = 0; v < V; v++) {
            double p = std::exp((double)(z[v] - maxv) - log_sum);
            d[v] = (T)((p - (v == y ? 1.0 : 0.0)) * scale);
        }
        for (int v = V; v < Vp; v++) d[v] = 0;
    }
}

template void crossentropy_forward_backward<float>(float*, float*, const float*, const int32_t*, const float*, float,
                                                   size_t, int, int);
template void crossentropy_forward_backward<double>(double*, double*, const double*, const int32_t*, const float*,
                                                    float, size_t, int, int);

}  // namespace tune::cpu
