// Parameter-efficient fine-tuning and recomputation in the model (CPU backend): LoRA with B = 0 is the base
// model, merged equals unmerged, finite-difference gradients in double for every PEFT tensor (LoRA with
// dropout, soft prompt, P-tuning, prefix tuning), generation with virtual tokens against the full forward,
// distillation, and bit-identical gradients under every recomputation mode.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "tests/model_util.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

PeftConfig lora_cfg(unsigned targets = kLoraAll, int r = 3, float dropout = 0) {
    PeftConfig p;
    p.lora_rank = r;
    p.lora_alpha = 5;
    p.lora_targets = targets;
    p.lora_dropout = dropout;
    return p;
}

PeftConfig virtual_cfg(Virtual v, int P = 3, int H = 5) {
    PeftConfig p;
    p.virt = v;
    p.n_virtual = P;
    p.hidden = H;
    return p;
}

// Base frozen, PEFT tensors train (the mask covers the base table only).
Trainable frozen_base(const ModelConfig& c) {
    Trainable t;
    t.tensor.assign(num_base_tensors(c), false);
    return t;
}

// Copies every base tensor of `from` into `to`.
void copy_base(GPT2& from, GPT2& to) {
    for (size_t i = 0; i < from.num_base_tensors(); i++)
        set_tensor(to, to.params(), i, get_tensor(from, from.params(), i));
}

std::vector<double> all_logits(GPT2& m, const Data& d) {
    m.forward(d.x.data(), d.B, d.T);
    std::vector<double> out;
    for (int b = 0; b < d.B; b++)
        for (int t = 0; t < d.T; t++) {
            auto row = m.logits_row(b, t);
            out.insert(out.end(), row.begin(), row.begin() + m.config().vocab_size);
        }
    return out;
}

// Central difference of `objective` in element j of parameter tensor i against the analytic gradient.
void expect_fd(GPT2& m, size_t i, size_t j, double analytic, const std::function<double()>& objective) {
    auto p = get_tensor(m, m.params(), i);
    const double h = 1e-5, old = p[j];
    p[j] = old + h;
    set_tensor(m, m.params(), i, p);
    const double lp = objective();
    p[j] = old - h;
    set_tensor(m, m.params(), i, p);
    const double lm = objective();
    p[j] = old;
    set_tensor(m, m.params(), i, p);
    const double num = (lp - lm) / (2 * h);
    EXPECT_NEAR(analytic, num, kGradTol * std::fabs(num) + 1e-9) << m.params().table()[i].name << "[" << j << "]";
}

// Finite differences in double on 3 random entries of every PEFT tensor.
void check_peft_gradients(GPT2& m, const Data& d) {
    mean_loss(m, d, true);
    const Table& t = m.params().table();
    Rng pick(11);
    int checked = 0;
    for (size_t i = m.num_base_tensors(); i < t.size(); i++) {
        ASSERT_GE(m.grad_index()[i], 0) << t[i].name;
        const auto g = get_tensor(m, m.grads(), (size_t)m.grad_index()[i]);
        for (int k = 0; k < 3; k++, checked++) {
            const size_t j = pick.below(t[i].numel);
            expect_fd(m, i, j, g[j], [&] { return mean_loss(m, d, false); });
        }
    }
    EXPECT_GT(checked, 0);
    // The frozen base has no gradient buffers at all.
    for (size_t i = 0; i < m.num_base_tensors(); i++) EXPECT_EQ(m.grad_index()[i], -1) << t[i].name;
}

