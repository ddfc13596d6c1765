"""Smoke test of an installed fastcells (a wheel, an sdist install): no test
dependencies, run from outside the source tree.

Every cell, forward and backward, against the float64 reference on a small
problem with lengths and reverse; prints the ISA in use and the largest
errors.  ``--expect-isa NAME`` also asserts which ISA path was chosen (the
qemu run expects ``generic`` on a CPU without AVX).  Exit status 0 on success.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import fastcells
from fastcells import _kernels, reference
from fastcells._cells import CELLS, cell_functions

#: as the test suite: forward 1e-5, gradients 1e-4, relative to max(1, max|ref|)
FWD_TOL, GRAD_TOL = 1e-5, 1e-4
#: options that differ from a cell's defaults, so the smoke test also covers
#: the GRU form that the default runs (and most tests) do not
OPTIONS = {"gru": {"linear_before_reset": False}}


def rel_err(a, b) -> float:
    if b is None:
        return 0.0
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(1.0, np.abs(b).max()))


def check_cell(name: str, rng) -> tuple[float, float]:
    G, opts = CELLS[name].G, OPTIONS.get(name, {})
    T, B, I, H = 7, 3, 5, 6
    args = [rng.standard_normal(s).astype(np.float32)
            for s in ((T, B, I), (G * H, I), (G * H, H), (G * H,), (G * H,), (B, H))]
    kw = dict(opts, lengths=np.array([T, 4, 0]), reverse=True, training=True)
    forward, backward = cell_functions(fastcells, name)
    ref_forward, ref_backward = cell_functions(reference, name)
    out = forward(*args, **kw)
    ref = ref_forward(*[a.astype(np.float64) for a in args], **kw)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    g = backward(out.cache, dy=dy)
    rg = ref_backward(ref.cache, dy=dy.astype(np.float64))
    fwd = max(rel_err(out.y, ref.y), rel_err(out.h, ref.h))
    grad = max(rel_err(a, b) for a, b in zip(g, rg, strict=True) if a is not None)
    return fwd, grad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-isa", help="fail unless this ISA path is in use")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(fastcells.__file__))
    print(f"fastcells {fastcells.__version__} from {here}")
    print(f"ISA in use: {_kernels.get_isa()} (available: {', '.join(_kernels.isa_available())})")
    ok = True
    if args.expect_isa and _kernels.get_isa() != args.expect_isa:
        print(f"FAIL: expected ISA {args.expect_isa!r}, got {_kernels.get_isa()!r}")
        ok = False
    rng = np.random.default_rng(0)
    for name in CELLS:
        fwd, grad = check_cell(name, rng)
        good = fwd <= FWD_TOL and grad <= GRAD_TOL
        ok &= good
        verdict = "ok" if good else "FAIL"
        print(f"{name:5s} forward err {fwd:.2e}  gradient err {grad:.2e}  {verdict}")
    print("smoke test", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
