// Every CUDA layer against the f64 CPU reference on the same (GPU-rounded) inputs, in fp32, bf16 and fp16:
// forward and backward, awkward shapes (not multiples of 32, T not a power of two, V not a multiple of 128),
// outputs poisoned with NaN first, accumulating gradients pre-filled so += is checked, frozen (null)
// gradients, misaligned pointers for the vectorised paths, and run-to-run bit equality where the
// backend promises determinism. Tolerances (max-norm relative): 1e-5 in fp32, 2e-2 in bf16/fp16.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/rng.h"
#include "tests/test_cuda_util.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

class CudaOps : public CudaTest {};

std::vector<int32_t> random_ints(size_t n, int below, uint64_t seed) {
    Rng r(seed);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = (int32_t)r.below(below);
    return v;
}

// Positions of packed documents of random lengths 1..max_len in each row of B x T (data/shard.h's isolated windows).
std::vector<int32_t> random_doc_positions(int B, int T, int max_len, uint64_t seed) {
    Rng r(seed);
    std::vector<int32_t> pos((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0, left = 0; t < T; t++, left--) {
            const bool starts = left == 0;  // a new document
            if (starts) left = 1 + (int)r.below(max_len);
            pos[(size_t)b * T + t] = starts ? 0 : pos[(size_t)b * T + t - 1] + 1;
        }
    return pos;
}

// ---------------------------------------------------------------- encoder
TEST_P(CudaOps, EncoderForward_B3_T7_C37and64_V11) {
    for (int C : {37, 64}) {  // 37: scalar path; 64: 16-byte packs
        const int B = 3, T = 7, V = 11, maxT = 9;
        Twin out(gpu(), ref(), (size_t)B * T * C), wte(gpu(), ref(), (size_t)V * C), wpe(gpu(), ref(), (size_t)maxT * C);
        wte.set(randn(wte.gpu.n(), 1));
        wpe.set(randn(wpe.gpu.n(), 2));
        out.poison();
        I32Twin tok(gpu(), ref(), random_ints((size_t)B * T, V, 3));
        gpu().encoder_forward(out.g(), tok.g, nullptr, wte.g(), wpe.g(), B, T, C);
        ref().encoder_forward(out.r(), tok.r, nullptr, wte.r(), wpe.r(), B, T, C);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "C=" << C;
    }
}

// Many repeats (V=5), one token everywhere, long runs (N=1200), and runs that end exactly on the 128-row segments
// of the sorted order and one row either side (N=817): dwte accumulates per token in a fixed order.
TEST_P(CudaOps, EncoderBackwardAccumulatesAndIsDeterministic_RepeatedTokens) {
    struct Shape {
        int B, T, C, V;
        bool all_same;
    };
    for (const Shape& s : {Shape{2, 7, 13, 5, false}, Shape{3, 5, 40, 9, true}, Shape{4, 300, 70, 3, false},
                           Shape{19, 43, 9, 6, false}}) {
        const int maxT = s.T + 2;
        Twin dwte(gpu(), ref(), (size_t)s.V * s.C), dwpe(gpu(), ref(), (size_t)maxT * s.C),
            dout(gpu(), ref(), (size_t)s.B * s.T * s.C);
        const auto dwte0 = randn(dwte.gpu.n(), 4), dwpe0 = randn(dwpe.gpu.n(), 5);
        dwte.set(dwte0);
        dwpe.set(dwpe0);
        dout.set(randn(dout.gpu.n(), 6));
        std::vector<int32_t> toks = random_ints((size_t)s.B * s.T, s.V, 7);
        if (s.all_same) std::fill(toks.begin(), toks.end(), s.V - 1);
        if (s.B * s.T == 817) {  // runs ending exactly on and just off the 128-row segments of the sorted order
            toks.clear();
            const int counts[] = {128, 256, 1, 127, 300, 5};
            for (int v = 0; v < 6; v++) toks.insert(toks.end(), counts[v], v);
            Rng r(8);
            for (size_t i = toks.size() - 1; i > 0; i--) std::swap(toks[i], toks[r.below(i + 1)]);
        }
        I32Twin tok(gpu(), ref(), toks);
        gpu().encoder_backward(dwte.g(), dwpe.g(), dout.g(), tok.g, nullptr, s.B, s.T, s.C);
        ref().encoder_backward(dwte.r(), dwpe.r(), dout.r(), tok.r, nullptr, s.B, s.T, s.C);
        const auto g1 = dwte.gpu.get();
        EXPECT_TRUE(near_rel(g1, dwte.ref.get(), op_tol(dt()))) << "dwte B=" << s.B << " T=" << s.T;
        EXPECT_TRUE(near_rel(dwpe.gpu.get(), dwpe.ref.get(), op_tol(dt()))) << "dwpe B=" << s.B << " T=" << s.T;
        // Same inputs again: bit-identical.
        dwte.gpu.set(dwte0);
        gpu().encoder_backward(dwte.g(), nullptr, dout.g(), tok.g, nullptr, s.B, s.T, s.C);
        EXPECT_TRUE(same_bits(dwte.gpu.get(), g1)) << "dwte differs between two identical runs";
    }
}

TEST_P(CudaOps, EncoderBackwardFrozenTables_B2_T9_C21) {
    const int B = 2, T = 9, C = 21, V = 6;
    Twin dwte(gpu(), ref(), (size_t)V * C), dwpe(gpu(), ref(), (size_t)T * C), dout(gpu(), ref(), (size_t)B * T * C);
    const auto w0 = dwte.set(randn(dwte.gpu.n(), 1));
    dwpe.set(randn(dwpe.gpu.n(), 2));
    dout.set(randn(dout.gpu.n(), 3));
    I32Twin tok(gpu(), ref(), random_ints((size_t)B * T, V, 4));
    gpu().encoder_backward(nullptr, dwpe.g(), dout.g(), tok.g, nullptr, B, T, C);  // wte frozen
    ref().encoder_backward(nullptr, dwpe.r(), dout.r(), tok.r, nullptr, B, T, C);
    EXPECT_TRUE(near_rel(dwpe.gpu.get(), dwpe.ref.get(), op_tol(dt())));
    EXPECT_TRUE(same_bits(dwte.gpu.get(), w0)) << "a null dwte must leave the buffer alone";
    gpu().encoder_backward(dwte.g(), nullptr, dout.g(), tok.g, nullptr, B, T, C);  // wpe frozen
    ref().encoder_backward(dwte.r(), nullptr, dout.r(), tok.r, nullptr, B, T, C);
    EXPECT_TRUE(near_rel(dwte.gpu.get(), dwte.ref.get(), op_tol(dt())));
}

// Positions restarting in packed documents: wpe read by position, dwpe summed by position (long runs of position
// 0 cross the 128-row segments of the sorted order at B*T = 1200), deterministically.
TEST_P(CudaOps, EncoderWithDocumentPositions_B4_T300_C70_and_B2_T7_C64) {
    struct Shape {
        int B, T, C, max_len;
    };
    for (const Shape& s : {Shape{4, 300, 70, 5}, Shape{2, 7, 64, 3}}) {
        const int V = 11, maxT = s.T + 1;
        const size_t N = (size_t)s.B * s.T;
        Twin out(gpu(), ref(), N * s.C), wte(gpu(), ref(), (size_t)V * s.C), wpe(gpu(), ref(), (size_t)maxT * s.C),
            dwte(gpu(), ref(), (size_t)V * s.C), dwpe(gpu(), ref(), (size_t)maxT * s.C), dout(gpu(), ref(), N * s.C);
        wte.set(randn(wte.gpu.n(), 21));
        wpe.set(randn(wpe.gpu.n(), 22));
        const auto dwpe0 = randn(dwpe.gpu.n(), 24);
        dwte.set(randn(dwte.gpu.n(), 23));
        dwpe.set(dwpe0);
        dout.set(randn(dout.gpu.n(), 25));
        I32Twin tok(gpu(), ref(), random_ints(N, V, 26)),
            pos(gpu(), ref(), random_doc_positions(s.B, s.T, s.max_len, 27));
        out.poison();
        gpu().encoder_forward(out.g(), tok.g, pos.g, wte.g(), wpe.g(), s.B, s.T, s.C);
        ref().encoder_forward(out.r(), tok.r, pos.r, wte.r(), wpe.r(), s.B, s.T, s.C);
        const std::string where = "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out " << where;
        gpu().encoder_backward(dwte.g(), dwpe.g(), dout.g(), tok.g, pos.g, s.B, s.T, s.C);
        ref().encoder_backward(dwte.r(), dwpe.r(), dout.r(), tok.r, pos.r, s.B, s.T, s.C);
        EXPECT_TRUE(near_rel(dwte.gpu.get(), dwte.ref.get(), op_tol(dt()))) << "dwte " << where;
        const auto g1 = dwpe.gpu.get();
        EXPECT_TRUE(near_rel(g1, dwpe.ref.get(), op_tol(dt()))) << "dwpe " << where;
        dwpe.gpu.set(dwpe0);
        gpu().encoder_backward(nullptr, dwpe.g(), dout.g(), tok.g, pos.g, s.B, s.T, s.C);
        EXPECT_TRUE(same_bits(dwpe.gpu.get(), g1)) << "dwpe differs between two identical runs, " << where;
    }
}

// ---------------------------------------------------------------- layernorm
struct LnShape {
    size_t N;
    int C;
};

TEST_P(CudaOps, LayerNormForward_N37_C71_and_N19_C768) {
    for (LnShape s : {LnShape{37, 71}, LnShape{19, 768}}) {
        Twin x(gpu(), ref(), s.N * s.C), w(gpu(), ref(), s.C), b(gpu(), ref(), s.C), out(gpu(), ref(), s.N * s.C),
            mean(gpu(), ref(), s.N), rstd(gpu(), ref(), s.N);
        auto xv = randn(x.gpu.n(), 1);
        for (auto& v : xv) v = v * 2 + 0.5;  // non-zero mean, non-unit variance
        x.set(xv);
        w.set(randn(s.C, 2));
        b.set(randn(s.C, 3));
        out.poison();
        mean.poison();
        rstd.poison();
        gpu().layernorm_forward(out.g(), mean.g(), rstd.g(), x.g(), w.g(), b.g(), s.N, s.C);
        ref().layernorm_forward(out.r(), mean.r(), rstd.r(), x.r(), w.r(), b.r(), s.N, s.C);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out C=" << s.C;
        EXPECT_TRUE(near_rel(mean.gpu.get(), mean.ref.get(), op_tol(dt()))) << "mean C=" << s.C;
        EXPECT_TRUE(near_rel(rstd.gpu.get(), rstd.ref.get(), op_tol(dt()))) << "rstd C=" << s.C;
    }
}

// The fused residual + LayerNorm: the residual sum and the LayerNorm of it against the reference, and the same
// bits as the two unfused launchers (so recomputation, which re-runs LayerNorm alone on the kept sum, agrees).
TEST_P(CudaOps, ResidualLayerNormForwardEqualsTheTwoOps_N37_C71_and_N19_C768) {
    for (LnShape s : {LnShape{37, 71}, LnShape{19, 768}}) {
        const size_t n = s.N * s.C;
        Twin a(gpu(), ref(), n), b(gpu(), ref(), n), w(gpu(), ref(), s.C), bias(gpu(), ref(), s.C),
            res(gpu(), ref(), n), out(gpu(), ref(), n), mean(gpu(), ref(), s.N), rstd(gpu(), ref(), s.N);
        auto av = randn(n, 11);
        for (auto& v : av) v = v * 2 + 0.5;
        a.set(av);
        b.set(randn(n, 12));
        w.set(randn(s.C, 13));
        bias.set(randn(s.C, 14));
        for (Twin* t : {&res, &out, &mean, &rstd}) t->poison();
        gpu().residual_layernorm_forward(res.g(), out.g(), mean.g(), rstd.g(), a.g(), b.g(), w.g(), bias.g(), s.N, s.C);
        ref().residual_layernorm_forward(res.r(), out.r(), mean.r(), rstd.r(), a.r(), b.r(), w.r(), bias.r(), s.N, s.C);
        const std::string where = "C=" + std::to_string(s.C);
        EXPECT_TRUE(near_rel(res.gpu.get(), res.ref.get(), op_tol(dt()))) << "res " << where;
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out " << where;
        EXPECT_TRUE(near_rel(mean.gpu.get(), mean.ref.get(), op_tol(dt()))) << "mean " << where;
        EXPECT_TRUE(near_rel(rstd.gpu.get(), rstd.ref.get(), op_tol(dt()))) << "rstd " << where;
        Buffer res2(gpu(), dt(), n), out2(gpu(), dt(), n), mean2(gpu(), dt(), s.N), rstd2(gpu(), dt(), s.N);
        gpu().residual_forward(res2.p(), a.g(), b.g(), n);
        gpu().layernorm_forward(out2.p(), mean2.p(), rstd2.p(), res2.p(), w.g(), bias.g(), s.N, s.C);
        EXPECT_TRUE(same_bits(res.gpu.get(), res2.get())) << "res " << where;
        EXPECT_TRUE(same_bits(out.gpu.get(), out2.get())) << "out " << where;
        EXPECT_TRUE(same_bits(mean.gpu.get(), mean2.get())) << "mean " << where;
        EXPECT_TRUE(same_bits(rstd.gpu.get(), rstd2.get())) << "rstd " << where;
    }
}

// dinp accumulates; dweight/dbias accumulate over N = 700 rows (88 blocks of 8 rows, the last one short) or stay
// untouched when null. C = 71: one element at a time; 768: 16-byte packs, 4 warps a block; 1600 (gpt2-xl): 3
// warps' accumulators fit; 6144: 1 warp's, exactly the 48 KB; 6151: none, so the column sums read the rows a
// second time.
TEST_P(CudaOps, LayerNormBackwardAccumulates_N700_C71_N37_C768_N40_C1600_N33_C6144_N45_C6151) {
    for (LnShape s : {LnShape{700, 71}, LnShape{37, 768}, LnShape{40, 1600}, LnShape{33, 6144}, LnShape{45, 6151}}) {
        for (int frozen = 0; frozen < 3; frozen++) {  // 0: both train; 1: dweight null; 2: both null
            Twin x(gpu(), ref(), s.N * s.C), w(gpu(), ref(), s.C), b(gpu(), ref(), s.C), out(gpu(), ref(), s.N * s.C),
                mean(gpu(), ref(), s.N), rstd(gpu(), ref(), s.N), dout(gpu(), ref(), s.N * s.C),
                dinp(gpu(), ref(), s.N * s.C), dw(gpu(), ref(), s.C), db(gpu(), ref(), s.C);
            auto xv = randn(x.gpu.n(), 1);
            for (auto& v : xv) v = v * 3 - 1;
            x.set(xv);
            w.set(randn(s.C, 2));
            b.set(randn(s.C, 3));
            gpu().layernorm_forward(out.g(), mean.g(), rstd.g(), x.g(), w.g(), b.g(), s.N, s.C);
            // Both backends differentiate at the statistics the GPU saved.
            mean.ref.set(mean.gpu.get());
            rstd.ref.set(rstd.gpu.get());
            dout.set(randn(dout.gpu.n(), 4));
            dinp.set(randn(dinp.gpu.n(), 5));
            const auto dw0 = dw.set(randn(s.C, 6)), db0 = db.set(randn(s.C, 7));
            void* gdw = frozen >= 1 ? nullptr : dw.g();
            void* rdw = frozen >= 1 ? nullptr : dw.r();
            void* gdb = frozen >= 2 ? nullptr : db.g();
            void* rdb = frozen >= 2 ? nullptr : db.r();
            gpu().layernorm_backward(dinp.g(), gdw, gdb, dout.g(), x.g(), w.g(), mean.g(), rstd.g(), s.N, s.C);
            ref().layernorm_backward(dinp.r(), rdw, rdb, dout.r(), x.r(), w.r(), mean.r(), rstd.r(), s.N, s.C);
            EXPECT_TRUE(near_rel(dinp.gpu.get(), dinp.ref.get(), op_tol(dt()))) << "dinp C=" << s.C;
            if (gdw) {
                EXPECT_TRUE(near_rel(dw.gpu.get(), dw.ref.get(), op_tol(dt()))) << "dweight C=" << s.C;
            } else {
                EXPECT_TRUE(same_bits(dw.gpu.get(), dw0)) << "null dweight touched";
            }
            if (gdb) {
                EXPECT_TRUE(near_rel(db.gpu.get(), db.ref.get(), op_tol(dt()))) << "dbias C=" << s.C;
            } else {
                EXPECT_TRUE(same_bits(db.gpu.get(), db0)) << "null dbias touched";
            }
        }
    }
}

TEST_P(CudaOps, LayerNormBackwardIsDeterministic_N1000_C768) {
    const size_t N = 1000;
    const int C = 768;
    Twin x(gpu(), ref(), N * C), w(gpu(), ref(), C), b(gpu(), ref(), C), out(gpu(), ref(), N * C),
        mean(gpu(), ref(), N), rstd(gpu(), ref(), N), dout(gpu(), ref(), N * C), dinp(gpu(), ref(), N * C),
        dw(gpu(), ref(), C), db(gpu(), ref(), C);
    x.set(randn(N * C, 1));
    w.set(randn(C, 2));
    b.set(randn(C, 3));
    dout.set(randn(N * C, 4));
    gpu().layernorm_forward(out.g(), mean.g(), rstd.g(), x.g(), w.g(), b.g(), N, C);
    std::vector<double> first[3];
    for (int run = 0; run < 2; run++) {
        dinp.gpu.set(std::vector<double>(N * C, 0.0));
        dw.gpu.set(std::vector<double>(C, 0.0));
        db.gpu.set(std::vector<double>(C, 0.0));
        gpu().layernorm_backward(dinp.g(), dw.g(), db.g(), dout.g(), x.g(), w.g(), mean.g(), rstd.g(), N, C);
        std::vector<double> now[3] = {dinp.gpu.get(), dw.gpu.get(), db.gpu.get()};
        for (int k = 0; k < 3; k++) {
            if (run == 0) {
                first[k] = now[k];
            } else {
                EXPECT_TRUE(same_bits(first[k], now[k])) << "output " << k;
            }
        }
    }
}

// Aligned rows take 16-byte accesses, misaligned ones (every buffer one element off) element by element: the same
// elements added in the same order, so the same bits, forward (fused with the residual add too) and backward.
TEST_P(CudaOps, LayerNormSameBitsAlignedAndMisaligned_N37_C768) {
    const size_t N = 37;
    const int C = 768;
    const auto xv = randn(N * C, 21), bv = randn(N * C, 22), wv = randn(C, 23), biasv = randn(C, 24),
               doutv = randn(N * C, 25), dinpv = randn(N * C, 26);
    std::vector<double> bits[2][8];
    for (size_t off : {size_t(0), size_t(1)}) {
        Buffer a(gpu(), dt(), N * C, off), b(gpu(), dt(), N * C, off), w(gpu(), dt(), C, off),
            bias(gpu(), dt(), C, off), res(gpu(), dt(), N * C, off), out(gpu(), dt(), N * C, off),
            mean(gpu(), dt(), N, off), rstd(gpu(), dt(), N, off), dout(gpu(), dt(), N * C, off),
            dinp(gpu(), dt(), N * C, off), dw(gpu(), dt(), C, off), db(gpu(), dt(), C, off);
        a.set(xv);
        b.set(bv);
        w.set(wv);
        bias.set(biasv);
        dout.set(doutv);
        dinp.set(dinpv);
        dw.set(std::vector<double>(C, 0.0));
        db.set(std::vector<double>(C, 0.0));
        gpu().layernorm_forward(out.p(), mean.p(), rstd.p(), a.p(), w.p(), bias.p(), N, C);
        bits[off][0] = out.get();
        bits[off][1] = rstd.get();
        gpu().residual_layernorm_forward(res.p(), out.p(), mean.p(), rstd.p(), a.p(), b.p(), w.p(), bias.p(), N, C);
        bits[off][2] = out.get();
        bits[off][3] = mean.get();
        bits[off][4] = rstd.get();
        gpu().layernorm_backward(dinp.p(), dw.p(), db.p(), dout.p(), res.p(), w.p(), mean.p(), rstd.p(), N, C);
        bits[off][5] = dinp.get();
        bits[off][6] = dw.get();
        bits[off][7] = db.get();
    }
    const char* what[8] = {"out", "rstd", "fused out", "fused mean", "fused rstd", "dinp", "dweight", "dbias"};
    for (int k = 0; k < 8; k++) EXPECT_TRUE(same_bits(bits[0][k], bits[1][k])) << what[k];
}

// ---------------------------------------------------------------- matmul
struct MmShape {
    size_t N;
    int IC, OC;
};

TEST_P(CudaOps, MatmulForwardWithAndWithoutBias_Awkward_and_Aligned) {
    for (MmShape s : {MmShape{37, 45, 29}, MmShape{19, 128, 384}, MmShape{67, 768, 200}}) {
        for (bool with_bias : {true, false}) {
            Twin x(gpu(), ref(), s.N * s.IC), w(gpu(), ref(), (size_t)s.OC * s.IC), b(gpu(), ref(), s.OC),
                out(gpu(), ref(), s.N * s.OC);
            x.set(randn(x.gpu.n(), 1));
            w.set(randn(w.gpu.n(), 2, 0.1));
            b.set(randn(s.OC, 3));
            out.poison();
            gpu().matmul_forward(out.g(), x.g(), w.g(), with_bias ? b.g() : nullptr, s.N, s.IC, s.OC);
            ref().matmul_forward(out.r(), x.r(), w.r(), with_bias ? b.r() : nullptr, s.N, s.IC, s.OC);
            EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt())))
                << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC << " bias=" << with_bias;
        }
    }
}

