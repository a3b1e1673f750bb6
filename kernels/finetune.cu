#include "kernels/finetune.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr int kElementwiseThreads = 256;
// Distillation: two rows a block (student and teacher, 200 KB at GPT-2 in bf16), 1024 threads, one block per SM
// (the registers allow no second), so that the rows in flight stay in L2 for the second pass.
constexpr int kDistillThreads = 1024;
constexpr size_t kMaxRowBlocks = 65535u * 16u;  // rows beyond this are taken by a grid-stride loop
constexpr int kAnchorThreads = 256;
constexpr int kAnchorElemsPerThread = 4;
constexpr size_t kAnchorElemsPerBlock = (size_t)kAnchorThreads * kAnchorElemsPerThread;
constexpr int kAnchorFinalThreads = 1024;

// ---------------------------------------------------------------- scale, dropout
// Elementwise maps out[i] = op(inp[i], i), where i counts from the start of the caller's `inp`.
struct ScaleOp {
    float s;
    __device__ __forceinline__ float operator()(float x, size_t /*i*/) const { return x * s; }
};

struct DropoutOp {
    uint64_t seed;
    DropoutLayout layout;
    uint64_t threshold;  // keep when the 32-bit hash is >= p * 2^32 (up to 2^32: keep nothing)
    float keep_scale;    // 1 / (1 - p), rounded to fp32 as the CPU reference rounds it
    __device__ __forceinline__ float operator()(float x, size_t i) const {
        return (uint64_t)dropout_hash(seed, dropout_counter(layout, i)) >= threshold ? x * keep_scale : 0.0f;
    }
};

template <class T, class Op>
__global__ void map_packed(T* out, const T* inp, size_t npacks, Op op) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < npacks; i += (size_t)gridDim.x * blockDim.x) {
        const Pack<T> x = load_pack(inp + i * kPack<T>);
        Pack<T> r;
#pragma unroll
        for (int j = 0; j < kPack<T>; j++) r.v[j] = from_f32<T>(op(to_f32(x.v[j]), i * kPack<T> + j));
        store_pack(out + i * kPack<T>, r);
    }
}

// Elements first .. first+n-1 of the caller's arrays; out and inp already point at element `first`.
template <class T, class Op>
__global__ void map_scalar(T* out, const T* inp, size_t first, size_t n, Op op) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(op(to_f32(inp[i]), first + i));
}

// 16-byte packs where both pointers allow them, then the tail (or everything, when misaligned) one by one.
template <class T, class Op>
void map_elements(T* out, const T* inp, size_t n, Op op, cudaStream_t stream) {
    size_t done = 0;
    if (aligned16(out) && aligned16(inp)) {
        const size_t npacks = n / kPack<T>;
        if (npacks) {
            map_packed<T, Op><<<grid_1d(npacks, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(out, inp,
                                                                                                        npacks, op);
            CUDA_CHECK_LAUNCH();
        }
        done = npacks * kPack<T>;
    }
    if (done < n) {
        map_scalar<T, Op><<<grid_1d(n - done, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
            out + done, inp + done, done, n - done, op);
        CUDA_CHECK_LAUNCH();
    }
}

// ---------------------------------------------------------------- prefix rows
// One thread per written element (b, j, c), c fastest: coalesced reads of src and writes of x.
template <class T>
__global__ void prefix_rows_copy(T* x, const T* src, int src_ld, int T_, int P, int W, int col0, int w,
                                 size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t c = i % w, row = i / w;
        const size_t j = row % P, b = row / P;
        x[(b * T_ + j) * W + col0 + c] = src[j * src_ld + c];
    }
}

// One thread per dsrc element (j, c): it alone adds the B values in order, so the sum has the same bits on
// every run, with no atomics. It starts from dsrc's value, as the reference's += does, and rounds once.
template <class T>
__global__ void prefix_rows_sum_over_batch(T* dsrc, T* dx, int src_ld, int B, int T_, int P, int W, int col0,
                                           int w) {
    const size_t total = (size_t)P * w;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t j = i / w, c = i % w;
        float acc = dsrc ? to_f32(dsrc[j * src_ld + c]) : 0.0f;
        for (int b = 0; b < B; b++) {
            T* e = dx + ((size_t)b * T_ + j) * W + col0 + c;
            acc += to_f32(*e);
            *e = from_f32<T>(0.0f);
        }
        if (dsrc) dsrc[j * src_ld + c] = from_f32<T>(acc);
    }
}

