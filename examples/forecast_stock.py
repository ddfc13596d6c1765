"""Forecast the S&P 500's next daily return with stacked recurrent layers trained by fastcells.

The tutorial's stock example, end to end, on real prices that ship in a
package: the S&P 500 index's daily closes and volumes 1999-2018 bundled with
``arch`` (``arch.data.sp500``; ``pip install arch``).

**Read the numbers honestly: daily index returns are close to unpredictable.**
A model that scores about the zero-return (random walk) RMSE and about the
always-up share of days in direction is the expected, honest outcome; nothing
here is a trading claim.  The point is a correct, reproducible workflow:
stationary features, a chronological split, statistics from the training
years only, early stopping and model selection on a validation period, and a
test period used for nothing but the final scores.

Task: predict the next day's log return ``r_t = log(P_t / P_{t-1})`` (and from
it the next close, ``P_{t-1} exp(r_t)``, one step ahead) from the previous
``WINDOW`` trading days.  Kept simple: two features per day, that day's log
return and its volume surprise (log volume minus the mean log volume of the
previous ``VOLUME_DAYS`` days), each standardized with the training years'
mean and standard deviation.

Split by the target's date: train 1999-2012, validate 2013-2015 (early
stopping and model selection by validation RMSE), test 2016-2018, never seen
in training.

Model (``make_model``): ``LAYERS`` stacked recurrent layers with dropout
between them and layer normalization inside them, a Linear head on the last
step's output; mean squared error, gradient clipping
(``fastcells.optim.clip_grad_norm``), Adam.  The main model is the LSTM with
layer normalization; the tutorial's three cells (RNN, GRU, LSTM), each with
and without layer normalization, are trained the same way and compared in one
table: the best epoch (by validation RMSE) and the epochs run, validation and
test RMSE, test RMSE over the zero-return RMSE, directional accuracy (a day
is "up" when its return is > 0) and training seconds per epoch.  A fastcells
without ``layer_norm`` skips the normalized rows and says so.

Baselines a finance reader asks for: the zero return (random walk: tomorrow's
price is today's), the training years' mean return (random walk with drift),
and for direction a coin (50 %) and "always up" (the test years' share of up
days, the majority class).

Writes a PNG (``--out``): the test years' closes with the one-step-ahead
predicted closes, the daily returns with the predicted returns, and the
training curves.  Prints one progress line per epoch (``--quiet``: none).
Seeded: the same numbers run to run with the same thread count.

Run: ``python examples/forecast_stock.py`` (about a minute), ``--quick`` for a
few seconds (CI).  Without arch it says so and exits 0.
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# The matrices here are small: BLAS threads cost more than they give, and on a
# busy machine they can make a training step ten times slower.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings, which NumPy reads on import)

import fastcells  # noqa: E402
from fastcells import losses, optim  # noqa: E402

CELLS = {"RNN": fastcells.RNN, "GRU": fastcells.GRU, "LSTM": fastcells.LSTM}
MAIN_CELL = "LSTM"
#: inclusive year ranges of the targets' dates
SPLITS = {"train": (1999, 2012), "val": (2013, 2015), "test": (2016, 2018)}
WINDOW = 20          # trading days of history per prediction: about a month
MAX_WINDOW = 250     # a trading year: longer windows would eat the first training year
VOLUME_DAYS = 20     # the volume surprise's reference: the mean log volume of the previous days
FEATURES = 2         # per day: log return, volume surprise
LAYERS = 2
DROPOUT = 0.2
LN_EPS = 1e-5
CLIP = 1.0           # max joint gradient norm
LR = 1e-3
BATCH = 64
PERCENT = 100.0      # returns are printed in percent
TABLE_COLUMNS = ("cell", "layer norm", "best/run", "val RMSE %", "test RMSE %", "vs zero",
                 "direction %", "s/epoch")
NO_LAYER_NORM = "this fastcells has no layer_norm: the normalized rows are skipped"


def load_prices() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Dates (datetime64[D]), closes and volumes (float64), or None without arch."""
    try:
        from arch.data import sp500
    except ImportError:
        return None
    frame = sp500.load()
    dates = frame.index.to_numpy().astype("datetime64[D]")
    return (dates, frame["Adj Close"].to_numpy(np.float64),
            frame["Volume"].to_numpy(np.float64))


def supports_layer_norm(cls: type) -> bool:
    """Whether this fastcells' layer class takes ``layer_norm``."""
    return "layer_norm" in inspect.signature(cls).parameters


