// The two CUDA attention paths, each chosen explicitly (CudaOptions::attention), against the f64 CPU reference:
// cuDNN's fused flash attention (bf16/fp16) and the cuBLAS path (materialised scores). The backend's default
// (auto) is covered by CudaOps.Attention* in test_cuda_layers.cpp and by the whole-model tests.
// Without cuDNN (the CUDA emulator, a build without the frontend headers) the cuDNN cases skip with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/backend_cuda.h"
#include "tests/test_cuda_util.h"

namespace tune::test {
namespace {

struct AttShape {
    int B, T, C, NH;
};

// Where cuDNN cannot run, its cases skip, except under TUNE_REQUIRE_CUDNN=1 (scripts/gpu_check.sh sets it):
// on the GPU machine a missing library must not pass as a skip.
#define SKIP_WITHOUT_CUDNN(why)                                      \
    do {                                                             \
        if (std::getenv("TUNE_REQUIRE_CUDNN")) FAIL() << (why);      \
        GTEST_SKIP() << (why);                                       \
    } while (0)

std::string where(const AttShape& s) {
    return "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) +
           " NH=" + std::to_string(s.NH);
}

class CudaAttentionPath : public ::testing::TestWithParam<std::tuple<DType, AttentionImpl>> {
   protected:
    void SetUp() override {
        if (cuda_device_count() == 0) GTEST_SKIP() << kNoGpu;
        CudaOptions o;
        o.attention = impl();
        gpu_ = make_cuda_backend(dt(), o);
        ref_ = make_cpu_backend(DType::f64);
    }
    DType dt() const { return std::get<0>(GetParam()); }
    AttentionImpl impl() const { return std::get<1>(GetParam()); }
    bool cudnn() const { return impl() == AttentionImpl::cudnn; }
    // The saved size, or false and why (the caller skips) when cuDNN was asked for and cannot run.
    bool saved_elems(const AttShape& s, size_t* n, std::string* why) {
        try {
            *n = gpu_->attention_saved_elems(s.B, s.T, s.C, s.NH);
            return true;
        } catch (const UsageError& e) {
            *why = e.what();
            return false;
        }
    }
    std::unique_ptr<Backend> gpu_, ref_;
};

// Head sizes 64 (GPT-2), 16 and 128; T prime, 1, and past 128 (several of cuDNN's tiles, the last partial).
TEST_P(CudaAttentionPath, ForwardAndBackwardMatchReference_HS64_T67_HS16_T37_HS64_T1_HS128_T131) {
    for (AttShape s : {AttShape{2, 67, 128, 2}, AttShape{3, 37, 48, 3}, AttShape{2, 1, 64, 1}, AttShape{1, 131, 256, 2}}) {
        size_t n_saved = 0;
        std::string why;
        if (!saved_elems(s, &n_saved, &why)) SKIP_WITHOUT_CUDNN(why);
        const size_t n_qkv = (size_t)s.B * s.T * 3 * s.C, n_out = (size_t)s.B * s.T * s.C;
        Twin qkv(*gpu_, *ref_, n_qkv), out(*gpu_, *ref_, n_out), dout(*gpu_, *ref_, n_out), dqkv(*gpu_, *ref_, n_qkv);
        Buffer saved_g(*gpu_, dt(), n_saved);
        Buffer saved_r(*ref_, DType::f64, ref_->attention_saved_elems(s.B, s.T, s.C, s.NH));
        qkv.set(randn(n_qkv, 7, 1.5));  // scores of a few units: a softmax far from uniform
        out.poison();
        saved_g.poison();
        gpu_->attention_forward(out.g(), saved_g.p(), qkv.g(), nullptr, s.B, s.T, s.C, s.NH);
        ref_->attention_forward(out.r(), saved_r.p(), qkv.r(), nullptr, s.B, s.T, s.C, s.NH);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out " << where(s);
        dout.set(randn(n_out, 8));
        dqkv.poison();
        gpu_->attention_backward(dqkv.g(), dout.g(), qkv.g(), out.g(), saved_g.p(), nullptr, s.B, s.T, s.C, s.NH);
        ref_->attention_backward(dqkv.r(), dout.r(), qkv.r(), out.r(), saved_r.p(), nullptr, s.B, s.T, s.C, s.NH);
        EXPECT_TRUE(near_rel(dqkv.gpu.get(), dqkv.ref.get(), op_tol(dt()))) << "dqkv " << where(s);
    }
}

// The rule: the same inputs give the same bits, run after run (cuDNN's deterministic backward).
TEST_P(CudaAttentionPath, TwoRunsAreBitIdentical_B4_T200_C128_NH2) {
    const AttShape s{4, 200, 128, 2};
    size_t n_saved = 0;
    std::string why;
    if (!saved_elems(s, &n_saved, &why)) SKIP_WITHOUT_CUDNN(why);
    const size_t n_qkv = (size_t)s.B * s.T * 3 * s.C, n_out = (size_t)s.B * s.T * s.C;
    Buffer qkv(*gpu_, dt(), n_qkv), out(*gpu_, dt(), n_out), dout(*gpu_, dt(), n_out), dqkv(*gpu_, dt(), n_qkv),
        saved(*gpu_, dt(), n_saved);
    qkv.set(randn(n_qkv, 9, 1.5));
    dout.set(randn(n_out, 10));
    std::vector<double> first[2];
    for (int run = 0; run < 2; run++) {
        out.poison();
        dqkv.poison();
        gpu_->attention_forward(out.p(), saved.p(), qkv.p(), nullptr, s.B, s.T, s.C, s.NH);
        gpu_->attention_backward(dqkv.p(), dout.p(), qkv.p(), out.p(), saved.p(), nullptr, s.B, s.T, s.C, s.NH);
        if (run == 0) {
            first[0] = out.get();
            first[1] = dqkv.get();
        } else {
            EXPECT_TRUE(same_bits(out.get(), first[0])) << "out";
            EXPECT_TRUE(same_bits(dqkv.get(), first[1])) << "dqkv";
        }
    }
}

// cuDNN's fused attention has no document mask: positions given to it are refused, not ignored.
TEST_P(CudaAttentionPath, CudnnRefusesDocumentPositions) {
    if (!cudnn()) GTEST_SKIP() << "the matmul path takes positions (CudaOps.AttentionDocumentMask*)";
    const AttShape s{1, 8, 64, 1};
    size_t n_saved = 0;
    std::string why;
    if (!saved_elems(s, &n_saved, &why)) SKIP_WITHOUT_CUDNN(why);
    Buffer qkv(*gpu_, dt(), (size_t)s.T * 3 * s.C), out(*gpu_, dt(), (size_t)s.T * s.C), saved(*gpu_, dt(), n_saved);
    I32Twin pos(*gpu_, *ref_, {0, 1, 2, 0, 1, 0, 1, 2});
    try {
        gpu_->attention_forward(out.p(), saved.p(), qkv.p(), pos.g, s.B, s.T, s.C, s.NH);
        ADD_FAILURE() << "positions accepted by the fused path";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--attention matmul"), std::string::npos) << e.what();
    }
}

// What each path keeps for backward: NH*T probabilities per token, or NH fp32 statistics.
TEST_P(CudaAttentionPath, SavedStateIsProbabilitiesOrStatistics_B2_T300_C128_NH2) {
    const AttShape s{2, 300, 128, 2};
    size_t n_saved = 0;
    std::string why;
    if (!saved_elems(s, &n_saved, &why)) SKIP_WITHOUT_CUDNN(why);
    const size_t rows = (size_t)s.B * s.NH * s.T;
    EXPECT_EQ(n_saved * dtype_size(dt()), cudnn() ? rows * sizeof(float) : rows * s.T * dtype_size(dt()));
}

// A batch whose deterministic-backward workspace would pass 1 GiB is done in several cuDNN calls (gpt2's
// heads at T = 1024, B = 50: two calls of 25): the same as the cuBLAS path, within the dtype's tolerance,
// every sequence (the last ones come from the second call).
TEST_P(CudaAttentionPath, BackwardInSeveralCallsMatchesTheCublasPath_Gpt2Heads_B50_T1024) {
    if (!cudnn()) GTEST_SKIP() << "the cuBLAS path is this test's reference";
    const AttShape s{50, 1024, 768, 12};
    ASSERT_EQ(cuda::CudnnAttention::backward_batch(s.B, s.T, s.NH), 25);
    size_t n_saved = 0;
    std::string why;
    if (!saved_elems(s, &n_saved, &why)) SKIP_WITHOUT_CUDNN(why);
    CudaOptions o;
    o.attention = AttentionImpl::matmul;
    auto other = make_cuda_backend(dt(), o);
    const size_t n_qkv = (size_t)s.B * s.T * 3 * s.C, n_out = (size_t)s.B * s.T * s.C;
    const std::vector<double> qkv_v = randn(n_qkv, 11, 1.5), dout_v = randn(n_out, 12);
    std::vector<double> result[2];
    Backend* backends[2] = {gpu_.get(), other.get()};
    for (int k = 0; k < 2; k++) {
        Backend& be = *backends[k];
        Buffer qkv(be, dt(), n_qkv), out(be, dt(), n_out), dout(be, dt(), n_out), dqkv(be, dt(), n_qkv),
            saved(be, dt(), be.attention_saved_elems(s.B, s.T, s.C, s.NH));
        qkv.set(qkv_v);
        dout.set(dout_v);
        dqkv.poison();
        be.attention_forward(out.p(), saved.p(), qkv.p(), nullptr, s.B, s.T, s.C, s.NH);
        be.attention_backward(dqkv.p(), dout.p(), qkv.p(), out.p(), saved.p(), nullptr, s.B, s.T, s.C, s.NH);
        result[k] = dqkv.get();
    }
    const size_t per_seq = (size_t)s.T * 3 * s.C;
    for (int b : {0, 24, 25, 49}) {
        const std::vector<double> got(result[0].begin() + b * per_seq, result[0].begin() + (b + 1) * per_seq),
            want(result[1].begin() + b * per_seq, result[1].begin() + (b + 1) * per_seq);
        EXPECT_TRUE(near_rel(got, want, op_tol(dt()))) << "dqkv of sequence " << b;
    }
}

INSTANTIATE_TEST_SUITE_P(Paths, CudaAttentionPath,
                         ::testing::Combine(::testing::Values(DType::bf16, DType::f16),
                                            ::testing::Values(AttentionImpl::cudnn, AttentionImpl::matmul)),
                         [](const auto& info) {
                             return std::string(dtype_name(std::get<0>(info.param))) + "_" +
                                    attention_impl_name(std::get<1>(info.param));
                         });

// --attention cudnn says why it cannot run, instead of quietly taking the other path.
TEST(CudaAttentionChoice, CudnnRefusesFp32AndHeadSizesNotAMultipleOf8) {
    if (cuda_device_count() == 0) GTEST_SKIP() << kNoGpu;
    CudaOptions o;
    o.attention = AttentionImpl::cudnn;
    auto f32 = make_cuda_backend(DType::f32, o);
    try {
        f32->attention_saved_elems(2, 16, 128, 2);
        ADD_FAILURE() << "fp32 accepted";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("no f32"), std::string::npos) << e.what();
    }
    auto bf16 = make_cuda_backend(DType::bf16, o);
    try {
        bf16->attention_saved_elems(2, 16, 36, 3);  // HS = 12
        ADD_FAILURE() << "head size 12 accepted";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("36/3 is not a multiple of 8"), std::string::npos) << e.what();
    }
    // auto takes the cuBLAS path for both: the probabilities, B*NH*T*T.
    auto automatic = make_cuda_backend(DType::bf16);
    EXPECT_EQ(automatic->attention_saved_elems(2, 16, 36, 3), (size_t)2 * 3 * 16 * 16);
    EXPECT_EQ(make_cuda_backend(DType::f32)->attention_saved_elems(2, 16, 128, 2), (size_t)2 * 2 * 16 * 16);
}