TEST_P(CudaOps, MatmulBackwardWritesDinpAccumulatesDweightDbias_N700_IC45_OC29_and_N37_IC128_OC384) {
    for (MmShape s : {MmShape{700, 45, 29}, MmShape{37, 128, 384}}) {
        for (int variant = 0; variant < 3; variant++) {  // 0: all; 1: dinp null; 2: dweight and dbias null
            Twin x(gpu(), ref(), s.N * s.IC), w(gpu(), ref(), (size_t)s.OC * s.IC), dout(gpu(), ref(), s.N * s.OC),
                dinp(gpu(), ref(), s.N * s.IC), dw(gpu(), ref(), (size_t)s.OC * s.IC), db(gpu(), ref(), s.OC);
            x.set(randn(x.gpu.n(), 1));
            w.set(randn(w.gpu.n(), 2, 0.1));
            dout.set(randn(dout.gpu.n(), 3));
            dinp.poison();
            const auto dw0 = dw.set(randn(dw.gpu.n(), 4)), db0 = db.set(randn(s.OC, 5));
            const bool with_dinp = variant != 1, with_params = variant != 2;
            gpu().matmul_backward(with_dinp ? dinp.g() : nullptr, with_params ? dw.g() : nullptr,
                                  with_params ? db.g() : nullptr, dout.g(), x.g(), w.g(), s.N, s.IC, s.OC);
            ref().matmul_backward(with_dinp ? dinp.r() : nullptr, with_params ? dw.r() : nullptr,
                                  with_params ? db.r() : nullptr, dout.r(), x.r(), w.r(), s.N, s.IC, s.OC);
            const std::string where = "N=" + std::to_string(s.N) + " IC=" + std::to_string(s.IC) +
                                      " OC=" + std::to_string(s.OC) + " variant " + std::to_string(variant);
            if (with_dinp) {
                EXPECT_TRUE(near_rel(dinp.gpu.get(), dinp.ref.get(), op_tol(dt()))) << "dinp " << where;
            } else {
                for (double v : dinp.gpu.get()) ASSERT_TRUE(std::isnan(v)) << "null dinp written " << where;
            }
            if (with_params) {
                EXPECT_TRUE(near_rel(dw.gpu.get(), dw.ref.get(), op_tol(dt()))) << "dweight " << where;
                EXPECT_TRUE(near_rel(db.gpu.get(), db.ref.get(), op_tol(dt()))) << "dbias " << where;
            } else {
                EXPECT_TRUE(same_bits(dw.gpu.get(), dw0)) << "null dweight touched " << where;
                EXPECT_TRUE(same_bits(db.gpu.get(), db0)) << "null dbias touched " << where;
            }
        }
    }
}

