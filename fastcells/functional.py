"""The functional API: ``*_forward`` and ``*_backward`` for RNN, GRU and LSTM.

Each function is the three phases of DESIGN.md:

1. check and convert the arguments (``_checks``: float32, C order);
2. project the inputs for all steps with one NumPy matmul, fold the biases in,
   pack the recurrent weights once, and run the compiled time loop
   (``_kernels``, GIL released);
3. backward only: the weight gradients as one matmul each after the loop.

All buffers are allocated here, before the loop; the loop allocates nothing.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _kernels
from ._checks import (
    Cache,
    ForwardResult,
    Gradients,
    LSTMForwardResult,
    LSTMGradients,
    PeepholeLSTMGradients,
    check_bool,
    check_cache,
    check_forward,
    check_grad,
    check_nonlinearity,
)

F32 = np.float32
BACKEND = "fastcells"

__all__ = [
    "rnn_forward", "rnn_backward", "gru_forward", "gru_backward",
    "lstm_forward", "lstm_backward",
]


# ----------------------------------------------------------------------------
# shared phases


#: inference projects the input at most this many floats of (steps x B x G*H) at
#: a time (1 MiB), into one reused buffer: memory beyond the output then does
#: not grow with T, and each chunk is still a GEMM large enough to be efficient
CHUNK_FLOATS = 1 << 18


def _project(x: np.ndarray, W_ih: np.ndarray, bias: Optional[np.ndarray],
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Phase 1: ``x (T, B, I) @ W_ih.T + bias`` as one GEMM, float32 C order (T, B, G*H)."""
    T, B, I = x.shape
    GH = W_ih.shape[0]
    gx = np.matmul(x.reshape(T * B, I), W_ih.T,
                   out=None if out is None else out.reshape(T * B, GH))
    if bias is not None:
        gx += bias
    return gx.reshape(T, B, GH)


