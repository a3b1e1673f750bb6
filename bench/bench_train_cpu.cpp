// One CPU training step (forward, loss, backward, AdamW) of small GPT-2 models, in tokens/s, so later
// changes to the CPU backend can be compared. Results: bench/README.md.
#include <benchmark/benchmark.h>

#include <vector>

#include "kernels/backend.h"
#include "model/gpt2.h"
#include "model/rng.h"
#include "train/optimizer.h"

namespace {

using namespace tune;

// Args: preset index (0 = tiny, 1 = small), B, T.
void BM_CpuTrainStep(benchmark::State& state) {
    const char* presets[] = {"tiny", "small"};
    const ModelConfig cfg = preset_config(presets[state.range(0)]);
    const int B = (int)state.range(1), T = (int)state.range(2);
    auto be = make_cpu_backend(DType::f32);
    GPT2 model(cfg, *be, B, T);
    model.init_random(1);
    AdamW opt(model, AdamWConfig{});
    Rng rng(2);
    std::vector<int32_t> x((size_t)B * T), y(x.size());
    for (size_t i = 0; i < x.size(); i++) x[i] = (int32_t)rng.below(cfg.vocab_size), y[i] = (int32_t)rng.below(cfg.vocab_size);
    std::vector<float> w(x.size(), 1.0f);
    for (auto _ : state) {
        model.zero_grads();
        model.forward(x.data(), B, T);
        benchmark::DoNotOptimize(model.loss(y.data(), w.data(), 1.0f / (float)x.size(), true));
        model.backward();
        opt.step(1e-4f, 1.0f);
    }
    state.counters["tokens/s"] = benchmark::Counter((double)B * T, benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::string(presets[state.range(0)]) + " " + cfg.describe());
}
BENCHMARK(BM_CpuTrainStep)->Args({0, 4, 64})->Args({1, 4, 128})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