TEST(CudaAttentionChoice, ParseNamesAndRejectsOthers) {
    EXPECT_EQ(parse_attention_impl("auto"), AttentionImpl::automatic);
    EXPECT_EQ(parse_attention_impl("cudnn"), AttentionImpl::cudnn);
    EXPECT_EQ(parse_attention_impl("matmul"), AttentionImpl::matmul);
    EXPECT_THROW(parse_attention_impl("flash"), UsageError);
}

// How many sequences one cuDNN backward call takes: all of them while the dP workspace (B*NH*T'^2*2 bytes,
// T' = T rounded up to 128) stays within 1 GiB, else equal calls under it that cover the batch.
TEST(CudnnGraph, BackwardBatchBoundsTheWorkspace_Gpt2_Gpt2Xl_Awkward) {
    EXPECT_EQ(cuda::CudnnAttention::backward_batch(32, 1024, 12), 32);  // gpt2 at B=32: 0.75 GiB, one call
    EXPECT_EQ(cuda::CudnnAttention::backward_batch(100, 1024, 12), 34);
    EXPECT_EQ(cuda::CudnnAttention::backward_batch(32, 1024, 25), 16);  // gpt2-xl: 1.56 GiB, two calls
    EXPECT_EQ(cuda::CudnnAttention::backward_batch(1, 1 << 16, 64), 1);  // one sequence is never split
    EXPECT_EQ(cuda::CudnnAttention::backward_batch(0, 1024, 12), 0);
    EXPECT_EQ(cuda::CudnnAttention::backward_batch(22, 1023, 25), 12);  // NH*T odd: calls of 4k sequences
    for (int B : {1, 7, 22, 33, 171, 342, 513})
        for (int NH : {12, 25})
            for (int T : {67, 1000, 1022, 1023, 1024, 2048}) {
                const int per_call = cuda::CudnnAttention::backward_batch(B, T, NH);
                const double Tp = std::ceil(T / 128.0) * 128, bytes = per_call * NH * Tp * Tp * 2;
                const std::string where = std::to_string(B) + " " + std::to_string(T) + " " + std::to_string(NH);
                EXPECT_GE(per_call, 1);
                EXPECT_LE(per_call, B);
                if (per_call < B) {  // several calls: each within the bound, each one's stats 16-byte aligned
                    EXPECT_LE(bytes, 1024.0 * 1024 * 1024) << where;
                    EXPECT_EQ((int64_t)per_call * NH * T * 4 % 16, 0) << where;
                }
                // Calls of per_call sequences, the last one shorter: as few as the bound allows. Counted here: the
                // largest aligned call under the bound (align: the sequences that keep NH*T*4-byte stats 16-byte
                // aligned), or one align's worth when even that is over.
                const double per_sequence = NH * Tp * Tp * 2, bound = 1024.0 * 1024 * 1024;
                int align = 1;
                while ((int64_t)align * NH * T % 4) align++;
                int largest = B;
                while (largest > 0 && (largest % align || largest * per_sequence > bound)) largest--;
                if (largest == 0) largest = align;
                const int calls = (B + per_call - 1) / per_call;
                if (B * per_sequence <= bound)
                    EXPECT_EQ(per_call, B) << where << ": fits one call";
                else
                    EXPECT_EQ(calls, (B + largest - 1) / largest) << where;
            }
}

