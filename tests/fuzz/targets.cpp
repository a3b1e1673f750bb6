#include "tests/fuzz/targets.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "data/fileio.h"
#include "data/prepare.h"
#include "data/safetensors.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/common.h"
#include "model/config.h"
#include "model/gpt2.h"
#include "model/hf_gpt2.h"
#include "model/llmc.h"
#include "model/rng.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "train/args.h"
#include "train/eval.h"
#include "train/fisher.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/roll_call.h"

namespace tune::fuzz {

namespace {

// A model read from the bytes is built only when it is this small: a header may declare a model of any size, and
// allocating it is not what is under test (a tune.cu checkpoint's tensors are checked against it only as they load).
constexpr size_t kMaxParams = size_t(1) << 20;
// Tensors read in full only up to this size.
constexpr uint64_t kMaxTensorBytes = uint64_t(1) << 24;

// This process's scratch folder, removed at exit (left behind after a crash, with the input in it).
struct Scratch {
    std::string dir;
    Scratch() {
        const char* base = std::getenv("TMPDIR");
        std::string templ = std::string(base && *base ? base : "/tmp") + "/tune_fuzz_XXXXXX";
        if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed for " + templ);
        dir = templ;
    }
    ~Scratch() {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};
const std::string& scratch() {
    static Scratch s;
    return s.dir;
}

// Writes the bytes to scratch()/name (a subfolder is created) and returns the path. Not write_file_atomic: its
// fsync would cost more than the reader under test.
std::string put(const std::string& name, const void* data, size_t n) {
    const std::string path = scratch() + "/" + name;
    make_dirs(directory_of(path));
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(static_cast<const char*>(data), (std::streamsize)n);
    if (!f.flush()) throw std::runtime_error("cannot write " + path);
    return path;
}

std::string slurp(const std::string& path) {
    const std::vector<uint8_t> b = read_file_bytes(path);
    return std::string(b.begin(), b.end());
}

thread_local std::string refusal;

template <class F>
Outcome refused_on_error(F&& f) {
    try {
        f();
        return Outcome::accepted;
    } catch (const Error& e) {
        refusal = e.what();
        return Outcome::refused;
    }
}

Outcome refused_because(const std::string& why) {
    refusal = why;
    return Outcome::refused;
}

void require(bool ok, const std::string& what) {
    if (!ok) throw Violation(what);
}

const Tokenizer& tokenizer() {
    static const Tokenizer tok = Tokenizer::load("data/gpt2");
    return tok;
}

Backend& cpu() {
    static const std::unique_ptr<Backend> be = make_cpu_backend(DType::f32);
    return *be;
}

// L=1, NH=2, C=8, V=37, maxT=6: seeds of a few KB, which mutate fast.
ModelConfig seed_config() {
    ModelConfig c;
    c.n_layer = 1;
    c.n_head = 2;
    c.n_embd = 8;
    c.vocab_size = 37;
    c.padded_vocab_size = pad_vocab(37);
    c.block_size = 6;
    return c;
}

PeftConfig seed_peft() {
    PeftConfig p;
    p.lora_rank = 2;
    p.lora_targets = kLoraAll;
    p.virt = Virtual::prompt;
    p.n_virtual = 2;
    return p;
}

Trainable frozen_base(const ModelConfig& c) {
    Trainable t;
    t.tensor.assign(num_base_tensors(c), false);
    return t;
}

// Whether to build the model a file's header declares (see kMaxParams), LoRA and virtual tokens included.
bool small_enough(const ModelConfig& c, const PeftConfig& p) {
    return num_parameters(c) <= kMaxParams && gpt2_param_table(c, p).total() <= kMaxParams;
}

// What every loader promises of weights it accepted: each is a finite number (model/weights.h).
void require_finite_params(GPT2& m) {
    const Arena& a = m.params();
    for (size_t i = 0; i < a.table().size(); i++) {
        std::vector<float> v(a.table()[i].numel);
        m.backend().download(v.data(), a.ptr(i), a.dtype(), v.size());
        for (float x : v) require(std::isfinite(x), "parameter '" + a.table()[i].name + "' holds " + std::to_string(x));
    }
}

// Reads the config the weights at `path` declare (any format model/weights.h reads: a Hugging Face directory too)
// and, when small enough, builds that model and loads them.
void load_declared_weights(const std::string& path) {
    const ModelConfig c = weights_config(path);
    if (!small_enough(c, PeftConfig{})) return;
    GPT2 m(c, cpu(), 1, 1);
    load_weights(path, m);
    require_finite_params(m);
}

// One training step's gradients in the model, so a resume checkpoint's moments are not zeros.
void one_backward(GPT2& m, uint64_t seed) {
    Rng r(seed);
    const int T = 4;
    std::vector<int32_t> x(T), y(T);
    const std::vector<float> w(T, 1.0f);
    for (int i = 0; i < T; i++) x[i] = (int32_t)r.below(37), y[i] = (int32_t)r.below(37);
    m.zero_grads();
    m.forward(x.data(), 1, T, w.data());
    m.loss(y.data(), w.data(), 1.0f / T, true);
    m.backward();
}

// ---- safetensors: SafetensorsFile (Hugging Face weights, Fisher files, anything in the format) ----

Outcome run_safetensors(const uint8_t* d, size_t n) {
    const std::string p = put("st/x.safetensors", d, n);
    return refused_on_error([&] {
        SafetensorsFile f(p);
        for (const SafetensorsTensorInfo& t : f.tensors()) {
            require(f.find(t.name) == &f.at(t.name), "find and at disagree on '" + t.name + "'");
            if (t.nbytes() > kMaxTensorBytes) continue;
            require(f.read_bytes(t.name).size() == t.nbytes(), "read_bytes of '" + t.name + "' is not nbytes()");
            const SafetensorsDtype k = t.dtype;
            if (k == SafetensorsDtype::F32 || k == SafetensorsDtype::BF16 || k == SafetensorsDtype::F16 ||
                k == SafetensorsDtype::F64)
                require(f.read_f32(t.name).size() == t.numel(), "read_f32 of '" + t.name + "' is not numel()");
        }
    });
}

std::vector<std::string> seeds_safetensors() {
    std::vector<std::string> out;
    const std::vector<float> f32 = {1.5f, -2.0f, 0.25f, 3.0f, -0.0f, 7.0f};
    const std::vector<uint16_t> half = {0x3c00, 0xc000, 0x7c00};
    const std::vector<double> f64 = {0.1, -1e300};
    const std::vector<uint8_t> u8 = {1, 2, 3, 4, 5};
    SafetensorsWriter w;
    w.add("a.weight", SafetensorsDtype::F32, {2, 3}, f32.data(), f32.size() * 4);
    w.add("b", SafetensorsDtype::BF16, {3}, half.data(), half.size() * 2);
    w.add("c", SafetensorsDtype::F16, {1, 3}, half.data(), half.size() * 2);
    w.add("d", SafetensorsDtype::F64, {2}, f64.data(), f64.size() * 8);
    w.add("e", SafetensorsDtype::U8, {5}, u8.data(), u8.size());
    w.add("scalar", SafetensorsDtype::F32, {}, f32.data(), 4);
    w.add("empty", SafetensorsDtype::F32, {0, 4}, f32.data(), 0);
    w.set_metadata("format", "pt");
    w.write(scratch() + "/seed.safetensors");
    out.push_back(slurp(scratch() + "/seed.safetensors"));
    SafetensorsWriter bare;
    bare.write(scratch() + "/seed.safetensors");
    out.push_back(slurp(scratch() + "/seed.safetensors"));
    return out;
}

// ---- checkpoint: tune.cu checkpoints (weights, resume, adapter) as bin/train --resume and --adapter read them ----

// A checkpoint as files written before checksums (or edited by hand) are: the field blanked with spaces. A byte
// changed in it then reaches the loader's checks instead of the checksum's refusal.
std::string without_checksum(std::string b) {
    const size_t at = b.find("\"checksum\":\"");  // "checksum":"<16 hex digits>",
    if (at == std::string::npos) throw Violation("a checkpoint written without a checksum");
    b.replace(at, 30, std::string(30, ' '));
    return b;
}

constexpr uint64_t kSeedBase = 3;  // init_random seed of the base weights under the PEFT seeds

Outcome run_checkpoint(const uint8_t* d, size_t n) {
    const std::string p = put("ckpt/x.ckpt", d, n);
    return refused_on_error([&] {
        const ModelConfig c = checkpoint_config(p);
        const PeftConfig pc = checkpoint_peft(p);
        uint64_t step = 0, fingerprint = 0;
        std::vector<std::string> trained_base;
        checkpoint_options(p);
        checkpoint_trained_on(p);
        checkpoint_base_lineage(p, &fingerprint, &trained_base);
        const bool resume = checkpoint_step(p, &step);
        if (!small_enough(c, pc)) return;
        ModelOptions o;
        o.peft = pc;
        if (is_adapter_checkpoint(p)) {
            const Trainable fr = frozen_base(c);
            GPT2 m(c, cpu(), 1, 1, &fr, o);
            m.init_random(kSeedBase);  // the base the seed adapter records: any other is refused
            load_adapter(p, m);
            return require_finite_params(m);
        }
        // A PEFT run's optimizer holds state for the PEFT tensors only, as bin/train --lora-rank builds it.
        const Trainable fr = frozen_base(c);
        GPT2 m(c, cpu(), 1, 1, pc.any() ? &fr : nullptr, o);
        if (resume) {
            AdamW opt(m, AdamWConfig{});
            TrainState st;
            load_checkpoint(p, m, &opt, &st);
        } else {
            load_checkpoint(p, m, nullptr, nullptr);
        }
        require_finite_params(m);
    });
}

std::vector<std::string> seeds_checkpoint() {
    const ModelConfig c = seed_config();
    const std::string p = scratch() + "/seed.ckpt";
    std::vector<std::string> out;
    GPT2 m(c, cpu(), 1, 4);
    m.init_random(3);
    save_checkpoint(p, m, nullptr, nullptr);
    out.push_back(slurp(p));
    one_backward(m, 4);
    AdamW opt(m, AdamWConfig{});
    opt.step(1e-3f, 1.0f);
    TrainState st;
    st.step = 1;
    st.rng = 99;
    st.options = {{"--batch", "1"}, {"--lr", "0.001"}};
    save_checkpoint(p, m, &opt, &st, nullptr, true, TrainedOn{Windows::documents, 4});
    out.push_back(slurp(p));

    ModelOptions o;
    o.peft = seed_peft();
    const Trainable fr = frozen_base(c);
    GPT2 peft(c, cpu(), 1, 4, &fr, o);
    peft.init_random(kSeedBase);
    peft.init_peft(5, {});
    save_checkpoint(p, peft, nullptr, nullptr);
    out.push_back(slurp(p));
    save_adapter(p, peft, peft.base_fingerprint());
    out.push_back(slurp(p));
    one_backward(peft, 6);
    AdamW peft_opt(peft, AdamWConfig{});
    peft_opt.step(1e-3f, 1.0f);
    st.base_fingerprint = peft.base_fingerprint();
    save_checkpoint(p, peft, &peft_opt, &st);
    out.push_back(slurp(p));
    for (size_t i = 0, n = out.size(); i < n; i++) out.push_back(without_checksum(out[i]));
    return out;
}

// A model of seed_config() as export_hf writes it, in a folder no input is written to; the targets copy its files.
const std::string& hf_export() {
    static const std::string dir = [] {
        GPT2 m(seed_config(), cpu(), 1, 1);
        m.init_random(9);
        const std::string d = scratch() + "/hf_export";
        export_hf(m, d);
        return d;
    }();
    return dir;
}

// Copies a file of hf_export() to scratch()/to.
void copy_export(const std::string& name, const std::string& to) {
    const std::string b = slurp(hf_export() + "/" + name);
    put(to, b.data(), b.size());
}

// ---- weights: --init's reader (model/weights.h), which tells tune.cu, llm.c and safetensors files apart ----

Outcome run_weights(const uint8_t* d, size_t n) {
    static const bool config_beside = (copy_export("config.json", "weights/config.json"), true);  // for safetensors
    (void)config_beside;
    const std::string p = put("weights/x.bin", d, n);
    return refused_on_error([&] {
        weights_format(p);
        load_declared_weights(p);
    });
}

std::vector<std::string> seeds_weights() {
    GPT2 m(seed_config(), cpu(), 1, 1);
    m.init_random(8);
    const std::string p = scratch() + "/seed.weights";
    std::vector<std::string> out;
    save_checkpoint(p, m, nullptr, nullptr);
    out.push_back(slurp(p));
    out.push_back(without_checksum(out.back()));
    export_llmc(m, p, false);
    out.push_back(slurp(p));
    export_llmc(m, p, true);
    out.push_back(slurp(p));
    out.push_back(slurp(hf_export() + "/model.safetensors"));
    return out;
}

// ---- hf_config: a Hugging Face checkpoint directory's config.json, beside a valid model.safetensors ----

const std::string& hf_dir() {
    static const std::string dir = [] {
        copy_export("model.safetensors", "hf/model.safetensors");
        return scratch() + "/hf";
    }();
    return dir;
}

Outcome run_hf_config(const uint8_t* d, size_t n) {
    const std::string dir = hf_dir();
    put("hf/config.json", d, n);
    return refused_on_error([&] { load_declared_weights(dir); });
}

std::vector<std::string> seeds_hf_config() { return {slurp(hf_export() + "/config.json")}; }

// ---- hf_index: a sharded Hugging Face checkpoint's model.safetensors.index.json, beside two valid shards ----

const char* const kShardFiles[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};

const std::string& hf_index_dir() {
    static const std::string dir = [] {
        const std::string d = scratch() + "/hf_index";
        make_dirs(d);
        const SafetensorsFile whole(hf_export() + "/model.safetensors");
        std::vector<std::vector<uint8_t>> bytes;
        bytes.reserve(whole.tensors().size());
        SafetensorsWriter shard[2];
        for (size_t i = 0; i < whole.tensors().size(); i++) {
            const SafetensorsTensorInfo& t = whole.tensors()[i];
            bytes.push_back(whole.read_bytes(t.name));
            shard[i % 2].add(t.name, t.dtype, t.shape, bytes.back().data(), bytes.back().size());
        }
        for (int k = 0; k < 2; k++) {
            for (const auto& [key, value] : whole.metadata()) shard[k].set_metadata(key, value);
            shard[k].write(d + "/" + kShardFiles[k]);
        }
        copy_export("config.json", "hf_index/config.json");
        return d;
    }();
    return dir;
}

Outcome run_hf_index(const uint8_t* d, size_t n) {
    const std::string dir = hf_index_dir();
    put("hf_index/model.safetensors.index.json", d, n);
    return refused_on_error([&] { load_declared_weights(dir); });
}

std::vector<std::string> seeds_hf_index() {
    const SafetensorsFile whole(hf_export() + "/model.safetensors");
    nlohmann::json j;
    j["metadata"]["total_size"] = whole.data_bytes();
    for (size_t i = 0; i < whole.tensors().size(); i++) j["weight_map"][whole.tensors()[i].name] = kShardFiles[i % 2];
    hf_index_dir();
    return {j.dump(2)};
}

// ---- shard: token shards (bin/prepare's output, bin/train's input) ----

Outcome run_shard(const uint8_t* d, size_t n) {
    const std::string p = put("shard/x.bin", d, n);
    auto check = [](const Shard& s, int vocab) {
        const std::vector<int32_t> t = s.tokens();
        require(t.size() == s.size(), "tokens() holds " + std::to_string(t.size()) + " of " + std::to_string(s.size()));
        for (int32_t id : t) require(id >= 0 && (vocab == 0 || id < vocab), "token id " + std::to_string(id));
        const std::vector<uint8_t> mask = s.mask_vector();
        require(mask.size() == (s.has_mask() ? s.size() : 0), "mask of the wrong length");
        uint64_t masked = 0;
        for (size_t i = 1; i < mask.size(); i++) masked += mask[i] == 0;
        require(masked == s.masked_targets,
                "masked_targets " + std::to_string(s.masked_targets) + ", counted " + std::to_string(masked));
    };
    // Read without a vocabulary (every id the file's width holds), then against GPT-2's, which refuses more.
    const Outcome any = refused_on_error([&] { check(read_shard(p, 0), 0); });
    refused_on_error([&] { check(read_shard(p, 50257), 50257); });
    return any;
}

std::vector<std::string> seeds_shard() {
    const std::string p = scratch() + "/seed.bin";
    std::vector<std::string> out;
    const std::vector<int32_t> tokens = {50256, 15496, 11, 995, 0, 50256, 464};
    const std::vector<uint8_t> mask = {0, 0, 1, 1, 1, 0, 1};
    write_shard(p, tokens, nullptr, 50257);
    out.push_back(slurp(p));
    write_shard(p, tokens, &mask, 50257);
    out.push_back(slurp(p));
    write_shard(p, {70000, 3, 69999}, nullptr, 70001);  // 4-byte ids
    out.push_back(slurp(p));
    return out;
}

// ---- loader: the windows bin/train cuts token shards into ----
// Byte 0: the windows (fixed, documents, single, isolated), shuffled or not, 1 to 3 ranks; byte 1: T (1..16); byte 2:
// B (1..4); then a token a byte (id: low nibble mod 11, 10 ending a document; loss mask 0 when the top bit is set),
// 0x7f starting another shard. Checked: one epoch over every rank counts each target of the shards with mask 1
// exactly once, with its own input before it; positions of isolated documents count from 0 at each start.

constexpr int kLoaderVocab = 11;
constexpr int32_t kLoaderEnd = 10;

// A shard's bytes as data/shard.h lays them out (2-byte ids, with a mask), without write_shard's fsync.
std::string shard_bytes(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask) {
    std::string b(kShardMagic, 8);
    uint8_t h[24];
    store_u32(h, kShardVersion);
    store_u32(h + 4, 2);
    store_u64(h + 8, tokens.size());
    store_u32(h + 16, 1);
    store_u32(h + 20, kLoaderVocab);
    b.append(reinterpret_cast<const char*>(h), sizeof h);
    for (int32_t t : tokens) b += (char)(t & 0xff), b += (char)(t >> 8);
    b.append(mask.begin(), mask.end());
    return b;
}

Outcome run_loader(const uint8_t* d, size_t n) {
    if (n < 3) return refused_because("fewer than the 3 bytes that pick windows, T and B");
    static const Windows modes[] = {Windows::fixed, Windows::documents, Windows::single, Windows::isolated};
    const Windows windows = modes[d[0] & 3];
    const bool shuffle = d[0] & 4;
    const int world = 1 + (d[0] >> 3) % 3, T = 1 + d[1] % 16, B = 1 + d[2] % 4;
    std::vector<std::vector<int32_t>> tokens(1);
    std::vector<std::vector<uint8_t>> masks(1);
    for (size_t i = 3; i < n; i++) {
        if (d[i] == 0x7f) {
            if (tokens.size() == 8) break;
            tokens.emplace_back(), masks.emplace_back();
            continue;
        }
        tokens.back().push_back((d[i] & 0x0f) % kLoaderVocab);
        masks.back().push_back(d[i] >> 7 ? 0 : 1);
    }
    std::vector<std::string> paths;
    std::vector<std::pair<int32_t, int32_t>> want;  // (input, target) of each counted target
    for (size_t k = 0; k < tokens.size(); k++) {
        const std::string b = shard_bytes(tokens[k], masks[k]);
        paths.push_back(put("loader/" + std::to_string(k) + ".bin", b.data(), b.size()));
        for (size_t j = 1; j < tokens[k].size(); j++)
            if (masks[k][j]) want.emplace_back(tokens[k][j - 1], tokens[k][j]);
    }
    return refused_on_error([&] {
        std::vector<std::pair<int32_t, int32_t>> got;
        for (int rank = 0; rank < world; rank++) {
            Loader loader(paths, kLoaderVocab, B, T, shuffle, 7, rank, world,
                          windows == Windows::fixed ? -1 : kLoaderEnd, windows);
            Batch b;
            while (loader.next_in_epoch(b)) {
                require(b.T == T && b.B >= 1 && b.B <= B && b.inputs.size() == (size_t)b.B * T, "batch shape");
                for (int row = 0; row < b.B; row++)
                    for (int t = 0; t < T; t++) {
                        const size_t i = (size_t)row * T + t;
                        require(b.inputs[i] >= 0 && b.inputs[i] < kLoaderVocab && b.targets[i] >= 0 &&
                                    b.targets[i] < kLoaderVocab, "token id out of range");
                        require(b.weights[i] == 0.0f || b.weights[i] == 1.0f, "loss weight not 0 or 1");
                        if (b.weights[i] == 1.0f) got.emplace_back(b.inputs[i], b.targets[i]);
                        if (windows == Windows::isolated) {
                            // A document starts at 0 at the row's start and after each document end it holds,
                            // and nowhere else; padding counts on.
                            const int32_t p = b.positions[i];
                            const std::string at = "position " + std::to_string(p) + " at t = " + std::to_string(t);
                            require(p >= 0 && p <= t && (t > 0 || p == 0), at);
                            if (t > 0 && p == 0) require(b.inputs[i] == kLoaderEnd, at + ", after no document end");
                            if (t > 0 && p != 0) require(p == b.positions[i - 1] + 1, at + ", not one on");
                            if (t > 0 && b.weights[i] == 1.0f && b.inputs[i] == kLoaderEnd)
                                require(p == 0, at + ", at a document end");
                        }
                    }
            }
            require(loader.filled() >= 0 && loader.filled() <= 1, "filled() outside [0, 1]");
            loader.cuts(kLoaderEnd, 1000);
            // Any position a checkpoint may hold: next() goes on from it (with one window a rank at least).
            loader.set_state({(uint64_t)d[1] << 56 | d[2], (uint64_t)d[2] * 0x9E3779B97F4A7C15ull});
            if (loader.num_windows() >= (size_t)world)
                for (int k = 0; k < 3; k++) loader.next();
        }
        std::sort(got.begin(), got.end());
        std::sort(want.begin(), want.end());
        require(got == want, "one epoch counted " + std::to_string(got.size()) + " (input, target) pairs, the "
                                 "shards hold " + std::to_string(want.size()) + " (or other ones)");
    });
}

std::vector<std::string> seeds_loader() {
    const std::string docs = "\x81\x82\x83\x0a\x84\x85\x06\x0a\x86\x87\x08\x09\x01\x02\x0a\x83\x04";
    return {std::string("\x00\x04\x01", 3) + docs,                       // fixed, T=5, B=2
            std::string("\x01\x04\x01", 3) + docs + "\x7f" + docs,      // documents, two shards
            std::string("\x0e\x02\x00", 3) + docs,                       // single, shuffled, 2 ranks
            std::string("\x13\x06\x02", 3) + docs + "\x7f\x01\x02"};  // isolated, 3 ranks, a short shard
}

// ---- tokenizer: GPT-2 BPE on any bytes ----

Outcome run_tokenizer(const uint8_t* d, size_t n) {
    const Tokenizer& tok = tokenizer();
    const std::string_view text(reinterpret_cast<const char*>(d), n);
    const std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids)
        require(id >= 0 && id < tok.vocab_size() && id != tok.eot_token(), "encode gave id " + std::to_string(id));
    require(tok.decode(ids) == text, "decode(encode(x)) != x");
    require(ids.size() <= n, "more tokens than bytes");
    return Outcome::accepted;
}

std::vector<std::string> seeds_tokenizer() {
    return {"Hello world, it's 2026!", "  leading\n\n\ttabs   and trailing  ", "<|endoftext|> stays text",
            "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80", "bad \xff\xfe utf-8 \xc3",
            "I'll we've they're 123456789 3.14", std::string("nul\0byte", 8)};
}

// ---- vocab: a --vocab DIR's encoder.json and vocab.bpe (the input holds both, a NUL between them) ----

Outcome run_vocab(const uint8_t* d, size_t n) {
    const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(d, 0, n));
    const size_t split = nul ? (size_t)(nul - d) : n;
    put("vocab/encoder.json", d, split);
    put("vocab/vocab.bpe", d + std::min(n, split + 1), n - std::min(n, split + 1));
    return refused_on_error([&] {
        const Tokenizer tok = Tokenizer::load(scratch() + "/vocab");
        for (const std::string text : {"Hello world, the theory of  everything 123\n", "in the\xff\xc3 at <|endoftext|>"}) {
            const std::vector<int32_t> ids = tok.encode(text);
            for (int32_t id : ids)
                require(id >= 0 && id < tok.vocab_size() && id != tok.eot_token(), "encode gave id " + std::to_string(id));
            require(tok.decode(ids) == text, "decode(encode(x)) != x");
        }
    });
}

// GPT-2's own vocabulary cut to its 256 byte tokens and first 40 merges (whose tokens are ids 256..295 in its
// encoder.json), then <|endoftext|>.
std::vector<std::string> seeds_vocab() {
    const int merges = 40;
    const nlohmann::json full = nlohmann::json::parse(slurp("data/gpt2/encoder.json"));
    nlohmann::json enc = nlohmann::json::object();
    for (auto it = full.begin(); it != full.end(); ++it)
        if (it.value().get<int>() < 256 + merges) enc[it.key()] = it.value();
    enc["<|endoftext|>"] = 256 + merges;
    const std::string bpe = slurp("data/gpt2/vocab.bpe");
    size_t end = 0;
    for (int line = 0; line < 1 + merges; line++) end = bpe.find('\n', end) + 1;
    return {enc.dump() + std::string(1, '\0') + bpe.substr(0, end)};
}

// ---- jsonl: one line of bin/prepare's JSONL input ----
// The first byte picks the template: none (Alpaca's), one with {input}, or one without it.

Outcome run_jsonl(const uint8_t* d, size_t n) {
    if (n == 0) return refused_because("no byte to pick the template");
    static const char* const templates[] = {"", "### Q: {instruction}\n{input}\n### A: ", "Q: {instruction} A:"};
    const std::string tmpl = templates[d[0] % 3];
    const std::string line(reinterpret_cast<const char*>(d + 1), n - 1);
    return refused_on_error([&] {
        const Document doc = document_from_json_line(tokenizer(), line, "fuzz.jsonl:1", tmpl);
        require(doc.tokens.size() == doc.mask.size(), "tokens and mask differ in length");
        for (size_t i = 0; i < doc.tokens.size(); i++) {
            require(doc.tokens[i] >= 0 && doc.tokens[i] < tokenizer().vocab_size(), "token id out of range");
            require(doc.mask[i] <= 1, "mask value " + std::to_string(doc.mask[i]));
        }
    });
}

std::vector<std::string> seeds_jsonl() {
    return {std::string("\0", 1) + R"({"text": "Once upon a time"})",
            std::string("\1", 1) + R"({"instruction": "Add", "input": "2 and 3", "output": "5"})",
            std::string("\0", 1) + R"({"instruction": "Name a colour.", "output": "Blue", "text": "x"})",
            std::string("\2", 1) + R"({"prompt": "Q: 1+1?", "completion": " 2"})",
            std::string("\0", 1) + R"({"text": "caf\u00e9 \ud83d\ude00 \n"})"};
}

// ---- prepare: bin/prepare on a whole input file ----
// The first byte picks how it is read (by its name: .jsonl, .json or .txt) and whether --skip-bad is on.

Outcome run_prepare(const uint8_t* d, size_t n) {
    if (n == 0) return refused_because("no byte to pick the input's name");
    static const char* const names[] = {"in.jsonl", "in.json", "in.txt"};
    PrepareOptions o;
    o.out_dir = scratch() + "/prepare/out";
    std::filesystem::remove_all(o.out_dir);  // an earlier input's val.bin would change what this one does
    o.inputs = {put(std::string("prepare/") + names[d[0] % 3], d + 1, n - 1)};
    o.skip_bad = d[0] & 4;
    o.progress = false;
    o.note = [](const std::string&) {};  // the notes' paths run too
    o.val_frac = 0.3;
    o.chunk_bytes = 64;  // many chunks from a small input: the cuts between them are under test too
    return refused_on_error([&] {
        const PrepareReport r = prepare_dataset(tokenizer(), o);
        const Shard train = read_shard(r.train_path, tokenizer().vocab_size());
        require(train.size() == r.train_tokens, "train.bin holds " + std::to_string(train.size()) + " tokens, the "
                                                    "report says " + std::to_string(r.train_tokens));
        const size_t val = r.val_path.empty() ? 0 : read_shard(r.val_path, tokenizer().vocab_size()).size();
        require(val == r.val_tokens, "val.bin holds " + std::to_string(val) + " tokens, the report says " +
                                         std::to_string(r.val_tokens));
        require(r.train_docs + r.val_docs == r.documents, "documents do not add up");
    });
}

std::vector<std::string> seeds_prepare() {
    return {std::string("\0", 1) + R"({"text": "One document."})" "\n" R"({"text": "Another, longer document."})" "\n"
            R"({"instruction": "Add", "input": "2 and 3", "output": "5"})" "\n",
            std::string("\1", 1) + R"([{"prompt": "Q: 1+1?", "completion": " 2"}, {"text": "x"}])",
            std::string("\2", 1) + "A plain text,\nof a few lines,\n\nand a paragraph   with spaces.\r\nThe end.\n",
            std::string("\4", 1) + R"({"text": "kept"})" "\n" "{broken\n" R"({"text": "kept too"})" "\n"};
}

// ---- train_args: bin/train's command line (NUL-separated arguments) ----

Outcome run_train_args(const uint8_t* d, size_t n) {
    std::vector<std::string> args = {"train"};
    std::string cur;
    for (size_t i = 0; i < n && args.size() < 64; i++)
        if (d[i] == 0) args.push_back(cur), cur.clear();
        else cur += (char)d[i];
    if (!cur.empty()) args.push_back(cur);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    return refused_on_error([&] {
        TrainArgs a;
        if (parse_train_args((int)args.size(), argv.data(), a)) validate_train_args(a);
    });
}

std::vector<std::string> seeds_train_args() {
    auto line = [](std::initializer_list<const char*> a) {
        std::string s;
        for (const char* x : a) s += std::string(x) + '\0';
        return s;
    };
    return {line({}),
            line({"--batch", "4", "--seq", "64", "--lr", "3e-4", "--steps", "20", "--precision", "bf16"}),
            line({"--lora-rank=8", "--lora-targets", "qkv,mlp_up", "--schedule", "triangular2", "--recompute", "full"}),
            line({"--train-top", "2", "--unfreeze-every", "10", "--zero", "1", "--weight-decay", "0.01"}),
            line({"--help"})};
}

// ---- choices: bin/evaluate --choices (HellaSwag-style JSONL) ----

Outcome run_choices(const uint8_t* d, size_t n) {
    const std::string p = put("choices/x.jsonl", d, n);
    return refused_on_error([&] {
        for (const ChoiceExample& e : read_choice_file(tokenizer(), p)) {
            require(!e.endings.empty(), e.where + ": no endings");
            require(e.label >= 0 && (size_t)e.label < e.endings.size(), e.where + ": label out of range");
        }
    });
}

std::vector<std::string> seeds_choices() {
    return {R"({"context": "The cat", "endings": [" sat.", " flew to the moon."], "label": 0})"
            "\n"
            R"({"context": "2 + 2 =", "endings": [" 5", " 4", " 22"], "label": 1})"
            "\n"};
}

// ---- metrics: metrics.jsonl as a resumed run reads it back (drops lines after the checkpoint's step) ----

Outcome run_metrics(const uint8_t* d, size_t n) {
    put("metrics/metrics.jsonl", d, n);
    return refused_on_error([&] {
        RunLog log(scratch() + "/metrics", 5);
        log.write_plot();
    });
}

std::vector<std::string> seeds_metrics() {
    return {R"({"step": 1, "loss": 3.5, "lr": 0.001})"
            "\n"
            R"({"step": 5, "loss": 3.1, "val_loss": 3.3})"
            "\n"
            R"({"step": 7, "loss": 2.9})"
            "\n"
            R"({"note": "not a step"})"
            "\n"
            R"({"step": 8, "lo)"};
}

// ---- fisher: an EWC Fisher file (--fisher) as a run reads it back for three trainable tensors ----
// Checked: the tensors are handed over in the table's order, each once, with its whole count of values, every
// value finite and not negative.

const Table& fisher_table() {
    static const Table g = [] {
        Table t;
        t.add("h.1.attn.c_attn.weight", {3, 5});
        t.add("h.1.ln_1.bias", {5});
        t.add("ln_f.weight", {5});
        return t;
    }();
    return g;
}

Outcome run_fisher(const uint8_t* d, size_t n) {
    const std::string p = put("fisher/f.safetensors", d, n);
    const Table& g = fisher_table();
    return refused_on_error([&] {
        size_t next = 0;
        read_fisher(p, g, [&](size_t i, const std::vector<float>& v) {
            require(i == next,
                    "tensor " + std::to_string(i) + " handed over where " + std::to_string(next) + " was due");
            require(v.size() == g[i].numel, "'" + g[i].name + "': " + std::to_string(v.size()) + " values, not " +
                                                std::to_string(g[i].numel));
            for (float x : v) require(std::isfinite(x) && x >= 0, "'" + g[i].name + "' holds " + std::to_string(x));
            next++;
        });
        require(next == g.size(), std::to_string(next) + " of " + std::to_string(g.size()) + " tensors handed over");
    });
}

std::vector<std::string> seeds_fisher() {
    const Table& g = fisher_table();
    std::vector<std::vector<float>> values(g.size());
    for (size_t i = 0; i < g.size(); i++)
        for (size_t k = 0; k < g[i].numel; k++) values[i].push_back(0.125f * float(k + i));
    const std::string p = scratch() + "/seed.safetensors";
    std::vector<std::string> out;
    write_fisher(p, g, values, 32);
    out.push_back(slurp(p));
    // A Fisher of more parameters (an untrained tensor too), in the other dtypes a safetensors file may hold.
    const std::vector<uint16_t> half(15, 0x3c00);
    const std::vector<double> f64(5, 0.5);
    SafetensorsWriter w;
    w.add("wte.weight", SafetensorsDtype::F32, {2, 5}, values[0].data(), 10 * sizeof(float));
    w.add("h.1.attn.c_attn.weight", SafetensorsDtype::BF16, {3, 5}, half.data(), 15 * 2);
    w.add("h.1.ln_1.bias", SafetensorsDtype::F16, {5}, half.data(), 5 * 2);
    w.add("ln_f.weight", SafetensorsDtype::F64, {5}, f64.data(), 5 * 8);
    w.set_metadata("format", "tune.cu ewc fisher");
    w.write(p);
    out.push_back(slurp(p));
    return out;
}

// ---- roll_call: the lines an NCCL job's ranks and rank 0 exchange beside NCCL (train/roll_call.h) ----
// Byte 0: the world (1 to 8 ranks, low bits) and the direction (top bit: from rank 0); then lines. Checked: a line
// accepted names ranks of the world only, and is written back as a line that reads the same.

Outcome run_roll_call(const uint8_t* d, size_t n) {
    if (n < 1) return refused_because("no byte that picks the world and the direction");
    const int world = 1 + (d[0] & 7);
    const bool from_rank0 = d[0] & 0x80;
    std::string buf(reinterpret_cast<const char*>(d + 1), n - 1);
    buf += '\n';
    size_t accepted = 0;
    for (size_t start = 0, nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
        const std::string line = buf.substr(start, nl - start);
        auto parse = [&](const std::string& l) {
            return from_rank0 ? parse_line_from_rank0(l, world) : parse_line_to_rank0(l, world);
        };
        const RollLine l = parse(line);
        if (l.kind == RollLine::Kind::none) continue;
        accepted++;
        using K = RollLine::Kind;
        const bool names_rank = l.kind == K::hello || l.kind == K::gone || (l.kind == K::stop && from_rank0);
        const std::string what = "'" + line.substr(0, 40) + "'";
        if (names_rank)
            require(l.rank >= (l.kind == K::stop ? 0 : 1) && l.rank < world,
                    what + " names rank " + std::to_string(l.rank) + " of " + std::to_string(world));
        else
            require(l.rank == -1, what + " names a rank");
        const std::string text = roll_line_text(l);
        require(parse(text) == l, what + " is written back as '" + text.substr(0, 40) + "', which reads otherwise");
    }
    return accepted ? Outcome::accepted : refused_because("no line of the roll call's protocol");
}

std::vector<std::string> seeds_roll_call() {
    return {std::string("\x03") + "hello 2\nat 0 \nat 3 allreduce grads\nask 3\nstop CUDA error: out of memory\nbye",
            std::string("\x83") + "stop 0 rank 0 stopped\ngone 2 7 allreduce grads\n"
                                  "verdict 7 rank 1 never entered it\nbye"};
}

}  // namespace

