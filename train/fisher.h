// EWC's Fisher file: the diagonal of the empirical Fisher, one value per trainable parameter, estimated once
// on base data (train/trainer.cpp) and reused by later runs.
//
// Format: safetensors (data/safetensors.h), readable by anything that reads safetensors. One F32 tensor per
// tensor of the gradient table (the trainable ones), under the parameter's name and with its shape;
// metadata "format": "tune.cu ewc fisher" and "batches": how many micro-batches the mean is over.
// A Fisher diagonal is a mean of squared gradients, so a reader refuses any value that is negative or not
// finite: a negative one would reward moving away from the starting weights.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "model/arena.h"

namespace tune {

// Writes `values` (one vector per tensor of `g`, each g[i].numel long) to `path`, atomically.
void write_fisher(const std::string& path, const Table& g, const std::vector<std::vector<float>>& values, int batches);

// Reads the Fisher of every tensor of `g` from `path`, one at a time, and hands each to `take(i, values)`
// (so a gpt2-xl Fisher is never whole in host memory). Throws tune::Error naming the file, the tensor and
// what is wrong: a trainable tensor it lacks, another shape, a value negative or not finite. Tensors of the
// file that `g` does not train are ignored (a Fisher estimated for more parameters serves fewer).
void read_fisher(const std::string& path, const Table& g,
                 const std::function<void(size_t i, const std::vector<float>& values)>& take);

// A fingerprint of Fisher values, built a tensor at a time in `g`'s order from h = 0 (the name and the values of
// each): what a resume compares with the one its checkpoint recorded. Never 0 once a tensor went in.
uint64_t fisher_fingerprint(uint64_t h, const std::string& name, const std::vector<float>& values);

}  // namespace tune
