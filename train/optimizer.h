// AdamW over the trainable parameters. Its state (Adam moments, and FP32 master weights when the
// backend computes in lower precision) lives in arenas that mirror the gradient table, so frozen
// parameters cost no optimizer memory. One update is one pass over the segment list.
#pragma once

#include <vector>

#include "kernels/backend.h"
#include "model/arena.h"
#include "model/gpt2.h"

namespace tune {

struct AdamWConfig {
    float beta1 = 0.9f;
    float beta2 = 0.95f;
    float eps = 1e-8f;
    float weight_decay = 0.1f;
    bool decay_embeddings = false;  // also decay wte and wpe (off: only 2-D matmul weights decay)
};

// Whether a parameter tensor gets weight decay: 2-D matmul weights yes; biases, LayerNorm and (unless
// asked) embeddings no.
bool decays(const TensorInfo& t, bool decay_embeddings);

class AdamW {
   public:
    AdamW(GPT2& model, const AdamWConfig& cfg);

    // One update with learning rate `lr`; every gradient is first multiplied by grad_scale.
    void step(float lr, float grad_scale);

    int t() const { return t_; }  // updates done so far
    void set_t(int t) { t_ = t; }
    Arena& m() { return m_; }
    Arena& v() { return v_; }
    Arena& master() { return master_; }  // empty unless the backend keeps master weights
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
    // After the parameters were overwritten (checkpoint load), refresh the master copy from them.
    void sync_master_from_params();

   private:
    GPT2& model_;
    AdamWConfig cfg_;
    Arena m_, v_, master_;
    std::vector<OptSegment> segments_;  // one per trainable tensor, in gradient-table order
    std::vector<bool> active_;
    int t_ = 0;
};

}  // namespace tune
