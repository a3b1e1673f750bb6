// The CUDA emulator's runtime: kernel launches on fibers (see tests/emu/cuda_emu.h for the model) and the
// part of the CUDA runtime API the project calls, defined on host memory.
//
// Device memory is host memory from an aligned allocation, filled with 0xFF bytes (a NaN in every float
// type) so a read of memory nobody wrote shows up in a parity test, as compute-sanitizer's initcheck would.
// Every allocation is recorded, so copies check that their device side really is device memory, and
// cudaFree of anything else fails. Streams are queues that run when the host waits (see "Streams" below).
// A launch with an impossible configuration (more than 1024 threads, a grid past the hardware limits,
// more than 48 KiB of dynamic shared memory) fails with the error a GPU gives, through cudaGetLastError.
// _longjmp between stacks is what the fibers do; the fortified longjmp would call that an error.
#undef _FORTIFY_SOURCE
#include "tests/emu/cuda_emu.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
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

namespace {
void run_grid_now(dim3 grid, dim3 block, size_t smem_bytes, const char* name, void (*body)(void*), void* ctx) {
    const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
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
}  // namespace

void run_grid(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream, const char* name, void (*body)(void*),
              std::shared_ptr<void> ctx) {
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
    enqueue(stream, [=] { run_grid_now(grid, block, smem_bytes, name, body, ctx.get()); });
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

// Whether a copy is legal (its kinds, no overlap); the copy itself runs on a stream.
cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
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
    return cudaSuccess;
}

// ---- Streams -------------------------------------------------------------------------------------------------
// Each stream is a queue of operations: work (a kernel, copy, GEMM, collective, host function), the record of an
// event, or a wait for one. Nothing runs when it is queued. A host call that waits (for a stream, an event, the
// device, a blocking copy) runs what it needs, and only that: the waited-for stream's operations up to now, plus
// every operation on other streams that those wait for through events, transitively. Among the streams whose
// next operation may run, the one with the higher priority goes first (reverse order: the lower; ties: the
// stream made first, reverse: last). So work on two streams without an event between them runs in whichever
// order exposes the missing wait, in one of the two test passes. One thread runs work at a time, with the lock
// released, so other host threads may queue and query meanwhile (a watchdog polling cudaEventQuery).
// The legacy default stream (null) is synchronised with every blocking stream (cudaStreamCreate's, not
// cudaStreamNonBlocking's) both ways, as CUDA's is.
struct EventState;
struct Op {
    enum class Kind { work, record, wait } kind = Kind::work;
    std::function<void()> work;
    std::shared_ptr<EventState> event;
    uint64_t gen = 0;  // record: the generation it completes; wait: the one it waits for
};
struct Stream {
    int priority = 0;
    bool blocking = true;    // synchronised with the legacy default stream
    bool destroyed = false;  // cudaStreamDestroy'd with work queued: deleted once that has run
    uint64_t serial = 0;     // creation order
    std::deque<Op> q;
    uint64_t done = 0;    // operations run (between runs: the absolute index of q.front())
    uint64_t queued = 0;  // operations ever queued
};
struct EventState {
    uint64_t latest = 0;                                        // the last generation recorded (0: never)
    std::map<uint64_t, std::pair<Stream*, uint64_t>> pending;   // generation -> (stream, index) not yet run
    uint64_t done = 0;                                          // the last generation that ran (0: none)
    std::chrono::steady_clock::time_point at;                   // when it ran: cudaEventElapsedTime's clock
};
struct Event {
    unsigned flags = 0;
    std::shared_ptr<EventState> st = std::make_shared<EventState>();
};

struct StreamTable {
    std::mutex mu;  // guards every stream and event state
    std::condition_variable cv;
    bool running = false;  // a thread is running queued work
    uint64_t serial = 0;
    Stream legacy;                 // the legacy default stream (null)
    std::vector<Stream*> all{&legacy};  // every live stream
};
// Never destroyed: a static destructor elsewhere may still free device memory at exit.
StreamTable& tab() {
    static StreamTable* t = new StreamTable;
    return *t;
}

bool deferred_streams() {
    static const bool d = [] {
        const char* e = std::getenv("CUDA_EMU_STREAMS");
        return !(e && std::string(e) == "sync");
    }();
    return d;
}

Stream* stream_of(cudaStream_t s) {
    if (!s || s == cudaStreamLegacy) return &tab().legacy;
    if (s == cudaStreamPerThread) {
        std::fprintf(stderr, "cuda-emu: cudaStreamPerThread is not emulated\n");
        std::abort();
    }
    return reinterpret_cast<Stream*>(s);
}

// Under tab().mu.
void push(Stream* s, Op op) {
    if (op.kind == Op::Kind::record) op.event->pending[op.gen] = {s, s->queued};
    s->q.push_back(std::move(op));
    s->queued++;
}
// s waits for everything queued on t so far (an internal event). Under tab().mu.
void order_after(Stream* s, Stream* t) {
    if (t->done == t->queued) return;
    auto ev = std::make_shared<EventState>();
    ev->latest = 1;
    push(t, Op{Op::Kind::record, {}, ev, 1});
    push(s, Op{Op::Kind::wait, {}, ev, 1});
}
// Under tab().mu: op on s, after the legacy stream's implicit ordering.
void queue_op(Stream* s, Op op) {
    if (s == &tab().legacy) {
        for (Stream* t : tab().all)
            if (t != s && t->blocking) order_after(s, t);
    } else if (s->blocking) {
        order_after(s, &tab().legacy);
    }
    push(s, std::move(op));
}

bool runnable(const Op& op) { return op.kind != Op::Kind::wait || !op.event->pending.count(op.gen); }

// Runs queued operations until stream s has taken `need[s]` off its queue for every s in `need` (a wait adds what
// it waits for). Takes the lock.
void run_until(std::map<Stream*, uint64_t> need) {
    std::unique_lock<std::mutex> lock(tab().mu);
    tab().cv.wait(lock, [] { return !tab().running; });
    tab().running = true;
    const bool rev = emu::reverse_flag();
    // Close `need` over the waits it includes, to a fixed point (each wait names a record queued before it).
    for (bool grew = true; grew;) {
        grew = false;
        for (auto& [s, upto] : need)
            for (uint64_t i = s->done; i < upto && i < s->queued; i++) {
                const Op& op = s->q[i - s->done];
                if (op.kind != Op::Kind::wait) continue;
                auto it = op.event->pending.find(op.gen);
                if (it == op.event->pending.end()) continue;
                uint64_t& n = need[it->second.first];
                if (n < it->second.second + 1) {
                    n = it->second.second + 1;
                    grew = true;
                }
            }
    }
    for (;;) {
        Stream* pick = nullptr;
        bool left = false;
        for (auto& [s, upto] : need) {
            if (s->done >= upto || s->done >= s->queued) continue;
            left = true;
            if (!runnable(s->q.front())) continue;
            if (!pick) {
                pick = s;
                continue;
            }
            const bool higher = rev ? s->priority > pick->priority : s->priority < pick->priority;
            const bool tie = s->priority == pick->priority && (rev ? s->serial > pick->serial : s->serial < pick->serial);
            if (higher || tie) pick = s;
        }
        if (!left) break;
        if (!pick) {
            std::fprintf(stderr, "cuda-emu: streams wait for each other's events in a cycle\n");
            std::abort();
        }
        Op op = std::move(pick->q.front());
        pick->q.pop_front();
        if (op.kind == Op::Kind::record) {
            op.event->pending.erase(op.gen);
            op.event->done = op.gen;
            op.event->at = std::chrono::steady_clock::now();
        }
        if (op.kind == Op::Kind::work) {
            lock.unlock();
            try {
                op.work();
            } catch (const std::exception& e) {  // nothing on a GPU throws: a stand-in's bug
                std::fprintf(stderr, "cuda-emu: queued work threw: %s\n", e.what());
                std::abort();
            }
            op.work = nullptr;  // what it holds (a kernel's arguments) goes before the lock is taken again
            lock.lock();
        }
        pick->done++;  // after the work: cudaStreamQuery says not ready while it runs
    }
    // Streams destroyed with work queued go once it has run (CUDA lets cudaStreamDestroy return at once).
    auto& all = tab().all;
    for (auto it = all.begin(); it != all.end();) {
        if ((*it)->destroyed && (*it)->done == (*it)->queued) {
            delete *it;
            it = all.erase(it);
        } else {
            ++it;
        }
    }
    tab().running = false;
    lock.unlock();
    tab().cv.notify_all();
}

void run_stream(Stream* s) {
    uint64_t upto;
    {
        std::lock_guard<std::mutex> lock(tab().mu);
        upto = s->queued;
    }
    run_until({{s, upto}});
}

void run_everything() {
    std::map<Stream*, uint64_t> need;
    {
        std::lock_guard<std::mutex> lock(tab().mu);
        for (Stream* s : tab().all) need[s] = s->queued;
    }
    run_until(std::move(need));
}

void queue_work(cudaStream_t stream, std::function<void()> work) {
    Stream* s = stream_of(stream);
    {
        std::lock_guard<std::mutex> lock(tab().mu);
        queue_op(s, Op{Op::Kind::work, std::move(work), nullptr, 0});
    }
    if (!deferred_streams()) run_everything();
}

// Whether p is page-locked host memory (cudaMallocHost), which a queued copy reads or writes when it runs.
bool pinned(const void* p, size_t bytes) { return emu::in_allocation(p, bytes) && !on_device(p, bytes); }

// `blocking`: cudaMemcpy, which returns once the copy is done, except from device to device.
cudaError_t queue_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                       bool blocking) {
    if (kind == cudaMemcpyDefault)  // unified addressing: the pointers say which way
        kind = on_device(src, bytes) ? (on_device(dst, bytes) ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                                     : (on_device(dst, bytes) ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
    const cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess || bytes == 0) return e;
    if (kind == cudaMemcpyHostToDevice && !pinned(src, bytes)) {
        // Pageable source: the driver stages it before returning, so the caller may reuse it at once.
        auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                                    static_cast<const unsigned char*>(src) + bytes);
        queue_work(stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
    } else {
        queue_work(stream, [dst, src, bytes] { std::memcpy(dst, src, bytes); });
    }
    // Into pageable memory the copy returns only once it is done (CUDA's "synchronous for pageable memory").
    const bool wait = blocking ? kind != cudaMemcpyDeviceToDevice
                               : kind == cudaMemcpyHostToHost || (kind == cudaMemcpyDeviceToHost && !pinned(dst, bytes));
    if (wait) run_stream(stream_of(stream));
    return cudaSuccess;
}

}  // namespace

