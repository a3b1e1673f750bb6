// GELU forward/backward on the MLP activation (N*4C = 32*1024*3072 elements) and the residual add on the
// stream (N*C), GPT-2 124M training shapes. Memory bound: the roofline is HBM bandwidth.
#include "bench/bench_util.cuh"
#include "kernels/gelu.h"
#include "kernels/residual.h"

namespace tune::bench {
namespace {

constexpr size_t kN4C = (size_t)32 * 1024 * 3072;
constexpr size_t kNC = (size_t)32 * 1024 * 768;

template <class T>
void BM_GeluForward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> inp(*ctx, kN4C, 1, 3.0f), out(*ctx, kN4C, 2);
    run_timed(state, *ctx, 2.0 * kN4C * sizeof(T), 0, 0,
              [&] { cuda::gelu_forward(out.p, inp.p, kN4C, ctx->stream); });
}

template <class T>
void BM_GeluBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> inp(*ctx, kN4C, 1, 3.0f), dout(*ctx, kN4C, 2), dinp(*ctx, kN4C, 3);
    run_timed(state, *ctx, 3.0 * kN4C * sizeof(T), 0, 0,
              [&] { cuda::gelu_backward(dinp.p, dout.p, inp.p, kN4C, ctx->stream); });
}

template <class T>
void BM_ResidualForward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> a(*ctx, kNC, 1), b(*ctx, kNC, 2), out(*ctx, kNC, 3);
    run_timed(state, *ctx, 3.0 * kNC * sizeof(T), 0, 0,
              [&] { cuda::residual_forward(out.p, a.p, b.p, kNC, ctx->stream); });
}

BENCHMARK(BM_GeluForward<__nv_bfloat16>)->Name("gelu_forward/bf16/n100M")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_GeluBackward<__nv_bfloat16>)->Name("gelu_backward/bf16/n100M")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_ResidualForward<__nv_bfloat16>)->Name("residual_forward/bf16/n25M")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_GeluForward<float>)->Name("gelu_forward/f32/n100M")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
