// The CUDA emulator's runtime: kernel launches on fibers (see tests/emu/cuda_emu.h for the model) and the
// part of the CUDA runtime API the project calls, defined on host memory.
//
// Device memory is host memory from an aligned allocation, filled with 0xFF bytes (a NaN in every float
// type) so a read of memory nobody wrote shows up in a parity test, as compute-sanitizer's initcheck would.
// Every allocation is recorded, so copies check that their device side really is device memory, and
// cudaFree of anything else fails. Streams and events are synchronous: work is done when it is enqueued.
// A launch with an impossible configuration (more than 1024 threads, a grid past the hardware limits,
// more than 48 KiB of dynamic shared memory) fails with the error a GPU gives, through cudaGetLastError.
// _longjmp between stacks is what the fibers do; the fortified longjmp would call that an error.
#undef _FORTIFY_SOURCE
#include "tests/emu/cuda_emu.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace emu {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = size_t(256) << 10;
constexpr size_t kMaxDynamicShared = size_t(48) << 10;
constexpr size_t kDeviceAlign = 256;

enum class State { ready, at_block_barrier, at_warp_barrier, done };

// A fiber is made once (makecontext, the only costly call) and then reused by every block: it runs its
// thread's body, parks, and runs again for the next block. Switches are _setjmp/_longjmp, which, unlike
// swapcontext, do not save the signal mask with a system call: a launch of a million threads switches
// two million times.
struct Fiber {
    ucontext_t start;
    jmp_buf ctx;
    void* stack = nullptr;
    bool made = false;
    uint3 tid;
    int linear = 0;
    State state = State::done;
    unsigned warp_mask = 0;
};

struct SharedRegion {
    void* data = nullptr;
    size_t bytes = 0;
    uint64_t block = 0;  // the block that last poisoned it
};

struct Launch {
    const char* name = nullptr;
    uint64_t block_serial = 0;  // counts blocks over all launches
    std::unordered_map<const void*, SharedRegion> shared;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    dim3 grid, block;
    uint3 block_idx;
    int nthreads = 0;
    std::vector<Fiber> fibers;
    std::vector<unsigned char> exchange;  // 16 bytes per lane
    std::vector<unsigned char> dynamic_shared;
    jmp_buf scheduler;
    ucontext_t maker;  // where a new fiber returns to after parking the first time
    Fiber* current = nullptr;
};

Launch& launch() {
    static Launch l;
    return l;
}
std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

[[noreturn]] void fail(const std::string& what) {
    const Launch& l = launch();
    std::fprintf(stderr, "cuda-emu: %s\n  in %s, block (%u,%u,%u) of grid (%u,%u,%u), block (%u,%u,%u)\n", what.c_str(),
                 l.name ? l.name : "?", l.block_idx.x, l.block_idx.y, l.block_idx.z, l.grid.x, l.grid.y, l.grid.z,
                 l.block.x, l.block.y, l.block.z);
    std::abort();
}

Fiber& current() {
    Fiber* f = launch().current;
    if (!f) {
        std::fprintf(stderr, "cuda-emu: a device builtin (threadIdx, __syncthreads, ...) used outside a kernel\n");
        std::abort();
    }
    return *f;
}

void yield_to_scheduler() {
    Launch& l = launch();
    if (!_setjmp(l.current->ctx)) _longjmp(l.scheduler, 1);
}

// CUDA_EMU_ORDER=reverse runs each block's threads last to first. A missing barrier (a thread reading what
// another writes in the same phase) reads stale or poisoned data in one order or the other, so running the
// tests both ways finds races that a GPU would show only sometimes.
bool& reverse_flag() {
    static bool r = [] {
        const char* e = std::getenv("CUDA_EMU_ORDER");
        return e && std::string(e) == "reverse";
    }();
    return r;
}

// What unwritten shared memory holds: NaN bytes (0xFF), which arithmetic carries into any result; in reverse mode
// 0x7F bytes (about 3.4e38 as a float or bf16), which a max or a comparison does not skip as it skips NaN.
unsigned char unwritten_byte() { return reverse_flag() ? 0x7F : 0xFF; }

