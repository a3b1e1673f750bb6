#include "model/gpt2.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdio>

#include "model/rng.h"

namespace tune {

// Offsets of each block's tensors inside the parameter table, in the order gpt2_param_table adds them.
enum BlockParam { kLn1w, kLn1b, kQkvw, kQkvb, kAttProjw, kAttProjb, kLn2w, kLn2b, kFcw, kFcb, kFcProjw, kFcProjb };
constexpr int kWte = 0, kWpe = 1, kFirstBlock = 2;
static int block_param(int l, int k) { return kFirstBlock + l * kTensorsPerBlock + k; }
static int lnf_w(const ModelConfig& c) { return kFirstBlock + c.n_layer * kTensorsPerBlock; }

// What each block saves for backward, in activation-table order.
enum LayerAct { kLn1, kLn1Mean, kLn1Rstd, kQkv, kAtty, kAttSaved, kRes2, kLn2, kLn2Mean, kLn2Rstd, kFch, kFchGelu,
                kRes3, kActsPerLayer };

Table gpt2_param_table(const ModelConfig& cfg) {
    const size_t C = cfg.n_embd;
    Table t;
    t.add("wte", {(size_t)cfg.padded_vocab_size, C});
    t.add("wpe", {(size_t)cfg.block_size, C});
    for (int l = 0; l < cfg.n_layer; l++) {
        const std::string h = "h." + std::to_string(l) + ".";
        t.add(h + "ln_1.weight", {C});
        t.add(h + "ln_1.bias", {C});
        t.add(h + "attn.c_attn.weight", {3 * C, C});
        t.add(h + "attn.c_attn.bias", {3 * C});
        t.add(h + "attn.c_proj.weight", {C, C});
        t.add(h + "attn.c_proj.bias", {C});
        t.add(h + "ln_2.weight", {C});
        t.add(h + "ln_2.bias", {C});
        t.add(h + "mlp.c_fc.weight", {4 * C, C});
        t.add(h + "mlp.c_fc.bias", {4 * C});
        t.add(h + "mlp.c_proj.weight", {C, 4 * C});
        t.add(h + "mlp.c_proj.bias", {C});
    }
    t.add("ln_f.weight", {C});
    t.add("ln_f.bias", {C});
    return t;
}

GPT2::GPT2(const ModelConfig& cfg, Backend& be, int B, int T, const Trainable* trainable)
    : cfg_(cfg), be_(be), B_(B), T_(T) {
    validate_config(cfg, "model");
    assert(B > 0 && T > 0 && T <= cfg.block_size);
    const size_t N = (size_t)B * T, C = cfg.n_embd;
    const DType dt = be.act_dtype();

    Table ptab = gpt2_param_table(cfg);
    Table gtab;
    grad_index_.assign(ptab.size(), -1);
    for (size_t i = 0; i < ptab.size(); i++)
        if (!trainable || trainable->tensor.at(i)) grad_index_[i] = (int)gtab.add(ptab[i].name, ptab[i].shape);
    // Backward can stop below the lowest block that trains, unless the embeddings train.
    lowest_trainable_layer_ = cfg.n_layer;
    if (grad_index_[kWte] >= 0 || grad_index_[kWpe] >= 0) lowest_trainable_layer_ = -1;
    for (int l = cfg.n_layer - 1; l >= 0 && lowest_trainable_layer_ >= 0; l--)
        for (int k = 0; k < kTensorsPerBlock; k++)
            if (grad_index_[block_param(l, k)] >= 0) lowest_trainable_layer_ = l;
    params_.allocate(be, std::move(ptab), dt);
    grads_.allocate(be, std::move(gtab), dt);

    Table atab;
    a_encoded_ = atab.add("encoded", {N, C});
    const size_t saved = be.attention_saved_elems(B, T, cfg.n_head);
    for (int l = 0; l < cfg.n_layer; l++) {
        const std::string h = "h." + std::to_string(l) + ".";
        a_layer_.push_back(atab.size());
        atab.add(h + "ln1", {N, C});
        atab.add(h + "ln1_mean", {N});
        atab.add(h + "ln1_rstd", {N});
        atab.add(h + "qkv", {N, 3 * C});
        atab.add(h + "atty", {N, C});
        atab.add(h + "att_saved", {saved});
        atab.add(h + "residual2", {N, C});
        atab.add(h + "ln2", {N, C});
        atab.add(h + "ln2_mean", {N});
        atab.add(h + "ln2_rstd", {N});
        atab.add(h + "fch", {N, 4 * C});
        atab.add(h + "fch_gelu", {N, 4 * C});
        atab.add(h + "residual3", {N, C});
    }
    a_lnf_ = atab.add("lnf", {N, C});
    a_lnf_mean_ = atab.add("lnf_mean", {N});
    a_lnf_rstd_ = atab.add("lnf_rstd", {N});
    a_logits_ = atab.add("logits", {N, (size_t)cfg.padded_vocab_size});
    a_losses_ = atab.add("losses", {N});
    acts_.allocate(be, std::move(atab), dt);

    Table stab;  // forward scratch and backward's activation gradients: nothing here outlives a pass
    s_proj_ = stab.add("proj_out", {N, C});
    s_dres_ = stab.add("d_residual", {N, C});
    s_dC_ = stab.add("d_C", {N, C});
    s_d3C_ = stab.add("d_3C", {N, 3 * C});
    s_d4C_a_ = stab.add("d_4C_a", {N, 4 * C});
    s_d4C_b_ = stab.add("d_4C_b", {N, 4 * C});
    s_lnf_rows_ = stab.add("lnf_counted_rows", {N, C});
    s_dlnf_rows_ = stab.add("d_lnf_counted_rows", {N, C});
    scratch_.allocate(be, std::move(stab), dt);

    tokens_ = static_cast<int32_t*>(be.alloc(N * sizeof(int32_t)));
    targets_ = static_cast<int32_t*>(be.alloc(N * sizeof(int32_t)));
    weights_ = static_cast<float*>(be.alloc(N * sizeof(float)));
    rows_dev_ = static_cast<int32_t*>(be.alloc(N * sizeof(int32_t)));
}

GPT2::~GPT2() {
    be_.free(tokens_);
    be_.free(targets_);
    be_.free(weights_);
    be_.free(rows_dev_);
}

BlockPtrs GPT2::block(const Arena& a, const std::vector<int>* index, int l) const {
    void* p[kTensorsPerBlock];
    for (int k = 0; k < kTensorsPerBlock; k++) {
        int i = block_param(l, k);
        if (index) i = (*index)[i];
        p[k] = i < 0 ? nullptr : a.ptr(i);
    }
    return BlockPtrs{p[kLn1w], p[kLn1b], p[kQkvw], p[kQkvb], p[kAttProjw], p[kAttProjb],
                     p[kLn2w], p[kLn2b], p[kFcw],  p[kFcb],  p[kFcProjw],  p[kFcProjb]};
}

void* GPT2::pgrad(int param_idx) const {
    int g = grad_index_[param_idx];
    return g < 0 ? nullptr : grads_.ptr(g);
}

void GPT2::init_random(uint64_t seed) {
    Rng rng(seed);
    const Table& t = params_.table();
    const int L = cfg_.n_layer;
    std::vector<float> host;
    for (size_t i = 0; i < t.size(); i++) {
        const TensorInfo& ti = t[i];
        host.assign(ti.numel, 0.0f);
        const bool is_weight = ti.name.size() > 7 && ti.name.compare(ti.name.size() - 7, 7, ".weight") == 0;
        const bool is_ln = ti.name.find("ln_") != std::string::npos;
        if (is_ln && is_weight) {
            host.assign(ti.numel, 1.0f);
        } else if (ti.shape.size() == 2) {
            // TEACH: the projections that add into the residual stream are scaled by 1/sqrt(2L) so the
            // stream's variance does not grow with depth (GPT-2 paper, section 2.3).
            const bool residual_proj = ti.name.find("c_proj.weight") != std::string::npos;
            const double std = residual_proj ? 0.02 / std::sqrt(2.0 * L) : 0.02;
            size_t rows = ti.shape[0];
            if ((int)i == kWte) rows = cfg_.vocab_size;  // padded rows stay zero
            for (size_t j = 0; j < rows * ti.shape[1]; j++) host[j] = (float)(rng.normal() * std);
        }
        be_.upload(params_.ptr(i), params_.dtype(), host.data(), ti.numel);
    }
}

void GPT2::trunk_forward(int B, int T, int pos0) {
    const size_t N = (size_t)B * T;
    const int C = cfg_.n_embd, NH = cfg_.n_head;
    const bool cached = pos0 >= 0;
    // Position embeddings start at row pos0 when generating (0 otherwise).
    const void* wpe =
        static_cast<const char*>(params_.ptr(kWpe)) + (size_t)std::max(pos0, 0) * C * dtype_size(params_.dtype());
    be_.encoder_forward(act(a_encoded_), tokens_, params_.ptr(kWte), wpe, B, T, C);
    void* x = act(a_encoded_);  // the residual stream entering the block
    void* tmp = scratch_.ptr(s_proj_);
    char range[48];
    for (int l = 0; l < cfg_.n_layer; l++) {
        std::snprintf(range, sizeof range, "layer %d / forward", l);
        be_.range_push(range);
        BlockPtrs p = block(params_, nullptr, l);
        // Training keeps every block's activations for backward; generation has no backward, so every
        // block can reuse layer 0's buffers.
        const size_t first = a_layer_[cached ? 0 : l];
        auto A = [&](int k) { return act(first + k); };
        be_.layernorm_forward(A(kLn1), A(kLn1Mean), A(kLn1Rstd), x, p.ln1w, p.ln1b, N, C);
        be_.matmul_forward(A(kQkv), A(kLn1), p.qkvw, p.qkvb, N, C, 3 * C);
        if (cached)
            be_.attention_forward_cached(A(kAtty), kv_.ptr(2 * l), kv_.ptr(2 * l + 1), A(kQkv), B, T, pos0,
                                         cfg_.block_size, C, NH);
        else
            be_.attention_forward(A(kAtty), A(kAttSaved), A(kQkv), B, T, C, NH);
        be_.matmul_forward(tmp, A(kAtty), p.attprojw, p.attprojb, N, C, C);
        be_.residual_forward(A(kRes2), x, tmp, N * C);
        be_.layernorm_forward(A(kLn2), A(kLn2Mean), A(kLn2Rstd), A(kRes2), p.ln2w, p.ln2b, N, C);
        be_.matmul_forward(A(kFch), A(kLn2), p.fcw, p.fcb, N, C, 4 * C);
        be_.gelu_forward(A(kFchGelu), A(kFch), N * 4 * C);
        be_.matmul_forward(tmp, A(kFchGelu), p.fcprojw, p.fcprojb, N, 4 * C, C);
        be_.residual_forward(A(kRes3), A(kRes2), tmp, N * C);
        x = A(kRes3);
        be_.range_pop();
    }
    const int lnf = lnf_w(cfg_);
    be_.layernorm_forward(act(a_lnf_), act(a_lnf_mean_), act(a_lnf_rstd_), x, params_.ptr(lnf),
                          params_.ptr(lnf + 1), N, C);
}

void GPT2::forward(const int32_t* tokens, int B, int T, const float* weights) {
    assert(B <= B_ && T <= T_);
    cur_B_ = B;
    cur_T_ = T;
    const size_t N = (size_t)B * T;
    be_.upload_i32(tokens_, tokens, N);
    trunk_forward(B, T, -1);
    // TEACH: the LM head is the widest matmul of a small model (Vp columns). Positions whose loss weight
    // is zero (prompt tokens in fine-tuning) need no logits at all, so it runs on the counted rows only.
    rows_.clear();
    for (size_t i = 0; i < N; i++)
        if (!weights || weights[i] != 0.0f) rows_.push_back((int32_t)i);
    compact_ = rows_.size() < N;
    if (rows_.empty()) return;
    const void* head_in = act(a_lnf_);
    if (compact_) {
        be_.upload_i32(rows_dev_, rows_.data(), rows_.size());
        be_.gather_rows(scratch_.ptr(s_lnf_rows_), act(a_lnf_), rows_dev_, rows_.size(), cfg_.n_embd);
        head_in = scratch_.ptr(s_lnf_rows_);
    }
    be_.matmul_forward(act(a_logits_), head_in, params_.ptr(kWte), nullptr, rows_.size(), cfg_.n_embd,
                       cfg_.padded_vocab_size);
}

void GPT2::forward_cached(const int32_t* tokens, int B, int n, int pos0) {
    const int C = cfg_.n_embd, maxT = cfg_.block_size;
    assert(B <= B_ && n <= T_ && pos0 >= 0 && pos0 + n <= maxT);
    if (!kv_.bytes()) {
        Table t;
        for (int l = 0; l < cfg_.n_layer; l++) {
            t.add("h." + std::to_string(l) + ".k", {(size_t)B_, (size_t)maxT, (size_t)C});
            t.add("h." + std::to_string(l) + ".v", {(size_t)B_, (size_t)maxT, (size_t)C});
        }
        kv_.allocate(be_, std::move(t), acts_.dtype());
    }
    cur_B_ = B;
    cur_T_ = n;
    const size_t N = (size_t)B * n;
    be_.upload_i32(tokens_, tokens, N);
    trunk_forward(B, n, pos0);
    be_.matmul_forward(act(a_logits_), act(a_lnf_), params_.ptr(kWte), nullptr, N, C, cfg_.padded_vocab_size);
    rows_.resize(N);
    for (size_t i = 0; i < N; i++) rows_[i] = (int32_t)i;
    compact_ = false;
}

double GPT2::loss(const int32_t* targets, const float* weights, float dloss, bool backward_prep) {
    // The loss covers the rows the LM head ran on (all rows, or the counted ones; see forward()).
    const size_t n = rows_.size();
    if (n == 0) return 0.0;
    std::vector<int32_t> t(n);
    std::vector<float> w(n);
    for (size_t i = 0; i < n; i++) {
        t[i] = targets[rows_[i]];
        w[i] = weights[rows_[i]];
    }
    be_.upload_i32(targets_, t.data(), n);
    be_.upload_f32(weights_, w.data(), n);
    void* logits = act(a_logits_);
    be_.crossentropy_forward_backward(act(a_losses_), backward_prep ? logits : nullptr, logits, targets_, weights_,
                                      dloss, n, cfg_.vocab_size, cfg_.padded_vocab_size);
    std::vector<double> losses(n);
    be_.download(losses.data(), act(a_losses_), acts_.dtype(), n);
    double sum = 0;
    for (double v : losses) sum += v;
    return sum;
}

void GPT2::backward() {
    const int B = cur_B_, T = cur_T_;
    const size_t N = (size_t)B * T;
    const int C = cfg_.n_embd, NH = cfg_.n_head, Vp = cfg_.padded_vocab_size;
    void* dres = scratch_.ptr(s_dres_);  // gradient of the residual stream, flowing down the blocks
    void* dC = scratch_.ptr(s_dC_);
    void* d3C = scratch_.ptr(s_d3C_);
    void* d4Ca = scratch_.ptr(s_d4C_a_);
    void* d4Cb = scratch_.ptr(s_d4C_b_);
    const int L = cfg_.n_layer;
    void* x_last = L > 0 ? act(a_layer_[L - 1] + kRes3) : act(a_encoded_);

    // LM head and final LayerNorm. The logits buffer now holds dlogits of the rows the head ran on.
    const size_t n = rows_.size();
    if (n == 0) {
        be_.zero(dC, N * C * dtype_size(acts_.dtype()));
    } else if (compact_) {
        void* dlnf_rows = scratch_.ptr(s_dlnf_rows_);
        be_.matmul_backward(dlnf_rows, pgrad(kWte), nullptr, act(a_logits_), scratch_.ptr(s_lnf_rows_),
                            params_.ptr(kWte), n, C, Vp);
        be_.scatter_rows(dC, dlnf_rows, rows_dev_, n, N, C);
    } else {
        be_.matmul_backward(dC, pgrad(kWte), nullptr, act(a_logits_), act(a_lnf_), params_.ptr(kWte), N, C, Vp);
    }
    be_.zero(dres, N * C * dtype_size(acts_.dtype()));
    const int lnf = lnf_w(cfg_);
    be_.layernorm_backward(dres, pgrad(lnf), pgrad(lnf + 1), dC, x_last, params_.ptr(lnf), act(a_lnf_mean_),
                           act(a_lnf_rstd_), N, C);

    char range[48];
    for (int l = L - 1; l >= 0 && l >= lowest_trainable_layer_; l--) {
        std::snprintf(range, sizeof range, "layer %d / backward", l);
        be_.range_push(range);
        BlockPtrs p = block(params_, nullptr, l);
        BlockPtrs g = block(grads_, &grad_index_, l);
        auto A = [&](int k) { return act(a_layer_[l] + k); };
        void* x_in = l == 0 ? act(a_encoded_) : act(a_layer_[l - 1] + kRes3);
        // MLP: x_out = x2 + fcproj(gelu(fc(ln2(x2)))); dres holds d x_out.
        be_.matmul_backward(d4Ca, g.fcprojw, g.fcprojb, dres, A(kFchGelu), p.fcprojw, N, 4 * C, C);
        be_.gelu_backward(d4Cb, d4Ca, A(kFch), N * 4 * C);
        be_.matmul_backward(dC, g.fcw, g.fcb, d4Cb, A(kLn2), p.fcw, N, C, 4 * C);
        be_.layernorm_backward(dres, g.ln2w, g.ln2b, dC, A(kRes2), p.ln2w, A(kLn2Mean), A(kLn2Rstd), N, C);
        // Attention: x2 = x_in + attproj(attention(qkv(ln1(x_in)))); dres now holds d x2.
        be_.matmul_backward(dC, g.attprojw, g.attprojb, dres, A(kAtty), p.attprojw, N, C, C);
        be_.attention_backward(d3C, dC, A(kQkv), A(kAttSaved), B, T, C, NH);
        be_.matmul_backward(dC, g.qkvw, g.qkvb, d3C, A(kLn1), p.qkvw, N, C, 3 * C);
        be_.layernorm_backward(dres, g.ln1w, g.ln1b, dC, x_in, p.ln1w, A(kLn1Mean), A(kLn1Rstd), N, C);
        be_.range_pop();
        if (layer_grads_hook_) layer_grads_hook_(l);  // DIST
    }
    if (lowest_trainable_layer_ < 0) be_.encoder_backward(pgrad(kWte), pgrad(kWpe), dres, tokens_, B, T, C);
}

void GPT2::zero_grads() {
    if (grads_.bytes()) be_.zero(grads_.base(), grads_.bytes());
}

std::vector<float> GPT2::token_losses() const {
    std::vector<float> out((size_t)cur_B_ * cur_T_, 0.0f), rows(rows_.size());
    be_.download(rows.data(), act(a_losses_), acts_.dtype(), rows.size());
    for (size_t i = 0; i < rows_.size(); i++) out[rows_[i]] = rows[i];
    return out;
}

std::vector<float> GPT2::logits_row(int b, int t) const {
    assert(!compact_ && "logits_row needs a forward without loss weights");
    const size_t Vp = cfg_.padded_vocab_size;
    std::vector<float> out(Vp);
    const char* base = static_cast<const char*>(act(a_logits_));
    be_.download(out.data(), base + ((size_t)b * cur_T_ + t) * Vp * dtype_size(acts_.dtype()), acts_.dtype(), Vp);
    return out;
}

}  // namespace tune
