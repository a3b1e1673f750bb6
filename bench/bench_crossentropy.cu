// Fused softmax cross-entropy forward + backward, in place, over GPT-2's padded vocabulary (V=50257,
// Vp=50304) for N = 8*1024 rows. Memory bound: the kernel reads each row twice (statistics, then gradients) and
// writes it once; the second read of a 100 KB row comes from L2, so the bytes counted are one read and one write.
#include <vector>

#include "bench/bench_util.cuh"
#include "kernels/crossentropy.h"

namespace tune::bench {
namespace {

constexpr size_t kN = 8 * 1024;
constexpr int kV = 50257, kVp = 50304;

template <class T>
void BM_CrossEntropy(benchmark::State& state) {
    Context* ctx = context(state);
    if (!ctx) return;
    DeviceArray<T> logits(*ctx, kN * kVp, 1, 4.0f), losses(*ctx, kN, 2);
    DeviceArray<float> weights(*ctx, kN, 3);
    Tokens targets(*ctx, kN, kV, 4);
    std::vector<float> ones(kN, 1.0f);
    // On the context's stream, after the random fill queued there (a plain cudaMemcpy runs on the legacy
    // stream, which does not wait for a non-blocking one).
    CUDA_CHECK(cudaMemcpyAsync(weights.p, ones.data(), kN * sizeof(float), cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    // In place, as training runs it: the timed loop keeps overwriting the same buffer with gradients, which
    // costs the same as fresh logits (every value is finite).
    run_timed(state, *ctx, 2.0 * kN * kVp * sizeof(T), 0, 0, [&] {
        cuda::crossentropy_forward_backward(losses.p, logits.p, logits.p, targets.p, weights.p, 1.0f / kN, kN, kV, kVp,
                                            ctx->stream);
    });
}

BENCHMARK(BM_CrossEntropy<__nv_bfloat16>)->Name("crossentropy_fwd_bwd/bf16/N8192_Vp50304")->UseManualTime()->MinTime(0.2);
BENCHMARK(BM_CrossEntropy<float>)->Name("crossentropy_fwd_bwd/f32/N8192_Vp50304")->UseManualTime()->MinTime(0.2);

}  // namespace
}  // namespace tune::bench

BENCHMARK_MAIN();
