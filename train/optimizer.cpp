#include "train/optimizer.h"

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

void AdamW::step(float lr, float grad_scale) {
    t_++;
    AdamWStep s;
    s.lr = lr;
    s.beta1 = cfg_.beta1;
    s.beta2 = cfg_.beta2;
    s.eps = cfg_.eps;
    s.t = t_;
    s.grad_scale = grad_scale;
    model_.backend().adamw_update(model_.params().base(), master_.bytes() ? master_.base() : nullptr,
                                  model_.grads().base(), m_.base(), v_.base(), segments_, s);
}

}  // namespace tune
