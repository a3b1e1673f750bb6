// The CUDA emulator's own tests (built only into build/emu/tune_tests_emu): that it runs CUDA's execution
// model faithfully enough for the parity tests to mean something, and that it catches the mistakes it
// claims to catch (tests/emu/cuda_emu.h).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <thread>
#include <vector>

#include "kernels/cuda/device_util.cuh"

namespace {

constexpr int kThreads = 96;  // three warps

// Every thread adds its value into a block-wide sum through the project's block_sum (warp shuffles, a shared
// array, barriers) and writes the result; the sum must be exact and the same in every thread.
__global__ void block_sum_each(float* out, const float* in) {
    __shared__ float shared[32];
    const float v = in[blockIdx.x * blockDim.x + threadIdx.x];
    out[blockIdx.x * blockDim.x + threadIdx.x] = tune::cuda::block_sum(v, shared);
}

// Thread i writes s[i] and reads its neighbour's s[i+1]: correct only with the barrier between.
__global__ void neighbour(float* out, bool barrier) {
    __shared__ float s[kThreads];
    s[threadIdx.x] = (float)threadIdx.x;
    if (barrier) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % kThreads];
}

// A barrier only some threads reach, while the rest of their warp waits in a shuffle: neither can finish.
// (Threads that exit instead count as arrived, as on Volta and later GPUs.)
__global__ void divergent_barrier(float* out) {
    if (threadIdx.x % 32 < 8) __syncthreads();
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}

// Full-warp shuffles in a block whose last warp has 16 lanes: xor 1 stays among them (allowed: lanes that
// do not exist take no part), xor 16 reads lanes that do not exist.
__global__ void shuffle_full_mask(float* out, int lane_mask) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, lane_mask);
}

__global__ void write_index(int* out) { out[blockIdx.x * blockDim.x + threadIdx.x] = (int)(blockIdx.x * 1000 + threadIdx.x); }

__global__ void write_first_n(int* out, int n) {
    if ((int)threadIdx.x < n) out[threadIdx.x] = 1;
}

__global__ void fill(float* out, float v) { out[threadIdx.x] = v; }
__global__ void plus_one(float* out, const float* in) { out[threadIdx.x] = in[threadIdx.x] + 1.0f; }

template <class T>
T* device_array(size_t n) {
    T* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
    return p;
}

template <class T>
std::vector<T> download(const T* p, size_t n) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
}

class CudaEmu : public ::testing::TestWithParam<bool> {  // the parameter: reverse thread order
   protected:
    void SetUp() override { was_ = emu::set_reverse_order(GetParam()); }
    void TearDown() override { emu::set_reverse_order(was_); }
    bool was_ = false;
};

