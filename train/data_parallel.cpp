#include "train/data_parallel.h"

#include <algorithm>

namespace tune {

DataParallel::DataParallel(Comm& comm, GPT2& model, int zero, bool overlap)
    : comm_(comm), model_(model), zero_(zero), overlap_(overlap) {
    // Piece boundaries on 64-element multiples, like every tensor in an arena (vector alignment).
    bounds_ = partition_bounds(model.grads().elems(), comm.world(), Table::kAlign);
    buckets_ = model.grad_bucket_list();
    reduced_.assign(buckets_.size(), false);
    if ((zero_ == 2) != (model.grad_slots() > 0))
        throw Error("ZeRO-2 needs a model built with gradient slots (ModelOptions::grad_slots), and only ZeRO-2 does");
    if (zero_ == 2) {
        acc_bytes_ = (bounds_[rank() + 1] - bounds_[rank()]) * dtype_size(model.grads().dtype());
        if (acc_bytes_) acc_ = model.backend().alloc(acc_bytes_);
        zero_gradients();
        slot_bucket_.assign(model.grad_slots(), -1);
        slot_mark_.assign(model.grad_slots(), 0);
        model_.set_layer_start_hook([this](int l) { on_layer_start(l); });
    }
    model_.set_layer_grads_hook([this](int l) { on_layer_done(l); });
}

DataParallel::~DataParallel() {
    model_.set_layer_grads_hook(nullptr);
    model_.set_layer_start_hook(nullptr);
    if (acc_) model_.backend().free(acc_);
}

OptimizerShard DataParallel::optimizer_shard() {
    OptimizerShard s;
    if (zero_ >= 1) {
        s.comm = &comm_;
        s.bounds = bounds_;
    }
    if (zero_ == 2) s.grads = acc_;
    return s;
}

std::string DataParallel::describe() const {
    std::string s = std::to_string(world()) + " ranks over " + comm_.kind() + ", ZeRO-" + std::to_string(zero_);
    if (zero_ == 1) s += " (optimizer state: this rank's 1/" + std::to_string(world()) + ")";
    if (zero_ == 2)
        s += " (optimizer state and reduced gradients: this rank's 1/" + std::to_string(world()) + "; " +
             std::to_string(model_.grad_slots_held()) + " gradient slots for the blocks)";
    s += ", " + std::to_string(buckets_.size()) + " gradient buckets";
    return s;
}

void DataParallel::start_step(int step) { maybe_inject_failure(rank(), step); }

void DataParallel::zero_gradients() {
    model_.zero_grads();
    if (acc_) model_.backend().zero(acc_, acc_bytes_);
}

void DataParallel::on_layer_done(int layer) {
    if (zero_ == 2) {
        for (size_t b = 0; b < buckets_.size(); b++) {
            if (buckets_[b].layer != layer || layer < 0) continue;
            reduce(b);
            const int slot = model_.grad_slot(layer);
            if (!overlap_) {
                comm_.join();
                settle(b);
                continue;
            }
            slot_bucket_[slot] = (int)b;
            slot_mark_[slot] = comm_.mark();
        }
        return;
    }
    if (!armed_) return;
    for (size_t b = 0; b < buckets_.size(); b++)
        if (buckets_[b].layer == layer && layer >= 0 && !reduced_[b]) reduce(b);
}

// ZeRO-2: layer l is about to take its slot: what an earlier layer (of this micro-batch or the one before) left
// there must be reduced and kept first.
void DataParallel::on_layer_start(int layer) {
    const int slot = model_.grad_slot(layer);
    if (slot < 0 || slot_bucket_[slot] < 0) return;
    comm_.wait(slot_mark_[slot]);
    settle((size_t)slot_bucket_[slot]);
    slot_bucket_[slot] = -1;
}

void DataParallel::settle(size_t b) {
    const size_t lo = bounds_[rank()], hi = bounds_[rank() + 1];
    const size_t es = dtype_size(model_.grads().dtype());
    for (size_t k = 0; k < buckets_[b].ranges.size(); k++) {
        const auto [begin, end] = buckets_[b].ranges[k];
        const size_t a = std::max(begin, lo), e = std::min(end, hi);
        if (a >= e) continue;
        char* own = piece_gradients(rank()) + (a - lo) * es;
        const char* reduced = static_cast<const char*>(model_.grad_range(b, k)) + (a - begin) * es;
        model_.backend().residual_forward(own, own, reduced, e - a);
    }
}

void DataParallel::reduce(size_t b) {
    const DType dt = model_.grads().dtype();
    const std::string what = zero_ >= 1 ? "gradient reduce-scatter, bucket " : "gradient all-reduce, bucket ";
    const std::string name = what + (buckets_[b].layer >= 0 ? "h." + std::to_string(buckets_[b].layer) : "rest");
    for (size_t k = 0; k < buckets_[b].ranges.size(); k++) {
        const auto [begin, end] = buckets_[b].ranges[k];
        void* buf = model_.grad_range(b, k);
        if (zero_ >= 1)
            comm_.reduce_scatter_sum(buf, dt, piece_counts(bounds_, begin, end), name.c_str());
        else
            comm_.allreduce_sum(buf, dt, end - begin, name.c_str());
    }
    reduced_[b] = true;
}

void DataParallel::finish_gradients() {
    if (zero_ != 2) {
        for (size_t b = buckets_.size(); b-- > 0;)
            if (!reduced_[b]) reduce(b);
    } else {  // the rest accumulated over the micro-batches in its own memory, like every gradient under ZeRO-1
        for (size_t b = 0; b < buckets_.size(); b++)
            if (buckets_[b].layer < 0) reduce(b);
    }
    comm_.join();
    if (zero_ == 2) {
        for (int& b : slot_bucket_) {
            if (b >= 0) settle((size_t)b);
            b = -1;
        }
        for (size_t b = 0; b < buckets_.size(); b++)
            if (buckets_[b].layer < 0) settle(b);
    }
    armed_ = false;
    reduced_.assign(buckets_.size(), false);
}

void DataParallel::zero_grad_tensor(size_t g) {
    const TensorInfo& t = model_.grads().table()[g];
    const size_t es = dtype_size(model_.grads().dtype());
    if (zero_ == 0) {  // every rank reads every piece
        model_.backend().zero(model_.grad_ptr(g), t.numel * es);
        return;
    }
    const size_t lo = bounds_[rank()], hi = bounds_[rank() + 1];
    const size_t a = std::max(t.offset, lo), e = std::min(t.offset + t.numel, hi);
    if (a < e) model_.backend().zero(piece_gradients(rank()) + (a - lo) * es, (e - a) * es);
}

char* DataParallel::piece_gradients(int r) const {
    if (zero_ == 2) return static_cast<char*>(acc_);  // only this rank's exists
    return static_cast<char*>(model_.grads().base()) + bounds_[r] * dtype_size(model_.grads().dtype());
}

double DataParallel::grad_sum_squares() {
    Backend& be = model_.backend();
    auto piece = [&](int r) {
        const size_t n = bounds_[r + 1] - bounds_[r];
        return n ? be.sum_squares(piece_gradients(r), n) : 0.0;
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
    if (hash) *hash = mine;
    return first_rank_differing(mine, "replica check") < 0;
}

int DataParallel::first_rank_differing(uint64_t value, const char* what) {
    const std::vector<uint64_t> all = comm_.gather_words(value, what);
    for (int r = 1; r < world(); r++)
        if (all[r] != all[0]) return r;
    return -1;
}

}  // namespace tune
