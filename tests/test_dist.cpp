// Data parallelism. Without a GPU: the pieces (partition, buckets, clipped optimizer segments, launch
// variables, rendezvous) in-process, and then bin/train under `mpirun -np 2` and `-np 3` on the cpu
// backend against one process with the combined batch: losses equal to float tolerance, every rank's
// weights identical (hash), ZeRO-1 byte-identical to ZeRO-0, resume across world sizes, and a rank that
// dies or hangs ending the job within bounded time, named. The mpirun tests skip without MPI.
// With a GPU: every NCCL collective on one rank, and one-rank NCCL training equal to a plain run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include <cuda_runtime.h>

#include "data/shard.h"
#include "kernels/cuda/backend_cuda.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/dist.h"
#include "train/optimizer.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace tune::test {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------------------
// The pieces

TEST(DistPartition, PiecesCoverEverythingAlignedAndBalanced) {
    for (size_t n : {0ul, 1ul, 63ul, 64ul, 1000ul, 123457ul}) {
        for (int w : {1, 2, 3, 7}) {
            const std::vector<size_t> b = partition_bounds(n, w, 64);
            ASSERT_EQ(b.size(), (size_t)w + 1);
            EXPECT_EQ(b.front(), 0u);
            EXPECT_EQ(b.back(), n);
            for (int r = 0; r < w; r++) {
                EXPECT_LE(b[r], b[r + 1]);
                if (r > 0 && b[r] != n) {
                    EXPECT_EQ(b[r] % 64, 0u) << n << " " << w;
                }
                if (n >= (size_t)w * 256) {
                    EXPECT_LE(b[r + 1] - b[r], n / w + 64) << n << " " << w;
                }
            }
        }
    }
}

TEST(DistPartition, PieceCountsOfARangeFollowThePartition) {
    const std::vector<size_t> b = {0, 64, 128, 200};
    EXPECT_EQ(piece_counts(b, 0, 200), (std::vector<size_t>{64, 64, 72}));
    EXPECT_EQ(piece_counts(b, 70, 150), (std::vector<size_t>{0, 58, 22}));
    EXPECT_EQ(piece_counts(b, 10, 20), (std::vector<size_t>{10, 0, 0}));
    EXPECT_EQ(piece_counts(b, 150, 150), (std::vector<size_t>{0, 0, 0}));
}

TEST(DistBuckets, OneBucketPerLayerPlusTheRestCoveringTheArenaOnce) {
    const ModelConfig cfg = small_config(37, 3, 3, 24, 16);
    const Table t = gpt2_param_table(cfg);
    const std::vector<GradBucket> buckets = grad_buckets(t);
    ASSERT_EQ(buckets.size(), 4u);  // wte/wpe/ln_f and h.0, h.1, h.2
    std::vector<int> seen(t.total(), 0);
    for (const GradBucket& b : buckets) {
        EXPECT_GE(b.layer, -1);
        for (const auto& [lo, hi] : b.ranges)
            for (size_t i = lo; i < hi; i++) seen[i]++;
        if (b.layer >= 0) {
            EXPECT_EQ(b.ranges.size(), 1u) << "a layer's tensors are contiguous";
        }
    }
    for (size_t i = 0; i < seen.size(); i++) ASSERT_EQ(seen[i], 1) << "element " << i;
    // Every tensor sits in its own layer's bucket.
    for (const TensorInfo& ti : t.tensors()) {
        const int want = ti.name.rfind("h.", 0) == 0 ? std::atoi(ti.name.c_str() + 2) : -1;
        bool found = false;
        for (const GradBucket& b : buckets)
            for (const auto& [lo, hi] : b.ranges)
                if (ti.offset >= lo && ti.offset + ti.numel <= hi) found = b.layer == want;
        EXPECT_TRUE(found) << ti.name;
    }
}

TEST(DistZero, ClippedSegmentsTileTheRangeAndKeepParameterOffsetsInStep) {
    std::vector<OptSegment> segs(3);
    segs[0].param_offset = 0, segs[0].grad_offset = 0, segs[0].n = 100;
    segs[1].param_offset = 500, segs[1].grad_offset = 128, segs[1].n = 50, segs[1].lr_scale = 0.5f;
    segs[2].param_offset = 700, segs[2].grad_offset = 192, segs[2].n = 64, segs[2].weight_decay = 0.1f;
    const std::vector<OptSegment> c = clip_segments(segs, 64, 200);
    ASSERT_EQ(c.size(), 3u);
    EXPECT_EQ(c[0].grad_offset, 0u);
    EXPECT_EQ(c[0].param_offset, 64u);
    EXPECT_EQ(c[0].n, 36u);
    EXPECT_EQ(c[1].grad_offset, 64u);
    EXPECT_EQ(c[1].param_offset, 500u);
    EXPECT_EQ(c[1].n, 50u);
    EXPECT_FLOAT_EQ(c[1].lr_scale, 0.5f);
    EXPECT_EQ(c[2].grad_offset, 128u);
    EXPECT_EQ(c[2].param_offset, 700u);
    EXPECT_EQ(c[2].n, 8u);
    EXPECT_FLOAT_EQ(c[2].weight_decay, 0.1f);
    EXPECT_TRUE(clip_segments(segs, 100, 128).empty());
}

// `micro` micro-batches of the same random data (B = 2, T = 11, V = 37) through `whole`, which keeps one gradient
// arena, and `sharded`, whose gradients `dp` reduces: the whole arena's gradients and dp's rank piece.
std::pair<std::vector<double>, std::vector<double>> gradients_both_ways(GPT2& whole, GPT2& sharded, DataParallel& dp,
                                                                        int micro) {
    whole.zero_grads();
    dp.zero_gradients();
    for (int k = 0; k < micro; k++) {
        const Data d = random_data(2, 11, 37, 100 + k, true);
        for (GPT2* m : {&whole, &sharded}) {
            m->forward(d.x.data(), d.B, d.T, d.w.data());
            m->loss(d.y.data(), d.w.data(), 1.0f / (float)counted(d.w), true);
            m->backward();
        }
    }
    dp.finish_gradients();
    const Arena& g = whole.grads();
    std::vector<double> arena(g.elems()), piece(g.elems(), NAN);
    whole.backend().download(arena.data(), g.base(), g.dtype(), arena.size());
    whole.backend().download(piece.data(), dp.optimizer_shard().grads, g.dtype(), piece.size());
    return {arena, piece};
}

// ZeRO-2's gradient slots in one process. With one rank every reduction is the identity, so what is tested is
// the slots: three blocks share two (block 0 takes block 2's, which must be kept first), LoRA puts a second
// range into each block's bucket, and the rank's piece must end up holding the whole arena's gradients: bit for
// bit with one micro-batch, to rounding with two (their sum is taken in another order).
void expect_zero2_slots_hold_the_arenas_gradients(Backend& be, double tol_two_micro_batches) {
    const ModelConfig cfg = small_config(37, 3, 3, 24, 16);
    ModelOptions plain;
    plain.peft.lora_rank = 2;
    plain.peft.lora_targets = (1u << kLoraQkv) | (1u << kLoraMlpDown);
    ModelOptions slots = plain;
    slots.grad_slots = 2;
    GPT2 a(cfg, be, 2, 11, nullptr, plain), b(cfg, be, 2, 11, nullptr, slots);  // everything trains, base too
    a.init_random(5);
    a.init_peft(5, {});
    randomise_peft(a, 9);
    for (size_t i = 0; i < a.params().table().size(); i++) set_tensor(b, b.params(), i, get_tensor(a, a.params(), i));
    Comm& comm = process_comm(be, 60);
    ASSERT_EQ(comm.world(), 1);
    DataParallel dp(comm, b, 2);
    EXPECT_EQ(b.grads().bytes(), 0u) << "no whole gradient arena";
    EXPECT_LT(b.grad_bytes(), a.grad_bytes());
    for (int micro : {1, 2}) {
        const auto [want, got] = gradients_both_ways(a, b, dp, micro);
        if (micro == 1) {
            EXPECT_EQ(got, want);
            EXPECT_EQ(dp.grad_sum_squares(), be.sum_squares(a.grads().base(), want.size()));
        } else {
            EXPECT_TRUE(near_rel(got, want, tol_two_micro_batches));
        }
    }
    // No more slots than blocks that train, taken in turn by the trainable blocks (not by layer parity).
    Trainable some;
    some.tensor.assign(a.params().table().size(), false);
    for (const char* name : {"h.0.mlp.c_fc.weight", "h.2.attn.c_attn.bias"})
        some.tensor[a.params().table().find(name)] = true;
    GPT2 two(cfg, be, 2, 11, &some, slots);
    EXPECT_EQ(two.grad_slots_held(), 2);
    EXPECT_NE(two.grad_slot(0), two.grad_slot(2));
    EXPECT_EQ(two.grad_slot(1), -1);
    some.tensor.assign(some.tensor.size(), false);
    some.tensor[a.params().table().find("h.1.ln_2.weight")] = true;
    GPT2 one(cfg, be, 2, 11, &some, slots);
    EXPECT_EQ(one.grad_slots_held(), 1);
    // Slots alternate in backward's order even where the buckets are in another: h.0's base is frozen, so its
    // bucket (LoRA only) comes after h.1's and h.2's in the table.
    some.tensor.assign(some.tensor.size(), false);
    for (const char* name : {"h.1.mlp.c_fc.weight", "h.2.attn.c_attn.bias"})
        some.tensor[a.params().table().find(name)] = true;
    for (size_t i = a.num_base_tensors(); i < some.tensor.size(); i++) some.tensor[i] = true;  // LoRA
    GPT2 mixed(cfg, be, 2, 11, &some, slots);
    EXPECT_NE(mixed.grad_slot(2), mixed.grad_slot(1));
    EXPECT_NE(mixed.grad_slot(1), mixed.grad_slot(0));
}

