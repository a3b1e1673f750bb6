// Tests of data/safetensors: write -> read round trips (bit-identical bytes, byte-identical rewrite),
// interop with the official Python package both ways (scripts/safetensors_interop.py), one test per
// way a file can be malformed (each checks the message names what is wrong), exact bf16/f16 -> f32
// widening, and the writer's atomic replace.
#include "data/safetensors.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using tune::SafetensorsDtype;
using tune::SafetensorsFile;
using tune::SafetensorsWriter;

using tune::test::TempDir;

std::string read_whole(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_whole(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64_le(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
    return s;
}

// A safetensors file by hand: length field, header as given, then the data bytes.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
    write_whole(path, u64_le(header.size()) + header + data);
}

// Opening `path` must throw tune::Error whose message names the file and contains every fragment.
void expect_rejected(const std::string& path, std::initializer_list<std::string> fragments) {
    try {
        SafetensorsFile f(path);
        ADD_FAILURE() << path << ": accepted, expected an error mentioning " << *fragments.begin();
    } catch (const tune::Error& e) {
        std::string msg = e.what();
        EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
        for (const std::string& frag : fragments)
            EXPECT_NE(msg.find(frag), std::string::npos) << "missing '" << frag << "' in: " << msg;
        // The JSON library's own exception names are not the user's business.
        EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << msg;
    }
}

// Deterministic bytes (splitmix64), different per seed.
std::vector<uint8_t> pattern_bytes(size_t n, uint64_t seed) {
    std::vector<uint8_t> out(n);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; ++i) {
        x += 0x9e3779b97f4a7c15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        out[i] = static_cast<uint8_t>(z ^ (z >> 31));
    }
    return out;
}

struct TestTensor {
    std::string name;
    SafetensorsDtype dtype;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> bytes;
};

uint64_t byte_count(SafetensorsDtype dt, const std::vector<uint64_t>& shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n * tune::safetensors_dtype_bits(dt) / 8;
}

TestTensor make_tensor(const std::string& name, SafetensorsDtype dt, std::vector<uint64_t> shape, uint64_t seed) {
    TestTensor t{name, dt, shape, pattern_bytes(byte_count(dt, shape), seed)};
    if (dt == SafetensorsDtype::BOOL)
        for (uint8_t& b : t.bytes) b &= 1;
    return t;
}

// Every dtype, a scalar, empty tensors, odd sizes; names in no particular order.
std::vector<TestTensor> all_dtype_tensors() {
    using D = SafetensorsDtype;
    return {
        make_tensor("h.0.attn.c_attn.weight", D::F32, {3, 5}, 1),
        make_tensor("h.0.attn.c_attn.bias", D::BF16, {7}, 2),
        make_tensor("f16", D::F16, {2, 3, 1}, 3),
        make_tensor("f64", D::F64, {2, 2}, 4),
        make_tensor("i64", D::I64, {3}, 5),
        make_tensor("u64", D::U64, {1, 1}, 6),
        make_tensor("c64", D::C64, {2}, 7),
        make_tensor("i32", D::I32, {1}, 8),
        make_tensor("u32", D::U32, {2}, 9),
        make_tensor("i16", D::I16, {3}, 10),
        make_tensor("u16", D::U16, {5}, 11),
        make_tensor("u8", D::U8, {5}, 12),
        make_tensor("i8", D::I8, {1, 3}, 13),
        make_tensor("bool", D::BOOL, {3}, 14),
        make_tensor("f8_e4m3", D::F8_E4M3, {4}, 15),
        make_tensor("f8_e5m2", D::F8_E5M2, {3}, 16),
        make_tensor("f8_e8m0", D::F8_E8M0, {1}, 17),
        make_tensor("f8_e4m3fnuz", D::F8_E4M3FNUZ, {2}, 18),
        make_tensor("f8_e5m2fnuz", D::F8_E5M2FNUZ, {2}, 19),
        make_tensor("f4", D::F4, {6}, 20),
        make_tensor("f6_e2m3", D::F6_E2M3, {4}, 21),
        make_tensor("f6_e3m2", D::F6_E3M2, {8}, 22),
        make_tensor("scalar", D::F32, {}, 23),
        make_tensor("empty.f32", D::F32, {0, 3}, 24),
        make_tensor("empty.bf16", D::BF16, {5, 0}, 25),
    };
}

