// Deterministic synthetic data for the embedded default job (bin/train with no arguments) and for the
// fine-tuning method comparison: nothing downloaded, the same bytes for the same seed on every machine.
//   - a base corpus: simple English sentences from a small grammar (the "pretraining" text);
//   - an instruction task whose answers can be checked exactly: pick the animal out of three words,
//       prompt "Which word is an animal? red fox quiet\nAnswer:"  ->  completion " fox"
//     The animal stands at any of the three places; train and held-out examples never share a prompt,
//     so the held-out accuracy measures the rule, not memory. (A tiny model learns this in a few hundred
//     steps; reversing the three words, tried first, it does not learn in the default job's budget.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tune {

std::string synthetic_corpus(uint64_t seed, size_t sentences);

struct TaskExample {
    std::string prompt;      // ends with "Answer:"
    std::string completion;  // " fox"
};

// Distinct prompts, deterministically: `test` held out first, then `train` for training.
void synthetic_task(uint64_t seed, size_t train, size_t test, std::vector<TaskExample>& train_out,
                    std::vector<TaskExample>& test_out);

}  // namespace tune
