"""The functional API: ``*_forward`` and ``*_backward`` for RNN, GRU and LSTM.

Each function is the three phases of DESIGN.md:

1. check and convert the arguments (``_checks``: float32, C order);
2. project the inputs for all steps with one GEMM (fastcells' own, packed or
   unpacked: ``_project``), fold the biases in, pack the recurrent weights once
   (or not, for short batch-1 calls), and run the compiled time loop
   (``_kernels``, GIL released);
3. backward only: the weight gradients as one matrix product each after the
   loop (``dx`` by the packed GEMM, ``dW_ih``/``dW_hh`` by NumPy's BLAS).

All buffers are allocated here, before the loop; the loop allocates nothing.
"""
from __future__ import annotations

import threading
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from . import _kernels
from ._float16 import check_weight_dtype, float16_values
from ._results import (
    Cache,
    ForwardResult,
    Gradients,
    LSTMForwardResult,
    LSTMGradients,
    PeepholeLSTMGradients,
)
from ._checks import (
    ForwardArgs,
    check_bool,
    check_cache,
    check_forward,
    check_grad,
    check_nonlinearity,
    check_sequence,
    check_shape,
    check_states,
    as_float,
    without_padding,
    GATES,
)

F32 = np.float32
BACKEND = "fastcells"

__all__ = [
    "rnn_forward", "rnn_backward", "gru_forward", "gru_backward",
    "lstm_forward", "lstm_backward", "Stepper", "release_scratch",
]


# ----------------------------------------------------------------------------
# shared phases


#: inference projects the input at most this many floats of (steps x B x G*H) at
#: a time (1 MiB), into one reused buffer: memory beyond the output then does
#: not grow with T, and each chunk is still a GEMM large enough to be efficient
CHUNK_FLOATS = 1 << 18


#: batch-1 forward calls of at most this many steps multiply by ``W_hh`` as it is,
#: unpacked (``_kernels.gemm_nt``): an unpacked step is 5-17% slower than a packed
#: one (both stream the weights from cache), and packing costs 8-28 such savings
#: (measured at H = 64-1024 with 64-byte aligned panels, one thread, Zen 4)
UNPACKED_MAX_STEPS = 16


def _unpacked_projection(rows: int, I: int) -> bool:
    """Whether the input projection of ``rows`` (T*B) rows multiplies by ``W_ih`` as it
    is (``_kernels.gemm_nt``) rather than packed (``_kernels.gemm``): packing costs
    a copy of ``W_ih`` that a few rows do not amortize.  Measured (one thread,
    Zen 4, paired): unpacked is 1.1-1.25x packed at 16 rows, and at 25 rows with
    I >= 256; packed is 1.05-1.5x unpacked from 32 rows up (and 1.05-1.2x NumPy's
    matmul).  Depends on the whole call's rows, not a chunk's, so training and
    inference (chunked) project alike, bit for bit."""
    return rows <= 16 or (rows < 32 and I >= 256)


