#include "model/gpt2.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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
static const char* const kActNames[kActsPerLayer] = {"ln1", "ln1_mean", "ln1_rstd", "qkv",      "atty",
                                                    "att_saved", "residual2", "ln2", "ln2_mean", "ln2_rstd",
                                                    "fch", "fch_gelu", "residual3"};

// LoRA sites: input and output widths in units of C.
static const int kSiteIn[kLoraSites] = {1, 1, 1, 4};
static const int kSiteOut[kLoraSites] = {3, 1, 4, 1};
static const int kSiteWeight[kLoraSites] = {kQkvw, kAttProjw, kFcw, kFcProjw};

const char* recompute_name(Recompute r) {
    return r == Recompute::none ? "none" : r == Recompute::selective ? "selective" : "full";
}

Recompute parse_recompute(const std::string& name) {
    if (name == "none") return Recompute::none;
    if (name == "selective") return Recompute::selective;
    if (name == "full") return Recompute::full;
    throw UsageError("--recompute: expected one of none, selective, full, got '" + name + "'");
}

size_t num_base_tensors(const ModelConfig& cfg) { return (size_t)kFirstBlock + cfg.n_layer * kTensorsPerBlock + 2; }

Table gpt2_param_table(const ModelConfig& cfg, const PeftConfig& peft) {
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
    const size_t r = peft.lora_rank;
    for (int l = 0; l < cfg.n_layer && peft.lora(); l++)
        for (int s = 0; s < kLoraSites; s++) {
            if (!peft.lora_at(s)) continue;
            const std::string h = "h." + std::to_string(l) + "." + lora_site_name(s) + ".";
            t.add(h + "lora_A", {r, kSiteIn[s] * C});
            t.add(h + "lora_B", {kSiteOut[s] * C, r});
        }
    const size_t P = peft.n_virtual, H = peft.hidden, KV = 2 * C * cfg.n_layer;
    switch (peft.virt) {
        case Virtual::none: break;
        case Virtual::prompt: t.add("prompt.embedding", {P, C}); break;
        case Virtual::prefix_kv: t.add("prefix.kv", {P, KV}); break;
        case Virtual::ptune:
        case Virtual::prefix: {
            const std::string n = peft.virt == Virtual::ptune ? "ptune." : "prefix.";
            const size_t out = peft.virt == Virtual::ptune ? C : KV;
            t.add(n + "input", {P, C});
            t.add(n + "fc.weight", {H, C});
            t.add(n + "fc.bias", {H});
            t.add(n + "proj.weight", {out, H});
            t.add(n + "proj.bias", {out});
            break;
        }
    }
    return t;
}

static int layer_of(const std::string& name) {
    if (name.compare(0, 2, "h.") != 0) return -1;
    char* end = nullptr;
    const long l = std::strtol(name.c_str() + 2, &end, 10);
    return end != name.c_str() + 2 && *end == '.' ? (int)l : -1;
}

std::vector<GradBucket> grad_buckets(const Table& t) {
    std::vector<GradBucket> out;
    for (size_t i = 0; i < t.size(); i++) {
        const int layer = layer_of(t[i].name);
        const size_t begin = t[i].offset, end = i + 1 < t.size() ? t[i + 1].offset : t.total();
        size_t b = 0;
        while (b < out.size() && out[b].layer != layer) b++;
        if (b == out.size()) out.push_back(GradBucket{layer, {}});
        auto& r = out[b].ranges;
        if (!r.empty() && r.back().second == begin)
            r.back().second = end;
        else
            r.push_back({begin, end});
    }
    return out;
}

static void check_shape(const ModelConfig& cfg, int B, int T, int P) {
    if (B <= 0 || T <= 0 || T + P > cfg.block_size)
        throw Error("model: " + std::to_string(B) + " sequences of " + std::to_string(T) + " tokens after " +
                    std::to_string(P) + " virtual ones do not fit the block size " + std::to_string(cfg.block_size));
}

GPT2::GPT2(const ModelConfig& cfg, Backend& be, int B, int T, const Trainable* trainable, const ModelOptions& opts)
    : cfg_(cfg), be_(be), opts_(opts), B_(B), T_(T) {
    validate_config(cfg, "model");
    validate_peft(opts.peft, cfg, "model");
    P_ = opts.peft.virtual_tokens();
    check_shape(cfg, B, T, P_);
    const int L = cfg.n_layer;
    const DType dt = be.act_dtype();
    const PeftConfig& pf = opts.peft;

    Table ptab = gpt2_param_table(cfg, pf);
    n_base_ = tune::num_base_tensors(cfg);
    base_prints_.assign(n_base_, 0);
    lora_.assign((size_t)L * kLoraSites, Lora{});
    for (int l = 0; l < L; l++)
        for (int s = 0; s < kLoraSites; s++) {
            const std::string h = "h." + std::to_string(l) + "." + lora_site_name(s) + ".";
            lora_[l * kLoraSites + s].a = ptab.find(h + "lora_A");
            lora_[l * kLoraSites + s].b = ptab.find(h + "lora_B");
        }
    if (P_ > 0) virt_first_ = (int)ptab.size() - pf.virtual_tensors();

    Table gtab;
    grad_index_.assign(ptab.size(), -1);
    for (size_t i = 0; i < ptab.size(); i++) {
        const bool trains = !trainable || i >= trainable->tensor.size() || trainable->tensor[i];
        if (trains) grad_index_[i] = (int)gtab.add(ptab[i].name, ptab[i].shape);
    }
    // Backward can stop below the lowest block that trains, unless something beneath needs d(encoded).
    embed_grads_ = grad_index_[kWte] >= 0 || grad_index_[kWpe] >= 0;
    lowest_layer_ = L;
    if (embed_grads_ || pf.virt == Virtual::prompt || pf.virt == Virtual::ptune) lowest_layer_ = -1;
    if (pf.virt == Virtual::prefix || pf.virt == Virtual::prefix_kv) lowest_layer_ = std::min(lowest_layer_, 0);
    for (int l = L - 1; l >= 0; l--) {
        bool trains = false;
        for (int k = 0; k < kTensorsPerBlock; k++) trains = trains || grad_index_[block_param(l, k)] >= 0;
        for (int s = 0; s < kLoraSites; s++) trains = trains || lora_[l * kLoraSites + s].a >= 0;
        if (trains) lowest_layer_ = std::min(lowest_layer_, l);
    }
    params_.allocate(be, std::move(ptab), dt);
    buckets_ = tune::grad_buckets(gtab);
    layer_bucket_.assign(L, -1);
    tensor_bucket_.assign(gtab.size(), -1);
    tensor_slot_offset_.assign(gtab.size(), 0);
    range_slot_offset_.assign(buckets_.size(), {});
    for (size_t b = 0; b < buckets_.size(); b++) {
        const GradBucket& bk = buckets_[b];
        if (bk.layer >= 0) layer_bucket_.at(bk.layer) = (int)b;
        size_t off = 0;  // the bucket's ranges back to back, each on an alignment boundary
        for (const auto& [begin, end] : bk.ranges) {
            range_slot_offset_[b].push_back(off);
            for (size_t g = 0; g < gtab.size(); g++)
                if (gtab[g].offset >= begin && gtab[g].offset < end) {
                    tensor_bucket_[g] = (int)b;
                    tensor_slot_offset_[g] = off + (gtab[g].offset - begin);
                }
            off += (end - begin + Table::kAlign - 1) / Table::kAlign * Table::kAlign;
        }
        if (bk.layer < 0)
            rest_elems_ = off;
        else
            slot_elems_ = std::max(slot_elems_, off);
    }
    if (opts.grad_slots > 0) {
        // TEACH: ZeRO-2 on one rank's memory: the blocks' gradients never exist all at once. Block l's are
        // written into a slot, reduced to their owners while the block below computes, and the slot is reused.
        // Consecutive trainable blocks take consecutive slots, so no more are held than blocks train.
        bucket_slot_.assign(buckets_.size(), -1);
        int blocks = 0;
        for (int l = L - 1; l >= 0; l--)  // in backward's order (LoRA-only blocks' buckets come last in the table)
            if (layer_bucket_[l] >= 0) bucket_slot_[layer_bucket_[l]] = blocks++ % opts.grad_slots;
        slots_held_ = std::min(blocks, opts.grad_slots);
        grad_mem_bytes_ = (rest_elems_ + (size_t)slots_held_ * slot_elems_) * dtype_size(dt);
        if (grad_mem_bytes_) {
            grad_mem_ = be.alloc(grad_mem_bytes_);
            be.zero(grad_mem_, grad_mem_bytes_);
        }
        grads_.describe(std::move(gtab), dt);
    } else {
        grads_.allocate(be, std::move(gtab), dt);
    }

    allocate_activations();
}