// Isolated windows with virtual tokens: the P virtual positions start the row, and every packed document sees
// them, at its own positions after them. Three documents packed in one row give the token losses and every
// gradient (base and virtual tensors) of the three alone in rows of their own, for each kind of virtual token.
TEST(PeftModel, PackedDocumentsSeeTheVirtualTokensAsEachAloneF64_Prompt_Ptune_Prefix) {
    const int T = 12, V = 37;
    const ModelConfig c = small_config(V, 2, 3, 12, 16);
    const PackedDocuments docs = packed_documents({4, 5, 3}, T, V, 51);
    const Data &packed = docs.packed, &alone = docs.alone;
    const std::vector<int32_t>& pos = docs.pos;
    auto be = make_cpu_backend(DType::f64);
    const float dloss = 1.0f / (float)counted(packed.w);
    for (Virtual v : {Virtual::prompt, Virtual::ptune, Virtual::prefix, Virtual::prefix_kv}) {
        ModelOptions o;
        o.peft = virtual_cfg(v, 3, 5);
        GPT2 single(c, *be, 3, T, nullptr, o), m(c, *be, 1, T, nullptr, o);
        for (GPT2* g : {&single, &m}) {
            g->init_random(7);
            randomise_peft(*g, 8);
            g->zero_grads();
        }
        single.forward(alone.x.data(), 3, T, alone.w.data());
        const double want = single.loss(alone.y.data(), alone.w.data(), dloss, true);
        single.backward();
        m.forward(packed.x.data(), 1, T, packed.w.data(), pos.data());
        EXPECT_NEAR(m.loss(packed.y.data(), packed.w.data(), dloss, true), want, 1e-12 * std::fabs(want))
            << virtual_name(v);
        m.backward();
        for (size_t i = 0; i < m.grads().table().size(); i++)
            EXPECT_TRUE(near_rel(get_tensor(m, m.grads(), i), get_tensor(single, single.grads(), i), 1e-10))
                << virtual_name(v) << " " << m.grads().table()[i].name;
    }
}

TEST(PeftModel, LoraWithZeroBLeavesLogitsBitIdentical_AllSites) {
    auto be = make_cpu_backend(DType::f32);
    const ModelConfig c = small_config();
    GPT2 base(c, *be, 2, 7);
    base.init_random(3);
    ModelOptions o;
    o.peft = lora_cfg();
    GPT2 m(c, *be, 2, 7, nullptr, o);
    copy_base(base, m);
    m.init_peft(9, {});
    const Data d = random_data(2, 7, 37, 4, false);
    const auto want = all_logits(base, d), got = all_logits(m, d);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(double)), 0);
    // A is not zero (else nothing could ever train).
    const int a = m.params().table().find("h.1.mlp.c_proj.lora_A");
    ASSERT_GE(a, 0);
    double norm = 0;
    for (double v : get_tensor(m, m.params(), a)) norm += v * v;
    EXPECT_GT(norm, 0.0);
}

TEST(PeftModel, MergedLoraEqualsUnmergedF64) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config();
    ModelOptions o;
    o.peft = lora_cfg(kLoraAll, 4);
    GPT2 m(c, *be, 2, 7, nullptr, o);
    m.init_random(5);
    randomise_peft(m, 70);
    GPT2 merged(c, *be, 2, 7);
    for (size_t i = 0; i < merged.num_base_tensors(); i++) {
        const auto w = m.merged_base_tensor(i);
        set_tensor(merged, merged.params(), i, std::vector<double>(w.begin(), w.end()));
    }
    const Data d = random_data(2, 7, 37, 8, false);
    const auto a = all_logits(m, d), b = all_logits(merged, d);
    // merged_base_tensor returns floats: f32 rounding of the weights is the whole difference.
    EXPECT_TRUE(near_rel(b, a, 1e-6));
    // And the update is not negligible: merging changed the logits well beyond that tolerance.
    GPT2 plain(c, *be, 2, 7);
    copy_base(m, plain);
    EXPECT_FALSE(near_rel(all_logits(plain, d), a, 1e-3));
}

