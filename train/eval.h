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
    double loss = 0;          // mean over counted tokens
    double perplexity = 0;    // exp(loss)
    size_t tokens = 0;        // counted tokens
    size_t batches = 0;       // batches evaluated
    size_t pass_batches = 0;  // batches in one pass over the data (the last may hold fewer windows)
};

// Mean loss over the first `batches` batches of one pass over the loader's windows, from the start of
// its first epoch; batches <= 0, or more than one pass holds, means the whole pass. It never wraps
// around: a window counted twice would weigh its tokens double. The last batch of a pass may be
// smaller than the loader's B, so every window counts.
// `progress`: a label for a progress line on stderr when it takes long (null: none).
LossResult eval_loss(GPT2& model, Loader& loader, int batches, const char* progress = nullptr);

struct ChoiceResult {
    size_t examples = 0, correct = 0, correct_norm = 0;
    size_t contexts_cut = 0;  // examples whose context lost its start to fit the model's context
    double acc() const { return examples ? (double)correct / examples : 0; }
    double acc_norm() const { return examples ? (double)correct_norm / examples : 0; }
};

struct ChoiceExample {
    std::vector<int32_t> context;
    std::vector<std::vector<int32_t>> endings;
    int label = 0;
    std::string where;  // file:line, for messages
};

// Parses and tokenises the JSONL file; errors name file:line and the field. An ending is joined to its context
// with one space unless either side has whitespace there (a context's trailing whitespace moves to the endings).
std::vector<ChoiceExample> read_choice_file(const Tokenizer& tok, const std::string& path);

// What only the model can say of the examples: every token id below vocab_size, every ending shorter than the
// model's positions (room for context). Errors name file:line and the field.
void check_choice_examples(const std::vector<ChoiceExample>& examples, int vocab_size, int positions);

// Scores every example (a non-finite loss is an error); the model needs max_B() >= the most endings of an
// example. Contexts longer than max_T() minus an ending are cut from the left. first_token >= 0 goes before
// every context (an <|endoftext|>, for a model trained on document windows) and stays there when a context is cut.
ChoiceResult eval_multiple_choice(GPT2& model, const std::vector<ChoiceExample>& examples,
                                  const char* progress = nullptr, int32_t first_token = -1);

}  // namespace tune
