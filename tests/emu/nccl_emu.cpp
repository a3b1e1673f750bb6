// Host stand-in for libnccl in the CPU emulator build: the functions train/dist_nccl.cpp calls, defined against
// NVIDIA's nccl.h. Buffers are host memory. A call checks its arguments at once and queues the collective on its
// stream (the emulator's streams: tests/emu/cuda_emu.h), so it runs, and meets its peers, when the host waits.
//
// One rank (TUNE_NCCL_ONE_RANK) runs the NCCL code path of train/dist_nccl.cpp end to end, and NCCL's one-rank
// results are exact: every reduction (sum, prod, max, min, avg) of one contribution is that contribution.
//
// Several ranks are processes on this host (up to kMaxRanks) that meet in a shared-memory file named by the
// unique id. A collective goes in rounds: every rank copies its part into its slot, all meet at a barrier,
// each reads what it needs (sums in rank order, in double, so every rank gets the same bits), and all meet
// again before the slots are reused. Point-to-point messages go through one mailbox per (sender, receiver);
// within a group a rank's sends run before its receives (enough for gather_host: the root only receives).
// Like NCCL, a rank that never arrives leaves the others waiting for ever, here in the host's wait for the stream
// (where the collective runs): the watchdog of train/dist_nccl.cpp and its roll call must end the job, as on GPUs.
// A collective runs only when its rank's host waits for it, so host code that waits for another rank by some
// other channel while a collective is still queued would hang here and not on GPUs (the project has none).
// Only ncclSum reduces across ranks.
//
// Where a caller bug would hang or corrupt a real run, the mock fails instead:
//   - group semantics: between ncclGroupStart and ncclGroupEnd nothing is queued; the outermost ncclGroupEnd
//     queues the calls as one piece of work, so code that reads a result before ending the group sees stale
//     data, as it would on a GPU; the calls of one group must name one stream (ncclInvalidUsage otherwise: NCCL
//     would order the group after every stream it names, which the emulator does not do);
//   - send/receive: a rank may send to itself, but only inside a group where a matching ncclRecv (same count and
//     type, in order) completes it; alone it would block forever on a GPU, here it is ncclInvalidUsage;
//   - arguments are checked as NCCL does (null communicator, bad type or op, root or peer outside the world,
//     null buffers): ncclInvalidArgument with a message in ncclGetLastError.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <fcntl.h>
#include <nccl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace emu {
bool in_allocation(const void* p, size_t bytes);                  // tests/emu/cuda_emu_runtime.cpp
void enqueue(cudaStream_t stream, std::function<void()> work);  // tests/emu/cuda_emu_runtime.cpp
}

namespace {

constexpr int kMaxRanks = 8;
constexpr size_t kSlot = (size_t)2 << 20;  // bytes each rank contributes per round
constexpr size_t kBox = (size_t)256 << 10;  // bytes per point-to-point mailbox

// The head of the shared file; the slots and the mailboxes follow it.
struct Shared {
    pthread_mutex_t mu;  // process-shared, as is cv: one lock for everything, the emulator is not fast
    pthread_cond_t cv;
    int nranks;
    int joined;
    int arrived;          // the barrier's count and generation
    uint64_t generation;
    size_t box_bytes[kMaxRanks][kMaxRanks];  // [sender][receiver]; 0 with box_full: an empty message
    int box_full[kMaxRanks][kMaxRanks];
};
constexpr size_t kHead = (sizeof(Shared) + 4095) / 4096 * 4096;

size_t map_bytes(int nranks) { return kHead + (size_t)nranks * kSlot + (size_t)nranks * nranks * kBox; }

}  // namespace

// nccl.h leaves the communicator incomplete; completing it here keeps ncclComm_t typed without casts.
struct ncclComm {
    int rank = 0;
    int nranks = 1;
    Shared* sh = nullptr;  // several ranks: the shared file, mapped
    char* slot(int r) const { return reinterpret_cast<char*>(sh) + kHead + (size_t)r * kSlot; }
    char* box(int from, int to) const {
        return reinterpret_cast<char*>(sh) + kHead + (size_t)nranks * kSlot + ((size_t)from * nranks + to) * kBox;
    }
};

