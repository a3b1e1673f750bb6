// AdamW over GPT-2 124M's real segment list (one segment per tensor, weight decay on matmul weights), bf16
// working weights and gradients with fp32 master and moments; and the deterministic gradient norm
// (sum of squares) over the same gradients. Memory bound: the roofline is HBM bandwidth.
#include <vector>

#include "bench/bench_util.cuh"
#include "kernels/adamw.h"
#include "model/config.h"
#include "model/gpt2.h"

namespace tune::bench {
namespace {

template <class T>
void BM_AdamW(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    size_t n = 0;
    const auto segs = gpt2_segments(&n);
    DeviceArray<T> params(*ctx, n, 1, 0.05f), grads(*ctx, n, 2, 0.01f);
    DeviceArray<float> master(*ctx, n, 3, 0.05f), m(*ctx, n, 4, 0.001f), v(*ctx, n, 5, 0.0001f, true);
    cuda::AdamWTable table;
    AdamWStep step;
    step.lr = 1e-4f;
    step.t = 10;
    // grads read and params written in T; m and v read and written in fp32; the fp32 master read and written
    // in the mixed precisions, where fp32 reads and writes the params themselves instead.
    const double bytes = (double)n * (sizeof(T) == 4 ? 3 * sizeof(T) + 4 * sizeof(float) : 2 * sizeof(T) + 6 * sizeof(float));
    run_timed(state, *ctx, bytes, 0, 0, [&] {
        cuda::adamw_update(params.p, sizeof(T) == 4 ? nullptr : master.p, grads.p, m.p, v.p, segs, step, false, 0,
                           table, ctx->stream);
    });
}

template <class T>
void BM_SumSquares(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    size_t n = 0;
    gpt2_segments(&n);
    DeviceArray<T> grads(*ctx, n, 1, 0.01f);
    DeviceArray<double> result(*ctx, 1, 2);
    run_timed(state, *ctx, (double)n * sizeof(T), 0, 0,
              [&] { cuda::sum_squares(result.p, grads.p, n, *ctx->scratch, ctx->stream); });
}

BENCHMARK(BM_AdamW<__nv_bfloat16>)->Name("adamw_update/bf16_master_f32/gpt2_124M")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_AdamW<float>)->Name("adamw_update/f32/gpt2_124M")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_SumSquares<__nv_bfloat16>)->Name("sum_squares/bf16/gpt2_124M")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
