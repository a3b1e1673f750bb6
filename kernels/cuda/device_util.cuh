// Device-side helpers shared by the CUDA layers (included by .cu files only): element conversions
// (every kernel loads bf16/fp16/fp32 and computes in fp32), 16-byte packs for vectorised loads, warp and
// block reductions in a fixed order, and grid sizing in size_t.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace tune::cuda {

// ---- element conversions: load as fp32, store rounded to nearest (even) ----
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
    return __float2half_rn(x);
}

// ---- 16-byte packs: one 128-bit load or store moves kPack<T> elements ----
template <class T>
constexpr int kPack = 16 / (int)sizeof(T);

template <class T>
struct alignas(16) Pack {
    T v[kPack<T>];
};

template <class T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {  // p must be 16-byte aligned
    Pack<T> r;
    *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
    return r;
}

template <class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& r) {  // p must be 16-byte aligned
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&r);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// One 16-byte pack as fp32 values (p 16-byte aligned), and back, rounded.
template <class T>
__device__ __forceinline__ void load_pack_f32(float (&out)[kPack<T>], const T* p) {
    const Pack<T> k = load_pack(p);
#pragma unroll
    for (int j = 0; j < kPack<T>; j++) out[j] = to_f32(k.v[j]);
}
template <class T>
__device__ __forceinline__ void store_pack_f32(T* p, const float (&in)[kPack<T>]) {
    Pack<T> k;
#pragma unroll
    for (int j = 0; j < kPack<T>; j++) k.v[j] = from_f32<T>(in[j]);
    store_pack(p, k);
}

// Group g of a row of C elements: the kPack<T> elements from g*kPack<T>, as fp32. kVec: one 16-byte access (the
// row 16-byte aligned, C a multiple of kPack<T>); else element by element, those past C read as 0 and not written.
// A kernel written with groups adds its elements in the same order on both paths, so an aligned and a misaligned
// call give the same bits.
template <bool kVec, class T>
__device__ __forceinline__ void load_group(float (&out)[kPack<T>], const T* row, int g, int C) {
    constexpr int P = kPack<T>;
    if constexpr (kVec) {
        load_pack_f32(out, row + (size_t)g * P);
    } else {
#pragma unroll
        for (int j = 0; j < P; j++) out[j] = g * P + j < C ? to_f32(row[(size_t)g * P + j]) : 0.0f;
    }
}
template <bool kVec, class T>
__device__ __forceinline__ void store_group(T* row, int g, int C, const float (&in)[kPack<T>]) {
    constexpr int P = kPack<T>;
    if constexpr (kVec) {
        store_pack_f32(row + (size_t)g * P, in);
    } else {
#pragma unroll
        for (int j = 0; j < P; j++)
            if (g * P + j < C) row[(size_t)g * P + j] = from_f32<T>(in[j]);
    }
}

// ---- reductions ----
// TEACH: the xor butterfly leaves the identical sum in every lane (each step adds a pair of values that
// both partners hold, and float addition is commutative), and its order never changes between runs.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block, returned to every thread. `shared` holds at least 32 values. blockDim.x must
// be a multiple of 32. Contains __syncthreads: every thread of the block must call it.
template <class F>
__device__ __forceinline__ F block_sum(F v, F* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : F(0);
    return warp_sum(v);
}

// Max over the whole block, returned to every thread; same contract as block_sum.
__device__ __forceinline__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : -INFINITY;
    return warp_max(v);
}

