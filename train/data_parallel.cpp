#include "train/data_parallel.h"

#include <cstdlib>
#include <cstring>

namespace tune {

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

DataParallel::DataParallel(Comm& comm, GPT2& model, int zero) : comm_(comm), model_(model), zero_(zero) {
    // Piece boundaries on 64-element multiples, like every tensor in an arena (vector alignment).
    bounds_ = partition_bounds(model.grads().elems(), comm.world(), Table::kAlign);
    buckets_ = grad_buckets(model.grads().table());
    reduced_.assign(buckets_.size(), false);
    model_.set_layer_grads_hook([this](int l) { on_layer_done(l); });
}

DataParallel::~DataParallel() { model_.set_layer_grads_hook(nullptr); }

OptimizerShard DataParallel::optimizer_shard() {
    OptimizerShard s;
    if (zero_ >= 1) {
        s.comm = &comm_;
        s.bounds = bounds_;
    }
    return s;
}

std::string DataParallel::describe() const {
    std::string s = std::to_string(world()) + " ranks over " + comm_.kind() + ", ZeRO-" + std::to_string(zero_);
    if (zero_ >= 1) s += " (optimizer state: this rank's 1/" + std::to_string(world()) + ")";
    s += ", " + std::to_string(buckets_.size()) + " gradient buckets";
    return s;
}

void DataParallel::start_step(int step) { maybe_inject_failure(rank(), step); }

void DataParallel::on_layer_done(int layer) {
    if (!armed_) return;
    for (size_t b = 0; b < buckets_.size(); b++)
        if (buckets_[b].layer == layer && layer >= 0 && !reduced_[b]) reduce(b);
}

void DataParallel::reduce(size_t b) {
    Arena& g = model_.grads();
    const size_t es = dtype_size(g.dtype());
    char* base = static_cast<char*>(g.base());
    const std::string what = zero_ >= 1 ? "gradient reduce-scatter, bucket " : "gradient all-reduce, bucket ";
    const std::string name = what + (buckets_[b].layer >= 0 ? "h." + std::to_string(buckets_[b].layer) : "rest");
    for (const auto& [begin, end] : buckets_[b].ranges) {
        if (zero_ >= 1)
            comm_.reduce_scatter_sum(base + begin * es, g.dtype(), piece_counts(bounds_, begin, end), name.c_str());
        else
            comm_.allreduce_sum(base + begin * es, g.dtype(), end - begin, name.c_str());
    }
    reduced_[b] = true;
}

void DataParallel::finish_gradients() {
    for (size_t b = buckets_.size(); b-- > 0;)
        if (!reduced_[b]) reduce(b);
    comm_.join();
    armed_ = false;
    reduced_.assign(buckets_.size(), false);
}

double DataParallel::grad_sum_squares() {
    Arena& g = model_.grads();
    Backend& be = model_.backend();
    const size_t es = dtype_size(g.dtype());
    const char* base = static_cast<const char*>(g.base());
    auto piece = [&](int r) {
        const size_t n = bounds_[r + 1] - bounds_[r];
        return n ? be.sum_squares(base + bounds_[r] * es, n) : 0.0;
    };
    if (zero_ >= 1) return comm_.sum(piece(rank()), "gradient norm");
    // Every rank holds every piece: add them in the same order the ZeRO-1 sum uses.
    double s = 0;
    for (int r = 0; r < world(); r++) s += piece(r);
    return s;
}

bool DataParallel::replicas_agree(uint64_t* hash) {
    Arena& p = model_.params();
    uint64_t mine = hash_bytes(nullptr, 0);
    std::vector<float> host;
    for (size_t i = 0; i < p.table().size(); i++) {  // a tensor at a time: host memory stays small
        host.resize(p.table()[i].numel);
        model_.backend().download(host.data(), p.ptr(i), p.dtype(), host.size());
        mine = hash_bytes(host.data(), host.size() * sizeof(float), mine);
    }
    std::vector<uint64_t> all(world());
    all[rank()] = mine;
    comm_.all_gather_host(all.data(), sizeof(uint64_t), "replica check");
    if (hash) *hash = mine;
    for (uint64_t h : all)
        if (h != all[0]) return false;
    return true;
}

}  // namespace tune