TEST(DistZero2, SlotsHoldTheWholeArenasGradients_CpuF32_L3TwoSlotsLora) {
    auto be = make_cpu_backend(DType::f32);
    expect_zero2_slots_hold_the_arenas_gradients(*be, 1e-6);
}

TEST(CudaZero2, SlotsHoldTheWholeArenasGradients_Bf16_L3TwoSlotsLora) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
    auto be = make_cuda_backend(DType::bf16);
    expect_zero2_slots_hold_the_arenas_gradients(*be, 1e-2);
}

// A one-rank communicator for the cuda backend whose reduce-scatter is slow and not the identity: on a stream of
// its own, after the compute stream's work and a 20 ms host-side pause, it doubles the buffer (as if a second
// rank held the same gradients), through pinned host memory. Marks and joins are events, as NCCL's are. A slot
// kept before its collective finished, or taken again (zeroed, overwritten) while it still runs, then shows as
// a wrong sum: the ordering that only a GPU's streams can get wrong.
class SlowDoublingComm final : public Comm {
   public:
    // capacity: bytes of all the reduce-scatters to come. The pinned memory is taken here, once: a page-locked
    // allocation between two commands of different streams may serialise them (the CUDA guide's implicit
    // synchronization), which would hide a missing wait.
    SlowDoublingComm(Backend& be, size_t capacity) : compute_(static_cast<cudaStream_t>(cuda_stream_of(be))), cap_(capacity) {
        EXPECT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
        EXPECT_EQ(cudaMallocHost(&pool_, cap_), cudaSuccess);
        for (cudaEvent_t* e : {&ready_, &done_}) EXPECT_EQ(cudaEventCreateWithFlags(e, cudaEventDisableTiming), cudaSuccess);
    }
    ~SlowDoublingComm() override {
        cudaStreamSynchronize(stream_);
        for (Job* j : jobs_) delete j;
        cudaFreeHost(pool_);
        for (cudaEvent_t e : marks_) cudaEventDestroy(e);
        cudaEventDestroy(ready_);
        cudaEventDestroy(done_);
        cudaStreamDestroy(stream_);
    }
    int rank() const override { return 0; }
    int world() const override { return 1; }
    std::string kind() const override { return "test"; }
    void bind(Backend&) override {}
    void allreduce_sum(void*, DType, size_t, const char*) override { ADD_FAILURE() << "ZeRO-2 does not all-reduce"; }
    void reduce_scatter_sum(void* buf, DType dt, const std::vector<size_t>& counts, const char*) override {
        Job* j = new Job{dt, counts.at(0), nullptr};
        jobs_.push_back(j);
        const size_t bytes = j->n * dtype_size(dt);
        if (!bytes) return;
        if (used_ + bytes > cap_) {
            ADD_FAILURE() << "SlowDoublingComm: capacity " << cap_ << " exceeded";
            return;
        }
        j->host = static_cast<char*>(pool_) + used_;
        used_ += (bytes + 255) / 256 * 256;
        cudaEventRecord(ready_, compute_);
        cudaStreamWaitEvent(stream_, ready_, 0);
        cudaLaunchHostFunc(stream_, pause, nullptr);
        cudaMemcpyAsync(j->host, buf, bytes, cudaMemcpyDeviceToHost, stream_);
        cudaLaunchHostFunc(stream_, twice, j);
        cudaMemcpyAsync(buf, j->host, bytes, cudaMemcpyHostToDevice, stream_);
    }
    void all_gather(void*, DType, const std::vector<size_t>&, const char*) override {}  // one rank: in place
    void broadcast(void*, DType, size_t, int, const char*) override {}
    void join() override {
        cudaEventRecord(done_, stream_);
        cudaStreamWaitEvent(compute_, done_, 0);
    }
    uint64_t mark() override {
        cudaEvent_t e;
        EXPECT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
        cudaEventRecord(e, stream_);
        marks_.push_back(e);
        return marks_.size() - 1;
    }
    void wait(uint64_t mark) override { cudaStreamWaitEvent(compute_, marks_.at(mark), 0); }
    void all_gather_host(void*, size_t, const char*) override {}
    void gather_host(void*, const std::vector<size_t>&, int, const char*) override {}
    [[noreturn]] void abort(const std::string& why) override {
        std::fprintf(stderr, "%s\n", why.c_str());
        std::abort();
    }

   private:
    struct Job {
        DType dt;
        size_t n;
        void* host;
    };
    static void CUDART_CB pause(void*) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }
    static void CUDART_CB twice(void* p) {  // exact in every type: the exponent goes up by one
        const Job& j = *static_cast<Job*>(p);
        if (j.dt == DType::f32) {
            float* v = static_cast<float*>(j.host);
            for (size_t i = 0; i < j.n; i++) v[i] *= 2.0f;
        } else {  // bf16: widen, double, narrow (exactly)
            uint16_t* v = static_cast<uint16_t*>(j.host);
            for (size_t i = 0; i < j.n; i++) {
                uint32_t bits = (uint32_t)v[i] << 16;
                float x;
                std::memcpy(&x, &bits, 4);
                x *= 2.0f;
                std::memcpy(&bits, &x, 4);
                v[i] = (uint16_t)(bits >> 16);
            }
        }
    }
    cudaStream_t compute_ = nullptr, stream_ = nullptr;
    cudaEvent_t ready_ = nullptr, done_ = nullptr;
    std::vector<cudaEvent_t> marks_;
    std::vector<Job*> jobs_;
    void* pool_ = nullptr;
    size_t cap_ = 0, used_ = 0;
};

void expect_slow_collectives_waited_for(int micro) {
    auto be = make_cuda_backend(DType::bf16);
    const ModelConfig cfg = small_config(37, 5, 3, 24, 16);
    ModelOptions slots;
    slots.grad_slots = 2;
    GPT2 a(cfg, *be, 2, 11), b(cfg, *be, 2, 11, nullptr, slots);
    a.init_random(5);
    for (size_t i = 0; i < a.params().table().size(); i++) set_tensor(b, b.params(), i, get_tensor(a, a.params(), i));
    SlowDoublingComm comm(*be, (size_t)(micro + 1) * (a.grads().elems() + 4096) * 4);
    DataParallel dp(comm, b, 2);
    auto [want, got] = gradients_both_ways(a, b, dp, micro);
    for (double& w : want) w *= 2;
    if (micro == 1)
        EXPECT_EQ(got, want);
    else  // the blocks' sums in another order: to rounding; tensor by tensor (a slot kept early: off by 2x)
        for (size_t g = 0; g < a.grads().table().size(); g++) {
            const TensorInfo& t = a.grads().table()[g];
            EXPECT_TRUE(near_rel(std::vector<double>(got.begin() + t.offset, got.begin() + t.offset + t.numel),
                                 std::vector<double>(want.begin() + t.offset, want.begin() + t.offset + t.numel),
                                 2e-2))
                << t.name;
        }
}

TEST(CudaZero2, WaitsForASlowCollectiveBeforeKeepingOrReusingASlot_Bf16_L5) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
    expect_slow_collectives_waited_for(1);
}

