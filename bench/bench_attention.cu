// Causal self-attention (heads split out, batched cuBLASLt GEMMs, warp-per-row softmax) at GPT-2 124M
// training shapes: B=32, T=1024, NH=12, HS=64. FLOP/s counts the useful (causal, lower-triangle) work only,
// 2 GEMMs forward and 4 backward; the kernels compute the full T x T, so 50% of peak is their ceiling.
#include "bench/bench_util.cuh"
#include "kernels/attention.h"

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
        cuda::attention_forward(out.p, probs.p, qkv.p, kB, kT, kC, kNH, *ctx->gemm, *ctx->scratch);
    });
}

template <class T>
void BM_AttentionBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> qkv(*ctx, (size_t)kB * kT * 3 * kC, 1), out(*ctx, (size_t)kB * kT * kC, 2),
        dout(*ctx, (size_t)kB * kT * kC, 3), dqkv(*ctx, (size_t)kB * kT * 3 * kC, 4),
        probs(*ctx, cuda::attention_saved_elems(kB, kT, kNH), 5);
    cuda::attention_forward(out.p, probs.p, qkv.p, kB, kT, kC, kNH, *ctx->gemm, *ctx->scratch);  // real probs
    run_timed(state, *ctx, 0, 4 * causal_gemm_flops(), flops_peak<T>(), [&] {
        cuda::attention_backward(dqkv.p, dout.p, qkv.p, probs.p, kB, kT, kC, kNH, *ctx->gemm, *ctx->scratch);
    });
}

BENCHMARK(BM_AttentionForward<__nv_bfloat16>)->Name("attention_forward/bf16/B32_T1024_NH12_HS64")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AttentionBackward<__nv_bfloat16>)->Name("attention_backward/bf16/B32_T1024_NH12_HS64")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
