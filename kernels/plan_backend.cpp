#include "kernels/plan_backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#include "kernels/attention.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention_cudnn.h"

namespace tune {
namespace {

class PlanBackend final : public Backend {
   public:
    PlanBackend(std::string device, DType act, DType master, const CudaOptions& cuda)
        : device_(std::move(device)), act_(act), master_(master), cuda_(cuda) {}
    ~PlanBackend() override {
        for (auto& [p, n] : reserved_) munmap(p, n);
    }

    std::string name() const override { return device_; }
    DType act_dtype() const override { return act_; }
    DType master_dtype() const override { return master_; }
    bool plans_only() const override { return true; }

    // ---- memory: address space only ----
    // TEACH: PROT_NONE and MAP_NORESERVE reserve addresses and nothing else (no pages, no swap counted), so a
    // 100 GB plan costs nothing, and an access that was meant to be a no-op faults at once.
    void* alloc(size_t bytes) override {
        const size_t n = bytes ? bytes : 1;
        void* p = mmap(nullptr, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            throw Error("plan backend: cannot reserve " + std::to_string(bytes) + " bytes of addresses");
        reserved_[p] = n;
        return p;
    }
    void free(void* p) override {
        auto it = reserved_.find(p);
        if (it == reserved_.end()) return;
        munmap(it->first, it->second);
        reserved_.erase(it);
    }
    std::string memory_note() const override {
        return device_ == "cuda" ? "not in the plan: cuBLASLt's 32 MiB workspace, a scratch that grows in the first "
                                   "step (cuDNN's backward: up to about 1 GiB) and the CUDA context's few hundred MiB"
                                 : "";
    }
    void zero(void*, size_t) override {}
    void upload(void*, DType, const float*, size_t) override {}
    void upload(void*, DType, const double*, size_t) override {}
    void download(float* dst, const void*, DType, size_t n) override { std::memset(dst, 0, n * sizeof(float)); }
    void download(double* dst, const void*, DType, size_t n) override { std::memset(dst, 0, n * sizeof(double)); }
    void upload_i32(int32_t*, const int32_t*, size_t) override {}
    void upload_f32(float*, const float*, size_t) override {}
    void synchronize() override {}

    // ---- what the layout depends on ----
    size_t attention_saved_elems(int B, int T, int C, int NH) const override {
        if (device_ == "cpu") return cpu::attention_saved_elems(B, T, NH);
        if (!fused(B, T, C, NH)) return cuda::attention_saved_elems(B, T, NH);
        const size_t es = dtype_size(act_);
        return (cuda::cudnn_attention_saved_floats(B, T, NH) * sizeof(float) + es - 1) / es;
    }
    std::string attention_path(int C, int NH) const override {
        auto it = decided_.find({C, NH});
        if (it == decided_.end()) return Backend::attention_path(C, NH);
        const Decision& d = it->second;
        if (d.fused) return "cudnn (fused), " + (d.why.empty() ? std::string("as planned") : "assumed: " + d.why);
        return Backend::attention_path(C, NH) + (d.why.empty() ? "" : "; " + d.why);
    }

    // ---- ops: none ----
    void encoder_forward(void*, const int32_t*, const int32_t*, const void*, const void*, int, int, int) override {}
    void encoder_backward(void*, void*, const void*, const int32_t*, const int32_t*, int, int, int) override {}
    void layernorm_forward(void*, void*, void*, const void*, const void*, const void*, size_t, int) override {}
    void residual_layernorm_forward(void*, void*, void*, void*, const void*, const void*, const void*, const void*,
                                    size_t, int) override {}
    void layernorm_backward(void*, void*, void*, const void*, const void*, const void*, const void*, const void*,
                            size_t, int) override {}
    void matmul_forward(void*, const void*, const void*, const void*, size_t, int, int) override {}
    void matmul_backward(void*, void*, void*, const void*, const void*, const void*, size_t, int, int) override {}
    void matmul_backward_gelu(void*, void*, void*, const void*, const void*, const void*, const void*, size_t, int,
                              int) override {}
    void attention_forward(void*, void*, const void*, DocMask, int, int, int, int) override {}
    void attention_backward(void*, const void*, const void*, const void*, const void*, DocMask, int, int, int,
                            int) override {}
    void attention_forward_cached(void*, void*, void*, const void*, int, int, int, int, int, int) override {}
    void gelu_forward(void*, const void*, size_t) override {}
    void gelu_backward(void*, const void*, const void*, size_t) override {}
    void residual_forward(void*, const void*, const void*, size_t) override {}
    void gather_rows(void*, const void*, const int32_t*, size_t, int) override {}
    void scatter_rows(void*, const void*, const int32_t*, size_t, size_t, int) override {}
    void crossentropy_forward_backward(void*, void*, const void*, const int32_t*, const float*, float, size_t, int,
                                       int) override {}
    void scale(void*, const void*, float, size_t) override {}
    void dropout(void*, const void*, float, uint64_t, const DropoutLayout&, size_t) override {}
    void prefix_rows_forward(void*, const void*, int, int, int, int, int, int, int) override {}
    void prefix_rows_backward(void*, void*, int, int, int, int, int, int, int) override {}
    void distill_forward_backward(void*, void*, const void*, const void*, const float*, float, float, size_t, int,
                                  int) override {}
    double anchor_penalty(void*, const void*, const void*, const void*, const void*, const std::vector<OptSegment>&,
                          float, float) override {
        return 0.0;
    }
    void accumulate_squares(void*, const void*, float, size_t) override {}
    double sum_squares(const void*, size_t) override { return 0.0; }
    void adamw_update(void*, void*, const void*, void*, void*, const std::vector<OptSegment>&,
                      const AdamWStep&) override {}

   private:
    struct Decision {
        bool fused = false;
        std::string why;  // why not cuDNN; or, when fused, why that is assumed rather than asked
    };

    // The CUDA backend's rule (kernels/cuda/backend_cuda.cu, fused_attention): cuDNN for bf16 and fp16 under
    // --attention auto, for any type under --attention cudnn, where it takes the shape; asked here of the cuDNN
    // frontend's validation for Hopper, which needs no GPU, at the first shape seen for each (C, NH), like the
    // backend. Where this machine has no libcudnn to ask, the shape is assumed to run fused (and the map says so).
    bool fused(int B, int T, int C, int NH) const {
        if (device_ != "cuda" || cuda_.attention == AttentionImpl::matmul) return false;
        if (act_ == DType::f32 && cuda_.attention == AttentionImpl::automatic) return false;
        const std::pair<int, int> key{C, NH};
        auto it = decided_.find(key);
        if (it == decided_.end()) {
            Decision d;
            d.why = cuda::CudnnAttention::validate_for(90, act_, B, std::max(T, 2), C, NH);
            // Not a refusal of the shape: this machine has no libcudnn to ask, which a GPU machine running this
            // build may have. (A build without the frontend, or the CUDA emulator, runs the cuBLAS path anywhere.)
            const bool unasked = d.why.find("cannot load") != std::string::npos;
            if (!d.why.empty() && !unasked && cuda_.attention == AttentionImpl::cudnn)
                throw UsageError("--attention cudnn: " + d.why);
            d.fused = d.why.empty() || unasked;
            it = decided_.emplace(key, std::move(d)).first;
        }
        return it->second.fused;
    }

    std::string device_;
    DType act_, master_;
    CudaOptions cuda_;
    std::map<void*, size_t> reserved_;
    mutable std::map<std::pair<int, int>, Decision> decided_;  // (C, NH) -> attention's path
};

}  // namespace

std::unique_ptr<Backend> make_plan_backend(const std::string& device, DType dtype, const CudaOptions& cuda) {
    if (device == "cpu") {
        if (dtype != DType::f32) throw UsageError("the cpu backend computes in fp32 only");
        return std::make_unique<PlanBackend>("cpu", DType::f32, DType::f32, cuda);
    }
    if (device != "cuda") throw UsageError("plan backend: expected cpu or cuda, got '" + device + "'");
    if (dtype != DType::f32 && dtype != DType::bf16 && dtype != DType::f16)
        throw UsageError(std::string("the cuda backend computes in f32, bf16 or f16, not ") + dtype_name(dtype));
    return std::make_unique<PlanBackend>("cuda", dtype, DType::f32, cuda);
}

}  // namespace tune
