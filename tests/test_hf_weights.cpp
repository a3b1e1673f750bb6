// Weights from the ecosystem (model/weights.h, model/hf_gpt2.h, model/llmc.h):
//   - the Hugging Face fixture (tests/fixtures/hf_tiny, made by scripts/make_hf_fixture.py with transformers),
//     loaded through weights_config/load_weights as bin/train --init does, reproduces transformers' logits,
//     loss and every parameter gradient, in float32 and in float64;
//   - export -> import is bit-identical, for Hugging Face and llm.c files; bf16 inputs widen exactly;
//   - each way an input can be malformed is refused with a message naming the file and what is wrong;
//   - the bin/export tool's exit codes, and (optional, when python has torch and transformers)
//     transformers loading our export (scripts/check_hf_export.py).
// Comparisons with transformers use the relative L2 error per tensor, ||ours - ref||_2 / ||ref||_2.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/fileio.h"
#include "data/safetensors.h"
#include "model/hf_gpt2.h"
#include "model/llmc.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "tests/model_util.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kFixture = "tests/fixtures/hf_tiny";

using tune::test::TempDir;

// The message of the tune::Error that f throws, or "(no error)".
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

#define EXPECT_MENTIONS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

// ---- reading the reference file ----

std::vector<double> ref_values(const SafetensorsFile& f, const std::string& name) {
    const SafetensorsTensorInfo& t = f.at(name);
    const std::vector<uint8_t> raw = f.read_bytes(name);
    std::vector<double> v(t.numel());
    for (size_t i = 0; i < v.size(); i++) {
        if (t.dtype == SafetensorsDtype::F64) {
            uint64_t bits = load_u64(&raw[8 * i]);
            std::memcpy(&v[i], &bits, 8);
        } else if (t.dtype == SafetensorsDtype::F32) {
            uint32_t bits = load_u32(&raw[4 * i]);
            float x;
            std::memcpy(&x, &bits, 4);
            v[i] = x;
        } else {
            ADD_FAILURE() << name << ": unexpected dtype " << safetensors_dtype_name(t.dtype);
        }
    }
    return v;
}

std::vector<int32_t> ref_ints(const SafetensorsFile& f, const std::string& name) {
    const std::vector<uint8_t> raw = f.read_bytes(name);
    std::vector<int32_t> v(raw.size() / 4);
    for (size_t i = 0; i < v.size(); i++) v[i] = (int32_t)load_u32(&raw[4 * i]);
    return v;
}

double rel_l2(const std::vector<double>& got, const std::vector<double>& want) {
    double d = 0, w = 0;
    for (size_t i = 0; i < want.size(); i++) {
        d += (got[i] - want[i]) * (got[i] - want[i]);
        w += want[i] * want[i];
    }
    return std::sqrt(d) / std::max(std::sqrt(w), 1e-300);
}

// ---- our side: one forward/backward pass in Hugging Face's layout ----

struct Result {
    std::vector<double> logits;  // (B, T, V)
    double loss = 0;
    std::map<std::string, std::vector<double>> grads;  // Hugging Face name -> gradient in its layout
};

// Our tensor (table entry `ti`, values `v`) in Hugging Face's layout: Conv1D weights transposed, wte unpadded.
std::vector<double> to_hf_layout(const ModelConfig& cfg, const TensorInfo& ti, const std::vector<double>& v) {
    const HfTensor h = hf_tensor_of(cfg, ti);
    if (!h.transposed)
        return std::vector<double>(v.begin(),
                                   v.begin() + (ptrdiff_t)(h.shape[0] * (h.shape.size() > 1 ? h.shape[1] : 1)));
    const size_t in = h.shape[0], out = h.shape[1];
    std::vector<double> r(in * out);
    for (size_t i = 0; i < in; i++)
        for (size_t o = 0; o < out; o++) r[i * out + o] = v[o * in + i];
    return r;
}

Result run_ours(DType dtype, const std::string& weights, const std::vector<int32_t>& tokens,
                const std::vector<int32_t>& targets, int B, int T) {
    auto be = make_cpu_backend(dtype);
    const ModelConfig cfg = weights_config(weights);
    GPT2 m(cfg, *be, B, T);
    load_weights(weights, m);
    m.zero_grads();
    m.forward(tokens.data(), B, T);
    Result r;
    const int li = m.acts().table().find("logits");
    const std::vector<double> padded = get_tensor(m, m.acts(), (size_t)li);  // (B*T, Vp), before loss() overwrites it
    for (int i = 0; i < B * T; i++)
        for (int v = 0; v < cfg.vocab_size; v++) r.logits.push_back(padded[(size_t)i * cfg.padded_vocab_size + v]);
    const std::vector<float> ones((size_t)B * T, 1.0f);
    const float dloss = 1.0f / (float)(B * T);
    r.loss = m.loss(targets.data(), ones.data(), dloss, true) / (B * T);
    m.backward();
    // GPT2::loss takes dloss as a float: 1/22 rounded to float is off by 3e-8 relative, which every
    // gradient inherits. Gradients are linear in dloss, so undo that rounding to compare in double.
    const double fix = (1.0 / (B * T)) / (double)dloss;
    const Table& t = m.params().table();
    for (size_t i = 0; i < t.size(); i++) {
        std::vector<double> g = to_hf_layout(cfg, t[i], get_tensor(m, m.grads(), (size_t)m.grad_index()[i]));
        for (double& x : g) x *= fix;
        r.grads[hf_tensor_of(cfg, t[i]).name] = g;
    }
    return r;
}

// Compares our result with the reference tensors under `prefix` ("" float64 run, "f32." float32 run).
// Returns the largest relative error seen, after EXPECTing each to be within tol.
double compare_with_reference(const Result& ours, const SafetensorsFile& ref, const std::string& prefix, double tol) {
    double worst = 0;
    auto check = [&](const std::string& what, const std::vector<double>& got, const std::vector<double>& want) {
        EXPECT_EQ(got.size(), want.size()) << what;
        if (got.size() != want.size()) return;
        const double e = rel_l2(got, want);
        EXPECT_LE(e, tol) << what << ": ||ours - transformers|| / ||transformers|| = " << e;
        worst = std::max(worst, e);
    };
    check("logits", ours.logits, ref_values(ref, prefix + "logits"));
    check("loss", {ours.loss}, ref_values(ref, prefix + "loss"));
    size_t n_grads = 0;
    for (const SafetensorsTensorInfo& t : ref.tensors()) {
        const std::string head = prefix + "grad.";
        if (t.name.compare(0, head.size(), head) != 0) continue;
        const std::string name = t.name.substr(head.size());
        auto it = ours.grads.find(name);
        if (it == ours.grads.end()) {
            ADD_FAILURE() << "transformers has a gradient for " << name << ", we do not";
            continue;
        }
        check("grad " + name, it->second, ref_values(ref, t.name));
        n_grads++;
    }
    EXPECT_EQ(n_grads, ours.grads.size()) << "every parameter's gradient is compared";
    return worst;
}

struct Batch {
    int B = 0, T = 0;
    std::vector<int32_t> tokens, targets;
};

Batch fixture_batch(const SafetensorsFile& ref) {
    Batch b;
    b.B = (int)ref.at("tokens").shape.at(0);
    b.T = (int)ref.at("tokens").shape.at(1);
    b.tokens = ref_ints(ref, "tokens");
    b.targets = ref_ints(ref, "targets");
    return b;
}

