// The training loop on the CUDA backend: resume is bit-exact in every precision (fp16 with its dynamic loss
// scale in the checkpoint), as it is on the CPU (tests/test_trainer.cpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "data/safetensors.h"
#include "tests/test_cuda_util.h"
#include "tests/trainer_util.h"

namespace tune::test {
namespace {

class CudaTrainer : public TrainerFixture {
   protected:
    void SetUp() override {
        if (cuda_device_count() == 0) GTEST_SKIP() << kNoGpu;
        TrainerFixture::SetUp();
    }
    TrainArgs gpu_args(const std::string& precision, const std::string& out) const {
        TrainArgs a = args(precision + "_" + out);
        a.device = "cuda";
        a.precision = precision;
        return a;
    }
};

// A driver older than the toolkit is a GPU the runtime refuses: the messages name that, not "no GPU" alone.
TEST(CudaDevice, ADriverOlderThanTheToolkitIsNamedNotCalledNoGpu) {
    if (!cuda_is_emulator()) GTEST_SKIP() << "the CUDA emulator plays the old driver (CUDA_EMU_DRIVER=old)";
    EnvVars old_driver("CUDA_EMU_DRIVER", "old");
    EXPECT_EQ(cuda_device_count(), 0);
    EXPECT_THAT(cuda_device_problem(), ::testing::HasSubstr("driver version is insufficient"));
    EXPECT_THAT(error_of([] { make_backend("cuda", "fp32", true, CudaOptions{}); }),
                ::testing::HasSubstr("cudaErrorInsufficientDriver"));
    ::testing::internal::CaptureStdout();
    const std::unique_ptr<Backend> fallback = make_backend("auto", "fp32", false, CudaOptions{});
    const std::string out = ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(fallback->name(), "cpu");
    EXPECT_THAT(out, ::testing::HasSubstr("cudaErrorInsufficientDriver"));
    EXPECT_THAT(out, ::testing::HasSubstr("training on the CPU backend"));
}

TEST(CudaDevice, NoDeviceAlwaysSaysWhy) {
    if (cuda_device_count() > 0)
        EXPECT_EQ(cuda_device_problem(), "");
    else
        EXPECT_THAT(cuda_device_problem(), ::testing::StartsWith("no "));
}

// Destructors free device memory, also while an error unwinds: a failing free says so and throws nothing.
TEST(CudaDevice, BackendFreeNeverThrowsAndSaysWhatFailed) {
    if (cuda_device_count() == 0) GTEST_SKIP() << kNoGpu;
    const std::unique_ptr<Backend> be = make_cuda_backend(DType::f32);
    int not_device_memory = 0;
    ::testing::internal::CaptureStderr();
    EXPECT_NO_THROW(be->free(&not_device_memory));
    EXPECT_THAT(::testing::internal::GetCapturedStderr(), ::testing::HasSubstr("warning: cuda backend: cudaFree("));
    void* p = be->alloc(256);  // and the backend goes on working
    be->zero(p, 256);
    be->free(p);
    EXPECT_NO_THROW(be->synchronize());
}

// The memory map's line after the first step: the backend's own workspaces, which grew during the step.
TEST_F(CudaTrainer, MemoryNoteNamesTheWorkspacesAfterAStep_Bf16) {
    TrainArgs a = gpu_args("bf16", "note");
    a.steps = 2;
    Trainer t(a);
    ASSERT_EQ(t.run(), 0);
    const std::string note = t.backend().memory_note();
    EXPECT_THAT(note, ::testing::HasSubstr("backend workspaces "));
    EXPECT_THAT(note, ::testing::HasSubstr("cuBLASLt 32 MiB"));
    // cuDNN's workspace is named where the run attends through cuDNN (not on the emulator, which has none).
    const ModelConfig& c = t.model().config();
    const bool fused = t.backend().attention_path(c.n_embd, c.n_head).rfind("cudnn", 0) == 0;
    EXPECT_EQ(note.find(", with cuDNN's") != std::string::npos, fused) << note;
    EXPECT_THAT(note, ::testing::HasSubstr(" in use (every process"));
    EXPECT_EQ(make_cpu_backend(DType::f32)->memory_note(), "") << "the CPU has nothing to add";
}

// FP16 with a loss scale far too large: every gradient overflows, each step is skipped with the scale halved
// (GradScaler's backoff), and those skips are the scale's fault, not the model's: they do not count towards
// --max-bad-steps, so the run goes on.
TEST_F(CudaTrainer, Fp16OverflowHalvesTheScaleSkipsTheStepAndDoesNotStopTheRun) {
    TrainArgs a = gpu_args("fp16", "overflow");
    a.loss_scale = 1e30;
    a.max_bad_steps = 1;
    a.steps = 4;
    Trainer t(a);
    ASSERT_EQ(t.run(), 0);
    const std::string run = dir + "/fp16_overflow";
    EXPECT_EQ(metric(run, "loss_scale"), (std::vector<double>{1e30, 5e29, 2.5e29, 1.25e29}));
    EXPECT_EQ(metric(run, "skipped_total"), (std::vector<double>{1, 2, 3, 4}));
    EXPECT_EQ(t.state().skipped_steps, 4u);
}

// A bf16/fp16 run's FP32 master copy, and L2-SP's anchor, start from the --init values exactly (fp32 weights
// here, N(0, 0.02)), not from their rounding in the working copy.
TEST_F(CudaTrainer, MasterWeightsAndAnchorStartFromTheInitValuesExactly_Bf16Fp16) {
    const auto init = tensors_of(dir + "/init.ckpt");
    for (const std::string p : {"bf16", "fp16"}) {
        SCOPED_TRACE(p);
        TrainArgs a = gpu_args(p, "exact");
        a.l2sp = 0.1f;
        Trainer t(a);
        const Table& gt = t.model().grads().table();
        ASSERT_EQ(gt.size(), t.model().params().table().size()) << "every tensor trains";
        for (size_t g = 0; g < gt.size(); g++) {
            const std::vector<float>& want = init.at(gt[g].name);
            EXPECT_EQ(t.optimizer().state_tensor(AdamW::State::master, g), want) << gt[g].name;
            std::vector<float> anchor(gt[g].numel), working(gt[g].numel);
            t.backend().download(anchor.data(), t.anchor().ptr(g), t.anchor().dtype(), anchor.size());
            EXPECT_EQ(anchor, want) << gt[g].name;
            t.backend().download(working.data(), t.model().params().ptr(g), t.model().params().dtype(), working.size());
            if (gt[g].shape.size() == 2) {  // random matrices (biases are 0, gains 1): the rounding differs
                EXPECT_NE(working, want) << gt[g].name << ": not rounded, so this tests nothing";
            }
        }
    }
}

// EWC's Fisher estimate in fp16 with a loss scale that overflows every gradient: each batch runs again at
// half the scale (as a training step would be skipped), so the file holds finite values near fp32's.
TEST_F(CudaTrainer, Fp16FisherEstimateBacksOffAnOverflowingLossScale) {
    std::map<std::string, std::vector<float>> fisher[2];
    for (int k = 0; k < 2; k++) {
        const std::string p = k ? "fp16" : "fp32";
        TrainArgs a = gpu_args(p, "fisher");
        a.ewc = 1.0f;
        a.fisher = dir + "/fisher_" + p + ".safetensors";
        a.fisher_data = {dir + "/val.bin"};
        a.fisher_batches = 2;
        if (k) a.loss_scale = 1e8;
        Trainer t(a);
        EXPECT_TRUE(std::isfinite(t.step().loss)) << p;
        SafetensorsFile f(a.fisher);
        for (const SafetensorsTensorInfo& ti : f.tensors()) fisher[k][ti.name] = f.read_f32(ti.name);
    }
    for (const auto& [name, want] : fisher[0]) {
        const std::vector<float>& got = fisher[1].at(name);
        for (float v : got) ASSERT_TRUE(std::isfinite(v)) << name;
        EXPECT_TRUE(near_rel(got, want, 0.1)) << name;  // fp16 activations against fp32
    }
}

TEST_F(CudaTrainer, ResumeIsBitExact_Fp32Bf16Fp16_8Steps_vs_4PlusResume4) {
    for (const std::string p : {"fp32", "bf16", "fp16"}) {
        SCOPED_TRACE(p);
        ASSERT_EQ(Trainer(gpu_args(p, "full")).run(), 0);
        TrainArgs first = gpu_args(p, "split");
        first.halt_at = 4;
        ASSERT_EQ(Trainer(first).run(), 0);
        TrainArgs second = resuming(gpu_args(p, "split"));
        ASSERT_EQ(Trainer(second).run(), 0);

        const std::string full = dir + "/" + p + "_full", split = dir + "/" + p + "_split";
        const auto a = losses(full), b = losses(split);
        ASSERT_EQ(a.size(), 8u);
        EXPECT_EQ(a, b);
        EXPECT_EQ(metric(full, "loss_scale"), metric(split, "loss_scale"));
        EXPECT_EQ(slurp(full + "/model.ckpt"), slurp(split + "/model.ckpt"));
    }
}

// Stochastic rounding hashes the step into its random bits: a resumed run must use the same steps' bits.
TEST_F(CudaTrainer, ResumeIsBitExactWithStochasticRounding_Bf16_8Steps_vs_4PlusResume4) {
    TrainArgs full = gpu_args("bf16", "sr_full");
    full.stochastic_rounding = true;
    ASSERT_EQ(Trainer(full).run(), 0);
    TrainArgs first = gpu_args("bf16", "sr_split");
    first.stochastic_rounding = true;
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    TrainArgs second = resuming(first);
    ASSERT_EQ(Trainer(second).run(), 0);
    const std::string a = dir + "/bf16_sr_full", b = dir + "/bf16_sr_split";
    EXPECT_EQ(losses(a), losses(b));
    EXPECT_EQ(slurp(a + "/model.ckpt"), slurp(b + "/model.ckpt"));
    // And it is on: the weights differ from round-to-nearest's.
    TrainArgs nearest = gpu_args("bf16", "sr_nearest");
    ASSERT_EQ(Trainer(nearest).run(), 0);
    EXPECT_NE(slurp(a + "/model.ckpt"), slurp(dir + "/bf16_sr_nearest/model.ckpt"));
}

}  // namespace
}  // namespace tune::test