def _project(x: np.ndarray, product, GH: int, bias: Optional[np.ndarray],
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Phase 1: ``x (T, B, I) @ W_ih.T + bias`` as one GEMM, float32 C order (T, B, G*H);
    ``product(A, C)`` writes ``C = A @ W_ih.T`` (from :func:`_projected_chunks`)."""
    T, B, I = x.shape
    gx = np.empty((T * B, GH), F32) if out is None else out.reshape(T * B, GH)
    product(x.reshape(T * B, I), gx)
    if bias is not None:
        gx += bias
    return gx.reshape(T, B, GH)


def _projected_chunks(a, w: "_Weights", training: bool, reverse: bool):
    """``(t0, gx)`` pairs: the input projection of steps ``[t0, t0 + len(gx))``, in the
    order the loop walks time.  Training projects all steps at once, and the
    kernel then overwrites each step's projection with its activated gates (kept
    for backward): one (T, B, G*H) buffer, not two, whose second copy cost a
    fresh allocation's page faults, up to 20% of a large LSTM's training forward.
    Inference projects at once too when that fits one chunk; longer inference a
    chunk at a time into one buffer."""
    GH = a.G * a.H
    if training or a.T * a.B * GH <= CHUNK_FLOATS:   # one piece: no generator
        return ((0, _project(a.x, w.project, GH, w.bias)),)
    return _chunks(a, w.project, w.bias, reverse)


def _chunks(a, product, bias: Optional[np.ndarray], reverse: bool):
    """The inference chunks of :func:`_projected_chunks`, one reused buffer."""
    # never a chunk of one row: the packed product of one row is the GEMV, which
    # sums in another order than the tiles of the whole call (training).  So at
    # batch 1 chunks have 2 steps at least, and a step left over joins the last
    steps = max(2 if a.B == 1 else 1, min(a.T, CHUNK_FLOATS // (a.B * a.G * a.H)))
    starts = list(range(0, a.T, steps))
    if a.B == 1 and len(starts) > 1 and a.T - starts[-1] == 1:
        starts.pop()
    buf = np.empty((max(steps, a.T - starts[-1]), a.B, a.G * a.H), F32)   # the largest
    ends = starts[1:] + [a.T]
    for t0, t1 in (reversed if reverse else iter)(list(zip(starts, ends))):
        yield t0, _project(a.x[t0:t1], product, a.G * a.H, bias, out=buf[:t1 - t0])


def _fold_biases(a, lbr: bool = False):
    """The bias added to the input projection, and GRU's ``b_hn`` kept apart.

    ``b_ih + b_hh`` for every gate, except the n gate of a GRU with
    ``linear_before_reset``, where ``b_hn`` stays inside ``r * (W_hn h + b_hn)``.
    Returns ``(bias or None, b_hn)`` with ``b_hn`` zeros when not needed (None
    for RNN and LSTM, which have no ``b_hn``).
    """
    bhn = np.zeros(a.H, F32) if a.G == 3 else None
    if a.b_ih is None:
        return None, bhn
    bias = a.b_ih + a.b_hh
    if a.G == 3 and lbr:
        bias[2 * a.H:] = a.b_ih[2 * a.H:]
        bhn = a.b_hh[2 * a.H:].copy()   # never a view of the caller's b_hh (Stepper keeps it)
    return bias, bhn


def _pack_recurrent(W_hh: np.ndarray, split_gru: bool, prep):
    """``W_hh`` as the loop takes it: ``prep(W, i)`` of its part ``i`` (packed, or
    its own rows flat).  A GRU without ``linear_before_reset`` needs its r, z
    rows (part 0) and its n rows (part 1) apart (``split_gru``): n's product
    waits for r.  Returns ``(wp, wp_n or None)``.
    """
    if not split_gru:
        return prep(W_hh, 0), None
    H = W_hh.shape[1]
    return prep(W_hh[:2 * H], 0), prep(W_hh[2 * H:], 1)


def _packs_forward(a) -> bool:
    """Whether a forward call packs ``W_hh`` (else it multiplies by its rows as they are)."""
    return not (a.B == 1 and a.T <= UNPACKED_MAX_STEPS)


class _Weights(NamedTuple):
    """The weights as the time loop takes them: biases folded, products chosen.

    ``project(A, C)`` writes ``C = A @ W_ih.T``; ``wp``/``wp_n`` are ``W_hh`` packed
    (``packed``, see :func:`_kernels._recur`) or its rows as they are (see
    :func:`_pack_recurrent`).
    """

    bias: Optional[np.ndarray]
    bhn: Optional[np.ndarray]
    project: Any
    packed: int       # 0 rows as they are, 1 pack(), 2 pack_half() (float16 weights)
    wp: np.ndarray
    wp_n: Optional[np.ndarray]
    peephole: Optional[np.ndarray]


def _packed_projection(P: np.ndarray, GH: int):
    return lambda A, C: _kernels.gemm(A, P, GH, C)


def _weights_for_call(a, s: "_Scratch", lbr: bool = True) -> _Weights:
    """The weights of one forward call: packed (into ``s``'s buffers, kept by the
    thread: see :class:`_Scratch`) when the call's shape pays for it.  The packs
    use backward's buffer names: a thread never runs both at once, so one
    buffer per weight serves either layout."""
    bias, bhn = _fold_biases(a, lbr)
    if _unpacked_projection(a.T * a.B, a.I):
        W_ih = a.W_ih
        project = lambda A, C: _kernels.gemm_nt(A, W_ih, C)  # noqa: E731
    else:
        project = _packed_projection(s.pack("W_ih", a.W_ih, True), a.G * a.H)
    packed = _packs_forward(a)
    wp, wp_n = _pack_recurrent(
        a.W_hh, a.G == 3 and not lbr,
        lambda W, i: s.pack(("W_hh", "W_hn")[i], W, True) if packed else W.ravel())
    return _Weights(bias, bhn, project, packed, wp, wp_n, a.peephole)


#: the kernels keep their scratch buffers (the packed weights; in backward also
#: the pre-activation gradients and the previous states) per thread up to this
#: many floats each (64 MiB) and reuse them from call to call; larger ones are
#: allocated per call
SCRATCH_MAX_FLOATS = 16 << 20
#: ... and from this many floats (128 KiB, glibc's first mmap threshold): smaller
#: ones come back from the heap warm anyway, and keeping them measured 3% slower
#: at H = 64 (the bookkeeping)
SCRATCH_MIN_FLOATS = 32 << 10


class _ScratchPool(threading.local):
    def __init__(self) -> None:
        self.bufs: dict = {}
        self.busy = False


_POOL = _ScratchPool()


class _Scratch:
    """The kernels' scratch (forward: the packed weights; backward: those, the
    gate gradients and the previous states), reused by the thread's next call.

    A fresh allocation costs its page faults: glibc returns freed memory to
    the system (above 32 MiB always, and by trimming the heap below), and a
    call's scratch is freed at its end.  On this VM the faults were 10-25% of
    a GRU or LSTM backward, and 30% of an LSTM (25,4,512,512) inference (its
    two 4 MiB packs).  Per thread, so threads never share a buffer; a call
    made while the thread's buffers are in use (a signal handler) gets fresh
    ones.  Nothing a call returns or keeps in its cache is a view of them.
    """

    __slots__ = ("bufs", "owner")

    def __enter__(self) -> "_Scratch":
        # the pool is claimed at the first buffer it keeps, not here: a call
        # with only small buffers pays nothing for it (a few us at H = 64)
        self.bufs: Optional[dict] = None
        self.owner = False
        return self

    def __exit__(self, *exc) -> None:
        if self.owner:
            _POOL.busy = False

    def _claim(self) -> dict:
        if _POOL.busy:          # in use on this thread (a signal handler): fresh ones
            self.bufs = {}
        else:
            _POOL.busy = self.owner = True
            self.bufs = _POOL.bufs
        return self.bufs

    def empty(self, name: str, shape: tuple) -> np.ndarray:
        """An uninitialized float32 array of ``shape``, backed by the buffer ``name``."""
        n = 1
        for d in shape:
            n *= d
        if not SCRATCH_MIN_FLOATS <= n <= SCRATCH_MAX_FLOATS:
            return np.empty(shape, F32)
        bufs = self.bufs if self.bufs is not None else self._claim()
        buf = bufs.get(name)
        if buf is None or buf.shape[0] < n:
            buf = bufs[name] = np.empty(n, F32)
        return buf[:n].reshape(shape)

    def pack(self, name: str, W: np.ndarray, transpose: bool) -> np.ndarray:
        """``_kernels.pack(W, transpose)`` into the buffer ``name``."""
        n = _kernels.pack_floats(W.shape[0], W.shape[1], transpose)
        if n < SCRATCH_MIN_FLOATS:          # not kept: no bookkeeping
            return _kernels.pack(W, transpose)
        return _kernels.pack(W, transpose, self.empty(name, (n,)))


def release_scratch() -> None:
    """Free the calling thread's kept scratch (see ``SCRATCH_MAX_FLOATS``).

    A thread keeps the largest scratch its calls have needed, at most
    ``SCRATCH_MAX_FLOATS`` floats per buffer (the packed weights; after a
    backward also up to four buffers of the size of the gate gradients or the
    states); call this when a long-lived thread is done with fastcells.
    """
    if not _POOL.busy:
        _POOL.bufs.clear()


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
                 reverse: bool, prev: np.ndarray) -> np.ndarray:
    """``prev`` (T, B, H) := the state before each step, in the processing order
    (for dW_hh).  Rows of masked steps are left as they fall: their gate
    gradients are zero.
    """
    T = y.shape[0]
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


def _weight_grads(s: _Scratch, x: np.ndarray, W_ih: np.ndarray, dGx: np.ndarray,
                  dGh: np.ndarray, hprev: np.ndarray, has_bias: bool,
                  hprev_n: Optional[np.ndarray] = None):
    """Phase 3: ``dx, dW_ih, dW_hh, db_ih, db_hh`` as one matrix product (or sum) each.

    ``hprev_n``: what the last H rows of ``W_hh`` multiply instead of ``hprev``
    (``r*h`` for a GRU without ``linear_before_reset``).
    """
    T, B, I = x.shape
    GH, H = dGx.shape[2], hprev.shape[2]
    dGx2 = dGx.reshape(T * B, GH)
    dGh2 = dGh.reshape(T * B, GH)
    # dx by fastcells' packed GEMM (W_ih packed as it is, a plain copy): 1.05-1.3x
    # NumPy's matmul on these shapes; the transposed products dW stay with BLAS
    # (its packing of dG^T beats reading dG across rows, measured 1.2-2x)
    dx = np.empty((T * B, I), F32)
    _kernels.gemm(dGx2, s.pack("W_ih", W_ih, False), I, dx)
    dx = dx.reshape(T, B, I)
    # NumPy's matmul has no BLAS path for an inner size of 1 (T*B == 1): 36-67 us
    # for a (256, 1) @ (1, 64) outer product that np.dot does in 5
    mm = np.dot if T * B == 1 else np.matmul
    dW_ih = mm(dGx2.T, x.reshape(T * B, I))
    if hprev_n is None:
        dW_hh = mm(dGh2.T, hprev.reshape(T * B, H))
    else:
        dW_hh = np.concatenate([mm(dGh2[:, :GH - H].T, hprev.reshape(T * B, H)),
                                mm(dGh2[:, GH - H:].T, hprev_n.reshape(T * B, H))])
    db_ih = dGx2.sum(axis=0) if has_bias else None
    # the same sum twice when both pre-activations share one gradient (RNN, LSTM)
    db_hh = (db_ih.copy() if dGh is dGx else dGh2.sum(axis=0)) if has_bias else None
    return dx, dW_ih, dW_hh, db_ih, db_hh


def _cache(cell: str, args, options: dict, **arrays) -> Cache:
    # The inputs may be the caller's own arrays (passed through when already
    # float32 and C order): copy them, so that a caller who reuses a buffer or
    # updates weights in place before backward still gets the right gradients.
    own = lambda a: None if a is None else a.copy()  # noqa: E731
    base = dict(x=without_padding(args.x, args.lengths), W_ih=own(args.W_ih),
                W_hh=own(args.W_hh), h0=own(args.h0), c0=own(args.c0), lengths=own(args.lengths), peephole=own(args.peephole),
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
        with _Scratch() as s:
            y, h = _rnn_loop(a, _weights_for_call(a, s), relu, reverse, training)
    cache = _cache("rnn", a, options, y=y.copy()) if training else None
    return ForwardResult(y, h, cache)


def _rnn_loop(a, w: _Weights, relu: bool, reverse: bool, training: bool):
    h = _initial(a.h0, a.B, a.H)
    y = np.empty((a.T, a.B, a.H), F32)
    gh = np.empty((a.B, a.H), F32)
    for t0, gx in _projected_chunks(a, w, training, reverse):
        _kernels.rnn_forward(t0, gx, w.wp, w.packed, h, y, a.lengths, reverse, relu, gh)
    return y, h


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
    with _Scratch() as s:
        dG = s.empty("dG", (T, B, H))
        _kernels.rnn_backward(y, s.pack("W_hh", W_hh, False), dy, dh, dG, lengths,
                              o["reverse"], o["nonlinearity"] == "relu", s.empty("tmp", (B, H)))
        hprev = _prev_states(y, _zeros_if_none(cache["h0"], B, H), lengths, o["reverse"],
                             s.empty("hprev", y.shape))
        dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(s, cache["x"], cache["W_ih"], dG, dG,
                                                       hprev, cache["has_bias"])
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
    options = dict(reverse=reverse)
    gates = cs = None
    if a.T == 0 or a.B == 0:
        y, h, c = _empty_forward(a, True)
    else:
        with _Scratch() as s:
            y, h, c, gates, cs = _lstm_loop(a, _weights_for_call(a, s), reverse, training)
    cache = _cache("lstm", a, options, y=y.copy(), gates=gates, cs=cs) if training else None
    return LSTMForwardResult(y, h, c, cache)


def _lstm_loop(a, w: _Weights, reverse: bool, training: bool):
    h = _initial(a.h0, a.B, a.H)
    c = _initial(a.c0, a.B, a.H)
    y = np.empty((a.T, a.B, a.H), F32)
    gates = cs = None
    if training:
        # zeros, not empty: masked steps are never written, and dpeephole
        # multiplies every step's cs by its (zero) gate gradient: 0 * garbage
        cs = np.zeros((a.T, a.B, a.H), F32)
    gh = np.empty((a.B, 4 * a.H), F32)
    chunks = _projected_chunks(a, w, training, reverse)
    if training:
        (_, gates), = chunks     # one chunk of every step: its buffer keeps the gates
    for t0, gx in chunks:
        _kernels.lstm_forward(t0, gx, w.wp, w.packed, w.peephole, h, c, y, a.lengths, reverse,
                              gates, cs, gh)
    return y, h, c, gates, cs


def lstm_backward(cache, dy=None, dh=None,
                  dc=None) -> Union[LSTMGradients, PeepholeLSTMGradients]:
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
    c0, P = _zeros_if_none(cache["c0"], B, H), cache["peephole"]
    with _Scratch() as s:
        dG = s.empty("dG", (T, B, 4 * H))
        _kernels.lstm_backward(cache["gates"], cache["cs"], c0,
                               s.pack("W_hh", cache["W_hh"], False), P, dy, dh, dc, dG,
                               lengths, reverse, s.empty("tmp", (B, H)))
        hprev = _prev_states(cache["y"], _zeros_if_none(cache["h0"], B, H), lengths, reverse,
                             s.empty("hprev", (T, B, H)))
        dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(s, cache["x"], cache["W_ih"], dG, dG,
                                                       hprev, cache["has_bias"])
        if P is None:
            return LSTMGradients(dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh)
        cprev = _prev_states(cache["cs"], c0, lengths, reverse, hprev)   # hprev is done
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
    options = dict(linear_before_reset=lbr, reverse=reverse)
    gates = hn = None
    if a.T == 0 or a.B == 0:
        y, h, _ = _empty_forward(a, False)
    else:
        with _Scratch() as s:
            y, h, gates, hn = _gru_loop(a, _weights_for_call(a, s, lbr), lbr, reverse,
                                        training)
    cache = _cache("gru", a, options, y=y.copy(), gates=gates, hn=hn) if training else None
    return ForwardResult(y, h, cache)


def _gru_loop(a, w: _Weights, lbr: bool, reverse: bool, training: bool):
    H = a.H
    h = _initial(a.h0, a.B, H)
    y = np.empty((a.T, a.B, H), F32)
    gates = None
    hn = np.empty((a.T, a.B, H), F32) if training and lbr else None
    gh = np.empty((a.B, (3 if lbr else 2) * H), F32)
    rh, ghn = np.zeros((a.B, H), F32), np.empty((a.B, H), F32)
    chunks = _projected_chunks(a, w, training, reverse)
    if training:
        # one chunk of every step: its buffer keeps the gates; the kernel zeroes
        # masked steps' (backward reads r at every step for dW_hn when not lbr)
        (_, gates), = chunks
    for t0, gx in chunks:
        _kernels.gru_forward(t0, gx, w.wp, w.wp_n, w.packed, w.bhn, h, y, a.lengths, reverse,
                             lbr, gates, hn, gh, rh, ghn)
    return y, h, gates, hn


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
    with _Scratch() as s:
        dGx = s.empty("dG", (T, B, 3 * H))
        dGh = s.empty("dGh", (T, B, 3 * H)) if lbr else None
        wpt, wpt_n = _pack_recurrent(W_hh, not lbr,
                                     lambda W, i: s.pack(("W_hh", "W_hn")[i], W, False))
        _kernels.gru_backward(gates, cache["hn"], y, h0, wpt, wpt_n, dy, dh, dGx, dGh, lengths,
                              reverse, lbr, s.empty("tmp", (B, H)), s.empty("direct", (B, H)))
        hprev = _prev_states(y, h0, lengths, reverse, s.empty("hprev", y.shape))
        # without linear_before_reset, n = tanh(... + W_hn (r*h) + b_hn): W_hn sees r*h
        rh = None if lbr else np.multiply(gates[:, :, :H], hprev, out=s.empty("rh", y.shape))
        dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(
            s, cache["x"], cache["W_ih"], dGx, dGh if lbr else dGx, hprev, cache["has_bias"], rh)
    return Gradients(dx, dh, dW_ih, dW_hh, db_ih, db_hh)


# ----------------------------------------------------------------------------
# streaming


class Stepper:
    """Advance a cell one time step at a time, for streaming inference.

    The weights are checked, packed and their biases folded once, here; each
    call then runs the input projection, the recurrent product and the gate
    pass of one step in one compiled call with the GIL released (a few
    microseconds at H = 64); :meth:`forward` runs whole sequences with the
    same prepared weights (serving).  The Stepper keeps float32 copies of the
    weights as they were when it was built: build a new one after changing them.

    Parameters
    ----------
    cell : {"rnn", "gru", "lstm"}
    W_ih, W_hh, b_ih, b_hh
        As for ``<cell>_forward``.
    peephole : array (3*H,), optional
        LSTM only.
    nonlinearity : {"tanh", "relu"}
        RNN only.
    linear_before_reset : bool
        GRU only.
    weight_dtype : {"float32", "float16"}
        ``"float16"``: ``W_ih`` and ``W_hh`` are rounded to float16 (to nearest)
        once, here, and every product uses the rounded values; the arithmetic
        stays float32, and biases and peepholes are not rounded.  The results
        are the bits of a float32 Stepper built from ``W.astype(np.float16)``.
        Products of one or two rows (steps at batch 1 or 2) then read the
        weights as float16, half the bytes, on the AVX2 and AVX-512 paths
        (:func:`fastcells.show_config`), where each step streams ``W_hh`` from
        L2 or L3: a batch-1 step at H = 512-1024 1.3-1.8x faster (batch 2
        1.05-1.4x), a whole batch-1 sequence 1.15-1.3x (paired, one thread,
        Zen 4).  The cost: each weight's rounding error
        (relative 2**-11; magnitudes under 6.1e-5 lose bits, under 3e-8 become
        zero), and memory for both packs.  ValueError if a finite weight's
        magnitude exceeds float16's largest value, 65504.

    Examples
    --------
    >>> step = Stepper("gru", W_ih, W_hh, b_ih, b_hh)          # doctest: +SKIP
    >>> h = None
    >>> for x_t in stream:                                     # x_t (B, I)
    ...     h = step(x_t, h)                                   # h (B, H)
    """

    def __init__(self, cell: str, W_ih, W_hh, b_ih=None, b_hh=None, *, peephole=None,
                 nonlinearity: str = "tanh", linear_before_reset: bool = True,
                 weight_dtype: str = "float32") -> None:
        if cell not in GATES:
            raise ValueError(f"cell: expected one of {tuple(GATES)}, got {cell!r}")
        lbr = check_bool("linear_before_reset", linear_before_reset)
        relu = check_nonlinearity(nonlinearity) == "relu"
        half = check_weight_dtype(weight_dtype)
        I = np.shape(W_ih)[1] if np.ndim(W_ih) == 2 else 0
        # validate the weights with the one set of checks, on an empty sequence
        a = check_forward(cell, np.zeros((0, 1, I), F32), W_ih, W_hh, b_ih, b_hh,
                          dtype=F32, peephole=peephole)
        bias, bhn = _fold_biases(a, lbr)
        if half:
            pack, packed = _kernels.pack_half, 2
            W_ih, W_hh = float16_values("W_ih", a.W_ih), float16_values("W_hh", a.W_hh)
        else:
            pack, packed = lambda W: _kernels.pack(W, True), 1  # noqa: E731
            W_ih, W_hh = a.W_ih, a.W_hh
        wp, wp_n = _pack_recurrent(W_hh, cell == "gru" and not lbr, lambda W, i: pack(W))
        P_ih = pack(W_ih)
        peephole = None if a.peephole is None else a.peephole.copy()
        self.cell, self.input_size, self.hidden_size = cell, a.I, a.H
        self._relu, self._lbr = relu, lbr
        # what forward() runs whole sequences with: always packed, whatever the call
        self.weight_dtype = "float16" if half else "float32"
        self._weights = _Weights(bias, bhn, _packed_projection(P_ih, a.G * a.H), packed, wp,
                                 wp_n, peephole)
        self._kernel = _kernels.Stepper(
            cell, P_ih, wp, wp_n,
            np.zeros(a.G * a.H, F32) if bias is None else bias,
            np.zeros(a.H, F32) if bhn is None else bhn, peephole, a.I, a.H, relu, lbr, packed)

    def forward(self, x, h0=None, c0=None, *, lengths=None, reverse=False):
        """Run a whole sequence with the prepared weights (inference: serving).

        The same as ``<cell>_forward(x, <the weights>, h0, c0, lengths=lengths,
        reverse=reverse)`` without a cache, less the per-call work on the weights:
        no checks, no bias folding and no packing: 10-25% less time at batch
        1-4, H = 512-1024 (paired, one thread, Zen 4).  The products are
        always the packed ones; the functional call uses unpacked ones for a
        few rows (``T*B < 32``, or batch 1 and ``T <= 16``), where its results
        then differ from these by float32 rounding; elsewhere they are the same
        bits.  Safe to call from several threads at once.

        Parameters
        ----------
        x : array (T, B, I)
            Real floats, converted to float32.
        h0, c0 : array (B, H), optional
            Initial states, zeros if None (``c0``: LSTM only).
        lengths : int array (B,), optional
        reverse : bool
            As in :func:`rnn_forward`.

        Returns
        -------
        ForwardResult or LSTMForwardResult
            ``y`` (T, B, H), ``h`` (B, H) (LSTM also ``c``), float32; ``cache`` None.
        """
        reverse = check_bool("reverse", reverse)
        I, H, lstm = self.input_size, self.hidden_size, self.cell == "lstm"
        x = check_sequence("x", x, I, F32)
        T, B = x.shape[:2]
        h0, c0, lengths = check_states(self.cell, h0, c0, lengths, T, B, H, F32)
        w = self._weights
        a = ForwardArgs(x, None, None, None, None, h0, c0, lengths, w.peephole, T, B, I, H,
                        GATES[self.cell])
        c = None
        if T == 0 or B == 0:
            y, h, c = _empty_forward(a, lstm)
        elif lstm:
            y, h, c, _, _ = _lstm_loop(a, w, reverse, False)
        elif self.cell == "gru":
            y, h, _, _ = _gru_loop(a, w, self._lbr, reverse, False)
        else:
            y, h = _rnn_loop(a, w, self._relu, reverse, False)
        return LSTMForwardResult(y, h, c, None) if lstm else ForwardResult(y, h, None)

    def _state(self, name: str, s, B: int) -> np.ndarray:
        if s is None:
            return np.zeros((B, self.hidden_size), F32)
        if type(s) is np.ndarray and s.dtype == F32 and s.shape == (B, self.hidden_size):
            return s.copy()   # the common case, kept short: this is per-step overhead
        s = as_float(name, s, F32)
        if s.shape != (B, self.hidden_size):
            check_shape(name, s, ("B", "H"), (B, self.hidden_size))
        return s.copy()   # the kernel updates it in place: never the caller's array

    def __call__(self, x_t, h=None, c=None):
        """One step: ``x_t (B, I)`` and the state ``h`` (LSTM: ``h, c``), each (B, H) or
        None for zeros.  Returns the new ``h`` (LSTM: ``(h, c)``), new float32 arrays."""
        if not (type(x_t) is np.ndarray and x_t.dtype == F32 and x_t.flags.c_contiguous):
            x_t = as_float("x_t", x_t, F32)
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t: expected shape (B, I) = (B, {self.input_size}), got "
                             f"{x_t.shape}")
        B = x_t.shape[0]
        h = self._state("h", h, B)
        if self.cell != "lstm":
            if c is not None:
                raise ValueError(f"c: only LSTM has a cell state, got c for {self.cell}")
            self._kernel.step(x_t, h, None)
            return h
        c = self._state("c", c, B)
        self._kernel.step(x_t, h, c)
        return h, c
