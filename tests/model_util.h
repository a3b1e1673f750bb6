// Building small GPT-2 models for tests and moving their tensors to and from host vectors.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/gpt2.h"
#include "model/rng.h"
#include "tests/test_util.h"

namespace tune::test {

// L=2, NH=3, C=12, V=37 (Vp=128), maxT=9: small enough for finite differences, shaped to catch
// transposes and off-by-ones (nothing is a power of two or a multiple of 32).
inline ModelConfig small_config(int V = 37, int L = 2, int NH = 3, int C = 12, int maxT = 9) {
    ModelConfig c;
    c.n_layer = L;
    c.n_head = NH;
    c.n_embd = C;
    c.vocab_size = V;
    c.padded_vocab_size = pad_vocab(V);
    c.block_size = maxT;
    return c;
}

// A random batch: inputs x, targets y, loss weights w (about 30% zero when masked).
struct Data {
    int B, T;
    std::vector<int32_t> x, y;
    std::vector<float> w;
};

inline Data random_data(int B, int T, int V, uint64_t seed, bool with_mask) {
    Rng r(seed);
    Data d{B, T, {}, {}, {}};
    for (int i = 0; i < B * T; i++) {
        d.x.push_back((int32_t)r.below(V));
        d.y.push_back((int32_t)r.below(V));
        d.w.push_back(with_mask && r.uniform() < 0.3 ? 0.0f : 1.0f);
    }
    return d;
}

// Documents of the given lengths packed into one random row of T (isolated windows), and the same documents each
// alone at the start of a row of its own, padded with weight 0; pos holds the packed tokens' positions in their
// documents.
struct PackedDocuments {
    Data packed, alone;
    std::vector<int32_t> pos;
};
inline PackedDocuments packed_documents(const std::vector<int>& lens, int T, int V, uint64_t seed) {
    PackedDocuments d{random_data(1, T, V, seed, true), {(int)lens.size(), T, {}, {}, {}}, {}};
    int t0 = 0;
    for (int len : lens) {
        for (int i = 0; i < T; i++) {
            const bool in = i < len;
            d.alone.x.push_back(in ? d.packed.x[t0 + i] : 0);
            d.alone.y.push_back(in ? d.packed.y[t0 + i] : 0);
            d.alone.w.push_back(in ? d.packed.w[t0 + i] : 0.0f);
        }
        for (int i = 0; i < len; i++) d.pos.push_back(i);
        t0 += len;
    }
    return d;
}

inline size_t counted(const std::vector<float>& w) {
    size_t n = 0;
    for (float v : w) n += v != 0.0f;
    return n;
}

// Mean loss over the counted tokens of one batch; with `backward`, also leaves its gradients in the model.
inline double mean_loss(GPT2& m, const Data& d, bool backward) {
    const float dloss = 1.0f / (float)counted(d.w);
    if (backward) m.zero_grads();
    m.forward(d.x.data(), d.B, d.T);
    const double s = m.loss(d.y.data(), d.w.data(), dloss, backward);
    if (backward) m.backward();
    return s / (double)counted(d.w);
}

inline std::vector<double> get_tensor(GPT2& m, const Arena& a, size_t i) {
    std::vector<double> v(a.table()[i].numel);
    m.backend().download(v.data(), a.ptr(i), a.dtype(), v.size());
    return v;
}

inline void set_tensor(GPT2& m, Arena& a, size_t i, const std::vector<double>& v) {
    m.backend().upload(a.ptr(i), a.dtype(), v.data(), v.size());
}

// Random values in every PEFT tensor (so LoRA's B is non-zero and every path carries signal).
inline void randomise_peft(GPT2& m, uint64_t seed) {
    const Table& t = m.params().table();
    for (size_t i = m.num_base_tensors(); i < t.size(); i++) set_tensor(m, m.params(), i, randn(t[i].numel, seed + i, 0.3));
}

// One forward, loss and backward of `m` under its backend's op profile (kernels/op_profile.h): the rows keyed
// "where · op", and the host's wall time around it all, profile_end() (which waits for the device) included.
struct ProfiledStep {
    std::map<std::string, OpTime> rows;
    double wall_ms = 0;
    int calls(const std::string& key) const {
        auto it = rows.find(key);
        return it == rows.end() ? 0 : it->second.calls;
    }
};
inline ProfiledStep profiled_step(GPT2& m, const Data& d) {
    ProfiledStep p;
    const auto t0 = std::chrono::steady_clock::now();
    m.backend().profile_begin();
    mean_loss(m, d, true);
    for (const OpTime& t : m.backend().profile_end()) p.rows[t.where + " · " + t.op] = t;
    p.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return p;
}

// What every backend's profile of one unmasked step of an L-block model with an undeferred head must show: every op
// under a model range, each block op once per block (the matmuls four times), the head and embeddings once, and
// times that are not negative and add up to no more than the wall time around them (one stream: no overlap).
inline void expect_model_step_profile(const ProfiledStep& p, int L) {
    double sum = 0;
    for (const auto& [key, t] : p.rows) {
        EXPECT_FALSE(t.where.empty()) << key << ": an op outside every model range";
        EXPECT_GE(t.ms, 0.0) << key;
        sum += t.ms;
    }
    EXPECT_GT(sum, 0.0);
    EXPECT_LE(sum, p.wall_ms);
    EXPECT_EQ(p.calls("layers / forward · matmul_forward"), 4 * L);
    EXPECT_EQ(p.calls("layers / forward · gelu_forward"), L);
    EXPECT_EQ(p.calls("embeddings / forward · encoder_forward"), 1);
    EXPECT_EQ(p.calls("head / forward · matmul_forward"), 1);
    EXPECT_EQ(p.calls("head / loss · crossentropy_forward_backward"), 1);
    EXPECT_EQ(p.calls("head / backward · matmul_backward"), 1);
    EXPECT_EQ(p.calls("head / backward · layernorm_backward"), 1);
    EXPECT_EQ(p.calls("embeddings / backward · encoder_backward"), 1);
    EXPECT_EQ(p.calls("layers / backward · layernorm_backward"), 2 * L);
}

}  // namespace tune::test
