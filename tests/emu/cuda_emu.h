// The CUDA emulator's device side: what a kernel file needs to compile as plain C++ and run on the CPU.
//
// Why: no session so far has had a GPU, yet every kernel needs its parity test to run before it is
// trusted. The emulator lets the CUDA tests (tests/test_cuda_*.cpp) run here and in CI against the CPU
// reference: `make test-emu` translates each kernels/**/*.cu (scripts/cuda_emu_translate.py rewrites the
// launch syntax `k<<<grid, block, smem, stream>>>(args)` and `extern __shared__` arrays, nothing else),
// compiles it with g++ and this header force-included, and links tests/emu/*.cpp in place of libcudart,
// libcublas(Lt) and libnccl.
//
// How a launch runs: blocks one after another; within a block every CUDA thread is a fiber (ucontext) on
// the launching thread, run in thread order until it finishes or reaches a barrier. __syncthreads()
// releases when every live thread of the block has reached it; a warp shuffle is a rendezvous of the
// warp's lanes. `__shared__` variables become per-block storage that starts as NaN bytes in every block (in
// reverse order, CUDA_EMU_ORDER=reverse, as 0x7F bytes: about 3.4e38, which fmaxf and comparisons do not skip;
// and the blocks of a launch run last to first).
//
// Streams are queues, as on a GPU: a kernel, copy, GEMM or collective runs when the host waits for it
// (cudaStreamSynchronize, cudaEventSynchronize, a blocking copy) and then only what that wait needs, in an order
// a GPU could take: work on another stream runs before or after as its events allow, the higher-priority stream
// first (CUDA_EMU_ORDER=reverse: the lower first). cudaDeviceSynchronize, cudaFree and cudaFreeHost run
// everything queued. So a missing cudaStreamWaitEvent, or a host read without a wait, reads memory not yet
// written in one order or the other. cudaEventQuery and cudaStreamQuery only look: a host that polls them
// without ever waiting would wait for ever here. CUDA_EMU_STREAMS=sync runs each piece of work when it is
// queued (the old behaviour).
//
// What it checks that a GPU run would also check: indexing, reductions and their order, the bf16/fp16
// rounding (cuda_bf16.h's own host conversions), cuBLAS(Lt) argument validity and layouts, kernel pointer
// arguments outside cudaMalloc/cudaMallocHost memory, cuBLAS and NCCL operands that run past their allocation.
// It reports a __syncthreads() that some live threads never reach (deadlock), and a shuffle that reads from a
// lane that does not exist, has exited or is not in its mask. What it cannot check: data races (a block's
// fibers interleave only at barriers), memory-model and timing effects, real cuBLAS algorithms, speed.
#pragma once

#define TUNE_CUDA_EMULATOR 1  // kernels/cuda/device.cu: cuda_is_emulator()

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
// The translator rewrites every __shared__ declaration of a .cu file into per-block storage; this fallback
// only reaches headers, which it does not translate (none declares __shared__ today).
#define __shared__ static
#define __constant__ static
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

