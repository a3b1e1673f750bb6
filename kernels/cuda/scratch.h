// Scratch: one growable device buffer for a launcher's temporaries (attention scores, reduction partials,
// sort buffers). Stream-ordered: growing frees the old buffer with cudaFreeAsync on the same stream and takes
// a new one with cudaMallocAsync, so neither blocks the host and work already queued on the stream that
// reads the old buffer finishes first. Contents do not survive from one launcher to the next.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace tune::cuda {

// Round a byte count up so the next carved piece starts 256-byte aligned (what cuBLASLt likes best).
inline size_t align_up(size_t bytes, size_t to = 256) { return (bytes + to - 1) / to * to; }

class Scratch {
   public:
    explicit Scratch(cudaStream_t stream) : stream_(stream) {}
    ~Scratch();
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;

    // At least `bytes` of device memory, 256-byte aligned, valid until the next get() on this Scratch.
    void* get(size_t bytes);
    size_t capacity() const { return bytes_; }
    cudaStream_t stream() const { return stream_; }

   private:
    cudaStream_t stream_;
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// Carves consecutive 256-byte-aligned pieces out of one scratch allocation:
//   Carve c(nullptr); c.take<float>(n); ...; base = scratch.get(c.bytes());   (first pass: sizes)
//   Carve d(base);    float* x = d.take<float>(n); ...                         (second pass: pointers)
class Carve {
   public:
    explicit Carve(void* base) : base_(static_cast<char*>(base)) {}
    template <class X>
    X* take(size_t n) {
        X* p = base_ ? reinterpret_cast<X*>(base_ + off_) : nullptr;
        off_ += align_up(n * sizeof(X));
        return p;
    }
    size_t bytes() const { return off_; }

   private:
    char* base_;
    size_t off_ = 0;
};

}  // namespace tune::cuda
