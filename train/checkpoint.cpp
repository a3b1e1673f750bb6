#include "train/checkpoint.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "data/fileio.h"

namespace tune {

using json = nlohmann::json;

namespace {

json config_json(const ModelConfig& c) {
    return json{{"block_size", c.block_size}, {"vocab_size", c.vocab_size}, {"padded_vocab_size", c.padded_vocab_size},
                {"n_layer", c.n_layer},       {"n_head", c.n_head},         {"n_embd", c.n_embd}};
}

// A parsed, validated checkpoint file held in memory.
struct CkptFile {
    std::string path;
    std::vector<uint8_t> bytes;
    json header;
    size_t data_start = 0;
    ModelConfig config;

    [[noreturn]] void fail(const std::string& what) const { throw Error(path + ": " + what); }

    int get_int(const json& obj, const char* field, const std::string& where) const {
        if (!obj.contains(field) || !obj[field].is_number_integer())
            fail(where + " field '" + field + "' is missing or not an integer");
        return obj[field].get<int>();
    }

    explicit CkptFile(const std::string& p) : path(p), bytes(read_file_bytes(p)) {
        if (bytes.size() < 16)
            fail("truncated: " + std::to_string(bytes.size()) + " bytes, shorter than the 16-byte header");
        if (std::memcmp(bytes.data(), kCkptMagic, 8) != 0) fail("not a tune.cu checkpoint (bad magic)");
        const uint32_t version = load_u32(&bytes[8]);
        if (version != kCkptVersion)
            fail("checkpoint version " + std::to_string(version) + ", this build reads version " +
                 std::to_string(kCkptVersion));
        const uint32_t hlen = load_u32(&bytes[12]);
        if (hlen > bytes.size() - 16)
            fail("truncated: header length " + std::to_string(hlen) + " runs past the end of the file (" +
                 std::to_string(bytes.size()) + " bytes)");
        data_start = 16 + (size_t)hlen;
        header = json::parse(bytes.begin() + 16, bytes.begin() + data_start, nullptr, false);
        if (header.is_discarded() || !header.is_object()) fail("header is not a JSON object");
        if (!header.contains("kind") || !header["kind"].is_string() ||
            (header["kind"] != "weights" && header["kind"] != "resume"))
            fail("header field 'kind' must be \"weights\" or \"resume\"");
        if (!header.contains("config") || !header["config"].is_object()) fail("header field 'config' is missing");
        const json& c = header["config"];
        config.block_size = get_int(c, "block_size", "config");
        config.vocab_size = get_int(c, "vocab_size", "config");
        config.padded_vocab_size = get_int(c, "padded_vocab_size", "config");
        config.n_layer = get_int(c, "n_layer", "config");
        config.n_head = get_int(c, "n_head", "config");
        config.n_embd = get_int(c, "n_embd", "config");
        validate_config(config, path);
        if (!header.contains("tensors") || !header["tensors"].is_array()) fail("header field 'tensors' is missing");
        // Every tensor must lie inside the data region, and together they must fill it exactly.
        const size_t data_bytes = bytes.size() - data_start;
        size_t expect_offset = 0;
        for (const json& t : header["tensors"]) {
            if (!t.is_object() || !t.contains("name") || !t["name"].is_string() || !t.contains("offset") ||
                !t["offset"].is_number_unsigned() || !t.contains("bytes") || !t["bytes"].is_number_unsigned())
                fail("a tensor entry lacks name, offset or bytes");
            const size_t off = t["offset"].get<size_t>(), n = t["bytes"].get<size_t>();
            const std::string name = t["name"].get<std::string>();
            if (off != expect_offset || n % 4 != 0)
                fail("tensor '" + name + "' has offset " + std::to_string(off) + " / " + std::to_string(n) +
                     " bytes, expected offset " + std::to_string(expect_offset) + " and a multiple of 4 bytes");
            if (n > data_bytes || off > data_bytes - n)
                fail("truncated: tensor '" + name + "' needs bytes up to " + std::to_string(off + n) +
                     " of the data region, which holds " + std::to_string(data_bytes));
            expect_offset = off + n;
        }
        if (expect_offset != data_bytes)
            fail("trailing bytes: the tensors end at " + std::to_string(expect_offset) + " but the data region holds " +
                 std::to_string(data_bytes));
    }

