// Evaluation: multiple-choice scoring picks the ending the model finds most likely, by total and by mean
// loss; loss/perplexity agree with the trainer's loss; the tools run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "data/shard.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/eval.h"
#include "train/metrics.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Scores computed here independently: per ending, run a plain forward over context+ending and sum the
// log-probabilities of the ending's tokens.
std::pair<int, int> reference_choice(GPT2& m, const ChoiceExample& ex) {
    double best_sum = INFINITY, best_mean = INFINITY;
    int a = 0, b = 0;
    for (size_t e = 0; e < ex.endings.size(); e++) {
        std::vector<int32_t> seq = ex.context;
        seq.insert(seq.end(), ex.endings[e].begin(), ex.endings[e].end());
        const int T = (int)seq.size() - 1;
        m.forward(seq.data(), 1, T);
        double s = 0;
        for (int t = (int)ex.context.size() - 1; t < T; t++) {
            std::vector<float> z = m.logits_row(0, t);
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < m.config().vocab_size; v++) mx = std::max(mx, (double)z[v]);
            for (int v = 0; v < m.config().vocab_size; v++) sum += std::exp(z[v] - mx);
            s += std::log(sum) + mx - z[seq[t + 1]];
        }
        if (s < best_sum) best_sum = s, a = (int)e;
        if (s / ex.endings[e].size() < best_mean) best_mean = s / ex.endings[e].size(), b = (int)e;
    }
    return {a, b};
}

// Progress of a long evaluation: nothing for quick work, then done/total with an ETA, and the time it took.
TEST(ProgressLine, SilentWhenQuickThenCountsWithAnEta) {
    testing::internal::CaptureStderr();
    {
        ProgressLine quick("work", 3);
        quick.update(1);
        quick.update(3);
        ProgressLine none(nullptr, 4, 0, 0);
        none.update(4);
    }
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
    testing::internal::CaptureStderr();
    {
        ProgressLine slow("work", 4, 0, 0);
        slow.update(1);
        slow.update(4);
    }
    const std::string out = testing::internal::GetCapturedStderr();
    EXPECT_THAT(out, HasSubstr("work 1/4 (25%), ETA "));
    EXPECT_THAT(out, HasSubstr("work 4/4 (100%), took "));
    EXPECT_EQ(out.back(), '\n');
}

// A chart whose curves hold non-finite values (an infinite validation loss) is still a valid SVG: they are
// left out, and a curve with one drawable point gets a dot.
TEST(LineChart, NonFinitePointsAreLeftOutAndALonePointIsADot) {
    TempDir tmp("chart");
    const double inf = std::numeric_limits<double>::infinity();
    write_line_chart_svg(tmp.file("c.svg"), "t", "step", "loss",
                         {{"a", "#000", {{1, inf}, {2, 3.0}}}, {"b", "#111", {{1, inf}}}, {"c", "#222", {{1, 2.0}, {2, 2.5}}}});
    const std::string svg = slurp(tmp.file("c.svg"));
    EXPECT_EQ(svg.find("inf"), std::string::npos) << svg;
    EXPECT_EQ(svg.find("nan"), std::string::npos) << svg;
    size_t dots = 0;
    for (size_t at = svg.find("<circle"); at != std::string::npos; at = svg.find("<circle", at + 1)) dots++;
    EXPECT_EQ(dots, 1u) << "one for curve a, none for b (nothing to draw) or c (a line)";
    EXPECT_NE(svg.find("fill=\"#000\""), std::string::npos);
}

// A new run's log replaces an earlier run's plot along with its metrics; a resumed one (or lr_find's log)
// leaves it.
TEST(RunLog, ANewRunRemovesTheEarlierRunsPlot) {
    TempDir tmp("runlog");
    spit(tmp.file("loss.svg"), "earlier");
    { RunLog resumed(tmp.path(), 5); }
    { RunLog sweep(tmp.path(), -1, "lr_find.jsonl"); }
    EXPECT_EQ(slurp(tmp.file("loss.svg")), "earlier");
    { RunLog fresh(tmp.path()); }
    EXPECT_FALSE(std::filesystem::exists(tmp.file("loss.svg")));
}

// A resumed run keeps its log's lines up to the checkpoint's step. A step beyond any integer (1e30) or with a
// fraction is compared as the number it is, never converted to an integer (undefined behaviour: found by fuzzing),
// and only an int step goes into the plot.
TEST(RunLog, ResumeComparesStepsOfAnySizeAsNumbers) {
    TempDir tmp("runlog");
    spit(tmp.file("metrics.jsonl"), "{\"step\": 1e30, \"loss\": 1}\n{\"step\": 4.5, \"loss\": 2}\n"
                                    "{\"step\": 18446744073709551615, \"loss\": 3}\n{\"step\": -3, \"loss\": 4}\n"
                                    "{\"step\": 5, \"loss\": 5}\n{\"step\": 5.5, \"loss\": 6}\n{\"step\": \"x\"}\n");
    { RunLog resumed(tmp.path(), 5); }
    EXPECT_EQ(slurp(tmp.file("metrics.jsonl")),
              "{\"step\": 4.5, \"loss\": 2}\n{\"step\": -3, \"loss\": 4}\n{\"step\": 5, \"loss\": 5}\n{\"step\": \"x\"}\n");
}

