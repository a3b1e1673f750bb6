// The planning backend: a run's layout without its memory. bin/train --memory-map plans with it, so the map of a
// run too big for this machine, or of a GPU run on a machine without a GPU, is printed all the same.
//
// It answers what the arenas' sizes depend on as the real backend would (the element types; attention's saved
// state: the probabilities (B,NH,T,T) on the cuBLAS path, the softmax statistics (B,NH,T) where cuDNN's fused
// attention takes the shape, decided by the cuDNN frontend's own validation for Hopper), hands out address
// ranges that hold no memory (reserved, never readable: a stray access faults instead of reading garbage), and
// computes nothing: every op is a no-op, a download gives zeros, a norm 0.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"

namespace tune {

// device: "cpu" (f32) or "cuda" (dtype f32, bf16 or f16, with FP32 master weights; `cuda.attention` as bin/train's
// --attention). Its name() is the device's, plans_only() is true.
std::unique_ptr<Backend> make_plan_backend(const std::string& device, DType dtype, const CudaOptions& cuda);

}  // namespace tune
