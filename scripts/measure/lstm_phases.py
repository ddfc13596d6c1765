"""Where one LSTM forward call's time goes, phase by phase, at one thread.

A measurement for tuning (csrc/, fastcells/_kernels.pyx), not a test.  For each
shape it times, as medians of interleaved rounds of the process's CPU time
(``time.process_time``: on a shared machine the time the process waits for a
core does not count, which wall-clock timings mix in):

- ``call``: the whole ``fastcells.lstm_forward`` (inference), as a user calls it;
- ``pack_ih``, ``pack_hh``: packing ``W_ih`` and ``W_hh`` (``_kernels.pack``);
- ``proj``: the input projection ``x @ W_ih.T`` (``_kernels.gemm``, T*B rows);
- ``bias``: adding the folded bias to the projection (``gx += bias``);
- ``loop``: the time loop (``_kernels.lstm_forward``: T recurrent products and
  gate passes);
- ``recur``: T recurrent products alone (``_kernels.gemm`` of B rows, one call per
  step: includes a Python call each, ``empty`` below);
- ``act``: the gate pass's activations alone (``sigmoid_`` over 3*T*B*H floats,
  ``tanh_`` over 2*T*B*H, in the loops' flush-to-zero mode);
- ``empty``: a ``gemm`` call of 1 x 1 x 1, the per-call cost inside ``recur``;
- ``ort``: ONNX Runtime's LSTM node at one thread, when installed (needs the
  repository's ``bench/`` folder).

Run: ``python scripts/measure/lstm_phases.py [--shape T,B,I,H ...] [--isa avx2]
[--rounds 15]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "FASTCELLS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

# Measure the checkout this script lives in (a worktree's in-place build).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _ROOT)
import fastcells  # noqa: E402
from fastcells import _kernels  # noqa: E402
from fastcells._cells import CELLS  # noqa: E402
from fastcells.bench import Problem, Shape, make_problem  # noqa: E402

G = CELLS["lstm"].G
SHAPES = [(100, 16, 128, 128), (50, 16, 256, 256), (50, 16, 64, 64), (100, 1, 64, 64),
          (100, 1, 256, 256)]


def _ort_runner(problem: Problem):
    """ONNX Runtime's LSTM forward at one thread, or None when it cannot run here."""
    try:
        from bench import peers
        return peers.ort_runner(problem, "fwd", threads=1)
    except Exception:  # noqa: BLE001  (not installed, or no bench/ folder)
        return None


def phases(T: int, B: int, I: int, H: int, rounds: int) -> dict[str, float]:
    """Median ms of each phase (see the module docstring) at (T, B, I, H)."""
    rng = np.random.default_rng(0)
    GH = G * H
    p = make_problem("lstm", Shape(T, B, I, H))
    x, W_ih, W_hh = p.x, p.W_ih, p.W_hh
    b = np.stack([p.b_ih, p.b_hh])
    bias = b[0] + b[1]
    P_ih, P_hh = _kernels.pack(W_ih, True), _kernels.pack(W_hh, True)
    gx = np.empty((T * B, GH), np.float32)
    x2 = x.reshape(T * B, I)
    h, c = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    y = np.empty((T, B, H), np.float32)
    gh = np.empty((B, GH), np.float32)
    hs = rng.standard_normal((B, H), dtype=np.float32) * 0.5
    sig = rng.standard_normal(3 * T * B * H, dtype=np.float32)
    tnh = rng.standard_normal(2 * T * B * H, dtype=np.float32)
    one, p1, c1 = np.ones((1, 1), np.float32), _kernels.pack(np.ones((1, 1), np.float32),
                                                            True), np.empty((1, 1), np.float32)

    def loop() -> None:
        h[:] = 0
        c[:] = 0
        _kernels.lstm_forward(0, gx.reshape(T, B, GH), P_hh, _kernels.PACK_FLOAT, None, h, c,
                              y, None, False, None, None, gh)

    def recur() -> None:
        for _ in range(T):
            _kernels.gemm(hs, P_hh, GH, gh)

    def act() -> None:
        _kernels.sigmoid_(sig, True)
        _kernels.tanh_(tnh, True)

    def empty() -> None:
        for _ in range(T):
            _kernels.gemm(one, p1, 1, c1)

    def bias_add() -> None:
        np.add(gx, bias, out=gx)

    fns = {
        "call": lambda: fastcells.lstm_forward(x, W_ih, W_hh, b[0], b[1]),
        "pack_ih": lambda: _kernels.pack(W_ih, True),
        "pack_hh": lambda: _kernels.pack(W_hh, True),
        "proj": lambda: _kernels.gemm(x2, P_ih, GH, gx),
        "bias": bias_add,
        "loop": loop,
        "recur": recur,
        "act": act,
        "empty": empty,
    }
    ort = _ort_runner(p)
    if ort is not None:
        fns["ort"] = ort
    _kernels.gemm(x2, P_ih, GH, gx)
    bias_add()
    reps = {}
    for name, fn in fns.items():      # calls per sample: about 20 ms each
        fn()
        t0 = time.process_time()
        fn()
        reps[name] = max(1, int(0.02 / max(time.process_time() - t0, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):           # interleaved: every phase once per round
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.process_time() - t0) / reps[name] * 1e3)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", action="append", help="T,B,I,H (repeatable)")
    ap.add_argument("--isa", help="generic, avx2 or avx512 (default: the one in use)")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if args.isa:
        _kernels.set_isa(args.isa)
    shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape
              else SHAPES)
    print(f"ISA {_kernels.get_isa()}, medians of {args.rounds} interleaved rounds, ms")
    for T, B, I, H in shapes:
        r = phases(T, B, I, H, args.rounds)
        flops = 2 * T * B * G * H * (I + H)
        gf = flops / r["call"] / 1e6
        row = "  ".join(f"{k} {v:.3f}" for k, v in r.items())
        print(f"({T},{B},{I},{H})  {row}  call GFLOP/s {gf:.1f}")


if __name__ == "__main__":
    main()