// ---- Hugging Face fixture ----

TEST(HfFixture, RecognisedAndConfiguredFromConfigJson) {
    EXPECT_EQ(weights_format(kFixture), WeightsFormat::hf_gpt2);
    EXPECT_EQ(weights_format(kFixture + "/model.safetensors"), WeightsFormat::hf_gpt2);
    EXPECT_EQ(weights_config(kFixture), small_config(97, 2, 3, 24, 24));
    EXPECT_EQ(weights_config(kFixture + "/model.safetensors"), small_config(97, 2, 3, 24, 24));
}

TEST(HfFixture, MatchesTransformersLogitsLossGradientsF32_L2_C24_V97_B2_T11) {
    SafetensorsFile ref(kFixture + "/reference.safetensors");
    const Batch b = fixture_batch(ref);
    ASSERT_EQ(b.B, 2);
    ASSERT_EQ(b.T, 11);
    const Result ours = run_ours(DType::f32, kFixture, b.tokens, b.targets, b.B, b.T);
    // Against the exact math (transformers in float64 on the stored float32 weights), and against what
    // transformers itself computes in float32.
    const double e64 = compare_with_reference(ours, ref, "", 1e-5);
    const double e32 = compare_with_reference(ours, ref, "f32.", 1e-5);
    std::printf(
        "[   INFO   ] float32 vs transformers: worst relative L2 error %.2e (its float64 run), %.2e (its float32 "
        "run)\n",
        e64, e32);
}

TEST(HfFixture, MatchesTransformersLogitsLossGradientsF64_L2_C24_V97_B2_T11) {
    SafetensorsFile ref(kFixture + "/reference.safetensors");
    const Batch b = fixture_batch(ref);
    const Result ours = run_ours(DType::f64, kFixture, b.tokens, b.targets, b.B, b.T);
    const double e = compare_with_reference(ours, ref, "", 1e-12);
    std::printf("[   INFO   ] float64 vs transformers float64: worst relative L2 error %.2e\n", e);
}

// ---- helpers to write variants of the fixture ----

struct RawTensor {
    std::string name;
    SafetensorsDtype dtype;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> bytes;
};

std::vector<RawTensor> read_all(const std::string& path) {
    SafetensorsFile f(path);
    std::vector<RawTensor> out;
    for (const SafetensorsTensorInfo& t : f.tensors()) out.push_back({t.name, t.dtype, t.shape, f.read_bytes(t.name)});
    return out;
}

void write_all(const std::string& path, const std::vector<RawTensor>& tensors) {
    SafetensorsWriter w;
    for (const RawTensor& t : tensors) w.add(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
    w.set_metadata("format", "pt");
    w.write(path);
}

RawTensor* find_raw(std::vector<RawTensor>& ts, const std::string& name) {
    for (RawTensor& t : ts)
        if (t.name == name) return &t;
    return nullptr;
}

// A copy of the fixture (config.json and model.safetensors) in dir, with edits applied.
void copy_fixture(const TempDir& dir, const std::function<void(json&)>& edit_config = nullptr,
                  const std::function<void(std::vector<RawTensor>&)>& edit_tensors = nullptr) {
    std::ifstream cf(kFixture + "/config.json");
    json cfg = json::parse(cf);
    if (edit_config) edit_config(cfg);
    std::ofstream(dir.file("config.json")) << cfg.dump(2);
    std::vector<RawTensor> ts = read_all(kFixture + "/model.safetensors");
    if (edit_tensors) edit_tensors(ts);
    write_all(dir.file("model.safetensors"), ts);
}

std::vector<float> params_of(GPT2& m) {
    std::vector<float> all;
    const Table& t = m.params().table();
    for (size_t i = 0; i < t.size(); i++) {
        std::vector<float> v(t[i].numel);
        m.backend().download(v.data(), m.params().ptr(i), m.params().dtype(), v.size());
        all.insert(all.end(), v.begin(), v.end());
    }
    return all;
}

std::vector<float> load_params(const std::string& path) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(weights_config(path), *be, 1, 1);
    load_weights(path, m);
    return params_of(m);
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

uint16_t f32_to_bf16_bits(float x) {  // round to nearest even (no NaNs in these tensors)
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    return (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// ---- Hugging Face variants that load ----

TEST(HfWeights, SafetensorsPathLoadsLikeItsDirectory) {
    EXPECT_TRUE(bit_identical(load_params(kFixture), load_params(kFixture + "/model.safetensors")));
}

TEST(HfWeights, UnprefixedNamesTiedLmHeadAndMaskBuffersLoad) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        const RawTensor wte = *find_raw(ts, "transformer.wte.weight");
        for (RawTensor& t : ts) t.name = t.name.substr(std::strlen("transformer."));  // GPT2Model's names
        ts.push_back({"lm_head.weight", wte.dtype, wte.shape, wte.bytes});
        // The causal-mask buffer old checkpoints carry: not a parameter, skipped.
        ts.push_back({"h.0.attn.bias", SafetensorsDtype::F32, {1, 1, 24, 24}, std::vector<uint8_t>(24 * 24 * 4, 0)});
        ts.push_back({"h.1.attn.masked_bias", SafetensorsDtype::F32, {}, std::vector<uint8_t>(4, 0)});
    });
    EXPECT_TRUE(bit_identical(load_params(dir.path()), load_params(kFixture)));
}

// safetensors' save_model writes a tied tensor once, under the first of its names in sorted order:
// lm_head.weight, with no transformer.wte.weight. That tensor is the embedding.
TEST(HfWeights, TiedEmbeddingStoredOnlyAsLmHeadLoadsAsWte) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        for (RawTensor& t : ts)
            if (t.name == "transformer.wte.weight") t.name = "lm_head.weight";
    });
    EXPECT_TRUE(bit_identical(load_params(dir.path()), load_params(kFixture)));
}

// An untied head the file does not hold: transformers would draw it at random; we refuse rather than tie it.
TEST(HfWeights, UntiedConfigWithoutLmHeadIsRefused) {
    TempDir dir;
    copy_fixture(dir, [](json& c) { c["tie_word_embeddings"] = false; });
    const std::string msg = error_of([&] { weights_config(dir.path()); });
    EXPECT_MENTIONS(msg, "config.json: field 'tie_word_embeddings' is false");
    EXPECT_MENTIONS(msg, "no lm_head.weight");
    // With the head there (and equal to wte), it loads; without the field, the head is tied.
    TempDir with_head;
    copy_fixture(with_head, [](json& c) { c["tie_word_embeddings"] = false; }, [](std::vector<RawTensor>& ts) {
        RawTensor head = *find_raw(ts, "transformer.wte.weight");
        head.name = "lm_head.weight";
        ts.push_back(head);
    });
    EXPECT_TRUE(bit_identical(load_params(with_head.path()), load_params(kFixture)));
    TempDir bad;
    copy_fixture(bad, [](json& c) { c["tie_word_embeddings"] = "yes"; });
    EXPECT_MENTIONS(error_of([&] { weights_config(bad.path()); }), "field 'tie_word_embeddings' is \"yes\"");
}

