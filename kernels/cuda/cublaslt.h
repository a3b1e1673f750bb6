// One cuBLASLt entry point for every GEMM of the backend (the linear layers and attention's batched
// products). Column-major, as cuBLAS thinks:
//   D(m,n) = alpha * op(A)(m,k) @ op(B)(k,n) + beta * D  [+ bias(m) broadcast over the n columns]
// for `batch` problems at fixed element strides. A row-major (R, C) matrix is a column-major (C, R) one;
// the layer files spell out how each row-major product maps onto this.
//
// Accumulation is always FP32 (CUBLAS_COMPUTE_32F): no TF32 for fp32 inputs, so fp32 results match a
// float reference to ~1e-6. Shapes cuBLASLt has no kernel for (awkward leading dimensions, tiny head sizes)
// go to classic cuBLAS's cublasGemmStridedBatchedEx with the same compute type, on the same stream. The heuristic's first choice is cached per problem shape, type and alignment,
// so every call of a shape runs the same algorithm with the same workspace: on one GPU, the same bits
// every run (cuBLAS's reproducibility guarantee for a fixed algorithm, stream and workspace).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>

namespace tune::cuda {

struct GemmArgs {
    bool trans_a = false, trans_b = false;
    int64_t m = 0, n = 0, k = 0;
    const void* A = nullptr;  // stored (m,k) or, with trans_a, (k,m); leading dimension lda
    int64_t lda = 0, stride_a = 0;
    const void* B = nullptr;  // stored (k,n) or, with trans_b, (n,k)
    int64_t ldb = 0, stride_b = 0;
    void* D = nullptr;  // (m,n), also read as C when beta != 0
    int64_t ldd = 0, stride_d = 0;
    cudaDataType_t ab_type = CUDA_R_32F;  // element type of A and B
    cudaDataType_t d_type = CUDA_R_32F;   // element type of C/D (and of the bias)
    int batch = 1;
    float alpha = 1.0f, beta = 0.0f;
    const void* bias = nullptr;  // (m) or null; fused as the BIAS epilogue
    // The DGELU epilogue (gradient of cuBLASLt's tanh GELU): D = product * gelu'(aux), aux (m,n) with leading
    // dimension ldaux. One problem only (batch 1) and ldaux a multiple of 8 (cuBLASLt's rule); otherwise, or
    // without a kernel, try_run returns false.
    bool dgelu = false;
    void* aux = nullptr;
    int64_t ldaux = 0;
};

class Gemm {
   public:
    static constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // what Hopper's large kernels ask for

    explicit Gemm(cudaStream_t stream);
    ~Gemm();
    Gemm(const Gemm&) = delete;
    Gemm& operator=(const Gemm&) = delete;

    // Enqueues the product: cuBLASLt's cached heuristic choice, or, when cuBLASLt has no kernel for the
    // shape, classic cuBLAS (cublasGemmStridedBatchedEx, same FP32 compute). Returns false, doing nothing,
    // when neither can (a bias or DGELU epilogue cuBLASLt cannot fuse here, a type pair cuBLAS lacks): the caller
    // then falls back. Throws on real errors.
    bool try_run(const GemmArgs& g);
    // As try_run, but an unsupported problem throws tune::Error describing it.
    void run(const GemmArgs& g);
    cudaStream_t stream() const { return stream_; }

   private:
    bool run_lt(const GemmArgs& g);
    bool run_classic(const GemmArgs& g);

    struct Entry {
        bool supported = false;
        cublasStatus_t status = CUBLAS_STATUS_SUCCESS;  // the heuristic's verdict
        cublasLtMatmulAlgo_t algo{};
    };
    using Key = std::array<int64_t, 22>;

    cudaStream_t stream_;
    cublasLtHandle_t handle_ = nullptr;
    cublasHandle_t classic_ = nullptr;  // made on first use
    void* workspace_ = nullptr;
    std::map<Key, Entry> cache_;
    cublasStatus_t last_status_ = CUBLAS_STATUS_SUCCESS;     // the cuBLASLt heuristic's, for the error message
    cublasStatus_t classic_status_ = CUBLAS_STATUS_SUCCESS;  // classic cuBLAS's refusal, when it was tried
};

}  // namespace tune::cuda
