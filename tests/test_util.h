// Helpers shared by the test suites: random fills, NaN poisoning, one tolerance check that prints the
// first mismatching elements, and central finite differences in double.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sys/wait.h>
#include <fstream>
#include <iterator>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/common.h"
#include "model/rng.h"

namespace tune::test {

inline std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
    Rng r(seed);
    std::vector<double> v(n);
    for (auto& x : v) x = r.normal() * scale;
    return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
    return std::vector<T>(v.begin(), v.end());
}

template <class T>
void poison(std::vector<T>& v) {
    std::fill(v.begin(), v.end(), std::numeric_limits<T>::quiet_NaN());
}

// Checks ||got - want||_inf / max(||want||_inf, floor) <= tol. On failure prints the first few
// elements that exceed the tolerance with both values.
template <class A, class B>
::testing::AssertionResult near_rel(const std::vector<A>& got, const std::vector<B>& want, double tol,
                                    double floor = 1e-30) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
    double maxw = 0, maxd = 0;
    for (size_t i = 0; i < want.size(); i++) maxw = std::max(maxw, std::fabs((double)want[i]));
    const double denom = std::max(maxw, floor);
    for (size_t i = 0; i < got.size(); i++) {
        double d = std::fabs((double)got[i] - (double)want[i]);
        if (std::isnan(d)) d = INFINITY;
        maxd = std::max(maxd, d);
    }
    if (maxd / denom <= tol) return ::testing::AssertionSuccess();
    auto f = ::testing::AssertionFailure();
    f << "max |got - want| / max|want| = " << maxd / denom << " > " << tol << " (max|want| = " << maxw << ")";
    int shown = 0;
    for (size_t i = 0; i < got.size() && shown < 5; i++) {
        double d = std::fabs((double)got[i] - (double)want[i]);
        if (!(d / denom <= tol)) {
            f << "\n  [" << i << "] got " << (double)got[i] << " want " << (double)want[i];
            shown++;
        }
    }
    return f;
}

// Central difference of f with respect to x[i], for every i (or the given indices), in double.
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& f, double h = 1e-5) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        const double old = x[i];
        x[i] = old + h;
        const double fp = f();
        x[i] = old - h;
        const double fm = f();
        x[i] = old;
        g[i] = (fp - fm) / (2 * h);
    }
    return g;
}

// Relative tolerance of analytic gradients against finite differences in double.
constexpr double kGradTol = 1e-6;

inline std::vector<double> sub(const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> r(a.size());
    for (size_t i = 0; i < a.size(); i++) r[i] = a[i] - b[i];
    return r;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// A fresh directory under $TMPDIR (or /tmp) for one test's files, removed with everything in it at
// scope exit.
class TempDir {
   public:
    explicit TempDir(const std::string& tag = "tmp") {
        const char* base = std::getenv("TMPDIR");
        std::string templ = std::string(base && *base ? base : "/tmp") + "/tune_test_" + tag + "_XXXXXX";
        if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed for " + templ);
        path_ = templ;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string file(const std::string& name) const { return path_ + "/" + name; }
    const std::string& path() const { return path_; }

   private:
    std::string path_;
};

// Sets environment variables for its lifetime, restoring what was there.
class EnvVars {
   public:
    explicit EnvVars(std::vector<std::pair<std::string, const char*>> vars) {
        for (auto& [k, v] : vars) {
            const char* old = std::getenv(k.c_str());
            saved_.push_back({k, old ? std::optional<std::string>(old) : std::nullopt});
            if (v)
                setenv(k.c_str(), v, 1);
            else
                unsetenv(k.c_str());
        }
    }
    EnvVars(const std::string& name, const char* value)  // one variable; a null value unsets it
        : EnvVars(std::vector<std::pair<std::string, const char*>>{{name, value}}) {}
    EnvVars(const EnvVars&) = delete;
    EnvVars& operator=(const EnvVars&) = delete;
    ~EnvVars() {
        for (auto& [k, v] : saved_) {
            if (v)
                setenv(k.c_str(), v->c_str(), 1);
            else
                unsetenv(k.c_str());
        }
    }

   private:
    std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

inline std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline void spit(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), (std::streamsize)bytes.size());
}

// Runs `fn` and returns the message of the tune::Error (or subclass) it throws; "" if it throws none.
template <class F>
std::string error_of(F&& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

// The same for a refusal of the command line (tune::UsageError: exit status 2); another error is returned as
// "not a usage error: MESSAGE", so a check of the message fails.
template <class F>
std::string usage_error_of(F&& fn) {
    try {
        fn();
    } catch (const UsageError& e) {
        return e.what();
    } catch (const std::exception& e) {
        return std::string("not a usage error: ") + e.what();
    }
    return "";
}

}  // namespace tune::test

namespace tune::test {

struct CmdResult {
    int rc = -1;
    std::string out;  // stdout and stderr together
};

// Runs a shell command from the repository root (where the tests run) and captures its output.
inline CmdResult run_cmd(const std::string& cmd) {
    CmdResult r;
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    int status = pclose(p);
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

// Path of a tool for a test that runs it on the CUDA backend: bin/<name>, or $TUNE_TEST_BIN/<name> where the
// CUDA emulator's build (`make test-emu`) points it at tools linked against the emulator.
inline std::string cuda_tool(const std::string& name) {
    const char* dir = std::getenv("TUNE_TEST_BIN");
    return std::string(dir && *dir ? dir : "bin") + "/" + name;
}

}  // namespace tune::test