TEST(PeftModel, LoraGradientsMatchFiniteDifferencesF64_EachSiteAndDropout) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config();
    for (unsigned targets : {1u << kLoraQkv, 1u << kLoraAttnProj, 1u << kLoraMlpUp, 1u << kLoraMlpDown, kLoraAll}) {
        for (float dropout : {0.0f, 0.3f}) {
            SCOPED_TRACE("targets " + lora_targets_string(targets) + " dropout " + std::to_string(dropout));
            ModelOptions o;
            o.peft = lora_cfg(targets, 3, dropout);
            const Trainable fr = frozen_base(c);
            GPT2 m(c, *be, 2, 7, &fr, o);
            m.init_random(6);
            randomise_peft(m, 80);
            m.set_training(true, 1234);  // a fixed mask: the loss is a deterministic function of the weights
            check_peft_gradients(m, random_data(2, 7, 37, 9, true));
        }
    }
}

// The MLP's separate d(gelu output) buffer (N x 4C, the largest scratch) exists only for LoRA on mlp_down,
// whose gradient adds into it; every other configuration does without (the gradient checks above cover both).
TEST(PeftModel, SeparateMlpGradientBufferOnlyWithLoraOnMlpDown) {
    auto be = make_cpu_backend(DType::f32);
    const ModelConfig c = small_config();
    for (unsigned targets : {0u, 1u << kLoraQkv, (unsigned)kLoraAll & ~(1u << kLoraMlpDown), 1u << kLoraMlpDown}) {
        ModelOptions o;
        if (targets) o.peft = lora_cfg(targets);
        GPT2 m(c, *be, 2, 7, nullptr, o);
        EXPECT_EQ(m.scratch().table().find("d_4C_a") >= 0, targets == (1u << kLoraMlpDown))
            << "targets " << lora_targets_string(targets);
    }
}

TEST(PeftModel, DropoutChangesTheLossOnlyInTraining) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config();
    ModelOptions o;
    o.peft = lora_cfg(kLoraAll, 3, 0.5f);
    GPT2 m(c, *be, 2, 7, nullptr, o);
    m.init_random(6);
    randomise_peft(m, 80);
    const Data d = random_data(2, 7, 37, 9, false);
    const double eval1 = mean_loss(m, d, false);
    m.set_training(true, 1);
    const double train1 = mean_loss(m, d, false);
    m.set_training(true, 2);
    const double train2 = mean_loss(m, d, false);
    m.set_training(false);
    EXPECT_EQ(mean_loss(m, d, false), eval1);
    EXPECT_NE(train1, eval1);
    EXPECT_NE(train1, train2);
}

TEST(PeftModel, VirtualTokenGradientsMatchFiniteDifferencesF64_PromptPtunePrefixPrefixKv) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config(37, 2, 3, 12, 12);
    for (Virtual v : {Virtual::prompt, Virtual::ptune, Virtual::prefix, Virtual::prefix_kv}) {
        SCOPED_TRACE(virtual_name(v));
        ModelOptions o;
        o.peft = virtual_cfg(v, 3, 5);
        const Trainable fr = frozen_base(c);
        GPT2 m(c, *be, 2, 7, &fr, o);
        m.init_random(7);
        randomise_peft(m, 90);
        check_peft_gradients(m, random_data(2, 7, 37, 10, true));
    }
}

TEST(PeftModel, VirtualTokensChangeTheOutputAndShiftPositions_Prompt) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config(37, 2, 3, 12, 12);
    ModelOptions o;
    o.peft = virtual_cfg(Virtual::prompt, 3);
    GPT2 m(c, *be, 1, 5, nullptr, o);
    m.init_random(8);
    // With the prompt set to what the embedding of tokens p0 p1 p2 at positions 0..2 would be, the model
    // must see exactly the sequence p0 p1 p2 x0..x4: compare with the plain model on that sequence.
    const std::vector<int32_t> pre = {4, 17, 30};
    m.init_peft(1, pre);
    GPT2 plain(c, *be, 1, 8);
    copy_base(m, plain);
    const Data d = random_data(1, 5, 37, 11, false);
    Data full{1, 8, {}, {}, {}};
    full.x = pre;
    full.x.insert(full.x.end(), d.x.begin(), d.x.end());
    const auto want_all = all_logits(plain, full);
    const std::vector<double> want(want_all.begin() + 3 * 37, want_all.end());
    EXPECT_TRUE(near_rel(all_logits(m, d), want, 1e-6));  // init_peft computes the rows in float
    EXPECT_EQ(m.max_positions(), 12 - 3);
}

