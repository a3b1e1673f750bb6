#include "kernels/layernorm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"

namespace tune::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // warps per block in the warp-per-row kernels
constexpr int kRowThreads = 32 * kRowsPerBlock;
// Parameter gradients use the deterministic column-sum plan of kernels/cuda/device_util.cuh.

// One row's LayerNorm by one warp, given this lane's sum s of x[lane], x[lane + 32], ... (its first pass).
// The fused residual kernel gets s while it writes x, so both kernels compute the same bits.
template <class T>
__device__ __forceinline__ void layernorm_row(T* out, T* mean, T* rstd, const T* x, float s, const T* weight,
                                              const T* bias, size_t row, int C, int lane) {
    const float m = warp_sum(s) / (float)C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = to_f32(x[c]) - m;
        v += d * d;
    }
    const float var = warp_sum(v) / (float)C;
    const T m_saved = from_f32<T>(m), r_saved = from_f32<T>(1.0f / sqrtf(var + kEps));
    const float mr = to_f32(m_saved), rr = to_f32(r_saved);
    T* o = out + row * C;
    for (int c = lane; c < C; c += 32)
        o[c] = from_f32<T>((to_f32(x[c]) - mr) * rr * to_f32(weight[c]) + to_f32(bias[c]));
    if (lane == 0) {
        mean[row] = m_saved;
        rstd[row] = r_saved;
    }
}

template <class T>
__global__ void layernorm_forward_warp_per_row(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                                               size_t N, int C) {
    const int lane = threadIdx.x % 32;
    // The loop condition is uniform across a warp, so the shuffles below always run with all 32 lanes.
    for (size_t row = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32; row < N;
         row += (size_t)gridDim.x * kRowsPerBlock) {
        const T* x = inp + row * C;
        float s = 0.0f;
        for (int c = lane; c < C; c += 32) s += to_f32(x[c]);
        layernorm_row(out, mean, rstd, x, s, weight, bias, row, C, lane);
    }
}

// TEACH: the residual sum is written and normalised in one pass over the row. Unfused, LayerNorm would read
// back from memory the row the residual kernel had just written; here each lane re-reads only its own
// elements, which it wrote a moment ago (still in L1), so the warp needs no barrier between the two.
template <class T>
__global__ void residual_layernorm_forward_warp_per_row(T* res, T* out, T* mean, T* rstd, const T* a, const T* b,
                                                        const T* weight, const T* bias, size_t N, int C) {
    const int lane = threadIdx.x % 32;
    for (size_t row = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32; row < N;
         row += (size_t)gridDim.x * kRowsPerBlock) {
        T* x = res + row * C;
        float s = 0.0f;
        for (int c = lane; c < C; c += 32) {
            const T v = from_f32<T>(to_f32(a[row * C + c]) + to_f32(b[row * C + c]));  // as residual_forward
            x[c] = v;
            s += to_f32(v);
        }
        layernorm_row(out, mean, rstd, x, s, weight, bias, row, C, lane);
    }
}

template <class T>
__global__ void layernorm_backward_dinp_warp_per_row(T* dinp, const T* dout, const T* inp, const T* weight,
                                                     const T* mean, const T* rstd, size_t N, int C) {
    const int lane = threadIdx.x % 32;
    for (size_t row = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32; row < N;
         row += (size_t)gridDim.x * kRowsPerBlock) {
        const T* x = inp + row * C;
        const T* d = dout + row * C;
        const float m = to_f32(mean[row]), r = to_f32(rstd[row]);
        float sum_dn = 0.0f, sum_dn_n = 0.0f;
        for (int c = lane; c < C; c += 32) {
            const float n = (to_f32(x[c]) - m) * r;
            const float dn = to_f32(d[c]) * to_f32(weight[c]);
            sum_dn += dn;
            sum_dn_n += dn * n;
        }
        const float avg_dn = warp_sum(sum_dn) / (float)C, avg_dn_n = warp_sum(sum_dn_n) / (float)C;
        T* dx = dinp + row * C;
        for (int c = lane; c < C; c += 32) {
            const float n = (to_f32(x[c]) - m) * r;
            const float dn = to_f32(d[c]) * to_f32(weight[c]);
            dx[c] = from_f32<T>(to_f32(dx[c]) + r * (dn - avg_dn - n * avg_dn_n));
        }
    }
}

