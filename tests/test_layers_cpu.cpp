// Every CPU reference layer, checked in double against central finite differences of a random linear
// functional f = sum(out * R): backward with dout = R must give df/d(input) and df/d(param) for every
// element. Shapes are deliberately awkward (not multiples of anything). Accumulating gradients are
// pre-filled with random values to check that they add (+=) rather than overwrite.
#include <gtest/gtest.h>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/crossentropy.h"
#include "kernels/cpu/encoder.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/residual.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {


TEST(LayerNormCpu, GradientsMatchFiniteDifferencesF64_N7_C13) {
    const size_t N = 7;
    const int C = 13;
    auto x = randn(N * C, 1), w = randn(C, 2), b = randn(C, 3), R = randn(N * C, 4);
    for (auto& v : x) v = v * 2 + 0.5;  // non-zero mean, non-unit variance
    auto f = [&] {
        std::vector<double> out(N * C), mean(N), rstd(N);
        cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
        return dot(out, R);
    };
    std::vector<double> out(N * C), mean(N), rstd(N);
    poison(out);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    auto dx0 = randn(N * C, 5), dw0 = randn(C, 6), db0 = randn(C, 7);
    auto dx = dx0, dw = dw0, db = db0;
    cpu::layernorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(), rstd.data(),
                            N, C);
    EXPECT_TRUE(near_rel(sub(dx, dx0), numeric_grad(x, f), kGradTol));
    EXPECT_TRUE(near_rel(sub(dw, dw0), numeric_grad(w, f), kGradTol));
    EXPECT_TRUE(near_rel(sub(db, db0), numeric_grad(b, f), kGradTol));
}

TEST(LayerNormCpu, OutputIsNormalisedPerRowF64) {
    const size_t N = 5;
    const int C = 37;
    auto x = randn(N * C, 11, 3.0);
    std::vector<double> w(C, 1.0), b(C, 0.0), out(N * C), mean(N), rstd(N);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    for (size_t i = 0; i < N; i++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += out[i * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (out[i * C + c] - m) * (out[i * C + c] - m);
        EXPECT_NEAR(m, 0.0, 1e-12);
        EXPECT_NEAR(v / C, 1.0, 1e-4);  // eps = 1e-5 keeps it just under 1
    }
}

TEST(MatmulCpu, GradientsMatchFiniteDifferencesF64_N9_IC11_OC7) {
    const size_t N = 9;
    const int IC = 11, OC = 7;
    auto x = randn(N * IC, 1), w = randn((size_t)OC * IC, 2), b = randn(OC, 3), R = randn(N * OC, 4);
    auto f = [&] {
        std::vector<double> out(N * OC);
        cpu::matmul_forward(out.data(), x.data(), w.data(), b.data(), N, IC, OC);
        return dot(out, R);
    };
    std::vector<double> dx(N * IC);
    poison(dx);
    auto dw0 = randn((size_t)OC * IC, 5), db0 = randn(OC, 6);
    auto dw = dw0, db = db0;
    cpu::matmul_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, IC, OC);
    EXPECT_TRUE(near_rel(dx, numeric_grad(x, f), kGradTol));
    EXPECT_TRUE(near_rel(sub(dw, dw0), numeric_grad(w, f), kGradTol));
    EXPECT_TRUE(near_rel(sub(db, db0), numeric_grad(b, f), kGradTol));
}

TEST(MatmulCpu, ForwardMatchesNaiveLoopF32_N5_IC3_OC4) {
    const size_t N = 5;
    const int IC = 3, OC = 4;
    auto x = cast<float>(randn(N * IC, 1)), w = cast<float>(randn(OC * IC, 2)), b = cast<float>(randn(OC, 3));
    std::vector<float> out(N * OC);
    poison(out);
    cpu::matmul_forward(out.data(), x.data(), w.data(), b.data(), N, IC, OC);
    std::vector<double> want(N * OC);
    for (size_t i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = b[o];
            for (int k = 0; k < IC; k++) s += (double)x[i * IC + k] * w[o * IC + k];
            want[i * OC + o] = s;
        }
    EXPECT_TRUE(near_rel(out, want, 1e-6));
}

