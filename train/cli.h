// A small command-line parser shared by every tool: options are declared once, with their help text and
// the target they set, so --help always shows the real defaults. Bad input throws tune::UsageError with a
// one-line message naming the flag; tools print it and exit 2.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tune {

int parse_int(const std::string& flag, const std::string& v, long lo, long hi);

// "--flag=value": leaves "--flag" in *arg, sets *value and returns true. Any other argument: false, unchanged.
bool split_inline_value(std::string* arg, std::string* value);

// Runs a tool's main body with the exit-code contract every tool shares: a tune::UsageError prints
// "NAME: message" and exits 2; any other error prints "NAME: error: message" and exits 1. When standard output is
// the tool's product (generated text, scores, ids) and a write to it failed (a full disk), a body that returned 0
// exits 1 instead; bin/train, whose standard output is a progress log beside the files it writes, says false.
int run_tool(const char* name, const std::function<int()>& body, bool output_is_product = true);

// A path named on the command line must exist: a typo is a usage error (exit 2), while a file that exists but
// is malformed is its reader's to report (exit 1). Every tool keeps to this. "" (not given) passes.
//   require_path("--init", p)                 "--init: no such file or directory: P"
//   require_file("--data", p, "a token shard") also "--data: P: is a directory, not a file (expected a token shard)"
void require_path(const std::string& flag, const std::string& path);
// `flag -` reads standard input: closed, or a directory (`< dir`), it is a usage error as a FILE would be.
void require_stdin(const std::string& flag);
void require_file(const std::string& flag, const std::string& path, const char* what);
// An output the same way: a directory to write into must not be a file, nor lie below one (it and the folders
// above it are made when missing); a file to write must not be a directory, and its folder must exist (the file
// itself may not exist yet).
void require_output_dir(const std::string& flag, const std::string& path);
// `folder_made_first`: the file's folder is one the tool makes before it writes the file (bin/export's --llmc in
// its --hf directory), so it need not exist yet.
void require_output_file(const std::string& flag, const std::string& path, bool folder_made_first = false);

// SIGINT, SIGTERM and SIGHUP go to `handler`, except a signal the process was started ignoring (nohup, a
// script's background job): what the user asked to ignore stays ignored.
void catch_stop_signals(void (*handler)(int));
double parse_double(const std::string& flag, const std::string& v, double lo, double hi);
// "a,b,,c" -> {"a", "b", "c"}: a comma-separated list of a flag, empty items dropped.
std::vector<std::string> split_list(const std::string& v);
// "1 batch", "15 batches": a count with its noun in the right number.
std::string counted(size_t n, const char* one, const char* many);
// A comma-separated list of files: "a,b" -> {"a", "b"}. An empty item ("$A,$B" with B unset, "a,") would drop a
// file without a word: a UsageError naming the flag and the list.
std::vector<std::string> split_file_list(const std::string& flag, const std::string& v);
// A non-negative decimal integer that fits 64 bits; else a UsageError naming the flag and the value.
uint64_t parse_u64(const std::string& flag, const std::string& v);

class Cli {
   public:
    // `usage`: the first lines of --help ("usage: bin/x [options] FILE...\nWhat it does.").
    explicit Cli(std::string usage) : usage_(std::move(usage)) {}

    // An option that takes a value refuses an empty one: "--init ''", or --init "$BASE" with BASE unset, would
    // read as not given and quietly change the run (random weights, no adapter, no validation). `empty_ok` where
    // '' means something of its own (bin/train --out '': write nothing; bin/generate --prompt '').
    void flag(const std::string& name, const std::string& help, bool* target);
    void option(const std::string& name, const std::string& metavar, const std::string& help, std::string* target,
                bool empty_ok = false);
    void option(const std::string& name, const std::string& metavar, const std::string& help, int* target, long lo,
                long hi);
    void option(const std::string& name, const std::string& metavar, const std::string& help, float* target,
                double lo, double hi);
    void option(const std::string& name, const std::string& metavar, const std::string& help, uint64_t* target);
    // Anything else: `shown` is the default printed by --help; `set` parses and stores (and may throw).
    void custom(const std::string& name, const std::string& metavar, const std::string& help, const std::string& shown,
                std::function<void(const std::string&)> set, bool empty_ok = false);

    // Parses argv. Returns false when --help was asked for. Non-option arguments go to `positional`
    // (an error when null). Accepts "--flag value" and "--flag=value".
    bool parse(int argc, char** argv, std::vector<std::string>* positional = nullptr) const;
    std::string help() const;

   private:
    std::string closest(const std::string& arg) const;  // the option within 2 edits of `arg`, or ""
    struct Opt {
        std::string name, metavar, help, shown;
        std::function<void(const std::string&)> set;
        bool empty_ok = false;
    };
    std::string usage_;
    std::vector<Opt> opts_;
};

}  // namespace tune