// Runs `f` until it finishes or waits. Its own function, so no caller's locals live across the _setjmp.
__attribute__((noinline)) void resume(Launch& l, Fiber& f) {
    l.current = &f;
    if (!_setjmp(l.scheduler)) _longjmp(f.ctx, 1);
    l.current = nullptr;
}

Fiber* g_making = nullptr;

void fiber_main() {
    Fiber* self = g_making;
    Launch& l = launch();
    if (!_setjmp(self->ctx)) setcontext(&l.maker);  // parked; the first resume continues below
    for (;;) {
        l.body(l.ctx);
        l.current->state = State::done;
        yield_to_scheduler();
    }
}

void make_fiber(Fiber& f) {
    // One inaccessible page below the stack: a kernel that overflows it faults in its own fiber.
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char* region = static_cast<char*>(
        mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (region == MAP_FAILED || mprotect(region, page, PROT_NONE) != 0) fail("cannot map a fiber stack");
    f.stack = region + page;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack;
    f.start.uc_stack.ss_size = kStackBytes;
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_main, 0);
    g_making = &f;
    swapcontext(&launch().maker, &f.start);
    f.made = true;
}

unsigned lanes_present(const Launch& l, int warp) {
    // Lanes of `warp` that exist and have not exited.
    unsigned m = 0;
    for (int lane = 0; lane < 32; ++lane) {
        const int t = warp * 32 + lane;
        if (t < l.nthreads && l.fibers[t].state != State::done) m |= 1u << lane;
    }
    return m;
}

// Releases whoever may go on. Returns false when nobody can (a deadlock).
bool release_barriers(Launch& l) {
    bool released = false;
    const int nwarps = (l.nthreads + 31) / 32;
    for (int w = 0; w < nwarps; ++w) {
        unsigned waiting = 0, wanted = 0;
        for (int lane = 0; lane < 32 && w * 32 + lane < l.nthreads; ++lane) {
            const Fiber& f = l.fibers[w * 32 + lane];
            if (f.state == State::at_warp_barrier) {
                waiting |= 1u << lane;
                wanted |= f.warp_mask;
            }
        }
        if (waiting && (wanted & lanes_present(l, w) & ~waiting) == 0) {
            for (int lane = 0; lane < 32 && w * 32 + lane < l.nthreads; ++lane)
                if (waiting >> lane & 1u) l.fibers[w * 32 + lane].state = State::ready;
            released = true;
        }
    }
    if (released) return true;
    int live = 0, at_block = 0;
    for (int t = 0; t < l.nthreads; ++t) {
        live += l.fibers[t].state != State::done;
        at_block += l.fibers[t].state == State::at_block_barrier;
    }
    if (live > 0 && at_block == live) {
        for (int t = 0; t < l.nthreads; ++t)
            if (l.fibers[t].state == State::at_block_barrier) l.fibers[t].state = State::ready;
        return true;
    }
    return live == 0;
}

void run_block(Launch& l) {
    for (int t = 0; t < l.nthreads; ++t) {
        Fiber& f = l.fibers[t];
        if (!f.made) make_fiber(f);
        f.linear = t;
        f.tid = uint3{(unsigned)(t % l.block.x), (unsigned)(t / l.block.x % l.block.y),
                      (unsigned)(t / (l.block.x * l.block.y))};
        f.state = State::ready;
    }
    const bool reverse = reverse_flag();
    for (;;) {
        for (int i = 0; i < l.nthreads; ++i) {
            Fiber& f = l.fibers[reverse ? l.nthreads - 1 - i : i];
            if (f.state != State::ready) continue;
            resume(l, f);
        }
        bool all_done = true;
        for (int t = 0; t < l.nthreads; ++t) all_done &= l.fibers[t].state == State::done;
        if (all_done) return;
        if (!release_barriers(l)) {
            int at_block = 0, at_warp = 0, done = 0;
            for (int t = 0; t < l.nthreads; ++t) {
                at_block += l.fibers[t].state == State::at_block_barrier;
                at_warp += l.fibers[t].state == State::at_warp_barrier;
                done += l.fibers[t].state == State::done;
            }
            fail("deadlock: " + std::to_string(at_block) + " threads wait at __syncthreads, " +
                 std::to_string(at_warp) + " at a warp barrier, " + std::to_string(done) +
                 " have exited (a barrier in divergent code)");
        }
    }
}