// ---------------------------------------------------------------- distillation
// Pass 1: the log-sum-exp of both rows (online softmax a pack at a time, fixed merge order). Pass 2: KL and the
// gradient. Thread t takes groups g = t, t + blockDim.x, ... of kPack<T> columns (one 16-byte access each when
// kVec, column by column otherwise, in the same order) in both passes, so with dlogits aliasing the teacher row a
// column's two values are read by the thread that then overwrites it.
template <class T, bool kVec>
__global__ void __launch_bounds__(kDistillThreads)
    distill_forward_backward_block_per_row(T* losses, T* dlogits, const T* logits, const T* teacher,
                                           const float* weights, float tau, float dloss, size_t N, int V, int Vp) {
    constexpr int P = kPack<T>;
    __shared__ float shared_m[32], shared_s[32], shared_mt[32], shared_st[32], shared_kl[32];
    const float inv_tau = 1.0f / tau;
    const int groups_v = (V + P - 1) / P, groups_vp = (Vp + P - 1) / P;  // groups holding a column < V; all
    for (size_t row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * Vp;
        const T* zt = teacher + row * Vp;
        float m = -INFINITY, s = 0.0f, mt = -INFINITY, st = 0.0f;
        for (int g = threadIdx.x; g < groups_v; g += blockDim.x) {
            float x[P], xt[P];
            load_group<kVec>(x, z, g, Vp);
            load_group<kVec>(xt, zt, g, Vp);
#pragma unroll
            for (int j = 0; j < P; j++) {
                x[j] *= inv_tau;
                xt[j] *= inv_tau;
            }
            online_add_pack(m, s, x, g * P, V);
            online_add_pack(mt, st, xt, g * P, V);
        }
        block_online_merge(m, s, shared_m, shared_s);
        block_online_merge(mt, st, shared_mt, shared_st);
        const float lse = m + logf(s), lse_t = mt + logf(st);
        const float dlse = lse_t - lse;

        const float w = weights[row];
        const float gscale = w * dloss * tau;
        T* d = dlogits ? dlogits + row * Vp : nullptr;
        float kl = 0.0f;
        for (int g = threadIdx.x; g < groups_vp; g += blockDim.x) {
            float x[P], xt[P], gv[P];
            if (g < groups_v) {
                load_group<kVec>(x, z, g, Vp);
                load_group<kVec>(xt, zt, g, Vp);
            }
#pragma unroll
            for (int j = 0; j < P; j++) {
                gv[j] = 0.0f;  // the padding, and a masked row (gscale == 0): +0 exactly, so they add nothing
                if (g * P + j >= V) continue;
                const float xs = x[j] * inv_tau, xts = xt[j] * inv_tau;
                const float q = expf(xts - lse_t);
                // TEACH: log q - log p as (xt - x) - (lse_t - lse): differences of like quantities first, so a
                // student close to its teacher gives a small KL without cancellation between large log-probs
                // (and exactly 0 when they are equal).
                kl += q * ((xts - xs) - dlse);
                if (gscale != 0.0f) gv[j] = gscale * (expf(xs - lse) - q);
            }
            if (d) store_group<kVec>(d, g, Vp, gv);
        }
        kl = block_sum(kl, shared_kl);
        if (threadIdx.x == 0) losses[row] = from_f32<T>(w == 0.0f ? 0.0f : w * tau * tau * kl);
    }
}

// ---------------------------------------------------------------- anchor penalty
// One launch over every segment (the table of kernels/adamw.h): each block adds F (w - a)^2 of its
// kAnchorElemsPerBlock elements in double in a fixed tree and writes one partial; the grid depends only on
// the segment list, so the partials and their final order are the same on every run.
template <class T>
__global__ void anchor_penalty_segments(double* partial, T* grads, const T* params, const float* master,
                                        const float* anchor, const float* fisher, const AdamWTable::Entry* table,
                                        int count, float coef) {
    __shared__ double shared[32];
    const AdamWTable::Entry seg = table[segment_of_block(table, count, blockIdx.x)];
    const size_t start = (blockIdx.x - seg.first_block) * kAnchorElemsPerBlock;
    double acc = 0.0;
    for (int k = 0; k < kAnchorElemsPerThread; k++) {
        const size_t i = start + (size_t)k * blockDim.x + threadIdx.x;
        if (i >= seg.n) break;
        const size_t gi = seg.grad_offset + i;
        const float wv = master ? master[gi] : to_f32(params[seg.param_offset + i]);
        const double diff = (double)wv - (double)anchor[gi];
        const float f = fisher ? fisher[gi] : 1.0f;
        acc += (double)f * diff * diff;
        grads[gi] = from_f32<T>(to_f32(grads[gi]) + coef * f * (float)diff);
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// *result = the sum of count partials: each thread adds a fixed strided subset in order, then a fixed tree.
// One block of kAnchorFinalThreads (__launch_bounds__: ptxas keeps to the registers that allows).
__global__ void __launch_bounds__(kAnchorFinalThreads)
    sum_partials_in_order(double* result, const double* partial, size_t count) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (size_t k = threadIdx.x; k < count; k += blockDim.x) acc += partial[k];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) *result = acc;
}

// ---------------------------------------------------------------- squares
template <class T>
__global__ void accumulate_squares_elementwise(float* out, const T* x, float s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_f32(x[i]);
        out[i] += s * v * v;
    }
}

}  // namespace

template <class T>
void scale(T* out, const T* inp, float s, size_t n, cudaStream_t stream) {
    LaunchRange range("scale", stream);
    if (n == 0) return;
    map_elements(out, inp, n, ScaleOp{s}, stream);
}

