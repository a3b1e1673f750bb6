// The CPU backend: the reference layers of kernels/cpu/ behind the Backend interface, in float
// (a usable training backend) or double (for finite-difference gradient checks).
#include <sys/sysinfo.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>

#include "kernels/backend.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/crossentropy.h"
#include "kernels/cpu/encoder.h"
#include "kernels/cpu/finetune.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/residual.h"

namespace tune {
namespace {

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::f32; }
template <>
constexpr DType dtype_of<double>() { return DType::f64; }

template <class Src>
void convert_to(void* dst, DType dtype, const Src* src, size_t n) {
    if (dtype == DType::f32)
        for (size_t i = 0; i < n; i++) static_cast<float*>(dst)[i] = (float)src[i];
    else if (dtype == DType::f64)
        for (size_t i = 0; i < n; i++) static_cast<double*>(dst)[i] = (double)src[i];
    else
        throw Error(std::string("cpu backend: no buffers of type ") + dtype_name(dtype));
}

template <class Dst>
void convert_from(Dst* dst, const void* src, DType dtype, size_t n) {
    if (dtype == DType::f32)
        for (size_t i = 0; i < n; i++) dst[i] = (Dst) static_cast<const float*>(src)[i];
    else if (dtype == DType::f64)
        for (size_t i = 0; i < n; i++) dst[i] = (Dst) static_cast<const double*>(src)[i];
    else
        throw Error(std::string("cpu backend: no buffers of type ") + dtype_name(dtype));
}

// What this process may hold: RAM and swap, or less under a cgroup's memory.max; 0 when unknown.
size_t memory_limit() {
    struct sysinfo si;
    size_t limit = sysinfo(&si) == 0 ? ((size_t)si.totalram + (size_t)si.totalswap) * si.mem_unit : 0;
    std::ifstream f("/sys/fs/cgroup/memory.max");
    unsigned long long cg = 0;
    if (f >> cg && cg > 0 && (limit == 0 || cg < limit)) limit = (size_t)cg;  // "max" (no limit) does not parse
    return limit;
}

std::string gib(size_t bytes) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f GiB", bytes / 1073741824.0);
    return b;
}

template <class T>
class CpuBackend final : public Backend {
   public:
    std::string name() const override { return dtype_of<T>() == DType::f32 ? "cpu" : "cpu-f64"; }
    DType act_dtype() const override { return dtype_of<T>(); }
    DType master_dtype() const override { return dtype_of<T>(); }

