// LayerNorm forward and backward at GPT-2 124M training shapes (N = B*T = 32*1024 rows, C = 768).
// Memory bound: the roofline is HBM bandwidth.
#include "bench/bench_util.cuh"
#include "kernels/layernorm.h"
#include "kernels/residual.h"

namespace tune::bench {
namespace {

constexpr size_t kN = 32 * 1024;
constexpr int kC = 768;

template <class T>
void BM_LayerNormForward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> inp(*ctx, kN * kC, 1), out(*ctx, kN * kC, 2), w(*ctx, kC, 3), b(*ctx, kC, 4), mean(*ctx, kN, 5),
        rstd(*ctx, kN, 6);
    const double bytes = 2.0 * kN * kC * sizeof(T);  // read inp, write out (parameters and stats are noise)
    run_timed(state, *ctx, bytes, 0, 0, [&] {
        cuda::layernorm_forward(out.p, mean.p, rstd.p, inp.p, w.p, b.p, kN, kC, ctx->stream);
    });
}

// A residual add and the LayerNorm after it (every LayerNorm of the model but the first): fused (one kernel: read a
// and b, write the sum and the output) against the two launchers (the second reads the sum back), counted with the
// fused kernel's bytes. 2026-12-04 on the H200, when the kernels read one element per lane at a time, the fused one
// lost: 109.1 us against 83.2.
template <class T, bool kFused>
void BM_ResidualLayerNorm(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> a(*ctx, kN * kC, 1), b(*ctx, kN * kC, 2), res(*ctx, kN * kC, 3), out(*ctx, kN * kC, 4),
        w(*ctx, kC, 5), bias(*ctx, kC, 6), mean(*ctx, kN, 7), rstd(*ctx, kN, 8);
    const double bytes = 4.0 * kN * kC * sizeof(T);
    run_timed(state, *ctx, bytes, 0, 0, [&] {
        if (kFused) {
            cuda::residual_layernorm_forward(res.p, out.p, mean.p, rstd.p, a.p, b.p, w.p, bias.p, kN, kC, ctx->stream);
        } else {
            cuda::residual_forward(res.p, a.p, b.p, kN * kC, ctx->stream);
            cuda::layernorm_forward(out.p, mean.p, rstd.p, res.p, w.p, bias.p, kN, kC, ctx->stream);
        }
    });
}

template <class T>
void BM_LayerNormBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> inp(*ctx, kN * kC, 1), dout(*ctx, kN * kC, 2), dinp(*ctx, kN * kC, 3), w(*ctx, kC, 4),
        dw(*ctx, kC, 5), db(*ctx, kC, 6), mean(*ctx, kN, 7, 0.1f), rstd(*ctx, kN, 8, 2.0f);
    // The least traffic: read dout, inp and dinp (accumulated into), write dinp; the kernel reads them once
    // (the column sums for dweight/dbias come from the same pass). 2026-12-04 on the H200, before that fusion,
    // the bf16 kernel took 984 us (4.3% of this floor) and the f32 one 221 us.
    const double bytes = 4.0 * kN * kC * sizeof(T);
    run_timed(state, *ctx, bytes, 0, 0, [&] {
        cuda::layernorm_backward(dinp.p, dw.p, db.p, dout.p, inp.p, w.p, mean.p, rstd.p, kN, kC, *ctx->scratch,
                                 ctx->stream);
    });
}

BENCHMARK(BM_LayerNormForward<__nv_bfloat16>)->Name("layernorm_forward/bf16/N32768_C768")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_LayerNormForward<float>)->Name("layernorm_forward/f32/N32768_C768")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_ResidualLayerNorm<__nv_bfloat16, true>)->Name("residual_layernorm_forward/bf16/N32768_C768")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_ResidualLayerNorm<__nv_bfloat16, false>)->Name("residual_then_layernorm_forward/bf16/N32768_C768")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_LayerNormBackward<__nv_bfloat16>)->Name("layernorm_backward/bf16/N32768_C768")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_LayerNormBackward<float>)->Name("layernorm_backward/f32/N32768_C768")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