TEST(PeftModel, CachedGenerationWithVirtualTokensEqualsFullForwardF64) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config(37, 2, 3, 12, 12);
    for (Virtual v : {Virtual::prompt, Virtual::ptune, Virtual::prefix, Virtual::prefix_kv}) {
        SCOPED_TRACE(virtual_name(v));
        ModelOptions o;
        o.peft = virtual_cfg(v, 3, 5);
        GPT2 m(c, *be, 1, 7, nullptr, o);
        m.init_random(9);
        randomise_peft(m, 100);
        const Data d = random_data(1, 7, 37, 12, false);
        const auto full = all_logits(m, d);
        // The head on the last position only: the prompt's last row.
        m.forward_cached(d.x.data(), 1, 4, 0, true);
        const auto last = m.logits_row(0, 3);
        EXPECT_TRUE(near_rel(std::vector<double>(last.begin(), last.begin() + 37),
                             std::vector<double>(full.begin() + 3 * 37, full.begin() + 4 * 37), 1e-10));
        // Prefill 4, then 3 single tokens.
        std::vector<double> got;
        m.forward_cached(d.x.data(), 1, 4, 0);
        for (int t = 0; t < 4; t++) {
            auto r = m.logits_row(0, t);
            got.insert(got.end(), r.begin(), r.begin() + 37);
        }
        for (int t = 4; t < 7; t++) {
            m.forward_cached(&d.x[t], 1, 1, t);
            auto r = m.logits_row(0, 0);
            got.insert(got.end(), r.begin(), r.begin() + 37);
        }
        EXPECT_TRUE(near_rel(got, full, 1e-12));
    }
}

TEST(PeftModel, FoldedVirtualTokensGiveTheSameLogitsF64_PtuneToPrompt_PrefixToKv) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config(37, 2, 3, 12, 12);
    for (Virtual v : {Virtual::ptune, Virtual::prefix}) {
        SCOPED_TRACE(virtual_name(v));
        ModelOptions o;
        o.peft = virtual_cfg(v, 3, 5);
        GPT2 m(c, *be, 2, 6, nullptr, o);
        m.init_random(10);
        randomise_peft(m, 110);
        ModelOptions f;
        f.peft = m.folded_virtual_config();
        EXPECT_EQ(f.peft.virt, v == Virtual::ptune ? Virtual::prompt : Virtual::prefix_kv);
        GPT2 folded(c, *be, 2, 6, nullptr, f);
        copy_base(m, folded);
        const auto t = m.folded_virtual_tensor();
        set_tensor(folded, folded.params(), folded.num_base_tensors(), std::vector<double>(t.begin(), t.end()));
        const Data d = random_data(2, 6, 37, 13, false);
        EXPECT_TRUE(near_rel(all_logits(folded, d), all_logits(m, d), 1e-6));  // the fold goes through floats
    }
}

// Gradients (every tensor's) after one forward/backward, as raw bytes. `weighted`: the forward gets the loss
// weights, so the LM head runs on the counted rows only (gathered, and chunked when the model says so).
std::vector<std::vector<double>> grads_of(GPT2& m, const Data& d, bool weighted = false) {
    if (weighted) {
        m.zero_grads();
        m.forward(d.x.data(), d.B, d.T, d.w.data());
        m.loss(d.y.data(), d.w.data(), 1.0f / (float)counted(d.w), true);
        m.backward();
    } else {
        mean_loss(m, d, true);
    }
    std::vector<std::vector<double>> g;
    for (size_t i = 0; i < m.grads().table().size(); i++) g.push_back(get_tensor(m, m.grads(), i));
    return g;
}