TEST_P(CudaEmu, BlockSumIsExactInEveryThread_3Blocks96Threads) {
    const int n = 3 * kThreads;
    std::vector<float> h(n);
    for (int i = 0; i < n; i++) h[i] = (float)((i * 37) % 101) - 50.0f;  // integers: every order sums exactly
    float* in = device_array<float>(n);
    float* out = device_array<float>(n);
    ASSERT_EQ(cudaMemcpy(in, h.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    block_sum_each<<<3, kThreads>>>(out, in);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> got = download(out, n);
    for (int b = 0; b < 3; b++) {
        const float want = std::accumulate(h.begin() + b * kThreads, h.begin() + (b + 1) * kThreads, 0.0f);
        for (int t = 0; t < kThreads; t++) ASSERT_EQ(got[b * kThreads + t], want) << "block " << b << " thread " << t;
    }
    cudaFree(in);
    cudaFree(out);
}

TEST_P(CudaEmu, MissingBarrierGivesAWrongAnswerAndTheBarrierARightOne) {
    float* out = device_array<float>(kThreads);
    neighbour<<<1, kThreads>>>(out, true);
    std::vector<float> got = download(out, kThreads);
    for (int t = 0; t < kThreads; t++) ASSERT_EQ(got[t], (float)((t + 1) % kThreads)) << t;
    neighbour<<<1, kThreads>>>(out, false);
    got = download(out, kThreads);
    int wrong = 0;
    for (int t = 0; t < kThreads; t++) wrong += !(got[t] == (float)((t + 1) % kThreads));
    // In order, every thread but the last reads a neighbour that has not run yet; reversed, the first
    // thread to run (the last) reads thread 0's slot before thread 0 has written it. Either way it reads
    // the NaN every block's shared memory starts with, not what the launch before left there.
    EXPECT_EQ(wrong, GetParam() ? 1 : kThreads - 1);
    cudaFree(out);
}

TEST_P(CudaEmu, BlocksAndThreadsAreEnumeratedOnce_Grid5Block33) {
    int* out = device_array<int>(5 * 33);
    write_index<<<5, 33>>>(out);
    const std::vector<int> got = download(out, 5 * 33);
    for (int b = 0; b < 5; b++)
        for (int t = 0; t < 33; t++) ASSERT_EQ(got[b * 33 + t], b * 1000 + t);
    cudaFree(out);
}

// Streams: a kernel on one stream that reads what a kernel on another wrote, with no event between them, runs
// first in one of the two orders (the higher-priority stream first, reversed: the lower) and reads the NaN of
// fresh memory; with cudaStreamWaitEvent it reads what was written in both.
TEST_P(CudaEmu, ReadAcrossStreamsWithoutAnEventSeesUnwrittenMemoryInOneOrder_4Floats) {
    cudaStream_t producer, consumer;
    int lo = 0, hi = 0;
    ASSERT_EQ(cudaDeviceGetStreamPriorityRange(&lo, &hi), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithPriority(&producer, cudaStreamNonBlocking, lo), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithPriority(&consumer, cudaStreamNonBlocking, hi), cudaSuccess);
    cudaEvent_t written;
    ASSERT_EQ(cudaEventCreateWithFlags(&written, cudaEventDisableTiming), cudaSuccess);
    for (bool with_event : {false, true}) {
        float* x = device_array<float>(4);
        float* y = device_array<float>(4);
        fill<<<1, 4, 0, producer>>>(x, 7.0f);
        if (with_event) {
            ASSERT_EQ(cudaEventRecord(written, producer), cudaSuccess);
            ASSERT_EQ(cudaStreamWaitEvent(consumer, written, 0), cudaSuccess);
        }
        plus_one<<<1, 4, 0, consumer>>>(y, x);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const bool consumer_first = !with_event && !GetParam();  // in order: the higher priority runs first
        for (float v : download(y, 4)) {
            if (consumer_first)
                EXPECT_TRUE(std::isnan(v)) << v;
            else
                EXPECT_EQ(v, 8.0f);
        }
        cudaFree(x);
        cudaFree(y);
    }
    cudaEventDestroy(written);
    cudaStreamDestroy(producer);
    cudaStreamDestroy(consumer);
}

INSTANTIATE_TEST_SUITE_P(Order, CudaEmu, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "reversed" : "in_order"; });

TEST(CudaEmuChecks, FreshDeviceMemoryIsNaN) {
    float* p = device_array<float>(7);
    for (float v : download(p, 7)) EXPECT_TRUE(std::isnan(v));
    cudaFree(p);
}

TEST(CudaEmuChecks, ImpossibleLaunchFailsThroughGetLastError) {
    int* out = device_array<int>(1);
    write_index<<<1, 2048>>>(out);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // reading the error clears it
    cudaFree(out);
}

// Undefined on a GPU, so refused here rather than done right by a memmove; ranges that only touch are fine.
TEST(CudaEmuChecks, CopyBetweenOverlappingRangesFails) {
    float* p = device_array<float>(8);
    EXPECT_EQ(cudaMemcpy(p + 2, p, 4 * sizeof(float), cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    cudaGetLastError();
    EXPECT_EQ(cudaMemcpy(p + 4, p, 4 * sizeof(float), cudaMemcpyDeviceToDevice), cudaSuccess);
    cudaFree(p);
}

TEST(CudaEmuChecks, CopyIntoHostMemoryAsIfDeviceFails) {
    std::vector<float> a(4, 1.0f), b(4);
    EXPECT_EQ(cudaMemcpy(b.data(), a.data(), sizeof(float) * 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    cudaGetLastError();
    float x = 0;
    EXPECT_EQ(cudaFree(&x), cudaErrorInvalidValue);
    cudaGetLastError();
}

// A GPU faults on a kernel argument into pageable host memory or into freed memory; the emulator refuses the
// launch (the kernel does not run) and says which argument. Pinned host memory, null and the end of an
// allocation (an empty slice) are fine.
TEST(CudaEmuChecks, KernelPointerOutsideDeviceMemoryIsRefused) {
    std::vector<int> host(4, -1);
    write_index<<<1, 4>>>(host.data());
    EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
    for (int v : host) EXPECT_EQ(v, -1);  // not run

    int* freed = device_array<int>(4);
    cudaFree(freed);
    write_index<<<1, 4>>>(freed);
    EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);

    int* pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, 4 * sizeof(int)), cudaSuccess);
    write_index<<<1, 4>>>(pinned);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(pinned[3], 3);
    cudaFreeHost(pinned);

    int* dev = device_array<int>(4);
    write_first_n<<<1, 4>>>(dev + 4, 0);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    write_first_n<<<1, 4>>>(nullptr, 0);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    write_first_n<<<1, 4>>>(dev + 5, 0);
    EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
    cudaFree(dev);
}

// cuBLAS reads and writes whole operands: one that runs past its allocation, or an output that overlaps an
// input (other than C == D in place), is refused rather than computed from memory nobody owns.
TEST(CudaEmuChecks, GemmOperandPastItsAllocationOrOverlappingTheOutputIsRefused) {
    cublasHandle_t h = nullptr;
    ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const int m = 3, n = 2, k = 5;
    float* a = device_array<float>(m * k);
    float* b = device_array<float>(k * n);
    float* d = device_array<float>(m * n);
    const float one = 1.0f, zero = 0.0f;
    auto gemm = [&](const float* A, const float* B, float* D, int ldb) {
        return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_32F, m, 0, B,
                                          CUDA_R_32F, ldb, 0, &zero, D, CUDA_R_32F, m, 0, 1, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT);
    };
    EXPECT_EQ(gemm(a, b, d, k), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(gemm(a, b, d, k + 1), CUBLAS_STATUS_EXECUTION_FAILED);  // B's second column ends past its end
    EXPECT_EQ(gemm(a, b, a + 1, k), CUBLAS_STATUS_EXECUTION_FAILED);  // D inside A
    std::vector<float> host(k * n, 1.0f);
    EXPECT_EQ(gemm(a, host.data(), d, k), CUBLAS_STATUS_EXECUTION_FAILED);
    cudaFree(a);
    cudaFree(b);
    cudaFree(d);
    cublasDestroy(h);
}

// NCCL checks its buffers are device memory; overlapping send and receive buffers are allowed only in the
// call's in-place form.
TEST(CudaEmuChecks, CollectiveOnHostOrOverlappingBuffersIsRefused) {
    ncclUniqueId id;
    ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    ncclComm_t comm = nullptr;
    ASSERT_EQ(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
    float* p = device_array<float>(8);
    std::vector<float> host(8, 1.0f);
    EXPECT_EQ(ncclAllReduce(p, p, 8, ncclFloat, ncclSum, comm, nullptr), ncclSuccess);  // in place
    EXPECT_EQ(ncclAllReduce(p, p + 4, 4, ncclFloat, ncclSum, comm, nullptr), ncclSuccess);  // disjoint
    EXPECT_EQ(ncclAllReduce(p, p + 2, 4, ncclFloat, ncclSum, comm, nullptr), ncclInvalidArgument);
    EXPECT_EQ(ncclAllReduce(host.data(), p, 8, ncclFloat, ncclSum, comm, nullptr), ncclInvalidArgument);
    EXPECT_EQ(ncclAllReduce(p, p, 9, ncclFloat, ncclSum, comm, nullptr), ncclInvalidArgument);  // past the end
    ncclCommDestroy(comm);
    cudaFree(p);
}

void sleep_20ms(void*) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }

// cudaEventElapsedTime is the host time between the two records' runs (the op profile's clock on the emulator),
// with CUDA's errors: not ready before the stop has run, an invalid handle for an event never recorded or made
// without timing.
TEST(CudaEmuChecks, ElapsedTimeIsTheTimeBetweenTheRecordsRuns) {
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    cudaEvent_t a, b, never, untimed;
    for (cudaEvent_t* e : {&a, &b, &never}) ASSERT_EQ(cudaEventCreate(e), cudaSuccess);
    ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(a, s), cudaSuccess);
    ASSERT_EQ(cudaLaunchHostFunc(s, sleep_20ms, nullptr), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(b, s), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(untimed, s), cudaSuccess);
    float ms = -1.0f;
    if (cudaEventQuery(b) == cudaErrorNotReady) {
        EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaErrorNotReady);
    }
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    ASSERT_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
    EXPECT_GE(ms, 19.0f);
    EXPECT_LT(ms, 5000.0f);
    EXPECT_EQ(cudaEventElapsedTime(&ms, a, never), cudaErrorInvalidResourceHandle);
    EXPECT_EQ(cudaEventElapsedTime(&ms, a, untimed), cudaErrorInvalidResourceHandle);
    cudaGetLastError();
    for (cudaEvent_t e : {a, b, never, untimed}) cudaEventDestroy(e);
    cudaStreamDestroy(s);
}

