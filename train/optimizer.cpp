#include "train/optimizer.h"

#include <algorithm>

namespace tune {

bool decays(const TensorInfo& t, bool decay_embeddings) {
    if (t.name == "wte" || t.name == "wpe") return decay_embeddings;
    return t.shape.size() == 2;
}

AdamW::AdamW(GPT2& model, const AdamWConfig& cfg) : model_(model), cfg_(cfg) {
    Backend& be = model.backend();
    const Table& gtab = model.grads().table();
    m_.allocate(be, gtab, be.master_dtype());
    v_.allocate(be, gtab, be.master_dtype());
    if (be.has_master()) master_.allocate(be, gtab, be.master_dtype());
    const Table& ptab = model.params().table();
    const std::vector<int>& gidx = model.grad_index();
    for (size_t i = 0; i < ptab.size(); i++) {
        if (gidx[i] < 0) continue;
        OptSegment s;
        s.param_offset = ptab[i].offset;
        s.grad_offset = gtab[gidx[i]].offset;
        s.n = ptab[i].numel;
        s.weight_decay = decays(ptab[i], cfg.decay_embeddings) ? cfg.weight_decay : 0.0f;
        segments_.push_back(s);
    }
    active_.assign(segments_.size(), true);
    sync_master_from_params();
}

void AdamW::sync_master_from_params() {
    if (!master_.bytes()) return;
    Backend& be = model_.backend();
    const Table& ptab = model_.params().table();
    const std::vector<int>& gidx = model_.grad_index();
    std::vector<float> host;
    for (size_t i = 0; i < ptab.size(); i++) {
        if (gidx[i] < 0) continue;
        host.resize(ptab[i].numel);
        be.download(host.data(), model_.params().ptr(i), model_.params().dtype(), host.size());
        be.upload(master_.ptr(gidx[i]), master_.dtype(), host.data(), host.size());
    }
}

void AdamW::set_lr_scale(size_t grad_tensor, float scale) { segments_.at(grad_tensor).lr_scale = scale; }

void AdamW::set_active(size_t g, bool on) {
    if (on && !active_.at(g)) segments_[g].t_offset = t_;
    active_.at(g) = on;
}

std::vector<OptSegment> AdamW::active_segments() const {
    std::vector<OptSegment> out;
    for (size_t g = 0; g < segments_.size(); g++)
        if (active_[g]) out.push_back(segments_[g]);
    return out;
}

std::vector<int> AdamW::t_offsets() const {
    std::vector<int> out;
    for (const OptSegment& s : segments_) out.push_back(s.t_offset);
    return out;
}

void AdamW::restore_activity(const std::vector<bool>& active, const std::vector<int>& t_offsets) {
    if (active.size() != segments_.size() || t_offsets.size() != segments_.size())
        throw Error("optimizer state: " + std::to_string(active.size()) + " activity flags for " +
                    std::to_string(segments_.size()) + " trainable tensors");
    active_ = active;
    for (size_t g = 0; g < segments_.size(); g++) segments_[g].t_offset = t_offsets[g];
}

void AdamW::step(float lr, float grad_scale) {
    t_++;
    AdamWStep s;
    s.lr = lr;
    s.beta1 = cfg_.beta1;
    s.beta2 = cfg_.beta2;
    s.eps = cfg_.eps;
    s.t = t_;
    s.grad_scale = grad_scale;
    const bool all = std::find(active_.begin(), active_.end(), false) == active_.end();
    model_.backend().adamw_update(model_.params().base(), master_.bytes() ? master_.base() : nullptr,
                                  model_.grads().base(), m_.base(), v_.base(), all ? segments_ : active_segments(), s);
}

}  // namespace tune
