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

}  // namespace tune
