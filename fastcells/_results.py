"""The public result types of the functional API and the training cache.

``ForwardResult`` / ``LSTMForwardResult`` are what ``<cell>_forward`` returns,
``Gradients`` / ``LSTMGradients`` / ``PeepholeLSTMGradients`` what
``<cell>_backward`` returns, and :class:`Cache` what a training forward pass
keeps for its backward pass.  :class:`LayerNormWeights` holds the gains and
biases of a layer-normalized cell (and their gradients), ``LayerNormGradients``
/ ``LayerNormLSTMGradients`` what ``<cell>_backward`` returns for one, and
``ProjLSTMGradients`` what ``lstm_backward`` returns for an LSTM with projection.  They
are the contract shared by ``fastcells.reference`` and ``fastcells.functional``.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ForwardResult", "LSTMForwardResult", "Gradients", "LSTMGradients",
           "PeepholeLSTMGradients", "LayerNormWeights", "LayerNormGradients",
           "LayerNormLSTMGradients", "ProjLSTMGradients", "Cache"]


class ForwardResult(NamedTuple):
    """Result of ``rnn_forward`` / ``gru_forward``.

    y : (T, B, H) outputs, zeros at steps past a sequence's length.
    h : (B, H) final hidden state (the state after each sequence's last step).
    cache : a :class:`Cache` when ``training=True``, else None.
    """

    y: np.ndarray
    h: np.ndarray
    cache: Cache | None


class LSTMForwardResult(NamedTuple):
    """Result of ``lstm_forward``: as :class:`ForwardResult` plus the final cell state
    ``c`` (B, H)."""

    y: np.ndarray
    h: np.ndarray
    c: np.ndarray
    cache: Cache | None


class Gradients(NamedTuple):
    """Result of ``rnn_backward`` / ``gru_backward``.

    Shapes follow the forward arguments: ``dx (T, B, I)``, ``dh0 (B, H)``,
    ``dW_ih (G*H, I)``, ``dW_hh (G*H, H)``, ``db_ih, db_hh (G*H,)``.  The bias
    gradients are None when the forward pass had no biases.  ``dh0`` is
    always given (the gradient with respect to the initial state, zeros or not).
    """

    dx: np.ndarray
    dh0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None


class LSTMGradients(NamedTuple):
    """Result of ``lstm_backward``: as :class:`Gradients` plus ``dc0 (B, H)``."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None


class PeepholeLSTMGradients(NamedTuple):
    """Result of ``lstm_backward`` for an LSTM with peepholes: as
    :class:`LSTMGradients` plus ``dpeephole (3*H,)`` (order i, f, o)."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dpeephole: np.ndarray


class LayerNormWeights(NamedTuple):
    """Gains and biases of a layer-normalized cell (also used for their gradients).

    ``LN(v; g, b) = (v - mean(v)) / sqrt(var(v) + eps) * g + b`` over a whole row
    (population variance).  ``ih_*`` normalize the input projection ``W_ih x``,
    ``hh_*`` the recurrent projection ``W_hh h`` (each a row of G*H values,
    normalized before the biases ``b_ih``, ``b_hh`` are added); LSTM's ``c_*``
    normalize the new cell state inside ``h' = o * tanh(LN(c'))`` (H values; the
    carried ``c'`` itself is not normalized).

    ih_weight, ih_bias : array (G*H,)
        Gain and bias of ``LN(W_ih x)``.
    hh_weight, hh_bias : array (G*H,)
        Gain and bias of ``LN(W_hh h)``.
    c_weight, c_bias : array (H,) or None
        Gain and bias of ``LN(c')``: required for an LSTM, None for RNN and GRU.
    """

    ih_weight: np.ndarray
    ih_bias: np.ndarray
    hh_weight: np.ndarray
    hh_bias: np.ndarray
    c_weight: np.ndarray | None = None
    c_bias: np.ndarray | None = None


class LayerNormGradients(NamedTuple):
    """Result of ``rnn_backward`` / ``gru_backward`` for a layer-normalized cell: as
    :class:`Gradients` plus ``dlayer_norm``, the gradients of the gains and biases
    (a :class:`LayerNormWeights` of the compute dtype, ``c_weight``/``c_bias``
    None)."""

    dx: np.ndarray
    dh0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dlayer_norm: LayerNormWeights


class LayerNormLSTMGradients(NamedTuple):
    """Result of ``lstm_backward`` for a layer-normalized LSTM: as
    :class:`LSTMGradients` plus ``dpeephole (3*H,)`` (order i, f, o; None without
    peepholes) and ``dlayer_norm``, the gradients of the gains and biases (a
    :class:`LayerNormWeights` of the compute dtype)."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dpeephole: np.ndarray | None
    dlayer_norm: LayerNormWeights


class ProjLSTMGradients(NamedTuple):
    """Result of ``lstm_backward`` for an LSTM with projection (``W_hr`` (P, H),
    ``h' = W_hr (o * tanh(c'))``): the fields of :class:`LayerNormLSTMGradients`
    (``dh0 (B, P)``, ``dW_hh (4*H, P)``; ``dpeephole`` None without peepholes,
    ``dlayer_norm`` None without layer normalization) plus ``dW_hr (P, H)``.

    One type whatever the other options, so its fields do not depend on them;
    the first seven are those of :class:`LSTMGradients`.
    """

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dpeephole: np.ndarray | None
    dlayer_norm: LayerNormWeights | None
    dW_hr: np.ndarray


class Cache:
    """What a training forward pass keeps for its backward pass.

    Opaque to users: pass it to the matching ``*_backward`` of the same module
    (``fastcells`` or ``fastcells.reference``).  Its arrays are read-only, so a
    cache can be used for several backward passes and is never changed by one.
    """

    __slots__ = ("cell", "backend", "options", "arrays")
    cell: str
    backend: str
    options: Mapping[str, Any]
    arrays: Mapping[str, Any]

    def __init__(self, cell: str, backend: str, options: dict[str, Any], arrays: dict[str, Any]):
        frozen = {}
        for key, value in arrays.items():
            if isinstance(value, np.ndarray):
                value = value.view()
                value.setflags(write=False)   # as flags.writeable = False, 0.2 us cheaper
            frozen[key] = value
        # The kernels trust the shapes of these arrays: replacing one (or an
        # option) between forward and backward must fail here, not read
        # out of bounds there.
        setattr_ = object.__setattr__
        setattr_(self, "cell", cell)
        setattr_(self, "backend", backend)
        setattr_(self, "options", MappingProxyType(dict(options)))
        setattr_(self, "arrays", MappingProxyType(frozen))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cache: read-only, cannot set {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle go through __init__
        return (Cache, (self.cell, self.backend, dict(self.options), dict(self.arrays)))

    def __getitem__(self, key: str) -> Any:
        return self.arrays[key]

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{k}={v.shape}" for k, v in self.arrays.items() if isinstance(v, np.ndarray)
        )
        return f"<fastcells Cache cell={self.cell!r} backend={self.backend!r} {shapes}>"
