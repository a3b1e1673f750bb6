// The whole GPT-2 model on the CPU backend: parameter gradients against finite differences in double,
// float against double, loss masking, micro-batch accumulation, and overfitting a fixed batch.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/optimizer.h"

namespace tune::test {
namespace {

// Mean loss over counted tokens, and (optionally) the gradients it leaves in the model.
// More than the machine holds is refused with the numbers, where Linux would hand out the address space and
// kill the process, silently, once the pages were written.
TEST(ModelCpu, AllocationBeyondTheMachinesMemoryIsRefusedWithTheNumbers) {
    auto be = make_cpu_backend(DType::f32);
    void* small = be->alloc(1 << 20);
    const std::string msg = error_of([&] { be->alloc(size_t(1) << 50); });
    EXPECT_NE(msg.find("cpu backend: 1048576.0 GiB more would make 1048576.0 GiB, more than this machine's memory ("),
              std::string::npos) << msg;
    EXPECT_NE(msg.find("--device cuda"), std::string::npos) << msg;
    be->free(small);
    ModelConfig c = small_config();  // ordinary sizes still allocate
    GPT2 m(c, *be, 2, 7);
}

TEST(ModelCpu, ParameterGradientsMatchFiniteDifferencesF64_L2_C12_V37_B2_T7) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 2, 7);
    m.init_random(42);
    // Random (not unit/zero) LayerNorm parameters and biases, so every term of every gradient is exercised.
    const Table& t = m.params().table();
    for (size_t i = 0; i < t.size(); i++)
        if (t[i].shape.size() == 1) set_tensor(m, m.params(), i, randn(t[i].numel, 100 + i, 0.3));
    Data d = random_data(2, 7, 37, 7, true);
    mean_loss(m, d, true);
    Rng pick(5);
    int checked = 0;
    for (size_t i = 0; i < t.size(); i++) {
        auto g = get_tensor(m, m.grads(), (size_t)m.grad_index()[i]);
        auto p = get_tensor(m, m.params(), i);
        size_t limit = t[i].numel;
        if (t[i].name == "wte") limit = (size_t)37 * 12;  // padded rows are never used
        for (int k = 0; k < 4; k++) {
            size_t j = pick.below(limit);
            const double h = 1e-5, old = p[j];
            p[j] = old + h;
            set_tensor(m, m.params(), i, p);
            double lp = mean_loss(m, d, false);
            p[j] = old - h;
            set_tensor(m, m.params(), i, p);
            double lm = mean_loss(m, d, false);
            p[j] = old;
            set_tensor(m, m.params(), i, p);
            double num = (lp - lm) / (2 * h);
            EXPECT_NEAR(g[j], num, 1e-6 * std::fabs(num) + 1e-9) << t[i].name << "[" << j << "]";
            checked++;
        }
    }
    EXPECT_EQ(checked, 4 * (int)t.size());
}

TEST(ModelCpu, FloatAndDoubleForwardAgree_L2_C12_V37_B3_T9) {
    auto bf = make_cpu_backend(DType::f32), bd = make_cpu_backend(DType::f64);
    GPT2 mf(small_config(), *bf, 3, 9), md(small_config(), *bd, 3, 9);
    mf.init_random(3);
    md.init_random(3);  // same float values from the same generator
    Data d = random_data(3, 9, 37, 9, false);
    const double lf = mean_loss(mf, d, false), ld = mean_loss(md, d, false);
    EXPECT_NEAR(lf, ld, 1e-4 * std::fabs(ld));
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 9; t++) {
            auto zf = mf.logits_row(b, t), zd = md.logits_row(b, t);
            EXPECT_TRUE(near_rel(zf, zd, 1e-4)) << "position " << b << "," << t;
        }
}

TEST(ModelCpu, MaskedTokensContributeNothingF64) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 2, 7);
    m.init_random(11);
    Data d = random_data(2, 7, 37, 3, true);
    ASSERT_GT(counted(d.w), 0u);
    ASSERT_LT(counted(d.w), d.w.size());
    const double l1 = mean_loss(m, d, true);
    std::vector<std::vector<double>> g1;
    for (size_t i = 0; i < m.grads().table().size(); i++) g1.push_back(get_tensor(m, m.grads(), i));
    // Change the targets of masked positions only: loss and every gradient must stay bit-identical.
    Rng r(99);
    for (size_t i = 0; i < d.y.size(); i++)
        if (d.w[i] == 0.0f) d.y[i] = (int32_t)((d.y[i] + 1 + r.below(36)) % 37);
    const double l2 = mean_loss(m, d, true);
    EXPECT_EQ(l1, l2);
    for (size_t i = 0; i < g1.size(); i++) EXPECT_EQ(g1[i], get_tensor(m, m.grads(), i)) << m.grads().table()[i].name;
    auto losses = m.token_losses();
    for (size_t i = 0; i < d.w.size(); i++) {
        if (d.w[i] == 0.0f) {
            EXPECT_EQ(losses[i], 0.0f);
        }
    }
}

