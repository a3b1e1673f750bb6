// Softmax cross-entropy with per-token weights over a padded vocabulary, fused with its backward, on CUDA.
// Reference: kernels/cpu/crossentropy.h.
//   p = softmax(logits[i, 0:V])               (columns V..Vp-1 are padding and take no part)
//   losses[i] = w[i] * -log p[targets[i]]     (exactly 0 where w[i] == 0, whatever the target)
//   dlogits[i, v] = (p[v] - [v == targets[i]]) * w[i] * dloss   for v < V;   0 for V <= v < Vp
// dlogits may alias logits (in place: each row is read completely before any of it is written); it is
// skipped when null (evaluation). A target outside [0, V) on a counted row gives a NaN loss, so the
// trainer's non-finite check catches bad data instead of reading out of bounds.
//
// A NaN or +inf logit in a counted row makes its loss NaN (the step is then skipped).
//
// Algorithm: one block of 1024 threads per row. One pass keeps a running (max, sum of exp) per thread (online
// softmax, rescaled once per 16-byte pack at most), combined across the block in a fixed order; a second pass
// writes the gradient. 2 reads (the second one mostly from L2) + 1 write of the row, deterministic. 16-byte
// loads and stores where Vp is a multiple of 16 bytes' worth of elements and the rows are aligned; the first
// pass then also reads the padding columns up to the end of the last 16 bytes holding a column < V, which must
// be initialised (the LM head's GEMM writes every column) though they take no part.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tune::cuda {

template <class T>
void crossentropy_forward_backward(T* losses,               // (N)
                                   T* dlogits,              // (N, Vp) or null; may alias logits
                                   const T* logits,         // (N, Vp)
                                   const int32_t* targets,  // (N)
                                   const float* weights,    // (N)
                                   float dloss, size_t N, int V, int Vp, cudaStream_t stream);

}  // namespace tune::cuda
