#include "train/optimizer.h"

#include <algorithm>

#include "train/dist.h"

namespace tune {

bool decays(const TensorInfo& t, bool decay_embeddings) {
    // Embedding tables, the model's and the virtual tokens' (vectors looked up, not matmul weights).
    static const char* const kTables[] = {"wte", "wpe", "prompt.embedding", "prefix.kv", "ptune.input", "prefix.input"};
    for (const char* name : kTables)
        if (t.name == name) return decay_embeddings;
    return t.shape.size() == 2;
}

std::vector<OptSegment> clip_segments(const std::vector<OptSegment>& segments, size_t lo, size_t hi) {
    std::vector<OptSegment> out;
    for (const OptSegment& s : segments) {
        const size_t a = std::max(lo, s.grad_offset), b = std::min(hi, s.grad_offset + s.n);
        if (a >= b) continue;
        OptSegment c = s;
        c.param_offset = s.param_offset + (a - s.grad_offset);
        c.grad_offset = a - lo;
        c.n = b - a;
        out.push_back(c);
    }
    return out;
}

AdamW::AdamW(GPT2& model, const AdamWConfig& cfg, const OptimizerShard& shard)
    : model_(model), cfg_(cfg), shard_(shard) {
    Backend& be = model.backend();
    const Table& gtab = model.grads().table();
    lo_ = 0;
    hi_ = gtab.total();
    if (sharded()) {
        const int r = shard.comm->rank();
        if (shard.bounds.size() != (size_t)shard.comm->world() + 1 || shard.bounds.back() != gtab.total())
            throw Error("ZeRO: the partition does not cover the gradient arena");
        lo_ = shard.bounds[r];
        hi_ = shard.bounds[r + 1];
    }
    allocate_like_state(m_);
    allocate_like_state(v_);
    if (be.has_master()) allocate_like_state(master_);
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

void AdamW::sync_master_from_params(const std::vector<bool>* skip) {
    if (!master_.bytes()) return;
    Backend& be = model_.backend();
    const Table& ptab = model_.params().table();
    const std::vector<int>& gidx = model_.grad_index();
    std::vector<float> host;
    for (size_t i = 0; i < ptab.size(); i++) {
        if (gidx[i] < 0 || (skip && (*skip)[gidx[i]])) continue;
        host.resize(ptab[i].numel);
        be.download(host.data(), model_.params().ptr(i), model_.params().dtype(), host.size());
        set_state_tensor(State::master, gidx[i], host.data());
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
    // A segment's own step count is t - t_offset, and its bias correction divides by 1 - beta^(t - t_offset):
    // an offset past t would make the next update infinite.
    for (size_t g = 0; g < segments_.size(); g++)
        if (t_offsets[g] < 0 || t_offsets[g] > t_)
            throw Error("optimizer state: trainable tensor " + std::to_string(g) + " started at step " +
                        std::to_string(t_offsets[g]) + ", outside the " + std::to_string(t_) + " steps taken");
    active_ = active;
    for (size_t g = 0; g < segments_.size(); g++) segments_[g].t_offset = t_offsets[g];
}

Arena& AdamW::state_arena(State which) { return which == State::m ? m_ : which == State::v ? v_ : master_; }

std::vector<float> AdamW::state_tensor(State which, size_t g) { return gather(state_arena(which), g); }

void AdamW::set_state_tensor(State which, size_t g, const float* values) { scatter(state_arena(which), g, values); }

void AdamW::allocate_like_state(Arena& a) const {
    Backend& be = model_.backend();
    if (!sharded()) return a.allocate(be, model_.grads().table(), be.master_dtype());
    Table own;
    own.add("shard", {hi_ - lo_});
    a.allocate(be, std::move(own), be.master_dtype());
}

std::vector<float> AdamW::gather(const Arena& a, size_t g) {
    Backend& be = model_.backend();
    const TensorInfo& t = model_.grads().table()[g];
    std::vector<float> out(t.numel);
    if (!sharded()) {
        be.download(out.data(), a.ptr(g), a.dtype(), t.numel);
        return out;
    }
    const size_t lo = std::max(lo_, t.offset), hi = std::min(hi_, t.offset + t.numel);
    if (lo < hi)
        be.download(out.data() + (lo - t.offset), static_cast<const char*>(a.base()) + (lo - lo_) * dtype_size(a.dtype()),
                    a.dtype(), hi - lo);
    // The tensor's pieces lie back to back in rank order, as gather_host wants them.
    std::vector<size_t> bytes = piece_counts(shard_.bounds, t.offset, t.offset + t.numel);
    for (size_t& b : bytes) b *= sizeof(float);
    shard_.comm->gather_host(out.data(), bytes, 0, "gather of sharded per-parameter state (checkpoint, Fisher file)");
    return out;
}

void AdamW::scatter(Arena& a, size_t g, const float* values) {
    Backend& be = model_.backend();
    const TensorInfo& t = model_.grads().table()[g];
    if (!sharded()) {
        be.upload(a.ptr(g), a.dtype(), values, t.numel);
        return;
    }
    const size_t lo = std::max(lo_, t.offset), hi = std::min(hi_, t.offset + t.numel);
    if (lo < hi)
        be.upload(static_cast<char*>(a.base()) + (lo - lo_) * dtype_size(a.dtype()), a.dtype(), values + (lo - t.offset),
                  hi - lo);
}

void* AdamW::own_gradients() const {
    if (shard_.grads) return shard_.grads;
    return static_cast<char*>(model_.grads().base()) + lo_ * dtype_size(model_.grads().dtype());
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
    const std::vector<OptSegment> segs = all ? segments_ : active_segments();  // gradual unfreezing
    if (!sharded()) {
        model_.backend().adamw_update(model_.params().base(), master_.bytes() ? master_.base() : nullptr,
                                      model_.grads().base(), m_.base(), v_.base(), segs, s);
        return;
    }
    // The own range, as if the arenas started there: grads shifted by lo_, the state arenas hold just it.
    const std::vector<OptSegment> own = clip_segments(segs, lo_, hi_);
    if (!own.empty())  // a range of alignment padding only has nothing to update
        model_.backend().adamw_update(model_.params().base(), master_.bytes() ? master_.base() : nullptr,
                                      own_gradients(), m_.base(), v_.base(), own, s);
    all_gather_params();
}

void AdamW::all_gather_params() {
    Comm& comm = *shard_.comm;
    Backend& be = model_.backend();
    Arena& params = model_.params();
    Arena& grads = model_.grads();
    const std::vector<size_t> counts = piece_counts(shard_.bounds, 0, grads.elems());
    const Table &ptab = params.table(), &gtab = grads.table();
    bool same_layout = ptab.size() == gtab.size() && ptab.total() == gtab.total();
    for (size_t i = 0; same_layout && i < ptab.size(); i++) same_layout = ptab[i].offset == gtab[i].offset;
    if (same_layout) {  // everything trains: the parameter arena is laid out like the gradient arena
        comm.all_gather(params.base(), params.dtype(), counts, "ZeRO-1 parameter all-gather");
        comm.join();
        return;
    }
    // Frozen tensors: pack the own parameters into the (spent) gradient arena, all-gather it, unpack.
    // Backend::scale by 1 is an exact copy.
    const size_t es = dtype_size(params.dtype());
    char* p = static_cast<char*>(params.base());
    if (!grads.holds_memory()) {  // ZeRO-2: no whole arena; each bucket's memory (the rest's, a slot) in turn
        const std::vector<GradBucket>& buckets = model_.grad_bucket_list();
        for (size_t b = 0; b < buckets.size(); b++)
            for (size_t k = 0; k < buckets[b].ranges.size(); k++) {
                const auto [begin, end] = buckets[b].ranges[k];
                char* stage = static_cast<char*>(model_.grad_range(b, k));
                const size_t a = std::max(begin, lo_), e = std::min(end, hi_);
                if (a < e)
                    for (const OptSegment& s : clip_segments(segments_, a, e))
                        be.scale(stage + (a - begin + s.grad_offset) * es, p + s.param_offset * es, 1.0f, s.n);
                comm.all_gather(stage, grads.dtype(), piece_counts(shard_.bounds, begin, end),
                                "ZeRO-2 parameter all-gather");
                comm.join();
                for (const OptSegment& s : clip_segments(segments_, begin, end))
                    be.scale(p + s.param_offset * es, stage + s.grad_offset * es, 1.0f, s.n);
            }
        return;
    }
    char* g = static_cast<char*>(grads.base());
    for (const OptSegment& s : clip_segments(segments_, lo_, hi_))
        be.scale(g + (lo_ + s.grad_offset) * es, p + s.param_offset * es, 1.0f, s.n);
    comm.all_gather(grads.base(), grads.dtype(), counts, "ZeRO-1 parameter all-gather");
    comm.join();
    for (const OptSegment& s : segments_) be.scale(p + s.param_offset * es, g + s.grad_offset * es, 1.0f, s.n);
}

}  // namespace tune
