"""Classify handwritten digits read row by row with a bidirectional GRU trained by fastcells.

Data: scikit-learn's 1797 handwritten digits (``sklearn.datasets.load_digits``,
shipped inside scikit-learn; ``pip install scikit-learn``): 8x8 images read as
sequences of T = 8 rows of I = 8 pixels.  Model: a bidirectional GRU whose two
final states feed a Linear layer over the 10 classes; cross-entropy, Adam.
A seeded quarter of the images is the test set; the score is test accuracy
(chance: 10 %).

Run: ``python examples/classify_digits_bigru.py`` (about 10 s on a laptop),
``--quick`` for a few seconds (CI).  Prints one progress line per epoch
(``--quiet``: none).  Without scikit-learn it says so and exits 0.
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

TEST_FRACTION = 0.25
CLASSES = 10


def load_digits() -> tuple[np.ndarray, np.ndarray] | None:
    """Images (N, 8 rows, 8 pixels) scaled to [0, 1] and labels (N,), or None without sklearn."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        return None
    data = sklearn_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


class RowClassifier:
    """Bidirectional GRU over the rows; [forward final, reverse final] -> Linear -> logits."""

    def __init__(self, hidden: int, seed: int):
        self.gru = fastcells.GRU(8, hidden, bidirectional=True, batch_first=True, seed=seed)
        self.head = fastcells.Linear(2 * hidden, CLASSES, seed=seed + 1)
        self.layers = [self.gru, self.head]
        self.hidden = hidden

    def __call__(self, images: np.ndarray) -> np.ndarray:
        _, h = self.gru(images)                        # h: (2, B, H), [forward, reverse]
        return self.head(np.concatenate([h[0], h[1]], axis=1))

    def backward(self, dlogits: np.ndarray) -> None:
        dfeat = self.head.backward(dlogits)
        H = self.hidden
        self.gru.backward(None, np.stack([dfeat[:, :H], dfeat[:, H:]]))

    def mode(self, training: bool) -> None:
        for layer in self.layers:
            layer.train(training)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    args = parser.parse_args(argv)
    epochs = args.epochs or (4 if args.quick else 20)

    data = load_digits()
    if data is None:
        print("classify_digits_bigru: scikit-learn is not installed (pip install scikit-learn); "
              "skipping")
        return None
    images, labels = data
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    n_test = int(round(len(labels) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]

    model = RowClassifier(args.hidden, args.seed)
    opt = optim.Adam(model.layers, lr=1e-2)
    batch = 64
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        model.mode(True)
        shuffled = rng.permutation(train)
        total = 0.0
        for i in range(0, len(shuffled), batch):
            idx = shuffled[i:i + batch]
            opt.zero_grad()
            loss, grad = losses.cross_entropy(model(images[idx]), labels[idx])
            model.backward(grad)
            opt.step()
            total += loss * len(idx)
        if not args.quiet:
            print(f"  epoch {epoch + 1:3d}/{epochs}  train loss {total / len(shuffled):.4f}  "
                  f"{time.perf_counter() - epoch_start:.2f} s", flush=True)
    seconds = time.perf_counter() - start

    model.mode(False)
    accuracy = float(np.mean(model(images[test]).argmax(axis=1) == labels[test]))
    print(f"digits: {len(train)} train / {n_test} test images, 8 rows of 8 pixels; "
          f"bidirectional GRU({args.hidden}), {epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy: {accuracy:.3f}   (chance {1 / CLASSES:.3f})")
    return {"accuracy": accuracy, "chance": 1 / CLASSES, "epochs": epochs, "seconds": seconds}


if __name__ == "__main__":
    main()
    sys.exit(0)