GPT2::~GPT2() {
    if (grad_mem_) be_.free(grad_mem_);
    release_activations();
}

// The activation and scratch arenas and the per-forward device buffers, for micro-batches of up to B_ x T_.
void GPT2::allocate_activations() {
    const int B = B_, T = T_, L = cfg_.n_layer;
    const size_t Tt = (size_t)T + P_, N = (size_t)B * Tt, C = cfg_.n_embd;
    const DType dt = be_.act_dtype();
    const PeftConfig& pf = opts_.peft;
    // Activations. With recomputation some of each block's buffers are one buffer shared by all blocks.
    const size_t saved = be_.attention_saved_elems(B, (int)Tt, cfg_.n_embd, cfg_.n_head);
    recompute_attention_ = opts_.recompute == Recompute::selective && saved > N * C;
    const std::vector<size_t> shapes[kActsPerLayer] = {{N, C}, {N}, {N}, {N, 3 * C}, {N, C},     {saved},   {N, C},
                                                       {N, C}, {N}, {N}, {N, 4 * C}, {N, 4 * C}, {N, C}};
    auto shared = [&](int k) {
        if (opts_.recompute == Recompute::full) return k != kRes3;
        if (opts_.recompute == Recompute::selective)
            return k == kLn1 || k == kLn2 || k == kFchGelu || (k == kAttSaved && recompute_attention_);
        return false;
    };
    Table atab;
    a_encoded_ = atab.add("encoded", {N, C});
    act_index_.assign((size_t)L * kActsPerLayerMax, 0);
    static_assert(kActsPerLayer <= kActsPerLayerMax, "raise kActsPerLayerMax in gpt2.h");
    for (int l = 0; l < L; l++) {
        const std::string h = "h." + std::to_string(l) + ".";
        for (int k = 0; k < kActsPerLayer; k++)
            act_index_[(size_t)l * kActsPerLayerMax + k] =
                shared(k) && l > 0 ? act_index_[k] : atab.add((shared(k) ? "shared." : h) + kActNames[k], shapes[k]);
        for (int s = 0; s < kLoraSites; s++) {
            Lora& lr = lora_[l * kLoraSites + s];
            if (lr.a < 0) continue;
            const bool sh = opts_.recompute == Recompute::full && l > 0;
            lr.act_u = sh ? lora_[s].act_u
                          : atab.add((opts_.recompute == Recompute::full ? std::string("shared.") : h) +
                                         lora_site_name(s) + ".lora_u",
                                     {N, (size_t)pf.lora_rank});
        }
    }
    a_lnf_ = atab.add("lnf", {N, C});
    a_lnf_mean_ = atab.add("lnf_mean", {N});
    a_lnf_rstd_ = atab.add("lnf_rstd", {N});
    head_rows_ = opts_.head_chunk ? std::min((size_t)B * T, opts_.head_chunk) : (size_t)B * T;
    a_logits_ = atab.add("logits", {head_rows_, (size_t)cfg_.padded_vocab_size});
    a_losses_ = atab.add("losses", {(size_t)B * T});
    const size_t H = pf.hidden, W = pf.virtual_width(cfg_);
    const bool net = pf.virt == Virtual::ptune || pf.virt == Virtual::prefix;
    if (net) {
        a_virt_h_ = atab.add("virtual.fc", {(size_t)P_, H});
        a_virt_hg_ = atab.add("virtual.fc_gelu", {(size_t)P_, H});
        a_virt_out_ = atab.add("virtual.out", {(size_t)P_, W});
    }
    acts_.allocate(be_, std::move(atab), dt);

    Table stab;  // forward scratch and backward's activation gradients: nothing here outlives a pass
    s_proj_ = stab.add("proj_out", {N, C});
    s_dres_ = stab.add("d_residual", {N, C});
    s_dC_ = stab.add("d_C", {N, C});
    s_d3C_ = stab.add("d_3C", {N, 3 * C});
    // The MLP's d(gelu output) apart from d(fc output) only where LoRA on mlp_down adds into the first before
    // the GELU's backward (else the GELU rides on the GEMM's epilogue): N x 4C, the largest buffer here.
    bool lora_mlp_down = false;
    for (int l = 0; l < L; l++) lora_mlp_down = lora_mlp_down || lora_[l * kLoraSites + kLoraMlpDown].a >= 0;
    if (lora_mlp_down) s_d4C_a_ = stab.add("d_4C_a", {N, 4 * C});
    s_d4C_b_ = stab.add("d_4C_b", {N, 4 * C});
    s_lnf_rows_ = stab.add("lnf_counted_rows", {(size_t)B * T, C});
    s_dlnf_rows_ = stab.add("d_lnf_counted_rows", {(size_t)B * T, C});
    s_kl_losses_ = stab.add("distill_losses", {(size_t)B * T});
    if (pf.lora()) {
        s_lora_tmp_ = stab.add("lora_out", {N, 4 * C});
        s_lora_drop_ = stab.add("lora_dropout_in", {N, 4 * C});
        s_lora_dx_ = stab.add("lora_dx", {N, 4 * C});
        s_lora_du_ = stab.add("lora_du", {N, (size_t)pf.lora_rank});
    }
    if (net) {
        s_virt_dout_ = stab.add("virtual.d_out", {(size_t)P_, W});
        s_virt_dh_ = stab.add("virtual.d_fc_gelu", {(size_t)P_, H});
        s_virt_dh2_ = stab.add("virtual.d_fc", {(size_t)P_, H});
        s_virt_din_ = stab.add("virtual.d_input", {(size_t)P_, C});
    }
    scratch_.allocate(be_, std::move(stab), dt);

    tokens_ = static_cast<int32_t*>(be_.alloc(N * sizeof(int32_t)));
    targets_ = static_cast<int32_t*>(be_.alloc((size_t)B * T * sizeof(int32_t)));
    weights_ = static_cast<float*>(be_.alloc((size_t)B * T * sizeof(float)));
    rows_dev_ = static_cast<int32_t*>(be_.alloc((size_t)B * T * sizeof(int32_t)));
    positions_ = static_cast<int32_t*>(be_.alloc(N * sizeof(int32_t)));
    if (P_ > 0) wpe_rows_ = static_cast<int32_t*>(be_.alloc(N * sizeof(int32_t)));
}

