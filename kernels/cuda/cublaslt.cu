#include "kernels/cuda/cublaslt.h"

#include <algorithm>
#include <string>

#include "kernels/common.h"
#include "kernels/cuda/check.h"

namespace tune::cuda {
namespace {

// Largest power of two (up to 256) dividing the address and every byte offset the algorithm steps by
// (leading dimension, batch stride): what the heuristic may assume about the matrix. Default 256 would let
// it pick kernels that fault on the awkward shapes of the tests.
uint32_t alignment_of(const void* p, int64_t ld, int64_t stride, size_t elem) {
    uint64_t bits = reinterpret_cast<uintptr_t>(p) | (uint64_t)ld * elem | (uint64_t)stride * elem | 256u;
    return (uint32_t)(bits & (~bits + 1));  // lowest set bit
}

size_t elem_size(cudaDataType_t t) {
    switch (t) {
        case CUDA_R_32F:
            return 4;
        case CUDA_R_16BF:
        case CUDA_R_16F:
            return 2;
        default:
            throw Error("cublaslt: unsupported element type " + std::to_string((int)t));
    }
}

// RAII holders so an exception between create and destroy leaks nothing.
struct OpDesc {
    cublasLtMatmulDesc_t d = nullptr;
    ~OpDesc() {
        if (d) cublasLtMatmulDescDestroy(d);
    }
};
struct Layout {
    cublasLtMatrixLayout_t d = nullptr;
    ~Layout() {
        if (d) cublasLtMatrixLayoutDestroy(d);
    }
};
struct Pref {
    cublasLtMatmulPreference_t d = nullptr;
    ~Pref() {
        if (d) cublasLtMatmulPreferenceDestroy(d);
    }
};

void make_layout(Layout& l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride) {
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.d, type, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t count = batch;
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
        CUBLAS_CHECK(
            cublasLtMatrixLayoutSetAttribute(l.d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
}

std::string describe(const GemmArgs& g) {
    return "m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
           " ta=" + std::to_string(g.trans_a) + " tb=" + std::to_string(g.trans_b) + " lda=" + std::to_string(g.lda) +
           " ldb=" + std::to_string(g.ldb) + " ldd=" + std::to_string(g.ldd) + " batch=" + std::to_string(g.batch) +
           (g.batch > 1 ? " strides=" + std::to_string(g.stride_a) + "," + std::to_string(g.stride_b) + "," +
                              std::to_string(g.stride_d)
                        : std::string()) +
           " ab_type=" + std::to_string((int)g.ab_type) + " d_type=" + std::to_string((int)g.d_type) +
           (g.bias ? " +bias" : "") + (g.dgelu ? " +dgelu" : "");
}

}  // namespace

Gemm::Gemm(cudaStream_t stream) : stream_(stream) {
    CUBLAS_CHECK(cublasLtCreate(&handle_));
    CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
}

Gemm::~Gemm() {
    if (classic_) cublasDestroy(classic_);
    if (workspace_) cudaFree(workspace_);
    if (handle_) cublasLtDestroy(handle_);
}

bool Gemm::run_lt(const GemmArgs& g) {
    const size_t ab = elem_size(g.ab_type), de = elem_size(g.d_type);
    const uint32_t align_a = alignment_of(g.A, g.lda, g.stride_a, ab);
    const uint32_t align_b = alignment_of(g.B, g.ldb, g.stride_b, ab);
    const uint32_t align_d = alignment_of(g.D, g.ldd, g.stride_d, de);
    const uint32_t align_bias = g.bias ? alignment_of(g.bias, 0, 0, de) : 0;
    const bool aux = g.dgelu;
    if (aux && (!g.aux || g.batch != 1 || g.ldaux % 8 != 0 || g.ldaux < g.m)) return false;
    const uint32_t align_aux = aux ? alignment_of(g.aux, g.ldaux, 0, de) : 0;
    if (aux && align_aux < 16) return false;  // no preference attribute promises aux's alignment: ask for 16 bytes
    // Nor the bias's: a heuristic's kernel may assume 16 bytes and fault ("misaligned address", sticky for the
    // process). Arena tensors always are; a caller's odd pointer takes the separate bias kernel instead.
    if (g.bias && align_bias < 16) return false;
    const Key key = {g.trans_a,   g.trans_b,      g.m,        g.n,       g.k,      g.lda,     g.stride_a,
                     g.ldb,       g.stride_b,     g.ldd,      g.stride_d, g.ab_type, g.d_type, g.batch,
                     g.beta != 0, g.bias != nullptr, align_a, align_b,    align_d,  align_bias, g.dgelu,
                     align_aux};

    OpDesc op;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op.d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (g.dgelu && g.bias) return false;  // not a combination cuBLASLt has (DGELU_BGRAD writes a bias gradient)
    const cublasLtEpilogue_t epi = g.dgelu ? CUBLASLT_EPILOGUE_DGELU
                                   : g.bias ? CUBLASLT_EPILOGUE_BIAS
                                            : CUBLASLT_EPILOGUE_DEFAULT;
    if (epi != CUBLASLT_EPILOGUE_DEFAULT)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (g.bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias));
    if (aux) {
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof g.aux));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.ldaux, sizeof g.ldaux));
    }
    Layout a, b, d;
    make_layout(a, g.ab_type, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda, g.batch, g.stride_a);
    make_layout(b, g.ab_type, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb, g.batch, g.stride_b);
    make_layout(d, g.d_type, g.m, g.n, g.ldd, g.batch, g.stride_d);

    auto it = cache_.find(key);
    if (it == cache_.end()) {
        Pref pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.d));
        const uint64_t ws = kWorkspaceBytes;
        CUBLAS_CHECK(
            cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                          sizeof align_a));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                          sizeof align_b));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                          sizeof align_d));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                          sizeof align_d));
        cublasLtMatmulHeuristicResult_t result{};
        int found = 0;
        const cublasStatus_t st =
            cublasLtMatmulAlgoGetHeuristic(handle_, op.d, a.d, b.d, d.d, d.d, pref.d, 1, &result, &found);
        // Any failure here (NOT_SUPPORTED, INVALID_VALUE for a type combination, no result) means "no kernel
        // for this problem": the caller may fall back; run() reports the status.
        Entry e;
        e.status = st != CUBLAS_STATUS_SUCCESS ? st : found > 0 ? result.state : CUBLAS_STATUS_NOT_SUPPORTED;
        if (e.status == CUBLAS_STATUS_SUCCESS) {
            e.supported = true;
            e.algo = result.algo;
        }
        it = cache_.emplace(key, e).first;
    }
    last_status_ = it->second.status;
    if (!it->second.supported) return false;
    CUBLAS_CHECK(cublasLtMatmul(handle_, op.d, &g.alpha, g.A, a.d, g.B, b.d, &g.beta, g.D, d.d, g.D, d.d,
                                &it->second.algo, workspace_, kWorkspaceBytes, stream_));
    return true;
}

