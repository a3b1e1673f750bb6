#include "train/dist.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "data/fileio.h"
#include "train/cli.h"
#include "train/socket.h"

namespace tune {

// ---------------------------------------------------------------------------------------------------------
// Derived collectives: every rank gathers every rank's value and adds them up in rank order.

// TEACH: the transports match messages by order (a sequence number), not by meaning. A rank that skipped one
// collective would pair its next one with the others' current one, and two 8-byte sums pair without a
// complaint. So each value travels with a hash of what its rank thinks it is summing; a mismatch stops the job.
std::vector<uint64_t> Comm::gather_words(uint64_t x, const char* what) {
    struct Tagged {
        uint64_t value, what;
    };
    const uint64_t mine = hash_bytes(what, std::strlen(what));
    std::vector<Tagged> all(world());
    all[rank()] = Tagged{x, mine};
    all_gather_host(all.data(), sizeof(Tagged), what);
    std::vector<uint64_t> out(world());
    for (int r = 0; r < world(); r++) {
        if (all[r].what != mine)
            abort("rank " + std::to_string(r) + " is in another collective than '" + what +
                  "': the ranks are out of step (a collective some ranks skipped: a bug in tune.cu; please report it)");
        out[r] = all[r].value;
    }
    return out;
}

double Comm::sum(double x, const char* what) {
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    double s = 0;
    for (uint64_t w : gather_words(bits, what)) {
        double v;
        std::memcpy(&v, &w, sizeof v);
        s += v;
    }
    return s;
}

uint64_t Comm::sum(uint64_t x, const char* what) {
    uint64_t s = 0;
    for (uint64_t v : gather_words(x, what)) s += v;
    return s;
}

std::string Comm::timeout_words() const {
    char b[128];
    const double user = user_timeout_s_.load();
    if (user > 0 && timeout_s_.load() > user)
        std::snprintf(b, sizeof b, "--comm-timeout %g, raised to %g s while rank 0 writes a checkpoint", user,
                      timeout_s_.load());
    else
        std::snprintf(b, sizeof b, "--comm-timeout %g", timeout_s_.load());
    return b;
}

bool Comm::any(bool x, const char* what) { return sum((uint64_t)x, what) > 0; }

void Comm::barrier(const char* what) { gather_words(0, what); }

namespace {

// One process: every collective is the identity.
class SingleComm final : public Comm {
   public:
    int rank() const override { return 0; }
    int world() const override { return 1; }
    std::string kind() const override { return "single"; }
    void bind(Backend&) override {}
    void allreduce_sum(void*, DType, size_t, const char*) override {}
    void reduce_scatter_sum(void*, DType, const std::vector<size_t>&, const char*) override {}
    void all_gather(void*, DType, const std::vector<size_t>&, const char*) override {}
    void broadcast(void*, DType, size_t, int, const char*) override {}
    void all_gather_host(void*, size_t, const char*) override {}
    void gather_host(void*, const std::vector<size_t>&, int, const char*) override {}
    [[noreturn]] void abort(const std::string& why) override {
        std::fprintf(stderr, "rank 0: %s\n", why.c_str());
        std::fflush(stderr);
        std::_Exit(1);
    }
};

std::unique_ptr<Comm> g_comm;

int env_int(const char* name, int lo, int hi) {
    const char* v = std::getenv(name);
    if (!v) throw UsageError(std::string("environment: ") + name + " is not set");
    return parse_int(std::string("environment variable ") + name, v, lo, hi);
}

}  // namespace

LaunchInfo launch_info() {
    LaunchInfo li;
    if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
        li.kind = LaunchInfo::Kind::mpi;
        li.world = env_int("OMPI_COMM_WORLD_SIZE", 1, 1 << 20);
        li.rank = env_int("OMPI_COMM_WORLD_RANK", 0, li.world - 1);
        li.local_rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK") ? env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0, 1 << 20) : 0;
        return li;
    }
    if (!std::getenv("WORLD_SIZE")) return li;
    li.world = env_int("WORLD_SIZE", 1, 1 << 20);
    if (li.world == 1) return li;
    li.kind = LaunchInfo::Kind::env;
    li.rank = env_int("RANK", 0, li.world - 1);
    li.local_rank = std::getenv("LOCAL_RANK") ? env_int("LOCAL_RANK", 0, 1 << 20) : 0;
    if (const char* f = std::getenv("TUNE_RENDEZVOUS_FILE")) li.rendezvous_file = f;
    if (const char* a = std::getenv("MASTER_ADDR")) li.master_addr = a;
    if (std::getenv("MASTER_PORT")) li.master_port = env_int("MASTER_PORT", 1, 65535);
    if (li.rendezvous_file.empty() && (li.master_addr.empty() || li.master_port == 0))
        throw UsageError("environment: WORLD_SIZE=" + std::to_string(li.world) +
                         " needs a rendezvous: TUNE_RENDEZVOUS_FILE (a path on a shared file system) or MASTER_ADDR "
                         "and MASTER_PORT (where rank 0 listens)");
    return li;
}