void GPT2::release_activations() {
    acts_.release();
    scratch_.release();
    kv_.release();
    auto drop = [this](auto*& p) {
        if (p) be_.free(p);
        p = nullptr;
    };
    drop(tokens_);
    drop(targets_);
    drop(weights_);
    drop(rows_dev_);
    drop(positions_);
    drop(wpe_rows_);
}

void GPT2::resize(int B, int T) {
    check_shape(cfg_, B, T, P_);
    release_activations();
    B_ = B;
    T_ = T;
    cur_B_ = cur_T_ = 0;
    rows_.clear();
    virt_src_ = nullptr;
    compact_ = gathered_ = head_deferred_ = dlogits_ready_ = positioned_ = last_only_ = false;
    try {
        allocate_activations();
    } catch (...) {  // out of memory part way: no half-allocated model for a caller that goes on
        release_activations();
        B_ = T_ = 0;
        throw;
    }
}

BlockPtrs GPT2::block(int l, bool grads) const {
    void* p[kTensorsPerBlock];
    for (int k = 0; k < kTensorsPerBlock; k++) p[k] = grads ? pgrad(block_param(l, k)) : params_.ptr(block_param(l, k));
    return BlockPtrs{p[kLn1w], p[kLn1b], p[kQkvw], p[kQkvb], p[kAttProjw], p[kAttProjb],
                     p[kLn2w], p[kLn2b], p[kFcw],  p[kFcb],  p[kFcProjw],  p[kFcProjb]};
}

void* GPT2::pgrad(int param_idx) const {
    int g = grad_index_[param_idx];
    return g < 0 ? nullptr : grad_ptr(g);
}

int GPT2::grad_slot(int layer) const {
    const int b = layer_bucket_.at(layer);
    return b < 0 || !opts_.grad_slots ? -1 : bucket_slot_[b];
}

void* GPT2::bucket_memory(size_t b) const {
    const size_t at = bucket_slot_[b] < 0 ? 0 : rest_elems_ + (size_t)bucket_slot_[b] * slot_elems_;
    return static_cast<char*>(grad_mem_) + at * dtype_size(grads_.dtype());
}

void* GPT2::grad_ptr(size_t g) const {
    if (!opts_.grad_slots) return grads_.ptr(g);
    return static_cast<char*>(bucket_memory(tensor_bucket_[g])) + tensor_slot_offset_[g] * dtype_size(grads_.dtype());
}

void* GPT2::grad_range(size_t b, size_t k) const {
    const size_t es = dtype_size(grads_.dtype());
    if (!opts_.grad_slots) return static_cast<char*>(grads_.base()) + buckets_[b].ranges[k].first * es;
    return static_cast<char*>(bucket_memory(b)) + range_slot_offset_[b][k] * es;
}

void GPT2::zero_slot(int layer) {
    const int b = layer_bucket_[layer];
    if (b < 0) return;
    const GradBucket& bk = buckets_[b];
    const size_t last = bk.ranges.size() - 1;
    const size_t n = range_slot_offset_[b][last] + (bk.ranges[last].second - bk.ranges[last].first);
    be_.zero(bucket_memory(b), n * dtype_size(grads_.dtype()));
}

void GPT2::set_param(size_t i, const float* host) {
    const TensorInfo& ti = params_.table()[i];
    be_.upload(params_.ptr(i), params_.dtype(), host, ti.numel);
    if (param_listener_) param_listener_(i, host);
    if (i >= n_base_) return;
    // TEACH: hash what the host gave, rounded to bf16 (nearest even, as a bf16 upload rounds): in fp32 and bf16
    // that is the hash of the weights on the device; an fp16 run, whose copy rounds otherwise, gets the same.
    // FNV-1a over 8-byte words (four bf16 values): each step is a bijection of the state, so two tensors that
    // differ in one word always hash apart, at a few GB/s.
    uint64_t h = 0xcbf29ce484222325ull, word = 0;
    for (size_t k = 0; k < ti.numel; k++) {
        word = word << 16 | f32_to_bf16_rne(host[k]);
        if (k % 4 == 3 || k + 1 == ti.numel) {
            h = (h ^ word) * 0x100000001b3ull;
            word = 0;
        }
    }
    base_prints_[i] = h ? h : 1;
}

uint64_t GPT2::base_fingerprint() const {
    const Table& t = params_.table();
    uint64_t h = hash_bytes(nullptr, 0);
    for (size_t i = 0; i < n_base_; i++) {
        if (base_prints_[i] == 0) return 0;
        h = hash_bytes(t[i].name.data(), t[i].name.size(), h);
        h = hash_bytes(&base_prints_[i], sizeof(uint64_t), h);
    }
    return h ? h : 1;
}

void GPT2::init_random(uint64_t seed) {
    Rng rng(seed);
    const Table& t = params_.table();
    const int L = cfg_.n_layer;
    std::vector<float> host;
    for (size_t i = 0; i < n_base_; i++) {
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
        set_param(i, host.data());
    }
}

void GPT2::init_peft(uint64_t seed, const std::vector<int32_t>& init_tokens) {
    Rng rng(seed ^ 0x70656674ull);  // "peft": a stream apart from init_random's
    const Table& t = params_.table();
    const size_t C = cfg_.n_embd;
    std::vector<float> host;
    for (const Lora& lr : lora_) {
        if (lr.a < 0) continue;
        // TEACH: B = 0 makes the update B A zero, so the first forward is exactly the base model's; A must
        // then be non-zero, or B's gradient (dy^T (x A^T)) would be zero too and nothing would ever train.
        const TensorInfo& a = t[lr.a];
        const double bound = 1.0 / std::sqrt((double)a.shape[1]);
        host.resize(a.numel);
        for (float& v : host) v = (float)((2.0 * rng.uniform() - 1.0) * bound);
        set_param(lr.a, host.data());
        host.assign(t[lr.b].numel, 0.0f);
        set_param(lr.b, host.data());
    }
    const Virtual kind = opts_.peft.virt;
    if (kind == Virtual::none) return;
    // The virtual positions' input vectors: token embeddings (+ their position's embedding) or random ones
    // with the spread of the real embeddings.
    std::vector<float> wte((size_t)cfg_.vocab_size * C), wpe((size_t)P_ * C);
    be_.download(wte.data(), params_.ptr(kWte), params_.dtype(), wte.size());
    be_.download(wpe.data(), params_.ptr(kWpe), params_.dtype(), wpe.size());
    std::vector<float> rows((size_t)P_ * C);
    if (!init_tokens.empty()) {
        for (int j = 0; j < P_; j++) {
            const int32_t tok = init_tokens[j % init_tokens.size()];
            assert(tok >= 0 && tok < cfg_.vocab_size);
            for (size_t c = 0; c < C; c++) rows[j * C + c] = wte[tok * C + c] + wpe[j * C + c];
        }
    } else {
        double sum = 0, sq = 0;
        for (float v : wte) sum += v, sq += (double)v * v;
        const double mean = sum / wte.size(), sigma = std::sqrt(std::max(0.0, sq / wte.size() - mean * mean));
        for (float& v : rows) v = (float)(rng.normal() * sigma);
    }
    auto put = [&](int idx, const std::vector<float>& v) { set_param(idx, v.data()); };
    auto normal = [&](int idx, double std) {
        std::vector<float> v(t[idx].numel);
        for (float& x : v) x = (float)(rng.normal() * std);
        put(idx, v);
    };
    switch (kind) {
        case Virtual::prompt: put(virt_first_, rows); break;
        case Virtual::ptune:
        case Virtual::prefix:
            put(virt_first_, rows);
            normal(virt_first_ + 1, 0.02);
            put(virt_first_ + 2, std::vector<float>(t[virt_first_ + 2].numel, 0.0f));
            normal(virt_first_ + 3, 0.02);
            put(virt_first_ + 4, std::vector<float>(t[virt_first_ + 4].numel, 0.0f));
            break;
        case Virtual::prefix_kv: normal(virt_first_, 0.02); break;
        case Virtual::none: break;
    }
}