namespace {

// Marks ids made by ncclGetUniqueId, so a communicator built from an id nobody generated (a rank that never
// received rank 0's id) fails as it would fail to connect.
constexpr char kIdMagic[] = "tune-nccl-emu-id";

// NCCL keeps the last error message and the group state per thread.
thread_local std::string last_error;
thread_local int group_depth = 0;
thread_local ncclResult_t group_error = ncclSuccess;
thread_local std::vector<std::function<void()>> group_ops;

struct PointToPoint {
    ncclComm_t comm;
    int peer;
    bool is_send;
    const void* send;  // ncclSend's buffer
    void* recv;        // ncclRecv's buffer
    size_t count;
    ncclDataType_t type;
};
thread_local std::vector<PointToPoint> group_p2p;
thread_local cudaStream_t group_stream = nullptr;

ncclResult_t fail(ncclResult_t r, const std::string& why) {
    last_error = why;
    if (group_depth > 0 && group_error == ncclSuccess) group_error = r;
    return r;
}

size_t type_size(ncclDataType_t t) {
    switch (t) {
        case ncclInt8:
        case ncclUint8:
        case ncclFloat8e4m3:
        case ncclFloat8e5m2: return 1;
        case ncclFloat16:
        case ncclBfloat16: return 2;
        case ncclInt32:
        case ncclUint32:
        case ncclFloat32: return 4;
        case ncclInt64:
        case ncclUint64:
        case ncclFloat64: return 8;
        default: return 0;
    }
}

// The checks every call makes; `what` names the call in the message.
ncclResult_t check_common(const char* what, ncclComm_t comm, ncclDataType_t type) {
    if (!comm) return fail(ncclInvalidArgument, std::string(what) + ": comm is NULL");
    if (type_size(type) == 0)
        return fail(ncclInvalidArgument, std::string(what) + ": invalid datatype " + std::to_string((int)type));
    return ncclSuccess;
}

ncclResult_t check_op(const char* what, ncclRedOp_t op) {
    // No ncclRedOpCreatePreMulSum here, so only the built-in operations exist.
    if ((int)op < 0 || (int)op >= (int)ncclNumOps)
        return fail(ncclInvalidArgument,
                    std::string(what) + ": invalid reduction operation " + std::to_string((int)op));
    return ncclSuccess;
}

// Null buffers with a count, and (as NCCL's own pointer check does) buffers that are not device memory: each
// buffer of send_bytes / recv_bytes must lie inside one cudaMalloc'd (or pinned host) allocation. A buffer of 0
// bytes is one this rank does not use (a broadcast's send buffer off the root, ncclSend's receive buffer).
ncclResult_t check_buffers(const char* what, const void* send, size_t send_bytes, const void* recv,
                           size_t recv_bytes) {
    for (auto [p, bytes, name] : {std::tuple<const void*, size_t, const char*>{send, send_bytes, "send"},
                                  std::tuple<const void*, size_t, const char*>{recv, recv_bytes, "receive"}}) {
        if (bytes == 0) continue;
        if (!p) return fail(ncclInvalidArgument, std::string(what) + ": NULL " + name + " buffer for " +
                                                     std::to_string(bytes) + " bytes");
        if (!emu::in_allocation(p, bytes))
            return fail(ncclInvalidArgument, std::string(what) + ": the " + name + " buffer's " +
                                                 std::to_string(bytes) + " bytes are not inside one device allocation");
    }
    return ncclSuccess;
}

// Send and receive buffers either the same bytes laid out as the call's in-place form, or disjoint.
ncclResult_t check_in_place(const char* what, const void* send, size_t send_bytes, const void* recv,
                            size_t recv_bytes, const void* in_place_send) {
    const uintptr_t s = reinterpret_cast<uintptr_t>(send), r = reinterpret_cast<uintptr_t>(recv);
    if (send == in_place_send || send_bytes == 0 || recv_bytes == 0) return ncclSuccess;
    if (s < r + recv_bytes && r < s + send_bytes)
        return fail(ncclInvalidArgument, std::string(what) + ": send and receive buffers overlap without being its "
                                                             "in-place form");
    return ncclSuccess;
}

ncclResult_t check_rank(const char* what, const char* role, int r, ncclComm_t comm) {
    if (r < 0 || r >= comm->nranks)
        return fail(ncclInvalidArgument, std::string(what) + ": " + role + " " + std::to_string(r) +
                                             " is outside the world of " + std::to_string(comm->nranks));
    return ncclSuccess;
}

// Queues op on its stream, or keeps it for the outermost ncclGroupEnd when inside a group (which queues the
// group's calls as one piece of work on the first call's stream).
ncclResult_t group_on(cudaStream_t stream) {
    if (group_ops.empty() && group_p2p.empty())
        group_stream = stream;
    else if (stream != group_stream)
        return fail(ncclInvalidUsage, "a group whose calls name two streams (not emulated)");
    return ncclSuccess;
}

ncclResult_t enqueue(cudaStream_t stream, std::function<void()> op) {
    if (group_depth > 0) {
        if (const ncclResult_t r = group_on(stream); r != ncclSuccess) return r;
        group_ops.push_back(std::move(op));
    } else {
        emu::enqueue(stream, std::move(op));
    }
    return ncclSuccess;
}

// The one rank's contribution is the whole result: copy it unless the call is in place.
ncclResult_t copy_op(cudaStream_t stream, const void* send, void* recv, size_t bytes) {
    if (send == recv || bytes == 0) return ncclSuccess;
    return enqueue(stream, [send, recv, bytes] { std::memmove(recv, send, bytes); });
}

// ---- several ranks ----

struct Locked {
    Shared* sh;
    explicit Locked(Shared* s) : sh(s) { pthread_mutex_lock(&sh->mu); }
    ~Locked() { pthread_mutex_unlock(&sh->mu); }
    void wait() { pthread_cond_wait(&sh->cv, &sh->mu); }
    void wake() { pthread_cond_broadcast(&sh->cv); }
};

void barrier(ncclComm_t c) {
    Locked l(c->sh);
    const uint64_t gen = c->sh->generation;
    if (++c->sh->arrived == c->nranks) {
        c->sh->arrived = 0;
        c->sh->generation++;
        l.wake();
        return;
    }
    while (c->sh->generation == gen) l.wait();
}

double load(const char* p, size_t i, ncclDataType_t t) {
    switch (t) {
        case ncclFloat32: return reinterpret_cast<const float*>(p)[i];
        case ncclFloat64: return reinterpret_cast<const double*>(p)[i];
        case ncclBfloat16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
        case ncclFloat16: return __half2float(reinterpret_cast<const __half*>(p)[i]);
        case ncclInt32: return reinterpret_cast<const int32_t*>(p)[i];
        case ncclUint32: return reinterpret_cast<const uint32_t*>(p)[i];
        case ncclInt64: return (double)reinterpret_cast<const int64_t*>(p)[i];
        case ncclUint64: return (double)reinterpret_cast<const uint64_t*>(p)[i];
        case ncclInt8: return reinterpret_cast<const int8_t*>(p)[i];
        default: return reinterpret_cast<const uint8_t*>(p)[i];
    }
}

void store(char* p, size_t i, ncclDataType_t t, double v) {
    switch (t) {
        case ncclFloat32: reinterpret_cast<float*>(p)[i] = (float)v; break;
        case ncclFloat64: reinterpret_cast<double*>(p)[i] = v; break;
        case ncclBfloat16: reinterpret_cast<__nv_bfloat16*>(p)[i] = __double2bfloat16(v); break;
        case ncclFloat16: reinterpret_cast<__half*>(p)[i] = __double2half(v); break;
        case ncclInt32: reinterpret_cast<int32_t*>(p)[i] = (int32_t)v; break;
        case ncclUint32: reinterpret_cast<uint32_t*>(p)[i] = (uint32_t)v; break;
        case ncclInt64: reinterpret_cast<int64_t*>(p)[i] = (int64_t)v; break;
        case ncclUint64: reinterpret_cast<uint64_t*>(p)[i] = (uint64_t)v; break;
        case ncclInt8: reinterpret_cast<int8_t*>(p)[i] = (int8_t)v; break;
        default: reinterpret_cast<uint8_t*>(p)[i] = (uint8_t)v; break;
    }
}

// out[i] = the sum over ranks of part r at offset `at` (bytes into each slot), in rank order.
void sum_slots(ncclComm_t c, size_t at, char* out, size_t n, ncclDataType_t t) {
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int r = 0; r < c->nranks; r++) s += load(c->slot(r) + at, i, t);
        store(out, i, t, s);
    }
}

