#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU (on one H200 it stops within 6 minutes):
#   1. build, or unpack a carried build: build/device/bundle.tar.xz from `make device-bundle`
#      (scripts/device_bundle.sh) holds the programs and the libraries a machine without this project's build
#      packages lacks; it is used when its sources hash matches the sources here (else the script builds, and
#      falls back to the bundle when that fails). Building needs the packages of README.md; the cuDNN frontend's
#      headers come from pip or from build/cudnn_frontend, which `make cudnn-frontend-copy` fills,
#   2. every GPU test (the CUDA suites against the CPU reference, the cuDNN graph check, the planned memory map
#      against the real one; the CPU-only suites run in CI), the one-rank NCCL path of data parallelism (every
#      collective), and Hugging Face transformers loading our export (PyTorch is there, not in CI),
#   3. compute-sanitizer memcheck, racecheck, initcheck and synccheck over the kernel tests (a filtered gtest
#      run) and memcheck over one training step (and one on --windows isolated),
#   4. GPT-2 124M training throughput: bin/train --device cuda --precision bf16 --batch 32 --seq 1024 on a
#      synthetic shard, against bench/pytorch_baseline.py (PyTorch, bf16 autocast, fused AdamW, compile, SDPA),
#   5. the kernel benchmarks (build/bench/bench_*), activation recomputation's memory and time for GPT-2 XL
#      and 124M (bench_recompute), the one-rank NCCL step with and without overlap, the GPT-2 run with the
#      cuBLAS attention, and the fine-tuning methods table on a small model (bench_finetune_methods), in that
#      order,
# and prints a compact table last. Every stage runs under a timeout and its exit status is recorded; the
# script never stops early and never hangs: stages are cut to fit GPU_CHECK_BUDGET (345 s by default, so the
# whole script stays under 6 minutes; a second call with GPU_CHECK_STAGES runs what was cut).
# Exit status: 0 when every stage that ran passed.
#
#   scripts/gpu_check.sh [LOG_DIR]      (default: $OUT when set, else ./gpu_check_out)
#   This project's H200 (device tool): `make device-bundle` here, then
#   run(command="scripts/gpu_check.sh", carry=["build/device", "build/cudnn_frontend"]).
#   GPU_CHECK_STAGES=build,recompute,methods scripts/gpu_check.sh   only these stages (shell patterns:
#                                       bench_*); a second call finishes what the budget cut from a first
#   GPU_CHECK_SKIP=racecheck,initcheck  every stage but these
# Whole log: LOG_DIR/gpu_check.log; per-stage logs and JSON results in LOG_DIR/stages/. When LOG_DIR is the
# device tool's $OUT (which brings back at most 8 files), the stage files live outside it and are packed into
# LOG_DIR/stages.tar.gz after every stage, so a call cut short still brings back what ran.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
LOG_DIR=${1:-${OUT:-$ROOT/gpu_check_out}}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
LOG="$LOG_DIR/gpu_check.log"
: >"$LOG"
WORK=$(mktemp -d /tmp/tune_gpu_check.XXXXXX)  # shards and run directories: large, not worth copying back
PACK=""  # set: the stage files are packed into LOG_DIR/stages.tar.gz after every stage
if [ -n "${OUT:-}" ] && [ "$LOG_DIR" = "$(cd "$OUT" 2>/dev/null && pwd)" ]; then
    SD="$WORK/stages"
    PACK="$LOG_DIR/stages.tar.gz"
else
    SD="$LOG_DIR/stages"
fi
rm -rf "$LOG_DIR/stages" "$LOG_DIR/stages.tar.gz"  # no stale results from a previous run
mkdir -p "$SD"
pack() {
    [ -n "$PACK" ] || return 0
    tar -C "$(dirname "$SD")" -czf "$PACK.tmp" stages 2>/dev/null && mv -f "$PACK.tmp" "$PACK"
}
T_START=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }

