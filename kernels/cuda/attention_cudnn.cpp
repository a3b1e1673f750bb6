// cuDNN fused attention: see attention_cudnn.h. Host code only; the kernels are cuDNN's.
#include "kernels/cuda/attention_cudnn.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch_range.h"

#ifdef TUNE_HAVE_CUDNN_FE
#include <cudnn_frontend.h>
#include <dlfcn.h>

// The frontend is built to load cuDNN at run time (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING) through this handle,
// which Impl::get() opens on first use; a machine without cuDNN then falls back instead of failing to start.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}
#endif

namespace tune::cuda {
namespace {

// What no cuDNN version runs, checked before anything is loaded (so the messages are the same everywhere).
std::string shape_unsupported(DType dtype, int C, int NH) {
    if (dtype != DType::bf16 && dtype != DType::f16)
        return std::string("cuDNN attention: no ") + dtype_name(dtype) + " (bf16 and fp16 only)";
    if (NH <= 0 || C % NH != 0 || (C / NH) % 8 != 0)
        return "cuDNN attention: head size C/NH = " + std::to_string(C) + "/" + std::to_string(NH) +
               " is not a multiple of 8";
    return "";
}

// The bound on the deterministic backward's dP workspace per call (see backward_batch).
constexpr double kBackwardWorkspaceBytes = 1024.0 * 1024 * 1024;

}  // namespace

// TEACH: on Hopper, cuDNN's deterministic SDPA backward writes dP = dO V^T for the whole call to global memory
// (its workspace), so that dQ can be summed in a fixed order: B*NH*T*T values, the very matrix flash attention
// exists to avoid keeping. Splitting the batch keeps it to one slice; every (sequence, head) is independent.
int CudnnAttention::backward_batch(int B, int T, int NH) {
    if (B <= 1) return B;
    const double Tp = std::ceil(T / 128.0) * 128, per_sequence = (double)NH * Tp * Tp * 2;
    const int most = std::max(1, (int)std::floor(kBackwardWorkspaceBytes / per_sequence));  // under the bound
    if (B <= most) return B;
    // Every call after the first starts its fp32 stats at sequence b0, NH*T floats each: a multiple of `align`
    // sequences keeps that pointer 16-byte aligned, as the graph's tensors are declared (and the others are:
    // their rows are multiples of C bf16 values).
    const int rows = (int)(((int64_t)NH * T) % 4), align = rows == 0 ? 1 : rows == 2 ? 2 : 4;
    const int most_aligned = std::max(align, most / align * align);  // past the bound only when one align is
    const int calls = (B + most_aligned - 1) / most_aligned;
    const int per_call = (B + calls - 1) / calls;
    return std::min(B, (per_call + align - 1) / align * align);  // equal calls, the last one shorter
}

#ifdef TUNE_HAVE_CUDNN_FE
namespace fe = cudnn_frontend;

namespace {

// Tensor ids in the variant pack (the map from graph tensors to device pointers at execution).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct Shape {
    DType dtype;
    int B, T, C, NH;
    bool operator<(const Shape& o) const {
        return std::tie(dtype, B, T, C, NH) < std::tie(o.dtype, o.B, o.T, o.C, o.NH);
    }
};

// Loads cuDNN for the frontend (once); empty, or why it could not.
std::string load_cudnn() {
    // The frontend loads a libcudart of its own choosing (the first of .so.12 and .so.13 it finds): make it the
    // one this program is linked against. A value the user set is kept.
    setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", ("libcudart.so." + std::to_string(CUDART_VERSION / 1000)).c_str(), 0);
    if (cudnn_frontend::cudnn_dlhandle) return "";
    for (const char* lib : {"libcudnn.so.9", "libcudnn.so"})
        if ((cudnn_frontend::cudnn_dlhandle = dlopen(lib, RTLD_NOW | RTLD_GLOBAL))) return "";
    const char* err = dlerror();
    return std::string("cannot load libcudnn.so.9 (") + (err ? err : "not found") +
           "; add cuDNN 9's lib directory to LD_LIBRARY_PATH)";
}

// One pass's graph, built on first use, or why it could not be.
struct Pass {
    bool tried = false;
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace = 0;
    std::string failed;
};

// TUNE_CUDNN_LOG=1 (scripts/gpu_check.sh sets it): the cuDNN version loaded and how long each graph took to
// build, on stderr. A graph is built once per process, GPU and shape (SharedGraphs), so the builds a test process
// or benchmark pays for show.
bool cudnn_log() {
    static const bool on = [] {
        const char* v = std::getenv("TUNE_CUDNN_LOG");
        return v && *v && std::string(v) != "0";
    }();
    return on;
}

std::string check_status(const fe::error_t& st, const char* what) {
    fe::error_t s = st;  // get_message() is not const
    return s.is_good() ? std::string() : std::string(what) + ": " + s.get_message();
}

// One graph: the forward (q, k, v -> out, stats) or the backward (q, k, v, out, dout, stats -> dq, dk, dv).
// q, k and v are read in place from qkv (B, T, 3C): dims (B, NH, T, HS) with strides (T*3C, HS, 3C, 1), the
// pointers offset by 0, C and 2C; out and dout (B, T, C) likewise with row stride C.
// sm > 0: for a GPU of that compute capability instead of the current one (set before any node is made: the
// nodes take the graph's context when created).
std::shared_ptr<fe::graph::Graph> describe_graph(const Shape& s, bool backward, int sm = 0) {
    auto g = std::make_shared<fe::graph::Graph>();
    if (sm > 0) g->set_sm_version(sm);
    g->set_io_data_type(s.dtype == DType::bf16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    const int64_t B = s.B, T = s.T, C = s.C, NH = s.NH, HS = C / NH;
    const std::vector<int64_t> dims{B, NH, T, HS}, qkv_stride{T * 3 * C, HS, 3 * C, 1}, out_stride{T * C, HS, C, 1};
    const std::vector<int64_t> stats_dims{B, NH, T, 1}, stats_stride{NH * T, T, 1, 1};
    auto input = [&](const char* name, int64_t uid, const std::vector<int64_t>& stride) {
        return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(stride));
    };
    auto q = input("q", kQ, qkv_stride), k = input("k", kK, qkv_stride), v = input("v", kV, qkv_stride);
    const float scale = 1.0f / std::sqrt((float)HS);
    if (!backward) {
        auto opts = fe::graph::SDPA_attributes()
                        .set_name("attention_forward")
                        .set_generate_stats(true)
                        .set_causal_mask(true)
                        .set_attn_scale(scale);
        auto [o, stats] = g->sdpa(q, k, v, opts);
        o->set_output(true).set_uid(kO).set_dim(dims).set_stride(out_stride);
        stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim(stats_dims).set_stride(
            stats_stride);
    } else {
        auto o = input("o", kO, out_stride), dout = input("dout", kDO, out_stride);
        auto stats = g->tensor(fe::graph::Tensor_attributes()
                                   .set_name("stats")
                                   .set_uid(kStats)
                                   .set_dim(stats_dims)
                                   .set_stride(stats_stride)
                                   .set_data_type(fe::DataType_t::FLOAT));
        auto opts = fe::graph::SDPA_backward_attributes()
                        .set_name("attention_backward")
                        .set_causal_mask(true)
                        .set_attn_scale(scale)
                        .set_deterministic_algorithm(true);
        auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, opts);
        dq->set_output(true).set_uid(kDQ).set_dim(dims).set_stride(qkv_stride);
        dk->set_output(true).set_uid(kDK).set_dim(dims).set_stride(qkv_stride);
        dv->set_output(true).set_uid(kDV).set_dim(dims).set_stride(qkv_stride);
    }
    return g;
}

