// Which parameters train: selection by top-k blocks and by name pattern, frozen tensors byte-identical after
// training with no gradient or optimizer memory, and discriminative learning rates per block.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "data/shard.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/select.h"
#include "train/trainer.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> trainable_names(const ModelConfig& c, const Trainable& t) {
    std::vector<std::string> out;
    Table tab = gpt2_param_table(c);
    for (size_t i = 0; i < tab.size(); i++)
        if (t.tensor[i]) out.push_back(tab[i].name);
    return out;
}

TEST(Select, TopKBlocksPlusFinalLayerNorm) {
    const ModelConfig c = small_config(37, 3);
    auto names = trainable_names(c, select_trainable(c, 1, ""));
    ASSERT_EQ(names.size(), (size_t)kTensorsPerBlock + 2);
    for (const auto& n : names) EXPECT_TRUE(n.rfind("h.2.", 0) == 0 || n.rfind("ln_f.", 0) == 0) << n;
    EXPECT_EQ(trainable_names(c, select_trainable(c, 0, "")).size(), gpt2_param_table(c).size());
}

TEST(Select, NamePatternsAndTheirErrors) {
    const ModelConfig c = small_config(37, 3);
    auto names = trainable_names(c, select_trainable(c, 0, "h.0.attn.*,ln_f.bias"));
    EXPECT_EQ(names, (std::vector<std::string>{"h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias",
                                               "h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "ln_f.bias"}));
    EXPECT_THAT(error_of([&] { select_trainable(c, 0, "h.9.*"); }), HasSubstr("'h.9.*' matches no parameter"));
    EXPECT_THAT(error_of([&] { select_trainable(c, 1, "wte"); }), HasSubstr("give one, not both"));
    EXPECT_THAT(error_of([&] { select_trainable(c, 4, ""); }), HasSubstr("more than the model's 3 blocks"));
}

TEST(Select, FrozenParametersAreByteIdenticalAfterTraining) {
    TempDir tmp("select");
    std::vector<int32_t> toks;
    for (int i = 0; i < 2000; i++) toks.push_back((i * 11) % 37);
    write_shard(tmp.file("t.bin"), toks, nullptr, 37);
    auto be = make_cpu_backend(DType::f32);
    const ModelConfig c = small_config(37, 3, 3, 24, 16);
    {
        GPT2 m(c, *be, 1, 1);
        m.init_random(5);
        save_checkpoint(tmp.file("init.ckpt"), m, nullptr, nullptr);
    }
    TrainArgs a;
    a.device = "cpu";
    a.init = tmp.file("init.ckpt");
    a.train_data = {tmp.file("t.bin")};
    a.batch = 2;
    a.seq = 12;
    a.steps = 5;
    a.train_top = 1;
    a.lr_layer_factor = 0.5f;
    a.sched.lr = 1e-2f;
    a.val_every = 0;
    a.quiet = true;
    a.out_dir = tmp.file("run");
    Trainer t(a);
    EXPECT_LT(t.model().grad_bytes(), t.model().param_bytes() / 3);  // gradients only for the top block
    ASSERT_EQ(t.run(), 0);
    GPT2 before(c, *be, 1, 1), after(c, *be, 1, 1);
    load_checkpoint(tmp.file("init.ckpt"), before, nullptr, nullptr);
    load_checkpoint(tmp.file("run/model.ckpt"), after, nullptr, nullptr);
    const Table& tab = before.params().table();
    for (size_t i = 0; i < tab.size(); i++) {
        const bool trains = tab[i].name.rfind("h.2.", 0) == 0 || tab[i].name.rfind("ln_f.", 0) == 0;
        auto x = get_tensor(before, before.params(), i), y = get_tensor(after, after.params(), i);
        if (trains)
            EXPECT_NE(x, y) << tab[i].name << " should have trained";
        else
            EXPECT_EQ(x, y) << tab[i].name << " is frozen";
    }
}

TEST(Select, DiscriminativeRatesFallByTheFactorPerBlock) {
    auto be = make_cpu_backend(DType::f32);
    const ModelConfig c = small_config(37, 3);
    GPT2 m(c, *be, 1, 2);
    AdamW opt(m, AdamWConfig{});
    apply_discriminative_lr(m, opt, 0.5f);
    const Table& g = m.grads().table();
    for (size_t i = 0; i < g.size(); i++) {
        const std::string& n = g[i].name;
        const float want = n == "wte" || n == "wpe"          ? 0.125f   // factor^L
                           : n.rfind("ln_f.", 0) == 0         ? 1.0f
                           : n.rfind("h.0.", 0) == 0          ? 0.25f
                           : n.rfind("h.1.", 0) == 0          ? 0.5f
                                                              : 1.0f;  // h.2
        EXPECT_FLOAT_EQ(opt.segments()[i].lr_scale, want) << n;
    }
}

}  // namespace
}  // namespace tune::test
