// The whole GPT-2 model on the CUDA backend against the CPU backend, in fp32, bf16 and fp16: logits, loss and
// every parameter gradient (a small awkward config, and GPT-2 124M's shapes at small B, T), frozen tensors,
// masking, 20 AdamW steps following the CPU loss curve, and two identical runs giving identical bits.
// In bf16/fp16 the CPU model starts from the GPU's rounded parameters, so only the computation differs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "model/config.h"
#include "model/rng.h"
#include "tests/model_util.h"
#include "tests/test_cuda_util.h"
#include "tests/test_util.h"
#include "train/optimizer.h"

// The CUDA emulator's count of live events (tests/emu/cuda_emu_runtime.cpp); null on a GPU, where the check
// that uses it is left out.
extern "C" long cuda_emu_live_events() __attribute__((weak));

namespace tune::test {
namespace {

class CudaModel : public CudaTest {};

void copy_params(GPT2& from, GPT2& to) {
    for (size_t i = 0; i < from.params().table().size(); i++)
        set_tensor(to, to.params(), i, get_tensor(from, from.params(), i));
}

// Random LayerNorm gains and biases (not 1 and 0), so every term of every gradient is exercised.
void randomize_vectors(GPT2& m, uint64_t seed) {
    const Table& t = m.params().table();
    for (size_t i = 0; i < t.size(); i++)
        if (t[i].shape.size() == 1) set_tensor(m, m.params(), i, randn(t[i].numel, seed + i, 0.3));
}

struct Tolerances {
    double logits, loss, grads;
};

// Compares the GPU model against the reference on one batch: logits of every position, the loss, and the
// gradient of every trainable tensor.
void expect_same_forward_backward(GPT2& g, GPT2& r, const Data& d, const Tolerances& tol) {
    const double lg = mean_loss(g, d, true), lr = mean_loss(r, d, true);
    EXPECT_NEAR(lg, lr, tol.loss * std::fabs(lr)) << "mean loss";
    // The logits buffer now holds dlogits: compare logits from a forward pass of their own.
    g.forward(d.x.data(), d.B, d.T);
    r.forward(d.x.data(), d.B, d.T);
    for (int b = 0; b < d.B; b++)
        for (int t = 0; t < d.T; t++) {
            auto zg = g.logits_row(b, t), zr = r.logits_row(b, t);
            ASSERT_TRUE(near_rel(zg, zr, tol.logits)) << "logits at position " << b << "," << t;
        }
    const Table& gt = g.grads().table();
    ASSERT_EQ(gt.size(), r.grads().table().size());
    for (size_t i = 0; i < gt.size(); i++)
        EXPECT_TRUE(near_rel(get_tensor(g, g.grads(), i), get_tensor(r, r.grads(), i), tol.grads)) << gt[i].name;
}

TEST_P(CudaModel, ForwardBackwardMatchesCpu_L2_NH3_C12_V37_B2_T7) {
    GPT2 g(small_config(), gpu(), 2, 7), r(small_config(), ref(), 2, 7);
    g.init_random(42);
    randomize_vectors(g, 100);
    copy_params(g, r);
    const Tolerances tol = dt() == DType::f32 ? Tolerances{1e-5, 1e-6, 1e-4} : Tolerances{3e-2, 1e-2, 5e-2};
    expect_same_forward_backward(g, r, random_data(2, 7, 37, 7, true), tol);
}

// Isolated document windows: packed documents with positions of their own (the encoder's wpe rows and the
// attention's document mask, matmul path: HS = 4), with and without full recomputation, and with prefix-tuning's
// virtual tokens, which every document sees, against the CPU.
TEST_P(CudaModel, PackedDocumentPositionsMatchCpu_L2_NH3_C12_B2_T11_RecomputeNoneAndFull_Prefix3) {
    const ModelConfig cfg = small_config(37, 2, 3, 12, 16);
    const int B = 2, T = 11;
    const std::vector<int32_t> pos = {0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1};
    const Data d = random_data(B, T, 37, 9, true);
    const Tolerances tol = dt() == DType::f32 ? Tolerances{1e-5, 1e-6, 1e-4} : Tolerances{3e-2, 1e-2, 5e-2};
    for (int k = 0; k < 4; k++) {  // none, full; prefix tuning with none, full
        const Recompute rc = k % 2 ? Recompute::full : Recompute::none;
        ModelOptions o;
        o.recompute = rc;
        if (k >= 2) {
            o.peft.virt = Virtual::prefix;
            o.peft.n_virtual = 3;
            o.peft.hidden = 5;
        }
        GPT2 g(cfg, gpu(), B, T, nullptr, o), r(cfg, ref(), B, T, nullptr, ModelOptions{o.peft});
        g.init_random(43);
        randomize_vectors(g, 200);
        if (k >= 2) randomise_peft(g, 300);
        copy_params(g, r);
        const float dloss = 1.0f / (float)counted(d.w);
        for (GPT2* m : {&g, &r}) {
            m->zero_grads();
            m->forward(d.x.data(), B, T, d.w.data(), pos.data());
        }
        const double lg = g.loss(d.y.data(), d.w.data(), dloss, true), lr = r.loss(d.y.data(), d.w.data(), dloss, true);
        EXPECT_NEAR(lg, lr, tol.loss * std::fabs(lr)) << "case " << k << ", " << recompute_name(rc);
        g.backward();
        r.backward();
        for (size_t i = 0; i < g.grads().table().size(); i++)
            EXPECT_TRUE(near_rel(get_tensor(g, g.grads(), i), get_tensor(r, r.grads(), i), tol.grads))
                << recompute_name(rc) << " " << g.grads().table()[i].name;
        g.forward(d.x.data(), B, T, nullptr, pos.data());
        r.forward(d.x.data(), B, T, nullptr, pos.data());
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                ASSERT_TRUE(near_rel(g.logits_row(b, t), r.logits_row(b, t), tol.logits))
                    << "logits at " << b << "," << t;
    }
}

// GPT-2 124M's shapes (L=12, NH=12, C=768, V=50257, Vp=50304) at B=2, T=32.
TEST_P(CudaModel, ForwardBackwardMatchesCpu_Gpt2_124M_B2_T32) {
    const ModelConfig cfg = preset_config("gpt2");
    GPT2 g(cfg, gpu(), 2, 32), r(cfg, ref(), 2, 32);
    g.init_random(7);
    randomize_vectors(g, 500);  // biases and LayerNorm gains off their 0 and 1, so their paths are compared
    copy_params(g, r);
    const Tolerances tol = dt() == DType::f32 ? Tolerances{1e-4, 1e-5, 5e-4} : Tolerances{5e-2, 1e-2, 1e-1};
    expect_same_forward_backward(g, r, random_data(2, 32, cfg.vocab_size, 8, true), tol);
}

// Frozen tensors have null gradient pointers: wpe (encoder backward with dwpe null), every bias (matmul and
// LayerNorm backward with dbias null) and the first LayerNorm gains (dweight null). wte still trains.
TEST_P(CudaModel, FrozenTensorsSkipTheirGradientsAndTheRestMatch_L2_C12) {
    const Table pt = gpt2_param_table(small_config());
    Trainable tr;
    tr.tensor.assign(pt.size(), true);
    for (size_t i = 0; i < pt.size(); i++) {
        const std::string& n = pt[i].name;
        if (n == "wpe" || n.find(".bias") != std::string::npos || n.find("ln_1.weight") != std::string::npos)
            tr.tensor[i] = false;
    }
    GPT2 g(small_config(), gpu(), 2, 7, &tr), r(small_config(), ref(), 2, 7, &tr);
    g.init_random(3);
    randomize_vectors(g, 200);
    copy_params(g, r);
    ASSERT_EQ(g.grads().table().find("wpe"), -1);
    const Tolerances tol = dt() == DType::f32 ? Tolerances{1e-5, 1e-6, 1e-4} : Tolerances{3e-2, 1e-2, 5e-2};
    expect_same_forward_backward(g, r, random_data(2, 7, 37, 9, false), tol);
}

TEST_P(CudaModel, MaskedTokensContributeNothing_L2_C12) {
    GPT2 m(small_config(), gpu(), 2, 7);
    m.init_random(11);
    Data d = random_data(2, 7, 37, 3, true);
    ASSERT_GT(counted(d.w), 0u);
    ASSERT_LT(counted(d.w), d.w.size());
    const double l1 = mean_loss(m, d, true);
    std::vector<std::vector<double>> g1;
    for (size_t i = 0; i < m.grads().table().size(); i++) g1.push_back(get_tensor(m, m.grads(), i));
    auto losses = m.token_losses();
    for (size_t i = 0; i < d.w.size(); i++) {
        if (d.w[i] == 0.0f) {
            EXPECT_EQ(losses[i], 0.0f) << "token " << i;
        }
    }
    Rng r(99);
    for (size_t i = 0; i < d.y.size(); i++)
        if (d.w[i] == 0.0f) d.y[i] = (int32_t)((d.y[i] + 1 + r.below(36)) % 37);
    const double l2 = mean_loss(m, d, true);
    EXPECT_EQ(l1, l2);
    for (size_t i = 0; i < g1.size(); i++) EXPECT_EQ(g1[i], get_tensor(m, m.grads(), i)) << m.grads().table()[i].name;
}

// 20 AdamW steps on a fixed batch from the same start: the GPU's loss curve follows the CPU's (fp32
// backend) within 1e-4 relative in fp32 and 2% in bf16/fp16, and so does the gradient norm over the first
// steps. Later the gradient norm is left alone: Adam divides by sqrt(v), so rounding differences in tiny
// gradients become lr-sized steps and the two trajectories drift apart in the gradient (the CUDA emulator
// saw 1e-3 in fp32 and 9% in bf16 by step 15) long before they do in the loss.
TEST_P(CudaModel, TwentyAdamWStepsFollowTheCpuLossCurve_L2_NH4_C32_V64_B4_T16) {
    auto cpu = make_cpu_backend(DType::f32);
    const ModelConfig cfg = small_config(64, 2, 4, 32, 16);
    GPT2 g(cfg, gpu(), 4, 16), c(cfg, *cpu, 4, 16);
    g.init_random(1);
    copy_params(g, c);  // before the optimizers: the GPU's master copy starts from these values
    AdamWConfig ac;
    AdamW og(g, ac), oc(c, ac);
    const Data d = random_data(4, 16, 64, 8, false);
    const double tol = dt() == DType::f32 ? 1e-4 : 2e-2;
    constexpr int kNormSteps = 5;
    double first = 0, last = 0;
    for (int step = 0; step < 20; step++) {
        const double lg = mean_loss(g, d, true), lc = mean_loss(c, d, true);
        const double ng = std::sqrt(gpu().sum_squares(g.grads().base(), g.grads().elems()));
        const double nc = std::sqrt(cpu->sum_squares(c.grads().base(), c.grads().elems()));
        EXPECT_NEAR(lg, lc, tol * std::fabs(lc)) << "loss at step " << step;
        if (step < kNormSteps) {
            EXPECT_NEAR(ng, nc, tol * nc) << "gradient norm at step " << step;
        }
        og.step(3e-3f, 1.0f);
        oc.step(3e-3f, 1.0f);
        if (step == 0) first = lc;
        last = lc;
    }
    EXPECT_LT(last, first * 0.9) << "the reference did not learn; the comparison says little";
}

// The LM head on the counted rows only (forward with weights: gather before, scatter after): same loss and
// gradients as the reference running the same path, and as the GPU running every row.
TEST_P(CudaModel, CompactLmHeadOnCountedRowsMatchesCpuAndFullHead_L2_C12) {
    GPT2 g(small_config(), gpu(), 3, 9), r(small_config(), ref(), 3, 9), g_full(small_config(), gpu(), 3, 9);
    g.init_random(21);
    randomize_vectors(g, 300);
    copy_params(g, r);
    copy_params(g, g_full);
    const Data d = random_data(3, 9, 37, 22, true);
    const float dloss = 1.0f / (float)counted(d.w);
    auto run = [&](GPT2& m, bool compact) {
        m.zero_grads();
        m.forward(d.x.data(), d.B, d.T, compact ? d.w.data() : nullptr);
        const double l = m.loss(d.y.data(), d.w.data(), dloss, true);
        m.backward();
        return l;
    };
    const double lg = run(g, true), lr = run(r, true), lf = run(g_full, false);
    const Tolerances tol = dt() == DType::f32 ? Tolerances{1e-5, 1e-6, 1e-4} : Tolerances{3e-2, 1e-2, 5e-2};
    EXPECT_NEAR(lg, lr, tol.loss * std::fabs(lr));
    EXPECT_NEAR(lg, lf, tol.loss * std::fabs(lf));
    const auto losses = g.token_losses();
    for (size_t i = 0; i < d.w.size(); i++) {
        if (d.w[i] == 0.0f) {
            EXPECT_EQ(losses[i], 0.0f) << "token " << i;
        }
    }
    for (size_t i = 0; i < g.grads().table().size(); i++) {
        const auto gg = get_tensor(g, g.grads(), i);
        EXPECT_TRUE(near_rel(gg, get_tensor(r, r.grads(), i), tol.grads)) << "vs cpu " << g.grads().table()[i].name;
        EXPECT_TRUE(near_rel(gg, get_tensor(g_full, g_full.grads(), i), tol.grads))
            << "vs full head " << g.grads().table()[i].name;
    }
}

// The LM head in chunks (ModelOptions::head_chunk, loss() runs head forward, cross-entropy and head backward
// 5 or 7 rows at a time into one small logits buffer), over two micro-batches, every row and the counted rows
// gathered: same losses and gradients as the reference running the whole head, and as the GPU doing so.
TEST_P(CudaModel, ChunkedLmHeadMatchesCpuAndWholeHead_L2_C12_B3_T9_Chunks5_7) {
    for (bool compact : {false, true})
        for (size_t chunk : {5, 7}) {
            SCOPED_TRACE(std::string(compact ? "counted rows" : "every row") + ", chunk " + std::to_string(chunk));
            ModelOptions o;
            o.head_chunk = chunk;
            GPT2 g(small_config(), gpu(), 3, 9, nullptr, o), r(small_config(), ref(), 3, 9),
                g_whole(small_config(), gpu(), 3, 9);
            g.init_random(23);
            randomize_vectors(g, 400);
            copy_params(g, r);
            copy_params(g, g_whole);
            const Data d1 = random_data(3, 9, 37, 24, true), d2 = random_data(3, 9, 37, 25, true);
            // Scaled up as fp16 loss scaling would: two micro-batches halve gradients that are tiny already.
            const float dloss = 256.0f / (float)(counted(d1.w) + counted(d2.w));
            auto run = [&](GPT2& m) {
                m.zero_grads();
                std::vector<double> losses;
                for (const Data* d : {&d1, &d2}) {
                    m.forward(d->x.data(), d->B, d->T, compact ? d->w.data() : nullptr);
                    losses.push_back(m.loss(d->y.data(), d->w.data(), dloss, true));
                    const auto tl = m.token_losses();
                    losses.insert(losses.end(), tl.begin(), tl.end());
                    m.backward();
                }
                return losses;
            };
            const auto lg = run(g), lr = run(r), lw = run(g_whole);
            const Tolerances tol = dt() == DType::f32 ? Tolerances{1e-5, 1e-6, 1e-4} : Tolerances{3e-2, 1e-2, 5e-2};
            EXPECT_TRUE(near_rel(lg, lr, tol.loss)) << "losses vs cpu";
            EXPECT_TRUE(near_rel(lg, lw, tol.loss)) << "losses vs whole head";
            for (size_t i = 0; i < g.grads().table().size(); i++) {
                const auto gg = get_tensor(g, g.grads(), i);
                EXPECT_TRUE(near_rel(gg, get_tensor(r, r.grads(), i), tol.grads)) << "vs cpu " << g.grads().table()[i].name;
                EXPECT_TRUE(near_rel(gg, get_tensor(g_whole, g_whole.grads(), i), tol.grads))
                    << "vs whole head " << g.grads().table()[i].name;
            }
        }
}

// Generation: a prefill of 4 positions then 5 single-token steps through the KV cache give the logits of a
// full forward over the same tokens (on the GPU), and the reference's cached logits.
TEST_P(CudaModel, KvCachedGenerationMatchesFullForwardAndCpu_prefill4_then_1x5) {
    GPT2 full(small_config(), gpu(), 1, 9), cached(small_config(), gpu(), 1, 9), rc(small_config(), ref(), 1, 9);
    full.init_random(4);
    copy_params(full, cached);
    copy_params(full, rc);
    const std::vector<int32_t> tok = {5, 36, 0, 17, 17, 2, 30, 8, 11};
    const double tol = dt() == DType::f32 ? 1e-5 : 3e-2;
    full.forward(tok.data(), 1, 9);
    cached.forward_cached(tok.data(), 1, 4, 0);
    rc.forward_cached(tok.data(), 1, 4, 0);
    for (int i = 0; i < 4; i++) {
        EXPECT_TRUE(near_rel(cached.logits_row(0, i), full.logits_row(0, i), tol)) << "prefill " << i;
        EXPECT_TRUE(near_rel(cached.logits_row(0, i), rc.logits_row(0, i), tol)) << "prefill vs cpu " << i;
    }
    for (int pos = 4; pos < 9; pos++) {
        cached.forward_cached(&tok[pos], 1, 1, pos);
        rc.forward_cached(&tok[pos], 1, 1, pos);
        EXPECT_TRUE(near_rel(cached.logits_row(0, 0), full.logits_row(0, pos), tol)) << "position " << pos;
        EXPECT_TRUE(near_rel(cached.logits_row(0, 0), rc.logits_row(0, 0), tol)) << "vs cpu, position " << pos;
    }
}

// GPT2::resize on the GPU (bin/evaluate does it between --data and --choices): a model re-sized up, then down, with
// its activation memory freed and taken anew, computes the bits of a model built for the shape.
TEST_P(CudaModel, ResizedModelGivesTheBitsOfOneBuiltForTheShape_B2T5_to_B3T11_to_B1T4) {
    const ModelConfig cfg = small_config(37, 2, 3, 12, 16);
    GPT2 m(cfg, gpu(), 2, 5);
    m.init_random(8);
    randomize_vectors(m, 9);
    mean_loss(m, random_data(2, 5, 37, 3, true), true);
    for (const auto& [B, T] : {std::pair<int, int>{3, 11}, {1, 4}}) {
        SCOPED_TRACE("B " + std::to_string(B) + ", T " + std::to_string(T));
        m.resize(B, T);
        GPT2 fresh(cfg, gpu(), B, T);
        copy_params(m, fresh);
        const Data d = random_data(B, T, 37, 10 + (uint64_t)T, true);
        const double a = mean_loss(m, d, true), b = mean_loss(fresh, d, true);
        EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << a << " vs " << b;
        for (size_t i = 0; i < m.grads().table().size(); i++)
            EXPECT_TRUE(same_bits(get_tensor(m, m.grads(), i), get_tensor(fresh, fresh.grads(), i)))
                << m.grads().table()[i].name;
    }
}

// One run: fresh backend, model and optimizer; 5 steps. Returns the losses, then every parameter.
std::vector<double> one_run(DType dt) {
    auto be = make_cuda_backend(dt);
    const ModelConfig cfg = small_config(64, 2, 4, 32, 16);
    GPT2 m(cfg, *be, 4, 16);
    m.init_random(5);
    AdamW opt(m, AdamWConfig{});
    const Data d = random_data(4, 16, 8, 12, true);  // V_used = 8: tokens repeat often (encoder backward runs)
    std::vector<double> out;
    for (int step = 0; step < 5; step++) {
        out.push_back(mean_loss(m, d, true));
        m.zero_grads();  // and once more through the compact LM head (gather/scatter)
        m.forward(d.x.data(), d.B, d.T, d.w.data());
        out.push_back(m.loss(d.y.data(), d.w.data(), 1.0f / (float)counted(d.w), true));
        m.backward();
        out.push_back(be->sum_squares(m.grads().base(), m.grads().elems()));
        opt.step(1e-3f, 1.0f);
    }
    for (size_t i = 0; i < m.params().table().size(); i++) {
        auto p = get_tensor(m, m.params(), i);
        out.insert(out.end(), p.begin(), p.end());
    }
    for (size_t i = 0; i < opt.m().table().size(); i++) {
        std::vector<double> v(opt.m().table()[i].numel);
        be->download(v.data(), opt.m().ptr(i), opt.m().dtype(), v.size());
        out.insert(out.end(), v.begin(), v.end());
    }
    return out;
}

TEST_P(CudaModel, TwoIdenticalRunsAreBitIdentical_5Steps) {
    const auto a = one_run(dt()), b = one_run(dt());
    ASSERT_EQ(a.size(), b.size());
    size_t first_diff = a.size();
    for (size_t i = 0; i < a.size() && first_diff == a.size(); i++)
        if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0) first_diff = i;
    EXPECT_EQ(first_diff, a.size()) << "runs differ first at value " << first_diff << ": " << a[first_diff] << " vs "
                                    << b[first_diff];
}

// The op profile on the GPU: every launcher of a model step timed by CUDA events under the model's ranges, the
// times adding up to no more than the wall time around them; nothing recorded outside a profile, and no event
// left behind by one (the emulator counts them).
TEST_P(CudaModel, OpProfileTimesEveryLauncherOfAStepUnderItsRange_L3_C12_B2_T7) {
    const int L = 3;
    GPT2 g(small_config(37, L), gpu(), 2, 7);
    g.init_random(5);
    const Data d = random_data(2, 7, 37, 9, false);
    mean_loss(g, d, true);  // not profiled
    const long events = cuda_emu_live_events ? cuda_emu_live_events() : 0;
    gpu().profile_begin();
    EXPECT_TRUE(gpu().profile_end().empty());
    const ProfiledStep p = profiled_step(g, d);
    expect_model_step_profile(p, L);
    EXPECT_EQ(p.calls("layers / forward · attention_forward") + p.calls("layers / forward · attention_forward_cudnn"),
              L);
    // LayerNorm: the first alone, every other fused with the residual add before it (the last is ln_f).
    EXPECT_EQ(p.calls("layers / forward · layernorm_forward"), 1);
    EXPECT_EQ(p.calls("layers / forward · residual_layernorm_forward"), 2 * L);
    // GELU's backward in the projection's matmul where cuBLASLt fuses it; else (a launcher that declined, timed
    // on its own) a matmul and a GELU backward of their own.
    EXPECT_EQ(p.calls("layers / backward · matmul_backward_gelu"), L);
    const bool declined = p.calls("layers / backward · gelu_backward") > 0;
    EXPECT_EQ(p.calls("layers / backward · matmul_backward"), declined ? 4 * L : 3 * L);
    EXPECT_EQ(p.calls("layers / backward · gelu_backward"), declined ? L : 0);
    const ProfiledStep again = profiled_step(g, d);
    EXPECT_EQ(again.calls("layers / forward · matmul_forward"), 4 * L);
    if (cuda_emu_live_events) {
        EXPECT_EQ(cuda_emu_live_events(), events) << "events outlive the profiles that made them";
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaModel, ::testing::Values(DType::f32, DType::bf16, DType::f16), dtype_param_name);

}  // namespace
}  // namespace tune::test
