#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh runs, built on this machine, into one file for a GPU machine that cannot
# build it: this project's H200 has CUDA and PyTorch but not the packages the build needs (OpenBLAS,
# GoogleTest, Google Benchmark, PCRE2, nlohmann-json, OpenMPI), and installs nothing. Building here also saves
# the minutes a build there would take from a short device lease.
#
#   scripts/device_bundle.sh [DIR]      (default build/device; `make device-bundle` runs it)
#
# DIR/bundle.tar.xz holds, stripped of debug info (the CUDA line info stays, for compute-sanitizer):
#   bin/*, build/tests/tune_tests, the GPU benchmarks and the two experiment programs of build/bench/, the
#   build's configuration stamp, and build/bundle_lib/: every shared library they load that a machine with
#   the CUDA toolkit may lack (OpenBLAS with its Fortran runtime, OpenMP, PCRE2, OpenMPI, Google Benchmark).
#   Left out: the C and C++ runtimes and the toolkit's own libraries (there wherever nvcc is), and NCCL and
#   cuDNN, which the GPU machine has as pip wheels (gpu_check.sh finds them).
# DIR/bundle.manifest: the commit, and a hash of the sources the programs were built from; gpu_check.sh
# compares it with the sources it was sent and builds instead when they differ.
# Carry DIR with the check: run(command="scripts/gpu_check.sh", carry=["build/device", ...]).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build/device}

# The hash gpu_check.sh recomputes: every file the programs are built from, by path and content.
source_hash() {
    find Makefile kernels model train data tests bench -type f \
        ! -name '*.md' ! -name '*.py' ! -name '*.pyc' ! -path 'tests/fixtures/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum |
        cut -c1-16
}
[ "${1:-}" = --hash ] && { source_hash; exit 0; }

# The sources hashed before the build and again after packing: an edit in between would pair a manifest
# with programs built from other sources.
HASH_BEFORE=$(source_hash)
make all build/tests/tune_tests bench

STAGE=$(mktemp -d /tmp/tune_bundle.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/build/tests" "$STAGE/build/bench" "$STAGE/build/bundle_lib"
PROGRAMS=(bin/* build/tests/tune_tests)
for b in build/bench/bench_*; do
    [[ $b == *.o || $b == *.d ]] && continue
    case $(basename "$b") in bench_tokenizer | bench_train_cpu) continue ;; esac  # measured on the CPU machine
    PROGRAMS+=("$b")
done
for p in "${PROGRAMS[@]}"; do
    mkdir -p "$STAGE/$(dirname "$p")"
    strip --strip-debug -o "$STAGE/$p" "$p"
done
cp build/dist-config.stamp "$STAGE/build/"

# Shared libraries: what ldd resolves, less what any Linux with the CUDA toolkit has.
ldd "${PROGRAMS[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
    while read -r name path; do
        case $name in
            libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | libstdc++.so* | libgcc_s.so* | libz.so* | \
                libcud* | libcublas* | libnccl* | libnvrtc* | libnvToolsExt*) continue ;;
        esac
        cp -L "$path" "$STAGE/build/bundle_lib/$name"
    done

mkdir -p "$DIR"
rm -rf "$DIR/lib"  # an older layout's libraries: not to be carried again
tar -C "$STAGE" -cf - bin build | xz -T0 -6 >"$DIR/bundle.tar.xz.tmp"
if [ "$(source_hash)" != "$HASH_BEFORE" ]; then
    rm -f "$DIR/bundle.tar.xz.tmp"
    echo "device_bundle: the sources changed while the bundle was being built; run it again" >&2
    exit 1
fi
mv "$DIR/bundle.tar.xz.tmp" "$DIR/bundle.tar.xz"
{
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')"
    echo "sources $HASH_BEFORE"
    echo "built $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -n)"
} >"$DIR/bundle.manifest"
echo "$DIR/bundle.tar.xz: $(du -h "$DIR/bundle.tar.xz" | cut -f1), $(ls "$STAGE/build/bundle_lib" | wc -l) libraries:" \
    "$(ls "$STAGE/build/bundle_lib" | tr '\n' ' ')"
cat "$DIR/bundle.manifest"
