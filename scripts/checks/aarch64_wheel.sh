#!/usr/bin/env bash
# The whole package built as an aarch64 wheel on this x86-64 machine, then run
# under qemu-aarch64 by an arm64 CPython:
#
#   1. an arm64 Debian bookworm tree (mmdebstrap --variant=extract: packages
#      unpacked, nothing run, the host's own packages untouched) with
#      python3.11, its headers and libgomp;
#   2. NumPy's manylinux aarch64 wheel (and pytest's pure-Python ones) from
#      the package index, the host's versions;
#   3. the fastcells wheel cross-built from a copy of the tree: setup.py run
#      by the host Python (Cython and the build are the host's) with the arm64
#      Python's sysconfig (_PYTHON_SYSCONFIGDATA_NAME, _PYTHON_HOST_PLATFORM),
#      CC=aarch64-linux-gnu-gcc and the arm64 Python and NumPy headers; the
#      extension checked to be AArch64 code exporting only PyInit_*;
#   4. under qemu-aarch64 (-cpu cortex-a53 and neoverse-n1), from outside the
#      tree: scripts/release/smoke.py --expect-isa generic (every cell,
#      forward and backward, against the float64 reference), FASTCELLS_ISA=avx2
#      refused at import with a clear error, and the test files in TESTS
#      (flush-to-zero, activations, products, Python threads and OpenMP
#      splits) on neoverse-n1; with --full, the whole test suite (but the
#      soak test and the sdist's, which do not depend on the CPU; about
#      ten minutes).
#
# The host Python must be 3.11 (bookworm's arm64 Python) with the build
# requirements (setuptools, Cython, NumPy) and pytest.  Needs what
# scripts/checks/aarch64.sh needs plus mmdebstrap and debian-archive-keyring
# (installed with apt-get when missing, as root; skipped with the reason
# otherwise) and network access to deb.debian.org and the package index.
#
# Usage: scripts/checks/aarch64_wheel.sh [--full]   (PYTHON=..., DEBIAN_MIRROR=... to override)
# Exit status: non-zero if a step fails.
set -euo pipefail

# shellcheck source=scripts/checks/aarch64.sh
. "$(dirname "${BASH_SOURCE[0]}")/aarch64.sh"

SUITE=bookworm
SUITE_PYTHON=3.11
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
ROOTFS_PACKAGES="python$SUITE_PYTHON,libpython$SUITE_PYTHON-dev,libgomp1,libstdc++6"
SYSCONFIGDATA="_sysconfigdata__linux_aarch64-linux-gnu"
TESTS=(tests/test_fpenv.py tests/test_activations.py tests/test_gemm.py tests/test_gemm_nt.py
       tests/test_threads.py tests/test_parallel.py)
# left out of the quick run: the tests that start Python in subprocesses (each
# start costs seconds under emulation; they pass, see --full)
DESELECT="not oversubscribed and not quiet_after_return"
FULL_ARGS=("$ROOT/tests" "--ignore=$ROOT/tests/test_soak.py" "--ignore=$ROOT/tests/test_packaging.py")

have_wheel_tools() {
    have_cross_tools && command -v mmdebstrap > /dev/null && [ -e "$KEYRING" ]
}

# host_version MODULE: the version of MODULE in the host Python (exit 2 if missing)
host_version() {
    "$PYTHON" -c "import $1; print($1.__version__)" 2> /dev/null \
        || { echo "FAIL: $PYTHON lacks $1 (pip install $1)" >&2; exit 2; }
}

