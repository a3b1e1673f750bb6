#include "kernels/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "kernels/common.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"
#include "kernels/matmul.h"

namespace tune::cuda {
namespace {

constexpr int kPermuteThreads = 256;
constexpr int kSoftmaxRowsPerBlock = 8;  // one warp per row
constexpr int kSoftmaxThreads = 32 * kSoftmaxRowsPerBlock;
constexpr int kCachedThreads = 128;
// The default limit of shared memory per block (48 KB) covers static and dynamic together: the kernel's
// static `reduce` takes 32 floats of it. maxT up to ~12K.
constexpr size_t kCachedMaxSmem = 48 * 1024 - 32 * sizeof(float);

// (B, T, parts*C) -> parts x (B, NH, T, HS): out[p][b][h][t][d] = in[b][t][p*C + h*HS + d].
template <class T>
__global__ void attention_split_heads(T* out, const T* in, int B, int T_, int NH, int HS, int parts) {
    const size_t C = (size_t)NH * HS;
    const size_t per_part = (size_t)B * T_ * C;
    const size_t total = per_part * parts;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t d = i % HS;
        const size_t t = (i / HS) % T_;
        const size_t bh = (i / ((size_t)HS * T_)) % ((size_t)B * NH);
        const size_t p = i / per_part;
        const size_t b = bh / NH, h = bh % NH;
        out[i] = in[(b * T_ + t) * parts * C + p * C + h * HS + d];
    }
}

// parts x (B, NH, T, HS) -> (B, T, parts*C), the inverse of attention_split_heads.
template <class T>
__global__ void attention_merge_heads(T* out, const T* in, int B, int T_, int NH, int HS, int parts) {
    const size_t C = (size_t)NH * HS;
    const size_t per_part = (size_t)B * T_ * C;
    const size_t total = per_part * parts;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t pc = i % (parts * C);
        const size_t bt = i / (parts * C);
        const size_t p = pc / C, c = pc % C;
        const size_t h = c / HS, d = c % HS;
        const size_t b = bt / T_, t = bt % T_;
        out[i] = in[p * per_part + ((b * NH + h) * T_ + t) * HS + d];
    }
}

// probs[row, u] = softmax over the keys u query t sees (doc_sees: u <= t, within its document or the mask's
// virtual prefix) of scores[row, u]; 0 elsewhere. Row = (b*NH + h)*T + t.
// S is the scores' type: float, or T where cuBLASLt cannot write fp32 from T inputs.
template <class T, class S>
__global__ void attention_softmax_causal(T* probs, const S* scores, DocMask mask, size_t rows, int T_, int NH) {
    const int lane = threadIdx.x % 32;
    for (size_t row = (size_t)blockIdx.x * kSoftmaxRowsPerBlock + threadIdx.x / 32; row < rows;
         row += (size_t)gridDim.x * kSoftmaxRowsPerBlock) {
        const int t = (int)(row % T_);
        const int u0 = doc_first_key(mask, row / ((size_t)NH * T_), t, T_);
        const S* s = scores + row * T_;
        T* p = probs + row * T_;
        const int pre = min(mask.prefix, u0);  // the keys seen: [0, pre) and [u0, t]
        float m = -INFINITY;
        for (int u = lane; u < pre; u += 32) m = fmaxf(m, to_f32(s[u]));
        for (int u = u0 + lane; u <= t; u += 32) m = fmaxf(m, to_f32(s[u]));
        m = warp_max(m);
        float sum = 0.0f;
        for (int u = lane; u < pre; u += 32) sum += expf(to_f32(s[u]) - m);
        for (int u = u0 + lane; u <= t; u += 32) sum += expf(to_f32(s[u]) - m);
        sum = warp_sum(sum);
        for (int u = lane; u < T_; u += 32)
            p[u] = from_f32<T>(doc_sees(mask, u0, u, t) ? expf(to_f32(s[u]) - m) / sum : 0.0f);
    }
}

