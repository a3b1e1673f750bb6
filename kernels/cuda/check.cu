#include "kernels/cuda/check.h"

#include <string>

#include "kernels/common.h"

namespace tune::cuda {

void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
    throw Error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") in " + expr +
                " at " + file + ":" + std::to_string(line));
}

void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line) {
    throw Error(std::string("cuBLAS error ") + cublasLtGetStatusName(st) + " (" + cublasLtGetStatusString(st) +
                ") in " + expr + " at " + file + ":" + std::to_string(line));
}

void check_launch(const char* file, int line) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw_cuda_error(err, "kernel launch", file, line);
#ifdef TUNE_CUDA_SYNC_CHECK
    const cudaError_t err2 = cudaDeviceSynchronize();
    if (err2 != cudaSuccess) throw_cuda_error(err2, "kernel execution (TUNE_CUDA_SYNC_CHECK)", file, line);
#endif
}

}  // namespace tune::cuda
