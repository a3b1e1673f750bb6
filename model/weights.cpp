#include "model/weights.h"

#include "train/checkpoint.h"

namespace tune {

ModelConfig weights_config(const std::string& path) { return checkpoint_config(path); }

void load_weights(const std::string& path, GPT2& model) { load_checkpoint(path, model, nullptr, nullptr); }

}  // namespace tune
