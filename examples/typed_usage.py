"""The functional API under a type checker: this file passes ``mypy --strict``.

It runs an LSTM forward with a cache, backpropagates a squared loss through
time and takes one gradient step, then runs a GRU over variable-length
sequences: every value has the type mypy infers from fastcells' annotations
(named tuples of float32 arrays).

Run: ``python examples/typed_usage.py``; check:
``mypy --strict --follow-imports=silent examples/typed_usage.py``
(silent: the package's own sources are annotated at their API but not yet
strict-clean inside).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

import fastcells

F32 = npt.NDArray[np.float32]


def lstm_step(x: F32, W_ih: F32, W_hh: F32, b_ih: F32, b_hh: F32,
              lr: float) -> tuple[float, F32]:
    """One SGD step on ``mean(y**2)``: returns the loss and the new ``W_hh``."""
    out: fastcells.LSTMForwardResult = fastcells.lstm_forward(
        x, W_ih, W_hh, b_ih, b_hh, training=True)
    loss = float(np.mean(out.y ** 2))
    dy = (2.0 / out.y.size) * out.y
    # LSTMGradients, or PeepholeLSTMGradients (8 fields) when the forward had peepholes
    grads = fastcells.lstm_backward(out.cache, dy=dy)
    return loss, (W_hh - np.float32(lr) * grads.dW_hh).astype(np.float32)


def gru_final_states(x: F32, W_ih: F32, W_hh: F32, lengths: npt.NDArray[np.int64]) -> F32:
    """Final hidden state (B, H) of each sequence after its own last valid step."""
    res: fastcells.ForwardResult = fastcells.gru_forward(x, W_ih, W_hh, lengths=lengths)
    return res.h


def main() -> None:
    T, B, I, H = 12, 3, 5, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    W_ih = 0.3 * rng.standard_normal((4 * H, I), dtype=np.float32)
    W_hh = 0.3 * rng.standard_normal((4 * H, H), dtype=np.float32)
    b = np.zeros(4 * H, np.float32)
    losses = []
    for _ in range(3):
        loss, W_hh = lstm_step(x, W_ih, W_hh, b, b, lr=0.5)
        losses.append(loss)
    print("LSTM loss per step:", " ".join(f"{v:.5f}" for v in losses))
    h = gru_final_states(x, 0.3 * rng.standard_normal((3 * H, I), dtype=np.float32),
                         0.3 * rng.standard_normal((3 * H, H), dtype=np.float32),
                         np.array([T, 5, 0], dtype=np.int64))
    print("GRU final states:", h.shape, h.dtype)


if __name__ == "__main__":
    main()
