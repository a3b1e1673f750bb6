// The NCCL communicator of the cuda backend.
//
// Streams: every collective on backend buffers is queued on the communicator's own stream after an event
// on the backend's stream, so a gradient bucket's all-reduce runs while backward computes the layers below
// it; join() makes the backend's stream wait for everything queued so far. Pieces of equal size use
// ncclReduceScatter / ncclAllGather; uneven ones (a bucket cut by the ZeRO partition) a group of ncclReduce /
// ncclBroadcast calls, one per owner, which NCCL runs together.
//
// Failures: a watchdog thread checks every pending collective (an event after it on the comm stream) and
// ncclCommGetAsyncError. A collective pending longer than the timeout, or an asynchronous NCCL error, prints
// "rank R: ..." naming the collective, aborts the communicator (so no kernel waits forever) and exits; under
// mpirun, mpirun then stops the other ranks. NCCL cannot say which peer failed to arrive, so with several
// ranks the roll call (train/roll_call.h) does: the message names the rank that never entered the
// collective, and a rank that dies stops every other within about a second, named.
//
// Built only when the Makefile found nccl.h (TUNE_HAVE_NCCL).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/common.h"
#include "kernels/cuda/backend_cuda.h"
#include "kernels/cuda/check.h"
#include "train/dist.h"
#include "train/roll_call.h"

namespace tune {

void cuda_select_device(int local_rank) {
    const int n = cuda_device_count();
    const int dev = n == 1 ? 0 : local_rank;  // one visible GPU: the launcher already gave each rank its own
    if (dev >= n)
        throw Error("local rank " + std::to_string(local_rank) + " has no GPU: only " + std::to_string(n) +
                    " are visible (one process per GPU)");
    CUDA_CHECK(cudaSetDevice(dev));
}

}  // namespace tune

#ifdef TUNE_HAVE_NCCL
#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <list>
#include <mutex>
#include <thread>

