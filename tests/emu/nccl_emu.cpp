// Host stand-in for libnccl in the CPU emulator build: the functions train/dist_nccl.cpp calls, defined against
// NVIDIA's nccl.h, for a world of exactly one rank. Buffers are host memory and streams are synchronous, so a
// collective is a copy (or nothing, in place) that is finished when the call returns.
//
// One rank is enough to run the NCCL code path of train/dist_nccl.cpp end to end (TUNE_NCCL_ONE_RANK), and
// NCCL's one-rank results are exact: every reduction (sum, prod, max, min, avg) of one contribution is that
// contribution. More ranks would need real peers, so ncclCommInitRank refuses them with ncclInvalidArgument and
// says why in ncclGetLastError.
//
// Where a caller bug would hang or corrupt a real run, the mock fails instead:
//   - group semantics: between ncclGroupStart and ncclGroupEnd nothing runs; the calls run at the outermost
//     ncclGroupEnd, so code that reads a result before ending the group sees stale data, as it would on a GPU;
//   - send/receive: a rank may send to itself, but only inside a group where a matching ncclRecv (same count and
//     type, in order) completes it; alone it would block forever on a GPU, here it is ncclInvalidUsage;
//   - arguments are checked as NCCL does (null communicator, bad type or op, root or peer outside the world,
//     null buffers): ncclInvalidArgument with a message in ncclGetLastError.
#include <nccl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

// nccl.h leaves the communicator incomplete; completing it here keeps ncclComm_t typed without casts.
struct ncclComm {
    int rank = 0;
    int nranks = 1;
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
    bool is_send;
    const void* send;  // ncclSend's buffer
    void* recv;        // ncclRecv's buffer
    size_t count;
    ncclDataType_t type;
};
thread_local std::vector<PointToPoint> group_p2p;

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

ncclResult_t check_buffers(const char* what, const void* send, const void* recv, size_t count) {
    if (count > 0 && (!send || !recv))
        return fail(ncclInvalidArgument, std::string(what) + ": NULL buffer with count " + std::to_string(count));
    return ncclSuccess;
}

ncclResult_t check_rank(const char* what, const char* role, int r, ncclComm_t comm) {
    if (r < 0 || r >= comm->nranks)
        return fail(ncclInvalidArgument, std::string(what) + ": " + role + " " + std::to_string(r) +
                                             " is outside the world of " + std::to_string(comm->nranks));
    return ncclSuccess;
}

// Runs op now, or at the outermost ncclGroupEnd when inside a group.
ncclResult_t enqueue(std::function<void()> op) {
    if (group_depth > 0)
        group_ops.push_back(std::move(op));
    else
        op();
    return ncclSuccess;
}

