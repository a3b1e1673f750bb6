#include "kernels/cuda/launch_range.h"

#include <nvtx3/nvToolsExt.h>

#include <atomic>
#include <mutex>
#include <string>

#include "kernels/common.h"
#include "kernels/cuda/check.h"

namespace tune::cuda {
namespace {

struct Record {
    std::string where;
    const char* op;  // a launcher's name: a string literal
};

struct State {
    std::mutex mu;
    std::atomic<bool> on{false};
    uint64_t generation = 0;           // one per profile_begin: a range opened before it does not touch its records
    OpProfile profile;                 // the open ranges, always; the times, in profile_end
    std::vector<Record> records;       // this profile's timed launches, in launch order
    std::vector<cudaEvent_t> events;   // 2 per record (start, stop); destroyed when the profile ends
    cudaError_t error = cudaSuccess;   // the first event call that failed, reported by profile_end
    std::string failed;
};

State& state() {
    static State s;
    return s;
}

thread_local int depth = 0;  // launch ranges open in this thread while profiling

bool ok(State& s, cudaError_t err, const char* call) {
    if (err == cudaSuccess) return true;
    if (s.error == cudaSuccess) s.error = err, s.failed = call;
    return false;
}

// A profile is one step, so its events go with it: none is left for the process's exit (where the CUDA runtime
// may already be gone) nor held between profiles. Called under s.mu, once the device has finished with them.
void release_events(State& s) {
    for (cudaEvent_t e : s.events) cudaEventDestroy(e);
    s.events.clear();
    s.records.clear();
}

}  // namespace

LaunchRange::LaunchRange(const char* name, cudaStream_t stream) : stream_(stream) {
    nvtxRangePushA(name);
    State& s = state();
    if (!s.on.load(std::memory_order_acquire)) return;
    counted_ = true;
    if (depth++ > 0) return;  // inside another launcher: its range holds this work
    std::lock_guard<std::mutex> lock(s.mu);
    const size_t i = s.records.size();
    while (s.events.size() < 2 * (i + 1)) {
        cudaEvent_t e = nullptr;
        if (!ok(s, cudaEventCreate(&e), "cudaEventCreate")) return;
        s.events.push_back(e);
    }
    if (!ok(s, cudaEventRecord(s.events[2 * i], stream), "cudaEventRecord")) return;
    s.records.push_back(Record{s.profile.where(), name});
    slot_ = (long)i;
    generation_ = s.generation;
}

LaunchRange::~LaunchRange() {
    State& s = state();
    if (slot_ >= 0) {
        std::lock_guard<std::mutex> lock(s.mu);
        if (s.generation == generation_ && (size_t)slot_ < s.records.size())
            ok(s, cudaEventRecord(s.events[2 * slot_ + 1], stream_), "cudaEventRecord");
    }
    if (counted_) depth--;
    nvtxRangePop();
}

void profile_push(const char* range) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.profile.push(range);
}

void profile_pop() {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.profile.pop();
}

void profile_begin() {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.generation++;
    s.records.clear();
    s.profile.clear_times();
    s.error = cudaSuccess;
    s.failed.clear();
    s.on.store(true, std::memory_order_release);
}

std::vector<OpTime> profile_end() {
    State& s = state();
    s.on.store(false, std::memory_order_release);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::lock_guard<std::mutex> lock(s.mu);
    s.generation++;  // a range still open (none should be) records nothing now
    if (s.error != cudaSuccess) {
        const std::string what = s.failed + ": " + cudaGetErrorString(s.error);
        release_events(s);
        throw Error("op profile: " + what);
    }
    for (size_t i = 0; i < s.records.size(); i++) {
        float ms = 0;
        const cudaError_t err = cudaEventElapsedTime(&ms, s.events[2 * i], s.events[2 * i + 1]);
        if (err != cudaSuccess) {
            release_events(s);
            throw Error(std::string("op profile: cudaEventElapsedTime: ") + cudaGetErrorString(err));
        }
        s.profile.add(s.records[i].where, s.records[i].op, ms);
    }
    release_events(s);
    std::vector<OpTime> times = s.profile.table();
    s.profile.clear_times();
    return times;
}

}  // namespace tune::cuda