namespace tune {

bool built_with_nccl() { return true; }

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

ncclDataType_t nccl_type(DType dt) {
    switch (dt) {
        case DType::f32: return ncclFloat32;
        case DType::f64: return ncclFloat64;
        case DType::bf16: return ncclBfloat16;
        case DType::f16: return ncclFloat16;
    }
    throw Error("NCCL: unknown element type");
}

class NcclComm final : public Comm {
   public:
    NcclComm(const LaunchInfo& li, Backend& be, double timeout_s) : rank_(li.rank), world_(li.world) {
        timeout_s_ = timeout_s;
        // Test hook: the grouped per-owner path even for equal pieces, so one GPU can exercise it too.
        grouped_only_ = std::getenv("TUNE_NCCL_GROUPED") != nullptr;
        CUDA_CHECK(cudaGetDevice(&device_));
        int lo = 0, hi = 0;
        CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
        CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, hi));  // collectives first
        CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));

        // Rank 0's NCCL id and the address of its roll call travel together, at a fixed size.
        ncclUniqueId id;
        std::memset(&id, 0, sizeof id);
        const bool roll = world_ > 1 && RollCall::enabled();
        if (rank_ == 0) {
            check(ncclGetUniqueId(&id), "ncclGetUniqueId");
            if (roll) roll_ = std::make_unique<RollCall>(0, world_, "");
        }
        std::string bytes(sizeof id + kAddressBytes, '\0');
        std::memcpy(&bytes[0], &id, sizeof id);
        if (roll_ && roll_->address().size() >= kAddressBytes) {  // a cut address would send the ranks astray
            std::fprintf(stderr, "rank 0: the roll call's address '%s' is longer than %zu bytes; going without it\n",
                         roll_->address().c_str(), kAddressBytes - 1);
            roll_.reset();
        }
        if (roll_) bytes.replace(sizeof id, roll_->address().size(), roll_->address());
        if (li.kind == LaunchInfo::Kind::mpi)
            mpi_broadcast_bytes(bytes, 0);
        else if (li.kind == LaunchInfo::Kind::env)
            bytes = rendezvous(li, bytes, timeout_s);
        std::memcpy(&id, bytes.data(), sizeof id);
        const std::string address(bytes.c_str() + sizeof id);
        if (rank_ != 0 && roll && !address.empty()) roll_ = std::make_unique<RollCall>(rank_, world_, address);
        watchdog_ = std::thread([this] { watch(); });  // after roll_ is set: it reads it
        try {
            {
                // Connections made here, under the watchdog, and not lazily inside the first collectives (which
                // would stall the host in step 1's overlapped backward). A value the user set is kept.
                setenv("NCCL_RUNTIME_CONNECT", "0", 0);
                HostWait w(*this, enter("NCCL initialisation (every rank must join)"));
                ncclComm_t c = nullptr;
                check(ncclCommInitRank(&c, world_, id, rank_), "ncclCommInitRank");
                comm_ = c;
            }
            // Every rank has joined, so every rank has read the id: the file has done its job.
            if (li.kind == LaunchInfo::Kind::env && rank_ == 0 && !li.rendezvous_file.empty()) {
                std::error_code ec;
                std::filesystem::remove(li.rendezvous_file, ec);
            }
        } catch (...) {
            // Nor is it left for the next run's ranks to read a dead id from.
            if (li.kind == LaunchInfo::Kind::env && rank_ == 0 && !li.rendezvous_file.empty()) {
                std::error_code ec;
                std::filesystem::remove(li.rendezvous_file, ec);
            }
            stop_ = true;
            watchdog_.join();            // a thread still running at destruction would terminate the program
            if (roll_) roll_->fail("NCCL initialisation failed on this rank");  // the others stop now
            throw;
        }
        bind(be);
    }

    ~NcclComm() override {
        stop_ = true;
        if (watchdog_.joinable()) watchdog_.join();
        roll_.reset();  // goodbye: this rank's closed connection is not a death
        if (comm_) {
            cudaStreamSynchronize(stream_);
            ncclCommDestroy(comm_);
        }
        for (Pending& p : pending_)
            if (p.ev) cudaEventDestroy(p.ev);
        if (stage_) cudaFree(stage_);
        cudaEventDestroy(ready_);
        cudaEventDestroy(done_);
        for (cudaEvent_t ev : marks_)
            if (ev) cudaEventDestroy(ev);
        cudaStreamDestroy(stream_);
    }

    int rank() const override { return rank_; }
    int world() const override { return world_; }
    std::string kind() const override { return "nccl"; }
    void bind(Backend& be) override { compute_ = static_cast<cudaStream_t>(cuda_stream_of(be)); }

    void allreduce_sum(void* buf, DType dt, size_t n, const char* what) override {
        HostWait enqueue(*this, enter(what));  // an NCCL call may block the host until its peers answer
        after_compute();
        check(ncclAllReduce(buf, buf, n, nccl_type(dt), ncclSum, comm_, stream_), what);
        pending(enqueue.e);
    }

    void reduce_scatter_sum(void* buf, DType dt, const std::vector<size_t>& counts, const char* what) override {
        HostWait enqueue(*this, enter(what));  // an NCCL call may block the host until its peers answer
        char* b = static_cast<char*>(buf);
        const size_t es = dtype_size(dt);
        after_compute();
        if (equal(counts)) {
            check(ncclReduceScatter(b, b + rank_ * counts[0] * es, counts[0], nccl_type(dt), ncclSum, comm_, stream_),
                  what);
        } else {
            grouped(what, [&] {
                ncclResult_t r0 = ncclSuccess;
                size_t off = 0;
                for (int r = 0; r < world_ && r0 == ncclSuccess; off += counts[r], r++)
                    if (counts[r])
                        r0 = ncclReduce(b + off * es, b + off * es, counts[r], nccl_type(dt), ncclSum, r, comm_,
                                        stream_);
                return r0;
            });
        }
        pending(enqueue.e);
    }

    void all_gather(void* buf, DType dt, const std::vector<size_t>& counts, const char* what) override {
        HostWait enqueue(*this, enter(what));  // an NCCL call may block the host until its peers answer
        char* b = static_cast<char*>(buf);
        const size_t es = dtype_size(dt);
        after_compute();
        if (equal(counts)) {
            check(ncclAllGather(b + rank_ * counts[0] * es, b, counts[0], nccl_type(dt), comm_, stream_), what);
        } else {
            grouped(what, [&] {
                ncclResult_t r0 = ncclSuccess;
                size_t off = 0;
                for (int r = 0; r < world_ && r0 == ncclSuccess; off += counts[r], r++)
                    if (counts[r])
                        r0 = ncclBroadcast(b + off * es, b + off * es, counts[r], nccl_type(dt), r, comm_, stream_);
                return r0;
            });
        }
        pending(enqueue.e);
    }

    void broadcast(void* buf, DType dt, size_t n, int root, const char* what) override {
        HostWait enqueue(*this, enter(what));  // an NCCL call may block the host until its peers answer
        after_compute();
        check(ncclBroadcast(buf, buf, n, nccl_type(dt), root, comm_, stream_), what);
        pending(enqueue.e);
    }

    void join() override {
        CUDA_CHECK(cudaEventRecord(done_, stream_));
        CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
    }

    // Marks are events recorded on the comm stream, kept in a ring: a mark older than the ring is waited for
    // as join() (everything), which is later than asked, never earlier.
    uint64_t mark() override {
        const uint64_t id = marks_made_++;
        cudaEvent_t& ev = marks_[id % kMarks];
        if (!ev) CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventRecord(ev, stream_));
        return id;
    }

    void wait(uint64_t id) override {
        if (id >= marks_made_ || marks_made_ - id > kMarks) return join();
        CUDA_CHECK(cudaStreamWaitEvent(compute_, marks_[id % kMarks], 0));
    }

    void all_gather_host(void* buf, size_t bytes, const char* what) override {
        HostWait enqueue(*this, enter(what));  // an NCCL call may block the host until its peers answer
        char* d = stage((size_t)world_ * bytes);
        char* h = static_cast<char*>(buf);
        CUDA_CHECK(cudaMemcpyAsync(d + rank_ * bytes, h + rank_ * bytes, bytes, cudaMemcpyHostToDevice, stream_));
        check(ncclAllGather(d + rank_ * bytes, d, bytes, ncclUint8, comm_, stream_), what);
        CUDA_CHECK(cudaMemcpyAsync(h, d, (size_t)world_ * bytes, cudaMemcpyDeviceToHost, stream_));
        wait_stream(enqueue.e);
    }

    void gather_host(void* buf, const std::vector<size_t>& bytes, int root, const char* what) override {
        HostWait enqueue(*this, enter(what));  // an NCCL call may block the host until its peers answer
        std::vector<size_t> off(world_ + 1, 0);
        for (int r = 0; r < world_; r++) off[r + 1] = off[r] + bytes[r];
        char* d = stage(off[world_]);
        char* h = static_cast<char*>(buf);
        if (rank_ != root && bytes[rank_])
            CUDA_CHECK(cudaMemcpyAsync(d + off[rank_], h + off[rank_], bytes[rank_], cudaMemcpyHostToDevice, stream_));
        grouped(what, [&] {
            ncclResult_t r0 = ncclSuccess;
            if (rank_ == root) {
                for (int q = 0; q < world_ && r0 == ncclSuccess; q++)
                    if (q != root && bytes[q]) r0 = ncclRecv(d + off[q], bytes[q], ncclUint8, q, comm_, stream_);
            } else if (bytes[rank_]) {
                r0 = ncclSend(d + off[rank_], bytes[rank_], ncclUint8, root, comm_, stream_);
            }
            return r0;
        });
        if (rank_ == root)
            for (int q = 0; q < world_; q++)
                if (q != root && bytes[q])
                    CUDA_CHECK(cudaMemcpyAsync(h + off[q], d + off[q], bytes[q], cudaMemcpyDeviceToHost, stream_));
        wait_stream(enqueue.e);
    }

    [[noreturn]] void abort(const std::string& why) override {
        if (aborting_.exchange(true))  // the watchdog and the main thread at once: the first one speaks
            for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
        std::fprintf(stderr, "rank %d: %s\n", rank_, why.c_str());
        std::fflush(stderr);
        if (roll_) {  // the others stop now, repeating why
            const std::string suffix = "; aborting NCCL and stopping";
            const bool ends = why.size() > suffix.size() && why.compare(why.size() - suffix.size(), suffix.size(), suffix) == 0;
            roll_->fail(ends ? why.substr(0, why.size() - suffix.size()) : why);
        }
        if (comm_) ncclCommAbort(comm_);  // releases every kernel still waiting for a peer
        std::_Exit(1);                     // under mpirun, mpirun stops the others
    }

   private:
    // A collective this rank has entered: its name and number (the same on every rank).
    struct Entered {
        std::string what;
        uint64_t seq;
    };
    Entered enter(const std::string& what) {
        return {what, roll_ ? roll_->enter(what) : ++seq_};
    }

    struct Pending {
        Entered e;
        double t0;
        cudaEvent_t ev;  // done when it completes; null: a host thread is blocked until it is removed
        uint64_t id;
    };

    // Registers a blocking host wait with the watchdog for its lifetime.
    struct HostWait {
        NcclComm& c;
        Entered e;
        uint64_t id;
        HostWait(NcclComm& comm, Entered entered) : c(comm), e(std::move(entered)), id(comm.add_pending(e, nullptr)) {}
        ~HostWait() { c.remove_pending(id); }
    };

    bool equal(const std::vector<size_t>& counts) const {
        if (grouped_only_) return false;
        for (size_t c : counts)
            if (c != counts[0]) return false;
        return counts[0] > 0;
    }

    void check(ncclResult_t r, const std::string& what) {
        if (r == ncclSuccess) return;
        const char* last = comm_ ? ncclGetLastError(comm_) : nullptr;
        throw Error("rank " + std::to_string(rank_) + ": NCCL " + what + ": " + ncclGetErrorString(r) +
                    (last && *last ? std::string(" (") + last + ")" : std::string()));
    }

    // Calls inside ncclGroupStart/End: the group is closed even when one of them fails (a group left open
    // would swallow every later NCCL call, the communicator's destruction included), then the first error
    // is reported.
    template <class Calls>
    void grouped(const std::string& what, Calls calls) {
        check(ncclGroupStart(), what);
        const ncclResult_t r = calls();
        const ncclResult_t end = ncclGroupEnd();
        check(r, what);
        check(end, what);
    }

    void after_compute() {
        CUDA_CHECK(cudaEventRecord(ready_, compute_));
        CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    }

    void pending(const Entered& e) {
        cudaEvent_t ev = nullptr;
        CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventRecord(ev, stream_));
        add_pending(e, ev);
    }

    void wait_stream(const Entered& e) {
        HostWait w(*this, e);
        CUDA_CHECK(cudaStreamSynchronize(stream_));
    }

    char* stage(size_t bytes) {
        if (bytes > stage_bytes_) {
            CUDA_CHECK(cudaStreamSynchronize(stream_));
            if (stage_) CUDA_CHECK(cudaFree(stage_));
            stage_ = nullptr;
            CUDA_CHECK(cudaMalloc(&stage_, bytes));
            stage_bytes_ = bytes;
        }
        return static_cast<char*>(stage_);
    }

    uint64_t add_pending(const Entered& e, cudaEvent_t ev) {
        std::lock_guard<std::mutex> lock(mu_);
        pending_.push_back({e, now_s(), ev, ++next_id_});
        return next_id_;
    }
    void remove_pending(uint64_t id) {
        std::lock_guard<std::mutex> lock(mu_);
        pending_.remove_if([id](const Pending& p) { return p.id == id; });
    }

    void watch() {
        cudaSetDevice(device_);
        double gone_at = -1;  // when the roll call first said a rank was gone
        while (!stop_) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            std::string failed;
            const Entered* late = nullptr;
            Entered late_copy;
            double age = 0;
            bool waiting = false;
            {
                std::lock_guard<std::mutex> lock(mu_);
                for (auto it = pending_.begin(); it != pending_.end();) {
                    const cudaError_t q = it->ev ? cudaEventQuery(it->ev) : cudaErrorNotReady;
                    if (q == cudaSuccess) {
                        cudaEventDestroy(it->ev);
                        it = pending_.erase(it);
                        continue;
                    }
                    // A CUDA error (a fault in any kernel: it is sticky) will never let the event complete.
                    if (q != cudaErrorNotReady && failed.empty())
                        failed = "CUDA error while collective '" + it->e.what + "' was pending: " + cudaGetErrorString(q);
                    if (!late && now_s() - it->t0 > timeout_s_.load()) late_copy = it->e, late = &late_copy, age = now_s() - it->t0;
                    ++it;
                }
                waiting = !pending_.empty();
            }
            if (late) {
                const std::string who = roll_ ? roll_->blame(late->seq) : "";
                char msg[256];
                std::snprintf(msg, sizeof msg, "collective #%llu '%s' has not finished after %.0f s (%s): ",
                              (unsigned long long)late->seq, late->what.c_str(), age, timeout_words().c_str());
                abort(msg + (who.empty() ? std::string("another rank died or hangs") : who) +
                      "; aborting NCCL and stopping");
            }
            if (!failed.empty()) abort(failed);
            // A rank gone stops this one as soon as it waits on a collective (its next one, at the latest). Work of
            // its own goes on for up to kGoneGrace s (or --comm-timeout, if shorter): rank 0 may be writing the
            // checkpoint every rank agreed on before the others stopped. Past that, a rank hung outside any
            // collective stops too.
            if (roll_) {
                const std::string death = roll_->death();
                if (!death.empty() && gone_at < 0) gone_at = now_s();
                if (!death.empty() && (waiting || now_s() - gone_at > std::min(kGoneGrace, timeout_s_.load())))
                    abort(death + "; aborting NCCL and stopping");
            }
            ncclResult_t async = ncclSuccess;
            if (comm_ && ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess &&
                async != ncclInProgress)
                abort(std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async) +
                      " (a peer rank died or the network failed)");
        }
    }

    static constexpr double kGoneGrace = 60;  // seconds

    int rank_, world_, device_ = 0;
    bool grouped_only_ = false;
    std::atomic<ncclComm_t> comm_{nullptr};  // the watchdog polls it
    cudaStream_t stream_ = nullptr, compute_ = nullptr;
    cudaEvent_t ready_ = nullptr, done_ = nullptr;
    static constexpr uint64_t kMarks = 8;
    cudaEvent_t marks_[kMarks] = {};
    uint64_t marks_made_ = 0;
    void* stage_ = nullptr;
    size_t stage_bytes_ = 0;
    std::mutex mu_;
    std::list<Pending> pending_;
    uint64_t next_id_ = 0;
    std::atomic<bool> stop_{false}, aborting_{false};
    std::thread watchdog_;
    static constexpr size_t kAddressBytes = 256;  // the roll call's "host:port", sent beside the NCCL id
    std::unique_ptr<RollCall> roll_;                // world > 1 (and TUNE_ROLL_CALL not off)
    uint64_t seq_ = 0;                              // collectives entered, without a roll call
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(const LaunchInfo& li, Backend& be, double timeout_s) {
    return std::make_unique<NcclComm>(li, be, timeout_s);
}

}  // namespace tune

#else  // no NCCL in this build

namespace tune {

bool built_with_nccl() { return false; }
std::unique_ptr<Comm> make_nccl_comm(const LaunchInfo&, Backend&, double) {
    throw Error("this build has no NCCL (nccl.h not found under CUDA_HOME or NCCL_HOME)");
}

}  // namespace tune

#endif