// The MLP's down-projection backward with the GELU's backward applied to dinp (cuBLASLt's DGELU epilogue in
// bf16 and fp16 where IC is a multiple of 8, else the two unfused ops): against the reference's matmul_backward followed
// by gelu_backward. pre spans the GELU's curved part (|x| up to ~3).
TEST_P(CudaOps, MatmulBackwardGeluMatchesMatmulThenGeluBackward_N37_IC128_OC96_and_N19_IC44_OC24) {
    for (MmShape s : {MmShape{37, 128, 96}, MmShape{19, 44, 24}}) {
        Twin pre(gpu(), ref(), s.N * s.IC), x(gpu(), ref(), s.N * s.IC), w(gpu(), ref(), (size_t)s.OC * s.IC),
            dout(gpu(), ref(), s.N * s.OC), dinp(gpu(), ref(), s.N * s.IC), dw(gpu(), ref(), (size_t)s.OC * s.IC),
            db(gpu(), ref(), s.OC);
        pre.set(randn(pre.gpu.n(), 11, 1.5));
        gpu().gelu_forward(x.g(), pre.g(), s.N * s.IC);
        ref().gelu_forward(x.r(), pre.r(), s.N * s.IC);
        w.set(randn(w.gpu.n(), 12, 0.1));
        dout.set(randn(dout.gpu.n(), 13));
        dinp.poison();
        dw.set(randn(dw.gpu.n(), 14));
        db.set(randn(s.OC, 15));
        gpu().matmul_backward_gelu(dinp.g(), dw.g(), db.g(), dout.g(), x.g(), w.g(), pre.g(), s.N, s.IC, s.OC);
        ref().matmul_backward(dinp.r(), dw.r(), db.r(), dout.r(), x.r(), w.r(), s.N, s.IC, s.OC);
        ref().gelu_backward(dinp.r(), dinp.r(), pre.r(), s.N * s.IC);
        const std::string where = "N=" + std::to_string(s.N) + " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC);
        EXPECT_TRUE(near_rel(dinp.gpu.get(), dinp.ref.get(), op_tol(dt()))) << "dinp " << where;
        EXPECT_TRUE(near_rel(dw.gpu.get(), dw.ref.get(), op_tol(dt()))) << "dweight " << where;
        EXPECT_TRUE(near_rel(db.gpu.get(), db.ref.get(), op_tol(dt()))) << "dbias " << where;
    }
}