void add_all(SafetensorsWriter& w, const std::vector<TestTensor>& tensors) {
    for (const TestTensor& t : tensors) w.add(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
}

// Writes every tensor of `f`, in file order, with its metadata, to `path`.
void rewrite(const SafetensorsFile& f, const std::string& path) {
    std::vector<std::vector<uint8_t>> keep;
    SafetensorsWriter w;
    for (const auto& t : f.tensors()) {
        keep.push_back(f.read_bytes(t.name));
        w.add(t.name, t.dtype, t.shape, keep.back().data(), keep.back().size());
    }
    for (const auto& kv : f.metadata()) w.set_metadata(kv.first, kv.second);
    w.write(path);
}

uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// ------------------------------------------------------------------------------------------------
// dtypes and conversion

TEST(SafetensorsDtype, NamesAndBitsRoundTripForEveryDtype) {
    for (int i = 0; i <= static_cast<int>(SafetensorsDtype::U64); ++i) {
        SafetensorsDtype dt = static_cast<SafetensorsDtype>(i);
        SafetensorsDtype back;
        ASSERT_TRUE(tune::safetensors_dtype_from_name(tune::safetensors_dtype_name(dt), &back))
            << tune::safetensors_dtype_name(dt);
        EXPECT_EQ(back, dt);
    }
    SafetensorsDtype unused;
    EXPECT_FALSE(tune::safetensors_dtype_from_name("f32", &unused)) << "names are case-sensitive";
    EXPECT_FALSE(tune::safetensors_dtype_from_name("F31", &unused));
    EXPECT_EQ(tune::safetensors_dtype_bits(SafetensorsDtype::F4), 4u);
    EXPECT_EQ(tune::safetensors_dtype_bits(SafetensorsDtype::F6_E3M2), 6u);
    EXPECT_EQ(tune::safetensors_dtype_bits(SafetensorsDtype::BF16), 16u);
    EXPECT_EQ(tune::safetensors_dtype_bits(SafetensorsDtype::C64), 64u);
    EXPECT_EQ(tune::safetensors_dtype_of(tune::DType::bf16), SafetensorsDtype::BF16);
    EXPECT_EQ(tune::safetensors_dtype_of(tune::DType::f16), SafetensorsDtype::F16);
    EXPECT_EQ(tune::safetensors_dtype_of(tune::DType::f32), SafetensorsDtype::F32);
    EXPECT_EQ(tune::safetensors_dtype_of(tune::DType::f64), SafetensorsDtype::F64);
}

TEST(SafetensorsConvert, Bf16ToF32ExactOnChosenValues) {
    EXPECT_EQ(tune::bf16_bits_to_f32(0x3f80), 1.0f);
    EXPECT_EQ(tune::bf16_bits_to_f32(0xc020), -2.5f);
    EXPECT_EQ(tune::bf16_bits_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
    EXPECT_EQ(tune::bf16_bits_to_f32(0x007f), std::ldexp(127.0f, -133));  // largest subnormal
    EXPECT_EQ(tune::bf16_bits_to_f32(0x0080), std::ldexp(1.0f, -126));   // smallest normal
    EXPECT_EQ(tune::bf16_bits_to_f32(0x7f7f), std::ldexp(255.0f, 120));  // largest finite
    EXPECT_EQ(tune::bf16_bits_to_f32(0x7f80), std::numeric_limits<float>::infinity());
    EXPECT_EQ(tune::bf16_bits_to_f32(0xff80), -std::numeric_limits<float>::infinity());
    EXPECT_TRUE(std::isnan(tune::bf16_bits_to_f32(0x7fc0)));
    EXPECT_EQ(f32_bits(tune::bf16_bits_to_f32(0xffc1)), 0xffc10000u) << "NaN sign and payload kept";
    float neg_zero = tune::bf16_bits_to_f32(0x8000);
    EXPECT_EQ(neg_zero, 0.0f);
    EXPECT_TRUE(std::signbit(neg_zero));
}

TEST(SafetensorsConvert, F16ToF32ExactOnChosenValues) {
    EXPECT_EQ(tune::f16_bits_to_f32(0x3c00), 1.0f);
    EXPECT_EQ(tune::f16_bits_to_f32(0xc100), -2.5f);
    EXPECT_EQ(tune::f16_bits_to_f32(0x3555), 0.333251953125f);
    EXPECT_EQ(tune::f16_bits_to_f32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
    EXPECT_EQ(tune::f16_bits_to_f32(0x8001), -std::ldexp(1.0f, -24));
    EXPECT_EQ(tune::f16_bits_to_f32(0x0003), std::ldexp(3.0f, -24));
    EXPECT_EQ(tune::f16_bits_to_f32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
    EXPECT_EQ(tune::f16_bits_to_f32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
    EXPECT_EQ(tune::f16_bits_to_f32(0x7bff), 65504.0f);                   // largest finite
    EXPECT_EQ(tune::f16_bits_to_f32(0x7c00), std::numeric_limits<float>::infinity());
    EXPECT_EQ(tune::f16_bits_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
    EXPECT_TRUE(std::isnan(tune::f16_bits_to_f32(0x7e00)));
    EXPECT_EQ(f32_bits(tune::f16_bits_to_f32(0x7c01)), 0x7f802000u) << "signaling NaN payload kept";
    EXPECT_EQ(f32_bits(tune::f16_bits_to_f32(0xfe00)), 0xffc00000u);
    float neg_zero = tune::f16_bits_to_f32(0x8000);
    EXPECT_EQ(neg_zero, 0.0f);
    EXPECT_TRUE(std::signbit(neg_zero));
}

// Against the definition, value = (-1)^s * m * 2^e, on every one of the 65536 bit patterns.
TEST(SafetensorsConvert, F16ToF32MatchesDefinitionOnAllBitPatterns) {
    int mismatches = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
        const bool neg = b & 0x8000;
        const int exp = (b >> 10) & 0x1f;
        const int mant = b & 0x3ff;
        const float got = tune::f16_bits_to_f32(static_cast<uint16_t>(b));
        bool ok;
        if (exp == 31) {
            ok = mant == 0 ? (std::isinf(got) && std::signbit(got) == neg) : std::isnan(got);
        } else {
            const double mag = exp == 0 ? std::ldexp(double(mant), -24) : std::ldexp(double(1024 + mant), exp - 25);
            ok = double(got) == (neg ? -mag : mag) && std::signbit(got) == neg;
        }
        if (!ok && ++mismatches <= 5) ADD_FAILURE() << "f16 bits 0x" << std::hex << b << " -> " << got;
    }
    EXPECT_EQ(mismatches, 0);
}

TEST(SafetensorsConvert, Bf16ToF32MatchesDefinitionOnAllBitPatterns) {
    int mismatches = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
        const bool neg = b & 0x8000;
        const int exp = (b >> 7) & 0xff;
        const int mant = b & 0x7f;
        const float got = tune::bf16_bits_to_f32(static_cast<uint16_t>(b));
        bool ok;
        if (exp == 255) {
            ok = mant == 0 ? (std::isinf(got) && std::signbit(got) == neg) : std::isnan(got);
        } else {
            const double mag = exp == 0 ? std::ldexp(double(mant), -133) : std::ldexp(double(128 + mant), exp - 134);
            ok = double(got) == (neg ? -mag : mag) && std::signbit(got) == neg;
        }
        if (!ok && ++mismatches <= 5) ADD_FAILURE() << "bf16 bits 0x" << std::hex << b << " -> " << got;
    }
    EXPECT_EQ(mismatches, 0);
}

// ------------------------------------------------------------------------------------------------
// Round trips

TEST(SafetensorsRoundTrip, WriteThenReadGivesIdenticalBytesShapesDtypesMetadata) {
    TempDir dir;
    const std::vector<TestTensor> tensors = all_dtype_tensors();
    SafetensorsWriter w;
    add_all(w, tensors);
    w.set_metadata("format", "pt");
    w.set_metadata("note", "ünïcode \"quoted\"\n\ttabbed \\ slash");
    w.set_metadata("", "");
    w.write(dir.file("a.safetensors"));

    SafetensorsFile f(dir.file("a.safetensors"));
    ASSERT_EQ(f.tensors().size(), tensors.size());
    for (const TestTensor& t : tensors) {
        SCOPED_TRACE(t.name);
        const tune::SafetensorsTensorInfo* info = f.find(t.name);
        ASSERT_NE(info, nullptr);
        EXPECT_EQ(info->dtype, t.dtype);
        EXPECT_EQ(info->shape, t.shape);
        EXPECT_EQ(info->nbytes(), t.bytes.size());
        EXPECT_EQ(f.read_bytes(t.name), t.bytes);
    }
    const std::map<std::string, std::string> want_meta = {
        {"format", "pt"}, {"note", "ünïcode \"quoted\"\n\ttabbed \\ slash"}, {"", ""}};
    EXPECT_EQ(f.metadata(), want_meta);
}

TEST(SafetensorsRoundTrip, RewritingAReadFileIsByteIdentical) {
    TempDir dir;
    const std::vector<TestTensor> tensors = all_dtype_tensors();
    SafetensorsWriter w;
    add_all(w, tensors);
    w.set_metadata("format", "pt");
    w.set_metadata("step", "42");
    w.write(dir.file("a.safetensors"));

    SafetensorsFile f(dir.file("a.safetensors"));
    rewrite(f, dir.file("b.safetensors"));
    const std::string a = read_whole(dir.file("a.safetensors"));
    const std::string b = read_whole(dir.file("b.safetensors"));
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == b) << "rewritten file differs (" << a.size() << " vs " << b.size() << " bytes)";
}

TEST(SafetensorsRoundTrip, EmptyFileWithNoTensorsAndNoMetadata) {
    TempDir dir;
    SafetensorsWriter().write(dir.file("e.safetensors"));
    // The reference writer's output for no tensors: "{}" padded to 8 bytes.
    EXPECT_EQ(read_whole(dir.file("e.safetensors")), u64_le(8) + "{}      ");
    SafetensorsFile f(dir.file("e.safetensors"));
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_TRUE(f.metadata().empty());
    EXPECT_EQ(f.data_bytes(), 0u);
}

TEST(SafetensorsWriter, HeaderPaddedToMultipleOf8AndEveryTensorAlignedToItsElementSize) {
    TempDir dir;
    SafetensorsWriter w;
    const std::vector<TestTensor> tensors = all_dtype_tensors();
    add_all(w, tensors);
    w.set_metadata("x", "odd-length value to shift the header");
    const std::string h = w.header();
    EXPECT_EQ(h.size() % 8, 0u);
    EXPECT_EQ(h.front(), '{');
    w.write(dir.file("a.safetensors"));
    SafetensorsFile f(dir.file("a.safetensors"));
    EXPECT_EQ(f.header_bytes(), h.size());
    EXPECT_EQ(f.data_start() % 8, 0u);
    for (const auto& t : f.tensors()) {
        size_t elem_bytes = std::max<size_t>(1, tune::safetensors_dtype_bits(t.dtype) / 8);
        EXPECT_EQ((f.data_start() + t.begin) % elem_bytes, 0u) << t.name << " misaligned";
    }
}

TEST(SafetensorsWriter, LaysOutWidestDtypeFirstThenByName) {
    TempDir dir;
    using D = SafetensorsDtype;
    std::vector<TestTensor> tensors = {
        make_tensor("b16", D::BF16, {3}, 1), make_tensor("u8", D::U8, {3}, 2), make_tensor("zf32", D::F32, {3}, 3),
        make_tensor("af32", D::F32, {1}, 4), make_tensor("f64", D::F64, {1}, 5), make_tensor("f16", D::F16, {1}, 6),
        make_tensor("i64", D::I64, {1}, 7), make_tensor("bool", D::BOOL, {1}, 8),
    };
    SafetensorsWriter w;
    add_all(w, tensors);
    w.write(dir.file("a.safetensors"));
    SafetensorsFile f(dir.file("a.safetensors"));
    std::vector<std::string> order;
    for (const auto& t : f.tensors()) order.push_back(t.name);
    EXPECT_EQ(order, (std::vector<std::string>{"i64", "f64", "af32", "zf32", "b16", "f16", "u8", "bool"}));
}

TEST(SafetensorsWriter, HeaderMatchesReferenceWriterByteForByte) {
    // The reference implementation's own serialization test: one F32 tensor "attn.0" of shape
    // [1, 2, 3] serializes to exactly this header (no padding needed at this length).
    std::vector<float> v = {0, 1, 2, 3, 4, 5};
    SafetensorsWriter w;
    w.add("attn.0", SafetensorsDtype::F32, {1, 2, 3}, v.data(), v.size() * 4);
    EXPECT_EQ(w.header(), "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}");
}

TEST(SafetensorsWriter, ReplacesAnExistingFileAndLeavesNoTemporaryFiles) {
    TempDir dir;
    std::vector<float> a = {1, 2, 3}, b = {4, 5};
    SafetensorsWriter wa, wb;
    wa.add("x", SafetensorsDtype::F32, {3}, a.data(), 12);
    wb.add("y", SafetensorsDtype::F32, {2}, b.data(), 8);
    wa.write(dir.file("ckpt.safetensors"));
    wb.write(dir.file("ckpt.safetensors"));
    SafetensorsFile f(dir.file("ckpt.safetensors"));
    EXPECT_EQ(f.find("x"), nullptr);
    EXPECT_EQ(f.read_f32("y"), b);
    int entries = 0;
    for (const auto& e : fs::directory_iterator(dir.path())) {
        ++entries;
        EXPECT_EQ(e.path().filename(), "ckpt.safetensors");
    }
    EXPECT_EQ(entries, 1);
}

// A write that fails halfway (here: the file-size limit) must leave the previous file untouched
// under the final name and remove its temporary file.
TEST(SafetensorsWriter, FailedWriteKeepsThePreviousFileAndRemovesTheTemporary) {
    TempDir dir;
    const std::string path = dir.file("ckpt.safetensors");
    std::vector<float> small = {1, 2, 3};
    SafetensorsWriter w1;
    w1.add("x", SafetensorsDtype::F32, {3}, small.data(), 12);
    w1.write(path);
    const std::string before = read_whole(path);

    std::vector<uint8_t> big = pattern_bytes(1 << 16, 9);
    SafetensorsWriter w2;
    w2.add("big", SafetensorsDtype::U8, {big.size()}, big.data(), big.size());

    struct rlimit old_limit;
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    if (old_limit.rlim_cur != RLIM_INFINITY && old_limit.rlim_cur < 4096) GTEST_SKIP() << "file size limit too low";
    auto old_handler = signal(SIGXFSZ, SIG_IGN);  // get EFBIG from write() instead of the signal
    struct rlimit lowered = old_limit;
    lowered.rlim_cur = 4096;
    // Nothing may print between lowering and restoring the limit: stdout might be a large file.
    std::string error;
    bool threw = false;
    if (setrlimit(RLIMIT_FSIZE, &lowered) == 0) {
        try {
            w2.write(path);
        } catch (const tune::Error& e) {
            threw = true;
            error = e.what();
        }
        setrlimit(RLIMIT_FSIZE, &old_limit);
    }
    signal(SIGXFSZ, old_handler);

    EXPECT_TRUE(threw) << "writing 64 KiB under a 4 KiB file-size limit did not fail";
    EXPECT_NE(error.find(path), std::string::npos) << error;
    EXPECT_NE(error.find("write failed"), std::string::npos) << error;
    EXPECT_EQ(read_whole(path), before) << "the previous file was damaged";
    int entries = 0;
    for (const auto& e : fs::directory_iterator(dir.path())) {
        ++entries;
        EXPECT_EQ(e.path().filename(), "ckpt.safetensors") << "left behind";
    }
    EXPECT_EQ(entries, 1);
}

TEST(SafetensorsWriter, WriteIntoMissingDirectoryThrowsNamingThePath) {
    TempDir dir;
    const std::string path = dir.file("no/such/dir/ckpt.safetensors");
    try {
        SafetensorsWriter().write(path);
        ADD_FAILURE() << "write into a missing directory succeeded";
    } catch (const tune::Error& e) {
        std::string msg = e.what();
        EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
        EXPECT_NE(msg.find("the directory " + dir.file("no/such/dir") + " does not exist"), std::string::npos) << msg;
    }
}

TEST(SafetensorsWriter, RejectsCallerMistakesAtAdd) {
    std::vector<float> v(6);
    SafetensorsWriter w;
    w.add("x", SafetensorsDtype::F32, {2, 3}, v.data(), 24);
    EXPECT_THROW(w.add("x", SafetensorsDtype::F32, {2, 3}, v.data(), 24), std::invalid_argument);   // duplicate
    EXPECT_THROW(w.add("y", SafetensorsDtype::F32, {2, 3}, v.data(), 20), std::invalid_argument);   // size
    EXPECT_THROW(w.add("y", SafetensorsDtype::BF16, {2, 3}, v.data(), 24), std::invalid_argument);  // dtype
    EXPECT_THROW(w.add("y", SafetensorsDtype::F4, {3}, v.data(), 1), std::invalid_argument);  // half a byte
    EXPECT_THROW(w.add("__metadata__", SafetensorsDtype::F32, {1}, v.data(), 4), std::invalid_argument);
    EXPECT_THROW(w.add("bad\xff", SafetensorsDtype::F32, {1}, v.data(), 4), std::invalid_argument);  // not UTF-8
    EXPECT_THROW(w.add("y", SafetensorsDtype::F32, {1ull << 62, 1ull << 62}, v.data(), 0), std::invalid_argument);
    EXPECT_THROW(w.set_metadata("k", "\xc3"), std::invalid_argument);
    w.add("empty", SafetensorsDtype::F32, {0}, nullptr, 0);  // empty tensors need no data
}

// ------------------------------------------------------------------------------------------------
// Reading values

TEST(SafetensorsRead, ReadF32ConvertsF32Bf16F16F64Exactly) {
    TempDir dir;
    const std::vector<float> f32 = {1.5f, -0.0f, 3.0e-39f, std::numeric_limits<float>::infinity()};
    const std::vector<uint16_t> bf16 = {0x3f80, 0xc020, 0x0001, 0xff80};
    const std::vector<uint16_t> f16 = {0x3c00, 0xc100, 0x0001, 0x7bff, 0xfc00};
    const std::vector<double> f64 = {0.5, -1.0 / 3.0, 1e300};
    SafetensorsWriter w;
    w.add("f32", SafetensorsDtype::F32, {2, 2}, f32.data(), 16);
    w.add("bf16", SafetensorsDtype::BF16, {4}, bf16.data(), 8);
    w.add("f16", SafetensorsDtype::F16, {5, 1}, f16.data(), 10);
    w.add("f64", SafetensorsDtype::F64, {3}, f64.data(), 24);
    w.write(dir.file("v.safetensors"));

    SafetensorsFile f(dir.file("v.safetensors"));
    std::vector<float> got = f.read_f32("f32");
    ASSERT_EQ(got.size(), 4u);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(f32_bits(got[i]), f32_bits(f32[i])) << i;
    EXPECT_EQ(f.read_f32("bf16"),
              (std::vector<float>{1.0f, -2.5f, std::ldexp(1.0f, -133), -std::numeric_limits<float>::infinity()}));
    EXPECT_EQ(f.read_f32("f16"), (std::vector<float>{1.0f, -2.5f, std::ldexp(1.0f, -24), 65504.0f,
                                                     -std::numeric_limits<float>::infinity()}));
    EXPECT_EQ(f.read_f32("f64"), (std::vector<float>{0.5f, static_cast<float>(-1.0 / 3.0),
                                                     std::numeric_limits<float>::infinity()}))
        << "F64 rounds to nearest f32; 1e300 overflows to inf";
}

// Larger than one conversion chunk (2^18 elements), so the chunk boundaries are exercised.
TEST(SafetensorsRead, ReadF32IntoConvertsBf16AcrossChunkBoundaries) {
    TempDir dir;
    const size_t n = (1 << 18) * 2 + 7;
    std::vector<uint8_t> bytes = pattern_bytes(n * 2, 31);
    SafetensorsWriter w;
    w.add("big", SafetensorsDtype::BF16, {n}, bytes.data(), bytes.size());
    w.write(dir.file("big.safetensors"));
    SafetensorsFile f(dir.file("big.safetensors"));
    std::vector<float> out(n, std::numeric_limits<float>::quiet_NaN());
    f.read_f32_into("big", out.data(), out.size());
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        uint16_t b = static_cast<uint16_t>(bytes[2 * i] | (bytes[2 * i + 1] << 8));
        if (f32_bits(out[i]) != static_cast<uint32_t>(b) << 16 && ++bad <= 3)
            ADD_FAILURE() << "element " << i << ": bits 0x" << std::hex << b << " -> " << out[i];
    }
    EXPECT_EQ(bad, 0u);
}

TEST(SafetensorsRead, ReadF32RejectsIntegerDtypeAndWrongCount) {
    TempDir dir;
    std::vector<int32_t> ints = {1, 2, 3};
    std::vector<float> floats = {1, 2, 3};
    SafetensorsWriter w;
    w.add("ints", SafetensorsDtype::I32, {3}, ints.data(), 12);
    w.add("floats", SafetensorsDtype::F32, {3}, floats.data(), 12);
    w.write(dir.file("i.safetensors"));
    SafetensorsFile f(dir.file("i.safetensors"));
    try {
        (void)f.read_f32("ints");
        ADD_FAILURE() << "read_f32 of an I32 tensor succeeded";
    } catch (const tune::Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find("'ints'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("I32"), std::string::npos) << msg;
        EXPECT_NE(msg.find("does not convert to f32"), std::string::npos) << msg;
    }
    std::vector<float> out(4);
    try {
        f.read_f32_into("floats", out.data(), out.size());
        ADD_FAILURE() << "read_f32_into with 4 floats for a 3-element tensor succeeded";
    } catch (const tune::Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find("has 3 elements"), std::string::npos) << msg;
        EXPECT_NE(msg.find("holds 4"), std::string::npos) << msg;
    }
    EXPECT_THROW(f.read_bytes_into(f.at("floats"), out.data(), 16), tune::Error);
}

TEST(SafetensorsRead, UnknownTensorNameThrowsNamingIt) {
    TempDir dir;
    SafetensorsWriter().write(dir.file("e.safetensors"));
    SafetensorsFile f(dir.file("e.safetensors"));
    EXPECT_EQ(f.find("wte.weight"), nullptr);
    try {
        (void)f.at("wte.weight");
        ADD_FAILURE() << "at() of a missing tensor succeeded";
    } catch (const tune::Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find("no tensor named 'wte.weight'"), std::string::npos) << msg;
        EXPECT_NE(msg.find(dir.file("e.safetensors")), std::string::npos) << msg;
    }
}

TEST(SafetensorsRead, FileTruncatedAfterOpenGivesErrorNotCrash) {
    TempDir dir;
    std::vector<float> v(100, 1.0f);
    SafetensorsWriter w;
    w.add("v", SafetensorsDtype::F32, {100}, v.data(), 400);
    w.write(dir.file("t.safetensors"));
    SafetensorsFile f(dir.file("t.safetensors"));
    fs::resize_file(dir.file("t.safetensors"), f.data_start() + 10);
    try {
        (void)f.read_f32("v");
        ADD_FAILURE() << "reading a truncated tensor succeeded";
    } catch (const tune::Error& e) {
        EXPECT_NE(std::string(e.what()).find("unexpected end of file"), std::string::npos) << e.what();
    }
}

TEST(SafetensorsRead, MovedFileKeepsReading) {
    TempDir dir;
    std::vector<float> v = {7, 8};
    SafetensorsWriter w;
    w.add("v", SafetensorsDtype::F32, {2}, v.data(), 8);
    w.write(dir.file("m.safetensors"));
    SafetensorsFile a(dir.file("m.safetensors"));
    SafetensorsFile b(std::move(a));
    EXPECT_EQ(b.read_f32("v"), v);
    SafetensorsFile c(dir.file("m.safetensors"));
    c = std::move(b);
    EXPECT_EQ(c.read_f32("v"), v);
}

// ------------------------------------------------------------------------------------------------
// Files the reader accepts although no writer of ours produces them

TEST(SafetensorsAccept, NullMetadataWhitespaceUnknownFieldsAndEmptyTensors) {
    TempDir dir;
    const std::string p = dir.file("ok.safetensors");
    write_raw(p,
              " \n{\"__metadata__\":null,"
              "\"a\":{\"data_offsets\":[0,2],\"shape\":[2],\"dtype\":\"U8\",\"future_field\":[1]},"
              "\"z\":{\"dtype\":\"F32\",\"shape\":[0,7],\"data_offsets\":[2,2]},"
              "\"s\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[2,4]}}\t  ",
              "xyzw");
    SafetensorsFile f(p);
    EXPECT_TRUE(f.metadata().empty());
    ASSERT_EQ(f.tensors().size(), 3u);
    EXPECT_EQ(f.tensors()[0].name, "a");
    EXPECT_EQ(f.tensors()[1].name, "z");
    EXPECT_EQ(f.tensors()[2].name, "s");
    EXPECT_EQ(f.read_bytes("a"), (std::vector<uint8_t>{'x', 'y'}));
    EXPECT_TRUE(f.read_bytes("z").empty());
    EXPECT_EQ(f.at("s").numel(), 1u);
}

// ------------------------------------------------------------------------------------------------
// Malformed files: each is rejected, and the message says what is wrong

const std::string kEntryA = "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}";

TEST(SafetensorsMalformed, FileShorterThan8Bytes) {
    TempDir dir;
    write_whole(dir.file("short"), std::string("\x05\x00\x00", 3));
    expect_rejected(dir.file("short"), {"3 bytes", "shorter than the 8-byte header length"});
    write_whole(dir.file("empty"), "");
    expect_rejected(dir.file("empty"), {"0 bytes", "shorter than the 8-byte"});
}

TEST(SafetensorsMalformed, HeaderLengthBeyondTheFile) {
    TempDir dir;
    write_whole(dir.file("f"), u64_le(1000) + "{}      ");
    expect_rejected(dir.file("f"), {"header length 1000", "beyond the file", "only 8 bytes follow"});
}

TEST(SafetensorsMalformed, HeaderLengthOverThe100MBLimit) {
    TempDir dir;
    write_whole(dir.file("f"), u64_le(100'000'001) + "{}      ");
    expect_rejected(dir.file("f"), {"header length 100000001", "exceeds the limit of 100000000"});
    write_whole(dir.file("g"), u64_le(~0ull) + "{}      ");
    expect_rejected(dir.file("g"), {"header length 18446744073709551615", "exceeds the limit"});
}

TEST(SafetensorsMalformed, HeaderNotJson) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\": not json}", "");
    expect_rejected(dir.file("f"), {"header is not valid JSON", "parse error at line 1"});
    // NUL padding is not JSON whitespace.
    write_whole(dir.file("trailing"), u64_le(8) + std::string("{}\0\0\0\0\0\0", 8));
    expect_rejected(dir.file("trailing"), {"header is not valid JSON", "NUL byte at header offset 2"});
    // Nor may a NUL hide a second object from a parser that stops at it.
    write_whole(dir.file("hidden"), u64_le(16) + std::string("{}\0{\"a\":1}      ", 16));
    expect_rejected(dir.file("hidden"), {"NUL byte"});
    write_raw(dir.file("bom"), "\xef\xbb\xbf{}", "");
    expect_rejected(dir.file("bom"), {"header is not valid JSON", "byte order mark"});
    write_raw(dir.file("utf8"), "{\"a\xff\":{}}", "");
    expect_rejected(dir.file("utf8"), {"header is not valid JSON", "UTF-8"});
    write_raw(dir.file("nothing"), "", "");
    expect_rejected(dir.file("nothing"), {"header is not valid JSON"});
}