TEST(HfWeights, Bf16TensorsWidenExactly_L2_C24_V97) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        for (RawTensor& t : ts) {
            std::vector<uint8_t> b(t.bytes.size() / 2);
            for (size_t i = 0; i < b.size() / 2; i++) {
                float x;
                uint32_t bits = load_u32(&t.bytes[4 * i]);
                std::memcpy(&x, &bits, 4);
                const uint16_t h = f32_to_bf16_bits(x);
                b[2 * i] = (uint8_t)h;
                b[2 * i + 1] = (uint8_t)(h >> 8);
            }
            t.dtype = SafetensorsDtype::BF16;
            t.bytes = b;
        }
    });
    const std::vector<float> full = load_params(kFixture), half = load_params(dir.path());
    ASSERT_EQ(full.size(), half.size());
    size_t differ = 0;
    for (size_t i = 0; i < full.size(); i++) {
        const float want = bf16_bits_to_f32(f32_to_bf16_bits(full[i]));
        ASSERT_EQ(std::memcmp(&want, &half[i], 4), 0) << "element " << i << ": " << half[i] << " vs " << want;
        differ += full[i] != half[i];
    }
    EXPECT_GT(differ, full.size() / 2) << "the bf16 copy should really be rounded";
}

TEST(HfWeights, WtePaddedRowsAreZero_V97_Vp128) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(weights_config(kFixture), *be, 1, 1);
    // Garbage first, so zeros afterwards were written by the loader.
    const Table& t = m.params().table();
    for (size_t i = 0; i < t.size(); i++) set_tensor(m, m.params(), i, randn(t[i].numel, 3 + i));
    load_weights(kFixture, m);
    const std::vector<double> wte = get_tensor(m, m.params(), (size_t)t.find("wte"));
    for (size_t k = (size_t)97 * 24; k < wte.size(); k++) ASSERT_EQ(wte[k], 0.0) << "wte element " << k;
}

// ---- Hugging Face inputs that are refused ----

TEST(HfWeights, ConfigMissingFieldIsNamed) {
    for (const char* field : {"n_layer", "n_head", "n_embd", "n_positions", "vocab_size"}) {
        TempDir dir;
        copy_fixture(dir, [&](json& c) { c.erase(field); });
        const std::string msg = error_of([&] { weights_config(dir.path()); });
        EXPECT_MENTIONS(msg, dir.file("config.json"));
        EXPECT_MENTIONS(msg, std::string("'") + field + "' is missing");
    }
}

TEST(HfWeights, ConfigWrongValuesAreNamed) {
    const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
        {[](json& c) { c["n_head"] = 5; }, "'n_embd' is 24, expected a multiple of n_head (5)"},
        {[](json& c) { c["vocab_size"] = -3; }, "'vocab_size' is -3, expected a positive integer"},
        {[](json& c) { c["vocab_size"] = 18446744073709551615ull; },
         "'vocab_size' is 18446744073709551615, expected a positive integer"},
        {[](json& c) { c["n_layer"] = "2"; }, "'n_layer' is missing or not an integer"},
        {[](json& c) { c["model_type"] = "llama"; }, "'model_type' is \"llama\", expected \"gpt2\""},
        {[](json& c) { c["activation_function"] = "relu"; }, "'activation_function' is \"relu\""},
        {[](json& c) { c["layer_norm_epsilon"] = 1e-6; }, "'layer_norm_epsilon'"},
        {[](json& c) { c["n_inner"] = 50; }, "'n_inner' is 50, expected null or 4 * n_embd = 96"},
        {[](json& c) { c["scale_attn_by_inverse_layer_idx"] = true; }, "'scale_attn_by_inverse_layer_idx' is true"},
        {[](json& c) { c["n_layer"] = 2147483647; }, "'n_layer' is 2147483647, expected in [1, 1024]"},
        {[](json& c) { c["vocab_size"] = 2147483647; }, "'vocab_size' is 2147483647, expected in [1, 16777216]"},
    };
    for (const auto& [edit, want] : cases) {
        TempDir dir;
        copy_fixture(dir, edit);
        const std::string msg = error_of([&] { weights_config(dir.path()); });
        EXPECT_MENTIONS(msg, dir.file("config.json"));
        EXPECT_MENTIONS(msg, want);
    }
    // A config that is valid but disagrees with the tensors: every tensor shape then names the mismatch.
    TempDir dir;
    copy_fixture(dir, [](json& c) { c["n_positions"] = 32; });
    const std::string msg = error_of([&] { weights_config(dir.path()); });
    EXPECT_MENTIONS(msg, "'transformer.wpe.weight' has shape [24, 24], expected [32, 24]");
}

TEST(HfWeights, ConfigNotJsonOrAbsentIsNamed) {
    TempDir dir;
    copy_fixture(dir);
    std::ofstream(dir.file("config.json")) << "{\"n_layer\": 2,";
    const std::string msg = error_of([&] { weights_config(dir.path()); });
    EXPECT_MENTIONS(msg, dir.file("config.json") + ": not valid JSON");
    EXPECT_MENTIONS(msg, "line 1, column 15");  // where the parser stopped
    EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << "the JSON library's name in: " << msg;
    std::ofstream(dir.file("config.json")) << "{\"n_layer\": 2e999}";  // a number beyond a double
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }), dir.file("config.json") + ": not valid JSON");
    fs::remove(dir.file("config.json"));
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }), "directory without config.json");
    // The message says how to get the weights, since an empty model directory usually means a failed download.
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }), "scripts/download_gpt2.sh gpt2 " + dir.path());
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.file("model.safetensors")); }),
                    "needs its config.json beside it");
    // bin/train's --out given where the weights go: the message names the file in it, not a download.
    std::ofstream(dir.file("resume.ckpt")) << "x";
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }),
                    "a bin/train run directory, not a Hugging Face model directory; give its weights file: " +
                        dir.file("resume.ckpt") + " (the run has not finished)");
    std::ofstream(dir.file("model.ckpt")) << "x";
    const std::string run = error_of([&] { weights_config(dir.path()); });
    EXPECT_MENTIONS(run, "give its weights file: " + dir.file("model.ckpt"));
    EXPECT_EQ(run.find("download_gpt2"), std::string::npos) << run;
}

TEST(HfWeights, MissingTensorIsNamed) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        ts.erase(std::remove_if(ts.begin(), ts.end(),
                                [](const RawTensor& t) { return t.name == "transformer.h.1.mlp.c_fc.bias"; }),
                 ts.end());
    });
    const std::string msg = error_of([&] { weights_config(dir.path()); });
    EXPECT_MENTIONS(msg, dir.file("model.safetensors"));
    EXPECT_MENTIONS(msg, "'h.1.mlp.c_fc.bias' (or 'transformer.h.1.mlp.c_fc.bias') is missing; expected shape [96]");
}

TEST(HfWeights, WrongShapeIsNamedWithBothShapes) {
    // The classic mistake: a c_attn weight stored (out, in) like torch's Linear instead of Conv1D's (in, out).
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        find_raw(ts, "transformer.h.0.attn.c_attn.weight")->shape = {72, 24};
    });
    const std::string msg = error_of([&] { weights_config(dir.path()); });
    EXPECT_MENTIONS(msg, dir.file("model.safetensors"));
    EXPECT_MENTIONS(msg, "tensor 'transformer.h.0.attn.c_attn.weight' has shape [72, 24], expected [24, 72]");
    EXPECT_MENTIONS(msg, "Conv1D");
}

