// Deterministic synthetic data for the embedded default job (bin/train with no arguments) and for the
// fine-tuning method comparison: nothing downloaded, the same bytes for the same seed on every machine.
//   - a base corpus: simple English sentences from a small grammar (the "pretraining" text);
//   - an instruction task whose answers can be checked exactly: reverse a list of three words,
//       prompt "Reverse: red fox blue\nAnswer:"  ->  completion " blue fox red"
//     Train and held-out examples never share a word triple.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tune {

std::string synthetic_corpus(uint64_t seed, size_t sentences);

struct TaskExample {
    std::string prompt;      // ends with "Answer:"
    std::string completion;  // " w3 w2 w1"
};

// Splits the word triples deterministically: `train` examples for training, `test` held out.
void synthetic_task(uint64_t seed, size_t train, size_t test, std::vector<TaskExample>& train_out,
                    std::vector<TaskExample>& test_out);

}  // namespace tune