// Without a GPU: the cuDNN frontend's own validation of our graph descriptions for Hopper (sm_90), so a
// layout or attribute mistake shows up here and not in the first minutes on an H200. Needs libcudnn.so.9
// (the CUDA toolkit's) and a build with the frontend headers; skips without them.
// B=43 at gpt2's T=1024 runs backward in calls of 22 and 21 sequences: the shorter one is a graph of its own.
TEST(CudnnGraph, AttentionGraphsValidateForHopper_TheTestShapesAndGpt2AndGpt2Xl) {
    for (DType dt : {DType::bf16, DType::f16}) {
        for (AttShape s : {AttShape{2, 67, 128, 2}, AttShape{3, 37, 48, 3}, AttShape{1, 131, 256, 2},
                           AttShape{32, 1024, 768, 12}, AttShape{43, 1024, 768, 12}, AttShape{8, 1024, 1600, 25}}) {
            const std::string why = cuda::CudnnAttention::validate_for(90, dt, s.B, s.T, s.C, s.NH);
            for (const char* absent : {"cannot load", "built without", "has no cuDNN"})
                if (why.find(absent) != std::string::npos) SKIP_WITHOUT_CUDNN(why);
            EXPECT_EQ(why, "") << dtype_name(dt) << " " << where(s);
        }
    }
    EXPECT_NE(cuda::CudnnAttention::validate_for(90, DType::bf16, 2, 16, 36, 3).find("not a multiple of 8"),
              std::string::npos);
}

}  // namespace
}  // namespace tune::test