TEST(HfWeights, NonFiniteWeightIsNamedWithItsElement) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        RawTensor* t = find_raw(ts, "transformer.h.1.attn.c_proj.weight");  // (24, 24), F32
        ASSERT_EQ(t->dtype, SafetensorsDtype::F32);
        const float nan = NAN;
        std::memcpy(t->bytes.data() + 30 * 4, &nan, 4);
    });
    const std::string msg = error_of([&] { load_params(dir.path()); });
    EXPECT_MENTIONS(msg, dir.file("model.safetensors"));
    EXPECT_MENTIONS(msg, "tensor 'transformer.h.1.attn.c_proj.weight' holds nan at element 30 (row 1, column 6)");
}

TEST(HfWeights, WrongDtypeIsNamed) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        find_raw(ts, "transformer.ln_f.bias")->dtype = SafetensorsDtype::I32;
    });
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }),
                    "tensor 'transformer.ln_f.bias' has dtype I32, expected F32, F16, BF16 or F64");
}

TEST(HfWeights, ExtraAndDuplicateTensorsAreNamed) {
    {
        TempDir dir;
        copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
            ts.push_back({"transformer.h.2.ln_1.weight", SafetensorsDtype::F32, {24}, std::vector<uint8_t>(96, 0)});
        });
        EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }),
                        "unexpected tensor 'transformer.h.2.ln_1.weight'");
    }
    {
        TempDir dir;
        copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
            RawTensor t = *find_raw(ts, "transformer.wpe.weight");
            t.name = "wpe.weight";
            ts.push_back(t);
        });
        EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }), "appears twice");
    }
}

TEST(HfWeights, UntiedLmHeadIsRefusedAndModelUntouched) {
    TempDir dir;
    copy_fixture(dir, nullptr, [](std::vector<RawTensor>& ts) {
        RawTensor head = *find_raw(ts, "transformer.wte.weight");
        head.name = "lm_head.weight";
        head.bytes[4 * (5 * 24 + 7) + 2] ^= 0x40;  // row 5, column 7
        ts.push_back(head);
    });
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(weights_config(dir.path()), *be, 1, 1);
    m.init_random(1);
    const std::vector<float> before = params_of(m);
    const std::string msg = error_of([&] { load_weights(dir.path(), m); });
    EXPECT_MENTIONS(msg, "tensor 'lm_head.weight' differs from wte.weight (first at row 5, column 7");
    EXPECT_MENTIONS(msg, "untied");
    EXPECT_TRUE(bit_identical(params_of(m), before)) << "a refused file must not change the model";
}

TEST(HfWeights, PytorchBinOnlyDirectoryIsExplained) {
    TempDir dir;
    copy_fixture(dir);
    fs::rename(dir.file("model.safetensors"), dir.file("pytorch_model.bin"));
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }), "pytorch_model.bin");
}

TEST(HfWeights, ShardedCheckpointLoads) {
    TempDir dir;
    copy_fixture(dir);
    std::vector<RawTensor> ts = read_all(dir.file("model.safetensors"));
    fs::remove(dir.file("model.safetensors"));
    std::vector<RawTensor> a(ts.begin(), ts.begin() + 10), b(ts.begin() + 10, ts.end());
    write_all(dir.file("model-00001-of-00002.safetensors"), a);
    write_all(dir.file("model-00002-of-00002.safetensors"), b);
    json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
    for (const RawTensor& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
    for (const RawTensor& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
    std::ofstream(dir.file("model.safetensors.index.json")) << index.dump();
    EXPECT_TRUE(bit_identical(load_params(dir.path()), load_params(kFixture)));
    // An index that puts a tensor in the wrong shard is refused.
    index["weight_map"][a[0].name] = "model-00002-of-00002.safetensors";
    std::ofstream(dir.file("model.safetensors.index.json")) << index.dump();
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.path()); }), "'" + a[0].name + "' is in");
}

TEST(HfWeights, UnknownFileIsRefused) {
    TempDir dir;
    std::ofstream(dir.file("x.bin")) << "hello, world";
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.file("x.bin")); }), "not a weights file tune.cu reads");
    EXPECT_MENTIONS(error_of([&] { weights_config(dir.file("absent")); }), "no such file or directory");
}

// Weights through a pipe (bin/generate --model <(...)) are read more than once: the format's sniffing consumed the
// pipe's start and the checkpoint reader then said it did not start with "TUNECKPT". A pipe is named as such,
// without being opened (a FIFO with no writer would block the open forever); so is a checkpoint's.
TEST(HfWeights, APipeIsRefusedAsWeightsWithoutOpeningIt) {
    TempDir dir;
    const std::string fifo = dir.file("weights.fifo");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
    EXPECT_MENTIONS(error_of([&] { weights_config(fifo); }),
                    fifo + ": a pipe, where weights must be a regular file (it is read more than once)");
    EXPECT_MENTIONS(error_of([&] { checkpoint_config(fifo); }), fifo + ": a pipe, where a checkpoint must be");
    EXPECT_MENTIONS(error_of([&] { weights_config("/dev/zero"); }), "/dev/zero: a character device");
}

// ---- export -> import ----

// A random model with random (not unit/zero) LayerNorm parameters and biases.
void randomize(GPT2& m, uint64_t seed) {
    m.init_random(seed);
    const Table& t = m.params().table();
    for (size_t i = 0; i < t.size(); i++)
        if (t[i].shape.size() == 1) set_tensor(m, m.params(), i, randn(t[i].numel, seed + 100 + i, 0.3));
}

TEST(ExportHf, RoundTripIsBitIdentical_L2_NH3_C12_V37) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 1);
    randomize(m, 11);
    export_hf(m, dir.file("out"));
    EXPECT_EQ(weights_format(dir.file("out")), WeightsFormat::hf_gpt2);
    EXPECT_EQ(weights_config(dir.file("out")), small_config());
    EXPECT_TRUE(bit_identical(load_params(dir.file("out")), params_of(m)));
    // Hugging Face's layout and names, not ours.
    SafetensorsFile f(dir.file("out/model.safetensors"));
    EXPECT_EQ(f.at("wte.weight").shape, (std::vector<uint64_t>{37, 12}));
    EXPECT_EQ(f.at("h.1.attn.c_attn.weight").shape, (std::vector<uint64_t>{12, 36}));
    EXPECT_EQ(f.at("h.1.mlp.c_proj.weight").shape, (std::vector<uint64_t>{48, 12}));
    EXPECT_EQ(f.at("wte.weight").dtype, SafetensorsDtype::F32);
    EXPECT_EQ(f.tensors().size(), 2 + 12 * 2 + 2u);
    EXPECT_EQ(f.metadata().at("format"), "pt");
}

// Virtual tokens have no place in a Hugging Face GPT-2: refused before anything is written.
TEST(ExportHf, VirtualTokensAreRefusedLeavingNoDirectory_P4) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    ModelOptions o;
    o.peft.virt = Virtual::prompt;
    o.peft.n_virtual = 4;
    GPT2 m(small_config(), *be, 1, 1, nullptr, o);
    randomize(m, 11);
    EXPECT_NE(error_of([&] { export_hf(m, dir.file("out")); })
                  .find("out: this model has prompt virtual tokens, which a Hugging Face GPT-2 cannot hold"),
              std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
}