void emu::enqueue(cudaStream_t stream, std::function<void()> work) { queue_work(stream, std::move(work)); }

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
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready (cuda-emu)"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered (cuda-emu)"},
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
cudaError_t cudaDeviceSynchronize(void) {
    run_everything();
    return cudaSuccess;
}

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
cudaError_t cudaFree(void* p) {
    run_everything();  // cudaFree synchronises the device: queued work may still use the memory
    return set_error(release(p, true));
}
// Stream-ordered: the memory goes when the stream reaches the call, so work on another stream that still uses it
// without an event between them reads freed memory (AddressSanitizer's build reports it).
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
    if (!p) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(alloc_mutex());
        auto it = allocations().find(reinterpret_cast<uintptr_t>(p));
        if (it == allocations().end() || !it->second.device) return set_error(cudaErrorInvalidValue);
    }
    queue_work(s, [p] { release(p, true); });
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
    *p = allocate(bytes, false);
    return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) {
    run_everything();  // as cudaFree: a queued copy may still read or write it
    return set_error(release(p, false));
}

// On the legacy default stream, and the host waits for it.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind) {
    return queue_copy(dst, src, bytes, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s) {
    return queue_copy(dst, src, bytes, kind, s, false);
}
// Asynchronous for device memory, on the legacy default stream.
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
    if (bytes && !on_device(p, bytes)) return set_error(cudaErrorInvalidValue);
    if (bytes) queue_work(s, [p, value, bytes] { std::memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned int flags, int priority) {
    auto* st = new Stream;
    st->priority = priority;
    st->blocking = !(flags & cudaStreamNonBlocking);
    std::lock_guard<std::mutex> lock(tab().mu);
    st->serial = ++tab().serial;
    tab().all.push_back(st);
    *s = reinterpret_cast<cudaStream_t>(st);
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithPriority(s, 0, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
    return cudaStreamCreateWithPriority(s, flags, 0);
}
// Returns at once; work still queued runs when a wait needs it, and the stream goes after that (run_until).
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s || s == cudaStreamLegacy) return set_error(cudaErrorInvalidResourceHandle);
    Stream* st = stream_of(s);
    std::lock_guard<std::mutex> lock(tab().mu);
    if (st->done < st->queued) {
        st->destroyed = true;
        return cudaSuccess;
    }
    tab().all.erase(std::find(tab().all.begin(), tab().all.end(), st));
    delete st;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    run_stream(stream_of(s));
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
    std::lock_guard<std::mutex> lock(tab().mu);
    const Stream* st = stream_of(s);
    return st->done == st->queued ? cudaSuccess : cudaErrorNotReady;
}
// Waits for the event's latest record at the time of the call; an event never recorded, or done, waits for nothing.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    const auto& ev = reinterpret_cast<Event*>(e)->st;
    std::lock_guard<std::mutex> lock(tab().mu);
    if (ev->pending.count(ev->latest)) queue_op(stream_of(s), Op{Op::Kind::wait, {}, ev, ev->latest});
    return cudaSuccess;
}
cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void* data) {
    queue_work(s, [fn, data] { fn(data); });
    return cudaSuccess;
}