// attention_backward's dqkv against finite differences of <attention_forward(qkv), R>, random qkv and R.
// Returns the forward's probabilities.
std::vector<double> expect_attention_gradients_match_fd(int B, int T, int C, int NH, DocMask mask, uint64_t seed,
                                                        const std::string& what) {
    auto qkv = randn((size_t)B * T * 3 * C, seed), R = randn((size_t)B * T * C, seed + 1);
    auto f = [&] {
        std::vector<double> out((size_t)B * T * C), p(cpu::attention_saved_elems(B, T, NH));
        cpu::attention_forward(out.data(), p.data(), qkv.data(), mask, B, T, C, NH);
        return dot(out, R);
    };
    std::vector<double> out((size_t)B * T * C), p(cpu::attention_saved_elems(B, T, NH)), dqkv(qkv.size());
    poison(out);
    poison(p);
    poison(dqkv);
    cpu::attention_forward(out.data(), p.data(), qkv.data(), mask, B, T, C, NH);
    cpu::attention_backward(dqkv.data(), R.data(), qkv.data(), p.data(), mask, B, T, C, NH);
    EXPECT_TRUE(near_rel(dqkv, numeric_grad(qkv, f), kGradTol)) << what;
    return p;
}

TEST(AttentionCpu, GradientsMatchFiniteDifferencesF64_B2_T7_C12_NH3) {
    expect_attention_gradients_match_fd(2, 7, 12, 3, DocMask(), 1, "causal");
}

