// Shared vocabulary of tune.cu: dimension names, element types, and the error type for bad input.
//
// Dimension glossary (used in every shape comment in the project):
//   B   batch size (sequences per micro-batch)      T   sequence length (positions)
//   C   channels (embedding width, n_embd)          NH  attention heads
//   HS  head size (C / NH)                          V   vocabulary size (real tokens)
//   Vp  padded vocabulary size (V rounded up; rows V..Vp-1 are zero and take no part in the loss)
//   L   layers (Transformer blocks)                 N   rows of a flattened (B, T) = B*T
//   IC  a linear layer's input channels             OC  its output channels
//   P   virtual tokens (PEFT), the first P positions of every row; inside a kernel that reads 16-byte packs,
//       the elements of a pack (kPack<T>, kernels/cuda/device_util.cuh)
//   maxT  positions the position table holds (the block size)   r  LoRA rank   n  elements of a flat buffer
// Index arithmetic uses size_t: B*NH*T*T overflows int for realistic shapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace tune {

// Element types a buffer can hold. The CPU backend uses f32 (training) or f64 (gradient checks);
// the CUDA backend adds bf16 and f16 working copies beside f32 master weights.
enum class DType : uint8_t { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };

inline size_t dtype_size(DType t) {
    switch (t) {
        case DType::f32: return 4;
        case DType::f64: return 8;
        case DType::bf16: return 2;
        case DType::f16: return 2;
    }
    return 0;
}

inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::f32: return "f32";
        case DType::f64: return "f64";
        case DType::bf16: return "bf16";
        case DType::f16: return "f16";
    }
    return "?";
}

// The counter-based hash behind dropout masks (Backend::dropout), identical on the host and the device:
// SplitMix64's finaliser of (seed + golden-ratio step * (i + 1)), top 32 bits.
#if defined(__CUDACC__)
#define TUNE_HOST_DEVICE __host__ __device__
#else
#define TUNE_HOST_DEVICE
#endif
TUNE_HOST_DEVICE inline uint32_t dropout_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

// Attention within documents (packed rows, `bin/train --windows isolated`): query t of row b sees key u <= t when
// u >= t - pos[b, t] (its own document: pos counts from the document's first token) or u < prefix (virtual tokens
// at the row's start, which every document of the row shares). pos null: every u <= t (plain causal attention).
struct DocMask {
    const int32_t* pos = nullptr;  // (B, T), on the backend
    int prefix = 0;
    DocMask() = default;
    DocMask(const int32_t* positions, int virtual_prefix = 0) : pos(positions), prefix(virtual_prefix) {}  // implicit
};
// The first key of query t's own document (row b of T).
TUNE_HOST_DEVICE inline int doc_first_key(const DocMask& m, size_t b, int t, int T) {
    return m.pos ? t - m.pos[b * T + t] : 0;
}
// Whether query t, whose document starts at key u0, sees key u.
TUNE_HOST_DEVICE inline bool doc_sees(const DocMask& m, int u0, int u, int t) {
    return u <= t && (u >= u0 || u < m.prefix);
}

// Where a process's mask sits in the whole batch's. A (B, rows, cols) tensor holds B sequences of seq_elems =
// rows * cols elements; under data parallelism this process's sequence b is sequence b * stride + offset of the
// global batch (stride: the world size, offset: the rank; data/shard.h deals windows out that way), and element
// i draws the counter it has there, so the masks do not depend on how many ranks share the batch. The default,
// stride 1 and offset 0, is the identity.
struct DropoutLayout {
    uint64_t seq_elems = 1, stride = 1, offset = 0;
};
TUNE_HOST_DEVICE inline uint64_t dropout_counter(const DropoutLayout& m, uint64_t i) {
    if (m.stride == 1 && m.offset == 0) return i;
    uint64_t seq, at;
    if (((i | m.seq_elems) >> 32) == 0) {  // 32-bit division where it fits: several times cheaper on a GPU
        const uint32_t q = (uint32_t)i / (uint32_t)m.seq_elems;
        seq = q;
        at = (uint32_t)i - q * (uint32_t)m.seq_elems;
    } else {
        seq = i / m.seq_elems;
        at = i % m.seq_elems;
    }
    return (seq * m.stride + m.offset) * m.seq_elems + at;
}

// The bf16 nearest a float, ties to even (as the bf16 uploads round): its upper 16 bits after rounding. For
// finite values (every weight loader checks).
inline uint16_t f32_to_bf16_rne(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// FNV-1a over bytes: for comparing replicas across ranks and for fingerprints of weights (not cryptographic).
inline uint64_t hash_bytes(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

// The same over 8-byte words (the tail byte by byte): a hash of another form, eight times as fast, for fingerprints
// of whole tensors (a gpt2-xl Fisher is 6 GB).
inline uint64_t hash_words(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return hash_bytes(b + i, n - i, h);
}

// Thrown for input from outside (files, command line, config): the message names the file, the
// field and what was expected. Tools catch it at the top, print the message and exit non-zero.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Thrown for a bad command-line value: tools print it and exit with status 2.
struct UsageError : Error {
    using Error::Error;
};

}  // namespace tune
