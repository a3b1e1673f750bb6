// Building small GPT-2 models for tests and moving their tensors to and from host vectors.
#pragma once

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "model/gpt2.h"

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

inline std::vector<double> get_tensor(GPT2& m, const Arena& a, size_t i) {
    std::vector<double> v(a.table()[i].numel);
    m.backend().download(v.data(), a.ptr(i), a.dtype(), v.size());
    return v;
}

inline void set_tensor(GPT2& m, Arena& a, size_t i, const std::vector<double>& v) {
    m.backend().upload(a.ptr(i), a.dtype(), v.data(), v.size());
}

}  // namespace tune::test
