#!/usr/bin/env bash
# Run the kernel tests against two checked builds of the extension, each made
# in a temporary copy of the tree (the working tree's own build is untouched):
#
#   asan   -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g
#          (FASTCELLS_SANITIZE in setup.py).  Python itself is not
#          instrumented, so libasan is preloaded; leak detection is off
#          (CPython keeps memory until exit by design); any UBSan report aborts.
#   debug  FASTCELLS_DEBUG=1: Cython bounds, wraparound and initialisation
#          checks on, -O0 -g.
#
# Usage: scripts/checks/sanitize.sh [asan|debug|all] [extra pytest arguments]
# Exit status: non-zero if a build or a test run fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODE="${1:-all}"
shift || true
PYTHON="${PYTHON:-python}"
# The tests that drive the kernels: every cell and option on every ISA path,
# hostile input, properties, threads, one call split across threads (the
# threaded loops and products: setup.py builds every mode with -fopenmp), the
# layer-normalized and projected kernels, and pickles that unpack a Stepper's
# packed weights.  (The soak test is left out: the sanitizers' own allocator
# makes RSS meaningless.)
TESTS=(tests/test_kernels.py tests/test_float16_weights.py tests/test_gemm.py tests/test_gemm_nt.py
       tests/test_hostile.py tests/test_properties.py tests/test_threads.py tests/test_scratch.py
       tests/test_parallel.py tests/test_layer_norm.py tests/test_pickle.py
       tests/test_proj_kernels.py)

copy_tree() {
    local dst
    dst="$(mktemp -d "${TMPDIR:-/tmp}/fastcells-check.XXXXXX")"
    # the working tree as it is (committed or not), without build products
    tar -C "$ROOT" --exclude=.git --exclude=build --exclude=dist --exclude='*.so' \
        --exclude='fastcells/_kernels.c' --exclude='__pycache__' -cf - . | tar -C "$dst" -xf -
    echo "$dst"
}

run_asan() {
    local dir libasan
    dir="$(copy_tree)"
    echo "== asan+ubsan build in $dir"
    (cd "$dir" && FASTCELLS_SANITIZE=address,undefined "$PYTHON" setup.py -q build_ext --inplace \
        > build.log 2>&1) || { cat "$dir/build.log"; return 1; }
    libasan="$(${CC:-gcc} -print-file-name=libasan.so)"
    echo "== preloading $libasan"
    (cd "$dir" && LD_PRELOAD="$libasan" \
        ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@")
    rm -rf "$dir"    # kept only when something failed, for inspection
}

run_debug() {
    local dir
    dir="$(copy_tree)"
    echo "== bounds-checked Cython build in $dir"
    (cd "$dir" && FASTCELLS_DEBUG=1 "$PYTHON" setup.py -q build_ext --inplace > build.log 2>&1) \
        || { cat "$dir/build.log"; return 1; }
    (cd "$dir" && "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@")
    rm -rf "$dir"
}

case "$MODE" in
    asan) run_asan "$@" ;;
    debug) run_debug "$@" ;;
    all) run_asan "$@"; run_debug "$@" ;;
    *) echo "usage: $0 [asan|debug|all] [pytest args]" >&2; exit 2 ;;
esac
