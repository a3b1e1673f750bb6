// CUDA device discovery. The backend itself is in kernels/cuda/backend_cuda.cu.
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

bool cuda_is_emulator() {
#ifdef TUNE_CUDA_EMULATOR
    return true;
#else
    return false;
#endif
}

}  // namespace tune
