// Loading model weights from any supported source, for --init and the tools:
//   - a tune.cu checkpoint (train/checkpoint.h), weights or resume;
// The format is recognised from the file's content, not its name.
#pragma once

#include <string>

#include "model/config.h"
#include "model/gpt2.h"

namespace tune {

// The model config stored with the weights at `path`. Throws tune::Error naming the file and problem.
ModelConfig weights_config(const std::string& path);

// Loads the weights at `path` into `model`, whose config must equal weights_config(path).
void load_weights(const std::string& path, GPT2& model);

}  // namespace tune
