// Dataset preparation: text and JSONL in, train/validation token shards (with loss masks) out.
//
// Inputs, recognised per file and per line:
//   - a plain text file (not .jsonl/.json) is one document (streamed in pieces: plain_text_cut);
//   - JSONL {"text": ...}: each line a document (a .json file holding one JSON array of such records, like
//     Stanford's alpaca_data.json, is read as its records);
//   - JSONL {"prompt": ..., "completion": ...}: the loss covers only the completion and its closing EOT;
//   - JSONL {"instruction": ..., "input": ..., "output": ...} (Alpaca): instruction and input are
//     written into a prompt template (placeholders {instruction} and {input}); the loss covers only the
//     output and its EOT. This is the "prompt learning" of the fine-tuning literature.
// Every document ends with EOT (50256). A document goes to validation with probability val_frac, drawn
// from (seed, document index), so the split is deterministic and independent of thread count.
#pragma once

#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace tune {

// The end-of-text token's name, which in a text is just text (data/tokenizer.h): never the token itself.
constexpr const char* kEotText = "<|endoftext|>";

// Alpaca's own template, with and without an input section.
extern const char* const kDefaultTemplate;
extern const char* const kDefaultTemplateNoInput;

struct PrepareOptions {
    std::vector<std::string> inputs;
    std::string out_dir = "data/prepared";
    double val_frac = 0.05;
    uint64_t seed = 1;
    std::string template_str;  // empty: kDefaultTemplate / kDefaultTemplateNoInput
    // "auto": JSON records when the name ends in .jsonl or .json, else plain text (a pipe: by its first line);
    // "jsonl": every input holds JSON records (a line each, or one JSON array); "text": every input is plain text.
    std::string format = "auto";
    bool skip_bad = false;     // skip malformed lines (and count them) instead of stopping
    bool progress = true;      // progress bar on stderr
    size_t chunk_bytes = size_t(32) << 20;  // text tokenised at a time: bounds memory, not the result
    // Set (by a signal handler) to stop before the next chunk, with an error and no file left behind.
    const volatile std::sig_atomic_t* stop = nullptr;
    // Told what a user should know but that does not stop the run (an input given twice, a .txt file that looks
    // like JSONL, temporaries of a killed run removed), as soon as it is found.
    std::function<void(const std::string&)> note;
};

struct PrepareReport {
    size_t documents = 0, train_docs = 0, val_docs = 0, skipped = 0;
    size_t train_tokens = 0, val_tokens = 0, counted_tokens = 0;  // counted: mask 1
    size_t input_bytes = 0;
    std::string train_path, val_path;  // val_path empty: no document was drawn for validation
    std::string removed_stale_val;     // a val.bin of an earlier run that this one removed
    size_t literal_eot = 0;            // "<|endoftext|>" written out in the inputs' text (tokenised as text)
    // Tokens per document (its closing EOT included), for choosing bin/train's --seq: the median, the length
    // 95% of the documents stay within, and the longest. The two quantiles are exact below kDocTokensExact;
    // above, they say kDocTokensExact.
    size_t doc_tokens_median = 0, doc_tokens_p95 = 0, doc_tokens_max = 0;
};
constexpr size_t kDocTokensExact = size_t(1) << 20;

// One tokenised document: ids and per-token loss mask (1 = predicted with loss).
struct Document {
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
};

// Turns one JSONL line into a document; throws tune::Error with `where` (file:line) and the reason.
Document document_from_json_line(const Tokenizer& tok, const std::string& line, const std::string& where,
                                 const std::string& template_str);
// Throws tune::UsageError naming `flag` and the template when it lacks {instruction}: filling it would
// silently drop every example's instruction.
void check_template(const std::string& tmpl, const std::string& flag);
// Fills a template's {instruction} and {input} placeholders.
std::string fill_template(const std::string& tmpl, const std::string& instruction, const std::string& input);

PrepareReport prepare_dataset(const Tokenizer& tok, const PrepareOptions& opt);

// TEACH: a long text is tokenised in pieces, which gives the same tokens as the whole only where no
// pre-tokenisation piece (see data/tokenizer.h) crosses the cut and none would end differently at the end of
// a text. Just before a line break that a printable character follows (ASCII or not) is such a place. In the whole text
// that '\n' is a piece of its own: '\n' never joins a word (only a space does), and \s+(?!\S) stops short of
// the last whitespace before a non-space, leaving it to \s+ alone. Whatever whitespace comes before it is one
// piece either way (at a text's end \s+(?!\S) takes the whole run, which is where it stopped in the whole).
// Cutting after the '\n' instead would not do: "x\n\ny" is "x" "\n" "\n" "y" whole, but "x\n\n" alone ends in
// the one piece "\n\n", a token of its own.
// `text` ends where `next_line` begins (text ends in '\n'): returns where to cut text, or npos when its end
// is no such place.
size_t plain_text_cut(const std::string& text, const std::string& next_line);
constexpr size_t kPiecesPerChunk = 16;  // a plain text's pieces per chunk: tokenised in parallel

}  // namespace tune
