// llm.c model files (gpt2_124M.bin, gpt2_124M_bf16.bin, ... as written by llm.c's train_gpt2.py).
//
// Layout (little-endian):
//   header   int32[256]   [0] magic 20240326, [1] version: 3 = parameters in fp32, 5 = in bf16,
//                         [2] maxT, [3] V, [4] L, [5] NH, [6] C, [7] Vp; the rest zero
//   data     the 16 parameter tensors back to back, each covering all layers, weights (out, in):
//              wte (Vp, C), wpe (maxT, C),
//              ln1w (L, C), ln1b (L, C), qkvw (L, 3C, C), qkvb (L, 3C), attprojw (L, C, C), attprojb (L, C),
//              ln2w (L, C), ln2b (L, C), fcw (L, 4C, C), fcb (L, 4C), fcprojw (L, C, 4C), fcprojb (L, C),
//              lnfw (C), lnfb (C)
//            and the file ends there.
// Our config always pads V to pad_vocab(V); rows V.. of the file's wte are padding and are not read
// (llm.c writes them as zeros), our padded rows are zero after loading.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/gpt2.h"

namespace tune {

constexpr int32_t kLlmcMagic = 20240326;
constexpr int32_t kLlmcVersionF32 = 3;
constexpr int32_t kLlmcVersionBF16 = 5;
constexpr size_t kLlmcHeaderInts = 256;

// The config of the llm.c model file at `path`, after validating the header and the file size.
// Throws tune::Error naming the file and the header field.
ModelConfig llmc_config(const std::string& path);

// Loads the file's parameters into `model`, whose config must equal llmc_config(path).
void load_llmc(const std::string& path, GPT2& model);

// Writes the model as an llm.c model file with Vp = the model's padded vocabulary: version 3 (fp32, what
// llm.c's CPU train_gpt2.c reads), or with `bf16` version 5 (each value rounded to nearest even: what its
// CUDA train_gpt2.cu reads in its default bf16 build).
void export_llmc(const GPT2& model, const std::string& path, bool bf16 = false);

}  // namespace tune