std::shared_ptr<fe::graph::Graph> build_graph(cudnnHandle_t handle, const Shape& s, bool backward, int64_t* workspace,
                                              std::string* why) {
    auto g = describe_graph(s, backward);
    std::string err;
    if ((err = check_status(g->validate(), "validate")).empty() &&
        (err = check_status(g->build_operation_graph(handle), "build_operation_graph")).empty() &&
        // A: the heuristics' choices; FALLBACK: engines that run on any GPU, for a cuDNN whose heuristics offer none.
        (err = check_status(g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}),
                            "create_execution_plans"))
            .empty() &&
        (err = check_status(g->check_support(), "check_support")).empty() &&
        (err = check_status(g->build_plans(), "build_plans")).empty() &&
        (err = check_status(g->get_workspace_size(*workspace), "get_workspace_size")).empty())
        return g;
    *why = err;
    return nullptr;
}

// build_graph, with the frontend's exceptions (no engine fits, a symbol or library it cannot load) turned into
// a reason like its error codes, so they lead to the fallback too.
std::shared_ptr<fe::graph::Graph> try_build_graph(cudnnHandle_t handle, const Shape& s, bool backward,
                                                  int64_t* workspace, std::string* why) {
    std::shared_ptr<fe::graph::Graph> g;
    try {
        g = build_graph(handle, s, backward, workspace, why);
    } catch (const std::exception& e) {
        *why = e.what();
    }
    if (!g) *why = std::string("cuDNN attention ") + (backward ? "backward" : "forward") + ": " + *why;
    return g;
}

