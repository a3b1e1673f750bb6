#include "train/checkpoint.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <nlohmann/json.hpp>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "model/weights.h"
#include "train/dist.h"

namespace tune {

using json = nlohmann::json;

namespace {

json peft_json(const PeftConfig& p) {
    json j{{"virtual", virtual_name(p.virt)}, {"n_virtual", p.virtual_tokens()}, {"hidden", p.hidden}};
    if (p.lora())
        j.update({{"lora_rank", p.lora_rank},
                  {"lora_alpha", p.lora_alpha},
                  {"lora_targets", lora_targets_string(p.lora_targets)},
                  {"lora_dropout", p.lora_dropout}});  // a training setting, kept so --resume needs no flags
    return j;
}

json config_json(const ModelConfig& c) {
    return json{{"block_size", c.block_size}, {"vocab_size", c.vocab_size}, {"padded_vocab_size", c.padded_vocab_size},
                {"n_layer", c.n_layer},       {"n_head", c.n_head},         {"n_embd", c.n_embd}};
}

// A checksum of the whole file, written into its header ("checksum", 16 hex digits) with those digits counted as
// '0's: any byte changed after writing (a damaged disk, a truncated copy patched by hand, an edited header) is
// caught when the file is read, instead of loading other weights or another run's state. 64-bit words mixed by
// multiply and rotate: about 0.3 s per GB, paid once per load (the header-only readers skip it).
constexpr const char kChecksumField[] = "\"checksum\":\"";
constexpr size_t kChecksumDigits = 16;

// The running state over p[0, n): whole words, then any tail byte by byte. A file hashed in parts gives the
// same as in one when every part but the last is a whole number of words.
uint64_t checksum64_mix(uint64_t h, const uint8_t* p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x94D049BB133111EBull;
    return h;
}
uint64_t checksum64_start(size_t total) { return 0x9E3779B97F4A7C15ull ^ total; }
uint64_t checksum64_end(uint64_t h) { return h ^ (h >> 29); }

// Where the checksum's digits sit in the header bytes [16, 16 + hlen), or 0 when the header has none.
size_t checksum_position(const uint8_t* bytes, size_t header_end) {
    const size_t flen = sizeof kChecksumField - 1;
    const uint8_t *begin = bytes + 16, *end = bytes + header_end;
    const uint8_t* it = std::search(begin, end, kChecksumField, kChecksumField + flen);
    if (it == end || (size_t)(end - it) < flen + kChecksumDigits) return 0;
    return (size_t)(it - bytes) + flen;
}

// The checksum of bytes[0, n) with the digits at `pos` counted as '0's, without writing to them (the file is
// mapped read-only): the words around the digits are hashed from a copy, the rest in place.
uint64_t file_checksum(const uint8_t* bytes, size_t n, size_t pos) {
    const size_t lo = pos / 8 * 8, hi = std::min(n, (pos + kChecksumDigits + 7) / 8 * 8);
    std::vector<uint8_t> around(bytes + lo, bytes + hi);
    std::memset(&around[pos - lo], '0', kChecksumDigits);
    uint64_t h = checksum64_mix(checksum64_start(n), bytes, lo);
    h = checksum64_mix(h, around.data(), around.size());
    return checksum64_end(checksum64_mix(h, bytes + hi, n - hi));
}

// A parsed, validated checkpoint file (with `verify`, all of it, memory-mapped; without, its header only).
struct CkptFile {
    std::string path;
    // The whole file mapped: its pages are the kernel's page cache, shared by every rank of a node that loads
    // it, rather than a copy of (for gpt2-xl) 20 GB in each process.
    std::unique_ptr<MappedFile> map;
    std::vector<uint8_t> copy;  // the header only, or a whole file that needs realigning (written before 2026-12)
    const uint8_t* bytes = nullptr;  // the file's bytes as read: map's, or copy's
    size_t avail = 0;                // how many of them there are
    size_t size = 0;                 // of the whole file
    bool has_data;
    json header;
    size_t data_start = 0;
    ModelConfig config;
    PeftConfig peft;

    [[noreturn]] void fail(const std::string& what) const { throw Error(path + ": " + what); }