// A slot left by one micro-batch is emptied in the next: its collective still runs through the next forward.
TEST(CudaZero2, WaitsForASlowCollectiveFromThePreviousMicroBatch_Bf16_L5) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
    expect_slow_collectives_waited_for(2);
}

TEST(DistLaunch, EnvironmentVariablesGiveRankWorldAndRendezvous) {
    {
        EnvVars e({{"OMPI_COMM_WORLD_SIZE", nullptr}, {"WORLD_SIZE", nullptr}});
        EXPECT_EQ(launch_info().kind, LaunchInfo::Kind::single);
    }
    {
        EnvVars e({{"OMPI_COMM_WORLD_SIZE", nullptr}, {"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"},
                   {"TUNE_RENDEZVOUS_FILE", "/shared/job.id"}, {"MASTER_ADDR", nullptr}, {"MASTER_PORT", nullptr}});
        const LaunchInfo li = launch_info();
        EXPECT_EQ(li.kind, LaunchInfo::Kind::env);
        EXPECT_EQ(li.rank, 3);
        EXPECT_EQ(li.world, 4);
        EXPECT_EQ(li.local_rank, 1);
        EXPECT_EQ(li.rendezvous_file, "/shared/job.id");
    }
    {
        EnvVars e({{"OMPI_COMM_WORLD_SIZE", "3"}, {"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}});
        const LaunchInfo li = launch_info();
        EXPECT_EQ(li.kind, LaunchInfo::Kind::mpi);
        EXPECT_EQ(li.rank, 2);
        EXPECT_EQ(li.world, 3);
    }
}

TEST(DistLaunch, MalformedVariablesAreNamed) {
    {
        EnvVars e({{"OMPI_COMM_WORLD_SIZE", nullptr}, {"WORLD_SIZE", "2"}, {"RANK", "2"}});
        EXPECT_THAT(error_of([] { launch_info(); }), HasSubstr("RANK"));
    }
    {
        EnvVars e({{"OMPI_COMM_WORLD_SIZE", nullptr}, {"WORLD_SIZE", "2"}, {"RANK", "0"},
                   {"TUNE_RENDEZVOUS_FILE", nullptr}, {"MASTER_ADDR", nullptr}, {"MASTER_PORT", nullptr}});
        EXPECT_THAT(error_of([] { launch_info(); }), HasSubstr("TUNE_RENDEZVOUS_FILE"));
    }
    {
        EnvVars e({{"OMPI_COMM_WORLD_SIZE", nullptr}, {"WORLD_SIZE", "two"}});
        EXPECT_THAT(error_of([] { launch_info(); }), HasSubstr("WORLD_SIZE"));
    }
}

// Runs the rendezvous of `world` ranks in threads; returns what each received.
std::vector<std::string> rendezvous_threads(LaunchInfo base, int world) {
    std::vector<std::string> got(world);
    std::vector<std::string> errors(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; r++)
        threads.emplace_back([&, r] {
            LaunchInfo li = base;
            li.kind = LaunchInfo::Kind::env;
            li.rank = r;
            li.world = world;
            const std::string payload = r == 0 ? std::string("the id of rank 0, 32 bytes long!") : std::string(32, '?');
            try {
                got[r] = rendezvous(li, payload, 20);
            } catch (const std::exception& e) {
                errors[r] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    for (int r = 0; r < world; r++) EXPECT_EQ(errors[r], "") << "rank " << r;
    return got;
}

TEST(DistRendezvous, SharedFileGivesEveryRankRankZerosBytes) {
    TempDir tmp("rdv");
    LaunchInfo li;
    li.rendezvous_file = tmp.file("job.id");
    for (const std::string& s : rendezvous_threads(li, 3)) EXPECT_EQ(s, "the id of rank 0, 32 bytes long!");
    // A file left by an earlier run is refused rather than read by ranks of the new one.
    li.kind = LaunchInfo::Kind::env;
    li.world = 2;
    EXPECT_THAT(error_of([&] { rendezvous(li, std::string(32, 'x'), 1); }), HasSubstr("already exists"));
}

TEST(DistRendezvous, TcpGivesEveryRankRankZerosBytes) {
    // A port that was free a moment ago.
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ASSERT_EQ(::bind(s, (sockaddr*)&a, sizeof a), 0);
    ASSERT_EQ(::getsockname(s, (sockaddr*)&a, &len), 0);
    const int port = ntohs(a.sin_port);
    ::close(s);
    LaunchInfo li;
    li.master_addr = "127.0.0.1";
    li.master_port = port;
    for (const std::string& got : rendezvous_threads(li, 3)) EXPECT_EQ(got, "the id of rank 0, 32 bytes long!");
}

TEST(DistLaunch, CpuBackendWithoutMpirunExplainsHowToStart) {
    TempDir tmp("dist");
    write_shard(tmp.file("t.bin"), std::vector<int32_t>(200, 1), nullptr, 37);
    CmdResult r = run_cmd("WORLD_SIZE=2 RANK=1 TUNE_RENDEZVOUS_FILE=" + tmp.file("id") +
                          " bin/train --device cpu --model tiny --train-data " + tmp.file("t.bin") + " --out ''");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("mpirun"));
}

// ---------------------------------------------------------------------------------------------------------
// bin/train under mpirun

// Options that make OpenMPI work in a container, as root, with more ranks than cores; one OpenMP thread per
// rank so 3 ranks share 2 cores without spinning against each other.
std::string mpirun(int n) {
    return "timeout 120 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader "
           "--mca btl_vader_single_copy_mechanism none -x OMP_NUM_THREADS=1 -np " +
           std::to_string(n) + " ";
}

// The data and starting weights every multi-process test trains from, and readers of what the runs wrote.
struct DistRuns : ::testing::Test {
    void write_data() {
        dir = tmp.path();
        // Learnable runs with a loss mask over about half the tokens in spans, so ranks count different numbers
        // of tokens: the normalisation must use the global count for the equivalence to hold.
        Rng r(7);
        std::vector<int32_t> t;
        std::vector<uint8_t> mask;
        while (t.size() < 4000) {
            const int32_t s = (int32_t)r.below(37);
            const uint8_t m = r.uniform() < 0.5 ? 1 : 0;
            for (int k = 0; k < 6; k++) t.push_back((s + k) % 37), mask.push_back(m);
        }
        write_shard(dir + "/train.bin", t, &mask, 37);
        std::vector<int32_t> v(t.begin(), t.begin() + 800);
        write_shard(dir + "/val.bin", v, nullptr, 37);
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
        m.init_random(3);
        save_checkpoint(dir + "/init.ckpt", m, nullptr, nullptr);
    }
    // bin/train with the test's data (from init.ckpt unless resuming); `extra` sets batch, steps, ...
    std::string train(const std::string& extra, const std::string& out, const std::string& from = "init.ckpt",
                      const std::string& program = "bin/train --device cpu") const {
        const std::string init = extra.find("--resume") == std::string::npos ? " --init " + dir + "/" + from : "";
        return program + init + " --train-data " + dir + "/train.bin --val-data " +
               dir + "/val.bin --seq 13 --lr 3e-3 --warmup 2 --val-batches 2 --quiet " + extra + " --out " + dir +
               "/" + out;
    }
    void run_ok(const std::string& cmd) const {
        CmdResult r = run_cmd(cmd);
        ASSERT_EQ(r.rc, 0) << cmd << "\n" << r.out;
    }
    std::vector<nlohmann::json> metrics(const std::string& run) const {
        std::vector<nlohmann::json> out;
        std::istringstream in(slurp(dir + "/" + run + "/metrics.jsonl"));
        std::string line;
        while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
        return out;
    }
    std::vector<double> series(const std::string& run, const char* key) const {
        std::vector<double> v;
        for (const auto& j : metrics(run))
            if (j.contains(key)) v.push_back(j[key].get<double>());
        return v;
    }
    // Every parameter of a checkpoint, in table order.
    std::vector<double> weights(const std::string& run, int layers = 2) const {
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(37, layers, 3, 24, 16), *be, 1, 1);
        load_checkpoint(dir + "/" + run + "/model.ckpt", m, nullptr, nullptr);
        std::vector<double> w(m.params().elems());
        be->download(w.data(), m.params().base(), m.params().dtype(), w.size());
        return w;
    }
    // init.ckpt with a first MLP layer of weights near FLT_MAX, which overflows every step; returns its values.
    std::vector<double> save_overflowing(const std::string& path) const {
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
        load_checkpoint(dir + "/init.ckpt", m, nullptr, nullptr);
        std::vector<double> w(m.params().elems());
        be->download(w.data(), m.params().base(), m.params().dtype(), w.size());
        const TensorInfo& fc = m.params().table()[(size_t)m.params().table().find("h.0.mlp.c_fc.weight")];
        for (size_t i = 0; i < fc.numel; i++) w[fc.offset + i] = (float)(i % 2 ? -3e38 : 3e38);
        be->upload(m.params().base(), m.params().dtype(), w.data(), w.size());
        save_checkpoint(path, m, nullptr, nullptr);
        return w;
    }
    // The parameters of a resume checkpoint.
    std::vector<double> resume_weights(const std::string& path) const {
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
        load_checkpoint(path, m, nullptr, nullptr);
        std::vector<double> w(m.params().elems());
        be->download(w.data(), m.params().base(), m.params().dtype(), w.size());
        return w;
    }
    void expect_ranks_agree(const std::string& run, int world) const {
        const auto m = metrics(run);
        ASSERT_FALSE(m.empty());
        const auto& last = m.back();
        ASSERT_TRUE(last.contains("ranks_agree")) << last.dump();
        EXPECT_TRUE(last["ranks_agree"].get<bool>()) << run;
        EXPECT_EQ(last["ranks"].get<int>(), world);
    }
    TempDir tmp{"dist"};
    std::string dir;
};

// A model of `layers` blocks for the ZeRO-2 runs: with more blocks than slots, a slot is taken again within one
// backward, after its collective (that wait and keep is the point of the slots).
void save_init(const std::string& path, int layers) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, layers, 3, 24, 16), *be, 1, 1);
    m.init_random(3);
    save_checkpoint(path, m, nullptr, nullptr);
}

struct DistFixture : DistRuns {
    void SetUp() override {
        if (!built_with_mpi()) GTEST_SKIP() << "built without MPI (apt-get install openmpi-bin libopenmpi-dev)";
        if (run_cmd("command -v mpirun").rc != 0) GTEST_SKIP() << "mpirun not found (apt-get install openmpi-bin)";
        write_data();
    }
};

#define RUN_OK(cmd) ASSERT_NO_FATAL_FAILURE(run_ok(cmd))

// The same sums in another order (per rank, then across ranks) in float: the losses agree to the 6 decimals
// metrics.jsonl prints and the weights to a few parts in a million of the largest (measured: 3e-6).
constexpr double kLossTol = 1e-5;
constexpr double kWeightTol = 5e-5;

TEST_F(DistFixture, TwoRanksEqualOneRankWithTheCombinedBatch_MaskedTokensGradAccum) {
    const std::string common = "--grad-accum 2 --steps 6 --val-every 3";
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 4", "one"));
    RUN_OK(mpirun(2) + train(common + " --batch 2", "two"));
    const auto a = series("one", "loss"), b = series("two", "loss");
    ASSERT_EQ(a.size(), 6u);
    EXPECT_TRUE(near_rel(b, a, kLossTol));
    EXPECT_EQ(series("one", "counted_tokens"), series("two", "counted_tokens"));
    EXPECT_TRUE(near_rel(series("two", "val_loss"), series("one", "val_loss"), kLossTol));
    EXPECT_TRUE(near_rel(series("two", "grad_norm"), series("one", "grad_norm"), 1e-4));
    EXPECT_TRUE(near_rel(weights("two"), weights("one"), kWeightTol));
    expect_ranks_agree("two", 2);
}

// A validation split shorter than one window (one padded window) on two ranks: one rank evaluates it, the
// other nothing, and the loss is the one-rank run's.
TEST_F(DistFixture, ShortValidationSplitOnTwoRanksEqualsOneRank) {
    std::vector<int32_t> v;
    for (int i = 0; i < 10; i++) v.push_back((i * 5) % 37);
    write_shard(dir + "/short.bin", v, nullptr, 37);
    const std::string common = "--steps 2 --val-every 1 --val-data " + dir + "/short.bin";
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 4", "one"));
    RUN_OK(mpirun(2) + train(common + " --batch 2", "two"));
    const auto a = series("one", "val_loss"), b = series("two", "val_loss");
    ASSERT_EQ(a.size(), 3u);  // before step 1, after it, at the end
    EXPECT_TRUE(near_rel(b, a, kLossTol));
    // Resuming the finished run (to write model.ckpt again): rank 0's log has the last validation, the other
    // rank does not read the log, and both must skip it alike.
    RUN_OK(mpirun(2) + train(common + " --batch 2 --resume " + dir + "/two/resume.ckpt", "two"));
    EXPECT_EQ(series("two", "val_loss"), b) << "the resume validated again";
    expect_ranks_agree("two", 2);
}

// The fine-tuning methods that touch the step (LoRA with dropout, whose masks go by a sequence's place in the
// global batch, not by rank; an L2-SP penalty added after the reduction; a teacher; replay batches sliced by rank)
// keep the equivalence, and ZeRO-1 stays byte-identical to ZeRO-0.
TEST_F(DistFixture, FineTuningMethodsUnderTwoRanksEqualOneRank_LoraDropoutL2spDistillReplay) {
    const std::string common = "--steps 5 --val-every 0 --lora-rank 2 --lora-dropout 0.3 --l2sp 0.5 --distill 0.3 "
                               "--replay-data " + dir + "/val.bin --replay-frac 0.5 --grad-accum 2";
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 4", "one"));
    RUN_OK(mpirun(2) + train(common + " --batch 2", "two"));
    ASSERT_EQ(series("one", "loss").size(), 5u);
    ASSERT_GT(series("one", "penalty").back(), 0.0);
    EXPECT_TRUE(near_rel(series("two", "loss"), series("one", "loss"), kLossTol));
    EXPECT_TRUE(near_rel(series("two", "grad_norm"), series("one", "grad_norm"), 1e-4));
    std::string no_dropout = common;
    no_dropout.erase(no_dropout.find(" --lora-dropout 0.3"), 19);
    RUN_OK("OMP_NUM_THREADS=1 " + train(no_dropout + " --batch 4", "one_nodrop"));
    EXPECT_FALSE(near_rel(series("one_nodrop", "grad_norm"), series("one", "grad_norm"), 1e-3)) << "dropout was off";
    EXPECT_TRUE(near_rel(series("two", "penalty"), series("one", "penalty"), 1e-4));
    EXPECT_TRUE(near_rel(series("two", "distill_kl"), series("one", "distill_kl"), 1e-4));
    EXPECT_EQ(series("two", "replay_batches"), series("one", "replay_batches"));
    expect_ranks_agree("two", 2);
    // Gradual unfreezing: the frozen tied embedding's head gradient is zeroed before the norm on every rank.
    const std::string unfreeze = "--steps 5 --val-every 0 --unfreeze-every 2 --grad-clip 0.5";
    RUN_OK("OMP_NUM_THREADS=1 " + train(unfreeze + " --batch 4", "u1"));
    RUN_OK(mpirun(2) + train(unfreeze + " --batch 2", "u2"));
    EXPECT_TRUE(near_rel(series("u2", "grad_norm"), series("u1", "grad_norm"), 1e-4));
    EXPECT_TRUE(near_rel(series("u2", "loss"), series("u1", "loss"), kLossTol));
    // Without the overlap the same sums are taken after backward: the same bytes.
    RUN_OK(mpirun(2) + train("--steps 3 --val-every 0 --batch 2 --comm-overlap off", "noov"));
    RUN_OK(mpirun(2) + train("--steps 3 --val-every 0 --batch 2", "ov"));
    EXPECT_EQ(slurp(dir + "/noov/model.ckpt"), slurp(dir + "/ov/model.ckpt"));
    const std::string lora = "--steps 4 --val-every 0 --lora-rank 2 --distill 0.3 --batch 2";
    RUN_OK(mpirun(2) + train(lora + " --zero 0", "lz0"));
    RUN_OK(mpirun(2) + train(lora + " --zero 1", "lz1"));
    EXPECT_EQ(slurp(dir + "/lz0/adapter.ckpt"), slurp(dir + "/lz1/adapter.ckpt"));
    EXPECT_EQ(slurp(dir + "/lz0/resume.ckpt"), slurp(dir + "/lz1/resume.ckpt"));
}

// Isolated document windows (packed documents, each with its positions and its own attention) under two ranks:
// every rank cuts the same windows and takes its rows of them, positions and all, so the run equals one rank
// with the combined batch, validation included. Prompt/completion documents of 3 to 12 tokens, GPT-2's
// <|endoftext|> between them (the tiny model has GPT-2's vocabulary).
TEST_F(DistFixture, IsolatedDocumentWindowsUnderTwoRanksEqualOneRank) {
    Rng r(11);
    std::vector<int32_t> t;
    std::vector<uint8_t> mask;
    while (t.size() < 3000) {
        const int len = 3 + (int)r.below(10), prompt = 1 + (int)r.below(len - 1);
        for (int k = 0; k < len; k++) t.push_back((int32_t)r.below(300)), mask.push_back(k < prompt ? 0 : 1);
        t.push_back(50256), mask.push_back(1);
    }
    write_shard(dir + "/docs.bin", t, &mask, 50257);
    auto run = [&](const std::string& batch, const std::string& out) {
        return "bin/train --device cpu --model tiny --train-data " + dir + "/docs.bin --val-data " + dir +
               "/docs.bin --seq 24 --lr 3e-3 --warmup 2 --steps 4 --grad-accum 2 --val-every 2 --val-batches 3 "
               "--windows isolated --quiet --batch " + batch + " --out " + dir + "/" + out;
    };
    RUN_OK("OMP_NUM_THREADS=1 " + run("4", "iso1"));
    RUN_OK(mpirun(2) + run("2", "iso2"));
    const auto a = series("iso1", "loss");
    ASSERT_EQ(a.size(), 4u);
    EXPECT_TRUE(near_rel(series("iso2", "loss"), a, kLossTol));
    EXPECT_EQ(series("iso2", "counted_tokens"), series("iso1", "counted_tokens"));
    EXPECT_TRUE(near_rel(series("iso2", "val_loss"), series("iso1", "val_loss"), kLossTol));
    EXPECT_TRUE(near_rel(series("iso2", "grad_norm"), series("iso1", "grad_norm"), 1e-4));
    expect_ranks_agree("iso2", 2);
    EXPECT_EQ(checkpoint_trained_on(dir + "/iso2/model.ckpt").windows, Windows::isolated);
}

// A checkpoint's tensor data: what follows its 16-byte preamble and the JSON header.
std::string tensor_bytes(const std::string& path) {
    const std::string b = slurp(path);
    return b.size() < 16 ? "" : b.substr(16 + load_u32(reinterpret_cast<const uint8_t*>(b.data()) + 12));
}

// L2-SP and EWC under ZeRO-1 and 2: each rank keeps its piece of the anchor and the Fisher (beside its piece
// of the master weights), adds the penalty's gradient to its piece of the gradients, and the penalties are
// summed over the pieces: the same bytes as ZeRO-0, where every rank holds and adds all of it. The anchor is
// gathered into resume checkpoints (the same file) and scattered from them; a Fisher estimated under ZeRO-1 is
// gathered into the same file. ZeRO-2 cannot estimate a Fisher (no whole gradient) and says so.
TEST_F(DistFixture, L2spAndEwcUnderZero1And2AreByteIdenticalToZero0) {
    const std::string fisher = dir + "/fisher.safetensors", fisher1 = dir + "/fisher1.safetensors";
    const std::string common = "--steps 4 --val-every 0 --batch 2 --l2sp 0.5 --ewc 20 --fisher-batches 2";
    const std::string estimate = " --fisher-data " + dir + "/val.bin";
    CmdResult r = run_cmd(mpirun(2) + train(common + " --fisher " + fisher + estimate + " --zero 2", "refused"));
    EXPECT_NE(r.rc, 0);
    EXPECT_THAT(r.out, HasSubstr("--zero 2 keeps no whole gradient to estimate the Fisher from")) << r.out;
    RUN_OK(mpirun(3) + train(common + " --fisher " + fisher + estimate + " --zero 0", "z0"));
    RUN_OK(mpirun(3) + train(common + " --fisher " + fisher1 + estimate + " --zero 1", "z1"));
    EXPECT_EQ(slurp(fisher), slurp(fisher1));
    RUN_OK(mpirun(3) + train(common + " --fisher " + fisher + " --zero 2", "z2"));
    // A Fisher file that one rank sees and the other does not (file systems the ranks do not share; here two
    // paths through mpirun's one-command-per-rank form): refused on both, not read on one and estimated on the other.
    std::string split = mpirun(2);
    split.replace(split.find("-np 2"), 5, "-np 1 " + train(common + " --fisher " + fisher + estimate, "split") +
                                              " : -np 1");
    CmdResult mixed = run_cmd(split + " " + train(common + " --fisher " + dir + "/absent.safetensors" + estimate, "split"));
    EXPECT_NE(mixed.rc, 0);
    EXPECT_THAT(mixed.out, HasSubstr("the file exists for some ranks and not for others")) << mixed.out;
    ASSERT_GT(series("z0", "penalty").back(), 0.0);
    for (const char* run : {"z1", "z2"}) {
        EXPECT_EQ(slurp(dir + "/z0/model.ckpt"), slurp(dir + "/" + run + "/model.ckpt")) << run;
        // The tensors (weights, moments, anchor) byte for byte; the headers differ in the options recorded.
        EXPECT_TRUE(tensor_bytes(dir + "/z0/resume.ckpt") == tensor_bytes(dir + "/" + run + "/resume.ckpt")) << run;
        EXPECT_TRUE(near_rel(series(run, "penalty"), series("z0", "penalty"), 1e-12)) << run;
        EXPECT_EQ(series(run, "loss"), series("z0", "loss")) << run;
    }
    // Halted and resumed under ZeRO-2 on 2 ranks (the anchor scattered from the checkpoint): the same bytes as
    // running through on 2 ranks.
    RUN_OK(mpirun(2) + train(common + " --fisher " + fisher + " --zero 2", "full2"));
    RUN_OK(mpirun(2) + train(common + " --fisher " + fisher + " --zero 2 --halt-at 2", "half2"));
    std::filesystem::copy_file(dir + "/half2/resume.ckpt", dir + "/step2.ckpt");
    RUN_OK(mpirun(2) + train(common + " --fisher " + fisher + " --zero 2 --resume " + dir + "/step2.ckpt", "half2"));
    EXPECT_EQ(slurp(dir + "/full2/model.ckpt"), slurp(dir + "/half2/model.ckpt"));
}

// Only the final LayerNorm trains: two vectors of 24, each padded to 64 elements, cut over three ranks at
// [0, 64, 64, 128], so rank 1's ZeRO piece is empty. It still takes part in every L2-SP collective (the penalty's
// sum, the anchor's gathers into checkpoints): the same bytes as ZeRO-0, not ranks out of step.
TEST_F(DistFixture, L2spWithAnEmptyZeroPieceOnOneRankEqualsZero0) {
    const std::string common = "--steps 3 --val-every 0 --batch 2 --train-only 'ln_f.*' --l2sp 0.5 --comm-timeout 30";
    RUN_OK(mpirun(3) + train(common + " --zero 0", "z0"));
    RUN_OK(mpirun(3) + train(common + " --zero 1", "z1"));
    ASSERT_GT(series("z0", "penalty").back(), 0.0);
    EXPECT_TRUE(near_rel(series("z1", "penalty"), series("z0", "penalty"), 1e-12));
    EXPECT_EQ(slurp(dir + "/z0/model.ckpt"), slurp(dir + "/z1/model.ckpt"));
    EXPECT_TRUE(tensor_bytes(dir + "/z0/resume.ckpt") == tensor_bytes(dir + "/z1/resume.ckpt"));
    expect_ranks_agree("z1", 3);
}

// Each rank reads --init itself: one that reads other weights (a node-local path holding another file; here
// mpirun's one-command-per-rank form) is refused at the start, naming the rank, not trained for a whole run.
TEST_F(DistFixture, RanksStartingFromDifferentWeightsAreRefusedAtTheStart) {
    auto be = make_cpu_backend(DType::f32);
    GPT2 other(small_config(37, 2, 3, 24, 16), *be, 1, 1);
    other.init_random(4);
    save_checkpoint(dir + "/other.ckpt", other, nullptr, nullptr);
    const std::string common = "--steps 2 --val-every 0 --batch 2";
    std::string split = mpirun(2);
    split.replace(split.find("-np 2"), 5, "-np 1 " + train(common, "split") + " : -np 1");
    CmdResult r = run_cmd(split + " " + train(common, "split", "other.ckpt"));
    EXPECT_NE(r.rc, 0);
    EXPECT_THAT(r.out, HasSubstr("rank 1 starts from other weights than rank 0: every rank reads --init ")) << r.out;
}

TEST_F(DistFixture, ThreeRanksZero1IsByteIdenticalToZero0AndEqualsOneRank) {
    const std::string common = "--steps 5 --val-every 0";
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 6", "one"));
    RUN_OK(mpirun(3) + train(common + " --batch 2 --zero 0", "z0"));
    RUN_OK(mpirun(3) + train(common + " --batch 2 --zero 1", "z1"));
    EXPECT_EQ(series("z0", "loss"), series("z1", "loss"));
    EXPECT_EQ(slurp(dir + "/z0/model.ckpt"), slurp(dir + "/z1/model.ckpt"));
    // The sharded Adam state gathered into the resume checkpoint is the replicated one, byte for byte.
    EXPECT_EQ(slurp(dir + "/z0/resume.ckpt"), slurp(dir + "/z1/resume.ckpt"));
    EXPECT_TRUE(near_rel(series("z1", "loss"), series("one", "loss"), kLossTol));
    EXPECT_TRUE(near_rel(weights("z1"), weights("one"), kWeightTol));
    expect_ranks_agree("z1", 3);
}

TEST_F(DistFixture, Zero1WithFrozenLayersEqualsZero0) {
    // Frozen tensors make the parameter and gradient layouts differ: the all-gather packs and unpacks.
    const std::string common = "--steps 4 --val-every 0 --batch 2 --train-top 1";
    RUN_OK(mpirun(2) + train(common + " --zero 0", "z0"));
    RUN_OK(mpirun(2) + train(common + " --zero 1", "z1"));
    EXPECT_EQ(slurp(dir + "/z0/model.ckpt"), slurp(dir + "/z1/model.ckpt"));
    expect_ranks_agree("z1", 2);
}


// ZeRO-2 with one micro-batch per step takes the ZeRO-1 sums (plus a zero): the same bytes. Five blocks on two
// slots; three ranks cut the buckets unevenly; frozen tensors and LoRA give buckets of two ranges and make the
// parameter all-gather go through the gradient memory bucket by bucket; prefix tuning writes the rest bucket
// from every block; full recomputation reruns each block's forward after it took its slot, and a chunked head
// writes the wte gradient before backward; gradual unfreezing zeroes a frozen tensor's piece.
TEST_F(DistFixture, Zero2IsByteIdenticalToZero1WithOneMicroBatch_ThreeRanksL5FrozenLoraPrefixUnfreezing) {
    save_init(dir + "/init5.ckpt", 5);
    const std::string common = "--steps 4 --val-every 0 --batch 2";
    for (const std::string& extra : {std::string(""), std::string(" --train-top 3 --lora-rank 2"),
                                     std::string(" --virtual prefix --virtual-tokens 2 --virtual-hidden 8"),
                                     std::string(" --recompute full --head-chunk 5 --lora-rank 2 --lora-dropout 0.1"),
                                     std::string(" --unfreeze-every 1 --grad-clip 0.5")}) {
        SCOPED_TRACE(extra);
        RUN_OK(mpirun(3) + train(common + extra + " --zero 1 --overwrite", "z1", "init5.ckpt"));
        RUN_OK(mpirun(3) + train(common + extra + " --zero 2 --overwrite", "z2", "init5.ckpt"));
        EXPECT_EQ(series("z1", "loss"), series("z2", "loss"));
        EXPECT_EQ(series("z1", "grad_norm"), series("z2", "grad_norm"));
        EXPECT_EQ(slurp(dir + "/z1/model.ckpt"), slurp(dir + "/z2/model.ckpt"));
        EXPECT_EQ(slurp(dir + "/z1/resume.ckpt"), slurp(dir + "/z2/resume.ckpt"));
        expect_ranks_agree("z2", 3);
    }
}

// With several micro-batches ZeRO-2 reduces the blocks' buckets of each one (a slot is emptied in the next
// micro-batch) and adds the pieces: the sums agree with ZeRO-1 and with one process to rounding. A chunked LM head
// (its wte gradient written before backward), distillation and replay ride along; --comm-overlap off waits for
// each bucket as it is reduced: the same bytes as with overlap.
TEST_F(DistFixture, Zero2WithGradAccumAgreesWithZero1AndOneRank_L3HeadChunkDistillReplay) {
    save_init(dir + "/init3.ckpt", 3);
    const std::string common = "--steps 5 --val-every 0 --grad-accum 3 --head-chunk 5 --distill 0.3 --replay-data " +
                               dir + "/val.bin --replay-frac 0.3";
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 4", "one", "init3.ckpt"));
    RUN_OK(mpirun(2) + train(common + " --batch 2 --zero 1", "z1", "init3.ckpt"));
    RUN_OK(mpirun(2) + train(common + " --batch 2 --zero 2", "z2", "init3.ckpt"));
    RUN_OK(mpirun(2) + train(common + " --batch 2 --zero 2 --comm-overlap off", "z2off", "init3.ckpt"));
    ASSERT_EQ(series("z2", "loss").size(), 5u);
    EXPECT_TRUE(near_rel(series("z2", "loss"), series("z1", "loss"), kLossTol));
    EXPECT_TRUE(near_rel(series("z2", "loss"), series("one", "loss"), kLossTol));
    EXPECT_TRUE(near_rel(series("z2", "grad_norm"), series("z1", "grad_norm"), 1e-4));
    EXPECT_TRUE(near_rel(weights("z2", 3), weights("z1", 3), kWeightTol));
    EXPECT_TRUE(near_rel(weights("z2", 3), weights("one", 3), kWeightTol));
    EXPECT_EQ(slurp(dir + "/z2/model.ckpt"), slurp(dir + "/z2off/model.ckpt"));
    expect_ranks_agree("z2", 2);
}

TEST_F(DistFixture, ResumeIsBitExactWithTheSameRanksAndContinuesWithOthers) {
    const std::string common = "--steps 6 --val-every 0 --zero 1";
    // 2 ranks, uninterrupted vs halted at 3 and resumed: byte-identical.
    RUN_OK(mpirun(2) + train(common + " --batch 2", "full"));
    RUN_OK(mpirun(2) + train(common + " --batch 2 --halt-at 3", "split"));
    std::filesystem::copy_file(dir + "/split/resume.ckpt", dir + "/step3.ckpt");
    RUN_OK(mpirun(2) + train(common + " --batch 2 --resume " + dir + "/step3.ckpt", "split"));
    EXPECT_EQ(series("full", "loss"), series("split", "loss"));
    EXPECT_EQ(slurp(dir + "/full/model.ckpt"), slurp(dir + "/split/model.ckpt"));
    // 2 ranks for 3 steps, then 3 ranks: the optimizer shards are re-partitioned and the data continues where
    // it stopped, exactly as one process that changes its batch from 4 to 6 windows at step 3.
    CmdResult grow = run_cmd(mpirun(3) + train(common + " --batch 2 --resume " + dir + "/step3.ckpt", "grow"));
    ASSERT_EQ(grow.rc, 0) << grow.out;
    EXPECT_THAT(grow.out, HasSubstr("--batch x ranks 6 (was 4)"));  // the optimizer's batch grew: said so
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 4 --halt-at 3", "one"));
    RUN_OK("OMP_NUM_THREADS=1 " + train(common + " --batch 6 --resume " + dir + "/one/resume.ckpt", "one"));
    std::vector<double> grown = series("split", "loss");
    grown.resize(3);
    for (double l : series("grow", "loss")) grown.push_back(l);
    EXPECT_TRUE(near_rel(grown, series("one", "loss"), kLossTol));
    EXPECT_TRUE(near_rel(weights("grow"), weights("one"), kWeightTol));
    expect_ranks_agree("grow", 3);
    // And shrinking: the 2-rank ZeRO-1 checkpoint continued by one process with the combined batch of 4 is the
    // 2-rank run going on (the optimizer shards gathered, the data position kept).
    CmdResult shrink =
        run_cmd("OMP_NUM_THREADS=1 " + train("--steps 6 --val-every 0 --batch 4 --resume " + dir + "/step3.ckpt", "shrink"));
    ASSERT_EQ(shrink.rc, 0) << shrink.out;
    EXPECT_THAT(shrink.out, Not(HasSubstr("changed options"))) << "2 ranks x 2 resumed as 1 x 4 is the same run";
    std::vector<double> tail = series("full", "loss");
    tail.erase(tail.begin(), tail.begin() + 3);
    EXPECT_TRUE(near_rel(series("shrink", "loss"), tail, kLossTol));
    EXPECT_TRUE(near_rel(weights("shrink"), weights("full"), kWeightTol));
    // The same checkpoint continued under ZeRO-2 (one micro-batch per step): the ZeRO-1 run's bytes.
    RUN_OK(mpirun(3) + train("--steps 6 --val-every 0 --zero 2 --batch 2 --resume " + dir + "/step3.ckpt", "grow2"));
    EXPECT_EQ(slurp(dir + "/grow/model.ckpt"), slurp(dir + "/grow2/model.ckpt"));
}

// Rank 0 writing a checkpoint for longer than --comm-timeout (here a test hook makes each write take 2 s) is not
// a dead rank: the others wait for the write, not in the next collective, and the run finishes.
TEST_F(DistFixture, ACheckpointWriteLongerThanTheCommTimeoutIsWaitedFor) {
    std::string launch = mpirun(2);
    launch.replace(launch.find("-np"), 3, "-x TUNE_TEST_SLOW_CHECKPOINT=2 -np");
    // ZeRO-1: the other rank first takes part in gathering the optimizer's state, then waits for the write.
    CmdResult r = run_cmd(launch + train("--steps 2 --val-every 0 --batch 2 --ckpt-every 1 --comm-timeout 1 --zero 1",
                                         "slow"));
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_FALSE(slurp(dir + "/slow/model.ckpt").empty());
    expect_ranks_agree("slow", 2);
}

// A rank that makes one host collective the others do not (TUNE_TEST_FAIL skew) would pair its sums with theirs,
// one off, without a complaint from the transport: the hash of what each rank sums stops the job at once.
TEST_F(DistFixture, RanksOutOfStepAreStoppedAtTheFirstMismatchedSum) {
    std::string launch = mpirun(2);
    launch.replace(launch.find("-np"), 3, "-x TUNE_TEST_FAIL=1:2:skew -np");
    CmdResult r = run_cmd(launch + train("--steps 4 --val-every 0 --batch 2 --comm-timeout 30", "skew"));
    EXPECT_NE(r.rc, 0);
    EXPECT_THAT(r.out, AnyOf(HasSubstr("rank 1 is in another collective than 'counted tokens': the ranks are out of "
                                       "step"),
                             HasSubstr("rank 0 is in another collective than 'TUNE_TEST_FAIL skew'")))
        << r.out;
}

// Over MPI too: every rank exits with status 1 through MPI_Finalize, and mpirun reports that status; nothing is
// aborted (no MPI_ABORT banner, no "stopping every rank"), and rank 0's checkpoint holds the last good weights.
TEST_F(DistFixture, AnAgreedStopEndsEveryRankInOrderWithItsStatus) {
    const std::vector<double> w = save_overflowing(dir + "/huge.ckpt");
    CmdResult r = run_cmd(mpirun(2) + train("--steps 20 --batch 2 --val-every 0 --max-bad-steps 2", "nonfinite",
                                            "huge.ckpt"));
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("steps in a row had a non-finite loss or gradient")) << r.out;
    EXPECT_THAT(r.out, Not(HasSubstr("stopping every rank"))) << r.out;
    EXPECT_THAT(r.out, Not(HasSubstr("MPI_ABORT"))) << r.out;
    std::vector<double> back;
    ASSERT_NO_THROW(back = resume_weights(dir + "/nonfinite/resume.ckpt"));
    EXPECT_EQ(back, w);
}

