// The fine-tuning methods through the training loop (CPU backend): what trains and what stays frozen, the
// checkpoints each method writes and how they load, gradual unfreezing, L2-SP/EWC penalties against their
// formulas, distillation with alpha = 0, replay, recomputation, and bit-exact resume with all of them on.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "data/safetensors.h"
#include "model/sampling.h"
#include "tests/trainer_util.h"
#include "train/fisher.h"
#include "train/select.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Methods = TrainerFixture;

// Logits of every position of one fixed batch.
std::vector<float> logits_of(GPT2& m) {
    const Data d = random_data(2, 10, 37, 99, false);
    m.forward(d.x.data(), d.B, d.T);
    std::vector<float> out;
    for (int b = 0; b < d.B; b++)
        for (int t = 0; t < d.T; t++) {
            auto r = m.logits_row(b, t);
            out.insert(out.end(), r.begin(), r.begin() + 37);
        }
    return out;
}

// What setting up a run (a Trainer constructed, nothing trained) says on stderr: its notes.
std::string notes_of(const TrainArgs& r) {
    testing::internal::CaptureStderr();
    testing::internal::CaptureStdout();
    { Trainer t(r); }
    testing::internal::GetCapturedStdout();
    return testing::internal::GetCapturedStderr();
}

TEST_F(Methods, LoraFreezesTheBaseWritesASmallAdapterAndMergesExactly) {
    TrainArgs a = args("lora");
    a.peft.lora_rank = 4;
    a.peft.lora_alpha = 8;
    a.peft.lora_dropout = 0.1f;
    a.sched.lr = 1e-2f;
    ASSERT_EQ(Trainer(a).run(), 0);
    const auto init = tensors_of(dir + "/init.ckpt"), after = tensors_of(a.out_dir + "/resume.ckpt");
    for (const auto& [name, v] : init) EXPECT_EQ(after.at(name), v) << name << " changed but the base is frozen";
    EXPECT_NE(after.at("h.0.attn.c_attn.lora_B"), std::vector<float>(after.at("h.0.attn.c_attn.lora_B").size(), 0.0f));
    // The adapter is a fraction of the model.
    EXPECT_LT(slurp(a.out_dir + "/adapter.ckpt").size() * 3, slurp(dir + "/init.ckpt").size());
    // Base + adapter == the merged model.ckpt (a plain GPT-2).
    EXPECT_FALSE(checkpoint_peft(a.out_dir + "/model.ckpt").any());
    LoadedModel with = load_model(dir + "/init.ckpt", "cpu", "fp32", 2, 10, a.out_dir + "/adapter.ckpt");
    LoadedModel merged = load_model(a.out_dir + "/model.ckpt", "cpu", "fp32", 2, 10);
    LoadedModel base = load_model(dir + "/init.ckpt", "cpu", "fp32", 2, 10);
    const auto lw = logits_of(*with.model), lm = logits_of(*merged.model), lb = logits_of(*base.model);
    EXPECT_TRUE(near_rel(lm, lw, 1e-5));
    EXPECT_FALSE(near_rel(lb, lw, 1e-3)) << "the adapter changed nothing";
    // bin/export merges the adapter into a Hugging Face checkpoint that reads back as the adapted model.
    CmdResult r = run_cmd("bin/export " + dir + "/init.ckpt --adapter " + a.out_dir + "/adapter.ckpt --hf " + dir + "/hf");
    ASSERT_EQ(r.rc, 0) << r.out;
    LoadedModel hf = load_model(dir + "/hf", "cpu", "fp32", 2, 10);
    EXPECT_TRUE(near_rel(logits_of(*hf.model), lw, 1e-5));
}

