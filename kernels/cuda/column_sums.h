// The second half of the deterministic column sums (kernels/cuda/device_util.cuh): a first kernel writes fp32
// partial sums per slice of rows, (slices, C); this one adds the slices in a fixed order into the parameter
// gradients. Used by LayerNorm's dweight/dbias and matmul's dbias, inside their launchers: it opens no LaunchRange
// of its own (its time counts as theirs), unlike every launcher a model calls.
#pragma once

#include <cuda_runtime.h>

namespace tune::cuda {

// a += sum over slices of partial_a, b likewise (b and partial_b may be null; a null a is skipped too).
// Accumulated (+=), rounded to T once per column.
template <class T>
void add_column_slices(T* a,                     // (C) accumulated, or null
                       T* b,                     // (C) accumulated, or null
                       const float* partial_a,   // (slices, C)
                       const float* partial_b,   // (slices, C), or null when b is
                       int C, int slices, cudaStream_t stream);

}  // namespace tune::cuda
