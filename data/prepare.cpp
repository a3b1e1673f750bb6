#include "data/prepare.h"

#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "data/shard.h"
#include "kernels/common.h"
#include "model/rng.h"

namespace tune {

const char* const kDefaultTemplate =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const char* const kDefaultTemplateNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n";

namespace {

bool is_jsonl(const std::string& path) {
    auto ends = [&](const char* s) {
        size_t n = std::char_traits<char>::length(s);
        return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
    };
    return ends(".jsonl") || ends(".json");
}

std::string get_string(const nlohmann::json& j, const char* field, const std::string& where, bool allow_empty) {
    if (!j.contains(field)) throw Error(where + ": missing field \"" + field + "\"");
    if (!j[field].is_string()) throw Error(where + ": field \"" + field + "\" is not a string");
    std::string s = j[field].get<std::string>();
    if (!allow_empty && s.empty()) throw Error(where + ": field \"" + field + "\" is empty");
    return s;
}

// prompt (mask 0) + completion (mask 1) + EOT (mask 1)
Document prompt_completion(const Tokenizer& tok, const std::string& prompt, const std::string& completion) {
    Document d;
    tok.encode_append(prompt, d.tokens);
    d.mask.assign(d.tokens.size(), 0);
    tok.encode_append(completion, d.tokens);
    d.tokens.push_back(tok.eot_token());
    d.mask.resize(d.tokens.size(), 1);
    return d;
}

// A plain document, or one piece of it (cut_plain_text): EOT only after the last piece.
Document plain(const Tokenizer& tok, const std::string& text, bool last = true) {
    Document d;
    tok.encode_append(text, d.tokens);
    if (last) d.tokens.push_back(tok.eot_token());
    d.mask.assign(d.tokens.size(), 1);
    return d;
}

bool graphic_ascii(char c) { return c > ' ' && c < 0x7f; }

// Why a file that starts with `head` is no text to tokenise ("" when it may be): a compressed file or an
// archive would become one document of its bytes, and UTF-16 a document with a NUL between letters.
std::string not_text(const std::string& head) {
    auto starts = [&](const char* magic, size_t n) { return head.size() >= n && head.compare(0, n, magic, n) == 0; };
    if (starts("\x1f\x8b", 2)) return "is gzip-compressed: decompress it first (zcat FILE > FILE.txt)";
    if (starts("\x28\xb5\x2f\xfd", 4)) return "is zstd-compressed: decompress it first (zstdcat FILE > FILE.txt)";
    if (starts("\xfd" "7zXZ", 5)) return "is xz-compressed: decompress it first (xzcat FILE > FILE.txt)";
    if (starts("BZh", 3) && head.size() >= 10 && head.compare(4, 6, "1AY&SY") == 0)
        return "is bzip2-compressed: decompress it first (bzcat FILE > FILE.txt)";
    if (starts("PK\x03\x04", 4)) return "is a zip archive: unpack it first";
    if (starts("\xff\xfe", 2) || starts("\xfe\xff", 2))
        return "is UTF-16 text (it starts with a UTF-16 byte-order mark): convert it to UTF-8 first (iconv -f UTF-16 "
               "-t UTF-8 FILE > FILE.txt)";
    return "";
}

class Progress {
   public:
    Progress(size_t total, bool on) : total_(total), on_(on && total > (1 << 20)), tty_(isatty(2)), t0_(now()) {}
    ~Progress() {  // stopped by an error: end the bar's line, so the message gets its own
        if (on_ && tty_ && shown_ && !finished_) std::fputc('\n', stderr);
    }
    void update(size_t done, bool final = false) {
        if (!on_) return;
        done = std::min(done, total_);
        shown_ = true;
        finished_ = final;
        double t = now();
        if (!final && t - last_ < 0.5) return;
        last_ = t;
        double mbs = done / 1e6 / std::max(t - t0_, 1e-9);
        double eta = mbs > 0 ? (total_ - done) / 1e6 / mbs : 0;
        int width = 30, fill = (int)(width * (double)done / (double)total_);
        std::fprintf(stderr, "%sprepare [%s%s] %5.1f%% %7.1f MB/s ETA %4.0fs%s", tty_ ? "\r" : "",
                     std::string(fill, '#').c_str(), std::string(width - fill, '.').c_str(), 100.0 * done / total_,
                     mbs, eta, tty_ && !final ? "" : "\n");
    }

