"""Is the GIL released?  Throughput of 1 vs 2 Python threads on long sequences.

Each call is an LSTM inference over a long sequence (the time loop dominates,
the NumPy projection is small).  With the GIL released for the loop, two
threads on two cores do nearly twice the work per second.  A measurement for
the record (docs/design.md), not a test: on a shared machine, quote the median of
several rounds.  BLAS is pinned to one thread so that only our threads count.

Run: ``python scripts/measure/thread_scaling.py [--rounds 5] [--threads 2] [--shape T,B,I,H]
[--calls N]`` (batched inference: ``--shape 100,16,128,128 --calls 200``).
"""
from __future__ import annotations

import argparse
import os
import threading
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import fastcells  # noqa: E402
from fastcells._cells import CELLS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default="4000,1,32,128", help="T,B,I,H of each call")
    parser.add_argument("--calls", type=int, default=8, help="calls per round (all threads)")
    a = parser.parse_args()
    T, B, I, H = (int(v) for v in a.shape.split(","))
    CALLS = a.calls
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    G = CELLS["lstm"].G
    W_ih = rng.standard_normal((G * H, I), dtype=np.float32) * 0.1
    W_hh = rng.standard_normal((G * H, H), dtype=np.float32) * 0.1

    def work(n):
        for _ in range(n):
            fastcells.lstm_forward(x, W_ih, W_hh)

    work(1)
    ratios = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        work(CALLS)
        serial = time.perf_counter() - t
        threads = [threading.Thread(target=work, args=(CALLS // a.threads,))
                   for _ in range(a.threads)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        parallel = time.perf_counter() - t
        ratios.append(serial / parallel)
        print(f"{CALLS} calls of lstm_forward T={T} B={B} H={H}: 1 thread {serial:.3f} s, "
              f"{a.threads} threads {parallel:.3f} s, throughput x{serial / parallel:.2f}")
    print(f"median throughput ratio, {a.threads} threads vs 1: x{np.median(ratios):.2f} "
          f"({os.cpu_count()} CPUs, ISA {fastcells._kernels.get_isa()})")


if __name__ == "__main__":
    main()
