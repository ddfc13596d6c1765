"""Loss functions returning ``(loss, grad)``: the value and its gradient in one call.

Both use mean reduction, as PyTorch's defaults, and compute in float32; the
gradient has the shape of the prediction and feeds straight into a layer's
``backward``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import as_float

F32 = np.float32

__all__ = ["mse", "cross_entropy"]


def mse(pred: Any, target: Any):
    """Mean squared error, ``mean((pred - target)**2)`` over every element.

    Parameters
    ----------
    pred, target : array, same shape
        Real floats, converted to float32.

    Returns
    -------
    loss : float
    grad : float32 array, shape of ``pred``
        ``2 * (pred - target) / pred.size``.
    """
    pred = as_float("pred", pred, F32)
    target = as_float("target", target, F32)
    if target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of pred {pred.shape}, got {target.shape}")
    diff = pred - target
    n = max(diff.size, 1)
    loss = float(np.dot(diff.ravel(), diff.ravel())) / n if diff.size else float("nan")
    return loss, diff * F32(2.0 / n)


def cross_entropy(logits: Any, labels: Any):
    """Mean cross-entropy of integer class labels under softmax(logits) over the last axis.

    ``loss = mean(-log_softmax(logits)[..., labels])``, computed with the
    max-shifted log-sum-exp so that large logits do not overflow.  Unlike
    ``torch.nn.functional.cross_entropy`` the class axis is the **last** one
    (a sequence model's ``(T, B, C)`` output works as it is).

    Parameters
    ----------
    logits : array (..., C)
        Real floats, converted to float32.
    labels : int array (...)
        Class indices in ``[0, C)``, shape ``logits.shape[:-1]``.

    Returns
    -------
    loss : float
    grad : float32 array (..., C)
        ``(softmax(logits) - onehot(labels)) / N``, N the number of labels.
    """
    logits = as_float("logits", logits, F32)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape (..., C) with C >= 1 classes, got {logits.shape}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array of class indices, got dtype {labels.dtype}")
    C = logits.shape[-1]
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels: expected shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        bad = labels[(labels < 0) | (labels >= C)].ravel()[0]
        raise ValueError(f"labels: expected class indices in [0, C) = [0, {C}), got {int(bad)}")
    z = logits.reshape(-1, C)
    idx = labels.reshape(-1).astype(np.intp)
    N = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - lse
    rows = np.arange(N)
    loss = float(-log_p[rows, idx].astype(np.float64).mean()) if N else float("nan")
    grad = np.exp(log_p)
    grad[rows, idx] -= 1.0
    grad *= F32(1.0 / max(N, 1))
    return loss, grad.reshape(logits.shape)
