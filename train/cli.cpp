#include "train/cli.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "data/fileio.h"
#include "kernels/common.h"

namespace tune {

bool split_inline_value(std::string* arg, std::string* value) {
    const size_t eq = arg->find('=');
    if (arg->rfind("--", 0) != 0 || eq == std::string::npos) return false;
    *value = arg->substr(eq + 1);
    arg->resize(eq);
    return true;
}

int parse_int(const std::string& flag, const std::string& v, long lo, long hi) {
    errno = 0;
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || errno) throw UsageError(flag + ": expected an integer, got '" + v + "'");
    if (x < lo || x > hi)
        throw UsageError(flag + ": " + v + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return (int)x;
}

double parse_double(const std::string& flag, const std::string& v, double lo, double hi) {
    errno = 0;
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end || errno || !std::isfinite(x)) throw UsageError(flag + ": expected a number, got '" + v + "'");
    if (x < lo || x > hi) {
        std::ostringstream s;
        s << std::setprecision(9) << flag << ": " << v << " is out of range [" << lo << ", " << hi << "]";
        throw UsageError(s.str());
    }
    return x;
}

int run_tool(const char* name, const std::function<int()>& body, bool output_is_product) {
    // Line-buffered even into a pipe or file, so a log holds stdout's lines and stderr's messages in the order
    // they happened (an error after the lines that led to it).
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    try {
        const int rc = body();
        // Output lost to a full disk or a closed descriptor: the run failed, though every printf returned. The
        // reason is known only when this last flush fails (a failed write earlier leaves just the error flag).
        errno = 0;
        const bool flushed = std::fflush(stdout) == 0;
        if (output_is_product && rc == 0 && (!flushed || std::ferror(stdout)))
            throw Error(std::string("cannot write standard output") +
                        (flushed ? " (a write to it failed: a full disk, or a closed descriptor?)"
                                 : std::string(": ") + std::strerror(errno)));
        return rc;
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%s: %s\n", name, e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: error: %s\n", name, e.what());
        return 1;
    }
}

std::vector<std::string> split_list(const std::string& v) {
    std::vector<std::string> out;
    std::stringstream ss(v);
    for (std::string item; std::getline(ss, item, ',');)
        if (!item.empty()) out.push_back(item);
    return out;
}

std::string counted(size_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::vector<std::string> split_file_list(const std::string& flag, const std::string& v) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t comma = v.find(','); ; comma = v.find(',', start)) {
        const std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (item.empty())
            throw UsageError(flag + " '" + v + "': file " + std::to_string(out.size() + 1) + " of the list is empty " +
                             "(an unset variable? a comma too many?); give the files separated by single commas");
        out.push_back(item);
        if (comma == std::string::npos) return out;
        start = comma + 1;
    }
}

// The nearest of `path` and the folders above it that exists ("" when none does: a relative path's start, ".",
// always does).
static std::filesystem::path nearest_existing(const std::filesystem::path& path) {
    std::error_code ec;
    for (std::filesystem::path p = path; !p.empty(); p = p.parent_path()) {
        if (std::filesystem::exists(p, ec)) return p;
        if (p == p.parent_path()) break;  // "/"
    }
    return ".";
}

void require_path(const std::string& flag, const std::string& path) {
    std::error_code ec;  // a name the system refuses (a component past 255 bytes) does not exist either
    if (path.empty() || std::filesystem::exists(path, ec)) return;
    // "a.txt/x" where a.txt is a file: that is what to fix, not a missing name.
    const std::filesystem::path there = nearest_existing(path);
    if (there != "." && !std::filesystem::is_directory(there, ec))
        throw UsageError(flag + ": " + path + ": " + there.string() + " is a file, not a directory");
    throw UsageError(flag + ": no such file or directory: " + path);
}

void require_stdin(const std::string& flag) {
    struct stat in {};
    if (::fstat(STDIN_FILENO, &in) != 0)
        throw UsageError(flag + " -: standard input is closed; give the input on it, or a file");
    if (S_ISDIR(in.st_mode)) throw UsageError(flag + " -: standard input is a directory, not a file");
}

void require_file(const std::string& flag, const std::string& path, const char* what) {
    require_path(flag, path);
    std::error_code ec;
    if (!path.empty() && std::filesystem::is_directory(path, ec))
        throw UsageError(flag + ": " + path + ": is a directory, not a file (expected " + what + ")");
}

void require_output_dir(const std::string& flag, const std::string& path) {
    if (path.empty()) return;
    std::error_code ec;
    if (std::filesystem::is_symlink(path, ec) && !std::filesystem::exists(path, ec))  // mkdir says "File exists"
        throw UsageError(flag + " " + path + ": is a symbolic link to " +
                         std::filesystem::read_symlink(path, ec).string() + ", which does not exist: make that "
                         "directory first, or give another");
    // Made with the folders above it, which cannot be made below a file: said now, not after the weights are read.
    const std::filesystem::path there = nearest_existing(path);
    if (!std::filesystem::is_directory(there, ec))
        throw UsageError(flag + " " + path + ": " + (there == path ? std::string("is") : there.string() + " is") +
                         " a file, not a directory");
}

