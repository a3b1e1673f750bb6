#include "kernels/crossentropy.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"

namespace tune::cuda {
namespace {

// 1024 threads: two blocks per SM, so the rows in flight (2 x 132 on an H200, 100 KB each at GPT-2's vocabulary
// in bf16) fit in L2 and the second pass over a row reads it from there, not from HBM. The column-by-column
// fallback needs more registers than 1024 threads leave (64): it runs 512.
template <bool kVec>
constexpr int kCrossEntropyThreads = kVec ? 1024 : 512;
constexpr size_t kMaxRowBlocks = 65535u * 16u;  // rows beyond this are taken by a grid-stride loop

// Thread t takes groups g = t, t + blockDim.x, ... of kPack<T> columns (device_util.cuh): one 16-byte access each
// when kVec, column by column otherwise, in the same order.
template <class T, bool kVec>
__global__ void __launch_bounds__(kCrossEntropyThreads<kVec>)
    crossentropy_forward_backward_block_per_row(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                                const float* weights, float dloss, size_t N, int V, int Vp) {
    constexpr int P = kPack<T>;
    __shared__ float shared_m[32], shared_s[32];
    const int groups_v = (V + P - 1) / P, groups_vp = (Vp + P - 1) / P;  // groups holding a column < V; all
    for (size_t row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * Vp;
        const int y = targets[row];
        const float w = weights[row];
        const bool y_ok = y >= 0 && y < V;
        const float zy = y_ok ? to_f32(z[y]) : 0.0f;  // read before any thread overwrites the row

        float m = -INFINITY, s = 0.0f;
        for (int g = threadIdx.x; g < groups_v; g += blockDim.x) {
            float zv[P];
            load_group<kVec>(zv, z, g, Vp);
            online_add_pack(m, s, zv, g * P, V);
        }
        block_online_merge(m, s, shared_m, shared_s);  // the same (max, sum) in every thread
        const float lse = m + logf(s);  // log-sum-exp; every thread holds the same value

        if (threadIdx.x == 0) losses[row] = from_f32<T>(w == 0.0f ? 0.0f : y_ok ? w * (lse - zy) : NAN);
        if (!dlogits) continue;
        __syncthreads();  // every thread has finished reading the row before anyone writes it
        T* d = dlogits + row * Vp;
        const float scale = w * dloss, inv_s = 1.0f / s;
        for (int g = threadIdx.x; g < groups_vp; g += blockDim.x) {
            float gv[P];
            // scale == 0 (a masked row) writes +0 exactly, whatever the target, so masked rows add nothing.
            if (scale == 0.0f || g >= groups_v) {
#pragma unroll
                for (int j = 0; j < P; j++) gv[j] = 0.0f;
            } else {
                load_group<kVec>(gv, z, g, Vp);
#pragma unroll
                for (int j = 0; j < P; j++) {
                    const int v = g * P + j;
                    gv[j] = v < V ? (expf(gv[j] - m) * inv_s - (v == y ? 1.0f : 0.0f)) * scale : 0.0f;
                }
            }
            store_group<kVec>(d, g, Vp, gv);
        }
    }
}

}  // namespace

template <class T>
void crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets, const float* weights,
                                   float dloss, size_t N, int V, int Vp, cudaStream_t stream) {
    NvtxRange range("crossentropy_forward_backward");
    if (N == 0) return;
    // 16-byte accesses when every row starts 16-byte aligned; column by column otherwise.
    const unsigned grid = grid_1d(N, 1, kMaxRowBlocks);
    if (Vp % kPack<T> == 0 && aligned16(logits) && (!dlogits || aligned16(dlogits)))
        crossentropy_forward_backward_block_per_row<T, true><<<grid, kCrossEntropyThreads<true>, 0, stream>>>(
            losses, dlogits, logits, targets, weights, dloss, N, V, Vp);
    else
        crossentropy_forward_backward_block_per_row<T, false><<<grid, kCrossEntropyThreads<false>, 0, stream>>>(
            losses, dlogits, logits, targets, weights, dloss, N, V, Vp);
    CUDA_CHECK_LAUNCH();
}

template void crossentropy_forward_backward<float>(float*, float*, const float*, const int32_t*, const float*, float,
                                                   size_t, int, int, cudaStream_t);
template void crossentropy_forward_backward<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, const __nv_bfloat16*,
                                                           const int32_t*, const float*, float, size_t, int, int,
                                                           cudaStream_t);
template void crossentropy_forward_backward<__half>(__half*, __half*, const __half*, const int32_t*, const float*,
                                                    float, size_t, int, int, cudaStream_t);

}  // namespace tune::cuda