// LoRA with the top block trained too (--train-top 1): the adapter keeps that block's trained tensors, so
// base + adapter is still the merged model; and an adapter goes only on the base it was trained on: not on
// the merged model.ckpt (which holds it already) nor on other weights of the same shape.
TEST_F(Methods, LoraWithTrainedBaseBlockKeepsItInTheAdapterAndRefusesOtherBases) {
    TrainArgs a = args("lora_top");
    a.peft.lora_rank = 2;
    a.train_top = 1;
    a.sched.lr = 1e-2f;
    ASSERT_EQ(Trainer(a).run(), 0);
    const auto init = tensors_of(dir + "/init.ckpt"), after = tensors_of(a.out_dir + "/resume.ckpt");
    EXPECT_NE(after.at("h.1.mlp.c_fc.weight"), init.at("h.1.mlp.c_fc.weight")) << "the top block did not train";
    EXPECT_EQ(after.at("h.0.mlp.c_fc.weight"), init.at("h.0.mlp.c_fc.weight")) << "a frozen block trained";
    LoadedModel with = load_model(dir + "/init.ckpt", "cpu", "fp32", 2, 10, a.out_dir + "/adapter.ckpt");
    auto tensor = [&](const char* name) {
        const int i = with.model->params().table().find(name);
        std::vector<float> v(with.model->params().table()[i].numel);
        with.be->download(v.data(), with.model->params().ptr(i), DType::f32, v.size());
        return v;
    };
    EXPECT_EQ(tensor("h.1.mlp.c_fc.weight"), after.at("h.1.mlp.c_fc.weight"));
    EXPECT_EQ(tensor("h.0.mlp.c_fc.weight"), init.at("h.0.mlp.c_fc.weight"));
    LoadedModel merged = load_model(a.out_dir + "/model.ckpt", "cpu", "fp32", 2, 10);
    EXPECT_TRUE(near_rel(logits_of(*merged.model), logits_of(*with.model), 1e-5));
    try {
        load_model(a.out_dir + "/model.ckpt", "cpu", "fp32", 2, 10, a.out_dir + "/adapter.ckpt");
        FAIL() << "the adapter went onto the merged model, which holds it already";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("was trained on other base weights"));
    }
    auto be = make_cpu_backend(DType::f32);
    GPT2 other(small_config(37, 2, 3, 24, 16), *be, 1, 1);
    other.init_random(99);
    save_checkpoint(dir + "/other.ckpt", other, nullptr, nullptr);
    EXPECT_THROW(load_model(dir + "/other.ckpt", "cpu", "fp32", 2, 10, a.out_dir + "/adapter.ckpt"), Error);
    // A run that starts from that run's checkpoint (its LoRA and its trained block), training only LoRA now,
    // writes an adapter that still belongs on the original base: the fingerprint carries over, and so does the
    // block the first run trained (frozen here, but not the base's).
    TrainArgs b = args("lora_top_again");
    b.init = a.out_dir + "/resume.ckpt";
    b.peft.lora_rank = 2;
    b.sched.lr = 1e-2f;
    ASSERT_EQ(Trainer(b).run(), 0);
    LoadedModel again = load_model(dir + "/init.ckpt", "cpu", "fp32", 2, 10, b.out_dir + "/adapter.ckpt");
    LoadedModel again_merged = load_model(b.out_dir + "/model.ckpt", "cpu", "fp32", 2, 10);
    EXPECT_TRUE(near_rel(logits_of(*again_merged.model), logits_of(*again.model), 1e-5));
    // The adapter alone trained further (--adapter on the --init base): it starts as base + adapter, takes its
    // PEFT settings from the file, and what it writes still belongs on the original base, the trained block
    // carried over.
    TrainArgs c = args("lora_adapter_again");
    c.adapter = a.out_dir + "/adapter.ckpt";
    c.sched.lr = 1e-2f;
    {
        Trainer t(c);
        EXPECT_EQ(t.model().peft(), checkpoint_peft(c.adapter));
        EXPECT_EQ(logits_of(t.model()), logits_of(*with.model));
        ASSERT_EQ(t.run(), 0);
    }
    LoadedModel further = load_model(dir + "/init.ckpt", "cpu", "fp32", 2, 10, c.out_dir + "/adapter.ckpt");
    EXPECT_FALSE(near_rel(logits_of(*further.model), logits_of(*with.model), 1e-3)) << "the adapter did not train";
    const auto trained = tensors_of(c.out_dir + "/resume.ckpt");
    EXPECT_EQ(trained.at("h.1.mlp.c_fc.weight"), after.at("h.1.mlp.c_fc.weight"));
    LoadedModel further_merged = load_model(c.out_dir + "/model.ckpt", "cpu", "fp32", 2, 10);
    EXPECT_TRUE(near_rel(logits_of(*further_merged.model), logits_of(*further.model), 1e-5));
    // Resumed with its own command (--adapter still there): the run goes on as it was, nothing reported changed.
    TrainArgs halted = c;
    halted.out_dir = dir + "/lora_adapter_halted";
    halted.halt_at = 2;
    ASSERT_EQ(Trainer(halted).run(), 0);
    TrainArgs resumed = halted;
    resumed.halt_at = 0;
    resumed.resume = halted.out_dir + "/resume.ckpt";
    testing::internal::CaptureStderr();
    const int rc = Trainer(resumed).run();
    const std::string err = testing::internal::GetCapturedStderr();
    ASSERT_EQ(rc, 0) << err;
    EXPECT_THAT(err, Not(HasSubstr("changed options")));
    EXPECT_EQ(tensors_of(resumed.out_dir + "/resume.ckpt"), trained) << "the resumed run is not the uninterrupted one";
    TrainArgs drop = c;  // the adapter's shape with a dropout of this run's: the flag is kept, not the adapter's 0
    drop.peft = checkpoint_peft(c.adapter);
    drop.peft.lora_dropout = 0.3f;
    EXPECT_EQ(Trainer(drop).model().peft().lora_dropout, 0.3f);
    // From the command line, --lora-dropout alone goes with --adapter, which brings the rank.
    const CmdResult cli = run_cmd("bin/train --device cpu --quiet --overwrite --init " + c.init + " --adapter " +
                                  c.adapter + " --lora-dropout 0.3 --train-data " + c.train_data[0] +
                                  " --batch 3 --seq 13 --steps 1 --val-every 0 --out " + dir + "/lora_adapter_cli");
    ASSERT_EQ(cli.rc, 0) << cli.out;
    EXPECT_EQ(checkpoint_options(dir + "/lora_adapter_cli/resume.ckpt").at("--lora-dropout"), "0.3");
    TrainArgs wrong = c;
    wrong.peft.lora_rank = 4;
    EXPECT_THAT(error_of([&] { Trainer t(wrong); }), HasSubstr("but the flags ask for LoRA r=4"));
    // So for a resume, with the same status as every other refusal of the command line (2).
    TrainArgs other_rank = resumed;
    other_rank.peft = checkpoint_peft(resumed.resume);
    other_rank.peft.lora_rank = 4;
    EXPECT_THAT(usage_error_of([&] { Trainer t(other_rank); }),
                HasSubstr("--resume " + resumed.resume + " continues a run with LoRA r=" +
                          std::to_string(checkpoint_peft(resumed.resume).lora_rank)));
    EXPECT_THAT(usage_error_of([&] { Trainer t(other_rank); }), HasSubstr("but the flags ask for LoRA r=4"));
    other_rank.peft.lora_rank = checkpoint_peft(resumed.resume).lora_rank;
    other_rank.peft.lora_dropout = 0.2f;  // a training setting: not a change of the model
    EXPECT_EQ(usage_error_of([&] { Trainer t(other_rank); }), "");
    // Gradual unfreezing does not combine with LoRA, also where the LoRA comes with the resumed checkpoint.
    TrainArgs unfreezing = resumed;
    unfreezing.adapter.clear();
    unfreezing.unfreeze_every = 100;
    EXPECT_THAT(error_of([&] { Trainer t(unfreezing); }),
                HasSubstr("--unfreeze-every works on the model's own blocks; " + resumed.resume + " continues a run with LoRA"));
}

TEST_F(Methods, PromptTuningChangesOnlyThePromptAndGeneratesFromTheAdapter) {
    for (Virtual v : {Virtual::prompt, Virtual::ptune, Virtual::prefix}) {
        SCOPED_TRACE(virtual_name(v));
        TrainArgs a = args(std::string("virt_") + virtual_name(v));
        a.peft.virt = v;
        a.peft.n_virtual = 3;
        a.peft.hidden = v == Virtual::prompt ? 0 : 8;  // prompt tuning has no network
        a.virtual_init = v == Virtual::prefix ? "random" : "vocab";
        a.sched.lr = 1e-2f;
        ASSERT_EQ(Trainer(a).run(), 0);
        const auto init = tensors_of(dir + "/init.ckpt"), after = tensors_of(a.out_dir + "/resume.ckpt");
        size_t peft_tensors = 0;
        for (const auto& [name, t] : after) {
            if (init.count(name))
                EXPECT_EQ(t, init.at(name)) << name;
            else
                peft_tensors++;
        }
        EXPECT_EQ(peft_tensors, v == Virtual::prompt ? 1u : 5u);
        // The folded forms, in the adapter and the full model, give the trained model's logits.
        const PeftConfig folded = checkpoint_peft(a.out_dir + "/adapter.ckpt");
        EXPECT_EQ(folded.virt, v == Virtual::prefix ? Virtual::prefix_kv : Virtual::prompt);
        LoadedModel with = load_model(dir + "/init.ckpt", "cpu", "fp32", 2, 10, a.out_dir + "/adapter.ckpt");
        LoadedModel full = load_model(a.out_dir + "/model.ckpt", "cpu", "fp32", 2, 10);
        ModelOptions o;
        o.peft = a.peft;
        auto be = make_cpu_backend(DType::f32);
        GPT2 trained(checkpoint_config(dir + "/init.ckpt"), *be, 2, 10, nullptr, o);
        load_checkpoint(a.out_dir + "/resume.ckpt", trained, nullptr, nullptr);
        const auto want = logits_of(trained);
        EXPECT_TRUE(near_rel(logits_of(*with.model), want, 1e-5));
        EXPECT_TRUE(near_rel(logits_of(*full.model), want, 1e-5));
        // Generation runs with the virtual tokens in front (positions shift by P).
        Rng rng(1);
        auto out = generate(*with.model, {1, 2, 3}, 4, SamplingConfig{0.0f, 0, 1.0f}, rng);
        EXPECT_EQ(out.size(), 4u);
        // Trained further, the adapter has no LoRA for a dropout to act on.
        TrainArgs further = args(std::string("virt_further_") + virtual_name(v));
        further.adapter = a.out_dir + "/adapter.ckpt";
        further.peft.lora_dropout = 0.2f;
        EXPECT_THAT(error_of([&] { Trainer t(further); }),
                    HasSubstr("--lora-dropout: --adapter " + further.adapter + " holds " + folded.describe() +
                              ", no LoRA to drop out from"));
    }
}

