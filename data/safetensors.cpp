// safetensors reader and writer; the format and the checks are described in data/safetensors.h.
#include "data/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <utility>

#include "data/fileio.h"
#include "data/json_depth.h"

namespace tune {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian and is copied to and from memory as is");

namespace {

using json = nlohmann::json;

struct DtypeRow {
    SafetensorsDtype dtype;
    const char* name;
    size_t bits;
};

// Indexed by the enum's value.
constexpr DtypeRow kDtypes[] = {
    {SafetensorsDtype::BOOL, "BOOL", 8},
    {SafetensorsDtype::F4, "F4", 4},
    {SafetensorsDtype::F6_E2M3, "F6_E2M3", 6},
    {SafetensorsDtype::F6_E3M2, "F6_E3M2", 6},
    {SafetensorsDtype::U8, "U8", 8},
    {SafetensorsDtype::I8, "I8", 8},
    {SafetensorsDtype::F8_E5M2, "F8_E5M2", 8},
    {SafetensorsDtype::F8_E4M3, "F8_E4M3", 8},
    {SafetensorsDtype::F8_E8M0, "F8_E8M0", 8},
    {SafetensorsDtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {SafetensorsDtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {SafetensorsDtype::I16, "I16", 16},
    {SafetensorsDtype::U16, "U16", 16},
    {SafetensorsDtype::F16, "F16", 16},
    {SafetensorsDtype::BF16, "BF16", 16},
    {SafetensorsDtype::I32, "I32", 32},
    {SafetensorsDtype::U32, "U32", 32},
    {SafetensorsDtype::F32, "F32", 32},
    {SafetensorsDtype::C64, "C64", 64},
    {SafetensorsDtype::F64, "F64", 64},
    {SafetensorsDtype::I64, "I64", 64},
    {SafetensorsDtype::U64, "U64", 64},
};
constexpr size_t kNumDtypes = sizeof(kDtypes) / sizeof(kDtypes[0]);
static_assert(kNumDtypes == static_cast<size_t>(SafetensorsDtype::U64) + 1, "a dtype is missing from kDtypes");

// A tensor name or JSON excerpt for an error message: hostile files can hold huge or binary keys.
std::string shown(const std::string& s) {
    constexpr size_t kMax = 80;
    std::string out;
    for (size_t i = 0; i < s.size() && i < kMax; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    if (s.size() > kMax) out += "...(" + std::to_string(s.size()) + " bytes)";
    return "'" + out + "'";
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
    throw Error(path + ": " + what);
}

std::string sys_error(int err) { return std::string(std::strerror(err)); }

// Product of a shape and the element bits, then the byte count; false on overflow or when the bits
// do not fill whole bytes (possible for F4 and F6 with an odd element count).
enum class SizeCheck { ok, overflow, partial_byte };
SizeCheck byte_size(const std::vector<uint64_t>& shape, size_t bits, uint64_t* out) {
    uint64_t n = 1;
    for (uint64_t d : shape) {
        if (d != 0 && n > std::numeric_limits<uint64_t>::max() / d) return SizeCheck::overflow;
        n *= d;
    }
    if (n > std::numeric_limits<uint64_t>::max() / bits) return SizeCheck::overflow;
    uint64_t total_bits = n * bits;
    if (total_bits % 8 != 0) return SizeCheck::partial_byte;
    *out = total_bits / 8;
    return SizeCheck::ok;
}

std::string shape_string(const std::vector<uint64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Thrown out of the JSON parser callback to stop parsing a hostile header early.
struct HeaderAbort {
    std::string what;
};

// Parses the header text: valid JSON, at most kMaxJsonDepth deep, no key twice in one object
// (nlohmann would silently keep the last one; the spec disallows duplicates).
json parse_header_json(const std::string& path, const std::string& text) {
    // nlohmann stops at a NUL byte and skips a leading byte order mark; the reference parser rejects
    // both. Reject them here so that no file parses differently for us and for it.
    size_t nul = text.find('\0');
    if (nul != std::string::npos)
        fail(path, "header is not valid JSON: NUL byte at header offset " + std::to_string(nul) +
                       " (the header must be padded with spaces, not NULs)");
    if (text.compare(0, 3, "\xef\xbb\xbf") == 0)
        fail(path, "header is not valid JSON: it starts with a UTF-8 byte order mark");
    std::vector<std::set<std::string>> keys_per_object;  // one set per open object
    std::string current_entry;                             // the top-level key being parsed
    auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
        switch (event) {
            case json::parse_event_t::object_start:
            case json::parse_event_t::array_start:
                if (depth >= SafetensorsFile::kMaxJsonDepth)
                    throw HeaderAbort{"header JSON nests deeper than " +
                                      std::to_string(SafetensorsFile::kMaxJsonDepth) +
                                      " levels (a valid header nests 3)"};
                if (event == json::parse_event_t::object_start) keys_per_object.emplace_back();
                break;
            case json::parse_event_t::object_end:
                keys_per_object.pop_back();
                break;
            case json::parse_event_t::key: {
                const std::string& key = parsed.get_ref<const std::string&>();
                if (depth == 1) current_entry = key;
                if (!keys_per_object.back().insert(key).second) {
                    if (depth == 1)
                        throw HeaderAbort{"duplicate key " + shown(key) +
                                          " in the header (each tensor name may appear once)"};
                    throw HeaderAbort{"duplicate key " + shown(key) + " inside header entry " +
                                      shown(current_entry)};
                }
                break;
            }
            default:
                break;
        }
        return true;
    };
    try {
        return json::parse(text, callback);
    } catch (const HeaderAbort& e) {
        fail(path, e.what);
    } catch (const json::exception& e) {
        fail(path, "header is not valid JSON: " + json_reason(e));
    }
}

// Reads an unsigned integer array field of a tensor entry.
std::vector<uint64_t> unsigned_array(const std::string& path, const std::string& tensor,
                                     const json& entry, const char* field) {
    auto it = entry.find(field);
    if (it == entry.end())
        fail(path, "tensor " + shown(tensor) + ": field '" + field + "' is missing");
    if (!it->is_array())
        fail(path, "tensor " + shown(tensor) + ": field '" + field + "' must be an array of non-negative "
                   "integers, got " + shown(it->dump()));
    std::vector<uint64_t> out;
    out.reserve(it->size());
    for (const json& v : *it) {
        if (!v.is_number_unsigned())  // negative, fractional, too large for u64, or not a number
            fail(path, "tensor " + shown(tensor) + ": field '" + field + "' must hold non-negative "
                       "integers, got " + shown(v.dump()) + " in " + shown(it->dump()));
        out.push_back(v.get<uint64_t>());
    }
    return out;
}

SafetensorsTensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry,
                                  uint64_t data_bytes) {
    if (!entry.is_object())
        fail(path, "tensor " + shown(name) + ": entry must be a JSON object with dtype, shape and "
                   "data_offsets, got " + shown(entry.dump()));
    SafetensorsTensorInfo t;
    t.name = name;

    auto dt = entry.find("dtype");
    if (dt == entry.end()) fail(path, "tensor " + shown(name) + ": field 'dtype' is missing");
    if (!dt->is_string())
        fail(path, "tensor " + shown(name) + ": field 'dtype' must be a string, got " + shown(dt->dump()));
    if (!safetensors_dtype_from_name(dt->get_ref<const std::string&>(), &t.dtype))
        fail(path, "tensor " + shown(name) + ": unknown dtype " + shown(dt->get_ref<const std::string&>()) +
                   " (expected one of BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, "
                   "C64, F4, F6_E2M3, F6_E3M2, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ)");

    t.shape = unsigned_array(path, name, entry, "shape");
    std::vector<uint64_t> offsets = unsigned_array(path, name, entry, "data_offsets");
    if (offsets.size() != 2)
        fail(path, "tensor " + shown(name) + ": field 'data_offsets' must be [begin, end], got " +
                   std::to_string(offsets.size()) + " numbers");
    t.begin = offsets[0];
    t.end = offsets[1];
    if (t.begin > t.end)
        fail(path, "tensor " + shown(name) + ": data_offsets begin " + std::to_string(t.begin) +
                   " > end " + std::to_string(t.end));
    if (t.end > data_bytes)
        fail(path, "tensor " + shown(name) + ": data_offsets end " + std::to_string(t.end) +
                   " is out of range: beyond the data buffer of " + std::to_string(data_bytes) + " bytes");

    uint64_t expected = 0;
    size_t bits = safetensors_dtype_bits(t.dtype);
    switch (byte_size(t.shape, bits, &expected)) {
        case SizeCheck::overflow:
            fail(path, "tensor " + shown(name) + ": shape " + shape_string(t.shape) + " of dtype " +
                       safetensors_dtype_name(t.dtype) + " overflows 64-bit size arithmetic");
        case SizeCheck::partial_byte:
            fail(path, "tensor " + shown(name) + ": shape " + shape_string(t.shape) + " of " +
                       std::to_string(bits) + "-bit dtype " + safetensors_dtype_name(t.dtype) +
                       " does not fill a whole number of bytes");
        case SizeCheck::ok:
            break;
    }
    if (t.end - t.begin != expected)
        fail(path, "tensor " + shown(name) + ": data_offsets [" + std::to_string(t.begin) + ", " +
                   std::to_string(t.end) + "] span " + std::to_string(t.end - t.begin) +
                   " bytes, but shape " + shape_string(t.shape) + " of dtype " +
                   safetensors_dtype_name(t.dtype) + " needs " + std::to_string(expected) + " bytes");
    return t;
}

// nlohmann's dump() throws on invalid UTF-8; both the writer and the reader need valid JSON strings.
bool json_string(const std::string& s, std::string* out) {
    try {
        *out = json(s).dump();
        return true;
    } catch (const json::exception&) {
        return false;
    }
}

}  // namespace

const char* safetensors_dtype_name(SafetensorsDtype t) { return kDtypes[static_cast<size_t>(t)].name; }

size_t safetensors_dtype_bits(SafetensorsDtype t) { return kDtypes[static_cast<size_t>(t)].bits; }

bool safetensors_dtype_from_name(const std::string& name, SafetensorsDtype* out) {
    for (const DtypeRow& row : kDtypes) {
        if (name == row.name) {
            *out = row.dtype;
            return true;
        }
    }
    return false;
}

SafetensorsDtype safetensors_dtype_of(DType t) {
    switch (t) {
        case DType::f32: return SafetensorsDtype::F32;
        case DType::f64: return SafetensorsDtype::F64;
        case DType::bf16: return SafetensorsDtype::BF16;
        case DType::f16: return SafetensorsDtype::F16;
    }
    throw std::invalid_argument("safetensors_dtype_of: unknown tune::DType");
}

float bf16_bits_to_f32(uint16_t bits) {
    // TEACH: bf16 is the top half of an f32 (same sign, same 8-bit exponent, 7 of the 23 mantissa
    // bits), so widening is a shift and every value, NaN payloads included, survives exactly.
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

float f16_bits_to_f32(uint16_t bits) {
    // f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. f32: 1, 8 (bias 127), 23.
    uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    uint32_t exp = (bits >> 10) & 0x1fu;
    uint32_t mant = bits & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload
    } else if (exp != 0) {
        u = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    } else if (mant == 0) {
        u = sign;  // +-0
    } else {
        // TEACH: an f16 subnormal is mant * 2^-24; f32 has range to spare, so it becomes a normal f32.
        // Shift the mantissa up until its leading 1 reaches the implicit-bit position (bit 10),
        // lowering the exponent once per shift.
        int e = -14;  // the exponent of the subnormal range, 2^(1-15)
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --e;
        }
        mant &= 0x3ffu;
        u = sign | (static_cast<uint32_t>(e + 127) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

uint64_t SafetensorsTensorInfo::numel() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
}

// ---------------------------------------------------------------------------------------------------
// Reader

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(path, "cannot open safetensors file: " + sys_error(errno));
    try {
        struct stat st;
        if (::fstat(fd_, &st) != 0) fail(path, "cannot stat: " + sys_error(errno));
        if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
        const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
        if (file_bytes < 8)
            fail(path, "file is " + std::to_string(file_bytes) +
                       " bytes, shorter than the 8-byte header length field: not a safetensors file");

        uint8_t len_le[8];
        read_at(0, len_le, 8, "");
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | len_le[i];
        if (n > kMaxHeaderBytes)
            fail(path, "header length " + std::to_string(n) + " exceeds the limit of " +
                       std::to_string(kMaxHeaderBytes) + " bytes (corrupt file, or not safetensors)");
        if (n > file_bytes - 8)
            fail(path, "header length " + std::to_string(n) + " is beyond the file: only " +
                       std::to_string(file_bytes - 8) + " bytes follow the length field");
        header_bytes_ = n;
        data_bytes_ = file_bytes - 8 - n;

        std::string text(static_cast<size_t>(n), '\0');
        read_at(8, text.data(), text.size(), "");
        json header = parse_header_json(path, text);
        if (!header.is_object())
            fail(path, std::string("header JSON must be an object {name: entry, ...}, got JSON of type ") +
                           header.type_name());

        for (auto it = header.begin(); it != header.end(); ++it) {
            const std::string& key = it.key();
            if (key == "__metadata__") {
                if (it->is_null()) continue;  // the reference implementation accepts null as absent
                if (!it->is_object())
                    fail(path, "__metadata__ must be an object of string to string, got " + shown(it->dump()));
                for (auto m = it->begin(); m != it->end(); ++m) {
                    if (!m->is_string())
                        fail(path, "__metadata__ value of key " + shown(m.key()) + " must be a string, got " +
                                   shown(m->dump()));
                    metadata_[m.key()] = m->get<std::string>();
                }
                continue;
            }
            tensors_.push_back(parse_entry(path, key, *it, data_bytes_));
        }

        std::sort(tensors_.begin(), tensors_.end(), [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
            if (a.begin != b.begin) return a.begin < b.begin;
            if (a.end != b.end) return a.end < b.end;
            return a.name < b.name;
        });
        // Sorted by offset, each tensor must start where the previous one ended.
        uint64_t covered = 0;
        const SafetensorsTensorInfo* prev = nullptr;
        for (const SafetensorsTensorInfo& t : tensors_) {
            if (t.begin < covered)
                fail(path, "tensor " + shown(t.name) + ": data_offsets [" + std::to_string(t.begin) + ", " +
                           std::to_string(t.end) + "] overlap tensor " + shown(prev->name) + " [" +
                           std::to_string(prev->begin) + ", " + std::to_string(prev->end) + "]");
            if (t.begin > covered)
                fail(path, "hole in the data buffer: bytes [" + std::to_string(covered) + ", " +
                           std::to_string(t.begin) + ") belong to no tensor (tensor " + shown(t.name) +
                           " begins at " + std::to_string(t.begin) + "); the spec requires the buffer be "
                           "entirely indexed");
            covered = t.end;
            prev = &t;
        }
        if (covered != data_bytes_)
            fail(path, "trailing bytes: the data buffer is " + std::to_string(data_bytes_) +
                       " bytes but the tensors cover only " + std::to_string(covered) + "; the spec requires "
                       "the buffer be entirely indexed");

        index_.reserve(tensors_.size());
        for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    } catch (...) {
        ::close(fd_);
        fd_ = -1;
        throw;
    }
}

SafetensorsFile::~SafetensorsFile() {
    if (fd_ >= 0) ::close(fd_);
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      header_bytes_(other.header_bytes_),
      data_bytes_(other.data_bytes_),
      tensors_(std::move(other.tensors_)),
      index_(std::move(other.index_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(other.path_);
        fd_ = std::exchange(other.fd_, -1);
        header_bytes_ = other.header_bytes_;
        data_bytes_ = other.data_bytes_;
        tensors_ = std::move(other.tensors_);
        index_ = std::move(other.index_);
        metadata_ = std::move(other.metadata_);
    }
    return *this;
}

// Reads n bytes at file offset `offset`; a short read means the file shrank after it was validated.
void SafetensorsFile::read_at(uint64_t offset, void* dst, size_t n, const std::string& tensor) const {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
        size_t chunk = std::min<size_t>(n, size_t(1) << 30);
        ssize_t r = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
        if (r < 0) {
            if (errno == EINTR) continue;
            fail(path_, "read error" + (tensor.empty() ? std::string() : " in tensor " + shown(tensor)) + ": " +
                            sys_error(errno));
        }
        if (r == 0)
            fail(path_, "unexpected end of file at byte " + std::to_string(offset) +
                            (tensor.empty() ? std::string() : " reading tensor " + shown(tensor)) +
                            " (was the file truncated while open?)");
        p += r;
        n -= static_cast<size_t>(r);
        offset += static_cast<uint64_t>(r);
    }
}

const SafetensorsTensorInfo* SafetensorsFile::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensorInfo& SafetensorsFile::at(const std::string& name) const {
    const SafetensorsTensorInfo* t = find(name);
    if (!t) fail(path_, "no tensor named " + shown(name) + " (the file has " + std::to_string(tensors_.size()) + ")");
    return *t;
}

void SafetensorsFile::read_bytes_into(const SafetensorsTensorInfo& t, void* dst, size_t dst_bytes) const {
    if (dst_bytes != t.nbytes())
        fail(path_, "tensor " + shown(t.name) + " holds " + std::to_string(t.nbytes()) + " bytes (shape " +
                        shape_string(t.shape) + ", " + safetensors_dtype_name(t.dtype) + "), but the destination holds " +
                        std::to_string(dst_bytes));
    read_at(data_start() + t.begin, dst, dst_bytes, t.name);
}

std::vector<uint8_t> SafetensorsFile::read_bytes(const std::string& name) const {
    const SafetensorsTensorInfo& t = at(name);
    std::vector<uint8_t> out(static_cast<size_t>(t.nbytes()));  // bounded by the file size, checked
    read_bytes_into(t, out.data(), out.size());
    return out;
}

namespace {
// Checked before allocating the output, so a dtype we cannot convert never costs memory.
void require_f32_convertible(const std::string& path, const SafetensorsTensorInfo& t) {
    if (t.dtype != SafetensorsDtype::F32 && t.dtype != SafetensorsDtype::BF16 && t.dtype != SafetensorsDtype::F16 &&
        t.dtype != SafetensorsDtype::F64)
        fail(path, "tensor " + shown(t.name) + " has dtype " + safetensors_dtype_name(t.dtype) +
                       ", which does not convert to f32 (expected F32, F16, BF16 or F64)");
}
}  // namespace

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
    const SafetensorsTensorInfo& t = at(name);
    require_f32_convertible(path_, t);
    std::vector<float> out(static_cast<size_t>(t.numel()));
    read_f32_into(name, out.data(), out.size());
    return out;
}

void SafetensorsFile::read_f32_into(const std::string& name, float* dst, size_t count) const {
    const SafetensorsTensorInfo& t = at(name);
    if (count != t.numel())
        fail(path_, "tensor " + shown(name) + " has " + std::to_string(t.numel()) + " elements (shape " +
                        shape_string(t.shape) + "), but the destination holds " + std::to_string(count));
    require_f32_convertible(path_, t);
    const uint64_t start = data_start() + t.begin;
    switch (t.dtype) {
        case SafetensorsDtype::F32:
            read_at(start, dst, count * sizeof(float), name);
            return;
        case SafetensorsDtype::BF16:
        case SafetensorsDtype::F16: {
            const bool is_bf16 = t.dtype == SafetensorsDtype::BF16;
            constexpr size_t kChunk = 1 << 18;  // elements per read
            std::vector<uint16_t> buf(std::min(count, kChunk));
            for (size_t i = 0; i < count; i += kChunk) {
                size_t n = std::min(kChunk, count - i);
                read_at(start + i * 2, buf.data(), n * 2, name);
                for (size_t k = 0; k < n; ++k)
                    dst[i + k] = is_bf16 ? bf16_bits_to_f32(buf[k]) : f16_bits_to_f32(buf[k]);
            }
            return;
        }
        case SafetensorsDtype::F64: {
            constexpr size_t kChunk = 1 << 17;
            std::vector<double> buf(std::min(count, kChunk));
            for (size_t i = 0; i < count; i += kChunk) {
                size_t n = std::min(kChunk, count - i);
                read_at(start + i * 8, buf.data(), n * 8, name);
                for (size_t k = 0; k < n; ++k) dst[i + k] = static_cast<float>(buf[k]);
            }
            return;
        }
        default:
            break;
    }
}

// ---------------------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add(const std::string& name, SafetensorsDtype dtype, const std::vector<uint64_t>& shape,
                            const void* data, size_t nbytes) {
    if (static_cast<size_t>(dtype) >= kNumDtypes)
        throw std::invalid_argument("SafetensorsWriter::add: tensor '" + name + "': invalid dtype value");
    if (name == "__metadata__")
        throw std::invalid_argument("SafetensorsWriter::add: '__metadata__' is reserved, not a tensor name");
    std::string unused;
    if (!json_string(name, &unused))
        throw std::invalid_argument("SafetensorsWriter::add: tensor name " + shown(name) + " is not valid UTF-8");
    if (index_.count(name))
        throw std::invalid_argument("SafetensorsWriter::add: duplicate tensor name '" + name + "'");
    uint64_t expected = 0;
    if (byte_size(shape, safetensors_dtype_bits(dtype), &expected) != SizeCheck::ok || expected != nbytes)
        throw std::invalid_argument("SafetensorsWriter::add: tensor '" + name + "': shape " + shape_string(shape) +
                                    " of dtype " + safetensors_dtype_name(dtype) + " does not match " +
                                    std::to_string(nbytes) + " bytes of data");
    if (nbytes > 0 && data == nullptr)
        throw std::invalid_argument("SafetensorsWriter::add: tensor '" + name + "': null data");
    index_.emplace(name, entries_.size());
    entries_.push_back(Entry{name, dtype, shape, data, nbytes});
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
    std::string unused;
    if (!json_string(key, &unused) || !json_string(value, &unused))
        throw std::invalid_argument("SafetensorsWriter::set_metadata: key " + shown(key) +
                                    " or its value is not valid UTF-8");
    metadata_[key] = value;
}

// The reference implementation's order: widest dtype first (so every tensor lands aligned to its
// element size after the 8-byte-padded header), then name.
std::vector<const SafetensorsWriter::Entry*> SafetensorsWriter::layout_order() const {
    std::vector<const Entry*> order;
    order.reserve(entries_.size());
    for (const Entry& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
        if (a->dtype != b->dtype) return a->dtype > b->dtype;
        return a->name < b->name;
    });
    return order;
}

