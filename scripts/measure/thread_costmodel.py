"""The figures the thread cost model's constants (``fastcells._parallel``) are set from.

For a grid of (cell, B, H) it times one call at 1 and at 2 threads with the
split forced (the model's thresholds lowered to the bits floor), in
interleaved rounds, and prints the medians and their ratio: forward
(inference) and forward+backward, the time loop split by batch rows and the
projection by row blocks.  A ratio below 1 means the split pays at that
shape; the smallest B (rows per thread) and work per step where it pays set
``MIN_ROWS_PER_THREAD`` and ``MIN_STEP_FLOPS_PER_THREAD``.  It also times the
projection GEMM alone over a range of sizes (``MIN_GEMM_FLOPS_PER_THREAD``)
and the fork/join of an empty OpenMP parallel region at 2 threads (the fixed
cost each split call pays once per loop call).

Run it on a quiet machine, from the repository root: ``PYTHONPATH=. python
scripts/measure/thread_costmodel.py
[--rounds 7] [--steps 20] [--quick]``.  BLAS is pinned to one thread so that
only fastcells' threads count.  A measurement for docs/design.md, not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import fastcells  # noqa: E402
from fastcells import _kernels, _parallel  # noqa: E402
from fastcells._cells import CELLS  # noqa: E402

#: the grid: batch sizes (rows to split) and hidden sizes (work per row and step)
BATCHES = (2, 4, 8, 16, 32, 64, 128)
HIDDEN = (32, 64, 128, 256, 512, 1024)
#: the projection alone: rows and (I, G*H) of the products timed
GEMM_ROWS = (48, 96, 192, 384, 768, 1536)
GEMM_SHAPES = ((64, 256), (128, 512), (512, 2048))
#: empty parallel regions timed per round
FORK_JOINS = 2000


def _median_pair(run_one: Callable[[], object], run_two: Callable[[], object],
                 rounds: int) -> tuple[float, float]:
    """Medians (seconds) of ``run_one`` and ``run_two``, alternated round by round so
    that a slow spell of a shared machine falls on both."""
    one, two = [], []
    run_one()
    run_two()
    for _ in range(rounds):
        for fn, out in ((run_one, one), (run_two, two)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(one), statistics.median(two)


def _at(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        fastcells.set_num_threads(n)
        return fn()
    return run


def _force_split() -> None:
    """Lower the model's thresholds to the bits floor: every shape that may split does."""
    _parallel.MIN_ROWS_PER_THREAD = _parallel.SPLIT_MIN_ROWS
    _parallel.MIN_STEP_FLOPS_PER_THREAD = 0
    _parallel.MIN_GEMM_FLOPS_PER_THREAD = 0


def _train(fwd: Callable[..., Any], bwd: Callable[..., Any], x: np.ndarray, W_ih: np.ndarray,
           W_hh: np.ndarray, dy: np.ndarray) -> object:
    return bwd(fwd(x, W_ih, W_hh, training=True).cache, dy)