cudaError_t g_last_error = cudaSuccess;

}  // namespace

bool set_reverse_order(bool reverse) {
    const bool was = reverse_flag();
    reverse_flag() = reverse;
    return was;
}

const uint3& thread_idx() { return current().tid; }
const uint3& block_idx() {
    current();
    return launch().block_idx;
}
const dim3& block_dim() {
    current();
    return launch().block;
}
const dim3& grid_dim() {
    current();
    return launch().grid;
}
int lane_id() { return current().linear % 32; }

void sync_block() {
    current().state = State::at_block_barrier;
    yield_to_scheduler();
}

void sync_warp(unsigned mask) {
    Fiber& f = current();
    const int lane = f.linear % 32;
    if (!(mask >> lane & 1u)) fail("a warp operation whose mask leaves out the calling lane " + std::to_string(lane));
    // Lanes the mask names that do not exist or have exited take no part (CUDA: only the non-exited ones
    // named must arrive); a shuffle that reads from one of them fails in warp_lane_slot.
    f.warp_mask = mask;
    f.state = State::at_warp_barrier;
    yield_to_scheduler();
}

void* warp_exchange_slot() { return &launch().exchange[(size_t)current().linear * 16]; }
void* warp_lane_slot(int lane) {
    const Fiber& f = current();
    Launch& l = launch();
    const int t = f.linear / 32 * 32 + lane;
    if (lane < 0 || lane >= 32 || t >= l.nthreads || l.fibers[t].state == State::done || !(f.warp_mask >> lane & 1u))
        fail("a shuffle from lane " + std::to_string(lane) + ", which does not exist, has exited or is not in the mask");
    return &l.exchange[(size_t)t * 16];
}

void* block_shared_bytes(const void* key, size_t bytes, size_t align) {
    current();
    Launch& l = launch();
    SharedRegion& r = l.shared[key];
    if (!r.data) {
        r.data = std::aligned_alloc(align < 64 ? 64 : align, (bytes + 63) / 64 * 64);
        r.bytes = bytes;
    }
    if (r.bytes != bytes) fail("one __shared__ declaration seen with two sizes");
    if (r.block != l.block_serial) {
        std::memset(r.data, unwritten_byte(), bytes);
        r.block = l.block_serial;
    }
    return r.data;
}

void* dynamic_shared(size_t align) {
    Launch& l = launch();
    current();
    if (l.dynamic_shared.empty()) fail("extern __shared__ used by a launch that gave no dynamic shared memory");
    void* p = l.dynamic_shared.data();
    if (reinterpret_cast<uintptr_t>(p) % align) fail("dynamic shared memory misaligned");
    return p;
}