TEST_F(Methods, GradualUnfreezingTrainsTheTopBlockFirstThenOneMorePerPeriod) {
    TrainArgs a = args("unfreeze");
    a.unfreeze_every = 3;
    a.steps = 3;
    a.val_every = 0;
    ASSERT_EQ(Trainer(a).run(), 0);
    auto init = tensors_of(dir + "/init.ckpt"), after = tensors_of(a.out_dir + "/resume.ckpt");
    for (const auto& [name, v] : init) {
        const int layer = param_layer(name, 2);
        if (layer >= 1)
            EXPECT_NE(after.at(name), v) << name << " should train in the first period";
        else
            EXPECT_EQ(after.at(name), v) << name << " should still be frozen";
    }
    // Steps 4..6: block 0 joins with its own Adam bias correction; the embeddings still wait.
    TrainArgs b = args("unfreeze");
    b.unfreeze_every = 3;
    b.steps = 6;
    b.val_every = 0;
    b.init.clear();
    b.resume = a.out_dir + "/resume.ckpt";
    ASSERT_EQ(Trainer(b).run(), 0);
    auto later = tensors_of(b.out_dir + "/resume.ckpt");
    EXPECT_NE(later.at("h.0.mlp.c_fc.weight"), init.at("h.0.mlp.c_fc.weight"));
    EXPECT_EQ(later.at("wte"), init.at("wte"));
    EXPECT_EQ(metric(b.out_dir, "frozen_below").back(), 0.0);
}

// With --train-top, unfreezing reaches only the trainable set (what --help says): four periods later block 0 and
// the embeddings, which --unfreeze-every alone would have let in by then, are still the initial weights.
TEST_F(Methods, GradualUnfreezingStaysWithinTheTrainTopSet) {
    TrainArgs a = args("unfreeze_top");
    a.unfreeze_every = 1;
    a.train_top = 1;
    a.steps = 4;
    a.val_every = 0;
    ASSERT_EQ(Trainer(a).run(), 0);
    const auto init = tensors_of(dir + "/init.ckpt"), after = tensors_of(a.out_dir + "/resume.ckpt");
    for (const auto& [name, v] : init) {
        if (param_layer(name, 2) >= 1)
            EXPECT_NE(after.at(name), v) << name << " is in the top block: it should train";
        else
            EXPECT_EQ(after.at(name), v) << name << " is outside --train-top 1: it should never train";
    }
}

// Unfreezing starts at the model's top block whatever the set: a --train-only set lower down waits its turn,
// training nothing until then (a note gives the step), and a set whose turn comes after the run is refused.
TEST_F(Methods, GradualUnfreezingOfALowSetSaysWhenItStartsAndRefusesOneThatNeverWould) {
    TrainArgs a = args("unfreeze_low");
    a.unfreeze_every = 3;
    a.train_only = "h.0.*";
    a.val_every = 0;
    a.halt_at = 3;
    testing::internal::CaptureStderr();
    const int rc = Trainer(a).run();
    const std::string err = testing::internal::GetCapturedStderr();
    ASSERT_EQ(rc, 0) << err;
    EXPECT_THAT(err, HasSubstr("note: --unfreeze-every 3 with --train-only h.0.*: unfreezing starts at the model's top "
                               "block, and the set's top tensor h.0.ln_1.weight joins after step 3; the steps before "
                               "train nothing"));
    const auto init = tensors_of(dir + "/init.ckpt");
    EXPECT_EQ(tensors_of(a.out_dir + "/resume.ckpt"), init) << "the first 3 steps trained something";
    TrainArgs b = resuming(a);
    b.halt_at = 4;
    ASSERT_EQ(Trainer(b).run(), 0);
    EXPECT_NE(tensors_of(b.out_dir + "/resume.ckpt").at("h.0.mlp.c_fc.weight"), init.at("h.0.mlp.c_fc.weight"))
        << "step 4 should train block 0";
    TrainArgs never = args("unfreeze_never");
    never.unfreeze_every = 4;  // block 0 would join after step 4, the embeddings after 8: the run's last
    never.train_only = "wte";
    EXPECT_THAT(error_of([&] { Trainer t(never); }),
                HasSubstr("--unfreeze-every 4 with --train-only wte: its top tensor wte would join after step 8, and "
                          "the run has 8 --steps: nothing would train"));
}

// A run resumed with --unfreeze-every 0 trains every tensor from its first step on: the checkpoint's frozen
// blocks do not stay frozen for good (the note says "--unfreeze-every 0 (was 3)").
TEST_F(Methods, ResumingWithoutUnfreezingTrainsTheBlocksTheCheckpointHadFrozen) {
    TrainArgs a = args("unfreeze_off");
    a.unfreeze_every = 3;
    a.steps = 2;
    a.val_every = 0;
    ASSERT_EQ(Trainer(a).run(), 0);
    const auto init = tensors_of(dir + "/init.ckpt");
    ASSERT_EQ(tensors_of(a.out_dir + "/resume.ckpt").at("wte"), init.at("wte"));
    TrainArgs b = a;
    b.unfreeze_every = 0;
    b.steps = 3;
    b.init.clear();
    b.resume = a.out_dir + "/resume.ckpt";
    ASSERT_EQ(Trainer(b).run(), 0);
    const auto later = tensors_of(b.out_dir + "/resume.ckpt");
    EXPECT_NE(later.at("h.0.mlp.c_fc.weight"), init.at("h.0.mlp.c_fc.weight"));
    EXPECT_NE(later.at("wte"), init.at("wte"));
    EXPECT_EQ(metric(b.out_dir, "frozen_below").back(), -1.0);
}

TEST(UnfreezeOptimizer, ANewlyActiveSegmentStartsItsOwnBiasCorrection) {
    // A segment activated after k updates moves exactly like a fresh one: the same first step size.
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 1, 3);
    m.init_random(1);
    AdamW opt(m, AdamWConfig{});
    const size_t g = 5;  // some block tensor
    for (size_t i = 0; i < m.grads().table().size(); i++) opt.set_active(i, i != g);
    set_tensor(m, m.grads(), g, std::vector<double>(m.grads().table()[g].numel, 0.5));
    opt.step(1e-3f, 1.0f);
    opt.step(1e-3f, 1.0f);
    const int p = [&] {
        for (size_t i = 0; i < m.grad_index().size(); i++)
            if (m.grad_index()[i] == (int)g) return (int)i;
        return -1;
    }();
    const auto before = get_tensor(m, m.params(), p);
    opt.set_active(g, true);
    opt.step(1e-3f, 1.0f);
    const auto after = get_tensor(m, m.params(), p);
    // First Adam step with a constant gradient: mhat/sqrt(vhat) = 1, so the move is lr (no decay on a bias;
    // on a weight, lr * (1 + wd * p)).
    const bool decayed = m.params().table()[p].shape.size() == 2;
    for (size_t i = 0; i < after.size(); i++) {
        const double want = before[i] - 1e-3 * (1.0 + (decayed ? 0.1 * before[i] : 0.0));
        ASSERT_NEAR(after[i], want, 1e-9) << i;
    }
}

TEST(UnfreezeOptimizer, RestoredStartStepsMustLieWithinTheStepsTaken) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 1, 3);
    AdamW opt(m, AdamWConfig{});
    const size_t n = m.grads().table().size();
    opt.set_t(4);
    std::vector<int> offsets(n, 0);
    offsets[2] = 4;
    opt.restore_activity(std::vector<bool>(n, true), offsets);
    EXPECT_EQ(opt.t_offsets(), offsets);
    for (int bad : {5, -1}) {
        offsets[2] = bad;
        try {
            opt.restore_activity(std::vector<bool>(n, true), offsets);
            ADD_FAILURE() << "start step " << bad << " after 4 steps was accepted";
        } catch (const Error& e) {
            EXPECT_THAT(e.what(), HasSubstr("trainable tensor 2 started at step " + std::to_string(bad) +
                                                       ", outside the 4 steps taken"));
        }
    }
}