// The same random weights, of order 0.5 rather than GPT-2's 0.02, in the model under test and the reference:
// near-uniform predictions would make every token cost about log V, and the sum would pick the shortest ending
// whatever the scorer read.
void upload_same_random_weights(Backend& be, GPT2& m, GPT2& ref, uint64_t seed) {
    Rng w(seed);
    std::vector<double> weights(m.params().elems());
    for (double& x : weights) x = w.uniform() - 0.5;
    be.upload(m.params().base(), m.params().dtype(), weights.data(), weights.size());
    be.upload(ref.params().base(), ref.params().dtype(), weights.data(), weights.size());
}

TEST(MultipleChoice, MatchesAnIndependentScorer) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 3, 9), ref(small_config(), *be, 1, 9);
    upload_same_random_weights(*be, m, ref, 5);
    Rng r(4);
    std::vector<ChoiceExample> exs;
    for (int i = 0; i < 12; i++) {
        ChoiceExample ex;
        for (int k = 0; k < 2 + (int)r.below(3); k++) ex.context.push_back((int32_t)r.below(37));
        for (int e = 0; e < 3; e++) {
            std::vector<int32_t> end;
            for (int k = 0; k < 1 + (int)r.below(4); k++) end.push_back((int32_t)r.below(37));
            ex.endings.push_back(end);
        }
        ex.label = (int)r.below(3);
        exs.push_back(ex);
    }
    size_t correct = 0, correct_norm = 0;
    for (const auto& ex : exs) {
        auto [a, b] = reference_choice(ref, ex);
        correct += a == ex.label;
        correct_norm += b == ex.label;
    }
    ChoiceResult res = eval_multiple_choice(m, exs);
    EXPECT_EQ(res.examples, 12u);
    EXPECT_EQ(res.correct, correct);
    EXPECT_EQ(res.correct_norm, correct_norm);
    // And with the labels set to the reference's picks, accuracy is exactly 1; by the length-normalised score
    // too, which picks otherwise than the sum on some examples (else it would test nothing of its own).
    size_t differ = 0;
    for (const auto& ex : exs) {
        const auto [by_sum, by_mean] = reference_choice(ref, ex);
        differ += by_sum != by_mean;
    }
    EXPECT_GT(differ, 0u);
    for (auto& ex : exs) ex.label = reference_choice(ref, ex).first;
    EXPECT_EQ(eval_multiple_choice(m, exs).acc(), 1.0);
    for (auto& ex : exs) ex.label = reference_choice(ref, ex).second;
    EXPECT_EQ(eval_multiple_choice(m, exs).acc_norm(), 1.0);
}

// A first token (the <|endoftext|> before every context, for a model trained on document windows) scores as if
// each context began with it, and stays first when a context is cut to fit (12 tokens, in a model of 9
// positions). Only examples whose pick the token changes can tell: for the short contexts, against the context
// alone; for the cut ones, against the cut that would drop it for one more context token (the token at
// position 0 sways a pick less than a shift of every position does, so those are searched for).
TEST(MultipleChoice, FirstTokenGoesBeforeEveryContextAndSurvivesTheCut_maxT9) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 3, 9), ref(small_config(), *be, 1, 9);
    upload_same_random_weights(*be, m, ref, 7);
    const int32_t first = 36;
    Rng r(8);
    auto example = [&](int n, ChoiceExample* led) {  // led: the example as the scorer should see it
        ChoiceExample ex;
        for (int k = 0; k < n; k++) ex.context.push_back((int32_t)r.below(36));
        size_t longest = 0;
        for (int e = 0; e < 3; e++) {
            std::vector<int32_t> end;
            for (int k = 0; k < 1 + (int)r.below(4); k++) end.push_back((int32_t)r.below(36));
            longest = std::max(longest, end.size());
            ex.endings.push_back(end);
        }
        *led = ex;
        const size_t keep = std::min(ex.context.size(), 9 + 1 - longest - 1);
        led->context.assign(ex.context.end() - keep, ex.context.end());
        led->context.insert(led->context.begin(), first);
        ex.label = led->label = reference_choice(ref, *led).first;
        return ex;
    };
    std::vector<ChoiceExample> exs;
    size_t differ = 0, cut = 0;
    for (int i = 0; i < 80; i++) {
        ChoiceExample led;
        exs.push_back(example(2 + (int)r.below(3), &led));
        differ += exs.back().label != reference_choice(ref, exs.back()).first;
    }
    for (int tries = 0; tries < 3000 && cut < 4; tries++) {
        ChoiceExample led;
        ChoiceExample ex = example(12, &led);
        ChoiceExample dropped = led;
        dropped.context.front() = ex.context[ex.context.size() - dropped.context.size()];
        if (reference_choice(ref, dropped).first == ex.label) continue;
        exs.push_back(ex);
        cut++;
    }
    EXPECT_GT(differ, 0u) << "the first token changes no pick of a short context: this tests nothing";
    ASSERT_GT(cut, 0u) << "no cut context whose pick the first token changes: this tests nothing";
    const ChoiceResult with = eval_multiple_choice(m, exs, nullptr, first);
    EXPECT_EQ(with.acc(), 1.0);
    EXPECT_EQ(with.contexts_cut, cut);
    EXPECT_LT(eval_multiple_choice(m, exs).acc(), 1.0);
}

