// The embedded default job: what bin/train does with no arguments. Everything it needs is generated
// here, deterministically (data/synthetic.h), so it runs on a fresh clone without downloads:
//   1. base corpus and an instruction task (pick the animal), written as text/JSONL and prepared
//      into token shards with prompt masking (bin/prepare's code);
//   2. pretrain a tiny GPT-2 on the base corpus;
//   3. fine-tune it on the task, with the loss on the answers only;
//   4. report: task and base-corpus loss before and after fine-tuning, exact-match accuracy on held-out
//      task examples (greedy decoding), and a few generated samples.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "model/gpt2.h"

namespace tune {

// The default job's data, prepared into DIR/base/{train,val}.bin and DIR/task/{train,val}.bin; the held-out
// task examples (never trained on) in `test`.
struct DefaultData {
    std::string base_train, base_val, task_train, task_val;
    std::vector<TaskExample> train, test;
    size_t base_tokens = 0, task_tokens = 0, task_counted = 0;
};
DefaultData prepare_default_data(const Tokenizer& tok, const std::string& dir);

// Exact match of greedy continuations against the expected answers; `samples` (optional) gets a few.
// `eot_first`: each prompt after an <|endoftext|> (bin/generate --eot-first), as document windows train them.
double task_accuracy(GPT2& m, const Tokenizer& tok, const std::vector<TaskExample>& ex,
                     std::vector<std::string>* samples = nullptr, bool eot_first = false);

// Mean loss over 4 validation batches of the task (answers only) and of the base corpus. `adapter`: an
// adapter checkpoint on top of `weights`.
struct TaskAndBaseLoss {
    double task, base;
};
TaskAndBaseLoss measure_losses(const std::string& weights, const std::string& device, const DefaultData& d,
                               const std::string& adapter = "");

class Trainer;
struct DefaultJobOptions {
    std::string out_dir = "runs/default";
    std::string device = "auto";
    int base_steps = 150;
    int finetune_steps = 700;
    bool quiet = false;
    // Told of each Trainer while it runs, then of nullptr: bin/train's Ctrl-C handler stops it at a step's end.
    std::function<void(Trainer*)> on_trainer;
};

// Returns the process exit code.
int run_default_job(const DefaultJobOptions& opt);

}  // namespace tune