NAMES=()
RESULTS=()
TIMES=()
# stage NAME LIMIT_SECONDS COMMAND: runs COMMAND (a bash string) with a timeout, output to the log and to
# LOG_DIR/stages/NAME.log; records pass / FAIL(rc) / TIMEOUT / skip (rc 77).
# A stage never runs past the whole script's budget (GPU_CHECK_BUDGET seconds, default 345): its limit is cut
# to what is left, and with under 10 s left it is recorded as skipped without running.
BUDGET=${GPU_CHECK_BUDGET:-345}
# selected NAME: whether GPU_CHECK_STAGES (default: every stage) names the stage and GPU_CHECK_SKIP does not.
selected() {
    local p skip=() only=()
    IFS=, read -ra skip <<<"${GPU_CHECK_SKIP:-}"
    IFS=, read -ra only <<<"${GPU_CHECK_STAGES:-}"
    for p in "${skip[@]}"; do [[ $1 == $p ]] && return 1; done  # unquoted right side: a shell pattern
    [ ${#only[@]} -eq 0 ] && return 0
    for p in "${only[@]}"; do [[ $1 == $p ]] && return 0; done
    return 1
}
record() {
    NAMES+=("$1")
    RESULTS+=("$2")
    TIMES+=("$3")
    pack
}
result_of() {
    case $1 in
        0) echo pass ;;
        77) echo skip ;;
        124 | 137) echo TIMEOUT ;;
        *) echo "FAIL($1)" ;;
    esac
}
# limit_for NAME LIMIT: sets LIMIT to the limit cut to the budget left, or records the stage as skipped and
# fails (in this shell, not in a $(...): it records).
limit_for() {
    local left
    if ! selected "$1"; then
        record "$1" "skip(sel)" 0
        return 1
    fi
    if [ -n "${HALT:-}" ]; then
        record "$1" "skip(halt)" 0
        return 1
    fi
    left=$((BUDGET - ($(date +%s) - T_START)))
    if [ "$left" -lt 10 ]; then
        say "=== [$1] skipped: the ${BUDGET}s budget is spent"
        record "$1" "skip(time)" 0
        return 1
    fi
    LIMIT=$(($2 < left ? $2 : left))
}
stage() {
    local name=$1 cmd=$3 t0 rc result limit
    limit_for "$name" "$2" || return 0
    limit=$LIMIT
    t0=$(date +%s)
    say ""
    say "=== [$name] (limit ${limit}s) $cmd"
    timeout --kill-after=15 "$limit" bash -c "$cmd" 2>&1 | tee "$SD/$name.log" >>"$LOG"
    rc=${PIPESTATUS[0]}
    result=$(result_of "$rc")
    record "$name" "$result" $(($(date +%s) - t0))
    say "=== [$name] $result in $(($(date +%s) - t0))s"
}
# stage_bg NAME LIMIT COMMAND: like stage, but started in the background; stage_wait collects every background
# stage (its log is appended to the whole log then). For checks that are bound by the host, like
# compute-sanitizer: several at once on 16 cores take about the time of the slowest.
BG_NAMES=()
BG_PIDS=()
stage_bg() {
    local name=$1 cmd=$3 limit
    limit_for "$name" "$2" || return 0
    limit=$LIMIT
    say "=== [$name] (background, limit ${limit}s) $cmd"
    (
        t0=$(date +%s)
        timeout --kill-after=15 "$limit" bash -c "$cmd" >"$SD/$name.log" 2>&1
        echo "$? $(($(date +%s) - t0))" >"$WORK/bg_$name"
    ) &
    BG_PIDS+=($!)
    BG_NAMES+=("$name")
}
stage_wait() {
    local name rc secs result
    [ ${#BG_PIDS[@]} -gt 0 ] && wait "${BG_PIDS[@]}"
    for name in "${BG_NAMES[@]}"; do
        read -r rc secs <"$WORK/bg_$name" 2>/dev/null || { rc=1; secs=0; }
        result=$(result_of "$rc")
        cat "$SD/$name.log" >>"$LOG"
        record "$name" "$result" "$secs"
        say "=== [$name] $result in ${secs}s"
    done
    BG_NAMES=()
    BG_PIDS=()
}

# ---- environment ----
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
NPROC=$(nproc)
stage env 30 "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -2; \
  grep -h PRETTY_NAME /etc/os-release; ldd --version | head -1; \
  python3 -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version())' 2>/dev/null || echo 'no torch'; \
  python3 -m pip list 2>/dev/null | grep -iE '^nvidia-(cudnn|nccl)' || echo 'no pip cuDNN/NCCL wheels'"

# ---- 1. build, or the carried bundle ----
source scripts/device_env.sh
build_here() {
    stage build 240 "make -j$NPROC WERROR=0 all build/tests/tune_tests bench"  # all: the tool tests run bin/*
    # A cuDNN frontend that does not compile against this machine's cuDNN headers must not cost every other
    # check: build once more without it (its tests then fail, under TUNE_REQUIRE_CUDNN, and say why).
    if [ "${RESULTS[${#RESULTS[@]} - 1]}" != pass ] && [ "${RESULTS[${#RESULTS[@]} - 1]}" != "skip(sel)" ]; then
        stage build_without_cudnn 200 "make -j$NPROC WERROR=0 CUDNN_FE_INC=/nonexistent all build/tests/tune_tests bench"
    fi
}
build_or_unpack build_here
grep -q TUNE_HAVE_CUDNN_FE build/dist-config.stamp 2>/dev/null ||
    say "WARNING: built without the cuDNN frontend headers, so without cuDNN attention (carry build/cudnn_frontend)"
HAVE_NCCL=$(grep -q TUNE_HAVE_NCCL build/dist-config.stamp 2>/dev/null && echo 1)

ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}  # PyTorch runs with what it was given, not with our libraries
set_library_path

# Preflight: the programs start (every shared library found, this glibc new enough) and see the GPU. If not,
# every later stage would fail in seconds or, worse, skip its CUDA tests and pass: stop here and say why.
# TUNE_REQUIRE_GPU: from here on, a test binary that sees no GPU fails instead of skipping every CUDA test.
export TUNE_REQUIRE_GPU=1
stage preflight 60 "bin/train --help >/dev/null && ./build/tests/tune_tests --gtest_list_tests >/dev/null && \
  ./build/tests/tune_tests --gtest_filter='CudaDevice.NoDeviceAlwaysSaysWhy'"
if [ "${RESULTS[${#RESULTS[@]} - 1]}" != pass ] && [ "${RESULTS[${#RESULTS[@]} - 1]}" != "skip(sel)" ]; then
    say "preflight failed: the programs cannot start or see no GPU (its log above says which); the rest is skipped"
    HALT=1
fi
# The cuDNN version our programs load, and each attention graph's build time (in the stage logs and summary).
export TUNE_CUDNN_LOG=1

# ---- 2. tests ----
# The tests that need the GPU (the CPU-only ones pass in CI and would only spend device time here): every
# CUDA suite and the cuDNN graph check (NCCL with one rank is the next stage). GPU_CHECK_TESTS='*' runs them all.
# TUNE_REQUIRE_CUDNN: here a cuDNN that cannot run fails its tests instead of skipping them.
# PlanBackend*: the planned memory map against the real run's arenas, cuDNN's fused attention included.
stage tests 240 "TUNE_REQUIRE_CUDNN=1 ./build/tests/tune_tests \
  --gtest_filter='${GPU_CHECK_TESTS:-Cuda*:*/Cuda*:Cudnn*:PlanBackend*}' \
  --gtest_output=xml:$SD/tests.xml"
# Data parallelism on one GPU: every NCCL collective with one rank, and one-rank NCCL training (ZeRO-0, 1, 2)
# byte-identical to the plain run (its own stage, so not in `tests` too). Several GPUs: scripts/multi_gpu_check.sh.
stage nccl_one_rank 60 "./build/tests/tune_tests --gtest_filter='DistNccl.*' 2>&1 | tee $WORK/nccl.txt; \
  rc=\${PIPESTATUS[0]}; [ \$rc -ne 0 ] && exit \$rc; grep -q 'SKIPPED \\]' $WORK/nccl.txt && exit 77; exit 0"

# Hugging Face transformers loads our export and gives our logits (PyTorch is here, not in CI): run with the
# Python PyTorch came with, not our libraries' path.
stage hf_export 60 "TUNE_TEST_PYTHON=\"env LD_LIBRARY_PATH='$ORIG_LD_LIBRARY_PATH' python3\" ./build/tests/tune_tests \
  --gtest_filter='ExportHfPython*' 2>&1 | tee $WORK/hf.txt; rc=\${PIPESTATUS[0]}; [ \$rc -ne 0 ] && exit \$rc; \
  grep -q 'SKIPPED \\]' $WORK/hf.txt && exit 77; exit 0"

# A synthetic shard for the training stages.
timeout 60 python3 - "$WORK/synthetic.bin" <<'PY' || say "could not write the synthetic shard"
# A TUNETOK1 shard (data/shard.h) of 4M random GPT-2 token ids, 16-bit, no mask.
import struct, sys
n, V = 1 << 22, 50257
try:
    import numpy as np
    toks = np.random.default_rng(0).integers(0, V, size=n, dtype=np.uint16).tobytes()
except ImportError:
    import array, random
    rng = random.Random(0)
    toks = array.array("H", (rng.randrange(V) for _ in range(n))).tobytes()
with open(sys.argv[1], "wb") as f:
    f.write(b"TUNETOK1" + struct.pack("<IIQII", 1, 2, n, 0, V))
    f.write(toks)
PY

# ---- 3. compute-sanitizer (correctness first: before the measurements, so a short budget cuts those) ----
SAN=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer "$CUDA_HOME"/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
# --report-api-errors no: the libraries' own probing calls (cuDNN, cuBLAS, the driver's cuGetProcAddress) fail
# by design and would count as errors; every call of ours is checked by the program itself.
SAN_ARGS="--error-exitcode 1 --print-limit 20 --report-api-errors no"
# The kernel tests, small shapes, fp32 and bf16; memcheck also over cuDNN's attention (not the gpt2-sized split
# backward check, whose cuBLAS reference would take minutes under memcheck). The other checkers look
# at our own kernels only (TUNE_CUDA_ATTENTION=matmul: no cuDNN kernels, whose internals they may misread), and
# racecheck (slow on cuBLAS's shared-memory kernels) only at the layers with shared memory or shuffles of their own
# (the matmul backward's for its bias-gradient partials).
KERNEL_TESTS='Dtypes/CudaOps.*/f32:Dtypes/CudaOps.*/bf16:Dtypes/CudaFinetune.*/f32:Dtypes/CudaFinetune.*/bf16'
SMEM_TESTS='Dtypes/CudaOps.MatmulBackwardWrites*/bf16:Dtypes/CudaOps.LayerNorm*/bf16:Dtypes/CudaOps.Encoder*/bf16:Dtypes/CudaOps.CrossEntropy*/bf16:Dtypes/CudaOps.SumSquares*/bf16:Dtypes/CudaOps.Attention*/bf16:Dtypes/CudaFinetune.*/bf16'
OWN=TUNE_CUDA_ATTENTION=matmul
if [ -n "$SAN" ]; then
    # All five at once (each its own process; compute-sanitizer is bound by the host), then collected.
    stage_bg memcheck 90 "$SAN --tool memcheck $SAN_ARGS ./build/tests/tune_tests --gtest_filter='$KERNEL_TESTS:Paths/CudaAttentionPath.*/bf16_*-*_B50_T1024*'"
    stage_bg racecheck 90 "$OWN $SAN --tool racecheck $SAN_ARGS ./build/tests/tune_tests --gtest_filter='$SMEM_TESTS'"
    stage_bg initcheck 90 "$OWN $SAN --tool initcheck $SAN_ARGS ./build/tests/tune_tests --gtest_filter='$KERNEL_TESTS'"
    stage_bg synccheck 90 "$OWN $SAN --tool synccheck $SAN_ARGS ./build/tests/tune_tests --gtest_filter='$KERNEL_TESTS'"
    stage_bg memcheck_train_step 90 "$SAN --tool memcheck $SAN_ARGS bin/train --device cuda --precision bf16 --model tiny \
      --batch 2 --seq 64 --steps 1 --train-data $WORK/synthetic.bin --val-every 0 --out $WORK/run_sanitized"
    # The same step on isolated windows: positions, the document mask (matmul attention) and dwpe by position.
    stage_bg memcheck_isolated_step 90 "$SAN --tool memcheck $SAN_ARGS bin/train --device cuda --precision bf16 \
      --model tiny --batch 2 --seq 64 --steps 1 --train-data $WORK/synthetic.bin --windows isolated --val-every 0 \
      --out $WORK/run_sanitized_isolated"
    stage_wait
else
    stage sanitizers 5 "echo 'compute-sanitizer not found (looked on PATH and under $CUDA_HOME)'; exit 77"
fi

# ---- 4. training throughput: tune.cu vs PyTorch ----
MEM_BASE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1)
# sampled NAME LIMIT COMMAND: a stage with the device memory sampled every 250 ms into mem_NAME.txt (the whole
# process, CUDA context and allocator caches included, the same way for tune.cu and PyTorch).
sampled() {
    local pid
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 250 >"$WORK/mem_$1.txt" 2>/dev/null &
    pid=$!
    stage "$1" "$2" "$3"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
# train_gpt2 NAME [OPTIONS]: the GPT-2 124M run.
train_gpt2() {
    sampled "$1" 150 "bin/train --device cuda --precision bf16 --model gpt2 --batch 32 --seq 1024 --steps 12 \
      --train-data $WORK/synthetic.bin --lr 1e-4 --warmup 0 --val-every 0 ${2:-} --out ''"
}
# Step 6 profiled (--profile-step): each launcher's GPU time under the model's ranges, the measured split of the
# step that the kernel benchmarks could only estimate (docs/scaling.md). Its events cost the host a few
# microseconds a launch; the median tokens/s below is that of the other steps.
train_gpt2 train_gpt2 "--profile-step 6"
# Exit 77 (skip) when PyTorch or its GPU is missing; a crash keeps its own status.
export PYTHONUNBUFFERED=1  # a stage cut short keeps what Python printed
sampled pytorch_gpt2 150 "LD_LIBRARY_PATH='$ORIG_LD_LIBRARY_PATH' python3 bench/pytorch_baseline.py --batch 32 --seq 1024 --steps 12 --json $SD/pytorch.json \
  || exit \$?; test -s $SD/pytorch.json || exit 77"

# ---- 5. kernel benchmarks, recomputation, overlap, the matmul attention run, the methods table ----
# In the order the open issues need them, so a budget that runs out cuts the least needed (a second call with
# GPU_CHECK_STAGES finishes the rest).
# The kernel benchmarks first: a few seconds each, and what says whether a rewritten kernel met its prediction.
for b in build/bench/bench_*; do
    [ -x "$b" ] || continue
    n=$(basename "$b")
    # experiments (not Google Benchmarks) run elsewhere; the CPU benchmarks are measured on the CPU machine
    case $n in bench_recompute | bench_finetune_methods | bench_tokenizer | bench_train_cpu) continue ;; esac
    stage "$n" 60 "$b --benchmark_out=$SD/$n.json --benchmark_out_format=json"