TEST_F(DistFixture, ADeadRankEndsTheJobQuicklyNamingIt) {
    const auto t0 = std::chrono::steady_clock::now();
    CmdResult r = run_cmd("TUNE_TEST_FAIL=1:3:die " + mpirun(2) + "-x TUNE_TEST_FAIL " +
                          train("--steps 20 --batch 2 --val-every 0", "dead"));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_NE(r.rc, 124) << "timed out: " << r.out;
    EXPECT_LT(secs, 60) << r.out;
    // Named by someone other than the dying rank itself (mpirun: "process rank 1 ... exited on signal 9").
    std::string others;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);)
        if (line.find("TUNE_TEST_FAIL") == std::string::npos) others += line + "\n";
    EXPECT_THAT(others, HasSubstr("rank 1")) << r.out;
}

TEST_F(DistFixture, AHangingRankTimesOutAndIsNamed) {
    const auto t0 = std::chrono::steady_clock::now();
    CmdResult r = run_cmd("TUNE_TEST_FAIL=1:3:hang " + mpirun(2) + "-x TUNE_TEST_FAIL " +
                          train("--steps 20 --batch 2 --val-every 0 --comm-timeout 2", "hung"));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_NE(r.rc, 124) << "timed out: " << r.out;
    EXPECT_LT(secs, 60) << r.out;
    EXPECT_THAT(r.out, HasSubstr("rank 0: collective"));
    EXPECT_THAT(r.out, HasSubstr("no answer from rank 1"));
}