TEST(ModelCpu, MicroBatchesAddUpToOneBigBatchF64_3x2_vs_6) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 big(small_config(), *be, 6, 7), small(small_config(), *be, 2, 7);
    big.init_random(5);
    small.init_random(5);
    Data d = random_data(6, 7, 37, 21, true);
    mean_loss(big, d, true);
    // Three micro-batches of 2 rows, each scaled by 1/(counted tokens of all six rows).
    const float dloss = 1.0f / (float)counted(d.w);
    small.zero_grads();
    for (int k = 0; k < 3; k++) {
        const size_t off = (size_t)k * 2 * 7, n = 2 * 7;
        std::vector<int32_t> x(d.x.begin() + off, d.x.begin() + off + n), y(d.y.begin() + off, d.y.begin() + off + n);
        std::vector<float> w(d.w.begin() + off, d.w.begin() + off + n);
        small.forward(x.data(), 2, 7);
        small.loss(y.data(), w.data(), dloss, true);
        small.backward();
    }
    for (size_t i = 0; i < big.grads().table().size(); i++)
        EXPECT_TRUE(near_rel(get_tensor(small, small.grads(), i), get_tensor(big, big.grads(), i), 1e-12))
            << big.grads().table()[i].name;
}

// Isolated document windows: three documents packed into one row with their own positions give the token losses
// and the gradients of the three alone at the start of three rows (padded, weight 0), also when the packed model
// recomputes its blocks (full) or its attention (selective).
TEST(ModelCpu, PackedDocumentsWithPositionsEqualEachDocumentAloneF64_Lens4_5_3_T12) {
    const int T = 12, V = 37;
    const ModelConfig cfg = small_config(V, 2, 3, 12, 16);
    const int lens[] = {4, 5, 3};
    const PackedDocuments docs = packed_documents({4, 5, 3}, T, V, 41);
    const Data &packed = docs.packed, &alone = docs.alone;
    const std::vector<int32_t>& pos = docs.pos;
    ASSERT_EQ(counted(alone.w), counted(packed.w));
    auto be = make_cpu_backend(DType::f64);
    GPT2 single(cfg, *be, 3, T);
    single.init_random(7);
    const float dloss = 1.0f / (float)counted(packed.w);
    single.zero_grads();
    single.forward(alone.x.data(), 3, T, alone.w.data());
    const double want = single.loss(alone.y.data(), alone.w.data(), dloss, true);
    single.backward();
    const std::vector<float> want_losses = single.token_losses();
    for (Recompute rc : {Recompute::none, Recompute::selective, Recompute::full}) {
        ModelOptions o;
        o.recompute = rc;
        GPT2 m(cfg, *be, 1, T, nullptr, o);
        m.init_random(7);
        m.zero_grads();
        m.forward(packed.x.data(), 1, T, packed.w.data(), pos.data());
        EXPECT_NEAR(m.loss(packed.y.data(), packed.w.data(), dloss, true), want, 1e-12 * std::fabs(want))
            << recompute_name(rc);
        m.backward();
        const std::vector<float> got_losses = m.token_losses();
        for (int k = 0, t0 = 0; k < 3; t0 += lens[k], k++)
            for (int i = 0; i < lens[k]; i++)
                EXPECT_NEAR(got_losses[t0 + i], want_losses[(size_t)k * T + i], 1e-6)
                    << "document " << k << ", token " << i;
        for (size_t i = 0; i < m.grads().table().size(); i++)
            EXPECT_TRUE(near_rel(get_tensor(m, m.grads(), i), get_tensor(single, single.grads(), i), 1e-10))
                << recompute_name(rc) << " " << m.grads().table()[i].name;
    }
    // Without positions the packed documents see each other: the losses differ (the test can tell).
    GPT2 m(cfg, *be, 1, T);
    m.init_random(7);
    m.forward(packed.x.data(), 1, T, packed.w.data());
    EXPECT_GT(std::fabs(m.loss(packed.y.data(), packed.w.data(), dloss, false) - want), 1e-6 * std::fabs(want));
}