TEST(PeftModel, RecomputeModesGiveBitIdenticalGradientsAndUseLessMemoryF32) {
    auto be = make_cpu_backend(DType::f32);
    const ModelConfig c = small_config(37, 3, 3, 12, 12);
    // Full fine-tuning, LoRA with dropout, prefix tuning, then a prompt on a frozen base (the lowest block's
    // input gradient skipped), and full fine-tuning with the head on the counted rows, 4 at a time.
    for (int variant = 0; variant < 5; variant++) {
        SCOPED_TRACE("variant " + std::to_string(variant));
        std::vector<std::vector<std::vector<double>>> grads;
        std::vector<size_t> bytes;
        for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full}) {
            ModelOptions o;
            o.recompute = r;
            if (variant == 1) o.peft = lora_cfg(kLoraAll, 2, 0.2f);
            if (variant == 2) o.peft = virtual_cfg(Virtual::prefix, 2, 4);
            if (variant == 3) o.peft = virtual_cfg(Virtual::prompt, 2, 4);
            if (variant == 4) o.head_chunk = 4;
            const Trainable fr = frozen_base(c);
            GPT2 m(c, *be, 3, 7, variant == 3 ? &fr : nullptr, o);
            m.init_random(12);
            if (o.peft.any()) randomise_peft(m, 120);
            m.set_training(true, 77);
            grads.push_back(grads_of(m, random_data(3, 7, 37, 14, true), variant == 4));
            bytes.push_back(m.act_bytes());
        }
        for (size_t k = 1; k < grads.size(); k++) {
            ASSERT_EQ(grads[k].size(), grads[0].size());
            for (size_t i = 0; i < grads[0].size(); i++)
                EXPECT_EQ(std::memcmp(grads[k][i].data(), grads[0][i].data(), grads[0][i].size() * sizeof(double)), 0)
                    << "mode " << k << " tensor " << i;
        }
        EXPECT_LT(bytes[1], bytes[0]);
        EXPECT_LT(bytes[2], bytes[1]);
    }
}

TEST(PeftModel, DistillationGradientMatchesFiniteDifferencesAndAlphaZeroIsPlainCrossEntropyF64) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config();
    GPT2 teacher(c, *be, 2, 7), m(c, *be, 2, 7);
    teacher.init_random(20);
    m.init_random(21);
    const Data d = random_data(2, 7, 37, 15, true);
    const double n = (double)counted(d.w);
    auto objective = [&](float alpha, float tau, bool backward) {
        if (backward) m.zero_grads();
        teacher.forward(d.x.data(), d.B, d.T, d.w.data());
        m.forward(d.x.data(), d.B, d.T, d.w.data());
        auto [ce, kl] = m.loss_distill(d.y.data(), d.w.data(), (float)(1.0 / n), teacher, alpha, tau);
        if (backward) m.backward();
        return ((1 - alpha) * ce + alpha * kl) / n;
    };
    // alpha = 0: exactly the cross-entropy gradients.
    objective(0.0f, 2.0f, true);
    std::vector<std::vector<double>> g0;
    for (size_t i = 0; i < m.grads().table().size(); i++) g0.push_back(get_tensor(m, m.grads(), i));
    m.zero_grads();
    m.forward(d.x.data(), d.B, d.T, d.w.data());
    m.loss(d.y.data(), d.w.data(), (float)(1.0 / n), true);
    m.backward();
    std::vector<std::vector<double>> gce;
    for (size_t i = 0; i < m.grads().table().size(); i++) gce.push_back(get_tensor(m, m.grads(), i));
    for (size_t i = 0; i < g0.size(); i++)
        EXPECT_EQ(std::memcmp(g0[i].data(), gce[i].data(), g0[i].size() * sizeof(double)), 0) << i;
    // alpha = 0.6, tau = 2: finite differences on a few weights of the last block and ln_f.
    objective(0.6f, 2.0f, true);
    const Table& t = m.params().table();
    Rng pick(3);
    for (const char* name : {"h.1.mlp.c_proj.weight", "ln_f.weight", "wte"}) {
        const int i = t.find(name);
        const auto g = get_tensor(m, m.grads(), (size_t)m.grad_index()[i]);
        for (int k = 0; k < 3; k++) {
            const size_t j = pick.below(name == std::string("wte") ? 37 * 12 : t[i].numel);
            expect_fd(m, (size_t)i, j, g[j], [&] { return objective(0.6f, 2.0f, false); });
        }
    }
    // Student == teacher: the distillation term is zero.
    for (size_t i = 0; i < t.size(); i++) set_tensor(m, m.params(), i, get_tensor(teacher, teacher.params(), i));
    teacher.forward(d.x.data(), d.B, d.T, d.w.data());
    m.forward(d.x.data(), d.B, d.T, d.w.data());
    EXPECT_NEAR(m.loss_distill(d.y.data(), d.w.data(), 1.0f, teacher, 0.5f, 3.0f).second, 0.0, 1e-12);
}

