// Activation checkpointing on the GPU: for GPT-2 124M and GPT-2 XL (1558M) at T=1024, bf16, each
// --recompute mode's activation bytes per token (from the arena: exact), the device memory in use after a
// training step (cudaMemGetInfo: parameters, gradients, optimizer state, activations, workspaces), the
// largest micro-batch that trains, and the time of a training step (forward + backward + AdamW).
// Writes a JSON file and a markdown table for docs/scaling.md.
//
// Not a Google Benchmark: "the largest batch that fits" is found by trying to allocate and step, which is
// an experiment with outcomes, not a timing loop. The search starts from a guess made with the timed run's
// memory (each try builds a model and steps it, seconds for gpt2-xl: it must be a few tries, not a dozen).
// Exits 77 (skipped) without a GPU.
//
//   build/bench/bench_recompute [--models gpt2,gpt2-xl] [--modes none,selective,full] [--seq 1024]
//                               [--attention auto|cudnn|matmul] [--head-chunk 8192] [--json FILE]
//                               [--max-batch 1024] [--batch-slack 2]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/fileio.h"
#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/rng.h"
#include "train/cli.h"
#include "train/optimizer.h"

using namespace tune;

namespace {

size_t device_used() {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return total_b - free_b;
}

size_t device_free() {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return free_b;
}

struct Probe {
    bool fits = false;
    size_t act_bytes = 0, used = 0;
    size_t logits_bytes = 0;  // the LM head's logits buffer, part of act_bytes (fixed once B*T > --head-chunk)
    size_t avail = 0;  // device memory free before the model was built
    double step_ms = 0;
};

// The largest B <= max_batch that trains, searched outwards from `guess` in doubling steps and then bisected,
// to within `slack` sequences: the answer is [lo, hi), lo trained (or is 0: not even one sequence) and hi did
// not (or is max_batch + 1), hi - lo <= max(1, slack). Every try is an experiment that builds the model and
// steps it: a gpt2-xl step at B = 480 takes about 15 s on an H200, so the last few sequences of an exact answer
// would cost minutes for a digit nobody plans with.
struct BatchRange {
    int lo, hi;
};
template <class Fits>
BatchRange largest_batch(int guess, int max_batch, int slack, Fits fits) {
    guess = std::min(std::max(guess, 1), max_batch);
    const int first = std::max(1, slack);
    int lo = 0, hi = max_batch + 1;  // lo trained (or is 0), hi did not (or is past max_batch)
    if (fits(guess)) {
        lo = guess;
        for (int step = first; lo < max_batch; step *= 2) {
            const int b = std::min(lo + step, max_batch);
            if (!fits(b)) {
                hi = b;
                break;
            }
            lo = b;
        }
    } else {
        hi = guess;
        for (int step = first; hi > 1; step *= 2) {
            const int b = std::max(hi - step, 1);
            if (fits(b)) {
                lo = b;
                break;
            }
            hi = b;
        }
    }
    while (hi - lo > std::max(1, slack)) {
        const int mid = lo + (hi - lo) / 2;
        (fits(mid) ? lo : hi) = mid;
    }
    return {lo, hi};
}

// Builds the model and optimizer for B sequences and runs `steps` timed training steps after one warm-up.
Probe try_batch(const ModelConfig& cfg, Recompute mode, int B, int T, int steps, AttentionImpl attention,
                size_t head_chunk) {
    Probe p;
    try {
        CudaOptions co;
        co.attention = attention;
        auto be = make_cuda_backend(DType::bf16, co);
        const size_t base = device_used();
        p.avail = device_free();
        ModelOptions o;
        o.recompute = mode;
        o.head_chunk = head_chunk;
        GPT2 m(cfg, *be, B, T, nullptr, o);
        // Memory does not depend on the values, time does: tensor cores run zeros faster than real data (894 vs
        // 788 TFLOP/s in bf16 on the H200), so the timed run starts from GPT-2's random initialisation.
        if (steps > 0) m.init_random(1);
        AdamW opt(m, AdamWConfig{});
        Rng r(2);
        std::vector<int32_t> x((size_t)B * T), y((size_t)B * T);
        for (size_t i = 0; i < x.size(); i++) x[i] = (int32_t)r.below(cfg.vocab_size), y[i] = (int32_t)r.below(cfg.vocab_size);
        std::vector<float> w(x.size(), 1.0f);
        auto step = [&] {
            m.zero_grads();
            m.forward(x.data(), B, T, w.data());
            m.loss(y.data(), w.data(), 1.0f / (float)x.size(), true);
            m.backward();
            opt.step(1e-5f, 1.0f);
            be->synchronize();
        };
        step();
        const auto t0 = std::chrono::steady_clock::now();
        for (int s = 0; s < steps; s++) step();
        p.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
        p.act_bytes = m.act_bytes();
        p.logits_bytes = m.head_rows() * (size_t)cfg.padded_vocab_size * dtype_size(DType::bf16);
        p.used = device_used() - base;
        p.fits = true;
    } catch (const Error& e) {
        // Only running out of memory means "does not fit"; any other error (an illegal address is sticky and
        // would fail every later try) ends the program with its message.
        const std::string what = e.what();
        if (what.find("out of memory") == std::string::npos && what.find("ALLOC_FAILED") == std::string::npos)
            throw;
        cudaGetLastError();
    }
    return p;
}

}  // namespace

