// Host time to choose one token from GPT-2's 50257 logits (model/sampling.cpp), per sampling setting: bin/generate
// pays it for every token it writes, after the forward, so on a GPU it must stay well below the forward's time
// (gpt2 124M: about a millisecond a token).
//
// Logits: Zipf-like, logit = -s * ln(rank) over a shuffled vocabulary; s = 1.1 is a high-entropy next token (a
// top-p 0.9 nucleus of thousands of tokens), s = 2 a confident one (a handful).
//   make build/bench/bench_sampling && ./build/bench/bench_sampling
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "model/rng.h"
#include "model/sampling.h"

namespace {

constexpr int kVocab = 50257;

std::vector<float> zipf_logits(double s) {
    std::vector<int> rank(kVocab);
    std::iota(rank.begin(), rank.end(), 1);
    tune::Rng g(3);
    for (int i = kVocab - 1; i > 0; i--) std::swap(rank[i], rank[(int)g.below((uint64_t)i + 1)]);
    std::vector<float> z(kVocab);
    for (int i = 0; i < kVocab; i++) z[i] = (float)(-s * std::log((double)rank[i]));
    return z;
}

// state.range(0): the Zipf exponent x 10; range(1): 0 plain, 1 top-p 0.9, 2 top-k 50.
void BM_SampleToken(benchmark::State& state) {
    const std::vector<float> z = zipf_logits(state.range(0) / 10.0);
    tune::SamplingConfig c;
    if (state.range(1) == 1) c.top_p = 0.9f;
    if (state.range(1) == 2) c.top_k = 50;
    tune::Rng rng(1);
    for (auto _ : state) benchmark::DoNotOptimize(tune::sample_token(z, kVocab, c, rng));
    state.SetLabel(state.range(1) == 0 ? "plain" : state.range(1) == 1 ? "top-p 0.9" : "top-k 50");
}
BENCHMARK(BM_SampleToken)->ArgsProduct({{11, 20}, {0, 1, 2}})->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