TEST(SafetensorsMalformed, HeaderJsonNotAnObject) {
    TempDir dir;
    write_raw(dir.file("f"), "[1, 2]  ", "");
    expect_rejected(dir.file("f"), {"header JSON must be an object", "got JSON of type array"});
    write_raw(dir.file("g"), "\"F32\"", "");
    expect_rejected(dir.file("g"), {"header JSON must be an object", "got JSON of type string"});
}

TEST(SafetensorsMalformed, HeaderJsonNestedTooDeep) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"__metadata__\":" + std::string(200, '[') + std::string(200, ']') + "}", "");
    expect_rejected(dir.file("f"), {"nests deeper than 64 levels"});
}

TEST(SafetensorsMalformed, EntryNotAnObjectOrMissingAField) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\":5}", "");
    expect_rejected(dir.file("f"), {"tensor 'a'", "entry must be a JSON object"});
    write_raw(dir.file("g"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2]}}", "xy");
    expect_rejected(dir.file("g"), {"tensor 'a'", "field 'data_offsets' is missing"});
    write_raw(dir.file("h"), "{\"a\":{\"shape\":[2],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("h"), {"tensor 'a'", "field 'dtype' is missing"});
    write_raw(dir.file("i"), "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("i"), {"tensor 'a'", "field 'shape' is missing"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"wte\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", std::string(8, 'x'));
    expect_rejected(dir.file("f"), {"tensor 'wte'", "unknown dtype 'F31'", "expected one of"});
    write_raw(dir.file("g"), "{\"wte\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", std::string(8, 'x'));
    expect_rejected(dir.file("g"), {"unknown dtype 'f32'"});
    write_raw(dir.file("h"), "{\"wte\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", std::string(8, 'x'));
    expect_rejected(dir.file("h"), {"field 'dtype' must be a string", "32"});
}

TEST(SafetensorsMalformed, NegativeOrNonIntegerShape) {
    TempDir dir;
    write_raw(dir.file("neg"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("neg"), {"tensor 'a'", "'shape' must hold non-negative integers", "'-2'"});
    write_raw(dir.file("frac"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2.5],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("frac"), {"'shape' must hold non-negative integers", "'2.5'"});
    write_raw(dir.file("float"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("float"), {"'shape' must hold non-negative integers", "'2.0'"});
    write_raw(dir.file("str"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[\"2\"],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("str"), {"'shape' must hold non-negative integers"});
    write_raw(dir.file("huge"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("huge"), {"'shape' must hold non-negative integers"});
    write_raw(dir.file("notarray"), "{\"a\":{\"dtype\":\"U8\",\"shape\":2,\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("notarray"), {"'shape' must be an array"});
}

TEST(SafetensorsMalformed, ShapeProductOverflows) {
    TempDir dir;
    write_raw(dir.file("f"),
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", "");
    expect_rejected(dir.file("f"), {"tensor 'a'", "overflows 64-bit size arithmetic"});
    // The element count fits, its byte count does not.
    write_raw(dir.file("g"), "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", "");
    expect_rejected(dir.file("g"), {"overflows"});
}

TEST(SafetensorsMalformed, DataOffsetsBeginAfterEnd) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,2]}}", "xyzw");
    expect_rejected(dir.file("f"), {"tensor 'a'", "data_offsets begin 4 > end 2"});
}

TEST(SafetensorsMalformed, DataOffsetsOutOfRange) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,100]}}", "xy");
    expect_rejected(dir.file("f"), {"tensor 'a'", "end 100 is out of range", "data buffer of 2 bytes"});
}

TEST(SafetensorsMalformed, DataOffsetsNotAPair) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2,2]}}", "xy");
    expect_rejected(dir.file("f"), {"tensor 'a'", "must be [begin, end]", "got 3 numbers"});
    write_raw(dir.file("g"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-1,2]}}", "xy");
    expect_rejected(dir.file("g"), {"'data_offsets' must hold non-negative integers"});
}