int main(int argc, char** argv) {
    return run_tool("bench_recompute", [&]() -> int {
        std::string models = "gpt2,gpt2-xl", json_path = "recompute.json", attention_name = "auto";
        std::string modes = "none,selective,full";
        int T = 1024, max_batch = 1024, timed_B = 8, head_chunk = 8192, slack_pct = 2;
        Cli cli("usage: build/bench/bench_recompute [options]\nMemory and time of each --recompute mode on the GPU.");
        cli.option("--models", "LIST", "comma-separated presets", &models);
        cli.option("--seq", "T", "sequence length", &T, 1, 1 << 20);
        cli.option("--max-batch", "B", "largest batch to try", &max_batch, 1, 1 << 20);
        cli.option("--timed-batch", "B", "batch of the timed steps", &timed_B, 1, 1 << 20);
        cli.option("--modes", "LIST", "comma-separated --recompute modes", &modes);
        cli.option("--batch-slack", "PCT", "largest batch to within this percentage (0: exact)", &slack_pct, 0, 100);
        cli.option("--attention", "KIND", "auto, cudnn or matmul (bin/train --attention)", &attention_name);
        cli.option("--head-chunk", "ROWS", "rows of logits kept at once, 0: all (bin/train --head-chunk)", &head_chunk, 0,
                   1 << 30);
        cli.option("--json", "FILE", "results", &json_path);
        if (!cli.parse(argc, argv)) {
            std::fputs(cli.help().c_str(), stdout);
            return 0;
        }
        const AttentionImpl attention = parse_attention_impl(attention_name);
        std::vector<Recompute> mode_list;
        for (const std::string& m : split_list(modes)) mode_list.push_back(parse_recompute(m));
        if (mode_list.empty()) throw UsageError("--modes: no mode given");
        if (cuda_device_count() == 0) {
            std::printf("no CUDA GPU: skipped\n");
            return 77;
        }
        nlohmann::json out = nlohmann::json::array();
        std::ostringstream md;
        {
            CudaOptions co;
            co.attention = attention;
            auto probe = make_cuda_backend(DType::bf16, co);
            const ModelConfig first = preset_config(models.substr(0, models.find(',')));
            probe->attention_saved_elems(1, T, first.n_embd, first.n_head);  // decides the path
            md << "Attention: " << probe->attention_path(first.n_embd, first.n_head) << ".\n\n";
        }
        md << "Activations per token without the LM head's logits; "
           << (head_chunk ? "they are one buffer of " + std::to_string(head_chunk) + " rows (--head-chunk), " +
                                std::to_string(head_chunk * 50304ull * 2 / 1048576) + " MiB at Vp = 50304, counted in the "
                                "memory in use."
                          : std::string("--head-chunk 0 keeps them for every token (Vp values each): add them.")) << "\n\n";
        md << "| Model | --recompute | Activations / token | Device memory in use, B=" << timed_B
           << " | Largest batch (T=" << T << ") | Step time, B=" << timed_B << " | vs none |\n"
           << "|---|---|---:|---:|---:|---:|---:|\n";
        std::stringstream ss(models);
        for (std::string name; std::getline(ss, name, ',');) {
            const ModelConfig cfg = preset_config(name);
            double none_ms = 0;
            for (Recompute mode : mode_list) {
                const Probe timed = try_batch(cfg, mode, timed_B, T, 3, attention, (size_t)head_chunk);
                // Largest batch: first guessed from the timed run (activations grow with B, the rest does not,
                // roughly), then found by trying batches around the guess: a few tries instead of a dozen.
                int guess = 1;
                // The logits grow with B only up to --head-chunk rows.
                const double logits_row = (double)cfg.padded_vocab_size * dtype_size(DType::bf16);
                const double per_seq = ((double)timed.act_bytes - (double)timed.logits_bytes) / timed_B +
                                       (head_chunk ? 0.0 : T * logits_row);
                if (timed.fits && timed.act_bytes > 0 && timed.avail > timed.used) {
                    const double fixed = (double)timed.used - (double)timed.act_bytes +
                                         (head_chunk ? (double)head_chunk * logits_row : 0.0);
                    guess = (int)std::min<double>(max_batch, std::max(1.0, ((double)timed.avail - fixed) / per_seq));
                }
                const int slack = guess * slack_pct / 100;
                const BatchRange range = largest_batch(guess, max_batch, slack, [&](int b) {
                    return try_batch(cfg, mode, b, T, 0, attention, (size_t)head_chunk).fits;
                });
                const int lo = range.lo;
                if (mode == Recompute::none) none_ms = timed.step_ms;
                const double per_token = timed.fits ? ((double)timed.act_bytes - (double)timed.logits_bytes) /
                                                          ((double)timed_B * T)
                                                    : 0;
                const bool capped = lo == max_batch;  // fits at the largest batch tried: more may
                std::string largest = (capped ? "≥ " : "") + std::to_string(lo);
                if (!capped && range.hi > lo + 1) largest += " (" + std::to_string(range.hi) + " did not)";
                char vs[32] = "n/a";  // "vs none" needs the none row, which --modes may leave out
                if (none_ms > 0) std::snprintf(vs, sizeof vs, "%.2fx", timed.step_ms / none_ms);
                char row[320];
                std::snprintf(row, sizeof row, "| %s | %s | %.1f KiB | %.2f GiB | %s | %.1f ms | %s |\n", name.c_str(),
                              recompute_name(mode), per_token / 1024, timed.used / 1073741824.0, largest.c_str(),
                              timed.step_ms, vs);
                md << row;
                std::fputs(row, stdout);
                std::fflush(stdout);
                out.push_back({{"model", name}, {"recompute", recompute_name(mode)}, {"act_bytes_per_token", per_token},
                               {"used_bytes", timed.used}, {"fits", timed.fits}, {"max_batch", lo}, {"failed_batch", range.hi}, {"capped", capped},
                               {"step_ms", timed.step_ms}, {"batch", timed_B}, {"seq", T}});
                // Written after every row: a run cut short by a time limit keeps what it measured.
                const std::string j = nlohmann::json{{"results", out}, {"table", md.str()}}.dump(2) + "\n";
                write_file_atomic(json_path, j.data(), j.size());
            }
        }
        std::printf("\n%s", md.str().c_str());
        return 0;
    });
}