// ---------------------------------------------------------------- attention
struct AttShape {
    int B, T, C, NH;
};

TEST_P(CudaOps, AttentionForwardAndBackward_HS12_T13_and_HS64_T67_and_T1) {
    for (AttShape s : {AttShape{2, 13, 36, 3}, AttShape{2, 67, 128, 2}, AttShape{3, 1, 8, 2}}) {
        const size_t n_qkv = (size_t)s.B * s.T * 3 * s.C, n_out = (size_t)s.B * s.T * s.C;
        Twin qkv(gpu(), ref(), n_qkv), out(gpu(), ref(), n_out), dout(gpu(), ref(), n_out), dqkv(gpu(), ref(), n_qkv);
        Buffer saved_g(gpu(), gpu().act_dtype(), gpu().attention_saved_elems(s.B, s.T, s.C, s.NH));
        Buffer saved_r(ref(), DType::f64, ref().attention_saved_elems(s.B, s.T, s.C, s.NH));
        qkv.set(randn(n_qkv, 1, 1.5));  // scores of a few units: a softmax far from uniform
        out.poison();
        saved_g.poison();
        gpu().attention_forward(out.g(), saved_g.p(), qkv.g(), nullptr, s.B, s.T, s.C, s.NH);
        ref().attention_forward(out.r(), saved_r.p(), qkv.r(), nullptr, s.B, s.T, s.C, s.NH);
        const std::string where = "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) +
                                  " C=" + std::to_string(s.C) + " NH=" + std::to_string(s.NH);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out " << where;
        dout.set(randn(n_out, 2));
        dqkv.poison();
        gpu().attention_backward(dqkv.g(), dout.g(), qkv.g(), out.g(), saved_g.p(), nullptr, s.B, s.T, s.C, s.NH);
        ref().attention_backward(dqkv.r(), dout.r(), qkv.r(), out.r(), saved_r.p(), nullptr, s.B, s.T, s.C, s.NH);
        EXPECT_TRUE(near_rel(dqkv.gpu.get(), dqkv.ref.get(), op_tol(dt()))) << "dqkv " << where;
    }
}

