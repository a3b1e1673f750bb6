// The op interface: every layer's forward and backward, the optimizer update, and memory, behind one
// abstract class with two implementations, the CPU reference (kernels/cpu/) and CUDA (the layers in kernels/<layer>.cu,
// wired up in kernels/cuda/backend_cuda.cu), and a third that only plans memory (kernels/plan_backend.h).
// The model (model/gpt2.cpp) calls these and nothing else; it never branches on the backend.
//
// Buffers are untyped `void*` here because their element type is the backend's choice, fixed when the
// backend is made: float or double on the CPU, bf16/fp16/fp32 on CUDA (see act_dtype()). Shapes are in
// the comments, in the vocabulary of kernels/common.h.
//
// Gradient contract (every backward op): parameter gradients are accumulated (+=) so micro-batches add
// up; a null parameter-gradient pointer means the parameter is frozen and its gradient is skipped.
// Activation gradients are written (=), except where an op says otherwise and why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/common.h"
#include "kernels/op_profile.h"

namespace tune {

// One contiguous run of trainable elements for the optimizer: `n` elements at `grad_offset` in the
// gradient (and master/moment) arenas, updating the parameters at `param_offset` in the parameter
// arena, with its own learning-rate multiplier and weight decay. One optimizer pass walks all segments.
struct OptSegment {
    size_t param_offset = 0;
    size_t grad_offset = 0;
    size_t n = 0;
    float lr_scale = 1.0f;
    float weight_decay = 0.0f;
    // Optimizer steps taken before this segment started training (gradual unfreezing): its Adam bias
    // correction uses t - t_offset, so a newly unfrozen block starts with the same bias correction a
    // block training from step 1 had.
    int t_offset = 0;
};

struct AdamWStep {
    float lr = 0;
    float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
    int t = 1;               // 1-based step for bias correction
    float grad_scale = 1.0f;  // multiplies every gradient first (clipping coefficient / loss scale)
};

class Backend {
   public:
    virtual ~Backend() = default;

    virtual std::string name() const = 0;  // "cpu", "cpu-f64", "cuda"
    // Element type of activations, working weights and gradients.
    virtual DType act_dtype() const = 0;
    // Element type of master weights and Adam moments. When it differs from act_dtype() the optimizer
    // keeps a master copy and writes the working copy from it; when equal, it updates weights in place.
    virtual DType master_dtype() const = 0;
    bool has_master() const { return act_dtype() != master_dtype(); }

    // ---- memory ----
    virtual void* alloc(size_t bytes) = 0;
    virtual void free(void* p) = 0;  // never throws (destructors call it, also while an exception unwinds)
    virtual void zero(void* p, size_t bytes) = 0;
    // Host <-> backend copies converting between the host type and `dtype` (the buffer's element type).
    virtual void upload(void* dst, DType dtype, const float* src, size_t n) = 0;
    virtual void upload(void* dst, DType dtype, const double* src, size_t n) = 0;
    virtual void download(float* dst, const void* src, DType dtype, size_t n) = 0;
    virtual void download(double* dst, const void* src, DType dtype, size_t n) = 0;
    virtual void upload_i32(int32_t* dst, const int32_t* src, size_t n) = 0;
    virtual void upload_f32(float* dst, const float* src, size_t n) = 0;
    virtual void synchronize() = 0;  // only at step boundaries; launchers never hide one
    // The memory the backend holds itself, beside what was allocated through alloc() (its workspaces), and
    // the device's total use, in one line for the memory map; "" where there is nothing to add (the CPU).
    virtual std::string memory_note() const { return ""; }
    // Whether this backend only plans (kernels/plan_backend.h): its buffers hold no memory and it computes nothing.
    virtual bool plans_only() const { return false; }
    // Profiler ranges around groups of ops ("layer 7 / backward"): NVTX on CUDA; on both, where the op profile
    // files the ops run inside them.
    virtual void range_push(const char* /*name*/) {}
    virtual void range_pop() {}
    // The op profile (kernels/op_profile.h; bin/train --profile-step): every op from profile_begin() on is timed,
    // and profile_end() waits for them, returns their times per (ranges, op) and stops. A backend without one
    // (the planner) returns none. profile_clock() says what the times are.
    virtual void profile_begin() {}
    virtual std::vector<OpTime> profile_end() { return {}; }
    virtual std::string profile_clock() const { return "no clock"; }

