// The MPI communicator of the cpu backend: collectives built from non-blocking point-to-point messages on
// host memory, waited for by polling, so that
//   - sums are deterministic: the rank that owns a piece adds every rank's copy of it in rank order, then
//     sends the result to the others, so every rank holds the same bits whatever MPI's own algorithms do;
//   - a collective that waits too long knows which peers it is still waiting for and names them.
// Volume: reduce-scatter and all-gather each move (N-1)/N of the buffer per rank, as a ring does (in N-1
// direct messages instead of N-1 ring steps: fine for the few ranks a CPU run has).
//
// Built only when the Makefile found MPI (TUNE_HAVE_MPI); otherwise the stubs at the end explain.
#include "train/dist.h"

#include <cstdio>
#include <cstring>

#include "kernels/common.h"

#ifdef TUNE_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

namespace tune {

bool built_with_mpi() { return true; }

namespace {

bool g_mpi_initialized_here = false;

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string mpi_error_string(int code) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(code, s, &n);
    return std::string(s, n);
}

class MpiComm final : public Comm {
   public:
    explicit MpiComm(const LaunchInfo&) {
        mpi_init_if_needed();
        MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);  // errors come back to us, to be reported by name
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &world_);
        int flag = 0;
        void* ub = nullptr;
        MPI_Comm_get_attr(comm_, MPI_TAG_UB, &ub, &flag);
        tag_ub_ = flag && ub ? *static_cast<int*>(ub) : 32767;
    }
    ~MpiComm() override {
        if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    }

    int rank() const override { return rank_; }
    int world() const override { return world_; }
    std::string kind() const override { return "mpi"; }
    void bind(Backend& be) override {
        if (be.name() == "cuda") throw Error("the MPI communicator works on host memory; the cuda backend uses NCCL");
    }

    void allreduce_sum(void* buf, DType dt, size_t n, const char* what) override {
        const std::vector<size_t> counts = piece_counts(partition_bounds(n, world_, 16), 0, n);
        reduce_scatter_sum(buf, dt, counts, what);
        all_gather(buf, dt, counts, what);
    }

    void reduce_scatter_sum(void* buf, DType dt, const std::vector<size_t>& counts, const char* what) override {
        const size_t es = dtype_size(dt);
        char* b = static_cast<char*>(buf);
        const std::vector<size_t> off = offsets(counts);
        const size_t mine = counts[rank_] * es;
        std::vector<char> recv((size_t)world_ * mine);  // every rank's copy of my piece, in rank order
        begin(what);
        for (int q = 0; q < world_; q++) {
            if (q == rank_) continue;
            send(b + off[q] * es, counts[q] * es, q);
            recv_into(recv.data() + q * mine, mine, q);
        }
        wait_all(what);
        if (mine) std::memcpy(recv.data() + rank_ * mine, b + off[rank_] * es, mine);  // an empty piece: recv is empty
        if (dt == DType::f32)
            sum_pieces<float>(b + off[rank_] * es, recv.data(), counts[rank_]);
        else if (dt == DType::f64)
            sum_pieces<double>(b + off[rank_] * es, recv.data(), counts[rank_]);
        else
            throw Error(std::string("MPI reduce-scatter: element type ") + dtype_name(dt) + " is not a cpu type");
    }

    void all_gather(void* buf, DType dt, const std::vector<size_t>& counts, const char* what) override {
        const size_t es = dtype_size(dt);
        char* b = static_cast<char*>(buf);
        const std::vector<size_t> off = offsets(counts);
        begin(what);
        for (int q = 0; q < world_; q++) {
            if (q == rank_) continue;
            send(b + off[rank_] * es, counts[rank_] * es, q);
            recv_into(b + off[q] * es, counts[q] * es, q);
        }
        wait_all(what);
    }

    void broadcast(void* buf, DType dt, size_t n, int root, const char* what) override {
        const size_t bytes = n * dtype_size(dt);
        begin(what);
        if (rank_ == root) {
            for (int q = 0; q < world_; q++)
                if (q != root) send(buf, bytes, q);
        } else {
            recv_into(buf, bytes, root);
        }
        wait_all(what);
    }

    void all_gather_host(void* buf, size_t bytes, const char* what) override {
        char* b = static_cast<char*>(buf);
        begin(what);
        for (int q = 0; q < world_; q++) {
            if (q == rank_) continue;
            send(b + (size_t)rank_ * bytes, bytes, q);
            recv_into(b + (size_t)q * bytes, bytes, q);
        }
        wait_all(what);
    }

    void gather_host(void* buf, const std::vector<size_t>& bytes, int root, const char* what) override {
        char* b = static_cast<char*>(buf);
        const std::vector<size_t> off = offsets(bytes);
        begin(what);
        if (rank_ == root) {
            for (int q = 0; q < world_; q++)
                if (q != root) recv_into(b + off[q], bytes[q], q);
        } else {
            send(b + off[rank_], bytes[rank_], root);
        }
        wait_all(what);
    }

    [[noreturn]] void abort(const std::string& why) override {
        std::fprintf(stderr, "rank %d: %s\n", rank_, why.c_str());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
        std::_Exit(1);
    }

   private:
    static std::vector<size_t> offsets(const std::vector<size_t>& counts) {
        std::vector<size_t> off(counts.size() + 1, 0);
        for (size_t r = 0; r < counts.size(); r++) off[r + 1] = off[r] + counts[r];
        return off;
    }

    // Adds the world copies at `copies` (counts elements each, in rank order) into out, in double.
    template <class T>
    void sum_pieces(char* out, const char* copies, size_t n) const {
        T* o = reinterpret_cast<T*>(out);
        const T* c = reinterpret_cast<const T*>(copies);
        for (size_t i = 0; i < n; i++) {
            double s = 0;
            for (int q = 0; q < world_; q++) s += (double)c[(size_t)q * n + i];
            o[i] = (T)s;
        }
    }

    // Every collective gets its own tag (a sequence number), so messages of two collectives in flight at once
    // are never confused. A rank that skipped one pairs its next with the others' current one: the host sums
    // catch that (Comm::gather_words); buffers of other sizes show as a truncation error or a timeout.
    void begin(const char*) {
        tag_ = (int)(seq_++ % (uint64_t)tag_ub_);
        reqs_.clear();
        peers_.clear();
    }

    // Messages go in pieces of at most 1 GiB (MPI counts are int).
    static constexpr size_t kMaxMessage = (size_t)1 << 30;
    void send(const void* p, size_t bytes, int peer) {
        const char* c = static_cast<const char*>(p);
        for (size_t o = 0; o < bytes; o += kMaxMessage) {
            reqs_.emplace_back();
            peers_.push_back(peer);
            check(MPI_Isend(c + o, (int)std::min(kMaxMessage, bytes - o), MPI_BYTE, peer, tag_, comm_, &reqs_.back()),
                  "send", peer);
        }
    }
    void recv_into(void* p, size_t bytes, int peer) {
        char* c = static_cast<char*>(p);
        for (size_t o = 0; o < bytes; o += kMaxMessage) {
            reqs_.emplace_back();
            peers_.push_back(peer);
            check(MPI_Irecv(c + o, (int)std::min(kMaxMessage, bytes - o), MPI_BYTE, peer, tag_, comm_, &reqs_.back()),
                  "receive", peer);
        }
    }
    void check(int rc, const char* op, int peer) {
        if (rc != MPI_SUCCESS)
            abort(std::string("MPI ") + op + " with rank " + std::to_string(peer) + " failed: " + mpi_error_string(rc));
    }

    // Polls until every message of this collective is done. Past the timeout, names the peers still
    // outstanding and stops the job.
    void wait_all(const char* what) {
        if (reqs_.empty()) return;
        const double t0 = now_s();
        std::vector<int> done_idx(reqs_.size());
        std::vector<MPI_Status> statuses(reqs_.size());
        size_t left = reqs_.size();
        int idle = 0;
        while (left > 0) {
            int outcount = 0;
            const int rc = MPI_Testsome((int)reqs_.size(), reqs_.data(), &outcount, done_idx.data(), statuses.data());
            if (rc != MPI_SUCCESS) {
                // MPI_ERR_IN_STATUS: the completed requests' statuses say which failed and why (a message of
                // another size: the ranks are in different collectives).
                int peer = -1, err = rc;
                for (int k = 0; k < outcount && outcount != MPI_UNDEFINED; k++)
                    if (statuses[k].MPI_ERROR != MPI_SUCCESS) {
                        peer = peers_[done_idx[k]];
                        err = statuses[k].MPI_ERROR;
                        break;
                    }
                abort(std::string("collective '") + what + "' failed (MPI error talking to rank " +
                      (peer >= 0 ? std::to_string(peer) : std::string("?")) + "): " + mpi_error_string(err) +
                      (err == MPI_ERR_TRUNCATE ? " (the ranks disagree on which collective this is)" : ""));
            }
            if (outcount == MPI_UNDEFINED) break;
            if (outcount > 0) {
                left -= (size_t)outcount;
                idle = 0;
                continue;
            }
            if (now_s() - t0 > timeout_s_.load()) {
                std::vector<int> missing;
                for (size_t i = 0; i < reqs_.size(); i++)
                    if (reqs_[i] != MPI_REQUEST_NULL &&
                        std::find(missing.begin(), missing.end(), peers_[i]) == missing.end())
                        missing.push_back(peers_[i]);
                std::sort(missing.begin(), missing.end());
                std::string who;
                for (int p : missing) who += (who.empty() ? "" : ", ") + std::to_string(p);
                char secs[32];
                std::snprintf(secs, sizeof secs, "%g", timeout_s_.load());
                const std::string raised = user_timeout_s_.load() > 0 ? " (" + timeout_words() + ")" : "";
                abort(std::string("collective '") + what + "' timed out after " + secs + " s" + raised +
                      ": no answer from rank " + who + " (it died or hangs); stopping every rank");
            }
            // Back off while waiting: with more ranks than cores, spinning would take the core from the rank
            // being waited for.
            if (++idle > 64) std::this_thread::sleep_for(std::chrono::microseconds(idle > 1000 ? 500 : 20));
        }
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, world_ = 1, tag_ub_ = 32767, tag_ = 0;
    uint64_t seq_ = 0;
    std::vector<MPI_Request> reqs_;
    std::vector<int> peers_;
};

}  // namespace

