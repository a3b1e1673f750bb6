// bin/tokenize: GPT-2 token ids of a text file, or (--decode) the text of a list of token ids.
// Exit status: 0 ok, 1 bad data (vocabulary files, ids), 2 bad command line (flags, input file).
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "data/fileio.h"
#include "data/tokenizer.h"
#include "kernels/common.h"
#include "train/cli.h"

namespace {

constexpr const char* kUsage =
    "usage: bin/tokenize [--vocab DIR] [--] [FILE]\n"
    "       bin/tokenize --decode [--vocab DIR] [--] [FILE]\n"
    "\n"
    "Encode (default): reads FILE (any bytes; UTF-8 text normally) and prints its GPT-2 token ids on\n"
    "one line, separated by single spaces. The text \"<|endoftext|>\" is encoded as ordinary text;\n"
    "bytes that are not valid UTF-8 each become their one-byte token.\n"
    "Decode (--decode): reads token ids separated by spaces, tabs or newlines, and writes the bytes\n"
    "they stand for, with nothing added.\n"
    "FILE '-' or no FILE reads standard input; after --, FILE is a file even if it starts with '-'.\n"
    "\n"
    "options:\n"
    "  --decode     ids -> text instead of text -> ids\n"
    "  --vocab DIR  directory holding encoder.json and vocab.bpe (default: data/gpt2)\n"
    "  -h, --help   print this help and exit\n"
    "\n"
    "exit status: 0 ok; 1 bad data (vocabulary files, an id that is not an integer in 0..V-1);\n"
    "2 bad command line (unknown option, missing value, input file that cannot be read).\n";

struct Args {
    bool decode = false;
    std::string vocab = tune::kDefaultVocab;
    std::string input = "-";
    bool help = false;  // --help or -h: print the usage and stop there, as the other tools do
};

Args parse_args(int argc, char** argv) {
    Args a;
    bool have_input = false, options_done = false;  // after "--" every argument is the input, "-h" included
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        const bool option = !options_done && arg.size() > 1 && arg[0] == '-';
        if (option && arg == "--") {
            options_done = true;
        } else if (option && (arg == "--help" || arg == "-h")) {  // in order: an unknown option before it is refused
            a.help = true;
            return a;
        } else if (option && arg == "--decode") {
            a.decode = true;
        } else if (option && arg == "--vocab") {
            if (i + 1 >= argc) throw tune::UsageError("--vocab needs a directory (e.g. --vocab data/gpt2)");
            a.vocab = argv[++i];
        } else if (option && arg.substr(0, 8) == "--vocab=") {
            a.vocab = std::string(arg.substr(8));
        } else if (option) {
            throw tune::UsageError("unknown option '" + std::string(arg) + "' (see bin/tokenize --help)");
        } else {
            if (arg.empty())
                throw tune::UsageError("the input file is '' (an unset variable?); give a file, or - for standard "
                                       "input");
            if (have_input)
                throw tune::UsageError("one input file at most, got '" + a.input + "' and '" + std::string(arg) + "'");
            a.input = std::string(arg);
            have_input = true;
        }
    }
    return a;
}

// Whole input as bytes. A file that cannot be opened is a command-line error (exit 2).
std::string read_input(const std::string& path) {
    FILE* f = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
    if (f == nullptr) throw tune::UsageError("cannot open input file '" + path + "': " + std::strerror(errno));
    std::string data;
    char buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, got);
    bool failed = std::ferror(f) != 0;
    int err = errno;
    if (f != stdin) std::fclose(f);
    if (failed) throw tune::UsageError("cannot read input file '" + path + "': " + std::strerror(err));
    return data;
}

void write_all(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size() || std::fflush(stdout) != 0)
        throw tune::Error(std::string("cannot write standard output: ") + std::strerror(errno));
}

// An item as a message shows it: its first 32 bytes, quoted with escapes ("7\x00\x01"), so that a binary file
// given to --decode is named by what it holds, not cut at its first NUL.
std::string show(std::string_view s) {
    constexpr size_t kMax = 32;
    const std::vector<uint8_t> bytes(s.begin(), s.end());
    return tune::shown_bytes(bytes, kMax) + (s.size() > kMax ? "..." : "");
}

// Ids separated by ASCII whitespace; each must be a decimal integer in [0, V).
std::vector<int32_t> parse_ids(const std::string& text, const std::string& name, int vocab_size) {
    std::vector<int32_t> ids;
    const char* p = text.data();
    const char* end = p + text.size();
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
    while (true) {
        while (p < end && is_space(*p)) ++p;
        if (p == end) break;
        const char* q = p;
        while (q < end && !is_space(*q)) ++q;
        std::string_view item(p, q - p);
        long long v = 0;
        auto [stop, ec] = std::from_chars(p, q, v);
        const std::string where = name + ": id #" + std::to_string(ids.size() + 1) + " " + show(item);
        if (ec == std::errc::result_out_of_range || (ec == std::errc() && stop == q && (v < 0 || v >= vocab_size)))
            throw tune::Error(where + " is out of range: ids are 0.." + std::to_string(vocab_size - 1));
        if (ec != std::errc() || stop != q) throw tune::Error(where + " is not an integer token id");
        ids.push_back(static_cast<int32_t>(v));
        p = q;
    }
    return ids;
}

std::string format_ids(const std::vector<int32_t>& ids) {
    std::string out;
    out.reserve(ids.size() * 6 + 1);
    char buf[16];
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i > 0) out.push_back(' ');
        auto [stop, ec] = std::to_chars(buf, buf + sizeof buf, ids[i]);
        out.append(buf, stop);
    }
    out.push_back('\n');
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    return tune::run_tool("tokenize", [&] {
        Args args = parse_args(argc, argv);
        if (args.help) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        std::string input = read_input(args.input);
        tune::Tokenizer tok = tune::Tokenizer::load(args.vocab);
        if (args.decode) {
            std::string name = args.input == "-" ? "<stdin>" : args.input;
            write_all(tok.decode(parse_ids(input, name, tok.vocab_size())));
        } else {
            write_all(format_ids(tok.encode(input)));
        }
        return 0;
    });
}
