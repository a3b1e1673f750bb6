// Loading model weights from any supported source, for --init and the tools:
//   - a tune.cu checkpoint (train/checkpoint.h), weights or resume;
//   - a Hugging Face GPT-2 checkpoint: a directory with config.json and model.safetensors (or a sharded
//     model.safetensors.index.json), or the path of its model.safetensors (model/hf_gpt2.h);
//   - an llm.c model file, gpt2_124M.bin and the like, fp32 (version 3) or bf16 (version 5) (model/llmc.h).
// The format is recognised from the file's content, not its name: a directory is a Hugging Face checkpoint;
// a file starting "TUNECKPT" is ours; one starting with the int32 20240326 is llm.c's; one starting with
// a safetensors header is Hugging Face's.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/gpt2.h"

namespace tune {

enum class WeightsFormat { tune_checkpoint, hf_gpt2, llmc };
const char* weights_format_name(WeightsFormat f);  // "tune.cu checkpoint", "Hugging Face GPT-2", "llm.c"

// Which format `path` holds. Throws tune::Error naming the file when it is none of them.
WeightsFormat weights_format(const std::string& path);

// The model config stored with the weights at `path`. Throws tune::Error naming the file and problem.
ModelConfig weights_config(const std::string& path);

// Loads the weights at `path` into `model`, whose config must equal weights_config(path).
void load_weights(const std::string& path, GPT2& model);

// What every loader says of a weight that is not a finite number: "tensor 'NAME' holds nan at element K" (with
// its row and column in a matrix), or "" when all n values are finite. Refused where it is read, because a NaN
// or Inf weight would otherwise surface only as a NaN loss, every step skipped.
std::string non_finite_weight(const std::string& tensor, const std::vector<size_t>& shape, const float* v, size_t n);

}  // namespace tune
