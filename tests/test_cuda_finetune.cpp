// The CUDA fine-tuning ops (kernels/finetune.h) and AdamW's per-segment t_offset against the f64 CPU reference
// on the same (GPU-rounded) inputs, in fp32, bf16 and fp16: awkward shapes, outputs poisoned with NaN first,
// accumulating outputs pre-filled, misaligned pointers for the vectorised paths, run-to-run bit equality where
// the op promises determinism, and dropout's mask bit for bit against the CPU's. Tolerances (max-norm
// relative): op_tol (1e-5 fp32, 2e-2 bf16/fp16) for act-type outputs; 1e-5 for fp32 outputs in every mode.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "tests/test_cuda_util.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

class CudaFinetune : public CudaTest {};

// n = 1001: packs plus a scalar tail; n = 4096: packs only; offset 1: misaligned, scalar only.
struct EwShape {
    size_t n, offset;
};
const EwShape kEwShapes[] = {{1001, 0}, {4096, 0}, {4096, 1}};

std::string ew_where(EwShape s) { return "n=" + std::to_string(s.n) + " offset " + std::to_string(s.offset); }

// ---------------------------------------------------------------- scale
TEST_P(CudaFinetune, ScaleSeparateAndInPlace_n1001_n4096_Misaligned) {
    for (EwShape s : kEwShapes) {
        Twin x(gpu(), ref(), s.n, s.offset), out(gpu(), ref(), s.n, s.offset);
        x.set(randn(s.n, 1));
        out.poison();
        gpu().scale(out.g(), x.g(), -1.3f, s.n);
        ref().scale(out.r(), x.r(), -1.3f, s.n);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << ew_where(s);
        gpu().scale(x.g(), x.g(), -1.3f, s.n);
        EXPECT_TRUE(same_bits(x.gpu.get(), out.gpu.get())) << "in place " << ew_where(s);
    }
}

// ---------------------------------------------------------------- dropout
// Same mask as the reference (the zeros fall in the same places), kept values scaled alike, in place equal to
// separate, and the backward (the same call on dout) drops the same positions. Also with a data-parallel layout
// (rank 2 of 3, sequences of 37 elements: packs straddle sequences).
TEST_P(CudaFinetune, DropoutMatchesReferenceMaskAndValues_n1001_n4096_Misaligned_Rank2of3) {
    for (EwShape s : kEwShapes) {
        for (auto [p, layout] : {std::pair<float, DropoutLayout>{0.1f, {}}, {0.5f, {}}, {0.3f, {37, 3, 2}}}) {
            const uint64_t seed = 0x1234567890abcdefull + s.n;
            Twin x(gpu(), ref(), s.n, s.offset), out(gpu(), ref(), s.n, s.offset);
            const auto xv = x.set(randn(s.n, 1));
            out.poison();
            gpu().dropout(out.g(), x.g(), p, seed, layout, s.n);
            ref().dropout(out.r(), x.r(), p, seed, layout, s.n);
            const auto g = out.gpu.get(), r = out.ref.get();
            const std::string where = ew_where(s) + " p=" + std::to_string(p) + " rank " +
                                      std::to_string(layout.offset) + " of " + std::to_string(layout.stride);
            EXPECT_TRUE(near_rel(g, r, op_tol(dt()))) << where;
            size_t dropped = 0;
            for (size_t i = 0; i < s.n; i++) {
                ASSERT_NE(xv[i], 0.0);  // so a zero output means dropped
                ASSERT_EQ(g[i] == 0.0, r[i] == 0.0) << "mask differs at " << i << " " << where;
                dropped += g[i] == 0.0;
            }
            EXPECT_GT(dropped, 0u) << where;
            gpu().dropout(x.g(), x.g(), p, seed, layout, s.n);
            EXPECT_TRUE(same_bits(x.gpu.get(), g)) << "in place " << where;
        }
    }
}

TEST_P(CudaFinetune, DropoutWithPZeroCopies_n1001_Misaligned) {
    for (size_t offset : {0, 1}) {
        Twin x(gpu(), ref(), 1001, offset), out(gpu(), ref(), 1001, offset);
        const auto xv = x.set(randn(1001, 1));
        out.poison();
        gpu().dropout(out.g(), x.g(), 0.0f, 5, {}, 1001);
        EXPECT_TRUE(same_bits(out.gpu.get(), xv)) << "offset " << offset;
        gpu().dropout(x.g(), x.g(), 0.0f, 5, {}, 1001);
        EXPECT_TRUE(same_bits(x.gpu.get(), xv)) << "in place, offset " << offset;
    }
}