    // ---- layers ----
    // out(B,T,C) = wte[tokens] + wpe[p], p = pos[b,t] (B,T) when given (positions restarting in each packed
    // document: `--windows isolated`), else t.
    virtual void encoder_forward(void* out, const int32_t* tokens, const int32_t* pos, const void* wte, const void* wpe,
                                 int B, int T, int C) = 0;
    // dwte(Vp,C) += scatter of dout by token, dwpe(maxT,C) += scatter of dout by position. Either may be null.
    virtual void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, const int32_t* pos,
                                  int B, int T, int C) = 0;

    // out(N,C) = (inp - mean) * rstd * weight + bias; saves mean(N), rstd(N).
    virtual void layernorm_forward(void* out, void* mean, void* rstd, const void* inp, const void* weight,
                                   const void* bias, size_t N, int C) = 0;
    // res = a + b, then out/mean/rstd = LayerNorm(res): the same values as residual_forward followed by
    // layernorm_forward (which is what this default does); the CUDA backend fuses them into one pass.
    virtual void residual_layernorm_forward(void* res, void* out, void* mean, void* rstd, const void* a, const void* b,
                                            const void* weight, const void* bias, size_t N, int C) {
        residual_forward(res, a, b, N * (size_t)C);
        layernorm_forward(out, mean, rstd, res, weight, bias, N, C);
    }
    // dinp(N,C) is ACCUMULATED (+=): LayerNorm sits on the residual stream, whose gradient already holds
    // the skip connection's share, so adding saves a pass. dweight, dbias (C) accumulate (may be null).
    virtual void layernorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                                    const void* weight, const void* mean, const void* rstd, size_t N, int C) = 0;

    // out(N,OC) = inp(N,IC) @ weight(OC,IC)^T + bias(OC); bias may be null.
    virtual void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, size_t N, int IC,
                                int OC) = 0;
    // dinp(N,IC) = dout @ weight (written; skipped when null), dweight(OC,IC) += dout^T @ inp,
    // dbias(OC) += column sums of dout (either may be null).
    virtual void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                                 const void* weight, size_t N, int IC, int OC) = 0;

    // matmul_backward of the layer after a GELU, with the GELU's backward applied to dinp: dinp(N,IC) =
    // (dout @ weight) * gelu'(pre(N,IC)), where inp = gelu(pre). dweight and dbias as in matmul_backward.
    // CUDA applies gelu' in the dinp GEMM's epilogue where cuBLASLt offers it (one pass over dinp less).
    virtual void matmul_backward_gelu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                                      const void* weight, const void* pre, size_t N, int IC, int OC) {
        matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
        gelu_backward(dinp, dinp, pre, N * (size_t)IC);
    }

    // Causal self-attention. qkv(B,T,3C) holds q|k|v, heads contiguous inside each; out(B,T,C).
    // `saved` is what backward needs beyond qkv and out; its size in elements is attention_saved_elems(): the
    // probabilities (B,NH,T,T) where attention is materialised, the softmax statistics (B,NH,T) where it is fused
    // (CUDA bf16/fp16 through cuDNN). Every shape with the same C and NH takes the same path in one backend.
    // A DocMask with positions (B,T) masks attention to each token's own document and the virtual tokens before
    // them (kernels/common.h). Only the materialised path takes one; the fused one throws (CUDA makes a backend for
    // `--windows isolated` with matmul attention).
    virtual size_t attention_saved_elems(int B, int T, int C, int NH) const = 0;
    virtual void attention_forward(void* out, void* saved, const void* qkv, DocMask mask, int B, int T, int C,
                                   int NH) = 0;
    // Which attention runs for this C and NH, for the logs: "cudnn (fused)" or "matmul (T x T probabilities)".
    virtual std::string attention_path(int C, int NH) const {
        (void)C, (void)NH;
        return "matmul (T x T probabilities)";
    }
    // dqkv(B,T,3C) written; out is the forward's output, mask the forward's.
    virtual void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const void* saved,
                                    DocMask mask, int B, int T, int C, int NH) = 0;

    // Generation with a KV cache: n new positions pos0..pos0+n-1 per row. Stores their keys and values
    // in kcache/vcache (B, maxT, C) and writes out(B,n,C), each attending over cache positions 0..its own.
    virtual void attention_forward_cached(void* out, void* kcache, void* vcache, const void* qkv, int B, int n,
                                          int pos0, int maxT, int C, int NH) = 0;

    // out = gelu_tanh(inp), n elements; backward writes dinp = dout * gelu'(inp) (dinp may be dout).
    virtual void gelu_forward(void* out, const void* inp, size_t n) = 0;
    virtual void gelu_backward(void* dinp, const void* dout, const void* inp, size_t n) = 0;

    // out = a + b, n elements (the residual connection; its backward is the identity on both sides).
    virtual void residual_forward(void* out, const void* a, const void* b, size_t n) = 0;

    // Row selection, for running the LM head only on the positions whose loss counts:
    // gather: out(n,C) = inp[rows[i]];  scatter: out(N,C) = 0 except out[rows[i]] = inp(i) (rows distinct).
    virtual void gather_rows(void* out, const void* inp, const int32_t* rows, size_t n, int C) = 0;
    virtual void scatter_rows(void* out, const void* inp, const int32_t* rows, size_t n, size_t N, int C) = 0;

    // Softmax cross-entropy over the first V of Vp columns, fused with its backward.
    // losses(N) = weights[i] * -log softmax(logits[i])[targets[i]]   (0 where weights[i] == 0)
    // If dlogits is non-null: dlogits(N,Vp) = (softmax - onehot) * weights[i] * dloss, zero in the padding
    // columns V..Vp-1. dlogits may alias logits (the usual case: the logits are not needed afterwards).
    virtual void crossentropy_forward_backward(void* losses, void* dlogits, const void* logits,
                                               const int32_t* targets, const float* weights, float dloss, size_t N,
                                               int V, int Vp) = 0;

    // ---- fine-tuning pieces (kernels/finetune.h, reference kernels/cpu/finetune.h) ----
    // out = s * inp, n elements; out may alias inp.
    virtual void scale(void* out, const void* inp, float s, size_t n) = 0;
    // Inverted dropout with a counter-based mask: out[i] = inp[i] / (1 - p) where keep(seed, c), else 0, with
    // c = dropout_counter(layout, i) (element i's place in the whole batch across ranks; DropoutLayout{}: c = i).
    // keep(seed, c) = (dropout_hash(seed, c) >= p * 2^32), dropout_hash from kernels/common.h, so the CPU and
    // CUDA masks are identical. Calling it again on dout with the same seed is the backward (the mask is
    // regenerated, never stored). out may alias inp. p = 0 copies.
    virtual void dropout(void* out, const void* inp, float p, uint64_t seed, const DropoutLayout& layout,
                         size_t n) = 0;
    // Virtual-token rows (soft prompts, prefix tuning): for every sequence b and j < P,
    //   x[b, j, col0 : col0+w] = src[j * src_ld : j * src_ld + w]          x (B, T, W), src (P, src_ld)
    virtual void prefix_rows_forward(void* x, const void* src, int src_ld, int B, int T, int P, int W, int col0,
                                     int w) = 0;
    // Its backward: dsrc[j, 0:w] += sum over b of dx[b, j, col0 : col0+w] (skipped when dsrc is null), and then
    // those entries of dx are set to zero: the overwritten values never reached the output through whatever
    // produced x, so nothing may flow back into it. dsrc has leading dimension src_ld.
    virtual void prefix_rows_backward(void* dsrc, void* dx, int src_ld, int B, int T, int P, int W, int col0,
                                      int w) = 0;
    // Knowledge distillation, temperature tau, over the first V of Vp columns, fused with its backward:
    //   q = softmax(teacher_logits[i] / tau),  p = softmax(logits[i] / tau)
    //   losses(N)    = weights[i] * tau^2 * KL(q || p) = weights[i] * tau^2 * sum_v q_v (log q_v - log p_v)
    //   dlogits(N,Vp) = weights[i] * dloss * tau * (p - q), zero in the padding columns (when non-null).
    // dlogits may alias teacher_logits (not logits).
    virtual void distill_forward_backward(void* losses, void* dlogits, const void* logits,
                                          const void* teacher_logits, const float* weights, float tau, float dloss,
                                          size_t N, int V, int Vp) = 0;
    // Anchor penalty (L2-SP, EWC) over the optimizer's segments: with w the current weights (master when
    // has_master(), else params at param_offset), a = anchor and F = fisher (1 when fisher is null), all three
    // master_dtype() and laid out like the gradient arena:
    //   returns  sum_i F_i (w_i - a_i)^2                    (deterministic reduction, double)
    //   grads_i += grad_mult * lambda * F_i * (w_i - a_i)   (grads: act_dtype(), gradient-arena layout)
    // The caller adds lambda/2 times the returned sum to the loss.
    virtual double anchor_penalty(void* grads, const void* params, const void* master, const void* anchor,
                                  const void* fisher, const std::vector<OptSegment>& segments, float lambda,
                                  float grad_mult) = 0;
    // out[i] += s * x[i]^2 (EWC's Fisher estimate); out: master_dtype(), x: act_dtype(), n elements.
    virtual void accumulate_squares(void* out, const void* x, float s, size_t n) = 0;

    // ---- optimizer and reductions ----
    // Sum of squares of n elements of `x` (element type act_dtype()), accumulated deterministically.
    virtual double sum_squares(const void* x, size_t n) = 0;
    // AdamW over every segment. params: act_dtype(); master, m, v: master_dtype() (master is null when
    // !has_master()); grads: act_dtype(). Decoupled weight decay: p -= lr*lr_scale*(mhat/(sqrt(vhat)+eps) + wd*p).
    virtual void adamw_update(void* params, void* master, const void* grads, void* m, void* v,
                              const std::vector<OptSegment>& segments, const AdamWStep& step) = 0;
};

// A Backend range for one scope: range_push now, range_pop at its end.
class BackendRange {
   public:
    BackendRange(Backend& be, const char* name) : be_(be) { be_.range_push(name); }
    ~BackendRange() { be_.range_pop(); }
    BackendRange(const BackendRange&) = delete;
    BackendRange& operator=(const BackendRange&) = delete;

   private:
    Backend& be_;
};

// The CPU reference backend in float (training) or double (gradient checks).
std::unique_ptr<Backend> make_cpu_backend(DType dtype = DType::f32);

// The CUDA backend on the current GPU, computing in `dtype` (f32, bf16 or f16) with FP32 master weights.
std::unique_ptr<Backend> make_cuda_backend(DType dtype);
// Number of usable CUDA devices; 0 when there is no GPU or no driver (never throws).
int cuda_device_count();
// Empty when cuda_device_count() > 0; else why not, in words: "no CUDA GPU found", or the runtime's error (no
// driver, a driver older than the CUDA toolkit this program was built with).
std::string cuda_device_problem();
// Whether "CUDA" is the CPU emulator of `make test-emu` (tests/emu/), where several ranks share the one device.
bool cuda_is_emulator();

}  // namespace tune