template <class T>
void dropout(T* out, const T* inp, float p, uint64_t seed, const DropoutLayout& layout, size_t n,
             cudaStream_t stream) {
    LaunchRange range("dropout", stream);
    if (n == 0) return;
    if (p == 0.0f) {  // keeps everything at scale 1: a copy
        if (out != inp) CUDA_CHECK(cudaMemcpyAsync(out, inp, n * sizeof(T), cudaMemcpyDeviceToDevice, stream));
        return;
    }
    // The threshold and the scale exactly as the CPU reference computes them, so the masks are identical.
    const DropoutOp op{seed, layout, (uint64_t)((double)p * 4294967296.0), (float)(1.0 / (1.0 - (double)p))};
    map_elements(out, inp, n, op, stream);
}

template <class T>
void prefix_rows_forward(T* x, const T* src, int src_ld, int B, int T_, int P, int W, int col0, int w,
                         cudaStream_t stream) {
    LaunchRange range("prefix_rows_forward", stream);
    const size_t total = (size_t)B * P * w;
    if (total == 0) return;
    prefix_rows_copy<T><<<grid_1d(total, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        x, src, src_ld, T_, P, W, col0, w, total);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void prefix_rows_backward(T* dsrc, T* dx, int src_ld, int B, int T_, int P, int W, int col0, int w,
                          cudaStream_t stream) {
    LaunchRange range("prefix_rows_backward", stream);
    const size_t total = (size_t)P * w;
    if (total == 0 || B == 0) return;
    prefix_rows_sum_over_batch<T><<<grid_1d(total, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        dsrc, dx, src_ld, B, T_, P, W, col0, w);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void distill_forward_backward(T* losses, T* dlogits, const T* logits, const T* teacher_logits, const float* weights,
                              float tau, float dloss, size_t N, int V, int Vp, cudaStream_t stream) {
    LaunchRange range("distill_forward_backward", stream);
    if (N == 0) return;
    const unsigned grid = grid_1d(N, 1, kMaxRowBlocks);
    // 16-byte accesses when every row starts 16-byte aligned; column by column otherwise.
    if (Vp % kPack<T> == 0 && aligned16(logits) && aligned16(teacher_logits) && (!dlogits || aligned16(dlogits)))
        distill_forward_backward_block_per_row<T, true><<<grid, kDistillThreads, 0, stream>>>(
            losses, dlogits, logits, teacher_logits, weights, tau, dloss, N, V, Vp);
    else
        distill_forward_backward_block_per_row<T, false><<<grid, kDistillThreads, 0, stream>>>(
            losses, dlogits, logits, teacher_logits, weights, tau, dloss, N, V, Vp);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void anchor_penalty(double* result, T* grads, const T* params, const float* master, const float* anchor,
                    const float* fisher, const std::vector<OptSegment>& segments, float lambda, float grad_mult,
                    AdamWTable& table, Scratch& scratch, cudaStream_t stream) {
    LaunchRange range("anchor_penalty", stream);
    unsigned blocks = 0;
    int count = 0;
    const AdamWTable::Entry* dev = table.prepare(segments, kAnchorElemsPerBlock, stream, &blocks, &count);
    if (count == 0) {
        CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));  // all-zero bits are +0.0
        return;
    }
    double* partial = static_cast<double*>(scratch.get(blocks * sizeof(double)));
    anchor_penalty_segments<T><<<blocks, kAnchorThreads, 0, stream>>>(partial, grads, params, master, anchor, fisher,
                                                                       dev, count, grad_mult * lambda);
    CUDA_CHECK_LAUNCH();
    sum_partials_in_order<<<1, kAnchorFinalThreads, 0, stream>>>(result, partial, blocks);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void accumulate_squares(float* out, const T* x, float s, size_t n, cudaStream_t stream) {
    LaunchRange range("accumulate_squares", stream);
    if (n == 0) return;
    accumulate_squares_elementwise<T>
        <<<grid_1d(n, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(out, x, s, n);
    CUDA_CHECK_LAUNCH();
}

#define TUNE_INSTANTIATE(T)                                                                                      \
    template void scale<T>(T*, const T*, float, size_t, cudaStream_t);                                           \
    template void dropout<T>(T*, const T*, float, uint64_t, const DropoutLayout&, size_t, cudaStream_t);         \
    template void prefix_rows_forward<T>(T*, const T*, int, int, int, int, int, int, int, cudaStream_t);         \
    template void prefix_rows_backward<T>(T*, T*, int, int, int, int, int, int, int, cudaStream_t);              \
    template void distill_forward_backward<T>(T*, T*, const T*, const T*, const float*, float, float, size_t, int, \
                                              int, cudaStream_t);                                                \
    template void anchor_penalty<T>(double*, T*, const T*, const float*, const float*, const float*,             \
                                    const std::vector<OptSegment>&, float, float, AdamWTable&, Scratch&,         \
                                    cudaStream_t);                                                               \
    template void accumulate_squares<T>(float*, const T*, float, size_t, cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
