#!/usr/bin/env bash
# The C-level tests of csrc/ (csrc/tests/test_csrc.c: the packed GEMM, GEMV,
# gemm_nt, gemm_tn and packing against double precision, sigmoid and tanh
# within 3 ulp, the flush-to-zero mode's save and restore) built for the host
# and cross-compiled for aarch64, then run natively and under qemu-aarch64:
# the aarch64 code paths (NEON through the generic templates' vector
# extensions, FPCR.FZ in fpenv.h) exercised on an x86-64 machine.
#
# The compile flags and the C sources are setup.py's (read from it, with
# Python's own CFLAGS as a build_ext adds them; no -march): what a wheel compiles.  The aarch64
# binary runs on two emulated CPUs, Cortex-A53 (plain ARMv8.0-A: nothing
# newer may be used) and Neoverse-N1 (Graviton2, Ampere Altra).
#
# Needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user; installs
# them with apt-get when missing (as root).  Where they are missing and cannot
# be installed (no apt-get, not root) it prints "skipped: <reason>" and exits 0.
#
# Usage: scripts/checks/aarch64.sh        (PYTHON=... for the interpreter that reads setup.py)
# Exit status: non-zero if a build or a test fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
HOST_CC="${CC:-gcc}"
CROSS_CC=aarch64-linux-gnu-gcc
CROSS_BINUTILS=aarch64-linux-gnu-
QEMU=qemu-aarch64
SYSROOT=/usr/aarch64-linux-gnu
QEMU_CPUS=(cortex-a53 neoverse-n1)
PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
TEST_SOURCE=csrc/tests/test_csrc.c

# The functions up to main() are shared with aarch64_wheel.sh, which sources this file.

skip() {
    echo "aarch64 check skipped: $*"
    exit 0
}

have_cross_tools() {
    command -v "$CROSS_CC" > /dev/null && command -v "${CROSS_BINUTILS}objdump" > /dev/null \
        && command -v "$QEMU" > /dev/null && [ -e "$SYSROOT/lib/libc.so.6" ] \
        && [ -e "$SYSROOT/lib/libgomp.so.1" ]
}

# ensure_tools CHECK PACKAGE...: unless the command CHECK succeeds, install the
# packages with apt-get (as root); skip (exit 0) where that cannot be done.
ensure_tools() {
    local check="$1" log
    shift
    [ "$(uname -m)" = x86_64 ] || skip "the host is $(uname -m); this check emulates aarch64 on x86-64"
    "$check" && return 0
    command -v apt-get > /dev/null || skip "no apt-get to install $*"
    [ "$(id -u)" = 0 ] || skip "not root: cannot apt-get install $*"
    echo "== apt-get install $*"
    log="$(mktemp)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "$@"; } > "$log" 2>&1; then
        tail -20 "$log"
        echo "FAIL: apt-get could not install $*" >&2
        exit 1
    fi
    rm -f "$log"
    "$check" || { echo "FAIL: installed $*, but a tool is still missing" >&2; exit 1; }
}

# Two lines from setup.py, run with its imports stubbed out: the compile flags
# of a release build (no debug, no sanitizer: its COMPILE_ARGS after the flags
# a build_ext takes from Python, CFLAGS and CCSHARED; -m options, e.g. a -march
# in some Pythons' CFLAGS, dropped: the wheel's baseline must not depend on
# them), then the extension's C sources under csrc/.
setup_facts() {
    env -u FASTCELLS_DEBUG -u FASTCELLS_SANITIZE "$PYTHON" - "$ROOT/setup.py" <<'PY'
import runpy
import sys
import sysconfig
import types


def stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


stub("numpy", get_include=lambda: "")
stub("Cython")
stub("Cython.Build", cythonize=lambda extensions, **options: extensions)
stub("setuptools", Extension=lambda *args, **kwargs: None, setup=lambda **kwargs: None)
stub("setuptools.command")
stub("setuptools.command.build_ext", build_ext=object)
flags = " ".join(sysconfig.get_config_var(v) or "" for v in ("CFLAGS", "CCSHARED")).split()
setup = runpy.run_path(sys.argv[1])
flags += setup["COMPILE_ARGS"]
print(" ".join(f for f in flags if not f.startswith("-m")))
sources = setup["EXTENSIONS"]["fastcells._kernels"]["sources"]
print(" ".join(s for s in sources if s.startswith("csrc/") and s.endswith(".c")))
PY
}

main() {
    ensure_tools have_cross_tools "${PACKAGES[@]}"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastcells-aarch64.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    cd "$ROOT"
    local facts flags sources
    facts="$(setup_facts)"
    flags="$(sed -n 1p <<< "$facts")"
    sources="$(sed -n 2p <<< "$facts")"
    read -ra FLAG_LIST <<< "$flags"
    read -ra SOURCES <<< "$TEST_SOURCE $sources"
    echo "== compile flags (setup.py's, after Python's): $flags"
    echo "== sources: ${SOURCES[*]}"

    echo "== host ($(uname -m)): $HOST_CC $("$HOST_CC" -dumpversion)"
    "$HOST_CC" "${FLAG_LIST[@]}" -Icsrc -o "$WORK/test_host" "${SOURCES[@]}" -lm \
        2> "$WORK/host.log" || { cat "$WORK/host.log"; exit 1; }
    "$WORK/test_host"

    echo "== aarch64 cross build: $CROSS_CC $("$CROSS_CC" -dumpversion)"
    "$CROSS_CC" "${FLAG_LIST[@]}" -Icsrc -o "$WORK/test_aarch64" "${SOURCES[@]}" -lm \
        2> "$WORK/cross.log" || { cat "$WORK/cross.log"; exit 1; }
    # The generic templates' vector extensions must have become NEON: count the
    # 4-lane fused multiply-adds in each routine.
    "${CROSS_BINUTILS}objdump" -d --no-show-raw-insn "$WORK/test_aarch64" > "$WORK/disasm"
    local fn count cpu
    for fn in fc_gemm_packed_generic fc_gemm_nt_generic fc_sigmoid_generic fc_tanh_generic; do
        count="$(awk -v f="<$fn>:" '$2 == f {on = 1; next} /^$/ {on = 0} on' "$WORK/disasm" \
            | grep -cE 'fmla[[:space:]]+v[0-9]+\.4s' || true)"
        echo "   $fn: $count NEON fmla (4 x float32) instructions"
        if [ "$count" -eq 0 ]; then
            echo "FAIL: $fn has no NEON fmla: the vector extensions were not vectorized" >&2
            exit 1
        fi
    done

    for cpu in "${QEMU_CPUS[@]}"; do
        echo "== under emulation: $QEMU -cpu $cpu ($("$QEMU" --version | head -1))"
        "$QEMU" -cpu "$cpu" -L "$SYSROOT" "$WORK/test_aarch64"
    done
    echo "aarch64 check passed: csrc/tests/test_csrc.c on the host and under $QEMU" \
         "(-cpu ${QEMU_CPUS[*]})"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
