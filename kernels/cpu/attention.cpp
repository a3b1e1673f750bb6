#include "kernels/cpu/attention.h"
#include "kernels/cpu/parallel.h"

#include <cmath>
#include <vector>

namespace tune::cpu {

template <class T>
void attention_forward(T* out, T* probs, const T* qkv, DocMask mask, int B, int T_, int C, int NH) {
    const int HS = C / NH;
    const size_t C3 = 3 * (size_t)C;
    const T scale = (T)(1.0 / std::sqrt((double)HS));
#pragma omp parallel for collapse(2) if ((size_t)B * NH * T_ * T_ * HS >= kParallelMinElems)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T_; t++) {
                const int u0 = doc_first_key(mask, b, t, T_);
                const T* q = qkv + ((size_t)b * T_ + t) * C3 + (size_t)h * HS;
                T* p = probs + (((size_t)b * NH + h) * T_ + t) * T_;
                T maxv = -INFINITY;
                for (int u = 0; u <= t; u++) {
                    if (!doc_sees(mask, u0, u, t)) continue;
                    const T* k = qkv + ((size_t)b * T_ + u) * C3 + C + (size_t)h * HS;
                    T s = 0;
                    for (int i = 0; i < HS; i++) s += q[i] * k[i];
                    p[u] = s * scale;
                    if (p[u] > maxv) maxv = p[u];
                }
                T sum = 0;
                for (int u = 0; u <= t; u++) {
                    // the mask: the future, and other documents, get no weight
                    p[u] = doc_sees(mask, u0, u, t) ? std::exp(p[u] - maxv) : 0;  // minus the max: no overflow
                    sum += p[u];
                }
                for (int u = 0; u <= t; u++) p[u] /= sum;
                for (int u = t + 1; u < T_; u++) p[u] = 0;
                T* o = out + ((size_t)b * T_ + t) * C + (size_t)h * HS;
                for (int i = 0; i < HS; i++) o[i] = 0;
                for (int u = 0; u <= t; u++) {
                    if (!doc_sees(mask, u0, u, t)) continue;
                    const T* v = qkv + ((size_t)b * T_ + u) * C3 + 2 * (size_t)C + (size_t)h * HS;
                    for (int i = 0; i < HS; i++) o[i] += p[u] * v[i];
                }
            }
}

template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* probs, DocMask mask, int B, int T_, int C,
                        int NH) {
    const int HS = C / NH;
    const size_t C3 = 3 * (size_t)C;
    const T scale = (T)(1.0 / std::sqrt((double)HS));
#pragma omp parallel for collapse(2) if ((size_t)B * NH * T_ * T_ * HS >= kParallelMinElems)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            // Each (b, h) touches only its own head's slice of dqkv, so threads never collide.
            for (int t = 0; t < T_; t++)
                for (int j = 0; j < 3; j++) {
                    T* d = dqkv + ((size_t)b * T_ + t) * C3 + (size_t)j * C + (size_t)h * HS;
                    for (int i = 0; i < HS; i++) d[i] = 0;
                }
            std::vector<T> dp(T_);
            for (int t = 0; t < T_; t++) {
                const int u0 = doc_first_key(mask, b, t, T_);
                const T* p = probs + (((size_t)b * NH + h) * T_ + t) * T_;
                const T* d_o = dout + ((size_t)b * T_ + t) * C + (size_t)h * HS;
                T dot = 0;  // sum_u p[u] dp[u], the softmax backward's correction term
                for (int u = 0; u <= t; u++) {
                    if (!doc_sees(mask, u0, u, t)) continue;
                    const T* v = qkv + ((size_t)b * T_ + u) * C3 + 2 * (size_t)C + (size_t)h * HS;
                    T* dv = dqkv + ((size_t)b * T_ + u) * C3 + 2 * (size_t)C + (size_t)h * HS;
                    T s = 0;
                    for (int i = 0; i < HS; i++) {
                        s += d_o[i] * v[i];
                        dv[i] += p[u] * d_o[i];
                    }
                    dp[u] = s;
                    dot += p[u] * s;
                }
                const T* q = qkv + ((size_t)b * T_ + t) * C3 + (size_t)h * HS;
                T* dq = dqkv + ((size_t)b * T_ + t) * C3 + (size_t)h * HS;
                for (int u = 0; u <= t; u++) {
                    if (!doc_sees(mask, u0, u, t)) continue;
                    T ds = p[u] * (dp[u] - dot) * scale;
                    const T* k = qkv + ((size_t)b * T_ + u) * C3 + C + (size_t)h * HS;
                    T* dk = dqkv + ((size_t)b * T_ + u) * C3 + C + (size_t)h * HS;
                    for (int i = 0; i < HS; i++) {
                        dq[i] += ds * k[i];
                        dk[i] += ds * q[i];
                    }
                }
            }
        }
}

template <class T>
void attention_forward_cached(T* out, T* kcache, T* vcache, const T* qkv, int B, int n, int pos0, int maxT, int C,
                              int NH) {
    const int HS = C / NH;
    const size_t C3 = 3 * (size_t)C;
    const T scale = (T)(1.0 / std::sqrt((double)HS));
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++) {
            const T* src = qkv + ((size_t)b * n + i) * C3;
            T* k = kcache + ((size_t)b * maxT + pos0 + i) * C;
            T* v = vcache + ((size_t)b * maxT + pos0 + i) * C;
            for (int c = 0; c < C; c++) {
                k[c] = src[C + c];
                v[c] = src[2 * (size_t)C + c];
            }
        }
    std::vector<T> p((size_t)pos0 + n);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < n; i++) {
                const int t = pos0 + i;  // absolute position of this query
                const T* q = qkv + ((size_t)b * n + i) * C3 + (size_t)h * HS;
                T maxv = -INFINITY;
                for (int u = 0; u <= t; u++) {
                    const T* k = kcache + ((size_t)b * maxT + u) * C + (size_t)h * HS;
                    T s = 0;
                    for (int j = 0; j < HS; j++) s += q[j] * k[j];
                    p[u] = s * scale;
                    if (p[u] > maxv) maxv = p[u];
                }
                T sum = 0;
                for (int u = 0; u <= t; u++) {
                    p[u] = std::exp(p[u] - maxv);
                    sum += p[u];
                }
                T* o = out + ((size_t)b * n + i) * C + (size_t)h * HS;
                for (int j = 0; j < HS; j++) o[j] = 0;
                for (int u = 0; u <= t; u++) {
                    const T* v = vcache + ((size_t)b * maxT + u) * C + (size_t)h * HS;
                    const T w = p[u] / sum;
                    for (int j = 0; j < HS; j++) o[j] += w * v[j];
                }
            }
}

template void attention_forward_cached<float>(float*, float*, float*, const float*, int, int, int, int, int, int);
template void attention_forward_cached<double>(double*, double*, double*, const double*, int, int, int, int, int,
                                               int);
template void attention_forward<float>(float*, float*, const float*, DocMask, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, DocMask, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*, DocMask, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*, DocMask, int, int, int,
                                         int);

}  // namespace tune::cpu