// Document-masked attention (`--windows isolated`) on the matmul path, which every dtype takes for it, without
// and with a prefix of virtual tokens that every document sees.
TEST_P(CudaOps, AttentionDocumentMaskMatchesReference_HS12_T13_and_HS64_T67_Prefix0and4) {
    CudaOptions o;
    o.attention = AttentionImpl::matmul;
    auto mm = make_cuda_backend(dt(), o);
    for (AttShape s : {AttShape{2, 13, 36, 3}, AttShape{3, 67, 128, 2}})
        for (int prefix : {0, 4}) {
            const size_t n_qkv = (size_t)s.B * s.T * 3 * s.C, n_out = (size_t)s.B * s.T * s.C;
            Twin qkv(*mm, ref(), n_qkv), out(*mm, ref(), n_out), dout(*mm, ref(), n_out), dqkv(*mm, ref(), n_qkv);
            Buffer saved_g(*mm, dt(), mm->attention_saved_elems(s.B, s.T, s.C, s.NH));
            Buffer saved_r(ref(), DType::f64, ref().attention_saved_elems(s.B, s.T, s.C, s.NH));
            I32Twin pos(*mm, ref(), random_doc_positions(s.B, s.T, s.T / 3, 17));
            const DocMask mg(pos.g, prefix), mr(pos.r, prefix);
            qkv.set(randn(n_qkv, 18, 1.5));
            out.poison();
            saved_g.poison();
            mm->attention_forward(out.g(), saved_g.p(), qkv.g(), mg, s.B, s.T, s.C, s.NH);
            ref().attention_forward(out.r(), saved_r.p(), qkv.r(), mr, s.B, s.T, s.C, s.NH);
            const std::string where =
                "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " prefix=" + std::to_string(prefix);
            EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out " << where;
            EXPECT_TRUE(near_rel(saved_g.get(), saved_r.get(), op_tol(dt()))) << "probabilities " << where;
            dout.set(randn(n_out, 19));
            dqkv.poison();
            mm->attention_backward(dqkv.g(), dout.g(), qkv.g(), out.g(), saved_g.p(), mg, s.B, s.T, s.C, s.NH);
            ref().attention_backward(dqkv.r(), dout.r(), qkv.r(), out.r(), saved_r.p(), mr, s.B, s.T, s.C, s.NH);
            EXPECT_TRUE(near_rel(dqkv.gpu.get(), dqkv.ref.get(), op_tol(dt()))) << "dqkv " << where;
        }
}

TEST_P(CudaOps, AttentionIsCausal_FutureTokensDoNotChangeThePast_T9) {
    const int B = 1, T = 9, C = 8, NH = 2;
    Buffer qkv(gpu(), dt(), (size_t)B * T * 3 * C), out(gpu(), dt(), (size_t)B * T * C),
        saved(gpu(), dt(), gpu().attention_saved_elems(B, T, C, NH));
    auto v = randn(qkv.n(), 3);
    qkv.set(v);
    out.poison();
    gpu().attention_forward(out.p(), saved.p(), qkv.p(), nullptr, B, T, C, NH);
    const auto out1 = out.get();
    for (int c = 0; c < 3 * C; c++) v[(size_t)(T - 1) * 3 * C + c] += 10.0;
    qkv.set(v);
    out.poison();
    gpu().attention_forward(out.p(), saved.p(), qkv.p(), nullptr, B, T, C, NH);
    const auto out2 = out.get();
    for (size_t i = 0; i < (size_t)(T - 1) * C; i++) {
        ASSERT_FALSE(std::isnan(out1[i])) << "position " << i / C << " not written";
        EXPECT_EQ(out1[i], out2[i]) << "position " << i / C;
    }
    bool last_changed = false;  // the changed position itself sees its own new value
    for (size_t i = (size_t)(T - 1) * C; i < (size_t)T * C; i++) last_changed = last_changed || out1[i] != out2[i];
    EXPECT_TRUE(last_changed);
}

// Prefill of 5 positions then decode steps of 1 and a chunk of 3, B=2, HS=12 and HS=64: the cache holds exactly
// the keys and values written so far, and each output matches the reference's.
TEST_P(CudaOps, AttentionForwardCachedPrefillThenDecode_B2_maxT11) {
    for (AttShape s : {AttShape{2, 0, 36, 3}, AttShape{2, 0, 128, 2}}) {
        const int maxT = 11;
        const size_t cache = (size_t)s.B * maxT * s.C;
        Twin kc(gpu(), ref(), cache), vc(gpu(), ref(), cache);
        kc.set(std::vector<double>(cache, 0.0));
        vc.set(std::vector<double>(cache, 0.0));
        int pos0 = 0;
        for (int n : {5, 1, 3, 1}) {
            const size_t n_qkv = (size_t)s.B * n * 3 * s.C, n_out = (size_t)s.B * n * s.C;
            Twin qkv(gpu(), ref(), n_qkv), out(gpu(), ref(), n_out);
            qkv.set(randn(n_qkv, 10 + pos0, 1.5));
            out.poison();
            gpu().attention_forward_cached(out.g(), kc.g(), vc.g(), qkv.g(), s.B, n, pos0, maxT, s.C, s.NH);
            ref().attention_forward_cached(out.r(), kc.r(), vc.r(), qkv.r(), s.B, n, pos0, maxT, s.C, s.NH);
            const std::string where = "C=" + std::to_string(s.C) + " pos0=" + std::to_string(pos0) +
                                      " n=" + std::to_string(n);
            EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "out " << where;
            EXPECT_TRUE(same_bits(kc.gpu.get(), kc.ref.get())) << "k cache " << where;  // copies, exact
            EXPECT_TRUE(same_bits(vc.gpu.get(), vc.ref.get())) << "v cache " << where;
            pos0 += n;
        }
    }
}

