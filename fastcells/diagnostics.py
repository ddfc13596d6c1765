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
  otherwise; LSTM peepholes (``peephole_l{k}``), projections (``weight_hr_l{k}``,
  PyTorch's ``proj_size``: then ``h`` has P values) and layer normalization
  (``ln_*_l{k}``, with the layer's ``layer_norm_eps``) are used when the state
  dict has them;
- a :class:`fastcells.interop.StateDict` (weights with ``.options``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import functional
from ._cells import CELLS, GATES, cell_functions
from ._checks import as_float, check_shape, to_numpy
from ._results import LayerNormWeights

F32 = np.dtype(np.float32)
#: float32 elements the kernels may keep per chunk of suffix problems (64 MiB)
_CHUNK_ELEMENTS = 1 << 24
#: (steps, rows, G*H) float32 buffers a training forward and its backward hold
#: at once, about (input projections, saved gates, gate gradients, headroom)
_BUFFERS = 4

__all__ = ["gradient_flow"]

#: a float32 array
Array = npt.NDArray[np.float32]
#: PyTorch's ``mode`` of its RNN modules -> (cell, RNN nonlinearity or None)
_TORCH_MODES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "GRU": ("gru", None),
                "LSTM": ("lstm", None)}
#: layer class name -> cell (``RNN``, ``GRU``, ``LSTM``: fastcells' and PyTorch's)
_LAYER_CELLS = {spec.layer: name for name, spec in CELLS.items()}


class _Weights(NamedTuple):
    """One layer's float32 weights (biases None when absent) and extra forward kwargs."""

    W_ih: Array
    W_hh: Array
    b_ih: Array | None
    b_hh: Array | None
    extra: dict[str, Any]


def _describe_layer(layer: Any) -> tuple[str, dict[str, Any], dict[str, np.ndarray], bool]:
    """(cell, forward options, state dict as float32 arrays, batch_first) of a layer."""
    options = getattr(layer, "options", None)
    if isinstance(layer, dict) and options is not None:           # interop.StateDict
        if options.bidirectional or options.reverse:
            raise ValueError("layer: expected one forward direction, got weights with "
                             f"bidirectional={options.bidirectional}, reverse={options.reverse}")
        kw: dict[str, Any] = options.functional_kwargs()
        kw.pop("reverse")
        return options.cell, kw, {k: to_numpy(v) for k, v in layer.items()}, options.batch_first
    if not callable(getattr(layer, "state_dict", None)):
        raise TypeError("layer: expected an RNN/GRU/LSTM layer with state_dict() (fastcells or "
                        f"PyTorch) or a fastcells.interop.StateDict, got {type(layer).__name__}")
    mode = getattr(layer, "mode", None)
    nonlinearity = getattr(layer, "nonlinearity", "tanh")
    if mode in _TORCH_MODES:
        cell, nl = _TORCH_MODES[mode]
        nonlinearity = nl or nonlinearity
    else:
        cells = [_LAYER_CELLS[c.__name__] for c in type(layer).__mro__
                 if c.__name__ in _LAYER_CELLS]
        if not cells:
            raise TypeError("layer: expected an RNN, GRU or LSTM layer, got "
                            f"{type(layer).__name__}")
        cell = cells[0]
    if getattr(layer, "bidirectional", False):
        raise ValueError("layer: expected a unidirectional layer, got bidirectional=True (a loss "
                         "on the last step reaches the reverse direction at its first step)")
    kw = {}
    if getattr(layer, "layer_norm", False) is True:      # a fastcells layer's own options
        kw["layer_norm_eps"] = float(layer.layer_norm_eps)
    if cell == "rnn":
        kw["nonlinearity"] = nonlinearity
    elif cell == "gru":
        kw["linear_before_reset"] = bool(getattr(layer, "linear_before_reset", True))
    state = {k: to_numpy(v) for k, v in layer.state_dict().items()}
    return cell, kw, state, bool(getattr(layer, "batch_first", False))


def _layer_weights(state: dict[str, np.ndarray]) -> list[_Weights]:
    """Per layer k, its weights from the state dict (PyTorch's names)."""
    ks = sorted({int(m.group(1)) for key in state
                 if (m := re.fullmatch(r"weight_ih_l(\d+)", key))})
    if not ks or ks != list(range(len(ks))):
        raise ValueError(f"layer: expected state-dict keys weight_ih_l0, weight_hh_l0, ... "
                         f"(PyTorch's names), got {sorted(state)}")
    def get(name: str) -> Array | None:
        return None if name not in state else as_float(name, state[name], F32)

    out = []
    for k in ks:
        W_ih, W_hh = get(f"weight_ih_l{k}"), get(f"weight_hh_l{k}")
        if W_hh is None or W_ih is None:
            missing = f"weight_hh_l{k}" if W_hh is None else f"weight_ih_l{k}"
            raise ValueError(f"layer: expected state-dict key {missing} beside weight_ih_l{k} "
                             f"(PyTorch's names), got {sorted(state)}")
        extra: dict[str, Any] = {}
        for key, name in (("peephole", "peephole"), ("W_hr", "weight_hr")):
            if (value := get(f"{name}_l{k}")) is not None:
                extra[key] = value
        if f"ln_ih_weight_l{k}" in state:        # a layer-normalized layer
            extra["layer_norm"] = LayerNormWeights._make(
                get(f"ln_{field}_l{k}") for field in LayerNormWeights._fields)
        out.append(_Weights(W_ih, W_hh, get(f"bias_ih_l{k}"), get(f"bias_hh_l{k}"), extra))
    return out


def gradient_flow(layer: Any, x: npt.ArrayLike, hx: Any = None, *,
                  dy_last: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
    """Norms of the gradient of a last-step loss with respect to each hidden state.

    With ``L = sum(dy_last * h_{T-1})`` (by default ``dy_last`` is ones, so
    ``L`` is the sum of the last output), returns ``||dL/dh_t||`` for
    ``t = 0 .. T-1`` over the whole batch (Frobenius norm of the ``(B, H)``
    gradient).  ``dL/dh_t`` is the gradient flowing back into ``h_t`` from
    later steps, as PyTorch's ``h_t.grad`` in an unrolled loop (for an LSTM,
    with ``c_t`` held fixed).  A curve that falls geometrically going back in
    time is the vanishing gradient.

    For a multi-layer layer the curve is that of the top layer.  The work is
    one forward and one backward pass of the compiled kernels over ``T*B``
    suffix sequences (``O(T^2 B)`` row steps, in chunks of bounded memory), on
    fastcells' threads (``fastcells.set_num_threads``).

    Parameters
    ----------
    layer : layer or StateDict
        A unidirectional ``fastcells.RNN`` / ``GRU`` / ``LSTM``, a
        ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` (duck-typed: ``state_dict()``
        with PyTorch's names, the cell from ``mode`` or the class name, the
        options from the attributes ``nonlinearity``,
        ``linear_before_reset``, ``batch_first``), or a
        :class:`fastcells.interop.StateDict` of one forward direction.
    x : array (T, B, I), or (B, T, I) for a ``batch_first`` layer
        Inputs: real floats (or a framework tensor), converted to float32.
    hx : array (num_layers, B, H), optional
        Initial hidden state of every layer; for an LSTM a pair ``(h0, c0)``
        of such arrays (either may be None).  None means zeros.
    dy_last : array (B, H), optional
        Gradient of the loss with respect to the last output; ones if None.

    Returns
    -------
    float64 array (T,)
        ``norms[t] = ||dL/dh_t||``; ``norms[T-1] = ||dy_last||``.  Empty when
        ``T == 0``.

    Raises
    ------
    TypeError
        ``layer`` is not an RNN/GRU/LSTM layer or a state dict, or ``hx`` of
        an LSTM is not a pair.
    ValueError
        A bidirectional layer, a state dict without
        PyTorch's names, or an array of the wrong shape (naming it).
    """
    cell, kw, state, batch_first = _describe_layer(layer)
    weights = _layer_weights(state)
    x = as_float("x", to_numpy(x), F32)
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-D array {'(B, T, I)' if batch_first else '(T, B, I)'},"
                         f" got shape {x.shape}")
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    T, B, _ = x.shape
    # h's width (P with a projection) and the cell state's (H)
    H = weights[0].W_hh.shape[1]
    Hc = weights[0].W_hh.shape[0] // GATES[cell]
    L = len(weights)
    lstm = CELLS[cell].has_cell_state
    h0s: list[Array | None] = [None] * L
    c0s: list[Array | None] = [None] * L
    if hx is not None:
        if lstm and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"hx: expected a pair (h0, c0) for an LSTM, got {type(hx).__name__}")
        pair = hx if lstm else (hx, None)
        for name, value, dest, width in zip(("hx[0]" if lstm else "hx", "hx[1]"), pair,
                                            (h0s, c0s), (H, Hc)):
            if value is not None:
                value = as_float(name, to_numpy(value), F32)
                check_shape(name, value, ("num_layers", "B", "H"), (L, B, width))
                dest[:] = list(value)
    if dy_last is None:
        dy = np.ones((B, H), F32)
    else:
        dy = as_float("dy_last", to_numpy(dy_last), F32)
        check_shape("dy_last", dy, ("B", "H"), (B, H))
    if T == 0:
        return np.zeros(0)

    fwd: Callable[..., Any]
    bwd: Callable[..., Any]
    fwd, bwd = cell_functions(functional, cell)
    # The top layer's input; the layers below do not depend on its states.
    inp = x
    for k in range(L - 1):
        below = weights[k]
        extra = {"c0": c0s[k]} if lstm else {}
        inp = fwd(inp, below.W_ih, below.W_hh, below.b_ih, below.b_hh, h0s[k], **extra,
                  **below.extra, **kw).y
    top = weights[-1]
    top_args = (top.W_ih, top.W_hh, top.b_ih, top.b_hh)
    kw = {**kw, **top.extra}

    # h_t (and c_t) for every t: one step at a time, as lstm_forward returns no c_t sequence.
    h = np.zeros((B, H), F32) if (h0 := h0s[-1]) is None else h0
    c = np.zeros((B, Hc), F32) if (c0 := c0s[-1]) is None else c0
    hs, cs = np.empty((T, B, H), F32), np.empty((T, B, Hc), F32)
    for t in range(T):
        out = fwd(inp[t:t + 1], *top_args, h, **({"c0": c} if lstm else {}), **kw)
        h = hs[t] = out.h
        if lstm:
            c = cs[t] = out.c

    grads = np.empty((T, B, H), F32)
    per_problem = max(T - 1, 1) * B * GATES[cell] * Hc * _BUFFERS
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
            state0["c0"] = cs[ts].reshape(rows, Hc)
        out = fwd(xb.reshape(steps, rows, inp.shape[2]), *top_args, lengths=lengths,
                  training=True, **state0, **kw)
        g = bwd(out.cache, dh=np.tile(dy, (len(ts), 1)))
        grads[ts] = g.dh0.reshape(len(ts), B, H)
    grads64 = grads.astype(np.float64)
    norms: npt.NDArray[np.float64] = np.sqrt(np.einsum("tbh,tbh->t", grads64, grads64))
    return norms