   private:
    static double now() {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    }
    size_t total_;
    bool on_, tty_, shown_ = false, finished_ = false;
    double t0_, last_ = 0;
};

}  // namespace

namespace {

// Whether a line starts with a printable character beyond ASCII: a letter, digit, punctuation mark or symbol
// in valid UTF-8 (never whitespace, as the tokenizer's \s counts it, nor an invisible format character), so
// Cyrillic, Greek or CJK text is cut like English.
bool starts_printable_unicode(const std::string& line) {
    static pcre2_code* const re = [] {
        int err = 0;
        PCRE2_SIZE at = 0;
        const char* pattern = "^[\\p{L}\\p{N}\\p{P}\\p{S}]";
        pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at, nullptr);
        if (!c) throw std::logic_error("prepare: PCRE2 rejected the line-start pattern");
        return c;
    }();
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
    // The first character is at most 4 bytes; a second one cut short does not matter to an anchored match.
    const int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(line.data()), std::min<size_t>(line.size(), 8), 0,
                               PCRE2_ANCHORED, md, nullptr);
    pcre2_match_data_free(md);
    return rc > 0;
}

}  // namespace

size_t plain_text_cut(const std::string& text, const std::string& next_line) {
    const size_t n = text.size();
    if (next_line.empty() || n < 2 || text[n - 1] != '\n') return std::string::npos;
    const bool ascii = (unsigned char)next_line[0] < 0x80;
    if (ascii ? !graphic_ascii(next_line[0]) : !starts_printable_unicode(next_line)) return std::string::npos;
    return n - 1;  // "...x" | "\ny..."
}

void check_template(const std::string& tmpl, const std::string& flag) {
    if (tmpl.find("{instruction}") == std::string::npos) {
        const std::string shown = tmpl.size() > 60 ? tmpl.substr(0, 57) + "..." : tmpl;
        throw UsageError(flag + ": the template '" + shown +
                         "' has no {instruction} placeholder, so every example's instruction would be dropped "
                         "(placeholders: {instruction} and {input})");
    }
}

std::string fill_template(const std::string& tmpl, const std::string& instruction, const std::string& input) {
    std::string out;
    for (size_t i = 0; i < tmpl.size();) {
        if (tmpl.compare(i, 13, "{instruction}") == 0) {
            out += instruction;
            i += 13;
        } else if (tmpl.compare(i, 7, "{input}") == 0) {
            out += input;
            i += 7;
        } else {
            out += tmpl[i++];
        }
    }
    return out;
}

Document document_from_json_line(const Tokenizer& tok, const std::string& line, const std::string& where,
                                 const std::string& template_str) {
    check_json_depth(line, where);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for a number beyond a double
        throw Error(where + ": not valid JSON: " + json_reason(e));
    }
    if (!j.is_object()) throw Error(where + ": expected a JSON object");
    // The structured fields first: a record may carry a "text" beside them (Hugging Face's Alpaca export holds
    // the prompt and answer already formatted there), and it must not put the loss on the prompt.
    if (j.contains("prompt") || j.contains("completion"))
        return prompt_completion(tok, get_string(j, "prompt", where, true), get_string(j, "completion", where, false));
    if (j.contains("instruction") || j.contains("output")) {
        const std::string ins = get_string(j, "instruction", where, false);
        const std::string inp = j.contains("input") ? get_string(j, "input", where, true) : "";
        const std::string out = get_string(j, "output", where, false);
        if (!inp.empty() && !template_str.empty() && template_str.find("{input}") == std::string::npos)
            throw Error(where + ": has an \"input\", but the template has no {input} placeholder: it would be "
                                "dropped (add {input} to the template, or leave --template out)");
        const std::string& t = !template_str.empty() ? template_str
                               : inp.empty()         ? std::string(kDefaultTemplateNoInput)
                                                     : std::string(kDefaultTemplate);
        return prompt_completion(tok, fill_template(t, ins, inp), out);
    }
    if (j.contains("text")) return plain(tok, get_string(j, "text", where, false));
    throw Error(where + ": expected fields \"text\", or \"prompt\"+\"completion\", or "
                        "\"instruction\"+\"output\" (with an optional \"input\")");
}