const std::vector<Target>& targets() {
    static const std::vector<Target> all = {
        {"safetensors", "SafetensorsFile (data/safetensors.h)", run_safetensors, seeds_safetensors},
        {"checkpoint", "tune.cu checkpoints: load_checkpoint, load_adapter (train/checkpoint.h)", run_checkpoint,
         seeds_checkpoint},
        {"weights", "--init weights of any format: load_weights (model/weights.h)", run_weights, seeds_weights},
        {"hf_config", "a Hugging Face checkpoint's config.json (model/hf_gpt2.h)", run_hf_config, seeds_hf_config},
        {"hf_index", "a sharded Hugging Face checkpoint's model.safetensors.index.json (model/hf_gpt2.h)", run_hf_index,
         seeds_hf_index},
        {"shard", "token shards: read_shard (data/shard.h)", run_shard, seeds_shard},
        {"loader", "the windows of token shards: Loader (data/shard.h)", run_loader, seeds_loader},
        {"tokenizer", "GPT-2 BPE: decode(encode(x)) == x (data/tokenizer.h)", run_tokenizer, seeds_tokenizer},
        {"vocab", "--vocab DIR: encoder.json and vocab.bpe, Tokenizer::load (data/tokenizer.h)", run_vocab, seeds_vocab},
        {"jsonl", "a bin/prepare JSONL line: document_from_json_line (data/prepare.h)", run_jsonl, seeds_jsonl},
        {"prepare", "bin/prepare on a whole file: prepare_dataset (data/prepare.h)", run_prepare, seeds_prepare},
        {"train_args", "bin/train's command line: parse_train_args, validate_train_args (train/args.h)",
         run_train_args, seeds_train_args},
        {"choices", "bin/evaluate --choices: read_choice_file (train/eval.h)", run_choices, seeds_choices},
        {"metrics", "metrics.jsonl read back on resume: RunLog (train/metrics.h)", run_metrics, seeds_metrics},
        {"fisher", "an EWC Fisher file (--fisher): read_fisher (train/fisher.h)", run_fisher, seeds_fisher},
        {"roll_call", "the roll call's lines between ranks and rank 0 (train/roll_call.h)", run_roll_call,
         seeds_roll_call},
    };
    return all;
}

const std::string& last_refusal() { return refusal; }

const Target* find_target(const std::string& name) {
    for (const Target& t : targets())
        if (name == t.name) return &t;
    return nullptr;
}

}  // namespace tune::fuzz