// dscores[row, u] = P (dP - sum_u' P dP) * scale for the keys query t sees; 0 elsewhere.
template <class T, class S>
__global__ void attention_softmax_backward_causal(T* dscores, const S* dprobs, const T* probs, DocMask mask,
                                                  size_t rows, int T_, int NH, float scale) {
    const int lane = threadIdx.x % 32;
    for (size_t row = (size_t)blockIdx.x * kSoftmaxRowsPerBlock + threadIdx.x / 32; row < rows;
         row += (size_t)gridDim.x * kSoftmaxRowsPerBlock) {
        const int t = (int)(row % T_);
        const int u0 = doc_first_key(mask, row / ((size_t)NH * T_), t, T_);
        const S* dp = dprobs + row * T_;
        const T* p = probs + row * T_;
        T* ds = dscores + row * T_;
        const int pre = min(mask.prefix, u0);  // the keys seen: [0, pre) and [u0, t]
        float dot = 0.0f;
        for (int u = lane; u < pre; u += 32) dot += to_f32(p[u]) * to_f32(dp[u]);
        for (int u = u0 + lane; u <= t; u += 32) dot += to_f32(p[u]) * to_f32(dp[u]);
        dot = warp_sum(dot);
        for (int u = lane; u < T_; u += 32)
            ds[u] = from_f32<T>(doc_sees(mask, u0, u, t) ? to_f32(p[u]) * (to_f32(dp[u]) - dot) * scale : 0.0f);
    }
}

// kcache/vcache[b, pos0 + i, :] = k/v of qkv[b, i]: one element per thread.
template <class T>
__global__ void attention_store_kv(T* kcache, T* vcache, const T* qkv, int B, int n, int pos0, int maxT, int C) {
    const size_t total = (size_t)B * n * C;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        const size_t c = e % C, bi = e / C;
        const size_t b = bi / n, i = bi % n;
        const T* src = qkv + bi * 3 * C;
        const size_t dst = (b * maxT + pos0 + i) * C + c;
        kcache[dst] = src[C + c];
        vcache[dst] = src[2 * (size_t)C + c];
    }
}

// Block = one (b, h, i). Dynamic shared memory: q (HS floats), then the scores (pos0 + n floats).
template <class T>
__global__ void attention_forward_cached_block_per_query(T* out, const T* kcache, const T* vcache, const T* qkv, int n,
                                                         int pos0, int maxT, int C, int NH, float scale) {
    extern __shared__ float smem[];
    __shared__ float reduce[32];
    const int HS = C / NH;
    float* q = smem;
    float* p = smem + HS;
    const int i = blockIdx.x % n, h = (blockIdx.x / n) % NH, b = blockIdx.x / (n * NH);
    const int t = pos0 + i;  // absolute position of this query: it sees cache positions 0..t
    const T* qsrc = qkv + ((size_t)b * n + i) * 3 * C + (size_t)h * HS;
    for (int j = threadIdx.x; j < HS; j += blockDim.x) q[j] = to_f32(qsrc[j]);
    __syncthreads();
    const T* kb = kcache + (size_t)b * maxT * C + (size_t)h * HS;
    const T* vb = vcache + (size_t)b * maxT * C + (size_t)h * HS;
    float m = -INFINITY;
    for (int u = threadIdx.x; u <= t; u += blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < HS; j++) s += q[j] * to_f32(kb[(size_t)u * C + j]);
        p[u] = s * scale;
        m = fmaxf(m, p[u]);
    }
    m = block_max(m, reduce);
    float sum = 0.0f;
    for (int u = threadIdx.x; u <= t; u += blockDim.x) {
        p[u] = expf(p[u] - m);
        sum += p[u];
    }
    sum = block_sum(sum, reduce);  // its barriers also publish every p[u] to the whole block
    T* o = out + ((size_t)b * n + i) * C + (size_t)h * HS;
    for (int j = threadIdx.x; j < HS; j += blockDim.x) {
        float acc = 0.0f;
        for (int u = 0; u <= t; u++) acc += p[u] * to_f32(vb[(size_t)u * C + j]);
        o[j] = from_f32<T>(acc / sum);
    }
}

// Row-major per head: D(T,T) = alpha * X(T,HS) Y(T,HS)^T (scores, dP), in fp32 into D's memory (room for
// BH*T*T floats). Returns false when cuBLASLt has no fp32-output kernel for T inputs: D then holds T values.
template <class T>
bool gemm_x_yt(Gemm& gemm, void* D, const T* X, const T* Y, int BH, int T_, int HS, float alpha) {
    GemmArgs g;
    g.trans_a = true;
    g.m = T_;
    g.n = T_;
    g.k = HS;
    g.A = Y;
    g.lda = HS;
    g.stride_a = (int64_t)T_ * HS;
    g.B = X;
    g.ldb = HS;
    g.stride_b = (int64_t)T_ * HS;
    g.D = D;
    g.ldd = T_;
    g.stride_d = (int64_t)T_ * T_;
    g.ab_type = cuda_type<T>();
    g.d_type = CUDA_R_32F;
    g.batch = BH;
    g.alpha = alpha;
    if (gemm.try_run(g)) return true;
    g.d_type = cuda_type<T>();
    gemm.run(g);
    return false;
}

