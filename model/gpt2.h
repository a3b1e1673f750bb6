// GPT-2, exactly as OpenAI's and Hugging Face's GPT2LMHeadModel:
//   x = wte[tokens] + wpe[positions]
//   for each of L blocks (pre-LN):
//       x = x + attn_proj(causal_self_attention(c_attn(LN1(x))))
//       x = x + mlp_proj(gelu_tanh(c_fc(LN2(x))))
//   logits = LN_f(x) @ wte^T          (LM head tied to the token embedding; Vp padded columns)
//   loss   = weighted softmax cross-entropy (kernels/cpu/crossentropy.h)
// Parameters live in one arena carved by a table (names as in Hugging Face, weights stored (out, in));
// gradients in a second arena that covers only trainable tensors; activations in a third. The model
// only calls Backend ops, so the same code runs on the CPU and on CUDA.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/arena.h"
#include "model/config.h"

namespace tune {

// Per-block parameter (or gradient) pointers; computed in one place that forward and backward share.
// In a gradient view a frozen tensor's pointer is null.
struct BlockPtrs {
    void* ln1w;      // (C)
    void* ln1b;      // (C)
    void* qkvw;      // (3C, C)
    void* qkvb;      // (3C)
    void* attprojw;  // (C, C)
    void* attprojb;  // (C)
    void* ln2w;      // (C)
    void* ln2b;      // (C)
    void* fcw;       // (4C, C)
    void* fcb;       // (4C)
    void* fcprojw;   // (C, 4C)
    void* fcprojb;   // (C)
};
constexpr int kTensorsPerBlock = 12;

// The parameter table of a config: wte, wpe, then h.<l>.* for each block, then ln_f.*.
Table gpt2_param_table(const ModelConfig& cfg);

// Which parameter tensors train. Default: all of them.
struct Trainable {
    std::vector<bool> tensor;  // indexed like the parameter table
};

class GPT2 {
   public:
    // Allocates parameters, gradients and activations for micro-batches of up to B sequences of up to T.
    GPT2(const ModelConfig& cfg, Backend& be, int B, int T, const Trainable* trainable = nullptr);
    ~GPT2();
    GPT2(const GPT2&) = delete;
    GPT2& operator=(const GPT2&) = delete;

    const ModelConfig& config() const { return cfg_; }
    Backend& backend() { return be_; }
    int max_B() const { return B_; }
    int max_T() const { return T_; }

    Arena& params() { return params_; }
    Arena& grads() { return grads_; }
    const Arena& params() const { return params_; }
    const Arena& grads() const { return grads_; }
    const Arena& acts() const { return acts_; }
    // grad_index()[i] is the gradient-table index of parameter tensor i, or -1 when it is frozen.
    const std::vector<int>& grad_index() const { return grad_index_; }

    // GPT-2 initialisation: N(0, 0.02) for weights and embeddings, N(0, 0.02/sqrt(2L)) for the two
    // projections that write into the residual stream, zero biases, unit LayerNorm gains. Deterministic
    // in the seed. Padded vocabulary rows stay zero.
    void init_random(uint64_t seed);

    // Forward pass on tokens(B,T) (host memory) up to the logits. With loss weights(B,T), the LM head runs
    // only on the positions whose weight is non-zero (the others contribute nothing to the loss or any
    // gradient): in supervised fine-tuning the prompt tokens then cost no LM-head work. logits_row() needs
    // a forward without weights.
    void forward(const int32_t* tokens, int B, int T, const float* weights = nullptr);
    // Cross-entropy on the last forward (pass the same weights it got): returns sum_i weights[i] * loss_i
    // (host, double). With `backward_prep` the logits are replaced by d(loss)/d(logits) scaled by dloss,
    // ready for backward().
    double loss(const int32_t* targets, const float* weights, float dloss, bool backward_prep);
    // Generation: forward of n new tokens(B,n) at positions pos0..pos0+n-1, reading and extending the KV
    // cache (allocated on first use for block_size positions), so each new token costs one position's work.
    // Afterwards logits_row(b, i) gives the logits of new position i. Needs n <= max_T().
    void forward_cached(const int32_t* tokens, int B, int n, int pos0);
    // Backward pass of the last forward; parameter gradients accumulate into grads().
    void backward();
    void zero_grads();
    // DIST: backward calls hook(l) as soon as layer l's parameter gradients are complete for this pass, so
    // data parallelism can start reducing them while the layers below compute (train/data_parallel.h).
    void set_layer_grads_hook(std::function<void(int)> hook) { layer_grads_hook_ = std::move(hook); }

    // Per-token losses of the last loss() call (B*T, weighted), and the logits of the last forward.
    std::vector<float> token_losses() const;
    std::vector<float> logits_row(int b, int t) const;  // (Vp) of one position

    // Bytes per category, for the memory map.
    size_t param_bytes() const { return params_.bytes(); }
    size_t grad_bytes() const { return grads_.bytes(); }
    size_t act_bytes() const { return acts_.bytes() + scratch_.bytes(); }

   private:
    BlockPtrs block(const Arena& a, const std::vector<int>* index, int l) const;
    // Embeddings, every block and the final LayerNorm over the uploaded tokens(B,T). pos0 < 0: training,
    // full causal attention saving what backward needs; pos0 >= 0: generation against the KV cache.
    void trunk_forward(int B, int T, int pos0);
    void* act(size_t idx) const { return acts_.ptr(idx); }
    void* pgrad(int param_idx) const;  // gradient of a parameter tensor, null when frozen

    ModelConfig cfg_;
    Backend& be_;
    int B_, T_;
    Arena params_, grads_, acts_, scratch_, kv_;
    std::vector<int> grad_index_;
    int32_t* tokens_ = nullptr;   // (B, T) on the backend
    int32_t* targets_ = nullptr;  // (B, T)
    float* weights_ = nullptr;    // (B, T)
    int cur_B_ = 0, cur_T_ = 0;
    // Rows the LM head ran on in the last forward; `compact_` when that is a subset of all B*T rows.
    std::vector<int32_t> rows_;
    int32_t* rows_dev_ = nullptr;  // (B*T) on the backend
    bool compact_ = false;
    // Activation table indices
    size_t a_encoded_ = 0, a_lnf_ = 0, a_lnf_mean_ = 0, a_lnf_rstd_ = 0, a_logits_ = 0, a_losses_ = 0;
    std::vector<size_t> a_layer_;  // first activation index of each layer (see LayerAct in gpt2.cpp)
    int lowest_trainable_layer_ = 0;  // backward stops below it (-1: embeddings train, go all the way)
    std::function<void(int)> layer_grads_hook_;  // DIST: see set_layer_grads_hook
    // Backward scratch indices
    size_t s_proj_ = 0, s_dres_ = 0, s_dC_ = 0, s_d3C_ = 0, s_d4C_a_ = 0, s_d4C_b_ = 0, s_lnf_rows_ = 0,
           s_dlnf_rows_ = 0;
};

}  // namespace tune
