// Hugging Face GPT-2 checkpoints (openai-community/gpt2 ... gpt2-xl, and anything GPT2LMHeadModel's
// save_pretrained writes): a directory with config.json and model.safetensors.
//
// Reading. `path` is the directory, or its model.safetensors with config.json beside it. A directory
// may instead hold a sharded checkpoint (model.safetensors.index.json naming the shard of each tensor).
//   config.json   n_layer (L), n_head (NH), n_embd (C), n_positions (maxT), vocab_size (V) are required
//                 positive integers; fields that would change the math are checked against what our
//                 model computes (model_type "gpt2", activation_function gelu_new / gelu_pytorch_tanh,
//                 layer_norm_epsilon 1e-5, n_inner null or 4C, scale_attn_weights true,
//                 scale_attn_by_inverse_layer_idx false, add_cross_attention false). Our Vp = pad_vocab(V).
//   tensors       named as GPT2Model's ("wte.weight", "h.0.attn.c_attn.weight", ...) or GPT2LMHeadModel's
//                 (the same under "transformer."); F32, F16, BF16 (and F64) are converted to f32.
//                 Hugging Face's Conv1D stores a weight as (in, out): c_attn (C, 3C), attn.c_proj (C, C),
//                 c_fc (C, 4C), mlp.c_proj (4C, C); we store (out, in), so these are transposed.
//                 wte (V, C) fills our first V rows; rows V..Vp-1 are zero.
//                 lm_head.weight, if present, must equal wte bit for bit: our LM head is tied to wte, and
//                 an untied head cannot be represented, so a different one is an error, not a silent loss.
//                 A file holding lm_head.weight but no wte.weight (the tied tensor saved once, under the
//                 head's name, as safetensors' save_model does) loads it as wte. config.json's
//                 tie_word_embeddings false with no lm_head.weight is refused (transformers would draw the
//                 head at random).
//                 The causal-mask buffers old checkpoints carry (h.<l>.attn.bias, h.<l>.attn.masked_bias)
//                 are not parameters and are skipped. Any other tensor, a missing one, or a wrong shape
//                 is a tune::Error naming the file, the tensor and both shapes.
// Names, shapes, dtypes and the LM head's tie are validated before the first value is uploaded, so such an
// error leaves the model as it was; a non-finite value is found as its tensor loads (the tools then exit).
//
// Writing (export_hf): DIR/model.safetensors (F32, GPT2Model names without a prefix, Conv1D layout,
// wte unpadded to V rows, metadata format=pt) and DIR/config.json, which
// transformers.GPT2LMHeadModel.from_pretrained(DIR) loads with the LM head tied to wte.
#pragma once

#include <string>

#include "model/config.h"
#include "model/gpt2.h"

namespace tune {

// True when `path` is a directory holding config.json, or a file whose first bytes look like a
// safetensors header (used by model/weights.cpp to recognise the format).
bool looks_like_hf_gpt2(const std::string& path);

// The config of the checkpoint at `path`, after validating config.json and every tensor's name,
// dtype and shape (headers only). Throws tune::Error naming the file, the field or tensor.
ModelConfig hf_gpt2_config(const std::string& path);

// Loads the checkpoint into `model`, whose config must equal hf_gpt2_config(path).
void load_hf_gpt2(const std::string& path, GPT2& model);

// Writes DIR/model.safetensors and DIR/config.json (creating DIR if needed). Files are written atomically.
void export_hf(const GPT2& model, const std::string& dir);

// The Hugging Face name and shape of parameter-table entry `name` (e.g. "h.0.attn.c_attn.weight" ->
// itself, shape (C, 3C); "wte" -> "wte.weight", shape (V, C)), and whether its layout is transposed.
struct HfTensor {
    std::string name;
    std::vector<size_t> shape;
    bool transposed = false;
};
HfTensor hf_tensor_of(const ModelConfig& cfg, const TensorInfo& ours);

}  // namespace tune
