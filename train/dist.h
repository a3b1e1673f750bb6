// Data parallelism, the communication layer: N processes, one model replica each, talking through a Comm.
//
// How a process learns its place (launch_info()):
//   mpirun -np N bin/train ...        OpenMPI's OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}; MPI_Init follows
//   RANK, WORLD_SIZE, LOCAL_RANK      any other launcher (Slurm's srun, torchrun-style scripts), with a
//                                     rendezvous: TUNE_RENDEZVOUS_FILE on a shared file system, or
//                                     MASTER_ADDR and MASTER_PORT (rank 0 listens there)
//   neither                           one process; every collective is the identity
//
// Which Comm (make_process_comm()):
//   cpu backend   MPI point-to-point messages on host memory (needs mpirun). Sums are taken in rank order by
//                 the rank that owns each piece, so every rank ends with the same bits whatever MPI's
//                 algorithms, and a peer that stops answering is named.
//   cuda backend  NCCL on the backend's buffers, on a stream of its own so gradient buckets overlap the
//                 backward pass; the NCCL id travels by MPI (under mpirun) or by the rendezvous.
//
// Every collective is called by every rank in the same order. `what` names it in error messages. A
// collective that has not finished after the timeout (--comm-timeout) stops the whole job with a message
// naming this rank, the collective and, where it can tell, the rank that did not answer.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace tune {

struct LaunchInfo {
    enum class Kind { single, mpi, env };
    Kind kind = Kind::single;
    int rank = 0, world = 1, local_rank = 0;
    std::string rendezvous_file;  // env launch: TUNE_RENDEZVOUS_FILE
    std::string master_addr;      // env launch: MASTER_ADDR and MASTER_PORT
    int master_port = 0;
};

// Reads the environment (see the top of this file). Throws tune::UsageError for malformed variables,
// naming them.
LaunchInfo launch_info();

class Comm {
   public:
    virtual ~Comm() = default;
    virtual int rank() const = 0;
    virtual int world() const = 0;
    virtual std::string kind() const = 0;  // "single", "mpi", "nccl"
    // The backend whose buffers the collectives below receive (NCCL orders them against its stream).
    virtual void bind(Backend& be) = 0;
    void set_timeout(double seconds) { timeout_s_ = seconds; }
    double timeout() const { return timeout_s_.load(); }
    // Raised to at least `seconds` while rank 0 writes a checkpoint, then back to --comm-timeout.
    void raise_timeout_for_writer(double seconds) {
        user_timeout_s_ = timeout_s_.load();
        timeout_s_ = std::max(timeout_s_.load(), seconds);
    }
    void end_raised_timeout() {
        timeout_s_ = user_timeout_s_.load();
        user_timeout_s_ = 0;
    }
    // The timeout for a message: "--comm-timeout 20", or while raised, also what to and why.
    std::string timeout_words() const;

    // ---- backend buffers, n elements of dtype ----
    // They are ordered after the backend work queued before them. They may run asynchronously to the
    // backend (NCCL: on the comm stream, overlapping later compute); join() orders every later backend op
    // after all of them. Whoever reads a result must join() first (or wait() for a mark() taken after it).
    virtual void allreduce_sum(void* buf, DType dtype, size_t n, const char* what) = 0;
    // buf holds the pieces of every rank back to back, counts[r] elements for rank r. Afterwards rank r's
    // piece holds the sum over ranks of that piece; the other pieces hold unspecified values.
    virtual void reduce_scatter_sum(void* buf, DType dtype, const std::vector<size_t>& counts, const char* what) = 0;
    // In place: afterwards every rank holds every rank's piece (laid out as for reduce_scatter_sum).
    virtual void all_gather(void* buf, DType dtype, const std::vector<size_t>& counts, const char* what) = 0;
    virtual void broadcast(void* buf, DType dtype, size_t n, int root, const char* what) = 0;
    virtual void join() {}
    // A point after the collectives queued so far, and a wait for it: wait(mark()) orders later backend ops
    // after those collectives only (join() waits for all). Synchronous communicators need neither.
    virtual uint64_t mark() { return 0; }
    virtual void wait(uint64_t /*mark*/) {}

