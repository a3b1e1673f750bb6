#include "kernels/adamw.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr int kAdamThreads = 256;
constexpr int kAdamElemsPerThread = 4;
constexpr size_t kAdamElemsPerBlock = (size_t)kAdamThreads * kAdamElemsPerThread;
constexpr int kSumSqThreads = 256;
constexpr int kSumSqFinalThreads = 1024;
constexpr size_t kSumSqMaxBlocks = kSumSqFinalThreads;  // one final-block thread per partial
constexpr size_t kSumSqElemsPerThread = 16;             // before the grid reaches its cap

template <class T>
__device__ __forceinline__ T round_to(float x, bool /*stochastic*/, uint64_t /*key*/) {
    return from_f32<T>(x);  // fp32: exact; fp16: round to nearest even
}
template <>
__device__ __forceinline__ __nv_bfloat16 round_to<__nv_bfloat16>(float x, bool stochastic, uint64_t key) {
    const uint32_t bits = __float_as_uint(x);
    if (!stochastic || (bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);  // RN, inf, nan
    // TEACH: adding 16 random bits below bf16's last mantissa bit and truncating rounds up with probability
    // equal to the discarded fraction, so the rounding error averages to zero over many small updates.
    const uint32_t r = (bits + (mix_bits(key) & 0xffffu)) & 0xffff0000u;
    __nv_bfloat16_raw raw;
    raw.x = (unsigned short)(r >> 16);
    return __nv_bfloat16(raw);
}

template <class T>
__global__ void adamw_update_segments(T* params, float* master, const T* grads, float* m, float* v,
                                      const AdamWTable::Entry* table, int count, float lr, float beta1, float beta2,
                                      float eps, int t, float grad_scale, bool stochastic, uint64_t seed_step) {
    const AdamWTable::Entry seg = table[segment_of_block(table, count, blockIdx.x)];
    const size_t start = (blockIdx.x - seg.first_block) * kAdamElemsPerBlock;
    const float seg_lr = lr * seg.lr_scale;
    // TEACH: 1 - b^k written as -expm1(k log b). With b close to 1 (0.999) and k small, the direct form
    // subtracts two nearly equal numbers and loses most of fp32's digits; this one stays within a few ulp of
    // the reference's double-precision value for every b and k.
    const float steps = (float)(t - seg.t_offset);  // this segment's own step count
    const float bc1 = -expm1f(steps * logf(beta1)), bc2 = -expm1f(steps * logf(beta2));
    for (int k = 0; k < kAdamElemsPerThread; k++) {
        const size_t i = start + (size_t)k * blockDim.x + threadIdx.x;
        if (i >= seg.n) break;
        const size_t gi = seg.grad_offset + i, pi = seg.param_offset + i;
        const float g = to_f32(grads[gi]) * grad_scale;
        const float mi = beta1 * m[gi] + (1.0f - beta1) * g;
        const float vi = beta2 * v[gi] + (1.0f - beta2) * g * g;
        m[gi] = mi;
        v[gi] = vi;
        const float mhat = mi / bc1, vhat = vi / bc2;
        float p = master ? master[gi] : to_f32(params[pi]);
        p -= seg_lr * (mhat / (sqrtf(vhat) + eps) + seg.weight_decay * p);
        if (master) master[gi] = p;
        // Keyed by the parameter's index, which is the same whichever rank's ZeRO shard updates it.
        params[pi] = round_to<T>(p, stochastic, seed_step ^ (uint64_t)pi);
    }
}

template <class T>
__global__ void sum_squares_partials(double* partial, const T* x, size_t n, bool packed) {
    __shared__ double shared[32];
    double acc = 0.0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (packed) {
        const size_t npacks = n / kPack<T>;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < npacks; i += stride) {
            const Pack<T> p = load_pack(x + i * kPack<T>);
#pragma unroll
            for (int j = 0; j < kPack<T>; j++) {
                const double e = to_f32(p.v[j]);
                acc += e * e;
            }
        }
        done = npacks * kPack<T>;
    }
    for (size_t i = done + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) {
        const double e = to_f32(x[i]);
        acc += e * e;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block of kSumSqFinalThreads: __launch_bounds__ holds ptxas to the registers that allows (64 a thread at 1024).
__global__ void __launch_bounds__(kSumSqFinalThreads)
    sum_squares_final(double* result, const double* partial, int count) {
    __shared__ double shared[32];
    double acc = threadIdx.x < count ? partial[threadIdx.x] : 0.0;
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) *result = acc;
}

}  // namespace

