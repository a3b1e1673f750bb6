// The embedded default job: what bin/train does with no arguments. Everything it needs is generated
// here, deterministically (data/synthetic.h), so it runs on a fresh clone without downloads:
//   1. base corpus and an instruction task (pick the animal), written as text/JSONL and prepared
//      into token shards with prompt masking (bin/prepare's code);
//   2. pretrain a tiny GPT-2 on the base corpus;
//   3. fine-tune it on the task, with the loss on the answers only;
//   4. report: task and base-corpus loss before and after fine-tuning, exact-match accuracy on held-out
//      task examples (greedy decoding), and a few generated samples.
#pragma once

#include <string>

namespace tune {

struct DefaultJobOptions {
    std::string out_dir = "runs/default";
    std::string device = "auto";
    int base_steps = 150;
    int finetune_steps = 700;
    bool quiet = false;
};

// Returns the process exit code.
int run_default_job(const DefaultJobOptions& opt);

}  // namespace tune
