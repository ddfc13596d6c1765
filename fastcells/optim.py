"""Optimizers (``SGD``, ``Adam``) and ``clip_grad_norm`` over fastcells layers.

They follow PyTorch's update rules exactly (``torch.optim.SGD`` / ``Adam``,
``torch.nn.utils.clip_grad_norm_``), so a model trained here and there ends
with the same weights.  They read ``layer.parameters()`` (live float32 arrays)
and ``layer.grads`` afresh at every step and update the parameters in place;
their own state (momentum buffers, Adam's moments) is keyed by layer and
parameter name.

An optimizer pickles (and copies) to its hyperparameters, its state and its
layers (each as a layer pickles: weights and options), with the format
header of ``_pickle``.  Pickled in one call with the model's layers, it
updates the unpickled layers (pickle keeps identity within one call).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypedDict

import numpy as np
import numpy.typing as npt

from ._checks import check_bool, check_number
from ._pickle import with_header, without_header

__all__ = ["SGD", "Adam", "clip_grad_norm"]

#: a float32 parameter or gradient array
Array = npt.NDArray[np.float32]
#: a parameter's key in an optimizer's state: (position of its layer, its name)
Key = tuple[int, str]


class Layer(Protocol):
    """What the optimizers need of a layer (``fastcells.RNN`` ... ``Linear``)."""

    grads: dict[str, Array]

    def parameters(self) -> dict[str, Array]: ...

    def zero_grad(self) -> None: ...


#: one layer, or several
Layers = Layer | Iterable[Layer]


def _layers(layers: Any) -> list[Layer]:
    """One layer or an iterable of layers -> a list, each with ``parameters()`` and ``grads``."""
    items = [layers] if hasattr(layers, "parameters") else list(layers)
    for i, layer in enumerate(items):
        if not (callable(getattr(layer, "parameters", None))
                and isinstance(getattr(layer, "grads", None), dict)):
            raise TypeError(f"layers: expected a fastcells layer or a list of them (objects with "
                            f"parameters() and grads), got {type(layer).__name__} at position {i}")
    return items


def _writable(value: Any) -> Any:
    """``value`` with its read-only arrays (in dicts too) replaced by writable copies."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, dict):
        return {k: _writable(v) for k, v in value.items()}
    return value


def _pairs(layers: Sequence[Layer]) -> Iterator[tuple[Key, Array, Array]]:
    """(key, parameter, gradient) for every parameter of every layer."""
    for i, layer in enumerate(layers):
        grads = layer.grads
        for name, p in layer.parameters().items():
            yield (i, name), p, grads[name]


#: the optimizers' shared docstring parts (``%(name)s`` in each): every help() page whole
_DOCS = {
    "read_only": """At :meth:`step`, a
        read-only parameter (``load_state_dict(..., assign=True)`` of a
        read-only array), naming it; nothing is updated then.""",
    "notes": """Notes
    -----
    Pickling (and ``copy``): the pickle holds the hyperparameters, ``state``
    and ``layers``, each pickled as a layer is (weights and options, no
    gradients).  Pickle the optimizer with its model in one call,
    ``pickle.dumps((model, opt))``: the unpickled optimizer then updates the
    unpickled layers, since pickle keeps identity within one call.  Pickled
    alone it brings copies of its layers (``opt.layers``).  A pickle of a
    newer format than this fastcells reads raises ``ValueError`` naming both
    versions.""",
}


