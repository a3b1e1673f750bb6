#include "kernels/crossentropy.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"

namespace tune::cuda {
namespace {

constexpr int kCrossEntropyThreads = 512;
constexpr size_t kMaxRowBlocks = 65535u * 16u;  // rows beyond this are taken by a grid-stride loop

template <class T>
__global__ void crossentropy_forward_backward_block_per_row(T* losses, T* dlogits, const T* logits,
                                                            const int32_t* targets, const float* weights, float dloss,
                                                            size_t N, int V, int Vp) {
    __shared__ float shared_m[32], shared_s[32];
    for (size_t row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * Vp;
        const int y = targets[row];
        const float w = weights[row];
        const bool y_ok = y >= 0 && y < V;
        const float zy = y_ok ? to_f32(z[y]) : 0.0f;  // read before any thread overwrites the row

        float m = -INFINITY, s = 0.0f;
        for (int v = threadIdx.x; v < V; v += blockDim.x) online_add(m, s, to_f32(z[v]));
        block_online_merge(m, s, shared_m, shared_s);  // the same (max, sum) in every thread
        const float lse = m + logf(s);  // log-sum-exp; every thread holds the same value

        if (threadIdx.x == 0) losses[row] = from_f32<T>(w == 0.0f ? 0.0f : y_ok ? w * (lse - zy) : NAN);
        if (!dlogits) continue;
        __syncthreads();  // every thread has finished reading the row before anyone writes it
        T* d = dlogits + row * Vp;
        const float scale = w * dloss;
        for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
            float g = 0.0f;
            // scale == 0 (a masked row) writes +0 exactly, whatever the target, so masked rows add nothing.
            if (v < V && scale != 0.0f) g = (expf(to_f32(z[v]) - m) / s - (v == y ? 1.0f : 0.0f)) * scale;
            d[v] = from_f32<T>(g);
        }
    }
}

}  // namespace

template <class T>
void crossentropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets, const float* weights,
                                   float dloss, size_t N, int V, int Vp, cudaStream_t stream) {
    NvtxRange range("crossentropy_forward_backward");
    if (N == 0) return;
    crossentropy_forward_backward_block_per_row<T><<<grid_1d(N, 1, kMaxRowBlocks), kCrossEntropyThreads, 0, stream>>>(
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
