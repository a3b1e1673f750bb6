// The CUDA emulator's own tests (built only into build/emu/tune_tests_emu): that it runs CUDA's execution
// model faithfully enough for the parity tests to mean something, and that it catches the mistakes it
// claims to catch (tests/emu/cuda_emu.h).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
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

TEST(CudaEmuDeathTest, BarrierNotEveryThreadReachesAborts) {
    float* out = device_array<float>(64);
    EXPECT_DEATH(divergent_barrier<<<1, 64>>>(out), "deadlock");
    cudaFree(out);
}

TEST(CudaEmuDeathTest, ShuffleFromAnAbsentLaneAborts) {
    float* out = device_array<float>(48);
    shuffle_full_mask<<<1, 48>>>(out, 1);
    const std::vector<float> got = download(out, 48);
    for (int t = 0; t < 48; t++) ASSERT_EQ(got[t], (float)(t ^ 1)) << t;
    EXPECT_DEATH(shuffle_full_mask<<<1, 48>>>(out, 16), "does not exist, has exited or is not in the mask");
    cudaFree(out);
}

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer (`make test-emu EMU_SAN=-fsanitize=address ...`) device allocations have red zones:
// a kernel's out-of-bounds write is caught where it happens, as compute-sanitizer's memcheck would.
__global__ void write_past_end(int* out) { out[threadIdx.x] = 1; }

TEST(CudaEmuDeathTest, OutOfBoundsDeviceWriteIsCaughtUnderAsan) {
    int* out = device_array<int>(33);
    EXPECT_DEATH(write_past_end<<<1, 34>>>(out), "heap-buffer-overflow");
    cudaFree(out);
}
#endif

}  // namespace
