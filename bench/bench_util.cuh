// Shared harness of the kernel benchmarks (bench/bench_<layer>.cu): one stream, cuBLASLt handle and scratch,
// device buffers filled with small pseudo-random values, L2 flushed before every timed iteration, the time
// taken from CUDA events (UseManualTime), and counters next to the H200's roofline:
//   HBM3e 4.8 TB/s; dense bf16 tensor cores ~989 TFLOP/s by the spec sheet (%peak, as bin/train's MFU; about
//   790 is reached in practice); fp32 (no TF32) ~67 TFLOP/s.
// Without a GPU every benchmark reports "no CUDA GPU" through SkipWithError and the program exits 0.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cublaslt.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/scratch.h"
#include "model/config.h"
#include "model/gpt2.h"

namespace tune::bench {

constexpr double kHbmBytesPerS = 4.8e12;
constexpr double kBf16FlopsSpec = 989e12;
constexpr double kFp32Flops = 67e12;
constexpr int kFillThreads = 256;

struct Context {
    cudaStream_t stream = nullptr;
    std::unique_ptr<cuda::Gemm> gemm;
    std::unique_ptr<cuda::Scratch> scratch;
    void* flush = nullptr;  // larger than L2: reading it evicts every benchmark buffer
    size_t flush_bytes = 0;
    int* flush_sink = nullptr;

    Context() {
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        gemm = std::make_unique<cuda::Gemm>(stream);
        scratch = std::make_unique<cuda::Scratch>(stream);
        int l2 = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
        flush_bytes = 2 * (size_t)l2 + (1 << 20);
        CUDA_CHECK(cudaMalloc(&flush, flush_bytes));
        CUDA_CHECK(cudaMemset(flush, 0, flush_bytes));
        CUDA_CHECK(cudaMalloc(&flush_sink, sizeof(int)));
    }
};

// The shared context, or null (and the benchmark marked skipped) without a GPU.
inline Context* context(benchmark::State& state) {
    if (cuda_device_count() == 0) {
        state.SkipWithError("no CUDA GPU: kernel benchmarks need one");
        return nullptr;
    }
    static Context ctx;
    return &ctx;
}

// Reads the whole flush buffer (its sum goes nowhere unless impossible): what L2 held is evicted, and the dirty
// lines of the last timed kernel are written back here, before the next start event, not inside its time.
__global__ void flush_l2_by_reading(const int4* p, size_t n, int* sink) {
    int acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x7fffffff) *sink = acc;  // never true (the buffer is zeros); keeps the loads
}

// Uniform values in [lo, lo + 2 * scale): lo = -scale for values around zero, lo = 0 for non-negative ones.
template <class T>
__global__ void fill_uniform(T* p, size_t n, uint64_t seed, float scale, float lo) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float u = (float)(tune::cuda::mix_bits(seed * 0x9E3779B97F4A7C15ull + i) >> 8) * (1.0f / 16777216.0f);
        p[i] = (T)(lo + 2.0f * u * scale);
    }
}

template <class I>
__global__ void fill_tokens(I* p, size_t n, uint64_t seed, int below) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (I)(tune::cuda::mix_bits(seed * 0x9E3779B97F4A7C15ull + i) % (uint32_t)below);
}