uint64_t GPT2::dropout_key(int l, int s) const {
    Rng r(dropout_seed_ * 0x100000001b3ull + (uint64_t)(l * kLoraSites + s));
    return r.next_u64();
}

void GPT2::lora_dropout(void* out, const void* inp, int l, int s, size_t N, int IC) {
    assert(cur_B_ > 0 && N % (size_t)cur_B_ == 0);
    const DropoutLayout layout{N / (size_t)cur_B_ * (size_t)IC, dropout_stride_, dropout_offset_};
    be_.dropout(out, inp, opts_.peft.lora_dropout, dropout_key(l, s), layout, N * IC);
}

void* GPT2::lora_down(int l, int s, const void* x, size_t N, int IC, int l_act) {
    const Lora& lr = lora_[l * kLoraSites + s];
    if (lr.a < 0) return nullptr;
    const int r = opts_.peft.lora_rank;
    const void* xin = x;
    if (training_ && opts_.peft.lora_dropout > 0) {
        lora_dropout(scratch_.ptr(s_lora_drop_), x, l, s, N, IC);
        xin = scratch_.ptr(s_lora_drop_);
    }
    // u = (alpha/r) x A^T is kept (N, r): backward needs it for dB, and it is tiny.
    void* u = act(lora_[l_act * kLoraSites + s].act_u);
    be_.matmul_forward(u, xin, params_.ptr(lr.a), nullptr, N, IC, r);
    be_.scale(u, u, opts_.peft.lora_scale(), N * r);
    return u;
}

void GPT2::lora_forward(int l, int s, void* y, const void* x, size_t N, int IC, int OC, int l_act) {
    const void* u = lora_down(l, s, x, N, IC, l_act);
    if (!u) return;
    void* branch = scratch_.ptr(s_lora_tmp_);
    be_.matmul_forward(branch, u, params_.ptr(lora_[l * kLoraSites + s].b), nullptr, N, opts_.peft.lora_rank, OC);
    be_.residual_forward(y, y, branch, N * OC);
}

void GPT2::lora_backward(int l, int s, void* dx, const void* dy, const void* x, size_t N, int IC, int OC) {
    const Lora& lr = lora_[l * kLoraSites + s];
    if (lr.a < 0) return;
    const int r = opts_.peft.lora_rank;
    const void* xin = x;
    if (training_ && opts_.peft.lora_dropout > 0) {  // the same mask as the forward: same key
        lora_dropout(scratch_.ptr(s_lora_drop_), x, l, s, N, IC);
        xin = scratch_.ptr(s_lora_drop_);
    }
    void* du = scratch_.ptr(s_lora_du_);
    void* dxl = scratch_.ptr(s_lora_dx_);
    // y += u B^T:  du = dy B, dB += dy^T u;  u = s x A^T:  dA += s du^T x, dx += s du A.
    be_.matmul_backward(du, pgrad(lr.b), nullptr, dy, act(lr.act_u), params_.ptr(lr.b), N, r, OC);
    be_.scale(du, du, opts_.peft.lora_scale(), N * r);
    be_.matmul_backward(dx ? dxl : nullptr, pgrad(lr.a), nullptr, du, xin, params_.ptr(lr.a), N, IC, r);
    if (!dx) return;  // nothing below reads it
    if (xin != x)  // through the dropout: the same mask and scale again
        lora_dropout(dxl, dxl, l, s, N, IC);
    be_.residual_forward(dx, dx, dxl, N * IC);
}

const void* GPT2::virtual_source() {
    const Virtual kind = opts_.peft.virt;
    if (kind == Virtual::prompt || kind == Virtual::prefix_kv) return params_.ptr(virt_first_);
    const int C = cfg_.n_embd, H = opts_.peft.hidden;
    const int W = opts_.peft.virtual_width(cfg_);
    void* h = act(a_virt_h_);
    void* hg = act(a_virt_hg_);
    void* out = act(a_virt_out_);
    const int f = virt_first_;  // input, fc.weight, fc.bias, proj.weight, proj.bias
    be_.matmul_forward(h, params_.ptr(f), params_.ptr(f + 1), params_.ptr(f + 2), P_, C, H);
    be_.gelu_forward(hg, h, (size_t)P_ * H);
    be_.matmul_forward(out, hg, params_.ptr(f + 3), params_.ptr(f + 4), P_, H, W);
    if (kind == Virtual::ptune) be_.residual_forward(out, out, params_.ptr(f), (size_t)P_ * C);
    return out;
}

void GPT2::virtual_backward(void* dout) {
    const Virtual kind = opts_.peft.virt;
    if (kind != Virtual::ptune && kind != Virtual::prefix) return;
    const int C = cfg_.n_embd, H = opts_.peft.hidden;
    const int W = opts_.peft.virtual_width(cfg_);
    const int f = virt_first_;
    void* dhg = scratch_.ptr(s_virt_dh_);
    void* dh = scratch_.ptr(s_virt_dh2_);
    void* din = scratch_.ptr(s_virt_din_);
    be_.matmul_backward(dhg, pgrad(f + 3), pgrad(f + 4), dout, act(a_virt_hg_), params_.ptr(f + 3), P_, H, W);
    be_.gelu_backward(dh, dhg, act(a_virt_h_), (size_t)P_ * H);
    be_.matmul_backward(din, pgrad(f + 1), pgrad(f + 2), dh, params_.ptr(f), params_.ptr(f + 1), P_, C, H);
    if (void* du = pgrad(f)) {
        be_.residual_forward(du, du, din, (size_t)P_ * C);
        if (kind == Virtual::ptune) be_.residual_forward(du, du, dout, (size_t)P_ * C);  // the skip connection
    }
}