def _projected_chunks(a, bias: Optional[np.ndarray], training: bool, reverse: bool):
    """Yield ``(t0, gx)``: the input projection of steps ``[t0, t0 + len(gx))``, in the
    order the loop walks time.  Training projects all steps at once (the gates of
    every step are kept anyway); inference a chunk at a time into one buffer."""
    if training:
        yield 0, _project(a.x, a.W_ih, bias)
        return
    steps = max(1, min(a.T, CHUNK_FLOATS // (a.B * a.G * a.H)))
    buf = np.empty((steps, a.B, a.G * a.H), F32)
    starts = range(0, a.T, steps)
    for t0 in (reversed(starts) if reverse else starts):
        n = min(steps, a.T - t0)
        yield t0, _project(a.x[t0:t0 + n], a.W_ih, bias, out=buf[:n])


def _initial(state: Optional[np.ndarray], B: int, H: int) -> np.ndarray:
    """A new float32 (B, H) buffer holding the initial state (the kernel updates it)."""
    return np.zeros((B, H), F32) if state is None else state.copy()


def _empty_backward(cache: Cache, dh: np.ndarray, dc: Optional[np.ndarray]):
    """Gradients for T == 0 or B == 0: nothing flows through the loop."""
    dx, dW_ih, dW_hh = (np.zeros(cache[k].shape, F32) for k in ("x", "W_ih", "W_hh"))
    G_H = dW_hh.shape[0]
    db_ih, db_hh = (np.zeros(G_H, F32), np.zeros(G_H, F32)) if cache["has_bias"] else (None, None)
    if cache.cell == "lstm" and cache["peephole"] is not None:
        return PeepholeLSTMGradients(dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh,
                                     np.zeros_like(cache["peephole"]))
    if cache.cell == "lstm":
        return LSTMGradients(dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh)
    return Gradients(dx, dh, dW_ih, dW_hh, db_ih, db_hh)


def _prev_states(y: np.ndarray, init: np.ndarray, lengths: Optional[np.ndarray],
                 reverse: bool) -> np.ndarray:
    """(T, B, H) state before each step, in the processing order (for dW_hh).

    Rows of masked steps are left as they fall: their gate gradients are zero.
    """
    T = y.shape[0]
    prev = np.empty_like(y)
    if not reverse:
        prev[0] = init
        prev[1:] = y[:-1]
    else:
        prev[-1] = init
        prev[:-1] = y[1:]
        if lengths is not None:
            rows = np.flatnonzero((lengths > 0) & (lengths < T))
            prev[lengths[rows] - 1, rows] = init[rows]
    return prev


def _weight_grads(x: np.ndarray, W_ih: np.ndarray, dGx: np.ndarray, dGh: np.ndarray,
                  hprev: np.ndarray, has_bias: bool):
    """Phase 3: ``dx, dW_ih, dW_hh, db_ih, db_hh`` as one matmul (or sum) each."""
    T, B, I = x.shape
    GH = dGx.shape[2]
    dGx2 = dGx.reshape(T * B, GH)
    dGh2 = dGh.reshape(T * B, GH)
    dx = np.matmul(dGx2, W_ih).reshape(T, B, I)
    dW_ih = np.matmul(dGx2.T, x.reshape(T * B, I))
    dW_hh = np.matmul(dGh2.T, hprev.reshape(T * B, -1))
    db_ih = dGx2.sum(axis=0) if has_bias else None
    db_hh = dGh2.sum(axis=0) if has_bias else None
    return dx, dW_ih, dW_hh, db_ih, db_hh


def _cache(cell: str, args, options: dict, **arrays) -> Cache:
    # The inputs may be the caller's own arrays (passed through when already
    # float32 and C order): copy them, so that a caller who reuses a buffer or
    # updates weights in place before backward still gets the right gradients.
    own = lambda a: None if a is None else a.copy()  # noqa: E731
    base = dict(x=own(args.x), W_ih=own(args.W_ih), W_hh=own(args.W_hh), h0=own(args.h0),
                c0=own(args.c0), lengths=own(args.lengths), peephole=own(args.peephole),
                has_bias=args.b_ih is not None)
    base.update(arrays)
    return Cache(cell, BACKEND, options, base)


def _empty_forward(args, lstm: bool):
    """Forward for T == 0 or B == 0: empty outputs, the initial state as final state."""
    y = np.zeros((args.T, args.B, args.H), F32)
    h = _initial(args.h0, args.B, args.H)
    c = _initial(args.c0, args.B, args.H) if lstm else None
    return y, h, c


def _zeros_if_none(a: Optional[np.ndarray], B: int, H: int) -> np.ndarray:
    return np.zeros((B, H), F32) if a is None else a


def _backward_setup(cache: Cache, cell: str, dy, dh, dc=None):
    T, B, H = cache["y"].shape
    dy = check_grad("dy", dy, ("T", "B", "H"), (T, B, H), F32)
    dh = check_grad("dh", dh, ("B", "H"), (B, H), F32)
    dh = np.zeros((B, H), F32) if dh is None else dh.copy()
    if cell == "lstm":
        dc = check_grad("dc", dc, ("B", "H"), (B, H), F32)
        dc = np.zeros((B, H), F32) if dc is None else dc.copy()
    return T, B, H, dy, dh, dc


# ----------------------------------------------------------------------------
# RNN


def rnn_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=False) -> ForwardResult:
    """Run an Elman RNN over a sequence: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Parameters
    ----------
    x : array (T, B, I)
        Time-major inputs. Real floats are converted to float32.
    W_ih : array (H, I)
    W_hh : array (H, H)
    b_ih, b_hh : array (H,), optional
        Both or neither.
    h0 : array (B, H), optional
        Initial hidden state, zeros if None.
    nonlinearity : {"tanh", "relu"}
    lengths : int array (B,), optional
        Valid steps per sequence, ``0 <= lengths[b] <= T``; outputs past a
        sequence's end are zeros and its state stops there.
    reverse : bool
        Run from the last valid step to the first.
    training : bool
        Keep what :func:`rnn_backward` needs (returned as ``cache``).

    Returns
    -------
    ForwardResult
        ``y`` (T, B, H) float32, ``h`` (B, H) float32, ``cache`` or None.
    """
    nonlinearity = check_nonlinearity(nonlinearity)
    reverse = check_bool("reverse", reverse)
    training = check_bool("training", training)
    a = check_forward("rnn", x, W_ih, W_hh, b_ih, b_hh, h0, None, lengths, dtype=F32)
    relu = nonlinearity == "relu"
    options = dict(nonlinearity=nonlinearity, reverse=reverse)
    if a.T == 0 or a.B == 0:
        y, h, _ = _empty_forward(a, False)
    else:
        bias = None if a.b_ih is None else a.b_ih + a.b_hh
        h = _initial(a.h0, a.B, a.H)
        y = np.empty((a.T, a.B, a.H), F32)
        wp, gh = _kernels.pack(a.W_hh, True), np.empty((a.B, a.H), F32)
        for t0, gx in _projected_chunks(a, bias, training, reverse):
            _kernels.rnn_forward(t0, gx, wp, h, y, a.lengths, reverse, relu, gh)
    cache = _cache("rnn", a, options, y=y.copy()) if training else None
    return ForwardResult(y, h, cache)


def rnn_backward(cache, dy=None, dh=None) -> Gradients:
    """Backpropagate through :func:`rnn_forward` (BPTT).

    Parameters
    ----------
    cache : the ``cache`` of ``rnn_forward(..., training=True)``
    dy : array (T, B, H), optional
        Gradient of the loss with respect to ``y`` (zeros if None; entries past
        a sequence's length are ignored).
    dh : array (B, H), optional
        Gradient with respect to the final hidden state ``h``.

    Returns
    -------
    Gradients
        ``dx (T, B, I), dh0 (B, H), dW_ih, dW_hh, db_ih, db_hh`` (biases None
        when the forward pass had none), all float32.
    """
    cache = check_cache(cache, "rnn", BACKEND)
    T, B, H, dy, dh, dc = _backward_setup(cache, "rnn", dy, dh)
    if T == 0 or B == 0:
        return _empty_backward(cache, dh, dc)
    o = cache.options
    y, lengths, W_hh = cache["y"], cache["lengths"], cache["W_hh"]
    dG = np.empty((T, B, H), F32)
    _kernels.rnn_backward(y, _kernels.pack(W_hh, False), dy, dh, dG, lengths, o["reverse"],
                          o["nonlinearity"] == "relu", np.empty((B, H), F32))
    hprev = _prev_states(y, _zeros_if_none(cache["h0"], B, H), lengths, o["reverse"])
    dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(cache["x"], cache["W_ih"], dG, dG, hprev,
                                                   cache["has_bias"])
    return Gradients(dx, dh, dW_ih, dW_hh, db_ih, db_hh)


# ----------------------------------------------------------------------------
# LSTM


def lstm_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, peephole=None,
                 lengths=None, reverse=False, training=False) -> LSTMForwardResult:
    """Run an LSTM over a sequence (gates i, f, g, o as in PyTorch).

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` of ``W_ih x + b_ih + W_hh h + b_hh``;
    ``c' = f*c + i*g``; ``h' = o*tanh(c')``.  With ``peephole = (p_i, p_f, p_o)``
    (ONNX, oneDNN) the pre-activations of i and f also get ``p_i*c``, ``p_f*c``
    and that of o gets ``p_o*c'``.

    Parameters
    ----------
    x : array (T, B, I)
    W_ih : array (4*H, I)
    W_hh : array (4*H, H)
    b_ih, b_hh : array (4*H,), optional
    h0, c0 : array (B, H), optional
        Initial hidden and cell state, zeros if None.
    peephole : array (3*H,), optional
        Peephole weights in the order i, f, o.
    lengths, reverse, training
        As in :func:`rnn_forward`.

    Returns
    -------
    LSTMForwardResult
        ``y`` (T, B, H), ``h`` (B, H), ``c`` (B, H), all float32, and ``cache``.
    """
    reverse = check_bool("reverse", reverse)
    training = check_bool("training", training)
    a = check_forward("lstm", x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, dtype=F32,
                      peephole=peephole)
    P = a.peephole
    options = dict(reverse=reverse)
    gates = cs = None
    if a.T == 0 or a.B == 0:
        y, h, c = _empty_forward(a, True)
    else:
        bias = None if a.b_ih is None else a.b_ih + a.b_hh
        h = _initial(a.h0, a.B, a.H)
        c = _initial(a.c0, a.B, a.H)
        y = np.empty((a.T, a.B, a.H), F32)
        if training:
            gates = np.empty((a.T, a.B, 4 * a.H), F32)
            cs = np.empty((a.T, a.B, a.H), F32)
        wp, gh = _kernels.pack(a.W_hh, True), np.empty((a.B, 4 * a.H), F32)
        for t0, gx in _projected_chunks(a, bias, training, reverse):
            _kernels.lstm_forward(t0, gx, wp, P, h, c, y, a.lengths, reverse, gates, cs, gh)
    cache = _cache("lstm", a, options, y=y.copy(), gates=gates, cs=cs) if training else None
    return LSTMForwardResult(y, h, c, cache)