void run_grid(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t, const char* name, void (*body)(void*), void* ctx) {
    const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > (uint64_t)kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
        g_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    if (smem_bytes > kMaxDynamicShared) {
        g_last_error = cudaErrorInvalidValue;
        return;
    }
    std::lock_guard<std::mutex> lock(launch_mutex());
    Launch& l = launch();
    l.name = name;
    l.body = body;
    l.ctx = ctx;
    l.grid = grid;
    l.block = block;
    l.nthreads = (int)nthreads;
    if (l.fibers.size() < (size_t)kMaxThreads) l.fibers.resize(kMaxThreads);
    l.exchange.assign((size_t)kMaxThreads * 16, 0xFF);
    // Blocks one after another; in reverse mode last to first too, so a block that reads what another block of
    // the same launch writes (no order a GPU keeps) reads it unwritten in one of the two orders.
    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
    for (uint64_t k = 0; k < blocks; ++k) {
        const uint64_t b = reverse_flag() ? blocks - 1 - k : k;
        l.block_idx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        ++l.block_serial;
        // Unwritten in every block; operator new's storage is 16-byte aligned (checked on use)
        l.dynamic_shared.assign(smem_bytes, unwritten_byte());
        run_block(l);
    }
    l.name = nullptr;
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------------------
// The runtime API, as far as the project uses it.
namespace {

size_t g_device_bytes = 0;
constexpr size_t kDeviceMemory = size_t(143) << 30;  // an H200's 141 GiB, roughly

struct Allocation {
    size_t bytes;
    bool device;
};
std::mutex& alloc_mutex() {
    static std::mutex m;
    return m;
}
std::map<uintptr_t, Allocation>& allocations() {
    static std::map<uintptr_t, Allocation> a;
    return a;
}

void* allocate(size_t bytes, bool device) {
    if (device) {  // an H200's capacity: what does not fit there fails here too
        std::lock_guard<std::mutex> lock(alloc_mutex());
        if (bytes > kDeviceMemory - g_device_bytes) return nullptr;
    }
    void* p = nullptr;
    if (posix_memalign(&p, emu::kDeviceAlign, bytes ? bytes : 1) != 0) return nullptr;
    std::memset(p, 0xFF, bytes);
    std::lock_guard<std::mutex> lock(alloc_mutex());
    allocations()[reinterpret_cast<uintptr_t>(p)] = {bytes, device};
    if (device) g_device_bytes += bytes;
    return p;
}

cudaError_t release(void* p, bool device) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lock(alloc_mutex());
    auto it = allocations().find(reinterpret_cast<uintptr_t>(p));
    if (it == allocations().end() || it->second.device != device) return cudaErrorInvalidValue;
    if (device) g_device_bytes -= it->second.bytes;
    allocations().erase(it);
    std::free(p);
    return cudaSuccess;
}

// Whether [p, p+bytes) lies inside one device allocation.
bool on_device(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(alloc_mutex());
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = allocations().upper_bound(a);
    if (it == allocations().begin()) return false;
    --it;
    return it->second.device && a + bytes <= it->first + it->second.bytes;
}

}  // namespace

bool emu::kernel_may_access(const void* p) {
    if (!p) return true;
    std::lock_guard<std::mutex> lock(alloc_mutex());
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = allocations().upper_bound(a);
    if (it == allocations().begin()) return false;
    --it;
    return a <= it->first + it->second.bytes;  // one past the end: the start of an empty slice
}

const char* emu::launch_site(const char* file, int line) {
    static std::mutex m;
    static std::set<std::string> sites;  // nodes never move: the pointers stay valid
    std::lock_guard<std::mutex> lock(m);
    return sites.insert(std::string(file) + ":" + std::to_string(line)).first->c_str();
}

bool emu::in_allocation(const void* p, size_t bytes) {
    if (bytes == 0) return true;
    std::lock_guard<std::mutex> lock(alloc_mutex());
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = allocations().upper_bound(a);
    if (it == allocations().begin()) return false;
    --it;
    return a + bytes <= it->first + it->second.bytes;
}

void emu::refuse_launch(const char* kernel, size_t arg, const void* p) {
    std::fprintf(stderr,
                 "cuda-emu: kernel argument %zu is %p, which is not in memory from cudaMalloc or cudaMallocHost "
                 "(a GPU faults on it: cudaErrorIllegalAddress)\n  in %s\n",
                 arg + 1, p, kernel);
    g_last_error = cudaErrorIllegalAddress;
}

namespace {

cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess) emu::g_last_error = e;
    return e;
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    const bool dst_dev = on_device(dst, bytes), src_dev = on_device(src, bytes);
    bool ok = true;
    switch (kind) {
        case cudaMemcpyHostToDevice:
            ok = dst_dev && !src_dev;
            break;
        case cudaMemcpyDeviceToHost:
            ok = src_dev && !dst_dev;
            break;
        case cudaMemcpyDeviceToDevice:
            ok = src_dev && dst_dev;
            break;
        case cudaMemcpyHostToHost:
            ok = !src_dev && !dst_dev;
            break;
        default:
            break;
    }
    if (!ok) {
        std::fprintf(stderr, "cuda-emu: cudaMemcpy of %zu bytes, kind %d, from %s to %s memory\n", bytes, (int)kind,
                     src_dev ? "device" : "host", dst_dev ? "device" : "host");
        return set_error(cudaErrorInvalidValue);
    }
    // cudaMemcpy between overlapping ranges is undefined on a GPU (its copy engines go in no promised order):
    // refused here, where a memmove would make it look right.
    const uintptr_t d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
    if (d < s + bytes && s < d + bytes) {
        std::fprintf(stderr, "cuda-emu: cudaMemcpy of %zu bytes between overlapping ranges\n", bytes);
        return set_error(cudaErrorInvalidValue);
    }
    std::memcpy(dst, src, bytes);
    return cudaSuccess;
}