TEST_F(Methods, L2spPenaltyMatchesItsFormulaAndPullsTowardsTheStart) {
    TrainArgs a = args("l2sp");
    a.l2sp = 0.5f;
    a.steps = 4;
    Trainer t(a);
    for (int i = 0; i < 3; i++) t.step();
    // The penalty the step reports, against lambda/2 |theta - theta_0|^2 computed here from the weights.
    const auto init = tensors_of(dir + "/init.ckpt");
    double want = 0;
    GPT2& m = t.model();
    for (size_t i = 0; i < m.params().table().size(); i++) {
        std::vector<float> v(m.params().table()[i].numel);
        m.backend().download(v.data(), m.params().ptr(i), DType::f32, v.size());
        const auto& w0 = init.at(m.params().table()[i].name);
        for (size_t k = 0; k < v.size(); k++) want += ((double)v[k] - w0[k]) * ((double)v[k] - w0[k]);
    }
    const StepStats st = t.step();
    EXPECT_NEAR(st.penalty, 0.25 * want, 1e-6 * 0.25 * want + 1e-12);
    EXPECT_GT(st.penalty, 0.0);
    // A strong pull keeps the weights nearer the start than plain training does.
    auto distance = [&](const std::string& ckpt) {
        auto after = tensors_of(ckpt);
        double d = 0;
        for (const auto& [n, v] : init)
            for (size_t k = 0; k < v.size(); k++) d += (after.at(n)[k] - v[k]) * (after.at(n)[k] - v[k]);
        return d;
    };
    TrainArgs plain = args("plain"), pulled = args("pulled");
    pulled.l2sp = 50;
    plain.sched.lr = pulled.sched.lr = 1e-2f;
    plain.steps = pulled.steps = 20;
    ASSERT_EQ(Trainer(plain).run(), 0);
    ASSERT_EQ(Trainer(pulled).run(), 0);
    EXPECT_LT(distance(pulled.out_dir + "/model.ckpt"), 0.5 * distance(plain.out_dir + "/model.ckpt"));
}

TEST_F(Methods, EwcEstimatesWritesAndRereadsTheFisherAndWeighsThePenaltyByIt) {
    TrainArgs a = args("ewc");
    a.ewc = 0.7f;  // lambda/2 = 0.35: a penalty that lost its 1/2 or its lambda shows
    a.fisher = dir + "/fisher.safetensors";
    a.fisher_data = {dir + "/val.bin"};
    a.fisher_batches = 3;
    Trainer t(a);
    // The file holds, per trainable tensor, the mean over the batches of the squared gradient of each batch's
    // mean loss: recomputed here in double from the same batches (the loader's order, seed + 2) on a model of
    // its own.
    SafetensorsFile f(a.fisher);
    EXPECT_EQ(f.tensors().size(), t.model().grads().table().size());
    auto be = make_cpu_backend(DType::f32);
    GPT2 ref(checkpoint_config(a.init), *be, a.batch, a.seq);
    load_checkpoint(a.init, ref, nullptr, nullptr);
    Loader base(a.fisher_data, ref.config().vocab_size, a.batch, a.seq, true, a.seed + 2);
    std::vector<double> want_fisher(ref.grads().elems(), 0.0), g(ref.grads().elems());
    for (int k = 0; k < a.fisher_batches; k++) {
        Batch b = base.next();
        size_t counted = 0;
        for (float w : b.weights) counted += w != 0.0f;
        ref.zero_grads();
        ref.forward(b.inputs.data(), b.B, b.T, b.weights.data());
        ref.loss(b.targets.data(), b.weights.data(), 1.0f / (float)counted, true);
        ref.backward();
        be->download(g.data(), ref.grads().base(), ref.grads().dtype(), g.size());
        for (size_t i = 0; i < g.size(); i++) want_fisher[i] += g[i] * g[i] / a.fisher_batches;
    }
    const Table& gt = ref.grads().table();
    for (size_t i = 0; i < gt.size(); i++) {
        const std::vector<float> got = f.read_f32(gt[i].name);
        std::vector<double> got_d(got.begin(), got.end());
        std::vector<double> want(want_fisher.begin() + (long)gt[i].offset,
                                 want_fisher.begin() + (long)(gt[i].offset + gt[i].numel));
        double sum = 0;
        for (double v : want) sum += v;
        ASSERT_GT(sum, 0.0) << gt[i].name << ": a Fisher of zeros would test nothing";
        EXPECT_TRUE(near_rel(got_d, want, 1e-5)) << gt[i].name;
    }
    // The penalty after some steps: lambda/2 sum F (theta - theta_0)^2, computed here.
    for (int i = 0; i < 3; i++) t.step();
    const auto init = tensors_of(dir + "/init.ckpt");
    double want = 0;
    GPT2& m = t.model();
    for (size_t i = 0; i < m.params().table().size(); i++) {
        const std::string& name = m.params().table()[i].name;
        std::vector<float> v(m.params().table()[i].numel);
        m.backend().download(v.data(), m.params().ptr(i), DType::f32, v.size());
        const std::vector<float> F = f.read_f32(name);
        for (size_t k = 0; k < v.size(); k++)
            want += 0.35 * F[k] * ((double)v[k] - init.at(name)[k]) * ((double)v[k] - init.at(name)[k]);
    }
    ASSERT_GT(want, 0.0);
    EXPECT_NEAR(t.step().penalty, want, 1e-5 * want);
    // A second run reads the file instead of estimating (no --fisher-data needed).
    TrainArgs b = args("ewc2");
    b.ewc = 0.7f;
    b.fisher = a.fisher;
    Trainer again(b);
    CmdResult bad = run_cmd("bin/train --device cpu --init " + dir + "/init.ckpt --train-data " + dir +
                            "/train.bin --seq 13 --ewc 1 --fisher " + a.fisher + " --lora-rank 2 --out ''");
    EXPECT_EQ(bad.rc, 1) << bad.out;
    EXPECT_THAT(bad.out, HasSubstr("no Fisher values for trainable tensor 'h.0.attn.c_attn.lora_A'"));
    // What would estimate it is named as unused when the file is read (it was silently ignored).
    CmdResult reread = run_cmd("bin/train --device cpu --init " + dir + "/init.ckpt --train-data " + dir +
                               "/train.bin --seq 13 --steps 1 --ewc 1 --fisher " + a.fisher + " --fisher-data " + dir +
                               "/train.bin --out ''");
    EXPECT_EQ(reread.rc, 0) << reread.out;
    EXPECT_THAT(reread.out, HasSubstr("note: --fisher " + a.fisher + " exists and is read as it is: "
                                      "--fisher-data/--fisher-batches estimate a missing file only"));
    // A run that estimates the file (it did not exist) does not then call it read as it was.
    CmdResult estimated = run_cmd("bin/train --device cpu --init " + dir + "/init.ckpt --train-data " + dir +
                                  "/train.bin --seq 13 --steps 1 --ewc 1 --fisher " + dir + "/fisher_new.safetensors" +
                                  " --fisher-data " + dir + "/train.bin --fisher-batches 2 --out ''");
    EXPECT_EQ(estimated.rc, 0) << estimated.out;
    EXPECT_THAT(estimated.out, HasSubstr("Fisher estimated on 2 batches"));
    EXPECT_THAT(estimated.out, Not(HasSubstr("exists and is read as it is")));
    std::filesystem::remove(dir + "/fisher_new.safetensors");
    // A negative or non-finite value (a file from elsewhere, or damaged) is refused where it is read.
    std::vector<std::vector<float>> values;
    for (const SafetensorsTensorInfo& ti : f.tensors()) values.push_back(f.read_f32(ti.name));
    for (float poison : {-1.0f, std::nanf("")}) {
        values[2][5] = poison;
        SafetensorsWriter w;
        for (size_t i = 0; i < values.size(); i++)
            w.add(f.tensors()[i].name, SafetensorsDtype::F32, f.tensors()[i].shape, values[i].data(),
                  values[i].size() * sizeof(float));
        w.write(dir + "/bad_fisher.safetensors");
        TrainArgs c = args("ewc3");
        c.ewc = 2.0f;
        c.fisher = dir + "/bad_fisher.safetensors";
        try {
            Trainer t3(c);
            ADD_FAILURE() << "a Fisher file holding " << poison << " was accepted";
        } catch (const Error& e) {
            EXPECT_THAT(e.what(), HasSubstr("bad_fisher.safetensors: tensor '" + f.tensors()[2].name + "' holds "));
            EXPECT_THAT(e.what(), HasSubstr("at element 5; Fisher values are finite and not negative"));
        }
    }
}