// ---------------------------------------------------------------------------------------------------------
// NCCL, one rank (the multi-GPU run is scripts/multi_gpu_check.sh)

TEST(DistNccl, EveryCollectiveOnOneRank) {
    if (!built_with_nccl()) GTEST_SKIP() << "built without NCCL (nccl.h not found)";
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
    // Equal pieces go through ncclReduceScatter/ncclAllGather; TUNE_NCCL_GROUPED forces the grouped
    // ncclReduce/ncclBroadcast path that uneven pieces take.
    for (const char* grouped : {(const char*)nullptr, "1"})
    for (DType dt : {DType::f32, DType::bf16}) {
        EnvVars env({std::pair<std::string, const char*>("TUNE_NCCL_GROUPED", grouped)});
        auto be = make_cuda_backend(dt);
        std::unique_ptr<Comm> c = make_nccl_comm(LaunchInfo{}, *be, 60);
        ASSERT_EQ(c->world(), 1);
        const size_t n = 1000;
        std::vector<float> x(n);
        for (size_t i = 0; i < n; i++) x[i] = (float)(i % 17) - 8.0f;  // exact in bf16
        void* buf = be->alloc(n * dtype_size(dt));
        std::vector<float> got(n);
        auto check = [&](const char* what) {
            c->join();
            std::fill(got.begin(), got.end(), NAN);
            be->download(got.data(), buf, dt, n);
            EXPECT_EQ(got, x) << what << " " << dtype_name(dt);
        };
        be->upload(buf, dt, x.data(), n);
        c->allreduce_sum(buf, dt, n, "test all-reduce");
        check("all-reduce");
        c->reduce_scatter_sum(buf, dt, {n}, "test reduce-scatter");
        check("reduce-scatter");
        c->all_gather(buf, dt, {n}, "test all-gather");
        check("all-gather");
        c->broadcast(buf, dt, n, 0, "test broadcast");
        check("broadcast");
        EXPECT_EQ(c->sum(2.5, "test sum"), 2.5);
        EXPECT_EQ(c->sum((uint64_t)7, "test sum"), 7u);
        EXPECT_TRUE(c->any(true, "test any"));
        c->barrier("test barrier");
        std::vector<float> h = {1, 2, 3};
        c->gather_host(h.data(), {h.size() * sizeof(float)}, 0, "test gather");
        EXPECT_EQ(h, (std::vector<float>{1, 2, 3}));
        be->free(buf);
    }
}

