# Sourced by scripts/gpu_check.sh and scripts/multi_gpu_check.sh: the programs and the libraries they load on a
# GPU machine. Expects ROOT (the repository root, the working directory), CUDA_HOME, WORK (a scratch folder),
# LOG, and the functions say, record, stage and selected of the sourcing script.

BUNDLE=build/device/bundle.tar.xz
BUNDLE_LIB=$ROOT/build/bundle_lib  # not under build/device: a dry run here must not grow what is carried

# Not a stage: whatever GPU_CHECK_STAGES selects needs the programs.
unpack_bundle() {
    local t0 rc
    t0=$(date +%s)
    say "=== [unpack] $BUNDLE ($(head -1 build/device/bundle.manifest 2>/dev/null))"
    if command -v xz >/dev/null 2>&1; then
        tar -xJf "$BUNDLE" 2>&1 | tee -a "$LOG"
        rc=${PIPESTATUS[0]}
    else  # a slim image may have no xz program; Python's tarfile reads .xz itself
        python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall()" "$BUNDLE" 2>&1 | tee -a "$LOG"
        rc=${PIPESTATUS[0]}
    fi
    record unpack "$(case $rc in 0) echo pass ;; *) echo "FAIL($rc)" ;; esac)" $(($(date +%s) - t0))
}

# build_or_unpack BUILD_FUNCTION: the carried bundle (`make device-bundle`) when it was built from these very
# sources (the hash scripts/device_bundle.sh --hash computes), else BUILD_FUNCTION (which runs the stage
# "build"), and the bundle after all when that fails (with a warning: it is then not these sources).
build_or_unpack() {
    local want have
    if [ ! -s "$BUNDLE" ]; then
        "$1"
        return
    fi
    want=$(sed -n 's/^sources //p' build/device/bundle.manifest 2>/dev/null)
    have=$(scripts/device_bundle.sh --hash)
    if [ "$want" = "$have" ]; then
        say "the carried build matches these sources ($have): no build here"
        unpack_bundle
        record build carried 0
        return
    fi
    if selected build; then
        say "WARNING: the carried build was made from other sources (bundle $want, here $have): building"
        "$1"
        [[ ${RESULTS[${#RESULTS[@]} - 1]} == pass* ]] && return
        say "WARNING: the build failed; testing the carried build instead, which is NOT these sources"
    else
        say "WARNING: the carried build was made from other sources (bundle $want, here $have); build not selected"
    fi
    unpack_bundle
    record build "stale" 0  # not a pass: these results are not of these sources
}

# Runtime libraries. The programs carry an rpath to $CUDA_HOME/lib64 (the toolkit: cuBLAS, cudart). The bundle's
# own libraries come first. Then, for each library still missing (ldd's "not found", like NCCL where the
# toolkit has none) and for cuDNN and NVRTC (loaded at run time, so ldd does not list them) where the toolkit
# lacks them: a link to the copy in pip's nvidia-* wheels, in a folder of links to just those. A whole wheel
# folder is never added: nvidia/cu13/lib also holds a cuBLAS and a cudart that must not shadow the toolkit's.
set_library_path() {
    local need links
    [ -d "$BUNDLE_LIB" ] && export LD_LIBRARY_PATH="$BUNDLE_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    [ -x bin/train ] || return 0
    need=$(ldd bin/train build/tests/tune_tests 2>/dev/null | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
    [ -e "$CUDA_HOME/lib64/libcudnn.so.9" ] || ldconfig -p 2>/dev/null | grep -q 'libcudnn.so.9 ' ||
        need="$need libcudnn*.so*"
    ls "$CUDA_HOME"/lib64/libnvrtc.so.* >/dev/null 2>&1 || need="$need libnvrtc*.so*"
    if [ -n "${need// /}" ]; then
        links="$WORK/libs"
        mkdir -p "$links"
        NEED="$need" LINKS="$links" python3 - <<'PY' 2>&1 | tee -a "$LOG"
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit("no pip nvidia-* wheels to find " + os.environ["NEED"] + " in")
dirs = sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))})
for pattern in os.environ["NEED"].split():
    found = [f for d in dirs for f in glob.glob(os.path.join(d, pattern))]
    for f in found:
        link = os.path.join(os.environ["LINKS"], os.path.basename(f))
        if not os.path.exists(link):
            os.symlink(f, link)
    print(f"{pattern}: {len(found)} file(s) from the pip wheels" if found else f"{pattern}: not in the pip wheels")
PY
        # The toolkit's lib64 last: libraries that cuDNN opens itself (NVRTC) find it there when no wheel has them.
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$links:$CUDA_HOME/lib64"
    fi
    say "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    # "not found": a library; "version ... not found": a glibc or libstdc++ older than this machine's build's.
    ldd bin/train build/tests/tune_tests 2>&1 | grep "not found" | sort -u | tee -a "$LOG"
    return 0
}
