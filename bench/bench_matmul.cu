// Linear layers through cuBLASLt at GPT-2 124M training shapes (N = 32*1024 rows): the four block matmuls
// and the LM head. Compute bound: the roofline is the tensor-core peak (bf16) or the fp32 CUDA-core peak.
#include "bench/bench_util.cuh"
#include "kernels/gelu.h"
#include "kernels/matmul.h"

namespace tune::bench {
namespace {

constexpr size_t kN = 32 * 1024;

template <class T>
void BM_MatmulForward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    const int IC = (int)state.range(0), OC = (int)state.range(1);
    const bool bias = state.range(2) != 0;
    DeviceArray<T> inp(*ctx, kN * IC, 1), w(*ctx, (size_t)OC * IC, 2, 0.05f), b(*ctx, OC, 3), out(*ctx, kN * OC, 4);
    run_timed(state, *ctx, 0, 2.0 * kN * IC * OC, flops_peak<T>(), [&] {
        cuda::matmul_forward(out.p, inp.p, w.p, bias ? b.p : nullptr, kN, IC, OC, *ctx->gemm);
    });
}

template <class T>
void BM_MatmulBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    const int IC = (int)state.range(0), OC = (int)state.range(1);
    const bool bias = state.range(2) != 0;
    DeviceArray<T> inp(*ctx, kN * IC, 1), w(*ctx, (size_t)OC * IC, 2, 0.05f), dout(*ctx, kN * OC, 3, 0.01f),
        dinp(*ctx, kN * IC, 4), dw(*ctx, (size_t)OC * IC, 5), db(*ctx, OC, 6);
    run_timed(state, *ctx, 0, 4.0 * kN * IC * OC, flops_peak<T>(), [&] {
        cuda::matmul_backward(dinp.p, dw.p, bias ? db.p : nullptr, dout.p, inp.p, w.p, kN, IC, OC, *ctx->gemm,
                              *ctx->scratch);
    });
}

// The MLP down-projection's backward with the GELU's backward: fused as cuBLASLt's DGELU epilogue of the dinp
// GEMM (range(0) = 1), or the plain backward and then the GELU kernel (0), which is what the fusion saves.
template <class T>
void BM_MatmulBackwardGelu(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    const int IC = 3072, OC = 768;
    const bool fused = state.range(0) != 0;
    DeviceArray<T> inp(*ctx, kN * IC, 1), w(*ctx, (size_t)OC * IC, 2, 0.05f), dout(*ctx, kN * OC, 3, 0.01f),
        dinp(*ctx, kN * IC, 4), dw(*ctx, (size_t)OC * IC, 5), db(*ctx, OC, 6), pre(*ctx, kN * IC, 7);
    run_timed(state, *ctx, 0, 4.0 * kN * IC * OC, flops_peak<T>(), [&] {
        if (fused && cuda::matmul_backward_gelu(dinp.p, dw.p, db.p, dout.p, inp.p, w.p, pre.p, kN, IC, OC,
                                                *ctx->gemm, *ctx->scratch))
            return;
        if (fused) state.SkipWithError("cuBLASLt has no DGELU kernel for this shape");
        cuda::matmul_backward(dinp.p, dw.p, db.p, dout.p, inp.p, w.p, kN, IC, OC, *ctx->gemm, *ctx->scratch);
        cuda::gelu_backward(dinp.p, dinp.p, pre.p, kN * IC, ctx->stream);
    });
}

// (IC, OC, bias): attention qkv, attention projection, MLP up, MLP down, LM head (no bias).
void gpt2_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"IC", "OC", "bias"});
    for (auto s : {std::vector<int64_t>{768, 2304, 1}, {768, 768, 1}, {768, 3072, 1}, {3072, 768, 1}, {768, 50304, 0}})
        b->Args(s);
    b->UseManualTime()->MinTime(0.2);
}

BENCHMARK(BM_MatmulForward<__nv_bfloat16>)->Name("matmul_forward/bf16/N32768")->Apply(gpt2_shapes);
BENCHMARK(BM_MatmulBackward<__nv_bfloat16>)->Name("matmul_backward/bf16/N32768")->Apply(gpt2_shapes);
BENCHMARK(BM_MatmulForward<float>)->Name("matmul_forward/f32/N32768")->Apply(gpt2_shapes);
BENCHMARK(BM_MatmulBackwardGelu<__nv_bfloat16>)
    ->Name("matmul_backward_gelu/bf16/N32768_IC3072_OC768")
    ->ArgName("fused")
    ->Arg(1)
    ->Arg(0)
    ->UseManualTime()
    ->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