// fp32 only: the GPU's output is the CPU f32 backend's, bit for bit (same hash, threshold and fp32 scale).
TEST_P(CudaFinetune, DropoutEqualsCpuF32BitForBit_n100003_n4096_Misaligned) {
    if (dt() != DType::f32) {
        GTEST_SKIP() << "bit equality with the CPU is defined for fp32, whose values both sides hold exactly";
    }
    auto cpu = make_cpu_backend(DType::f32);
    for (EwShape s : {EwShape{100003, 0}, EwShape{4096, 0}, EwShape{4096, 1}}) {
        for (auto [p, layout] : {std::pair<float, DropoutLayout>{0.1f, {}}, {0.3f, {}}, {0.9f, {}},
                                 {0.3f, {1000, 4, 3}}}) {  // the last: rank 3 of 4, sequences of 1000 elements
            const uint64_t seed = 77 + s.offset;
            Buffer x(gpu(), DType::f32, s.n, s.offset), out(gpu(), DType::f32, s.n, s.offset);
            Buffer cpu_x(*cpu, DType::f32, s.n), cpu_out(*cpu, DType::f32, s.n);
            const auto xv = randn(s.n, 3);
            x.set(xv);
            cpu_x.set(xv);
            out.poison();
            cpu_out.poison();
            gpu().dropout(out.p(), x.p(), p, seed, layout, s.n);
            cpu->dropout(cpu_out.p(), cpu_x.p(), p, seed, layout, s.n);
            EXPECT_TRUE(same_bits(out.get(), cpu_out.get())) << ew_where(s) << " p=" << p << " stride "
                                                             << layout.stride;
        }
    }
}

// ---------------------------------------------------------------- prefix rows
struct PrefixShape {
    int B, T, P, W, col0, w, src_ld;
};