// Work runs when the host waits for it, so the statement that dies is the wait.
TEST(CudaEmuChecks, WorkRunsWhenTheHostWaitsForIt) {
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    float* x = device_array<float>(4);
    float* pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, 4 * sizeof(float)), cudaSuccess);
    for (int i = 0; i < 4; i++) pinned[i] = -1.0f;
    cudaEvent_t done;
    ASSERT_EQ(cudaEventCreate(&done), cudaSuccess);
    EXPECT_EQ(cudaEventQuery(done), cudaSuccess);  // never recorded
    fill<<<1, 4, 0, s>>>(x, 3.0f);
    ASSERT_EQ(cudaMemcpyAsync(pinned, x, 4 * sizeof(float), cudaMemcpyDeviceToHost, s), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(done, s), cudaSuccess);
    EXPECT_EQ(cudaEventQuery(done), cudaErrorNotReady);
    EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
    EXPECT_EQ(pinned[0], -1.0f);  // a host read without a wait: what a GPU may well show too
    // The legacy default stream does not wait for a non-blocking stream: a blocking copy sees the fresh NaN.
    for (float v : download(x, 4)) EXPECT_TRUE(std::isnan(v)) << v;
    ASSERT_EQ(cudaEventSynchronize(done), cudaSuccess);
    EXPECT_EQ(cudaEventQuery(done), cudaSuccess);
    for (int i = 0; i < 4; i++) EXPECT_EQ(pinned[i], 3.0f);
    // A blocking stream (cudaStreamCreate) is ordered with the legacy one both ways.
    cudaStream_t b;
    ASSERT_EQ(cudaStreamCreate(&b), cudaSuccess);
    fill<<<1, 4, 0, b>>>(x, 5.0f);
    for (float v : download(x, 4)) EXPECT_EQ(v, 5.0f);
    // A stream destroyed with work queued returns at once; the work still runs when a wait needs it.
    cudaStream_t gone;
    ASSERT_EQ(cudaStreamCreateWithFlags(&gone, cudaStreamNonBlocking), cudaSuccess);
    fill<<<1, 4, 0, gone>>>(x, 9.0f);
    ASSERT_EQ(cudaStreamDestroy(gone), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (float v : download(x, 4)) EXPECT_EQ(v, 9.0f);
    cudaEventDestroy(done);
    cudaFreeHost(pinned);
    cudaFree(x);
    cudaStreamDestroy(s);
    cudaStreamDestroy(b);
}

