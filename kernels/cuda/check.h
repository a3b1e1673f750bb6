// Error checks and profiler ranges for the CUDA backend: one family of macros used everywhere.
//   CUDA_CHECK(expr)     a CUDA runtime call that must return cudaSuccess
//   CUBLAS_CHECK(expr)   a cuBLAS / cuBLASLt call that must return CUBLAS_STATUS_SUCCESS
//   CUDA_CHECK_LAUNCH()  after every kernel launch: picks up launch-configuration errors at once. Built with
//                        -DTUNE_CUDA_SYNC_CHECK it also synchronizes, so an asynchronous fault is reported by
//                        the launch that caused it (a debugging build; the normal build never hides a sync).
// A failure throws tune::Error naming the call, the file and the line: the tools print it and exit.
// NvtxRange is an RAII range for Nsight Systems (nvtx3 is header-only; ranges cost nothing without a profiler), for
// host work; a launcher opens a LaunchRange (launch_range.h) instead, which the op profile can also time.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

namespace tune::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line);
void check_launch(const char* file, int line);

struct NvtxRange {
    explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
    NvtxRange(const NvtxRange&) = delete;
    NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace tune::cuda

#define CUDA_CHECK(expr)                                                                                    \
    do {                                                                                                    \
        const cudaError_t tune_err_ = (expr);                                                               \
        if (tune_err_ != cudaSuccess) ::tune::cuda::throw_cuda_error(tune_err_, #expr, __FILE__, __LINE__); \
    } while (0)

#define CUBLAS_CHECK(expr)                                                                                            \
    do {                                                                                                              \
        const cublasStatus_t tune_st_ = (expr);                                                                       \
        if (tune_st_ != CUBLAS_STATUS_SUCCESS) ::tune::cuda::throw_cublas_error(tune_st_, #expr, __FILE__, __LINE__); \
    } while (0)

#define CUDA_CHECK_LAUNCH() ::tune::cuda::check_launch(__FILE__, __LINE__)