TEST(MultipleChoice, FileErrorsNameTheLine) {
    TempDir tmp("mc");
    const std::string d = tmp.path();
    Tokenizer tok = Tokenizer::load("data/gpt2");
    spit(d + "/a.jsonl", "{\"context\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":0}\n{\"context\":\"x\"}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/a.jsonl"); }), HasSubstr("a.jsonl:2"));
    spit(d + "/b.jsonl", "{\"context\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":2}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/b.jsonl"); }), HasSubstr("\"label\" 2 is not the index of an ending (0 to 1)"));
    spit(d + "/big.jsonl", "{\"context\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":4294967296}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/big.jsonl"); }), HasSubstr("\"label\" 4294967296 is not the index"));
    spit(d + "/ctx.jsonl", "{\"context\":5,\"endings\":[\"sat\",\"flew\"],\"label\":0}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/ctx.jsonl"); }), HasSubstr("ctx.jsonl:1: \"context\" is 5, expected a string"));
    spit(d + "/end.jsonl", "{\"context\":\"A cat\",\"endings\":[\"sat\",\"\"],\"label\":0}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/end.jsonl"); }), HasSubstr("ending 1 is \"\", expected a non-empty string"));
    spit(d + "/c.jsonl", "{\"context\":\"A cat\",\"endings\":[\"sat\",\" flew\"],\"label\":1}\n");
    auto ex = read_choice_file(tok, d + "/c.jsonl");
    EXPECT_EQ(ex[0].endings[0], tok.encode(" sat"));  // joined with a space
    EXPECT_EQ(ex[0].endings[1], tok.encode(" flew"));
    // A context ending in whitespace gives it to the endings: " mat" is GPT-2's one token for the word, and the
    // context and ending together are the tokens of the whole sentence, not "the", " ", "mat".
    spit(d + "/ws.jsonl", "{\"context\":\"The cat sat on the \",\"endings\":[\"mat\",\"floor\"],\"label\":0}\n");
    ex = read_choice_file(tok, d + "/ws.jsonl");
    EXPECT_EQ(ex[0].context, tok.encode("The cat sat on the"));
    EXPECT_EQ(ex[0].endings[0], tok.encode(" mat"));
    std::vector<int32_t> whole = ex[0].context;
    whole.insert(whole.end(), ex[0].endings[1].begin(), ex[0].endings[1].end());
    EXPECT_EQ(whole, tok.encode("The cat sat on the floor"));
    // HellaSwag's own lines (context in "ctx", other fields beside) read as they come.
    spit(d + "/hs.jsonl", "{\"ind\": 24, \"ctx_a\": \"A man\", \"ctx\": \"A man is sitting\", \"endings\": [\"on a roof.\", "
                          "\"in a tree.\", \"on a horse.\", \"down.\"], \"label\": 3}\n");
    ex = read_choice_file(tok, d + "/hs.jsonl");
    ASSERT_EQ(ex.size(), 1u);
    EXPECT_EQ(ex[0].context, tok.encode("A man is sitting"));
    EXPECT_EQ(ex[0].endings[3], tok.encode(" down."));
    EXPECT_EQ(ex[0].label, 3);
    // The Hugging Face hub's HellaSwag gives the label as a string.
    spit(d + "/s.jsonl", "{\"ctx\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":\"1\"}\n");
    EXPECT_EQ(read_choice_file(tok, d + "/s.jsonl")[0].label, 1);
    spit(d + "/s2.jsonl", "{\"ctx\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":\"one\"}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/s2.jsonl"); }),
                HasSubstr("s2.jsonl:1: \"label\" is \"one\", not an integer"));
    for (const char* loose : {"\" 0\"", "\"+1\""}) {  // strtol would take these; a label is digits
        spit(d + "/s3.jsonl",
             std::string("{\"ctx\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":") + loose + "}\n");
        EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/s3.jsonl"); }), HasSubstr("not an integer")) << loose;
    }
    spit(d + "/none.jsonl", "{\"endings\":[\"sat\",\"flew\"],\"label\":0}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/none.jsonl"); }),
                HasSubstr("none.jsonl:1: missing string \"context\" (or HellaSwag's \"ctx\")"));
    // The parser's reason, as bin/prepare gives it.
    spit(d + "/num.jsonl", "{\"ctx\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":1e999}\n");
    EXPECT_THAT(error_of([&] { read_choice_file(tok, d + "/num.jsonl"); }),
                HasSubstr("num.jsonl:1: not valid JSON: number overflow parsing '1e999'"));
    // A JSON array of examples (bin/prepare reads those) is named as one, not shown whole in the message; a long
    // value that is shown is cut short.
    std::string array = "\n[";
    for (int i = 0; i < 2000; i++) array += "{\"ctx\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":1},";
    spit(d + "/arr.json", array + "{}]\n");
    const std::string arr = error_of([&] { read_choice_file(tok, d + "/arr.json"); });
    EXPECT_THAT(arr, HasSubstr("arr.json: opens a JSON array, and --choices reads JSONL, one object a line"));
    EXPECT_LT(arr.size(), 400u + 2 * d.size()) << arr.substr(0, 400);
    spit(d + "/long.jsonl",
         "{\"ctx\":\"A cat\",\"endings\":[\"sat\",\"flew\"],\"label\":\"" + std::string(5000, '7') + "x\"}\n");
    const std::string longer = error_of([&] { read_choice_file(tok, d + "/long.jsonl"); });
    EXPECT_THAT(longer, HasSubstr("... (5003 bytes), not an integer"));
    EXPECT_LT(longer.size(), 400u + 2 * d.size());
}

