// Helpers for the CUDA backend tests: a fixture parameterised by the CUDA element type that skips without a
// GPU, device buffers owned by a backend, and "twins": the same values on the CUDA backend and on the f64
// CPU reference. A twin uploads to the GPU first (rounding to its type) and gives the reference exactly
// the rounded values, so a comparison measures the kernels' error, not the inputs' rounding.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "tests/test_util.h"

namespace tune::test {

constexpr const char* kNoGpu = "no CUDA GPU: the CUDA backend tests need one (run scripts/gpu_check.sh there)";

inline std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

// Tolerance of one op against the f64 reference (max-norm relative, see near_rel).
inline double op_tol(DType dt) { return dt == DType::f32 ? 1e-5 : 2e-2; }

// n elements of `dtype` allocated on `be` (freed with it), viewed from element `offset` on (to test
// misaligned pointers without a second allocation).
class Buffer {
   public:
    Buffer(Backend& be, DType dtype, size_t n, size_t offset = 0)
        : be_(&be), dtype_(dtype), n_(n), offset_(offset) {
        base_ = be.alloc((n + offset) * dtype_size(dtype) + 16);
        be.zero(base_, (n + offset) * dtype_size(dtype) + 16);
    }
    ~Buffer() { be_->free(base_); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    void* p() const { return static_cast<char*>(base_) + offset_ * dtype_size(dtype_); }
    size_t n() const { return n_; }
    DType dtype() const { return dtype_; }
    void set(const std::vector<double>& v) {
        EXPECT_EQ(v.size(), n_);
        be_->upload(p(), dtype_, v.data(), n_);
    }
    std::vector<double> get() const {
        std::vector<double> v(n_);
        be_->download(v.data(), p(), dtype_, n_);
        return v;
    }
    void poison() { set(std::vector<double>(n_, std::numeric_limits<double>::quiet_NaN())); }

   private:
    Backend* be_;
    DType dtype_;
    size_t n_, offset_;
    void* base_;
};

// The same tensor on the GPU (in its act type) and on the f64 reference.
struct Twin {
    Buffer gpu, ref;
    Twin(Backend& g, Backend& r, size_t n, size_t gpu_offset = 0)
        : gpu(g, g.act_dtype(), n, gpu_offset), ref(r, DType::f64, n) {}
    // Uploads v to the GPU and the GPU's rounded values to the reference; returns those values.
    std::vector<double> set(const std::vector<double>& v) {
        gpu.set(v);
        std::vector<double> rounded = gpu.get();
        ref.set(rounded);
        return rounded;
    }
    void poison() {
        gpu.poison();
        ref.poison();
    }
    void* g() const { return gpu.p(); }
    void* r() const { return ref.p(); }
};

// int32 (tokens, targets) and float (loss weights) inputs, identical on both backends.
struct I32Twin {
    Backend &gb, &rb;
    int32_t *g, *r;
    I32Twin(Backend& gbe, Backend& rbe, const std::vector<int32_t>& v) : gb(gbe), rb(rbe) {
        g = static_cast<int32_t*>(gb.alloc(v.size() * 4 + 4));
        r = static_cast<int32_t*>(rb.alloc(v.size() * 4 + 4));
        gb.upload_i32(g, v.data(), v.size());
        rb.upload_i32(r, v.data(), v.size());
    }
    ~I32Twin() {
        gb.free(g);
        rb.free(r);
    }
};
struct F32Twin {
    Backend &gb, &rb;
    float *g, *r;
    F32Twin(Backend& gbe, Backend& rbe, const std::vector<float>& v) : gb(gbe), rb(rbe) {
        g = static_cast<float*>(gb.alloc(v.size() * 4 + 4));
        r = static_cast<float*>(rb.alloc(v.size() * 4 + 4));
        gb.upload_f32(g, v.data(), v.size());
        rb.upload_f32(r, v.data(), v.size());
    }
    ~F32Twin() {
        gb.free(g);
        rb.free(r);
    }
};

// Bit-for-bit equality of two runs' results (NaN-safe, distinguishes -0 from +0).
inline bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// Fixture: GetParam() is the CUDA element type; the reference is the CPU backend in f64.
class CudaTest : public ::testing::TestWithParam<DType> {
   protected:
    void SetUp() override {
        if (cuda_device_count() == 0) {
            GTEST_SKIP() << kNoGpu;
        }
        gpu_ = make_cuda_backend(GetParam());
        ref_ = make_cpu_backend(DType::f64);
    }
    DType dt() const { return GetParam(); }
    Backend& gpu() { return *gpu_; }
    Backend& ref() { return *ref_; }

    std::unique_ptr<Backend> gpu_, ref_;
};

// Rows of logits for the softmax-based ops (cross-entropy, distillation): N rows of V real columns, Vp padded.
struct LogitRows {
    size_t N;
    int V, Vp;
};

// Per-row loss weights with zeros (skipped rows), fractions and weights above 1.
inline std::vector<float> row_weights(size_t N) {
    const float pattern[] = {1.0f, 0.0f, 0.5f, 2.0f, 1.0f, 0.0f, 1.0f};
    std::vector<float> w(N);
    for (size_t i = 0; i < N; i++) w[i] = pattern[i % 7];
    return w;
}

}  // namespace tune::test
