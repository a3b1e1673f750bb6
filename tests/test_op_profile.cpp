// The op profile (kernels/op_profile.h): layer numbers folded, times summed per (ranges, op) and sorted, the table
// and JSON bin/train writes, and the CPU backend's profile of a model step. The CUDA backend's is in
// test_cuda_model.cpp, and bin/train --profile-step in test_cli_train.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kernels/op_profile.h"
#include "tests/model_util.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

TEST(OpProfile, FoldLayerDropsTheLayerNumberOnly) {
    EXPECT_EQ(fold_layer("layer 7 / forward"), "layers / forward");
    EXPECT_EQ(fold_layer("layer 12 / backward"), "layers / backward");
    EXPECT_EQ(fold_layer("layer 0"), "layers");
    EXPECT_EQ(fold_layer("layer norm"), "layer norm");
    EXPECT_EQ(fold_layer("head / loss"), "head / loss");
    EXPECT_EQ(fold_layer("player 3"), "player 3");
    EXPECT_EQ(fold_layer(""), "");
}

TEST(OpProfile, NestedRangesAreJoinedAndPopsBalance) {
    OpProfile p;
    EXPECT_EQ(p.where(), "");
    p.push("teacher");
    p.push("layer 3 / forward");
    EXPECT_EQ(p.where(), "teacher / layers / forward");
    p.pop();
    EXPECT_EQ(p.where(), "teacher");
    p.pop();
    p.pop();  // nothing open: does nothing
    EXPECT_EQ(p.where(), "");
    p.push("optimizer");
    EXPECT_EQ(p.where(), "optimizer");
}

TEST(OpProfile, TimesAddUpPerRangeAndOpLargestFirst) {
    OpProfile p;
    p.add("layers / forward", "matmul_forward", 1.5);
    p.add("head / forward", "matmul_forward", 4.0);
    p.add("layers / forward", "matmul_forward", 2.0);
    p.add("layers / forward", "gelu_forward", 0.25);
    p.add("optimizer", "adamw_update", 3.5);  // ties the layers' 3.5: first seen stays first
    const std::vector<OpTime> t = p.table();
    ASSERT_EQ(t.size(), 4u);
    EXPECT_EQ(t[0].where, "head / forward");
    EXPECT_EQ(t[1].where, "layers / forward");
    EXPECT_EQ(t[1].op, "matmul_forward");
    EXPECT_EQ(t[1].calls, 2);
    EXPECT_DOUBLE_EQ(t[1].ms, 3.5);
    EXPECT_EQ(t[2].op, "adamw_update");
    EXPECT_EQ(t[3].op, "gelu_forward");
    EXPECT_EQ(t[3].calls, 1);
    p.clear_times();
    EXPECT_TRUE(p.table().empty());
}

TEST(OpProfile, TableShowsSharesFoldsTheRestAndSaysWhatNoOpCovers) {
    const std::vector<OpTime> rows = {{"layers / backward", "layernorm_backward", 24, 6.0},
                                      {"head / loss", "crossentropy_forward_backward", 4, 2.0},
                                      {"optimizer", "adamw_update", 1, 1.0},
                                      {"", "sum_squares", 1, 0.5}};
    const std::string s = format_profile(rows, 3, 10.0, "test clock", 2);
    EXPECT_THAT(s, HasSubstr("profile of step 3 (test clock): the step took 10.000 ms, its ops 9.500 ms (95.0%)"));
    EXPECT_THAT(s, HasSubstr("     6.000   60.0%     24  layers / backward · layernorm_backward\n"));
    EXPECT_THAT(s, HasSubstr("     2.000   20.0%      4  head / loss · crossentropy_forward_backward\n"));
    EXPECT_THAT(s, HasSubstr("     1.500   15.0%      2  the other 2 rows\n"));
    EXPECT_THAT(s, HasSubstr("     0.500    5.0%      -  in no op:"));
    EXPECT_THAT(s, ::testing::Not(HasSubstr("adamw_update")));
    // An op outside every range is named alone; ops on overlapping streams can add up past the step.
    const std::string over = format_profile(rows, 1, 9.0, "c", 10);
    EXPECT_THAT(over, HasSubstr("      1  sum_squares\n"));
    EXPECT_THAT(over, HasSubstr("    -0.500   -5.6%      -  ops on overlapping streams"));
}

TEST(OpProfile, JsonHoldsEveryRow) {
    const std::vector<OpTime> rows = {{"layers / forward", "matmul_forward", 48, 8.75}, {"", "sum_squares", 1, 0.5}};
    const nlohmann::json j = nlohmann::json::parse(profile_json(rows, 7, 12.5, "GPU time"));
    EXPECT_EQ(j.at("step"), 7);
    EXPECT_DOUBLE_EQ(j.at("step_ms").get<double>(), 12.5);
    EXPECT_EQ(j.at("clock"), "GPU time");
    ASSERT_EQ(j.at("ops").size(), 2u);
    EXPECT_EQ(j.at("ops")[0].at("where"), "layers / forward");
    EXPECT_EQ(j.at("ops")[0].at("op"), "matmul_forward");
    EXPECT_EQ(j.at("ops")[0].at("calls"), 48);
    EXPECT_DOUBLE_EQ(j.at("ops")[0].at("ms").get<double>(), 8.75);
    EXPECT_EQ(j.at("ops")[1].at("where"), "");
}

// The CPU backend times each op of a model step under the model's ranges; outside a profile it records nothing.
TEST(OpProfile, CpuBackendTimesEveryOpOfAModelStep_L3_C12) {
    auto be = make_cpu_backend(DType::f32);
    const int L = 3;
    GPT2 m(small_config(37, L), *be, 2, 7);
    m.init_random(5);
    const Data d = random_data(2, 7, 37, 9, false);
    mean_loss(m, d, true);  // not profiled
    be->profile_begin();
    EXPECT_TRUE(be->profile_end().empty());
    const ProfiledStep p = profiled_step(m, d);
    expect_model_step_profile(p, L);
    // The CPU has no fused ops: GELU's backward and the last block's LayerNorm (ln_f) are ops of their own.
    EXPECT_EQ(p.calls("layers / backward · matmul_backward"), 4 * L);
    EXPECT_EQ(p.calls("layers / backward · gelu_backward"), L);
    EXPECT_EQ(p.calls("layers / forward · layernorm_forward"), 2 * L + 1);
    EXPECT_EQ(p.calls("layers / forward · attention_forward"), L);
    EXPECT_EQ(p.calls("optimizer · adamw_update"), 0);  // no optimizer in a model step
    // A second profile starts from nothing.
    const ProfiledStep again = profiled_step(m, d);
    EXPECT_EQ(again.calls("layers / forward · matmul_forward"), 4 * L);
}

}  // namespace
}  // namespace tune::test
