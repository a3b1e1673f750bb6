// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors, "Format"),
// the file format of Hugging Face model weights, and of our own checkpoints.
//
// Layout of a file:
//   bytes [0, 8)          N, the header length, u64 little-endian
//   bytes [8, 8+N)        UTF-8 JSON object:
//                           {"__metadata__": {"k": "v", ...},                      (optional, string -> string)
//                            "wte.weight": {"dtype": "F32", "shape": [V, C], "data_offsets": [begin, end]},
//                            ...}
//   bytes [8+N, EOF)      the data buffer; [begin, end) of each tensor is relative to its first byte.
// Tensors are row-major ('C' order) and little-endian, with no strides or padding between elements.
//
// What the reader enforces before it trusts any length (every failure is a tune::Error whose message
// starts with the file's path and names the field, the tensor and the value):
//   - N <= 100 MB (the reference implementation's limit) and 8 + N <= file size;
//   - the header is a JSON object, at most kMaxJsonDepth deep, with no duplicate keys at any level;
//   - every entry has a known dtype, a shape of non-negative integers, and data_offsets [begin, end]
//     with begin <= end <= size of the data buffer and end - begin == product(shape) * dtype size
//     (computed with overflow checks);
//   - sorted by offset, the tensors tile the data buffer exactly: no overlap, no hole, nothing after
//     the last tensor (the spec requires the buffer be entirely indexed);
//   - __metadata__, if present and not null, maps strings to strings.
// Unknown fields inside a tensor entry are ignored, as the reference implementation does.
//
// The writer lays tensors out in the reference implementation's order (dtype from widest to narrowest,
// then name, byte-wise), pads the header with spaces to a multiple of 8 bytes, and so puts every tensor
// at an offset that is a multiple of its element size: a file we write is byte-identical to the one
// the official package writes for the same tensors and (at most one key of) metadata.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "kernels/common.h"

namespace tune {

// Every dtype the spec names, in the reference implementation's order (increasing alignment); the
// writer sorts on this order, so it must not be rearranged.
enum class SafetensorsDtype : uint8_t {
    BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
    I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};

// The header spelling: "F32", "BF16", "F8_E4M3", ...
const char* safetensors_dtype_name(SafetensorsDtype t);
// Bits per element: 4 for F4, 6 for F6_*, 8..64 for the rest (C64 is a pair of f32).
size_t safetensors_dtype_bits(SafetensorsDtype t);
// Parses the header spelling (case-sensitive, as in the spec); false if the name is unknown.
bool safetensors_dtype_from_name(const std::string& name, SafetensorsDtype* out);
// The file dtype that holds a tune::DType buffer: f32 -> F32, f64 -> F64, bf16 -> BF16, f16 -> F16.
SafetensorsDtype safetensors_dtype_of(DType t);

// Exact widening of 16-bit floats, bit pattern in, value out: every bf16 and f16 value (subnormals,
// +-0, +-inf) is representable in f32; NaN stays NaN with sign and payload kept.
float bf16_bits_to_f32(uint16_t bits);
float f16_bits_to_f32(uint16_t bits);

struct SafetensorsTensorInfo {
    std::string name;
    SafetensorsDtype dtype;
    std::vector<uint64_t> shape;  // outermost first; empty for a scalar
    uint64_t begin = 0;           // byte offsets of the tensor in the data buffer, [begin, end)
    uint64_t end = 0;

    uint64_t numel() const;  // product of shape (1 for a scalar); fits, the reader checked
    uint64_t nbytes() const { return end - begin; }
};

// An opened, validated safetensors file. The constructor reads only the header; tensor bytes are read
// on request with pread, so a 500 MB checkpoint costs memory only for the tensors asked for. The file
// stays open (the same inode is read even if the path is replaced); reads from several threads at
// once are safe. Move-only.
class SafetensorsFile {
public:
    static constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
    static constexpr int kMaxJsonDepth = tune::kMaxJsonDepth;  // a valid header nests 3 deep; this bounds a hostile one

    // Opens `path` and validates the header as described at the top of this file; throws tune::Error.
    explicit SafetensorsFile(const std::string& path);
    ~SafetensorsFile();
    SafetensorsFile(SafetensorsFile&& other) noexcept;
    SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
    SafetensorsFile(const SafetensorsFile&) = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::string& path() const { return path_; }
    uint64_t header_bytes() const { return header_bytes_; }  // N
    uint64_t data_bytes() const { return data_bytes_; }      // size of the data buffer
    uint64_t data_start() const { return 8 + header_bytes_; }  // file offset of the data buffer

    // All tensors, ordered by data offset (then end offset, then name).
    const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
    // nullptr if there is no tensor of that name.
    const SafetensorsTensorInfo* find(const std::string& name) const;
    // Throws tune::Error naming the file and the tensor if there is none of that name.
    const SafetensorsTensorInfo& at(const std::string& name) const;
    // The __metadata__ map; empty when the header has none.
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    // The tensor's raw little-endian bytes, exactly nbytes() of them.
    std::vector<uint8_t> read_bytes(const std::string& name) const;
    // Reads the raw bytes into dst, which holds dst_bytes; throws tune::Error if dst_bytes != nbytes().
    void read_bytes_into(const SafetensorsTensorInfo& t, void* dst, size_t dst_bytes) const;

    // The tensor's values as f32, numel() of them: F32 as is, BF16 and F16 widened exactly, F64
    // rounded to nearest. Any other dtype throws tune::Error naming the file, tensor and dtype.
    std::vector<float> read_f32(const std::string& name) const;
    // Same into dst, which holds `count` floats; throws tune::Error if count != numel(). Converts in
    // bounded chunks, so no second full-size buffer is allocated.
    void read_f32_into(const std::string& name, float* dst, size_t count) const;

private:
    void read_at(uint64_t data_offset, void* dst, size_t n, const std::string& tensor) const;

    std::string path_;
    int fd_ = -1;
    uint64_t header_bytes_ = 0;
    uint64_t data_bytes_ = 0;
    std::vector<SafetensorsTensorInfo> tensors_;
    std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
    std::map<std::string, std::string> metadata_;
};

// Collects tensors and metadata, then writes one safetensors file atomically: the bytes go to a
// temporary file in the destination's directory, which is fsync'ed and renamed over the destination,
// and the directory is fsync'ed; a crash or an I/O error never leaves a partial file under `path`.
//
// add() borrows `data`: it must stay valid and unchanged until write() returns. Caller mistakes
// (duplicate or reserved name, byte count that does not match shape and dtype, invalid UTF-8) throw
// std::invalid_argument at add()/set_metadata(); I/O failures in write() throw tune::Error naming the
// path and the system error.
class SafetensorsWriter {
public:
    void add(const std::string& name, SafetensorsDtype dtype, const std::vector<uint64_t>& shape,
             const void* data, size_t nbytes);
    void set_metadata(const std::string& key, const std::string& value);

    // The header JSON the file will carry, with its padding (its size is N).
    std::string header() const;
    void write(const std::string& path) const;
    // The same bytes into `f`, synced but not renamed: the caller commits several files together, so a
    // failure in any leaves every final name as it was (export_hf's weights and config.json).
    void write(AtomicFile& f) const;

private:
    struct Entry {
        std::string name;
        SafetensorsDtype dtype;
        std::vector<uint64_t> shape;
        const void* data;
        size_t nbytes;
    };
    std::vector<const Entry*> layout_order() const;
    std::string header_for(const std::vector<const Entry*>& order) const;

    std::vector<Entry> entries_;
    std::unordered_map<std::string, size_t> index_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace tune