void require_output_file(const std::string& flag, const std::string& path, bool folder_made_first) {
    if (path.empty()) return;
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw UsageError(flag + " " + path + ": is a directory, not a file");
    if (const std::string why = not_a_file_to_replace(path); !why.empty())
        throw UsageError(flag + " " + path + ": is " + why);
    if (folder_made_first) return require_output_dir(flag, path);  // nothing above it may be a file
    // Written into a folder that must be there already: a typo in it is said now, not after the weights are read.
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    if (!std::filesystem::exists(dir, ec))
        throw UsageError(flag + " " + path + ": the directory " + dir.string() + " does not exist");
    if (!std::filesystem::is_directory(dir, ec))
        throw UsageError(flag + " " + path + ": " + dir.string() + " is a file, not a directory");
}

void catch_stop_signals(void (*handler)(int)) {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
        struct sigaction now {};
        if (sigaction(sig, nullptr, &now) == 0 && now.sa_handler == SIG_IGN) continue;
        struct sigaction act {};
        act.sa_handler = handler;
        act.sa_flags = SA_RESTART;  // as std::signal sets it: a read or write the signal interrupts goes on
        sigemptyset(&act.sa_mask);
        sigaction(sig, &act, nullptr);
    }
}

static std::string show(double v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

void Cli::flag(const std::string& name, const std::string& help, bool* target) {
    opts_.push_back({name, "", help, *target ? "on" : "off", [target](const std::string&) { *target = true; }});
}

void Cli::option(const std::string& name, const std::string& metavar, const std::string& help, std::string* target,
                 bool empty_ok) {
    opts_.push_back({name, metavar, help, target->empty() ? "(none)" : *target,
                     [target](const std::string& v) { *target = v; }, empty_ok});
}

void Cli::option(const std::string& name, const std::string& metavar, const std::string& help, int* target, long lo,
                 long hi) {
    opts_.push_back({name, metavar, help, std::to_string(*target),
                     [=](const std::string& v) { *target = parse_int(name, v, lo, hi); }});
}

void Cli::option(const std::string& name, const std::string& metavar, const std::string& help, float* target,
                 double lo, double hi) {
    opts_.push_back({name, metavar, help, show(*target),
                     [=](const std::string& v) { *target = (float)parse_double(name, v, lo, hi); }});
}

uint64_t parse_u64(const std::string& flag, const std::string& v) {
    errno = 0;
    char* end = nullptr;
    const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end || v[0] == '-' || (errno && errno != ERANGE))
        throw UsageError(flag + ": expected a non-negative integer, got '" + v + "'");
    if (errno == ERANGE) throw UsageError(flag + ": " + v + " is out of range [0, 18446744073709551615]");
    return x;
}

void Cli::option(const std::string& name, const std::string& metavar, const std::string& help, uint64_t* target) {
    opts_.push_back({name, metavar, help, std::to_string(*target),
                     [=](const std::string& v) { *target = parse_u64(name, v); }});
}

void Cli::custom(const std::string& name, const std::string& metavar, const std::string& help,
                 const std::string& shown, std::function<void(const std::string&)> set, bool empty_ok) {
    opts_.push_back({name, metavar, help, shown, std::move(set), empty_ok});
}

// Edits (insert, delete, replace one character) from a to b: how far a typed flag is from a real one.
static size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); j++) row[j] = j;
    for (size_t i = 1; i <= a.size(); i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); j++) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

std::string Cli::closest(const std::string& arg) const {
    std::string best;
    size_t best_d = 3;  // more edits than 2 is another word, not a typo
    for (const Opt& o : opts_) {
        const size_t d = edit_distance(arg, o.name);
        if (d < best_d) best = o.name, best_d = d;
    }
    return best;
}

bool Cli::parse(int argc, char** argv, std::vector<std::string>* positional) const {
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i], value;
        if (arg == "--help" || arg == "-h") return false;
        if (arg.rfind("--", 0) != 0 || arg == "--") {
            if (!positional) throw UsageError("unexpected argument '" + arg + "' (see --help)");
            positional->push_back(arg);
            continue;
        }
        const bool has_inline = split_inline_value(&arg, &value);
        const Opt* opt = nullptr;
        for (const Opt& o : opts_)
            if (o.name == arg) opt = &o;
        if (!opt) {
            const std::string near = closest(arg);
            throw UsageError("unknown option '" + arg + "' (" + (near.empty() ? "" : "did you mean " + near + "? ") +
                             "see --help)");
        }
        if (opt->metavar.empty() && has_inline) throw UsageError(arg + ": takes no value");
        if (!opt->metavar.empty() && !has_inline) {
            if (i + 1 >= argc) throw UsageError(arg + ": missing value " + opt->metavar);
            value = argv[++i];
        }
        if (!opt->metavar.empty() && value.empty() && !opt->empty_ok)
            throw UsageError(arg + ": empty (an unset variable?); give " + opt->metavar);
        opt->set(value);
    }
    return true;
}

std::string Cli::help() const {
    std::ostringstream s;
    s << usage_ << "\n\noptions (default in brackets):\n";
    for (const Opt& o : opts_) {
        std::string left = "  " + o.name + (o.metavar.empty() ? "" : " " + o.metavar);
        s << left << std::string(left.size() < 30 ? 30 - left.size() : 1, ' ') << o.help << " [" << o.shown << "]\n";
    }
    s << "  --help                      this text\n";
    return s.str();
}

}  // namespace tune
