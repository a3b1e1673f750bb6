#include "model/config.h"

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

int pad_vocab(int vocab_size) { return (vocab_size + 127) / 128 * 128; }

void validate_config(const ModelConfig& c, const std::string& where) {
    auto need = [&](bool ok, const char* field, int value, const char* expected) {
        if (!ok)
            throw Error(where + ": model config field '" + field + "' is " + std::to_string(value) + ", expected " +
                        expected);
    };
    need(c.block_size > 0, "block_size", c.block_size, "> 0");
    need(c.vocab_size > 0, "vocab_size", c.vocab_size, "> 0");
    need(c.padded_vocab_size >= c.vocab_size, "padded_vocab_size", c.padded_vocab_size, ">= vocab_size");
    need(c.n_layer > 0, "n_layer", c.n_layer, "> 0");
    need(c.n_head > 0, "n_head", c.n_head, "> 0");
    need(c.n_embd > 0 && c.n_embd % c.n_head == 0, "n_embd", c.n_embd, "> 0 and divisible by n_head");
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
