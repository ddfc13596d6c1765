"""Forecast yearly sunspot numbers with a stacked LSTM trained in NumPy by fastcells.

Data: the yearly sunspot numbers 1700-2008 shipped inside statsmodels
(``statsmodels.datasets.sunspots``; ``pip install statsmodels``).  The model
reads the last ``WINDOW`` years and predicts the next one: a 2-layer LSTM,
a Linear head on its last output, mean squared error, Adam.  The last 20 % of
the years are the test set; the score is the test RMSE (in sunspot numbers)
against the naive forecast "next year = this year".

Run: ``python examples/forecast_lstm.py`` (about 15 s on a laptop),
``--quick`` for a few seconds (CI).  Prints one progress line per epoch
(``--quiet``: none).  Without statsmodels it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# The matrices here are small: BLAS threads cost more than they give, and on a
# busy machine they can make a training step ten times slower.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings, which NumPy reads on import)

import fastcells  # noqa: E402
from fastcells import losses, optim  # noqa: E402

WINDOW = 24          # years of history per prediction: two solar cycles
TEST_FRACTION = 0.2


def load_series() -> np.ndarray | None:
    """Yearly sunspot numbers (float64), or None when statsmodels is not installed."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        return None
    return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)


def windows(z: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-major inputs (WINDOW, N, 1) and targets (N, 1): z[t] for t in [start, stop)."""
    ts = np.arange(max(start, WINDOW), stop)
    x = np.stack([z[t - WINDOW:t] for t in ts], axis=1)[..., None]
    return x.astype(np.float32), z[ts, None].astype(np.float32)


class Forecaster:
    """2-layer LSTM + Linear on the last step."""

    def __init__(self, hidden: int, seed: int):
        self.lstm = fastcells.LSTM(1, hidden, num_layers=2, seed=seed)
        self.head = fastcells.Linear(hidden, 1, seed=seed + 1)
        self.layers = [self.lstm, self.head]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, _ = self.lstm(x)
        self._T = y.shape[0]
        return self.head(y[-1])

    def backward(self, dpred: np.ndarray) -> None:
        dlast = self.head.backward(dpred)
        dy = np.zeros((self._T,) + dlast.shape, np.float32)
        dy[-1] = dlast
        self.lstm.backward(dy)

    def eval(self) -> None:
        for layer in self.layers:
            layer.eval()

    def train(self) -> None:
        for layer in self.layers:
            layer.train()


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    args = parser.parse_args(argv)
    epochs = args.epochs or (20 if args.quick else 50)

    series = load_series()
    if series is None:
        print("forecast_lstm: statsmodels is not installed (pip install statsmodels); skipping")
        return None
    # sqrt tames the cycle peaks; standardise with the training years only
    n_test = int(round(len(series) * TEST_FRACTION))
    split = len(series) - n_test
    s = np.sqrt(series)
    mean, std = s[:split].mean(), s[:split].std()
    z = (s - mean) / std
    x_train, y_train = windows(z, 0, split)
    x_test, _ = windows(z, split, len(series))
    truth = series[split:]

    model = Forecaster(args.hidden, args.seed)
    opt = optim.Adam(model.layers, lr=1e-2)
    rng = np.random.default_rng(args.seed)
    batch = 32
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        model.train()
        order = rng.permutation(y_train.shape[0])
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            loss, grad = losses.mse(model(x_train[:, idx]), y_train[idx])
            model.backward(grad)
            fastcells.clip_grad_norm(model.layers, 1.0)
            opt.step()
            total += loss * len(idx)
        if epoch == epochs // 2:          # one step down in learning rate for the last half
            opt.lr = 3e-3
        if not args.quiet:
            print(f"  epoch {epoch + 1:3d}/{epochs}  train loss {total / len(order):.4f}  "
                  f"{time.perf_counter() - epoch_start:.2f} s", flush=True)
    seconds = time.perf_counter() - start

    model.eval()
    pred_z = model(x_test)[:, 0].astype(np.float64)
    pred = np.maximum(pred_z * std + mean, 0) ** 2
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    naive = float(np.sqrt(np.mean((series[split - 1:-1] - truth) ** 2)))
    print(f"sunspots {int(len(series))} years, test = last {n_test}; 2-layer LSTM({args.hidden}),"
          f" {epochs} epochs in {seconds:.1f} s")
    print(f"test RMSE: LSTM {rmse:.1f}   naive last value {naive:.1f}   "
          f"(ratio {rmse / naive:.2f})")
    return {"rmse": rmse, "naive_rmse": naive, "epochs": epochs, "seconds": seconds}


if __name__ == "__main__":
    main()
    sys.exit(0)