// TEACH: building a graph costs a few hundred ms (heuristics, and kernels compiled at run time by NVRTC), so the
// graphs are kept for the whole process, per GPU, shape and pass, with one cuDNN handle per GPU, as PyTorch does:
// a new backend (a test makes several; bench_recompute one per batch size) reuses what an earlier one built.
// Every use first points the handle at the calling backend's stream. Never destroyed: a static destructor
// would run after the CUDA runtime's own teardown, and the process's end frees it all anyway.
struct SharedGraphs {
    std::mutex mu;                          // the handle's stream is set per use: one user at a time
    std::map<int, cudnnHandle_t> handle;    // by device
    std::map<int, std::string> no_handle;   // by device: why cuDNN could not be loaded or started there
    std::map<std::tuple<int, Shape, bool>, Pass> passes;  // (device, shape, backward)
};

SharedGraphs& shared_graphs() {
    static SharedGraphs* g = new SharedGraphs();
    return *g;
}

// The device's handle (made on first use), or why there is none. Caller holds mu. Only a cuDNN that cannot be
// loaded is remembered; a failed cudnnCreate (out of memory, say) is tried again by the next user (*transient).
std::string device_handle(SharedGraphs& g, int device, cudnnHandle_t* out, bool* transient) {
    *transient = false;
    if (g.handle.count(device)) {
        *out = g.handle[device];
        return "";
    }
    if (g.no_handle.count(device)) return g.no_handle[device];
    std::string why = load_cudnn();
    cudnnHandle_t h = nullptr;
    if (why.empty()) {
        *transient = true;  // from here on, a failure is cudnnCreate's
        try {
            const cudnnStatus_t st = fe::detail::create_handle(&h);
            if (st != CUDNN_STATUS_SUCCESS) why = std::string("cudnnCreate: ") + fe::detail::get_error_string(st);
        } catch (const std::exception& e) {
            why = std::string("cudnnCreate: ") + e.what();
        }
        if (!why.empty() && h) fe::detail::destroy_handle(h);
    }
    if (cudnn_log()) {
        if (why.empty())
            std::fprintf(stderr, "cuDNN attention: cuDNN %ld loaded on GPU %d (built against %d)\n",
                         (long)fe::detail::get_backend_version(), device, CUDNN_VERSION);
        else
            std::fprintf(stderr, "cuDNN attention: %s\n", why.c_str());
    }
    if (!why.empty()) {
        if (!*transient) g.no_handle[device] = why;
        return why;
    }
    *transient = false;
    *out = g.handle[device] = h;
    return "";
}

}  // namespace

struct CudnnAttention::Impl {
    cudaStream_t stream;
    int64_t largest_workspace = 0;  // of the graphs this backend used

    // The graph of one pass of this shape, built on first use in the process; nullptr and *why set when cuDNN
    // cannot run it. Returns with g.mu held in *lock, the handle pointed at this backend's stream.
    const Pass* get(const Shape& s, bool backward, std::string* why, std::unique_lock<std::mutex>* lock,
                    cudnnHandle_t* handle) {
        SharedGraphs& g = shared_graphs();
        *lock = std::unique_lock<std::mutex>(g.mu);
        int device = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        Pass& p = g.passes[{device, s, backward}];
        std::string no_handle;
        if (!p.tried || p.graph) {
            bool transient = false;
            no_handle = shape_unsupported(s.dtype, s.C, s.NH);
            if (no_handle.empty()) no_handle = device_handle(g, device, handle, &transient);
            if (transient) {  // not this shape's fault: the next use tries again
                *why = "cuDNN attention: " + no_handle;
                return nullptr;
            }
            if (no_handle.empty()) {
                const cudnnStatus_t st = fe::detail::set_stream(*handle, stream);
                if (st != CUDNN_STATUS_SUCCESS)
                    throw Error(std::string("cuDNN attention: cudnnSetStream: ") + fe::detail::get_error_string(st));
            }
        }
        if (!p.tried) {
            p.tried = true;
            p.failed = no_handle.empty() || no_handle.rfind("cuDNN attention", 0) == 0 ? no_handle
                                                                                    : "cuDNN attention: " + no_handle;
            if (p.failed.empty()) {
                NvtxRange range("cuDNN attention: build graph");
                const auto t0 = std::chrono::steady_clock::now();
                p.graph = try_build_graph(*handle, s, backward, &p.workspace, &p.failed);
                if (cudnn_log())
                    std::fprintf(stderr, "cuDNN attention: %s graph %s B=%d T=%d C=%d NH=%d: %s in %.0f ms\n",
                                 backward ? "backward" : "forward", dtype_name(s.dtype), s.B, s.T, s.C, s.NH,
                                 p.graph ? "built" : p.failed.c_str(),
                                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                                     .count());
            }
        }
        if (!p.graph) {
            *why = p.failed;
            return nullptr;
        }
        largest_workspace = std::max(largest_workspace, p.workspace);
        return &p;
    }