TEST(SafetensorsMalformed, SizeDoesNotMatchShapeTimesDtype) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "xyzw");
    expect_rejected(dir.file("f"), {"tensor 'a'", "span 4 bytes", "shape [2] of dtype F32 needs 8 bytes"});
    write_raw(dir.file("g"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("g"), {"needs 0 bytes"});
}

TEST(SafetensorsMalformed, SubByteDtypeNotFillingWholeBytes) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("f"), {"tensor 'a'", "4-bit dtype F4", "whole number of bytes"});
}

TEST(SafetensorsMalformed, OverlappingOffsets) {
    TempDir dir;
    write_raw(dir.file("f"),
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
              "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
              "abcdef");
    expect_rejected(dir.file("f"), {"tensor 'b'", "[2, 6] overlap tensor 'a' [0, 4]"});
    // An empty tensor placed inside another one overlaps it too.
    write_raw(dir.file("g"),
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
              "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
              "abcd");
    expect_rejected(dir.file("g"), {"tensor 'e'", "overlap tensor 'a'"});
}

TEST(SafetensorsMalformed, HoleInTheDataBuffer) {
    TempDir dir;
    write_raw(dir.file("f"),
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
              "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
              "abcdef");
    expect_rejected(dir.file("f"), {"hole in the data buffer", "bytes [2, 4)", "tensor 'b'"});
    write_raw(dir.file("g"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", "xy");
    expect_rejected(dir.file("g"), {"hole in the data buffer", "bytes [0, 1)"});
}

TEST(SafetensorsMalformed, TrailingBytesAfterTheLastTensor) {
    TempDir dir;
    write_raw(dir.file("f"), "{" + kEntryA + "}", "xyz");
    expect_rejected(dir.file("f"), {"trailing bytes", "data buffer is 3 bytes", "cover only 2"});
    write_raw(dir.file("g"), "{}", "junk");
    expect_rejected(dir.file("g"), {"trailing bytes", "data buffer is 4 bytes", "cover only 0"});
}

TEST(SafetensorsMalformed, DuplicateKeys) {
    TempDir dir;
    write_raw(dir.file("f"), "{" + kEntryA + "," + kEntryA + "}", "xy");
    expect_rejected(dir.file("f"), {"duplicate key 'a'", "each tensor name may appear once"});
    write_raw(dir.file("g"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"shape\":[2],\"data_offsets\":[0,2]}}", "xy");
    expect_rejected(dir.file("g"), {"duplicate key 'shape' inside header entry 'a'"});
    write_raw(dir.file("h"), "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", "");
    expect_rejected(dir.file("h"), {"duplicate key 'k' inside header entry '__metadata__'"});
}

TEST(SafetensorsMalformed, MetadataNotStringToString) {
    TempDir dir;
    write_raw(dir.file("f"), "{\"__metadata__\":{\"step\":42}," + kEntryA + "}", "xy");
    expect_rejected(dir.file("f"), {"__metadata__ value of key 'step' must be a string", "got '42'"});
    write_raw(dir.file("g"), "{\"__metadata__\":{\"k\":{\"nested\":\"x\"}}}", "");
    expect_rejected(dir.file("g"), {"__metadata__ value of key 'k' must be a string"});
    write_raw(dir.file("h"), "{\"__metadata__\":\"format=pt\"}", "");
    expect_rejected(dir.file("h"), {"__metadata__ must be an object of string to string"});
}

TEST(SafetensorsMalformed, NotARegularFileOrMissing) {
    TempDir dir;
    expect_rejected(dir.path(), {"not a regular file"});
    expect_rejected(dir.file("missing.safetensors"), {"cannot open", "No such file or directory"});
}

TEST(SafetensorsMalformed, HostileTensorNameIsShortenedInTheMessage) {
    TempDir dir;
    const std::string name(5000, 'n');
    write_raw(dir.file("f"), "{\"" + name + "\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}", "");
    try {
        SafetensorsFile f(dir.file("f"));
        ADD_FAILURE() << "accepted unknown dtype";
    } catch (const tune::Error& e) {
        std::string msg = e.what();
        EXPECT_LT(msg.size(), 1000u) << "a 5000-byte name was copied into the message";
        EXPECT_NE(msg.find("(5000 bytes)"), std::string::npos) << msg;
    }
}

// ------------------------------------------------------------------------------------------------
// Interop with the official Python package (scripts/safetensors_interop.py)

const char* kInteropScript = "scripts/safetensors_interop.py";

// Empty if python3 with safetensors and numpy is available, else the reason to skip.
std::string python_missing() {
    static const std::string reason = [] {
        int rc = std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1");
        if (rc != 0)
            return std::string("python3 with the safetensors and numpy packages is not available "
                               "(pip install safetensors numpy)");
        return std::string();
    }();
    return reason;
}

// Runs the script with `args`; returns its exit status and puts its output in *log.
int run_script(const TempDir& dir, const std::string& args, std::string* log) {
    const std::string log_path = dir.file("script.log");
    const std::string cmd = std::string("python3 ") + kInteropScript + " " + args + " >'" + log_path + "' 2>&1";
    int rc = std::system(cmd.c_str());
    *log = read_whole(log_path);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

struct ManifestTensor {
    std::string name, dtype;
    std::vector<uint64_t> shape;
};

struct Manifest {
    std::vector<ManifestTensor> tensors;
    std::map<std::string, std::string> metadata;
};

Manifest read_manifest(const std::string& path) {
    Manifest m;
    std::ifstream f(path);
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ss(line);
        std::string kind;
        ss >> kind;
        if (kind == "tensor") {
            ManifestTensor t;
            size_t ndim = 0;
            ss >> t.name >> t.dtype >> ndim;
            t.shape.resize(ndim);
            for (uint64_t& d : t.shape) ss >> d;
            m.tensors.push_back(t);
        } else if (kind == "meta") {
            std::string k, v;
            ss >> k >> v;
            m.metadata[k] = v;
        }
    }
    return m;
}

class SafetensorsInterop : public ::testing::Test {
protected:
    void SetUp() override {
        if (!python_missing().empty()) GTEST_SKIP() << python_missing();
        ASSERT_TRUE(fs::exists(kInteropScript)) << kInteropScript << " not found: run tune_tests from the repository root";
    }
    TempDir dir_;
};

TEST_F(SafetensorsInterop, ReadsFilesWrittenByOfficialPackageWithSameValues) {
    std::string log;
    ASSERT_EQ(run_script(dir_, "write '" + dir_.path() + "'", &log), 0) << log;
    for (const std::string file : {"official", "official_bf16"}) {
        SCOPED_TRACE(file);
        Manifest m = read_manifest(dir_.file(file + ".manifest"));
        ASSERT_FALSE(m.tensors.empty());
        SafetensorsFile f(dir_.file(file + ".safetensors"));
        EXPECT_EQ(f.tensors().size(), m.tensors.size());
        EXPECT_EQ(f.metadata(), m.metadata);
        for (const ManifestTensor& mt : m.tensors) {
            SCOPED_TRACE(mt.name);
            const tune::SafetensorsTensorInfo* t = f.find(mt.name);
            ASSERT_NE(t, nullptr);
            EXPECT_EQ(tune::safetensors_dtype_name(t->dtype), mt.dtype);
            EXPECT_EQ(t->shape, mt.shape);
            const std::vector<uint8_t> got = f.read_bytes(mt.name);
            const std::string want = read_whole(dir_.file(file + "." + mt.name + ".bytes"));
            EXPECT_TRUE(std::string(got.begin(), got.end()) == want) << "raw bytes differ";
            const std::string f32_path = dir_.file(file + "." + mt.name + ".f32");
            if (fs::exists(f32_path)) {
                const std::vector<float> vals = f.read_f32(mt.name);
                const std::string want_f32 = read_whole(f32_path);
                ASSERT_EQ(vals.size() * 4, want_f32.size());
                // Bitwise, so NaN, -0 and subnormals count (an empty tensor's data() may be null: no memcmp).
                EXPECT_TRUE(vals.empty() || std::memcmp(vals.data(), want_f32.data(), want_f32.size()) == 0)
                    << "f32 values differ from numpy's conversion";
            }
        }
    }
}

TEST_F(SafetensorsInterop, RewritingOfficialFilesIsByteIdentical) {
    std::string log;
    ASSERT_EQ(run_script(dir_, "write '" + dir_.path() + "'", &log), 0) << log;
    for (const std::string file : {"official", "official_bf16"}) {
        SafetensorsFile f(dir_.file(file + ".safetensors"));
        rewrite(f, dir_.file(file + ".ours.safetensors"));
        const std::string theirs = read_whole(dir_.file(file + ".safetensors"));
        const std::string ours = read_whole(dir_.file(file + ".ours.safetensors"));
        EXPECT_TRUE(theirs == ours) << file << ": our writer's bytes differ from the official package's ("
                                    << ours.size() << " vs " << theirs.size() << " bytes)\nours:   "
                                    << ours.substr(8, f.header_bytes()) << "\ntheirs: "
                                    << theirs.substr(8, f.header_bytes());
    }
}

// Writes `tensors` with our writer and the expected contents in the script's manifest form.
void write_for_script(const TempDir& dir, const std::string& file, const std::vector<TestTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    SafetensorsWriter w;
    add_all(w, tensors);
    for (const auto& kv : metadata) w.set_metadata(kv.first, kv.second);
    w.write(dir.file(file + ".safetensors"));
    std::ofstream m(dir.file(file + ".manifest"));
    for (const TestTensor& t : tensors) {
        m << "tensor " << t.name << " " << tune::safetensors_dtype_name(t.dtype) << " " << t.shape.size();
        for (uint64_t d : t.shape) m << " " << d;
        m << "\n";
        write_whole(dir.file(file + "." + t.name + ".bytes"), std::string(t.bytes.begin(), t.bytes.end()));
    }
    for (const auto& kv : metadata) m << "meta " << kv.first << " " << kv.second << "\n";
}

TEST_F(SafetensorsInterop, OfficialPackageReadsFilesWeWrite) {
    using D = SafetensorsDtype;
    // Only numpy dtypes here, so the script also checks safetensors.numpy.load_file.
    const std::vector<TestTensor> numpy_tensors = {
        make_tensor("h.0.mlp.c_fc.weight", D::F32, {5, 7}, 101), make_tensor("f64", D::F64, {3, 2}, 102),
        make_tensor("f16", D::F16, {9}, 103),     make_tensor("i64", D::I64, {2, 2}, 104),
        make_tensor("u64", D::U64, {1}, 105),     make_tensor("i32", D::I32, {3}, 106),
        make_tensor("u32", D::U32, {2}, 107),     make_tensor("i16", D::I16, {5}, 108),
        make_tensor("u16", D::U16, {1, 3}, 109),  make_tensor("i8", D::I8, {7}, 110),
        make_tensor("u8", D::U8, {2, 2, 2}, 111), make_tensor("bool", D::BOOL, {6}, 112),
        make_tensor("scalar", D::F32, {}, 113),   make_tensor("empty", D::F16, {0, 2}, 114),
    };
    write_for_script(dir_, "ours", numpy_tensors, {{"format", "pt"}, {"step", "42"}});
    // bf16 and the other non-numpy dtypes: the script checks these with the raw deserializer.
    const std::vector<TestTensor> raw_tensors = {
        make_tensor("wte.bf16", D::BF16, {3, 5}, 201), make_tensor("f32", D::F32, {2}, 202),
        make_tensor("f8", D::F8_E4M3, {3}, 203),       make_tensor("f4", D::F4, {4}, 204),
    };
    write_for_script(dir_, "ours_bf16", raw_tensors, {});
    for (const char* file : {"ours", "ours_bf16"}) {
        std::string log;
        EXPECT_EQ(run_script(dir_, "check '" + dir_.path() + "' " + file, &log), 0) << log;
    }
}

}  // namespace
