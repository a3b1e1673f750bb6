// A training fixture for the CPU backend: learnable shards over V=37, a starting checkpoint, TrainArgs for
// a short run, and the losses a run wrote to metrics.jsonl.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/shard.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace tune::test {

// A learnable token stream over V=37: runs of consecutive ids (mod V) with random starts.
inline std::vector<int32_t> pattern_tokens(size_t n, uint64_t seed) {
    Rng r(seed);
    std::vector<int32_t> t;
    while (t.size() < n) {
        int32_t s = (int32_t)r.below(37);
        for (int k = 0; k < 6 && t.size() < n; k++) t.push_back((s + k) % 37);
    }
    return t;
}

// The same run continued from its own resume.ckpt, as `bin/train ... --resume OUT/resume.ckpt` (no --init: the
// checkpoint knows it; no --halt-at: to the end).
inline TrainArgs resuming(TrainArgs a) {
    a.init.clear();
    a.halt_at = 0;
    a.resume = a.out_dir + "/resume.ckpt";
    return a;
}

// Every parameter tensor of a trained model, by name (master values: the checkpoint's).
inline std::map<std::string, std::vector<float>> tensors_of(const std::string& ckpt) {
    const ModelConfig c = checkpoint_config(ckpt);
    auto be = make_cpu_backend(DType::f32);
    ModelOptions o;
    o.peft = checkpoint_peft(ckpt);
    GPT2 m(c, *be, 1, 1, nullptr, o);
    load_checkpoint(ckpt, m, nullptr, nullptr);
    std::map<std::string, std::vector<float>> out;
    for (size_t i = 0; i < m.params().table().size(); i++) {
        std::vector<float> v(m.params().table()[i].numel);
        be->download(v.data(), m.params().ptr(i), DType::f32, v.size());
        out[m.params().table()[i].name] = v;
    }
    return out;
}

struct TrainerFixture : ::testing::Test {
    void SetUp() override {
        dir = tmp.path();
        write_shard(dir + "/train.bin", pattern_tokens(4000, 1), nullptr, 37);
        write_shard(dir + "/val.bin", pattern_tokens(800, 2), nullptr, 37);
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
        m.init_random(3);
        save_checkpoint(dir + "/init.ckpt", m, nullptr, nullptr);
    }
    TrainArgs args(const std::string& out) const {
        TrainArgs a;
        a.device = "cpu";
        a.init = dir + "/init.ckpt";
        a.train_data = {dir + "/train.bin"};
        a.val_data = {dir + "/val.bin"};
        a.batch = 3;
        a.seq = 13;
        a.grad_accum = 2;
        a.steps = 8;
        a.sched.lr = 3e-3f;
        a.sched.warmup = 2;
        a.val_every = 4;
        a.val_batches = 2;
        a.out_dir = dir + "/" + out;
        a.overwrite = true;  // tests run again in their directories; the refusal has its own (TrainCli)
        a.quiet = true;
        return a;
    }
    // The values of `field` in the run's metrics.jsonl, in order.
    static std::vector<double> metric(const std::string& run_dir, const char* field) {
        std::vector<double> out;
        std::istringstream in(slurp(run_dir + "/metrics.jsonl"));
        std::string line;
        while (std::getline(in, line)) {
            auto j = nlohmann::json::parse(line);
            if (j.contains(field)) out.push_back(j[field].is_null() ? NAN : j[field].get<double>());
        }
        return out;
    }
    static std::vector<double> losses(const std::string& run_dir) {
        std::vector<double> out;
        std::istringstream in(slurp(run_dir + "/metrics.jsonl"));
        std::string line;
        while (std::getline(in, line)) {
            auto j = nlohmann::json::parse(line);
            if (j.contains("loss")) out.push_back(j["loss"].is_null() ? NAN : j["loss"].get<double>());
        }
        return out;
    }
    TempDir tmp{"trainer"};
    std::string dir;
};

}  // namespace tune::test
