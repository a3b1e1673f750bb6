#include "kernels/cpu/matmul.h"
#include "kernels/cpu/parallel.h"

#include <cblas.h>

namespace tune::cpu {

// C(M,N) = alpha * op(A) op(B) + beta * C, row-major.
static void gemm(bool ta, bool tb, size_t M, size_t N, size_t K, float alpha, const float* A, size_t lda,
                 const float* B, size_t ldb, float beta, float* C, size_t ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}
static void gemm(bool ta, bool tb, size_t M, size_t N, size_t K, double alpha, const double* A, size_t lda,
                 const double* B, size_t ldb, double beta, double* C, size_t ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

template <class T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, size_t N, int IC, int OC) {
    gemm(false, true, N, OC, IC, T(1), inp, IC, weight, IC, T(0), out, OC);
    if (!bias) return;
#pragma omp parallel for if (N * OC >= kParallelMinElems)
    for (size_t i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) out[i * OC + o] += bias[o];
}

template <class T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, size_t N, int IC,
                     int OC) {
    if (dinp) gemm(false, false, N, IC, OC, T(1), dout, OC, weight, IC, T(0), dinp, IC);
    if (dweight) gemm(true, false, OC, IC, N, T(1), dout, OC, inp, IC, T(1), dweight, IC);
    if (dbias) {
#pragma omp parallel for if (N * OC >= kParallelMinElems)
        for (int o = 0; o < OC; o++) {
            T s = 0;
            for (size_t i = 0; i < N; i++) s += dout[i * OC + o];
            dbias[o] += s;
        }
    }
}

template void matmul_forward<float>(float*, const float*, const float*, const float*, size_t, int, int);
template void matmul_forward<double>(double*, const double*, const double*, const double*, size_t, int, int);
template void matmul_backward<float>(float*, float*, float*, const float*, const float*, const float*, size_t, int,
                                     int);
template void matmul_backward<double>(double*, double*, double*, const double*, const double*, const double*, size_t,
                                      int, int);

}  // namespace tune::cpu