// ---- online softmax statistics ----
// TEACH: online softmax a pack at a time. Add the values x[j] whose column first + j is below `limit` to a (max,
// sum of exp(x - max)) pair: the pack's own maximum first, so the sum is rescaled at most once per pack instead
// of tested at every value. A -inf adds exp(-inf) = 0: skipped (it may meet max = -inf). A NaN never becomes the
// max (fmaxf drops it, and `>` is false for it) but its exp makes the sum NaN, and so does a +inf (exp(inf - inf)):
// the loss is then NaN, as the CPU reference's.
template <int P>
__device__ __forceinline__ void online_add_pack(float& m, float& s, const float (&x)[P], int first, int limit) {
    float pm = -INFINITY;
#pragma unroll
    for (int j = 0; j < P; j++)
        if (first + j < limit) pm = fmaxf(pm, x[j]);
    if (pm > m) {
        s *= expf(m - pm);  // expf(-inf) = 0 while the sum is still empty
        m = pm;
    }
#pragma unroll
    for (int j = 0; j < P; j++)
        if (first + j < limit && x[j] != -INFINITY) s += expf(x[j] - m);
}

// Merge two (max, sum of exp(x - max)) pairs. A side with max = -inf holds no finite value: its sum is 0, or NaN
// when it saw a NaN, which the merged sum must keep (adding the sum keeps it, and adds nothing otherwise).
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
    if (m2 == -INFINITY) {
        s += s2;
        return;
    }
    if (m == -INFINITY) {
        m = m2;
        s = s2 + s;
        return;
    }
    const float mm = fmaxf(m, m2);
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

// The block's (max, sum of exp) from each thread's pair: a butterfly in each warp, then every thread merges
// the warps' pairs in order, so all threads hold the same values. Contains __syncthreads.
__device__ __forceinline__ void block_online_merge(float& m, float& s, float* shared_m, float* shared_s) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        online_merge(m, s, m2, s2);
    }
    __syncthreads();  // the previous row's readers of shared_m/shared_s are done
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    m = -INFINITY;
    s = 0.0f;
    for (int k = 0; k < nwarps; k++) online_merge(m, s, shared_m[k], shared_s[k]);
}

// ---- grid sizing ----
constexpr size_t kMaxGridX = 2147483647u;  // gridDim.x limit
// The default cap of grid_1d: some two million blocks, every SM of any GPU many times over; past it a launch gains
// nothing but scheduling work, and the grid-stride loop of the kernel covers the rest.
constexpr size_t kGridStrideCap = 65535u * 32u;
// Blocks to cover `work` items at `per_block` each, at least 1, at most `cap` (kernels use grid-stride
// loops wherever the cap can bind).
inline unsigned grid_1d(size_t work, size_t per_block, size_t cap = kGridStrideCap) {
    size_t g = (work + per_block - 1) / per_block;
    return (unsigned)std::max<size_t>(1, std::min(g, cap));
}

// ---- deterministic column sums (parameter gradients of LayerNorm, bias gradients of matmul) ----
// Blocks of kColChannels columns x kColRowLanes row lanes, each block column owning a fixed slice of rows;
// a second kernel adds the slices' fp32 partials in order. The slicing depends only on N, so the partial
// sums and their order (and so the bits of the result) are the same on every run.
constexpr int kColChannels = 32;
constexpr int kColRowLanes = 8;
constexpr size_t kMinRowsPerSlice = 256;
constexpr size_t kMaxSlices = 1024;
constexpr int kSumRowLanes = 32;  // the second kernel: 32 channels x 32 lanes over the slices per block

struct ColumnSlices {
    size_t rows_per_slice;
    int slices;
};
inline ColumnSlices column_slices(size_t N) {
    const size_t rows = std::max(kMinRowsPerSlice, (N + kMaxSlices - 1) / kMaxSlices);
    return {rows, (int)((N + rows - 1) / rows)};
}

// ---- segment tables ----
// One launch over many segments (AdamW, the anchor penalty): the host lays the segments' blocks end to end in
// a table sorted by `first_block`, and each block finds its own entry by binary search: the last of `count`
// entries with first_block <= block.
template <class Entry>
__device__ __forceinline__ int segment_of_block(const Entry* table, int count, size_t block) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (table[mid].first_block <= block)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

// ---- hashing ----
// A 64-to-32-bit mixer (MurmurHash3's finaliser): random bits from an index, for stochastic rounding and
// for filling benchmark inputs.
__device__ __forceinline__ uint32_t mix_bits(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

}  // namespace tune::cuda
