#include "kernels/matmul.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/column_sums.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr int kBiasAddThreads = 256;
// Bias gradients use the deterministic column-sum plan of kernels/cuda/device_util.cuh.

// Fallback when cuBLASLt cannot fuse the bias: out[i, o] += bias[o].
template <class T>
__global__ void add_bias_rows(T* out, const T* bias, size_t N, int OC) {
    const size_t total = N * OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(to_f32(out[i]) + to_f32(bias[i % OC]));
}

// partial (slices, OC): each slice's sum of dout over its rows. A block covers kColChannels groups of kPack<T>
// channels (device_util.cuh's groups: one 16-byte load each where the rows are aligned) with kColRowLanes row
// lanes, each lane taking every kColRowLanes-th row of the slice in order; the lanes are then added in order.
template <class T, bool kVec>
__global__ void bias_grad_partials(float* partial, const T* dout, size_t N, int OC, size_t rows_per_slice) {
    constexpr int P = kPack<T>;
    __shared__ float s[kColRowLanes][kColChannels * P];
    const int tx = threadIdx.x % kColChannels, ty = threadIdx.x / kColChannels;
    const int g = blockIdx.x * kColChannels + tx, G = (OC + P - 1) / P;
    const size_t slice = blockIdx.y;
    const size_t r0 = slice * rows_per_slice, r1 = min(N, r0 + rows_per_slice);
    float acc[P];
#pragma unroll
    for (int j = 0; j < P; j++) acc[j] = 0.0f;
    if (g < G)
        for (size_t r = r0 + ty; r < r1; r += kColRowLanes) {
            float v[P];
            load_group<kVec>(v, dout + r * OC, g, OC);
#pragma unroll
            for (int j = 0; j < P; j++) acc[j] += v[j];
        }
#pragma unroll
    for (int j = 0; j < P; j++) s[ty][tx * P + j] = acc[j];
    __syncthreads();
    for (int i = threadIdx.x; i < kColChannels * P; i += blockDim.x) {
        const int o = blockIdx.x * kColChannels * P + i;
        if (o >= OC) continue;
        float sum = 0.0f;
        for (int k = 0; k < kColRowLanes; k++) sum += s[k][i];  // fixed order
        partial[slice * OC + o] = sum;
    }
}

}  // namespace

template <>
cudaDataType_t cuda_type<float>() {
    return CUDA_R_32F;
}
template <>
cudaDataType_t cuda_type<__nv_bfloat16>() {
    return CUDA_R_16BF;
}
template <>
cudaDataType_t cuda_type<__half>() {
    return CUDA_R_16F;
}

template <class T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, size_t N, int IC, int OC, Gemm& gemm) {
    LaunchRange range("matmul_forward", gemm.stream());
    if (N == 0 || OC == 0) return;
    GemmArgs g;
    g.trans_a = true;
    g.m = OC;
    g.n = (int64_t)N;
    g.k = IC;
    g.A = weight;
    g.lda = IC;
    g.B = inp;
    g.ldb = IC;
    g.D = out;
    g.ldd = OC;
    g.ab_type = g.d_type = cuda_type<T>();
    g.bias = bias;
    if (bias && gemm.try_run(g)) return;
    g.bias = nullptr;
    gemm.run(g);
    if (bias) {
        add_bias_rows<T><<<grid_1d(N * OC, kBiasAddThreads), kBiasAddThreads, 0, gemm.stream()>>>(out, bias, N, OC);
        CUDA_CHECK_LAUNCH();
    }
}

namespace {

// dinp^T(IC,N) = W^T(IC,OC) @ dout^T(OC,N): the input gradient's product, plain or with an epilogue.
template <class T>
GemmArgs dinp_product(T* dinp, const T* dout, const T* weight, size_t N, int IC, int OC) {
    GemmArgs g;
    g.m = IC;
    g.n = (int64_t)N;
    g.k = OC;
    g.A = weight;
    g.lda = IC;
    g.B = dout;
    g.ldb = OC;
    g.D = dinp;
    g.ldd = IC;
    g.ab_type = g.d_type = cuda_type<T>();
    return g;
}

}  // namespace

template <class T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, size_t N, int IC,
                     int OC, Gemm& gemm, Scratch& scratch) {
    LaunchRange range("matmul_backward", gemm.stream());
    if (N == 0) return;
    if (dinp) gemm.run(dinp_product(dinp, dout, weight, N, IC, OC));
    if (dweight) {
        GemmArgs g;
        g.trans_b = true;
        g.m = IC;
        g.n = OC;
        g.k = (int64_t)N;
        g.A = inp;
        g.lda = IC;
        g.B = dout;
        g.ldb = OC;
        g.D = dweight;
        g.ldd = IC;
        g.ab_type = g.d_type = cuda_type<T>();
        g.beta = 1.0f;
        gemm.run(g);
    }
    if (dbias && OC > 0) {
        const auto [rows_per_slice, slices] = column_slices(N);
        float* partial = static_cast<float*>(scratch.get((size_t)slices * OC * sizeof(float)));
        const int groups = (OC + kPack<T> - 1) / kPack<T>;
        const dim3 grid((unsigned)((groups + kColChannels - 1) / kColChannels), (unsigned)slices);
        if (OC % kPack<T> == 0 && aligned16(dout))
            bias_grad_partials<T, true>
                <<<grid, kColChannels * kColRowLanes, 0, gemm.stream()>>>(partial, dout, N, OC, rows_per_slice);
        else
            bias_grad_partials<T, false>
                <<<grid, kColChannels * kColRowLanes, 0, gemm.stream()>>>(partial, dout, N, OC, rows_per_slice);
        CUDA_CHECK_LAUNCH();
        add_column_slices<T>(dbias, nullptr, partial, nullptr, OC, slices, gemm.stream());
    }
}

template <class T>
bool matmul_backward_gelu(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const T* pre,
                          size_t N, int IC, int OC, Gemm& gemm, Scratch& scratch) {
    LaunchRange range("matmul_backward_gelu", gemm.stream());
    // fp32 keeps the separate GELU backward: cuBLASLt's epilogue may approximate gelu' more loosely than the
    // 1e-5 fp32 parity the CPU reference is held to, and fp32 runs are for checking, not for speed.
    if (std::is_same<T, float>::value) return false;
    if (N == 0) return true;
    GemmArgs g = dinp_product(dinp, dout, weight, N, IC, OC);  // times gelu'(pre^T) in the epilogue
    g.dgelu = true;
    g.aux = const_cast<T*>(pre);
    g.ldaux = IC;
    if (!gemm.try_run(g)) return false;
    matmul_backward<T>(nullptr, dweight, dbias, dout, inp, weight, N, IC, OC, gemm, scratch);
    return true;
}

#define TUNE_INSTANTIATE(T)                                                                                      \
    template void matmul_forward<T>(T*, const T*, const T*, const T*, size_t, int, int, Gemm&);                  \
    template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, size_t, int, int, Gemm&, Scratch&); \
    template bool matmul_backward_gelu<T>(T*, T*, T*, const T*, const T*, const T*, const T*, size_t, int, int, Gemm&, \
                                          Scratch&);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