wheel_main() {
    local full=0 pyver
    case "${1:-}" in
        --full) full=1 ;;
        "") ;;
        *) echo "usage: $0 [--full]" >&2; exit 2 ;;
    esac
    pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$pyver" = "$SUITE_PYTHON" ] || skip "the host Python is $pyver: the wheel is built by" \
        "the host Python for $SUITE's arm64 Python $SUITE_PYTHON, so they must match"
    ensure_tools have_wheel_tools "${PACKAGES[@]}" mmdebstrap debian-archive-keyring
    [ "$(id -u)" = 0 ] || skip "not root: mmdebstrap --mode=root unpacks the arm64 tree"
    # the host's versions of what the emulated Python needs from the index
    local want version
    local -a wants=()
    for want in numpy pytest $([ "$full" = 0 ] || echo hypothesis); do
        version="$(host_version "$want")"
        wants+=("$want==$version")
    done
    host_version Cython > /dev/null
    host_version setuptools > /dev/null

    WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastcells-aarch64-wheel.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    local rootfs="$WORK/rootfs" site="$WORK/site" start=$SECONDS

    echo "== arm64 $SUITE tree: $ROOTFS_PACKAGES"
    mmdebstrap --quiet --variant=extract --mode=root --arch=arm64 \
        --include="$ROOTFS_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" > "$WORK/rootfs.log" 2>&1 \
        || { tail -20 "$WORK/rootfs.log"; echo "FAIL: mmdebstrap" >&2; exit 1; }
    local py="$rootfs/usr/bin/python$SUITE_PYTHON"

    echo "== aarch64 wheels from the index: ${wants[*]}"
    mkdir -p "$WORK/wheels" "$site"
    "$PYTHON" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --platform manylinux2014_aarch64 --python-version "$SUITE_PYTHON" --implementation cp \
        --abi "cp${SUITE_PYTHON/./}" -d "$WORK/wheels" "${wants[@]}" > "$WORK/pip.log" 2>&1 \
        || { tail -20 "$WORK/pip.log"; echo "FAIL: pip download" >&2; exit 1; }
    local whl
    for whl in "$WORK"/wheels/*.whl; do
        "$PYTHON" -m zipfile -e "$whl" "$site"
    done

    echo "== fastcells wheel, cross-built"
    mkdir "$WORK/src" "$WORK/sysconfig"
    tar -C "$ROOT" --exclude=.git --exclude=build --exclude=dist --exclude='*.so' \
        --exclude='fastcells/_kernels.c' --exclude='__pycache__' --exclude='.venv*' -cf - . \
        | tar -C "$WORK/src" -xf -
    cp "$rootfs/usr/lib/python$SUITE_PYTHON/$SYSCONFIGDATA.py" "$WORK/sysconfig/"
    # the arm64 headers first; -idirafter: the arm64 tree's own libc headers only
    # after the cross compiler's (its pyconfig.h is under <aarch64-linux-gnu/...>)
    (cd "$WORK/src" && env -u FASTCELLS_DEBUG -u FASTCELLS_SANITIZE \
        _PYTHON_HOST_PLATFORM=linux-aarch64 _PYTHON_SYSCONFIGDATA_NAME="$SYSCONFIGDATA" \
        PYTHONPATH="$WORK/sysconfig" CC="$CROSS_CC" LDSHARED="$CROSS_CC -shared" \
        CFLAGS="-I$rootfs/usr/include/python$SUITE_PYTHON -idirafter $rootfs/usr/include -I$site/numpy/_core/include" \
        "$PYTHON" setup.py -q bdist_wheel -d "$WORK/dist") > "$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log"; echo "FAIL: the cross build" >&2; exit 1; }
    local wheel so syms
    wheel="$(ls "$WORK"/dist/*.whl)"
    echo "   $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
    "$PYTHON" -m zipfile -e "$wheel" "$site"
    for so in "$site"/fastcells/*.so; do
        echo "   $(basename "$so"): $("${CROSS_BINUTILS}readelf" -h "$so" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')"
        "${CROSS_BINUTILS}readelf" -h "$so" | grep -q 'Machine:.*AArch64' \
            || { echo "FAIL: $so is not AArch64 code" >&2; exit 1; }
        syms="$("${CROSS_BINUTILS}nm" -D --defined-only "$so" | awk '{print $3}')"
        if echo "$syms" | grep -qv '^PyInit_'; then
            echo "FAIL: $so exports more than PyInit_*: $syms" >&2
            exit 1
        fi
    done
    echo "   built in $((SECONDS - start)) s"

    # Under emulation from outside the tree, the wheel's files and NumPy's on the path.
    cd "$WORK"
    local cpu run
    for cpu in "${QEMU_CPUS[@]}"; do
        run=("$QEMU" -cpu "$cpu" -L "$rootfs" "$py")
        echo "== under emulation: ${run[*]##*/} scripts/release/smoke.py --expect-isa generic"
        PYTHONPATH="$site" "${run[@]}" "$ROOT/scripts/release/smoke.py" --expect-isa generic
    done
    echo "== under emulation: FASTCELLS_ISA=avx2 must fail at import, not crash"
    set +e
    FASTCELLS_ISA=avx2 PYTHONPATH="$site" "${run[@]}" -c "import fastcells" > "$WORK/forced.log" 2>&1
    local rc=$?
    set -e
    tail -1 "$WORK/forced.log"
    if [ "$rc" -ne 1 ] || ! grep -q "ImportError: FASTCELLS_ISA='avx2'" "$WORK/forced.log"; then
        echo "FAIL: expected an ImportError (exit 1), got exit $rc" >&2
        exit 1
    fi
    # sys.executable: a script that runs the arm64 Python under qemu (qemu's -0
    # gives it as argv[0]), so the tests' Python subprocesses run emulated too,
    # where the host kernel has no binfmt_misc entry for aarch64
    local pywrap="$WORK/python-aarch64"
    {
        echo '#!/bin/bash'
        printf 'exec'
        printf ' %q' "$QEMU" -cpu "${QEMU_CPUS[-1]}" -L "$rootfs"
        # shellcheck disable=SC2016  # $0 and $@ are the wrapper's, expanded when it runs
        printf ' -0 "$0" %q "$@"\n' "$py"
    } > "$pywrap"
    chmod +x "$pywrap"
    if [ "$full" = 1 ]; then
        echo "== under emulation (-cpu ${QEMU_CPUS[-1]}): pytest ${FULL_ARGS[*]#"$ROOT/"}"
        PYTHONPATH="$site" "$pywrap" -m pytest -q -p no:cacheprovider "${FULL_ARGS[@]}"
    else
        echo "== under emulation (-cpu ${QEMU_CPUS[-1]}): pytest ${TESTS[*]}"
        PYTHONPATH="$site" "$pywrap" -m pytest -q -p no:cacheprovider -k "$DESELECT" \
            "${TESTS[@]/#/$ROOT/}"
    fi
    echo "aarch64 wheel check passed in $((SECONDS - start)) s: $(basename "$wheel")" \
         "built here, run under $QEMU (-cpu ${QEMU_CPUS[*]})"
}

wheel_main "$@"
