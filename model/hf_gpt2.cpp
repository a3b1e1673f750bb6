#include "model/hf_gpt2.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "data/safetensors.h"
#include "model/weights.h"

namespace tune {

namespace fs = std::filesystem;
using json = nlohmann::json;

HfTensor hf_tensor_of(const ModelConfig& cfg, const TensorInfo& ours) {
    HfTensor h{ours.name, ours.shape, false};
    if (ours.name == "wte") {
        h.name = "wte.weight";
        h.shape = {(size_t)cfg.vocab_size, (size_t)cfg.n_embd};  // unpadded
    } else if (ours.name == "wpe") {
        h.name = "wpe.weight";
    } else if (ours.shape.size() == 2) {
        // TEACH: Conv1D computes x @ W with W (in, out); torch's Linear, and we, compute x @ W^T with W (out, in).
        h.transposed = true;
        h.shape = {ours.shape[1], ours.shape[0]};
    }
    return h;
}

namespace {

constexpr const char* kPrefix = "transformer.";  // GPT2LMHeadModel's name for its GPT2Model

template <class I>
std::string shape_str(const std::vector<I>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

// Buffers, not parameters: the causal mask old GPT-2 checkpoints saved with every block.
bool is_mask_buffer(const std::string& name) {
    if (name.compare(0, 2, "h.") != 0) return false;
    size_t i = 2;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') i++;
    if (i == 2) return false;
    const std::string rest = name.substr(i);
    return rest == ".attn.bias" || rest == ".attn.masked_bias";
}

json read_json(const std::string& path) {
    const std::vector<uint8_t> bytes = read_file_bytes(path);
    check_json_depth(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path);
    json j;
    try {
        j = json::parse(bytes.begin(), bytes.end());
    } catch (const json::exception& e) {  // says where: "parse error at line 3, column 5: ..."; or a number
                                          // beyond a double ("number overflow parsing '1e999'")
        throw Error(path + ": not valid JSON: " + json_reason(e));
    }
    if (!j.is_object()) throw Error(path + ": expected a JSON object");
    return j;
}

// *tied: whether the LM head is the token embedding (tie_word_embeddings, true unless the file says false).
ModelConfig parse_config(const std::string& path, bool* tied) {
    const json j = read_json(path);
    auto fail = [&](const std::string& what) -> void { throw Error(path + ": " + what); };
    auto need_int = [&](const char* field) {
        if (!j.contains(field) || !j[field].is_number_integer())
            fail(std::string("field '") + field + "' is missing or not an integer");
        const json& x = j[field];
        // The parser keeps a non-negative integer unsigned; get<int64_t> would wrap one above INT64_MAX negative.
        const bool huge = x.is_number_unsigned() && x.get<uint64_t>() > (uint64_t)INT_MAX;
        const int64_t v = huge ? 0 : x.get<int64_t>();
        if (huge || v <= 0 || v > INT_MAX)
            fail(std::string("field '") + field + "' is " + x.dump() + ", expected a positive integer");
        return (int)v;
    };
    ModelConfig c;
    c.n_layer = need_int("n_layer");
    c.n_head = need_int("n_head");
    c.n_embd = need_int("n_embd");
    c.block_size = need_int("n_positions");
    c.vocab_size = need_int("vocab_size");
    c.padded_vocab_size = pad_vocab(c.vocab_size);
    if (c.n_embd % c.n_head != 0)
        fail("field 'n_embd' is " + std::to_string(c.n_embd) + ", expected a multiple of n_head (" +
             std::to_string(c.n_head) + ")");

    // Fields that would change what the model computes; absent ones take transformers' defaults.
    if (j.contains("model_type") && j["model_type"] != "gpt2")
        fail("field 'model_type' is " + j["model_type"].dump() + ", expected \"gpt2\"");
    if (j.contains("activation_function")) {
        const json& a = j["activation_function"];
        if (!a.is_string() || (a != "gelu_new" && a != "gelu_pytorch_tanh"))
            fail("field 'activation_function' is " + a.dump() +
                 ", expected \"gelu_new\" or \"gelu_pytorch_tanh\" (the tanh GELU tune.cu computes)");
    }
    if (j.contains("layer_norm_epsilon")) {
        const json& e = j["layer_norm_epsilon"];
        if (!e.is_number() || std::fabs(e.get<double>() - 1e-5) > 1e-12)
            fail("field 'layer_norm_epsilon' is " + e.dump() + ", expected 1e-05 (the epsilon tune.cu computes with)");
    }
    if (j.contains("n_inner") && !j["n_inner"].is_null() &&
        (!j["n_inner"].is_number_integer() || j["n_inner"].get<int64_t>() != 4 * (int64_t)c.n_embd))
        fail("field 'n_inner' is " + j["n_inner"].dump() +
             ", expected null or 4 * n_embd = " + std::to_string(4 * (int64_t)c.n_embd));
    auto need_bool = [&](const char* field, bool expected) {
        if (!j.contains(field)) return;
        if (!j[field].is_boolean() || j[field].get<bool>() != expected)
            fail(std::string("field '") + field + "' is " + j[field].dump() + ", expected " +
                 (expected ? "true" : "false") + " (tune.cu's GPT-2 supports only that)");
    };
    *tied = true;
    if (j.contains("tie_word_embeddings")) {
        if (!j["tie_word_embeddings"].is_boolean())
            fail("field 'tie_word_embeddings' is " + j["tie_word_embeddings"].dump() + ", expected true or false");
        *tied = j["tie_word_embeddings"].get<bool>();
    }
    need_bool("scale_attn_weights", true);
    need_bool("scale_attn_by_inverse_layer_idx", false);
    need_bool("add_cross_attention", false);
    validate_config(c, path);
    return c;
}

// Where each tensor lives: the opened files, and name (without "transformer.") -> (file, name in file).
struct HfCheckpoint {
    std::string config_path;
    ModelConfig config;
    std::vector<SafetensorsFile> files;
    struct Loc {
        size_t file;
        const SafetensorsTensorInfo* info;
    };
    std::map<std::string, Loc> tensors;

    // One entry per parameter-table tensor, and the optional LM head.
    std::vector<Loc> params;
    std::vector<HfTensor> hf;
    bool has_lm_head = false;
    Loc lm_head{0, nullptr};

    [[noreturn]] void fail(const Loc& l, const std::string& what) const {
        throw Error(files[l.file].path() + ": tensor '" + l.info->name + "' " + what);
    }

    explicit HfCheckpoint(const std::string& path) {
        std::vector<std::string> weight_files;
        std::map<std::string, std::string> weight_map;  // from a shard index: tensor -> shard file
        std::string index_path;
        std::error_code ec;
        if (fs::is_directory(path, ec)) {
            const fs::path dir(path);
            config_path = (dir / "config.json").string();
            if (!fs::exists(config_path, ec)) {
                for (const char* name : {"model.ckpt", "resume.ckpt"})  // bin/train's --out
                    if (fs::exists(dir / name, ec))
                        throw Error(path + ": a bin/train run directory, not a Hugging Face model directory; give "
                                    "its weights file: " + (dir / name).string() +
                                    (std::string(name) == "model.ckpt" ? "" : " (the run has not finished)"));
                throw Error(path + ": directory without config.json, so not a Hugging Face model directory "
                                   "(to get GPT-2's weights there: scripts/download_gpt2.sh gpt2 " + path +
                            ", or gpt2-medium, gpt2-large, gpt2-xl)");
            }
            const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
            if (fs::exists(single, ec)) {
                weight_files.push_back(single.string());
            } else if (fs::exists(index, ec)) {
                index_path = index.string();
                const json j = read_json(index_path);
                std::set<std::string> listed;
                if (!j.contains("weight_map") || !j["weight_map"].is_object())
                    throw Error(index_path + ": field 'weight_map' is missing or not an object");
                for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
                    if (!it.value().is_string() || it.value().get<std::string>().find('/') != std::string::npos)
                        throw Error(index_path + ": weight_map entry '" + it.key() +
                                    "' is not a file name in this directory");
                    weight_map[it.key()] = it.value().get<std::string>();
                    const std::string f = (dir / it.value().get<std::string>()).string();
                    if (listed.insert(f).second) weight_files.push_back(f);  // in the order first named
                }
            } else if (fs::exists(dir / "pytorch_model.bin", ec)) {
                throw Error(path +
                            ": holds pytorch_model.bin (a PyTorch pickle) but no model.safetensors; tune.cu "
                            "reads safetensors only (download model.safetensors, or convert with transformers: "
                            "from_pretrained(DIR).save_pretrained(OUT))");
            } else {
                throw Error(path + ": no model.safetensors or model.safetensors.index.json in this directory");
            }
        } else {
            config_path = (fs::path(path).parent_path() / "config.json").string();
            if (fs::path(path).parent_path().empty()) config_path = "config.json";
            if (!fs::exists(config_path, ec))
                throw Error(path + ": a Hugging Face safetensors file needs its config.json beside it (" + config_path +
                            " does not exist)");
            weight_files.push_back(path);
        }
        bool tied = true;
        config = parse_config(config_path, &tied);

        for (const std::string& f : weight_files) files.emplace_back(f);
        for (size_t fi = 0; fi < files.size(); fi++)
            for (const SafetensorsTensorInfo& t : files[fi].tensors()) {
                const bool prefixed = t.name.compare(0, std::strlen(kPrefix), kPrefix) == 0;
                const std::string key = prefixed ? t.name.substr(std::strlen(kPrefix)) : t.name;
                auto [it, inserted] = tensors.emplace(key, Loc{fi, &t});
                if (!inserted)
                    throw Error(files[fi].path() + ": tensor '" + t.name + "' appears twice (also as '" +
                                it->second.info->name + "' in " + files[it->second.file].path() + ")");
                if (!index_path.empty()) {
                    auto w = weight_map.find(t.name);
                    if (w == weight_map.end() || fs::path(files[fi].path()).filename() != w->second)
                        throw Error(index_path + ": tensor '" + t.name + "' is in " + files[fi].path() +
                                    " but the weight_map " +
                                    (w == weight_map.end() ? "does not list it" : "puts it in " + w->second));
                }
            }

        // Every parameter must be there with its shape; nothing else may be.
        const std::string where = files.size() == 1 ? files[0].path() : path;
        const Table table = gpt2_param_table(config);
        std::map<std::string, bool> used;
        for (size_t i = 0; i < table.size(); i++) {
            HfTensor h = hf_tensor_of(config, table[i]);
            auto it = tensors.find(h.name);
            // A file whose tied embedding was saved once, as the LM head (safetensors' save_model keeps the
            // first of the shared names, lm_head.weight): that tensor is wte.
            if (it == tensors.end() && h.name == "wte.weight" && tied) {
                it = tensors.find("lm_head.weight");
                if (it != tensors.end()) {
                    check(it->second, h.shape, " (the LM head, tied to wte and stored in its place)");
                    used["lm_head.weight"] = true;
                }
            }
            if (it == tensors.end())
                throw Error(where + ": tensor '" + h.name + "' (or '" + kPrefix + h.name +
                            "') is missing; expected shape " + shape_str(h.shape));
            check(it->second, h.shape, h.transposed ? " (a Conv1D weight, stored (in, out))" : "");
            params.push_back(it->second);
            hf.push_back(h);
            used[h.name] = true;
        }
        if (auto it = tensors.find("lm_head.weight"); it != tensors.end() && !used.count("lm_head.weight")) {
            check(it->second, {(size_t)config.vocab_size, (size_t)config.n_embd}, " (the LM head, tied to wte)");
            has_lm_head = true;
            lm_head = it->second;
            used["lm_head.weight"] = true;
        }
        if (!tied && !has_lm_head)
            throw Error(config_path + ": field 'tie_word_embeddings' is false, but " + where +
                        " holds no lm_head.weight: transformers would start that head from random values, and "
                        "tune.cu's GPT-2 ties it to wte; set the field to true if the head is wte");
        std::vector<std::string> extra;
        for (const auto& [name, loc] : tensors)
            if (!used.count(name) && !is_mask_buffer(name)) extra.push_back(loc.info->name);
        if (!extra.empty()) {
            std::string list;
            for (size_t i = 0; i < extra.size() && i < 5; i++) list += (i ? "', '" : "") + extra[i];
            throw Error(where + ": unexpected tensor" + (extra.size() > 1 ? "s '" : " '") + list + "'" +
                        (extra.size() > 5 ? " and " + std::to_string(extra.size() - 5) + " more" : "") +
                        ", which are not part of a GPT-2 LM model with " + config.describe());
        }
    }

    void check(const Loc& l, const std::vector<size_t>& want, const char* role) const {
        const SafetensorsDtype d = l.info->dtype;
        if (d != SafetensorsDtype::F32 && d != SafetensorsDtype::F16 && d != SafetensorsDtype::BF16 &&
            d != SafetensorsDtype::F64)
            fail(l, std::string("has dtype ") + safetensors_dtype_name(d) + ", expected F32, F16, BF16 or F64");
        if (std::vector<size_t>(l.info->shape.begin(), l.info->shape.end()) != want)
            fail(l, "has shape " + shape_str(l.info->shape) + ", expected " + shape_str(want) + role + " for " +
                        config.describe());
    }

    std::vector<float> read(const Loc& l) const { return files[l.file].read_f32(l.info->name); }
};

}  // namespace

bool looks_like_hf_gpt2(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) return true;
    std::ifstream f(path, std::ios::binary);
    uint8_t head[9];
    if (!f.read(reinterpret_cast<char*>(head), sizeof head)) return false;
    const uint64_t n = load_u64(head);
    const uintmax_t size = fs::file_size(path, ec);
    return !ec && head[8] == '{' && n <= SafetensorsFile::kMaxHeaderBytes && n + 8 <= size;
}

