// When the CPU reference spreads a loop over OpenMP threads: only when the loop touches enough elements
// to repay a fork and a barrier. Small shapes (tests, tiny models) run serially; on a busy machine a
// barrier waiting for a descheduled thread costs milliseconds, far more than the loop itself.
#pragma once
#include <cstddef>

namespace tune::cpu {
constexpr size_t kParallelMinElems = size_t(1) << 16;
}
