// The CUDA backend: the layers of kernels/<layer>.cu behind the Backend interface. One stream carries every
// kernel, copy and cuBLASLt call, so the order of operations is the program order and nothing else; the host
// waits only where the interface returns data (download, sum_squares, anchor_penalty) and in synchronize().
// Activations, working weights and gradients are act_dtype() (f32, bf16 or f16); master weights and Adam
// moments are f32. Each Backend method picks the template instance for the element type.
#include "kernels/cuda/backend_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/crossentropy.h"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cublaslt.h"
#include "kernels/cuda/launch_range.h"
#include "kernels/cuda/scratch.h"
#include "kernels/encoder.h"
#include "kernels/finetune.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/residual.h"

namespace tune {
namespace {

// Host-side conversion into the buffer's element type (round to nearest even, like the device kernels).
template <class Src>
std::vector<unsigned char> to_device_type(DType dtype, const Src* src, size_t n) {
    std::vector<unsigned char> out(n * dtype_size(dtype));
    switch (dtype) {
        case DType::f32: {
            float* d = reinterpret_cast<float*>(out.data());
            for (size_t i = 0; i < n; i++) d[i] = (float)src[i];
            break;
        }
        case DType::bf16: {
            __nv_bfloat16* d = reinterpret_cast<__nv_bfloat16*>(out.data());
            for (size_t i = 0; i < n; i++)
                d[i] =
                    std::is_same_v<Src, double> ? __double2bfloat16((double)src[i]) : __float2bfloat16((float)src[i]);
            break;
        }
        case DType::f16: {
            __half* d = reinterpret_cast<__half*>(out.data());
            for (size_t i = 0; i < n; i++)
                d[i] = std::is_same_v<Src, double> ? __double2half((double)src[i]) : __float2half((float)src[i]);
            break;
        }
        case DType::f64:
            throw Error("cuda backend: no f64 buffers (use the cpu backend for double precision)");
    }
    return out;
}

template <class Dst>
void from_device_type(Dst* dst, const unsigned char* src, DType dtype, size_t n) {
    switch (dtype) {
        case DType::f32: {
            const float* s = reinterpret_cast<const float*>(src);
            for (size_t i = 0; i < n; i++) dst[i] = (Dst)s[i];
            break;
        }
        case DType::bf16: {
            const __nv_bfloat16* s = reinterpret_cast<const __nv_bfloat16*>(src);
            for (size_t i = 0; i < n; i++) dst[i] = (Dst)__bfloat162float(s[i]);
            break;
        }
        case DType::f16: {
            const __half* s = reinterpret_cast<const __half*>(src);
            for (size_t i = 0; i < n; i++) dst[i] = (Dst)__half2float(s[i]);
            break;
        }
        case DType::f64:
            throw Error("cuda backend: no f64 buffers (use the cpu backend for double precision)");
    }
}

class CudaBackend final : public Backend {
   public:
    CudaBackend(DType dtype, const CudaOptions& options) : dtype_(dtype), options_(options) {
        if (dtype != DType::f32 && dtype != DType::bf16 && dtype != DType::f16)
            throw UsageError(std::string("the cuda backend computes in f32, bf16 or f16, not ") + dtype_name(dtype));
        const std::string no_gpu = cuda_device_problem();
        if (!no_gpu.empty()) throw Error("cuda backend: " + no_gpu + " (use --device cpu)");
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        gemm_ = std::make_unique<cuda::Gemm>(stream_);
        scratch_ = std::make_unique<cuda::Scratch>(stream_);
        cudnn_ = std::make_unique<cuda::CudnnAttention>(stream_);
        adamw_table_ = std::make_unique<cuda::AdamWTable>();
        anchor_table_ = std::make_unique<cuda::AdamWTable>();
        CUDA_CHECK(cudaMalloc(&d_sum_, sizeof(double)));
        CUDA_CHECK(cudaMallocHost(&h_sum_, sizeof(double)));
    }

