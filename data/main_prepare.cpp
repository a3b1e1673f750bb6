// bin/prepare: text and JSONL files -> train.bin / val.bin token shards with loss masks.
#include <sys/stat.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "train/cli.h"
#include "data/fileio.h"
#include "data/tokenizer.h"
#include "data/prepare.h"
#include "kernels/common.h"

static const char* kHelp =
    "usage: bin/prepare [options] [--] FILE...   (FILE - reads standard input; after --, every argument is a FILE)\n"
    "Tokenises text and JSONL files with GPT-2's tokenizer into token shards for bin/train.\n"
    "A name ending in .jsonl or .json means JSON records (a line each, or one JSON array of them); any other\n"
    "name, plain text. A pipe is read by its first line (--format sets it for every input).\n"
    "  plain text files          each file is one document\n"
    "  JSONL {\"text\"}            each line is one document\n"
    "  JSONL {\"prompt\",\"completion\"}          loss only on the completion (and its closing EOT)\n"
    "  JSONL {\"instruction\",\"input\",\"output\"}  Alpaca style, through --template; loss only on the output\n"
    "options (default in brackets):\n"
    "  --out DIR            where train.bin and val.bin go [data/prepared]\n"
    "  --val-frac F         fraction of documents for validation, drawn by seed [0.05]\n"
    "  --seed S             seed of the train/validation split [1]\n"
    "  --template STR       prompt template with {instruction} and {input} [Alpaca's]\n"
    "  --template-file F    read the template from a file (every byte: a last line break is part of the prompt)\n"
    "  --format F           auto, jsonl or text: how every input is read [auto: by its name]\n"
    "  --skip-bad           skip malformed lines and report how many, instead of stopping\n"
    "  --vocab DIR          GPT-2 vocabulary (encoder.json, vocab.bpe) [data/gpt2]\n"
    "  --quiet              no progress bar\n"
    "  --help               this text\n";

namespace {

// A stream (a pipe, a terminal, a socket) can be read once: named twice under two names (- and /dev/stdin, or
// /dev/fd/0), the second read would find it empty and prepare would go on with one input fewer than asked. The same
// regular file twice is read twice, as asked.
void refuse_stream_twice(const std::vector<std::string>& paths, const std::vector<std::string>& given) {
    std::vector<struct stat> seen(paths.size());
    std::vector<bool> stream(paths.size(), false);
    for (size_t i = 0; i < paths.size(); i++) {
        stream[i] = stat(paths[i].c_str(), &seen[i]) == 0 && !S_ISREG(seen[i].st_mode);
        for (size_t j = 0; stream[i] && j < i; j++)
            if (stream[j] && seen[j].st_dev == seen[i].st_dev && seen[j].st_ino == seen[i].st_ino)
                throw tune::UsageError(given[j] + " and " + given[i] + " are the same stream (a pipe or terminal): it "
                                       "can be read once");
    }
}

}  // namespace