done
# Activation recomputation: bytes per token, memory in use, largest batch and step time per mode (docs/scaling.md).
# One stage per model: gpt2-xl's largest-batch tries take about 15 s each near B = 480 under `full`, and the first
# H200 run (2026-12-04) lost that row to a limit shared with gpt2's. --batch-slack (2%) bounds the tries.
stage recompute_xl 150 "build/bench/bench_recompute --models gpt2-xl --json $SD/recompute_xl.json"
stage recompute 90 "build/bench/bench_recompute --models gpt2 --json $SD/recompute.json"
# Data parallelism's overlap on one GPU (through NCCL with one rank): the step with the per-layer gradient
# reduction overlapping backward, and with every bucket reduced after backward (docs/scaling.md).
for ov in on off; do
    stage "overlap_$ov" 60 "[ -n '$HAVE_NCCL' ] || { echo 'built without NCCL (no nccl.h): skipped'; exit 77; }
      TUNE_NCCL_ONE_RANK=1 bin/train --device cuda --precision bf16 --model gpt2 --batch 16 \
      --seq 1024 --steps 10 --train-data $WORK/synthetic.bin --lr 1e-4 --warmup 0 --val-every 0 --comm-overlap $ov \
      --out ''"
done
# The GPT-2 run with the cuBLAS attention, which writes the T x T scores out and keeps the probabilities
# (the default above is cuDNN's fused attention where it runs: its log says which ran).
train_gpt2 train_gpt2_matmul "--attention matmul"
# Every fine-tuning method on the GPU, small model (the CPU tables in docs/finetuning.md use the tiny one), on
# document windows, where the CPU table found the methods apart from the seeds' noise.
# results.json is rewritten after every method: what finished comes back even when the stage is cut (timeout's
# SIGTERM reaches this shell too, whose trap copies it).
KEEP_METHODS="cp $WORK/methods/results.json $SD/methods.json 2>/dev/null"
stage methods 90 "trap '$KEEP_METHODS; exit 124' TERM; build/bench/bench_finetune_methods --device cuda \
  --precision bf16 --model small --steps 300 --seeds 1 --windows documents --doc '' --out $WORK/methods \
  --machine 'one H200'; rc=\$?; \
  $KEEP_METHODS; exit \$rc"