bool Gemm::run_classic(const GemmArgs& g) {
    constexpr int64_t kIntMax = 2147483647;
    if (g.m > kIntMax || g.n > kIntMax || g.k > kIntMax || g.lda > kIntMax || g.ldb > kIntMax || g.ldd > kIntMax)
        return false;
    if (!classic_) {
        // Kept only once set up: a handle left on the legacy default stream would race with ours.
        cublasHandle_t h = nullptr;
        CUBLAS_CHECK(cublasCreate(&h));
        cublasStatus_t st = cublasSetStream(h, stream_);
        // Default math mode: fp32 products stay fp32 (TF32 would need CUBLAS_TF32_TENSOR_OP_MATH).
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
        if (st != CUBLAS_STATUS_SUCCESS) {
            cublasDestroy(h);
            CUBLAS_CHECK(st);
        }
        classic_ = h;
    }
    const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasStatus_t st = cublasGemmStridedBatchedEx(
        classic_, ta, tb, (int)g.m, (int)g.n, (int)g.k, &g.alpha, g.A, g.ab_type, (int)g.lda, g.stride_a, g.B,
        g.ab_type, (int)g.ldb, g.stride_b, &g.beta, g.D, g.d_type, (int)g.ldd, g.stride_d, g.batch,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
        classic_status_ = st;
        return false;
    }
    CUBLAS_CHECK(st);
    return true;
}

bool Gemm::try_run(const GemmArgs& g) {
    if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return true;  // nothing to compute
    if (run_lt(g)) return true;
    // No cuBLASLt kernel (an awkward leading dimension or alignment): classic cuBLAS covers every shape and
    // type pair we use, but no epilogue: the caller then adds the bias or applies the GELU itself.
    return !g.bias && !g.dgelu && run_classic(g);
}

void Gemm::run(const GemmArgs& g) {
    classic_status_ = CUBLAS_STATUS_SUCCESS;
    if (!try_run(g))
        throw Error(std::string("cublaslt: no algorithm for the product ") + describe(g) + " (heuristic: " +
                    cublasLtGetStatusName(last_status_) +
                    (classic_status_ != CUBLAS_STATUS_SUCCESS
                         ? std::string("; classic cuBLAS: ") + cublasLtGetStatusName(classic_status_)
                         : std::string(g.bias || g.dgelu ? "; classic cuBLAS has no epilogue" : "")) +
                    ")");
}

}  // namespace tune::cuda
