// bin/evaluate: validation loss and perplexity on token shards, and multiple-choice accuracy.
#include <cmath>
#include <cstdio>
#include <utility>
#include <optional>

#include "data/tokenizer.h"
#include "train/cli.h"
#include "train/eval.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
    using namespace tune;
    return tune::run_tool("evaluate", [&]() -> int {
        std::string weights, adapter, data, choices, device = "auto", vocab = kDefaultVocab;
        int batch = 4, seq = 256, batches = 0;
        bool seq_given = false, batch_given = false;
        Cli cli("usage: bin/evaluate --model WEIGHTS [--data SHARDS] [--choices FILE.jsonl] [options]\n"
                "Loss and perplexity on token shards (counted tokens only), and multiple-choice accuracy on a JSONL\n"
                "of {\"context\", \"endings\": [...], \"label\"}: acc by total ending loss, acc_norm by mean loss.\n"
                "An ending is joined to its context with one space unless either side already has whitespace there\n"
                "(as lm-evaluation-harness joins HellaSwag's): \"the cat\" + \"sat\" is scored as \" sat\".");
        cli.option("--model", "WEIGHTS", "weights: tune.cu checkpoint, Hugging Face GPT-2 directory, or llm.c .bin", &weights);
        cli.custom("--data", "SHARDS", "comma-separated token shards for loss and perplexity", "(none)",
                   [&](const std::string& v) {
                       if (!data.empty())  // a script's common options and then its own; a user may mean both
                           std::fprintf(stderr, "note: --data given twice: the later list replaces the earlier (%s); "
                                        "give one comma-separated list for both\n", data.c_str());
                       data = v;
                   });
        cli.option("--choices", "FILE", "multiple-choice JSONL (-: standard input)", &choices);
        cli.custom("--batch", "B", "sequences per batch (loss)", "4", [&](const std::string& v) {
            batch = parse_int("--batch", v, 1, 1 << 16);
            batch_given = true;
        });
        cli.custom("--seq", "T", "tokens per sequence (loss; at most the model's context: its block size less any "
                   "virtual tokens, which also caps the default)", "256", [&](const std::string& v) {
                       seq = parse_int("--seq", v, 1, 1 << 20);
                       seq_given = true;
                   });
        cli.option("--batches", "N", "batches to evaluate, at most one pass: no token counts twice (0: one pass, "
                   "the last batch smaller when the windows do not divide evenly)", &batches, 0, 1 << 30);
        cli.option("--adapter", "FILE", "an adapter checkpoint (LoRA, virtual tokens: bin/train's adapter.ckpt) on top "
                   "of --model", &adapter);
        cli.option("--device", "cpu|cuda|auto", "backend", &device);
        Windows windows = Windows::fixed;
        bool windows_auto = true;
        cli.custom("--windows", "auto|fixed|documents|single|isolated", "how --data is cut into windows, as in "
                   "bin/train: every --seq tokens, whole documents from an <|endoftext|>, padded, one document a "
                   "window, or packed documents that each see only themselves; auto: "
                   "documents for prompt/completion data, else fixed, as bin/train decides (compare a run's "
                   "validation loss with its own)", "auto",
                   [&](const std::string& v) { windows_auto = parse_windows_flag(v, &windows); });
        bool eot_first = false, no_eot_first = false;
        cli.flag("--eot-first", "--choices: put <|endoftext|> before every context, as a model fine-tuned on "
                 "document windows saw its examples; the default for a model (or adapter) whose checkpoint says it "
                 "was trained so", &eot_first);
        cli.flag("--no-eot-first", "--choices: every context alone, also for a model trained on document windows",
                 &no_eot_first);
        cli.option("--vocab", "DIR", "GPT-2 vocabulary", &vocab);
        if (!cli.parse(argc, argv)) {
            std::fputs(cli.help().c_str(), stdout);
            return 0;
        }
        if (weights.empty()) throw UsageError("--model: which weights? (see --help)");
        if (data.empty() && choices.empty()) throw UsageError("nothing to evaluate: give --data and/or --choices");
        if (eot_first && no_eot_first) throw UsageError("--eot-first and --no-eot-first: give one, not both");
        if ((eot_first || no_eot_first) && choices.empty())
            throw UsageError(std::string(eot_first ? "--eot-first" : "--no-eot-first") + " has no effect without "
                             "--choices (--data is scored in windows of the shards as they are)");
        // Multiple choice scores each example alone, all its endings at once, in the model's whole context.
        if (data.empty())
            for (const auto& [given, flag] : {std::pair{!windows_auto, "--windows"}, {seq_given, "--seq"},
                                              {batch_given, "--batch"}, {batches > 0, "--batches"}})
                if (given)
                    throw UsageError(std::string(flag) + " has no effect without --data (multiple choice scores each "
                                     "example alone, its endings as one batch, in the model's whole context)");
        require_path("--model", weights);
        require_file("--adapter", adapter, "an adapter.ckpt written by bin/train");
        const std::vector<std::string> paths =
            data.empty() ? std::vector<std::string>{} : split_file_list("--data", data);
        for (const std::string& p : paths) require_file("--data", p, "a token shard made by bin/prepare");
        if (choices == "-")
            require_stdin("--choices");
        else
            require_file("--choices", choices, "a JSONL file of examples");
        // Read before the loss pass (which may take an hour), so a bad line stops the run at once.
        std::vector<ChoiceExample> ex;
        std::optional<Tokenizer> tok;  // for --choices, read once; a --vocab given is read whether used or not
        if (!choices.empty() || vocab != kDefaultVocab) tok = Tokenizer::load(vocab);
        if (!choices.empty()) {
            ex = read_choice_file(*tok, choices == "-" ? "/dev/stdin" : choices);
        }
        // Loaded once: for the loss windows, then re-sized for the multiple-choice batches.
        std::optional<LoadedModel> loaded;
        if (!data.empty()) {
            // One row until the windows are counted: --batch 4096 over a shard of one window needs one row, not
            // the memory of 4096.
            loaded = load_model(weights, device, "fp32", 1, seq, adapter);
            LoadedModel& m = *loaded;
            const int V = m.model->config().vocab_size;
            // What only the model can check of --choices (token ids, endings that fit), before the loss pass.
            check_choice_examples(ex, V, m.model->max_positions());
            std::vector<Shard> shards = read_shards(paths, V);
            int32_t doc_end;  // -1: fixed windows
            if (windows_auto) {
                doc_end = auto_document_end(shards, vocab, V, false);
                windows = doc_end >= 0 ? Windows::documents : Windows::fixed;
            } else {
                doc_end = document_end_token(windows, vocab, V);
            }
            // Not switched by the file: two models compared on the same --data must see the same windows.
            if (m.trained_on.document_windows() && windows_auto && windows != m.trained_on.windows)
                std::fprintf(stderr, "note: %s was trained on document windows; --windows %s measures it on "
                             "windows like those (this pass: --windows %s)\n", m.trained_on_file.c_str(),
                             windows_name(m.trained_on.windows), windows_name(windows));
            const int room = m.model->max_positions();
            if (seq > room) {
                const int P = m.model->virtual_tokens();
                const std::string context =
                    P ? "the model's context of " + std::to_string(room) + " tokens (block size " +
                            std::to_string(m.model->config().block_size) + " less " + std::to_string(P) +
                            " virtual tokens)"
                      : "the model's block size " + std::to_string(room);
                if (seq_given) throw UsageError("--seq: " + std::to_string(seq) + " is above " + context);
                std::fprintf(stderr, "note: --seq %d, %s\n", room, context.c_str());
                seq = room;
            }
            const int P = m.model->virtual_tokens(), trained = m.trained_on.positions;
            if (trained > 0 && P + seq > trained)
                std::fprintf(stderr, "note: %s trained %d positions (%s); --seq %d also scores positions past those, "
                             "which never trained (--seq %d stays within them)\n", m.trained_on_file.c_str(), trained,
                             P ? (std::to_string(P) + " virtual tokens and its longest --seq").c_str()
                               : "its longest --seq",
                             seq, std::max(1, trained - P));
            Loader loader(std::move(shards), V, batch, seq, false, 0, 0, 1, doc_end, windows);
            loader.note_shards();
            m.model->resize((int)std::min<size_t>((size_t)batch, std::max<size_t>(1, loader.windows_per_epoch())), seq);
            LossResult r = eval_loss(*m.model, loader, batches, "evaluate: loss, batch");
            if (r.tokens > 0 && !std::isfinite(r.loss))
                throw Error("the loss over --data is not finite (" + std::to_string(r.loss) + "): the model " +
                            weights + " overflows or holds non-finite values in its forward pass");
            std::string scope;
            if (batches > 0 && (size_t)batches > r.pass_batches)
                scope = "one pass: " + counted(r.batches, "batch", "batches") + ", fewer than the " +
                        std::to_string(batches) + " asked";
            else if (r.batches == r.pass_batches)
                scope = "one pass: " + counted(r.batches, "batch", "batches");
            else
                scope = std::to_string(r.batches) + " of the " + counted(r.pass_batches, "batch", "batches") +
                        " of a pass";
            if (windows_auto && windows != Windows::fixed)
                scope += "; document windows: --windows auto, as the data is prompt/completion";
            std::printf("loss %.4f | perplexity %.3f | %zu tokens (%s)\n", r.loss, r.perplexity, r.tokens,
                        scope.c_str());
        }
        if (!choices.empty()) {
            size_t most = 0;
            const ChoiceExample* widest = nullptr;
            for (const auto& e : ex)
                if (e.endings.size() > most) most = e.endings.size(), widest = &e;
            try {
                if (loaded)
                    loaded->model->resize((int)most, loaded->model->max_positions());
                else
                    loaded = load_model(weights, device, "fp32", (int)most, 0, adapter);
            } catch (const Error& e) {
                // Not --batch's doing: every ending of an example is scored at once, one sequence each.
                std::string why = e.what();
                if (!widest || why.find("more than this machine's memory") == std::string::npos) throw;
                why = why.substr(0, why.find(": fewer sequences"));  // the backend's advice is about --batch
                throw Error(widest->where + ": " + std::to_string(most) + " endings, scored at once as " +
                            std::to_string(most) + " sequences, more than fit (" + why + ")");
            }
            LoadedModel& m = *loaded;
            // Asked as it was trained, like bin/generate asks it.
            const bool eot_auto = m.trained_on.document_windows() && !eot_first && !no_eot_first;
            int32_t first = -1;
            if (eot_first || eot_auto) {
                first = tok->eot_token();
                if (first >= m.model->config().vocab_size)
                    throw UsageError(std::string(eot_first ? "--eot-first" : m.trained_on_file + " was trained on "
                                     "document windows") + ", and the model's " +
                                     std::to_string(m.model->config().vocab_size) + " tokens hold no <|endoftext|> "
                                     "(id " + std::to_string(first) + ") to put before the contexts");
            }
            if (eot_auto)
                std::fprintf(stderr, "note: %s was trained on document windows: every context goes after "
                             "<|endoftext|>, as its examples did (--no-eot-first: the contexts alone)\n",
                             m.trained_on_file.c_str());
            ChoiceResult r = eval_multiple_choice(*m.model, ex, "evaluate: multiple choice, example", first);
            std::printf("multiple choice: %s | acc %.4f | acc_norm %.4f\n",
                        counted(r.examples, "example", "examples").c_str(), r.acc(), r.acc_norm());
            if (r.contexts_cut)
                std::fprintf(stderr, "note: %zu of %zu contexts were longer than the model's context of %d positions "
                             "(with their ending%s): their first tokens were left out\n", r.contexts_cut, r.examples,
                             m.model->max_T(), first >= 0 ? " and the <|endoftext|> before them" : "");
        }
        return 0;
    });
}
