// Options of the CUDA backend beyond the element type (kernels/backend.h declares the plain factory).
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/backend.h"

namespace tune {

struct CudaOptions {
    // bf16 working weights written from the fp32 master by stochastic rounding instead of round-to-nearest
    // (reproducible: the random bits hash the element, the step and `seed`). Ignored for fp32 and fp16.
    bool stochastic_rounding = false;
    uint64_t seed = 0;
};

std::unique_ptr<Backend> make_cuda_backend(DType dtype, const CudaOptions& options);

// The stream every op of a CUDA backend runs on (a cudaStream_t), so NCCL collectives can be ordered against
// it (train/dist_nccl.cpp). Throws for another backend.
void* cuda_stream_of(Backend& be);

// Dense peak FLOP/s of the current GPU for matmuls in `dtype` (bf16/f16 on tensor cores; f32 without TF32 on
// the CUDA cores), from the spec sheets scaled by SM count: sm_90 (H100/H200) 989.4 TFLOP/s bf16 and 67 f32
// at 132 SMs; sm_80 (A100) 312 and 19.5 at 108 SMs. 0 when unknown (other GPUs, no GPU): for an MFU figure.
double cuda_peak_flops(DType dtype);

}  // namespace tune