    int get_int(const json& obj, const char* field, const std::string& where) const {
        if (!obj.contains(field) || !obj[field].is_number_integer())
            fail(where + " field '" + field + "' is missing or not an integer");
        const json& x = obj[field];
        // The parser keeps a non-negative integer unsigned: get<int64_t> would wrap one above INT64_MAX to a
        // negative one (18446744073709551615 read as -1).
        const bool huge = x.is_number_unsigned() && x.get<uint64_t>() > (uint64_t)std::numeric_limits<int>::max();
        const int64_t v = huge ? 0 : x.get<int64_t>();
        if (huge || v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
            fail(where + " field '" + field + "' is " + x.dump() + ", outside the range of an int");
        return (int)v;
    }

    // `verify`: read it all and check the checksum (a load). The readers of header fields alone read the
    // header only: a gpt2-xl resume checkpoint is 20 GB, and a resume asks its header several questions.
    explicit CkptFile(const std::string& p, bool verify = true) : path(p), has_data(verify) {
        require_rereadable(p, "a checkpoint");
        if (verify) {
            map = std::make_unique<MappedFile>(p);
            bytes = map->data();
            size = avail = map->size();
        } else {
            copy = read_file_head(p, 16, [](const std::vector<uint8_t>& b) { return 16 + (size_t)load_u32(&b[12]); },
                                  &size);
            bytes = copy.data();
            avail = copy.size();
        }
        // The magic first: a short file that does not start like a checkpoint is some other file, not a
        // truncated checkpoint.
        if (size == 0) fail("empty file (0 bytes), not a tune.cu checkpoint");
        const size_t head = std::min(avail, sizeof kCkptMagic);
        if (std::memcmp(bytes, kCkptMagic, head) != 0)
            fail("not a tune.cu checkpoint: it starts with " +
                 shown_bytes(std::vector<uint8_t>(bytes, bytes + head), sizeof kCkptMagic) + " (" +
                 std::to_string(size) + " bytes in all), where a checkpoint starts with \"TUNECKPT\"");
        if (size < 16) fail("truncated: " + std::to_string(size) + " bytes, shorter than the 16-byte header");
        const uint32_t version = load_u32(&bytes[8]);
        if (version != kCkptVersion)
            fail("checkpoint version " + std::to_string(version) + ", this build reads version " +
                 std::to_string(kCkptVersion));
        const uint32_t hlen = load_u32(&bytes[12]);
        if (hlen > size - 16 || 16 + (size_t)hlen > avail)
            fail("truncated: header length " + std::to_string(hlen) + " runs past the end of the file (" +
                 std::to_string(size) + " bytes)");
        data_start = 16 + (size_t)hlen;
        if (json_depth(std::string_view(reinterpret_cast<const char*>(bytes + 16), hlen)) > kMaxJsonDepth)
            fail("header JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
        header = json::parse(bytes + 16, bytes + data_start, nullptr, false);
        // Checked last (below), after the structure: a truncated file is named as truncated.
        const bool has_checksum = verify && !header.is_discarded() && header.is_object() && header.contains("checksum");
        const uint64_t checksum = has_checksum ? file_checksum_at(data_start) : 0;
        if (has_data && data_start % alignof(float) != 0) {  // written before headers were padded: align the data
            const size_t pad = alignof(float) - data_start % alignof(float);
            copy.assign(bytes, bytes + data_start);
            copy.insert(copy.end(), pad, uint8_t(0));
            copy.insert(copy.end(), bytes + data_start, bytes + avail);
            map.reset();
            bytes = copy.data();
            avail = copy.size();
            data_start += pad;
            size += pad;
        }
        if (header.is_discarded() || !header.is_object()) fail("header is not a JSON object");
        if (!header.contains("kind") || !header["kind"].is_string() ||
            (header["kind"] != "weights" && header["kind"] != "resume" && header["kind"] != "adapter"))
            fail("header field 'kind' must be \"weights\", \"resume\" or \"adapter\"");
        if (!header.contains("config") || !header["config"].is_object()) fail("header field 'config' is missing");
        const json& c = header["config"];
        config.block_size = get_int(c, "block_size", "config");
        config.vocab_size = get_int(c, "vocab_size", "config");
        config.padded_vocab_size = get_int(c, "padded_vocab_size", "config");
        config.n_layer = get_int(c, "n_layer", "config");
        config.n_head = get_int(c, "n_head", "config");
        config.n_embd = get_int(c, "n_embd", "config");
        validate_config(config, path);
        if (header.contains("peft")) {
            const json& p = header["peft"];
            if (!p.is_object() || !p.contains("virtual") || !p["virtual"].is_string())
                fail("header field 'peft' must be an object with a string 'virtual'");
            peft.virt = parse_virtual(p["virtual"].get<std::string>(), path + ": peft field 'virtual'");
            peft.n_virtual = get_int(p, "n_virtual", "peft");
            peft.hidden = get_int(p, "hidden", "peft");
            if (p.contains("lora_rank")) {
                peft.lora_rank = get_int(p, "lora_rank", "peft");
                if (!p.contains("lora_alpha") || !p["lora_alpha"].is_number()) fail("peft field 'lora_alpha' is missing");
                // Read as double and checked before narrowing (a double past float's range converts undefined).
                const double alpha = p["lora_alpha"].get<double>();
                if (!(alpha > 0 && alpha < 1e30)) fail("peft field 'lora_alpha' is " + p["lora_alpha"].dump() + ", expected a positive number");
                peft.lora_alpha = (float)alpha;
                if (p.contains("lora_dropout")) {
                    const json& d = p["lora_dropout"];
                    if (!d.is_number() || !(d.get<double>() >= 0 && d.get<double>() < 1))
                        fail("peft field 'lora_dropout' is " + d.dump() + ", expected a number in [0, 1)");
                    peft.lora_dropout = d.get<float>();
                }
                if (!p.contains("lora_targets") || !p["lora_targets"].is_string())
                    fail("peft field 'lora_targets' is missing");
                try {
                    peft.lora_targets = parse_lora_targets(p["lora_targets"].get<std::string>(), "peft field 'lora_targets'");
                } catch (const Error& e) {
                    fail(e.what());
                }
            }
            validate_peft(peft, config, path);
        }
        if (!header.contains("tensors") || !header["tensors"].is_array()) fail("header field 'tensors' is missing");
        // Every tensor must lie inside the data region, and together they must fill it exactly.
        const size_t data_bytes = size - data_start;
        size_t expect_offset = 0;
        for (const json& t : header["tensors"]) {
            if (!t.is_object() || !t.contains("name") || !t["name"].is_string() || !t.contains("offset") ||
                !t["offset"].is_number_unsigned() || !t.contains("bytes") || !t["bytes"].is_number_unsigned())
                fail("header field 'tensors' entry " + std::to_string(&t - &header["tensors"][0]) + " (" +
                     t.dump().substr(0, 200) + ") lacks a string 'name' or an unsigned 'offset' or 'bytes'");
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
        if (has_checksum) {  // files written before 2026-12-01 have none
            char want[kChecksumDigits + 1];
            std::snprintf(want, sizeof want, "%016llx", (unsigned long long)checksum);
            if (!header["checksum"].is_string() || header["checksum"].get<std::string>() != want)
                fail("checksum mismatch: the file changed after it was written (damaged, or edited by hand), so "
                     "nothing in it can be trusted");
        }
    }

    // The checksum of the file as read (before any realignment), 0 when the header has no checksum digits.
    uint64_t file_checksum_at(size_t header_end) {
        const size_t pos = checksum_position(bytes, header_end);
        return pos ? file_checksum(bytes, avail, pos) : 0;
    }

    // Whether the file holds a tensor of this name.
    bool has(const std::string& name) const {
        for (const json& t : header["tensors"])
            if (t["name"] == name) return true;
        return false;
    }
    // The named tensor (float32 in the file), after checking its size; a missing one is an error.
    const float* find(const std::string& name, size_t numel) const {
        if (!has_data) throw std::logic_error("CkptFile::find on a header-only read of " + path);
        for (const json& t : header["tensors"]) {
            if (t["name"] != name) continue;
            if (t["bytes"].get<size_t>() != numel * 4)
                fail("tensor '" + name + "' holds " + std::to_string(t["bytes"].get<size_t>() / 4) +
                     " values, the model expects " + std::to_string(numel));
            return reinterpret_cast<const float*>(bytes + data_start + t["offset"].get<size_t>());
        }
        fail("tensor '" + name + "' is missing");
    }
    // A parameter tensor: found, and every value finite.
    const float* weight(const std::string& name, const TensorInfo& t) const {
        const float* v = find(name, t.numel);
        const std::string bad = non_finite_weight(name, t.shape, v, t.numel);
        if (!bad.empty()) fail(bad);
        return v;
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

void write_checkpoint(const std::string& path, const json& header_in, const Writer& w) {
    json header = header_in;
    header["tensors"] = w.tensors;
    header["checksum"] = std::string(kChecksumDigits, '0');  // filled in below, once every byte is in place
    std::string h = header.dump();
    // Spaces after the JSON (still valid JSON) so the float data starts 64-byte aligned in the file, and so
    // in the reader's buffer: the tensors are read in place as floats.
    h.append((64 - (16 + h.size()) % 64) % 64, ' ');
    std::vector<uint8_t> head(16 + h.size());
    std::memcpy(head.data(), kCkptMagic, 8);
    store_u32(&head[8], kCkptVersion);
    store_u32(&head[12], (uint32_t)h.size());
    std::memcpy(&head[16], h.data(), h.size());
    // Hashed in two parts (the head is a whole number of words), so the data is never copied: a gpt2-xl
    // resume checkpoint holds 20 GB of it.
    const size_t pos = checksum_position(head.data(), head.size());
    uint64_t sum = checksum64_mix(checksum64_start(head.size() + w.data.size()), head.data(), head.size());
    sum = checksum64_end(checksum64_mix(sum, w.data.data(), w.data.size()));
    char digits[kChecksumDigits + 1];
    std::snprintf(digits, sizeof digits, "%016llx", (unsigned long long)sum);
    std::memcpy(&head[pos], digits, kChecksumDigits);
    AtomicFile f(path);
    f.write(head.data(), head.size());
    f.write(w.data.data(), w.data.size());
    f.commit();
}

}  // namespace

// The header fields of TrainedOn, written only where they differ from the default.
static void add_trained_on(json& header, const TrainedOn& t) {
    if (t.windows != Windows::fixed) header["windows"] = windows_name(t.windows);
    if (t.positions > 0) header["trained_positions"] = t.positions;
}

void save_checkpoint(const std::string& path, const GPT2& model, AdamW* opt, const TrainState* state,
                     const Arena* anchor, bool write, const TrainedOn& trained_on) {
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
    if (model.peft().any()) header["peft"] = peft_json(model.peft());
    add_trained_on(header, trained_on);
    if (opt && state) {
        header["kind"] = "resume";
        if (state->working_copy && be.has_master() && write)
            for (size_t i = 0; i < ptab.size(); i++)
                if (gidx[i] >= 0) w.add("working/" + ptab[i].name, ptab[i].shape, fetch(be, model.params(), i));
        const Table& gtab = model.grads().table();
        for (size_t g = 0; g < gtab.size(); g++) {
            std::vector<float> mg = opt->state_tensor(AdamW::State::m, g), vg = opt->state_tensor(AdamW::State::v, g);
            if (!write) continue;
            w.add("m/" + gtab[g].name, gtab[g].shape, mg);
            w.add("v/" + gtab[g].name, gtab[g].shape, vg);
        }
        if (anchor)  // laid out like the optimizer's state: gathered like it
            for (size_t g = 0; g < gtab.size(); g++) {
                std::vector<float> a = opt->gather(*anchor, g);
                if (write) w.add("anchor/" + gtab[g].name, gtab[g].shape, a);
            }
        std::vector<bool> active;
        for (size_t g = 0; g < gtab.size(); g++) active.push_back(opt->active(g));
        header["state"] = {{"step", state->step},
                           {"opt_t", opt->t()},
                           {"opt_active", active},
                           {"opt_t_offsets", opt->t_offsets()},
                           {"rng", state->rng},
                           {"loader_epoch", state->loader.epoch},
                           {"loader_cursor", state->loader.cursor},
                           {"replay_epoch", state->replay_loader.epoch},
                           {"replay_cursor", state->replay_loader.cursor},
                           {"loader_windows", state->loader_windows},
                           {"replay_windows", state->replay_windows},
                           {"init", state->init},
                           {"loss_scale", state->loss_scale},
                           {"loss_scale_clean", state->loss_scale_clean},
                           {"loss_scaling", state->loss_scaling},
                           {"skipped_steps", state->skipped_steps},
                           {"bad_in_a_row", state->bad_in_a_row},
                           {"options", state->options},
                           {"base_hash", state->base_fingerprint},
                           {"trained_base", state->trained_base},
                           {"teacher_hash", state->teacher_hash},
                           {"fisher_hash", state->fisher_hash}};
    }
    if (write) {
        // Test hook: a write slower than --comm-timeout (after the gathers, which every rank takes part in).
        if (const char* s = std::getenv("TUNE_TEST_SLOW_CHECKPOINT"))
            std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(s)));
        write_checkpoint(path, header, w);
    }
}

void save_merged(const std::string& path, GPT2& model, const TrainedOn& trained_on) {
    Writer w;
    const Table& ptab = model.params().table();
    for (size_t i = 0; i < model.num_base_tensors(); i++) w.add(ptab[i].name, ptab[i].shape, model.merged_base_tensor(i));
    json header{{"kind", "weights"}, {"config", config_json(model.config())}};
    if (model.virtual_tokens() > 0) {
        const PeftConfig f = model.folded_virtual_config();
        const Table t = gpt2_param_table(model.config(), f);
        w.add(t[t.size() - 1].name, t[t.size() - 1].shape, model.folded_virtual_tensor());
        header["peft"] = peft_json(f);
    }
    add_trained_on(header, trained_on);
    write_checkpoint(path, header, w);
}

static std::string hex64(uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
    return b;
}

void save_adapter(const std::string& path, GPT2& model, uint64_t base_fp, const std::vector<std::string>& also,
                  const TrainedOn& trained_on) {
    if (!model.peft().any()) throw Error(path + ": the model has no LoRA or virtual tokens to save as an adapter");
    Writer w;
    const Table& ptab = model.params().table();
    json trained_base = json::array();
    for (size_t i = 0; i < model.num_base_tensors(); i++)
        if (model.grad_index()[i] >= 0 || std::find(also.begin(), also.end(), ptab[i].name) != also.end()) {
            w.add(ptab[i].name, ptab[i].shape, fetch(model.backend(), model.params(), i));
            trained_base.push_back(ptab[i].name);
        }
    PeftConfig out = model.peft();
    size_t end = ptab.size();  // the LoRA tensors end where the virtual-token ones begin
    if (model.virtual_tokens() > 0) {
        out.virt = model.folded_virtual_config().virt;
        out.hidden = 0;
        end -= model.peft().virtual_tensors();
    }
    Backend& be = model.backend();
    for (size_t i = model.num_base_tensors(); i < end; i++) w.add(ptab[i].name, ptab[i].shape, fetch(be, model.params(), i));
    if (model.virtual_tokens() > 0) {
        const Table t = gpt2_param_table(model.config(), out);
        w.add(t[t.size() - 1].name, t[t.size() - 1].shape, model.folded_virtual_tensor());
    }
    json header{{"kind", "adapter"}, {"config", config_json(model.config())}, {"peft", peft_json(out)}};
    if (!trained_base.empty()) header["base_tensors"] = trained_base;
    if (base_fp) header["base_hash"] = hex64(base_fp);
    add_trained_on(header, trained_on);
    write_checkpoint(path, header, w);
}

ModelConfig checkpoint_config(const std::string& path) { return CkptFile(path, false).config; }
PeftConfig checkpoint_peft(const std::string& path) { return CkptFile(path, false).peft; }
bool is_adapter_checkpoint(const std::string& path) { return CkptFile(path, false).header["kind"] == "adapter"; }

TrainedOn checkpoint_trained_on(const std::string& path) {
    const CkptFile f(path, false);
    TrainedOn t;
    if (f.header.contains("windows")) {
        const json& w = f.header["windows"];
        if (!w.is_string() || !windows_from_name(w.get<std::string>(), &t.windows))
            f.fail("header field 'windows' is " + w.dump() + ", expected \"fixed\", \"documents\", \"single\" or "
                   "\"isolated\"");
    }
    if (f.header.contains("trained_positions")) {
        const json& p = f.header["trained_positions"];
        if (!p.is_number_integer() || p.get<int64_t>() < 1 || p.get<int64_t>() > INT_MAX)
            f.fail("header field 'trained_positions' is " + p.dump() + ", expected a positive integer");
        t.positions = (int)p.get<int64_t>();
    }
    return t;
}

bool checkpoint_base_lineage(const std::string& path, uint64_t* base_fp, std::vector<std::string>* trained_base) {
    const CkptFile f(path, false);
    if (!f.header.contains("state") || !f.header["state"].is_object()) return false;
    const json& s = f.header["state"];
    if (!s.contains("base_hash") || !s["base_hash"].is_number_unsigned() || s["base_hash"].get<uint64_t>() == 0 ||
        !s.contains("trained_base") || !s["trained_base"].is_array())
        return false;
    for (const json& n : s["trained_base"])
        if (!n.is_string()) f.fail("state field 'trained_base' holds a non-string");
    *base_fp = s["base_hash"].get<uint64_t>();
    *trained_base = s["trained_base"].get<std::vector<std::string>>();
    return true;
}

std::map<std::string, std::string> checkpoint_options(const std::string& path) {
    std::map<std::string, std::string> out;
    try {
        const CkptFile f(path, false);
        if (!f.header.contains("state") || !f.header["state"].is_object()) return out;
        const json& s = f.header["state"];
        if (!s.contains("options") || !s["options"].is_object()) return out;
        for (const auto& [k, v] : s["options"].items())
            if (v.is_string()) out[k] = v.get<std::string>();
    } catch (const Error&) {
        out.clear();
    }
    return out;
}

bool checkpoint_step(const std::string& path, uint64_t* step) {
    try {
        const CkptFile f(path, false);
        if (!f.header.contains("state") || !f.header["state"].is_object()) return false;
        const json& s = f.header["state"];
        if (!s.contains("step") || !s["step"].is_number_unsigned()) return false;
        *step = s["step"].get<uint64_t>();
        return true;
    } catch (const Error&) {
        return false;
    }
}

void load_checkpoint(const std::string& path, GPT2& model, AdamW* opt, TrainState* state, Arena* anchor) {
    CkptFile f(path);
    if (f.config != model.config())
        f.fail("config " + f.config.describe() + " does not match the model's " + model.config().describe());
    if (f.header["kind"] == "adapter")
        f.fail("is an adapter checkpoint (PEFT tensors only): give it with --adapter, with the base weights it was "
               "trained on as --init (bin/train), --model (bin/generate, bin/evaluate) or WEIGHTS (bin/export)");
    const bool base_only = !f.peft.any();
    if (!base_only && !(f.peft == model.peft()))
        f.fail("holds a model with " + f.peft.describe() + ", but this model was built with " + model.peft().describe());
    Backend& be = model.backend();
    const Table& ptab = model.params().table();
    const size_t n = base_only ? model.num_base_tensors() : ptab.size();
    for (size_t i = 0; i < n; i++)
        model.set_param(i, f.weight(ptab[i].name, ptab[i]));
    if (opt) {
        opt->sync_master_from_params();
        // The file holds the FP32 master values: give them to the master copy unrounded, so a bf16/fp16 run
        // resumes exactly (the working copy above is their rounding, as it was when saved).
        if (be.has_master())
            for (size_t i = 0; i < n; i++)
                if (model.grad_index()[i] >= 0)
                    opt->set_state_tensor(AdamW::State::master, model.grad_index()[i], f.find(ptab[i].name, ptab[i].numel));
    }
    if (!opt || !state) return;
    if (f.header["kind"] != "resume") f.fail("holds weights only; --resume needs a resume checkpoint");
    if (base_only && model.peft().any()) f.fail("was not written with " + model.peft().describe() + "; resume with the options it was");
    // bf16 working weights stored beside the master ones (stochastic rounding) replace their rounding to
    // nearest; a run resumed in another precision rounds the masters as usual.
    const bool bf16_working = be.has_master() && model.params().dtype() == DType::bf16;
    for (size_t i = 0; i < n; i++)
        if (bf16_working && model.grad_index()[i] >= 0 && f.has("working/" + ptab[i].name))
            model.set_param(i, f.weight("working/" + ptab[i].name, ptab[i]));
    const Table& gtab = model.grads().table();
    if (anchor && gtab.size() > 0 && !f.has("anchor/" + gtab[0].name))
        f.fail("holds no L2-SP/EWC anchor (the starting weights): the run was checkpointed without --l2sp or --ewc, "
               "and resuming cannot add them; start a new run from it with --init instead");
    for (size_t g = 0; g < gtab.size(); g++) {
        opt->set_state_tensor(AdamW::State::m, g, f.find("m/" + gtab[g].name, gtab[g].numel));
        opt->set_state_tensor(AdamW::State::v, g, f.find("v/" + gtab[g].name, gtab[g].numel));
        if (anchor) opt->scatter(*anchor, g, f.find("anchor/" + gtab[g].name, gtab[g].numel));
    }
    if (!f.header.contains("state") || !f.header["state"].is_object()) f.fail("resume checkpoint without 'state'");
    const json& s = f.header["state"];
    auto u64 = [&](const char* k) {
        if (!s.contains(k) || !s[k].is_number_unsigned()) f.fail(std::string("state field '") + k + "' is missing");
        return s[k].get<uint64_t>();
    };
    state->step = u64("step");
    if (state->step > (uint64_t)std::numeric_limits<int>::max())  // bin/train counts steps in an int
        f.fail("state field 'step' is " + std::to_string(state->step) + ", more steps than an int counts");
    state->rng = u64("rng");
    state->loader.epoch = u64("loader_epoch");
    state->loader.cursor = u64("loader_cursor");
    // Fields added with the fine-tuning methods: absent in older resume checkpoints, which had none of them.
    auto u64_or = [&](const char* k, uint64_t dflt) { return s.contains(k) ? u64(k) : dflt; };
    state->replay_loader.epoch = u64_or("replay_epoch", 0);
    state->replay_loader.cursor = u64_or("replay_cursor", 0);
    state->loader_windows = u64_or("loader_windows", 0);
    state->replay_windows = u64_or("replay_windows", 0);
    state->skipped_steps = u64("skipped_steps");
    state->bad_in_a_row = u64_or("bad_in_a_row", 0);
    state->loss_scale_clean = u64("loss_scale_clean");
    const uint64_t opt_t = u64("opt_t");
    if (opt_t > (uint64_t)std::numeric_limits<int>::max())
        f.fail("state field 'opt_t' is " + std::to_string(opt_t) + ", more steps than an int counts");
    opt->set_t((int)opt_t);
    if (!s.contains("loss_scale") || !s["loss_scale"].is_number()) f.fail("state field 'loss_scale' is missing");
    state->loss_scale = s["loss_scale"].get<double>();
    // As --loss-scale takes it, and the scale never halves below 1; dloss is a float of it.
    if (!(state->loss_scale >= 1 && state->loss_scale <= std::numeric_limits<float>::max()))
        f.fail("state field 'loss_scale' is " + s["loss_scale"].dump() + ", expected a number from 1 to 3.4e38");
    if (s.contains("loss_scaling") && !s["loss_scaling"].is_boolean()) f.fail("state field 'loss_scaling' is not a boolean");
    // Older checkpoints: a run without dynamic scaling kept the scale at 1 with no clean steps counted.
    state->loss_scaling = s.contains("loss_scaling") ? s["loss_scaling"].get<bool>()
                                                     : state->loss_scale != 1.0 || state->loss_scale_clean != 0;
    if (s.contains("init") && !s["init"].is_string()) f.fail("state field 'init' is not a string");
    state->init = s.value("init", std::string());
    state->base_fingerprint = u64_or("base_hash", 0);
    state->teacher_hash = u64_or("teacher_hash", 0);
    state->fisher_hash = u64_or("fisher_hash", 0);
    if (!s.contains("base_hash") && s.contains("base_fingerprint") && model.peft().any() && launch_info().rank == 0)
        std::fprintf(stderr, "note: %s was written before 2026-12-02, with its base recorded in a form this build "
                     "does not check: the adapter.ckpt this run writes will load on any base of its shape\n",
                     path.c_str());
    state->trained_base.clear();
    if (s.contains("trained_base")) {
        if (!s["trained_base"].is_array()) f.fail("state field 'trained_base' is not an array");
        for (const json& n : s["trained_base"]) {
            if (!n.is_string()) f.fail("state field 'trained_base' holds a non-string");
            state->trained_base.push_back(n.get<std::string>());
        }
    }
    state->options.clear();
    if (s.contains("options")) {
        if (!s["options"].is_object()) f.fail("state field 'options' is not an object");
        for (const auto& [k, v] : s["options"].items()) {
            if (!v.is_string()) f.fail("state field 'options': '" + k + "' is not a string");
            state->options[k] = v.get<std::string>();
        }
    }
    if (s.contains("opt_active") || s.contains("opt_t_offsets")) {
        if (!s.contains("opt_active") || !s["opt_active"].is_array() || !s.contains("opt_t_offsets") ||
            !s["opt_t_offsets"].is_array())
            f.fail("state fields 'opt_active' and 'opt_t_offsets' must both be arrays");
        std::vector<int> offsets;
        for (const json& o : s["opt_t_offsets"]) {
            if (!o.is_number_integer() || o.get<int64_t>() < 0 || o.get<int64_t>() > std::numeric_limits<int>::max())
                f.fail("state field 'opt_t_offsets' holds " + o.dump() + ", expected step numbers");
            offsets.push_back((int)o.get<int64_t>());
        }
        try {
            opt->restore_activity(s["opt_active"].get<std::vector<bool>>(), offsets);
        } catch (const std::exception& e) {
            f.fail(std::string("state fields 'opt_active'/'opt_t_offsets': ") + e.what());
        }
    }
}

void load_adapter(const std::string& path, GPT2& model, std::vector<std::string>* base_tensors) {
    CkptFile f(path);
    if (f.header["kind"] != "adapter") f.fail("is not an adapter checkpoint (bin/train writes adapter.ckpt with LoRA or --virtual)");
    if (f.config != model.config())
        f.fail("was trained on a model with config " + f.config.describe() + ", not this base model's " +
               model.config().describe());
    if (!(f.peft == model.peft()))
        f.fail("holds " + f.peft.describe() + ", but the model was built with " + model.peft().describe());
    // Files written before 2026-12-02 hold 'base_fingerprint', a hash of another form: their adapters load unchecked.
    if (f.header.contains("base_hash")) {
        if (!f.header["base_hash"].is_string()) f.fail("header field 'base_hash' is not a string");
        const std::string want = f.header["base_hash"].get<std::string>();
        const uint64_t have = model.base_fingerprint();
        if (have && hex64(have) != want)
            f.fail("was trained on other base weights (fingerprint " + want + ") than these (" + hex64(have) +
                   "); a merged model.ckpt holds its adapter already: give the base weights the run started from");
    }
    const Table& ptab = model.params().table();
    for (size_t i = model.num_base_tensors(); i < ptab.size(); i++)
        model.set_param(i, f.weight(ptab[i].name, ptab[i]));
    if (f.header.contains("base_tensors")) {  // base tensors that trained beside the adapter replace the base's
        if (!f.header["base_tensors"].is_array()) f.fail("header field 'base_tensors' is not an array");
        for (const json& n : f.header["base_tensors"]) {
            const int i = n.is_string() ? ptab.find(n.get<std::string>()) : -1;
            if (i < 0 || (size_t)i >= model.num_base_tensors())
                f.fail("header field 'base_tensors' names " + n.dump() + ", not a base tensor of this model");
            model.set_param(i, f.weight(ptab[i].name, ptab[i]));
            if (base_tensors) base_tensors->push_back(ptab[i].name);
        }
    }
}

}  // namespace tune
