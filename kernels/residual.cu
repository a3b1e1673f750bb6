#include "kernels/residual.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr int kResidualThreads = 256;

template <class T>
__global__ void residual_forward_packed(T* out, const T* a, const T* b, size_t npacks) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < npacks; i += (size_t)gridDim.x * blockDim.x) {
        Pack<T> x = load_pack(a + i * kPack<T>), y = load_pack(b + i * kPack<T>), r;
#pragma unroll
        for (int j = 0; j < kPack<T>; j++) r.v[j] = from_f32<T>(to_f32(x.v[j]) + to_f32(y.v[j]));
        store_pack(out + i * kPack<T>, r);
    }
}

template <class T>
__global__ void residual_forward_scalar(T* out, const T* a, const T* b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

// out[i, :] = inp[rows[i], :] (gather) or out[rows[i], :] = inp[i, :] (scatter), one element per thread.
template <class T, bool kGather>
__global__ void copy_rows(T* out, const T* inp, const int32_t* rows, size_t n, int C) {
    const size_t total = n * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / C, c = i % C;
        const size_t other = (size_t)rows[r] * C + c;
        if (kGather)
            out[i] = inp[other];
        else
            out[other] = inp[i];
    }
}

}  // namespace

template <class T>
void gather_rows(T* out, const T* inp, const int32_t* rows, size_t n, int C, cudaStream_t stream) {
    LaunchRange range("gather_rows", stream);
    if (n == 0 || C == 0) return;
    copy_rows<T, true><<<grid_1d(n * C, kResidualThreads), kResidualThreads, 0, stream>>>(out, inp, rows, n, C);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void scatter_rows(T* out, const T* inp, const int32_t* rows, size_t n, size_t N, int C, cudaStream_t stream) {
    LaunchRange range("scatter_rows", stream);
    if (N == 0 || C == 0) return;
    CUDA_CHECK(cudaMemsetAsync(out, 0, N * C * sizeof(T), stream));  // all-zero bits are +0 in every type
    if (n == 0) return;
    copy_rows<T, false><<<grid_1d(n * C, kResidualThreads), kResidualThreads, 0, stream>>>(out, inp, rows, n, C);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n, cudaStream_t stream) {
    LaunchRange range("residual_forward", stream);
    if (n == 0) return;
    size_t done = 0;
    if (aligned16(out) && aligned16(a) && aligned16(b)) {
        const size_t npacks = n / kPack<T>;
        if (npacks) {
            residual_forward_packed<T>
                <<<grid_1d(npacks, kResidualThreads), kResidualThreads, 0, stream>>>(out, a, b, npacks);
            CUDA_CHECK_LAUNCH();
        }
        done = npacks * kPack<T>;
    }
    if (done < n) {
        residual_forward_scalar<T><<<grid_1d(n - done, kResidualThreads), kResidualThreads, 0, stream>>>(
            out + done, a + done, b + done, n - done);
        CUDA_CHECK_LAUNCH();
    }
}

#define TUNE_INSTANTIATE(T)                                                                \
    template void gather_rows<T>(T*, const T*, const int32_t*, size_t, int, cudaStream_t); \
    template void scatter_rows<T>(T*, const T*, const int32_t*, size_t, size_t, int, cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE
template void residual_forward<float>(float*, const float*, const float*, size_t, cudaStream_t);
template void residual_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, size_t,
                                              cudaStream_t);
template void residual_forward<__half>(__half*, const __half*, const __half*, size_t, cudaStream_t);

}  // namespace tune::cuda