// Rounds over `count` elements, at most `per_round` at a time: fill(off, n) puts this rank's part in its slot,
// take(off, n) reads the others' after the barrier.
template <class Fill, class Take>
void rounds(ncclComm_t c, size_t count, size_t per_round, Fill fill, Take take) {
    for (size_t off = 0; off < count; off += per_round) {
        const size_t n = std::min(per_round, count - off);
        fill(off, n);
        barrier(c);
        take(off, n);
        barrier(c);
    }
}

void send_to(ncclComm_t c, const char* p, size_t bytes, int peer) {
    size_t off = 0;
    do {
        const size_t n = std::min(kBox, bytes - off);
        Locked l(c->sh);
        while (c->sh->box_full[c->rank][peer]) l.wait();
        std::memcpy(c->box(c->rank, peer), p + off, n);
        c->sh->box_bytes[c->rank][peer] = n;
        c->sh->box_full[c->rank][peer] = 1;
        l.wake();
        off += n;
    } while (off < bytes);
}

void recv_from(ncclComm_t c, char* p, size_t bytes, int peer) {
    size_t off = 0;
    do {
        Locked l(c->sh);
        while (!c->sh->box_full[peer][c->rank]) l.wait();
        const size_t n = c->sh->box_bytes[peer][c->rank];
        if (off + n > bytes) {  // a GPU would corrupt memory or hang; here the caller's bug is named
            std::fprintf(stderr, "nccl emulator: rank %d received more from rank %d than its ncclRecv's %zu bytes\n",
                         c->rank, peer, bytes);
            std::abort();
        }
        std::memcpy(p + off, c->box(peer, c->rank), n);
        c->sh->box_full[peer][c->rank] = 0;
        l.wake();
        off += n;
    } while (off < bytes);
}