    ~CudaBackend() override {
        // Nothing here may throw. Queued work finishes before its buffers and the stream go away.
        cudaStreamSynchronize(stream_);
        cudnn_.reset();
        scratch_.reset();
        adamw_table_.reset();
        anchor_table_.reset();
        gemm_.reset();
        cudaFree(d_sum_);
        cudaFreeHost(h_sum_);
        cudaStreamSynchronize(stream_);
        cudaStreamDestroy(stream_);
        cudaGetLastError();  // an error ignored here must not be blamed on the next backend's first launch
    }

    std::string name() const override { return "cuda"; }
    DType act_dtype() const override { return dtype_; }
    DType master_dtype() const override { return DType::f32; }

    // ---- memory ----
    void* alloc(size_t bytes) override {
        void* p = nullptr;
        const cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
        if (err != cudaSuccess) {
            cudaGetLastError();
            // Only a refused allocation is "out of memory"; an earlier kernel's fault (sticky) fails here too.
            if (err != cudaErrorMemoryAllocation)
                throw Error("cuda backend: allocating " + std::to_string(bytes) + " bytes failed: " +
                            cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")");
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            throw Error("cuda backend: out of memory allocating " + std::to_string(bytes) + " bytes (" +
                        std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
                        " MiB): bin/train --memory-map says what takes it; a smaller --batch (--grad-accum keeps the "
                        "step), --recompute selective or full, --train-top or LoRA need less");
        }
        return p;
    }
    void free(void* p) override {
        if (!p) return;
        // Kernels still queued may read it, on this stream or on a data-parallel collective's (an error can
        // unwind between a bucket's reduction and the join that would have waited for it).
        // Never throws: destructors call it, also while an exception unwinds, and a second throw there would
        // end the program before the first error is printed. A kernel's fault is sticky: the next launch or
        // synchronize() reports it; what else fails here is said on stderr.
        const cudaError_t synced = cudaDeviceSynchronize();
        const cudaError_t freed = cudaFree(p);
        if (freed != cudaSuccess && synced == cudaSuccess) {
            cudaGetLastError();
            std::fprintf(stderr, "warning: cuda backend: cudaFree(%p): %s (%s)\n", p, cudaGetErrorString(freed),
                         cudaGetErrorName(freed));
        }
    }
    void zero(void* p, size_t bytes) override {
        if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    }
    std::string memory_note() const override {
        auto mib = [](size_t b) { return std::to_string((b + (1 << 19)) >> 20) + " MiB"; };
        const size_t scratch = scratch_->capacity(), gemm = cuda::Gemm::kWorkspaceBytes;
        const bool cudnn_used =  // its workspace comes from the scratch
            std::any_of(fused_.begin(), fused_.end(), [](const auto& shape_fused) { return shape_fused.second; });
        std::string note = "backend workspaces " + mib(scratch + gemm) + " (scratch " + mib(scratch) +
                           (cudnn_used ? ", with cuDNN's" : "") + "; cuBLASLt " + mib(gemm) + ")";
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
            note += "; the device has " + mib(total_b - free_b) + " of " + mib(total_b) +
                    " in use (every process, CUDA context included)";
        return note;
    }
    void upload(void* dst, DType dtype, const float* src, size_t n) override { upload_any(dst, dtype, src, n); }
    void upload(void* dst, DType dtype, const double* src, size_t n) override { upload_any(dst, dtype, src, n); }
    void download(float* dst, const void* src, DType dtype, size_t n) override { download_any(dst, src, dtype, n); }
    void download(double* dst, const void* src, DType dtype, size_t n) override { download_any(dst, src, dtype, n); }
    void upload_i32(int32_t* dst, const int32_t* src, size_t n) override {
        if (n) CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    }
    void upload_f32(float* dst, const float* src, size_t n) override {
        if (n) CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    }
    void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
    cudaStream_t stream() const { return stream_; }
    void range_push(const char* name) override {
        nvtxRangePushA(name);
        cuda::profile_push(name);
    }
    void range_pop() override {
        cuda::profile_pop();
        nvtxRangePop();
    }
    void profile_begin() override { cuda::profile_begin(); }
    std::vector<OpTime> profile_end() override { return cuda::profile_end(); }
    std::string profile_clock() const override { return "GPU time of each launcher, by CUDA events"; }

