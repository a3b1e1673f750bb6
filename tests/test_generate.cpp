// Generation: the KV-cached forward equals a full forward over the same prefix, and the sampler obeys
// temperature, top-k and top-p.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "model/sampling.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

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
    // The head on each sequence's last position only (what sampling reads): the same rows, and it fits a model
    // that keeps 2 rows of logits (ModelOptions::head_chunk), where all 14 would not.
    ModelOptions o;
    o.head_chunk = 2;
    GPT2 last(small_config(), *be, 2, 7, nullptr, o);
    last.init_random(9);
    last.forward_cached(tok.data(), 2, 7, 0, true);
    for (int b = 0; b < 2; b++) EXPECT_TRUE(near_rel(last.logits_row(b, 6), full.logits_row(b, 6), 1e-5)) << b;
    EXPECT_EQ(last.logits_rows(), 2u);
    // Without last_only, a row per new position again: two more tokens for each sequence, 4 rows, more than
    // this model keeps; and the whole prompt's 14.
    const int32_t more[4] = {3, 4, 5, 6};
    EXPECT_THROW(last.forward_cached(more, 2, 2, 7), Error);
    EXPECT_THROW(last.forward_cached(tok.data(), 2, 7, 0), Error);
    GPT2 wide(small_config(), *be, 2, 7);
    wide.init_random(9);
    wide.forward_cached(tok.data(), 2, 7, 0, true);
    wide.forward_cached(more, 2, 2, 7);
    EXPECT_EQ(wide.logits_rows(), 4u);
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

// Every token a candidate (no top-k, no top-p: drawn in id order, unsorted) and nearly every one (top-p 0.9999:
// drawn from the sorted list): both give each token its softmax share, on logits in no particular order.
TEST(Sampling, EveryTokenGetsItsSoftmaxShareWithAndWithoutSorting_V5) {
    const std::vector<float> z = {0.5f, -1.0f, 1.5f, 0.0f, 1.0f, 42.0f};  // entry 5 is beyond V
    double sum = 0;
    for (int i = 0; i < 5; i++) sum += std::exp((double)z[i]);
    for (float top_p : {1.0f, 0.9999f}) {
        Rng r(5);
        SamplingConfig c;
        c.top_p = top_p;
        std::vector<int> seen(6, 0);
        const int n = 20000;
        for (int i = 0; i < n; i++) seen[sample_token(z, 5, c, r)]++;
        EXPECT_EQ(seen[5], 0);
        for (int i = 0; i < 5; i++) EXPECT_NEAR(seen[i] / (double)n, std::exp((double)z[i]) / sum, 0.012) << i;
    }
}