TEST(EvalLoss, EqualsTheMeanTokenLossAndItsExp) {
    TempDir tmp("evloss");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    for (int i = 0; i < 200; i++) t.push_back((i * 7) % 37);
    write_shard(d + "/v.bin", t, nullptr, 37);
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 2, 8);
    m.init_random(2);
    Loader l({d + "/v.bin"}, 37, 2, 8, false, 0);
    LossResult r = eval_loss(m, l, 3);
    // Recompute the same three batches by hand.
    Loader l2({d + "/v.bin"}, 37, 2, 8, false, 0);
    double s = 0;
    for (int i = 0; i < 3; i++) {
        Batch b = l2.next();
        m.forward(b.inputs.data(), 2, 8);
        s += m.loss(b.targets.data(), b.weights.data(), 0, false);
    }
    EXPECT_EQ(r.tokens, 48u);
    EXPECT_NEAR(r.loss, s / 48, 1e-12);
    EXPECT_NEAR(r.perplexity, std::exp(s / 48), 1e-9);
}

// One pass covers every window once: the last batch is smaller when B does not divide the windows, and
// asking for more batches than a pass holds stops at the end of the pass instead of counting tokens again.
TEST(EvalLoss, OnePassCountsEveryTargetOnce_25windows_B5_T8) {
    TempDir tmp("evpass");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    for (int i = 0; i < 200; i++) t.push_back((i * 11) % 37);  // windows at 0, 8, ..., 184 and the tail at 191
    write_shard(d + "/v.bin", t, nullptr, 37);
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 5, 8);
    m.init_random(2);
    Loader l5({d + "/v.bin"}, 37, 5, 8, false, 0), l1({d + "/v.bin"}, 37, 1, 8, false, 0);
    const LossResult by5 = eval_loss(m, l5, 0), by1 = eval_loss(m, l1, 0);
    EXPECT_EQ(by5.tokens, 199u);  // every target once: 24 windows of 8 and the tail's last 7
    EXPECT_EQ(by5.batches, 5u);
    EXPECT_EQ(by5.pass_batches, 5u);
    EXPECT_EQ(by1.tokens, 199u);
    EXPECT_EQ(by1.batches, 25u);
    EXPECT_NEAR(by5.loss, by1.loss, 1e-12);
    const LossResult more = eval_loss(m, l5, 1000);
    EXPECT_EQ(more.tokens, 199u);
    EXPECT_EQ(more.batches, 5u);
    EXPECT_NEAR(more.loss, by5.loss, 1e-12);
    const LossResult two = eval_loss(m, l5, 2);
    EXPECT_EQ(two.tokens, 10u * 8);
    EXPECT_EQ(two.batches, 2u);
    EXPECT_EQ(two.pass_batches, 5u);
}

TEST(EvalLoss, LastPartialBatchCountsOnlyMaskedTargets) {
    TempDir tmp("evmask");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    std::vector<uint8_t> mask;
    for (int i = 0; i < 50; i++) {
        t.push_back((i * 5) % 37);
        mask.push_back(i % 3 != 0);
    }
    write_shard(d + "/v.bin", t, &mask, 37);
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 4, 7);
    m.init_random(3);
    Loader l({d + "/v.bin"}, 37, 4, 7, false, 0);  // windows at 0, 7, ..., 42: 7 of them, batches of 4 + 3
    const LossResult r = eval_loss(m, l, 0);
    size_t want = 0;
    for (int w = 0; w < 7; w++)
        for (int k = 1; k <= 7; k++) want += mask[(size_t)w * 7 + k];
    EXPECT_EQ(r.tokens, want);
    EXPECT_EQ(r.batches, 2u);
    EXPECT_TRUE(std::isfinite(r.loss));
}

