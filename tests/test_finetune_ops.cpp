// The fine-tuning ops of the CPU reference (kernels/cpu/finetune.h), through the f64 CPU backend: gradients
// against central finite differences in double, values against direct formulas written out here, and the
// properties the CUDA versions are later held to (dropout's mask statistics and reproducibility, Adam's
// per-segment t_offset). Outputs are poisoned with NaN first; accumulating outputs are pre-filled with random
// values so += is checked; shapes are awkward (not multiples of 32).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {


bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// The CPU backend's buffers are host memory, so the tests hand it std::vector storage directly.
class FinetuneCpu : public ::testing::Test {
   protected:
    std::unique_ptr<Backend> be = make_cpu_backend(DType::f64);
};

// ---------------------------------------------------------------- scale, squares
TEST_F(FinetuneCpu, ScaleWritesAndMayRunInPlaceF64_n37) {
    const auto x = randn(37, 1);
    std::vector<double> out(37);
    poison(out);
    be->scale(out.data(), x.data(), -0.75f, x.size());
    for (size_t i = 0; i < x.size(); i++) EXPECT_EQ(out[i], x[i] * -0.75) << i;
    auto y = x;
    be->scale(y.data(), y.data(), -0.75f, y.size());
    EXPECT_TRUE(same_bits(y, out));
}

TEST_F(FinetuneCpu, AccumulateSquaresAddsF64_n37) {
    const auto x = randn(37, 1), out0 = randn(37, 2);
    auto out = out0;
    be->accumulate_squares(out.data(), x.data(), 0.3f, x.size());
    for (size_t i = 0; i < x.size(); i++) EXPECT_NEAR(out[i], out0[i] + (double)0.3f * x[i] * x[i], 1e-15) << i;
}

// ---------------------------------------------------------------- dropout
// Dropout of n = 100003 elements: the fraction kept is 1 - p within 5 standard deviations, kept values are
// scaled by exactly 1 / (1 - p), dropped ones are exactly 0.
TEST_F(FinetuneCpu, DropoutKeepsOneMinusPAndScalesExactlyF64_n100003) {
    const size_t n = 100003;
    const auto x = randn(n, 1);  // no zeros (almost surely), so a zero output means dropped
    for (float p : {0.1f, 0.5f, 0.9f}) {
        std::vector<double> out(n);
        poison(out);
        be->dropout(out.data(), x.data(), p, 42, {}, n);
        const double scale = 1.0 / (1.0 - (double)p);
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            if (out[i] == 0.0) continue;
            kept++;
            ASSERT_EQ(out[i], x[i] * scale) << "element " << i << " p=" << p;
        }
        const double mean = n * (1.0 - p), sd = std::sqrt(n * (double)p * (1.0 - p));
        EXPECT_NEAR((double)kept, mean, 5 * sd) << "p=" << p;
    }
}

TEST_F(FinetuneCpu, DropoutMaskIsAFunctionOfSeedAndIndexF64_n100003) {
    const size_t n = 100003;
    const float p = 0.3f;
    const auto x = randn(n, 1);
    std::vector<double> a(n), b(n), c(n), head(1001);
    be->dropout(a.data(), x.data(), p, 7, {}, n);
    be->dropout(b.data(), x.data(), p, 7, {}, n);
    be->dropout(c.data(), x.data(), p, 8, {}, n);
    EXPECT_TRUE(same_bits(a, b)) << "same seed, different output";
    // Different seeds: independent masks, so both keep an element with probability (1-p)^2.
    size_t both = 0, differ = 0;
    for (size_t i = 0; i < n; i++) {
        both += a[i] != 0.0 && c[i] != 0.0;
        differ += (a[i] != 0.0) != (c[i] != 0.0);
    }
    EXPECT_GT(differ, 0u);
    const double q = (1.0 - p) * (1.0 - p);
    EXPECT_NEAR((double)both, n * q, 5 * std::sqrt(n * q * (1 - q)));
    // The first 1001 elements alone get the same mask: it depends on the index, not on n.
    be->dropout(head.data(), x.data(), p, 7, {}, head.size());
    EXPECT_TRUE(same_bits(head, std::vector<double>(a.begin(), a.begin() + head.size())));
    // The mask is the documented hash.
    const uint64_t threshold = (uint64_t)((double)p * 4294967296.0);
    for (size_t i = 0; i < n; i++) ASSERT_EQ(a[i] != 0.0, dropout_hash(7, i) >= threshold) << i;
}