AdamWTable::~AdamWTable() {
    if (device_) cudaFree(device_);
}

const AdamWTable::Entry* AdamWTable::prepare(const std::vector<OptSegment>& segments, size_t elems_per_block,
                                             cudaStream_t stream, unsigned* total_blocks, int* count) {
    std::vector<Entry> entries;
    size_t blocks = 0;
    for (const OptSegment& s : segments) {
        if (s.n == 0) continue;
        entries.push_back(Entry{s.param_offset, s.grad_offset, s.n, blocks, s.lr_scale, s.weight_decay, s.t_offset});
        blocks += (s.n + elems_per_block - 1) / elems_per_block;
    }
    if (blocks > kMaxGridX) throw Error("adamw: " + std::to_string(blocks) + " blocks exceed the grid limit");
    *total_blocks = (unsigned)blocks;
    *count = (int)entries.size();
    const bool same = elems_per_block == elems_per_block_ && entries == host_;
    if (same || entries.empty()) return device_;
    if (entries.size() > capacity_) {
        // Stream-ordered, like every buffer the launchers touch: an update already queued that reads the old
        // table finishes before it is released.
        // What this object holds is forgotten first: if the allocation throws, no later call takes the `same`
        // path to a table that is gone.
        host_.clear();
        capacity_ = 0;
        if (device_) CUDA_CHECK(cudaFreeAsync(device_, stream));
        device_ = nullptr;
        CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&device_), entries.size() * sizeof(Entry), stream));
        capacity_ = entries.size();
    }
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, so `entries` may go out of scope.
    CUDA_CHECK(
        cudaMemcpyAsync(device_, entries.data(), entries.size() * sizeof(Entry), cudaMemcpyHostToDevice, stream));
    host_ = std::move(entries);
    elems_per_block_ = elems_per_block;
    return device_;
}

template <class T>
void adamw_update(T* params, float* master, const T* grads, float* m, float* v, const std::vector<OptSegment>& segments,
                  const AdamWStep& step, bool stochastic_rounding, uint64_t seed, AdamWTable& table,
                  cudaStream_t stream) {
    LaunchRange range("adamw_update", stream);
    unsigned blocks = 0;
    int count = 0;
    const AdamWTable::Entry* dev = table.prepare(segments, kAdamElemsPerBlock, stream, &blocks, &count);
    if (count == 0) return;
    const uint64_t seed_step = seed * 0x9E3779B97F4A7C15ull + ((uint64_t)(uint32_t)step.t << 40);
    adamw_update_segments<T><<<blocks, kAdamThreads, 0, stream>>>(params, master, grads, m, v, dev, count, step.lr,
                                                                  step.beta1, step.beta2, step.eps, step.t,
                                                                  step.grad_scale, stochastic_rounding, seed_step);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void sum_squares(double* result, const T* x, size_t n, Scratch& scratch, cudaStream_t stream) {
    LaunchRange range("sum_squares", stream);
    const unsigned blocks = grid_1d(n, kSumSqThreads * kSumSqElemsPerThread, kSumSqMaxBlocks);
    double* partial = static_cast<double*>(scratch.get(blocks * sizeof(double)));
    sum_squares_partials<T><<<blocks, kSumSqThreads, 0, stream>>>(partial, x, n, aligned16(x));
    CUDA_CHECK_LAUNCH();
    sum_squares_final<<<1, kSumSqFinalThreads, 0, stream>>>(result, partial, (int)blocks);
    CUDA_CHECK_LAUNCH();
}

#define TUNE_INSTANTIATE(T)                                                                             \
    template void adamw_update<T>(T*, float*, const T*, float*, float*, const std::vector<OptSegment>&, \
                                  const AdamWStep&, bool, uint64_t, AdamWTable&, cudaStream_t);         \
    template void sum_squares<T>(double*, const T*, size_t, Scratch&, cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
