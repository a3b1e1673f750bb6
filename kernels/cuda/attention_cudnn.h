// Causal attention through cuDNN's fused flash attention (SDPA, cuDNN 9 graph API via the header-only cuDNN
// frontend). Same layout and math as kernels/attention.h; the T x T scores live only in on-chip memory.
//   forward:  out = softmax(q k^T / sqrt(HS), causal) v; saves stats (B,NH,T) fp32, the log-sum-exp of each
//             score row, which with out itself is all backward needs.
//   backward: dqkv (B,T,3C) written from dout, qkv, out and stats; cuDNN's deterministic algorithm, so two
//             runs give the same bits (the bit-identical-runs rule).
// bf16 and fp16 only (cuDNN has no fp32 SDPA); HS a multiple of 8 up to what the GPU's engines support.
// Each shape's graph is built once per process and GPU (a few hundred ms: heuristics and kernel compilation) and
// kept for every backend after it, with one cuDNN handle per GPU (TUNE_CUDNN_LOG=1 prints each build). T = 1
// (which cuDNN's backward rejects) is done with copies: attention over one position is the identity on v.
// Built only when the cuDNN frontend headers were found (Makefile: CUDNN_FE_INC); otherwise, and on the CUDA
// emulator, unsupported() says so and the backend keeps the cuBLAS path.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/common.h"
#include "kernels/cuda/scratch.h"

namespace tune::cuda {

// Saved state per call, in floats: the stats (B, NH, T).
inline size_t cudnn_attention_saved_floats(int B, int T, int NH) { return (size_t)B * NH * T; }

class CudnnAttention {
   public:
    explicit CudnnAttention(cudaStream_t stream);
    ~CudnnAttention();
    CudnnAttention(const CudnnAttention&) = delete;
    CudnnAttention& operator=(const CudnnAttention&) = delete;

    // Empty when cuDNN runs forward and backward of this shape and element type; otherwise why not (the
    // message cuDNN gave, or what is missing). Builds and caches both graphs (backward's for each call size
    // backward_batch() gives, the last call's too when it is shorter). Other shapes build theirs on
    // first use, each pass on its own (evaluation never builds a backward).
    std::string unsupported(DType dtype, int B, int T, int C, int NH);
    // The largest workspace any graph this backend ran or checked asks for (from the backend's Scratch). The
    // deterministic backward's is about B*NH*T*T*2 bytes (dP, like one layer's probabilities, not kept), so
    // backward runs on backward_batch() sequences at a time, which bounds it near 1 GiB.
    size_t workspace_bytes() const;
    // Sequences per backward call: all B while B*NH*T'*T'*2 bytes (T' = T rounded up to 128) is at most
    // 1 GiB, else B split into equal calls under it (gpt2 at T=1024: 42 sequences a call, gpt2-xl: 20),
    // a multiple of what keeps each call's stats pointer 16-byte aligned (4 sequences when NH*T is odd).
    // Each (sequence, head) is computed on its own, so the split changes no value.
    static int backward_batch(int B, int T, int NH);

    // Whether the frontend accepts this shape's two graphs for a GPU of compute capability `sm` (90: Hopper),
    // checked without one: dims, strides, types and attributes against its rules, not engine support. Empty,
    // or why not. Loads cuDNN. For tests on machines without a GPU.
    static std::string validate_for(int sm, DType dtype, int B, int T, int C, int NH);

    void forward(void* out,        // (B, T, C)
                 float* stats,     // (B, NH, T) saved
                 const void* qkv,  // (B, T, 3C)
                 DType dtype, int B, int T, int C, int NH, Scratch& scratch);

    void backward(void* dqkv,          // (B, T, 3C) written
                  const void* dout,    // (B, T, C)
                  const void* qkv,     // (B, T, 3C)
                  const void* out,     // (B, T, C) from forward
                  const float* stats,  // (B, NH, T) from forward
                  DType dtype, int B, int T, int C, int NH, Scratch& scratch);

   private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace tune::cuda
