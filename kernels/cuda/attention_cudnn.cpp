// cuDNN fused attention: see attention_cudnn.h. Host code only; the kernels are cuDNN's.
#include "kernels/cuda/attention_cudnn.h"

#include <cmath>
#include <map>
#include <tuple>
#include <vector>

#include "kernels/cuda/check.h"

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

}  // namespace

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

struct Graphs {
    std::shared_ptr<fe::graph::Graph> fwd, bwd;
    int64_t fwd_workspace = 0, bwd_workspace = 0;
};

std::string check_status(const fe::error_t& st, const char* what) {
    fe::error_t s = st;  // get_message() is not const
    return s.is_good() ? std::string() : std::string(what) + ": " + s.get_message();
}

// One graph: the forward (q, k, v -> out, stats) or the backward (q, k, v, out, dout, stats -> dq, dk, dv).
// q, k and v are read in place from qkv (B, T, 3C): dims (B, NH, T, HS) with strides (T*3C, HS, 3C, 1), the
// pointers offset by 0, C and 2C; out and dout (B, T, C) likewise with row stride C.
std::shared_ptr<fe::graph::Graph> build_graph(cudnnHandle_t handle, const Shape& s, bool backward,
                                              int64_t* workspace, std::string* why) {
    auto g = std::make_shared<fe::graph::Graph>();
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
    const char* pass = backward ? "backward" : "forward";
    std::string err;
    if ((err = check_status(g->validate(), "validate")).empty() &&
        (err = check_status(g->build_operation_graph(handle), "build_operation_graph")).empty() &&
        (err = check_status(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans")).empty() &&
        (err = check_status(g->check_support(), "check_support")).empty() &&
        (err = check_status(g->build_plans(), "build_plans")).empty() &&
        (err = check_status(g->get_workspace_size(*workspace), "get_workspace_size")).empty())
        return g;
    *why = std::string("cuDNN attention ") + pass + ": " + err;
    return nullptr;
}

}  // namespace

struct CudnnAttention::Impl {
    cudaStream_t stream;
    cudnnHandle_t handle = nullptr;
    std::string no_handle;  // why cudnnCreate failed, once it has
    std::map<Shape, Graphs> graphs;
    std::map<Shape, std::string> failed;

    // The graphs of this shape, built on first use; nullptr and *why set when cuDNN cannot run it.
    const Graphs* get(const Shape& s, std::string* why) {
        if (auto it = graphs.find(s); it != graphs.end()) return &it->second;
        if (auto it = failed.find(s); it != failed.end()) return *why = it->second, nullptr;
        *why = shape_unsupported(s.dtype, s.C, s.NH);
        if (why->empty() && !handle && no_handle.empty()) open_handle();
        if (why->empty() && !no_handle.empty()) *why = "cuDNN attention: " + no_handle;
        Graphs gr;
        if (why->empty()) {
            NvtxRange range("cuDNN attention: build graphs");
            gr.fwd = build_graph(handle, s, false, &gr.fwd_workspace, why);
            if (gr.fwd) gr.bwd = build_graph(handle, s, true, &gr.bwd_workspace, why);
        }
        if (!why->empty()) return failed[s] = *why, nullptr;
        return &(graphs[s] = std::move(gr));
    }

    void open_handle() {
        if (!cudnn_frontend::cudnn_dlhandle) {
            for (const char* lib : {"libcudnn.so.9", "libcudnn.so"})
                if ((cudnn_frontend::cudnn_dlhandle = dlopen(lib, RTLD_NOW | RTLD_GLOBAL))) break;
            if (!cudnn_frontend::cudnn_dlhandle) {
                const char* err = dlerror();
                no_handle = std::string("cannot load libcudnn.so.9 (") + (err ? err : "not found") +
                            "; add cuDNN 9's lib directory to LD_LIBRARY_PATH)";
                return;
            }
        }
        cudnnStatus_t st = fe::detail::create_handle(&handle);
        if (st == CUDNN_STATUS_SUCCESS) st = fe::detail::set_stream(handle, stream);
        if (st != CUDNN_STATUS_SUCCESS) no_handle = std::string("cudnnCreate: ") + fe::detail::get_error_string(st);
        if (st != CUDNN_STATUS_SUCCESS && handle) fe::detail::destroy_handle(handle);
        if (st != CUDNN_STATUS_SUCCESS) handle = nullptr;
    }

    const Graphs& need(const Shape& s) {
        std::string why;
        const Graphs* g = get(s, &why);
        if (!g) throw Error(why + " (B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " C=" +
                            std::to_string(s.C) + " NH=" + std::to_string(s.NH) + "; --attention matmul avoids it)");
        return *g;
    }

    void run(const fe::graph::Graph& g, int64_t workspace, std::unordered_map<int64_t, void*>& pack,
             Scratch& scratch) {
        void* ws = workspace > 0 ? scratch.get((size_t)workspace) : nullptr;
        fe::error_t st = g.execute(handle, pack, ws);
        if (!st.is_good()) throw Error("cuDNN attention: execute: " + st.get_message());
        CUDA_CHECK_LAUNCH();
    }
};

CudnnAttention::CudnnAttention(cudaStream_t stream) : impl_(std::make_unique<Impl>()) { impl_->stream = stream; }

CudnnAttention::~CudnnAttention() {
    if (impl_->handle) fe::detail::destroy_handle(impl_->handle);
}

std::string CudnnAttention::unsupported(DType dtype, int B, int T, int C, int NH) {
    std::string why;
    impl_->get(Shape{dtype, B, T, C, NH}, &why);
    return why;
}

void CudnnAttention::forward(void* out, float* stats, const void* qkv, DType dtype, int B, int T, int C, int NH,
                             Scratch& scratch) {
    NvtxRange range("attention forward (cuDNN)");
    const Graphs& g = impl_->need(Shape{dtype, B, T, C, NH});
    const size_t es = dtype_size(dtype);
    char* base = const_cast<char*>(static_cast<const char*>(qkv));
    std::unordered_map<int64_t, void*> pack{
        {kQ, base}, {kK, base + C * es}, {kV, base + 2 * C * es}, {kO, out}, {kStats, stats}};
    impl_->run(*g.fwd, g.fwd_workspace, pack, scratch);
}

void CudnnAttention::backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* stats,
                              DType dtype, int B, int T, int C, int NH, Scratch& scratch) {
    NvtxRange range("attention backward (cuDNN)");
    const Graphs& g = impl_->need(Shape{dtype, B, T, C, NH});
    const size_t es = dtype_size(dtype);
    char* base = const_cast<char*>(static_cast<const char*>(qkv));
    char* dbase = static_cast<char*>(dqkv);
    std::unordered_map<int64_t, void*> pack{{kQ, base},
                                            {kK, base + C * es},
                                            {kV, base + 2 * C * es},
                                            {kO, const_cast<void*>(out)},
                                            {kDO, const_cast<void*>(dout)},
                                            {kStats, const_cast<float*>(stats)},
                                            {kDQ, dbase},
                                            {kDK, dbase + C * es},
                                            {kDV, dbase + 2 * C * es}};
    impl_->run(*g.bwd, g.bwd_workspace, pack, scratch);
}

#else  // built without the cuDNN frontend headers, or for the CUDA emulator

struct CudnnAttention::Impl {};

CudnnAttention::CudnnAttention(cudaStream_t) {}
CudnnAttention::~CudnnAttention() = default;

std::string CudnnAttention::unsupported(DType dtype, int, int, int C, int NH) {
    if (std::string why = shape_unsupported(dtype, C, NH); !why.empty()) return why;
#ifdef TUNE_CUDA_EMULATOR
    return "cuDNN attention: the CUDA emulator has no cuDNN";
#else
    return "cuDNN attention: built without the cuDNN frontend headers (pip install nvidia-cudnn-frontend, then "
           "rebuild)";
#endif
}

void CudnnAttention::forward(void*, float*, const void*, DType dtype, int B, int T, int C, int NH, Scratch&) {
    throw Error(unsupported(dtype, B, T, C, NH));
}

void CudnnAttention::backward(void*, const void*, const void*, const void*, const float*, DType dtype, int B, int T,
                              int C, int NH, Scratch&) {
    throw Error(unsupported(dtype, B, T, C, NH));
}

#endif

}  // namespace tune::cuda
