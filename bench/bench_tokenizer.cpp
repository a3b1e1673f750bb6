// Throughput of the GPT-2 tokenizer on one core, in bytes of text per second.
//
// Text: a few MB of real English-ish prose and code from the machine (/usr/share/common-licenses,
// /usr/share/doc), concatenated. Run from the repository root (it loads data/gpt2):
//   make build/bench/bench_tokenizer && ./build/bench/bench_tokenizer
//   BM_EncodeColdCache  a freshly loaded tokenizer each iteration: every word is merged once
//   BM_EncodeWarmCache  the cache already holds the corpus's words: mostly regex + cache lookups
//   BM_Decode           ids of the corpus back to bytes
#include <benchmark/benchmark.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace {

constexpr size_t kCorpusBytes = 4 << 20;

// Uncompressed text files, sorted by path, up to kCorpusBytes in all.
const std::string& corpus() {
    static const std::string text = [] {
        std::vector<fs::path> found;
        for (const char* root : {"/usr/share/common-licenses", "/usr/share/doc"}) {
            std::error_code ec;
            for (fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
                 it != end; it.increment(ec)) {
                std::error_code ec2;
                if (it->is_symlink(ec2) || !it->is_regular_file(ec2)) continue;
                std::string ext = it->path().extension().string();
                if (ext == ".gz" || ext == ".xz" || ext == ".bz2" || ext == ".png") continue;
                uintmax_t size = it->file_size(ec2);
                if (!ec2 && size > 0 && size <= 200000) found.push_back(it->path());
            }
        }
        std::sort(found.begin(), found.end());
        std::string all;
        for (const fs::path& p : found) {
            std::ifstream f(p, std::ios::binary);
            std::ostringstream ss;
            ss << f.rdbuf();
            if (all.size() + ss.str().size() > kCorpusBytes) continue;
            all += ss.str();
        }
        return all;
    }();
    return text;
}

bool have_corpus(benchmark::State& state) {
    if (corpus().size() >= (1u << 20)) return true;
    state.SkipWithError("less than 1 MB of text under /usr/share/common-licenses and /usr/share/doc");
    return false;
}

void BM_EncodeColdCache(benchmark::State& state) {
    if (!have_corpus(state)) return;
    size_t tokens = 0;
    for (auto _ : state) {
        state.PauseTiming();
        tune::Tokenizer tok = tune::Tokenizer::load("data/gpt2");
        state.ResumeTiming();
        std::vector<int32_t> ids = tok.encode(corpus());
        benchmark::DoNotOptimize(ids.data());
        tokens = ids.size();
        state.PauseTiming();  // the destructor frees the cache: not encoding work
        {
            tune::Tokenizer gone = std::move(tok);
        }
        state.ResumeTiming();
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus().size()));
    state.counters["tokens"] = static_cast<double>(tokens);
    state.counters["bytes/token"] = static_cast<double>(corpus().size()) / static_cast<double>(tokens);
}
BENCHMARK(BM_EncodeColdCache)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_EncodeWarmCache(benchmark::State& state) {
    if (!have_corpus(state)) return;
    const tune::Tokenizer tok = tune::Tokenizer::load("data/gpt2");
    tok.encode(corpus());  // fill the cache
    for (auto _ : state) {
        std::vector<int32_t> ids = tok.encode(corpus());
        benchmark::DoNotOptimize(ids.data());
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_EncodeWarmCache)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_Decode(benchmark::State& state) {
    if (!have_corpus(state)) return;
    const tune::Tokenizer tok = tune::Tokenizer::load("data/gpt2");
    const std::vector<int32_t> ids = tok.encode(corpus());
    for (auto _ : state) {
        std::string text = tok.decode(ids);
        benchmark::DoNotOptimize(text.data());
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
