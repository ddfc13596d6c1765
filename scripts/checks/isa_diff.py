"""Determinism and ISA-path differences (the figures in docs/robustness.md).

For each cell, forward (training) and backward on one problem per shape,
run on every ISA path this machine has: prints a SHA-256 of all outputs per
path (run the script twice: the digests must be equal, i.e. bit-identical
results across runs on the same path), and the largest difference between
paths relative to max(1, max|result|), next to the error of each path
against the float64 reference.

Run: ``python scripts/checks/isa_diff.py`` (a few seconds).
"""
from __future__ import annotations

import hashlib

import numpy as np

import fastcells
from fastcells import _kernels, reference
from fastcells._cells import CELLS, cell_functions

SHAPES = [(50, 8, 16, 64), (200, 1, 32, 256)]
#: label -> (cell, options): every cell with its default options, and the
#: GRU's other form (Cho et al.: the reset gate before the recurrent product)
VARIANTS = {**{name: (name, {}) for name in CELLS},
            "gru-cho": ("gru", {"linear_before_reset": False})}


def run(module, cell, opts, args, dy):
    forward, backward = cell_functions(module, cell)
    out = forward(*args, **opts, training=True)
    grads = backward(out.cache, dy=dy)
    return [out.y, out.h] + [g for g in grads if g is not None]


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(1.0, np.abs(b).max()))


def main() -> None:
    isas = _kernels.isa_available()
    print(f"ISA paths: {', '.join(isas)}")
    print(f"{'cell':9s} {'T,B,I,H':16s} {'max diff between paths':>23s}  "
          + "  ".join(f"{i + ' vs ref':>15s}" for i in isas) + "  digests")
    previous = _kernels.get_isa()
    for name, (family, opts) in VARIANTS.items():
        G = CELLS[family].G
        for T, B, I, H in SHAPES:
            rng = np.random.default_rng(0)
            scale = 1.5 / np.sqrt(H)
            args = [rng.standard_normal((T, B, I)).astype(np.float32),
                    (rng.standard_normal((G * H, I)) * scale).astype(np.float32),
                    (rng.standard_normal((G * H, H)) * scale).astype(np.float32),
                    (rng.standard_normal(G * H) * 0.5).astype(np.float32),
                    (rng.standard_normal(G * H) * 0.5).astype(np.float32)]
            dy = rng.standard_normal((T, B, H)).astype(np.float32)
            ref = run(reference, family, opts, [a.astype(np.float64) for a in args],
                      dy.astype(np.float64))
            results, digests = {}, []
            for isa in isas:
                _kernels.set_isa(isa)
                results[isa] = run(fastcells, family, opts, args, dy)
                h = hashlib.sha256(b"".join(r.tobytes() for r in results[isa]))
                digests.append(f"{isa}:{h.hexdigest()[:10]}")
            diff = max(rel(a, np.asarray(b, np.float64)) for i in isas for j in isas
                       for a, b in zip(results[i], results[j], strict=True))
            errs = [max(rel(a, r) for a, r in zip(results[i], ref, strict=True))
                    for i in isas]
            print(f"{name:9s} {f'{T},{B},{I},{H}':16s} {diff:23.2e}  "
                  + "  ".join(f"{e:15.2e}" for e in errs) + "  " + " ".join(digests))
    _kernels.set_isa(previous)


if __name__ == "__main__":
    main()
