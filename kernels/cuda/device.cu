// CUDA device discovery. The backend itself is in kernels/cuda/backend_cuda.cu.
#include <cuda_runtime.h>

#include "kernels/backend.h"

namespace tune {

// The device count, and why it is 0 (the runtime's error: no driver, or a driver older than this toolkit).
static int count_devices(std::string* why) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver / no device" error
        // TEACH: a driver older than the toolkit the program was built with fails here too, and that user has a
        // GPU: "no GPU" alone would send them looking in the wrong place.
        if (why)
            *why = std::string("no usable CUDA GPU: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")";
        return 0;
    }
    if (n == 0 && why) *why = "no CUDA GPU found";
    return n;
}

int cuda_device_count() { return count_devices(nullptr); }

std::string cuda_device_problem() {
    std::string why;
    count_devices(&why);
    return why;
}

bool cuda_is_emulator() {
#ifdef TUNE_CUDA_EMULATOR
    return true;
#else
    return false;
#endif
}

}  // namespace tune