ModelConfig hf_gpt2_config(const std::string& path) { return HfCheckpoint(path).config; }

void load_hf_gpt2(const std::string& path, GPT2& model) {
    HfCheckpoint ck(path);
    if (ck.config != model.config())
        throw Error(path + ": config " + ck.config.describe() + " does not match the model's " +
                    model.config().describe());
    const ModelConfig& c = model.config();
    const Table& t = model.params().table();
    const int wte = t.find("wte");
    if (ck.has_lm_head) {
        // Checked before anything is uploaded, so a refused file leaves the model as it was.
        const std::vector<float> e = ck.read(ck.params[wte]), h = ck.read(ck.lm_head);
        for (size_t k = 0; k < e.size(); k++)
            if (std::memcmp(&e[k], &h[k], sizeof(float)) != 0)
                ck.fail(ck.lm_head, "differs from wte.weight (first at row " + std::to_string(k / c.n_embd) +
                                        ", column " + std::to_string(k % c.n_embd) + ": " + std::to_string(h[k]) +
                                        " vs " + std::to_string(e[k]) +
                                        "): an untied LM head, which tune.cu's GPT-2 (head tied to wte) cannot hold");
    }
    std::vector<float> host;
    for (size_t i = 0; i < model.num_base_tensors(); i++) {  // PEFT tensors, if any, are not GPT-2's
        const std::vector<float> v = ck.read(ck.params[i]);
        const HfTensor& h = ck.hf[i];
        const std::string bad = non_finite_weight(ck.params[i].info->name, h.shape, v.data(), v.size());
        if (!bad.empty()) throw Error(ck.files[ck.params[i].file].path() + ": " + bad);
        host.assign(t[i].numel, 0.0f);  // wte's padded rows stay zero
        if (h.transposed) {
            const size_t in = h.shape[0], out = h.shape[1];
            for (size_t r = 0; r < in; r++)
                for (size_t o = 0; o < out; o++) host[o * in + r] = v[r * out + o];
        } else {
            std::copy(v.begin(), v.end(), host.begin());
        }
        model.set_param(i, host.data());
    }
}