// A random tiny GPT-2 (seed 1) saved as a checkpoint, for the tools to load.
void save_tiny_model(const std::string& path) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(preset_config("tiny"), *be, 1, 1);
    m.init_random(1);
    save_checkpoint(path, m, nullptr, nullptr);
}

TEST(EvaluateCli, BatchesStopAtOnePassAndSaySo) {
    TempDir tmp("evcli");
    const std::string d = tmp.path();
    save_tiny_model(d + "/m.ckpt");
    std::vector<int32_t> t;
    for (int i = 0; i < 474; i++) t.push_back((i * 13) % 1000);  // 14 windows of 33 every 32 tokens and a tail
    write_shard(d + "/v.bin", t, nullptr, 50257);
    const std::string ev = "bin/evaluate --device cpu --model " + d + "/m.ckpt --data " + d + "/v.bin --seq 32 ";
    CmdResult many = run_cmd(ev + "--batch 4 --batches 1000");
    EXPECT_EQ(many.rc, 0) << many.out;
    EXPECT_THAT(many.out, HasSubstr("| 473 tokens (one pass: 4 batches, fewer than the 1000 asked)"));
    CmdResult pass4 = run_cmd(ev + "--batch 4");
    EXPECT_THAT(pass4.out, HasSubstr("| 473 tokens (one pass: 4 batches)"));
    CmdResult pass1 = run_cmd(ev + "--batch 1");
    EXPECT_THAT(pass1.out, HasSubstr("| 473 tokens (one pass: 15 batches)"));
    CmdResult two = run_cmd(ev + "--batch 4 --batches 2");
    EXPECT_THAT(two.out, HasSubstr("| 256 tokens (2 of the 4 batches of a pass)"));
    // The rows are the windows there are, at most: --batch 65536 over 15 windows is one batch of 15, not the
    // memory of 65536 rows (hundreds of GiB: it failed).
    CmdResult wide = run_cmd(ev + "--batch 65536");
    EXPECT_EQ(wide.rc, 0) << wide.out;
    EXPECT_THAT(wide.out, HasSubstr("| 473 tokens (one pass: 1 batch)"));
    EXPECT_EQ(wide.out.substr(0, 12), pass1.out.substr(0, 12)) << "the same loss:\n" << wide.out << pass1.out;
    // Paths named on the command line that are not there, or not files, are usage errors (2), as in every tool.
    CmdResult dir = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --data " + d);
    EXPECT_EQ(dir.rc, 2) << dir.out;
    EXPECT_THAT(dir.out, HasSubstr("--data: " + d + ": is a directory, not a file"));
    CmdResult choices = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices " + d);
    EXPECT_EQ(choices.rc, 2) << choices.out;
    EXPECT_THAT(choices.out, HasSubstr("--choices: " + d + ": is a directory, not a file"));
    CmdResult none =
        run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --data " + d + "/v.bin," + d + "/w.bin");
    EXPECT_EQ(none.rc, 2) << none.out;
    EXPECT_THAT(none.out, HasSubstr("--data: no such file or directory: " + d + "/w.bin"));
    CmdResult comma = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --data ,");
    EXPECT_EQ(comma.rc, 2) << comma.out;
    EXPECT_THAT(comma.out, HasSubstr("--data ',': file 1 of the list is empty (an unset variable?"));
    CmdResult trailing = run_cmd(ev + "--data " + d + "/v.bin,");  // "$A,$B" with B unset: not one file fewer
    EXPECT_EQ(trailing.rc, 2) << trailing.out;
    EXPECT_THAT(trailing.out, HasSubstr("file 2 of the list is empty"));
    // Options of the loss pass without --data would do nothing: refused, as --windows is.
    spit(d + "/ch.jsonl", "{\"context\": \"a\", \"endings\": [\"p\", \"q\"], \"label\": 0}\n");
    CmdResult piped = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices - < " + d + "/ch.jsonl");
    EXPECT_EQ(piped.rc, 0) << piped.out;
    EXPECT_THAT(piped.out, HasSubstr("multiple choice: 1 example |"));
    CmdResult closed = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices - <&-");
    EXPECT_EQ(closed.rc, 2) << closed.out;
    EXPECT_THAT(closed.out, HasSubstr("--choices -: standard input is closed"));
    for (const char* flag : {"--seq 64", "--batch 2", "--batches 3"}) {
        CmdResult idle =
            run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices " + d + "/ch.jsonl " + flag);
        EXPECT_EQ(idle.rc, 2) << idle.out;
        EXPECT_THAT(idle.out, HasSubstr(std::string(flag).substr(0, std::string(flag).find(' ')) +
                                        " has no effect without --data"));
    }
    CmdResult twice = run_cmd(ev + "--data " + d + "/v.bin");
    EXPECT_EQ(twice.rc, 0) << twice.out;
    EXPECT_THAT(twice.out, HasSubstr("note: --data given twice: the later list replaces the earlier"));
    // An example whose endings cannot be scored at once (one sequence each, at the model's 256 positions: some
    // TiB here) is named by its line, without the backend's advice to shrink --batch, which plays no part.
    {
        std::string endings;
        for (int i = 0; i < 70000; i++) endings += (i ? ",\"x" : "\"x") + std::to_string(i) + "\"";
        spit(d + "/wide.jsonl", "{\"context\": \"a\", \"endings\": [\"p\", \"q\"], \"label\": 0}\n"
                                "{\"context\": \"a\", \"endings\": [" + endings + "], \"label\": 1}\n");
        CmdResult wide = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices " + d + "/wide.jsonl");
        EXPECT_EQ(wide.rc, 1) << wide.out;
        EXPECT_THAT(wide.out, HasSubstr(d + "/wide.jsonl:2: 70000 endings, scored at once as 70000 sequences, more "
                                        "than fit (cpu backend: "));
        EXPECT_THAT(wide.out, ::testing::Not(HasSubstr("--batch")));
    }
    // Scores that cannot be written (a full disk) are a failure, not a silent success.
    if (std::filesystem::exists("/dev/full")) {
        CmdResult full = run_cmd("{ " + ev + ">/dev/full; }");
        EXPECT_EQ(full.rc, 1) << full.out;
        EXPECT_THAT(full.out, HasSubstr("evaluate: error: cannot write standard output"));
    }
}

