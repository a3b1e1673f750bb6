#!/usr/bin/env bash
# Data parallelism on a machine with several GPUs (NCCL), the check that one GPU cannot run. Each stage runs
# under a timeout; a table comes last. Exit status 0 when every stage passed.
#   1. build;
#   2. equivalence: mpirun -np N with --batch B against one GPU with --batch N*B (fp32): losses within
#      tolerance, every rank's weights identical (the replica hash in metrics.jsonl);
#   3. --zero 1 against --zero 0 (losses within tolerance: NCCL's reduce-scatter and all-reduce may add in
#      different orders), --zero 2 against --zero 1, and bf16 with --zero 1 and 2;
#   4. the launch without mpirun: RANK/WORLD_SIZE/LOCAL_RANK with a rendezvous file, and with MASTER_ADDR/PORT;
#   5. resume: N ranks halted and resumed (same losses), and N ranks -> 1 rank (optimizer shards
#      re-partitioned, data position kept) against one GPU that changes its batch at the same step;
#   6. failure: a rank that hangs (--comm-timeout 20) or dies must end the job within a minute, named; on
#      NCCL also without mpirun to kill the rest (the roll call, train/roll_call.h);
#   7. throughput: GPT-2 124M bf16 on 1 and N GPUs, tokens/s and scaling efficiency.
#
#   scripts/multi_gpu_check.sh [LOG_DIR]        (default: $OUT when set, else ./multi_gpu_check_out)
#   NGPU=4 scripts/multi_gpu_check.sh           use 4 of the GPUs (default: all that nvidia-smi lists)
#   DEVICE=cpu NGPU=2 scripts/multi_gpu_check.sh   the same plumbing on the cpu backend (MPI), no GPU needed;
#                                               stages that need NCCL are skipped
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
LOG_DIR=${1:-${OUT:-$ROOT/multi_gpu_check_out}}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
LOG="$LOG_DIR/multi_gpu_check.log"
: >"$LOG"
WORK=$(mktemp -d /tmp/tune_multi_gpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
DEVICE=${DEVICE:-cuda}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
MPIRUN="mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none"
[ "$DEVICE" = cpu ] && MPIRUN="$MPIRUN -x OMP_NUM_THREADS=1"

say() { echo "$*" | tee -a "$LOG"; }
NAMES=()
RESULTS=()
stage() {  # stage NAME LIMIT COMMAND: pass / FAIL(rc) / TIMEOUT / skip (rc 77)
    local name=$1 limit=$2 cmd=$3 rc result t0
    t0=$(date +%s)
    say ""
    say "=== [$name] (limit ${limit}s) $cmd"
    timeout --kill-after=10 "$limit" bash -c "$cmd" 2>&1 | tee "$LOG_DIR/$name.log" >>"$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in 0) result=pass ;; 77) result=skip ;; 124 | 137) result=TIMEOUT ;; *) result="FAIL($rc)" ;; esac
    NAMES+=("$name")
    RESULTS+=("$result $(($(date +%s) - t0))s")
    say "=== [$name] $result"
}

if [ "$NGPU" -lt 2 ]; then
    say "multi_gpu_check: needs at least 2 GPUs (found $NGPU); run scripts/gpu_check.sh on one"
    exit 77
fi
N=$NGPU

# The programs: built here, or the bundle `make device-bundle` made elsewhere (scripts/device_env.sh).
record() { NAMES+=("$1"); RESULTS+=("$2 ${3}s"); }
selected() { return 0; }
build_here() { stage build 600 "make -j$(nproc) WERROR=0 all"; }
source scripts/device_env.sh
build_or_unpack build_here
set_library_path

# Several processes: mpirun where OpenMPI is installed. Without it (a GPU machine with no MPI), the same N
# processes through the environment launch (RANK/LOCAL_RANK/WORLD_SIZE and a rendezvous file), as Slurm would
# start them; the CPU backend's data parallelism needs MPI itself.
# par [-x NAME] ARGS: the command that runs bin/train ARGS on N ranks and fails if any rank fails; -x NAME
# passes the environment variable NAME to every rank (the environment launch passes the whole environment).
if command -v mpirun >/dev/null 2>&1; then
    par() {
        local x=""
        [ "$1" = -x ] && { x="-x $2"; shift 2; }
        echo "$MPIRUN $x -np $N bin/train $*"
    }
else
    [ "$DEVICE" = cpu ] && { say "multi_gpu_check: DEVICE=cpu needs mpirun (OpenMPI)"; exit 77; }
    say "no mpirun: the multi-process stages start their ranks through RANK/WORLD_SIZE and a rendezvous file"
    # The first rank to fail takes the others down, as mpirun (or srun --kill-on-bad-exit) would: a rank the
    # test hangs would otherwise outlive the job.
    par() {
        [ "$1" = -x ] && shift 2
        local f="$WORK/rdv.$RANDOM$RANDOM"
        # One ( ) group, so that `A && $(par ...) && B` chains on the ranks' result. After the first failure the
        # others get 10 s to stop on their own and say why (what dead_rank checks), then SIGKILL, because
        # bin/train takes SIGTERM as "finish this step", which a hung rank never does.
        echo "( rm -f $f; pids=(); for r in \$(seq 0 $((N - 1))); do TUNE_RENDEZVOUS_FILE=$f RANK=\$r LOCAL_RANK=\$r \
          WORLD_SIZE=$N bin/train $* & pids+=(\$!); done; fail=0; for p in \${pids[@]}; do \
          wait -n || { [ \$fail = 1 ] && continue; fail=1; for i in \$(seq 50); do \
          [ -n \"\$(jobs -rp)\" ] || break; sleep 0.2; done; kill -KILL \${pids[@]} 2>/dev/null; }; \
          done; [ \$fail = 0 ] )"
    }
fi

# A masked shard (loss on about half the tokens, in spans: ranks count different numbers of tokens) over a
# small vocabulary, and random GPT-2 tokens for the throughput runs. Every run starts from --model tiny's
# random initialisation with the default seed, so from the same weights.
python3 - "$WORK" <<'PY' || say "could not write the shards"
import array, random, struct, sys
d = sys.argv[1]
rng = random.Random(7)
toks, mask = [], []
while len(toks) < 200000:
    s, m = rng.randrange(37), 1 if rng.random() < 0.5 else 0
    for k in range(6):
        toks.append((s + k) % 37); mask.append(m)
def shard(path, t, m, V):
    with open(path, "wb") as f:
        f.write(b"TUNETOK1" + struct.pack("<IIQII", 1, 2, len(t), 1 if m else 0, V))
        f.write(array.array("H", t).tobytes())
        if m: f.write(bytes(m))
shard(d + "/train.bin", toks, mask, 37)
shard(d + "/val.bin", toks[:20000], None, 37)
shard(d + "/gpt2.bin", [rng.randrange(50257) for _ in range(1 << 22)], None, 50257)
PY

RUN="--device $DEVICE --model tiny --train-data $WORK/train.bin --val-data $WORK/val.bin --seq 32 --lr 1e-3 \
  --warmup 2 --val-every 5 --val-batches 2 --steps 10 --quiet"
B=4
COMPARE="python3 $ROOT/scripts/compare_runs.py"

stage equivalence 300 "bin/train $RUN --batch $((N * B)) --grad-accum 2 --out $WORK/one && \
  $(par $RUN --batch $B --grad-accum 2 --out $WORK/dp) && \
  $COMPARE $WORK/one $WORK/dp --loss-tol 1e-4 --ranks $N"
stage zero1 300 "$(par $RUN --batch $B --zero 1 --out $WORK/z1) && \
  $(par $RUN --batch $B --zero 0 --out $WORK/z0) && \
  $COMPARE $WORK/z0 $WORK/z1 --loss-tol 1e-5 --ranks $N"
# ZeRO-2 with one micro-batch per step takes ZeRO-1's sums: the same bytes. --model small has 4 blocks, so a
# gradient slot is taken again within one backward, after its reduce-scatter. With several micro-batches the
# sums are taken in another order (to rounding).
stage zero2 300 "$(par ${RUN/--model tiny/--model small} --batch $B --zero 1 --out $WORK/z1s) && \
  $(par ${RUN/--model tiny/--model small} --batch $B --zero 2 --out $WORK/z2) && \
  cmp $WORK/z1s/model.ckpt $WORK/z2/model.ckpt && $COMPARE $WORK/z1s $WORK/z2 --loss-tol 0 --ranks $N && \
  $(par $RUN --batch $B --zero 2 --grad-accum 2 --out $WORK/z2acc) && \
  $COMPARE $WORK/dp $WORK/z2acc --loss-tol 1e-4 --ranks $N"
if [ "$DEVICE" = cuda ]; then
    stage bf16_zero1 300 "$(par $RUN --precision bf16 --batch $B --zero 1 --out $WORK/bf16) && \
      $COMPARE $WORK/bf16 $WORK/bf16 --ranks $N"
    stage bf16_zero2 300 "$(par ${RUN/--model tiny/--model small} --precision bf16 --batch $B --zero 1 --out $WORK/bf16z1s) && \
      $(par ${RUN/--model tiny/--model small} --precision bf16 --batch $B --zero 2 --out $WORK/bf16z2) && \
      $COMPARE $WORK/bf16z1s $WORK/bf16z2 --loss-tol 1e-5 --ranks $N"
    # Without mpirun: one process per GPU, started as Slurm's srun or any launcher would.
    launch() {  # launch OUT_DIR: N processes with RANK/LOCAL_RANK/WORLD_SIZE, waited for
        echo "for r in \$(seq 0 $((N - 1))); do RANK=\$r LOCAL_RANK=\$r WORLD_SIZE=$N bin/train $RUN --batch $B \
          --grad-accum 2 --out $1 & done; fail=0; for p in \$(jobs -p); do wait \$p || fail=1; done; [ \$fail = 0 ]"
    }
    stage env_file 300 "rm -f $WORK/rdv.id; export TUNE_RENDEZVOUS_FILE=$WORK/rdv.id; $(launch "$WORK/envf") && \
      $COMPARE $WORK/one $WORK/envf --loss-tol 1e-4 --ranks $N"
    stage env_tcp 300 "export MASTER_ADDR=127.0.0.1 MASTER_PORT=29517; $(launch "$WORK/envt") && \
      $COMPARE $WORK/one $WORK/envt --loss-tol 1e-4 --ranks $N"
fi
# Halted at 5 and resumed with the same ranks: the losses of the uninterrupted run, exactly.
stage resume_same 300 "$(par $RUN --batch $B --zero 1 --halt-at 5 --out $WORK/half) && \
  cp $WORK/half/resume.ckpt $WORK/step5.ckpt && \
  $(par $RUN --batch $B --zero 1 --resume $WORK/step5.ckpt --out $WORK/half) && \
  $COMPARE $WORK/z1 $WORK/half --loss-tol 0 --ranks $N"
# The N-rank ZeRO-1 checkpoint resumed by one process with the combined batch: as one process all along.
stage resume_to_one 300 "bin/train $RUN --batch $((N * B)) --resume $WORK/step5.ckpt --out $WORK/to_one && \
  bin/train $RUN --batch $((N * B)) --out $WORK/one_b && \
  $COMPARE $WORK/one_b $WORK/to_one --loss-tol 1e-4 --from-step 6"
# Named by a rank other than the one that died (whose own line says TUNE_TEST_FAIL).
stage dead_rank 90 "t0=\$(date +%s); export TUNE_TEST_FAIL=1:3:die; ( $(par -x TUNE_TEST_FAIL $RUN \
    --steps 50 --batch $B --comm-timeout 20 --out $WORK/dead) ) >$WORK/dead.txt 2>&1; rc=\$?; cat $WORK/dead.txt; \
  echo \"ended with status \$rc after \$((\$(date +%s) - t0)) s\"; [ \$rc -ne 0 ] && \
  grep -v TUNE_TEST_FAIL $WORK/dead.txt | grep -q 'rank 1'"
# mpi (cpu): "no answer from rank 1"; nccl: the roll call's "rank 1 never entered it".
stage hung_rank 90 "t0=\$(date +%s); export TUNE_TEST_FAIL=1:3:hang; ( $(par -x TUNE_TEST_FAIL $RUN \
    --steps 50 --batch $B --comm-timeout 20 --out $WORK/hung) ) >$WORK/hung.txt 2>&1; rc=\$?; cat $WORK/hung.txt; \
  echo \"ended with status \$rc after \$((\$(date +%s) - t0)) s\"; [ \$rc -ne 0 ] && \
  grep -q 'no answer from rank 1\|rank 1 never entered it' $WORK/hung.txt"
if [ "$DEVICE" = cuda ]; then
    # Without a launcher that kills the rest (no mpirun, no srun --kill-on-bad-exit) and with the default
    # 600 s timeout, the roll call alone must stop the survivors within seconds, naming the dead rank.
    stage dead_rank_env 90 "t0=\$(date +%s); f=$WORK/rdv_dead; rm -f \$f; for r in \$(seq 0 $((N - 1))); do \
      TUNE_TEST_FAIL=1:3:die TUNE_RENDEZVOUS_FILE=\$f RANK=\$r LOCAL_RANK=\$r WORLD_SIZE=$N bin/train $RUN \
        --steps 50 --batch $B --out $WORK/dead_env & done >$WORK/dead_env.txt 2>&1; wait; \
      cat $WORK/dead_env.txt; echo \"ended after \$((\$(date +%s) - t0)) s\"; \
      [ \$((\$(date +%s) - t0)) -lt 60 ] && grep -q 'rank 1 died' $WORK/dead_env.txt"
fi
if [ "$DEVICE" = cuda ]; then
    GPT2="--device cuda --precision bf16 --model gpt2 --seq 1024 --batch 16 --steps 12 --train-data $WORK/gpt2.bin \
      --lr 1e-4 --warmup 0 --val-every 0"
    stage gpt2_1gpu 240 "bin/train $GPT2 --out $WORK/g1"
    stage gpt2_ngpu 240 "$(par $GPT2 --out $WORK/gn)"
    stage gpt2_ngpu_zero1 240 "$(par $GPT2 --zero 1 --out $WORK/gz)"
    stage gpt2_ngpu_zero2 240 "$(par $GPT2 --zero 2 --out $WORK/gz2)"
fi

tok_s() {  # median tokens/s after the two warm-up steps
    grep -o '[0-9]* tok/s' "$1" 2>/dev/null | awk 'NR > 2 {print $1}' | sort -n |
        awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "n/a"}'
}
{
    echo ""
    echo "================ multi_gpu_check summary: $N ranks, device $DEVICE, logs in $LOG_DIR"
    for i in "${!NAMES[@]}"; do printf '%-20s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"; done
    if [ "$DEVICE" = cuda ]; then
        T1=$(tok_s "$LOG_DIR/gpt2_1gpu.log") TN=$(tok_s "$LOG_DIR/gpt2_ngpu.log") TZ=$(tok_s "$LOG_DIR/gpt2_ngpu_zero1.log")
        TZ2=$(tok_s "$LOG_DIR/gpt2_ngpu_zero2.log")
        echo "GPT-2 124M bf16, B=16 T=1024 per GPU: 1 GPU $T1 tok/s; $N GPUs $TN tok/s (ZeRO-1: $TZ, ZeRO-2: $TZ2)"
        if [[ "$T1" =~ ^[0-9.]+$ && "$TN" =~ ^[0-9.]+$ ]]; then
            awk -v a="$TN" -v b="$T1" -v n="$N" 'BEGIN {printf "scaling efficiency %.0f%%\n", 100 * a / (n * b)}'
        fi
    fi
} | tee -a "$LOG"
# The device tool brings back at most 8 files from $OUT: there, the per-stage logs travel as one archive.
if [ -n "${OUT:-}" ] && [ "$LOG_DIR" = "$(cd "$OUT" 2>/dev/null && pwd)" ]; then
    (cd "$LOG_DIR" && ls *.log | grep -v '^multi_gpu_check.log$' | tar -czf stages.tar.gz -T - &&
        ls *.log | grep -v '^multi_gpu_check.log$' | xargs rm -f)
fi
for r in "${RESULTS[@]}"; do
    case $r in pass* | skip* | carried*) ;; *) exit 1 ;; esac
done
exit 0