    // Copies the named tensor (float32 in the file) into dst after checking its size.
    const float* find(const std::string& name, size_t numel) const {
        for (const json& t : header["tensors"]) {
            if (t["name"] != name) continue;
            if (t["bytes"].get<size_t>() != numel * 4)
                fail("tensor '" + name + "' holds " + std::to_string(t["bytes"].get<size_t>() / 4) +
                     " values, the model expects " + std::to_string(numel));
            return reinterpret_cast<const float*>(bytes.data() + data_start + t["offset"].get<size_t>());
        }
        fail("tensor '" + name + "' is missing");
    }
};

struct Writer {
    json tensors = json::array();
    std::vector<uint8_t> data;
    void add(const std::string& name, const std::vector<size_t>& shape, const std::vector<float>& v) {
        tensors.push_back({{"name", name}, {"shape", shape}, {"offset", data.size()}, {"bytes", v.size() * 4}});
        const uint8_t* p = reinterpret_cast<const uint8_t*>(v.data());
        data.insert(data.end(), p, p + v.size() * 4);
    }
};

std::vector<float> fetch(Backend& be, const Arena& a, size_t i) {
    std::vector<float> v(a.table()[i].numel);
    be.download(v.data(), a.ptr(i), a.dtype(), v.size());
    return v;
}

}  // namespace

void save_checkpoint(const std::string& path, const GPT2& model, AdamW* opt, const TrainState* state, bool write) {
    GPT2& m = const_cast<GPT2&>(model);
    Backend& be = m.backend();
    Writer w;
    const Table& ptab = model.params().table();
    const std::vector<int>& gidx = model.grad_index();
    // DIST: a sharded optimizer's state_tensor() is a gather every rank takes part in; only the writer keeps it.
    for (size_t i = 0; i < ptab.size(); i++) {
        // The master copy is the true value of a trainable tensor when the backend keeps one.
        const bool master = opt && be.has_master() && gidx[i] >= 0;
        if (master) {
            std::vector<float> v = opt->state_tensor(AdamW::State::master, gidx[i]);
            if (write) w.add(ptab[i].name, ptab[i].shape, v);
        } else if (write) {
            w.add(ptab[i].name, ptab[i].shape, fetch(be, model.params(), i));
        }
    }
    json header{{"kind", "weights"}, {"config", config_json(model.config())}};
    if (opt && state) {
        header["kind"] = "resume";
        const Table& gtab = model.grads().table();
        for (size_t g = 0; g < gtab.size(); g++) {
            std::vector<float> mg = opt->state_tensor(AdamW::State::m, g), vg = opt->state_tensor(AdamW::State::v, g);
            if (!write) continue;
            w.add("m/" + gtab[g].name, gtab[g].shape, mg);
            w.add("v/" + gtab[g].name, gtab[g].shape, vg);
        }
        header["state"] = {{"step", state->step},
                           {"opt_t", opt->t()},
                           {"rng", state->rng},
                           {"loader_epoch", state->loader.epoch},
                           {"loader_cursor", state->loader.cursor},
                           {"loss_scale", state->loss_scale},
                           {"loss_scale_clean", state->loss_scale_clean},
                           {"skipped_steps", state->skipped_steps}};
    }
    if (!write) return;
    header["tensors"] = w.tensors;
    const std::string h = header.dump();
    std::vector<uint8_t> out(16 + h.size() + w.data.size());
    std::memcpy(out.data(), kCkptMagic, 8);
    store_u32(&out[8], kCkptVersion);
    store_u32(&out[12], (uint32_t)h.size());
    std::memcpy(&out[16], h.data(), h.size());
    if (!w.data.empty()) std::memcpy(&out[16 + h.size()], w.data.data(), w.data.size());
    write_file_atomic(path, out.data(), out.size());
}

ModelConfig checkpoint_config(const std::string& path) { return CkptFile(path).config; }

void load_checkpoint(const std::string& path, GPT2& model, AdamW* opt, TrainState* state) {
    CkptFile f(path);
    if (f.config != model.config())
        f.fail("config " + f.config.describe() + " does not match the model's " + model.config().describe());
    Backend& be = model.backend();
    const Table& ptab = model.params().table();
    for (size_t i = 0; i < ptab.size(); i++)
        be.upload(model.params().ptr(i), model.params().dtype(), f.find(ptab[i].name, ptab[i].numel), ptab[i].numel);
    if (opt) opt->sync_master_from_params();
    if (!opt || !state) return;
    if (f.header["kind"] != "resume") f.fail("holds weights only; --resume needs a resume checkpoint");
    const Table& gtab = model.grads().table();
    for (size_t g = 0; g < gtab.size(); g++) {
        opt->set_state_tensor(AdamW::State::m, g, f.find("m/" + gtab[g].name, gtab[g].numel));
        opt->set_state_tensor(AdamW::State::v, g, f.find("v/" + gtab[g].name, gtab[g].numel));
    }
    if (!f.header.contains("state") || !f.header["state"].is_object()) f.fail("resume checkpoint without 'state'");
    const json& s = f.header["state"];
    auto u64 = [&](const char* k) {
        if (!s.contains(k) || !s[k].is_number_unsigned()) f.fail(std::string("state field '") + k + "' is missing");
        return s[k].get<uint64_t>();
    };
    state->step = u64("step");
    state->rng = u64("rng");
    state->loader.epoch = u64("loader_epoch");
    state->loader.cursor = u64("loader_cursor");
    state->skipped_steps = u64("skipped_steps");
    state->loss_scale_clean = u64("loss_scale_clean");
    opt->set_t((int)u64("opt_t"));
    if (!s.contains("loss_scale") || !s["loss_scale"].is_number()) f.fail("state field 'loss_scale' is missing");
    state->loss_scale = s["loss_scale"].get<double>();
}

}  // namespace tune
