#!/usr/bin/env bash
# Build the sdist and the wheel into dist/, repair the wheel with auditwheel
# (manylinux tag, when auditwheel and patchelf are installed), show its tag,
# size and exported symbols, then install it into a fresh virtual environment
# and run scripts/release/smoke.py from outside the source tree: no compiler needed there.
#
# Usage: scripts/release/build_wheel.sh            (PYTHON=python3.12 to pick the interpreter)
# Needs: build (pip install build); optional: auditwheel, patchelf.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
DIST="$ROOT/dist"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastcells-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cd "$ROOT"
rm -rf "$DIST"
echo "== python -m build (sdist, then the wheel built from the sdist)"
"$PYTHON" -m build --outdir "$DIST" . > "$WORK/build.log" 2>&1 || { tail -50 "$WORK/build.log"; exit 1; }
SDIST="$(ls "$DIST"/*.tar.gz)"
WHEEL="$(ls "$DIST"/*.whl)"
echo "sdist: $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) KiB)"

if command -v auditwheel > /dev/null && command -v patchelf > /dev/null; then
    echo "== auditwheel repair"
    auditwheel show "$WHEEL" | sed 's/^/   /' || true
    auditwheel repair -w "$WORK/repaired" "$WHEEL" > "$WORK/repair.log" 2>&1 \
        || { cat "$WORK/repair.log"; exit 1; }
    rm "$WHEEL"
    mv "$WORK"/repaired/*.whl "$DIST/"
    WHEEL="$(ls "$DIST"/*.whl)"
else
    echo "== auditwheel or patchelf not installed: the wheel keeps its linux_* tag"
fi
NAME="$(basename "$WHEEL")"
echo "wheel: $NAME"
echo "platform tag: $(echo "${NAME%.whl}" | cut -d- -f5)"
echo "wheel size: $(du -k "$WHEEL" | cut -f1) KiB"

echo "== exported symbols of the extension (expect only PyInit_*)"
mkdir "$WORK/unz"
"$PYTHON" -m zipfile -e "$WHEEL" "$WORK/unz"
for so in "$WORK"/unz/fastcells/*.so; do
    syms="$(nm -D --defined-only "$so" | awk '{print $3}')"
    echo "$(basename "$so"): $(echo "$syms" | tr '\n' ' ')"
    if echo "$syms" | grep -qv '^PyInit_'; then
        echo "FAIL: symbols other than PyInit_* are exported"; exit 1
    fi
    echo "   size $(du -k "$so" | cut -f1) KiB, stripped: $(file "$so" | grep -q 'not stripped' && echo no || echo yes)"
done

echo "== fresh venv, install the wheel (no build tools), smoke test outside the tree"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"
(cd "$WORK" && "$WORK/venv/bin/python" "$ROOT/scripts/release/smoke.py")
if command -v mypy > /dev/null; then
    echo "== mypy --strict on examples/typed_usage.py against the installed wheel"
    (cd "$WORK" && mypy --strict --python-executable "$WORK/venv/bin/python" \
        --no-incremental "$ROOT/examples/typed_usage.py")
fi
echo "== done: $DIST"
ls -l "$DIST"
