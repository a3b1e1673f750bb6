// Options of the CUDA backend beyond the element type (kernels/backend.h declares the plain factory).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace tune {

// Which attention kernels run: automatic = cuDNN's fused flash attention where it supports the shape and type
// (bf16/fp16; kernels/cuda/attention_cudnn.h), else the cuBLAS path (kernels/attention.h); cudnn = cuDNN or an
// error saying why not; matmul = always the cuBLAS path (materialised T x T scores). The environment variable
// TUNE_CUDA_ATTENTION=auto|cudnn|matmul sets it for backends left on automatic (scripts/gpu_check.sh runs the
// race and init checkers over our own kernels this way).
enum class AttentionImpl { automatic, cudnn, matmul };
const char* attention_impl_name(AttentionImpl a);
// Throws UsageError naming `where` (the flag or variable the name came from).
AttentionImpl parse_attention_impl(const std::string& name, const std::string& where = "--attention ");

struct CudaOptions {
    // bf16 working weights written from the fp32 master by stochastic rounding instead of round-to-nearest
    // (reproducible: the random bits hash the element, the step and `seed`). Ignored for fp32 and fp16.
    bool stochastic_rounding = false;
    uint64_t seed = 0;
    AttentionImpl attention = AttentionImpl::automatic;
};

std::unique_ptr<Backend> make_cuda_backend(DType dtype, const CudaOptions& options);

// The stream every op of a CUDA backend runs on (a cudaStream_t), so NCCL collectives can be ordered against
// it (train/dist_nccl.cpp). Throws for another backend.
void* cuda_stream_of(Backend& be);

// Dense bf16 tensor-core peak FLOP/s of the current GPU, from the spec sheets scaled by SM count: sm_90
// (H100/H200) 989.4 TFLOP/s at 132 SMs, sm_80 (A100) 312 at 108. 0 when unknown (other GPUs, no GPU). MFU is
// measured against it in every precision.
double cuda_peak_bf16_flops();

}  // namespace tune