// With pos0 = 0 and n = T, cached attention is ordinary causal attention.
TEST_P(CudaOps, AttentionForwardCachedEqualsFullForward_B2_T13_C36) {
    const int B = 2, T = 13, C = 36, NH = 3;
    Buffer qkv(gpu(), dt(), (size_t)B * T * 3 * C), full(gpu(), dt(), (size_t)B * T * C),
        cached(gpu(), dt(), (size_t)B * T * C), kc(gpu(), dt(), (size_t)B * T * C), vc(gpu(), dt(), (size_t)B * T * C),
        saved(gpu(), dt(), gpu().attention_saved_elems(B, T, C, NH));
    qkv.set(randn(qkv.n(), 5, 1.5));
    full.poison();
    cached.poison();
    gpu().attention_forward(full.p(), saved.p(), qkv.p(), nullptr, B, T, C, NH);
    gpu().attention_forward_cached(cached.p(), kc.p(), vc.p(), qkv.p(), B, T, 0, T, C, NH);
    EXPECT_TRUE(near_rel(cached.get(), full.get(), op_tol(dt())));
}

// ---------------------------------------------------------------- gather, scatter
TEST_P(CudaOps, GatherAndScatterRows_N23_n9_C37) {
    const size_t N = 23, n = 9;
    const int C = 37;
    const std::vector<int32_t> rows = {22, 0, 5, 6, 13, 1, 19, 7, 11};  // distinct, unordered
    I32Twin r(gpu(), ref(), rows);
    Twin x(gpu(), ref(), N * C), g(gpu(), ref(), n * C), s(gpu(), ref(), N * C);
    x.set(randn(N * C, 1));
    g.poison();
    s.poison();  // scatter must write every element: the rows not listed become zero
    gpu().gather_rows(g.g(), x.g(), r.g, n, C);
    ref().gather_rows(g.r(), x.r(), r.r, n, C);
    EXPECT_TRUE(same_bits(g.gpu.get(), g.ref.get())) << "gather copies exactly";
    gpu().scatter_rows(s.g(), g.g(), r.g, n, N, C);
    ref().scatter_rows(s.r(), g.r(), r.r, n, N, C);
    EXPECT_TRUE(same_bits(s.gpu.get(), s.ref.get())) << "scatter copies exactly and zeroes the rest";
}

// ---------------------------------------------------------------- gelu, residual
// n = 1001: packs plus a scalar tail; n = 4096: packs only; offset 1: misaligned, scalar only.
struct EwShape {
    size_t n, offset;
};

TEST_P(CudaOps, GeluForwardBackward_n1001_n4096_Misaligned) {
    for (EwShape s : {EwShape{1001, 0}, EwShape{4096, 0}, EwShape{4096, 1}}) {
        Twin x(gpu(), ref(), s.n, s.offset), y(gpu(), ref(), s.n, s.offset), dy(gpu(), ref(), s.n, s.offset),
            dx(gpu(), ref(), s.n, s.offset);
        x.set(randn(s.n, 1, 2.0));
        dy.set(randn(s.n, 2));
        y.poison();
        dx.poison();
        gpu().gelu_forward(y.g(), x.g(), s.n);
        ref().gelu_forward(y.r(), x.r(), s.n);
        gpu().gelu_backward(dx.g(), dy.g(), x.g(), s.n);
        ref().gelu_backward(dx.r(), dy.r(), x.r(), s.n);
        EXPECT_TRUE(near_rel(y.gpu.get(), y.ref.get(), op_tol(dt()))) << "n=" << s.n << " offset " << s.offset;
        EXPECT_TRUE(near_rel(dx.gpu.get(), dx.ref.get(), op_tol(dt()))) << "n=" << s.n << " offset " << s.offset;
    }
}

TEST_P(CudaOps, ResidualForward_n1001_n4096_Misaligned) {
    for (EwShape s : {EwShape{1001, 0}, EwShape{4096, 0}, EwShape{4096, 1}}) {
        Twin a(gpu(), ref(), s.n, s.offset), b(gpu(), ref(), s.n, s.offset), out(gpu(), ref(), s.n, s.offset);
        a.set(randn(s.n, 1));
        b.set(randn(s.n, 2));
        out.poison();
        gpu().residual_forward(out.g(), a.g(), b.g(), s.n);
        ref().residual_forward(out.r(), a.r(), b.r(), s.n);
        EXPECT_TRUE(near_rel(out.gpu.get(), out.ref.get(), op_tol(dt()))) << "n=" << s.n << " offset " << s.offset;
    }
}

// ---------------------------------------------------------------- cross-entropy
// Vp = 128 and 50304: 16-byte packs, the last one holding columns < V and padding; Vp = 77 and 50257: rows not
// 16-byte aligned, one column at a time (50257: several groups a thread).
TEST_P(CudaOps, CrossEntropySeparateInPlaceAndEval_V75_Vp128_V50257_Vp50304_V75_Vp77_V50257_Vp50257) {
    for (LogitRows s : {LogitRows{23, 75, 128}, LogitRows{5, 50257, 50304}, LogitRows{7, 75, 77},
                        LogitRows{3, 50257, 50257}}) {
        const float dloss = 1.0f / 17.0f;
        const auto w = row_weights(s.N);
        I32Twin y(gpu(), ref(), random_ints(s.N, s.V, 2));
        F32Twin wt(gpu(), ref(), w);
        auto zv = randn(s.N * s.Vp, 1, 3.0);
        for (size_t i = 0; i < s.N; i++)  // padding logits hold garbage: they must take no part
            for (int v = s.V; v < s.Vp; v++) zv[i * s.Vp + v] = 1e3;
        const std::string where = "N=" + std::to_string(s.N) + " V=" + std::to_string(s.V);
        for (int mode = 0; mode < 3; mode++) {  // 0: separate dlogits; 1: in place; 2: no dlogits
            Twin z(gpu(), ref(), s.N * s.Vp), dz(gpu(), ref(), s.N * s.Vp), loss(gpu(), ref(), s.N);
            z.set(zv);
            dz.poison();
            loss.poison();
            void* gd = mode == 0 ? dz.g() : mode == 1 ? z.g() : nullptr;
            void* rd = mode == 0 ? dz.r() : mode == 1 ? z.r() : nullptr;
            gpu().crossentropy_forward_backward(loss.g(), gd, z.g(), y.g, wt.g, dloss, s.N, s.V, s.Vp);
            ref().crossentropy_forward_backward(loss.r(), rd, z.r(), y.r, wt.r, dloss, s.N, s.V, s.Vp);
            const auto gl = loss.gpu.get();
            EXPECT_TRUE(near_rel(gl, loss.ref.get(), op_tol(dt()))) << "losses " << where << " mode " << mode;
            for (size_t i = 0; i < s.N; i++) {
                if (w[i] == 0.0f) {
                    EXPECT_EQ(gl[i], 0.0) << "a weight-0 row must have loss exactly 0, row " << i;
                }
            }
            if (mode == 2) continue;
            const Buffer& gout = mode == 0 ? dz.gpu : z.gpu;
            const Buffer& rout = mode == 0 ? dz.ref : z.ref;
            const auto gd_v = gout.get();
            EXPECT_TRUE(near_rel(gd_v, rout.get(), op_tol(dt()))) << "dlogits " << where << " mode " << mode;
            for (size_t i = 0; i < s.N; i++)
                for (int v = s.V; v < s.Vp; v++)
                    ASSERT_EQ(gd_v[i * s.Vp + v], 0.0) << "padding column " << v << " row " << i << " " << where;
        }
    }
}