    // Whether cuDNN runs this pass (building its graph if needed); empty, or why not.
    std::string check(const Shape& s, bool backward) {
        std::string why;
        std::unique_lock<std::mutex> lock;
        cudnnHandle_t handle = nullptr;
        get(s, backward, &why, &lock, &handle);
        return why;
    }

    void run(const Shape& s, bool backward, std::unordered_map<int64_t, void*>& pack, Scratch& scratch) {
        std::string why;
        std::unique_lock<std::mutex> lock;
        cudnnHandle_t handle = nullptr;
        const Pass* p = get(s, backward, &why, &lock, &handle);
        if (!p) throw Error(why + " (B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " C=" +
                            std::to_string(s.C) + " NH=" + std::to_string(s.NH) + "; --attention matmul avoids it)");
        void* ws = p->workspace > 0 ? scratch.get((size_t)p->workspace) : nullptr;
        std::string err;
        try {
            fe::error_t st = p->graph->execute(handle, pack, ws);
            if (!st.is_good()) err = st.get_message();
        } catch (const std::exception& e) {
            err = e.what();
        }
        if (!err.empty()) throw Error("cuDNN attention: execute: " + err);
        CUDA_CHECK_LAUNCH();
    }
};

CudnnAttention::CudnnAttention(cudaStream_t stream) : impl_(std::make_unique<Impl>()) { impl_->stream = stream; }

// The graphs and the handle stay for the next backend. The handle must not keep pointing at this backend's
// stream, which the backend destroys next: it goes back to the default stream.
CudnnAttention::~CudnnAttention() {
    SharedGraphs& g = shared_graphs();
    std::lock_guard<std::mutex> lock(g.mu);
    for (auto& [device, handle] : g.handle) {
        cudaStream_t current = nullptr;
        if (fe::detail::get_stream(handle, &current) == CUDNN_STATUS_SUCCESS && current == impl_->stream)
            fe::detail::set_stream(handle, nullptr);  // a destructor reports nothing; the next use sets its own
    }
}

std::string CudnnAttention::unsupported(DType dtype, int B, int T, int C, int NH) {
    // T = 1 runs without cuDNN (below); whether cuDNN runs is asked of the smallest shape it builds.
    const int T2 = std::max(T, 2);
    // Backward runs in calls of backward_batch() sequences, the last one shorter when they do not divide B: both
    // graphs are built here, so a refusal falls back to the cuBLAS path now, not in the first backward.
    const int per_call = backward_batch(B, T2, NH);
    std::string why = impl_->check(Shape{dtype, B, T2, C, NH}, false);
    if (why.empty()) why = impl_->check(Shape{dtype, per_call, T2, C, NH}, true);
    if (why.empty() && per_call && B % per_call) why = impl_->check(Shape{dtype, B % per_call, T2, C, NH}, true);
    return why;
}

size_t CudnnAttention::workspace_bytes() const { return (size_t)impl_->largest_workspace; }

std::string CudnnAttention::validate_for(int sm, DType dtype, int B, int T, int C, int NH) {
    if (std::string why = shape_unsupported(dtype, C, NH); !why.empty()) return why;
    if (std::string why = load_cudnn(); !why.empty()) return "cuDNN attention: " + why;
    struct Pass {
        bool backward;
        int batch;
    };
    const int per_call = backward_batch(B, T, NH), last_call = per_call ? B % per_call : 0;
    for (const Pass& pass : {Pass{false, B}, Pass{true, per_call}, Pass{true, last_call}}) {
        if (pass.batch == 0) continue;
        const bool backward = pass.backward;
        std::string err;
        try {
            auto g = describe_graph(Shape{dtype, pass.batch, T, C, NH}, backward, sm);
            err = check_status(g->validate(), "validate");
        } catch (const std::exception& e) {
            err = e.what();
        }
        if (!err.empty()) return std::string("cuDNN attention ") + (backward ? "backward" : "forward") + ": " + err;
    }
    return "";
}

