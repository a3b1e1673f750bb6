#include "kernels/layernorm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/column_sums.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // warps per block in the warp-per-row kernels
constexpr int kRowThreads = 32 * kRowsPerBlock;
// Parameter gradients use the deterministic column-sum plan of kernels/cuda/device_util.cuh.

// Rows are read in groups of kPack<T> elements (device_util.cuh): one 16-byte access each where every row is
// 16-byte aligned, element by element otherwise, in the same order either way. Lane `lane` takes groups
// g = lane, lane + 32, ... of the row.

// TEACH: with the residual add fused, the sum is written and normalised in one pass over the row. Unfused,
// LayerNorm would read back from memory the row the residual kernel had just written; here each lane re-reads
// only its own groups, which it wrote a moment ago (still in L1), so the warp needs no barrier between the two.
// kResidual: res = a + b (rounded to T, as residual_forward rounds it), then LayerNorm(res); else LayerNorm(a).
// The two compute the same bits from the same row, so recomputation (LayerNorm alone on the kept sum) agrees.
template <class T, bool kVec, bool kResidual>
__global__ void layernorm_forward_warp_per_row(T* __restrict__ res, T* __restrict__ out, T* __restrict__ mean,
                                               T* __restrict__ rstd, const T* __restrict__ a,
                                               const T* __restrict__ b, const T* __restrict__ weight,
                                               const T* __restrict__ bias, size_t N, int C) {
    constexpr int P = kPack<T>;
    const int lane = threadIdx.x % 32, G = (C + P - 1) / P;
    // The loop condition is uniform across a warp, so the shuffles below always run with all 32 lanes.
    for (size_t row = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32; row < N;
         row += (size_t)gridDim.x * kRowsPerBlock) {
        const T* x = kResidual ? res + row * C : a + row * C;
        float s = 0.0f;
        for (int g = lane; g < G; g += 32) {
            float xv[P];
            load_group<kVec>(xv, a + row * C, g, C);
            if constexpr (kResidual) {
                float bv[P];
                load_group<kVec>(bv, b + row * C, g, C);
#pragma unroll
                for (int j = 0; j < P; j++) xv[j] = to_f32(from_f32<T>(xv[j] + bv[j]));  // as residual_forward
                store_group<kVec>(res + row * C, g, C, xv);
            }
#pragma unroll
            for (int j = 0; j < P; j++) s += xv[j];  // elements past C are 0
        }
        const float m = warp_sum(s) / (float)C;
        float v = 0.0f;
        for (int g = lane; g < G; g += 32) {
            float xv[P];
            load_group<kVec>(xv, x, g, C);
#pragma unroll
            for (int j = 0; j < P; j++) {
                const float d = g * P + j < C ? xv[j] - m : 0.0f;
                v += d * d;
            }
        }
        const float var = warp_sum(v) / (float)C;
        const T m_saved = from_f32<T>(m), r_saved = from_f32<T>(1.0f / sqrtf(var + kEps));
        const float mr = to_f32(m_saved), rr = to_f32(r_saved);
        for (int g = lane; g < G; g += 32) {
            float xv[P], wv[P], bv[P];
            load_group<kVec>(xv, x, g, C);
            load_group<kVec>(wv, weight, g, C);
            load_group<kVec>(bv, bias, g, C);
#pragma unroll
            for (int j = 0; j < P; j++) xv[j] = (xv[j] - mr) * rr * wv[j] + bv[j];
            store_group<kVec>(out + row * C, g, C, xv);
        }
        if (lane == 0) {
            mean[row] = m_saved;
            rstd[row] = r_saved;
        }
    }
}

template <class T, bool kResidual>
void launch_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b, const T* weight, const T* bias,
                    size_t N, int C, cudaStream_t stream) {
    const bool vec = C % kPack<T> == 0 && aligned16(out) && aligned16(a) && aligned16(weight) && aligned16(bias) &&
                     (!kResidual || (aligned16(res) && aligned16(b)));
    const unsigned grid = grid_1d(N, kRowsPerBlock, kMaxGridX);
    if (vec)
        layernorm_forward_warp_per_row<T, true, kResidual>
            <<<grid, kRowThreads, 0, stream>>>(res, out, mean, rstd, a, b, weight, bias, N, C);
    else
        layernorm_forward_warp_per_row<T, false, kResidual>
            <<<grid, kRowThreads, 0, stream>>>(res, out, mean, rstd, a, b, weight, bias, N, C);
    CUDA_CHECK_LAUNCH();
}

// ---- backward ----
// TEACH: one pass over dout and inp serves both gradients. Each warp takes whole rows (dinp needs the row's two
// averages), and while it reads a row for those averages it also adds dout*n and dout into its own fp32
// accumulators for dweight and dbias, in shared memory. Reading the rows a second time for the column sums (as a
// separate kernel would) costs as much memory traffic as dinp itself.
constexpr int kBwdMaxWarps = 4;                        // warps per block (fewer when C is large: shared memory)
constexpr size_t kBwdSharedBytes = size_t(48) << 10;   // the default dynamic shared memory limit
// Enough warps in flight to cover HBM latency (one 16-byte load per lane and tensor at a time), few enough blocks
// that their fp32 partials, (blocks, C) twice, stay a few percent of the rows' traffic.
constexpr size_t kBwdMinRowsPerBlock = 8;
constexpr size_t kBwdMaxBlocks = 1024;