// A Fisher micro-batch that is all prompt has no gradient: it is passed over (and noted), not an error, while the
// data holds windows that count; data that is all prompt is refused by name.
TEST_F(Methods, FisherPassesOverAllPromptBatches) {
    std::vector<uint8_t> mask(800, 0);
    for (size_t i = 760; i < mask.size(); i++) mask[i] = 1;  // 3 of the 61 windows count
    write_shard(dir + "/sft.bin", pattern_tokens(800, 2), &mask, 37);
    TrainArgs a = args("fisher_sft");
    a.ewc = 1.0f;
    a.fisher = dir + "/fisher_sft.safetensors";
    a.fisher_data = {dir + "/sft.bin"};
    a.fisher_batches = 3;
    testing::internal::CaptureStderr();
    Trainer t(a);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_THAT(err, HasSubstr("micro-batches were all prompt (loss weight 0) and were passed over"));
    EXPECT_EQ(SafetensorsFile(a.fisher).tensors().size(), t.model().grads().table().size());
}

// Resuming with another trainable set finds other optimizer state in the checkpoint: the error names the option
// that changed, not only the tensor it cannot find.
TEST_F(Methods, ResumeWithAnotherTrainableSetNamesTheChangedOption) {
    TrainArgs a = args("top_resume");
    a.train_top = 1;
    a.halt_at = 2;
    ASSERT_EQ(Trainer(a).run(), 0);
    TrainArgs b = a;
    b.init.clear();
    b.resume = a.out_dir + "/resume.ckpt";
    b.halt_at = 0;
    b.train_top = 0;
    try {
        Trainer t(b);
        ADD_FAILURE() << "resumed with another trainable set";
    } catch (const UsageError& e) {  // the command line's mistake: exit 2
        EXPECT_THAT(e.what(), HasSubstr("this resume trains other tensors: --train-top 0 (was 1)"));
    }
}

// The Fisher belongs to the starting weights: a resumed run whose Fisher file is gone (job-local scratch, or a
// relative path from another directory) is refused rather than estimating it again at the trained weights.
TEST_F(Methods, ResumeWithoutItsFisherFileIsRefusedNotEstimatedAgain) {
    TrainArgs a = args("ewc_resume");
    a.ewc = 0.7f;
    a.fisher = dir + "/fisher_resume.safetensors";
    a.fisher_data = {dir + "/val.bin"};
    a.halt_at = 2;
    ASSERT_EQ(Trainer(a).run(), 0);
    TrainArgs b = a;
    b.init.clear();
    b.resume = a.out_dir + "/resume.ckpt";
    b.halt_at = 0;
    ASSERT_TRUE(std::filesystem::remove(a.fisher));
    try {
        Trainer t(b);
        ADD_FAILURE() << "the Fisher was estimated again at the resumed weights";
    } catch (const UsageError& e) {
        EXPECT_THAT(e.what(), HasSubstr("--fisher " + a.fisher + " does not exist: a resumed run reads the Fisher"));
    }
    EXPECT_FALSE(std::filesystem::exists(a.fisher));
}

TEST_F(Methods, DistillationWithAlphaZeroIsPlainTrainingAndWithAlphaReportsKl) {
    TrainArgs plain = args("plain"), d0 = args("d0"), d5 = args("d5");
    d0.distill = 0.0f;  // off
    d5.distill = 0.5f;
    // alpha = 0 through the distillation path (a teacher present) must equal plain training: force it on.
    ASSERT_EQ(Trainer(plain).run(), 0);
    TrainArgs forced = args("forced");
    forced.distill = 1e-30f;  // the teacher runs; (1 - alpha) rounds to 1 in float and alpha*KL adds ~0
    ASSERT_EQ(Trainer(forced).run(), 0);
    const auto lp = losses(plain.out_dir), lf = losses(forced.out_dir);
    ASSERT_EQ(lp.size(), lf.size());
    for (size_t i = 0; i < lp.size(); i++) EXPECT_NEAR(lf[i], lp[i], 1e-9) << i;
    ASSERT_EQ(Trainer(d5).run(), 0);
    const auto kl = metric(d5.out_dir, "distill_kl");
    ASSERT_FALSE(kl.empty());
    EXPECT_EQ(kl.front(), 0.0);  // step 1: student == teacher
    EXPECT_GT(kl.back(), 0.0);
    // The plot says its training curve is the objective, not the cross-entropy the validation curve measures.
    EXPECT_THAT(slurp(d5.out_dir + "/loss.svg"), HasSubstr(">loss (train: (1-\u03b1) CE + \u03b1 T\u00b2 KL, \u03b1 = 0.5, "
                                                           "T = " + std::to_string((int)d5.distill_temp) + "; validation: CE)</text>"));
    EXPECT_THAT(slurp(plain.out_dir + "/loss.svg"), HasSubstr(">loss</text>"));
    // At alpha 1 the KL is all the loss: from the teacher's own weights (the default teacher, or a copy of it
    // under --teacher) nothing would train, and the run is refused; another teacher, or a resume, trains.
    TrainArgs all = args("d1");
    all.distill = 1.0f;
    EXPECT_THAT(error_of([&] { Trainer t(all); }),
                HasSubstr("--distill 1 trains on the KL to the teacher alone, and the teacher " + all.init +
                          " holds the weights the run starts from"));
    all.teacher = dir + "/d1_teacher.ckpt";
    std::filesystem::copy_file(all.init, all.teacher, std::filesystem::copy_options::overwrite_existing);
    EXPECT_THAT(error_of([&] { Trainer t(all); }), HasSubstr("--distill 1 trains on the KL to the teacher alone"));
    all.teacher = d5.out_dir + "/model.ckpt";
    ASSERT_EQ(Trainer(all).run(), 0);
    EXPECT_GT(metric(all.out_dir, "distill_kl").front(), 0.0);
}

TEST(Replay, ExactlyTheFractionOfMicroBatchesEvenlySpread) {
    for (double frac : {0.0, 0.1, 0.25, 1.0 / 3, 0.5, 1.0}) {
        int n = 0;
        for (uint64_t mb = 0; mb < 1200; mb++) n += is_replay_batch(mb, frac);
        EXPECT_EQ(n, (int)std::floor(1200 * frac + 1e-9)) << frac;
    }
    EXPECT_FALSE(is_replay_batch(0, 0.5));
    EXPECT_TRUE(is_replay_batch(1, 0.5));
}

TEST_F(Methods, ReplayDrawsItsShareFromTheBaseData) {
    TrainArgs a = args("replay");
    a.replay_data = {dir + "/val.bin"};
    a.replay_frac = 0.25f;
    a.replay_weight = 0.5f;
    ASSERT_EQ(Trainer(a).run(), 0);
    double total = 0;
    for (double r : metric(a.out_dir, "replay_batches")) total += r;
    EXPECT_EQ(total, 0.25 * a.steps * a.grad_accum);
}