// bin/export refuses virtual tokens before it reads anything, naming the file they come from: an --adapter of
// that kind (it said it had merged the adapter, then blamed the output directory), or a checkpoint holding them.
TEST(ExportTool, VirtualTokensAreRefusedUpFrontNamingTheirFile) {
    if (!std::filesystem::exists("bin/export")) GTEST_SKIP() << "bin/export not built (make bin/export, or make test)";
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 base(small_config(), *be, 1, 1);
    randomize(base, 3);
    save_checkpoint(dir.file("base.ckpt"), base, nullptr, nullptr);
    ModelOptions o;
    o.peft.virt = Virtual::prompt;
    o.peft.n_virtual = 4;
    GPT2 m(small_config(), *be, 1, 1, nullptr, o);
    randomize(m, 11);
    save_checkpoint(dir.file("vp.ckpt"), m, nullptr, nullptr);
    save_adapter(dir.file("adapter.ckpt"), m, 0);
    CmdResult r = run_cmd("bin/export " + dir.file("base.ckpt") + " --adapter " + dir.file("adapter.ckpt") +
                          " --hf " + dir.file("out"));
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_MENTIONS(r.out, "--adapter " + dir.file("adapter.ckpt") + ": prompt virtual tokens (P=4), which cannot be "
                           "merged into weights (only LoRA can)");
    EXPECT_EQ(r.out.find("export: read"), std::string::npos) << r.out;
    r = run_cmd("bin/export " + dir.file("vp.ckpt") + " --llmc " + dir.file("out.bin"));
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_MENTIONS(r.out, dir.file("vp.ckpt") + ": holds prompt virtual tokens (P=4)");
    EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
    EXPECT_FALSE(std::filesystem::exists(dir.file("out.bin")));
}

// A failed export leaves no temporary file beside model.safetensors and config.json.
void expect_only_the_pair(const std::string& dir) {
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        EXPECT_TRUE(name == "model.safetensors" || name == "config.json") << name << ": a temporary left behind";
    }
}

// Into a directory that holds an export already: when config.json cannot be replaced (here it is a
// directory, so the rename fails), the new weights must not be left beside the old config either.
TEST(ExportHf, AConfigThatCannotBeReplacedKeepsTheOldWeights_L2_NH3_C12_V37) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 1);
    randomize(m, 11);
    export_hf(m, dir.path());
    const std::vector<uint8_t> old_weights = read_file_bytes(dir.file("model.safetensors"));
    std::filesystem::remove(dir.file("config.json"));
    std::filesystem::create_directory(dir.file("config.json"));
    randomize(m, 12);
    EXPECT_NE(error_of([&] { export_hf(m, dir.path()); }).find(dir.file("config.json")), std::string::npos);
    EXPECT_TRUE(read_file_bytes(dir.file("model.safetensors")) == old_weights) << "new weights beside the old config";
    expect_only_the_pair(dir.path());
}

// The mirror case: the weights cannot take their name (a directory there), after the new config took its
// own. The old config is put back, so it still describes the weights beside it.
TEST(ExportHf, WeightsThatCannotBeReplacedPutTheOldConfigBack_L2_NH3_C12_V37) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 1);
    randomize(m, 11);
    export_hf(m, dir.path());
    const std::vector<uint8_t> old_config = read_file_bytes(dir.file("config.json"));
    std::filesystem::remove(dir.file("model.safetensors"));
    std::filesystem::create_directory(dir.file("model.safetensors"));
    ModelConfig other = small_config();
    other.vocab_size += 4;  // another config.json
    GPT2 m2(other, *be, 1, 1);
    randomize(m2, 12);
    EXPECT_NE(error_of([&] { export_hf(m2, dir.path()); }).find(dir.file("model.safetensors")), std::string::npos);
    EXPECT_TRUE(read_file_bytes(dir.file("config.json")) == old_config) << "a new config beside the old weights";
    expect_only_the_pair(dir.path());
}

TEST(ExportHf, FixtureReexportsToSameValues) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(weights_config(kFixture), *be, 1, 1);
    load_weights(kFixture, m);
    export_hf(m, dir.path());
    SafetensorsFile theirs(kFixture + "/model.safetensors"), ours(dir.file("model.safetensors"));
    for (const SafetensorsTensorInfo& t : ours.tensors()) {
        const SafetensorsTensorInfo& o = theirs.at("transformer." + t.name);
        EXPECT_EQ(t.shape, o.shape) << t.name;
        EXPECT_TRUE(ours.read_bytes(t.name) == theirs.read_bytes(o.name)) << t.name << " differs";
    }
    std::ifstream cf(dir.file("config.json"));
    const json c = json::parse(cf);
    EXPECT_EQ(c["model_type"], "gpt2");
    EXPECT_EQ(c["n_positions"], 24);
    EXPECT_EQ(c["vocab_size"], 97);
    EXPECT_EQ(c["tie_word_embeddings"], true);
}

TEST(ExportLlmc, RoundTripIsBitIdentical_L2_NH3_C12_V37) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 1);
    randomize(m, 12);
    export_llmc(m, dir.file("m.bin"));
    EXPECT_EQ(weights_format(dir.file("m.bin")), WeightsFormat::llmc);
    EXPECT_EQ(weights_config(dir.file("m.bin")), small_config());
    EXPECT_TRUE(bit_identical(load_params(dir.file("m.bin")), params_of(m)));
    EXPECT_EQ(fs::file_size(dir.file("m.bin")), 1024 + 4 * (num_parameters(small_config())));
}

// Version 5 (bf16), what llm.c's CUDA build loads: each value rounded to nearest even, read back widened.
TEST(ExportLlmc, Bf16RoundTripIsTheRoundingOfEachValue_L2_NH3_C12_V37) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 1);
    randomize(m, 12);
    export_llmc(m, dir.file("m.bin"), true);
    EXPECT_EQ(load_u32(read_file_bytes(dir.file("m.bin")).data() + 4), 5u);  // header[1], the version
    EXPECT_EQ(fs::file_size(dir.file("m.bin")), 1024 + 2 * (num_parameters(small_config())));
    const std::vector<float> want = params_of(m), got = load_params(dir.file("m.bin"));
    ASSERT_EQ(got.size(), want.size());
    size_t changed = 0;
    for (size_t i = 0; i < want.size(); i++) {
        ASSERT_EQ(got[i], bf16_bits_to_f32(f32_to_bf16_bits(want[i]))) << i;
        changed += got[i] != want[i];
    }
    EXPECT_GT(changed, want.size() / 2) << "random weights, so most must round";
}

TEST(ExportLlmc, FileSizeOfGpt2_124MMatchesLlmcRelease) {
    // llm.c's published gpt2_124M.bin is 497,904,640 bytes: header + Vp=50304-row fp32 parameters.
    const ModelConfig c = preset_config("gpt2");
    EXPECT_EQ(c.padded_vocab_size, 50304);
    EXPECT_EQ(kLlmcHeaderInts * 4 + 4 * num_parameters(c), 497904640u);
}

TEST(ExportLlmc, HfToLlmcToHfKeepsTheFixture) {
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(weights_config(kFixture), *be, 1, 1);
    load_weights(kFixture, m);
    export_llmc(m, dir.file("m.bin"));
    EXPECT_TRUE(bit_identical(load_params(dir.file("m.bin")), load_params(kFixture)));
}

// ---- llm.c files ----