// Rows [blockIdx.x * rows_per_block, +rows_per_block), warp w of the block taking rows w, w + warps, ... in order;
// lane `lane` takes groups g = lane, lane + 32, ... (element c = g*P + j). dinp must not alias the inputs.
// kParams: each warp accumulates sum(dout*n) and sum(dout) per channel in its own shared-memory region (element c
// at j*G + g, G = ceil(C/P) groups, so a warp's 32 lanes touch 32 consecutive words: no bank conflicts), then the
// block adds its warps in order into partial_w/partial_b (blocks, C): fixed grid, fixed order, the same bits
// every run.
template <class T, bool kVec, bool kParams>
__global__ void layernorm_backward_warp_per_row(float* partial_w, float* partial_b, T* __restrict__ dinp,
                                                const T* __restrict__ dout, const T* __restrict__ inp,
                                                const T* __restrict__ weight, const T* __restrict__ mean,
                                                const T* __restrict__ rstd, size_t N, int C, size_t rows_per_block) {
    constexpr int P = kPack<T>;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int G = (C + P - 1) / P, span = G * P;  // span: one accumulator's words, C rounded up to groups
    float *acc = nullptr, *aw = nullptr, *ab = nullptr;
    if constexpr (kParams) {
        extern __shared__ float shared_acc[];  // (warps, 2, span)
        acc = shared_acc;
        aw = acc + (size_t)warp * 2 * span;
        ab = aw + span;
        for (int i = lane; i < 2 * span; i += 32) aw[i] = 0.0f;
        __syncwarp();
    }
    const size_t r0 = blockIdx.x * rows_per_block, r1 = min(N, r0 + rows_per_block);
    // The loop condition is uniform across a warp, so the shuffles below always run with all 32 lanes.
    for (size_t row = r0 + warp; row < r1; row += warps) {
        const T* x = inp + row * C;
        const T* d = dout + row * C;
        T* dx = dinp + row * C;
        const float m = to_f32(mean[row]), r = to_f32(rstd[row]);
        float sum_dn = 0.0f, sum_dn_n = 0.0f;
        for (int g = lane; g < G; g += 32) {
            float xv[P], dv[P], wv[P];
            load_group<kVec>(xv, x, g, C);
            load_group<kVec>(dv, d, g, C);  // 0 past C: adds nothing below
            load_group<kVec>(wv, weight, g, C);
#pragma unroll
            for (int j = 0; j < P; j++) {
                const float n = (xv[j] - m) * r, dn = dv[j] * wv[j];
                sum_dn += dn;
                sum_dn_n += dn * n;
                if constexpr (kParams) {
                    aw[j * G + g] += dv[j] * n;
                    ab[j * G + g] += dv[j];
                }
            }
        }
        const float avg_dn = warp_sum(sum_dn) / (float)C, avg_dn_n = warp_sum(sum_dn_n) / (float)C;
        for (int g = lane; g < G; g += 32) {  // the row again, from L1: this warp read it a moment ago
            float xv[P], dv[P], wv[P], gv[P];
            load_group<kVec>(xv, x, g, C);
            load_group<kVec>(dv, d, g, C);
            load_group<kVec>(wv, weight, g, C);
            load_group<kVec>(gv, dx, g, C);
#pragma unroll
            for (int j = 0; j < P; j++) {
                const float n = (xv[j] - m) * r, dn = dv[j] * wv[j];
                gv[j] += r * (dn - avg_dn - n * avg_dn_n);
            }
            store_group<kVec>(dx, g, C, gv);
        }
    }
    if constexpr (!kParams) return;
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const int at = (c % P) * G + c / P;
        float w = 0.0f, b = 0.0f;
        for (int k = 0; k < warps; k++) {  // fixed order
            w += acc[(size_t)k * 2 * span + at];
            b += acc[(size_t)k * 2 * span + span + at];
        }
        partial_w[(size_t)blockIdx.x * C + c] = w;
        partial_b[(size_t)blockIdx.x * C + c] = b;
    }
}