void GPT2::block_forward(int l, int l_act, const void* x_in, int B, int Tt, int pos0, bool chain, int l_act_next) {
    const size_t N = (size_t)B * Tt;
    const int C = cfg_.n_embd, NH = cfg_.n_head;
    const bool cached = pos0 >= 0;
    BlockPtrs p = block(l, false);
    auto a = [&](int k) { return A(l_act, k); };
    void* tmp = scratch_.ptr(s_proj_);
    if (!chain || l == 0) be_.layernorm_forward(a(kLn1), a(kLn1Mean), a(kLn1Rstd), x_in, p.ln1w, p.ln1b, N, C);
    be_.matmul_forward(a(kQkv), a(kLn1), p.qkvw, p.qkvb, N, C, 3 * C);
    lora_forward(l, kLoraQkv, a(kQkv), a(kLn1), N, C, 3 * C, l_act);
    const Virtual kind = opts_.peft.virt;
    if ((kind == Virtual::prefix || kind == Virtual::prefix_kv) && pos0 <= 0) {
        // Prefix tuning: the virtual positions' keys and values are this layer's slice of the prefix.
        const int KV = 2 * C * cfg_.n_layer;
        const void* src = static_cast<const char*>(virt_src_) + (size_t)l * 2 * C * dtype_size(acts_.dtype());
        be_.prefix_rows_forward(a(kQkv), src, KV, B, Tt, P_, 3 * C, C, 2 * C);
    }
    if (cached)
        be_.attention_forward_cached(a(kAtty), kv_.ptr(2 * l), kv_.ptr(2 * l + 1), a(kQkv), B, Tt, pos0,
                                     cfg_.block_size, C, NH);
    else
        be_.attention_forward(a(kAtty), a(kAttSaved), a(kQkv), doc_mask(), B, Tt, C, NH);
    be_.matmul_forward(tmp, a(kAtty), p.attprojw, p.attprojb, N, C, C);
    lora_forward(l, kLoraAttnProj, tmp, a(kAtty), N, C, C, l_act);
    // Each residual sum and the LayerNorm that reads it, in one pass on the GPU.
    be_.residual_layernorm_forward(a(kRes2), a(kLn2), a(kLn2Mean), a(kLn2Rstd), x_in, tmp, p.ln2w, p.ln2b, N, C);
    // TEACH: the GELU stays a kernel of its own here. cuBLASLt could apply it in the GEMM's epilogue (writing
    // pre-activation and GELU in one pass), but from the unrounded fp32 sum: selective recomputation, which
    // rebuilds the GELU output from the kept pre-activation, could then not give the same bits. Backward has
    // no such problem: its GELU gradient rides on the next GEMM (matmul_backward_gelu).
    be_.matmul_forward(a(kFch), a(kLn2), p.fcw, p.fcb, N, C, 4 * C);
    lora_forward(l, kLoraMlpUp, a(kFch), a(kLn2), N, C, 4 * C, l_act);
    be_.gelu_forward(a(kFchGelu), a(kFch), N * 4 * C);
    if (!chain) {
        // TEACH: recomputation for backward stops here. Backward reads neither the MLP's output nor the block's
        // (kept from the forward), so the last GEMM (a third of the block's) would be work thrown away; only the
        // LoRA branch's u, which its dB needs, is rebuilt.
        lora_down(l, kLoraMlpDown, a(kFchGelu), N, 4 * C, l_act);
        return;
    }
    be_.matmul_forward(tmp, a(kFchGelu), p.fcprojw, p.fcprojb, N, 4 * C, C);
    lora_forward(l, kLoraMlpDown, tmp, a(kFchGelu), N, 4 * C, C, l_act);
    if (l + 1 < cfg_.n_layer) {  // the next block's ln_1 (its activations are not written yet)
        const BlockPtrs q = block(l + 1, false);
        be_.residual_layernorm_forward(a(kRes3), A(l_act_next, kLn1), A(l_act_next, kLn1Mean),
                                       A(l_act_next, kLn1Rstd), a(kRes2), tmp, q.ln1w, q.ln1b, N, C);
    } else {
        const int lnf = lnf_w(cfg_);
        be_.residual_layernorm_forward(a(kRes3), act(a_lnf_), act(a_lnf_mean_), act(a_lnf_rstd_), a(kRes2), tmp,
                                       params_.ptr(lnf), params_.ptr(lnf + 1), N, C);
    }
}

void GPT2::trunk_forward(int B, int Tt, int pos0) {
    const size_t N = (size_t)B * Tt;
    const int C = cfg_.n_embd;
    const bool cached = pos0 >= 0;
    // Position embeddings start at row pos0 when generating (0 otherwise).
    const void* wpe =
        static_cast<const char*>(params_.ptr(kWpe)) + (size_t)std::max(pos0, 0) * C * dtype_size(params_.dtype());
    be_.range_push("embeddings / forward");
    be_.encoder_forward(act(a_encoded_), tokens_, cached ? nullptr : wpe_positions(), params_.ptr(kWte), wpe, B, Tt,
                        C);
    // The buffers start with the virtual positions in training (pos0 < 0) and in generation's prefill (0).
    if (P_ > 0 && pos0 <= 0) {
        virt_src_ = virtual_source();
        if (opts_.peft.virt == Virtual::prompt || opts_.peft.virt == Virtual::ptune)
            be_.prefix_rows_forward(act(a_encoded_), virt_src_, C, B, Tt, P_, C, 0, C);
    }
    be_.range_pop();
    const void* x = act(a_encoded_);  // the residual stream entering the block
    char range[48];
    for (int l = 0; l < cfg_.n_layer; l++) {
        std::snprintf(range, sizeof range, "layer %d / forward", l);
        be_.range_push(range);
        // Training keeps every block's activations for backward (unless recomputing); generation has no
        // backward, so every block can reuse layer 0's buffers.
        const int l_act = cached ? 0 : l;
        block_forward(l, l_act, x, B, Tt, pos0, true, cached ? 0 : l + 1);  // also the next LayerNorm (ln_f last)
        x = A(l_act, kRes3);
        be_.range_pop();
    }
    if (cfg_.n_layer == 0)
        be_.layernorm_forward(act(a_lnf_), act(a_lnf_mean_), act(a_lnf_rstd_), x, params_.ptr(lnf_w(cfg_)),
                              params_.ptr(lnf_w(cfg_) + 1), N, C);
}

static double sum_of(Backend& be, const void* x, DType dt, size_t n) {
    std::vector<double> v(n);
    be.download(v.data(), x, dt, n);
    double sum = 0;
    for (double e : v) sum += e;
    return sum;
}

void GPT2::forward(const int32_t* tokens, int B, int T, const float* weights, const int32_t* positions) {
    assert(B <= B_ && T <= T_);
    cur_B_ = B;
    cur_T_ = T;
    last_only_ = false;
    const int Tt = T + P_;
    const size_t N = (size_t)B * T;
    positioned_ = false;  // until the positions below are checked and uploaded
    if (positions) {
        for (size_t i = 0; i < N; i++) {
            const int t = (int)(i % T), p = positions[i];
            if (p < 0 || p > t || (p != 0 && p != positions[i - 1] + 1))
                throw Error("model: position " + std::to_string(p) + " at row " + std::to_string(i / T) +
                            ", column " + std::to_string(t) +
                            ": a document's positions count 0, 1, 2, ... from its first token");
        }
        // TEACH: virtual tokens (P_ > 0) fill the first P_ positions of every row, and every packed document
        // sees them, as it would alone: attention takes P_ as the mask's prefix, each virtual row counts as a
        // document of its own from the row's start, and a real token's wpe row is P_ + its position.
        std::vector<int32_t> att((size_t)B * Tt), wpe(P_ > 0 ? (size_t)B * Tt : 0);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tt; t++) {
                const int32_t p = t < P_ ? t : positions[(size_t)b * T + t - P_];
                att[(size_t)b * Tt + t] = p;
                if (P_ > 0) wpe[(size_t)b * Tt + t] = t < P_ ? t : P_ + p;
            }
        be_.upload_i32(positions_, att.data(), att.size());
        if (P_ > 0) be_.upload_i32(wpe_rows_, wpe.data(), wpe.size());
        positioned_ = true;
    }
    tokens_host_.assign((size_t)B * Tt, 0);  // virtual slots hold token 0; their rows are overwritten
    for (int b = 0; b < B; b++)
        std::copy(tokens + (size_t)b * T, tokens + (size_t)(b + 1) * T, tokens_host_.begin() + (size_t)b * Tt + P_);
    be_.upload_i32(tokens_, tokens_host_.data(), tokens_host_.size());
    trunk_forward(B, Tt, -1);
    // LM head: logits = lnf @ wte^T, the tied embedding matrix as the head (Vp columns). Positions whose loss
    // weight is zero (prompt tokens in fine-tuning, virtual tokens) need no logits at all: it runs on the
    // counted rows only.
    rows_.clear();
    for (size_t i = 0; i < N; i++)
        if (!weights || weights[i] != 0.0f) rows_.push_back((int32_t)i);
    compact_ = rows_.size() < N;
    gathered_ = compact_ || P_ > 0;
    head_deferred_ = rows_.size() > head_rows_;
    dlogits_ready_ = false;
    if (rows_.empty()) return;
    const BackendRange range(be_, "head / forward");
    if (gathered_) {
        std::vector<int32_t> inner(rows_.size());
        for (size_t k = 0; k < rows_.size(); k++) inner[k] = (int32_t)((rows_[k] / T) * Tt + P_ + rows_[k] % T);
        be_.upload_i32(rows_dev_, inner.data(), inner.size());
        be_.gather_rows(scratch_.ptr(s_lnf_rows_), act(a_lnf_), rows_dev_, rows_.size(), cfg_.n_embd);
    }
    if (head_deferred_) return;  // loss() runs the head a chunk at a time
    be_.matmul_forward(act(a_logits_), head_input(), params_.ptr(kWte), nullptr, rows_.size(), cfg_.n_embd,
                       cfg_.padded_vocab_size);
}

