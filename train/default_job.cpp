#include "train/default_job.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/fileio.h"
#include "data/prepare.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "model/sampling.h"
#include "train/eval.h"
#include "train/trainer.h"

namespace tune {

namespace {

void write_text(const std::string& path, const std::string& s) { write_file_atomic(path, s.data(), s.size()); }

std::string jsonl(const std::vector<TaskExample>& ex) {
    std::string out;
    for (const auto& e : ex) out += nlohmann::json{{"prompt", e.prompt}, {"completion", e.completion}}.dump() + "\n";
    return out;
}

}  // namespace

double task_accuracy(GPT2& m, const Tokenizer& tok, const std::vector<TaskExample>& ex,
                     std::vector<std::string>* samples, bool eot_first) {
    SamplingConfig greedy;
    greedy.temperature = 0;
    Rng rng(0);
    size_t hits = 0;
    for (size_t i = 0; i < ex.size(); i++) {
        const std::vector<int32_t> want = tok.encode(ex[i].completion);
        std::vector<int32_t> prompt = tok.encode(ex[i].prompt);
        if (eot_first) prompt.insert(prompt.begin(), tok.eot_token());
        std::vector<int32_t> got = generate(m, prompt, (int)want.size() + 1, greedy, rng, tok.eot_token());
        const std::string text = tok.decode(got);
        hits += text == ex[i].completion;
        if (samples && samples->size() < 4)
            samples->push_back(ex[i].prompt + text + (text == ex[i].completion ? "   [correct]" : "   [expected" +
                                                                                                   ex[i].completion +
                                                                                                   "]"));
    }
    return ex.empty() ? 0 : (double)hits / (double)ex.size();
}

TaskAndBaseLoss measure_losses(const std::string& weights, const std::string& device, const DefaultData& d,
                               const std::string& adapter) {
    LoadedModel m = load_model(weights, device, "fp32", 8, 32, adapter);
    Loader task({d.task_val}, m.model->config().vocab_size, 8, 32, false, 0);
    Loader base({d.base_val}, m.model->config().vocab_size, 8, 32, false, 0);
    return {eval_loss(*m.model, task, 4).loss, eval_loss(*m.model, base, 4).loss};
}

DefaultData prepare_default_data(const Tokenizer& tok, const std::string& data) {
    make_dirs(data);
    DefaultData d;
    synthetic_task(7, 2400, 100, d.train, d.test);
    // The corpus as JSONL, a document per line of text, so whole documents can go to validation.
    {
        const std::string corpus = synthetic_corpus(1, 12000);
        std::string lines;
        std::istringstream in(corpus);
        for (std::string line; std::getline(in, line);) lines += nlohmann::json{{"text", line}}.dump() + "\n";
        write_text(data + "/base.jsonl", lines);
    }
    write_text(data + "/task.jsonl", jsonl(d.train));
    PrepareOptions po;
    po.progress = false;
    po.val_frac = 0.1;
    po.inputs = {data + "/base.jsonl"};
    po.out_dir = data + "/base";
    PrepareReport base_rep = prepare_dataset(tok, po);
    po.inputs = {data + "/task.jsonl"};
    po.out_dir = data + "/task";
    PrepareReport task_rep = prepare_dataset(tok, po);
    d.base_train = base_rep.train_path;
    d.base_val = base_rep.val_path;
    d.task_train = task_rep.train_path;
    d.task_val = task_rep.val_path;
    d.base_tokens = base_rep.train_tokens;
    d.task_tokens = task_rep.train_tokens;
    d.task_counted = task_rep.counted_tokens;
    return d;
}

// One of the job's training runs, announced to opt.on_trainer while it runs.
static int run_stage(const DefaultJobOptions& opt, const TrainArgs& args) {
    Trainer t(args);
    struct Announce {
        const DefaultJobOptions& opt;
        explicit Announce(const DefaultJobOptions& o, Trainer* t) : opt(o) {
            if (opt.on_trainer) opt.on_trainer(t);
        }
        ~Announce() {
            if (opt.on_trainer) opt.on_trainer(nullptr);
        }
    } announce(opt, &t);
    int rc = t.run();
    // A stop that came during the stage's last validation finished the stage; the job stops all the same.
    if (rc == 0 && t.stop_requested()) rc = Trainer::kInterrupted;
    if (rc == Trainer::kInterrupted)
        std::printf("default job interrupted; `bin/train` with no arguments starts it again (about half a minute)\n");
    return rc;
}

int run_default_job(const DefaultJobOptions& opt) {
    const auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    const DirLock lock(opt.out_dir, "bin/train (the default job)");
    const std::string data = opt.out_dir + "/data";
    make_dirs(data);
    std::printf("tune.cu default job: pretrain a tiny GPT-2 on a synthetic corpus, then fine-tune it to answer\n"
                "\"Which word is an animal?\". Everything is generated here; results and plots go to %s/.\n\n",
                opt.out_dir.c_str());

    // 1. Data.
    Tokenizer tok = Tokenizer::load(kDefaultVocab);
    const DefaultData d = prepare_default_data(tok, data);
    const std::vector<TaskExample>& test_ex = d.test;
    std::printf("data: base corpus %zu tokens, task %zu examples split into train and validation (%zu training "
                "tokens, %zu with loss), %zu held out\n\n",
                d.base_tokens, d.train.size(), d.task_tokens, d.task_counted, test_ex.size());

    // 2. Pretrain.
    TrainArgs base;
    base.device = opt.device;
    base.model = "tiny";
    base.train_data = {d.base_train};
    base.val_data = {d.base_val};
    base.batch = 4;
    base.seq = 64;
    base.steps = opt.base_steps;
    base.sched.lr = 2e-3f;
    base.sched.warmup = std::min(10, opt.base_steps);
    base.val_every = 50;
    base.val_batches = 4;
    base.log_every = 25;
    base.out_dir = opt.out_dir + "/base";
    base.quiet = opt.quiet;
    base.resume_hint = false;  // run_stage says how the default job continues
    base.overwrite = true;     // and it starts again from the beginning
    std::printf("== 1/2 pretraining on the base corpus (at %.0f s)\n", elapsed());
    if (int rc = run_stage(opt, base)) return rc;

    // 3. Fine-tune.
    TrainArgs ft = base;
    ft.model.clear();
    ft.init = base.out_dir + "/model.ckpt";
    ft.train_data = {d.task_train};
    ft.val_data = {d.task_val};
    ft.batch = 8;
    ft.seq = 32;
    ft.steps = opt.finetune_steps;
    ft.sched.lr = 5e-3f;
    ft.sched.warmup = std::min(10, opt.finetune_steps);
    ft.val_every = 100;
    ft.log_every = 50;
    ft.out_dir = opt.out_dir + "/finetune";
    ft.window_advice = false;  // fixed windows, comparable with earlier runs; docs/finetuning.md measures both
    const TaskAndBaseLoss before = measure_losses(ft.init, opt.device, d);
    std::vector<std::string> samples_before;
    double acc_before;
    {
        LoadedModel m = load_model(ft.init, opt.device, "fp32", 1, 32);
        acc_before = task_accuracy(*m.model, tok, test_ex, &samples_before);
    }
    std::printf("\n== 2/2 fine-tuning on the task, loss on the answers only (at %.0f s)\n", elapsed());
    if (int rc = run_stage(opt, ft)) return rc;

    // 4. Report.
    std::printf("\n== measuring (at %.0f s)\n", elapsed());
    const TaskAndBaseLoss after = measure_losses(ft.out_dir + "/model.ckpt", opt.device, d);
    std::vector<std::string> samples;
    LoadedModel m = load_model(ft.out_dir + "/model.ckpt", opt.device, "fp32", 1, 32);
    const double acc = task_accuracy(*m.model, tok, test_ex, &samples);
    const double secs = elapsed();
    std::printf("\n== report (%.0f s)\n", secs);
    std::printf("                          before fine-tuning   after fine-tuning\n");
    std::printf("task loss (answers)       %10.4f           %10.4f\n", before.task, after.task);
    std::printf("base-corpus loss          %10.4f           %10.4f   (what it forgot)\n", before.base, after.base);
    std::printf("held-out exact match      %9.1f%%           %9.1f%%   (%zu examples, greedy)\n", 100 * acc_before,
                100 * acc, test_ex.size());
    std::printf("\nsamples after fine-tuning:\n");
    for (const auto& s : samples) std::printf("  %s\n", s.c_str());
    std::printf("\nloss curves: %s/base/loss.svg and %s/finetune/loss.svg\n", opt.out_dir.c_str(),
                opt.out_dir.c_str());
    nlohmann::json report{{"task_loss_before", before.task}, {"task_loss_after", after.task},
                          {"base_loss_before", before.base}, {"base_loss_after", after.base},
                          {"accuracy_before", acc_before},   {"accuracy_after", acc},
                          {"seconds", secs}};
    const std::string r = report.dump(2) + "\n";
    write_text(opt.out_dir + "/report.json", r);
    return 0;
}

}  // namespace tune
