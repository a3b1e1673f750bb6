// AdamW over the trainable parameters. Its state (Adam moments, and FP32 master weights when the
// backend computes in lower precision) lives in arenas that mirror the gradient table, so frozen
// parameters cost no optimizer memory. One update is one pass over the segment list.
//
// ZeRO-1 and 2 (an OptimizerShard): the gradient arena's elements are split into one contiguous range per rank,
// and each rank keeps the state of its range only (a 1/N share of m, v and master), laid out like the
// gradient arena shifted to start at the range. A step updates the parameters of that range from the
// reduced gradients there, then all-gathers the parameters so every replica holds them all.
#pragma once

#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "model/arena.h"
#include "model/gpt2.h"

namespace tune {

class Comm;

struct OptimizerShard {
    Comm* comm = nullptr;        // null: no sharding
    std::vector<size_t> bounds;  // world+1 element offsets into the gradient arena; rank r owns [b[r], b[r+1])
    void* grads = nullptr;       // ZeRO-2: the own range's reduced gradients; null: in the model's arena
};

// The pieces of `segments` inside [lo, hi) of the gradient arena, with grad_offset relative to lo (and
// param_offset moved along with it).
std::vector<OptSegment> clip_segments(const std::vector<OptSegment>& segments, size_t lo, size_t hi);

struct AdamWConfig {
    float beta1 = 0.9f;
    float beta2 = 0.95f;
    float eps = 1e-8f;
    float weight_decay = 0.1f;
    bool decay_embeddings = false;  // also decay wte and wpe (off: only 2-D matmul weights decay)
};

// Whether a parameter tensor gets weight decay: 2-D matmul weights yes; biases, LayerNorm and (unless
// asked) embedding tables no: wte, wpe and the virtual tokens' tables (prompt, P-tuning and prefix inputs).
bool decays(const TensorInfo& t, bool decay_embeddings);

class AdamW {
   public:
    AdamW(GPT2& model, const AdamWConfig& cfg, const OptimizerShard& shard = {});

    // One update with learning rate `lr`; every gradient is first multiplied by grad_scale. Sharded: only the
    // own range's gradients are read (they must be reduced there), and the parameters are all-gathered after,
    // through the gradient arena when frozen tensors make the two layouts differ (it then holds parameters).
    void step(float lr, float grad_scale);

    int t() const { return t_; }  // updates done so far
    void set_t(int t) { t_ = t; }
    // Unsharded: laid out like the gradient arena. Sharded: one tensor, the own range (see the top).
    Arena& m() { return m_; }
    Arena& v() { return v_; }
    Arena& master() { return master_; }  // empty unless the backend keeps master weights
    bool sharded() const { return shard_.comm != nullptr; }
    // The range of the gradient layout this rank updates (everything when unsharded), and where its gradients are.
    std::pair<size_t, size_t> own_range() const { return {lo_, hi_}; }
    void* own_gradients() const;
    // State tensors one gradient-table tensor at a time, as float, for checkpoints. Sharded, state_tensor is a
    // collective (every rank calls it in the same order) and only rank 0 receives the whole tensor;
    // set_state_tensor takes the whole tensor and keeps the own range.
    enum class State { m, v, master };
    std::vector<float> state_tensor(State which, size_t grad_tensor);
    void set_state_tensor(State which, size_t grad_tensor, const float* values);
    // The same for any per-parameter state laid out like m and v (L2-SP's anchor, EWC's Fisher): allocate it
    // (master_dtype(); the own range when sharded), gather a tensor of it (a collective when sharded), scatter one.
    void allocate_like_state(Arena& a) const;
    std::vector<float> gather(const Arena& a, size_t grad_tensor);
    void scatter(Arena& a, size_t grad_tensor, const float* values);
    const std::vector<OptSegment>& segments() const { return segments_; }
    void set_lr_scale(size_t grad_tensor, float scale);  // per-tensor multiplier (discriminative rates)
    // Gradual unfreezing: an inactive tensor is not updated. A tensor made active starts its own Adam bias
    // correction from this point (OptSegment::t_offset = updates done so far).
    void set_active(size_t grad_tensor, bool on);
    bool active(size_t grad_tensor) const { return active_.at(grad_tensor); }
    std::vector<OptSegment> active_segments() const;
    // For checkpoints: each tensor's t_offset, and restoring them with the active flags.
    std::vector<int> t_offsets() const;
    void restore_activity(const std::vector<bool>& active, const std::vector<int>& t_offsets);
    size_t state_bytes() const { return m_.bytes() + v_.bytes() + master_.bytes(); }
    // After the parameters were overwritten (checkpoint load), refresh the master copy from them; `skip`
    // (by gradient index), when given, marks tensors whose master was already set from exact values.
    void sync_master_from_params(const std::vector<bool>* skip = nullptr);

   private:
    Arena& state_arena(State which);
    void all_gather_params();

    GPT2& model_;
    AdamWConfig cfg_;
    Arena m_, v_, master_;
    std::vector<OptSegment> segments_;  // one per trainable tensor, in gradient-table order
    std::vector<bool> active_;
    int t_ = 0;
    OptimizerShard shard_;
    size_t lo_ = 0, hi_ = 0;  // the own range of the gradient arena (everything when unsharded)
};

}  // namespace tune