namespace {

enum class Format { text, jsonl, json_array };

// Standard input and a shell's <(...) have no name of their own to go by, even when they are a file (< x.jsonl).
bool nameless(const std::string& path) {
    std::error_code ec;  // a name the system refuses (too long, say) is no regular file; opening it says why
    return path == "/dev/stdin" || path.rfind("/dev/fd/", 0) == 0 || path.rfind("/proc/self/fd/", 0) == 0 ||
           !std::filesystem::is_regular_file(path, ec);
}

// How an input is read. A name ending in .jsonl or .json (or --format jsonl) means JSON records: a line each,
// or one JSON array of them when the first character is '['. Any other name means one plain document, as the
// name says (a first line that is a JSONL record is noted before the work starts). Standard input or a pipe
// (/dev/stdin, /dev/fd/63) has no name: under --format auto its first line decides.
Format input_format(const std::string& path, const std::string& first_line, const PrepareOptions& opt) {
    const size_t start = first_line.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;  // past a UTF-8 byte-order mark
    const size_t at = first_line.find_first_not_of(" \t\r", start);
    const bool array = at != std::string::npos && first_line[at] == '[';
    if (opt.format == "jsonl" || (opt.format == "auto" && is_jsonl(path)))
        return array ? Format::json_array : Format::jsonl;
    if (opt.format == "text" || !nameless(path)) return Format::text;
    const nlohmann::json j = nlohmann::json::parse(first_line, nullptr, false);
    const bool record = j.is_object() && (j.contains("text") || j.contains("prompt") || j.contains("instruction"));
    if (!record && !array) return Format::text;
    if (opt.note)
        opt.note(path + ": standard input or a pipe, whose first line " +
                 (array ? std::string("opens a JSON array: read as its records") :
                          std::string("is a JSONL record: read as JSONL, a document per line")) +
                 " (--format text reads it as one plain document)");
    return array ? Format::json_array : Format::jsonl;
}

// The first line of a file, at most 64 KiB of it ("" for a pipe: it is not read twice).
std::string first_line(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return "";
    std::ifstream in(path, std::ios::binary);
    std::string line(65536, '\0');
    in.read(&line[0], (std::streamsize)line.size());
    line.resize((size_t)in.gcount());
    return line.substr(0, line.find('\n'));
}

}  // namespace

