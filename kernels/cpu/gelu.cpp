#include "kernels/cpu/gelu.h"
#include "kernels/cpu/parallel.h"

#include <cmath>

namespace tune::cpu {

static constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi)

template <class T>
void gelu_forward(T* out, const T* inp, size_t n) {
#pragma omp parallel for if (n >= kParallelMinElems)
    for (size_t i = 0; i < n; i++) {
        T x = inp[i];
        T u = (T)kSqrt2OverPi * (x + (T)0.044715 * x * x * x);
        out[i] = (T)0.5 * x * ((T)1 + std::tanh(u));
    }
}

template <class T>
void gelu_backward(T* dinp, const T* dout, const T* inp, size_t n) {
#pragma omp parallel for if (n >= kParallelMinElems)
    for (size_t i = 0; i < n; i++) {
        T x = inp[i];
        T u = (T)kSqrt2OverPi * (x + (T)0.044715 * x * x * x);
        T th = std::tanh(u);
        T du = (T)kSqrt2OverPi * ((T)1 + (T)(3 * 0.044715) * x * x);
        T grad = (T)0.5 * ((T)1 + th) + (T)0.5 * x * ((T)1 - th * th) * du;
        dinp[i] = dout[i] * grad;
    }
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);

}  // namespace tune::cpu
