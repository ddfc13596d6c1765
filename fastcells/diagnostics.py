"""Diagnostics: how far back in time gradients reach (the vanishing-gradient picture).

:func:`gradient_flow` measures ``||dL/dh_t||`` for every step ``t`` of a loss
``L`` on the last step.  It is exact and uses only the functional API:
``dL/dh_t`` is the gradient with respect to the *initial* state of the same
layer run over the suffix ``x[t+1:]`` from ``h_t``.  All ``T`` suffix problems
go through the kernels at once as one batch of ``T*B`` sequences, left-aligned
and masked with ``lengths`` (the suffix from ``t`` has ``T-1-t`` steps), so the
cost is one forward and one backward over ``T*B`` rows -- ``O(T^2 B)`` row
steps, chunked so that memory stays bounded.  That is fine for a diagnostic,
and needs nothing from the kernels beyond their public contract.

What counts as a layer (duck-typed, no framework import):

- a ``fastcells.RNN``/``GRU``/``LSTM``, or a ``torch.nn.RNN``/``GRU``/``LSTM``:
  ``state_dict()`` with PyTorch's names (arrays or tensors); the cell from
  ``layer.mode`` (PyTorch: "RNN_TANH", "RNN_RELU", "GRU", "LSTM") or else the
  class name (RNN, GRU, LSTM, or a subclass of one); options from the
  attributes ``nonlinearity`` ("tanh"), ``linear_before_reset`` (True),
  ``batch_first`` (False), ``bidirectional`` (False) when present, defaults
  otherwise; LSTM peepholes (``peephole_l{k}``) are used when the state dict
  has them;
- a :class:`fastcells.interop.StateDict` (weights with ``.options``).
"""
from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np

from . import functional
from ._checks import GATES, as_float, check_shape

F32 = np.float32
#: float32 elements the kernels may keep per chunk of suffix problems (~64 MB)
_CHUNK_ELEMENTS = 1 << 24

__all__ = ["gradient_flow"]

_FORWARD = {"rnn": functional.rnn_forward, "gru": functional.gru_forward,
            "lstm": functional.lstm_forward}
_BACKWARD = {"rnn": functional.rnn_backward, "gru": functional.gru_backward,
             "lstm": functional.lstm_backward}
_TORCH_MODES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "GRU": ("gru", None),
                "LSTM": ("lstm", None)}


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _describe_layer(layer: Any) -> tuple[str, dict, dict, bool]:
    """(cell, forward options, state dict as float32 arrays, batch_first) of a layer."""
    options = getattr(layer, "options", None)
    if isinstance(layer, dict) and options is not None:           # interop.StateDict
        if options.bidirectional or options.reverse:
            raise ValueError("layer: expected one forward direction, got weights with "
                             f"bidirectional={options.bidirectional}, reverse={options.reverse}")
        kw = options.functional_kwargs()
        kw.pop("reverse")
        return options.cell, kw, {k: _numpy(v) for k, v in layer.items()}, options.batch_first
    if not callable(getattr(layer, "state_dict", None)):
        raise TypeError("layer: expected an RNN/GRU/LSTM layer with state_dict() (fastcells or "
                        f"PyTorch) or a fastcells.interop.StateDict, got {type(layer).__name__}")
    mode = getattr(layer, "mode", None)
    nonlinearity = getattr(layer, "nonlinearity", "tanh")
    if mode in _TORCH_MODES:
        cell, nl = _TORCH_MODES[mode]
        nonlinearity = nl or nonlinearity
    else:
        names = [c.__name__ for c in type(layer).__mro__]
        cells = [n.lower() for n in names if n in ("RNN", "GRU", "LSTM")]
        if not cells:
            raise TypeError("layer: expected an RNN, GRU or LSTM layer, got "
                            f"{type(layer).__name__}")
        cell = cells[0]
    if getattr(layer, "bidirectional", False):
        raise ValueError("layer: expected a unidirectional layer, got bidirectional=True (a loss "
                         "on the last step reaches the reverse direction at its first step)")
    if getattr(layer, "proj_size", 0):
        raise ValueError("layer: LSTM projections (proj_size) are not supported by the kernels")
    kw = {}
    if cell == "rnn":
        kw["nonlinearity"] = nonlinearity
    elif cell == "gru":
        kw["linear_before_reset"] = bool(getattr(layer, "linear_before_reset", True))
    state = {k: _numpy(v) for k, v in layer.state_dict().items()}
    return cell, kw, state, bool(getattr(layer, "batch_first", False))


