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

// A backend that does what the cpu backend does and writes down the backward work asked of it: the layer ranges
// opened, and per matmul_backward whether it computed the input gradient and the weight gradient.
class RecordingBackend final : public Backend {
   public:
    struct Gemm {
        std::string range;  // the outermost range open
        int IC, OC;
        bool dinp, dweight;
    };
    std::vector<std::string> ranges;
    std::vector<Gemm> gemms;
    int ln_backwards = 0;

    std::string name() const override { return be_->name(); }
    DType act_dtype() const override { return be_->act_dtype(); }
    DType master_dtype() const override { return be_->master_dtype(); }
    void* alloc(size_t bytes) override { return be_->alloc(bytes); }
    void free(void* p) override { be_->free(p); }
    void zero(void* p, size_t bytes) override { be_->zero(p, bytes); }
    void upload(void* d, DType t, const float* s, size_t n) override { be_->upload(d, t, s, n); }
    void upload(void* d, DType t, const double* s, size_t n) override { be_->upload(d, t, s, n); }
    void download(float* d, const void* s, DType t, size_t n) override { be_->download(d, s, t, n); }
    void download(double* d, const void* s, DType t, size_t n) override { be_->download(d, s, t, n); }
    void upload_i32(int32_t* d, const int32_t* s, size_t n) override { be_->upload_i32(d, s, n); }
    void upload_f32(float* d, const float* s, size_t n) override { be_->upload_f32(d, s, n); }
    void synchronize() override { be_->synchronize(); }
    void range_push(const char* name) override {
        open_.push_back(name);
        const std::string n = name;  // a block's backward, not the head's or the embeddings'
        if (n.rfind("layer ", 0) == 0 && n.find("backward") != std::string::npos && open_.size() == 1)
            ranges.push_back(n);
    }
    void range_pop() override { open_.pop_back(); }
    void encoder_forward(void* o, const int32_t* t, const int32_t* ps, const void* e, const void* p, int B, int T,
                         int C) override {
        be_->encoder_forward(o, t, ps, e, p, B, T, C);
    }
    void encoder_backward(void* de, void* dp, const void* d, const int32_t* t, const int32_t* ps, int B, int T,
                          int C) override {
        be_->encoder_backward(de, dp, d, t, ps, B, T, C);
    }
    void layernorm_forward(void* o, void* m, void* r, const void* i, const void* w, const void* b, size_t N,
                           int C) override {
        be_->layernorm_forward(o, m, r, i, w, b, N, C);
    }
    void layernorm_backward(void* di, void* dw, void* db, const void* d, const void* i, const void* w, const void* m,
                            const void* r, size_t N, int C) override {
        ln_backwards++;
        be_->layernorm_backward(di, dw, db, d, i, w, m, r, N, C);
    }
    void matmul_forward(void* o, const void* i, const void* w, const void* b, size_t N, int IC, int OC) override {
        be_->matmul_forward(o, i, w, b, N, IC, OC);
    }
    void matmul_backward(void* di, void* dw, void* db, const void* d, const void* i, const void* w, size_t N, int IC,
                         int OC) override {
        gemms.push_back({open_.empty() ? "" : open_.front(), IC, OC, di != nullptr, dw != nullptr});
        be_->matmul_backward(di, dw, db, d, i, w, N, IC, OC);
    }
    size_t attention_saved_elems(int B, int T, int C, int NH) const override {
        return be_->attention_saved_elems(B, T, C, NH);
    }
    void attention_forward(void* o, void* s, const void* q, DocMask m, int B, int T, int C, int NH) override {
        be_->attention_forward(o, s, q, m, B, T, C, NH);
    }
    void attention_backward(void* dq, const void* d, const void* q, const void* o, const void* s, DocMask m, int B,
                            int T, int C, int NH) override {
        be_->attention_backward(dq, d, q, o, s, m, B, T, C, NH);
    }
    void attention_forward_cached(void* o, void* k, void* v, const void* q, int B, int n, int p, int mT, int C,
                                  int NH) override {
        be_->attention_forward_cached(o, k, v, q, B, n, p, mT, C, NH);
    }
    void gelu_forward(void* o, const void* i, size_t n) override { be_->gelu_forward(o, i, n); }
    void gelu_backward(void* di, const void* d, const void* i, size_t n) override { be_->gelu_backward(di, d, i, n); }
    void residual_forward(void* o, const void* a, const void* b, size_t n) override { be_->residual_forward(o, a, b, n); }
    void gather_rows(void* o, const void* i, const int32_t* r, size_t n, int C) override { be_->gather_rows(o, i, r, n, C); }
    void scatter_rows(void* o, const void* i, const int32_t* r, size_t n, size_t N, int C) override {
        be_->scatter_rows(o, i, r, n, N, C);
    }
    void crossentropy_forward_backward(void* l, void* dl, const void* lg, const int32_t* t, const float* w, float dloss,
                                       size_t N, int V, int Vp) override {
        be_->crossentropy_forward_backward(l, dl, lg, t, w, dloss, N, V, Vp);
    }
    void scale(void* o, const void* i, float s, size_t n) override { be_->scale(o, i, s, n); }
    void dropout(void* o, const void* i, float p, uint64_t seed, const DropoutLayout& m, size_t n) override {
        be_->dropout(o, i, p, seed, m, n);
    }
    void prefix_rows_forward(void* x, const void* s, int ld, int B, int T, int P, int W, int c0, int w) override {
        be_->prefix_rows_forward(x, s, ld, B, T, P, W, c0, w);
    }
    void prefix_rows_backward(void* ds, void* dx, int ld, int B, int T, int P, int W, int c0, int w) override {
        be_->prefix_rows_backward(ds, dx, ld, B, T, P, W, c0, w);
    }
    void distill_forward_backward(void* l, void* dl, const void* lg, const void* tl, const float* w, float tau,
                                  float dloss, size_t N, int V, int Vp) override {
        be_->distill_forward_backward(l, dl, lg, tl, w, tau, dloss, N, V, Vp);
    }
    double anchor_penalty(void* g, const void* p, const void* m, const void* a, const void* f,
                          const std::vector<OptSegment>& s, float lambda, float mult) override {
        return be_->anchor_penalty(g, p, m, a, f, s, lambda, mult);
    }
    void accumulate_squares(void* o, const void* x, float s, size_t n) override { be_->accumulate_squares(o, x, s, n); }
    double sum_squares(const void* x, size_t n) override { return be_->sum_squares(x, n); }
    void adamw_update(void* p, void* m, const void* g, void* mm, void* v, const std::vector<OptSegment>& s,
                      const AdamWStep& st) override {
        be_->adamw_update(p, m, g, mm, v, s, st);
    }

