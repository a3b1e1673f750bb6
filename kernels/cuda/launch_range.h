// LaunchRange: the first line of every launcher. It opens an NVTX range named after the launcher, so Nsight Systems
// shows `layer 7 / backward > layernorm_backward`, and while the op profile is on (kernels/op_profile.h,
// bin/train --profile-step) it records a CUDA event on the launcher's stream before its work and another after,
// so the profile can say how long the GPU spent in it. A launcher called inside another's range is timed as
// part of the outer one. Without the profile it costs what an NVTX range costs: nothing without a profiler.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/op_profile.h"

namespace tune::cuda {

class LaunchRange {
   public:
    LaunchRange(const char* name, cudaStream_t stream);
    ~LaunchRange();  // never throws: an event that fails is reported by profile_end()
    LaunchRange(const LaunchRange&) = delete;
    LaunchRange& operator=(const LaunchRange&) = delete;

   private:
    cudaStream_t stream_;
    bool counted_ = false;  // counted in this thread's depth of open launch ranges
    long slot_ = -1;        // the profile record this range times, or -1
    uint64_t generation_ = 0;
};

// The process's one op profile, which the CUDA backend's range_push/pop and profile_begin/end forward to.
void profile_push(const char* range);
void profile_pop();
void profile_begin();
std::vector<OpTime> profile_end();  // waits for the device; throws tune::Error if an event call failed

}  // namespace tune::cuda