// Distillation with either head in chunks (ModelOptions::head_chunk: the teacher's logits made chunk by
// chunk beside the student's): the same CE, KL and gradients as with both heads whole, every row counted or
// the counted rows gathered, and with a soft prompt on the student.
TEST(PeftModel, DistillationWithChunkedHeadsEqualsWholeHeadsF64) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config(37, 2, 3, 12, 12);
    for (int variant = 0; variant < 3; variant++) {  // every row; counted rows; soft prompt on the student
        const Data d = random_data(2, 7, 37, 30 + variant, true);
        auto run = [&](size_t student_chunk, size_t teacher_chunk) {
            ModelOptions so, to;
            so.head_chunk = student_chunk;
            to.head_chunk = teacher_chunk;
            if (variant == 2) so.peft = virtual_cfg(Virtual::prompt, 3);
            GPT2 teacher(c, *be, 2, 7, nullptr, to), m(c, *be, 2, 7, nullptr, so);
            teacher.init_random(40);
            m.init_random(41);
            if (variant == 2) randomise_peft(m, 42);
            m.zero_grads();
            const float* w = variant == 0 ? nullptr : d.w.data();
            teacher.forward(d.x.data(), d.B, d.T, w);
            m.forward(d.x.data(), d.B, d.T, w);
            auto [ce, kl] = m.loss_distill(d.y.data(), d.w.data(), 0.1f, teacher, 0.6f, 2.0f);
            m.backward();
            std::vector<double> out = {ce, kl};
            for (size_t i = 0; i < m.grads().table().size(); i++) {
                const auto g = get_tensor(m, m.grads(), i);
                out.insert(out.end(), g.begin(), g.end());
            }
            return out;
        };
        const auto whole = run(0, 0);
        for (auto [sc, tc] : {std::pair<size_t, size_t>{4, 4}, {5, 0}, {0, 3}, {3, 7}}) {
            SCOPED_TRACE("variant " + std::to_string(variant) + ", student chunk " + std::to_string(sc) +
                         ", teacher chunk " + std::to_string(tc));
            EXPECT_TRUE(near_rel(run(sc, tc), whole, 1e-12));
        }
    }
}

TEST(PeftModel, BackwardFloorLeavesLowerBlocksWithoutGradient) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config(37, 3, 3, 12, 9);
    GPT2 m(c, *be, 2, 7);
    m.init_random(30);
    GPT2 whole(c, *be, 2, 7);  // the same model without a floor
    whole.init_random(30);
    m.set_backward_floor(2);
    const Data d = random_data(2, 7, 37, 16, false);
    mean_loss(m, d, true);
    mean_loss(whole, d, true);
    const Table& g = m.grads().table();
    for (size_t i = 0; i < g.size(); i++) {
        const std::vector<double> got = get_tensor(m, m.grads(), i);
        double norm = 0;
        for (double v : got) norm += v * v;
        const bool above = g[i].name.rfind("h.2.", 0) == 0 || g[i].name.rfind("ln_f", 0) == 0;
        if (above) {  // the blocks above the floor get exactly the gradients they get without one
            EXPECT_GT(norm, 0.0) << g[i].name;
            EXPECT_EQ(got, get_tensor(whole, whole.grads(), i)) << g[i].name;
        } else if (g[i].name == "wte") {  // the head's share only: no embedding gradient from below the floor
            EXPECT_GT(norm, 0.0) << g[i].name;
            EXPECT_NE(got, get_tensor(whole, whole.grads(), i)) << g[i].name;
        } else {
            EXPECT_EQ(norm, 0.0) << g[i].name;
        }
    }
}

