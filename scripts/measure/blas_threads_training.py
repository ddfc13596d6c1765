"""A training loop's time with NumPy's BLAS at its default threads and pinned to
one: fastcells' recurrent layers use no BLAS, so the two should match (the
issue's target: within 1.05x).  Runs the README's training example (a 1-layer
LSTM, H = 32, batch 64) and a 2-layer LSTM forecaster (H = 32, batch 32, dropout,
clipping, Adam) in subprocesses, alternating the two settings.

Run: ``python scripts/measure/blas_threads_training.py [--rounds N]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

LOOP = r"""
import time, numpy as np, fastcells
from fastcells import losses, optim
rng = np.random.default_rng(0)
two = {two}
B, T, I, H = (32, 50, 1, 32) if two else (64, 40, 3, 32)
x = rng.standard_normal((B, T, I)).astype(np.float32)
target = np.cumsum(x[..., :1], axis=1) / np.arange(1, T + 1)[:, None]
lstm = fastcells.LSTM(I, H, num_layers=2 if two else 1, dropout=0.2 if two else 0.0,
                      batch_first=True, seed=0)
head = fastcells.Linear(H, 1, seed=0)
opt = optim.Adam([lstm, head], lr=1e-2)
t0 = time.perf_counter()
for epoch in range(100):
    opt.zero_grad()
    y, _ = lstm(x)
    loss, dpred = losses.mse(head(y), target)
    lstm.backward(head.backward(dpred))
    fastcells.clip_grad_norm([lstm, head], max_norm=1.0)
    opt.step()
print(time.perf_counter() - t0)
"""


def _time(two: bool, pinned: bool) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if pinned:
        env["OPENBLAS_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", LOOP.format(two=two)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    for two, name in ((False, "README example (1-layer LSTM, H=32, B=64)"),
                      (True, "forecaster (2-layer LSTM, H=32, B=32, dropout)")):
        default, pinned = [], []
        for _ in range(ns.rounds):
            default.append(_time(two, False))
            pinned.append(_time(two, True))
        d, p = statistics.median(default), statistics.median(pinned)
        print(f"{name}: BLAS default {d:.3f} s, pinned to 1 {p:.3f} s, ratio {d / p:.3f}")


if __name__ == "__main__":
    main()
