"""Throughput of concurrent callers: two (or more) Python threads each calling
``lstm_forward`` repeatedly, at fastcells' default thread count and at
``set_num_threads(1)``, against one caller alone.  Prints calls per second and
the slowest call relative to a solo call (the issue's targets: two callers at
the default reach >= 0.95x the throughput of two callers at one thread each,
and >= one caller's throughput at the default; no call slower than 2.5x solo).

Run: ``python scripts/measure/concurrent_callers.py [--seconds S] [--callers N]``.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

import fastcells


def _problem(T: int, B: int, I: int, H: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    W = rng.standard_normal((4 * H, I), dtype=np.float32) * 0.1
    R = rng.standard_normal((4 * H, H), dtype=np.float32) * 0.1
    return x, W, R


def _run(callers: int, seconds: float, args: tuple[np.ndarray, ...]) -> tuple[float, float]:
    """(calls per second of all callers, the slowest call in ms)."""
    stop = time.perf_counter() + seconds
    counts = [0] * callers
    slowest = [0.0] * callers

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            fastcells.lstm_forward(*args)
            slowest[i] = max(slowest[i], time.perf_counter() - t0)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), 1e3 * max(slowest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--shape", default="100,16,128,128", help="T,B,I,H")
    ns = parser.parse_args()
    T, B, I, H = (int(v) for v in ns.shape.split(","))
    args = _problem(T, B, I, H)
    default = fastcells.get_num_threads()
    results: dict[str, list[float]] = {}
    slow: dict[str, list[float]] = {}
    solo_ms: list[float] = []
    for _ in range(ns.rounds):
        for label, n, callers in (("1 caller, default", default, 1),
                                  (f"{ns.callers} callers, default", default, ns.callers),
                                  (f"{ns.callers} callers, 1 thread each", 1, ns.callers)):
            fastcells.set_num_threads(n)
            rate, worst = _run(callers, ns.seconds, args)
            results.setdefault(label, []).append(rate)
            slow.setdefault(label, []).append(worst)
        fastcells.set_num_threads(default)
        t0 = time.perf_counter()
        for _ in range(20):
            fastcells.lstm_forward(*args)
        solo_ms.append(1e3 * (time.perf_counter() - t0) / 20)
    solo = statistics.median(solo_ms)
    print(f"LSTM {(T, B, I, H)} forward; default threads {default}; solo call {solo:.3f} ms; "
          f"medians of {ns.rounds} rounds of {ns.seconds:g} s")
    for label, rates in results.items():
        worst = statistics.median(slow[label])
        print(f"  {label:28s} {statistics.median(rates):9.1f} calls/s   slowest call "
              f"{worst:8.3f} ms ({worst / solo:.2f}x solo)")
    two_default = statistics.median(results[f"{ns.callers} callers, default"])
    two_single = statistics.median(results[f"{ns.callers} callers, 1 thread each"])
    one_default = statistics.median(results["1 caller, default"])
    print(f"  {ns.callers} callers at the default / at 1 thread each: "
          f"{two_default / two_single:.2f}x;  / 1 caller at the default: "
          f"{two_default / one_default:.2f}x")


if __name__ == "__main__":
    main()