TEST(CudaEmuDeathTest, BarrierNotEveryThreadReachesAborts) {
    float* out = device_array<float>(64);
    EXPECT_DEATH((divergent_barrier<<<1, 64>>>(out), cudaDeviceSynchronize()), "deadlock");
    cudaFree(out);
}

TEST(CudaEmuDeathTest, ShuffleFromAnAbsentLaneAborts) {
    float* out = device_array<float>(48);
    shuffle_full_mask<<<1, 48>>>(out, 1);
    const std::vector<float> got = download(out, 48);
    for (int t = 0; t < 48; t++) ASSERT_EQ(got[t], (float)(t ^ 1)) << t;
    EXPECT_DEATH((shuffle_full_mask<<<1, 48>>>(out, 16), cudaDeviceSynchronize()),
                 "does not exist, has exited or is not in the mask");
    cudaFree(out);
}

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer (`make test-emu EMU_SAN=-fsanitize=address ...`) device allocations have red zones:
// a kernel's out-of-bounds write is caught where it happens, as compute-sanitizer's memcheck would.
__global__ void write_past_end(int* out) { out[threadIdx.x] = 1; }

TEST(CudaEmuDeathTest, OutOfBoundsDeviceWriteIsCaughtUnderAsan) {
    int* out = device_array<int>(33);
    EXPECT_DEATH((write_past_end<<<1, 34>>>(out), cudaDeviceSynchronize()), "heap-buffer-overflow");
    cudaFree(out);
}
#endif

}  // namespace