// TEACH: with one position the softmax is a single 1, so out = v exactly, and backward gives dv = dout and
// dq = dk = 0 (dS = P * (dP - rowsum(P * dP)) vanishes). cuDNN's backward does not take T = 1, so these
// strided copies stand in for it; the statistics are not needed and are zeroed.
void CudnnAttention::forward(void* out, float* stats, const void* qkv, DType dtype, int B, int T, int C, int NH,
                             Scratch& scratch) {
    LaunchRange range("attention_forward_cudnn", impl_->stream);
    const size_t es = dtype_size(dtype);
    char* base = const_cast<char*>(static_cast<const char*>(qkv));
    if (T == 1) {
        CUDA_CHECK(cudaMemcpy2DAsync(out, C * es, base + 2 * C * es, 3 * C * es, C * es, B, cudaMemcpyDeviceToDevice,
                                     impl_->stream));
        CUDA_CHECK(cudaMemsetAsync(stats, 0, cudnn_attention_saved_floats(B, T, NH) * sizeof(float), impl_->stream));
        return;
    }
    std::unordered_map<int64_t, void*> pack{
        {kQ, base}, {kK, base + C * es}, {kV, base + 2 * C * es}, {kO, out}, {kStats, stats}};
    impl_->run(Shape{dtype, B, T, C, NH}, false, pack, scratch);
}

void CudnnAttention::backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* stats,
                              DType dtype, int B, int T, int C, int NH, Scratch& scratch) {
    LaunchRange range("attention_backward_cudnn", impl_->stream);
    const size_t es = dtype_size(dtype);
    char* base = const_cast<char*>(static_cast<const char*>(qkv));
    char* dbase = static_cast<char*>(dqkv);
    if (T == 1) {
        CUDA_CHECK(cudaMemset2DAsync(dbase, 3 * C * es, 0, 2 * C * es, B, impl_->stream));
        CUDA_CHECK(cudaMemcpy2DAsync(dbase + 2 * C * es, 3 * C * es, dout, C * es, C * es, B, cudaMemcpyDeviceToDevice,
                                     impl_->stream));
        return;
    }
    const int per_call = backward_batch(B, T, NH);
    for (int b0 = 0; b0 < B; b0 += per_call) {
        const int nb = std::min(per_call, B - b0);
        const size_t row3 = (size_t)b0 * T * 3 * C * es, row = (size_t)b0 * T * C * es;  // sequence b0's offsets
        std::unordered_map<int64_t, void*> pack{{kQ, base + row3},
                                                {kK, base + row3 + C * es},
                                                {kV, base + row3 + 2 * C * es},
                                                {kO, static_cast<char*>(const_cast<void*>(out)) + row},
                                                {kDO, static_cast<char*>(const_cast<void*>(dout)) + row},
                                                {kStats, const_cast<float*>(stats) + (size_t)b0 * NH * T},
                                                {kDQ, dbase + row3},
                                                {kDK, dbase + row3 + C * es},
                                                {kDV, dbase + row3 + 2 * C * es}};
        impl_->run(Shape{dtype, nb, T, C, NH}, true, pack, scratch);
    }
}

#else  // built without the cuDNN frontend headers, or for the CUDA emulator

struct CudnnAttention::Impl {};

CudnnAttention::CudnnAttention(cudaStream_t) {}
CudnnAttention::~CudnnAttention() = default;

size_t CudnnAttention::workspace_bytes() const { return 0; }

namespace {
std::string absent(DType dtype, int C, int NH) {
    if (std::string why = shape_unsupported(dtype, C, NH); !why.empty()) return why;
#ifdef TUNE_CUDA_EMULATOR
    return "cuDNN attention: the CUDA emulator has no cuDNN";
#else
    return "cuDNN attention: built without the cuDNN frontend headers (pip install nvidia-cudnn-frontend, then "
           "rebuild)";
#endif
}
}  // namespace

std::string CudnnAttention::validate_for(int, DType dtype, int, int, int C, int NH) { return absent(dtype, C, NH); }

std::string CudnnAttention::unsupported(DType dtype, int, int, int C, int NH) { return absent(dtype, C, NH); }

void CudnnAttention::forward(void*, float*, const void*, DType dtype, int, int, int C, int NH, Scratch&) {
    throw Error(absent(dtype, C, NH));
}

void CudnnAttention::backward(void*, const void*, const void*, const void*, const float*, DType dtype, int, int, int C,
                              int NH, Scratch&) {
    throw Error(absent(dtype, C, NH));
}

#endif

}  // namespace tune::cuda