// Top-p sorts only the tokens above a weight threshold, lowered until they hold the nucleus: the tokens it draws
// are the ones a full sort of the vocabulary gives (here written out plainly), for a nucleus of a few tokens
// (peaked logits), of nearly all (flat), and one that reaches past the first threshold into a long tail (a spike
// of weight 1 over 2999 tokens of weight e^-10, 0.12 of the mass together).
TEST(Sampling, TopPDrawsWhatAFullSortDraws_V3000) {
    const int V = 3000;
    std::vector<std::vector<float>> cases;
    for (double spread : {8.0, 0.05}) {
        Rng g(11);
        std::vector<float> z(V);
        for (float& x : z) x = (float)(spread * g.normal());
        cases.push_back(z);
    }
    std::vector<float> spike(V, 0.0f);
    spike[1234] = 10.0f;
    for (int i = 0; i < V; i += 3) spike[i] = -0.0f;  // equal to +0: ties in id order all the same
    cases.push_back(spike);
    for (size_t ci = 0; ci < cases.size(); ci++) {
        const std::vector<float>& z = cases[ci];
        for (float top_p : {0.3f, 0.95f}) {
            std::vector<int32_t> order(V);
            std::iota(order.begin(), order.end(), 0);
            std::sort(order.begin(), order.end(),
                      [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
            std::vector<double> p(V);
            double sum = 0;
            for (int i = 0; i < V; i++) sum += p[i] = std::exp((double)z[order[i]] - z[order[0]]);
            int keep = V;
            double mass = 0;
            for (int i = 0; i < V; i++) {
                if ((mass += p[i] / sum) >= top_p) {
                    keep = i + 1;
                    break;
                }
            }
            if (ci == 2 && top_p > 0.9f) {
                ASSERT_GT(keep, 1) << "the nucleus must reach into the tail";
            }
            double kept = 0;
            for (int i = 0; i < keep; i++) kept += p[i];
            SamplingConfig c;
            c.top_p = top_p;
            Rng r1(12), r2(12);
            for (int draw = 0; draw < 300; draw++) {
                double u = r2.uniform() * kept;
                int32_t want = order[keep - 1];
                for (int i = 0; i < keep; i++) {
                    if ((u -= p[i]) < 0) {
                        want = order[i];
                        break;
                    }
                }
                ASSERT_EQ(sample_token(z, V, c, r1), want) << "case " << ci << ", top_p " << top_p;
            }
        }
    }
}

// NaN has no place in the order, and +inf's weight exp(inf - inf) is NaN: both are errors, not an arbitrary or
// argmax pick. -inf (a token ruled out) is fine.
TEST(Sampling, NanOrInfiniteLogitIsAnErrorNotAnArbitraryPick) {
    Rng r(6);
    SamplingConfig c;
    for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
        const std::vector<float> z = {0.5f, bad, 1.0f};
        for (float t : {0.0f, 1.0f}) {
            c.temperature = t;
            EXPECT_THROW(
                try { sample_token(z, 3, c, r); } catch (const Error& e) {
                    const std::string what = std::isnan(bad) ? "NaN" : "+inf";
                    EXPECT_THAT(e.what(), HasSubstr("the logits hold " + what + " at token id 1: the model's "
                                                    "forward pass overflowed"));
                    throw;
                },
                Error);
        }
    }
    const std::vector<float> ruled_out = {0.5f, -std::numeric_limits<float>::infinity(), 1.0f};
    c.temperature = 1.0f;
    for (int i = 0; i < 50; i++) EXPECT_NE(sample_token(ruled_out, 3, c, r), 1);
    const std::vector<float> none(3, -std::numeric_limits<float>::infinity());  // every token ruled out
    for (float top_p : {1.0f, 0.9f})
        for (float t : {0.0f, 1.0f}) {
            c.top_p = top_p;
            c.temperature = t;
            EXPECT_THAT(error_of([&] { sample_token(none, 3, c, r); }), HasSubstr("every logit is -inf"));
        }
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

// SamplingConfig::vocab keeps the choice below it (a tokenizer smaller than the model's vocabulary).
TEST(Generate, SamplesOnlyBelowTheConfiguredVocabulary_V37_vocab5) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 9);
    m.init_random(5);
    SamplingConfig c;
    c.temperature = 3;  // nearly uniform: without the limit, ids from 5 on come up
    Rng r(2);
    int32_t most = 0, most_limited = 0;
    for (int k = 0; k < 20; k++)
        for (int32_t t : generate(m, {1, 2}, 6, c, r)) most = std::max(most, t);
    c.vocab = 5;
    for (int k = 0; k < 20; k++)
        for (int32_t t : generate(m, {1, 2}, 6, c, r)) most_limited = std::max(most_limited, t);
    EXPECT_GE(most, 5);
    EXPECT_LT(most_limited, 5);
}

// generate() says why it stopped, so the tool can tell a full context from a finished --max-new.
TEST(Generate, ReportsWhyItStopped_block9_prompt3) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 9);
    m.init_random(5);
    SamplingConfig greedy;
    greedy.temperature = 0;
    const std::vector<int32_t> prompt = {1, 2, 3};
    Rng r(1);
    GenerateStop why = GenerateStop::stop_token;
    auto all = generate(m, prompt, 100, greedy, r, -1, nullptr, &why);
    EXPECT_EQ(all.size(), 7u);  // positions 3..8 fed back, and the last token chosen at position 8
    EXPECT_EQ(why, GenerateStop::context_full);
    why = GenerateStop::context_full;
    auto exact = generate(m, prompt, 7, greedy, r, -1, nullptr, &why);
    EXPECT_EQ(exact, all);
    EXPECT_EQ(why, GenerateStop::max_new);  // everything asked for was made
    auto fewer = generate(m, prompt, 4, greedy, r, -1, nullptr, &why);
    EXPECT_EQ(fewer.size(), 4u);
    EXPECT_EQ(why, GenerateStop::max_new);
    generate(m, prompt, 100, greedy, r, all[0], nullptr, &why);
    EXPECT_EQ(why, GenerateStop::stop_token);
    // The tools put their own "generate: error:" in front of messages, so the library does not.
    const std::string err = error_of([&] { generate(m, std::vector<int32_t>(10, 1), 1, greedy, r); });
    EXPECT_EQ(err.rfind("the prompt has 10 tokens, more than the model's context of 9 positions", 0), 0u) << err;
}