std::string shared_path(const ncclUniqueId& id) {
    char hex[2 * 24 + 1];
    for (int i = 0; i < 24; i++) std::snprintf(hex + 2 * i, 3, "%02x", (unsigned char)id.internal[sizeof kIdMagic + i]);
    return std::string(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") + "/tune-nccl-emu-" + hex;
}

// Rank 0 makes the file (whole, then renamed into place); the others wait for it. Then all wait until every
// rank has mapped it, and rank 0 unlinks it: nothing is left behind, whatever happens later.
ncclResult_t join_shared(ncclComm_t c, const ncclUniqueId& id) {
    const std::string path = shared_path(id);
    const size_t bytes = map_bytes(c->nranks);
    int fd = -1;
    if (c->rank == 0) {
        const std::string tmp = path + ".init";
        fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0 || ::ftruncate(fd, (off_t)bytes) != 0) {
            if (fd >= 0) ::close(fd);
            return fail(ncclSystemError, "ncclCommInitRank: cannot create " + tmp);
        }
    } else {
        while ((fd = ::open(path.c_str(), O_RDWR)) < 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) return fail(ncclSystemError, "ncclCommInitRank: cannot map " + path);
    c->sh = static_cast<Shared*>(m);
    if (c->rank == 0) {
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutex_init(&c->sh->mu, &ma);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
        pthread_cond_init(&c->sh->cv, &ca);
        c->sh->nranks = c->nranks;
        if (::rename((path + ".init").c_str(), path.c_str()) != 0)
            return fail(ncclSystemError, "ncclCommInitRank: cannot publish " + path);
    }
    if (c->sh->nranks != c->nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: nranks=" + std::to_string(c->nranks) +
                                             ", but rank 0 made a world of " + std::to_string(c->sh->nranks));
    {
        Locked l(c->sh);
        c->sh->joined++;
        l.wake();
        while (c->sh->joined < c->nranks) l.wait();
    }
    if (c->rank == 0) ::unlink(path.c_str());
    return ncclSuccess;
}

void leave_shared(ncclComm_t c) {
    if (c && c->sh) ::munmap(c->sh, map_bytes(c->nranks));
}

ncclResult_t check_sum(const char* what, ncclComm_t comm, ncclRedOp_t op) {
    if (comm->nranks > 1 && op != ncclSum)
        return fail(ncclInvalidArgument, std::string(what) + ": the emulator reduces across ranks with ncclSum only");
    return ncclSuccess;
}

}  // namespace

extern "C" {

const char* ncclGetErrorString(ncclResult_t result) {
    switch (result) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
        case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
        case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
        case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
        case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
        case ncclRemoteError: return "remote process exited or there was a network error";
        case ncclInProgress: return "NCCL operation in progress";
        default: return "unknown result code";
    }
}