TEST(ModelCpu, PositionsThatDoNotCountFromADocumentStartAreRefused) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 1, 5);
    m.init_random(1);
    const std::vector<int32_t> x = {1, 2, 3, 4, 5};
    for (const std::vector<int32_t>& pos : {std::vector<int32_t>{1, 2, 3, 4, 5}, std::vector<int32_t>{0, 1, 3, 4, 5},
                                            std::vector<int32_t>{0, 1, -1, 0, 1}}) {
        try {
            m.forward(x.data(), 1, 5, nullptr, pos.data());
            ADD_FAILURE() << "positions " << pos[0] << pos[1] << pos[2] << " accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("count 0, 1, 2"), std::string::npos) << e.what();
        }
    }
    const std::vector<int32_t> ok = {0, 1, 0, 1, 2};
    EXPECT_NO_THROW(m.forward(x.data(), 1, 5, nullptr, ok.data()));
}

TEST(ModelCpu, LmHeadOnCountedRowsOnlyGivesTheSameLossAndGradientsF64) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 2, 7);
    m.init_random(13);
    Data d = random_data(2, 7, 37, 17, true);
    ASSERT_LT(counted(d.w), d.w.size());
    const float dloss = 1.0f / (float)counted(d.w);
    auto run = [&](bool pass_weights) {
        m.zero_grads();
        m.forward(d.x.data(), 2, 7, pass_weights ? d.w.data() : nullptr);
        double l = m.loss(d.y.data(), d.w.data(), dloss, true);
        m.backward();
        std::vector<std::vector<double>> g;
        for (size_t i = 0; i < m.grads().table().size(); i++) g.push_back(get_tensor(m, m.grads(), i));
        return std::make_pair(l, g);
    };
    auto full = run(false), rows = run(true);
    EXPECT_NEAR(rows.first, full.first, 1e-12 * std::fabs(full.first));
    for (size_t i = 0; i < full.second.size(); i++)
        EXPECT_TRUE(near_rel(rows.second[i], full.second[i], 1e-12)) << m.grads().table()[i].name;
    auto tl = m.token_losses();
    for (size_t i = 0; i < d.w.size(); i++) {
        if (d.w[i] == 0.0f) {
            EXPECT_EQ(tl[i], 0.0f);
        } else {
            EXPECT_GT(tl[i], 0.0f);
        }
    }
}

// ModelOptions::head_chunk: the LM head run a few rows at a time inside loss() gives the same losses and
// gradients as the whole head, for every way the head's input is formed (every row; the counted rows
// gathered; virtual tokens before the real ones), with chunk sizes that do not divide the rows, over two
// micro-batches (so the wte gradient must accumulate across chunks and passes), and keeps less memory.
TEST(ModelCpu, ChunkedLmHeadGivesTheSameLossesAndGradientsF64_Rows_Counted_Prompt_Chunks1_5_7) {
    auto be = make_cpu_backend(DType::f64);
    const ModelConfig c = small_config();
    for (int variant = 0; variant < 3; variant++) {  // every row, counted rows, soft prompt
        SCOPED_TRACE("variant " + std::to_string(variant));
        ModelOptions o;
        if (variant == 2) {
            o.peft.virt = Virtual::prompt;
            o.peft.n_virtual = 2;
        }
        const Data d1 = random_data(2, 7, 37, 40 + variant, true), d2 = random_data(2, 7, 37, 50 + variant, true);
        auto run = [&](size_t chunk, size_t* act_bytes) {
            ModelOptions oc = o;
            oc.head_chunk = chunk;
            GPT2 m(c, *be, 2, 7, nullptr, oc);
            m.init_random(15);
            if (variant == 2) randomise_peft(m, 16);
            m.zero_grads();
            std::vector<double> out;
            for (const Data* d : {&d1, &d2}) {
                m.forward(d->x.data(), 2, 7, variant == 1 ? d->w.data() : nullptr);
                out.push_back(m.loss(d->y.data(), d->w.data(), 0.1f, true));
                const auto tl = m.token_losses();
                out.insert(out.end(), tl.begin(), tl.end());
                m.backward();
            }
            for (size_t i = 0; i < m.grads().table().size(); i++) {
                const auto g = get_tensor(m, m.grads(), i);
                out.insert(out.end(), g.begin(), g.end());
            }
            *act_bytes = m.act_bytes();
            return out;
        };
        size_t whole_bytes = 0, bytes = 0;
        const auto whole = run(0, &whole_bytes);
        for (size_t chunk : {1, 5, 7, 14}) {
            SCOPED_TRACE("chunk " + std::to_string(chunk));
            const auto got = run(chunk, &bytes);
            EXPECT_TRUE(near_rel(got, whole, 1e-12));
            if (chunk < 14) {
                EXPECT_LT(bytes, whole_bytes);
            } else {
                EXPECT_EQ(bytes, whole_bytes);
            }
        }
    }
}