namespace {
std::atomic<long> live_events{0};  // created and not destroyed: cuda_emu_live_events()
}
// For tests that check a piece of code leaves no event behind (declared weak there: no such symbol on a GPU).
extern "C" long cuda_emu_live_events() { return live_events.load(); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int flags) {
    auto* ev = new Event;
    ev->flags = flags;
    *e = reinterpret_cast<cudaEvent_t>(ev);
    live_events++;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
// Queued records and waits keep the event's state alive.
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (e) live_events--;
    delete reinterpret_cast<Event*>(e);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    const auto& ev = reinterpret_cast<Event*>(e)->st;
    {
        std::lock_guard<std::mutex> lock(tab().mu);
        queue_op(stream_of(s), Op{Op::Kind::record, {}, ev, ++ev->latest});
    }
    if (!deferred_streams()) run_everything();
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    const auto& ev = reinterpret_cast<Event*>(e)->st;
    std::lock_guard<std::mutex> lock(tab().mu);
    return ev->pending.count(ev->latest) ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    const auto& ev = reinterpret_cast<Event*>(e)->st;
    std::map<Stream*, uint64_t> need;
    {
        std::lock_guard<std::mutex> lock(tab().mu);
        auto it = ev->pending.find(ev->latest);
        if (it == ev->pending.end()) return cudaSuccess;
        need[it->second.first] = it->second.second + 1;
    }
    run_until(std::move(need));
    return cudaSuccess;
}
// The host time between the two records' runs (the emulator's kernels run on the host), with CUDA's errors: an
// event never recorded, or created without timing, is an invalid handle; one whose latest record has not run yet
// is not ready.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
    if (!start || !stop) return set_error(cudaErrorInvalidResourceHandle);
    const Event* a = reinterpret_cast<Event*>(start);
    const Event* b = reinterpret_cast<Event*>(stop);
    if ((a->flags | b->flags) & cudaEventDisableTiming) return set_error(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> lock(tab().mu);
    if (a->st->latest == 0 || b->st->latest == 0) return set_error(cudaErrorInvalidResourceHandle);
    if (a->st->done != a->st->latest || b->st->done != b->st->latest) return cudaErrorNotReady;  // as cudaEventQuery
    *ms = std::chrono::duration<float, std::milli>(b->st->at - a->st->at).count();
    return cudaSuccess;
}

}  // extern "C"