TEST(GenerateCli, NotesTheContextLimitAndRefusesTwoPrompts) {
    TempDir tmp("gencli");
    const std::string d = tmp.path();
    auto be = make_cpu_backend(DType::f32);
    ModelConfig cfg = preset_config("tiny");
    cfg.block_size = 16;
    GPT2 m(cfg, *be, 1, 1);
    m.init_random(1);
    save_checkpoint(d + "/m.ckpt", m, nullptr, nullptr);
    const std::string gen = "bin/generate --device cpu --model " + d + "/m.ckpt ";
    CmdResult help = run_cmd("bin/generate --help");
    EXPECT_THAT(help.out, HasSubstr("when the model's context"));
    // A prompt of 4 tokens and --max-new 400 on a 16-position model: the context ends it, and the tool says so.
    CmdResult full = run_cmd(gen + "--prompt 'Once upon a time' --max-new 400 --temperature 0");
    EXPECT_EQ(full.rc, 0) << full.out;
    EXPECT_THAT(full.out, HasSubstr("note: stopped at the model's context of 16 tokens after 13 new tokens, fewer "
                                    "than --max-new 400"));
    // --eot-first: the context starts with <|endoftext|>, one position more (not printed).
    CmdResult eot = run_cmd(gen + "--prompt 'Once upon a time' --max-new 400 --temperature 0 --eot-first");
    EXPECT_EQ(eot.rc, 0) << eot.out;
    EXPECT_THAT(eot.out, HasSubstr("note: stopped at the model's context of 16 tokens after 12 new tokens"));
    EXPECT_EQ(eot.out.rfind("Once upon a time", 0), 0u) << eot.out;
    CmdResult some = run_cmd(gen + "--prompt 'Once upon a time' --max-new 5 --temperature 0 --top-k 1");
    EXPECT_EQ(some.rc, 0) << some.out;
    EXPECT_THAT(some.out, ::testing::Not(HasSubstr("note: stopped")));
    EXPECT_THAT(some.out, ::testing::Not(HasSubstr("samples are the same")));
    CmdResult same = run_cmd(gen + "--prompt 'Once upon a time' --max-new 5 --temperature 0 --samples 3");
    EXPECT_EQ(same.rc, 0) << same.out;
    EXPECT_THAT(same.out, HasSubstr("note: --temperature 0 always picks the likeliest token: the 3 samples are the "
                                    "same text"));
    spit(d + "/a.txt", "from the file");
    CmdResult both = run_cmd(gen + "--prompt hi --prompt-file " + d + "/a.txt");
    EXPECT_EQ(both.rc, 2) << both.out;
    EXPECT_THAT(both.out, HasSubstr("--prompt and --prompt-file: give one, not both"));
    CmdResult empty_and_file = run_cmd(gen + "--prompt '' --prompt-file " + d + "/a.txt");
    EXPECT_EQ(empty_and_file.rc, 2) << empty_and_file.out;
    CmdResult file = run_cmd(gen + "--prompt-file " + d + "/a.txt --max-new 2");
    EXPECT_EQ(file.rc, 0) << file.out;
    EXPECT_THAT(file.out, HasSubstr("from the file"));
    // Standard input that cannot be a prompt is the command line's mistake, as a --prompt-file of that kind is.
    CmdResult closed = run_cmd(gen + "--prompt-file - <&-");
    EXPECT_EQ(closed.rc, 2) << closed.out;
    EXPECT_THAT(closed.out, HasSubstr("--prompt-file -: standard input is closed"));
    CmdResult folder = run_cmd(gen + "--prompt-file - < " + d);
    EXPECT_EQ(folder.rc, 2) << folder.out;
    EXPECT_THAT(folder.out, HasSubstr("--prompt-file -: standard input is a directory"));
    CmdResult piped = run_cmd("printf 'from a pipe' | " + gen + "--prompt-file - --max-new 2");
    EXPECT_EQ(piped.rc, 0) << piped.out;
    EXPECT_THAT(piped.out, HasSubstr("from a pipe"));
    std::string words;
    for (int i = 0; i < 30; i++) words += " word";
    CmdResult long_prompt = run_cmd(gen + "--prompt '" + words + "'");
    EXPECT_EQ(long_prompt.rc, 1) << long_prompt.out;
    EXPECT_THAT(long_prompt.out, HasSubstr("generate: error: the prompt has 30 tokens, more than the model's "
                                           "context of 16 positions: shorten the prompt"));
    // A prompt that fills the context alone, --eot-first's token making it one too many: counted apart (it said
    // "the prompt has 17 tokens" of a 16-token prompt).
    CmdResult eot_over = run_cmd(gen + "--prompt '" + words.substr(0, 16 * 5) + "' --eot-first");
    EXPECT_EQ(eot_over.rc, 1) << eot_over.out;
    EXPECT_THAT(eot_over.out, HasSubstr("generate: error: the prompt has 16 tokens, and the <|endoftext|> put before "
                                        "it (--eot-first) makes 17, more than the model's context of 16 positions"));
    EXPECT_THAT(long_prompt.out, ::testing::Not(HasSubstr("word word"))) << "the prompt was printed before the error";
    // Text that cannot be written (a full disk) is a failure, not a silent success.
    if (std::filesystem::exists("/dev/full")) {
        CmdResult lost = run_cmd("{ " + gen + "--prompt hi --max-new 2 >/dev/full; }");
        EXPECT_EQ(lost.rc, 1) << lost.out;
        EXPECT_THAT(lost.out, HasSubstr("generate: error: cannot write standard output"));
    }
    // A model with a smaller vocabulary than the tokenizer's: ids it has no row for are refused, not read.
    cfg.vocab_size = 97;
    cfg.padded_vocab_size = 128;
    GPT2 small(cfg, *be, 1, 1);
    small.init_random(1);
    save_checkpoint(d + "/small.ckpt", small, nullptr, nullptr);
    CmdResult ids = run_cmd("bin/generate --device cpu --model " + d + "/small.ckpt --prompt 'hello' --max-new 3");
    EXPECT_EQ(ids.rc, 1) << ids.out;
    EXPECT_THAT(ids.out, HasSubstr("prompt token 0 has id 31373, not below the model's vocabulary size 97"));
    CmdResult no_eot = run_cmd("bin/generate --device cpu --model " + d + "/small.ckpt --prompt 'hello' --eot-first");
    EXPECT_EQ(no_eot.rc, 2) << no_eot.out;
    EXPECT_THAT(no_eot.out, HasSubstr("--eot-first, and the model's 97 tokens hold no <|endoftext|> (id 50256)"));
    // A larger one (a fine-tune that added a token): generation goes on, never choosing the extra ids.
    cfg.vocab_size = 50260;
    cfg.padded_vocab_size = pad_vocab(cfg.vocab_size);
    GPT2 large(cfg, *be, 1, 1);
    large.init_random(1);
    save_checkpoint(d + "/large.ckpt", large, nullptr, nullptr);
    CmdResult more = run_cmd("bin/generate --device cpu --model " + d + "/large.ckpt --prompt 'hello' --max-new 8 "
                             "--temperature 5");
    EXPECT_EQ(more.rc, 0) << more.out;
    EXPECT_THAT(more.out, HasSubstr("note: the model has 50260 tokens, the tokenizer (--vocab data/gpt2) 50257: ids "
                                    "from 50257 on have no text and are never sampled"));
    // Output is bytes as they are: a NUL in the prompt comes out too.
    spit(d + "/nul.txt", std::string("a\0b", 3));
    CmdResult nul = run_cmd(gen + "--prompt-file " + d + "/nul.txt --max-new 1");
    EXPECT_EQ(nul.rc, 0) << nul.out;
    EXPECT_THAT(nul.out, HasSubstr(std::string("a\0b", 3)));
    // Paths named on the command line that are not there, or not files, are usage errors (2), as in every tool.
    CmdResult dir = run_cmd(gen + "--prompt-file " + d);
    EXPECT_EQ(dir.rc, 2) << dir.out;
    EXPECT_THAT(dir.out, HasSubstr("--prompt-file: " + d + ": is a directory, not a file"));
    CmdResult none = run_cmd("bin/generate --device cpu --model " + d + "/absent.ckpt --prompt hi");
    EXPECT_EQ(none.rc, 2) << none.out;
    EXPECT_THAT(none.out, HasSubstr("--model: no such file or directory: " + d + "/absent.ckpt"));
}

}  // namespace
}  // namespace tune::test