struct Stream {
    int priority = 0;
};
struct Event {
    unsigned flags = 0;
};

}  // namespace

extern "C" {

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = emu::g_last_error;
    emu::g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return emu::g_last_error; }

}  // extern "C"

namespace {
struct ErrorText {
    cudaError_t code;
    const char* name;
    const char* text;
};
// The errors the emulator returns; anything else is reported as unknown.
constexpr ErrorText kErrors[] = {
    {cudaSuccess, "cudaSuccess", "no error (cuda-emu)"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument (cuda-emu)"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory (cuda-emu)"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument (cuda-emu)"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle (cuda-emu)"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal (cuda-emu)"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version (cuda-emu)"},
};
const ErrorText& error_text(cudaError_t e) {
    static constexpr ErrorText unknown{cudaErrorUnknown, "cudaErrorUnknown", "unknown error (cuda-emu)"};
    for (const ErrorText& t : kErrors)
        if (t.code == e) return t;
    return unknown;
}
}  // namespace

extern "C" {

const char* cudaGetErrorString(cudaError_t e) { return error_text(e).text; }
const char* cudaGetErrorName(cudaError_t e) { return error_text(e).name; }

// CUDA_EMU_DRIVER=old: what a machine whose driver is older than the toolkit answers (tests of that message).
cudaError_t cudaGetDeviceCount(int* count) {
    const char* driver = std::getenv("CUDA_EMU_DRIVER");
    *count = driver && std::string(driver) == "old" ? 0 : 1;
    if (!*count) return set_error(cudaErrorInsufficientDriver);
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    switch (attr) {
        case cudaDevAttrMultiProcessorCount:
            *value = 132;
            return cudaSuccess;
        case cudaDevAttrComputeCapabilityMajor:
            *value = 9;
            return cudaSuccess;
        case cudaDevAttrComputeCapabilityMinor:
            *value = 0;
            return cudaSuccess;
        case cudaDevAttrMaxThreadsPerBlock:
            *value = 1024;
            return cudaSuccess;
        case cudaDevAttrMaxSharedMemoryPerBlock:
            *value = 48 << 10;
            return cudaSuccess;
        case cudaDevAttrWarpSize:
            *value = 32;
            return cudaSuccess;
        default:
            return set_error(cudaErrorInvalidValue);
    }
}

cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> lock(alloc_mutex());
    *total = kDeviceMemory;
    *free_bytes = kDeviceMemory - g_device_bytes;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
    *p = allocate(bytes, true);
    return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFree(void* p) { return set_error(release(p, true)); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMallocHost(void** p, size_t bytes) {
    *p = allocate(bytes, false);
    return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) { return set_error(release(p, false)); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind) {
    return copy(dst, src, bytes, kind);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t) {
    return copy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    if (bytes && !on_device(p, bytes)) return set_error(cudaErrorInvalidValue);
    std::memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) { return cudaMemset(p, value, bytes); }

cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned int, int priority) {
    *s = reinterpret_cast<cudaStream_t>(new Stream{priority});
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithPriority(s, 0, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
    return cudaStreamCreateWithPriority(s, flags, 0);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    delete reinterpret_cast<Stream*>(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaLaunchHostFunc(cudaStream_t, cudaHostFn_t fn, void* data) {
    fn(data);  // the stream is synchronous: its work so far is done
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int flags) {
    *e = reinterpret_cast<cudaEvent_t>(new Event{flags});
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete reinterpret_cast<Event*>(e);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
    *ms = 0.0f;
    return cudaSuccess;
}

}  // extern "C"