TEST(DistNccl, OneRankNcclTrainingEqualsThePlainRun) {
    if (!built_with_nccl()) GTEST_SKIP() << "built without NCCL (nccl.h not found)";
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
    TempDir tmp("nccl");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    for (int i = 0; i < 4000; i++) t.push_back((i * 5) % 37);
    write_shard(d + "/train.bin", t, nullptr, 37);
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, 3, 3, 24, 16), *be, 1, 1);  // 3 blocks: ZeRO-2 takes a slot again (NcclComm::wait)
    m.init_random(1);
    save_checkpoint(d + "/init.ckpt", m, nullptr, nullptr);
    const std::string args = " --device cuda --precision bf16 --init " + d + "/init.ckpt --train-data " + d +
                             "/train.bin --batch 4 --seq 13 --steps 4 --val-every 0 --quiet --out " + d;
    CmdResult plain = run_cmd(cuda_tool("train") + args + "/plain");
    ASSERT_EQ(plain.rc, 0) << plain.out;
    for (const char* variant : {"--zero 0", "--zero 1", "--zero 1 (grouped)", "--zero 2", "--zero 2 (grouped)"}) {
        const std::string v = variant;
        const std::string env = v.find("grouped") != std::string::npos ? "TUNE_NCCL_GROUPED=1 " : "";
        CmdResult nccl = run_cmd(env + "TUNE_NCCL_ONE_RANK=1 " + cuda_tool("train") + " " + v.substr(0, 8) + args +
                                 "/nccl --overwrite");
        ASSERT_EQ(nccl.rc, 0) << nccl.out;
        EXPECT_EQ(slurp(d + "/plain/model.ckpt"), slurp(d + "/nccl/model.ckpt")) << variant;
        EXPECT_EQ(slurp(d + "/plain/resume.ckpt"), slurp(d + "/nccl/resume.ckpt")) << variant;
        EXPECT_THAT(slurp(d + "/nccl/metrics.jsonl"), HasSubstr("\"ranks_agree\":true")) << variant;
    }
}