std::string SafetensorsWriter::header() const { return header_for(layout_order()); }

std::string SafetensorsWriter::header_for(const std::vector<const Entry*>& order) const {
    // Built by hand rather than with nlohmann::json, whose objects sort keys: the reference writer
    // puts __metadata__ first and the tensors in data order, with fields dtype, shape, data_offsets.
    std::string h = "{";
    bool first = true;
    if (!metadata_.empty()) {
        h += "\"__metadata__\":{";
        bool first_kv = true;
        for (const auto& kv : metadata_) {
            h += (first_kv ? "" : ",") + json(kv.first).dump() + ":" + json(kv.second).dump();
            first_kv = false;
        }
        h += "}";
        first = false;
    }
    uint64_t offset = 0;
    for (const Entry* e : order) {
        h += (first ? "" : ",") + json(e->name).dump() + ":{\"dtype\":\"" + safetensors_dtype_name(e->dtype) +
             "\",\"shape\":[";
        for (size_t i = 0; i < e->shape.size(); ++i) h += (i ? "," : "") + std::to_string(e->shape[i]);
        h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + e->nbytes) + "]}";
        offset += e->nbytes;
        first = false;
    }
    h += "}";
    h.append((8 - h.size() % 8) % 8, ' ');
    return h;
}

void SafetensorsWriter::write(AtomicFile& f) const {
    const std::vector<const Entry*> order = layout_order();
    const std::string h = header_for(order);
    if (h.size() > SafetensorsFile::kMaxHeaderBytes)
        fail(f.path(), "header would be " + std::to_string(h.size()) + " bytes, over the " +
                           std::to_string(SafetensorsFile::kMaxHeaderBytes) + "-byte limit readers enforce");
    uint8_t len_le[8];
    store_u64(len_le, h.size());
    f.write(len_le, 8);
    f.write(h.data(), h.size());
    for (const Entry* e : order) f.write(e->data, e->nbytes);
    f.sync();
}

void SafetensorsWriter::write(const std::string& path) const {
    AtomicFile f(path);  // a temporary beside `path`, fsync'ed, renamed over it, the directory fsync'ed
    write(f);
    f.commit();
}

}  // namespace tune