TEST_F(Methods, RecomputationGivesBitIdenticalTraining) {
    TrainArgs none = args("none"), sel = args("selective"), full = args("full");
    sel.recompute = Recompute::selective;
    full.recompute = Recompute::full;
    for (TrainArgs* a : {&none, &sel, &full}) ASSERT_EQ(Trainer(*a).run(), 0);
    ASSERT_EQ(losses(none.out_dir).size(), (size_t)none.steps);  // equal because written, not because empty
    ASSERT_FALSE(slurp(none.out_dir + "/model.ckpt").empty());
    EXPECT_EQ(losses(sel.out_dir), losses(none.out_dir));
    EXPECT_EQ(losses(full.out_dir), losses(none.out_dir));
    EXPECT_EQ(slurp(full.out_dir + "/model.ckpt"), slurp(none.out_dir + "/model.ckpt"));
}

// --head-chunk: 3 x 13 = 39 rows per micro-batch, so chunks of 7 run the LM head 6 times inside each loss.
// Only the order in which the wte gradient is summed changes: the same training within float rounding, and
// validation (a loss without backward) goes through the chunks too.
TEST_F(Methods, LmHeadInChunksTrainsLikeTheWholeHead) {
    for (float distill : {0.0f, 0.5f}) {  // with distillation the teacher's head is chunked too
        SCOPED_TRACE("distill " + std::to_string(distill));
        TrainArgs whole = args("whole" + std::to_string(distill)), chunked = args("chunked" + std::to_string(distill));
        whole.head_chunk = 0;
        chunked.head_chunk = 7;
        whole.distill = chunked.distill = distill;
        for (TrainArgs* a : {&whole, &chunked}) ASSERT_EQ(Trainer(*a).run(), 0);
        const auto lw = losses(whole.out_dir), lc = losses(chunked.out_dir);
        ASSERT_EQ(lw.size(), (size_t)whole.steps);
        EXPECT_TRUE(near_rel(lc, lw, 1e-5));
        const auto vw = metric(whole.out_dir, "val_loss"), vc = metric(chunked.out_dir, "val_loss");
        ASSERT_FALSE(vw.empty());
        EXPECT_TRUE(near_rel(vc, vw, 1e-5));
        if (distill > 0) {
            const auto kw = metric(whole.out_dir, "distill_kl"), kc = metric(chunked.out_dir, "distill_kl");
            ASSERT_EQ(kw.size(), lw.size());
            EXPECT_TRUE(near_rel(kc, kw, 1e-4));
            EXPECT_GT(kw.back(), 0.0);
        }
    }
}

TEST_F(Methods, ResumeIsBitExactWithLoraL2spDistillReplayAndRecompute) {
    auto setup = [&](const std::string& out) {
        TrainArgs a = args(out);
        a.peft.lora_rank = 2;
        a.peft.lora_dropout = 0.2f;
        a.l2sp = 0.1f;
        a.distill = 0.3f;
        a.replay_data = {dir + "/val.bin"};
        a.replay_frac = 0.5f;
        a.recompute = Recompute::full;
        return a;
    };
    TrainArgs whole = setup("whole");
    ASSERT_EQ(Trainer(whole).run(), 0);
    TrainArgs first = setup("split");
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    TrainArgs second = resuming(setup("split"));
    second.peft = TrainArgs().peft;  // LoRA's rank, alpha and dropout come from the checkpoint
    ASSERT_EQ(Trainer(second).run(), 0);  // the teacher comes from the checkpoint's record of --init
    ASSERT_EQ(losses(whole.out_dir).size(), (size_t)whole.steps);
    ASSERT_FALSE(slurp(whole.out_dir + "/adapter.ckpt").empty());
    EXPECT_EQ(losses(whole.out_dir), losses(second.out_dir));
    EXPECT_EQ(slurp(whole.out_dir + "/adapter.ckpt"), slurp(second.out_dir + "/adapter.ckpt"));
}

// --virtual-init text:WORDS starts virtual token j from the embedding of WORDS' token j (plus position j's):
// repeated in turn when WORDS has fewer tokens than P, the first P when more, with a note either way. GPT-2
// encodes '$%' as 3 4 and '%$&' as 4 3 5, inside the fixture's 37-token vocabulary.
TEST_F(Methods, VirtualInitFromTextTakesItsTokensEmbeddingsAndSaysWhenItRepeatsOrCuts) {
    const auto init = tensors_of(dir + "/init.ckpt");
    const size_t C = (size_t)checkpoint_config(dir + "/init.ckpt").n_embd;
    struct Case {
        const char* words;
        std::vector<int> want;  // the token of each virtual position
        const char* note;
    } cases[] = {
        {"$%", {3, 4, 3, 4}, "'$%' is 2 tokens for 4 virtual tokens: they repeat in turn to fill them"},
        {"%$&", {4, 3}, "'%$&' is 3 tokens for 2 virtual tokens: the first 2 start them, the rest go unused"},
        {"%$&", {4, 3, 5}, nullptr},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.words);
        TrainArgs a = args("vtext");
        a.peft.virt = Virtual::prompt;
        a.peft.n_virtual = (int)c.want.size();
        a.virtual_init = std::string("text:") + c.words;
        a.seq = 10;  // 4 virtual tokens + 10 real ones + the target fit the block of 16
        testing::internal::CaptureStderr();
        Trainer t(a);
        const std::string err = testing::internal::GetCapturedStderr();
        if (c.note)
            EXPECT_THAT(err, HasSubstr(std::string("note: --virtual-init text: ") + c.note));
        else
            EXPECT_THAT(err, Not(HasSubstr("--virtual-init")));
        const Table& pt = t.model().params().table();
        size_t i = 0;
        while (i < pt.size() && pt[i].name != "prompt.embedding") i++;
        ASSERT_LT(i, pt.size());
        std::vector<float> got(pt[i].numel);
        t.backend().download(got.data(), t.model().params().ptr(i), t.model().params().dtype(), got.size());
        ASSERT_EQ(got.size(), c.want.size() * C);
        for (size_t j = 0; j < c.want.size(); j++)
            for (size_t k = 0; k < C; k++)
                ASSERT_EQ(got[j * C + k], init.at("wte")[c.want[j] * C + k] + init.at("wpe")[j * C + k])
                    << "virtual token " << j << ", channel " << k;
    }
}

// Real and virtual tokens must fit the block size (16 here), whether the virtual ones come from the flags or
// with a resumed checkpoint: a usage error naming --seq either way.
TEST_F(Methods, VirtualTokensAndSeqMustFitTheBlockFromFlagsOrCheckpoint) {
    TrainArgs a = args("fit");
    a.peft.virt = Virtual::prompt;
    a.peft.n_virtual = 4;
    const std::string want = "--seq: 13 real tokens after 4 virtual ones exceed the model's block size 16";
    EXPECT_THAT(error_of([&] { Trainer t(a); }), HasSubstr(want));
    a.seq = 12;
    a.halt_at = 1;
    ASSERT_EQ(Trainer(a).run(), 0);
    TrainArgs b = resuming(args("fit"));  // no PEFT flags: the checkpoint brings the 4 virtual tokens
    try {
        Trainer t(b);
        ADD_FAILURE() << "a --seq too long for the resumed virtual tokens was accepted";
    } catch (const UsageError& e) {
        EXPECT_THAT(e.what(), HasSubstr(want));
    }
}