namespace emu {

// The running CUDA thread's coordinates (valid only inside a kernel).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void sync_block();                // __syncthreads
void sync_warp(unsigned mask);    // rendezvous of the lanes named by mask
void* warp_exchange_slot();       // this lane's 16-byte slot in its warp's exchange area
void* warp_lane_slot(int lane);   // lane `lane`'s slot in the same warp
int lane_id();
void* dynamic_shared(size_t align);  // the launch's dynamic shared memory (extern __shared__)

// Runs each block's threads last to first (true) or first to last; returns the previous setting. The
// environment variable CUDA_EMU_ORDER=reverse sets it at start.
bool set_reverse_order(bool reverse);

// One launch: checks the configuration now (an impossible one sets the launch error), then queues on `stream`
// a run of `body(ctx)` for every thread of every block, as described above. `name` (the launch's file and line)
// names it in error messages.
void run_grid(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream, const char* name, void (*body)(void*),
              std::shared_ptr<void> ctx);

// Queues `work` on `stream` (null: the legacy default stream); it runs when the host waits for it (see above).
// cuBLAS and NCCL stand-ins queue their computation this way.
void enqueue(cudaStream_t stream, std::function<void()> work);

// The block's instance of one `__shared__` variable (the translator rewrites each declaration to this; `key`
// is a static unique to the declaration and its template instance). Filled with 0xFF bytes (NaN) when a
// block first asks for it, so a read of shared memory this block never wrote shows, as on a GPU it would be
// garbage.
void* block_shared_bytes(const void* key, size_t bytes, size_t align);
template <class T>
T& block_shared(const void* key) {
    static_assert(std::is_trivially_default_constructible<T>::value, "__shared__ of a type with a constructor");
    return *static_cast<T*>(block_shared_bytes(key, sizeof(T), alignof(T)));
}

template <class T>
T* dynamic_smem() {
    return static_cast<T*>(dynamic_shared(alignof(T) < 16 ? 16 : alignof(T)));
}

template <class T>
T shfl_xor(unsigned mask, T v, int lane_mask, int width) {
    static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle of a large or non-trivial type");
    std::memcpy(warp_exchange_slot(), &v, sizeof v);
    sync_warp(mask);
    const int lane = lane_id();
    const int src = lane ^ lane_mask;
    T r = v;  // CUDA: a source in a later group of `width` lanes gives the caller's own value back
    if (src < (lane / width + 1) * width) std::memcpy(&r, warp_lane_slot(src), sizeof r);
    sync_warp(mask);  // every lane has read before any lane writes its next value
    return r;
}

// `k<<<cfg>>>(args)` is translated to `k ^ ::emu::Config(site, cfg)(args)`: the call binds first and holds the
// arguments; ^ then launches the kernel with them, converted to its parameter types as a real launch does.
// "file:line", kept for the life of the program (the translator passes __FILE__ and __LINE__ of each launch).
const char* launch_site(const char* file, int line);

// `site` is the launch's file and line ("kernels/layernorm.cu:120"), which error messages name.
template <class... A>
struct BoundLaunch {
    const char* site;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    std::tuple<std::decay_t<A>...> args;
};

struct Config {
    const char* site;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    Config(const char* where, dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
        : site(where), grid(g), block(b), smem(s), stream(st) {}
    template <class... A>
    BoundLaunch<A...> operator()(A&&... a) const {
        return BoundLaunch<A...>{site, grid, block, smem, stream,
                                 std::tuple<std::decay_t<A>...>(std::forward<A>(a)...)};
    }
};

// Whether a kernel may dereference `p`: null, or inside (or one past the end of) memory from cudaMalloc or
// cudaMallocHost. A GPU faults on a pointer into pageable host memory (a std::vector, a stack array) or into a
// freed allocation, with cudaErrorIllegalAddress at the next synchronisation, far from the launch that caused it.
bool kernel_may_access(const void* p);
// Whether [p, p + bytes) lies inside one cudaMalloc or cudaMallocHost allocation (the cuBLAS and NCCL stand-ins
// check their operands with it).
bool in_allocation(const void* p, size_t bytes);
// Refuses a launch: prints the kernel, the argument's position and its address, and sets the launch error.
void refuse_launch(const char* kernel, size_t arg, const void* p);

template <class Tuple, size_t... I>
bool pointer_args_valid(const Tuple& args, const char* kernel, std::index_sequence<I...>) {
    bool ok = true;
    auto check = [&](size_t i, const auto& a) {
        if constexpr (std::is_pointer<std::decay_t<decltype(a)>>::value) {
            if (ok && !kernel_may_access(static_cast<const void*>(a))) {
                refuse_launch(kernel, i, static_cast<const void*>(a));
                ok = false;
            }
        }
    };
    (check(I, std::get<I>(args)), ...);
    return ok;
}

template <class... P, class... A>
void operator^(void (*kernel)(P...), BoundLaunch<A...>&& launch) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    struct Ctx {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> params;
    };
    auto ctx = std::make_shared<Ctx>(Ctx{kernel, std::make_from_tuple<std::tuple<std::decay_t<P>...>>(std::move(launch.args))});
    if (!pointer_args_valid(ctx->params, launch.site, std::index_sequence_for<P...>{})) return;
    // Each thread gets its own copy of the parameters, as on the GPU (a kernel may modify them).
    auto body = [](void* p) {
        Ctx& c = *static_cast<Ctx*>(p);
        std::tuple<std::decay_t<P>...> mine = c.params;
        std::apply(c.kernel, std::move(mine));
    };
    run_grid(launch.grid, launch.block, launch.smem, launch.stream, launch.site, body, std::move(ctx));
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#ifndef warpSize
#define warpSize 32
#endif

inline void __syncthreads() { ::emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::sync_warp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::emu::shfl_xor(mask, v, lane_mask, width);
}

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// Fast-math intrinsics: the CPU computes them exactly, which is within their documented error.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }

// CUDA's global min/max overloads (any mix of arithmetic types, in their common type).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
    return b < a ? b : a;
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
    return a < b ? b : a;
}

namespace emu {
template <class To, class From>
To bits_as(From x) {
    static_assert(sizeof(To) == sizeof(From), "reinterpretation between types of different sizes");
    To r;
    std::memcpy(&r, &x, sizeof r);
    return r;
}
}  // namespace emu
inline unsigned __float_as_uint(float x) { return ::emu::bits_as<unsigned>(x); }
inline float __uint_as_float(unsigned u) { return ::emu::bits_as<float>(u); }
inline int __float_as_int(float x) { return ::emu::bits_as<int>(x); }
inline float __int_as_float(int u) { return ::emu::bits_as<float>(u); }