def lstm_backward(cache, dy=None, dh=None, dc=None) -> LSTMGradients:
    """Backpropagate through :func:`lstm_forward` (BPTT).

    Parameters
    ----------
    cache : the ``cache`` of ``lstm_forward(..., training=True)``
    dy : array (T, B, H), optional
    dh, dc : array (B, H), optional
        Gradients with respect to the final hidden and cell states.

    Returns
    -------
    LSTMGradients
        ``dx, dh0, dc0, dW_ih (4H, I), dW_hh (4H, H), db_ih, db_hh (4H,)``, float32;
        a :class:`PeepholeLSTMGradients` (the same plus ``dpeephole (3H,)``) when
        the forward pass had peepholes.
    """
    cache = check_cache(cache, "lstm", BACKEND)
    T, B, H, dy, dh, dc = _backward_setup(cache, "lstm", dy, dh, dc)
    if T == 0 or B == 0:
        return _empty_backward(cache, dh, dc)
    reverse = cache.options["reverse"]
    lengths = cache["lengths"]
    dG = np.empty((T, B, 4 * H), F32)
    c0, P = _zeros_if_none(cache["c0"], B, H), cache["peephole"]
    _kernels.lstm_backward(cache["gates"], cache["cs"], c0, _kernels.pack(cache["W_hh"], False),
                           P, dy, dh, dc, dG, lengths, reverse, np.empty((B, H), F32))
    hprev = _prev_states(cache["y"], _zeros_if_none(cache["h0"], B, H), lengths, reverse)
    dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(cache["x"], cache["W_ih"], dG, dG, hprev,
                                                   cache["has_bias"])
    if P is None:
        return LSTMGradients(dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh)
    cprev = _prev_states(cache["cs"], c0, lengths, reverse)
    dP = np.concatenate([(dG[:, :, :H] * cprev).sum(axis=(0, 1)),
                         (dG[:, :, H:2 * H] * cprev).sum(axis=(0, 1)),
                         (dG[:, :, 3 * H:] * cache["cs"]).sum(axis=(0, 1))])
    return PeepholeLSTMGradients(dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh, dP)