class _Optimizer:
    """What the optimizers share: their layers, their per-parameter state, zero_grad."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__doc__ = (cls.__doc__ or "") % _DOCS

    def __init__(self, layers: Layers) -> None:
        self.layers = _layers(layers)

    def zero_grad(self) -> None:
        """Zero the accumulated gradients of every layer (``layer.zero_grad()``)."""
        for layer in self.layers:
            layer.zero_grad()

    def step(self) -> None:  # pragma: no cover - defined by each optimizer
        raise NotImplementedError

    def _writable_pairs(self) -> list[tuple[Key, Array, Array]]:
        """(key, parameter, gradient) of every parameter, once each is known writable:
        a read-only one raises before any is updated."""
        pairs = list(_pairs(self.layers))
        for (i, name), p, _ in pairs:
            if not p.flags.writeable:
                raise ValueError(
                    f"step: expected writable parameters, got a read-only array for {name} of "
                    f"layers[{i}] ({self.layers[i]!r}), assigned or unpickled without a copy "
                    f"(e.g. from Ray's object store); give the layer arrays of its own first: "
                    f"layer.load_state_dict(layer.state_dict(), assign=True).  Nothing was "
                    f"updated")
        return pairs

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state: hyperparameters, per-parameter state and the layers."""
        return with_header(self.__dict__.copy())

    def __setstate__(self, state: Any) -> None:
        """Restore a pickled state (a newer format raises ``ValueError`` naming both
        versions).  Read-only arrays of the state (out-of-band buffers, as Ray's
        object store gives) are copied: the optimizer updates its state in place."""
        attrs = without_header(type(self).__name__, state, ("layers", "state"))
        attrs["state"] = _writable(attrs["state"])
        self.__dict__.update(attrs)

    def _changed(self) -> None:
        """Tell the layers their parameters changed (they drop prepared weights)."""
        for layer in self.layers:
            changed = getattr(layer, "parameters_changed", None)
            if changed is not None:
                changed()


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    At each :meth:`step`, for every parameter ``p`` with accumulated gradient
    ``grad``: ``g = grad + weight_decay * p``; with momentum, ``buf = g`` at
    the first step, then ``buf = momentum * buf + (1 - dampening) * g`` and
    ``g = buf`` (Nesterov: ``g = g + momentum * buf``); ``p -= lr * g``, in
    place.

    Parameters
    ----------
    layers : layer or iterable of layers
        fastcells layers (``RNN``, ``GRU``, ``LSTM``, ``Linear``) or any
        objects with ``parameters()`` (name -> live float32 array), ``grads``
        (name -> gradient array) and ``zero_grad()``.
    lr : float
        Learning rate, ``>= 0``.
    momentum : float, default 0
        Momentum factor, ``>= 0``; 0 means plain SGD.
    weight_decay : float, default 0
        L2 penalty added to the gradient, ``>= 0``.
    dampening : float, default 0
        Dampening of the momentum, ``>= 0``.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).

    Attributes
    ----------
    state : dict
        The momentum buffer of each parameter (float32), keyed by (layer
        position, parameter name).
    layers : list
        The layers, in the order given (the positions of ``state``'s keys).

    Raises
    ------
    TypeError
        A hyperparameter that is not a number (``nesterov`` not a bool), or
        ``layers`` that are not layers.
    ValueError
        A hyperparameter out of its range, naming it.  %(read_only)s

    %(notes)s
    """

    def __init__(self, layers: Layers, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(layers)
        self.lr = check_number("lr", lr)
        self.momentum = check_number("momentum", momentum)
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.dampening = check_number("dampening", dampening)
        self.nesterov = check_bool("nesterov", nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")
        self.state: dict[Key, Array] = {}

    def step(self) -> None:
        """Update every parameter in place from its accumulated gradient."""
        for key, p, grad in self._writable_pairs():
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
        self._changed()


class AdamState(TypedDict):
    """Adam's state of one parameter (a plain dict): its step count and moments."""

    step: int
    m: Array
    v: Array


class Adam(_Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, not AdamW).

    At each :meth:`step` ``t`` (from 1), for every parameter ``p`` with
    accumulated gradient ``grad``: ``g = grad + weight_decay * p``;
    ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, in place.

    Parameters
    ----------
    layers : layer or iterable of layers
        fastcells layers (``RNN``, ``GRU``, ``LSTM``, ``Linear``) or any
        objects with ``parameters()`` (name -> live float32 array), ``grads``
        (name -> gradient array) and ``zero_grad()``.
    lr : float, default 1e-3
        Learning rate, ``>= 0``.
    betas : (float, float), default (0.9, 0.999)
        ``(b1, b2)``, the decay rates of the moments, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator for stability, ``>= 0``.
    weight_decay : float, default 0
        L2 penalty added to the gradient, ``>= 0``.

    Attributes
    ----------
    state : dict
        Per parameter, keyed by (layer position, parameter name): a dict of
        its step count ``"step"`` and moments ``"m"``, ``"v"`` (float32
        arrays: a pickled Adam resumes where it stopped).
    layers : list
        The layers, in the order given (the positions of ``state``'s keys).

    Raises
    ------
    TypeError
        A hyperparameter that is not a number (``betas`` not a pair), or
        ``layers`` that are not layers.
    ValueError
        A hyperparameter out of its range, naming it.  %(read_only)s

    %(notes)s
    """

    def __init__(self, layers: Layers, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(layers)
        self.lr = check_number("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (check_number("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                      check_number("betas[1]", betas[1], 0.0, 1.0, high_open=True))
        self.eps = check_number("eps", eps)
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.state: dict[Key, AdamState] = {}

    def step(self) -> None:
        """Update every parameter in place from its accumulated gradient."""
        b1, b2 = self.betas
        for key, p, grad in self._writable_pairs():
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
        self._changed()


#: torch.nn.utils.clip_grad_norm_'s guard against a zero norm
_CLIP_EPS = 1e-6


def clip_grad_norm(layers: Layers, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale the accumulated gradients so that their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients
    of all layers together; they are multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))``, in place.

    Parameters
    ----------
    layers : layer or iterable of layers
        fastcells layers (``RNN``, ``GRU``, ``LSTM``, ``Linear``) or any
        objects with ``parameters()`` and ``grads`` (name -> gradient array).
    max_norm : float
        The largest joint norm allowed, ``>= 0``.
    norm_type : float, default 2
        The p of the p-norm: any ``p >= 1``, or ``math.inf`` for the largest
        absolute value.

    Returns
    -------
    float
        The joint norm before clipping (0.0 when there are no parameters).

    Raises
    ------
    TypeError
        ``max_norm`` or ``norm_type`` not a number, or ``layers`` that are
        not layers.
    ValueError
        ``max_norm < 0`` or ``norm_type < 1``.
    """
    items = _layers(layers)
    max_norm = check_number("max_norm", max_norm)
    norm_type = check_number("norm_type", norm_type, 1.0)
    grads = [g for _, _, g in _pairs(items)]
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads)
                      ** (1.0 / norm_type))
    coef = min(1.0, max_norm / (total + _CLIP_EPS))
    if coef < 1.0:
        for g in grads:
            g *= np.float32(coef)
    return total
