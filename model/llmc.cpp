#include "model/llmc.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/fileio.h"
#include "data/safetensors.h"
#include "model/weights.h"

namespace tune {

namespace {

// The 16 tensors of an llm.c file in file order: our table name (after "h.<l>." for per-layer ones)
// and the number of elements per layer (or in total).
struct Slab {
    std::string name;
    bool per_layer;
    size_t numel;
};

std::vector<Slab> llmc_layout(size_t Vp, size_t maxT, size_t C) {
    return {{"wte", false, Vp * C},
            {"wpe", false, maxT * C},
            {"ln_1.weight", true, C},
            {"ln_1.bias", true, C},
            {"attn.c_attn.weight", true, 3 * C * C},
            {"attn.c_attn.bias", true, 3 * C},
            {"attn.c_proj.weight", true, C * C},
            {"attn.c_proj.bias", true, C},
            {"ln_2.weight", true, C},
            {"ln_2.bias", true, C},
            {"mlp.c_fc.weight", true, 4 * C * C},
            {"mlp.c_fc.bias", true, 4 * C},
            {"mlp.c_proj.weight", true, C * 4 * C},
            {"mlp.c_proj.bias", true, C},
            {"ln_f.weight", false, C},
            {"ln_f.bias", false, C}};
}

std::string table_name(const Slab& s, int l) { return s.per_layer ? "h." + std::to_string(l) + "." + s.name : s.name; }

// A validated llm.c file: header fields and where the data lies. Tensor values are read on request.
struct LlmcFile {
    std::string path;
    int32_t version = 0;
    size_t elem_bytes = 0;
    int Vp_file = 0;  // the file's padded vocabulary (rows of its wte)
    ModelConfig config;

    [[noreturn]] void fail(const std::string& what) const { throw Error(path + ": llm.c model file: " + what); }

    explicit LlmcFile(const std::string& p) : path(p) {
        std::error_code ec;
        const uintmax_t size = std::filesystem::file_size(path, ec);
        if (ec) throw Error(path + ": cannot read its size (" + ec.message() + ")");
        const size_t header_bytes = kLlmcHeaderInts * 4;
        if (size < header_bytes)
            fail("truncated: " + std::to_string(size) + " bytes, shorter than the " + std::to_string(header_bytes) +
                 "-byte header");
        uint8_t raw[kLlmcHeaderInts * 4];
        read_at(0, raw, sizeof raw);
        auto field = [&](int i) { return (int32_t)load_u32(raw + 4 * i); };
        if (field(0) != kLlmcMagic)
            fail("header[0] (magic) is " + std::to_string(field(0)) + ", expected " + std::to_string(kLlmcMagic));
        version = field(1);
        if (version == kLlmcVersionF32)
            elem_bytes = 4;
        else if (version == kLlmcVersionBF16)
            elem_bytes = 2;
        else
            fail("header[1] (version) is " + std::to_string(version) + ", expected 3 (fp32) or 5 (bf16); " +
                 "files from older llm.c versions lack the padded vocabulary: re-export them with a current llm.c");
        const char* names[] = {"",           "",          "max_seq_len", "vocab_size",
                               "num_layers", "num_heads", "channels",    "padded_vocab_size"};
        for (int i = 2; i <= 7; i++)
            if (field(i) <= 0)
                fail("header[" + std::to_string(i) + "] (" + names[i] + ") is " + std::to_string(field(i)) +
                     ", expected > 0");
        config.block_size = field(2);
        config.vocab_size = field(3);
        config.n_layer = field(4);
        config.n_head = field(5);
        config.n_embd = field(6);
        config.padded_vocab_size = pad_vocab(config.vocab_size);
        Vp_file = field(7);
        if (config.n_embd % config.n_head != 0)
            fail("header[6] (channels) is " + std::to_string(config.n_embd) + ", expected a multiple of header[5] " +
                 "(num_heads) = " + std::to_string(config.n_head));
        if (Vp_file < config.vocab_size)
            fail("header[7] (padded_vocab_size) is " + std::to_string(Vp_file) + ", expected >= header[3] " +
                 "(vocab_size) = " + std::to_string(config.vocab_size));
        validate_config(config, path);
        // Every field is below 2^31, so the largest product, L * 4C * C, stays below 2^95: check as we go.
        size_t total = 0;
        for (const Slab& s : llmc_layout((size_t)Vp_file, (size_t)config.block_size, (size_t)config.n_embd)) {
            size_t n = s.numel, layers = s.per_layer ? (size_t)config.n_layer : 1;
            if (__builtin_mul_overflow(n, layers, &n) || __builtin_add_overflow(total, n, &total))
                fail("the header's shapes overflow a 64-bit size");
        }
        size_t need = 0;
        if (__builtin_mul_overflow(total, elem_bytes, &need) || __builtin_add_overflow(need, header_bytes, &need))
            fail("the header's shapes overflow a 64-bit size");
        if (size != need)
            fail(std::string(size < need ? "truncated" : "trailing bytes") + ": the file has " + std::to_string(size) +
                 " bytes, the header (" + config.describe() + ", padded_vocab_size " + std::to_string(Vp_file) +
                 ", version " + std::to_string(version) + ") needs " + std::to_string(need) + " = " +
                 std::to_string(header_bytes) + " + " + std::to_string(total) + " parameters x " +
                 std::to_string(elem_bytes) + " bytes");
    }

