"""Optimizers (``SGD``, ``Adam``) and ``clip_grad_norm`` over fastcells layers.

They follow PyTorch's update rules exactly (``torch.optim.SGD`` / ``Adam``,
``torch.nn.utils.clip_grad_norm_``), so a model trained here and there ends
with the same weights.  They read ``layer.parameters()`` (live float32 arrays)
and ``layer.grads`` afresh at every step and update the parameters in place;
their own state (momentum buffers, Adam's moments) is keyed by layer and
parameter name.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

__all__ = ["SGD", "Adam", "clip_grad_norm"]


def _layers(layers: Any) -> list:
    """One layer or an iterable of layers -> a list, each with ``parameters()`` and ``grads``."""
    items = [layers] if hasattr(layers, "parameters") else list(layers)
    for i, layer in enumerate(items):
        if not (callable(getattr(layer, "parameters", None)) and isinstance(getattr(layer, "grads", None), dict)):
            raise TypeError(f"layers: expected a fastcells layer or a list of them (objects with "
                            f"parameters() and grads), got {type(layer).__name__} at position {i}")
    return items


def _pairs(layers: list) -> Iterable:
    """(key, parameter, gradient) for every parameter of every layer."""
    for i, layer in enumerate(layers):
        grads = layer.grads
        for name, p in layer.parameters().items():
            yield (i, name), p, grads[name]


def _check_number(name: str, value: Any, low: float = 0.0, high: float = math.inf,
                  high_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    bad = not (low <= value < high if high_open else low <= value <= high)
    if bad:
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name}: expected a value in {interval}, got {value}")
    return value


class _Optimizer:
    def __init__(self, layers: Any) -> None:
        self.layers = _layers(layers)
        self.state: dict = {}

    def zero_grad(self) -> None:
        """Zero the accumulated gradients of every layer."""
        for layer in self.layers:
            layer.zero_grad()

    def step(self) -> None:  # pragma: no cover - defined by each optimizer
        raise NotImplementedError


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    ``g = grad + weight_decay * p``; with momentum, ``buf = g`` at the first step,
    then ``buf = momentum * buf + (1 - dampening) * g``; ``g = buf`` (Nesterov:
    ``g + momentum * buf``); ``p -= lr * g``.

    Parameters
    ----------
    layers : layer or list of layers
    lr : float
    momentum, weight_decay, dampening : float
    nesterov : bool
    """

    def __init__(self, layers, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
                 nesterov=False) -> None:
        super().__init__(layers)
        self.lr = _check_number("lr", lr)
        self.momentum = _check_number("momentum", momentum)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.dampening = _check_number("dampening", dampening)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov: expected True or False, got {nesterov!r}")
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")
        self.nesterov = bool(nesterov)

    def step(self) -> None:
        """Update every parameter in place from its accumulated gradient."""
        for key, p, grad in _pairs(self.layers):
            g = grad + self.weight_decay * p if self.weight_decay else grad
            if self.momentum:
                buf = self.state.get(key)
                if buf is None:
                    buf = self.state[key] = np.array(g, dtype=p.dtype)
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g


class Adam(_Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, not AdamW).

    ``g = grad + weight_decay * p``; ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Parameters
    ----------
    layers : layer or list of layers
    lr : float
    betas : (float, float)
    eps, weight_decay : float
    """

    def __init__(self, layers, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> None:
        super().__init__(layers)
        self.lr = _check_number("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                      _check_number("betas[1]", betas[1], 0.0, 1.0, high_open=True))
        self.eps = _check_number("eps", eps)
        self.weight_decay = _check_number("weight_decay", weight_decay)

    def step(self) -> None:
        """Update every parameter in place from its accumulated gradient."""
        b1, b2 = self.betas
        for key, p, grad in _pairs(self.layers):
            g = grad + self.weight_decay * p if self.weight_decay else grad
            st = self.state.get(key)
            if st is None:
                st = self.state[key] = {"step": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)}
            st["step"] += 1
            m, v, t = st["m"], st["v"], st["step"]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            step_size = self.lr / (1.0 - b1 ** t)
            denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + self.eps
            p -= step_size * (m / denom)


def clip_grad_norm(layers, max_norm, norm_type=2.0) -> float:
    """Scale the accumulated gradients so that their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients
    of all layers together; they are multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))``, in place.

    Parameters
    ----------
    layers : layer or list of layers
    max_norm : float
    norm_type : float
        2 (default), any p >= 1, or ``inf``.

    Returns
    -------
    float
        The total norm before clipping.
    """
    layers = _layers(layers)
    max_norm = _check_number("max_norm", max_norm)
    norm_type = _check_number("norm_type", norm_type, 1.0)
    grads = [g for _, _, g in _pairs(layers)]
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads)
                      ** (1.0 / norm_type))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads:
            g *= np.float32(coef)
    return total
