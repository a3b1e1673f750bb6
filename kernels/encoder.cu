#include "kernels/encoder.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch_range.h"

namespace tune::cuda {
namespace {

constexpr int kEncoderThreads = 256;
constexpr int kWpeThreads = 256;
constexpr int kWteRunThreads = 128;  // channels per block of the run-sum kernels; grid.y covers the rest
constexpr int kWteSegment = 128;     // sorted rows per block of the first run-sum pass

// One 16-byte pack per thread: C % kPack == 0 and every pointer 16-byte aligned.
template <class T>
__global__ void encoder_forward_packed(T* out, const int32_t* tokens, const int32_t* pos, const T* wte, const T* wpe,
                                       size_t N, int T_, int C) {
    const int packs_per_row = C / kPack<T>;
    const size_t total = N * packs_per_row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / packs_per_row;
        const int c = (int)(i % packs_per_row) * kPack<T>;
        const int t = pos ? pos[row] : (int)(row % T_);
        const Pack<T> we = load_pack(wte + (size_t)tokens[row] * C + c);
        const Pack<T> pe = load_pack(wpe + (size_t)t * C + c);
        Pack<T> o;
#pragma unroll
        for (int j = 0; j < kPack<T>; j++) o.v[j] = from_f32<T>(to_f32(we.v[j]) + to_f32(pe.v[j]));
        store_pack(out + row * C + c, o);
    }
}

template <class T>
__global__ void encoder_forward_scalar(T* out, const int32_t* tokens, const int32_t* pos, const T* wte, const T* wpe,
                                       size_t N, int T_, int C) {
    const size_t total = N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / C;
        const int c = (int)(i % C);
        const int t = pos ? pos[row] : (int)(row % T_);
        out[i] = from_f32<T>(to_f32(wte[(size_t)tokens[row] * C + c]) + to_f32(wpe[(size_t)t * C + c]));
    }
}

// dwpe[t, c] += sum_b dout[b, t, c]: one thread per (t, c), b in order.
template <class T>
__global__ void encoder_backward_wpe(T* dwpe, const T* dout, int B, int T_, int C) {
    const size_t total = (size_t)T_ * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += to_f32(dout[(size_t)b * total + i]);
        dwpe[i] = from_f32<T>(to_f32(dwpe[i]) + s);
    }
}

__global__ void iota_i32(int32_t* x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] = i;
}

// TEACH: after a stable sort by token, each token's rows of dout form one run (positions ascending). Summing
// a run in one thread is deterministic but serial: real text has tokens ("the", ",", <|endoftext|>) with
// thousands of rows per batch. So the sorted order is cut into segments of kWteSegment rows, one block each
// (per slice of channels), which sums every group of equal tokens inside it in order:
//   - a group that is a whole run goes into dwte at once;
//   - a run that crosses segment ends leaves partial sums: `tail` of the segment where it starts, `head` of
//     each later segment it covers; the join kernel adds them in segment order.
// A token's run has one owner either way, so no two blocks write one row of dwte: no atomics, fixed order.
template <class T>
__global__ void encoder_backward_wte_segments(T* dwte, float* head, float* tail, const T* dout,
                                              const int32_t* sorted_tokens, const int32_t* sorted_pos, int N, int C) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int seg = blockIdx.x, i0 = seg * kWteSegment, i1 = min(N, i0 + kWteSegment);
    for (int i = i0; i < i1;) {
        const int tok = sorted_tokens[i];
        float s = 0.0f;
        int j = i;
        for (; j < i1 && sorted_tokens[j] == tok; j++) s += to_f32(dout[(size_t)sorted_pos[j] * C + c]);
        const bool from_before = i == i0 && i0 > 0 && sorted_tokens[i0 - 1] == tok;
        const bool into_next = j == i1 && i1 < N && sorted_tokens[i1] == tok;
        if (from_before) {
            head[(size_t)seg * C + c] = s;
        } else if (into_next) {
            tail[(size_t)seg * C + c] = s;
        } else {
            T* g = dwte + (size_t)tok * C + c;
            *g = from_f32<T>(to_f32(*g) + s);
        }
        i = j;
    }
}

// One block per segment whose last run starts in it and goes on: its tail plus the heads of the segments the
// run covers, in order, into dwte.
template <class T>
__global__ void encoder_backward_wte_join(T* dwte, const float* head, const float* tail, const int32_t* sorted_tokens,
                                          int N, int C) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int seg = blockIdx.x, i0 = seg * kWteSegment, i1 = min(N, i0 + kWteSegment);
    const int tok = sorted_tokens[i1 - 1];
    const bool into_next = i1 < N && sorted_tokens[i1] == tok;
    const bool from_before = i0 > 0 && sorted_tokens[i0] == tok && sorted_tokens[i0 - 1] == tok;
    if (!into_next || from_before) return;  // no run starts here and goes on
    float s = tail[(size_t)seg * C + c];
    for (int k = seg + 1; k * kWteSegment < N && sorted_tokens[k * kWteSegment] == tok; k++) s += head[(size_t)k * C + c];
    T* g = dwte + (size_t)tok * C + c;
    *g = from_f32<T>(to_f32(*g) + s);
}

