"""Timings of the packed small GEMM of csrc/: packing speed and GFLOP/s per ISA.

A measurement for tuning (csrc/gemm.c, csrc/gemm_impl.h), not a test.  It
calls ``fastcells._kernels.pack`` / ``gemm`` directly and prints medians of
many repeats (the machine is shared and noisy); BLAS is pinned to one thread.

- ``pack``: ms and GB/s (bytes read + bytes written) to pack W (N_out, K) for
  ``A @ W.T`` (transpose) and W (K, N) for ``A @ W``, with ``np.copy`` of the
  same array as the yardstick (both allocate their output).
- ``gemm``: GFLOP/s of ``C = A @ B`` (A m x k, B k x n packed) at the
  per-step shapes of the time loops, forward (n = G*k) and backward
  ((k, n) = (4H, H)), for each ISA path this machine runs (or ``--isa``).

Run: ``taskset -c 1 python scripts/measure/gemm_bench.py [--what pack,gemm] [--isa avx512]
[--rounds 15] [--quick]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

# Measure the checkout this script lives in (a worktree's in-place build), not
# whichever fastcells an editable install elsewhere puts on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from fastcells import _kernels  # noqa: E402
from fastcells._cells import CELLS  # noqa: E402

#: the LSTM's gate count: the widest per-step products of the three cells
G = CELLS["lstm"].G
#: (m, k, n): forward m x (k, n) with n = G*k, and backward (G*H, H)
FORWARD = [(m, k, G * k) for m in (16, 64, 128) for k in (128, 256, 512, 1024)]
BACKWARD = [(m, G * h, h) for m in (16, 64, 128) for h in (128, 256, 512, 1024)]
BATCH1 = [(1, k, G * k) for k in (128, 256, 512, 1024)]


def median_time(fn, rounds: int, min_seconds: float = 0.02) -> float:
    """Median over ``rounds`` samples of the seconds per call of ``fn``; each
    sample repeats ``fn`` enough times to last about ``min_seconds``."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(min_seconds / once))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    return float(np.median(samples))


def bench_pack(rounds: int, isas, shapes) -> None:
    rng = np.random.default_rng(0)
    previous = _kernels.get_isa()
    print(f"{'pack':<8}{'isa':>8}{'shape':>11}{'ms':>8}{'GB/s':>7}{'copy ms':>9}{'GB/s':>7}")
    try:
        for rows, cols in shapes:
            W = rng.standard_normal((rows, cols), dtype=np.float32)
            nbytes = 2 * W.nbytes
            t_copy = median_time(lambda W=W: np.copy(W), rounds)
            for isa in isas:
                _kernels.set_isa(isa)
                for transpose in (True, False):
                    t = median_time(lambda W=W, t=transpose: _kernels.pack(W, t), rounds)
                    name = "A@W.T" if transpose else "A@W"
                    print(f"{name:<8}{isa:>8}{f'{rows}x{cols}':>11}{t * 1e3:8.3f}"
                          f"{nbytes / t / 1e9:7.1f}{t_copy * 1e3:9.3f}{nbytes / t_copy / 1e9:7.1f}")
    finally:
        _kernels.set_isa(previous)


def bench_gemm(rounds: int, isas, shapes) -> None:
    rng = np.random.default_rng(0)
    previous = _kernels.get_isa()
    results = {}
    try:
        for isa in isas:
            _kernels.set_isa(isa)
            for m, k, n in shapes:
                A = rng.standard_normal((m, k), dtype=np.float32)
                P = _kernels.pack(rng.standard_normal((k, n), dtype=np.float32), False)
                C = np.empty((m, n), np.float32)
                t = median_time(lambda A=A, P=P, n=n, C=C: _kernels.gemm(A, P, n, C),
                                rounds)
                results[isa, (m, k, n)] = 2.0 * m * k * n / t / 1e9
    finally:
        _kernels.set_isa(previous)
    print(f"{'GFLOP/s':<8}{'m':>5}{'k':>6}{'n':>6}" + "".join(f"{isa:>9}" for isa in isas))
    for m, k, n in shapes:
        print(f"{'':<8}{m:>5}{k:>6}{n:>6}"
              + "".join(f"{results[isa, (m, k, n)]:9.1f}" for isa in isas))


def main() -> None:
    print(f"fastcells from {os.path.dirname(_kernels.__file__)}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="pack,gemm", help="comma list of pack, gemm")
    parser.add_argument("--isa", default=None, help="comma list (default: all available)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--shapes", default="all", help="forward, backward, batch1 or all")
    parser.add_argument("--quick", action="store_true", help="few rounds, small shapes")
    a = parser.parse_args()
    rounds = 3 if a.quick else a.rounds
    what = a.what.split(",")
    isas = a.isa.split(",") if a.isa else _kernels.isa_available()
    if "pack" in what:
        shapes = [(512, 128)] if a.quick else [(4096, 1024), (2048, 512), (1024, 4096),
                                                (512, 128), (1000, 333)]
        bench_pack(rounds, isas, shapes)
    if "gemm" in what:
        table = {"forward": FORWARD, "backward": BACKWARD, "batch1": BATCH1}
        shapes = (FORWARD + BACKWARD + BATCH1) if a.shapes == "all" else table[a.shapes]
        if a.quick:
            shapes = [s for s in shapes if s[1] * s[2] <= 256 * 1024][:3]
        bench_gemm(rounds, isas, shapes)


if __name__ == "__main__":
    main()
