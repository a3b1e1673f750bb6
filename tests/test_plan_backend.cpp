// The planning backend behind --memory-map (kernels/plan_backend.h): the arenas of the real run, tensor by tensor
// (name, shape, offset, type), with no memory behind them and nothing computed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/plan_backend.h"
#include "tests/test_util.h"
#include "tests/trainer_util.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

void expect_same_layout(const Arena& plan, const Arena& real, const std::string& what) {
    EXPECT_EQ(plan.dtype(), real.dtype()) << what;
    EXPECT_EQ(plan.elems(), real.elems()) << what;
    EXPECT_EQ(plan.bytes(), real.bytes()) << what;
    ASSERT_EQ(plan.table().size(), real.table().size()) << what;
    for (size_t i = 0; i < plan.table().size(); i++) {
        const TensorInfo &p = plan.table()[i], &r = real.table()[i];
        EXPECT_EQ(p.name, r.name) << what;
        EXPECT_EQ(p.shape, r.shape) << what << " " << r.name;
        EXPECT_EQ(p.offset, r.offset) << what << " " << r.name;
    }
}

struct Variant {
    const char* name;
    std::function<void(TrainArgs&)> apply;
};

class PlanBackendRuns : public TrainerFixture {
   protected:
    // Each variant built twice, for real and planned: every arena the memory map prints is the same.
    void expect_plans_match(const std::string& device, const std::string& precision,
                            const std::string& init = "init.ckpt") {
        const std::vector<Variant> variants = {
            {"full", [](TrainArgs&) {}},
            {"lora", [](TrainArgs& a) { a.peft.lora_rank = 2, a.peft.lora_targets = 0xF; }},
            {"top1 recompute full", [](TrainArgs& a) { a.train_top = 1, a.recompute = Recompute::full; }},
            {"selective head-chunk 7", [](TrainArgs& a) { a.recompute = Recompute::selective, a.head_chunk = 7; }},
            {"prefix", [](TrainArgs& a) { a.peft.virt = Virtual::prefix, a.peft.n_virtual = 3, a.peft.hidden = 8; }},
            {"l2sp ewc distill", [this](TrainArgs& a) {
                 a.l2sp = 0.5f;
                 a.ewc = 10.0f;
                 a.fisher = dir + "/fisher_" + a.precision + ".safetensors";
                 a.fisher_data = {dir + "/val.bin"};
                 a.fisher_batches = 1;
                 a.distill = 0.3f;
             }},
        };
        for (const Variant& v : variants) {
            TrainArgs real = args(std::string("real_") + v.name);
            real.init = dir + "/" + init;
            real.device = device;
            real.precision = precision;
            v.apply(real);
            TrainArgs plan = real;
            plan.memory_map = true;
            Trainer r(real), p(plan);
            ASSERT_TRUE(p.backend().plans_only());
            ASSERT_FALSE(r.backend().plans_only());
            EXPECT_EQ(p.backend().name(), r.backend().name());
            const std::string what = device + " " + precision + " " + v.name;
            const ModelConfig& cfg = r.model().config();
            const std::string planned = p.backend().attention_path(cfg.n_embd, cfg.n_head),
                              ran = r.backend().attention_path(cfg.n_embd, cfg.n_head);
            EXPECT_EQ(planned.substr(0, planned.find(' ')), ran.substr(0, ran.find(' ')))
                << what << ": planned " << planned << ", the run took " << ran;
            expect_same_layout(p.model().params(), r.model().params(), what + ": parameters");
            expect_same_layout(p.model().grads(), r.model().grads(), what + ": gradients");
            expect_same_layout(p.model().acts(), r.model().acts(), what + ": activations");
            expect_same_layout(p.model().scratch(), r.model().scratch(), what + ": scratch");
            expect_same_layout(p.anchor(), r.anchor(), what + ": anchor");
            expect_same_layout(p.fisher(), r.fisher(), what + ": Fisher");
            EXPECT_EQ(p.optimizer().state_bytes(), r.optimizer().state_bytes()) << what;
            EXPECT_EQ(p.model().act_bytes(), r.model().act_bytes()) << what;
        }
    }
};

TEST_F(PlanBackendRuns, PlannedArenasAreTheRealRunsTensorByTensor_CpuF32) { expect_plans_match("cpu", "fp32"); }

// The CUDA backend's own layout (FP32 master weights, bf16 arenas, attention's saved state): on a GPU, or under
// the CUDA emulator of `make test-emu` (where attention takes the cuBLAS path, as cuDNN is absent there). Head
// size 16 (C=48, NH=3), a shape cuDNN's fused attention runs (tests/test_cuda_attention.cpp), so that on a GPU
// the fused layout is the one compared.
TEST_F(PlanBackendRuns, PlannedArenasAreTheRealRunsTensorByTensor_CudaBf16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU (the emulator's build runs it)";
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, 2, 3, 48, 16), *be, 1, 1);
    m.init_random(5);
    save_checkpoint(dir + "/init48.ckpt", m, nullptr, nullptr);
    expect_plans_match("cuda", "bf16", "init48.ckpt");
}

// Nothing to compute, nothing to read: a download gives zeros, norms are 0, and the addresses hold no memory.
TEST(PlanBackend, HoldsNoMemoryAndComputesNothing) {
    const std::unique_ptr<Backend> be = make_plan_backend("cuda", DType::bf16, CudaOptions{});
    EXPECT_EQ(be->name(), "cuda");
    EXPECT_EQ(be->act_dtype(), DType::bf16);
    EXPECT_EQ(be->master_dtype(), DType::f32);
    void* p = be->alloc(size_t(1) << 40);  // a terabyte of addresses, no memory
    ASSERT_NE(p, nullptr);
    std::vector<float> host(4, 7.0f);
    be->download(host.data(), p, DType::bf16, host.size());
    EXPECT_EQ(host, std::vector<float>(4, 0.0f));
    EXPECT_EQ(be->sum_squares(p, 1000), 0.0);
    be->free(p);
    const std::unique_ptr<Backend> cpu = make_plan_backend("cpu", DType::f32, CudaOptions{});
    EXPECT_EQ(cpu->name(), "cpu");
    EXPECT_EQ(cpu->attention_saved_elems(2, 5, 24, 3), 2u * 3 * 5 * 5);
    EXPECT_THAT(error_of([] { make_plan_backend("cpu", DType::bf16, CudaOptions{}); }), HasSubstr("fp32 only"));
    CudaOptions matmul;
    matmul.attention = AttentionImpl::matmul;
    EXPECT_EQ(make_plan_backend("cuda", DType::bf16, matmul)->attention_saved_elems(2, 5, 24, 3), 2u * 3 * 5 * 5);
}

}  // namespace
}  // namespace tune::test
