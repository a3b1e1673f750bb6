// GPT-2, exactly as OpenAI's and Hugging Face's GPT2LMHeadModel, plus the parameter-efficient additions of
// model/peft.h (LoRA, virtual tokens) and activation recomputation:
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
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "model/arena.h"
#include "model/config.h"
#include "model/peft.h"

namespace tune {

// Per-block parameter (or gradient) pointers; computed in one place that forward and backward share (GPT2::block).
// In a gradient view a frozen tensor's pointer is null, and under ZeRO-2 the pointers are into the block's slot.
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

// The parameter table of a config: wte, wpe, then h.<l>.* for each block, then ln_f.* (the base tensors,
// num_base_tensors(cfg) of them), then the PEFT tensors in the order LoRA (by block, then site: lora_A,
// lora_B), virtual tokens (model/peft.h).
Table gpt2_param_table(const ModelConfig& cfg, const PeftConfig& peft = PeftConfig{});
size_t num_base_tensors(const ModelConfig& cfg);

// Which parameter tensors train. Default: all of them. Tensors past the end of `tensor` (the PEFT ones when
// the mask was made for the base table) train.
struct Trainable {
    std::vector<bool> tensor;  // indexed like the parameter table
};

// Gradient buckets: the ranges of the gradient arena that become final together. Layer l's bucket holds the
// tensors named h.<l>.*; layer -1 holds the rest (embeddings, ln_f, virtual tokens), final only when backward returns.
// Consecutive tensors of one bucket merge into one range (alignment gaps included).
struct GradBucket {
    int layer = -1;
    std::vector<std::pair<size_t, size_t>> ranges;  // [begin, end) in elements
};
std::vector<GradBucket> grad_buckets(const Table& grad_table);

// Activation checkpointing. What backward needs but forward did not keep is recomputed from what it did:
//   none       every block keeps all its activations;
//   selective  the LayerNorm outputs, the GELU output and the attention probabilities (2C + 4C + NH·T of
//              each block's 16C + NH·T per token) share one buffer across blocks and are recomputed, the
//              probabilities from the kept QKV (Korthikanti et al. 2022: the attention core is the large,
//              cheap part). Where attention is fused (cuDNN) it keeps only NH softmax statistics per token,
//              so those stay per block and only the LayerNorm and GELU outputs are recomputed (the rule:
//              attention's saved state is recomputed when it is more than C values per token);
//   full       only each block's output (its successor's input) is kept; backward reruns the block's forward
//              before its backward.
// Every kernel is deterministic, so the recomputed values and hence the gradients are bit-identical.
enum class Recompute { none, selective, full };
const char* recompute_name(Recompute r);
Recompute parse_recompute(const std::string& name);  // throws UsageError

// The LM head in chunks. Its logits are (rows, Vp): at Vp = 50304 that is 98 KiB per token in bf16, more than
// all of gpt2's blocks keep with fused attention and full recomputation. With head_chunk = R > 0 the model
// keeps logits for at most R rows: when a forward has more counted rows, the head is deferred to loss(), which
// runs it R rows (or fewer, balanced) at a time: logits, cross-entropy fused with its gradient, then at once
// the head's backward for those rows (d lnf written, d wte accumulated), so the chunk's buffer can take the
// next chunk. backward() then starts below the head. Distillation does the same with the teacher's logits,
// chunk by chunk beside the student's. What needs all the logits at once (logits_row, logits_buffer) needs
// head_chunk = 0 (the default) or a forward with at most R counted rows.
// In bf16/fp16 each chunk adds one rounding of the wte gradient (it is accumulated in the working type).
struct ModelOptions {
    PeftConfig peft;
    Recompute recompute = Recompute::none;
    size_t head_chunk = 0;  // rows of logits kept at once; 0: every row
    // ZeRO-2's gradient slots (train/data_parallel.h). 0: every gradient lives in one arena for the whole step.
    // K > 0: only the rest bucket (embeddings, ln_f, virtual tokens: those receive gradient at both ends of
    // backward) has memory of its own; the blocks that train share min(K, their number) block-sized slots, taken
    // in turn (grad_slot(l)) and zeroed as each block's backward starts. Whoever owns the slots must empty block
    // l's slot (reduce it, keep its share) in the layer-start hook, before block l overwrites what an earlier
    // block left there. grads() then describes the layout and holds no memory; grad_ptr() and grad_range() say
    // where a gradient is.
    int grad_slots = 0;
};

class GPT2 {
   public:
    // Allocates parameters, gradients and activations for micro-batches of up to B sequences of up to T.
    // T counts real tokens; virtual tokens (peft) come on top and need T + P <= block size.
    GPT2(const ModelConfig& cfg, Backend& be, int B, int T, const Trainable* trainable = nullptr,
         const ModelOptions& opts = ModelOptions{});
    ~GPT2();
    GPT2(const GPT2&) = delete;
    GPT2& operator=(const GPT2&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const PeftConfig& peft() const { return opts_.peft; }
    Recompute recompute() const { return opts_.recompute; }
    size_t num_base_tensors() const { return n_base_; }
    int virtual_tokens() const { return P_; }
    // Real positions a sequence can have: the block size less the virtual tokens.
    int max_positions() const { return cfg_.block_size - P_; }
    Backend& backend() { return be_; }
    int max_B() const { return B_; }
    int max_T() const { return T_; }
    // Sizes the activations anew for micro-batches of up to B sequences of up to T tokens, as the constructor
    // does, keeping the parameters, the gradients and every option: one model serves jobs of different shapes
    // (bin/evaluate: loss windows, then multiple-choice batches) without loading its weights twice. The last
    // forward's results and the KV cache are gone. When the new activations do not fit, it throws and the model
    // holds none (max_B() is 0) until a resize that fits.
    void resize(int B, int T);
    size_t head_rows() const { return head_rows_; }  // rows of logits kept at once (ModelOptions::head_chunk)

    Arena& params() { return params_; }
    Arena& grads() { return grads_; }
    const Arena& params() const { return params_; }
    const Arena& grads() const { return grads_; }
    const Arena& acts() const { return acts_; }
    const Arena& scratch() const { return scratch_; }  // one pass's temporaries (activation gradients)
    // grad_index()[i] is the gradient-table index of parameter tensor i, or -1 when it is frozen.
    const std::vector<int>& grad_index() const { return grad_index_; }

    // Writes parameter tensor i from host floats (its numel of them), rounded to the arena's dtype. For a base
    // tensor it also keeps a print of the values given for base_fingerprint().
    void set_param(size_t i, const float* host);
    // Called with (i, host) after each set_param (an empty function: none): the trainer gives the same host
    // values to the FP32 master copy, which the working copy's rounding would otherwise lose.
    void set_param_listener(std::function<void(size_t, const float*)> f) { param_listener_ = std::move(f); }
    // A fingerprint of the base tensors (everything but PEFT) as set_param last wrote them: a hash of their
    // names and of their values rounded to bf16, so the same weights give the same fingerprint in every
    // precision (a hash of an fp16 copy would not: fp16 rounds them differently). 0 when a base tensor was
    // never written by set_param. What training makes of the weights does not change it.
    uint64_t base_fingerprint() const;

    // GPT-2 initialisation: N(0, 0.02) for weights and embeddings, N(0, 0.02/sqrt(2L)) for the two
    // projections that write into the residual stream, zero biases, unit LayerNorm gains. Deterministic
    // in the seed. Padded vocabulary rows stay zero.
    void init_random(uint64_t seed);
    // PEFT initialisation (model/peft.h): LoRA A Kaiming-uniform, B zero; virtual-token inputs from the token
    // embeddings of `init_tokens` (cycled; + the position embedding of each virtual position), or, when empty,
    // N(0, sigma) with sigma the standard deviation of the token embeddings; network weights N(0, 0.02),
    // biases zero. Call after the base weights are in place. Deterministic in the seed.
    void init_peft(uint64_t seed, const std::vector<int32_t>& init_tokens);
    // Dropout (LoRA's) is on only in training forwards: `seed` keys this forward's masks. Under data parallelism
    // this process's sequence b is sequence b * seq_stride + seq_offset of the global batch (world size, rank):
    // each sequence then draws the mask it would draw in one process holding the whole batch.
    void set_training(bool on, uint64_t seed = 0, int seq_stride = 1, int seq_offset = 0) {
        training_ = on;
        dropout_seed_ = seed;
        dropout_stride_ = (uint64_t)seq_stride;
        dropout_offset_ = (uint64_t)seq_offset;
    }
    // Backward stops below this block and updates nothing beneath it (gradual unfreezing); -1: no limit.
    void set_backward_floor(int layer) { backward_floor_ = layer; }

    // The base tensor i as exported: with LoRA merged in (W + alpha/r B A, computed in double). Host floats.
    std::vector<float> merged_base_tensor(size_t i) const;
    // Virtual tokens in their folded form (ptune -> prompt, prefix -> prefix_kv; others as they are): the
    // config and the single tensor, computed by the same ops the forward uses.
    PeftConfig folded_virtual_config() const;
    std::vector<float> folded_virtual_tensor();
    // Forward pass on tokens(B,T) (host memory) up to the logits. With loss weights(B,T), the LM head runs
    // only on the positions whose weight is non-zero (the others contribute nothing to the loss or any
    // gradient): in supervised fine-tuning the prompt tokens then cost no LM-head work. logits_row() needs
    // a forward without weights. With more counted rows than ModelOptions::head_chunk the head waits for
    // loss().
    // TEACH: positions(B,T), when given, packs several documents into a row without letting them meet (`--windows
    // isolated`): each token's position counts from its document's first token (0, 1, 2, ..., then 0 again), it
    // takes that row of wpe, and attention lets it see only the tokens of its own document (t - position .. t) and
    // the virtual tokens, if any. Every document then gets the logits and gradients it would get alone at the start
    // of a row of its own.
    void forward(const int32_t* tokens, int B, int T, const float* weights = nullptr,
                 const int32_t* positions = nullptr);
    // Cross-entropy on the last forward (pass the same weights it got): returns sum_i weights[i] * loss_i
    // (host, double). With `backward_prep` the logits are replaced by d(loss)/d(logits) scaled by dloss,
    // ready for backward(); a chunked head (see ModelOptions::head_chunk) also runs its backward here, so
    // the wte gradient has the head's share on return.
    double loss(const int32_t* targets, const float* weights, float dloss, bool backward_prep);
    // Generation: forward of n new tokens(B,n) at positions pos0..pos0+n-1, reading and extending the KV
    // cache (allocated on first use for block_size positions), so each new token costs one position's work.
    // Afterwards logits_row(b, i) gives the logits of new position i. Needs n <= max_T(). With `last_only` the
    // LM head runs on each sequence's last position only (all that sampling reads: a prefill of 1024 tokens on
    // gpt2 then skips 79 GFLOP), and logits_row(b, n - 1) is the one row there is.
    void forward_cached(const int32_t* tokens, int B, int n, int pos0, bool last_only = false);
    // Backward pass of the last forward; parameter gradients accumulate into grads() (with slots: into the rest's
    // memory and each block's slot, which the layer-start hook empties; see ModelOptions::grad_slots).
    void backward();
    void zero_grads();
    // DIST: backward calls hook(l) as soon as layer l's parameter gradients are complete for this pass, so
    // data parallelism can start reducing them while the layers below compute (train/data_parallel.h).
    void set_layer_grads_hook(std::function<void(int)> hook) { layer_grads_hook_ = std::move(hook); }
    // DIST (ZeRO-2): backward calls hook(l) before layer l's backward takes its gradient slot (ModelOptions).
    void set_layer_start_hook(std::function<void(int)> hook) { layer_start_hook_ = std::move(hook); }

    // Gradient memory. The buckets of the gradient table (one per block that trains, one for the rest) and where
    // range k of bucket b lies: at its table offset in grads() normally; with slots, the ranges of a bucket lie
    // back to back (each on a 64-element boundary) in the rest's memory or in its layer's slot.
    int grad_slots() const { return opts_.grad_slots; }  // as asked (ModelOptions); 0: one whole arena
    int grad_slots_held() const { return slots_held_; }   // as allocated: no more than the blocks that train
    int grad_slot(int layer) const;                       // the slot block `layer` takes; -1: none (nothing trains)
    const std::vector<GradBucket>& grad_bucket_list() const { return buckets_; }
    void* grad_range(size_t b, size_t k) const;
    void* grad_ptr(size_t g) const;  // gradient tensor g (an index into grads().table())

    // Per-token losses of the last loss() call (B*T, weighted), and the logits of the last forward.
    std::vector<float> token_losses() const;
    std::vector<float> logits_row(int b, int t) const;  // (Vp) of one position
    // The LM head's output of the last forward: (rows, Vp), one row per position whose loss counts, in order
    // (knowledge distillation reads the teacher's); after loss(backward_prep) it holds dlogits.
    void* logits_buffer() const;
    size_t logits_rows() const { return rows_.size(); }
    const std::vector<int32_t>& counted_rows() const { return rows_; }  // their indices in (B, T)
    // Cross-entropy of the last forward with its dlogits scaled by dloss, plus (alpha-weighted) distillation
    // from `teacher`, whose last forward ran on the same tokens and weights, at temperature tau:
    //   loss = (1 - alpha) CE + alpha tau^2 KL(teacher || student).
    // Returns the two weighted sums (CE, KL) over the rows; gradients ready for backward(). The teacher's
    // logits buffer is used as scratch. Either head may be chunked (ModelOptions::head_chunk): the teacher's
    // logits are then made chunk by chunk beside the student's.
    std::pair<double, double> loss_distill(const int32_t* targets, const float* weights, float dloss, GPT2& teacher,
                                           float alpha, float tau);

    // Bytes per category, for the memory map.
    size_t param_bytes() const { return params_.bytes(); }
    size_t grad_bytes() const { return grads_.bytes() + grad_mem_bytes_; }
    size_t act_bytes() const { return acts_.bytes() + scratch_.bytes(); }

   private:
    struct Lora {  // parameter indices of one LoRA site, -1 when absent
        int a = -1, b = -1;
        size_t act_u = 0;  // activation index of its (N, r) bottleneck (scaled by alpha/r)
    };
    BlockPtrs block(int l, bool grads) const;  // block l's parameters, or its gradients (null: frozen)
    // Embeddings, every block and the final LayerNorm over the uploaded tokens(B,Tt). pos0 < 0: training,
    // full causal attention saving what backward needs; pos0 >= 0: generation against the KV cache.
    void trunk_forward(int B, int Tt, int pos0);
    // One block's forward from x_in (B*Tt rows); `l_act` picks the activation set it writes (generation
    // reuses layer 0's). In the forward pass (chain = true) each block's last residual add is fused with the
    // LayerNorm that reads it, the next block's ln_1 (into activation set l_act_next) or ln_f, and each block
    // after the first finds its ln_1 done; recomputation (chain = false) runs one block on its own, as far as
    // backward reads: up to the GELU output (and mlp_down's LoRA u), not the last GEMM or the block's output.
    void block_forward(int l, int l_act, const void* x_in, int B, int Tt, int pos0, bool chain = false,
                       int l_act_next = 0);
    // need_dx: something below reads d x_in (another block, the embeddings, the prompt); else it is not computed.
    void block_backward(int l, const void* x_in, int B, int Tt, bool need_dx);
    // y(N,OC) += LoRA branch of site s of block l on x(N,IC); and its backward (dx(N,IC) accumulates; null: not
    // computed).
    void lora_forward(int l, int s, void* y, const void* x, size_t N, int IC, int OC, int l_act);
    // The branch's first half: u(N,r) = (alpha/r) dropout(x) A^T into activation set l_act; null without LoRA at s.
    void* lora_down(int l, int s, const void* x, size_t N, int IC, int l_act);
    void lora_backward(int l, int s, void* dx, const void* dy, const void* x, size_t N, int IC, int OC);
    uint64_t dropout_key(int l, int s) const;
    // out = dropout(inp) with the mask of adapted layer (l, s); inp (N, IC) an activation of the last forward.
    void lora_dropout(void* out, const void* inp, int l, int s, size_t N, int IC);
    void upload_targets(const int32_t* targets, const float* weights);  // of the rows_ the head ran on
    const void* head_input() const;  // (rows_, C): the LM head's input rows
    // loss() and loss_distill() after their checks: see the definition. Returns (CE, KL) sums.
    std::pair<double, double> head_loss(float dloss, bool backward_prep, GPT2* teacher, float alpha, float tau);
    // The virtual-token source: prompt embeddings (P, C) or prefix keys/values (P, L*2C), computed by the
    // reparameterising network when there is one.
    const void* virtual_source();
    // Backpropagates the gradient of the virtual-token source, (P, W) with W = peft().virtual_width(): C or 2LC, into
    // the parameters it came from.
    void virtual_backward(void* dout);
    void* act(size_t idx) const { return acts_.ptr(idx); }
    void* A(int l, int k) const { return acts_.ptr(act_index_[(size_t)l * kActsPerLayerMax + k]); }
    void* pgrad(int param_idx) const;  // gradient of a parameter tensor, null when frozen
    void* param(int idx) const { return idx < 0 ? nullptr : params_.ptr(idx); }

    static constexpr int kActsPerLayerMax = 13;
    void allocate_activations();  // for B_ x T_: the constructor's and resize()'s
    void release_activations();
    ModelConfig cfg_;
    Backend& be_;
    ModelOptions opts_;
    int B_, T_;  // T_ real tokens; the buffers hold T_ + P_ positions
    int P_ = 0;  // virtual tokens
    size_t n_base_ = 0;
    Arena params_, grads_, acts_, scratch_, kv_;
    std::vector<int> grad_index_;
    std::function<void(size_t, const float*)> param_listener_;
    std::vector<uint64_t> base_prints_;  // (n_base_): hash of each base tensor's values as set_param got them; 0: none
    std::vector<size_t> act_index_;  // (L, kActsPerLayerMax): activation-table index of each block's buffers
    std::vector<Lora> lora_;         // (L, kLoraSites)
    int virt_first_ = -1;            // first virtual-token parameter index
    bool training_ = false;
    uint64_t dropout_seed_ = 0, dropout_stride_ = 1, dropout_offset_ = 0;
    int backward_floor_ = -1;
    bool embed_grads_ = false;  // wte or wpe trains
    size_t a_virt_h_ = 0, a_virt_hg_ = 0, a_virt_out_ = 0, s_virt_dout_ = 0, s_virt_dh_ = 0, s_virt_dh2_ = 0,
           s_virt_din_ = 0, s_kl_losses_ = 0;
    const void* virt_src_ = nullptr;  // this forward's virtual-token source (see virtual_source)
    size_t s_lora_tmp_ = 0, s_lora_drop_ = 0, s_lora_dx_ = 0, s_lora_du_ = 0;
    std::vector<int32_t> tokens_host_;  // (B, Tt): real tokens after P_ placeholder slots
    int32_t* tokens_ = nullptr;   // (B, T + P) on the backend: tokens_host_ uploaded
    // The counted rows' targets and loss weights, compacted (upload_targets: rows_.size() of them; room for B*T).
    int32_t* targets_ = nullptr;
    float* weights_ = nullptr;
    // The last forward's positions in their documents, when positioned_ (forward's positions): (B, T + P) for
    // attention (the virtual rows count 0..P-1) and, with virtual tokens, the wpe rows (P + the position).
    int32_t* positions_ = nullptr;
    int32_t* wpe_rows_ = nullptr;
    bool positioned_ = false;
    DocMask doc_mask() const { return positioned_ ? DocMask(positions_, P_) : DocMask(); }
    const int32_t* wpe_positions() const { return !positioned_ ? nullptr : P_ > 0 ? wpe_rows_ : positions_; }
    bool last_only_ = false;  // the last forward_cached ran the head on each sequence's last position only
    int cur_B_ = 0, cur_T_ = 0;  // real tokens of the last forward; its buffers hold cur_T_ + P_ positions
    // Rows the LM head ran on in the last forward, as indices into the caller's (B, T); `compact_` when that
    // is a strict subset. `gathered_` when the head's input was gathered (compact, or virtual tokens present).
    std::vector<int32_t> rows_;
    int32_t* rows_dev_ = nullptr;  // (B*T) their indices into the (B, T+P) buffers
    bool compact_ = false, gathered_ = false;
    size_t head_rows_ = 0;        // rows the logits buffer holds (ModelOptions::head_chunk, or B*T)
    bool head_deferred_ = false;  // the last forward left the head to loss() (more counted rows than head_rows_)
    bool dlogits_ready_ = false;  // loss(backward_prep) ran since the last forward (deferred: the head's backward too)
    // Activation table indices
    size_t a_encoded_ = 0, a_lnf_ = 0, a_lnf_mean_ = 0, a_lnf_rstd_ = 0, a_logits_ = 0, a_losses_ = 0;
    bool recompute_attention_ = false;  // selective, and attention saves more than C per token
    int lowest_layer_ = 0;  // backward stops below it (-1: the embeddings or the prompt need d encoded)
    std::function<void(int)> layer_grads_hook_;  // DIST: see set_layer_grads_hook
    std::function<void(int)> layer_start_hook_;  // DIST: see set_layer_start_hook
    // Gradient buckets and, with slots, where each lives (ModelOptions::grad_slots)
    std::vector<GradBucket> buckets_;
    std::vector<int> layer_bucket_;           // (L) the bucket of block l, -1 when nothing in it trains
    std::vector<int> tensor_bucket_;          // (gradient tensors) the bucket of each
    std::vector<size_t> tensor_slot_offset_;  // (gradient tensors) its offset in its bucket's memory
    std::vector<std::vector<size_t>> range_slot_offset_;  // (buckets, ranges) offset of each range in it
    void* grad_mem_ = nullptr;  // slots: the rest's memory (rest_elems_), then the K slots (slot_elems_ each)
    size_t grad_mem_bytes_ = 0, rest_elems_ = 0, slot_elems_ = 0;
    int slots_held_ = 0;
    std::vector<int> bucket_slot_;  // (buckets) the slot of each block bucket (their order modulo the slots), -1: rest
    void* bucket_memory(size_t b) const;
    void zero_slot(int layer);
    // Backward scratch indices
    size_t s_proj_ = 0, s_dres_ = 0, s_dC_ = 0, s_d3C_ = 0, s_d4C_a_ = 0, s_d4C_b_ = 0, s_lnf_rows_ = 0,
           s_dlnf_rows_ = 0;
};

}  // namespace tune
