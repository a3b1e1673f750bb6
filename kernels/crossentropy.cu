#include "kernels/crossentropy.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"

namespace tune::cuda {
namespace {

// 1024 threads: two blocks per SM, so the rows in flight (2 x 132 on an H200, 100 KB each at GPT-2's vocabulary
// in bf16) fit in L2 and the second pass over a row reads it from there, not from HBM.
constexpr int kCrossEntropyThreads = 1024;
constexpr size_t kMaxRowBlocks = 65535u * 16u;  // rows beyond this are taken by a grid-stride loop

// Thread t takes groups g = t, t + blockDim.x, ... of P consecutive columns (one 16-byte load each when P > 1).
template <class T, int P>
__global__ void __launch_bounds__(kCrossEntropyThreads)
    crossentropy_forward_backward_block_per_row(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                                const float* weights, float dloss, size_t N, int V, int Vp) {
    __shared__ float shared_m[32], shared_s[32];
    const int groups_v = (V + P - 1) / P, groups_vp = Vp / P;  // groups holding a column < V; all groups
    for (size_t row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * Vp;
        const int y = targets[row];
        const float w = weights[row];
        const bool y_ok = y >= 0 && y < V;
        const float zy = y_ok ? to_f32(z[y]) : 0.0f;  // read before any thread overwrites the row

        // TEACH: online softmax a pack at a time: the pack's own maximum first, so the running sum is rescaled
        // at most once per pack (not tested per element), then one exp per element.
        float m = -INFINITY, s = 0.0f;
        for (int g = threadIdx.x; g < groups_v; g += blockDim.x) {
            float zv[P];
            load_f32<P>(zv, z + (size_t)g * P);
            float pm = -INFINITY;
#pragma unroll
            for (int j = 0; j < P; j++)
                if (g * P + j < V) pm = fmaxf(pm, zv[j]);
            if (pm > m) {  // false for -inf (nothing to add) and NaN (which the sum below takes up)
                s *= expf(m - pm);  // expf(-inf) = 0 while the sum is still empty
                m = pm;
            }
#pragma unroll
            for (int j = 0; j < P; j++)  // a -inf logit adds exp(-inf) = 0: skipped, as it may meet m = -inf
                if (g * P + j < V && zv[j] != -INFINITY) s += expf(zv[j] - m);
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
                load_f32<P>(gv, z + (size_t)g * P);
#pragma unroll
                for (int j = 0; j < P; j++) {
                    const int v = g * P + j;
                    gv[j] = v < V ? (expf(gv[j] - m) * inv_s - (v == y ? 1.0f : 0.0f)) * scale : 0.0f;
                }
            }
            store_f32<P>(d + (size_t)g * P, gv);
        }
    }
}

}  // namespace

template <class T>
void crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets, const float* weights,
                                   float dloss, size_t N, int V, int Vp, cudaStream_t stream) {
    NvtxRange range("crossentropy_forward_backward");
    if (N == 0) return;
    // 16-byte packs when every row starts 16-byte aligned; single columns otherwise.
    constexpr int P = kPack<T>;
    const unsigned grid = grid_1d(N, 1, kMaxRowBlocks);
    if (Vp % P == 0 && aligned16(logits) && (!dlogits || aligned16(dlogits)))
        crossentropy_forward_backward_block_per_row<T, P><<<grid, kCrossEntropyThreads, 0, stream>>>(
            losses, dlogits, logits, targets, weights, dloss, N, V, Vp);
    else
        crossentropy_forward_backward_block_per_row<T, 1><<<grid, kCrossEntropyThreads, 0, stream>>>(
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
