// Softmax cross-entropy with per-token weights over a padded vocabulary, fused with its backward.
//   p = softmax(logits[i, 0:V])               (columns V..Vp-1 are padding and take no part)
//   losses[i] = w[i] * -log p[targets[i]]     (exactly 0 where w[i] == 0, whatever the target)
//   dlogits[i, v] = (p[v] - [v == targets[i]]) * w[i] * dloss   for v < V;   0 for V <= v < Vp
// dloss is the gradient of the final loss with respect to each weighted token loss: 1 / (number of
// counted tokens in the whole optimizer step), so micro-batches and ranks add up to the true mean.
// dlogits may alias logits; it is skipped when null (evaluation).
#pragma once
#include <cstddef>
#include <cstdint>

namespace tune::cpu {

template <class T>
void crossentropy_forward_backward(T* losses,              // (N)
                                   T* dlogits,             // (N, Vp) or null; may alias logits
                                   const T* logits,        // (N, Vp)
                                   const int32_t* targets, // (N)
                                   const float* weights,   // (N)
                                   float dloss, size_t N, int V, int Vp);

}  // namespace tune::cpu
