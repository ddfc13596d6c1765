#!/usr/bin/env bash
# Run the installed wheel's smoke test on an emulated CPU without AVX:
# `qemu-x86_64 -cpu Nehalem` (SSE4.2, no AVX) raises SIGILL on any AVX
# instruction, so this proves that the wheel's baseline code is built without
# -march and that CPU detection picks the generic path there.  It also checks
# that forcing FASTCELLS_ISA=avx2 on that CPU fails at import with a clear
# error instead of crashing.
#
# Usage: scripts/release/qemu_smoke.sh [path/to/fastcells-*.whl]   (default: dist/*.whl)
# Needs: qemu-user (Debian/Ubuntu: apt-get install -y qemu-user), an x86-64 host.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
CPU="${QEMU_CPU:-Nehalem}"
WHEEL="${1:-$(ls "$ROOT"/dist/*.whl | head -1)}"
command -v qemu-x86_64 > /dev/null || { echo "qemu-x86_64 not found: apt-get install -y qemu-user" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastcells-qemu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "== installing $(basename "$WHEEL") into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"
# the real interpreter binary (the venv's python is a symlink); site-packages
# come from pyvenv.cfg next to the symlink, so run through the venv path
PY="$WORK/venv/bin/python"

cd "$WORK"
echo "== qemu-x86_64 -cpu $CPU: smoke test, expecting the generic path"
qemu-x86_64 -cpu "$CPU" "$PY" "$ROOT/scripts/release/smoke.py" --expect-isa generic

echo "== qemu-x86_64 -cpu $CPU: FASTCELLS_ISA=avx2 must fail at import, not crash"
set +e
FASTCELLS_ISA=avx2 qemu-x86_64 -cpu "$CPU" "$PY" -c "import fastcells" > "$WORK/forced.log" 2>&1
rc=$?
set -e
tail -1 "$WORK/forced.log"
if [ "$rc" -ne 1 ] || ! grep -q "ImportError: FASTCELLS_ISA='avx2'" "$WORK/forced.log"; then
    echo "FAIL: expected an ImportError (exit 1), got exit $rc"; exit 1
fi
echo "qemu smoke test passed"
