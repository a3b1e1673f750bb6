#include "model/config.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>

#include "kernels/common.h"

namespace tune {

bool ModelConfig::operator==(const ModelConfig& o) const {
    return block_size == o.block_size && vocab_size == o.vocab_size && padded_vocab_size == o.padded_vocab_size &&
           n_layer == o.n_layer && n_head == o.n_head && n_embd == o.n_embd;
}

std::string ModelConfig::describe() const {
    std::ostringstream s;
    s << "L=" << n_layer << " NH=" << n_head << " C=" << n_embd << " V=" << vocab_size << " (Vp=" << padded_vocab_size
      << ") maxT=" << block_size;
    return s.str();
}

// In 64 bits: a vocab_size near INT_MAX (a corrupt file) must reach validate_config, not overflow here.
int pad_vocab(int vocab_size) {
    return (int)std::min<int64_t>(((int64_t)vocab_size + 127) / 128 * 128, std::numeric_limits<int>::max());
}

constexpr int kMaxBlockSize = 1 << 20, kMaxVocab = 1 << 24, kMaxLayers = 1024, kMaxEmbd = 1 << 16;

void validate_config(const ModelConfig& c, const std::string& where) {
    auto need = [&](bool ok, const char* field, int value, const char* expected) {
        if (!ok)
            throw Error(where + ": model config field '" + field + "' is " + std::to_string(value) + ", expected " +
                        expected);
    };
    // The upper bounds are far above any GPT-2-class model (GPT-2 XL: 48 layers, 1600 channels, 1024
    // positions, 50257 tokens); a value past them is a corrupt file, which must not make the program build
    // tables or allocate memory for it.
    need(c.block_size > 0 && c.block_size <= kMaxBlockSize, "block_size", c.block_size, "in [1, 1048576]");
    need(c.vocab_size > 0 && c.vocab_size <= kMaxVocab, "vocab_size", c.vocab_size, "in [1, 16777216]");
    need(c.padded_vocab_size >= c.vocab_size && c.padded_vocab_size - c.vocab_size < 65536, "padded_vocab_size",
         c.padded_vocab_size, "vocab_size plus less than 65536");
    need(c.n_layer > 0 && c.n_layer <= kMaxLayers, "n_layer", c.n_layer, "in [1, 1024]");
    need(c.n_head > 0, "n_head", c.n_head, "> 0");
    need(c.n_embd > 0 && c.n_embd <= kMaxEmbd && c.n_embd % c.n_head == 0, "n_embd", c.n_embd,
         "in [1, 65536] and divisible by n_head");
}

static ModelConfig make(int L, int NH, int C, int V, int maxT) {
    ModelConfig c;
    c.n_layer = L;
    c.n_head = NH;
    c.n_embd = C;
    c.vocab_size = V;
    c.padded_vocab_size = pad_vocab(V);
    c.block_size = maxT;
    return c;
}

ModelConfig preset_config(const std::string& name) {
    const int V = 50257;
    if (name == "gpt2") return make(12, 12, 768, V, 1024);
    if (name == "gpt2-medium") return make(24, 16, 1024, V, 1024);
    if (name == "gpt2-large") return make(36, 20, 1280, V, 1024);
    if (name == "gpt2-xl") return make(48, 25, 1600, V, 1024);
    if (name == "tiny") return make(2, 4, 64, V, 256);
    if (name == "small") return make(4, 4, 128, V, 256);
    std::string all;
    for (const auto& n : preset_names()) all += (all.empty() ? "" : ", ") + n;
    throw UsageError("unknown model preset '" + name + "' (known: " + all + ")");
}

std::vector<std::string> preset_names() { return {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny", "small"}; }

size_t num_parameters(const ModelConfig& c) {
    size_t C = c.n_embd, L = c.n_layer;
    size_t per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C);
    return (size_t)c.padded_vocab_size * C + (size_t)c.block_size * C + L * per_layer + 2 * C;
}

}  // namespace tune