    void read_at(size_t offset, void* dst, size_t n) const {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
        f.seekg((std::streamoff)offset);
        if (!f.read(static_cast<char*>(dst), (std::streamsize)n))
            throw Error(path + ": read of " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                        " failed");
    }

    // n values starting at element `elem` of the data region, as f32.
    void read_f32(size_t elem, float* dst, size_t n) const {
        const size_t offset = kLlmcHeaderInts * 4 + elem * elem_bytes;
        if (elem_bytes == 4) {
            read_at(offset, dst, n * 4);
            if (!little_endian())
                for (size_t i = 0; i < n; i++) {
                    uint8_t* b = reinterpret_cast<uint8_t*>(dst + i);
                    const uint32_t v = load_u32(b);
                    std::memcpy(b, &v, 4);
                }
            return;
        }
        std::vector<uint8_t> raw(n * 2);
        read_at(offset, raw.data(), raw.size());
        for (size_t i = 0; i < n; i++) dst[i] = bf16_bits_to_f32((uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8));
    }

    static bool little_endian() {
        const uint32_t one = 1;
        uint8_t b;
        std::memcpy(&b, &one, 1);
        return b == 1;
    }
};

}  // namespace

ModelConfig llmc_config(const std::string& path) { return LlmcFile(path).config; }

void load_llmc(const std::string& path, GPT2& model) {
    LlmcFile f(path);
    if (f.config != model.config())
        f.fail("config " + f.config.describe() + " does not match the model's " + model.config().describe());
    const ModelConfig& c = model.config();
    const Table& t = model.params().table();
    std::vector<float> host;
    size_t elem = 0;  // position in the file's data region, in elements
    for (const Slab& s : llmc_layout((size_t)f.Vp_file, (size_t)c.block_size, (size_t)c.n_embd)) {
        const int layers = s.per_layer ? c.n_layer : 1;
        for (int l = 0; l < layers; l++, elem += s.numel) {
            const int i = t.find(table_name(s, l));
            if (i < 0) throw std::logic_error("llm.c layout names a tensor the model lacks: " + table_name(s, l));
            // wte: only the real V rows; the model's padded rows stay zero.
            const size_t n = s.name == "wte" ? (size_t)c.vocab_size * c.n_embd : s.numel;
            host.assign(t[i].numel, 0.0f);
            f.read_f32(elem, host.data(), n);
            const std::string bad = non_finite_weight(table_name(s, l), t[i].shape, host.data(), n);
            if (!bad.empty()) f.fail(bad);
            model.set_param(i, host.data());
        }
    }
}

void export_llmc(const GPT2& model, const std::string& path, bool bf16) {
    const ModelConfig& c = model.config();
    const Table& t = model.params().table();
    if (model.virtual_tokens() > 0)
        throw Error(path + ": this model has " + std::string(virtual_name(model.peft().virt)) +
                    " virtual tokens, which an llm.c model file cannot hold");
    size_t total = 0;
    const auto layout = llmc_layout((size_t)c.padded_vocab_size, (size_t)c.block_size, (size_t)c.n_embd);
    for (const Slab& s : layout) total += s.numel * (s.per_layer ? (size_t)c.n_layer : 1);
    const size_t width = bf16 ? 2 : 4;
    std::vector<uint8_t> out(kLlmcHeaderInts * 4 + total * width, 0);
    const int32_t header[8] = {kLlmcMagic, bf16 ? kLlmcVersionBF16 : kLlmcVersionF32,
                               c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.padded_vocab_size};
    for (int i = 0; i < 8; i++) store_u32(&out[4 * i], (uint32_t)header[i]);
    std::vector<float> host;
    size_t pos = kLlmcHeaderInts * 4;
    for (const Slab& s : layout) {
        const int layers = s.per_layer ? c.n_layer : 1;
        for (int l = 0; l < layers; l++) {
            const int i = t.find(table_name(s, l));
            if (i < 0 || t[i].numel != s.numel)
                throw std::logic_error("llm.c layout disagrees with the parameter table at " + table_name(s, l));
            host = model.merged_base_tensor(i);  // LoRA, if any, merged in
            for (float v : host) {
                if (bf16) {
                    const uint16_t h = f32_to_bf16_rne(v);
                    out[pos] = (uint8_t)h;
                    out[pos + 1] = (uint8_t)(h >> 8);
                } else {
                    uint32_t bits;
                    std::memcpy(&bits, &v, 4);
                    store_u32(&out[pos], bits);
                }
                pos += width;
            }
        }
    }
    write_file_atomic(path, out.data(), out.size());
}

}  // namespace tune