void select_local_device(const LaunchInfo& li, const std::string& device) {
    const bool nccl_one = std::getenv("TUNE_NCCL_ONE_RANK") != nullptr;
    if (device == "cpu" || (li.world == 1 && !nccl_one)) return;
    if (cuda_device_count() == 0) return;  // make_backend reports a missing GPU for --device cuda
    cuda_select_device(li.local_rank);
}

Comm& process_comm(Backend& be, double timeout_s) {
    if (!g_comm) {
        const LaunchInfo li = launch_info();
        const bool gpu = be.name() == "cuda";
        const bool nccl_one = gpu && std::getenv("TUNE_NCCL_ONE_RANK") != nullptr;
        if (li.world == 1 && !nccl_one) {
            g_comm = std::make_unique<SingleComm>();
        } else if (gpu) {
            if (!built_with_nccl())
                throw Error("a multi-process GPU run needs NCCL, and this build has none (nccl.h was not found: set "
                            "NCCL_HOME or install NCCL, then rebuild)");
            g_comm = make_nccl_comm(li, be, timeout_s);
        } else {
            if (li.kind != LaunchInfo::Kind::mpi)
                throw UsageError("the cpu backend runs data-parallel over MPI: start it with mpirun -np " +
                                 std::to_string(li.world) + " (RANK/WORLD_SIZE launches need --device cuda and NCCL)");
            if (!built_with_mpi())
                throw Error("started by mpirun, but this build has no MPI (apt-get install libopenmpi-dev, then make "
                            "clean && make)");
            g_comm = make_mpi_comm(li);
        }
    }
    g_comm->set_timeout(timeout_s);
    g_comm->bind(be);
    return *g_comm;
}

void finish_distributed(int rc) {
    if (g_comm && g_comm->world() > 1 && rc != 0)
        g_comm->abort("exiting with status " + std::to_string(rc) + "; stopping every rank");
    g_comm.reset();  // NCCL: ncclCommDestroy
    mpi_finish(rc == 0);
}

std::vector<size_t> partition_bounds(size_t n, int world, size_t align) {
    std::vector<size_t> b(world + 1, n);
    b[0] = 0;
    for (int r = 1; r < world; r++) {
        size_t x = (size_t)((unsigned __int128)n * r / world);
        x = (x + align / 2) / align * align;
        b[r] = std::clamp(x, b[r - 1], n);
    }
    return b;
}

std::vector<size_t> piece_counts(const std::vector<size_t>& bounds, size_t begin, size_t end) {
    std::vector<size_t> c(bounds.size() - 1, 0);
    for (size_t r = 0; r + 1 < bounds.size(); r++) {
        const size_t lo = std::max(begin, bounds[r]), hi = std::min(end, bounds[r + 1]);
        c[r] = hi > lo ? hi - lo : 0;
    }
    return c;
}