    void* alloc(size_t bytes) override {
        const size_t n = (bytes + 63) / 64 * 64;
        // Linux hands out address space and finds the pages when they are first written: past the machine's
        // memory it kills the process then, without a word. Refused here instead, with the numbers.
        if (limit_ && held_ + n > limit_)
            throw Error("cpu backend: " + gib(n) + " more would make " + gib(held_ + n) +
                        ", more than this machine's memory (" + gib(limit_) +
                        ", RAM and swap or the cgroup's limit): fewer sequences or positions at once (--batch, "
                        "--seq; in training also --recompute, --train-top or LoRA), or a GPU (--device cuda)");
        void* p = std::aligned_alloc(64, n);
        if (!p) throw Error("cpu backend: out of memory allocating " + std::to_string(bytes) + " bytes");
        sizes_[p] = n;
        held_ += n;
        return p;
    }
    void free(void* p) override {
        if (auto it = sizes_.find(p); it != sizes_.end()) {
            held_ -= it->second;
            sizes_.erase(it);
        }
        std::free(p);
    }
    void zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
    void upload(void* dst, DType dtype, const float* src, size_t n) override { convert_to(dst, dtype, src, n); }
    void upload(void* dst, DType dtype, const double* src, size_t n) override { convert_to(dst, dtype, src, n); }
    void download(float* dst, const void* src, DType dtype, size_t n) override { convert_from(dst, src, dtype, n); }
    void download(double* dst, const void* src, DType dtype, size_t n) override { convert_from(dst, src, dtype, n); }
    void upload_i32(int32_t* dst, const int32_t* src, size_t n) override { std::memcpy(dst, src, n * 4); }
    void upload_f32(float* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * 4); }
    void synchronize() override {}
    void range_push(const char* name) override { profile_.push(name); }
    void range_pop() override { profile_.pop(); }
    void profile_begin() override {
        profile_.clear_times();
        profiling_ = true;
    }
    std::vector<OpTime> profile_end() override {
        profiling_ = false;
        std::vector<OpTime> times = profile_.table();
        profile_.clear_times();
        return times;
    }
    std::string profile_clock() const override { return "wall time of each op on the CPU"; }

    void encoder_forward(void* out, const int32_t* tokens, const int32_t* pos, const void* wte, const void* wpe, int B,
                         int T_, int C) override {
        const auto c = clock("encoder_forward");
        cpu::encoder_forward(t(out), tokens, pos, t(wte), t(wpe), B, T_, C);
    }
    void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, const int32_t* pos, int B,
                          int T_, int C) override {
        const auto c = clock("encoder_backward");
        cpu::encoder_backward(t(dwte), t(dwpe), t(dout), tokens, pos, B, T_, C);
    }
    void layernorm_forward(void* out, void* mean, void* rstd, const void* inp, const void* w, const void* b, size_t N,
                           int C) override {
        const auto c = clock("layernorm_forward");
        cpu::layernorm_forward(t(out), t(mean), t(rstd), t(inp), t(w), t(b), N, C);
    }
    void layernorm_backward(void* dinp, void* dw, void* db, const void* dout, const void* inp, const void* w,
                            const void* mean, const void* rstd, size_t N, int C) override {
        const auto c = clock("layernorm_backward");
        cpu::layernorm_backward(t(dinp), t(dw), t(db), t(dout), t(inp), t(w), t(mean), t(rstd), N, C);
    }
    void matmul_forward(void* out, const void* inp, const void* w, const void* b, size_t N, int IC,
                        int OC) override {
        const auto c = clock("matmul_forward");
        cpu::matmul_forward(t(out), t(inp), t(w), t(b), N, IC, OC);
    }
    void matmul_backward(void* dinp, void* dw, void* db, const void* dout, const void* inp, const void* w, size_t N,
                         int IC, int OC) override {
        const auto c = clock("matmul_backward");
        cpu::matmul_backward(t(dinp), t(dw), t(db), t(dout), t(inp), t(w), N, IC, OC);
    }
    size_t attention_saved_elems(int B, int T_, int, int NH) const override {
        return cpu::attention_saved_elems(B, T_, NH);
    }
    void attention_forward(void* out, void* saved, const void* qkv, DocMask mask, int B, int T_, int C,
                           int NH) override {
        const auto c = clock("attention_forward");
        cpu::attention_forward(t(out), t(saved), t(qkv), mask, B, T_, C, NH);
    }
    void attention_backward(void* dqkv, const void* dout, const void* qkv, const void*, const void* saved,
                            DocMask mask, int B, int T_, int C, int NH) override {
        const auto c = clock("attention_backward");
        cpu::attention_backward(t(dqkv), t(dout), t(qkv), t(saved), mask, B, T_, C, NH);
    }
    void attention_forward_cached(void* out, void* kcache, void* vcache, const void* qkv, int B, int n, int pos0,
                                  int maxT, int C, int NH) override {
        const auto c = clock("attention_forward_cached");
        cpu::attention_forward_cached(t(out), t(kcache), t(vcache), t(qkv), B, n, pos0, maxT, C, NH);
    }
    void gelu_forward(void* out, const void* inp, size_t n) override {
        const auto c = clock("gelu_forward");
        cpu::gelu_forward(t(out), t(inp), n);
    }
    void gelu_backward(void* dinp, const void* dout, const void* inp, size_t n) override {
        const auto c = clock("gelu_backward");
        cpu::gelu_backward(t(dinp), t(dout), t(inp), n);
    }
    void residual_forward(void* out, const void* a, const void* b, size_t n) override {
        const auto c = clock("residual_forward");
        cpu::residual_forward(t(out), t(a), t(b), n);
    }
    void gather_rows(void* out, const void* inp, const int32_t* rows, size_t n, int C) override {
        const auto c = clock("gather_rows");
        cpu::gather_rows(t(out), t(inp), rows, n, C);
    }
    void scatter_rows(void* out, const void* inp, const int32_t* rows, size_t n, size_t N, int C) override {
        const auto c = clock("scatter_rows");
        cpu::scatter_rows(t(out), t(inp), rows, n, N, C);
    }
    void crossentropy_forward_backward(void* losses, void* dlogits, const void* logits, const int32_t* targets,
                                       const float* weights, float dloss, size_t N, int V, int Vp) override {
        const auto c = clock("crossentropy_forward_backward");
        cpu::crossentropy_forward_backward(t(losses), t(dlogits), t(logits), targets, weights, dloss, N, V, Vp);
    }
    void scale(void* out, const void* inp, float s, size_t n) override {
        const auto c = clock("scale");
        cpu::scale(t(out), t(inp), s, n);
    }
    void dropout(void* out, const void* inp, float p, uint64_t seed, const DropoutLayout& layout,
                 size_t n) override {
        const auto c = clock("dropout");
        cpu::dropout(t(out), t(inp), p, seed, layout, n);
    }
    void prefix_rows_forward(void* x, const void* src, int src_ld, int B, int T_, int P, int W, int col0,
                             int w) override {
        const auto c = clock("prefix_rows_forward");
        cpu::prefix_rows_forward(t(x), t(src), src_ld, B, T_, P, W, col0, w);
    }
    void prefix_rows_backward(void* dsrc, void* dx, int src_ld, int B, int T_, int P, int W, int col0,
                              int w) override {
        const auto c = clock("prefix_rows_backward");
        cpu::prefix_rows_backward(t(dsrc), t(dx), src_ld, B, T_, P, W, col0, w);
    }
    void distill_forward_backward(void* losses, void* dlogits, const void* logits, const void* teacher,
                                  const float* weights, float tau, float dloss, size_t N, int V, int Vp) override {
        const auto c = clock("distill_forward_backward");
        cpu::distill_forward_backward(t(losses), t(dlogits), t(logits), t(teacher), weights, tau, dloss, N, V, Vp);
    }
    double anchor_penalty(void* grads, const void* params, const void* master, const void* anchor,
                          const void* fisher, const std::vector<OptSegment>& segments, float lambda,
                          float grad_mult) override {
        const auto c = clock("anchor_penalty");
        return cpu::anchor_penalty(t(grads), t(params), t(master), t(anchor), t(fisher), segments, lambda,
                                   grad_mult);
    }
    void accumulate_squares(void* out, const void* x, float s, size_t n) override {
        const auto c = clock("accumulate_squares");
        cpu::accumulate_squares(t(out), t(x), s, n);
    }
    double sum_squares(const void* x, size_t n) override {
        const auto c = clock("sum_squares");
        return cpu::sum_squares(t(x), n);
    }
    void adamw_update(void* params, void*, const void* grads, void* m, void* v,
                      const std::vector<OptSegment>& segments, const AdamWStep& step) override {
        const auto c = clock("adamw_update");
        cpu::adamw_update(t(params), t(grads), t(m), t(v), segments, step);
    }

   private:
    // Times one op while the profile is on: its wall time, as every op here runs to its end before returning.
    class OpClock {
       public:
        OpClock(CpuBackend& be, const char* op)
            : be_(be.profiling_ ? &be : nullptr), op_(op), t0_(std::chrono::steady_clock::now()) {}
        ~OpClock() {
            if (!be_) return;
            const std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - t0_;
            be_->profile_.add(be_->profile_.where(), op_, ms.count());
        }
        OpClock(const OpClock&) = delete;
        OpClock& operator=(const OpClock&) = delete;

       private:
        CpuBackend* be_;
        const char* op_;
        std::chrono::steady_clock::time_point t0_;
    };
    OpClock clock(const char* op) { return OpClock(*this, op); }

    static T* t(void* p) { return static_cast<T*>(p); }
    static const T* t(const void* p) { return static_cast<const T*>(p); }

    const size_t limit_ = memory_limit();
    size_t held_ = 0;                  // bytes this backend has allocated and not freed
    std::map<const void*, size_t> sizes_;  // of each allocation (a few arenas; not per tensor)
    OpProfile profile_;      // the open ranges always; op times while profiling_
    bool profiling_ = false;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(DType dtype) {
    if (dtype == DType::f32) return std::make_unique<CpuBackend<float>>();
    if (dtype == DType::f64) return std::make_unique<CpuBackend<double>>();
    throw UsageError(std::string("the cpu backend computes in f32 or f64, not ") + dtype_name(dtype));
}

}  // namespace tune