    // ---- layers ----
    void encoder_forward(void* out, const int32_t* tokens, const int32_t* pos, const void* wte, const void* wpe, int B,
                         int T, int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::encoder_forward(t<E>(out), tokens, pos, t<E>(wte), t<E>(wpe), B, T, C, stream_);
        });
    }
    void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, const int32_t* pos, int B,
                          int T, int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::encoder_backward(t<E>(dwte), t<E>(dwpe), t<E>(dout), tokens, pos, B, T, C, *scratch_, stream_);
        });
    }
    void layernorm_forward(void* out, void* mean, void* rstd, const void* inp, const void* w, const void* b, size_t N,
                           int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::layernorm_forward(t<E>(out), t<E>(mean), t<E>(rstd), t<E>(inp), t<E>(w), t<E>(b), N, C, stream_);
        });
    }
    void residual_layernorm_forward(void* res, void* out, void* mean, void* rstd, const void* a, const void* b,
                                    const void* w, const void* bias, size_t N, int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::residual_layernorm_forward(t<E>(res), t<E>(out), t<E>(mean), t<E>(rstd), t<E>(a), t<E>(b), t<E>(w),
                                             t<E>(bias), N, C, stream_);
        });
    }
    void layernorm_backward(void* dinp, void* dw, void* db, const void* dout, const void* inp, const void* w,
                            const void* mean, const void* rstd, size_t N, int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::layernorm_backward(t<E>(dinp), t<E>(dw), t<E>(db), t<E>(dout), t<E>(inp), t<E>(w), t<E>(mean),
                                     t<E>(rstd), N, C, *scratch_, stream_);
        });
    }
    void matmul_forward(void* out, const void* inp, const void* w, const void* b, size_t N, int IC, int OC) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::matmul_forward(t<E>(out), t<E>(inp), t<E>(w), t<E>(b), N, IC, OC, *gemm_);
        });
    }
    void matmul_backward(void* dinp, void* dw, void* db, const void* dout, const void* inp, const void* w, size_t N,
                         int IC, int OC) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::matmul_backward(t<E>(dinp), t<E>(dw), t<E>(db), t<E>(dout), t<E>(inp), t<E>(w), N, IC, OC, *gemm_,
                                  *scratch_);
        });
    }
    void matmul_backward_gelu(void* dinp, void* dw, void* db, const void* dout, const void* inp, const void* w,
                              const void* pre, size_t N, int IC, int OC) override {
        bool fused = false;
        dispatch([&](auto tag) {
            using E = decltype(tag);
            fused = cuda::matmul_backward_gelu(t<E>(dinp), t<E>(dw), t<E>(db), t<E>(dout), t<E>(inp), t<E>(w),
                                               t<E>(pre), N, IC, OC, *gemm_, *scratch_);
        });
        if (!fused) Backend::matmul_backward_gelu(dinp, dw, db, dout, inp, w, pre, N, IC, OC);
    }
    // TEACH: cuDNN's fused attention keeps the T x T scores on chip and saves only each row's log-sum-exp;
    // the cuBLAS path writes them out and saves the probabilities, NH*T values per token per layer.
    size_t attention_saved_elems(int B, int T, int C, int NH) const override {
        if (!fused_attention(B, T, C, NH)) return cuda::attention_saved_elems(B, T, NH);
        const size_t es = dtype_size(dtype_);
        return (cuda::cudnn_attention_saved_floats(B, T, NH) * sizeof(float) + es - 1) / es;
    }
    std::string attention_path(int C, int NH) const override {
        auto it = fused_.find({C, NH});
        if (it == fused_.end() || !it->second) return Backend::attention_path(C, NH);
        return "cudnn (fused; workspace " + std::to_string(cudnn_->workspace_bytes() >> 20) + " MiB)";
    }
    void attention_forward(void* out, void* saved, const void* qkv, DocMask mask, int B, int T, int C,
                           int NH) override {
        if (fused_attention(B, T, C, NH)) {
            refuse_document_mask(mask);
            return cudnn_->forward(out, static_cast<float*>(saved), qkv, dtype_, B, T, C, NH, *scratch_);
        }
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::attention_forward(t<E>(out), t<E>(saved), t<E>(qkv), mask, B, T, C, NH, *gemm_, *scratch_);
        });
    }
    void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const void* saved,
                            DocMask mask, int B, int T, int C, int NH) override {
        if (fused_attention(B, T, C, NH)) {
            refuse_document_mask(mask);
            return cudnn_->backward(dqkv, dout, qkv, out, static_cast<const float*>(saved), dtype_, B, T, C, NH,
                                    *scratch_);
        }
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::attention_backward(t<E>(dqkv), t<E>(dout), t<E>(qkv), t<E>(saved), mask, B, T, C, NH, *gemm_,
                                     *scratch_);
        });
    }
    // The fused path has no document mask (cuDNN's would need the packed documents as ragged sequences).
    static void refuse_document_mask(const DocMask& mask) {
        if (mask.pos)
            throw Error("cuda: document-masked attention (--windows isolated) runs on the matmul path, and this "
                        "backend was made with cuDNN's fused attention (--attention matmul)");
    }
    void attention_forward_cached(void* out, void* kcache, void* vcache, const void* qkv, int B, int n, int pos0,
                                  int maxT, int C, int NH) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::attention_forward_cached(t<E>(out), t<E>(kcache), t<E>(vcache), t<E>(qkv), B, n, pos0, maxT, C, NH,
                                           stream_);
        });
    }
    void gelu_forward(void* out, const void* inp, size_t n) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::gelu_forward(t<E>(out), t<E>(inp), n, stream_);
        });
    }
    void gelu_backward(void* dinp, const void* dout, const void* inp, size_t n) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::gelu_backward(t<E>(dinp), t<E>(dout), t<E>(inp), n, stream_);
        });
    }
    void residual_forward(void* out, const void* a, const void* b, size_t n) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::residual_forward(t<E>(out), t<E>(a), t<E>(b), n, stream_);
        });
    }
    void gather_rows(void* out, const void* inp, const int32_t* rows, size_t n, int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::gather_rows(t<E>(out), t<E>(inp), rows, n, C, stream_);
        });
    }
    void scatter_rows(void* out, const void* inp, const int32_t* rows, size_t n, size_t N, int C) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::scatter_rows(t<E>(out), t<E>(inp), rows, n, N, C, stream_);
        });
    }
    void crossentropy_forward_backward(void* losses, void* dlogits, const void* logits, const int32_t* targets,
                                       const float* weights, float dloss, size_t N, int V, int Vp) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::crossentropy_forward_backward(t<E>(losses), t<E>(dlogits), t<E>(logits), targets, weights, dloss, N,
                                                V, Vp, stream_);
        });
    }

    // ---- fine-tuning pieces ----
    void scale(void* out, const void* inp, float s, size_t n) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::scale(t<E>(out), t<E>(inp), s, n, stream_);
        });
    }
    void dropout(void* out, const void* inp, float p, uint64_t seed, const DropoutLayout& layout,
                 size_t n) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::dropout(t<E>(out), t<E>(inp), p, seed, layout, n, stream_);
        });
    }
    void prefix_rows_forward(void* x, const void* src, int src_ld, int B, int T, int P, int W, int col0,
                             int w) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::prefix_rows_forward(t<E>(x), t<E>(src), src_ld, B, T, P, W, col0, w, stream_);
        });
    }
    void prefix_rows_backward(void* dsrc, void* dx, int src_ld, int B, int T, int P, int W, int col0,
                              int w) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::prefix_rows_backward(t<E>(dsrc), t<E>(dx), src_ld, B, T, P, W, col0, w, stream_);
        });
    }
    void distill_forward_backward(void* losses, void* dlogits, const void* logits, const void* teacher_logits,
                                  const float* weights, float tau, float dloss, size_t N, int V, int Vp) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::distill_forward_backward(t<E>(losses), t<E>(dlogits), t<E>(logits), t<E>(teacher_logits), weights,
                                           tau, dloss, N, V, Vp, stream_);
        });
    }
    double anchor_penalty(void* grads, const void* params, const void* master, const void* anchor, const void* fisher,
                          const std::vector<OptSegment>& segments, float lambda, float grad_mult) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::anchor_penalty(d_sum_, t<E>(grads), t<E>(params), static_cast<const float*>(master),
                                 static_cast<const float*>(anchor), static_cast<const float*>(fisher), segments,
                                 lambda, grad_mult, *anchor_table_, *scratch_, stream_);
        });
        return read_sum();
    }
    void accumulate_squares(void* out, const void* x, float s, size_t n) override {
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::accumulate_squares(static_cast<float*>(out), t<E>(x), s, n, stream_);
        });
    }

    // ---- optimizer and reductions ----
    double sum_squares(const void* x, size_t n) override {
        if (n == 0) return 0.0;
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::sum_squares(d_sum_, t<E>(x), n, *scratch_, stream_);
        });
        return read_sum();
    }
    void adamw_update(void* params, void* master, const void* grads, void* m, void* v,
                      const std::vector<OptSegment>& segments, const AdamWStep& step) override {
        if (has_master() && !master)
            throw Error("cuda backend: adamw_update needs fp32 master weights for " + std::string(dtype_name(dtype_)) +
                        " parameters");
        dispatch([&](auto tag) {
            using E = decltype(tag);
            cuda::adamw_update(t<E>(params), static_cast<float*>(master), t<E>(grads), static_cast<float*>(m),
                               static_cast<float*>(v), segments, step, options_.stochastic_rounding, options_.seed,
                               *adamw_table_, stream_);
        });
    }

   private:
    // The reduction a launcher left in d_sum_, for the methods that return it.
    double read_sum() {
        CUDA_CHECK(cudaMemcpyAsync(h_sum_, d_sum_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
        CUDA_CHECK(cudaStreamSynchronize(stream_));  // the interface returns the value: the one wait it needs
        return *h_sum_;
    }

    template <class F>
    void dispatch(F&& f) {
        switch (dtype_) {
            case DType::bf16:
                f(__nv_bfloat16{});
                return;
            case DType::f16:
                f(__half{});
                return;
            default:
                f(float{});
                return;
        }
    }
    template <class E>
    static E* t(void* p) {
        return static_cast<E*>(p);
    }
    template <class E>
    static const E* t(const void* p) {
        return static_cast<const E*>(p);
    }

    template <class Src>
    void upload_any(void* dst, DType dtype, const Src* src, size_t n) {
        if (n == 0) return;
        if constexpr (std::is_same_v<Src, float>) {
            if (dtype == DType::f32) {
                CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
                return;
            }
        }
        const std::vector<unsigned char> staged = to_device_type(dtype, src, n);
        // Pageable source: staged by the driver before cudaMemcpyAsync returns, so `staged` may be freed.
        CUDA_CHECK(cudaMemcpyAsync(dst, staged.data(), staged.size(), cudaMemcpyHostToDevice, stream_));
    }

    template <class Dst>
    void download_any(Dst* dst, const void* src, DType dtype, size_t n) {
        if (n == 0) return;
        if (dtype == DType::f64) throw Error("cuda backend: no f64 buffers (use the cpu backend for double precision)");
        std::vector<unsigned char> staged(n * dtype_size(dtype));
        CUDA_CHECK(cudaMemcpyAsync(staged.data(), src, staged.size(), cudaMemcpyDeviceToHost, stream_));
        CUDA_CHECK(cudaStreamSynchronize(stream_));
        from_device_type(dst, staged.data(), dtype, n);
    }

    // Whether attention goes to cuDNN: decided at the first shape seen for each (C, NH) and kept, so a buffer
    // sized by attention_saved_elems() always matches the path that fills it.
    bool fused_attention(int B, int T, int C, int NH) const {
        if (options_.attention == AttentionImpl::matmul) return false;
        if (dtype_ == DType::f32 && options_.attention == AttentionImpl::automatic) return false;
        const std::pair<int, int> key{C, NH};
        if (auto it = fused_.find(key); it != fused_.end()) return it->second;
        const std::string why = cudnn_->unsupported(dtype_, B, T, C, NH);
        if (!why.empty() && options_.attention == AttentionImpl::cudnn) throw UsageError("--attention cudnn: " + why);
        static bool told = false;  // once per process: tests make many backends
        if (!why.empty() && !told) {
            told = true;
            std::fprintf(stderr, "notice: %s; attention takes the cuBLAS path\n", why.c_str());
        }
        return fused_[key] = why.empty();
    }

    DType dtype_;
    CudaOptions options_;
    cudaStream_t stream_ = nullptr;
    std::unique_ptr<cuda::Gemm> gemm_;
    std::unique_ptr<cuda::Scratch> scratch_;
    std::unique_ptr<cuda::CudnnAttention> cudnn_;
    mutable std::map<std::pair<int, int>, bool> fused_;  // (C, NH) -> attention through cuDNN
    std::unique_ptr<cuda::AdamWTable> adamw_table_;
    std::unique_ptr<cuda::AdamWTable> anchor_table_;  // its own, so the optimizer's cached table survives
    double* d_sum_ = nullptr;  // sum_squares result on the device
    double* h_sum_ = nullptr;  // pinned host copy
};

}  // namespace