# ----------------------------------------------------------------------------
# GRU


def gru_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, linear_before_reset=True,
                lengths=None, reverse=False, training=False) -> ForwardResult:
    """Run a GRU over a sequence (gates r, z, n as in PyTorch).

    ``r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})``;
    ``linear_before_reset=True`` (PyTorch, cuDNN, Keras ``reset_after=True``):
    ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``; ``False`` (Cho et al. 2014,
    ONNX's default): ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``;
    ``h' = (1-z)*n + z*h``.

    Parameters
    ----------
    x : array (T, B, I)
    W_ih : array (3*H, I)
    W_hh : array (3*H, H)
    b_ih, b_hh : array (3*H,), optional
    h0 : array (B, H), optional
    linear_before_reset : bool
    lengths, reverse, training
        As in :func:`rnn_forward`.

    Returns
    -------
    ForwardResult
        ``y`` (T, B, H), ``h`` (B, H), float32, and ``cache``.
    """
    lbr = check_bool("linear_before_reset", linear_before_reset)
    reverse = check_bool("reverse", reverse)
    training = check_bool("training", training)
    a = check_forward("gru", x, W_ih, W_hh, b_ih, b_hh, h0, None, lengths, dtype=F32)
    H = a.H
    options = dict(linear_before_reset=lbr, reverse=reverse)
    gates = hn = None
    if a.T == 0 or a.B == 0:
        y, h, _ = _empty_forward(a, False)
    else:
        bhn = np.zeros(H, F32)
        bias = None
        if a.b_ih is not None:
            bias = a.b_ih + a.b_hh
            if lbr:  # b_hn stays inside r * (W_hn h + b_hn)
                bias[2 * H:] = a.b_ih[2 * H:]
                bhn = a.b_hh[2 * H:]
        h = _initial(a.h0, a.B, H)
        y = np.empty((a.T, a.B, H), F32)
        if lbr:
            wp, wp_n = _kernels.pack(a.W_hh, True), None
        else:
            wp, wp_n = _kernels.pack(a.W_hh[:2 * H], True), _kernels.pack(a.W_hh[2 * H:], True)
        if training:
            # zeros, not empty: the loop skips masked steps, and backward reads r at
            # every step for dW_hn (0 * garbage could be NaN) when not lbr
            gates = np.zeros((a.T, a.B, 3 * H), F32)
            hn = np.empty((a.T, a.B, H), F32) if lbr else None
        gh = np.empty((a.B, (3 if lbr else 2) * H), F32)
        rh, ghn = np.zeros((a.B, H), F32), np.empty((a.B, H), F32)
        for t0, gx in _projected_chunks(a, bias, training, reverse):
            _kernels.gru_forward(t0, gx, wp, wp_n, bhn, h, y, a.lengths, reverse, lbr, gates,
                                 hn, gh, rh, ghn)
    cache = _cache("gru", a, options, y=y.copy(), gates=gates, hn=hn) if training else None
    return ForwardResult(y, h, cache)


