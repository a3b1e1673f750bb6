#include "kernels/cpu/crossentropy.h"
#include "kernels/cpu/parallel.h"

#include <cmath>

namespace tune::cpu {

template <class T>
void crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                   const float* weights, float dloss, size_t N, int V, int Vp) {
#pragma omp parallel for if (N * Vp >= kParallelMinElems)
    for (size_t i = 0; i < N; i++) {
        const T* z = logits + i * Vp;
        T maxv = z[0];
        for (int v = 1; v < V; v++) maxv = z[v] > maxv ? z[v] : maxv;
        const float w = weights[i];
        const int y = targets[i];
        const bool y_ok = y >= 0 && y < V;  // a counted token with no valid target has loss NaN, as on the GPU
        const T zy = y_ok ? z[y] : T(0);
        // exp is the expensive part: compute it once, keeping the values in dlogits when there is one
        // (z and d may be the same memory; each element is read before it is overwritten).
        T* d = dlogits ? dlogits + i * Vp : nullptr;
        double sum = 0;
        for (int v = 0; v < V; v++) {
            T e = std::exp(z[v] - maxv);
            sum += e;
            if (d) d[v] = e;
        }
        const double log_sum = std::log(sum);  // log-sum-exp = maxv + log_sum
        losses[i] = w == 0.0f ? T(0) : y_ok ? (T)(w * (log_sum - (double)(zy - maxv))) : T(NAN);
        if (!d) continue;
        const T scale = (T)((double)w * dloss / sum);
        for (int v = 0; v < V; v++) d[v] *= scale;
        if (w != 0.0f && y_ok) d[y] -= (T)((double)w * dloss);
        for (int v = V; v < Vp; v++) d[v] = 0;
    }
}

template void crossentropy_forward_backward<float>(float*, float*, const float*, const int32_t*, const float*, float,
                                                   size_t, int, int);
template void crossentropy_forward_backward<double>(double*, double*, const double*, const int32_t*, const float*,
                                                    float, size_t, int, int);

}  // namespace tune::cpu