// table[ids[i], :] += dout[i, :] for the N rows of dout, deterministically: the run sums described above, over
// the rows sorted by id (a stable sort, so each id's rows stay in order).
template <class T>
void scatter_add_by_id(T* table, const T* dout, const int32_t* ids, int N, int C, Scratch& scratch,
                       cudaStream_t stream) {
    // Sort (id, row) by id. Ids are non-negative, so their bits sort as unsigned.
    const unsigned* keys_in = reinterpret_cast<const unsigned*>(ids);
    size_t cub_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, keys_in, (unsigned*)nullptr, (const int32_t*)nullptr,
                                               (int32_t*)nullptr, N, 0, 32, stream));
    const int segments = (N + kWteSegment - 1) / kWteSegment;
    Carve sizes(nullptr);
    sizes.take<unsigned>(N);
    sizes.take<int32_t>(N);
    sizes.take<int32_t>(N);
    sizes.take<char>(cub_bytes);
    sizes.take<float>((size_t)segments * C);
    sizes.take<float>((size_t)segments * C);
    Carve c(scratch.get(sizes.bytes()));
    unsigned* keys_out = c.take<unsigned>(N);
    int32_t* rows_in = c.take<int32_t>(N);
    int32_t* rows_out = c.take<int32_t>(N);
    void* cub_tmp = c.take<char>(cub_bytes);
    float* head = c.take<float>((size_t)segments * C);  // (segments, C) partial sums of runs crossing segments
    float* tail = c.take<float>((size_t)segments * C);

    iota_i32<<<grid_1d(N, kEncoderThreads), kEncoderThreads, 0, stream>>>(rows_in, N);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, keys_in, keys_out, rows_in, rows_out, N, 0, 32, stream));
    CUDA_CHECK_LAUNCH();
    const int32_t* sorted_ids = reinterpret_cast<const int32_t*>(keys_out);
    const dim3 grid((unsigned)segments, (unsigned)((C + kWteRunThreads - 1) / kWteRunThreads));
    encoder_backward_wte_segments<T>
        <<<grid, kWteRunThreads, 0, stream>>>(table, head, tail, dout, sorted_ids, rows_out, N, C);
    CUDA_CHECK_LAUNCH();
    encoder_backward_wte_join<T><<<grid, kWteRunThreads, 0, stream>>>(table, head, tail, sorted_ids, N, C);
    CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void encoder_forward(T* out, const int32_t* tokens, const int32_t* pos, const T* wte, const T* wpe, int B, int T_,
                     int C, cudaStream_t stream) {
    LaunchRange range("encoder_forward", stream);
    const size_t N = (size_t)B * T_;
    if (N == 0 || C == 0) return;
    if (C % kPack<T> == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe)) {
        const size_t packs = N * (C / kPack<T>);
        encoder_forward_packed<T>
            <<<grid_1d(packs, kEncoderThreads), kEncoderThreads, 0, stream>>>(out, tokens, pos, wte, wpe, N, T_, C);
    } else {
        encoder_forward_scalar<T>
            <<<grid_1d(N * C, kEncoderThreads), kEncoderThreads, 0, stream>>>(out, tokens, pos, wte, wpe, N, T_, C);
    }
    CUDA_CHECK_LAUNCH();
}

template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, const int32_t* pos, int B, int T_, int C,
                      Scratch& scratch, cudaStream_t stream) {
    LaunchRange range("encoder_backward", stream);
    const int N = B * T_;
    if (N == 0 || C == 0) return;
    if (dwpe && !pos) {
        encoder_backward_wpe<T><<<grid_1d((size_t)T_ * C, kWpeThreads), kWpeThreads, 0, stream>>>(dwpe, dout, B, T_, C);
        CUDA_CHECK_LAUNCH();
    } else if (dwpe) {
        scatter_add_by_id(dwpe, dout, pos, N, C, scratch, stream);  // positions repeat across packed documents
    }
    if (dwte) scatter_add_by_id(dwte, dout, tokens, N, C, scratch, stream);
}

#define TUNE_INSTANTIATE(T)                                                                                \
    template void encoder_forward<T>(T*, const int32_t*, const int32_t*, const T*, const T*, int, int, int,         \
                                     cudaStream_t);                                                                \
    template void encoder_backward<T>(T*, T*, const T*, const int32_t*, const int32_t*, int, int, int, Scratch&, \
                                      cudaStream_t);
TUNE_INSTANTIATE(float)
TUNE_INSTANTIATE(__nv_bfloat16)
TUNE_INSTANTIATE(__half)
#undef TUNE_INSTANTIATE

}  // namespace tune::cuda
