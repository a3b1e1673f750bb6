#include "kernels/cuda/scratch.h"

#include "kernels/cuda/check.h"

namespace tune::cuda {

Scratch::~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);  // no throwing from a destructor; the stream is still alive here
}

void* Scratch::get(size_t bytes) {
    if (bytes <= bytes_ && ptr_) return ptr_;
    if (ptr_) CUDA_CHECK(cudaFreeAsync(ptr_, stream_));
    ptr_ = nullptr;
    bytes_ = 0;
    // Shapes are fixed after the first step, so growth happens a handful of times; round to whole MiB.
    const size_t want = align_up(bytes ? bytes : 1, size_t(1) << 20);
    CUDA_CHECK(cudaMallocAsync(&ptr_, want, stream_));
    bytes_ = want;
    return ptr_;
}

}  // namespace tune::cuda
