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

}  // namespace tune