TEST_F(Methods, ResumeNamesAChangedLoraDropout) {
    TrainArgs a = args("lora_drop");
    a.peft.lora_rank = 2;
    a.peft.lora_dropout = 0.2f;
    a.halt_at = 2;
    ASSERT_EQ(Trainer(a).run(), 0);
    TrainArgs b = resuming(a);
    b.quiet = false;
    EXPECT_THAT(notes_of(b), Not(HasSubstr("changed options")));
    b.peft.lora_dropout = 0;
    EXPECT_THAT(notes_of(b), HasSubstr("--lora-dropout 0 (was 0.2)"));
    b.peft = TrainArgs().peft;  // no LoRA flags: the checkpoint's settings, its dropout too
    EXPECT_THAT(notes_of(b), Not(HasSubstr("changed options")));
    b.peft.lora_dropout = 0.35f;  // the dropout alone: the checkpoint's LoRA with this run's dropout
    EXPECT_THAT(notes_of(b), HasSubstr("--lora-dropout 0.35 (was 0.2)"));
    EXPECT_EQ(Trainer(b).model().peft().lora_dropout, 0.35f);
    EXPECT_EQ(Trainer(b).model().peft().lora_rank, 2);
    // A resumed run without LoRA has nothing for it to act on.
    TrainArgs plain = args("no_lora_drop");
    plain.halt_at = 2;
    ASSERT_EQ(Trainer(plain).run(), 0);
    TrainArgs r = resuming(plain);
    r.peft.lora_dropout = 0.1f;
    EXPECT_THAT(error_of([&] { Trainer t(r); }),
                HasSubstr("--lora-dropout: --resume " + r.resume + " continues a run with none, no LoRA to drop out"));
}

// A resume reads the teacher and the Fisher again from their files: one replaced since the checkpoint (same
// name, other values) is named, as a changed option is; the same files say nothing.
TEST_F(Methods, ResumeNamesATeacherOrFisherFileThatNowHoldsOtherValues) {
    TrainArgs a = args("refile");
    a.distill = 0.3f;
    a.teacher = dir + "/refile_teacher.ckpt";
    std::filesystem::copy_file(a.init, a.teacher, std::filesystem::copy_options::overwrite_existing);
    a.ewc = 0.7f;
    a.fisher = dir + "/refile_fisher.safetensors";
    a.fisher_data = {dir + "/val.bin"};
    a.halt_at = 2;
    ASSERT_EQ(Trainer(a).run(), 0);
    TrainArgs b = resuming(a);
    b.quiet = false;
    EXPECT_THAT(notes_of(b), Not(HasSubstr("holds other")));
    // Another teacher of the same shape under the same name.
    auto be = make_cpu_backend(DType::f32);
    GPT2 other(checkpoint_config(a.init), *be, 1, 1);
    other.init_random(99);
    save_checkpoint(a.teacher, other, nullptr, nullptr);
    EXPECT_THAT(notes_of(b), HasSubstr("note: resuming " + b.resume + ": --distill's teacher " + a.teacher +
                                    " holds other weights than the run was checkpointed with"));
    std::filesystem::copy_file(a.init, a.teacher, std::filesystem::copy_options::overwrite_existing);
    EXPECT_THAT(notes_of(b), Not(HasSubstr("holds other")));
    // The Fisher with one value changed (still finite and not negative).
    const Table g = Trainer(b).model().grads().table();
    std::vector<std::vector<float>> values(g.size());
    read_fisher(a.fisher, g, [&](size_t i, const std::vector<float>& v) { values[i] = v; });
    values.back().back() += 0.5f;
    write_fisher(a.fisher, g, values, a.fisher_batches);
    EXPECT_THAT(notes_of(b), HasSubstr("note: resuming " + b.resume + ": --fisher " + a.fisher +
                                    " holds other Fisher values than the run was checkpointed with"));
}

TEST(Optimizer, WeightDecaySparesEmbeddingTablesUnlessAsked) {
    auto info = [](const std::string& name, std::vector<size_t> shape) {
        TensorInfo t;
        t.name = name;
        t.shape = std::move(shape);
        return t;
    };
    for (const char* table : {"wte", "wpe", "prompt.embedding", "prefix.kv", "ptune.input", "prefix.input"}) {
        EXPECT_FALSE(decays(info(table, {4, 8}), false)) << table;
        EXPECT_TRUE(decays(info(table, {4, 8}), true)) << table;
    }
    EXPECT_TRUE(decays(info("ptune.fc.weight", {16, 8}), false));
    EXPECT_TRUE(decays(info("h.0.attn.c_attn.lora_A", {2, 8}), false));
    EXPECT_FALSE(decays(info("h.0.ln_1.weight", {8}), false));
}

TEST_F(Methods, L2spCannotBeAddedOnResumeAndSaysSo) {
    TrainArgs a = args("no_anchor");
    a.halt_at = 2;
    ASSERT_EQ(Trainer(a).run(), 0);
    TrainArgs b = resuming(args("no_anchor"));
    b.l2sp = 0.5f;
    EXPECT_THAT(error_of([&] { Trainer t(b); }),
                HasSubstr(b.resume + ": holds no L2-SP/EWC anchor (the starting weights): the run was checkpointed "
                                     "without --l2sp or --ewc"));
}

TEST(MethodsCli, FlagsAreValidatedWithClearMessages) {
    struct Case {
        const char* args;
        const char* message;
    } cases[] = {
        {"--virtual prompt", "--virtual prompt needs --virtual-tokens P"},
        {"--virtual ptune --virtual-tokens 4", "--virtual ptune needs --virtual-hidden H"},
        {"--virtual soft", "--virtual: expected one of none, prompt, ptune, prefix, got 'soft'"},
        {"--lora-rank 4 --lora-targets qkv,ffn", "--lora-targets: unknown LoRA target 'ffn'"},
        {"--ewc 1", "--ewc needs --fisher FILE"},
        {"--replay-frac 0.5", "--replay-frac needs --replay-data"},
        {"--distill 0.5", "--distill needs a teacher"},
        {"--recompute some", "--recompute: expected one of none, selective, full, got 'some'"},
        {"--unfreeze-every 5 --lora-rank 2", "does not combine with LoRA or virtual tokens"},
        {"--unfreeze-every 5 --adapter x.ckpt", "does not combine with LoRA or virtual tokens (--adapter brings them)"},
        {"--virtual-tokens 4", "--virtual-tokens/--virtual-hidden has no effect without --virtual"},
        {"--virtual prompt --virtual-tokens 4 --virtual-hidden 8", "--virtual-hidden has no effect without --virtual ptune or prefix"},
        {"--teacher /dev/null", "--teacher has no effect without --distill"},
        {"--lora-alpha 8", "--lora-alpha has no effect without --lora-rank"},
        {"--lora-dropout 0.1", "--lora-dropout has no effect without --lora-rank, --adapter or --resume"},
        {"--lora-targets qkv", "--lora-targets has no effect without --lora-rank"},
        {"--distill-temp 5", "--distill-temp has no effect without --distill"},
        {"--gamma 0.5", "--gamma has no effect without --schedule exp_range"},
        {"--schedule triangular --gamma 0.5", "--gamma has no effect without --schedule exp_range"},
        {"--half-cycle 7", "--half-cycle has no effect without a cyclical --schedule"},
        {"--cut-frac 0.5", "--cut-frac/--ratio has no effect without --schedule stlr"},
        {"--lr-find-lo 1e-3", "--lr-find-lo/--lr-find-hi has no effect without --lr-find"},
        {"--replay-weight 0.5", "--replay-weight has no effect without --replay-frac"},
        {"--fisher-batches 4", "--fisher-batches has no effect without --ewc"},
        {"--virtual-init random", "--virtual-init has no effect without --virtual"},
        {"--virtual prompt --virtual-tokens 2 --windows fixed --vocab /tmp",
         "--vocab has no effect without --virtual-init text:WORDS or --windows auto|documents|single"},
        {"--loss-scale 1024", "--loss-scale has no effect without dynamic loss scaling"},
        {"--precision fp16 --loss-scaling off --loss-scale 1024", "--loss-scale has no effect without dynamic"},
        {"--schedule constant --min-lr-frac 0.5", "--min-lr-frac has no effect without a --schedule that decays"},
        {"--schedule stlr --min-lr-frac 0.5", "--min-lr-frac has no effect without a --schedule that decays"},
        {"--lr-find --halt-at 5", "--halt-at has no effect with --lr-find"},
        {"--lr-find --lr 1e-3", "--lr has no effect with --lr-find: the sweep sets the rate itself"},
        {"--lr-find --schedule stlr --cut-frac 0.2 --ckpt-every 5",
         "--schedule, --cut-frac, --ckpt-every have no effect with --lr-find"},
        {"--lr-find --warmup 3 --val-every 7 --val-batches 2 --ckpt-minutes 1",
         "--warmup, --val-every, --val-batches, --ckpt-minutes have no effect with --lr-find"},
        {"--lr-find --lr-find-lo 1 --lr-find-hi 0.1", "--lr-find-lo 1 must be below --lr-find-hi 0.1"},
        {"--init /dev/null --model gpt2", "--model gpt2 has no effect with --init"},
    };
    TempDir tmp("mcli");
    write_shard(tmp.file("t.bin"), pattern_tokens(500, 1), nullptr, 37);
    for (const Case& c : cases) {
        CmdResult r = run_cmd(std::string("bin/train --device cpu --train-data ") + tmp.file("t.bin") + " " + c.args);
        EXPECT_EQ(r.rc, 2) << c.args << ": " << r.out;
        EXPECT_THAT(r.out, HasSubstr(c.message)) << c.args;
    }
}

}  // namespace
}  // namespace tune::test

