// Which parameters train, and at what rate (the "which parameters" part of fine-tuning):
//   - everything (default);
//   - only the top k blocks plus the final LayerNorm (--train-top K);
//   - by name patterns, shell-style (--train-only 'h.10.*,ln_f.*'), matched with fnmatch(3).
// Frozen tensors get no gradient buffer and no optimizer state, backward skips their weight-gradient GEMMs
// and stops below the lowest block that trains (model/gpt2.cpp).
// Discriminative learning rates (ULMFiT): block l trains at lr * factor^(L-1-l); the embeddings, below
// block 0, at lr * factor^L; the final LayerNorm at lr.
#pragma once

#include <string>

#include "model/config.h"
#include "model/gpt2.h"
#include "train/optimizer.h"

namespace tune {

// top_k <= 0 and empty patterns: everything trains. Throws tune::UsageError when the selection is empty
// or both are given.
Trainable select_trainable(const ModelConfig& cfg, int top_k, const std::string& patterns);

// The block a parameter belongs to: 0..L-1 for h.<l>.*, -1 for the embeddings, L for ln_f and virtual tokens.
int param_layer(const std::string& name, int n_layer);

// Sets each trainable tensor's learning-rate multiplier to factor^(L-1-layer).
void apply_discriminative_lr(const GPT2& model, AdamW& opt, float factor);
// ULMFiT's factor (Howard and Ruder 2018), `--lr-layer-factor ulmfit`.
constexpr float kUlmfitLayerFactor = 1 / 2.6f;

}  // namespace tune
