"""Loss functions returning ``(loss, grad)``: the value and its gradient in one call.

Both use mean reduction, as PyTorch's defaults, and compute in float32; the
gradient has the shape of the prediction and feeds straight into a layer's
``backward``.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._checks import as_float

F32 = np.dtype(np.float32)
#: a float32 array
Array = npt.NDArray[np.float32]

__all__ = ["mse", "cross_entropy"]


def mse(pred: npt.ArrayLike, target: npt.ArrayLike) -> tuple[float, Array]:
    """Mean squared error, ``mean((pred - target)**2)`` over every element.

    Parameters
    ----------
    pred : array
        Predictions, any shape.  Real floats, converted to float32.
    target : array, shape of ``pred``
        Targets.  Real floats, converted to float32.

    Returns
    -------
    loss : float
        The mean (NaN when ``pred`` is empty).
    grad : float32 array, shape of ``pred``
        ``2 * (pred - target) / pred.size``: the gradient of ``loss`` wrt
        ``pred``, ready for a layer's ``backward``.

    Raises
    ------
    TypeError
        Arrays that are not real floating point, naming them.
    ValueError
        ``target`` of another shape than ``pred``.
    """
    pred = as_float("pred", pred, F32)
    target = as_float("target", target, F32)
    if target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of pred {pred.shape}, got {target.shape}")
    diff = pred - target
    n = max(diff.size, 1)
    # a float64 sum of squares, not np.dot: no BLAS call (and its threads) in a training step
    loss = float(np.square(diff, dtype=np.float64).sum()) / n if diff.size else float("nan")
    grad: Array = diff * np.float32(2.0 / n)
    return loss, grad


def cross_entropy(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, Array]:
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
        The mean over the labels (NaN when there are none).
    grad : float32 array (..., C)
        ``(softmax(logits) - onehot(labels)) / N``, N the number of labels:
        the gradient of ``loss`` wrt ``logits``.

    Raises
    ------
    TypeError
        ``logits`` not real floating point, or ``labels`` not integers.
    ValueError
        No class axis, ``labels`` of the wrong shape, or a label outside
        ``[0, C)``.
    """
    logits = as_float("logits", logits, F32)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape (..., C) with C >= 1 classes, got {logits.shape}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError("labels: expected an integer array of class indices, got dtype "
                        f"{labels.dtype}")
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
    grad *= np.float32(1.0 / max(N, 1))
    out: Array = grad.reshape(logits.shape)
    return loss, out