def _layer_weights(state: dict, cell: str) -> list:
    """Per layer k: ((W_ih, W_hh, b_ih, b_hh), extra forward kwargs), float32 (None when absent)."""
    ks = sorted({int(m.group(1)) for key in state
                 if (m := re.fullmatch(r"weight_ih_l(\d+)", key))})
    if not ks or ks != list(range(len(ks))):
        raise ValueError(f"layer: expected state-dict keys weight_ih_l0, weight_hh_l0, ... "
                         f"(PyTorch's names), got {sorted(state)}")
    out = []
    for k in ks:
        get = (lambda n: None if f"{n}_l{k}" not in state else
               as_float(f"{n}_l{k}", state[f"{n}_l{k}"], F32))
        peephole = get("peephole")
        out.append(((get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")),
                    {} if peephole is None else {"peephole": peephole}))
    return out


def gradient_flow(layer: Any, x: Any, hx: Any = None, *, dy_last: Any = None) -> np.ndarray:
    """Norms of the gradient of a last-step loss with respect to each hidden state.

    With ``L = sum(dy_last * h_{T-1})`` (by default ``dy_last`` is ones, so
    ``L`` is the sum of the last output), returns ``||dL/dh_t||`` for
    ``t = 0 .. T-1`` over the whole batch (Frobenius norm of the ``(B, H)``
    gradient).  ``dL/dh_t`` is the gradient flowing back into ``h_t`` from
    later steps, as PyTorch's ``h_t.grad`` in an unrolled loop (for an LSTM,
    with ``c_t`` held fixed).  A curve that falls geometrically going back in
    time is the vanishing gradient.

    For a multi-layer layer the curve is that of the top layer.

    Parameters
    ----------
    layer : fastcells or PyTorch RNN/GRU/LSTM (unidirectional), or an
        :class:`fastcells.interop.StateDict`; see the module docstring.
    x : array (T, B, I), or (B, T, I) for a ``batch_first`` layer
        Real floats, converted to float32.
    hx : array (num_layers, B, H), optional
        Initial state (LSTM: a pair ``(h0, c0)``); zeros if None.
    dy_last : array (B, H), optional
        Gradient of the loss with respect to the last output; ones if None.

    Returns
    -------
    float64 array (T,)
        ``norms[t] = ||dL/dh_t||``; ``norms[T-1] = ||dy_last||``.
    """
    cell, kw, state, batch_first = _describe_layer(layer)
    weights = _layer_weights(state, cell)
    x = as_float("x", _numpy(x), F32)
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-D array {'(B, T, I)' if batch_first else '(T, B, I)'},"
                         f" got shape {x.shape}")
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    T, B, _ = x.shape
    H = weights[0][0][1].shape[1]
    L = len(weights)
    lstm = cell == "lstm"
    h0s, c0s = [None] * L, [None] * L
    if hx is not None:
        if lstm and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"hx: expected a pair (h0, c0) for an LSTM, got {type(hx).__name__}")
        pair = hx if lstm else (hx, None)
        for name, value, dest in zip(("hx[0]" if lstm else "hx", "hx[1]"), pair, (h0s, c0s)):
            if value is not None:
                value = as_float(name, _numpy(value), F32)
                check_shape(name, value, ("num_layers", "B", "H"), (L, B, H))
                dest[:] = list(value)
    if dy_last is None:
        dy = np.ones((B, H), F32)
    else:
        dy = as_float("dy_last", _numpy(dy_last), F32)
        check_shape("dy_last", dy, ("B", "H"), (B, H))
    if T == 0:
        return np.zeros(0)

    # The top layer's input; the layers below do not depend on its states.
    inp = x
    for k in range(L - 1):
        extra = {"c0": c0s[k]} if lstm else {}
        inp = _FORWARD[cell](inp, *weights[k][0], h0s[k], **extra, **weights[k][1], **kw).y
    top, top_kw = weights[-1]
    kw = {**kw, **top_kw}
    fwd, bwd = _FORWARD[cell], _BACKWARD[cell]

    # h_t (and c_t) for every t: one step at a time, as lstm_forward returns no c_t sequence.
    h = np.zeros((B, H), F32) if h0s[-1] is None else h0s[-1]
    c = np.zeros((B, H), F32) if c0s[-1] is None else c0s[-1]
    hs, cs = np.empty((T, B, H), F32), np.empty((T, B, H), F32)
    for t in range(T):
        out = fwd(inp[t:t + 1], *top, h, **({"c0": c} if lstm else {}), **kw)
        h = hs[t] = out.h
        if lstm:
            c = cs[t] = out.c

    grads = np.empty((T, B, H), F32)
    per_problem = max(T - 1, 1) * B * GATES[cell] * H * 4
    chunk = max(1, _CHUNK_ELEMENTS // per_problem)
    for t0 in range(0, T, chunk):
        ts = np.arange(t0, min(t0 + chunk, T))
        steps = T - 1 - t0                      # the longest suffix in the chunk
        xb = np.zeros((steps, len(ts), B, inp.shape[2]), F32)
        for j, t in enumerate(ts):
            xb[: T - 1 - t, j] = inp[t + 1:]
        lengths = np.repeat(T - 1 - ts, B)
        rows = len(ts) * B
        state0 = {"h0": hs[ts].reshape(rows, H)}
        if lstm:
            state0["c0"] = cs[ts].reshape(rows, H)
        out = fwd(xb.reshape(steps, rows, inp.shape[2]), *top, lengths=lengths, training=True,
                  **state0, **kw)
        g = bwd(out.cache, dh=np.tile(dy, (len(ts), 1)))
        grads[ts] = g.dh0.reshape(len(ts), B, H)
    return np.sqrt(np.einsum("tbh,tbh->t", grads.astype(np.float64), grads.astype(np.float64)))