# ---- summary ----
tok_s() {  # median tokens/s of ./train's progress lines after the first two (warm-up) steps
    grep -o '[0-9]* tok/s' "$1" 2>/dev/null | awk 'NR > 2 {print $1}' | sort -n |
        awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "n/a"}'
}
peak_gib() {  # the highest device memory sampled during a sampled stage, less what was in use before
    awk -v base="${MEM_BASE:-0}" 'BEGIN {m = 0} {if ($1 > m) m = $1} END {if (m) printf "%.1f", (m - base) / 1024; else print "n/a"}' \
        "$WORK/mem_$1.txt" 2>/dev/null || echo n/a
}
TUNE_TOKS=$(tok_s "$SD/train_gpt2.log")
TUNE_MEM=$(peak_gib train_gpt2)
MM_TOKS=$(tok_s "$SD/train_gpt2_matmul.log")
MM_MEM=$(peak_gib train_gpt2_matmul)
TUNE_ATT=$(grep -o 'attention [a-z]* ([^)]*)' "$SD/train_gpt2.log" 2>/dev/null | head -1)
PT_TOKS=$(python3 -c "import json; print(json.load(open('$SD/pytorch.json')).get('tokens_per_s', 'n/a'))" 2>/dev/null || echo n/a)
PT_MEM=$(python3 -c "import json; print(json.load(open('$SD/pytorch.json')).get('peak_mem_gib', 'n/a'))" 2>/dev/null || echo n/a)
PT_SMI=$(peak_gib pytorch_gpt2)
TEST_LINE=$(grep -h '^tests:' "$SD/tests.log" 2>/dev/null | tail -1)
FAILED_TESTS=$(grep -h '^\[  FAILED  \] .*\.' "$SD/tests.log" "$SD/nccl_one_rank.log" 2>/dev/null | sed 's/\[  FAILED  \] //' | sort -u | head -10)

