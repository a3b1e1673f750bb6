// GPT-2 model configuration: the handful of numbers that fix every shape in the model.
#pragma once

#include <string>
#include <vector>

namespace tune {

struct ModelConfig {
    int block_size = 0;         // maxT: longest sequence (learned position embeddings)
    int vocab_size = 0;         // V: real tokens
    int padded_vocab_size = 0;  // Vp: V rounded up to a multiple of 128 so the LM-head GEMM is fast
    int n_layer = 0;            // L
    int n_head = 0;             // NH
    int n_embd = 0;             // C

    int head_size() const { return n_embd / n_head; }  // HS
    bool operator==(const ModelConfig& o) const;
    bool operator!=(const ModelConfig& o) const { return !(*this == o); }
    std::string describe() const;  // "L=12 NH=12 C=768 V=50257 (Vp=50304) maxT=1024"
};

// Rounds V up to the padding multiple (128).
int pad_vocab(int vocab_size);

// Validates the numbers (positive, C divisible by NH, Vp >= V); throws tune::Error naming `where`
// and the field that is wrong.
void validate_config(const ModelConfig& cfg, const std::string& where);

// Presets: "gpt2" (124M), "gpt2-medium" (350M), "gpt2-large" (774M), "gpt2-xl" (1558M), and small
// ones for tests and demos: "tiny" (L=2, C=64), "small" (L=4, C=128). Vocabulary is GPT-2's 50257
// and block size 1024 unless the preset is a small one. Throws tune::UsageError for an unknown name.
ModelConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

// Number of parameters (with the padded vocabulary rows counted once, the LM head being tied).
size_t num_parameters(const ModelConfig& cfg);

}  // namespace tune
