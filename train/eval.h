// Evaluation: loss and perplexity on token shards, and multiple-choice accuracy on a JSONL of
// {"context": ..., "endings": [...], "label": k} (the HellaSwag layout). Each ending is scored by the
// loss of its own tokens given the context: acc picks the ending with the lowest total loss, acc_norm the
// one with the lowest mean loss per token (which does not favour short endings).
#pragma once

#include <string>
#include <vector>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/gpt2.h"

namespace tune {

struct LossResult {
    double loss = 0;        // mean over counted tokens
    double perplexity = 0;  // exp(loss)
    size_t tokens = 0;      // counted tokens
};

// Mean loss over `batches` micro-batches from the loader (all of an epoch when batches <= 0).
LossResult eval_loss(GPT2& model, Loader& loader, int batches);

struct ChoiceResult {
    size_t examples = 0, correct = 0, correct_norm = 0;
    double acc() const { return examples ? (double)correct / examples : 0; }
    double acc_norm() const { return examples ? (double)correct_norm / examples : 0; }
};

struct ChoiceExample {
    std::vector<int32_t> context;
    std::vector<std::vector<int32_t>> endings;
    int label = 0;
};

// Parses and tokenises the JSONL file; errors name file:line and the field.
std::vector<ChoiceExample> read_choice_file(const Tokenizer& tok, const std::string& path);

// Scores every example; the model needs max_B() >= the most endings of an example. Contexts longer than
// max_T() minus an ending are cut from the left.
ChoiceResult eval_multiple_choice(GPT2& model, const std::vector<ChoiceExample>& examples);

}  // namespace tune
