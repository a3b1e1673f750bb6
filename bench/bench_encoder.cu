// Token + position embeddings at GPT-2 124M training shapes (B=32, T=1024, C=768, Vp=50304). Forward is a
// gather (memory bound); backward is a device radix sort of the tokens plus ordered sums over segments of the
// sorted rows (vocab 64: runs of about 500 rows, what frequent tokens of real text look like).
#include <cmath>

#include "bench/bench_util.cuh"
#include "kernels/encoder.h"

namespace tune::bench {
namespace {

constexpr int kB = 32, kT = 1024, kC = 768, kVp = 50304, kV = 50257;
constexpr size_t kNC = (size_t)kB * kT * kC;

// The distinct ids among B*T tokens drawn uniformly from `vocab`: the wte rows a pass must move (a repeated
// row comes from L2). Bytes counted are the least a pass moves through DRAM, so %HBM is an honest upper bound.
double distinct_rows(int vocab) { return vocab * (1.0 - std::exp(-(double)kB * kT / vocab)); }

template <class T>
void BM_EncoderForward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> wte(*ctx, (size_t)kVp * kC, 1), wpe(*ctx, (size_t)kT * kC, 2), out(*ctx, kNC, 3);
    Tokens tokens(*ctx, (size_t)kB * kT, kV, 4);
    // out written; the touched wte rows, wpe and the token ids read.
    const double bytes = (kNC + distinct_rows(kV) * kC + (double)kT * kC) * sizeof(T) + (double)kB * kT * 4;
    run_timed(state, *ctx, bytes, 0, 0,
              [&] { cuda::encoder_forward(out.p, tokens.p, nullptr, wte.p, wpe.p, kB, kT, kC, ctx->stream); });
}

template <class T>
void BM_EncoderBackward(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    const int vocab = (int)state.range(0);  // tokens drawn from the first `vocab` ids: fewer ids, longer runs
    DeviceArray<T> dwte(*ctx, (size_t)kVp * kC, 1), dwpe(*ctx, (size_t)kT * kC, 2), dout(*ctx, kNC, 3);
    Tokens tokens(*ctx, (size_t)kB * kT, vocab, 4);
    // The least traffic: dout read once, dwpe and the touched dwte rows read and written (the kernel reads dout
    // twice, for the wpe and the wte sums, and the token sort's own traffic is left out).
    const double bytes = (1.0 * kNC + 2.0 * kT * kC + 2.0 * distinct_rows(vocab) * kC) * sizeof(T);
    run_timed(state, *ctx, bytes, 0, 0, [&] {
        cuda::encoder_backward(dwte.p, dwpe.p, dout.p, tokens.p, nullptr, kB, kT, kC, *ctx->scratch, ctx->stream);
    });
}

BENCHMARK(BM_EncoderForward<__nv_bfloat16>)->Name("encoder_forward/bf16/B32_T1024_C768")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_EncoderBackward<__nv_bfloat16>)
    ->Name("encoder_backward/bf16/B32_T1024_C768")
    ->ArgName("vocab")
    ->Arg(50257)
    ->Arg(64)
    ->UseManualTime()
    ->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