const void* GPT2::head_input() const { return gathered_ ? scratch_.ptr(s_lnf_rows_) : act(a_lnf_); }

void* GPT2::logits_buffer() const {
    if (head_deferred_)
        throw Error("model: the logits of " + std::to_string(rows_.size()) + " rows were computed " +
                    std::to_string(head_rows_) + " at a time and not kept (ModelOptions::head_chunk)");
    return act(a_logits_);
}

void GPT2::forward_cached(const int32_t* tokens, int B, int n, int pos0, bool last_only) {
    const int C = cfg_.n_embd, maxT = cfg_.block_size;
    assert(B <= B_ && n <= T_ && pos0 >= 0 && pos0 + n + P_ <= maxT);
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
    positioned_ = false;  // one document a row, at positions pos0..
    last_only_ = last_only && n > 1;
    const size_t N = last_only_ ? (size_t)B : (size_t)B * n;  // rows the head runs on
    if (N > head_rows_)
        throw Error("model: generation of " + std::to_string(N) + " positions at once needs that many rows of logits; " +
                    "this model keeps " + std::to_string(head_rows_) + " (ModelOptions::head_chunk)");
    head_deferred_ = dlogits_ready_ = false;
    rows_.resize(N);
    for (size_t i = 0; i < N; i++) rows_[i] = (int32_t)i;
    compact_ = false;
    // The prefill (pos0 = 0) runs the virtual tokens first; later calls sit P_ positions further on.
    const bool with_virtual = P_ > 0 && pos0 == 0;
    gathered_ = with_virtual || last_only_;
    const int Tt = with_virtual ? n + P_ : n;
    tokens_host_.assign((size_t)B * Tt, 0);
    for (int b = 0; b < B; b++)
        std::copy(tokens + (size_t)b * n, tokens + (size_t)(b + 1) * n, tokens_host_.begin() + (size_t)b * Tt + (Tt - n));
    be_.upload_i32(tokens_, tokens_host_.data(), tokens_host_.size());
    trunk_forward(B, Tt, pos0 == 0 ? 0 : pos0 + P_);
    const void* head_in = act(a_lnf_);
    if (gathered_) {  // head rows: (b, t) of the real tokens, or (b, n - 1) only
        std::vector<int32_t> inner(N);
        for (size_t k = 0; k < N; k++)
            inner[k] = last_only_ ? (int32_t)(k * Tt + Tt - 1) : (int32_t)((k / n) * Tt + (Tt - n) + k % n);
        be_.upload_i32(rows_dev_, inner.data(), N);
        be_.gather_rows(scratch_.ptr(s_lnf_rows_), act(a_lnf_), rows_dev_, N, C);
        head_in = scratch_.ptr(s_lnf_rows_);
    }
    be_.matmul_forward(act(a_logits_), head_in, params_.ptr(kWte), nullptr, N, C, cfg_.padded_vocab_size);
}

void GPT2::upload_targets(const int32_t* targets, const float* weights) {
    const size_t n = rows_.size();
    std::vector<int32_t> t(n);
    std::vector<float> w(n);
    for (size_t i = 0; i < n; i++) {
        t[i] = targets[rows_[i]];
        w[i] = weights[rows_[i]];
    }
    be_.upload_i32(targets_, t.data(), n);
    be_.upload_f32(weights_, w.data(), n);
}

double GPT2::loss(const int32_t* targets, const float* weights, float dloss, bool backward_prep) {
    // The loss covers the rows the LM head ran on (all rows, or the counted ones; see forward()).
    if (rows_.empty()) return 0.0;
    upload_targets(targets, weights);
    return head_loss(dloss, backward_prep, nullptr, 0.0f, 1.0f).first;
}

std::pair<double, double> GPT2::loss_distill(const int32_t* targets, const float* weights, float dloss, GPT2& teacher,
                                             float alpha, float tau) {
    if (rows_.empty()) return {0.0, 0.0};
    if (teacher.rows_ != rows_ || teacher.cfg_.vocab_size != cfg_.vocab_size ||
        teacher.cfg_.padded_vocab_size != cfg_.padded_vocab_size || &teacher.be_ != &be_)
        throw Error("model: distillation needs a teacher of the same vocabulary, on the same backend, whose last "
                    "forward ran on the same tokens and loss weights");
    upload_targets(targets, weights);
    return head_loss(dloss, true, &teacher, alpha, tau);
}