PrepareReport prepare_dataset(const Tokenizer& tok, const PrepareOptions& opt) {
    if (opt.inputs.empty()) throw UsageError("no input files given");
    if (opt.format != "auto" && opt.format != "jsonl" && opt.format != "text")
        throw UsageError("--format: expected auto, jsonl or text, got '" + opt.format + "'");
    if (!(opt.val_frac >= 0 && opt.val_frac < 1)) throw UsageError("--val-frac: must be in [0, 1)");
    if (!opt.template_str.empty()) check_template(opt.template_str, "--template");
    PrepareReport rep;
    // Every input checked first: a misspelt last file must not wait for hours of work on the others.
    size_t total_bytes = 0;  // for the progress bar, which needs every size (a pipe has none)
    bool sizes_known = true;
    for (const std::string& path : opt.inputs) {
        check_readable(path);
        // A compressed or UTF-16 file is refused now, not after hours of work on the inputs before it.
        if (const std::string why = not_text(first_line(path)); !why.empty()) throw Error(path + ": " + why);
        const size_t size = file_size_or_zero(path);
        total_bytes += size;
        std::error_code ec;
        sizes_known = sizes_known && (size > 0 || std::filesystem::is_regular_file(path, ec));
    }
    if (opt.note) {
        std::vector<std::string> canon;  // "./a.txt" and "a.txt" are one file; a pipe is never read twice anyway
        for (const std::string& path : opt.inputs) {
            std::error_code ec;
            canon.push_back(std::filesystem::is_regular_file(path, ec)
                                ? std::filesystem::weakly_canonical(path, ec).string()
                                : "pipe:" + path);
        }
        for (size_t i = 0; i < opt.inputs.size(); i++) {
            const size_t times = (size_t)std::count(canon.begin(), canon.end(), canon[i]);
            if (times > 1 && canon[i].rfind("pipe:", 0) != 0 &&
                std::find(canon.begin(), canon.end(), canon[i]) == canon.begin() + i)
                opt.note(opt.inputs[i] + ": given " + std::to_string(times) + " times, so its documents are in the "
                         "shards " + std::to_string(times) + " times");
            // Standard input (even < a file) goes by its first line instead: said when it is read.
            if (opt.format != "auto" || is_jsonl(opt.inputs[i]) || nameless(opt.inputs[i])) continue;
            const nlohmann::json j = nlohmann::json::parse(first_line(opt.inputs[i]), nullptr, false);
            if (j.is_object() && (j.contains("text") || j.contains("prompt") || j.contains("instruction")))
                opt.note(opt.inputs[i] + ": read as plain text (one document, every token with loss), as its name "
                         "does not end in .jsonl, but its first line is a JSONL record: name it .jsonl, or give "
                         "--format jsonl, to read a document per line");
        }
    }

    // TEACH: the data streams through in chunks of about chunk_bytes of text: read, tokenised in parallel,
    // appended to the shards, forgotten. Memory stays bounded whatever the size of the corpus (the loss mask
    // waits in a scratch file until the shard is finished), and the output is the same bytes as reading
    // everything first would give: documents keep their order and their global index, which alone decides
    // the validation split.
    struct Item {
        std::string text, where;
        bool json;
        bool first = true, last = true;  // a plain document comes in pieces: where it starts and ends
    };
    std::vector<Item> items;
    size_t chunk_bytes = 0, index = 0, done_bytes = 0;
    bool doc_to_val = false;  // the split of the document being written (a plain one spans chunks)
    size_t doc_tokens = 0;    // of the document being written
    std::vector<uint64_t> docs_of_length(kDocTokensExact + 1);  // documents by tokens, the last: that many or more
    make_dirs(opt.out_dir);
    for (const std::string& path : remove_dead_temporaries(opt.out_dir))
        if (opt.note) opt.note(dead_temporary_note(path));
    rep.train_path = opt.out_dir + "/train.bin";
    const std::string val_path = opt.out_dir + "/val.bin";
    ShardWriter train(rep.train_path, (uint32_t)tok.vocab_size());
    std::unique_ptr<ShardWriter> val;  // made at the first validation document
    Progress progress(total_bytes, opt.progress && sizes_known);
    auto flush = [&] {
        if (opt.stop && *opt.stop)
            throw Error("interrupted: no shard written (" + std::to_string(index) + " documents were done)");
        std::vector<Document> docs(items.size());
        std::vector<std::string> errors(items.size());
        std::vector<char> fatal(items.size(), 0);  // not the input's fault (out of memory): stops even --skip-bad
        size_t literal_eot = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : literal_eot)
        for (size_t i = 0; i < items.size(); i++) {
            for (size_t at = items[i].text.find(kEotText); at != std::string::npos;
                 at = items[i].text.find(kEotText, at + 1))
                literal_eot++;
            try {
                docs[i] = items[i].json ? document_from_json_line(tok, items[i].text, items[i].where, opt.template_str)
                                        : plain(tok, items[i].text, items[i].last);
            } catch (const Error& e) {
                errors[i] = e.what();
            } catch (const std::exception& e) {  // nothing may leave an OpenMP region: it would end the program
                errors[i] = items[i].where + ": " + e.what();
                fatal[i] = 1;
            }
        }
        rep.literal_eot += literal_eot;
        for (size_t i = 0; i < items.size(); i++) {
            const size_t doc = index;
            if (items[i].last) index++;
            if (fatal[i]) throw Error(errors[i]);
            if (!errors[i].empty()) {
                if (!opt.skip_bad) throw Error(errors[i] + " (--skip-bad skips such lines)");
                rep.skipped++;
                continue;
            }
            if (items[i].first) doc_to_val = Rng(opt.seed ^ (0x9E3779B97F4A7C15ull * (doc + 1))).uniform() < opt.val_frac;
            if (doc_to_val && !val) val = std::make_unique<ShardWriter>(val_path, (uint32_t)tok.vocab_size());
            (doc_to_val ? *val : train).append(docs[i].tokens, docs[i].mask);
            doc_tokens += docs[i].tokens.size();
            if (items[i].last) {
                (doc_to_val ? rep.val_docs : rep.train_docs)++;
                docs_of_length[std::min(doc_tokens, docs_of_length.size() - 1)]++;
                rep.doc_tokens_max = std::max(rep.doc_tokens_max, doc_tokens);
                doc_tokens = 0;
            }
            for (uint8_t x : docs[i].mask) rep.counted_tokens += x;
        }
        items.clear();
        chunk_bytes = 0;
        progress.update(done_bytes);
    };
    auto add = [&](std::string text, std::string where, bool json, bool first = true, bool last = true) {
        chunk_bytes += text.size();
        items.push_back({std::move(text), std::move(where), json, first, last});
        if (chunk_bytes >= opt.chunk_bytes) flush();
    };
    // A plain text file is one document, cut into pieces of about this size where plain_text_cut allows, so
    // that it streams and its pieces are tokenised in parallel like the lines of a JSONL file.
    const size_t piece_bytes = std::max<size_t>(opt.chunk_bytes / kPiecesPerChunk, 1);
    for (const std::string& path : opt.inputs) {
        LineReader in(path);
        std::string line;
        bool have = in.next(line);  // the first line decides a pipe's format and shows a binary file
        if (const std::string why = not_text(line); !why.empty()) throw Error(path + ": " + why);
        const Format format = input_format(path, line, opt);
        if (format == Format::text) {
            std::string piece;
            bool first = true;
            size_t consumed = 0, line_no = 0;
            for (; have; have = in.next(line)) {
                line_no++;
                const bool newline = in.bytes_read() - consumed > line.size();  // the last line may lack one
                // A UTF-8 byte-order mark says how the file is encoded; it is not text to learn (JSONL lines
                // lose it in the JSON parser alike).
                if (consumed == 0 && line.rfind("\xEF\xBB\xBF", 0) == 0) {
                    line.erase(0, 3);
                    if (opt.note) opt.note(path + ": starts with a UTF-8 byte-order mark; left out of the text");
                }
                if (line.find('\0') != std::string::npos)
                    throw Error(path + ":" + std::to_string(line_no) + ": a NUL byte: this is no UTF-8 text (UTF-16 "
                                "without its byte-order mark, or a binary file?)");
                consumed = in.bytes_read();
                done_bytes = rep.input_bytes + consumed;
                const size_t cut = piece.size() >= piece_bytes ? plain_text_cut(piece, line) : std::string::npos;
                if (cut != std::string::npos) {
                    std::string rest = piece.substr(cut);
                    piece.resize(cut);
                    add(std::move(piece), path, false, first, false);
                    first = false;
                    piece = std::move(rest);
                }
                piece += line;
                if (newline) piece += '\n';
            }
            rep.input_bytes += in.bytes_read();
            done_bytes = rep.input_bytes;
            if (in.bytes_read() == 0) {  // like an empty "text" field: malformed, not a document of nothing
                if (!opt.skip_bad)
                    throw Error(path + ": empty: a plain text file is one document, and this one has no text "
                                       "(--skip-bad skips it)");
                rep.skipped++;
                continue;
            }
            add(std::move(piece), path, false, first, true);
            continue;
        }
        if (format == Format::json_array) {
            // TEACH: an array is one JSON value, so it is parsed whole (not streamed like JSONL's lines).
            std::string all;
            for (; have; have = in.next(line)) all += line + '\n';
            rep.input_bytes += in.bytes_read();
            done_bytes = rep.input_bytes;
            nlohmann::json records;
            std::string bad;
            try {
                if (json_depth(all) > kMaxJsonDepth)
                    bad = "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels";
                else
                    records = nlohmann::json::parse(all);
            } catch (const nlohmann::json::exception& e) {
                bad = json_reason(e);
            }
            if (!bad.empty()) {
                // One value: a mistake anywhere spoils the whole file, which --skip-bad then skips.
                if (!opt.skip_bad) throw Error(path + ": not valid JSON: " + bad + " (--skip-bad skips it)");
                rep.skipped++;
                continue;
            }
            all.clear();
            if (!records.is_array()) throw Error(path + ": expected a JSON array of records, or JSONL");
            if (records.empty() && opt.note) opt.note(path + ": an empty JSON array: no documents in it");
            for (size_t i = 0; i < records.size(); i++)
                add(records[i].dump(), path + ": record " + std::to_string(i + 1), true);
            continue;
        }
        size_t line_no = 0;
        for (; have; have = in.next(line)) {
            line_no++;
            done_bytes = rep.input_bytes + in.bytes_read();
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are fine
            add(std::move(line), path + ":" + std::to_string(line_no), true);
        }
        rep.input_bytes += in.bytes_read();
        done_bytes = rep.input_bytes;
        if (!opt.skip_bad && opt.note && in.bytes_read() == 0) opt.note(path + ": empty: no documents in it");
    }
    flush();
    progress.update(done_bytes, true);
    rep.documents = rep.train_docs + rep.val_docs;
    // The smallest length that at least q of the documents stay within.
    auto quantile = [&](double q) {
        const uint64_t want = (uint64_t)std::ceil(q * (double)rep.documents);
        uint64_t seen = 0;
        for (size_t len = 0; len < docs_of_length.size(); len++)
            if ((seen += docs_of_length[len]) >= want && want > 0) return len;
        return docs_of_length.size() - 1;
    };
    rep.doc_tokens_median = quantile(0.5);
    rep.doc_tokens_p95 = quantile(0.95);
    rep.train_tokens = train.tokens();
    rep.val_tokens = val ? val->tokens() : 0;
    if (!rep.train_tokens) {
        // Which of the three ways it came to nothing, with the inputs named.
        std::string named;
        for (size_t i = 0; i < opt.inputs.size() && i < 3; i++) named += (i ? ", " : "") + opt.inputs[i];
        if (opt.inputs.size() > 3) named += " and " + std::to_string(opt.inputs.size() - 3) + " more";
        if (rep.documents == 0 && rep.skipped == 0)
            throw Error("no documents in " + named + ": " + (opt.inputs.size() == 1 ? "it is empty or holds" : "they are empty or hold") +
                        " only blank lines");
        if (rep.documents == 0)
            throw Error("no documents left in " + named + ": all " + std::to_string(rep.skipped) +
                        " were malformed and skipped (--skip-bad)");
        if (rep.train_docs == 0) {
            std::ostringstream frac;
            frac << opt.val_frac;
            throw Error("no training documents: all " + std::to_string(rep.documents) + " of " + named +
                        " went to validation (--val-frac " + frac.str() +
                        "); give more documents or a smaller --val-frac");
        }
        throw Error("no training tokens were produced from " + named);
    }
    // Both complete on disk before either takes its name: a failure leaves no new train.bin beside an old val.bin.
    // An earlier run's val.bin goes before the new train.bin takes its name, so a kill between the renames leaves
    // a missing val.bin (an error naming it), never an earlier run's beside this run's train.bin.
    train.seal();
    if (val) val->seal();
    if (std::error_code ec; std::filesystem::exists(val_path, ec)) {
        // Without a validation split, a val.bin from an earlier run would pass for this data's (--val-data) while
        // holding other documents: the directory must describe one run.
        if (!std::filesystem::remove(val_path, ec) || ec)
            throw Error(val_path + ": left by an earlier run and cannot be removed (" + ec.message() + "); " +
                        (val ? "" : "this run has no validation split, so ") + "remove it or choose another --out");
        if (!val) rep.removed_stale_val = val_path;
    }
    train.commit();
    if (val) {
        rep.val_path = val_path;
        val->commit();
    }
    return rep;
}

}  // namespace tune