// Packed documents (`--windows isolated`): row 0 holds documents of 3, 5 and 4 tokens, row 1 one of 12. Each
// document's output and its rows of dqkv must be those of the document alone in a row of its own.
TEST(AttentionCpu, DocumentMaskEqualsEachDocumentAloneF64_B2_T12_C12_NH3) {
    const int B = 2, T = 12, C = 12, NH = 3;
    const size_t C3 = 3 * (size_t)C;
    const std::vector<int32_t> pos = {0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    struct Doc {
        int b, t0, len;
    };
    const std::vector<Doc> docs = {{0, 0, 3}, {0, 3, 5}, {0, 8, 4}, {1, 0, 12}};
    auto qkv = randn((size_t)B * T * C3, 31), R = randn((size_t)B * T * C, 32);
    std::vector<double> out((size_t)B * T * C), p(cpu::attention_saved_elems(B, T, NH)), dqkv(qkv.size());
    poison(out);
    poison(p);
    poison(dqkv);
    cpu::attention_forward(out.data(), p.data(), qkv.data(), pos.data(), B, T, C, NH);
    cpu::attention_backward(dqkv.data(), R.data(), qkv.data(), p.data(), pos.data(), B, T, C, NH);
    for (const Doc& d : docs) {
        const size_t first = (size_t)d.b * T + d.t0;
        std::vector<double> q1(qkv.begin() + first * C3, qkv.begin() + (first + d.len) * C3),
            r1(R.begin() + first * C, R.begin() + (first + d.len) * C), o1((size_t)d.len * C),
            p1(cpu::attention_saved_elems(1, d.len, NH)), dq1(q1.size());
        cpu::attention_forward(o1.data(), p1.data(), q1.data(), nullptr, 1, d.len, C, NH);
        cpu::attention_backward(dq1.data(), r1.data(), q1.data(), p1.data(), nullptr, 1, d.len, C, NH);
        const std::vector<double> o_packed(out.begin() + first * C, out.begin() + (first + d.len) * C),
            dq_packed(dqkv.begin() + first * C3, dqkv.begin() + (first + d.len) * C3);
        EXPECT_TRUE(near_rel(o_packed, o1, 1e-12)) << "document at row " << d.b << ", column " << d.t0;
        EXPECT_TRUE(near_rel(dq_packed, dq1, 1e-12)) << "document at row " << d.b << ", column " << d.t0;
    }
    // No weight on another document: the probabilities of row 0's second document are zero outside it.
    for (int h = 0; h < NH; h++)
        for (int t = 3; t < 8; t++)
            for (int u = 0; u < T; u++)
                if (u < 3 || u > t) {
                    EXPECT_EQ(p[((size_t)h * T + t) * T + u], 0.0) << "head " << h << ", query " << t << ", key " << u;
                }
}

// With a virtual prefix of 2 (positions 0, 1 of each row, seen by every document) and without.
TEST(AttentionCpu, DocumentMaskGradientsMatchFiniteDifferencesF64_B2_T9_C12_NH3_Prefix0and2) {
    const int B = 2, T = 9, C = 12, NH = 3;
    const std::vector<int32_t> pos = {0, 1, 0, 1, 0, 1, 2, 3, 0, 0, 1, 0, 1, 2, 0, 1, 2, 3};
    for (int prefix : {0, 2}) {
        const std::vector<double> p = expect_attention_gradients_match_fd(B, T, C, NH, DocMask(pos.data(), prefix), 33,
                                                                          "prefix " + std::to_string(prefix));
        // Row 1's last document (columns 5..8) sees the prefix and itself, nothing in between.
        for (int u = 0; u < T; u++) {
            const bool seen = u >= 5 || u < prefix;
            EXPECT_EQ(p[((size_t)(1 * NH) * T + 8) * T + u] != 0.0, seen) << "prefix " << prefix << ", key " << u;
        }
    }
}

TEST(AttentionCpu, IsCausal_FutureTokensDoNotChangeThePastF64) {
    const int B = 1, T = 9, C = 8, NH = 2;
    auto qkv = randn((size_t)B * T * 3 * C, 3);
    std::vector<double> out1((size_t)T * C), out2((size_t)T * C), p(cpu::attention_saved_elems(B, T, NH));
    cpu::attention_forward(out1.data(), p.data(), qkv.data(), nullptr, B, T, C, NH);
    for (int c = 0; c < 3 * C; c++) qkv[(size_t)(T - 1) * 3 * C + c] += 10.0;  // change the last position only
    cpu::attention_forward(out2.data(), p.data(), qkv.data(), nullptr, B, T, C, NH);
    for (size_t i = 0; i < (size_t)(T - 1) * C; i++) EXPECT_EQ(out1[i], out2[i]) << "position " << i / C;
    bool last_changed = false;
    for (int c = 0; c < C; c++) last_changed |= out1[(size_t)(T - 1) * C + c] != out2[(size_t)(T - 1) * C + c];
    EXPECT_TRUE(last_changed);
}

TEST(AttentionCpu, SingleHeadMatchesDirectFormulaF64_T5_C4) {
    // Independent check of the forward: softmax(q k^T / sqrt(HS)) v written out by hand for one head.
    const int T = 5, C = 4;
    auto qkv = randn((size_t)T * 3 * C, 21);
    std::vector<double> out((size_t)T * C), p((size_t)T * T);
    cpu::attention_forward(out.data(), p.data(), qkv.data(), nullptr, 1, T, C, 1);
    for (int t = 0; t < T; t++) {
        std::vector<double> s(t + 1);
        double mx = -1e300, z = 0;
        for (int u = 0; u <= t; u++) {
            s[u] = 0;
            for (int i = 0; i < C; i++) s[u] += qkv[t * 3 * C + i] * qkv[u * 3 * C + C + i];
            s[u] /= 2.0;  // sqrt(HS = 4)
            mx = std::max(mx, s[u]);
        }
        for (int u = 0; u <= t; u++) z += std::exp(s[u] - mx);
        for (int i = 0; i < C; i++) {
            double o = 0;
            for (int u = 0; u <= t; u++) o += std::exp(s[u] - mx) / z * qkv[u * 3 * C + 2 * C + i];
            EXPECT_NEAR(out[t * C + i], o, 1e-12);
        }
    }
}

TEST(GeluCpu, GradientsMatchFiniteDifferencesF64_n29) {
    auto x = randn(29, 1, 2.0), R = randn(29, 2);
    auto f = [&] {
        std::vector<double> out(x.size());
        cpu::gelu_forward(out.data(), x.data(), x.size());
        return dot(out, R);
    };
    std::vector<double> dx(x.size());
    poison(dx);
    cpu::gelu_backward(dx.data(), R.data(), x.data(), x.size());
    EXPECT_TRUE(near_rel(dx, numeric_grad(x, f), kGradTol));
}

TEST(GeluCpu, MatchesTanhFormulaAtChosenPointsF64) {
    std::vector<double> x = {-3.0, -1.0, -0.1, 0.0, 0.5, 2.0}, out(6);
    cpu::gelu_forward(out.data(), x.data(), x.size());
    for (size_t i = 0; i < x.size(); i++) {
        double u = std::sqrt(2.0 / M_PI) * (x[i] + 0.044715 * x[i] * x[i] * x[i]);
        EXPECT_NEAR(out[i], 0.5 * x[i] * (1 + std::tanh(u)), 1e-15);
    }
    EXPECT_NEAR(out[5], 1.9545976940871754, 1e-12);  // gelu_tanh(2), from the formula evaluated independently
}

TEST(EncoderCpu, GradientsMatchFiniteDifferencesF64_B2_T5_C6_V9) {
    const int B = 2, T = 5, C = 6, V = 9, maxT = 8;
    std::vector<int32_t> tok = {3, 1, 3, 8, 0, 2, 3, 3, 7, 1};  // repeated ids must accumulate
    auto wte = randn((size_t)V * C, 1), wpe = randn((size_t)maxT * C, 2), R = randn((size_t)B * T * C, 3);
    auto f = [&] {
        std::vector<double> out((size_t)B * T * C);
        cpu::encoder_forward(out.data(), tok.data(), nullptr, wte.data(), wpe.data(), B, T, C);
        return dot(out, R);
    };
    auto dwte0 = randn(wte.size(), 4), dwpe0 = randn(wpe.size(), 5);
    auto dwte = dwte0, dwpe = dwpe0;
    cpu::encoder_backward(dwte.data(), dwpe.data(), R.data(), tok.data(), nullptr, B, T, C);
    EXPECT_TRUE(near_rel(sub(dwte, dwte0), numeric_grad(wte, f), kGradTol));
    EXPECT_TRUE(near_rel(sub(dwpe, dwpe0), numeric_grad(wpe, f), kGradTol));
}

// Positions restarting in packed documents: forward reads wpe[pos], and repeated positions accumulate in dwpe.
TEST(EncoderCpu, PositionsGradientsMatchFiniteDifferencesF64_B2_T5_C6_V9) {
    const int B = 2, T = 5, C = 6, V = 9, maxT = 8;
    std::vector<int32_t> tok = {3, 1, 3, 8, 0, 2, 3, 3, 7, 1};
    const std::vector<int32_t> pos = {0, 1, 0, 1, 2, 0, 0, 1, 2, 3};
    auto wte = randn((size_t)V * C, 11), wpe = randn((size_t)maxT * C, 12), R = randn((size_t)B * T * C, 13);
    std::vector<double> out((size_t)B * T * C);
    poison(out);
    cpu::encoder_forward(out.data(), tok.data(), pos.data(), wte.data(), wpe.data(), B, T, C);
    for (size_t i = 0; i < (size_t)B * T; i++)
        for (int c = 0; c < C; c++)
            EXPECT_EQ(out[i * C + c], wte[(size_t)tok[i] * C + c] + wpe[(size_t)pos[i] * C + c]) << "row " << i;
    auto f = [&] {
        std::vector<double> o((size_t)B * T * C);
        cpu::encoder_forward(o.data(), tok.data(), pos.data(), wte.data(), wpe.data(), B, T, C);
        return dot(o, R);
    };
    auto dwte0 = randn(wte.size(), 14), dwpe0 = randn(wpe.size(), 15);
    auto dwte = dwte0, dwpe = dwpe0;
    cpu::encoder_backward(dwte.data(), dwpe.data(), R.data(), tok.data(), pos.data(), B, T, C);
    EXPECT_TRUE(near_rel(sub(dwte, dwte0), numeric_grad(wte, f), kGradTol));
    EXPECT_TRUE(near_rel(sub(dwpe, dwpe0), numeric_grad(wpe, f), kGradTol));
}

TEST(ResidualCpu, AddsElementwiseF64) {
    auto a = randn(17, 1), b = randn(17, 2);
    std::vector<double> out(17);
    poison(out);
    cpu::residual_forward(out.data(), a.data(), b.data(), 17);
    for (size_t i = 0; i < 17; i++) EXPECT_EQ(out[i], a[i] + b[i]);
}

TEST(RowsCpu, GatherThenScatterPlacesRowsAndZeroesTheRestF64) {
    const size_t N = 7;
    const int C = 5;
    auto x = randn(N * C, 31);
    std::vector<int32_t> rows = {6, 0, 3};
    std::vector<double> g(rows.size() * C), s(N * C);
    poison(g);
    poison(s);
    cpu::gather_rows(g.data(), x.data(), rows.data(), rows.size(), C);
    for (size_t i = 0; i < rows.size(); i++)
        for (int c = 0; c < C; c++) EXPECT_EQ(g[i * C + c], x[rows[i] * C + c]);
    cpu::scatter_rows(s.data(), g.data(), rows.data(), rows.size(), N, C);
    for (size_t r = 0; r < N; r++) {
        bool kept = r == 0 || r == 3 || r == 6;
        for (int c = 0; c < C; c++) EXPECT_EQ(s[r * C + c], kept ? x[r * C + c] : 0.0) << r;
    }
}

TEST(CrossEntropyCpu, GradientsMatchFiniteDifferencesF64_N6_V11_Vp16) {
    const size_t N = 6;
    const int V = 11, Vp = 16;
    auto z = randn(N * Vp, 1, 2.0);
    std::vector<int32_t> y = {0, 10, 5, 5, 3, 7};
    std::vector<float> w = {1, 0.5f, 0, 2, 1, 1};  // includes a masked token and non-unit weights
    const float dloss = 0.37f;
    auto f = [&] {
        std::vector<double> losses(N);
        cpu::crossentropy_forward_backward<double>(losses.data(), nullptr, z.data(), y.data(), w.data(), 0.0f, N, V,
                                                   Vp);
        double s = 0;
        for (double l : losses) s += l;
        return s * dloss;
    };
    std::vector<double> losses(N), dz(N * Vp);
    poison(losses);
    poison(dz);
    cpu::crossentropy_forward_backward(losses.data(), dz.data(), z.data(), y.data(), w.data(), dloss, N, V, Vp);
    EXPECT_TRUE(near_rel(dz, numeric_grad(z, f), kGradTol));
    EXPECT_EQ(losses[2], 0.0);  // masked
    for (size_t i = 0; i < N; i++)
        for (int v = V; v < Vp; v++) EXPECT_EQ(dz[i * Vp + v], 0.0) << "padding column " << v << " got a gradient";
}

TEST(CrossEntropyCpu, PaddingColumnsTakeNoPartInTheSoftmaxF64) {
    // Huge values in the padding columns must not change the loss.
    const size_t N = 3;
    const int V = 5, Vp = 8;
    auto z = randn(N * Vp, 7);
    std::vector<int32_t> y = {1, 4, 0};
    std::vector<float> w(N, 1.0f);
    std::vector<double> l1(N), l2(N);
    cpu::crossentropy_forward_backward<double>(l1.data(), nullptr, z.data(), y.data(), w.data(), 0.0f, N, V, Vp);
    for (size_t i = 0; i < N; i++)
        for (int v = V; v < Vp; v++) z[i * Vp + v] = 1e4;
    cpu::crossentropy_forward_backward<double>(l2.data(), nullptr, z.data(), y.data(), w.data(), 0.0f, N, V, Vp);
    for (size_t i = 0; i < N; i++) {
        EXPECT_EQ(l1[i], l2[i]);
        double mx = -1e300, s = 0;
        for (int v = 0; v < V; v++) mx = std::max(mx, z[i * Vp + v]);
        for (int v = 0; v < V; v++) s += std::exp(z[i * Vp + v] - mx);
        EXPECT_NEAR(l1[i], std::log(s) + mx - z[i * Vp + y[i]], 1e-12);
    }
}

TEST(CrossEntropyCpu, NegInfLogitsAddNothingAndInvalidTargetsGiveNaNF64) {
    const size_t N = 4;
    const int V = 6, Vp = 8;
    auto z = randn(N * Vp, 5);
    z[0 * Vp + 0] = z[0 * Vp + 4] = -INFINITY;  // row 0: two banned tokens
    std::vector<int32_t> y = {2, -1, V, 7};
    std::vector<float> w = {1, 1, 0, 1};  // rows 1 and 3 count with invalid targets; row 2 is masked
    std::vector<double> losses(N), dz(N * Vp);
    poison(losses);  // the zeros checked below must be written, not left over
    poison(dz);
    cpu::crossentropy_forward_backward(losses.data(), dz.data(), z.data(), y.data(), w.data(), 1.0f, N, V, Vp);
    double s = 0;
    for (int v : {1, 2, 3, 5}) s += std::exp(z[v]);
    EXPECT_NEAR(losses[0], std::log(s) - z[2], 1e-12) << "the softmax over the four finite logits";
    EXPECT_EQ(dz[0], 0.0);
    EXPECT_EQ(dz[4], 0.0);
    EXPECT_TRUE(std::isnan(losses[1])) << losses[1];
    EXPECT_EQ(losses[2], 0.0);
    EXPECT_TRUE(std::isnan(losses[3])) << losses[3];
    for (size_t i = 1; i < N; i++) {  // no -1 term anywhere: each row's gradient is its softmax, scaled
        double sum = 0;
        for (int v = 0; v < V; v++) sum += dz[i * Vp + v];
        EXPECT_NEAR(sum, w[i], 1e-12) << "row " << i;
    }
}

TEST(CrossEntropyCpu, InPlaceMatchesSeparateOutputF32) {
    const size_t N = 4;
    const int V = 7, Vp = 8;
    auto z = cast<float>(randn(N * Vp, 3));
    std::vector<int32_t> y = {6, 0, 2, 2};
    std::vector<float> w = {1, 1, 0, 1}, l1(N), l2(N), dz(N * Vp);
    cpu::crossentropy_forward_backward(l1.data(), dz.data(), z.data(), y.data(), w.data(), 0.25f, N, V, Vp);
    auto zin = z;
    cpu::crossentropy_forward_backward(l2.data(), zin.data(), zin.data(), y.data(), w.data(), 0.25f, N, V, Vp);
    EXPECT_EQ(l1, l2);
    EXPECT_EQ(dz, zin);
}

}  // namespace
}  // namespace tune::test
