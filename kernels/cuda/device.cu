// CUDA device discovery, and the entry point of the CUDA backend.
#include <cuda_runtime.h>

#include "kernels/backend.h"

namespace tune {

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver / no device" error
        return 0;
    }
    return n;
}

std::unique_ptr<Backend> make_cuda_backend(DType) {
    throw Error("the CUDA backend is not part of this build yet; use --device cpu");
}

}  // namespace tune