void mpi_init_if_needed() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) return;
    int provided = 0;
    // FUNNELED: only the main thread calls MPI (OpenMP threads and the NCCL watchdog never do).
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) throw Error("MPI_Init failed: " + mpi_error_string(rc));
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_mpi_initialized_here = true;
}

std::unique_ptr<Comm> make_mpi_comm(const LaunchInfo& li) { return std::make_unique<MpiComm>(li); }

void mpi_broadcast_bytes(std::string& bytes, int root) {
    mpi_init_if_needed();
    const int rc = MPI_Bcast(bytes.data(), (int)bytes.size(), MPI_BYTE, root, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) throw Error("MPI_Bcast of the NCCL id failed: " + mpi_error_string(rc));
}

void mpi_finish(bool ok) {
    if (!g_mpi_initialized_here) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (!ok) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
}

}  // namespace tune

#else  // no MPI in this build

namespace tune {

bool built_with_mpi() { return false; }
static const char* kNoMpi = "this build has no MPI (apt-get install openmpi-bin libopenmpi-dev, then make clean && make)";
std::unique_ptr<Comm> make_mpi_comm(const LaunchInfo&) { throw Error(kNoMpi); }
void mpi_broadcast_bytes(std::string&, int) { throw Error(kNoMpi); }
void mpi_init_if_needed() { throw Error(kNoMpi); }
void mpi_finish(bool) {}

}  // namespace tune

#endif