TEST(ModelCpu, ChunkedLmHeadRefusesWhatNeedsEveryLogit) {
    auto be = make_cpu_backend(DType::f64);
    ModelOptions o;
    o.head_chunk = 4;
    GPT2 m(small_config(), *be, 2, 7, nullptr, o);
    m.init_random(17);
    const Data d = random_data(2, 7, 37, 18, false);
    m.forward(d.x.data(), 2, 7);
    EXPECT_THROW(m.logits_buffer(), Error);
    EXPECT_THROW(m.logits_row(0, 0), Error);
    EXPECT_THROW(m.backward(), Error);  // the head's backward runs in loss(backward_prep)
    m.loss(d.y.data(), d.w.data(), 1.0f, false);
    EXPECT_THROW(m.backward(), Error);
    EXPECT_THROW(m.forward_cached(d.x.data(), 1, 5, 0), Error);  // 5 positions, 4 rows of logits
    m.forward_cached(d.x.data(), 1, 4, 0);                        // fits: logits_row works again
    EXPECT_EQ(m.logits_row(0, 3).size(), (size_t)small_config().padded_vocab_size);
    m.forward(d.x.data(), 1, 4);  // at most 4 rows: no chunking, the logits are there
    EXPECT_NO_THROW(m.logits_buffer());
}

// backward() reads the logits buffer as d(logits): only loss(..., backward_prep) makes it so, once per forward.
// Without it the raw logits would be backpropagated; after it a second loss would be taken of the gradient.
TEST(ModelCpu, BackwardNeedsOneLossWithBackwardPrepAfterEachForward) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 2, 7);
    m.init_random(19);
    const Data d = random_data(2, 7, 37, 20, false);
    m.forward(d.x.data(), 2, 7);
    EXPECT_THROW(m.backward(), Error);
    m.loss(d.y.data(), d.w.data(), 1.0f, false);
    EXPECT_THROW(m.backward(), Error);
    m.loss(d.y.data(), d.w.data(), 1.0f, true);
    EXPECT_THROW(m.loss(d.y.data(), d.w.data(), 1.0f, true), Error);
    EXPECT_NO_THROW(m.backward());
    m.forward(d.x.data(), 2, 7);  // a new forward starts over
    EXPECT_THROW(m.backward(), Error);
}

TEST(ModelCpu, MicroBatchWithNoCountedTokenAddsNothingF64) {
    auto be = make_cpu_backend(DType::f64);
    GPT2 m(small_config(), *be, 2, 7);
    m.init_random(14);
    Data d = random_data(2, 7, 37, 18, false);
    std::fill(d.w.begin(), d.w.end(), 0.0f);
    m.zero_grads();
    m.forward(d.x.data(), 2, 7, d.w.data());
    EXPECT_EQ(m.loss(d.y.data(), d.w.data(), 1.0f, true), 0.0);
    m.backward();
    for (size_t i = 0; i < m.grads().table().size(); i++)
        for (double v : get_tensor(m, m.grads(), i)) ASSERT_EQ(v, 0.0) << m.grads().table()[i].name;
}

TEST(ModelCpu, TinyModelOverfitsAFixedBatchF32) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(64, 2, 4, 32, 16), *be, 4, 16);
    m.init_random(1);
    AdamWConfig ac;
    ac.weight_decay = 0;
    AdamW opt(m, ac);
    Data d = random_data(4, 16, 64, 8, false);
    const double start = mean_loss(m, d, true);
    double loss = start;
    for (int step = 0; step < 150; step++) {
        loss = mean_loss(m, d, true);
        opt.step(3e-3f, 1.0f);
    }
    EXPECT_NEAR(start, std::log(64.0), 0.3);  // random init predicts roughly uniformly
    EXPECT_LT(loss, start / 10) << "start " << start << ", end " << loss;
}

TEST(ModelCpu, FrozenEmbeddingsGetNoGradientBufferAndBackwardStillRuns) {
    auto be = make_cpu_backend(DType::f64);
    Trainable tr;
    tr.tensor.assign(gpt2_param_table(small_config()).size(), true);
    tr.tensor[0] = tr.tensor[1] = false;  // wte, wpe
    GPT2 m(small_config(), *be, 2, 7, &tr);
    m.init_random(2);
    EXPECT_EQ(m.grad_index()[0], -1);
    EXPECT_EQ(m.grads().table().find("wte"), -1);
    Data d = random_data(2, 7, 37, 4, false);
    mean_loss(m, d, true);
    auto g = get_tensor(m, m.grads(), 0);  // h.0.ln_1.weight
    double s = 0;
    for (double v : g) s += std::fabs(v);
    EXPECT_GT(s, 0.0);
}

}  // namespace
}  // namespace tune::test