// GPT2::resize: a model re-sized to a new batch and length (larger, then smaller) computes the losses and gradients
// of one built for that shape, with LoRA or virtual tokens and with recomputation, and generates through a KV cache
// sized anew. The gradients it had are kept (a resize touches only activations).
TEST(PeftModel, ResizedModelEqualsOneBuiltForTheNewShapeF64_B2T5_to_B3T11_to_B1T4) {
    const int V = 37;
    const ModelConfig c = small_config(V, 2, 3, 12, 16);
    auto be = make_cpu_backend(DType::f64);
    for (int kind = 0; kind < 3; kind++) {
        ModelOptions o;
        if (kind == 1) o.peft = lora_cfg(kLoraAll, 3, 0);
        if (kind == 2) o.peft = virtual_cfg(Virtual::prefix, 3, 5);
        o.recompute = kind == 1 ? Recompute::full : Recompute::selective;
        GPT2 m(c, *be, 2, 5, nullptr, o);
        m.init_random(7);
        randomise_peft(m, 8);
        const Data first = random_data(2, 5, V, 30, true);
        mean_loss(m, first, true);
        m.forward_cached(first.x.data(), 2, 5, 0);  // a KV cache for 2 sequences, too few for the next shape
        Data last = first;
        for (const auto& [B, T] : {std::pair<int, int>{3, 11}, {1, 4}}) {
            SCOPED_TRACE("kind " + std::to_string(kind) + ", B " + std::to_string(B) + ", T " + std::to_string(T));
            // A forward whose gradient is ready: the resize drops it, so a backward after it has nothing to do.
            m.forward(last.x.data(), last.B, last.T, last.w.data());
            m.loss(last.y.data(), last.w.data(), 1.0f, true);
            const std::vector<double> kept = get_tensor(m, m.grads(), 0);
            m.resize(B, T);
            EXPECT_EQ(m.max_B(), B);
            EXPECT_EQ(m.max_T(), T);
            m.backward();
            EXPECT_EQ(get_tensor(m, m.grads(), 0), kept);
            GPT2 fresh(c, *be, B, T, nullptr, o);
            fresh.init_random(7);
            randomise_peft(fresh, 8);
            const Data d = random_data(B, T, V, 31 + (uint64_t)T, true);
            const double want = mean_loss(fresh, d, true);
            m.zero_grads();
            EXPECT_NEAR(mean_loss(m, d, true), want, 1e-13 * std::fabs(want));
            for (size_t i = 0; i < m.grads().table().size(); i++)
                EXPECT_EQ(get_tensor(m, m.grads(), i), get_tensor(fresh, fresh.grads(), i)) << m.grads().table()[i].name;
            EXPECT_EQ(m.act_bytes(), fresh.act_bytes());
            // Generation: a prefill of T tokens, then one more, through the cache.
            for (GPT2* g : {&m, &fresh}) {
                g->forward_cached(d.x.data(), B, T, 0);
                g->forward_cached(d.x.data(), B, 1, T);
            }
            EXPECT_EQ(m.logits_row(B - 1, 0), fresh.logits_row(B - 1, 0));
            last = d;
        }
        EXPECT_THROW(m.resize(1, c.block_size + 1), Error);
    }
}

}  // namespace
}  // namespace tune::test
