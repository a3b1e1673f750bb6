#include "kernels/gelu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr int kGeluThreads = 256;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluCoeff = 0.044715f;

__device__ __forceinline__ float gelu(float x) {
    const float u = kSqrt2OverPi * (x + kGeluCoeff * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad(float x) {
    const float u = kSqrt2OverPi * (x + kGeluCoeff * x * x * x);
    const float th = tanhf(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoeff * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

// One 16-byte pack per thread per iteration; every pointer 16-byte aligned, npacks = n / kPack<T>.
template <class T>
__global__ void gelu_forward_packed(T* out, const T* inp, size_t npacks) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < npacks; i += (size_t)gridDim.x * blockDim.x) {
        Pack<T> x = load_pack(inp + i * kPack<T>), y;
#pragma unroll
        for (int j = 0; j < kPack<T>; j++) y.v[j] = from_f32<T>(gelu(to_f32(x.v[j])));
        store_pack(out + i * kPack<T>, y);
    }
}

template <class T>
__global__ void gelu_forward_scalar(T* out, const T* inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(gelu(to_f32(inp[i])));
}

template <class T>
__global__ void gelu_backward_packed(T* dinp, const T* dout, const T* inp, size_t npacks) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < npacks; i += (size_t)gridDim.x * blockDim.x) {
        Pack<T> x = load_pack(inp + i * kPack<T>), d = load_pack(dout + i * kPack<T>), r;
#pragma unroll
        for (int j = 0; j < kPack<T>; j++) r.v[j] = from_f32<T>(to_f32(d.v[j]) * gelu_grad(to_f32(x.v[j])));
        store_pack(dinp + i * kPack<T>, r);
    }
}

template <class T>
__global__ void gelu_backward_scalar(T* dinp, const T* dout, const T* inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dinp[i] = from_f32<T>(to_f32(dout[i]) * gelu_grad(to_f32(inp[i])));
}

}  // namespace

template <class T>
void gelu_forward(T* out, const T* inp, size_t n, cudaStream_t stream) {
    LaunchRange range("gelu_forward", stream);
    if (n == 0) return;
    size_t done = 0;
    if (aligned16(out) && aligned16(inp)) {
        const size_t npacks = n / kPack<T>;
        if (npacks) {
            gelu_forward_packed<T><<<grid_1d(npacks, kGeluThreads), kGeluThreads, 0, stream>>>(out, inp, npacks);
            CUDA_CHECK_LAUNCH();
        }
        done = npacks * kPack<T>;
    }
    if (done < n) {  // unaligned buffers, or the last n % kPack elements
        gelu_forward_scalar<T>
            <<<grid_1d(n - done, kGeluThreads), kGeluThreads, 0, stream>>>(out + done, inp + done, n - done);
        CUDA_CHECK_LAUNCH();
    }
}

template <class T>
void gelu_backward(T* dinp, const T* dout, const T* inp, size_t n, cudaStream_t stream) {
    LaunchRange range("gelu_backward", stream);
    if (n == 0) return;
    size_t done = 0;
    if (aligned16(dinp) && aligned16(dout) && aligned16(inp)) {
        const size_t npacks = n / kPack<T>;
        if (npacks) {
            gelu_backward_packed<T>
                <<<grid_1d(npacks, kGeluThreads), kGeluThreads, 0, stream>>>(dinp, dout, inp, npacks);
            CUDA_CHECK_LAUNCH();
        }
        done = npacks * kPack<T>;
    }
    if (done < n) {
        gelu_backward_scalar<T><<<grid_1d(n - done, kGeluThreads), kGeluThreads, 0, stream>>>(dinp + done, dout + done,
                                                                                              inp + done, n - done);
        CUDA_CHECK_LAUNCH();
    }
}

#define TUNE_INSTANTIATE(T)                                            \
    template void gelu_forward<T>(T*, const T*, size_t, cudaStream_t); \
    template void gelu_backward<T>(T*, const T*, const T*, size_t, cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
