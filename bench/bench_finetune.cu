// The kernels the fine-tuning methods add (kernels/finetune.h), at GPT-2 124M training shapes. All memory
// bound: the roofline is HBM bandwidth.
//   distillation   N = 8*1024 rows of Vp = 50304: reads the student's and the teacher's logits, writes dlogits
//                  over the teacher's (three passes), as the chunked LM head runs it;
//   dropout        LoRA's input dropout on one (N, C) activation, N = 32*1024, C = 768 (read + write);
//   prefix rows    prefix tuning's backward for one layer: B = 32, T = 1024, P = 16 virtual positions of the
//                  (B, T, 3C) QKV gradient summed over the batch into (P, 2C) keys and values;
//   anchor penalty L2-SP/EWC over all of GPT-2 124M's segments: fp32 master, anchor and Fisher read, bf16
//                  gradients read and written;
//   accumulate squares  EWC's Fisher estimate: fp32 out read and written, bf16 gradients read.
#include <vector>

#include "bench/bench_util.cuh"
#include "kernels/adamw.h"
#include "kernels/finetune.h"
#include "model/config.h"
#include "model/gpt2.h"

namespace tune::bench {
namespace {

constexpr size_t kRows = 8 * 1024;
constexpr int kV = 50257, kVp = 50304;
constexpr size_t kN = 32 * 1024;
constexpr int kC = 768, kB = 32, kT = 1024, kP = 16;

template <class T>
void BM_Distill(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> logits(*ctx, kRows * kVp, 1, 4.0f), teacher(*ctx, kRows * kVp, 2, 4.0f), losses(*ctx, kRows, 3);
    DeviceArray<float> weights(*ctx, kRows, 4);
    std::vector<float> ones(kRows, 1.0f);
    CUDA_CHECK(cudaMemcpyAsync(weights.p, ones.data(), kRows * sizeof(float), cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    // dlogits over the teacher's buffer, as the model does; the timed loop keeps reading what it wrote, which
    // costs the same (every value stays finite).
    run_timed(state, *ctx, 3.0 * kRows * kVp * sizeof(T), 0, 0, [&] {
        cuda::distill_forward_backward(losses.p, teacher.p, logits.p, teacher.p, weights.p, 2.0f, 1.0f / kRows, kRows,
                                       kV, kVp, ctx->stream);
    });
}

// One process; and rank 1 of 8, whose counters take a 64-bit division per element.
template <class T>
void BM_Dropout(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    const size_t n = kN * kC;
    DeviceArray<T> inp(*ctx, n, 1), out(*ctx, n, 2);
    uint64_t seed = 7;
    const DropoutLayout layout = state.range(0) ? DropoutLayout{(uint64_t)kT * kC, 8, 1} : DropoutLayout{};
    state.SetLabel(state.range(0) ? "rank 1 of 8" : "one process");
    run_timed(state, *ctx, 2.0 * n * sizeof(T), 0, 0,
              [&] { cuda::dropout(out.p, inp.p, 0.1f, seed++, layout, n, ctx->stream); });
}

template <class T>
void BM_PrefixRowsBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    const int W = 3 * kC, w = 2 * kC;
    DeviceArray<T> dx(*ctx, (size_t)kB * kT * W, 1), dsrc(*ctx, (size_t)kP * w, 2);
    // Reads B*P rows of w and writes them zero, reads and writes the (P, w) sum.
    const double bytes = (2.0 * kB * kP * w + 2.0 * kP * w) * sizeof(T);
    run_timed(state, *ctx, bytes, 0, 0,
              [&] { cuda::prefix_rows_backward(dsrc.p, dx.p, w, kB, kT, kP, W, kC, w, ctx->stream); });
}

template <class T>
void BM_AnchorPenalty(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    size_t n = 0;
    const auto segs = gpt2_segments(&n);
    DeviceArray<T> grads(*ctx, n, 1, 0.01f), params(*ctx, n, 2, 0.05f);
    DeviceArray<float> master(*ctx, n, 3, 0.05f), anchor(*ctx, n, 4, 0.05f), fisher(*ctx, n, 5, 1.0f, true);
    DeviceArray<double> result(*ctx, 1, 6);
    cuda::AdamWTable table;
    run_timed(state, *ctx, (double)n * (3 * sizeof(float) + 2 * sizeof(T)), 0, 0, [&] {
        cuda::anchor_penalty(result.p, grads.p, params.p, master.p, anchor.p, fisher.p, segs, 0.1f, 1.0f, table,
                             *ctx->scratch, ctx->stream);
    });
}

template <class T>
void BM_AccumulateSquares(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    size_t n = 0;
    gpt2_segments(&n);
    DeviceArray<T> x(*ctx, n, 1, 0.01f);
    DeviceArray<float> out(*ctx, n, 2, 0.0f);
    run_timed(state, *ctx, (double)n * (2 * sizeof(float) + sizeof(T)), 0, 0,
              [&] { cuda::accumulate_squares(out.p, x.p, 0.5f, n, ctx->stream); });
}

BENCHMARK(BM_Distill<__nv_bfloat16>)->Name("distill_fwd_bwd/bf16/N8192_Vp50304")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_Dropout<__nv_bfloat16>)->Name("dropout/bf16/n25M")->Arg(0)->Arg(1)->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_PrefixRowsBackward<__nv_bfloat16>)->Name("prefix_rows_backward/bf16/B32_T1024_P16")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AnchorPenalty<__nv_bfloat16>)->Name("anchor_penalty/bf16/gpt2")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AccumulateSquares<__nv_bfloat16>)->Name("accumulate_squares/bf16/gpt2")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