// The one rank's contribution is the whole result: copy it unless the call is in place.
ncclResult_t copy_op(const void* send, void* recv, size_t bytes) {
    if (send == recv || bytes == 0) return ncclSuccess;
    return enqueue([send, recv, bytes] { std::memmove(recv, send, bytes); });
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
    static_assert(sizeof kIdMagic + 2 * sizeof(int32_t) <= NCCL_UNIQUE_ID_BYTES, "id too small");
    std::memset(id, 0, sizeof *id);
    std::memcpy(id->internal, kIdMagic, sizeof kIdMagic);
    static int32_t serial = 0;
    const int32_t pid = (int32_t)getpid(), n = ++serial;
    std::memcpy(id->internal + sizeof kIdMagic, &pid, sizeof pid);
    std::memcpy(id->internal + sizeof kIdMagic + sizeof pid, &n, sizeof n);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = nullptr;
    if (nranks != 1)
        return fail(ncclInvalidArgument,
                    "ncclCommInitRank: the CPU emulator's NCCL supports exactly one rank, got nranks=" +
                        std::to_string(nranks));
    if (rank != 0)
        return fail(ncclInvalidArgument,
                    "ncclCommInitRank: rank " + std::to_string(rank) + " is outside the world of 1");
    if (std::memcmp(id.internal, kIdMagic, sizeof kIdMagic) != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
    *comm = new ncclComm{rank, nranks};
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    delete comm;  // NULL is allowed, as in NCCL
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
    delete comm;  // nothing is ever in flight: every call completed before it returned
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
    std::vector<PointToPoint> p2p;
    p2p.swap(group_p2p);
    ncclResult_t err = group_error;
    group_error = ncclSuccess;
    if (err != ncclSuccess) return err;  // an argument error inside the group: NCCL runs none of it
    // Pair the k-th send to self with the k-th receive from self, as NCCL matches point-to-point operations
    // between a pair of ranks in the order they were issued.
    std::vector<const PointToPoint*> sends, recvs;
    for (const PointToPoint& op : p2p) (op.is_send ? sends : recvs).push_back(&op);
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
    for (auto& op : ops) op();
    for (size_t i = 0; i < sends.size(); i++)
        if (sends[i]->count && sends[i]->send != recvs[i]->recv)
            std::memmove(recvs[i]->recv, sends[i]->send, sends[i]->count * type_size(sends[i]->type));
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclAllReduce", comm, datatype)) != ncclSuccess ||
        (r = check_op("ncclAllReduce", op)) != ncclSuccess ||
        (r = check_buffers("ncclAllReduce", sendbuff, recvbuff, count)) != ncclSuccess)
        return r;
    return copy_op(sendbuff, recvbuff, count * type_size(datatype));
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclReduceScatter", comm, datatype)) != ncclSuccess ||
        (r = check_op("ncclReduceScatter", op)) != ncclSuccess ||
        (r = check_buffers("ncclReduceScatter", sendbuff, recvbuff, recvcount)) != ncclSuccess)
        return r;
    // Rank r receives piece r of the send buffer; in place means recvbuff == sendbuff + r * recvcount.
    const size_t es = type_size(datatype);
    return copy_op(static_cast<const char*>(sendbuff) + (size_t)comm->rank * recvcount * es, recvbuff, recvcount * es);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclAllGather", comm, datatype)) != ncclSuccess ||
        (r = check_buffers("ncclAllGather", sendbuff, recvbuff, sendcount)) != ncclSuccess)
        return r;
    // Rank r's contribution lands at piece r; in place means sendbuff == recvbuff + r * sendcount.
    const size_t es = type_size(datatype);
    return copy_op(sendbuff, static_cast<char*>(recvbuff) + (size_t)comm->rank * sendcount * es, sendcount * es);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclBroadcast", comm, datatype)) != ncclSuccess ||
        (r = check_rank("ncclBroadcast", "root", root, comm)) != ncclSuccess ||
        (r = check_buffers("ncclBroadcast", sendbuff, recvbuff, count)) != ncclSuccess)
        return r;
    return copy_op(sendbuff, recvbuff, count * type_size(datatype));
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclReduce", comm, datatype)) != ncclSuccess ||
        (r = check_op("ncclReduce", op)) != ncclSuccess ||
        (r = check_rank("ncclReduce", "root", root, comm)) != ncclSuccess ||
        (r = check_buffers("ncclReduce", sendbuff, recvbuff, count)) != ncclSuccess)
        return r;
    return copy_op(sendbuff, recvbuff, count * type_size(datatype));
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclSend", comm, datatype)) != ncclSuccess ||
        (r = check_rank("ncclSend", "peer", peer, comm)) != ncclSuccess ||
        (r = check_buffers("ncclSend", sendbuff, sendbuff, count)) != ncclSuccess)
        return r;
    if (group_depth == 0)
        return fail(ncclInvalidUsage, "ncclSend to self outside a group: no ncclRecv can match it (a GPU would hang)");
    group_p2p.push_back({comm, true, sendbuff, nullptr, count, datatype});
    return ncclSuccess;
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    (void)stream;
    ncclResult_t r;
    if ((r = check_common("ncclRecv", comm, datatype)) != ncclSuccess ||
        (r = check_rank("ncclRecv", "peer", peer, comm)) != ncclSuccess ||
        (r = check_buffers("ncclRecv", recvbuff, recvbuff, count)) != ncclSuccess)
        return r;
    if (group_depth == 0)
        return fail(ncclInvalidUsage,
                    "ncclRecv from self outside a group: no ncclSend can match it (a GPU would hang)");
    group_p2p.push_back({comm, false, nullptr, recvbuff, count, datatype});
    return ncclSuccess;
}

}  // extern "C"