@dataclass
class Dataset:
    """Samples of one series: windows of past features and the next day's return."""

    x: np.ndarray            # (WINDOW, N, FEATURES) float32, standardized (time-major)
    target: np.ndarray       # (N,) float32: the return standardized like the feature
    returns: np.ndarray      # (N,) float64: the target day's log return
    prev_close: np.ndarray   # (N,) the close the day before the target day
    dates: np.ndarray        # (N,) the target days
    index: dict[str, np.ndarray]   # split name -> sample numbers, in date order
    r_mean: float            # the training years' mean and std of the daily log return
    r_std: float

    def to_return(self, standardized: np.ndarray) -> np.ndarray:
        """Model outputs (standardized) -> log returns (float64)."""
        return standardized.astype(np.float64) * self.r_std + self.r_mean


def build_dataset(dates: np.ndarray, close: np.ndarray, volume: np.ndarray,
                  window: int) -> Dataset:
    """Features per day, standardized with the training years only, cut into windows.

    Day ``d``'s features (return, volume surprise) are known at its close;
    the sample whose target is day ``t`` reads days ``t - window .. t - 1``.
    """
    years = dates.astype("datetime64[Y]").astype(int) + 1970
    r = np.full(len(close), np.nan)
    r[1:] = np.diff(np.log(close))
    log_v = np.log(volume)
    surprise = np.full(len(close), np.nan)
    trailing = np.convolve(log_v, np.ones(VOLUME_DAYS) / VOLUME_DAYS, mode="valid")[:-1]
    surprise[VOLUME_DAYS:] = log_v[VOLUME_DAYS:] - trailing
    feats = np.stack([r, surprise], axis=1)                      # (days, FEATURES)
    first = VOLUME_DAYS                                          # first day with both features
    in_train = (years >= SPLITS["train"][0]) & (years <= SPLITS["train"][1])
    in_train[:first] = False
    mean, std = feats[in_train].mean(axis=0), feats[in_train].std(axis=0)
    z = (feats - mean) / std

    days = np.arange(first + window, len(close))                 # target days
    x = np.stack([z[t - window:t] for t in days], axis=1).astype(np.float32)
    index = {name: np.flatnonzero((years[days] >= lo) & (years[days] <= hi))
             for name, (lo, hi) in SPLITS.items()}
    return Dataset(x=x, target=z[days, 0].astype(np.float32), returns=r[days],
                   prev_close=close[days - 1], dates=dates[days], index=index,
                   r_mean=float(mean[0]), r_std=float(std[0]))


class Forecaster:
    """A stacked recurrent layer and a Linear head on its last step's output."""

    def __init__(self, rnn: Any, head: fastcells.Linear) -> None:
        self.rnn = rnn
        self.head = head
        self.layers = [rnn, head]
        self._T = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(T, B, FEATURES) windows -> (B,) standardized next-day returns."""
        y, _ = self.rnn(x)
        self._T = y.shape[0]
        out: np.ndarray = self.head(y[-1])[:, 0]
        return out

    def backward(self, dpred: np.ndarray) -> None:
        """Gradients of the last training call, added to the layers' ``grads``."""
        dlast = self.head.backward(dpred[:, None])
        dy = np.zeros((self._T,) + dlast.shape, np.float32)
        dy[-1] = dlast
        self.rnn.backward(dy)

    def train(self, mode: bool = True) -> None:
        for layer in self.layers:
            layer.train(mode)

    def state_dict(self) -> list[dict[str, np.ndarray]]:
        return [layer.state_dict() for layer in self.layers]

    def load_state_dict(self, state: list[dict[str, np.ndarray]]) -> None:
        for layer, sd in zip(self.layers, state):
            layer.load_state_dict(sd)