// What only the model can check of --choices (ids below its vocabulary) is checked before the loss pass, which
// may take an hour, not after it; and a model whose forward pass overflows gives an error, not "loss nan" or an
// accuracy made of comparisons with NaN (exit 0).
TEST(EvaluateCli, ChoicesAreCheckedBeforeTheLossPassAndANonFiniteLossIsAnError) {
    TempDir tmp("evcheck");
    const std::string d = tmp.path();
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);  // V=37: GPT-2's ids of the choices are beyond it
    m.init_random(1);
    save_checkpoint(d + "/m.ckpt", m, nullptr, nullptr);
    std::vector<int32_t> t;
    for (int i = 0; i < 200; i++) t.push_back((i * 7) % 37);
    write_shard(d + "/v.bin", t, nullptr, 37);
    spit(d + "/ch.jsonl", "{\"context\": \"the cat\", \"endings\": [\"sat\", \"ran\"], \"label\": 0}\n");
    const std::string ev = "bin/evaluate --device cpu --model " + d + "/m.ckpt --seq 16 ";
    CmdResult both = run_cmd(ev + "--data " + d + "/v.bin --choices " + d + "/ch.jsonl");
    EXPECT_EQ(both.rc, 1) << both.out;
    EXPECT_THAT(both.out, HasSubstr(d + "/ch.jsonl:1: context token 0 has id"));
    EXPECT_THAT(both.out, Not(HasSubstr("loss "))) << "the loss pass ran before the check";
    // ln_f's gain at 3e38: the logits overflow to Inf, their softmax to NaN.
    const Table& tab = m.params().table();
    for (size_t i = 0; i < tab.size(); i++)
        if (tab[i].name == "ln_f.weight") {
            std::vector<float> huge(tab[i].numel, 3e38f);
            be->upload(m.params().ptr(i), DType::f32, huge.data(), huge.size());
        }
    save_checkpoint(d + "/inf.ckpt", m, nullptr, nullptr);
    CmdResult loss = run_cmd("bin/evaluate --device cpu --model " + d + "/inf.ckpt --seq 16 --data " + d + "/v.bin");
    EXPECT_EQ(loss.rc, 1) << loss.out;
    EXPECT_THAT(loss.out, HasSubstr("the loss over --data is not finite"));
    EXPECT_THAT(loss.out, Not(HasSubstr("perplexity")));
    const std::vector<int32_t> ctx = {3, 4, 5};
    ChoiceExample ex{ctx, {{6}, {7, 8}}, 1, "x.jsonl:1"};
    GPT2 two(small_config(37, 2, 3, 24, 16), *be, 2, 16);
    load_checkpoint(d + "/inf.ckpt", two, nullptr, nullptr);
    EXPECT_THAT(error_of([&] { eval_multiple_choice(two, {ex}); }),
                HasSubstr("x.jsonl:1: the loss of ending 0 is not finite"));
    // bin/generate on such a model: an error, and the text streamed before it ends its line.
    GPT2 tiny(preset_config("tiny"), *be, 1, 1);
    tiny.init_random(1);
    for (size_t i = 0; i < tiny.params().table().size(); i++)
        if (tiny.params().table()[i].name == "ln_f.weight") {
            std::vector<float> huge(tiny.params().table()[i].numel, 3e38f);
            be->upload(tiny.params().ptr(i), DType::f32, huge.data(), huge.size());
        }
    save_checkpoint(d + "/tiny_inf.ckpt", tiny, nullptr, nullptr);
    CmdResult gen = run_cmd("bin/generate --device cpu --model " + d + "/tiny_inf.ckpt --prompt 'Once' --max-new 3 "
                            "--no-eot-first");
    EXPECT_EQ(gen.rc, 1) << gen.out;
    EXPECT_EQ(gen.out.rfind("Once\ngenerate: error: the logits hold", 0), 0u) << gen.out;
    EXPECT_THAT(gen.out, HasSubstr("the model's forward pass overflowed"));
}