void maybe_inject_failure(int rank, int step) {
    const char* spec = std::getenv("TUNE_TEST_FAIL");
    if (!spec) return;
    int r = -1, s = -1;
    char mode[8] = "";
    if (std::sscanf(spec, "%d:%d:%7s", &r, &s, mode) != 3 || r != rank || s != step) return;
    std::fprintf(stderr, "rank %d: TUNE_TEST_FAIL: %s at step %d\n", rank, mode, step);
    std::fflush(stderr);
    if (std::strcmp(mode, "skew") == 0) {  // one collective the other ranks do not make
        if (g_comm) g_comm->sum((uint64_t)0, "TUNE_TEST_FAIL skew");
        return;
    }
    if (std::strcmp(mode, "die") == 0) std::raise(SIGKILL);
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // hang: alive, but never answers again
}

// ---------------------------------------------------------------------------------------------------------
// Rendezvous

namespace {

std::string rendezvous_file(const LaunchInfo& li, const std::string& payload, double timeout_s) {
    namespace fs = std::filesystem;
    const std::string& path = li.rendezvous_file;
    if (li.rank == 0) {
        std::error_code ec;
        if (fs::exists(path, ec))
            throw Error("TUNE_RENDEZVOUS_FILE " + path + " already exists (left by an earlier run?): remove it or "
                        "name a new file for each run, e.g. with the job id in it");
        write_file_atomic(path, payload.data(), payload.size());
        return payload;
    }
    const double deadline = steady_now_s() + timeout_s;
    for (;;) {
        std::error_code ec;
        if (fs::exists(path, ec) && fs::file_size(path, ec) == payload.size() && !ec) {
            std::vector<uint8_t> b = read_file_bytes(path);
            return std::string(b.begin(), b.end());
        }
        if (steady_now_s() > deadline)
            throw Error("rank " + std::to_string(li.rank) + ": rank 0 did not write TUNE_RENDEZVOUS_FILE " + path +
                        " within " + std::to_string((int)timeout_s) + " s (is it on a file system every node shares?)");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

std::string rendezvous_tcp(const LaunchInfo& li, const std::string& payload, double timeout_s) {
    const double deadline = steady_now_s() + timeout_s;
    const std::string where = li.master_addr + ":" + std::to_string(li.master_port);
    if (li.rank == 0) {
        int bound = 0;
        Fd srv;
        try {
            srv = listen_tcp(li.master_port, &bound);
        } catch (const Error& e) {
            throw Error(std::string("rendezvous: rank 0 ") + e.what());
        }
        for (int served = 1; served < li.world;) {
            if (!wait_fd(srv.fd, false, deadline))
                throw Error("rendezvous: only " + std::to_string(served - 1) + " of " + std::to_string(li.world - 1) +
                            " ranks connected to rank 0 on port " + std::to_string(li.master_port) + " within " +
                            std::to_string((int)timeout_s) + " s");
            Fd c(::accept(srv.fd, nullptr, nullptr));
            if (!c.ok()) continue;
            if (send_all(c.fd, payload.data(), payload.size())) served++;  // else it went away: it will retry
        }
        return payload;
    }
    std::string why;
    for (;;) {
        Fd s = connect_tcp(li.master_addr, li.master_port, std::clamp(deadline - steady_now_s(), 0.1, 5.0), &why);
        if (s.ok()) {
            std::string got(payload.size(), '\0');
            size_t have = 0;
            while (have < got.size() && wait_fd(s.fd, false, deadline)) {
                ssize_t k = ::recv(s.fd, &got[have], got.size() - have, 0);
                if (k <= 0) break;
                have += (size_t)k;
            }
            if (have == got.size()) return got;
        }
        if (steady_now_s() > deadline)
            throw Error("rank " + std::to_string(li.rank) + ": no rendezvous with rank 0 at " + where + " within " +
                        std::to_string((int)timeout_s) + " s (" + why +
                        "; MASTER_ADDR/MASTER_PORT reachable? rank 0 started?)");
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

}  // namespace

std::string rendezvous(const LaunchInfo& li, const std::string& payload, double timeout_s) {
    if (li.world == 1) return payload;
    return li.rendezvous_file.empty() ? rendezvous_tcp(li, payload, timeout_s)
                                      : rendezvous_file(li, payload, timeout_s);
}

}  // namespace tune