// Row-major per head: D(T,HS) = P(T,T) Y(T,HS), or with transpose_p, P^T(T,T) Y(T,HS).
template <class T>
void gemm_p_y(Gemm& gemm, T* D, const T* P, const T* Y, int BH, int T_, int HS, bool transpose_p) {
    GemmArgs g;
    g.trans_b = transpose_p;
    g.m = HS;
    g.n = T_;
    g.k = T_;
    g.A = Y;
    g.lda = HS;
    g.stride_a = (int64_t)T_ * HS;
    g.B = P;
    g.ldb = T_;
    g.stride_b = (int64_t)T_ * T_;
    g.D = D;
    g.ldd = HS;
    g.stride_d = (int64_t)T_ * HS;
    g.ab_type = g.d_type = cuda_type<T>();
    g.batch = BH;
    gemm.run(g);
}

template <class T>
void split_heads(T* out, const T* in, int B, int T_, int NH, int HS, int parts, cudaStream_t stream) {
    const size_t total = (size_t)B * T_ * NH * HS * parts;
    attention_split_heads<T>
        <<<grid_1d(total, kPermuteThreads), kPermuteThreads, 0, stream>>>(out, in, B, T_, NH, HS, parts);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void merge_heads(T* out, const T* in, int B, int T_, int NH, int HS, int parts, cudaStream_t stream) {
    const size_t total = (size_t)B * T_ * NH * HS * parts;
    attention_merge_heads<T>
        <<<grid_1d(total, kPermuteThreads), kPermuteThreads, 0, stream>>>(out, in, B, T_, NH, HS, parts);
    CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void attention_forward(T* out, T* probs, const T* qkv, DocMask mask, int B, int T_, int C, int NH, Gemm& gemm,
                       Scratch& scratch) {
    LaunchRange range("attention_forward", gemm.stream());
    if (B == 0 || T_ == 0 || C == 0) return;
    const int HS = C / NH, BH = B * NH;
    const size_t head_elems = (size_t)B * T_ * C, rows = (size_t)BH * T_;
    cudaStream_t stream = gemm.stream();
    Carve sizes(nullptr);
    sizes.take<T>(3 * head_elems);
    sizes.take<T>(head_elems);
    sizes.take<float>(rows * T_);
    Carve carve(scratch.get(sizes.bytes()));
    T* q = carve.take<T>(3 * head_elems);  // q | k | v, each (B, NH, T, HS)
    T* o = carve.take<T>(head_elems);      // (B, NH, T, HS)
    float* scores = carve.take<float>(rows * T_);
    const T* k = q + head_elems;
    const T* v = q + 2 * head_elems;

    split_heads(q, qkv, B, T_, NH, HS, 3, stream);
    const unsigned grid = grid_1d(rows, kSoftmaxRowsPerBlock, kMaxGridX);
    if (gemm_x_yt(gemm, scores, q, k, BH, T_, HS, (float)(1.0 / std::sqrt((double)HS)))) {
        attention_softmax_causal<T, float><<<grid, kSoftmaxThreads, 0, stream>>>(probs, scores, mask, rows, T_, NH);
    } else {
        attention_softmax_causal<T, T>
            <<<grid, kSoftmaxThreads, 0, stream>>>(probs, reinterpret_cast<const T*>(scores), mask, rows, T_, NH);
    }
    CUDA_CHECK_LAUNCH();
    gemm_p_y(gemm, o, probs, v, BH, T_, HS, false);
    merge_heads(out, o, B, T_, NH, HS, 1, stream);
}

template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* probs, DocMask mask, int B, int T_, int C,
                        int NH, Gemm& gemm, Scratch& scratch) {
    LaunchRange range("attention_backward", gemm.stream());
    if (B == 0 || T_ == 0 || C == 0) return;
    const int HS = C / NH, BH = B * NH;
    const size_t head_elems = (size_t)B * T_ * C, rows = (size_t)BH * T_;
    cudaStream_t stream = gemm.stream();
    Carve sizes(nullptr);
    sizes.take<T>(3 * head_elems);
    sizes.take<T>(head_elems);
    sizes.take<T>(3 * head_elems);
    sizes.take<float>(rows * T_);
    sizes.take<T>(rows * T_);
    Carve carve(scratch.get(sizes.bytes()));
    T* q = carve.take<T>(3 * head_elems);   // q | k | v
    T* dout_h = carve.take<T>(head_elems);  // dout split into heads
    T* dq = carve.take<T>(3 * head_elems);  // dq | dk | dv
    float* dprobs = carve.take<float>(rows * T_);
    T* dscores = carve.take<T>(rows * T_);
    const T* k = q + head_elems;
    const T* v = q + 2 * head_elems;
    T* dk = dq + head_elems;
    T* dv = dq + 2 * head_elems;
    const float scale = (float)(1.0 / std::sqrt((double)HS));

    split_heads(q, qkv, B, T_, NH, HS, 3, stream);
    split_heads(dout_h, dout, B, T_, NH, HS, 1, stream);
    const bool f32_dprobs = gemm_x_yt(gemm, dprobs, dout_h, v, BH, T_, HS, 1.0f);  // dP = dout v^T
    gemm_p_y(gemm, dv, probs, dout_h, BH, T_, HS, true);                           // dv = P^T dout
    const unsigned grid = grid_1d(rows, kSoftmaxRowsPerBlock, kMaxGridX);
    if (f32_dprobs) {
        attention_softmax_backward_causal<T, float>
            <<<grid, kSoftmaxThreads, 0, stream>>>(dscores, dprobs, probs, mask, rows, T_, NH, scale);
    } else {
        attention_softmax_backward_causal<T, T><<<grid, kSoftmaxThreads, 0, stream>>>(
            dscores, reinterpret_cast<const T*>(dprobs), probs, mask, rows, T_, NH, scale);
    }
    CUDA_CHECK_LAUNCH();
    gemm_p_y(gemm, dq, dscores, k, BH, T_, HS, false);  // dq = dS k
    gemm_p_y(gemm, dk, dscores, q, BH, T_, HS, true);   // dk = dS^T q
    merge_heads(dqkv, dq, B, T_, NH, HS, 3, stream);
}

template <class T>
void attention_forward_cached(T* out, T* kcache, T* vcache, const T* qkv, int B, int n, int pos0, int maxT, int C,
                              int NH, cudaStream_t stream) {
    LaunchRange range("attention_forward_cached", stream);
    if (B == 0 || n == 0 || C == 0) return;
    if (pos0 < 0 || pos0 + n > maxT) throw Error("attention_forward_cached: positions beyond the cache");
    const int HS = C / NH;
    attention_store_kv<T><<<grid_1d((size_t)B * n * C, kPermuteThreads), kPermuteThreads, 0, stream>>>(
        kcache, vcache, qkv, B, n, pos0, maxT, C);
    CUDA_CHECK_LAUNCH();
    const size_t smem = (size_t)(HS + pos0 + n) * sizeof(float);
    if (smem > kCachedMaxSmem)
        throw Error("attention_forward_cached: " + std::to_string(pos0 + n) + " positions do not fit shared memory");
    const size_t blocks = (size_t)B * NH * n;
    if (blocks > kMaxGridX) throw Error("attention_forward_cached: too many queries for one launch");
    attention_forward_cached_block_per_query<T><<<(unsigned)blocks, kCachedThreads, smem, stream>>>(
        out, kcache, vcache, qkv, n, pos0, maxT, C, NH, (float)(1.0 / std::sqrt((double)HS)));
    CUDA_CHECK_LAUNCH();
}

#define TUNE_INSTANTIATE(T)                                                                                      \
    template void attention_forward<T>(T*, T*, const T*, DocMask, int, int, int, int, Gemm&, Scratch&);          \
    template void attention_forward_cached<T>(T*, T*, T*, const T*, int, int, int, int, int, int, cudaStream_t); \
    template void attention_backward<T>(T*, const T*, const T*, const T*, DocMask, int, int, int, int, Gemm&,     \
                                        Scratch&);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
