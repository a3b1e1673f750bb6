# tune.cu build. `make` builds every tool; `make test` builds and runs the GoogleTest suites;
# `make bench` builds the Google Benchmark programs. See README.md.
#
# Conventions the rules below rely on (so adding a file never means editing this Makefile):
#   - every .cpp/.cu under kernels/ model/ train/ data/ is library code, linked into every program,
#     except files named main_<tool>.cpp, each of which becomes the program bin/<tool>
#     (bin/, because the top-level folder train/ holds sources and a program cannot share its name);
#   - every tests/*.cpp and tests/*.cu goes into one test binary, build/tests/tune_tests, with the fuzz targets
#     (tests/fuzz/targets.cpp), whose seeds and regressions the tests replay;
#   - every bench/bench_<name>.cpp (or .cu) becomes build/bench/bench_<name>.

# `make` alone builds the tools: the rules further down that only add prerequisites (the stamp below) would
# otherwise become the default goal, the first target make reads.
.DEFAULT_GOAL := all

CUDA_HOME ?= /usr/local/cuda
comma := ,
GPU_ARCH  ?= 90
NVCC      := $(CUDA_HOME)/bin/nvcc

ifeq ($(wildcard $(NVCC)),)
$(error CUDA toolkit not found: no nvcc at $(NVCC); install the CUDA toolkit or set CUDA_HOME=/path/to/cuda)
endif

# OpenBLAS built on OpenMP (Debian libopenblas-openmp-dev): it shares OpenMP's thread pool with our own
# parallel loops. The pthread build's threads fight OpenMP's spinning threads and ran 100x slower here.
MULTIARCH   := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
OPENBLAS_INC ?= /usr/include/$(MULTIARCH)/openblas-openmp
OPENBLAS_LIB ?= /usr/lib/$(MULTIARCH)/openblas-openmp
ifeq ($(wildcard $(OPENBLAS_INC)/cblas.h),)
$(error OpenBLAS (OpenMP build) not found: no cblas.h in $(OPENBLAS_INC); apt-get install libopenblas-openmp-dev)
endif

CXX      ?= g++
MAKEFLAGS += -j$(shell nproc)
BUILD    := build
INCLUDES := -I. -I$(CUDA_HOME)/include -I$(OPENBLAS_INC)
# Warnings are errors here and in CI. WERROR=0 keeps them warnings: for another compiler (a newer g++ warns
# about more), where a build that runs matters more than a clean one (scripts/gpu_check.sh's fallback build).
WERROR   ?= 1
WARN     := -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror)
CXXFLAGS ?= -O2 -g
CXXFLAGS += -std=c++17 -fopenmp $(WARN) $(INCLUDES) -MMD -MP
NVCCFLAGS ?= -O3
NVCCFLAGS += -std=c++17 -arch=sm_$(GPU_ARCH) -lineinfo -Xptxas --warn-on-spills \
             $(if $(filter 1,$(WERROR)),--Werror all-warnings) \
             -Xcompiler -fopenmp,-Wall,-Wextra$(if $(filter 1,$(WERROR)),$(comma)-Werror) $(INCLUDES) -MMD -MP
LDLIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart \
            -L$(OPENBLAS_LIB) -Wl,-rpath,$(OPENBLAS_LIB) -lopenblas -lpcre2-8 -fopenmp -lpthread

# Data parallelism (train/dist*.cpp). MPI from `mpicxx --showme` (OpenMPI; Debian: openmpi-bin libopenmpi-dev)
# or pkg-config; NCCL from nccl.h under NCCL_HOME (default: the CUDA toolkit). Either may be missing: the build
# then leaves that path out and says why at run time, and the multi-rank tests skip.
MPICXX    ?= mpicxx
PKG_CONFIG ?= pkg-config
MPI_CFLAGS := $(shell $(MPICXX) --showme:compile 2>/dev/null || $(PKG_CONFIG) --cflags ompi 2>/dev/null)
MPI_LIBS   := $(shell $(MPICXX) --showme:link 2>/dev/null || $(PKG_CONFIG) --libs ompi 2>/dev/null)
ifneq ($(strip $(MPI_LIBS)),)
MPI_DEFS  := -DTUNE_HAVE_MPI -DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1 \
             $(patsubst -I%,-isystem %,$(filter -I%,$(MPI_CFLAGS))) $(filter-out -I%,$(MPI_CFLAGS))