// The backward is the same call on dout: it drops the same positions and scales the rest alike, which is
// the derivative of the forward (checked by finite differences).
TEST_F(FinetuneCpu, DropoutBackwardIsTheSameCallF64_n97) {
    const size_t n = 97;
    const float p = 0.4f;
    const uint64_t seed = 123;
    auto x = randn(n, 1);
    const auto R = randn(n, 2);
    auto f = [&] {
        std::vector<double> out(n);
        be->dropout(out.data(), x.data(), p, seed, {}, n);
        return dot(out, R);
    };
    std::vector<double> dx(n);
    poison(dx);
    be->dropout(dx.data(), R.data(), p, seed, {}, n);
    EXPECT_TRUE(near_rel(dx, numeric_grad(x, f), kGradTol));
    size_t dropped = 0;
    for (double v : dx) dropped += v == 0.0;
    EXPECT_GT(dropped, 0u);
    EXPECT_LT(dropped, n);
}

// Under data parallelism rank r holds sequences r, r+W, r+2W, ... of the global batch. Given that layout, each
// rank's mask is its rows of the mask one process draws over the whole batch: W=3 ranks of B=2 sequences of
// 5 x 7 elements against one process with 6 sequences.
TEST_F(FinetuneCpu, DropoutLayoutGivesEachRankItsRowsOfTheGlobalMaskF64_W3B2T5C7) {
    const int W = 3, B = 2;
    const size_t seq = 5 * 7;
    const float p = 0.45f;
    const auto global_x = randn(W * B * seq, 1);
    std::vector<double> global(global_x.size());
    be->dropout(global.data(), global_x.data(), p, 11, {}, global.size());
    for (int r = 0; r < W; r++) {
        std::vector<double> x, want, got(B * seq);
        for (int b = 0; b < B; b++) {  // local sequence b is global sequence b * W + r
            const size_t g = ((size_t)b * W + r) * seq;
            x.insert(x.end(), global_x.begin() + g, global_x.begin() + g + seq);
            want.insert(want.end(), global.begin() + g, global.begin() + g + seq);
        }
        poison(got);
        be->dropout(got.data(), x.data(), p, 11, DropoutLayout{seq, (uint64_t)W, (uint64_t)r}, got.size());
        EXPECT_TRUE(same_bits(got, want)) << "rank " << r;
    }
    // and the layout matters: rank 1 with the identity layout draws other masks
    std::vector<double> x1(global_x.begin(), global_x.begin() + B * seq), plain(B * seq), laid(B * seq);
    be->dropout(plain.data(), x1.data(), p, 11, {}, plain.size());
    be->dropout(laid.data(), x1.data(), p, 11, DropoutLayout{seq, (uint64_t)W, 1}, laid.size());
    EXPECT_FALSE(same_bits(plain, laid));
}

// The counter takes 32-bit division below 2^32 and 64-bit above: both are the layout's formula.
TEST(DropoutCounter, ThirtyTwoAndSixtyFourBitPathsAgreeWithTheFormula) {
    const DropoutLayout m{1000, 4, 3};
    for (uint64_t i : {uint64_t(0), uint64_t(999), uint64_t(1000), uint64_t(123456789), (uint64_t(1) << 32) - 1,
                       uint64_t(1) << 32, (uint64_t(1) << 33) + 17}) {
        const uint64_t seq = i / 1000, at = i % 1000;
        EXPECT_EQ(dropout_counter(m, i), (seq * 4 + 3) * 1000 + at) << i;
    }
    const DropoutLayout wide{(uint64_t(1) << 32) + 5, 2, 1};  // sequences longer than 2^32 elements
    EXPECT_EQ(dropout_counter(wide, 7), wide.seq_elems + 7);
    EXPECT_EQ(dropout_counter(DropoutLayout{}, 12345), 12345u);
}

TEST_F(FinetuneCpu, DropoutWithPZeroCopiesF64_n37) {
    const auto x = randn(37, 1);
    std::vector<double> out(37);
    poison(out);
    be->dropout(out.data(), x.data(), 0.0f, 99, {}, x.size());
    EXPECT_TRUE(same_bits(out, x));
}

// ---------------------------------------------------------------- prefix rows
struct PrefixShape {
    int B, T, P, W, col0, w, src_ld;
};