// The loss over the head's rows, a chunk of rows at a time where a head was deferred (ModelOptions::head_chunk),
// else in one piece over the logits forward() made: logits (deferred heads) -> distillation from the teacher's
// logits into the teacher's buffer, if any -> cross-entropy with dlogits in place -> their sum -> with
// backward_prep, a deferred head's backward for those rows (d head input written, d wte accumulated), before
// the next chunk reuses the buffers. Chunks are balanced: equal sizes give or take one row.
std::pair<double, double> GPT2::head_loss(float dloss, bool backward_prep, GPT2* teacher, float alpha, float tau) {
    const size_t n = rows_.size(), es = dtype_size(acts_.dtype());
    const int C = cfg_.n_embd, V = cfg_.vocab_size, Vp = cfg_.padded_vocab_size;
    if (dlogits_ready_)  // the logits (or, deferred, d head input and d wte) hold the first call's gradient
        throw Error("model: loss() again after loss(..., backward_prep): run forward() first");
    // With a deferred head (more rows than --head-chunk), the head's matmuls forward and backward run here too.
    const BackendRange range(be_, "head / loss");
    const bool t_deferred = teacher && teacher->head_deferred_;
    const size_t most = std::min({n, head_deferred_ ? head_rows_ : n, t_deferred ? teacher->head_rows_ : n});
    const size_t chunks = (n + most - 1) / most;
    char* z_all = static_cast<char*>(act(a_logits_));
    char* zt_all = teacher ? static_cast<char*>(teacher->act(teacher->a_logits_)) : nullptr;
    const char* in = static_cast<const char*>(head_input());
    // d head input: the counted rows' buffer when the head's input was gathered, else d lnf itself.
    char* din = static_cast<char*>(gathered_ ? scratch_.ptr(s_dlnf_rows_) : scratch_.ptr(s_dC_));
    char* losses = static_cast<char*>(act(a_losses_));
    char* kl = static_cast<char*>(scratch_.ptr(s_kl_losses_));
    for (size_t c = 0; c < chunks; c++) {
        const size_t r0 = n * c / chunks, rows = n * (c + 1) / chunks - r0;
        // A deferred head makes this chunk's logits at the start of its buffer; a whole one has them at row r0.
        char* z = head_deferred_ ? z_all : z_all + r0 * Vp * es;
        if (head_deferred_) be_.matmul_forward(z, in + r0 * C * es, params_.ptr(kWte), nullptr, rows, C, Vp);
        float ce_scale = dloss;
        char* zt = nullptr;
        if (teacher) {
            zt = t_deferred ? zt_all : zt_all + r0 * Vp * es;
            const int Ct = teacher->cfg_.n_embd;  // a teacher may be wider than its student
            if (t_deferred)
                be_.matmul_forward(zt, static_cast<const char*>(teacher->head_input()) + r0 * Ct * es,
                                   teacher->params_.ptr(kWte), nullptr, rows, Ct, Vp);
            // The distillation gradient goes into the teacher's buffer (its logits are read first, row by row),
            // the cross-entropy's into ours, and then they are added.
            be_.distill_forward_backward(kl + r0 * es, zt, z, zt, weights_ + r0, tau, dloss * alpha, rows, V, Vp);
            ce_scale = dloss * (1.0f - alpha);
        }
        be_.crossentropy_forward_backward(losses + r0 * es, backward_prep ? z : nullptr, z, targets_ + r0,
                                          weights_ + r0, ce_scale, rows, V, Vp);
        if (teacher) be_.residual_forward(z, z, zt, rows * Vp);
        if (head_deferred_ && backward_prep)
            be_.matmul_backward(din + r0 * C * es, pgrad(kWte), nullptr, z, in + r0 * C * es, params_.ptr(kWte), rows,
                                C, Vp);
    }
    dlogits_ready_ = backward_prep;
    return {sum_of(be_, act(a_losses_), acts_.dtype(), n),
            teacher ? sum_of(be_, scratch_.ptr(s_kl_losses_), acts_.dtype(), n) : 0.0};
}

void GPT2::block_backward(int l, const void* x_in, int B, int Tt, bool need_dx) {
    const size_t N = (size_t)B * Tt;
    const int C = cfg_.n_embd, NH = cfg_.n_head;
    BlockPtrs p = block(l, false);
    BlockPtrs g = block(l, true);
    auto a = [&](int k) { return A(l, k); };
    // Recomputation: the same ops on the same inputs give the same bits as the forward did.
    if (opts_.recompute == Recompute::full) {
        block_forward(l, l, x_in, B, Tt, -1);
    } else if (opts_.recompute == Recompute::selective) {
        be_.layernorm_forward(a(kLn1), a(kLn1Mean), a(kLn1Rstd), x_in, p.ln1w, p.ln1b, N, C);
        be_.layernorm_forward(a(kLn2), a(kLn2Mean), a(kLn2Rstd), a(kRes2), p.ln2w, p.ln2b, N, C);
        be_.gelu_forward(a(kFchGelu), a(kFch), N * 4 * C);
        // TEACH: the attention probabilities (NH·T per token, as much as the rest of the block together)
        // come back from the kept QKV; the output this also recomputes is kept already, so it goes to scratch.
        if (recompute_attention_)
            be_.attention_forward(scratch_.ptr(s_proj_), a(kAttSaved), a(kQkv), doc_mask(), B, Tt, C, NH);
    }
    void* dres = scratch_.ptr(s_dres_);  // d x_out on entry, d x_in on exit
    void* dC = scratch_.ptr(s_dC_);
    void* d3C = scratch_.ptr(s_d3C_);
    void* d4Cb = scratch_.ptr(s_d4C_b_);
    // MLP: x_out = x2 + fcproj(gelu(fc(ln2(x2)))); dres holds d x_out.
    if (lora_[l * kLoraSites + kLoraMlpDown].a < 0) {  // the GELU's backward rides on the dinp GEMM
        be_.matmul_backward_gelu(d4Cb, g.fcprojw, g.fcprojb, dres, a(kFchGelu), p.fcprojw, a(kFch), N, 4 * C, C);
    } else {  // LoRA's share of d(gelu output) must be in before the GELU's backward
        void* d4Ca = scratch_.ptr(s_d4C_a_);
        be_.matmul_backward(d4Ca, g.fcprojw, g.fcprojb, dres, a(kFchGelu), p.fcprojw, N, 4 * C, C);
        lora_backward(l, kLoraMlpDown, d4Ca, dres, a(kFchGelu), N, 4 * C, C);
        be_.gelu_backward(d4Cb, d4Ca, a(kFch), N * 4 * C);
    }
    be_.matmul_backward(dC, g.fcw, g.fcb, d4Cb, a(kLn2), p.fcw, N, C, 4 * C);
    lora_backward(l, kLoraMlpUp, dC, d4Cb, a(kLn2), N, C, 4 * C);
    be_.layernorm_backward(dres, g.ln2w, g.ln2b, dC, a(kRes2), p.ln2w, a(kLn2Mean), a(kLn2Rstd), N, C);
    // Attention: x2 = x_in + attproj(attention(qkv(ln1(x_in)))); dres now holds d x2.
    be_.matmul_backward(dC, g.attprojw, g.attprojb, dres, a(kAtty), p.attprojw, N, C, C);
    lora_backward(l, kLoraAttnProj, dC, dres, a(kAtty), N, C, C);
    be_.attention_backward(d3C, dC, a(kQkv), a(kAtty), a(kAttSaved), doc_mask(), B, Tt, C, NH);
    const Virtual kind = opts_.peft.virt;
    if (kind == Virtual::prefix || kind == Virtual::prefix_kv) {
        void* dsrc = kind == Virtual::prefix ? scratch_.ptr(s_virt_dout_) : pgrad(virt_first_);
        if (dsrc) dsrc = static_cast<char*>(dsrc) + (size_t)l * 2 * C * dtype_size(acts_.dtype());
        be_.prefix_rows_backward(dsrc, d3C, 2 * C * cfg_.n_layer, B, Tt, P_, 3 * C, C, 2 * C);
    }
    // TEACH: the lowest block backward runs has no reader for d x_in, and unless its ln_1 trains none for
    // d ln_1(x_in) either: then the QKV input gradient (a GEMM as large as the weight gradient) and ln_1's
    // backward are skipped, as frozen weights skip their weight-gradient GEMMs.
    const bool need_dln1 = need_dx || g.ln1w || g.ln1b;
    be_.matmul_backward(need_dln1 ? dC : nullptr, g.qkvw, g.qkvb, d3C, a(kLn1), p.qkvw, N, C, 3 * C);
    lora_backward(l, kLoraQkv, need_dln1 ? dC : nullptr, d3C, a(kLn1), N, C, 3 * C);
    if (need_dln1) be_.layernorm_backward(dres, g.ln1w, g.ln1b, dC, x_in, p.ln1w, a(kLn1Mean), a(kLn1Rstd), N, C);
}