// Virtual tokens take positions of the model's context: the default --seq shrinks to what is left (saying so),
// and an explicit --seq beyond it is a usage error instead of a failed assertion.
TEST(EvaluateCli, SeqLeavesRoomForVirtualTokens_block256_P8) {
    TempDir tmp("evvirt");
    const std::string d = tmp.path();
    auto be = make_cpu_backend(DType::f32);
    ModelOptions o;
    o.peft.virt = Virtual::prompt;
    o.peft.n_virtual = 8;
    GPT2 m(preset_config("tiny"), *be, 1, 1, nullptr, o);
    m.init_random(1);
    m.init_peft(1, {});
    save_checkpoint(d + "/m.ckpt", m, nullptr, nullptr);
    std::vector<int32_t> t;
    for (int i = 0; i < 1000; i++) t.push_back((i * 13) % 1000);
    write_shard(d + "/v.bin", t, nullptr, 50257);
    const std::string ev = "bin/evaluate --device cpu --model " + d + "/m.ckpt --data " + d + "/v.bin ";
    CmdResult def = run_cmd(ev);
    EXPECT_EQ(def.rc, 0) << def.out;
    EXPECT_THAT(def.out, HasSubstr("note: --seq 248, the model's context of 248 tokens (block size 256 less 8 "
                                   "virtual tokens)"));
    EXPECT_THAT(def.out, HasSubstr("| 999 tokens (one pass"));
    CmdResult over = run_cmd(ev + "--seq 249");
    EXPECT_EQ(over.rc, 2) << over.out;
    EXPECT_THAT(over.out, HasSubstr("--seq: 249 is above the model's context of 248 tokens"));
    EXPECT_EQ(run_cmd(ev + "--seq 248").rc, 0);
}

// A validation split shorter than one window is evaluated whole, padded: the same loss over the same targets
// as a window that fits it exactly, and a note says so.
TEST(EvaluateCli, ShardShorterThanAWindowIsPaddedAndCountsTheSame_n40_T39_T100) {
    TempDir tmp("evshort");
    const std::string d = tmp.path();
    save_tiny_model(d + "/m.ckpt");
    std::vector<int32_t> t;
    for (int i = 0; i < 40; i++) t.push_back((i * 37) % 1000);
    write_shard(d + "/v.bin", t, nullptr, 50257);
    const std::string ev = "bin/evaluate --device cpu --model " + d + "/m.ckpt --data " + d + "/v.bin ";
    CmdResult exact = run_cmd(ev + "--seq 39");
    CmdResult padded = run_cmd(ev + "--seq 100");
    ASSERT_EQ(exact.rc, 0) << exact.out;
    ASSERT_EQ(padded.rc, 0) << padded.out;
    EXPECT_THAT(exact.out, Not(HasSubstr("padded")));
    EXPECT_THAT(padded.out, HasSubstr("v.bin: 40 tokens, shorter than one window of T+1 = 101: one window, padded"));
    // The same targets, counted the same; the sums agree to float rounding only, since BLAS may order a row's
    // products differently for another number of rows (padding one target in would move the loss by ~1/39).
    // Perplexity, printed with more digits than the loss: a relative 1e-6 in it is 1e-6 in the mean loss.
    const auto ppl = [](const std::string& out) { return std::stod(out.substr(out.find("perplexity ") + 11)); };
    EXPECT_NEAR(ppl(padded.out), ppl(exact.out), 1e-6 * ppl(exact.out)) << padded.out << exact.out;
    EXPECT_THAT(exact.out, HasSubstr("| 39 tokens (one pass"));
    EXPECT_THAT(padded.out, HasSubstr("| 39 tokens (one pass"));
}