def loop_table(cells: tuple[str, ...], batches: tuple[int, ...], hidden: tuple[int, ...],
               T: int, rounds: int) -> None:
    print(f"time loop split by batch rows: T = {T}, I = H; medians of {rounds} interleaved "
          "rounds; ratio = 2 threads / 1 thread (< 1: the split pays)")
    print(f"{'cell':5} {'B':>4} {'H':>5} {'flops/step/thr':>14} | {'fwd 1t ms':>9} "
          f"{'2t ms':>8} {'ratio':>6} | {'f+b 1t ms':>9} {'2t ms':>8} {'ratio':>6}")
    rng = np.random.default_rng(0)
    for cell in cells:
        fwd, bwd = getattr(fastcells, f"{cell}_forward"), getattr(fastcells, f"{cell}_backward")
        G = CELLS[cell].G
        for H in hidden:
            W_ih = (rng.standard_normal((G * H, H), dtype=np.float32) / np.sqrt(H))
            W_hh = (rng.standard_normal((G * H, H), dtype=np.float32) / np.sqrt(H))
            for B in batches:
                x = rng.standard_normal((T, B, H), dtype=np.float32)
                dy = np.ones((T, B, H), np.float32)

                forward = partial(fwd, x, W_ih, W_hh)
                train = partial(_train, fwd, bwd, x, W_ih, W_hh, dy)
                f1, f2 = _median_pair(_at(1, forward), _at(2, forward), rounds)
                b1, b2 = _median_pair(_at(1, train), _at(2, train), rounds)
                flops = 2 * (B // 2) * G * H * H
                print(f"{cell:5} {B:4} {H:5} {flops:14,} | {f1 * 1e3:9.3f} {f2 * 1e3:8.3f} "
                      f"{f2 / f1:6.2f} | {b1 * 1e3:9.3f} {b2 * 1e3:8.3f} {b2 / b1:6.2f}",
                      flush=True)


def gemm_table(rounds: int) -> None:
    print("\nprojection GEMM alone (packed), rows split in blocks of "
          f"{_kernels.gemm_row_granule()}: ratio = 2 threads / 1 thread")
    print(f"{'rows':>5} {'I':>5} {'G*H':>5} {'flops/thr':>12} | {'1t ms':>8} {'2t ms':>8} "
          f"{'ratio':>6}")
    rng = np.random.default_rng(1)
    for I, GH in GEMM_SHAPES:
        P = _kernels.pack(rng.standard_normal((GH, I), dtype=np.float32), True)
        for m in GEMM_ROWS:
            A = rng.standard_normal((m, I), dtype=np.float32)
            C = np.empty((m, GH), np.float32)
            reps = max(1, 2_000_000_000 // (2 * m * I * GH * 50))

            def run(n: int, A: np.ndarray = A, C: np.ndarray = C, P: np.ndarray = P,
                    GH: int = GH, reps: int = reps) -> None:
                for _ in range(reps):
                    _kernels.gemm(A, P, GH, C, n)
            t1, t2 = _median_pair(lambda: run(1), lambda: run(2), rounds)
            print(f"{m:5} {I:5} {GH:5} {m * I * GH:12,} | {t1 / reps * 1e3:8.4f} "
                  f"{t2 / reps * 1e3:8.4f} {t2 / t1:6.2f}", flush=True)


def fork_join(rounds: int) -> None:
    """The cost of one parallel region at 2 threads: a product of two granules of rows
    and depth 0 (no arithmetic) split in two, against the same call on one thread."""
    A = np.zeros((2 * _kernels.gemm_row_granule(), 0), np.float32)
    P = _kernels.pack(np.zeros((1, 0), np.float32), True)
    C = np.empty((A.shape[0], 1), np.float32)

    def regions(n: int) -> None:
        for _ in range(FORK_JOINS):
            _kernels.gemm(A, P, 1, C, n)
    t1, t2 = _median_pair(lambda: regions(1), lambda: regions(2), rounds)
    print(f"\nfork/join of a near-empty parallel region at 2 threads: "
          f"{(t2 - t1) / FORK_JOINS * 1e6:.2f} us per region (2 threads "
          f"{t2 / FORK_JOINS * 1e6:.2f} us, 1 thread {t1 / FORK_JOINS * 1e6:.2f} us per call)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="T of each call")
    parser.add_argument("--quick", action="store_true",
                        help="a few shapes, 3 rounds (a smoke run, not figures)")
    a = parser.parse_args()
    _force_split()
    print(fastcells.__file__, "ISA", _kernels.get_isa(), "cores",
          fastcells._threads.available_cores())
    if a.quick:
        loop_table(("lstm",), (4, 16), (64,), 10, 3)
        gemm_table(3)
        fork_join(3)
        return
    loop_table(tuple(CELLS), BATCHES, HIDDEN, a.steps, a.rounds)
    gemm_table(a.rounds)
    fork_join(a.rounds)


if __name__ == "__main__":
    main()