void GPT2::backward() {
    const int B = cur_B_, Tt = cur_T_ + P_;
    const size_t N = (size_t)B * Tt;
    const int C = cfg_.n_embd, Vp = cfg_.padded_vocab_size;
    void* dres = scratch_.ptr(s_dres_);  // gradient of the residual stream, flowing down the blocks
    void* dC = scratch_.ptr(s_dC_);
    const int L = cfg_.n_layer;
    void* x_last = L > 0 ? A(L - 1, kRes3) : act(a_encoded_);
    const Virtual kind = opts_.peft.virt;
    if (kind == Virtual::prefix || kind == Virtual::ptune)
        be_.zero(scratch_.ptr(s_virt_dout_), scratch_.table()[s_virt_dout_].numel * dtype_size(scratch_.dtype()));

    // LM head and final LayerNorm. The logits buffer now holds dlogits of the rows the head ran on.
    be_.range_push("head / backward");
    const size_t n = rows_.size();
    if (n > 0 && !dlogits_ready_)  // the logits buffer would be read as their gradient
        throw Error("model: backward() needs loss(..., backward_prep) after the forward, to turn the logits into "
                    "their gradient");
    if (n == 0) {
        be_.zero(dC, N * C * dtype_size(acts_.dtype()));
    } else if (gathered_) {
        void* dlnf_rows = scratch_.ptr(s_dlnf_rows_);
        if (!head_deferred_)  // else loss() did it, chunk by chunk
            be_.matmul_backward(dlnf_rows, pgrad(kWte), nullptr, act(a_logits_), scratch_.ptr(s_lnf_rows_),
                                params_.ptr(kWte), n, C, Vp);
        be_.scatter_rows(dC, dlnf_rows, rows_dev_, n, N, C);
    } else if (!head_deferred_) {  // else loss() wrote dC, chunk by chunk
        be_.matmul_backward(dC, pgrad(kWte), nullptr, act(a_logits_), act(a_lnf_), params_.ptr(kWte), N, C, Vp);
    }
    be_.zero(dres, N * C * dtype_size(acts_.dtype()));
    const int lnf = lnf_w(cfg_);
    be_.layernorm_backward(dres, pgrad(lnf), pgrad(lnf + 1), dC, x_last, params_.ptr(lnf), act(a_lnf_mean_),
                           act(a_lnf_rstd_), N, C);
    be_.range_pop();

    const int stop = std::max(lowest_layer_, backward_floor_);
    char range[48];
    for (int l = L - 1; l >= 0 && l >= stop; l--) {
        std::snprintf(range, sizeof range, "layer %d / backward", l);
        be_.range_push(range);
        if (opts_.grad_slots) {  // ZeRO-2: the owner empties the slot, then it starts from zero
            if (layer_start_hook_) layer_start_hook_(l);
            zero_slot(l);
        }
        block_backward(l, l == 0 ? act(a_encoded_) : A(l - 1, kRes3), B, Tt, l > stop);
        be_.range_pop();
        if (layer_grads_hook_) layer_grads_hook_(l);  // DIST
    }
    if (kind == Virtual::prefix && stop <= 0) {  // every layer's share is in
        const BackendRange virt(be_, "virtual tokens / backward");
        virtual_backward(scratch_.ptr(s_virt_dout_));
    }
    if (stop >= 0) return;
    const BackendRange embeddings(be_, "embeddings / backward");
    if (kind == Virtual::prompt || kind == Virtual::ptune) {
        // dres = d(encoded): the virtual rows' share goes to the prompt (and is zeroed before the embeddings).
        void* dsrc = kind == Virtual::ptune ? scratch_.ptr(s_virt_dout_) : pgrad(virt_first_);
        be_.prefix_rows_backward(dsrc, dres, C, B, Tt, P_, C, 0, C);
        virtual_backward(scratch_.ptr(s_virt_dout_));
    }
    if (embed_grads_) be_.encoder_backward(pgrad(kWte), pgrad(kWpe), dres, tokens_, wpe_positions(), B, Tt, C);
}

void GPT2::zero_grads() {
    if (grads_.bytes()) be_.zero(grads_.base(), grads_.bytes());
    if (grad_mem_) be_.zero(grad_mem_, rest_elems_ * dtype_size(grads_.dtype()));  // slots: zeroed as taken
}

std::vector<float> GPT2::token_losses() const {
    std::vector<float> out((size_t)cur_B_ * cur_T_, 0.0f), rows(rows_.size());
    be_.download(rows.data(), act(a_losses_), acts_.dtype(), rows.size());
    for (size_t i = 0; i < rows_.size(); i++) out[rows_[i]] = rows[i];
    return out;
}

std::vector<float> GPT2::logits_row(int b, int t) const {
    assert(!compact_ && "logits_row needs a forward without loss weights");
    assert((!last_only_ || t == cur_T_ - 1) && "forward_cached(last_only) kept the last position's logits only");
    const size_t Vp = cfg_.padded_vocab_size;
    const size_t row = last_only_ ? (size_t)b : (size_t)b * cur_T_ + t;
    std::vector<float> out(Vp);
    const char* base = static_cast<const char*>(logits_buffer());
    be_.download(out.data(), base + row * Vp * dtype_size(acts_.dtype()), acts_.dtype(), Vp);
    return out;
}

std::vector<float> GPT2::merged_base_tensor(size_t i) const {
    const TensorInfo& ti = params_.table()[i];
    std::vector<float> w(ti.numel);
    be_.download(w.data(), params_.ptr(i), params_.dtype(), w.size());
    if (i < (size_t)kFirstBlock || i >= (size_t)lnf_w(cfg_)) return w;
    const int l = ((int)i - kFirstBlock) / kTensorsPerBlock, k = ((int)i - kFirstBlock) % kTensorsPerBlock;
    for (int s = 0; s < kLoraSites; s++) {
        const Lora& lr = lora_[l * kLoraSites + s];
        if (kSiteWeight[s] != k || lr.a < 0) continue;
        const size_t r = opts_.peft.lora_rank, IC = ti.shape[1], OC = ti.shape[0];
        std::vector<float> a(r * IC), bm(OC * r);
        be_.download(a.data(), params_.ptr(lr.a), params_.dtype(), a.size());
        be_.download(bm.data(), params_.ptr(lr.b), params_.dtype(), bm.size());
        const double sc = opts_.peft.lora_scale();
        for (size_t o = 0; o < OC; o++)
            for (size_t c = 0; c < IC; c++) {
                double acc = 0;
                for (size_t q = 0; q < r; q++) acc += (double)bm[o * r + q] * a[q * IC + c];
                w[o * IC + c] = (float)((double)w[o * IC + c] + sc * acc);
            }
    }
    return w;
}

PeftConfig GPT2::folded_virtual_config() const {
    PeftConfig f;  // no LoRA: a folded model's LoRA is merged into its base weights
    f.virt = opts_.peft.virt == Virtual::ptune    ? Virtual::prompt
             : opts_.peft.virt == Virtual::prefix ? Virtual::prefix_kv
                                                  : opts_.peft.virt;
    f.n_virtual = opts_.peft.n_virtual;
    return f;
}

std::vector<float> GPT2::folded_virtual_tensor() {
    if (P_ == 0) return {};
    const void* src = virtual_source();
    const size_t W = opts_.peft.virtual_width(cfg_);
    std::vector<float> out((size_t)P_ * W);
    be_.download(out.data(), src, params_.dtype(), out.size());
    return out;
}

}  // namespace tune