def gru_backward(cache, dy=None, dh=None) -> Gradients:
    """Backpropagate through :func:`gru_forward` (BPTT), either GRU form.

    Parameters and returns as in :func:`rnn_backward`, with ``dW_ih (3H, I)``,
    ``dW_hh (3H, H)``, ``db_ih, db_hh (3H,)``.
    """
    cache = check_cache(cache, "gru", BACKEND)
    T, B, H, dy, dh, dc = _backward_setup(cache, "gru", dy, dh)
    if T == 0 or B == 0:
        return _empty_backward(cache, dh, dc)
    lbr = cache.options["linear_before_reset"]
    reverse = cache.options["reverse"]
    lengths, W_hh, gates, y = cache["lengths"], cache["W_hh"], cache["gates"], cache["y"]
    h0 = _zeros_if_none(cache["h0"], B, H)
    dGx = np.empty((T, B, 3 * H), F32)
    dGh = np.empty((T, B, 3 * H), F32) if lbr else None
    if lbr:
        wpt, wpt_n = _kernels.pack(W_hh, False), None
    else:
        wpt, wpt_n = _kernels.pack(W_hh[:2 * H], False), _kernels.pack(W_hh[2 * H:], False)
    _kernels.gru_backward(gates, cache["hn"], y, h0, wpt, wpt_n, dy, dh, dGx, dGh, lengths,
                          reverse, lbr, np.empty((B, H), F32), np.empty((B, H), F32))
    hprev = _prev_states(y, h0, lengths, reverse)
    dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(cache["x"], cache["W_ih"], dGx,
                                                   dGh if lbr else dGx, hprev,
                                                   cache["has_bias"])
    if not lbr:
        # n = tanh(... + W_hn (r*h) + b_hn): the n rows of W_hh see r*h, not h
        rh = gates[:, :, :H] * hprev
        dW_hh[2 * H:] = np.matmul(dGx[:, :, 2 * H:].reshape(T * B, H).T, rh.reshape(T * B, H))
    return Gradients(dx, dh, dW_ih, dW_hh, db_ih, db_hh)