TEST(GenerateEvaluateCli, RunOnASavedModel) {
    TempDir tmp("gencli");
    const std::string d = tmp.path();
    save_tiny_model(d + "/m.ckpt");
    CmdResult g = run_cmd("bin/generate --device cpu --model " + d + "/m.ckpt --prompt 'Once upon' --max-new 5 --seed 3");
    EXPECT_EQ(g.rc, 0) << g.out;
    EXPECT_THAT(g.out, HasSubstr("Once upon"));
    CmdResult g2 = run_cmd("bin/generate --device cpu --model " + d + "/m.ckpt --prompt 'Once upon' --max-new 5 --seed 3");
    EXPECT_EQ(g.out, g2.out);  // same seed, same text
    spit(d + "/mc.jsonl", "{\"context\":\"The sky is\",\"endings\":[\"blue\",\"a fish\",\"loud\"],\"label\":0}\n");
    CmdResult e = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices " + d + "/mc.jsonl");
    EXPECT_EQ(e.rc, 0) << e.out;
    EXPECT_THAT(e.out, HasSubstr("multiple choice: 1 example | acc"));
    EXPECT_EQ(run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt").rc, 2);
    // A bad --choices file stops the tool before the (possibly long) loss pass over --data.
    write_shard(d + "/v.bin", std::vector<int32_t>(600, 11), nullptr, 50257);
    spit(d + "/bad.jsonl", "{broken\n");
    CmdResult early = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --data " + d + "/v.bin --choices " +
                              d + "/bad.jsonl");
    EXPECT_EQ(early.rc, 1) << early.out;
    EXPECT_THAT(early.out, HasSubstr("bad.jsonl:1: not valid JSON"));
    EXPECT_THAT(early.out, Not(HasSubstr("perplexity")));
    for (const char* tool : {"bin/evaluate --choices", "bin/generate --prompt-file"}) {  // not taken for cuda
        CmdResult bad = run_cmd(std::string(tool) + " " + d + "/mc.jsonl --device CPU --model " + d + "/m.ckpt");
        EXPECT_EQ(bad.rc, 2) << tool << ": " << bad.out;
        EXPECT_THAT(bad.out, HasSubstr("--device: expected one of cpu, cuda, auto, got 'CPU'")) << tool;
    }
    // A context longer than the model's (256 positions) loses its start, and the tool says so; an ending that
    // leaves no room is named with its line.
    std::string words;
    for (int i = 0; i < 300; i++) words += " word";
    spit(d + "/long.jsonl", "{\"context\":\"" + words + "\",\"endings\":[\"blue\",\"a fish\"],\"label\":0}\n"
                            "{\"context\":\"The sky is\",\"endings\":[\"blue\",\"a fish\"],\"label\":0}\n");
    CmdResult cut = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices " + d + "/long.jsonl");
    EXPECT_EQ(cut.rc, 0) << cut.out;
    EXPECT_THAT(cut.out, HasSubstr("note: 1 of 2 contexts were longer than the model's context of 256 positions"));
    // --data and --choices together load the model once, sized for the loss windows (4 x 32), then re-sized for the
    // choices (2 endings x 256 positions): each line is the one the flag gives alone.
    const std::string ev = "bin/evaluate --device cpu --model " + d + "/m.ckpt ";
    CmdResult data_alone = run_cmd(ev + "--data " + d + "/v.bin --seq 32");
    CmdResult both = run_cmd(ev + "--data " + d + "/v.bin --seq 32 --choices " + d + "/long.jsonl");
    EXPECT_EQ(data_alone.rc, 0) << data_alone.out;
    EXPECT_EQ(both.rc, 0) << both.out;
    const auto line = [](const std::string& output, const std::string& start) {  // the line that starts so
        const std::string out = "\n" + output;
        const size_t at = out.find("\n" + start);
        return at == std::string::npos ? std::string("(none)") : out.substr(at + 1, out.find('\n', at + 1) - at - 1);
    };
    EXPECT_EQ(line(both.out, "loss "), line(data_alone.out, "loss ")) << both.out;
    EXPECT_NE(line(both.out, "loss "), "(none)");
    EXPECT_EQ(line(both.out, "multiple choice: "), line(cut.out, "multiple choice: ")) << both.out;
    EXPECT_NE(line(both.out, "multiple choice: "), "(none)");
    EXPECT_THAT(both.out, HasSubstr("note: 1 of 2 contexts were longer than the model's context of 256 positions"));
    spit(d + "/end.jsonl", "{\"context\":\"The sky is\",\"endings\":[\"blue\",\"" + words + "\"],\"label\":0}\n");
    CmdResult end = run_cmd("bin/evaluate --device cpu --model " + d + "/m.ckpt --choices " + d + "/end.jsonl");
    EXPECT_EQ(end.rc, 1) << end.out;
    EXPECT_THAT(end.out, HasSubstr("end.jsonl:1: an ending of 300 tokens leaves no room for the context in the "
                                   "model's 256 positions"));
    EXPECT_EQ(run_cmd("bin/generate --prompt hi").rc, 2);
}

}  // namespace
}  // namespace tune::test