const char* ncclGetLastError(ncclComm_t comm) {
    (void)comm;  // as in NCCL: the message is per thread, not per communicator
    return last_error.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    static_assert(sizeof kIdMagic + 24 <= NCCL_UNIQUE_ID_BYTES, "id too small");
    std::memset(id, 0, sizeof *id);
    std::memcpy(id->internal, kIdMagic, sizeof kIdMagic);
    // The process, a serial and 16 random bytes: the name of the shared file several ranks meet in.
    static int32_t serial = 0;
    const int32_t pid = (int32_t)getpid(), n = ++serial;
    std::memcpy(id->internal + sizeof kIdMagic, &pid, sizeof pid);
    std::memcpy(id->internal + sizeof kIdMagic + sizeof pid, &n, sizeof n);
    std::random_device rd;
    for (int i = 0; i < 4; i++) {
        const uint32_t r = rd();
        std::memcpy(id->internal + sizeof kIdMagic + 8 + 4 * i, &r, 4);
    }
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = nullptr;
    if (nranks < 1 || nranks > kMaxRanks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: the CPU emulator's NCCL runs 1 to " +
                                             std::to_string(kMaxRanks) + " ranks, got nranks=" + std::to_string(nranks));
    if (rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) +
                                             " is outside the world of " + std::to_string(nranks));
    if (std::memcmp(id.internal, kIdMagic, sizeof kIdMagic) != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
    ncclComm_t c = new ncclComm{rank, nranks};
    if (nranks > 1) {
        const ncclResult_t r = join_shared(c, id);
        if (r != ncclSuccess) {
            leave_shared(c);
            delete c;
            return r;
        }
    }
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    cudaDeviceSynchronize();  // as NCCL, queued collectives finish first: they hold the communicator
    leave_shared(comm);
    delete comm;  // NULL is allowed, as in NCCL
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
    // Called from another thread while this rank's main thread may be blocked in a collective that will never
    // finish; the caller exits right after, so the mapping stays for that thread to keep waiting on.
    (void)comm;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
    if (!comm || !asyncError) return fail(ncclInvalidArgument, "ncclCommGetAsyncError: NULL argument");
    *asyncError = ncclSuccess;  // no network, no peers: nothing can fail asynchronously
    return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
    if (group_depth++ == 0) group_error = ncclSuccess;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
    if (group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: no matching ncclGroupStart");
    if (--group_depth > 0) return ncclSuccess;
    std::vector<std::function<void()>> ops;
    ops.swap(group_ops);
    // Held by the queued work, which keeps pointers into it.
    auto p2p = std::make_shared<std::vector<PointToPoint>>();
    p2p->swap(group_p2p);
    ncclResult_t err = group_error;
    group_error = ncclSuccess;
    if (err != ncclSuccess) return err;  // an argument error inside the group: NCCL runs none of it
    // Pair the k-th send to self with the k-th receive from self, as NCCL matches point-to-point operations
    // between a pair of ranks in the order they were issued. Messages to other ranks go through mailboxes.
    std::vector<const PointToPoint*> sends, recvs, out, in;
    for (const PointToPoint& op : *p2p)
        (op.peer == op.comm->rank ? (op.is_send ? sends : recvs) : (op.is_send ? out : in)).push_back(&op);
    if (sends.size() != recvs.size()) {
        last_error = "ncclGroupEnd: " + std::to_string(sends.size()) + " ncclSend and " + std::to_string(recvs.size()) +
                     " ncclRecv to self do not pair up (a GPU would hang)";
        return ncclInvalidUsage;
    }
    for (size_t i = 0; i < sends.size(); i++) {
        if (sends[i]->comm != recvs[i]->comm || sends[i]->count != recvs[i]->count ||
            sends[i]->type != recvs[i]->type) {
            last_error = "ncclGroupEnd: send " + std::to_string(i) + " to self (count " +
                         std::to_string(sends[i]->count) + ") does not match receive " + std::to_string(i) +
                         " (count " + std::to_string(recvs[i]->count) + ")";
            return ncclInvalidUsage;
        }
    }
    if (ops.empty() && p2p->empty()) return ncclSuccess;
    // The group's calls as one piece of work.
    emu::enqueue(group_stream, [ops = std::move(ops), p2p, sends = std::move(sends), recvs = std::move(recvs),
                                out = std::move(out), in = std::move(in)] {
        for (auto& op : ops) op();
        for (const PointToPoint* op : out)
            send_to(op->comm, static_cast<const char*>(op->send), op->count * type_size(op->type), op->peer);
        for (const PointToPoint* op : in)
            recv_from(op->comm, static_cast<char*>(op->recv), op->count * type_size(op->type), op->peer);
        for (size_t i = 0; i < sends.size(); i++)
            if (sends[i]->count && sends[i]->send != recvs[i]->recv)
                std::memmove(recvs[i]->recv, sends[i]->send, sends[i]->count * type_size(sends[i]->type));
    });
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclAllReduce", comm, datatype)) != ncclSuccess ||
        (r = check_op("ncclAllReduce", op)) != ncclSuccess ||
        (r = check_sum("ncclAllReduce", comm, op)) != ncclSuccess ||
        (r = check_buffers("ncclAllReduce", sendbuff, count * type_size(datatype), recvbuff,
                           count * type_size(datatype))) != ncclSuccess ||
        (r = check_in_place("ncclAllReduce", sendbuff, count * type_size(datatype), recvbuff,
                            count * type_size(datatype), recvbuff)) != ncclSuccess)
        return r;
    if (comm->nranks == 1) return copy_op(stream, sendbuff, recvbuff, count * type_size(datatype));
    const size_t es = type_size(datatype);
    const char* in = static_cast<const char*>(sendbuff);
    char* out = static_cast<char*>(recvbuff);
    return enqueue(stream, [=] {
        rounds(comm, count, kSlot / es, [&](size_t off, size_t n) { std::memcpy(comm->slot(comm->rank), in + off * es, n * es); },
               [&](size_t off, size_t n) { sum_slots(comm, 0, out + off * es, n, datatype); });
    });
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclReduceScatter", comm, datatype)) != ncclSuccess ||
        (r = check_op("ncclReduceScatter", op)) != ncclSuccess ||
        (r = check_sum("ncclReduceScatter", comm, op)) != ncclSuccess ||
        (r = check_buffers("ncclReduceScatter", sendbuff, recvcount * comm->nranks * type_size(datatype), recvbuff,
                           recvcount * type_size(datatype))) != ncclSuccess ||
        (r = check_in_place("ncclReduceScatter", sendbuff, recvcount * comm->nranks * type_size(datatype), recvbuff,
                            recvcount * type_size(datatype),
                            static_cast<const char*>(recvbuff) -
                                (size_t)comm->rank * recvcount * type_size(datatype))) != ncclSuccess)
        return r;
    // Rank r receives piece r of the send buffer; in place means recvbuff == sendbuff + r * recvcount.
    const size_t es = type_size(datatype);
    if (comm->nranks == 1)
        return copy_op(stream, static_cast<const char*>(sendbuff) + (size_t)comm->rank * recvcount * es, recvbuff,
                       recvcount * es);
    const char* in = static_cast<const char*>(sendbuff);
    char* out = static_cast<char*>(recvbuff);
    const int W = comm->nranks;
    return enqueue(stream, [=] {
        rounds(comm, recvcount, kSlot / (es * W),
               [&](size_t off, size_t n) {  // every piece's elements [off, off + n), piece after piece
                   for (int p = 0; p < W; p++)
                       std::memcpy(comm->slot(comm->rank) + p * n * es, in + ((size_t)p * recvcount + off) * es, n * es);
               },
               [&](size_t off, size_t n) { sum_slots(comm, comm->rank * n * es, out + off * es, n, datatype); });
    });
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclAllGather", comm, datatype)) != ncclSuccess ||
        (r = check_buffers("ncclAllGather", sendbuff, sendcount * type_size(datatype), recvbuff,
                           sendcount * comm->nranks * type_size(datatype))) != ncclSuccess ||
        (r = check_in_place("ncclAllGather", sendbuff, sendcount * type_size(datatype), recvbuff,
                            sendcount * comm->nranks * type_size(datatype),
                            static_cast<const char*>(recvbuff) +
                                (size_t)comm->rank * sendcount * type_size(datatype))) != ncclSuccess)
        return r;
    // Rank r's contribution lands at piece r; in place means sendbuff == recvbuff + r * sendcount.
    const size_t es = type_size(datatype);
    if (comm->nranks == 1)
        return copy_op(stream, sendbuff, static_cast<char*>(recvbuff) + (size_t)comm->rank * sendcount * es, sendcount * es);
    const char* in = static_cast<const char*>(sendbuff);
    char* out = static_cast<char*>(recvbuff);
    return enqueue(stream, [=] {
        rounds(comm, sendcount, kSlot / es, [&](size_t off, size_t n) { std::memcpy(comm->slot(comm->rank), in + off * es, n * es); },
               [&](size_t off, size_t n) {
                   for (int q = 0; q < comm->nranks; q++)
                       std::memcpy(out + ((size_t)q * sendcount + off) * es, comm->slot(q), n * es);
               });
    });
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclBroadcast", comm, datatype)) != ncclSuccess ||
        (r = check_rank("ncclBroadcast", "root", root, comm)) != ncclSuccess ||
        (r = check_buffers("ncclBroadcast", sendbuff, comm->rank == root ? count * type_size(datatype) : 0, recvbuff,
                           count * type_size(datatype))) != ncclSuccess)
        return r;
    if (comm->nranks == 1) return copy_op(stream, sendbuff, recvbuff, count * type_size(datatype));
    const size_t es = type_size(datatype);
    const char* in = static_cast<const char*>(sendbuff);
    char* out = static_cast<char*>(recvbuff);
    return enqueue(stream, [=] {
        rounds(comm, count, kSlot / es,
               [&](size_t off, size_t n) {
                   if (comm->rank == root) std::memcpy(comm->slot(root), in + off * es, n * es);
               },
               [&](size_t off, size_t n) { std::memcpy(out + off * es, comm->slot(root), n * es); });
    });
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclReduce", comm, datatype)) != ncclSuccess ||
        (r = check_op("ncclReduce", op)) != ncclSuccess ||
        (r = check_rank("ncclReduce", "root", root, comm)) != ncclSuccess ||
        (r = check_sum("ncclReduce", comm, op)) != ncclSuccess ||
        (r = check_buffers("ncclReduce", sendbuff, count * type_size(datatype), recvbuff,
                           comm->rank == root ? count * type_size(datatype) : 0)) != ncclSuccess)
        return r;
    if (comm->nranks == 1) return copy_op(stream, sendbuff, recvbuff, count * type_size(datatype));
    const size_t es = type_size(datatype);
    const char* in = static_cast<const char*>(sendbuff);
    char* out = static_cast<char*>(recvbuff);
    return enqueue(stream, [=] {
        rounds(comm, count, kSlot / es, [&](size_t off, size_t n) { std::memcpy(comm->slot(comm->rank), in + off * es, n * es); },
               [&](size_t off, size_t n) {
                   if (comm->rank == root) sum_slots(comm, 0, out + off * es, n, datatype);
               });
    });
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclSend", comm, datatype)) != ncclSuccess ||
        (r = check_rank("ncclSend", "peer", peer, comm)) != ncclSuccess ||
        (r = check_buffers("ncclSend", sendbuff, count * type_size(datatype), nullptr, 0)) != ncclSuccess)
        return r;
    if (group_depth == 0 && peer == comm->rank)
        return fail(ncclInvalidUsage, "ncclSend to self outside a group: no ncclRecv can match it (a GPU would hang)");
    if (group_depth == 0) {
        const size_t bytes = count * type_size(datatype);
        emu::enqueue(stream, [=] { send_to(comm, static_cast<const char*>(sendbuff), bytes, peer); });
        return ncclSuccess;
    }
    if (const ncclResult_t g = group_on(stream); g != ncclSuccess) return g;
    group_p2p.push_back({comm, peer, true, sendbuff, nullptr, count, datatype});
    return ncclSuccess;
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    ncclResult_t r;
    if ((r = check_common("ncclRecv", comm, datatype)) != ncclSuccess ||
        (r = check_rank("ncclRecv", "peer", peer, comm)) != ncclSuccess ||
        (r = check_buffers("ncclRecv", nullptr, 0, recvbuff, count * type_size(datatype))) != ncclSuccess)
        return r;
    if (group_depth == 0 && peer == comm->rank)
        return fail(ncclInvalidUsage,
                    "ncclRecv from self outside a group: no ncclSend can match it (a GPU would hang)");
    if (group_depth == 0) {
        const size_t bytes = count * type_size(datatype);
        emu::enqueue(stream, [=] { recv_from(comm, static_cast<char*>(recvbuff), bytes, peer); });
        return ncclSuccess;
    }
    if (const ncclResult_t g = group_on(stream); g != ncclSuccess) return g;
    group_p2p.push_back({comm, peer, false, nullptr, recvbuff, count, datatype});
    return ncclSuccess;
}

}  // extern "C"
