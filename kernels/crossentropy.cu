#include "kernels/crossentropy.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

// 1024 threads a row, one block per SM (their registers allow no second): the rows in flight, 132 on an H200 at
// 100 KB each for GPT-2's vocabulary in bf16, fit in L2, so the second pass over a row reads it from there, not
// from HBM. Each thread loads two groups before using either, so that 32 KB per SM are in flight, about what
// HBM's latency asks for.
constexpr int kCrossEntropyThreads = 1024;
constexpr size_t kMaxRowBlocks = 65535u * 16u;  // rows beyond this are taken by a grid-stride loop

// Thread t takes groups g = t, t + blockDim.x, ... of kPack<T> columns (device_util.cuh): one 16-byte access each
// when kVec, column by column otherwise, in the same order; two at a time (g and g + blockDim.x), in that order.
template <class T, bool kVec>
__global__ void __launch_bounds__(kCrossEntropyThreads)
    crossentropy_forward_backward_block_per_row(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                                const float* weights, float dloss, size_t N, int V, int Vp) {
    constexpr int P = kPack<T>;
    __shared__ float shared_m[32], shared_s[32];
    const int groups_v = (V + P - 1) / P, groups_vp = (Vp + P - 1) / P;  // groups holding a column < V; all
    const int step = blockDim.x;
    for (size_t row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * Vp;
        const int y = targets[row];
        const float w = weights[row];
        const bool y_ok = y >= 0 && y < V;
        const float zy = y_ok ? to_f32(z[y]) : 0.0f;  // read before any thread overwrites the row

        float m = -INFINITY, s = 0.0f;
        for (int g = threadIdx.x; g < groups_v; g += 2 * step) {
            const bool second = g + step < groups_v;
            float z0[P], z1[P];
            load_group<kVec>(z0, z, g, Vp);
            if (second) load_group<kVec>(z1, z, g + step, Vp);
            online_add_pack(m, s, z0, g * P, V);
            if (second) online_add_pack(m, s, z1, (g + step) * P, V);
        }
        block_online_merge(m, s, shared_m, shared_s);  // the same (max, sum) in every thread
        const float lse = m + logf(s);  // log-sum-exp; every thread holds the same value

        if (threadIdx.x == 0) losses[row] = from_f32<T>(w == 0.0f ? 0.0f : y_ok ? w * (lse - zy) : NAN);
        if (!dlogits) continue;
        __syncthreads();  // every thread has finished reading the row before anyone writes it
        T* d = dlogits + row * Vp;
        const float scale = w * dloss, inv_s = 1.0f / s;
        // The gradient of group g in place of its logits; +0 for the padding and for a masked row (scale == 0),
        // whatever the target, so masked rows add nothing.
        auto gradient = [&](float (&gv)[P], int g) {
#pragma unroll
            for (int j = 0; j < P; j++) {
                const int v = g * P + j;
                gv[j] = v < V && scale != 0.0f ? (expf(gv[j] - m) * inv_s - (v == y ? 1.0f : 0.0f)) * scale : 0.0f;
            }
        };
        for (int g = threadIdx.x; g < groups_vp; g += 2 * step) {
            const bool second = g + step < groups_vp;
            float g0[P], g1[P];
            if (scale != 0.0f) {  // a masked row reads nothing: its gradient is +0 whatever the logits
                load_group<kVec>(g0, z, g, Vp);  // both loads before the first store: d may alias z
                if (second) load_group<kVec>(g1, z, g + step, Vp);
            }
            gradient(g0, g);
            store_group<kVec>(d, g, Vp, g0);
            if (second) {
                gradient(g1, g + step);
                store_group<kVec>(d, g + step, Vp, g1);
            }
        }
    }
}

}  // namespace

template <class T>
void crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets, const float* weights,
                                   float dloss, size_t N, int V, int Vp, cudaStream_t stream) {
    LaunchRange range("crossentropy_forward_backward", stream);
    if (N == 0) return;
    // 16-byte accesses when every row starts 16-byte aligned; column by column otherwise.
    const unsigned grid = grid_1d(N, 1, kMaxRowBlocks);
    if (Vp % kPack<T> == 0 && aligned16(logits) && (!dlogits || aligned16(dlogits)))
        crossentropy_forward_backward_block_per_row<T, true><<<grid, kCrossEntropyThreads, 0, stream>>>(
            losses, dlogits, logits, targets, weights, dloss, N, V, Vp);
    else
        crossentropy_forward_backward_block_per_row<T, false><<<grid, kCrossEntropyThreads, 0, stream>>>(
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
