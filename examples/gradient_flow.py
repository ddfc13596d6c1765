"""How far back in time does the gradient reach?  RNN vs GRU vs LSTM on the same task.

For a loss on the last step of a sequence, ``fastcells.diagnostics.gradient_flow``
gives ``||dL/dh_t||`` for every step ``t``.  Going back in time a plain RNN's
curve falls geometrically (the vanishing gradient), while the gates of a GRU
or an LSTM keep it alive for longer.

Task: scikit-learn's handwritten digits read pixel by pixel (T = 64 steps of
one pixel), the classic long-sequence setting; without scikit-learn, random
sequences of the same shape.  Each cell (hidden size 32, PyTorch's default
initialisation) is measured fresh and again after a short training with
cross-entropy on its last output, Linear head, Adam.  Prints how many steps
back the gradient stays above 1e-3 of its value at the last step, and writes
``gradient_flow.png`` when matplotlib is installed.  Training prints its
progress (mean loss, seconds) five times per cell; ``--quiet``: not at all.

Run: ``python examples/gradient_flow.py`` (under a minute), ``--quick`` (CI).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# The matrices here are small: BLAS threads cost more than they give.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings, which NumPy reads on import)

import fastcells  # noqa: E402
from fastcells import losses, optim  # noqa: E402
from fastcells.diagnostics import gradient_flow  # noqa: E402

CELLS = {"RNN": fastcells.RNN, "GRU": fastcells.GRU, "LSTM": fastcells.LSTM}
HIDDEN = 32
REACH = 1e-3        # "reach": steps back while the norm stays above REACH * the last one
REPORTS = 5         # progress lines per cell's training


def load_task(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Sequences (N, 64, 1) in [0, 1], labels (N,), and the task's name."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        x = rng.random((512, 64, 1), dtype=np.float32)
        return x, rng.integers(0, 10, 512), "random sequences (scikit-learn not installed)"
    data = load_digits()
    x = (data.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)
    return x, data.target.astype(np.int64), "digits read pixel by pixel"


def train(layer, x: np.ndarray, labels: np.ndarray, steps: int, seed: int, name: str,
          quiet: bool) -> None:
    """A few Adam steps of cross-entropy on the last output (batch_first layer).

    Unless ``quiet``, prints the mean loss and seconds of every ``steps / REPORTS`` steps.
    """
    head = fastcells.Linear(HIDDEN, 10, seed=seed)
    opt = optim.Adam([layer, head], lr=3e-3)
    rng = np.random.default_rng(seed)
    every = max(1, steps // REPORTS)
    total, start = 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(labels), 64)
        opt.zero_grad()
        y, _ = layer(x[idx])
        loss, grad = losses.cross_entropy(head(y[:, -1]), labels[idx])
        dy = np.zeros_like(y)
        dy[:, -1] = head.backward(grad)
        layer.backward(dy)
        fastcells.clip_grad_norm([layer, head], 1.0)
        opt.step()
        total += loss
        if not quiet and (step % every == 0 or step == steps):
            done = (step - 1) % every + 1            # steps since the last line
            print(f"  {name:4s} step {step:4d}/{steps}  train loss {total / done:.4f}  "
                  f"{time.perf_counter() - start:.3f} s", flush=True)
            total, start = 0.0, time.perf_counter()
    layer.eval()


def reach(norms: np.ndarray) -> int:
    """Steps back from the last one while the norm stays above REACH times its last value."""
    above = norms >= REACH * norms[-1]
    below = np.flatnonzero(~above)
    return len(norms) - 1 - (below[-1] + 1) if len(below) else len(norms) - 1


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--steps", type=int, default=None, help="training steps per cell")
    parser.add_argument("--out", default="gradient_flow.png", help="PNG path (with matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no training progress lines")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (10 if args.quick else 150)

    rng = np.random.default_rng(args.seed)
    x, labels, task = load_task(rng)
    probe = x[rng.permutation(len(labels))[:32]]        # the batch the curves are measured on
    T = probe.shape[1]
    print(f"task: {task}, T = {T}; hidden size {HIDDEN}; {steps} training steps per cell",
          flush=True)
    curves: dict = {}
    for name, cls in CELLS.items():
        layer = cls(1, HIDDEN, batch_first=True, seed=args.seed)
        curves[name, "initial"] = gradient_flow(layer, probe)
        train(layer, x, labels, steps, args.seed, name, args.quiet)
        curves[name, "trained"] = gradient_flow(layer, probe)

    print(f"steps back with ||dL/dh_t|| >= {REACH:g} x ||dL/dh_T-1||, "
          "and ||dL/dh_0|| / ||dL/dh_T-1||:")
    result = {}
    for (name, when), norms in curves.items():
        result[name, when] = {"reach": reach(norms), "first_over_last": norms[0] / norms[-1]}
        print(f"  {name:4s} {when:8s} reach {reach(norms):3d}   ratio {norms[0] / norms[-1]:.2e}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return result
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, when), norms in curves.items():
        ax.semilogy(np.arange(T), norms / norms[-1], label=f"{name} ({when})",
                    linestyle="-" if when == "trained" else ":",
                    color={"RNN": "C0", "GRU": "C1", "LSTM": "C2"}[name])
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t|| / ||dL/dh_T-1||")
    ax.set_title(f"Gradient flow of a last-step loss: {task}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot written to {args.out}")
    result["png"] = args.out
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