LDLIBS    += $(MPI_LIBS)
endif
NCCL_HOME ?= $(CUDA_HOME)
ifneq ($(wildcard $(NCCL_HOME)/include/nccl.h),)
NCCL_DEFS := -DTUNE_HAVE_NCCL -isystem $(NCCL_HOME)/include
LDLIBS    += -L$(NCCL_HOME)/lib64 -L$(NCCL_HOME)/lib -Wl,-rpath,$(NCCL_HOME)/lib64 -Wl,-rpath,$(NCCL_HOME)/lib -lnccl
endif
# cuDNN's fused attention (kernels/cuda/attention_cudnn.cpp) through the header-only cuDNN frontend, which pip
# installs (nvidia-cudnn-frontend; .ci/run does) under site-packages/include; CUDNN_FE_INC=/path overrides.
# Without it the build leaves that path out, says so at run time, and --attention auto uses cuBLAS. cuDNN itself
# (and NVRTC, which it uses to compile kernels) is loaded at run time, so the tools start without it.
# `make cudnn-frontend-copy` puts a copy (with the toolkit's cudnn*.h) under build/ for a machine without pip's
# copy (the GPU machine: carry build/cudnn_frontend).
CUDNN_FE_COPY := $(BUILD)/cudnn_frontend/include
CUDNN_FE_PIP := $(shell python3 -c "import importlib.metadata as m; d = m.distribution('nvidia-cudnn-frontend'); \
    print(next(d.locate_file(f).parent for f in d.files if f.name == 'cudnn_frontend.h'))" 2>/dev/null)
CUDNN_FE_INC ?= $(if $(wildcard $(CUDNN_FE_PIP)/cudnn_frontend.h),$(CUDNN_FE_PIP),$(CUDNN_FE_COPY))
# cudnn.h, which the frontend includes: the toolkit's, else that of pip's cuDNN wheel (the runtime's own version,
# on a machine that has cuDNN only as a wheel), else the copy's.
CUDNN_H_PIP := $(shell python3 -c "import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], 'include'))" \
    2>/dev/null)
CUDNN_H_INC ?= $(firstword $(foreach d,$(CUDA_HOME)/include $(CUDNN_H_PIP) $(CUDNN_FE_COPY),$(if $(wildcard $(d)/cudnn.h),$(d))))
ifneq ($(and $(wildcard $(CUDNN_FE_INC)/cudnn_frontend.h),$(CUDNN_H_INC)),)
CUDNN_DEFS := -DTUNE_HAVE_CUDNN_FE -DNV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING -isystem $(CUDNN_H_INC) -isystem $(CUDNN_FE_INC)
endif
# A stamp holds the flags some objects were built with and is rewritten (so newer than those objects) only when
# they change. $(call update_stamp,FILE,VARIABLE) compares and writes with make's own file functions, not the
# shell, so a flag with quotes in it is written as it is; the rule below makes a stamp that is missing.
$(shell mkdir -p $(BUILD))
define update_stamp
ifneq ($$(file <$(1)),$$($(2)))
$$(file >$(1),$$($(2)))
endif
endef
# Only the files that use them see these flags; a stamp rebuilds them when what was found changes.
DIST_STAMP := $(BUILD)/dist-config.stamp
DIST_FLAGS := $(strip $(MPI_DEFS) $(NCCL_DEFS) $(CUDNN_DEFS))
$(eval $(call update_stamp,$(DIST_STAMP),DIST_FLAGS))
$(BUILD)/train/dist_mpi.o: CXXFLAGS += $(MPI_DEFS)
$(BUILD)/train/dist_nccl.o: CXXFLAGS += $(NCCL_DEFS)
# -O1 -g0: host glue whose speed does not matter; the frontend's templates would add 60 MB of debug info and
# double the compile time.
$(BUILD)/kernels/cuda/attention_cudnn.o: CXXFLAGS += $(CUDNN_DEFS) -O1 -g0
$(BUILD)/train/dist_mpi.o $(BUILD)/train/dist_nccl.o $(BUILD)/kernels/cuda/attention_cudnn.o: $(DIST_STAMP)
# -MMD leaves out -isystem headers: a frontend upgraded in place rebuilds through its version header.
$(BUILD)/kernels/cuda/attention_cudnn.o: $(wildcard $(CUDNN_FE_INC)/cudnn_frontend_version.h)

