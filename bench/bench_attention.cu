// Causal self-attention at GPT-2 124M training shapes: B=32, T=1024, NH=12, HS=64, two ways:
//   matmul  heads split out, batched cuBLASLt GEMMs, warp-per-row softmax (kernels/attention.h); it computes
//           the full T x T, so 50% of peak is its ceiling;
//   cudnn   cuDNN's fused flash attention (kernels/cuda/attention_cudnn.h), skipped where cuDNN cannot run.
// FLOP/s counts the useful (causal, lower-triangle) work only: 2 GEMMs forward and 4 backward (flash
// attention's backward also recomputes the scores, a fifth, which is not counted).
#include <string>

#include "bench/bench_util.cuh"
#include "kernels/attention.h"
#include "kernels/cuda/attention_cudnn.h"

namespace tune::bench {
namespace {

constexpr int kB = 32, kT = 1024, kNH = 12, kC = 768;

double causal_gemm_flops() { return 2.0 * kB * kNH * (double)kT * kT * (kC / kNH) / 2; }

template <class T>
void BM_AttentionForward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> qkv(*ctx, (size_t)kB * kT * 3 * kC, 1), out(*ctx, (size_t)kB * kT * kC, 2),
        probs(*ctx, cuda::attention_saved_elems(kB, kT, kNH), 3);
    run_timed(state, *ctx, 0, 2 * causal_gemm_flops(), flops_peak<T>(), [&] {
        cuda::attention_forward(out.p, probs.p, qkv.p, nullptr, kB, kT, kC, kNH, *ctx->gemm, *ctx->scratch);
    });
}

template <class T>
void BM_AttentionBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> qkv(*ctx, (size_t)kB * kT * 3 * kC, 1), out(*ctx, (size_t)kB * kT * kC, 2),
        dout(*ctx, (size_t)kB * kT * kC, 3), dqkv(*ctx, (size_t)kB * kT * 3 * kC, 4),
        probs(*ctx, cuda::attention_saved_elems(kB, kT, kNH), 5);
    cuda::attention_forward(out.p, probs.p, qkv.p, nullptr, kB, kT, kC, kNH, *ctx->gemm, *ctx->scratch);  // real probs
    run_timed(state, *ctx, 0, 4 * causal_gemm_flops(), flops_peak<T>(), [&] {
        cuda::attention_backward(dqkv.p, dout.p, qkv.p, probs.p, nullptr, kB, kT, kC, kNH, *ctx->gemm, *ctx->scratch);
    });
}

// The cuDNN attention of the shared context's stream, or null (and the benchmark skipped) where it cannot run.
cuda::CudnnAttention* cudnn(benchmark::State& state, Context& ctx) {
    static cuda::CudnnAttention att(ctx.stream);
    const std::string why = att.unsupported(DType::bf16, kB, kT, kC, kNH);
    if (why.empty()) return &att;
    state.SkipWithError(why.c_str());
    return nullptr;
}

void BM_AttentionForwardCudnn(benchmark::State& state) {
    Context* ctx = context(state);
    cuda::CudnnAttention* att = ctx ? cudnn(state, *ctx) : nullptr;
    if (!att) return;
    DeviceArray<__nv_bfloat16> qkv(*ctx, (size_t)kB * kT * 3 * kC, 1), out(*ctx, (size_t)kB * kT * kC, 2);
    DeviceArray<float> stats(*ctx, cuda::cudnn_attention_saved_floats(kB, kT, kNH), 3);
    run_timed(state, *ctx, 0, 2 * causal_gemm_flops(), flops_peak<__nv_bfloat16>(), [&] {
        att->forward(out.p, stats.p, qkv.p, DType::bf16, kB, kT, kC, kNH, *ctx->scratch);
    });
}

void BM_AttentionBackwardCudnn(benchmark::State& state) {
    Context* ctx = context(state);
    cuda::CudnnAttention* att = ctx ? cudnn(state, *ctx) : nullptr;
    if (!att) return;
    DeviceArray<__nv_bfloat16> qkv(*ctx, (size_t)kB * kT * 3 * kC, 1), out(*ctx, (size_t)kB * kT * kC, 2),
        dout(*ctx, (size_t)kB * kT * kC, 3), dqkv(*ctx, (size_t)kB * kT * 3 * kC, 4);
    DeviceArray<float> stats(*ctx, cuda::cudnn_attention_saved_floats(kB, kT, kNH), 5);
    att->forward(out.p, stats.p, qkv.p, DType::bf16, kB, kT, kC, kNH, *ctx->scratch);  // real out and stats
    run_timed(state, *ctx, 0, 4 * causal_gemm_flops(), flops_peak<__nv_bfloat16>(), [&] {
        att->backward(dqkv.p, dout.p, qkv.p, out.p, stats.p, DType::bf16, kB, kT, kC, kNH, *ctx->scratch);
    });
}

BENCHMARK(BM_AttentionForward<__nv_bfloat16>)->Name("attention_forward/bf16/B32_T1024_NH12_HS64")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AttentionBackward<__nv_bfloat16>)->Name("attention_backward/bf16/B32_T1024_NH12_HS64")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AttentionForwardCudnn)->Name("attention_forward_cudnn/bf16/B32_T1024_NH12_HS64")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AttentionBackwardCudnn)->Name("attention_backward_cudnn/bf16/B32_T1024_NH12_HS64")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