// Logits of -inf (a banned token) add nothing to the softmax, also where they are the first values a thread
// sees and finite ones come in its later groups (row 1: the first 9000 of 10000 columns; a thread's groups are
// 1024 groups apart); a counted token whose target is outside [0, V) has loss NaN (its step is then skipped), a
// masked one 0, and neither touches memory outside the row.
TEST_P(CudaOps, CrossEntropyNegInfLogitsAndInvalidTargets_N6_V10000_Vp10048) {
    const size_t N = 6;
    const int V = 10000, Vp = 10048;
    const std::vector<int32_t> targets = {3, 9900, 5, -1, V, -1};
    const std::vector<float> w = {1, 1, 0.5f, 1, 1, 0};
    I32Twin y(gpu(), ref(), targets);
    F32Twin wt(gpu(), ref(), w);
    auto zv = randn(N * Vp, 4, 2.0);
    for (int v = 0; v < 9000; v++) zv[1 * Vp + v] = -INFINITY;
    for (int v = 0; v < V; v += 2) zv[2 * Vp + v] = -INFINITY;
    Twin z(gpu(), ref(), N * Vp), dz(gpu(), ref(), N * Vp), loss(gpu(), ref(), N);
    z.set(zv);
    dz.poison();
    loss.poison();
    gpu().crossentropy_forward_backward(loss.g(), dz.g(), z.g(), y.g, wt.g, 0.5f, N, V, Vp);
    ref().crossentropy_forward_backward(loss.r(), dz.r(), z.r(), y.r, wt.r, 0.5f, N, V, Vp);
    const auto gl = loss.gpu.get(), rl = loss.ref.get(), gd = dz.gpu.get(), rd = dz.ref.get();
    for (size_t i = 0; i < N; i++) {
        const bool invalid = (targets[i] < 0 || targets[i] >= V) && w[i] != 0.0f;
        EXPECT_EQ(std::isnan(rl[i]), invalid) << "reference loss of row " << i << ": " << rl[i];
        EXPECT_EQ(std::isnan(gl[i]), invalid) << "loss of row " << i << ": " << gl[i];
        if (!invalid) {
            EXPECT_NEAR(gl[i], rl[i], op_tol(dt()) * std::fabs(rl[i])) << "loss of row " << i;
        }
        const std::vector<double> g(gd.begin() + i * Vp, gd.begin() + (i + 1) * Vp),
            r(rd.begin() + i * Vp, rd.begin() + (i + 1) * Vp);
        EXPECT_TRUE(near_rel(g, r, op_tol(dt()))) << "dlogits of row " << i;
    }
    for (int v = 0; v < 9000; v++) ASSERT_EQ(gd[1 * Vp + v], 0.0) << "a -inf logit got a gradient, column " << v;
}

// One NaN logit makes a counted row's loss NaN (so the trainer skips the step), wherever it falls: the only
// column of a thread (row 0: V = 73, the NaN in column 72, alone in the last group, which one thread takes), or
// among finite values (row 1). A masked row (row 2) stays exactly 0. Vp = 80: 16-byte accesses; Vp = 73: column
// by column.
TEST_P(CudaOps, CrossEntropyNanLogitMakesTheLossNan_V73_Vp80_and_Vp73) {
    const size_t N = 3;
    const int V = 73;
    for (int Vp : {80, 73}) {
        I32Twin y(gpu(), ref(), {3, 3, 3});
        F32Twin wt(gpu(), ref(), {1.0f, 1.0f, 0.0f});
        auto zv = randn(N * Vp, 5, 2.0);
        zv[0 * Vp + 72] = NAN;
        zv[1 * Vp + 40] = NAN;
        zv[2 * Vp + 40] = NAN;
        Twin z(gpu(), ref(), N * Vp), loss(gpu(), ref(), N);
        z.set(zv);
        loss.poison();
        gpu().crossentropy_forward_backward(loss.g(), nullptr, z.g(), y.g, wt.g, 1.0f, N, V, Vp);
        ref().crossentropy_forward_backward(loss.r(), nullptr, z.r(), y.r, wt.r, 1.0f, N, V, Vp);
        const auto gl = loss.gpu.get(), rl = loss.ref.get();
        for (size_t i = 0; i < 2; i++) {
            EXPECT_TRUE(std::isnan(rl[i])) << "reference, row " << i << ", Vp " << Vp;
            EXPECT_TRUE(std::isnan(gl[i])) << "row " << i << ", Vp " << Vp << ": loss " << gl[i];
        }
        EXPECT_EQ(gl[2], 0.0) << "masked row, Vp " << Vp;
    }
}

// ---------------------------------------------------------------- sum of squares
TEST_P(CudaOps, SumSquaresMatchesDoubleAndIsDeterministic_n100003_n5M_Misaligned) {
    for (EwShape s : {EwShape{100003, 0}, EwShape{5000000, 0}, EwShape{100003, 3}}) {
        Twin x(gpu(), ref(), s.n, s.offset);
        x.set(randn(s.n, 9));
        const double g1 = gpu().sum_squares(x.g(), s.n), g2 = gpu().sum_squares(x.g(), s.n);
        const double want = ref().sum_squares(x.r(), s.n);
        // The inputs are exactly representable and both sums run in double: only summation order differs.
        EXPECT_NEAR(g1, want, 1e-9 * want) << "n=" << s.n;
        EXPECT_EQ(g1, g2) << "sum_squares is not deterministic";
    }
    EXPECT_EQ(gpu().sum_squares(nullptr, 0), 0.0);
}