    // ---- host memory, synchronous ----
    // buf holds world * bytes: each rank fills its own slot (at rank * bytes); afterwards all are filled.
    virtual void all_gather_host(void* buf, size_t bytes, const char* what) = 0;
    // buf holds the pieces back to back (bytes[r] for rank r); afterwards the root holds all of them.
    virtual void gather_host(void* buf, const std::vector<size_t>& bytes, int root, const char* what) = 0;

    // Stops every rank (MPI_Abort / ncclCommAbort) after printing "rank R: why". Never returns.
    [[noreturn]] virtual void abort(const std::string& why) = 0;

    // Derived from the above. Sums run in rank order, so every rank gets the same bits.
    double sum(double x, const char* what);
    uint64_t sum(uint64_t x, const char* what);
    bool any(bool x, const char* what);
    void barrier(const char* what);
    // Every rank's x, checked to be from the same collective (`what`) on every rank: the job stops otherwise.
    std::vector<uint64_t> gather_words(uint64_t x, const char* what);

   protected:
    std::atomic<double> timeout_s_{600};     // read by the NCCL watchdog thread
    std::atomic<double> user_timeout_s_{0};  // --comm-timeout while raise_timeout_for_writer holds; else 0
};

// The process's communicator for `be`, made on first use (MPI_Init, the rendezvous, ncclCommInitRank) and
// kept until finish_distributed(); later calls bind it to the new backend. Single process: the identity.
// TUNE_NCCL_ONE_RANK=1 makes a one-process run on a GPU use NCCL anyway (scripts/gpu_check.sh exercises
// the NCCL path on one GPU that way).
Comm& process_comm(Backend& be, double timeout_s);

// Before the backend exists: a multi-rank GPU run selects its GPU (LOCAL_RANK, or the only one visible).
void select_local_device(const LaunchInfo& li, const std::string& device);

// The end of the program: success shuts MPI/NCCL down in order; a failure (rc != 0) on one rank stops the
// others at once instead of leaving them waiting in a collective.
void finish_distributed(int rc);

// Whether this build has MPI (the Makefile found mpicxx) and NCCL (nccl.h).
bool built_with_mpi();
bool built_with_nccl();

// ---- the parts, exposed for their tests ----
// Splits n elements into `world` contiguous pieces [bounds[r], bounds[r+1]), as even as possible with every
// inner boundary a multiple of `align` (so pieces keep vector alignment).
std::vector<size_t> partition_bounds(size_t n, int world, size_t align);
// Elements of [begin, end) that fall in each rank's piece (in rank order, so they sit back to back).
std::vector<size_t> piece_counts(const std::vector<size_t>& bounds, size_t begin, size_t end);

// Env launch: returns rank 0's `payload` on every rank, through the shared file (rank 0 writes it
// atomically, the others wait for it) or TCP (rank 0 listens on master_port and sends it to each).
std::string rendezvous(const LaunchInfo& li, const std::string& payload, double timeout_s);

// Test-only failure injection, TUNE_TEST_FAIL="RANK:STEP:die|hang|skew": at the start of that step, that rank is
// killed (SIGKILL), stops answering (sleeps) or makes one host collective the others do not (out of step). The
// tests check that the others end with a message.
void maybe_inject_failure(int rank, int step);

// Implementations, in train/dist_mpi.cpp and train/dist_nccl.cpp.
std::unique_ptr<Comm> make_mpi_comm(const LaunchInfo& li);      // MPI_Init first
std::unique_ptr<Comm> make_nccl_comm(const LaunchInfo& li, Backend& be, double timeout_s);
void mpi_broadcast_bytes(std::string& bytes, int root);          // after make_mpi_comm / mpi_init
void mpi_init_if_needed();
void mpi_finish(bool ok);
void cuda_select_device(int local_rank);

}  // namespace tune