// The llm.c file at `path` as bytes, and helpers to edit its header.
std::vector<uint8_t> llmc_bytes(const std::string& path) { return read_file_bytes(path); }
void set_header(std::vector<uint8_t>& b, int i, int32_t v) { store_u32(&b[4 * (size_t)i], (uint32_t)v); }

class LlmcFile : public ::testing::Test {
   protected:
    void SetUp() override {
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(), *be, 1, 1);
        randomize(m, 13);
        params_ = params_of(m);
        export_llmc(m, dir_.file("good.bin"));
        good_ = llmc_bytes(dir_.file("good.bin"));
    }
    std::string write(const std::vector<uint8_t>& b) {
        const std::string p = dir_.file("bad.bin");
        write_file_atomic(p, b.data(), b.size());
        return p;
    }
    TempDir dir_;
    std::vector<uint8_t> good_;
    std::vector<float> params_;
};

TEST_F(LlmcFile, Bf16Version5WidensExactly_L2_C12_V37) {
    // llm.c's bf16 file: the same layout with 2-byte values.
    std::vector<uint8_t> b(good_.begin(), good_.begin() + 1024);
    set_header(b, 1, kLlmcVersionBF16);
    for (size_t off = 1024; off < good_.size(); off += 4) {
        float x;
        uint32_t bits = load_u32(&good_[off]);
        std::memcpy(&x, &bits, 4);
        const uint16_t h = f32_to_bf16_bits(x);
        b.push_back((uint8_t)h);
        b.push_back((uint8_t)(h >> 8));
    }
    const std::vector<float> got = load_params(write(b));
    ASSERT_EQ(got.size(), params_.size());
    for (size_t i = 0; i < got.size(); i++) {
        const float want = bf16_bits_to_f32(f32_to_bf16_bits(params_[i]));
        ASSERT_EQ(std::memcmp(&want, &got[i], 4), 0) << "element " << i;
    }
}

TEST_F(LlmcFile, LargerPaddedVocabularyIsAccepted) {
    // A file padded further than we pad (Vp 256 for V 37): its extra rows are skipped, our Vp stays 128.
    std::vector<uint8_t> b(good_.begin(), good_.begin() + 1024);
    set_header(b, 7, 256);
    const size_t C = 12, wte_old = 128 * C * 4;
    b.insert(b.end(), good_.begin() + 1024, good_.begin() + 1024 + (ptrdiff_t)wte_old);
    b.insert(b.end(), (256 - 128) * C * 4, 0);
    b.insert(b.end(), good_.begin() + 1024 + (ptrdiff_t)wte_old, good_.end());
    const std::string p = write(b);
    EXPECT_EQ(weights_config(p), small_config());
    EXPECT_TRUE(bit_identical(load_params(p), params_));
}

TEST_F(LlmcFile, BadMagicIsNamed) {
    std::vector<uint8_t> b = good_;
    set_header(b, 0, 20240327);
    const std::string p = write(b);
    // Not llm.c's magic: the file is no format we know.
    EXPECT_MENTIONS(error_of([&] { weights_config(p); }), "not a weights file tune.cu reads");
    EXPECT_MENTIONS(error_of([&] { llmc_config(p); }),
                    p + ": llm.c model file: header[0] (magic) is 20240327, expected 20240326");
}

TEST_F(LlmcFile, BadVersionIsNamed) {
    for (int version : {1, 2, 4, 6}) {
        std::vector<uint8_t> b = good_;
        set_header(b, 1, version);
        const std::string p = write(b);
        const std::string msg = error_of([&] { weights_config(p); });
        EXPECT_MENTIONS(msg, p);
        EXPECT_MENTIONS(msg, "header[1] (version) is " + std::to_string(version) + ", expected 3 (fp32) or 5 (bf16)");
    }
}

TEST_F(LlmcFile, TruncatedAndTrailingAreNamed) {
    {
        std::vector<uint8_t> b(good_.begin(), good_.end() - 4);
        const std::string p = write(b);
        const std::string msg = error_of([&] { weights_config(p); });
        EXPECT_MENTIONS(msg, p);
        EXPECT_MENTIONS(msg, "truncated: the file has " + std::to_string(good_.size() - 4) + " bytes");
        EXPECT_MENTIONS(msg, "needs " + std::to_string(good_.size()));
    }
    {
        std::vector<uint8_t> b(good_.begin(), good_.begin() + 500);
        EXPECT_MENTIONS(error_of([&] { weights_config(write(b)); }),
                        "truncated: 500 bytes, shorter than the 1024-byte header");
    }
    {
        std::vector<uint8_t> b = good_;
        b.push_back(0);
        EXPECT_MENTIONS(error_of([&] { weights_config(write(b)); }), "trailing bytes");
    }
    {
        // A bf16 header over fp32 data: twice the bytes it announces.
        std::vector<uint8_t> b = good_;
        set_header(b, 1, kLlmcVersionBF16);
        EXPECT_MENTIONS(error_of([&] { weights_config(write(b)); }), "trailing bytes");
    }
}

TEST_F(LlmcFile, BadHeaderFieldsAreNamed) {
    const std::vector<std::tuple<int, int32_t, std::string>> cases = {
        {2, 0, "header[2] (max_seq_len) is 0, expected > 0"},
        {5, 5, "header[6] (channels) is 12, expected a multiple of header[5] (num_heads) = 5"},
        {7, 36, "header[7] (padded_vocab_size) is 36, expected >= header[3] (vocab_size) = 37"},
        {4, -1, "header[4] (num_layers) is -1, expected > 0"},
    };
    for (const auto& [field, value, want] : cases) {
        std::vector<uint8_t> b = good_;
        set_header(b, field, value);
        EXPECT_MENTIONS(error_of([&] { weights_config(write(b)); }), want);
    }
    // Sizes no GPT-2-class model has (a corrupt header) are refused before anything is built or allocated for
    // them, and a vocabulary near INT_MAX does not overflow its padding on the way.
    std::vector<uint8_t> b = good_;
    set_header(b, 6, 2147483640);
    set_header(b, 5, 8);
    set_header(b, 4, 2147483647);
    EXPECT_MENTIONS(error_of([&] { weights_config(write(b)); }), "field 'n_layer' is 2147483647, expected in [1, 1024]");
    b = good_;
    set_header(b, 3, 2147483647);
    set_header(b, 7, 2147483647);
    EXPECT_MENTIONS(error_of([&] { weights_config(write(b)); }),
                    "field 'vocab_size' is 2147483647, expected in [1, 16777216]");
}

TEST_F(LlmcFile, NonFiniteWeightIsNamedWithItsElement) {
    std::vector<uint8_t> b = good_;
    const float inf = -INFINITY;  // wte comes first: (V, C) = (37, 12)
    uint32_t bits;
    std::memcpy(&bits, &inf, 4);
    store_u32(&b[1024 + 4 * 29], bits);
    const std::string msg = error_of([&] { load_params(write(b)); });
    EXPECT_MENTIONS(msg, "llm.c model file: tensor 'wte' holds -inf at element 29 (row 2, column 5)");
}

TEST_F(LlmcFile, ConfigMismatchIsNamed) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 other(small_config(41), *be, 1, 1);
    EXPECT_MENTIONS(error_of([&] { load_weights(dir_.file("good.bin"), other); }), "does not match the model's");
}

// ---- the bin/export tool ----