// The two files of export_hf, into an existing directory: both are written whole before either takes its name.
static void write_hf_files(const GPT2& model, const std::string& dir) {
    const ModelConfig& c = model.config();
    const Table& t = model.params().table();
    std::vector<std::vector<float>> data(t.size());  // the writer borrows these until write()
    std::vector<float> ours;
    SafetensorsWriter w;
    for (size_t i = 0; i < model.num_base_tensors(); i++) {
        ours = model.merged_base_tensor(i);  // LoRA, if any, merged in
        const HfTensor h = hf_tensor_of(c, t[i]);
        std::vector<float>& v = data[i];
        if (h.transposed) {
            const size_t in = h.shape[0], out = h.shape[1];
            v.resize(in * out);
            for (size_t r = 0; r < in; r++)
                for (size_t o = 0; o < out; o++) v[r * out + o] = ours[o * in + r];
        } else {
            v.assign(ours.begin(), ours.begin() + (ptrdiff_t)(h.shape[0] * (h.shape.size() > 1 ? h.shape[1] : 1)));
        }
        w.add(h.name, SafetensorsDtype::F32, std::vector<uint64_t>(h.shape.begin(), h.shape.end()), v.data(),
              v.size() * sizeof(float));
    }
    w.set_metadata("format", "pt");  // transformers refuses safetensors files without it
    AtomicFile weights((fs::path(dir) / "model.safetensors").string());
    w.write(weights);

    json cfg = {
        {"architectures", {"GPT2LMHeadModel"}},
        {"model_type", "gpt2"},
        {"vocab_size", c.vocab_size},
        {"n_positions", c.block_size},
        {"n_ctx", c.block_size},
        {"n_embd", c.n_embd},
        {"n_head", c.n_head},
        {"n_layer", c.n_layer},
        {"n_inner", nullptr},
        {"activation_function", "gelu_new"},
        {"layer_norm_epsilon", 1e-5},
        {"initializer_range", 0.02},
        // GPT-2's published dropout, for whoever trains the export further in transformers; inference
        // (eval mode) does not use it, and tune.cu trains without dropout.
        {"attn_pdrop", 0.1},
        {"embd_pdrop", 0.1},
        {"resid_pdrop", 0.1},
        {"scale_attn_weights", true},
        {"scale_attn_by_inverse_layer_idx", false},
        {"reorder_and_upcast_attn", false},
        {"tie_word_embeddings", true},
        {"use_cache", true},
        {"torch_dtype", "float32"},
    };
    // GPT-2's <|endoftext|> where the vocabulary has it; transformers defaults to 50256 when the field is
    // absent and warns when that is out of range, so a smaller vocabulary says null explicitly.
    const json eot = c.vocab_size > 50256 ? json(50256) : json(nullptr);
    cfg["bos_token_id"] = eot;
    cfg["eos_token_id"] = eot;
    const std::string text = cfg.dump(2) + "\n";
    const std::string config_path = (fs::path(dir) / "config.json").string();
    AtomicFile config(config_path);
    config.write(text.data(), text.size());
    config.sync();
    // TEACH: the slow part (hundreds of MB, a disk that may fill) is done and on disk under temporary names;
    // only two renames remain. The config goes first: if it cannot take its name, the weights do not either.
    // If the weights then cannot take theirs, the old config is put back. Either way the directory keeps a
    // matching pair; only a crash in the microseconds between the two renames could mix them.
    std::error_code ec;
    const bool had_config = fs::is_regular_file(config_path, ec);
    const std::vector<uint8_t> old_config = had_config ? read_file_bytes(config_path) : std::vector<uint8_t>{};
    config.commit();
    try {
        weights.commit();
    } catch (const Error& e) {
        try {
            if (had_config)
                write_file_atomic(config_path, old_config.data(), old_config.size());
            else
                fs::remove(config_path);
        } catch (const std::exception& restore) {
            throw Error(std::string(e.what()) + "; and the old config.json could not be put back (" +
                        restore.what() + "): " + config_path + " now describes weights that are not there");
        }
        throw;
    }
}

void export_hf(const GPT2& model, const std::string& dir) {
    if (model.virtual_tokens() > 0)  // before the directory is made: a refusal leaves nothing behind
        throw Error(dir + ": this model has " + std::string(virtual_name(model.peft().virt)) +
                    " virtual tokens, which a Hugging Face GPT-2 cannot hold; export the base model and keep the "
                    "adapter checkpoint beside it");
    std::error_code ec;
    fs::path made;  // the outermost directory this call creates, if any
    for (fs::path p = fs::absolute(dir, ec); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
        made = p;
        if (p == p.parent_path()) break;
    }
    fs::create_directories(dir, ec);
    if (ec) throw Error(dir + ": cannot create the directory (" + ec.message() + ")");
    // Both files are replaced, or neither (write_hf_files); a failure part way (a full disk) also takes back
    // the directories made here.
    try {
        write_hf_files(model, dir);
    } catch (...) {
        if (!made.empty()) fs::remove_all(made, ec);
        throw;
    }
}

}  // namespace tune