TEST_P(CudaFinetune, PrefixRowsForwardBackward_Awkward_and_Wide) {
    for (PrefixShape s : {PrefixShape{3, 7, 4, 37, 5, 29, 33}, PrefixShape{5, 67, 20, 64, 0, 64, 64},
                          PrefixShape{33, 9, 3, 70, 1, 45, 45}}) {
        const size_t nx = (size_t)s.B * s.T * s.W, ns = (size_t)s.P * s.src_ld;
        const std::string where = "B=" + std::to_string(s.B) + " P=" + std::to_string(s.P) +
                                  " W=" + std::to_string(s.W) + " w=" + std::to_string(s.w);
        Twin x(gpu(), ref(), nx), src(gpu(), ref(), ns);
        x.set(randn(nx, 1));
        src.set(randn(ns, 2));
        gpu().prefix_rows_forward(x.g(), src.g(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        ref().prefix_rows_forward(x.r(), src.r(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        EXPECT_TRUE(same_bits(x.gpu.get(), x.ref.get())) << "forward copies exactly " << where;

        Twin dsrc(gpu(), ref(), ns), dx(gpu(), ref(), nx);
        const auto dx0 = randn(nx, 3);
        dsrc.set(randn(ns, 4));
        dx.set(dx0);
        gpu().prefix_rows_backward(dsrc.g(), dx.g(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        ref().prefix_rows_backward(dsrc.r(), dx.r(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        const auto gdsrc = dsrc.gpu.get(), gdx = dx.gpu.get();
        EXPECT_TRUE(near_rel(gdsrc, dsrc.ref.get(), op_tol(dt()))) << "dsrc " << where;
        EXPECT_TRUE(same_bits(gdx, dx.ref.get())) << "dx zeroed exactly where written " << where;

        // Deterministic: the same inputs give the same bits. Frozen source: dx is still zeroed.
        dsrc.set(randn(ns, 4));
        const auto dx1 = dx.set(dx0);
        gpu().prefix_rows_backward(dsrc.g(), dx.g(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        EXPECT_TRUE(same_bits(dsrc.gpu.get(), gdsrc)) << "dsrc differs between two identical runs " << where;
        dx.gpu.set(dx1);
        gpu().prefix_rows_backward(nullptr, dx.g(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        EXPECT_TRUE(same_bits(dx.gpu.get(), gdx)) << "frozen source " << where;
    }
}

// ---------------------------------------------------------------- distillation
// Vp = 128 and 50304: 16-byte accesses, the last group holding columns < V and padding; Vp = 77 and 50257: rows
// not 16-byte aligned, column by column (50257: several groups a thread).
TEST_P(CudaFinetune, DistillSeparateInPlaceAndEval_V75_Vp128_V50257_Vp50304_V75_Vp77_V50257_Vp50257) {
    for (LogitRows s : {LogitRows{23, 75, 128}, LogitRows{5, 50257, 50304}, LogitRows{7, 75, 77},
                        LogitRows{3, 50257, 50257}}) {
        const float tau = 2.0f, dloss = 1.0f / 17.0f;
        const auto w = row_weights(s.N);
        F32Twin wt(gpu(), ref(), w);
        auto zv = randn(s.N * s.Vp, 1, 3.0), ztv = randn(s.N * s.Vp, 2, 3.0);
        for (size_t i = 0; i < s.N; i++)  // padding logits hold garbage: they must take no part
            for (int v = s.V; v < s.Vp; v++) zv[i * s.Vp + v] = ztv[i * s.Vp + v] = 1e3;
        const std::string where = "N=" + std::to_string(s.N) + " V=" + std::to_string(s.V);
        for (int mode = 0; mode < 3; mode++) {  // 0: separate dlogits; 1: in place over the teacher; 2: none
            Twin z(gpu(), ref(), s.N * s.Vp), zt(gpu(), ref(), s.N * s.Vp), dz(gpu(), ref(), s.N * s.Vp),
                loss(gpu(), ref(), s.N);
            z.set(zv);
            zt.set(ztv);
            dz.poison();
            loss.poison();
            void* gd = mode == 0 ? dz.g() : mode == 1 ? zt.g() : nullptr;
            void* rd = mode == 0 ? dz.r() : mode == 1 ? zt.r() : nullptr;
            gpu().distill_forward_backward(loss.g(), gd, z.g(), zt.g(), wt.g, tau, dloss, s.N, s.V, s.Vp);
            ref().distill_forward_backward(loss.r(), rd, z.r(), zt.r(), wt.r, tau, dloss, s.N, s.V, s.Vp);
            const auto gl = loss.gpu.get();
            EXPECT_TRUE(near_rel(gl, loss.ref.get(), op_tol(dt()))) << "losses " << where << " mode " << mode;
            for (size_t i = 0; i < s.N; i++) {
                if (w[i] == 0.0f) {
                    EXPECT_EQ(gl[i], 0.0) << "a weight-0 row must have loss exactly 0, row " << i;
                }
            }
            if (mode == 2) continue;
            const Buffer& gout = mode == 0 ? dz.gpu : zt.gpu;
            const Buffer& rout = mode == 0 ? dz.ref : zt.ref;
            const auto gd_v = gout.get();
            EXPECT_TRUE(near_rel(gd_v, rout.get(), op_tol(dt()))) << "dlogits " << where << " mode " << mode;
            for (size_t i = 0; i < s.N; i++)
                for (int v = 0; v < s.Vp; v++)
                    if (v >= s.V || w[i] == 0.0f) {
                        ASSERT_EQ(gd_v[i * s.Vp + v], 0.0) << "row " << i << " column " << v << " " << where;
                    }
        }
    }
}

TEST_P(CudaFinetune, DistillOfTeacherWithItselfIsZero_N9_V75_Vp80) {
    const size_t N = 9;
    const int V = 75, Vp = 80;
    F32Twin wt(gpu(), ref(), row_weights(N));
    Buffer z(gpu(), dt(), N * Vp), zt(gpu(), dt(), N * Vp), dz(gpu(), dt(), N * Vp), loss(gpu(), dt(), N);
    const auto zv = randn(N * Vp, 1, 3.0);
    z.set(zv);
    zt.set(zv);
    dz.poison();
    loss.poison();
    gpu().distill_forward_backward(loss.p(), dz.p(), z.p(), zt.p(), wt.g, 1.5f, 1.0f, N, V, Vp);
    for (double l : loss.get()) EXPECT_NEAR(l, 0.0, 1e-6);
    for (double d : dz.get()) ASSERT_NEAR(d, 0.0, 1e-6);
}

// ---------------------------------------------------------------- anchor penalty
// Segments with gaps in both arenas, param_offset != grad_offset, one long enough for many blocks. The weights
// come from an fp32 master (gradient layout) or from the act-type parameters; anchor and Fisher are fp32.
TEST_P(CudaFinetune, AnchorPenaltyOverSegmentsMatchesReferenceAndIsDeterministic) {
    const size_t P = 102100, G = 101500;
    const std::vector<OptSegment> segs = {{0, 0, 1000}, {1200, 1100, 100003}, {101500, 101300, 77}};
    const float lambda = 0.3f, grad_mult = 0.5f;
    std::vector<bool> in_seg(G, false);
    for (const auto& s : segs)
        for (size_t i = 0; i < s.n; i++) in_seg[s.grad_offset + i] = true;
    for (bool use_master : {false, true}) {
        for (bool with_fisher : {false, true}) {
            const std::string where =
                std::string(use_master ? "master" : "params") + (with_fisher ? ", fisher" : ", no fisher");
            Buffer params(gpu(), dt(), P), master(gpu(), DType::f32, G), anchor(gpu(), DType::f32, G),
                fisher(gpu(), DType::f32, G);
            Buffer rparams(ref(), DType::f64, P), ranchor(ref(), DType::f64, G), rfisher(ref(), DType::f64, G);
            Twin grads(gpu(), ref(), G);
            // The weights both sides see: the master's fp32 values, or the parameters rounded to the act type.
            std::vector<double> wp(P, 0.0);
            if (use_master) {
                params.poison();  // must not be read
                master.set(randn(G, 1));
                const auto mv = master.get();
                for (const auto& s : segs)
                    for (size_t i = 0; i < s.n; i++) wp[s.param_offset + i] = mv[s.grad_offset + i];
            } else {
                params.set(randn(P, 1));
                wp = params.get();
            }
            rparams.set(wp);
            anchor.set(randn(G, 2));
            ranchor.set(anchor.get());
            auto fv = randn(G, 3);
            for (auto& f : fv) f = f * f;
            fisher.set(fv);
            rfisher.set(fisher.get());
            const auto g0 = grads.set(randn(G, 4));
            void* gm = use_master ? master.p() : nullptr;
            const void* gf = with_fisher ? fisher.p() : nullptr;
            const void* rf = with_fisher ? rfisher.p() : nullptr;
            const double got = gpu().anchor_penalty(grads.g(), params.p(), gm, anchor.p(), gf, segs, lambda, grad_mult);
            const double want =
                ref().anchor_penalty(grads.r(), rparams.p(), nullptr, ranchor.p(), rf, segs, lambda, grad_mult);
            // Both add the same double terms; only the summation order differs.
            EXPECT_NEAR(got, want, 1e-10 * want) << where;
            const auto gg = grads.gpu.get();
            EXPECT_TRUE(near_rel(gg, grads.ref.get(), op_tol(dt()))) << "grads " << where;
            for (size_t i = 0; i < G; i++)
                if (!in_seg[i]) {
                    ASSERT_EQ(gg[i], g0[i]) << "gap element " << i << " changed, " << where;
                }
            grads.gpu.set(g0);
            const double again = gpu().anchor_penalty(grads.g(), params.p(), gm, anchor.p(), gf, segs, lambda,
                                                      grad_mult);
            EXPECT_EQ(got, again) << "the penalty is not deterministic, " << where;
            EXPECT_TRUE(same_bits(grads.gpu.get(), gg)) << where;
        }
    }
}

TEST_P(CudaFinetune, AnchorPenaltyOfNoSegmentsIsZero) {
    Buffer grads(gpu(), dt(), 5), anchor(gpu(), DType::f32, 5);
    grads.set(randn(5, 1));
    const auto g0 = grads.get();
    EXPECT_EQ(gpu().anchor_penalty(grads.p(), nullptr, nullptr, anchor.p(), nullptr, {}, 1.0f, 1.0f), 0.0);
    const std::vector<OptSegment> empty_segment = {OptSegment{0, 0, 0}};
    EXPECT_EQ(gpu().anchor_penalty(grads.p(), nullptr, nullptr, anchor.p(), nullptr, empty_segment, 1.0f, 1.0f), 0.0);
    EXPECT_TRUE(same_bits(grads.get(), g0));
}

// ---------------------------------------------------------------- squares
TEST_P(CudaFinetune, AccumulateSquaresIntoF32_n1001_n4096_Misaligned) {
    for (EwShape s : kEwShapes) {
        Twin x(gpu(), ref(), s.n, s.offset);
        Buffer out(gpu(), DType::f32, s.n, s.offset), rout(ref(), DType::f64, s.n);
        x.set(randn(s.n, 1, 2.0));
        out.set(randn(s.n, 2));
        rout.set(out.get());
        gpu().accumulate_squares(out.p(), x.g(), 0.125f, s.n);
        ref().accumulate_squares(rout.p(), x.r(), 0.125f, s.n);
        EXPECT_TRUE(near_rel(out.get(), rout.get(), 1e-5)) << ew_where(s);  // fp32 output in every mode
    }
}

// ---------------------------------------------------------------- AdamW t_offset
// Three segments, two of them unfrozen late (t_offset 1 and 3), beta2 = 0.999 where fp32 bias corrections are
// delicate. The first three steps use the same list with every t_offset 0: the device table must be re-uploaded
// when only t_offset changes.
TEST_P(CudaFinetune, AdamWPerSegmentTOffsetMatchesReference) {
    const size_t P = 300, G = 250;
    const std::vector<OptSegment> first = {{0, 0, 100, 1.0f, 0.1f, 0}, {130, 120, 77, 0.5f, 0.0f, 0},
                                           {220, 210, 33, 2.0f, 0.05f, 0}};
    const std::vector<OptSegment> later = {{0, 0, 100, 1.0f, 0.1f, 0}, {130, 120, 77, 0.5f, 0.0f, 1},
                                           {220, 210, 33, 2.0f, 0.05f, 3}};
    Buffer params(gpu(), dt(), P), grads(gpu(), dt(), G), m(gpu(), DType::f32, G), v(gpu(), DType::f32, G),
        master(gpu(), DType::f32, G);
    Buffer rparams(ref(), DType::f64, P), rgrads(ref(), DType::f64, G), rm(ref(), DType::f64, G),
        rv(ref(), DType::f64, G);
    params.set(randn(P, 1));
    const auto p0 = params.get();
    rparams.set(p0);
    std::vector<double> master0(G, 0.0);
    for (const auto& s : first)
        for (size_t i = 0; i < s.n; i++) master0[s.grad_offset + i] = p0[s.param_offset + i];
    master.set(master0);
    for (Buffer* b : {&m, &v, &rm, &rv}) b->set(std::vector<double>(G, 0.0));
    for (int t = 1; t <= 6; t++) {
        grads.set(randn(G, 10 + t, 0.3));
        rgrads.set(grads.get());
        AdamWStep st;
        st.lr = 1e-2f;
        st.beta2 = 0.999f;
        st.t = t;
        const auto& segs = t <= 3 ? first : later;  // at t = 4 the late segments take t' = 3 and 1
        gpu().adamw_update(params.p(), gpu().has_master() ? master.p() : nullptr, grads.p(), m.p(), v.p(), segs, st);
        ref().adamw_update(rparams.p(), nullptr, rgrads.p(), rm.p(), rv.p(), segs, st);
    }
    const double tol = 1e-5;  // master, moments and the update are fp32 whatever the activation type
    EXPECT_TRUE(near_rel(m.get(), rm.get(), tol));
    EXPECT_TRUE(near_rel(v.get(), rv.get(), tol));
    const auto rp = rparams.get();
    std::vector<double> want(G, 0.0), got(G, 0.0);
    const auto gp = params.get(), gm = master.get();
    for (const auto& s : first)
        for (size_t i = 0; i < s.n; i++) {
            want[s.grad_offset + i] = rp[s.param_offset + i];
            got[s.grad_offset + i] = gpu().has_master() ? gm[s.grad_offset + i] : gp[s.param_offset + i];
        }
    EXPECT_TRUE(near_rel(got, want, tol));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaFinetune, ::testing::Values(DType::f32, DType::bf16, DType::f16),
                         dtype_param_name);

}  // namespace
}  // namespace tune::test