def make_model(cell: str, hidden: int, layers: int, dropout: float, layer_norm: bool,
               *, seed: int = 0) -> Forecaster:
    """The forecaster: ``layers`` stacked ``cell`` layers of size ``hidden`` and a Linear head.

    ``dropout`` acts between the recurrent layers; ``layer_norm`` normalizes
    inside them (``fastcells.<cell>(..., layer_norm=True, layer_norm_eps=1e-5)``).
    """
    options: dict[str, Any] = {"layer_norm": True, "layer_norm_eps": LN_EPS} if layer_norm else {}
    rnn = CELLS[cell](FEATURES, hidden, num_layers=layers, dropout=dropout, seed=seed, **options)
    return Forecaster(rnn, fastcells.Linear(hidden, 1, seed=seed + 1))


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def direction(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of days whose predicted direction (up: > 0) is the true one."""
    return float(np.mean((pred > 0) == (truth > 0)))


@dataclass(eq=False)          # runs compare by identity: they hold arrays
class Run:
    """One model's training history and test predictions."""

    label: str
    cell: str
    layer_norm: bool
    train_loss: list[float] = field(default_factory=list)   # per epoch, standardized MSE
    val_loss: list[float] = field(default_factory=list)     # per epoch, standardized MSE
    val_rmse: list[float] = field(default_factory=list)     # per epoch, in returns
    seconds: list[float] = field(default_factory=list)      # training seconds per epoch
    best_epoch: int = 0
    test_pred: np.ndarray = field(default_factory=lambda: np.zeros(0))   # log returns


def fit(model: Forecaster, data: Dataset, run: Run, epochs: int, patience: int, seed: int,
        quiet: bool) -> None:
    """Adam on mini-batches with clipping; keep the epoch of lowest validation RMSE.

    Stops when ``patience`` epochs pass without a better validation RMSE, then
    restores the best epoch's parameters and predicts the test years.
    """
    opt = optim.Adam(model.layers, lr=LR)
    rng = np.random.default_rng(seed)
    train, val = data.index["train"], data.index["val"]
    best: list[dict[str, np.ndarray]] = model.state_dict()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train(True)
        order = rng.permutation(train)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss, grad = losses.mse(model(data.x[:, idx]), data.target[idx])
            model.backward(grad)
            optim.clip_grad_norm(model.layers, CLIP)
            opt.step()
            total += loss * len(idx)
        run.seconds.append(time.perf_counter() - start)
        run.train_loss.append(total / len(order))
        model.train(False)
        val_out = model(data.x[:, val])
        run.val_loss.append(losses.mse(val_out, data.target[val])[0])
        run.val_rmse.append(rmse(data.to_return(val_out), data.returns[val]))
        if not quiet:
            print(f"  {run.label:8s} epoch {epoch:3d}/{epochs}  train loss "
                  f"{run.train_loss[-1]:.4f}  val RMSE {PERCENT * run.val_rmse[-1]:.4f} %  "
                  f"{run.seconds[-1]:.2f} s", flush=True)
        if run.val_rmse[-1] < min(run.val_rmse[:-1], default=math.inf):
            run.best_epoch, best = epoch, model.state_dict()
        elif epoch - run.best_epoch >= patience:
            break
    model.load_state_dict(best)
    model.train(False)
    run.test_pred = data.to_return(model(data.x[:, data.index["test"]]))


def print_report(data: Dataset, runs: list[Run]) -> Run:
    """The baselines, the table, the model chosen by validation; returns that model's run."""
    test = data.index["test"]
    truth = data.returns[test]
    zero = rmse(np.zeros_like(truth), truth)
    drift = rmse(np.full_like(truth, data.r_mean), truth)
    up = float(np.mean(truth > 0))
    se = math.sqrt(0.25 / len(truth))       # a coin's standard error over the test days
    print(f"baselines on the test years: zero-return (random walk) RMSE {PERCENT * zero:.4f} %, "
          f"train-mean return RMSE {PERCENT * drift:.4f} %; direction: coin 50.0 %, "
          f"always up {PERCENT * up:.1f} % (1 s.e. {PERCENT * se:.1f} points)")
    print("  ".join(f"{name:>{len(name)}s}" for name in TABLE_COLUMNS))
    for run in runs:
        test_rmse = rmse(run.test_pred, truth)
        cells = (run.cell, "yes" if run.layer_norm else "no",
                 f"{run.best_epoch}/{len(run.train_loss)}",
                 f"{PERCENT * run.val_rmse[run.best_epoch - 1]:.4f}",
                 f"{PERCENT * test_rmse:.4f}", f"{test_rmse / zero:.3f}",
                 f"{PERCENT * direction(run.test_pred, truth):.1f}",
                 f"{float(np.mean(run.seconds)):.2f}")
        print("  ".join(f"{c:>{len(name)}s}" for c, name in zip(cells, TABLE_COLUMNS)))
    chosen = min(runs, key=lambda r: r.val_rmse[r.best_epoch - 1])
    chosen_rmse = rmse(chosen.test_pred, truth)
    close = data.prev_close[test] * np.exp(truth)
    print(f"selected by val RMSE: {chosen.label}, test RMSE {PERCENT * chosen_rmse:.4f} % "
          f"({chosen_rmse / zero:.3f} x zero-return), direction "
          f"{PERCENT * direction(chosen.test_pred, truth):.1f} % (always up "
          f"{PERCENT * up:.1f} %); next close RMSE "
          f"{rmse(data.prev_close[test] * np.exp(chosen.test_pred), close):.2f} points "
          f"(random walk {rmse(data.prev_close[test], close):.2f})")
    print("Daily returns are close to unpredictable: an RMSE ratio near 1 and a direction "
          "near the always-up share are the honest expectation, not a failure. This is a "
          "correct, reproducible workflow, not a trading claim.")
    return chosen


def plot(data: Dataset, runs: list[Run], main_run: Run, out: str) -> bool:
    """Test-year closes and returns with the main model's predictions, and the training curves.

    Returns False (and writes nothing) without matplotlib.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    test = data.index["test"]
    dates = data.dates[test]
    color = f"C{runs.index(main_run)}"          # the main model's color in every panel
    fig, (ax_price, ax_ret, ax_loss) = plt.subplots(3, 1, figsize=(9, 10))
    ax_price.plot(dates, data.prev_close[test] * np.exp(data.returns[test]), color="0.3",
                  lw=1, label="close")
    ax_price.plot(dates, data.prev_close[test] * np.exp(main_run.test_pred), color=color, lw=0.8,
                  label=f"{main_run.label}: one-step-ahead prediction")
    ax_price.set_title("S&P 500 on the test years (never seen in training)")
    ax_price.set_ylabel("close")
    ax_price.legend(fontsize="small")
    ax_ret.plot(dates, PERCENT * data.returns[test], color="0.6", lw=0.6, label="log return")
    ax_ret.plot(dates, PERCENT * main_run.test_pred, color=color, lw=0.8,
                label=f"{main_run.label}: predicted")
    ax_ret.axhline(0, color="k", lw=0.5)
    ax_ret.set_ylabel("daily log return (%)")
    ax_ret.legend(fontsize="small")
    # each period's MSE over that of always forecasting the training years' mean return
    # (standardized: 0), so the calmer validation years sit on the same scale
    train_ref, val_ref = (float(np.mean(data.target[data.index[name]] ** 2))
                          for name in ("train", "val"))
    for i, run in enumerate(runs):
        epochs = np.arange(1, len(run.train_loss) + 1)
        ax_loss.plot(epochs, np.array(run.train_loss) / train_ref, color=f"C{i}", ls="--",
                     lw=0.8)
        ax_loss.plot(epochs, np.array(run.val_loss) / val_ref, color=f"C{i}", lw=1.2,
                     label=run.label)
    ax_loss.axhline(1, color="k", lw=0.5)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("MSE / MSE of the train-mean forecast")
    ax_loss.set_title("training curves: train (dashed, with dropout), validation (solid)",
                      fontsize="medium")
    ax_loss.legend(fontsize="small", ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def window_size(text: str) -> int:
    """argparse type: an integer in [1, MAX_WINDOW]."""
    value = positive(text)
    if value > MAX_WINDOW:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_WINDOW} days, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--epochs", type=positive, default=None, help="most epochs per model")
    parser.add_argument("--patience", type=positive, default=None,
                        help="epochs without a better val RMSE before stopping")
    parser.add_argument("--hidden", type=positive, default=None)
    parser.add_argument("--window", type=window_size, default=WINDOW,
                        help="trading days per input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="forecast_stock.png", help="PNG path (with matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    args = parser.parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):                # before training, not after
        parser.error(f"argument --out: expected a path in an existing folder, got {args.out!r}")
    epochs = args.epochs or (3 if args.quick else 30)
    patience = args.patience or (epochs if args.quick else 5)
    hidden = args.hidden or (8 if args.quick else 32)

    prices = load_prices()
    if prices is None:
        print("forecast_stock: arch is not installed (pip install arch); skipping")
        return None
    data = build_dataset(*prices, window=args.window)
    counts = {name: len(idx) for name, idx in data.index.items()}
    print(f"S&P 500 daily closes {prices[0][0]}..{prices[0][-1]} (arch.data.sp500): predict the "
          f"next day's log return from the previous {args.window} days' return and volume "
          "surprise")
    print("split by date: " + ", ".join(f"{name} {lo}-{hi} ({counts[name]} days)"
                                        for name, (lo, hi) in SPLITS.items())
          + "; features standardized with the training years' statistics")
    print(f"models: {LAYERS} recurrent layers of {hidden}, dropout {DROPOUT} between them, "
          f"Linear head; MSE, Adam lr {LR:g}, clip {CLIP:g}, batch {BATCH}, at most {epochs} "
          f"epochs, early stopping on val RMSE (patience {patience})", flush=True)

    if not all(supports_layer_norm(cls) for cls in CELLS.values()):
        print(NO_LAYER_NORM, flush=True)
    runs = []
    for cell, cls in CELLS.items():
        for layer_norm in (False, True):
            if layer_norm and not supports_layer_norm(cls):
                continue
            run = Run(cell + ("+LN" if layer_norm else ""), cell, layer_norm)
            model = make_model(cell, hidden, LAYERS, DROPOUT, layer_norm, seed=args.seed)
            fit(model, data, run, epochs, patience, args.seed, args.quiet)
            runs.append(run)
    selected = print_report(data, runs)
    main_run = [r for r in runs if r.cell == MAIN_CELL][-1]    # the normalized one if any
    if plot(data, runs, main_run, args.out):
        print(f"plot written to {args.out}")
    else:
        print("matplotlib is not installed: no plot")
    return {"runs": runs, "data": data, "selected": selected}


if __name__ == "__main__":
    main()
    sys.exit(0)
