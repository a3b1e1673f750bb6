// Choosing the next token from logits, and the generation loop on top of GPT2::forward_cached.
//   temperature: logits / temperature before the softmax (0 means greedy: always the most likely token)
//   top_k:       keep only the k most likely tokens (0: all)
//   top_p:       keep the smallest set of most likely tokens whose probabilities sum to >= p (1: all)
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/gpt2.h"
#include "model/rng.h"

namespace tune {

struct SamplingConfig {
    float temperature = 1.0f;
    int top_k = 0;
    float top_p = 1.0f;
    int vocab = 0;  // generate() samples only ids below this (the tokenizer's, say); 0: the model's whole vocabulary
};

// Picks a token id in [0, V) from logits (only the first V entries are read); a NaN among them throws
// tune::Error.
int32_t sample_token(const std::vector<float>& logits, int V, const SamplingConfig& cfg, Rng& rng);

// Throws tune::Error naming `what` ("prompt", "x.jsonl:3: ending 2") and the first id outside [0, V): the
// model has no embedding row for it (a model trained with another tokenizer than the tools' --vocab).
void check_token_ids(const std::vector<int32_t>& ids, int V, const std::string& what);
// Throws tune::Error when the prompt cannot be generated from: empty, an id outside the model's vocabulary, or
// longer than its context. generate() checks this first; a tool may call it before printing anything.
void check_prompt(const GPT2& model, const std::vector<int32_t>& prompt);

// Why generate() stopped: max_new tokens made, `stop_token` chosen, or every position of the model's
// context (max_positions()) used before max_new was reached.
enum class GenerateStop { max_new, stop_token, context_full };

// Continues `prompt` by up to max_new tokens (fewer when the context is full or `stop_token` appears,
// which is not included). Calls on_token for each new token as soon as it is chosen, and stores why it
// stopped in *stopped when given. Uses row 0 of the model's batch; the model must have been built with
// max_T() >= the prompt length.
std::vector<int32_t> generate(GPT2& model, const std::vector<int32_t>& prompt, int max_new,
                              const SamplingConfig& cfg, Rng& rng, int32_t stop_token = -1,
                              const std::function<void(int32_t)>& on_token = nullptr,
                              GenerateStop* stopped = nullptr);

}  // namespace tune
