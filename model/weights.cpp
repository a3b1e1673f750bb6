#include "model/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/fileio.h"
#include "model/hf_gpt2.h"
#include "model/llmc.h"
#include "train/checkpoint.h"

namespace tune {

const char* weights_format_name(WeightsFormat f) {
    switch (f) {
        case WeightsFormat::tune_checkpoint: return "tune.cu checkpoint";
        case WeightsFormat::hf_gpt2: return "Hugging Face GPT-2";
        case WeightsFormat::llmc: return "llm.c";
    }
    return "?";
}

WeightsFormat weights_format(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw Error(path + ": no such file or directory");
    if (std::filesystem::is_directory(path, ec)) return WeightsFormat::hf_gpt2;
    require_rereadable(path, "weights");
    uint8_t head[8] = {};
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(path + ": cannot open");
    f.read(reinterpret_cast<char*>(head), sizeof head);
    if (f.gcount() == (std::streamsize)sizeof head) {
        if (std::memcmp(head, kCkptMagic, sizeof kCkptMagic) == 0) return WeightsFormat::tune_checkpoint;
        if ((int32_t)load_u32(head) == kLlmcMagic) return WeightsFormat::llmc;
        if (looks_like_hf_gpt2(path)) return WeightsFormat::hf_gpt2;
    }
    throw Error(path +
                ": not a weights file tune.cu reads (expected a tune.cu checkpoint starting \"TUNECKPT\", "
                "an llm.c model file starting with 20240326, a Hugging Face model.safetensors with "
                "config.json beside it, or a directory holding both)");
}

ModelConfig weights_config(const std::string& path) {
    switch (weights_format(path)) {
        case WeightsFormat::tune_checkpoint: return checkpoint_config(path);
        case WeightsFormat::hf_gpt2: return hf_gpt2_config(path);
        case WeightsFormat::llmc: return llmc_config(path);
    }
    throw std::logic_error("weights_config: unknown format");
}

void load_weights(const std::string& path, GPT2& model) {
    switch (weights_format(path)) {
        case WeightsFormat::tune_checkpoint: return load_checkpoint(path, model, nullptr, nullptr);
        case WeightsFormat::hf_gpt2: return load_hf_gpt2(path, model);
        case WeightsFormat::llmc: return load_llmc(path, model);
    }
}

std::string non_finite_weight(const std::string& tensor, const std::vector<size_t>& shape, const float* v, size_t n) {
    size_t k = 0;
    while (k < n && std::isfinite(v[k])) k++;
    if (k == n) return "";
    std::string where = "element " + std::to_string(k);
    if (shape.size() == 2)
        where += " (row " + std::to_string(k / shape[1]) + ", column " + std::to_string(k % shape[1]) + ")";
    return "tensor '" + tensor + "' holds " + (std::isnan(v[k]) ? "nan" : v[k] > 0 ? "inf" : "-inf") + " at " + where +
           "; a weight must be a finite number";
}

}  // namespace tune