// A device array of n elements of T, filled with uniform values in [-scale, scale], or in [0, scale] when
// `non_negative` (Adam's second moment, a Fisher diagonal: a negative one would make NaNs).
template <class T>
struct DeviceArray {
    T* p = nullptr;
    size_t n = 0;
    DeviceArray(Context& ctx, size_t count, uint64_t seed, float scale = 1.0f, bool non_negative = false)
        : n(count) {
        CUDA_CHECK(cudaMalloc(&p, n * sizeof(T) + 16));
        const float half = non_negative ? 0.5f * scale : scale, lo = non_negative ? 0.0f : -scale;
        fill_uniform<T><<<1024, kFillThreads, 0, ctx.stream>>>(p, n, seed, half, lo);
        CUDA_CHECK_LAUNCH();
    }
    ~DeviceArray() { cudaFree(p); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
};

struct Tokens {
    int32_t* p = nullptr;
    Tokens(Context& ctx, size_t n, int below, uint64_t seed) {
        CUDA_CHECK(cudaMalloc(&p, n * sizeof(int32_t)));
        fill_tokens<int32_t><<<1024, kFillThreads, 0, ctx.stream>>>(p, n, seed, below);
        CUDA_CHECK_LAUNCH();
    }
    ~Tokens() { cudaFree(p); }
    Tokens(const Tokens&) = delete;
    Tokens& operator=(const Tokens&) = delete;
};

// Times `fn` (which enqueues work on ctx.stream) with CUDA events, L2 flushed before each iteration, and
// reports TB/s and TFLOP/s (per iteration: `bytes` moved, `flops` done) against the roofline. Every benchmark
// counts the least DRAM traffic its operation needs (each input read once, each output written once), not what
// its kernel happens to move, so %HBM says how close the kernel comes to that floor.
template <class F>
void run_timed(benchmark::State& state, Context& ctx, double bytes, double flops, double flops_peak, F&& fn) {
    cudaEvent_t start = nullptr, stop = nullptr;
    double total_s = 0;
    int64_t iters = 0;
    // An error (a launch that fails, a cuDNN graph refused) marks this case and goes on to the next one, so the
    // program still writes its JSON with every other case in it.
    try {
        CUDA_CHECK(cudaEventCreate(&start));
        CUDA_CHECK(cudaEventCreate(&stop));
        fn();  // warm-up: cuBLASLt heuristics, scratch growth
        CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
        for (auto _ : state) {
            flush_l2_by_reading<<<1024, kFillThreads, 0, ctx.stream>>>(static_cast<const int4*>(ctx.flush),
                                                                      ctx.flush_bytes / sizeof(int4), ctx.flush_sink);
            CUDA_CHECK_LAUNCH();
            CUDA_CHECK(cudaEventRecord(start, ctx.stream));
            fn();
            CUDA_CHECK(cudaEventRecord(stop, ctx.stream));
            CUDA_CHECK(cudaEventSynchronize(stop));
            float ms = 0;
            CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
            state.SetIterationTime(ms / 1e3);
            total_s += ms / 1e3;
            iters++;
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        iters = 0;
    }
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (iters == 0 || total_s <= 0) return;
    const double per_s = iters / total_s;
    if (bytes > 0) {
        state.counters["TB/s"] = bytes * per_s / 1e12;
        state.counters["%HBM"] = 100.0 * bytes * per_s / kHbmBytesPerS;
    }
    if (flops > 0) {
        state.counters["TFLOP/s"] = flops * per_s / 1e12;
        state.counters["%peak"] = 100.0 * flops * per_s / flops_peak;
    }
}

// GPT-2 124M's optimizer segments, one per tensor (weight decay on the matmul weights); *total: arena elements.
inline std::vector<OptSegment> gpt2_segments(size_t* total) {
    const Table t = gpt2_param_table(preset_config("gpt2"));
    std::vector<OptSegment> segs;
    for (size_t i = 0; i < t.size(); i++)
        segs.push_back(OptSegment{t[i].offset, t[i].offset, t[i].numel, 1.0f, t[i].shape.size() == 2 ? 0.1f : 0.0f});
    *total = t.total();
    return segs;
}

template <class T>
const char* type_name();
template <>
inline const char* type_name<float>() { return "f32"; }
template <>
inline const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <>
inline const char* type_name<__half>() { return "f16"; }

// The peak for T: the tensor cores' by the spec sheet (fp32 without TF32 runs on the CUDA cores).
template <class T>
double flops_peak() { return sizeof(T) == 4 ? kFp32Flops : kBf16FlopsSpec; }

}  // namespace tune::bench