// ---------------------------------------------------------------------------------------------------------
// NCCL, several ranks: on a machine with two GPUs or more, and on the CUDA emulator, whose NCCL runs a world of
// processes that meet in shared memory (tests/emu/nccl_emu.cpp). Started as a scheduler would, through
// RANK/WORLD_SIZE/LOCAL_RANK and a rendezvous file, with nobody to kill the other ranks when one fails: what
// stops them is this program's own watchdog and roll call.

struct DistNcclRanks : DistRuns {
    void SetUp() override {
        if (!built_with_nccl()) GTEST_SKIP() << "built without NCCL (nccl.h not found)";
        if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
        if (!cuda_is_emulator() && cuda_device_count() < 3)
            GTEST_SKIP() << "needs 3 GPUs (one per rank; NCCL refuses two ranks on one GPU), or the CUDA emulator";
        write_data();
    }
    // The command that starts `world` ranks of bin/train (the CUDA build under test) with `extra`, each rank's
    // environment prefixed by `env`, and fails when any rank fails. The rendezvous file is new each time.
    std::string ranks(int world, const std::string& extra, const std::string& out, const std::string& env = "",
                      const std::string& from = "init.ckpt") {
        const std::string rdv = dir + "/rdv" + std::to_string(++launches);
        // Should the test fail to stop a rank, the timeout kills them all (a rank left behind would hold the
        // output pipe open, and the test would wait for it forever).
        return "timeout 120 bash -c 'pids=(); trap \"kill -9 \\${pids[@]} 2>/dev/null; exit 124\" TERM; "
               "for r in $(seq 0 " + std::to_string(world - 1) + "); do " + env +
               " TUNE_RENDEZVOUS_FILE=" + rdv + " RANK=$r LOCAL_RANK=$r WORLD_SIZE=" + std::to_string(world) + " " +
               train(extra, out, from, cuda_tool("train") + " --device cuda") + " & pids+=($!); done; rc=0; for p in ${pids[@]}; do wait $p || rc=1; done; exit $rc'";
    }
    int launches = 0;
};