LIB_SRC   := $(filter-out $(wildcard */main_*.cpp),$(wildcard kernels/*.cpp kernels/*/*.cpp model/*.cpp train/*.cpp data/*.cpp)) \
             $(wildcard kernels/*.cu kernels/*/*.cu model/*.cu train/*.cu)
TOOL_SRC  := $(wildcard */main_*.cpp)
TOOLS     := $(addprefix bin/,$(patsubst main_%,%,$(basename $(notdir $(TOOL_SRC)))))
TEST_SRC  := $(wildcard tests/*.cpp tests/*.cu) tests/fuzz/targets.cpp
BENCH_SRC := $(wildcard bench/bench_*.cpp bench/bench_*.cu)
BENCHES   := $(addprefix $(BUILD)/,$(basename $(BENCH_SRC)))

obj = $(addprefix $(BUILD)/,$(addsuffix .o,$(basename $(1))))
LIB_OBJ := $(call obj,$(LIB_SRC))

.PHONY: all test bench clean cudnn-frontend-copy device-bundle fuzz
all: $(TOOLS)

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# nvcc's command line, kept in a stamp that changes only when it does: `make GPU_ARCH=80` after a build for sm_90
# compiles the kernels again instead of finding them up to date.
NVCC_STAMP := $(BUILD)/nvcc-flags.stamp
NVCC_LINE  := $(strip $(NVCC) $(NVCCFLAGS))
$(eval $(call update_stamp,$(NVCC_STAMP),NVCC_LINE))
$(DIST_STAMP) $(NVCC_STAMP):
	@mkdir -p $(dir $@) && touch $@

$(BUILD)/%.o: %.cu $(NVCC_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/libtune.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# One rule per tool: bin/train from train/main_train.cpp, bin/tokenize from data/main_tokenize.cpp, ...
define tool_rule
$(1): $(call obj,$(filter %/main_$(notdir $(1)).cpp,$(TOOL_SRC))) $(BUILD)/libtune.a
	@mkdir -p bin
	$$(CXX) $$^ -o $$@ $$(LDLIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rule,$(t))))

$(BUILD)/tests/tune_tests: $(call obj,$(TEST_SRC)) $(BUILD)/libtune.a
	$(CXX) $^ -o $@ -lgtest $(LDLIBS)

# The tests run from the repository root (they read data/ and tests/fixtures/) and may call the tools.
# Then the CUDA tests once more on the CUDA emulator (below), so they run on every machine, GPU or not.
# The benchmarks are built too (not run: their numbers are for bench/README.md), so a change that breaks one
# fails here and not on the GPU machine, whose time is short.
test: $(BUILD)/tests/tune_tests $(TOOLS) $(BENCHES)
	./$(BUILD)/tests/tune_tests
	$(MAKE) --no-print-directory test-emu

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/libtune.a
	$(CXX) $^ -o $@ -lbenchmark $(LDLIBS)

bench: $(BENCHES)

# Everything scripts/gpu_check.sh runs, built here, with the libraries a GPU machine without this project's
# build packages lacks: build/device/bundle.tar.xz (carry build/device to the H200).
device-bundle:
	scripts/device_bundle.sh build/device

cudnn-frontend-copy:
	@test -f $(CUDNN_FE_PIP)/cudnn_frontend.h || { echo "no pip copy of the cuDNN frontend: pip install nvidia-cudnn-frontend"; exit 1; }
	rm -rf $(CUDNN_FE_COPY) && mkdir -p $(CUDNN_FE_COPY)
	cp -r $(CUDNN_FE_PIP)/cudnn_frontend* $(CUDNN_FE_PIP)/cudnn_backend_base.h $(CUDNN_FE_COPY)/
	@test -n "$(CUDNN_H_INC)" || { echo "no cudnn.h (in $(CUDA_HOME)/include or pip's cuDNN wheel) to copy"; exit 1; }
	cp $(CUDNN_H_INC)/cudnn*.h $(CUDNN_FE_COPY)/  # cudnn.h for a machine whose cuDNN has no headers

# ---- The CUDA emulator (tests/emu/cuda_emu.h): the CUDA tests on the CPU ----
# Each kernels/**/*.cu is translated (launch syntax and __shared__ declarations: scripts/cuda_emu_translate.py)
# and compiled by g++ with the emulator's header;
# tests/emu/*.cpp stand in for libcudart, libcublas(Lt) and libnccl. The host objects and the test objects
# are the ones `make test` builds. -fno-strict-aliasing: the kernels' 16-byte pack loads pun types, which
# nvcc allows and g++'s optimiser would not.
# `make test-emu EMU=build/emu-asan EMU_SAN=-fsanitize=address`: the kernels under AddressSanitizer, where
# every device allocation is a host allocation with red zones (compute-sanitizer's memcheck, roughly);
# EMU_SAN="-fsanitize=undefined -fno-sanitize-recover=undefined" also catches misaligned vector loads (a
# GPU's "misaligned address" fault) and integer overflow in index arithmetic.
EMU      := $(BUILD)/emu
EMU_SAN  ?=
EMU_CU   := $(filter %.cu,$(LIB_SRC))
EMU_OBJ  := $(addprefix $(EMU)/,$(addsuffix .o,$(basename $(EMU_CU)))) \
            $(addprefix $(EMU)/,$(addsuffix .o,$(basename $(wildcard tests/emu/*.cpp))))
EMU_SELF := $(addprefix $(EMU)/,$(addsuffix .cu.o,$(basename $(wildcard tests/emu/*.cu))))  # its own tests
# Host objects are shared with the real build, except the cuDNN attention, which the emulator compiles
# without cuDNN (it reports itself unsupported there, so the backend takes the cuBLAS path).
EMU_NATIVE := $(BUILD)/kernels/cuda/attention_cudnn.o
EMU_HOST := $(filter-out $(call obj,$(EMU_CU)) $(EMU_NATIVE),$(LIB_OBJ)) $(EMU)/kernels/cuda/attention_cudnn.o
EMU_CXXFLAGS := $(CXXFLAGS) -fno-strict-aliasing -Wno-unknown-pragmas \
                -Wno-sign-compare -Wno-uninitialized -Wno-maybe-uninitialized -Itests/emu/include $(EMU_SAN)
EMU_LDLIBS := $(EMU_SAN) -L$(OPENBLAS_LIB) -Wl,-rpath,$(OPENBLAS_LIB) -lopenblas -lpcre2-8 -fopenmp -lpthread $(MPI_LIBS)
# What runs under the emulator: every test that needs a GPU (the rest already ran in `make test`).
EMU_FILTER ?= Cuda*:*/Cuda*:DistNccl*:PlanBackendRuns.*Cuda*

.PRECIOUS: $(EMU)/%.cpp
$(EMU)/%.cpp: %.cu scripts/cuda_emu_translate.py
	@mkdir -p $(dir $@)
	python3 scripts/cuda_emu_translate.py $< $@

$(EMU)/kernels/cuda/attention_cudnn.o: kernels/cuda/attention_cudnn.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -DTUNE_CUDA_EMULATOR $(EMU_SAN) -c $< -o $@

$(EMU)/kernels/%.o: $(EMU)/kernels/%.cpp tests/emu/cuda_emu.h
	$(CXX) $(EMU_CXXFLAGS) -include tests/emu/cuda_emu.h -c $< -o $@

$(EMU)/tests/emu/%.o: tests/emu/%.cpp tests/emu/cuda_emu.h
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) $(NCCL_DEFS) -c $< -o $@

$(EMU)/tests/emu/%.cu.o: $(EMU)/tests/emu/%.cpp tests/emu/cuda_emu.h
	$(CXX) $(EMU_CXXFLAGS) -include tests/emu/cuda_emu.h -c $< -o $@

$(EMU)/libtune.a: $(EMU_HOST) $(EMU_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(EMU)/tune_tests_emu: $(call obj,$(TEST_SRC)) $(EMU_SELF) $(EMU)/libtune.a
	$(CXX) $^ -o $@ -lgtest $(EMU_LDLIBS)

# The tools linked the same way, in $(EMU)/bin: `build/emu/bin/train --device cuda` trains on the emulator.
EMU_TOOLS := $(addprefix $(EMU)/,$(TOOLS))
define emu_tool_rule
$(EMU)/$(1): $(call obj,$(filter %/main_$(notdir $(1)).cpp,$(TOOL_SRC))) $(EMU)/libtune.a
	@mkdir -p $(EMU)/bin
	$$(CXX) $$^ -o $$@ $$(EMU_LDLIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call emu_tool_rule,$(t))))

# Twice: threads in order, then each block's threads last to first (CUDA_EMU_ORDER, see the runtime), which
# turns a missing barrier into a wrong answer one way or the other, and the same for streams (the higher-priority
# one first, then the lower: a missing event between them reads unwritten memory); the second pass leaves out the
# gpt2-124M-sized tests, whose kernels are the same as the small ones'.
.PHONY: test-emu
test-emu: $(EMU)/tune_tests_emu $(TOOLS) $(EMU_TOOLS)
	TUNE_TEST_BIN=$(EMU)/bin ./$(EMU)/tune_tests_emu --gtest_filter='$(EMU_FILTER)'
	CUDA_EMU_ORDER=reverse TUNE_TEST_BIN=$(EMU)/bin ./$(EMU)/tune_tests_emu --gtest_filter='$(EMU_FILTER):-*Gpt2_124M*'

# ---- Fuzzing (tests/fuzz/targets.h): every reader of input from outside, under libFuzzer, ASan and UBSan ----
# `make fuzz` fuzzes each of FUZZ_TARGETS for FUZZ_SECONDS from its seeds (written by the program's own writers)
# and tests/fuzz/regressions/<target>/, keeps what it finds in build/fuzz/corpus/<target>/ (a later run goes on
# from there), and leaves an input that breaks a reader as build/fuzz/crash-<target>-*; it fails when one broke in
# this run.
# Copy such an input into tests/fuzz/regressions/<target>/ with the fix: `make test` replays them all.
# Needs clang with its libFuzzer runtime and OpenMP (Debian 12: clang libclang-rt-14-dev libomp-dev). The library's
# C++ files are compiled again into build/fuzz/ with coverage and the sanitizers; the CUDA objects (and the cuDNN
# frontend's glue) are those `make` builds, which read no input.
FUZZ         := $(BUILD)/fuzz
FUZZ_CXX     ?= clang++
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safetensors checkpoint weights hf_config hf_index shard loader tokenizer vocab jsonl prepare \
                train_args choices metrics fisher roll_call
FUZZ_SRC     := $(filter-out kernels/cuda/attention_cudnn.cpp,$(filter %.cpp,$(LIB_SRC)))
FUZZ_LIB_OBJ := $(addprefix $(FUZZ)/,$(addsuffix .o,$(basename $(FUZZ_SRC)))) \
                $(call obj,kernels/cuda/attention_cudnn.cpp $(filter %.cu,$(LIB_SRC)))
$(FUZZ)/train/dist_mpi.o: FUZZ_DEFS := $(MPI_DEFS)
$(FUZZ)/train/dist_nccl.o: FUZZ_DEFS := $(NCCL_DEFS)
$(FUZZ)/train/dist_mpi.o $(FUZZ)/train/dist_nccl.o: $(DIST_STAMP)

.PHONY: fuzz-needs-clang
fuzz-needs-clang:
	@command -v $(FUZZ_CXX) >/dev/null || { echo "make fuzz: no $(FUZZ_CXX); install clang (Debian 12: clang libclang-rt-14-dev libomp-dev) or set FUZZ_CXX"; exit 1; }

$(FUZZ)/%.o: %.cpp | fuzz-needs-clang
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) -std=c++17 -O1 -g -fopenmp $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(FUZZ_DEFS) $(INCLUDES) -MMD -MP -c $< -o $@

$(FUZZ)/libtune.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ)/fuzz: $(FUZZ)/tests/fuzz/fuzz_main.o $(FUZZ)/tests/fuzz/targets.o $(FUZZ)/libtune.a
	$(FUZZ_CXX) $(FUZZ_SAN) -fsanitize=fuzzer $^ -o $@ $(LDLIBS)

fuzz: $(FUZZ)/fuzz
	@failed=; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ)/corpus/$$t && FUZZ_TARGET=$$t FUZZ_SEEDS_TO=$(FUZZ)/corpus/$$t ./$(FUZZ)/fuzz || exit 1; \
	    regressions=tests/fuzz/regressions/$$t; [ -d $$regressions ] || regressions=; \
	    echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	    FUZZ_TARGET=$$t ./$(FUZZ)/fuzz $(FUZZ)/corpus/$$t $$regressions -max_total_time=$(FUZZ_SECONDS) -timeout=20 \
	        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix=$(FUZZ)/crash-$$t- 2>$(FUZZ)/$$t.log \
	        || failed="$$failed $$t"; \
	    grep -E '^(stat::number_of_executed_units|stat::new_units_added|SUMMARY)' $(FUZZ)/$$t.log; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: a reader broke in:$$failed (logs: $(FUZZ)/<target>.log)"; exit 1; fi

clean:
	rm -rf $(BUILD) bin

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