int main(int argc, char** argv) {
    using namespace tune;
    return tune::run_tool("prepare", [&]() -> int {
        PrepareOptions opt;
        std::string vocab = kDefaultVocab;
        bool template_given = false, template_from_file = false, files_only = false, stdin_given = false;
        std::vector<std::string> given_inputs;  // as written: "-" stays "-"
        auto add_input = [&](const std::string& f) {
            if (f == "-" && std::exchange(stdin_given, true))
                throw UsageError("- (standard input) given twice: it can be read once");
            opt.inputs.push_back(f == "-" ? "/dev/stdin" : f);
            given_inputs.push_back(f);
        };
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            if (files_only || a == "--") {  // after --, every argument is a file, also one named -x or --out
                if (std::exchange(files_only, true)) add_input(a);
                continue;
            }
            std::string given;  // --flag=value, as bin/train takes it, or --flag value
            bool has_given = split_inline_value(&a, &given);
            auto value = [&]() -> std::string {
                if (has_given) {
                    has_given = false;
                    return given;
                }
                if (i + 1 >= argc) throw UsageError(a + ": missing value");
                return argv[++i];
            };
            if (a == "--help" || a == "-h") {
                if (has_given) throw UsageError("--help takes no value");
                std::fputs(kHelp, stdout);
                return 0;
            } else if (a == "--out") {
                opt.out_dir = value();
                if (opt.out_dir.empty()) throw UsageError("--out: empty (an unset variable?); give the output directory");
            } else if (a == "--val-frac") {
                std::string v = value();
                char* end = nullptr;
                opt.val_frac = std::strtod(v.c_str(), &end);
                if (v.empty() || *end || !(opt.val_frac >= 0 && opt.val_frac < 1))
                    throw UsageError("--val-frac: expected a number in [0, 1), got '" + v + "'");
            } else if (a == "--seed") {
                std::string v = value();
                char* end = nullptr;
                errno = 0;
                opt.seed = std::strtoull(v.c_str(), &end, 10);
                // strtoull takes "-5" as 2^64 - 5: digits only, within 64 bits.
                if (v.empty() || *end || v.find_first_not_of("0123456789") != std::string::npos || errno == ERANGE)
                    throw UsageError("--seed: expected an integer in [0, 2^64), got '" + v + "'");
            } else if (a == "--template") {
                if (template_from_file) throw UsageError("--template and --template-file: give one, not both");
                template_given = true;
                opt.template_str = value();
                check_template(opt.template_str, "--template");
            } else if (a == "--template-file") {
                if (template_given) throw UsageError("--template and --template-file: give one, not both");
                template_from_file = true;
                std::string path = value();
                require_file("--template-file", path, "a text file");
                std::vector<uint8_t> b = read_file_bytes(path);
                opt.template_str.assign(b.begin(), b.end());
                check_template(opt.template_str, "--template-file " + path);
                // An editor ends a file with a line break, which then ends every prompt: told, not dropped (the
                // default template ends in one too, on purpose).
                if (!opt.template_str.empty() && opt.template_str.back() == '\n')
                    std::fprintf(stderr,
                                 "note: --template-file %s ends in a line break, which ends every prompt: the "
                                 "completion starts on a new line, and a prompt for bin/generate must end in one too\n",
                                 path.c_str());
            } else if (a == "--format") {
                opt.format = value();
                if (opt.format != "auto" && opt.format != "jsonl" && opt.format != "text")
                    throw UsageError("--format: expected auto, jsonl or text, got '" + opt.format + "'");
            } else if (a == "--skip-bad") {
                opt.skip_bad = true;
            } else if (a == "--vocab") {
                vocab = value();
            } else if (a == "--quiet") {
                opt.progress = false;
            } else if (a.rfind("--", 0) == 0) {
                throw UsageError("unknown option '" + a + "' (see bin/prepare --help)");
            } else if (a.size() > 1 && a[0] == '-') {
                throw UsageError("unknown option '" + a + "' (a file of that name: ./" + a + ", or after --)");
            } else {
                add_input(a);
            }
            if (has_given) throw UsageError(a + " takes no value, got '" + a + "=" + given + "'");
        }
        if (opt.inputs.empty()) throw UsageError("no input files (see bin/prepare --help)");
        require_output_dir("--out", opt.out_dir);
        for (const std::string& f : opt.inputs)
            if (f != "/dev/stdin") require_file("input", f, "a text or JSONL file");
        refuse_stream_twice(opt.inputs, given_inputs);
        Tokenizer tok = Tokenizer::load(vocab);
        // Ctrl-C or a scheduler's SIGTERM: stop at the next chunk and remove the partial shards.
        static volatile std::sig_atomic_t stop = 0;
        catch_stop_signals([](int) { stop = 1; });
        opt.stop = &stop;
        opt.note = [](const std::string& what) { std::fprintf(stderr, "note: %s\n", what.c_str()); };
        const DirLock lock(opt.out_dir, "bin/prepare");
        PrepareReport r;
        try {
            r = prepare_dataset(tok, opt);
        } catch (const Error& e) {
            if (!stop) throw;
            std::fprintf(stderr, "prepare: %s\n", e.what());  // like bin/train: a stop is not a failure
            return 130;
        }
        std::printf("prepared %s (%zu train, %zu validation) from %.1f MB\n",
                    counted(r.documents, "document", "documents").c_str(), r.train_docs, r.val_docs, r.input_bytes / 1e6);
        std::printf("  %s: %zu tokens\n", r.train_path.c_str(), r.train_tokens);
        if (!r.val_path.empty()) {
            std::printf("  %s: %zu tokens\n", r.val_path.c_str(), r.val_tokens);
        } else if (opt.val_frac == 0) {
            std::printf("  no validation split (--val-frac 0): no val.bin\n");
        } else {
            // Each document goes to validation with probability --val-frac, so a few documents often give none.
            std::printf("  no validation split: %zu document%s, none drawn for validation at --val-frac %g, so no "
                        "val.bin (use a larger --val-frac or more documents)\n",
                        r.documents, r.documents == 1 ? "" : "s", opt.val_frac);
        }
        if (!r.removed_stale_val.empty())
            std::printf("  removed %s of an earlier run, which did not hold this data\n", r.removed_stale_val.c_str());
        std::printf("  tokens with loss: %zu of %zu\n", r.counted_tokens, r.train_tokens + r.val_tokens);
        auto at_least = [&](size_t n) { return std::to_string(n) + (n >= kDocTokensExact ? " or more" : ""); };
        // bin/train's --windows auto cuts data with a loss mask that leaves tokens out into document windows.
        const bool prompts = r.counted_tokens < r.train_tokens + r.val_tokens;
        std::printf("  tokens per document: median %s, 95%% within %s, longest %zu (%s keep a document whole where "
                    "--seq is at least its length)\n",
                    at_least(r.doc_tokens_median).c_str(), at_least(r.doc_tokens_p95).c_str(), r.doc_tokens_max,
                    prompts ? "bin/train's document windows, its default for prompt/completion training data,"
                            : "bin/train --windows documents would");
        if (r.skipped)  // a JSONL line, or a whole file: an empty text file, a JSON array that does not parse
            std::printf("  skipped %s (--skip-bad)\n",
                        counted(r.skipped, "malformed line or file", "malformed lines or files").c_str());
        if (r.literal_eot)
            std::fprintf(stderr, "note: the text holds %s %zu time%s; it was tokenised as text (7 tokens), not as the "
                         "end-of-text token: documents are what the inputs say (a file, a JSONL line), so split such "
                         "text into documents before preparing it\n",
                         kEotText, r.literal_eot, r.literal_eot == 1 ? "" : "s");
        return 0;
    });
}