   private:
    std::unique_ptr<Backend> be_ = make_cpu_backend(DType::f32);
    std::vector<std::string> open_;
};

// What frozen parameters save in backward, counted: backward stops below the lowest block that trains, a frozen
// weight's gradient GEMM is skipped, and the lowest block computes no input gradient nobody reads. The gradients
// of what trains are those of a model that trains everything (bit for bit: the same ops on the same values).
TEST(Select, BackwardSkipsFrozenWorkAndStopsBelowTheLowestTrainableBlock_L3) {
    const ModelConfig c = small_config(37, 3, 3, 24, 16);
    const Data d = random_data(2, 7, 37, 5, true);
    auto run = [&](RecordingBackend& be, const Trainable* t) {
        auto m = std::make_unique<GPT2>(c, be, 2, 7, t);
        m->init_random(9);
        be.ranges.clear(), be.gemms.clear(), be.ln_backwards = 0;
        mean_loss(*m, d, true);
        return m;
    };
    RecordingBackend all_be, top_be, mid_be, ln_be;
    auto all = run(all_be, nullptr);
    EXPECT_EQ(all_be.ranges, (std::vector<std::string>{"layer 2 / backward", "layer 1 / backward", "layer 0 / backward"}));
    // --train-top 1 (block 2 and ln_f): only block 2's backward runs, and the LM head computes no gradient for
    // the frozen (tied) wte.
    const Trainable top = select_trainable(c, 1, "");
    auto t = run(top_be, &top);
    EXPECT_EQ(top_be.ranges, (std::vector<std::string>{"layer 2 / backward"}));
    size_t head_gemms = 0;  // the LM head's backward, which must have been seen
    for (const auto& g : top_be.gemms) {
        if (g.range == "head / backward") {
            head_gemms++;
            EXPECT_FALSE(g.dweight) << "the LM head's (tied wte) weight gradient, wte frozen";
        }
    }
    EXPECT_GE(head_gemms, 1u);
    // h.1's matrices only: blocks 2 and 1 run; block 2's GEMMs compute no weight gradient; block 1, the lowest,
    // with ln_1 frozen, computes no QKV input gradient and no ln_1 backward.
    const Trainable mid = select_trainable(c, 0, "h.1.attn.*,h.1.mlp.*");
    auto m = run(mid_be, &mid);
    EXPECT_EQ(mid_be.ranges, (std::vector<std::string>{"layer 2 / backward", "layer 1 / backward"}));
    int block1_gemms = 0;
    for (const auto& g : mid_be.gemms) {
        if (g.range == "layer 2 / backward") {
            EXPECT_FALSE(g.dweight) << g.IC << "x" << g.OC;
        }
        if (g.range != "layer 1 / backward") continue;
        block1_gemms++;
        EXPECT_TRUE(g.dweight) << g.IC << "x" << g.OC;
        if (g.OC == 3 * c.n_embd) {
            EXPECT_FALSE(g.dinp) << "QKV input gradient of the lowest block";
        }
    }
    EXPECT_EQ(block1_gemms, 4);
    EXPECT_EQ(mid_be.ln_backwards, 1 /* ln_f */ + 2 /* block 2 */ + 1 /* block 1's ln_2 */);
    // ... unless ln_1 trains: then its backward needs d ln_1, and the QKV input gradient is computed.
    const Trainable ln = select_trainable(c, 0, "h.1.*");
    auto l = run(ln_be, &ln);
    for (const auto& g : ln_be.gemms) {
        if (g.range == "layer 1 / backward" && g.OC == 3 * c.n_embd) {
            EXPECT_TRUE(g.dinp);
        }
    }
    EXPECT_EQ(ln_be.ln_backwards, 1 + 2 + 2);
    // The gradients that exist are the full model's.
    for (GPT2* part : {m.get(), l.get()})
        for (size_t i = 0; i < part->params().table().size(); i++) {
            const int g = part->grad_index()[i];
            if (g < 0) continue;
            EXPECT_EQ(get_tensor(*part, part->grads(), g), get_tensor(*all, all->grads(), all->grad_index()[i]))
                << part->params().table()[i].name;
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
