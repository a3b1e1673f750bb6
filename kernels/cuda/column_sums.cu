#include "kernels/cuda/column_sums.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"

namespace tune::cuda {
namespace {

// 32 channels per block, kSumRowLanes lanes each adding every kSumRowLanes-th slice in order, then the lanes
// added in order.
template <class T>
__global__ void add_column_slices_lanes(T* a, T* b, const float* partial_a, const float* partial_b, int C,
                                        int slices) {
    __shared__ float sa[kSumRowLanes][kColChannels];
    __shared__ float sb[kSumRowLanes][kColChannels];
    const int tx = threadIdx.x % kColChannels, ty = threadIdx.x / kColChannels;
    const int c = blockIdx.x * kColChannels + tx;
    float wa = 0.0f, wb = 0.0f;
    if (c < C) {
        for (int s = ty; s < slices; s += kSumRowLanes) {
            wa += partial_a[(size_t)s * C + c];
            if (partial_b) wb += partial_b[(size_t)s * C + c];
        }
    }
    sa[ty][tx] = wa;
    sb[ty][tx] = wb;
    __syncthreads();
    if (ty != 0 || c >= C) return;
    wa = 0.0f;
    wb = 0.0f;
    for (int k = 0; k < kSumRowLanes; k++) {
        wa += sa[k][tx];
        wb += sb[k][tx];
    }
    if (a) a[c] = from_f32<T>(to_f32(a[c]) + wa);
    if (b) b[c] = from_f32<T>(to_f32(b[c]) + wb);
}

}  // namespace

template <class T>
void add_column_slices(T* a, T* b, const float* partial_a, const float* partial_b, int C, int slices,
                       cudaStream_t stream) {
    if (C <= 0 || (!a && !b)) return;
    add_column_slices_lanes<T><<<(unsigned)((C + kColChannels - 1) / kColChannels), kColChannels * kSumRowLanes, 0,
                                 stream>>>(a, b, partial_a, partial_b, C, slices);
    CUDA_CHECK_LAUNCH();
}

template void add_column_slices<float>(float*, float*, const float*, const float*, int, int, cudaStream_t);
template void add_column_slices<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, const float*, const float*, int, int,
                                               cudaStream_t);
template void add_column_slices<__half>(__half*, __half*, const float*, const float*, int, int, cudaStream_t);

}  // namespace tune::cuda