const char* attention_impl_name(AttentionImpl a) {
    switch (a) {
        case AttentionImpl::automatic: return "auto";
        case AttentionImpl::cudnn: return "cudnn";
        case AttentionImpl::matmul: return "matmul";
    }
    return "?";
}

AttentionImpl parse_attention_impl(const std::string& name, const std::string& where) {
    for (AttentionImpl a : {AttentionImpl::automatic, AttentionImpl::cudnn, AttentionImpl::matmul})
        if (name == attention_impl_name(a)) return a;
    throw UsageError(where + name + ": expected auto, cudnn or matmul");
}

std::unique_ptr<Backend> make_cuda_backend(DType dtype, const CudaOptions& options) {
    CudaOptions o = options;
    if (const char* env = std::getenv("TUNE_CUDA_ATTENTION"); env && *env && o.attention == AttentionImpl::automatic)
        o.attention = parse_attention_impl(env, "TUNE_CUDA_ATTENTION=");
    return std::make_unique<CudaBackend>(dtype, o);
}

std::unique_ptr<Backend> make_cuda_backend(DType dtype) { return make_cuda_backend(dtype, CudaOptions{}); }

void* cuda_stream_of(Backend& be) {
    auto* cb = dynamic_cast<CudaBackend*>(&be);
    if (!cb) throw Error("cuda_stream_of: the " + be.name() + " backend has no CUDA stream");
    return cb->stream();
}

double cuda_peak_bf16_flops() {
    if (cuda_device_count() == 0) return 0.0;
    int dev = 0, major = 0, minor = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        cudaGetLastError();
        return 0.0;
    }
    if (major == 9 && minor == 0) return 989.4e12 * sms / 132.0;  // H100/H200 SXM: 132 SMs
    if (major == 8 && minor == 0) return 312e12 * sms / 108.0;    // A100: 108 SMs
    return 0.0;
}

}  // namespace tune