// ---------------------------------------------------------------- AdamW
// Three segments with gaps between them in both arenas, different lr scales and weight decays, three steps.
TEST_P(CudaOps, AdamWOverSegmentsMatchesReferenceAndLeavesGapsAlone) {
    const size_t P = 300, G = 250;
    const std::vector<OptSegment> segs = {{0, 0, 100, 1.0f, 0.1f}, {130, 120, 77, 0.5f, 0.0f}, {220, 210, 33, 2.0f, 0.05f}};
    Buffer params(gpu(), dt(), P), grads(gpu(), dt(), G), m(gpu(), DType::f32, G), v(gpu(), DType::f32, G),
        master(gpu(), DType::f32, G);
    Buffer rparams(ref(), DType::f64, P), rgrads(ref(), DType::f64, G), rm(ref(), DType::f64, G),
        rv(ref(), DType::f64, G);
    params.set(randn(P, 1));
    const auto p0 = params.get();
    rparams.set(p0);
    // The master copy starts as the working weights, as AdamW::sync_master_from_params does.
    std::vector<double> master0(G, 0.0);
    for (const auto& s : segs)
        for (size_t i = 0; i < s.n; i++) master0[s.grad_offset + i] = p0[s.param_offset + i];
    master.set(master0);
    m.set(std::vector<double>(G, 0.0));
    v.set(std::vector<double>(G, 0.0));
    rm.set(std::vector<double>(G, 0.0));
    rv.set(std::vector<double>(G, 0.0));
    for (int t = 1; t <= 3; t++) {
        grads.set(randn(G, 10 + t, 0.3));
        rgrads.set(grads.get());
        AdamWStep st;
        st.lr = 1e-2f;
        st.t = t;
        st.grad_scale = 0.7f;
        gpu().adamw_update(params.p(), gpu().has_master() ? master.p() : nullptr, grads.p(), m.p(), v.p(), segs, st);
        ref().adamw_update(rparams.p(), nullptr, rgrads.p(), rm.p(), rv.p(), segs, st);
    }
    const double tol = 1e-5;  // master, moments and the update are fp32 whatever the activation type
    EXPECT_TRUE(near_rel(m.get(), rm.get(), tol));
    EXPECT_TRUE(near_rel(v.get(), rv.get(), tol));
    const auto gp = params.get(), rp = rparams.get();
    if (gpu().has_master()) {
        const auto gm = master.get();
        std::vector<double> want_master(G, 0.0), got_master(G, 0.0);
        for (const auto& s : segs)
            for (size_t i = 0; i < s.n; i++) {
                want_master[s.grad_offset + i] = rp[s.param_offset + i];
                got_master[s.grad_offset + i] = gm[s.grad_offset + i];
            }
        EXPECT_TRUE(near_rel(got_master, want_master, tol));
        // The working copy is the master rounded to nearest.
        Buffer rounded(gpu(), dt(), G);
        rounded.set(gm);
        const auto r = rounded.get();
        for (const auto& s : segs)
            for (size_t i = 0; i < s.n; i++)
                ASSERT_EQ(gp[s.param_offset + i], r[s.grad_offset + i]) << "param " << s.param_offset + i;
    } else {
        EXPECT_TRUE(near_rel(gp, rp, tol));
    }
    // Parameters outside every segment are untouched.
    std::vector<bool> in_seg(P, false);
    for (const auto& s : segs)
        for (size_t i = 0; i < s.n; i++) in_seg[s.param_offset + i] = true;
    for (size_t i = 0; i < P; i++)
        if (!in_seg[i]) {
            ASSERT_EQ(gp[i], p0[i]) << "gap element " << i << " changed";
        }
}

// bf16 only: stochastic rounding picks one of the two bf16 neighbours of the master value, reproducibly.
TEST_P(CudaOps, AdamWStochasticRoundingIsBoundedAndReproducible) {
    if (dt() != DType::bf16) {
        GTEST_SKIP() << "stochastic rounding applies to bf16 working weights only";
    }
    const size_t n = 4096;
    const std::vector<OptSegment> segs = {{0, 0, n, 1.0f, 0.0f}};
    std::vector<double> results[2];
    for (int run = 0; run < 2; run++) {
        CudaOptions opt;
        opt.stochastic_rounding = true;
        opt.seed = 1234;
        auto be = make_cuda_backend(DType::bf16, opt);
        Buffer params(*be, DType::bf16, n), grads(*be, DType::bf16, n), m(*be, DType::f32, n), v(*be, DType::f32, n),
            master(*be, DType::f32, n);
        params.set(randn(n, 1));
        master.set(params.get());
        grads.set(randn(n, 2));
        AdamWStep st;
        st.lr = 1e-3f;
        be->adamw_update(params.p(), master.p(), grads.p(), m.p(), v.p(), segs, st);
        const auto p = params.get(), mm = master.get();
        Buffer nearest(*be, DType::bf16, n);
        nearest.set(mm);
        const auto rn = nearest.get();
        int differs = 0;
        for (size_t i = 0; i < n; i++) {
            const double ulp = std::ldexp(1.0, std::ilogb(mm[i]) - 7);  // bf16 keeps 8 significant bits
            ASSERT_LT(std::fabs(p[i] - mm[i]), ulp) << "element " << i << " is not a neighbour of its master";
            differs += p[i] != rn[i];
        }
        EXPECT_GT(differs, 0) << "stochastic rounding never differed from round-to-nearest";
        results[run] = p;
    }
    EXPECT_TRUE(same_bits(results[0], results[1])) << "same seed, different rounding";
}

// ---------------------------------------------------------------- memory
// Round v to `bits` significant bits, ties to even (std::nearbyint in the default rounding mode): the
// reference for normal numbers in every type's range.
double round_significant(double v, int bits) {
    if (!std::isfinite(v) || v == 0.0) return v;
    int e = 0;
    const double m = std::frexp(v, &e);  // v = m * 2^e, 0.5 <= |m| < 1
    return std::ldexp(std::nearbyint(std::ldexp(m, bits)), e - bits);
}

TEST_P(CudaOps, UploadDownloadRoundToNearestEvenAndZero) {
    // 1 + 2^-8 and 1 + 3*2^-8 are ties between bf16 neighbours (they go to the even one: 1 and 1 + 2^-6);
    // 1 + 2^-11 and 1 + 3*2^-11 likewise for fp16.
    const std::vector<double> x = {1.0,  1.0 + std::ldexp(1, -8), 1.0 + 3 * std::ldexp(1, -8), 1.0 + std::ldexp(1, -11),
                                   1.0 + 3 * std::ldexp(1, -11), -2.5, 0.1, 1e-3, 300.0, 1234.567, INFINITY, -INFINITY};
    const int bits = dt() == DType::f32 ? 24 : dt() == DType::bf16 ? 8 : 11;
    if (dt() == DType::bf16) {
        EXPECT_EQ(round_significant(1.0 + std::ldexp(1, -8), bits), 1.0);
        EXPECT_EQ(round_significant(1.0 + 3 * std::ldexp(1, -8), bits), 1.0 + std::ldexp(1, -6));
    }
    Buffer b(gpu(), dt(), x.size());
    b.set(x);
    const auto got_d = b.get();
    std::vector<float> xf(x.begin(), x.end()), got_f(x.size());
    gpu().upload(b.p(), dt(), xf.data(), xf.size());
    gpu().download(got_f.data(), b.p(), dt(), got_f.size());
    for (size_t i = 0; i < x.size(); i++) {
        EXPECT_EQ(got_d[i], round_significant(x[i], bits)) << "double upload of " << x[i];
        EXPECT_EQ((double)got_f[i], round_significant(x[i], bits)) << "float upload of " << x[i];
    }
    Buffer nan(gpu(), dt(), 1);
    nan.poison();
    EXPECT_TRUE(std::isnan(nan.get()[0]));
    gpu().zero(b.p(), x.size() * dtype_size(dt()));
    for (double v : b.get()) EXPECT_EQ(v, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::f32, DType::bf16, DType::f16), dtype_param_name);

}  // namespace
}  // namespace tune::test