{
    echo ""
    echo "================ gpu_check summary ($(($(date +%s) - T_START))s, logs in $LOG_DIR)"
    printf '%-24s %-12s %6s\n' stage result seconds
    for i in "${!NAMES[@]}"; do printf '%-24s %-12s %6s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"; done
    echo "${TEST_LINE:-tests: n/a}"
    grep -h -m1 '^cuDNN attention: cuDNN' "$SD"/*.log 2>/dev/null | head -1
    cat "$SD"/*.log 2>/dev/null | awk '/^cuDNN attention: .* graph .* in [0-9]+ ms$/ {t += $(NF - 1); if ($(NF - 1) > m) m = $(NF - 1);
        if (/: built in /) n++; else f++}
        END {if (n + f) printf "cuDNN graph builds: %d built, %d refused, %.1f s in all, the slowest %d ms\n", n, f, t / 1000, m}'
    [ -n "$FAILED_TESTS" ] && echo "failed tests:" && echo "$FAILED_TESTS" | sed 's/^/  /'
    for t in memcheck racecheck initcheck synccheck memcheck_train_step memcheck_isolated_step; do
        [ -s "$SD/$t.log" ] && echo "$t: $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$SD/$t.log" | tail -1)"
    done
    cut=()
    for i in "${!NAMES[@]}"; do [ "${RESULTS[$i]}" = "skip(time)" ] && cut+=("${NAMES[$i]}"); done
    [ ${#cut[@]} -gt 0 ] &&
        echo "cut by the budget; to run them: GPU_CHECK_STAGES=build,preflight,$(IFS=,; echo "${cut[*]}")" \
            "scripts/gpu_check.sh"
    echo "GPT-2 124M, B=32 T=1024, bf16:"
    printf '  %-28s %12s tok/s   peak %s GiB (nvidia-smi, whole process; %s)\n' "tune.cu bin/train" "$TUNE_TOKS" \
        "$TUNE_MEM" "${TUNE_ATT:-attention n/a}"
    printf '  %-28s %12s tok/s   peak %s GiB\n' "  --attention matmul" "$MM_TOKS" "$MM_MEM"
    printf '  %-28s %12s tok/s   peak %s GiB (nvidia-smi, whole process; torch max allocated %s GiB)\n' \
        "PyTorch compile+SDPA" "$PT_TOKS" "$PT_SMI" "$PT_MEM"
    if [[ "$TUNE_TOKS" =~ ^[0-9.]+$ && "$PT_TOKS" =~ ^[0-9.]+$ ]]; then
        awk -v a="$TUNE_TOKS" -v b="$PT_TOKS" 'BEGIN {printf "  tune.cu / PyTorch: tokens/s %.2f", a / b}'
        if [[ "$TUNE_MEM" =~ ^[0-9.]+$ && "$PT_SMI" =~ ^[0-9.]+$ ]]; then
            awk -v a="$TUNE_MEM" -v b="$PT_SMI" 'BEGIN {printf ", peak memory %.2f", a / b}'
        fi
        echo
    fi
    # bin/train's --profile-step table: its header, the 25 largest rows, the rest, and what no launcher covers.
    sed -n '/^profile of step/,/^ *-\?[0-9.]* *-\?[0-9.]*% *- /p' "$SD/train_gpt2.log" 2>/dev/null | sed 's/^/  /'
    echo "one-rank NCCL, GPT-2 124M B=16 T=1024 bf16: overlap on $(tok_s "$SD/overlap_on.log") tok/s," \
        "off $(tok_s "$SD/overlap_off.log") tok/s"
    for j in "$SD/recompute.json" "$SD/recompute_xl.json"; do
        [ -s "$j" ] || continue
        echo "activation recomputation (bf16, T=1024):"
        python3 -c "import json; print(json.load(open('$j'))['table'])" 2>/dev/null | sed 's/^/  /'
    done
    if [ -s "$SD/methods.json" ]; then
        echo "fine-tuning methods (small model, bf16, 300 steps, document windows): method" \
             "acc-after-<|endoftext|> acc-prompt-alone base-loss-after ms/step"
        python3 -c "
import json
for r in json.load(open('$SD/methods.json'))['results']:
    s = r['per_seed']
    print(f\"  {r['method']:8s} {100 * s['accuracy_after_eot'][0]:5.0f}% {100 * s['accuracy'][0]:5.0f}%\"
          f\" {s['base_loss_after'][0]:7.3f} {s['ms_per_step'][0]:8.1f}\")" 2>/dev/null
    fi
    echo "kernel benchmarks (TB/s, %HBM, TFLOP/s, %peak):"
    for j in "$SD"/bench_*.json; do
        [ -s "$j" ] || continue
        python3 - "$j" <<'PY' 2>/dev/null
import json, os, sys
name = os.path.basename(sys.argv[1])[:-5]
try:
    rows = json.load(open(sys.argv[1])).get("benchmarks", [])
except ValueError:  # Google Benchmark closes its JSON at exit: a program cut short leaves it open
    print(f"  {name}: incomplete results (timed out or crashed): see stages/{name}.log")
    sys.exit(0)
errors = [b for b in rows if b.get("error_occurred")]
if rows and len(errors) == len(rows):
    print(f"  {name}: all skipped ({errors[0].get('error_message', '')})")
for b in rows:
    if len(errors) == len(rows):
        break
    name = b["name"].replace("/min_time:0.200", "").replace("/manual_time", "")
    if b.get("error_occurred"):
        print(f"  {name[:64]:64s} ERROR {b.get('error_message', '')}")
        continue
    cols = [f"{k} {b[k]:.1f}" for k in ("TB/s", "%HBM", "TFLOP/s", "%peak") if k in b]
    print(f"  {name[:64]:64s} {b['real_time']:9.1f} {b['time_unit']}  " + "  ".join(cols))
PY
    done
} | tee -a "$LOG"

pack
rm -rf "$WORK"
for r in "${RESULTS[@]}"; do
    case $r in pass | skip | carried | "skip(time)" | "skip(sel)") ;; *) exit 1 ;; esac
done
exit 0