namespace tune::test {
namespace {

// bin/generate on what each method writes: the adapter on its base, and the stand-alone model.ckpt. A tiny
// GPT-2-vocabulary model, two training steps each: this checks the plumbing, not the quality.
TEST(MethodsCli, GenerateRunsWithEveryMethodsAdapterAndModel) {
    TempDir tmp("mgen");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    for (int i = 0; i < 3000; i++) t.push_back((i * 7) % 1000);
    write_shard(d + "/t.bin", t, nullptr, 50257);
    const std::string base = "bin/train --device cpu --model tiny --train-data " + d + "/t.bin --batch 2 --seq 16 "
                             "--steps 2 --val-every 0 --quiet";
    CmdResult r = run_cmd(base + " --out " + d + "/base");
    ASSERT_EQ(r.rc, 0) << r.out;
    for (const char* method : {"--lora-rank 2", "--virtual prompt --virtual-tokens 3",
                               "--virtual ptune --virtual-tokens 3 --virtual-hidden 8",
                               "--virtual prefix --virtual-tokens 3 --virtual-hidden 8"}) {
        SCOPED_TRACE(method);
        r = run_cmd(base + " --init " + d + "/base/model.ckpt " + method + " --out " + d + "/m --overwrite");
        ASSERT_EQ(r.rc, 0) << r.out;
        for (const std::string& weights : {"--model " + d + "/base/model.ckpt --adapter " + d + "/m/adapter.ckpt",
                                           "--model " + d + "/m/model.ckpt"}) {
            r = run_cmd("bin/generate --device cpu " + weights + " --prompt 'The fox' --max-new 4 --temperature 0");
            EXPECT_EQ(r.rc, 0) << weights << "\n" << r.out;
            EXPECT_THAT(r.out, HasSubstr("The fox")) << weights;
        }
    }
    // A checkpoint that is not an adapter, given as one, is refused by name.
    r = run_cmd("bin/generate --device cpu --model " + d + "/base/model.ckpt --adapter " + d +
                "/base/model.ckpt --prompt x");
    EXPECT_EQ(r.rc, 1) << r.out;
    EXPECT_THAT(r.out, HasSubstr("is not an adapter checkpoint"));
    // An adapter on the wrong base is refused by name.
    r = run_cmd("bin/generate --device cpu --model " + d + "/m/model.ckpt --adapter " + d + "/m/adapter.ckpt --prompt x");
    EXPECT_EQ(r.rc, 1) << r.out;
    EXPECT_THAT(r.out, HasSubstr("already carry"));
}

// L2-SP without --init anchors to the random initialisation: allowed (the run is well defined) but said.
TEST(MethodsCli, AnAnchorWithoutInitIsNoted) {
    TempDir tmp("anchor");
    write_shard(tmp.file("t.bin"), pattern_tokens(500, 1), nullptr, 37);
    CmdResult r = run_cmd("bin/train --device cpu --model tiny --train-data " + tmp.file("t.bin") +
                          " --seq 16 --batch 2 --steps 1 --l2sp 0.1 --out ''");
    EXPECT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("note: --l2sp without --init holds the weights to random ones"));
}

// The Fisher file on its own: what write_fisher writes, read_fisher hands back value for value, in the table's
// order; a tensor of another shape is refused by name even when its count matches (a transposed (3, 5) read into
// (5, 3) would put every value at another parameter's place), and so is a tensor the file lacks.
TEST(FisherFile, RoundTripsAndRefusesAnotherShape) {
    TempDir tmp("fisher");
    const std::string path = tmp.path() + "/f.safetensors";
    Table g;
    g.add("h.0.attn.c_attn.weight", {3, 5});
    g.add("ln_f.bias", {5});
    std::vector<std::vector<float>> values = {cast<float>(randn(15, 3)), cast<float>(randn(5, 4))};
    for (auto& v : values)
        for (float& x : v) x = x * x;
    write_fisher(path, g, values, 7);
    std::vector<std::vector<float>> got(g.size());
    std::vector<size_t> order;
    read_fisher(path, g, [&](size_t i, const std::vector<float>& v) { order.push_back(i), got[i] = v; });
    EXPECT_EQ(order, (std::vector<size_t>{0, 1}));
    EXPECT_EQ(got, values);
    EXPECT_EQ(SafetensorsFile(path).metadata().at("batches"), "7");

    Table transposed;
    transposed.add("h.0.attn.c_attn.weight", {5, 3});
    transposed.add("ln_f.bias", {5});
    try {
        read_fisher(path, transposed, [](size_t, const std::vector<float>&) {});
        ADD_FAILURE() << "a (3, 5) Fisher was read into a (5, 3) tensor";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("f.safetensors: tensor 'h.0.attn.c_attn.weight' has shape (3, 5), the "
                                        "model's has (5, 3)"));
    }
    Table more = g;
    more.add("ln_f.weight", {5});
    try {
        read_fisher(path, more, [](size_t, const std::vector<float>&) {});
        ADD_FAILURE() << "a Fisher without 'ln_f.weight' was accepted";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("no Fisher values for trainable tensor 'ln_f.weight'"));
    }
    // The project's other files, given as --fisher by mistake, are named for what they are.
    write_shard(tmp.path() + "/t.bin", {1, 2, 3}, nullptr, 37);
    EXPECT_THAT(error_of([&] { read_fisher(tmp.path() + "/t.bin", g, [](size_t, const std::vector<float>&) {}); }),
                HasSubstr("t.bin: is a token shard, not a Fisher file (safetensors)"));
    spit(tmp.path() + "/c.ckpt", std::string("TUNECKPT") + std::string(64, '\1'));
    EXPECT_THAT(error_of([&] { read_fisher(tmp.path() + "/c.ckpt", g, [](size_t, const std::vector<float>&) {}); }),
                HasSubstr("c.ckpt: is a tune.cu checkpoint, not a Fisher file"));
}

}  // namespace
}  // namespace tune::test