// Fallback for a C whose per-warp accumulators do not fit in shared memory: partial_w/partial_b (slices, C) are
// sums over each slice's rows of dout*n and dout, for 32 channels per block, read in a second pass.
template <class T>
__global__ void layernorm_backward_param_partials(float* partial_w, float* partial_b, const T* dout, const T* inp,
                                                  const T* mean, const T* rstd, size_t N, int C,
                                                  size_t rows_per_slice) {
    __shared__ float sw[kColRowLanes][kColChannels];
    __shared__ float sb[kColRowLanes][kColChannels];
    const int tx = threadIdx.x % kColChannels, ty = threadIdx.x / kColChannels;
    const int c = blockIdx.x * kColChannels + tx;
    const size_t slice = blockIdx.y;
    const size_t r0 = slice * rows_per_slice, r1 = min(N, r0 + rows_per_slice);
    float aw = 0.0f, ab = 0.0f;
    if (c < C) {
        for (size_t r = r0 + ty; r < r1; r += kColRowLanes) {
            const float d = to_f32(dout[r * C + c]);
            const float n = (to_f32(inp[r * C + c]) - to_f32(mean[r])) * to_f32(rstd[r]);
            aw += d * n;
            ab += d;
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && c < C) {
        float w = 0.0f, b = 0.0f;
        for (int k = 0; k < kColRowLanes; k++) {  // fixed order
            w += sw[k][tx];
            b += sb[k][tx];
        }
        partial_w[slice * C + c] = w;
        partial_b[slice * C + c] = b;
    }
}

// Shared memory for `warps` warps' accumulators (kParams), each 2 x C rounded up to whole groups.
inline size_t backward_shared_bytes(int warps, int C, int P) {
    return (size_t)warps * 2 * ((size_t)(C + P - 1) / P * P) * sizeof(float);
}

// 16-byte accesses when every row starts 16-byte aligned; element by element otherwise (any C, any offset).
template <class T, bool kParams>
void launch_backward(unsigned blocks, int warps, float* partial_w, float* partial_b, T* dinp, const T* dout,
                     const T* inp, const T* weight, const T* mean, const T* rstd, size_t N, int C,
                     size_t rows_per_block, cudaStream_t stream) {
    const size_t smem = kParams ? backward_shared_bytes(warps, C, kPack<T>) : 0;
    const bool vec = C % kPack<T> == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
    if (vec)
        layernorm_backward_warp_per_row<T, true, kParams><<<blocks, 32 * warps, smem, stream>>>(
            partial_w, partial_b, dinp, dout, inp, weight, mean, rstd, N, C, rows_per_block);
    else
        layernorm_backward_warp_per_row<T, false, kParams><<<blocks, 32 * warps, smem, stream>>>(
            partial_w, partial_b, dinp, dout, inp, weight, mean, rstd, N, C, rows_per_block);
    CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, size_t N, int C,
                       cudaStream_t stream) {
    LaunchRange range("layernorm_forward", stream);
    if (N == 0 || C == 0) return;
    launch_forward<T, false>(nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C, stream);
}

template <class T>
void residual_layernorm_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b, const T* weight,
                                const T* bias, size_t N, int C, cudaStream_t stream) {
    LaunchRange range("residual_layernorm_forward", stream);
    if (N == 0 || C == 0) return;
    launch_forward<T, true>(res, out, mean, rstd, a, b, weight, bias, N, C, stream);
}

template <class T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const T* mean,
                        const T* rstd, size_t N, int C, Scratch& scratch, cudaStream_t stream) {
    LaunchRange range("layernorm_backward", stream);
    if (N == 0 || C == 0) return;
    const bool params = dweight || dbias;
    // Per-warp accumulators take about 8*C bytes: as many warps as fit the default limit (C <= 6144 fits one).
    const int warps = (int)std::min<size_t>(kBwdMaxWarps, kBwdSharedBytes / backward_shared_bytes(1, C, kPack<T>));
    const bool fused = params && warps >= 1;
    const size_t rows_per_block = std::max(kBwdMinRowsPerBlock, (N + kBwdMaxBlocks - 1) / kBwdMaxBlocks);
    const unsigned blocks = (unsigned)((N + rows_per_block - 1) / rows_per_block);
    const auto [rows_per_slice, col_slices] = column_slices(N);
    const int slices = fused ? (int)blocks : params ? col_slices : 0;

    float *partial_w = nullptr, *partial_b = nullptr;
    if (params) {
        Carve sizes(nullptr);
        sizes.take<float>((size_t)slices * C);
        sizes.take<float>((size_t)slices * C);
        Carve carve(scratch.get(sizes.bytes()));
        partial_w = carve.take<float>((size_t)slices * C);
        partial_b = carve.take<float>((size_t)slices * C);
    }
    if (fused)
        launch_backward<T, true>(blocks, warps, partial_w, partial_b, dinp, dout, inp, weight, mean, rstd, N, C,
                                 rows_per_block, stream);
    else
        launch_backward<T, false>(blocks, kBwdMaxWarps, nullptr, nullptr, dinp, dout, inp, weight, mean, rstd, N, C,
                                  rows_per_block, stream);
    if (!params) return;
    if (!fused) {
        const dim3 grid((unsigned)((C + kColChannels - 1) / kColChannels), (unsigned)slices);
        layernorm_backward_param_partials<T><<<grid, kColChannels * kColRowLanes, 0, stream>>>(
            partial_w, partial_b, dout, inp, mean, rstd, N, C, rows_per_slice);
        CUDA_CHECK_LAUNCH();
    }
    add_column_slices(dweight, dbias, partial_w, partial_b, C, slices, stream);
}

#define TUNE_INSTANTIATE(T)                                                                                        \
    template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, size_t, int, cudaStream_t);       \
    template void residual_layernorm_forward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, size_t, int, \
                                                cudaStream_t);                                                     \
    template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, size_t, int, \
                                        Scratch&, cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
