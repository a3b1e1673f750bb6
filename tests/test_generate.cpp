// Generation: the KV-cached forward equals a full forward over the same prefix, and the sampler obeys
// temperature, top-k and top-p.
#include <gtest/gtest.h>

#include <map>

#include "model/sampling.h"
#include "tests/model_util.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

TEST(KvCache, CachedLogitsEqualFullForwardF64_prefill4_then_1x5) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 full(small_config(), *be, 1, 9), cached(small_config(), *be, 1, 9);
    full.init_random(4);
    cached.init_random(4);
    std::vector<int32_t> tok = {5, 36, 0, 17, 17, 2, 30, 8, 11};
    full.forward(tok.data(), 1, 9);
    cached.forward_cached(tok.data(), 1, 4, 0);
    for (int i = 0; i < 4; i++) EXPECT_TRUE(near_rel(cached.logits_row(0, i), full.logits_row(0, i), 1e-12)) << i;
    for (int pos = 4; pos < 9; pos++) {
        cached.forward_cached(&tok[pos], 1, 1, pos);
        EXPECT_TRUE(near_rel(cached.logits_row(0, 0), full.logits_row(0, pos), 1e-12)) << "position " << pos;
    }
}

TEST(KvCache, CachedLogitsEqualFullForwardF32_B2) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 full(small_config(), *be, 2, 7), cached(small_config(), *be, 2, 7);
    full.init_random(9);
    cached.init_random(9);
    std::vector<int32_t> tok = {1, 2, 3, 4, 5, 6, 7, 30, 29, 28, 27, 26, 25, 24};
    full.forward(tok.data(), 2, 7);
    cached.forward_cached(tok.data(), 2, 7, 0);
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 7; t++) EXPECT_TRUE(near_rel(cached.logits_row(b, t), full.logits_row(b, t), 1e-5));
}

TEST(Sampling, ZeroTemperatureIsArgmax) {
    Rng r(1);
    std::vector<float> z = {0.1f, 3.0f, -1.0f, 2.9f, 99.0f};
    SamplingConfig c;
    c.temperature = 0;
    EXPECT_EQ(sample_token(z, 4, c, r), 1);  // entry 4 is padding beyond V and never chosen
}

TEST(Sampling, TopKOneIsArgmaxAndTopKLimitsTheChoices) {
    Rng r(2);
    std::vector<float> z = {1.0f, 1.2f, 0.9f, 1.1f};
    SamplingConfig c;
    c.top_k = 1;
    for (int i = 0; i < 20; i++) EXPECT_EQ(sample_token(z, 4, c, r), 1);
    c.top_k = 2;
    std::map<int, int> seen;
    for (int i = 0; i < 400; i++) seen[sample_token(z, 4, c, r)]++;
    EXPECT_EQ(seen.size(), 2u);
    EXPECT_GT(seen[1], 0);
    EXPECT_GT(seen[3], 0);
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
    Rng r(3);
    // probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two only.
    std::vector<float> z = {2.0f, 1.0f, 0.0f, -1.2f};
    SamplingConfig c;
    c.top_p = 0.8f;
    std::map<int, int> seen;
    for (int i = 0; i < 2000; i++) seen[sample_token(z, 4, c, r)]++;
    EXPECT_EQ(seen.count(2), 0u);
    EXPECT_EQ(seen.count(3), 0u);
    const double frac0 = seen[0] / 2000.0;  // renormalised: 0.64 / 0.88 = 0.73
    EXPECT_NEAR(frac0, std::exp(2.0) / (std::exp(2.0) + std::exp(1.0)), 0.04);
}

TEST(Sampling, TemperatureMatchesSoftmaxFrequencies) {
    Rng r(4);
    std::vector<float> z = {0.0f, std::log(3.0f)};  // probabilities 1/4 and 3/4 at temperature 1
    SamplingConfig c;
    int ones = 0;
    for (int i = 0; i < 4000; i++) ones += sample_token(z, 2, c, r);
    EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
    c.temperature = 2.0f;  // sqrt(3) : 1 -> 0.634
    ones = 0;
    for (int i = 0; i < 4000; i++) ones += sample_token(z, 2, c, r);
    EXPECT_NEAR(ones / 4000.0, std::sqrt(3.0) / (1 + std::sqrt(3.0)), 0.03);
}

TEST(Generate, StopsAtTheStopTokenAndIsDeterministicInTheSeed) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 9);
    m.init_random(5);
    SamplingConfig c;
    Rng r1(7), r2(7);
    std::vector<int32_t> prompt = {1, 2, 3};
    auto a = generate(m, prompt, 6, c, r1), b = generate(m, prompt, 6, c, r2);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a.size(), 6u);  // 3 + 6 = 9 = block size
    c.temperature = 0;
    Rng r3(1);
    auto g = generate(m, prompt, 6, c, r3);
    Rng r4(1);
    auto stopped = generate(m, prompt, 6, c, r4, g[2]);  // stop at the third greedy token
    EXPECT_EQ(stopped, std::vector<int32_t>(g.begin(), g.begin() + 2));
}

}  // namespace
}  // namespace tune::test