// f(x, src) = sum R * forward(x, src). Backward with dx = R must give df/dx in dx (the overwritten entries
// zeroed) and add df/dsrc to dsrc, leaving dsrc's columns w..src_ld-1 alone.
TEST_F(FinetuneCpu, PrefixRowsForwardBackwardMatchFiniteDifferencesF64) {
    for (PrefixShape s : {PrefixShape{3, 7, 4, 13, 2, 9, 11}, PrefixShape{2, 5, 5, 6, 0, 6, 6},
                          PrefixShape{1, 9, 1, 37, 30, 7, 40}}) {
        const size_t nx = (size_t)s.B * s.T * s.W, ns = (size_t)s.P * s.src_ld;
        auto x = randn(nx, 1), src = randn(ns, 2);
        const auto R = randn(nx, 3);
        auto f = [&] {
            auto y = x;
            be->prefix_rows_forward(y.data(), src.data(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
            return dot(y, R);
        };
        // Forward: the prefix block is src, everything else is untouched.
        auto y = x;
        be->prefix_rows_forward(y.data(), src.data(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        for (int b = 0; b < s.B; b++)
            for (int t = 0; t < s.T; t++)
                for (int c = 0; c < s.W; c++) {
                    const size_t i = ((size_t)b * s.T + t) * s.W + c;
                    const bool prefix = t < s.P && c >= s.col0 && c < s.col0 + s.w;
                    const double want = prefix ? src[(size_t)t * s.src_ld + c - s.col0] : x[i];
                    ASSERT_EQ(y[i], want) << "b=" << b << " t=" << t << " c=" << c;
                }
        const auto dsrc0 = randn(ns, 4);
        auto dsrc = dsrc0, dx = R;
        be->prefix_rows_backward(dsrc.data(), dx.data(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        const std::string where =
            "B=" + std::to_string(s.B) + " P=" + std::to_string(s.P) + " w=" + std::to_string(s.w);
        EXPECT_TRUE(near_rel(dx, numeric_grad(x, f), kGradTol)) << "dx " << where;
        auto want_dsrc = numeric_grad(src, f);
        EXPECT_TRUE(near_rel(sub(dsrc, dsrc0), want_dsrc, kGradTol)) << "dsrc " << where;
        for (int j = 0; j < s.P; j++)
            for (int c = s.w; c < s.src_ld; c++)
                ASSERT_EQ(dsrc[(size_t)j * s.src_ld + c], dsrc0[(size_t)j * s.src_ld + c]) << "ld padding touched";
        // Frozen source: dx is still zeroed where the prefix was written.
        auto dx2 = R;
        be->prefix_rows_backward(nullptr, dx2.data(), s.src_ld, s.B, s.T, s.P, s.W, s.col0, s.w);
        EXPECT_TRUE(same_bits(dx2, dx)) << where;
    }
}

// ---------------------------------------------------------------- distillation
struct DistillShape {
    size_t N;
    int V, Vp;
};

// KL(q || p) * w * tau^2, written out directly: softmax by its definition, no log-sum-exp tricks beyond
// subtracting the max.
std::vector<double> kl_direct(const std::vector<double>& z, const std::vector<double>& zt,
                              const std::vector<float>& w, double tau, size_t N, int V, int Vp) {
    std::vector<double> out(N);
    for (size_t i = 0; i < N; i++) {
        std::vector<double> p(V), q(V);
        double mp = -INFINITY, mq = -INFINITY, sp = 0, sq = 0;
        for (int v = 0; v < V; v++) {
            mp = std::max(mp, z[i * Vp + v] / tau);
            mq = std::max(mq, zt[i * Vp + v] / tau);
        }
        for (int v = 0; v < V; v++) {
            p[v] = std::exp(z[i * Vp + v] / tau - mp);
            q[v] = std::exp(zt[i * Vp + v] / tau - mq);
            sp += p[v];
            sq += q[v];
        }
        double kl = 0;
        for (int v = 0; v < V; v++) kl += q[v] / sq * std::log((q[v] / sq) / (p[v] / sp));
        out[i] = w[i] * tau * tau * kl;
    }
    return out;
}

std::vector<float> distill_weights(size_t N) {
    const float pattern[] = {1.0f, 0.0f, 0.5f, 2.0f, 0.0f, 1.5f};
    std::vector<float> w(N);
    for (size_t i = 0; i < N; i++) w[i] = pattern[i % 6];
    return w;
}

TEST_F(FinetuneCpu, DistillGradientMatchesFiniteDifferencesF64_N6_V37_Vp64_and_N4_V11_Vp11) {
    for (DistillShape s : {DistillShape{6, 37, 64}, DistillShape{4, 11, 11}}) {
        for (float tau : {1.0f, 2.5f}) {
            const float dloss = 0.37f;
            const auto w = distill_weights(s.N);
            auto z = randn(s.N * s.Vp, 1, 2.0);
            auto zt = randn(s.N * s.Vp, 2, 2.0);
            for (size_t i = 0; i < s.N; i++)  // padding holds garbage: it must take no part
                for (int v = s.V; v < s.Vp; v++) z[i * s.Vp + v] = zt[i * s.Vp + v] = 1e3;
            auto f = [&] {
                std::vector<double> losses(s.N);
                be->distill_forward_backward(losses.data(), nullptr, z.data(), zt.data(), w.data(), tau, 0.0f, s.N,
                                             s.V, s.Vp);
                double sum = 0;
                for (double l : losses) sum += l;
                return sum * dloss;
            };
            std::vector<double> losses(s.N), dz(s.N * s.Vp);
            poison(losses);
            poison(dz);
            be->distill_forward_backward(losses.data(), dz.data(), z.data(), zt.data(), w.data(), tau, dloss, s.N,
                                         s.V, s.Vp);
            const std::string where = "N=" + std::to_string(s.N) + " V=" + std::to_string(s.V) +
                                      " Vp=" + std::to_string(s.Vp) + " tau=" + std::to_string(tau);
            EXPECT_TRUE(near_rel(dz, numeric_grad(z, f), kGradTol)) << where;
            EXPECT_TRUE(near_rel(losses, kl_direct(z, zt, w, tau, s.N, s.V, s.Vp), 1e-12)) << where;
            for (size_t i = 0; i < s.N; i++) {
                if (w[i] == 0.0f) {
                    EXPECT_EQ(losses[i], 0.0) << "weight-0 row " << i << " " << where;
                    for (int v = 0; v < s.Vp; v++) ASSERT_EQ(dz[i * s.Vp + v], 0.0) << "weight-0 row " << i;
                } else {
                    EXPECT_GT(losses[i], 0.0) << "KL of different distributions, row " << i << " " << where;
                }
                for (int v = s.V; v < s.Vp; v++) ASSERT_EQ(dz[i * s.Vp + v], 0.0) << "padding column " << v;
            }
        }
    }
}

// dlogits may alias the teacher's logits: the same results as a separate buffer.
TEST_F(FinetuneCpu, DistillInPlaceOverTeacherMatchesSeparateOutputF64_N5_V37_Vp40) {
    const size_t N = 5;
    const int V = 37, Vp = 40;
    const auto w = distill_weights(N);
    const auto z = randn(N * Vp, 1, 2.0), zt = randn(N * Vp, 2, 2.0);
    std::vector<double> l1(N), l2(N), dz(N * Vp);
    be->distill_forward_backward(l1.data(), dz.data(), z.data(), zt.data(), w.data(), 1.7f, 0.5f, N, V, Vp);
    auto t = zt;
    be->distill_forward_backward(l2.data(), t.data(), z.data(), t.data(), w.data(), 1.7f, 0.5f, N, V, Vp);
    EXPECT_TRUE(same_bits(l1, l2));
    EXPECT_TRUE(same_bits(dz, t));
}

TEST_F(FinetuneCpu, DistillOfTeacherWithItselfIsZeroF64_N4_V37_Vp64) {
    const size_t N = 4;
    const int V = 37, Vp = 64;
    const std::vector<float> w = {1.0f, 2.0f, 0.5f, 1.0f};
    const auto z = randn(N * Vp, 1, 3.0);
    std::vector<double> losses(N), dz(N * Vp);
    poison(losses);
    poison(dz);
    be->distill_forward_backward(losses.data(), dz.data(), z.data(), z.data(), w.data(), 2.0f, 1.0f, N, V, Vp);
    for (double l : losses) EXPECT_NEAR(l, 0.0, 1e-14);
    for (double d : dz) ASSERT_NEAR(d, 0.0, 1e-14);
}

// ---------------------------------------------------------------- anchor penalty
// Segments with param_offset != grad_offset and gaps between them in both arenas.
const std::vector<OptSegment> kAnchorSegs = {{3, 0, 17}, {40, 20, 9}, {25, 33, 11}};
constexpr size_t kAnchorP = 52, kAnchorG = 47;

TEST_F(FinetuneCpu, AnchorPenaltyValueAndGradientWithAndWithoutFisherF64) {
    const float lambda = 0.7f, grad_mult = 0.25f;
    auto params = randn(kAnchorP, 1);
    const auto anchor = randn(kAnchorG, 2);
    auto fisher = randn(kAnchorG, 3);
    for (auto& f : fisher) f = f * f;  // a Fisher diagonal is non-negative
    for (bool with_fisher : {false, true}) {
        const double* F = with_fisher ? fisher.data() : nullptr;
        const auto grads0 = randn(kAnchorG, 4);
        auto grads = grads0;
        const double got =
            be->anchor_penalty(grads.data(), params.data(), nullptr, anchor.data(), F, kAnchorSegs, lambda, grad_mult);
        double want = 0;
        std::vector<double> want_dg(kAnchorG, 0.0);
        for (const OptSegment& s : kAnchorSegs)
            for (size_t i = 0; i < s.n; i++) {
                const size_t gi = s.grad_offset + i;
                const double d = params[s.param_offset + i] - anchor[gi], f = F ? F[gi] : 1.0;
                want += f * d * d;
                want_dg[gi] = (double)grad_mult * lambda * f * d;
            }
        EXPECT_NEAR(got, want, 1e-12 * want) << "fisher " << with_fisher;
        // Gaps of the gradient arena (want_dg == 0 there) are left exactly as they were.
        EXPECT_TRUE(near_rel(sub(grads, grads0), want_dg, 1e-13)) << "fisher " << with_fisher;
        for (size_t gi = 0; gi < kAnchorG; gi++)
            if (want_dg[gi] == 0.0) {
                ASSERT_EQ(grads[gi], grads0[gi]) << "gap " << gi;
            }
        // The gradient increment is grad_mult * d/dw (lambda/2 * penalty), mapped from the parameter arena.
        auto f = [&] {
            std::vector<double> scratch(kAnchorG, 0.0);
            return grad_mult * lambda / 2 *
                   be->anchor_penalty(scratch.data(), params.data(), nullptr, anchor.data(), F, kAnchorSegs, 0.0f,
                                      0.0f);
        };
        const auto num = numeric_grad(params, f);
        std::vector<double> got_dp(kAnchorP, 0.0);
        for (const OptSegment& s : kAnchorSegs)
            for (size_t i = 0; i < s.n; i++)
                got_dp[s.param_offset + i] = grads[s.grad_offset + i] - grads0[s.grad_offset + i];
        EXPECT_TRUE(near_rel(got_dp, num, kGradTol)) << "fisher " << with_fisher;
    }
}

// With a master copy the weights come from it (gradient-arena layout) and the parameters are never read.
TEST_F(FinetuneCpu, AnchorPenaltyReadsMasterWhenGivenF64) {
    std::vector<double> params(kAnchorP);
    poison(params);
    const auto master = randn(kAnchorG, 1), anchor = randn(kAnchorG, 2);
    std::vector<double> grads(kAnchorG, 0.0);
    const double got =
        be->anchor_penalty(grads.data(), params.data(), master.data(), anchor.data(), nullptr, kAnchorSegs, 2.0f, 1.0f);
    double want = 0;
    for (const OptSegment& s : kAnchorSegs)
        for (size_t i = 0; i < s.n; i++) {
            const size_t gi = s.grad_offset + i;
            want += (master[gi] - anchor[gi]) * (master[gi] - anchor[gi]);
            ASSERT_NEAR(grads[gi], 2.0 * (master[gi] - anchor[gi]), 1e-15) << gi;
        }
    EXPECT_NEAR(got, want, 1e-12 * want);
}

// ---------------------------------------------------------------- AdamW t_offset
// A segment unfrozen after k steps (t_offset = k) updated at steps k+1..k+3 follows exactly the path of a
// segment that trained from step 1, and differs from one that ignores the offset.
TEST_F(FinetuneCpu, AdamWSegmentWithTOffsetMatchesFreshSegmentF64_n29) {
    const size_t n = 29;
    const int k = 5;
    const auto p0 = randn(n, 1);
    // Arena of three copies: [0,n) fresh at steps 1..3, [n,2n) t_offset = k at steps k+1..k+3,
    // [2n,3n) t_offset = 0 at steps k+1..k+3 (the bias correction a late block would get without the offset).
    std::vector<double> params(3 * n), grads(3 * n), m(3 * n, 0.0), v(3 * n, 0.0);
    for (size_t c = 0; c < 3; c++) std::copy(p0.begin(), p0.end(), params.begin() + c * n);
    const std::vector<OptSegment> fresh = {{0, 0, n, 1.0f, 0.1f, 0}};
    const std::vector<OptSegment> late = {{n, n, n, 1.0f, 0.1f, k}, {2 * n, 2 * n, n, 1.0f, 0.1f, 0}};
    for (int step = 1; step <= 3; step++) {
        const auto g = randn(n, 10 + step, 0.3);
        for (size_t c = 0; c < 3; c++) std::copy(g.begin(), g.end(), grads.begin() + c * n);
        AdamWStep st;
        st.lr = 1e-2f;
        st.beta2 = 0.999f;
        st.t = step;
        be->adamw_update(params.data(), nullptr, grads.data(), m.data(), v.data(), fresh, st);
        st.t = k + step;
        be->adamw_update(params.data(), nullptr, grads.data(), m.data(), v.data(), late, st);
    }
    const std::vector<double> a(params.begin(), params.begin() + n), b(params.begin() + n, params.begin() + 2 * n),
        c(params.begin() + 2 * n, params.end());
    EXPECT_TRUE(same_bits(a, b));
    EXPECT_FALSE(near_rel(c, a, 1e-6)) << "ignoring t_offset should change the update";
}

// Three steps of the published algorithm (Loshchilov & Hutter; bias correction as in Kingma & Ba), written
// out here in double: distinct betas, a gradient scale, two segments with their own learning-rate factor,
// weight decay and t_offset, new gradients each step. A mistake in any of them (a swapped beta, a bias
// correction by the wrong power, decay scaled without lr) moves the result far past 1e-12.
TEST_F(FinetuneCpu, AdamWFollowsThePublishedAlgorithmForThreeStepsF64_n13) {
    const size_t n = 13;
    const double b1 = 0.8, b2 = 0.9, eps = 1e-8, lr = 3e-2, gs = 0.5;
    const std::vector<OptSegment> segs = {{0, 0, 6, 1.0f, 0.1f, 0}, {6, 6, 7, 0.25f, 0.0f, 1}};
    std::vector<double> params = randn(n, 1), grads(n), m(n, 0.0), v(n, 0.0);
    std::vector<double> want = params, wm(n, 0.0), wv(n, 0.0);
    for (int t = 2; t <= 4; t++) {  // the second segment's own steps are t - 1 = 1..3
        grads = randn(n, 20 + t, 0.7);
        AdamWStep st;
        st.lr = (float)lr;
        st.beta1 = (float)b1;
        st.beta2 = (float)b2;
        st.eps = (float)eps;
        st.t = t;
        st.grad_scale = (float)gs;
        be->adamw_update(params.data(), nullptr, grads.data(), m.data(), v.data(), segs, st);
        for (size_t i = 0; i < n; i++) {
            const bool first = i < 6;
            const double B1 = (float)b1, B2 = (float)b2, E = (float)eps, LR = (float)lr;  // as the step carries them
            const double seg_lr = LR * (first ? 1.0 : 0.25), wd = first ? (double)0.1f : 0.0;
            const int tt = first ? t : t - 1;
            const double g = grads[i] * gs;
            wm[i] = B1 * wm[i] + (1 - B1) * g;
            wv[i] = B2 * wv[i] + (1 - B2) * g * g;
            const double mhat = wm[i] / (1 - std::pow(B1, tt)), vhat = wv[i] / (1 - std::pow(B2, tt));
            want[i] -= seg_lr * (mhat / (std::sqrt(vhat) + E) + wd * want[i]);
        }
    }
    EXPECT_TRUE(near_rel(params, want, 1e-12));
    EXPECT_TRUE(near_rel(m, wm, 1e-12));
    EXPECT_TRUE(near_rel(v, wv, 1e-12));
}

}  // namespace
}  // namespace tune::test