int run_tool(const std::string& args, std::string* out) {
    TempDir d;
    const std::string cmd = "./bin/export " + args + " >'" + d.file("log") + "' 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream f(d.file("log"));
    std::stringstream ss;
    ss << f.rdbuf();
    *out = ss.str();
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(ExportTool, ExitCodesAndConversion) {
    if (!fs::exists("bin/export")) GTEST_SKIP() << "bin/export not built (make bin/export, or make test)";
    std::string out;
    EXPECT_EQ(run_tool("--help", &out), 0);
    EXPECT_MENTIONS(out, "--hf DIR");
    EXPECT_MENTIONS(out, "--llmc FILE");
    EXPECT_MENTIONS(out, "--llmc-bf16");
    EXPECT_EQ(run_tool(kFixture + " --hf x --llmc-bf16", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc-bf16 says how to write --llmc FILE");
    EXPECT_EQ(run_tool("", &out), 2) << out;
    EXPECT_EQ(run_tool(kFixture, &out), 2) << out;
    EXPECT_MENTIONS(out, "nothing to write");
    EXPECT_EQ(run_tool(kFixture + " --frobnicate", &out), 2) << out;
    EXPECT_EQ(run_tool(kFixture + " --hf", &out), 2) << out;
    EXPECT_EQ(run_tool(kFixture + " --help=yes", &out), 2) << out;
    EXPECT_MENTIONS(out, "--help takes no value");
    TempDir dir;
    EXPECT_EQ(run_tool("tests/fixtures/no_such_model --hf '" + dir.file("x") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "input weights: no such file or directory: tests/fixtures/no_such_model");
    EXPECT_EQ(run_tool(kFixture + " --hf='" + dir.file("hf") + "' --llmc '" + dir.file("m.bin") + "'", &out), 0) << out;
    EXPECT_TRUE(bit_identical(load_params(dir.file("hf")), load_params(kFixture)));
    EXPECT_TRUE(bit_identical(load_params(dir.file("m.bin")), load_params(kFixture)));
    // Never over its own input: the llm.c file onto itself, the HF export into the directory it reads.
    const std::string before = slurp(dir.file("m.bin"));
    EXPECT_EQ(run_tool("'" + dir.file("m.bin") + "' --llmc '" + dir.file("./m.bin") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc " + dir.file("./m.bin") + " is the input itself");
    EXPECT_EQ(slurp(dir.file("m.bin")), before);
    EXPECT_EQ(run_tool("'" + dir.file("hf/model.safetensors") + "' --hf '" + dir.file("hf") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--hf " + dir.file("hf") + " holds the input");
    // Nor over a file a Hugging Face input is read from, nor one export over the other.
    const std::string weights = slurp(dir.file("hf/model.safetensors")), config = slurp(dir.file("hf/config.json"));
    for (const char* name : {"model.safetensors", "config.json"}) {
        const std::string target = dir.file("hf") + "/" + name;
        EXPECT_EQ(run_tool("'" + dir.file("hf") + "' --llmc '" + target + "'", &out), 2) << out;
        EXPECT_MENTIONS(out, "--llmc " + target + " would replace " + target + ", which the input " + dir.file("hf") +
                                 " is read from");
    }
    EXPECT_EQ(slurp(dir.file("hf/model.safetensors")), weights);
    EXPECT_EQ(slurp(dir.file("hf/config.json")), config);
    const std::string both = " --hf '" + dir.file("both") + "' --llmc '" + dir.file("both//model.safetensors") + "'";
    EXPECT_EQ(run_tool(kFixture + both, &out), 2) << out;
    EXPECT_MENTIONS(out, "is a file of the --hf " + dir.file("both") + " export");
    EXPECT_FALSE(fs::exists(dir.file("both")));
    // Outputs of the wrong kind are usage errors, as bin/train's --out: a directory --hf that is a file, an --llmc
    // file that is a directory.
    EXPECT_EQ(run_tool(kFixture + " --hf '" + dir.file("m.bin") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--hf " + dir.file("m.bin") + ": is a file, not a directory");
    EXPECT_EQ(run_tool(kFixture + " --llmc '" + dir.file("hf") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc " + dir.file("hf") + ": is a directory, not a file");
    // A device or a FIFO would be renamed over, becoming a plain file (root's /dev/null): refused.
    ASSERT_EQ(::mkfifo(dir.file("pipe").c_str(), 0644), 0);
    EXPECT_EQ(run_tool(kFixture + " --llmc '" + dir.file("pipe") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc " + dir.file("pipe") + ": is a FIFO, not a file");
    EXPECT_TRUE(fs::is_fifo(dir.file("pipe")));
    EXPECT_EQ(run_tool(kFixture + " --llmc /dev/null", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc /dev/null: is a character device, not a file");
    // A symbolic link stays one: its target is written.
    fs::create_symlink("m.bin", dir.file("latest.bin"));
    EXPECT_EQ(run_tool(kFixture + " --llmc '" + dir.file("latest.bin") + "' --llmc-bf16", &out), 0) << out;
    EXPECT_TRUE(fs::is_symlink(dir.file("latest.bin")));
    EXPECT_NE(slurp(dir.file("m.bin")), before) << "the link's target was not written";
}

// A write into a directory that does not exist names the file asked for and the directory, not the
// temporary file the atomic write goes through.
TEST(ExportTool, MissingOutputDirectoryIsNamed) {
    if (!fs::exists("bin/export")) GTEST_SKIP() << "bin/export not built (make bin/export, or make test)";
    TempDir dir;
    std::string out;
    const std::string want = dir.file("none/x.bin");
    // bin/export says so before it reads the weights (minutes for gpt2-xl, more with a LoRA merge), as a usage
    // error; so does an --hf directory below a file, which could not be made.
    EXPECT_EQ(run_tool(kFixture + " --llmc '" + want + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc " + want + ": the directory " + dir.file("none") + " does not exist");
    EXPECT_EQ(out.find("export: read"), std::string::npos) << out;
    spit(dir.file("file"), "x");
    EXPECT_EQ(run_tool(kFixture + " --llmc '" + dir.file("file/x.bin") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--llmc " + dir.file("file/x.bin") + ": " + dir.file("file") + " is a file, not a directory");
    EXPECT_EQ(run_tool(kFixture + " --hf '" + dir.file("file/a/b") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--hf " + dir.file("file/a/b") + ": " + dir.file("file") + " is a file, not a directory");
    fs::create_symlink("gone", dir.file("dangling"));
    EXPECT_EQ(run_tool(kFixture + " --hf '" + dir.file("dangling") + "'", &out), 2) << out;
    EXPECT_MENTIONS(out, "--hf " + dir.file("dangling") + ": is a symbolic link to gone, which does not exist");
    // An empty value (an unset variable) is refused, not read as "not given": that merged nothing, with exit 0.
    for (const char* flag : {"--adapter", "--llmc", "--hf"}) {
        EXPECT_EQ(run_tool(kFixture + " --hf '" + dir.file("e") + "' " + flag + " ''", &out), 2) << flag << out;
        EXPECT_MENTIONS(out, std::string(flag) + ": empty (an unset variable?)");
    }
    EXPECT_FALSE(fs::exists(dir.file("e")));
    // The --hf directory is made first, so an --llmc file may go into it.
    EXPECT_EQ(run_tool(kFixture + " --hf '" + dir.file("new/") + "' --llmc '" + dir.file("new/m.bin") + "'", &out), 0)
        << out;
    EXPECT_TRUE(bit_identical(load_params(dir.file("new/m.bin")), load_params(kFixture)));
    // And the same from the library, for every writer that goes through write_file_atomic.
    const std::string msg = error_of([&] { write_file_atomic(want, "x", 1); });
    EXPECT_EQ(msg, want + ": cannot write: the directory " + dir.file("none") + " does not exist");
    EXPECT_MENTIONS(error_of([&] { write_file_atomic(dir.file("file/x.bin"), "x", 1); }),
                    dir.file("file/x.bin") + ": cannot write: " + dir.file("file") + " is not a directory");
}

// An export that fails part way (here a 4 KiB file-size limit, as a full disk would) takes back the directory it
// made, so no half export is left for transformers to trip over; a directory that was there stays, with what
// it held.
TEST(ExportTool, AFailedExportLeavesNoDirectoryItMade) {
    if (!fs::exists("bin/export")) GTEST_SKIP() << "bin/export not built (make bin/export, or make test)";
    TempDir dir;
    auto limited = [&](const std::string& out_dir) {
        return run_cmd("bash -c 'ulimit -f 4; trap \"\" XFSZ; exec bin/export " + kFixture + " --hf " + out_dir + "'");
    };
    CmdResult r = limited(dir.file("new/hf"));
    EXPECT_EQ(r.rc, 1) << r.out;
    EXPECT_MENTIONS(r.out, dir.file("new/hf") + "/model.safetensors");
    EXPECT_FALSE(fs::exists(dir.file("new"))) << r.out;
    fs::create_directories(dir.file("old"));
    spit(dir.file("old/keep.txt"), "mine");
    r = limited(dir.file("old"));
    EXPECT_EQ(r.rc, 1) << r.out;
    EXPECT_EQ(slurp(dir.file("old/keep.txt")), "mine");
    EXPECT_FALSE(fs::exists(dir.file("old/model.safetensors")));
}

// ---- scripts/download_gpt2.sh, with a stand-in curl (no network) ----

// A curl that fails like a machine without internet (FAKE_CURL=offline), fails after part of
// model.safetensors (partial), or "downloads" a few bytes (ok).
void write_fake_curl(const std::string& dir) {
    fs::create_directories(dir);
    spit(dir + "/curl",
         "#!/bin/sh\n"
         "out=; url=\n"
         "while [ $# -gt 0 ]; do case \"$1\" in -o) out=$2; shift 2;; -C|--retry) shift 2;; *) url=$1; shift;; esac; done\n"
         "case \"$FAKE_CURL:$url\" in\n"
         "  offline:*) echo 'curl: (6) Could not resolve host: huggingface.co' >&2; exit 6;;\n"
         "  partial:*/model.safetensors) printf abcde >> \"$out\"; exit 18;;\n"
         "  *) printf '{}' > \"$out\";;\n"
         "esac\n");
    fs::permissions(dir + "/curl", fs::perms::owner_all);
}

CmdResult download(const std::string& fake_bin, const std::string& mode, const std::string& dest) {
    return run_cmd("PATH='" + fake_bin + "':\"$PATH\" FAKE_CURL=" + mode + " scripts/download_gpt2.sh gpt2 '" + dest +
                   "'");
}

TEST(DownloadScript, FailedDownloadRemovesWhatItCreatedAndNothingElse) {
    TempDir tmp;
    const std::string bin = tmp.file("fakebin");
    write_fake_curl(bin);
    // Offline into a new nested directory: nothing is left, not even the parent it made.
    CmdResult off = download(bin, "offline", tmp.file("a/b/gpt2"));
    EXPECT_EQ(off.rc, 1) << off.out;
    EXPECT_MENTIONS(off.out, "failed to download");
    EXPECT_FALSE(fs::exists(tmp.file("a"))) << off.out;
    // Offline into a directory the user already has: it and its contents stay, nothing is added.
    fs::create_directories(tmp.file("mine"));
    spit(tmp.file("mine/notes.txt"), "mine");
    CmdResult kept = download(bin, "offline", tmp.file("mine"));
    EXPECT_EQ(kept.rc, 1) << kept.out;
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(tmp.file("mine"))) left.push_back(e.path().filename().string());
    EXPECT_EQ(left, std::vector<std::string>{"notes.txt"});
    // Cut off in the middle of the weights: config.json (this run's) goes, the partial download stays for a
    // rerun to resume, and the tools then point at the script.
    CmdResult part = download(bin, "partial", tmp.file("p/gpt2"));
    EXPECT_EQ(part.rc, 1) << part.out;
    EXPECT_FALSE(fs::exists(tmp.file("p/gpt2/config.json"))) << part.out;
    EXPECT_EQ(slurp(tmp.file("p/gpt2/model.safetensors.part")), "abcde");
    EXPECT_MENTIONS(part.out, "kept the partial download " + tmp.file("p/gpt2/model.safetensors.part"));
    EXPECT_MENTIONS(error_of([&] { weights_config(tmp.file("p/gpt2")); }), "scripts/download_gpt2.sh");
    // A download that works keeps everything.
    CmdResult ok = download(bin, "ok", tmp.file("ok/gpt2"));
    EXPECT_EQ(ok.rc, 0) << ok.out;
    for (const char* f : {"config.json", "model.safetensors", "vocab.json", "merges.txt"})
        EXPECT_EQ(slurp(tmp.file(std::string("ok/gpt2/") + f)), "{}") << f;
}

// ---- transformers loads our export (optional: needs torch and transformers) ----

// TUNE_TEST_PYTHON: the Python to run (scripts/gpu_check.sh gives one without the bundle's libraries on its
// library path, where PyTorch lives).
TEST(ExportHfPython, TransformersLoadsExportAndMatchesLogits_L2_C12_V37_B2_T5) {
    const char* given = std::getenv("TUNE_TEST_PYTHON");
    const std::string python = given && *given ? given : "python3";
    static const int have =
        std::system((python + " -c 'import torch, transformers, safetensors, numpy' >/dev/null 2>&1").c_str());
    if (have != 0) GTEST_SKIP() << "python3 with torch, transformers, safetensors and numpy is not available";
    TempDir dir;
    auto be = make_cpu_backend(DType::f32);
    const int B = 2, T = 5;
    GPT2 m(small_config(), *be, B, T);
    randomize(m, 14);
    export_hf(m, dir.path());
    std::vector<int32_t> tokens;
    Rng r(15);
    for (int i = 0; i < B * T; i++) tokens.push_back((int32_t)r.below(37));
    m.forward(tokens.data(), B, T);
    std::vector<float> logits;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const std::vector<float> row = m.logits_row(b, t);
            logits.insert(logits.end(), row.begin(), row.begin() + 37);
        }
    SafetensorsWriter w;
    w.add("tokens", SafetensorsDtype::I32, {(uint64_t)B, (uint64_t)T}, tokens.data(), tokens.size() * 4);
    w.add("logits", SafetensorsDtype::F32, {(uint64_t)B, (uint64_t)T, 37}, logits.data(), logits.size() * 4);
    w.write(dir.file("expected.safetensors"));
    const std::string cmd =
        python + " scripts/check_hf_export.py '" + dir.path() + "' >'" + dir.file("log") + "' 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream f(dir.file("log"));
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << ss.str();
}

}  // namespace
}  // namespace tune::test