TEST_F(DistNcclRanks, TwoAndThreeRanksTrainAsOneWithTheCombinedBatch_ZeroOneAndTwo) {
    const std::string common = "--steps 4 --val-every 2";
    RUN_OK(train(common + " --batch 6", "one", "init.ckpt", cuda_tool("train") + " --device cuda"));
    RUN_OK(ranks(2, common + " --batch 3", "two"));
    RUN_OK(ranks(3, common + " --batch 2 --zero 1", "three_z1"));
    RUN_OK(ranks(3, common + " --batch 2 --zero 2", "three_z2"));
    const auto one = series("one", "loss");
    ASSERT_EQ(one.size(), 4u);
    for (const char* run : {"two", "three_z1", "three_z2"}) {
        EXPECT_TRUE(near_rel(series(run, "loss"), one, kLossTol)) << run;
        EXPECT_EQ(series(run, "counted_tokens"), series("one", "counted_tokens")) << run;
        EXPECT_TRUE(near_rel(series(run, "val_loss"), series("one", "val_loss"), kLossTol)) << run;
        EXPECT_TRUE(near_rel(weights(run), weights("one"), kWeightTol)) << run;
    }
    expect_ranks_agree("two", 2);
    expect_ranks_agree("three_z2", 3);
    // ZeRO-2 reduces the same pieces as ZeRO-1 (one micro-batch per step): the same bytes. 3 ranks cut the
    // buckets unevenly, so this goes through the grouped ncclReduce/ncclBroadcast path.
    EXPECT_EQ(slurp(dir + "/three_z1/model.ckpt"), slurp(dir + "/three_z2/model.ckpt"));
    EXPECT_EQ(slurp(dir + "/three_z1/resume.ckpt"), slurp(dir + "/three_z2/resume.ckpt"));
}

// ZeRO-2 over NCCL with more blocks than slots and several micro-batches: each slot is taken again while its
// reduce-scatter may still be queued on the communicator's stream. The compute stream waits for that collective's
// event (Comm::wait) before it keeps its piece and overwrites the slot; without the wait the emulator, which runs
// each stream's work only when another waits for it, reads the slot unreduced or overwritten.
TEST_F(DistNcclRanks, Zero2TakesEachSlotAgainOnlyAfterItsCollective_L3GradAccum) {
    save_init(dir + "/init3.ckpt", 3);
    const std::string common = "--steps 3 --val-every 0 --grad-accum 2";
    RUN_OK(train(common + " --batch 4", "one", "init3.ckpt", cuda_tool("train") + " --device cuda"));
    RUN_OK(ranks(2, common + " --batch 2 --zero 2", "z2", "", "init3.ckpt"));
    ASSERT_EQ(series("z2", "loss").size(), 3u);
    EXPECT_TRUE(near_rel(series("z2", "loss"), series("one", "loss"), kLossTol));
    EXPECT_TRUE(near_rel(weights("z2", 3), weights("one", 3), kWeightTol));
    expect_ranks_agree("z2", 2);
}

TEST_F(DistNcclRanks, AHungRankIsNamedAndEveryRankStops) {
    const auto t0 = std::chrono::steady_clock::now();
    CmdResult r = run_cmd(ranks(3, "--steps 20 --batch 2 --val-every 0 --comm-timeout 3", "hung", "TUNE_TEST_FAIL=1:3:hang"));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_LT(secs, 60) << "the hung rank itself must stop too (rank 0 gone), not wait for the test's timeout\n" << r.out;
    // Ranks 0 and 2 waited in the step's first collective, which rank 1 never entered.
    EXPECT_THAT(r.out, HasSubstr("has not finished after 3 s (--comm-timeout 3): rank 1 never entered it: it hangs "
                                 "after entering collective #"))
        << r.out;
}

TEST_F(DistNcclRanks, ADeadRankStopsEveryOtherWithinSecondsNamed) {
    const auto t0 = std::chrono::steady_clock::now();
    CmdResult r = run_cmd(ranks(3, "--steps 20 --batch 2 --val-every 0", "dead", "TUNE_TEST_FAIL=2:3:die"));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_LT(secs, 60) << "at the default --comm-timeout of 600 s, only the roll call stops them\n" << r.out;
    EXPECT_THAT(r.out, HasSubstr("rank 0: rank 2 died after entering collective #")) << r.out;
    EXPECT_THAT(r.out, HasSubstr("rank 1: rank 2 died after entering collective #")) << r.out;
}

// Every rank sees the same non-finite steps (a first MLP layer of weights near FLT_MAX overflows) and stops
// together; rank 0
// then writes the last good weights while the others have already gone. Their going (a stop, not a death)
// must not cut rank 0's write short.
// The ranks agree on the stop (every step's decisions are made from shared values), so they end together with
// status 1, each shutting down in order: no rank is stopped by another, none aborts the job.
TEST_F(DistNcclRanks, ANonFiniteStopLeavesRankZerosCheckpointWhole) {
    const std::vector<double> w = save_overflowing(dir + "/huge.ckpt");
    CmdResult r = run_cmd(ranks(3, "--steps 20 --batch 2 --val-every 0 --zero 1 --max-bad-steps 2", "nonfinite", "",
                                "huge.ckpt"));
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("steps in a row had a non-finite loss or gradient")) << r.out;
    EXPECT_THAT(r.out, Not(HasSubstr("stopping every rank"))) << "an agreed stop aborts nothing\n" << r.out;
    EXPECT_THAT(r.out, Not(HasSubstr("rank 0: rank "))) << "rank 0 must not stop on the others' going\n" << r.out;
    std::vector<double> back;
    ASSERT_NO_THROW(back = resume_weights(dir + "/nonfinite/resume.ckpt"));
    EXPECT_EQ(back, w) << "no step was good, so the last good weights are those it started from";
}

}  // namespace
}  // namespace tune::test