// partial_w/partial_b (slices, C): sums over this slice's rows of dout*n and dout, for 32 channels.
template <class T>
__global__ void layernorm_backward_param_partials(float* partial_w, float* partial_b, const T* dout, const T* inp,
                                                  const T* mean, const T* rstd, size_t N, int C,
                                                  size_t rows_per_slice) {
    __shared__ float sw[kColRowLanes][kColChannels];
    __shared__ float sb[kColRowLanes][kColChannels];
    const int tx = threadIdx.x % kColChannels, ty = threadIdx.x / kColChannels;
    const int c = blockIdx.x * kColChannels + tx;
    const size_t slice = blockIdx.y;
    const size_t r0 = slice * rows_per_slice, r1 = min(N, r0 + rows_per_slice);
    float aw = 0.0f, ab = 0.0f;
    if (c < C) {
        for (size_t r = r0 + ty; r < r1; r += kColRowLanes) {
            const float d = to_f32(dout[r * C + c]);
            const float n = (to_f32(inp[r * C + c]) - to_f32(mean[r])) * to_f32(rstd[r]);
            aw += d * n;
            ab += d;
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && c < C) {
        float w = 0.0f, b = 0.0f;
        for (int k = 0; k < kColRowLanes; k++) {  // fixed order
            w += sw[k][tx];
            b += sb[k][tx];
        }
        partial_w[slice * C + c] = w;
        partial_b[slice * C + c] = b;
    }
}

template <class T>
__global__ void layernorm_backward_param_finalize(T* dweight, T* dbias, const float* partial_w, const float* partial_b,
                                                  int C, int slices) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float w = 0.0f, b = 0.0f;
    for (int s = 0; s < slices; s++) {
        w += partial_w[(size_t)s * C + c];
        b += partial_b[(size_t)s * C + c];
    }
    if (dweight) dweight[c] = from_f32<T>(to_f32(dweight[c]) + w);
    if (dbias) dbias[c] = from_f32<T>(to_f32(dbias[c]) + b);
}

}  // namespace

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, size_t N, int C,
                       cudaStream_t stream) {
    NvtxRange range("layernorm_forward");
    if (N == 0 || C == 0) return;
    layernorm_forward_warp_per_row<T>
        <<<grid_1d(N, kRowsPerBlock, kMaxGridX), kRowThreads, 0, stream>>>(out, mean, rstd, inp, weight, bias, N, C);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void residual_layernorm_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b, const T* weight,
                                const T* bias, size_t N, int C, cudaStream_t stream) {
    NvtxRange range("residual_layernorm_forward");
    if (N == 0 || C == 0) return;
    residual_layernorm_forward_warp_per_row<T><<<grid_1d(N, kRowsPerBlock, kMaxGridX), kRowThreads, 0, stream>>>(
        res, out, mean, rstd, a, b, weight, bias, N, C);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const T* mean,
                        const T* rstd, size_t N, int C, Scratch& scratch, cudaStream_t stream) {
    NvtxRange range("layernorm_backward");
    if (N == 0 || C == 0) return;
    layernorm_backward_dinp_warp_per_row<T>
        <<<grid_1d(N, kRowsPerBlock, kMaxGridX), kRowThreads, 0, stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();
    if (!dweight && !dbias) return;

    const auto [rows_per_slice, slices] = column_slices(N);
    Carve sizes(nullptr);
    sizes.take<float>((size_t)slices * C);
    sizes.take<float>((size_t)slices * C);
    Carve carve(scratch.get(sizes.bytes()));
    float* partial_w = carve.take<float>((size_t)slices * C);
    float* partial_b = carve.take<float>((size_t)slices * C);
    const dim3 grid((unsigned)((C + kColChannels - 1) / kColChannels), (unsigned)slices);
    layernorm_backward_param_partials<T><<<grid, kColChannels * kColRowLanes, 0, stream>>>(
        partial_w, partial_b, dout, inp, mean, rstd, N, C, rows_per_slice);
    CUDA_CHECK_LAUNCH();
    layernorm_backward_param_finalize<T><<<grid_1d(C, kFinalizeThreads), kFinalizeThreads, 0, stream>>>(
        dweight, dbias, partial_w, partial_b, C, slices);
    CUDA_CHECK_LAUNCH();
}

#define TUNE_INSTANTIATE(T)                                                                                        \
    template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, size_t, int, cudaStream_t);       \
    template void residual_layernorm_forward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, size_t, int, \
                                                cudaStream_t);                                                     \
    template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, size_t, int, \
                                        Scratch&, cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
