"""The functional API: ``*_forward`` and ``*_backward`` for RNN, GRU and LSTM.

Every cell runs through one forward and one backward skeleton:

1. check and convert the arguments (``_checks``: float32, C order);
2. project the inputs of all steps with one GEMM (fastcells' own, packed or
   unpacked, in chunks of time for long inference: ``_packing``), fold the
   biases in, prepare ``W_hh`` once per call, and run the compiled time loop
   (``_kernels``, GIL released).  A large call splits the loop and the
   projection by batch rows over the threads the cost model (``_parallel``)
   wants and the shared budget (``_threads.claim``) gives; a forward loop of
   too few rows to split (batch 1 to 4) splits each step by hidden units;
3. backward only: the compiled BPTT loop (split by batch rows like the
   forward's), then the weight gradients as one matrix product each, all on
   fastcells' packed GEMM across fastcells' threads (``dx`` by ``gemm``,
   ``dW_ih``/``dW_hh`` by ``gemm_tn``), none on NumPy's BLAS.

What differs per cell (the loop's buffers, the kernel call, the extra
gradients) is one entry of ``_ADAPTERS``, keyed like ``_cells.CELLS``; the
cell facts themselves (gates, states, cache fields) come from ``_cells``.
All buffers are allocated here, before the loop (scratch from the thread's
pool, ``_scratch``); the loop allocates nothing.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np

from . import _kernels, _parallel, _threads
from ._cells import CELLS, cell_spec, fill_doc
from ._checks import (
    ForwardArgs,
    as_float,
    check_bool,
    check_cache,
    check_forward,
    check_grad,
    check_layer_norm,
    check_nonlinearity,
    check_sequence,
    check_shape,
    check_states,
    is_f32c,
    without_padding,
)
from ._float16 import check_weight_dtype, float16_values
from ._packing import (
    PACK_SPLIT_MIN_FLOATS,
    RECURRENT_BUFFERS,
    InputNorm,
    RecurrentLayout,
    Weights,
    pack_recurrent,
    packs_forward,
    prepared_weights,
    projected_chunks,
    weights_for_call,
)
from ._parallel import forward_threads, loop_threads, row_blocks
from ._pickle import PROJ_PICKLE_FORMAT, unpacked, with_header, without_header
from ._results import (
    Cache,
    ForwardResult,
    Gradients,
    LayerNormGradients,
    LayerNormLSTMGradients,
    LayerNormWeights,
    LSTMForwardResult,
    LSTMGradients,
    PeepholeLSTMGradients,
    ProjLSTMGradients,
)
from ._scratch import Scratch, release_scratch
from ._threads import claim

F32 = np.float32
BACKEND = "fastcells"

__all__ = [
    "rnn_forward", "rnn_backward", "gru_forward", "gru_backward",
    "lstm_forward", "lstm_backward", "Stepper", "release_scratch", "LayerNormWeights",
    "LayerNormGradients", "LayerNormLSTMGradients",
]

Options = dict[str, Any]
AnyForwardResult = ForwardResult | LSTMForwardResult
AnyGradients = (Gradients | LSTMGradients | PeepholeLSTMGradients | LayerNormGradients
                | LayerNormLSTMGradients | ProjLSTMGradients)


# ----------------------------------------------------------------------------
# what the skeletons hand a cell's adapter

Chunks = Iterable[tuple[int, np.ndarray]]
Kept = dict[str, np.ndarray | None]
#: a layer-normalized loop's ``ln`` argument (see ``_kernels.rnn_forward``), or None
LoopNorm = tuple[Any, ...] | None

#: ``forward(a, w, options, reverse, training, states, y, chunks, gates, blocks, cols, ln)``:
#: cell's time loop over the projected ``chunks`` (:func:`_packing.projected_chunks`),
#: given the checked arguments, the prepared weights, the cell's options, the states
#: (updated in place), the output ``y``, when training keeps them the ``gates``
#: buffer (the one chunk's own), and the row blocks of its threads
#: (:func:`_parallel.row_blocks`) or its steps' unit blocks
#: (:func:`_parallel.column_blocks`), None: one thread, and the recurrent path's layer
#: normalization (:data:`LoopNorm`, passed on to the kernel).  It allocates its scratch and
#: returns what training keeps besides ``y`` and ``gates``, named as in
#: ``CellSpec.cache_fields``.
#: Plain arguments, no record: this runs per call, and T = B = 1 calls are short.
ForwardLoop = Callable[[ForwardArgs, Weights, Options, bool, bool, tuple[np.ndarray, ...],
                        np.ndarray, Chunks, np.ndarray | None, np.ndarray | None,
                        np.ndarray | None, LoopNorm], Kept]


class _Back(NamedTuple):
    """One backward run: the cache, the call's scratch, the upstream gradients
    (``finals``: one per state, final-state gradients in, initial-state ones out),
    the initial states (zeros when the forward pass had none), the loop's row
    blocks (:func:`_parallel.row_blocks`, None: one thread) and, for a
    layer-normalized cell, the kernel's ``ln`` argument (see ``_kernels.rnn_backward``)."""

    cache: Cache
    s: Scratch
    dy: np.ndarray | None
    finals: list[np.ndarray]
    init: list[np.ndarray]
    reverse: bool
    lengths: np.ndarray | None
    T: int
    B: int
    H: int
    blocks: np.ndarray | None
    ln: LoopNorm = None
    #: a projected LSTM's ``proj`` argument of ``_kernels.lstm_backward``, or None
    proj: tuple[np.ndarray, ...] | None = None


def _no_extra(b: _Back, dG: np.ndarray, hprev: np.ndarray) -> tuple[np.ndarray, ...]:
    return ()


def _no_recurrent_input(b: _Back, hprev: np.ndarray) -> np.ndarray | None:
    return None


def _no_empty_extra(cache: Cache) -> tuple[np.ndarray, ...]:
    return ()


class _Adapter(NamedTuple):
    """How the skeletons run one cell's compiled loops.

    layout(options)
        How ``W_hh``/``b_hh`` enter the loop (:class:`_packing.RecurrentLayout`).
    forward(a, w, options, reverse, training, states, y, chunks, gates, blocks, cols, ln)
        Runs ``_kernels.<cell>_forward`` over every chunk (:data:`ForwardLoop`).
    backward(b)
        Runs ``_kernels.<cell>_backward``; returns ``(dGx, dGh)``, the gradients
        of the input and the recurrent pre-activations (the same array when equal).
    forward_result, gradients(cache)
        The result types.
    recurrent_input_n(b, hprev)
        What the last H rows of ``W_hh`` multiply instead of ``hprev`` (None: hprev).
    extra(b, dG, hprev)
        Gradients after ``db_hh`` (LSTM: ``dpeephole``); ``hprev``'s buffer is free.
    empty_extra(cache)
        ``extra``'s zeros for empty work.
    """

    layout: Callable[[Options], RecurrentLayout]
    forward: ForwardLoop
    backward: Callable[[_Back], tuple[np.ndarray, np.ndarray]]
    forward_result: Callable[..., AnyForwardResult]
    gradients: Callable[[Cache], Callable[..., AnyGradients]]
    recurrent_input_n: Callable[[_Back, np.ndarray], np.ndarray | None] = _no_recurrent_input
    extra: Callable[[_Back, np.ndarray, np.ndarray], tuple[np.ndarray, ...]] = _no_extra
    empty_extra: Callable[[Cache], tuple[np.ndarray, ...]] = _no_empty_extra


# ----------------------------------------------------------------------------
# the cells' adapters

_PLAIN = RecurrentLayout()


def _plain_layout(options: Options) -> RecurrentLayout:
    return _PLAIN


def _rnn_forward_loop(a: ForwardArgs, w: Weights, options: Options, reverse: bool,
                      training: bool, states: tuple[np.ndarray, ...], y: np.ndarray,
                      chunks: Chunks, gates: np.ndarray | None,
                      blocks: np.ndarray | None, cols: np.ndarray | None, ln: LoopNorm) -> Kept:
    relu = options["nonlinearity"] == "relu"
    gh = np.empty((a.B, a.H), F32)
    for t0, gx in chunks:
        _kernels.rnn_forward(t0, gx, w.wp, w.packing, states[0], y, a.lengths, reverse, relu,
                             gh, blocks, cols=cols, ln=ln)
    return {}


def _rnn_backward_loop(b: _Back) -> tuple[np.ndarray, np.ndarray]:
    dG = b.s.empty("dG", (b.T, b.B, b.H))
    _kernels.rnn_backward(b.cache["y"], b.s.pack("W_hh", b.cache["W_hh"], False), b.dy,
                          b.finals[0], dG, b.lengths, b.reverse,
                          b.cache.options["nonlinearity"] == "relu", b.s.empty("tmp", (b.B, b.H)),
                          b.blocks, ln=b.ln)
    return dG, dG


def _gru_layout(options: Options) -> RecurrentLayout:
    lbr = bool(options["linear_before_reset"])
    return RecurrentLayout(has_bhn=True, bhn_apart=lbr, split_n=not lbr)


def _gru_forward_loop(a: ForwardArgs, w: Weights, options: Options, reverse: bool,
                      training: bool, states: tuple[np.ndarray, ...], y: np.ndarray,
                      chunks: Chunks, gates: np.ndarray | None,
                      blocks: np.ndarray | None, cols: np.ndarray | None, ln: LoopNorm) -> Kept:
    lbr = options["linear_before_reset"]
    hn = np.empty((a.T, a.B, a.H), F32) if training and lbr else None
    # without linear_before_reset the n rows' product waits for r: gh has the
    # r, z columns only, and n's goes to ghn
    gh = np.empty((a.B, (a.G if lbr else a.G - 1) * a.H), F32)
    rh, ghn = np.zeros((a.B, a.H), F32), np.empty((a.B, a.H), F32)
    # the kernel zeroes masked steps' gates (gates is the projection's own buffer;
    # backward reads r at every step for dW_hn without linear_before_reset)
    bhn = w.bhn
    assert bhn is not None, "the GRU layout always has b_hn"
    for t0, gx in chunks:
        _kernels.gru_forward(t0, gx, w.wp, w.wp_n, w.packing, bhn, states[0], y, a.lengths,
                             reverse, lbr, gates, hn, gh, rh, ghn, blocks, cols=cols, ln=ln)
    return {"hn": hn}


def _gru_backward_loop(b: _Back) -> tuple[np.ndarray, np.ndarray]:
    lbr = b.cache.options["linear_before_reset"]
    GH = b.cache["W_hh"].shape[0]
    dGx = b.s.empty("dG", (b.T, b.B, GH))
    dGh = b.s.empty("dGh", (b.T, b.B, GH)) if lbr else None
    wpt, wpt_n = pack_recurrent(b.cache["W_hh"], not lbr,
                                lambda W, i: b.s.pack(RECURRENT_BUFFERS[i], W, False))
    _kernels.gru_backward(b.cache["gates"], b.cache["hn"], b.cache["y"], b.init[0], wpt, wpt_n,
                          b.dy, b.finals[0], dGx, dGh, b.lengths, b.reverse, lbr,
                          b.s.empty("tmp", (b.B, b.H)), b.s.empty("direct", (b.B, b.H)),
                          b.blocks, ln=b.ln)
    return dGx, dGx if dGh is None else dGh


def _gru_recurrent_input_n(b: _Back, hprev: np.ndarray) -> np.ndarray | None:
    # without linear_before_reset, n = tanh(... + W_hn (r*h) + b_hn): W_hn sees r*h
    if b.cache.options["linear_before_reset"]:
        return None
    rh: np.ndarray = np.multiply(b.cache["gates"][:, :, :b.H], hprev,
                                 out=b.s.empty("rh", hprev.shape))
    return rh


def _lstm_forward_loop(a: ForwardArgs, w: Weights, options: Options, reverse: bool,
                       training: bool, states: tuple[np.ndarray, ...], y: np.ndarray,
                       chunks: Chunks, gates: np.ndarray | None,
                       blocks: np.ndarray | None, cols: np.ndarray | None, ln: LoopNorm) -> Kept:
    h, c = states
    # zeros, not empty: masked steps are never written, and dpeephole
    # multiplies every step's cs by its (zero) gate gradient: 0 * garbage
    cs = np.zeros((a.T, a.B, a.H), F32) if training else None
    gh = np.empty((a.B, a.G * a.H), F32)
    m, proj = None, None
    if a.W_hr is not None:      # the loop writes every step's m, masked ones zeros
        m = np.empty((a.T, a.B, a.H), F32) if training else None
        proj = (options["wr"], m, np.empty((a.B, a.H), F32), np.empty((a.B, a.H), F32),
                np.empty((a.B, a.P), F32))
    for t0, gx in chunks:
        _kernels.lstm_forward(t0, gx, w.wp, w.packing, w.peephole, h, c, y, a.lengths, reverse,
                              gates, cs, gh, blocks, cols=cols, ln=ln, proj=proj)
    return {"cs": cs, "m": m}


def _lstm_backward_loop(b: _Back) -> tuple[np.ndarray, np.ndarray]:
    c = b.cache
    dG = b.s.empty("dG", (b.T, b.B, c["W_hh"].shape[0]))
    _kernels.lstm_backward(c["gates"], c["cs"], b.init[1], b.s.pack("W_hh", c["W_hh"], False),
                           c["peephole"], b.dy, b.finals[0], b.finals[1], dG, b.lengths,
                           b.reverse, b.s.empty("tmp", b.finals[0].shape), b.blocks, ln=b.ln,
                           proj=b.proj)
    return dG, dG


def _lstm_dpeephole(b: _Back, dG: np.ndarray, hprev: np.ndarray) -> tuple[np.ndarray, ...]:
    if b.cache["peephole"] is None:
        return ()
    H, cs = b.H, b.cache["cs"]
    # hprev's buffer has P values per row with a projection: c's then needs its own
    buf = hprev if hprev.shape == cs.shape else b.s.empty("cprev", cs.shape)
    cprev = _prev_states(cs, b.init[1], b.lengths, b.reverse, buf)
    return (np.concatenate([(dG[:, :, :H] * cprev).sum(axis=(0, 1)),
                            (dG[:, :, H:2 * H] * cprev).sum(axis=(0, 1)),
                            (dG[:, :, 3 * H:] * cs).sum(axis=(0, 1))]),)


def _ln_lstm_gradients(*fields: Any) -> LayerNormLSTMGradients:
    """A :class:`LayerNormLSTMGradients` from the skeleton's fields: the peephole's
    gradient (``extra``) is absent without peepholes."""
    if len(fields) == len(LayerNormLSTMGradients._fields) - 1:
        fields = (*fields[:-1], None, fields[-1])
    return LayerNormLSTMGradients(*fields)


def _proj_lstm_gradients(cache: Cache) -> Callable[..., ProjLSTMGradients]:
    """The :class:`ProjLSTMGradients` of a projected LSTM's cache from the skeleton's
    fields: ``dpeephole`` and ``dlayer_norm`` (None when the cache has neither), then
    ``dW_hr``, after the seven of every LSTM."""
    has = (cache["peephole"] is not None, bool(cache.options["layer_norm"]))

    def gradients(*fields: Any) -> ProjLSTMGradients:
        rest = list(fields[7:])
        optional = [rest.pop(0) if present else None for present in has]
        return ProjLSTMGradients(*fields[:7], *optional, *rest)
    return gradients


def _lstm_gradients(cache: Cache) -> Callable[..., AnyGradients]:
    if cache.arrays.get("W_hr") is not None:     # (absent from caches pickled before it)
        return _proj_lstm_gradients(cache)
    if cache.options["layer_norm"]:
        return _ln_lstm_gradients
    return LSTMGradients if cache["peephole"] is None else PeepholeLSTMGradients


def _lstm_empty_dpeephole(cache: Cache) -> tuple[np.ndarray, ...]:
    p = cache["peephole"]
    return () if p is None else (np.zeros_like(p),)


def _plain_gradients(cache: Cache) -> Callable[..., AnyGradients]:
    return LayerNormGradients if cache.options["layer_norm"] else Gradients


#: per cell, how the skeletons run it (see :class:`_Adapter`)
_ADAPTERS: dict[str, _Adapter] = {
    "rnn": _Adapter(layout=_plain_layout, forward=_rnn_forward_loop,
                    backward=_rnn_backward_loop, forward_result=ForwardResult,
                    gradients=_plain_gradients),
    "gru": _Adapter(layout=_gru_layout, forward=_gru_forward_loop,
                    backward=_gru_backward_loop, forward_result=ForwardResult,
                    gradients=_plain_gradients, recurrent_input_n=_gru_recurrent_input_n),
    "lstm": _Adapter(layout=_plain_layout, forward=_lstm_forward_loop,
                     backward=_lstm_backward_loop, forward_result=LSTMForwardResult,
                     gradients=_lstm_gradients, extra=_lstm_dpeephole,
                     empty_extra=_lstm_empty_dpeephole),
}
assert tuple(_ADAPTERS) == tuple(CELLS), "one adapter per cell of _cells.CELLS"


# ----------------------------------------------------------------------------
# the forward skeleton


def _initial(state: np.ndarray | None, B: int, H: int) -> np.ndarray:
    """A new float32 (B, H) buffer holding the initial state (the kernel updates it)."""
    return np.zeros((B, H), F32) if state is None else state.copy()


#: the cells with a cell state c besides h (ForwardArgs holds the initial h0 and c0)
_HAS_C = frozenset(cell for cell, spec in CELLS.items() if spec.has_cell_state)
#: the cells whose training forward keeps the activated gates
_KEEPS_GATES = frozenset(cell for cell, spec in CELLS.items() if "gates" in spec.cache_fields)


RunResult = tuple[np.ndarray, tuple[np.ndarray, ...], Kept]


def _splits_columns(cell: str, a: ForwardArgs, options: Options,
                    weights: Weights | None) -> bool:
    """Whether the call's loop may split its steps by hidden units: ``W_hh`` packed as
    floats, one product per step (not the GRU without linear_before_reset), no
    layer normalization (a row's statistics need all its units: docs/design.md,
    "Layer-normalized cells") and no projection (``h = W_hr m`` needs all of m: a
    second product per step, "LSTM projection")."""
    if cell == "gru" and not options["linear_before_reset"] or \
            options.get("layer_norm") is not None or a.W_hr is not None:
        return False
    if weights is None:
        return packs_forward(a)
    return weights.packing == _kernels.PACK_FLOAT


def _run(cell: str, a: ForwardArgs, options: Options, reverse: bool, training: bool,
         weights: Weights | None = None, wr: np.ndarray | None = None) -> RunResult:
    """The outputs ``y``, the final states and what training keeps (besides ``y``) of
    one forward pass; ``weights`` prepared (Stepper) or None (prepared here), and
    with them a projected LSTM's ``W_hr`` in their packing (``wr``).  The call takes
    the threads the cost model gives its size from the shared budget (none for
    small calls, which run on the calling thread alone)."""
    want = forward_threads(a.T, a.B, a.I, a.G, a.H, _splits_columns(cell, a, options, weights),
                           a.P)
    if want <= 1:
        return _run_on(cell, a, options, reverse, training, weights, 1, wr)
    with claim(want) as n:
        return _run_on(cell, a, options, reverse, training, weights, n, wr)


def _projection_pack(a: ForwardArgs, w: Weights, s: Scratch, nthreads: int) -> np.ndarray:
    """A projected LSTM's ``W_hr`` for one call's loop, in the form ``W_hh`` takes
    (``w.packing``): packed into ``s``'s buffer, or its rows as they are."""
    assert a.W_hr is not None, "only a projected LSTM has W_hr"
    if w.packing == _kernels.PACK_NONE:
        return a.W_hr.ravel()
    n = nthreads if a.W_hr.size >= PACK_SPLIT_MIN_FLOATS else 1
    return s.pack("W_hr", a.W_hr, True, n)


def _run_on(cell: str, a: ForwardArgs, options: Options, reverse: bool, training: bool,
            weights: Weights | None, nthreads: int, wr: np.ndarray | None = None) -> RunResult:
    """:func:`_run` on up to ``nthreads`` threads."""
    adapter = _ADAPTERS[cell]
    h = _initial(a.h0, a.B, a.P)      # h has P values with a projection (else P = H)
    states = (h, _initial(a.c0, a.B, a.H)) if cell in _HAS_C else (h,)
    if a.T == 0 or a.B == 0:      # empty work: the initial states are the final ones
        return np.zeros((a.T, a.B, a.P), F32), states, {}
    y = np.empty((a.T, a.B, a.P), F32)
    blocks = cols = None
    if nthreads > 1:
        blocks = row_blocks(a.B, min(nthreads, loop_threads(a.B, a.G, a.H, a.P)), a.lengths)
        if blocks is None and _splits_columns(cell, a, options, weights):
            cols = _parallel.column_blocks(
                a.H, min(nthreads, _parallel.column_threads(a.B, a.G, a.H)))
    with Scratch() as s:
        w = (weights_for_call(a, s, adapter.layout(options), nthreads) if weights is None
             else weights)
        if a.W_hr is not None:    # the loop takes W_hr packed as W_hh is
            options = {**options, "wr": _projection_pack(a, w, s, nthreads) if wr is None
                       else wr}
        norm, ln, kept_ln = _layer_norm_run(cell, a, w, options, training)
        chunks = projected_chunks(a, w, training, reverse, nthreads, norm)
        gates = None
        if training and cell in _KEEPS_GATES:
            (_, gates), = chunks  # one chunk of every step: its buffer keeps the gates
        kept = adapter.forward(a, w, options, reverse, training, states, y, chunks, gates,
                               blocks, cols, ln)
    kept["gates"] = gates
    kept.update(kept_ln)
    return y, states, kept


#: what a layer-normalized training forward keeps besides its cell's cache fields: the
#: normalized rows and 1/sqrt(var + eps) (see ``_kernels``, "layer normalization")
_LN_KEPT = ("ln_xih", "ln_xhh", "ln_xc", "ln_rstd")
#: ... and the gains (and c's beta) backward multiplies by, from the ``LayerNormWeights``
_LN_WEIGHTS_KEPT = ("ih_weight", "hh_weight", "c_weight", "c_bias")


def _layer_norm_run(cell: str, a: ForwardArgs, w: Weights, options: Options,
                    training: bool) -> tuple[InputNorm | None, LoopNorm, Kept]:
    """A forward call's layer normalization: the input path's (the projection's rows,
    the folded biases in its beta), the loop's ``ln`` argument, and what training keeps
    (:data:`_LN_KEPT`, uninitialized: the loops write every row).  Nones and ``{}``
    without."""
    ln: LayerNormWeights | None = options.get("layer_norm")
    if ln is None:
        return None, None, {}
    eps = options["layer_norm_eps"]
    beta = ln.ih_bias if w.bias is None else ln.ih_bias + w.bias
    if not training:
        return (InputNorm(ln.ih_weight, beta, eps),
                (ln.hh_weight, ln.hh_bias, ln.c_weight, ln.c_bias, eps, None, None, None, None),
                {})
    T, B, H, GH = a.T, a.B, a.H, a.G * a.H
    K = _kernels.LN_STATS[cell]
    xih, xhh = np.empty((T, B, GH), F32), np.empty((T, B, GH), F32)
    xc = np.empty((T, B, H), F32) if ln.c_weight is not None else None
    rstd = np.empty((T, B, K), F32)
    kept: Kept = {"ln_xih": xih, "ln_xhh": xhh, "ln_xc": xc, "ln_rstd": rstd}
    return (InputNorm(ln.ih_weight, beta, eps, xih.reshape(T * B, GH), rstd.reshape(T * B, K)),
            (ln.hh_weight, ln.hh_bias, ln.c_weight, ln.c_bias, eps, xih, xhh, xc, rstd), kept)


def _cache(cell: str, args: ForwardArgs, options: Options, kept: Kept,
           y: np.ndarray) -> Cache:
    # The inputs may be the caller's own arrays (passed through when already
    # float32 and C order): copy them, so that a caller who reuses a buffer or
    # updates weights in place before backward still gets the right gradients.
    def own(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.copy()
    arrays: dict[str, Any] = dict(
        x=without_padding(args.x, args.lengths), W_ih=own(args.W_ih), W_hh=own(args.W_hh),
        h0=own(args.h0), c0=own(args.c0), lengths=own(args.lengths),
        peephole=own(args.peephole), has_bias=args.b_ih is not None)
    arrays.update((f, y.copy() if f == "y" else kept.get(f)) for f in CELLS[cell].cache_fields)
    if cell == "lstm":          # a projection's W_hr and every step's m = o * tanh(c)
        arrays.update(W_hr=own(args.W_hr), m=kept.get("m"))
    ln: LayerNormWeights | None = options["layer_norm"]
    if ln is not None:
        arrays.update((f, kept.get(f)) for f in _LN_KEPT)
        arrays.update((f"ln_{f}", own(getattr(ln, f))) for f in _LN_WEIGHTS_KEPT)
    return Cache(cell, BACKEND, {**options, "layer_norm": ln is not None}, arrays)


def _forward(cell: str, options: Options, x: Any, W_ih: Any, W_hh: Any, b_ih: Any, b_hh: Any,
             h0: Any, c0: Any, peephole: Any, lengths: Any, reverse: Any,
             training: Any, layer_norm: Any = None, layer_norm_eps: Any = 1e-5,
             W_hr: Any = None) -> AnyForwardResult:
    """The forward skeleton: check, run (or the empty case), keep the cache."""
    reverse = check_bool("reverse", reverse)
    training = check_bool("training", training)
    a = check_forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, dtype=F32,
                      peephole=peephole, W_hr=W_hr)
    ln, eps = check_layer_norm(cell, layer_norm, layer_norm_eps, a.H, F32,
                               linear_before_reset=options.get("linear_before_reset", True))
    options = {**options, "layer_norm": ln, "layer_norm_eps": eps}
    y, states, kept = _run(cell, a, options, reverse, training)
    cache = _cache(cell, a, {**options, "reverse": reverse}, kept, y) if training else None
    return _ADAPTERS[cell].forward_result(y, *states, cache)


# ----------------------------------------------------------------------------
# the backward skeleton


def _prev_states(y: np.ndarray, init: np.ndarray, lengths: np.ndarray | None,
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


#: the weight-gradient products take one more thread per this many flops (2*m*n*k):
#: each thread gets tens of microseconds of work, well above an OpenMP fork and join,
#: and below twice this the calling thread works alone (docs/design.md, "Backward
#: products")
WGRAD_FLOPS_PER_THREAD = 1 << 22


def _weight_grads(s: Scratch, x: np.ndarray, W_ih: np.ndarray, dGx: np.ndarray,
                  dGh: np.ndarray, hprev: np.ndarray, has_bias: bool,
                  hprev_n: np.ndarray | None = None) -> tuple[Any, ...]:
    """Phase 3: ``dx, dW_ih, dW_hh, db_ih, db_hh`` as one matrix product (or sum) each.

    ``hprev_n``: what the last H rows of ``W_hh`` multiply instead of ``hprev``
    (``r*h`` for a GRU without ``linear_before_reset``).

    Notes
    -----
    Every product runs on fastcells' packed GEMM, none on NumPy's BLAS (whose
    threads spin after a call and fight the caller's).  ``dW = dG^T X`` splits
    its rows across the threads :func:`_threads.claim` grants, one more thread
    per :data:`WGRAD_FLOPS_PER_THREAD`; its bits do not depend on their number.
    ``dW_ih`` and ``dW_hh`` share one transposed copy of ``dG`` when they have
    the same ``dG``.  The bias sums are NumPy reductions (no BLAS).
    """
    T, B, I = x.shape
    GH, H = dGx.shape[2], hprev.shape[2]
    k = T * B
    dGx2 = dGx.reshape(k, GH)
    dGh2 = dGh.reshape(k, GH)
    # dx by fastcells' packed GEMM (W_ih packed as it is, a plain copy), its rows
    # split across threads when large (the same bits for any count)
    dx = np.empty((k, I), F32)
    dx_want = _parallel.gemm_threads(k, I, GH)
    with _threads.claim(dx_want) if dx_want > 1 else nullcontext(1) as n_dx:
        _kernels.gemm(dGx2, s.pack("W_ih", W_ih, False), I, dx, n_dx)
    dx = dx.reshape(T, B, I)
    # dW_ih = dGx^T X, dW_hh = dGh^T H_prev: one call per block of dG's columns,
    # which it copies transposed once for both its products: (A, a0, B, C, B2, C2)
    dW_ih, dW_hh = np.empty((GH, I), F32), np.empty((GH, H), F32)
    x2, hprev2 = x.reshape(k, I), hprev.reshape(k, H)
    calls: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, Any, Any]]
    if dGh is not dGx:          # GRU with linear_before_reset: its own dGh
        assert hprev_n is None, "a cell with its own dGh multiplies W_hh's rows by hprev"
        calls = [(dGx2, 0, x2, dW_ih, None, None), (dGh2, 0, hprev2, dW_hh, None, None)]
    elif hprev_n is None:
        calls = [(dGx2, 0, x2, dW_ih, hprev2, dW_hh)]
    else:                       # the last H rows of W_hh multiply hprev_n
        n0 = GH - H
        calls = [(dGx2, 0, x2, dW_ih[:n0], hprev2, dW_hh[:n0]),
                 (dGx2, n0, x2, dW_ih[n0:], hprev_n.reshape(k, H), dW_hh[n0:])]
    want = _kernels.gemm_tn_threads(GH, max(1, 2 * k * GH * (I + H) // WGRAD_FLOPS_PER_THREAD))
    # one thread: no budget to claim (a small call's few microseconds)
    with _threads.claim(want) if want > 1 else nullcontext(1) as n:
        for A, a0, Bk, C, B2, C2 in calls:
            need = _kernels.gemm_tn_floats(k, C.shape[0], C.shape[1], n,
                                           0 if C2 is None else C2.shape[1])
            _kernels.gemm_tn(A, Bk, C, a0, n, s.empty("wgrad", (need,)), B2, C2)
    db_ih, db_hh = _bias_grads(dGx, dGh) if has_bias else (None, None)
    return dx, dW_ih, dW_hh, db_ih, db_hh


def _bias_grads(dGx: np.ndarray, dGh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sums over (T, B) of the two pre-activation gradients (the biases' gradients):
    the same sum twice when both share one gradient (RNN, LSTM)."""
    GH = dGx.shape[-1]
    db_ih = dGx.reshape(-1, GH).sum(axis=0)
    return db_ih, db_ih.copy() if dGh is dGx else dGh.reshape(-1, GH).sum(axis=0)


def _backward_loop(adapter: _Adapter, b: _Back) -> tuple[np.ndarray, np.ndarray]:
    """The cell's BPTT loop, its rows split over the threads the cost model gives its
    size (none for small calls: they run on the calling thread alone)."""
    W_hh = b.cache["W_hh"]      # (G*H, H), or (4*H, P) with a projection
    want = loop_threads(b.B, W_hh.shape[0] // b.H, b.H, W_hh.shape[1])
    if want <= 1:
        return adapter.backward(b)
    with claim(want) as n:
        return adapter.backward(b._replace(blocks=row_blocks(b.B, n, b.lengths)))


def _zeros_if_none(a: np.ndarray | None, B: int, H: int) -> np.ndarray:
    return np.zeros((B, H), F32) if a is None else a


def _backward(cell: str, cache: Any, dy: Any, finals: tuple[Any, ...]) -> AnyGradients:
    """The backward skeleton: check, the BPTT loop, the weight gradients."""
    spec, adapter = CELLS[cell], _ADAPTERS[cell]
    cache = check_cache(cache, cell, BACKEND)
    T, B, P = cache["y"].shape
    GH = cache["W_hh"].shape[0]
    H = GH // spec.G
    # h has P values with a projection (P < H; else P = H), c has H
    W_hr = cache.arrays.get("W_hr") if cell == "lstm" else None
    widths = {"h": P, "c": H}
    symbol = {"h": "P" if W_hr is not None else "H", "c": "H"}
    dy = check_grad("dy", dy, ("T", "B", symbol["h"]), (T, B, P), F32)
    grads = []
    for state, g in zip(spec.states, finals):
        g = check_grad(f"d{state}", g, ("B", symbol[state]), (B, widths[state]), F32)
        grads.append(np.zeros((B, widths[state]), F32) if g is None else g.copy())
    result = adapter.gradients(cache)
    normalized = cache.options["layer_norm"]
    if T == 0 or B == 0:          # nothing flows through the loop
        dx, dW_ih, dW_hh = (np.zeros(cache[k].shape, F32) for k in ("x", "W_ih", "W_hh"))
        db_ih, db_hh = (np.zeros(GH, F32), np.zeros(GH, F32)) if cache["has_bias"] else (None, None)
        dln = (_empty_layer_norm_grads(cache),) if normalized else ()
        dW_hr = () if W_hr is None else (np.zeros(W_hr.shape, F32),)
        return result(dx, *grads, dW_ih, dW_hh, db_ih, db_hh, *adapter.empty_extra(cache),
                      *dln, *dW_hr)
    with Scratch() as s:
        init = [_zeros_if_none(cache[f"{state}0"], B, widths[state]) for state in spec.states]
        ln = None
        if normalized:
            dcn = s.empty("dcn", (T, B, H)) if cache["ln_xc"] is not None else None
            ln = (cache["ln_hh_weight"], cache["ln_c_weight"], cache["ln_c_bias"],
                  cache["ln_xhh"], cache["ln_xc"], cache["ln_rstd"],
                  s.empty("dGln", (T, B, GH)), dcn)
        proj = None
        if W_hr is not None:
            proj = (s.pack("W_hr", W_hr, False), s.empty("dht", (T, B, P)),
                    s.empty("dm", (B, H)))
        b = _Back(cache, s, dy, grads, init, cache.options["reverse"], cache["lengths"], T, B,
                  H, None, ln, proj)
        dGx, dGh = _backward_loop(adapter, b)
        hprev = _prev_states(cache["y"], b.init[0], b.lengths, b.reverse,
                             s.empty("hprev", (T, B, P)))
        if ln is None:
            dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(
                s, cache["x"], cache["W_ih"], dGx, dGh, hprev, cache["has_bias"],
                adapter.recurrent_input_n(b, hprev))
            dln = ()
        else:
            # the weights see the gradients of the products W_ih x, W_hh h (through
            # LN); the biases join after LN: theirs are the betas' sums
            dln = (_layer_norm_grads(cache, dGx, dGh, ln[-1]),)
            dx, dW_ih, dW_hh, _, _ = _weight_grads(
                s, cache["x"], cache["W_ih"], _input_norm_backward(s, cache, dGx), ln[-2],
                hprev, False, adapter.recurrent_input_n(b, hprev))
            db_ih, db_hh = ((dln[0].ih_bias.copy(), dln[0].hh_bias.copy())
                            if cache["has_bias"] else (None, None))
        # dW_hr = sum over steps of dh_t^T m_t, as the other weights' one product
        dW_hr = () if proj is None else (_tn_product(s, proj[1], cache["m"]),)
        extra = adapter.extra(b, dGx, hprev)      # may reuse hprev's buffer: it is done
        return result(dx, *grads, dW_ih, dW_hh, db_ih, db_hh, *extra, *dln, *dW_hr)


def _tn_product(s: Scratch, A: np.ndarray, Bm: np.ndarray) -> np.ndarray:
    """``A^T Bm`` over every step and row, ``A`` (T, B, m), ``Bm`` (T, B, n): a weight
    gradient as :func:`_weight_grads` computes them (``gemm_tn`` on fastcells'
    threads, :data:`WGRAD_FLOPS_PER_THREAD`; the same bits for any count)."""
    m, n = A.shape[2], Bm.shape[2]
    k = A.shape[0] * A.shape[1]
    C = np.empty((m, n), F32)
    want = _kernels.gemm_tn_threads(m, max(1, 2 * k * m * n // WGRAD_FLOPS_PER_THREAD))
    with _threads.claim(want) if want > 1 else nullcontext(1) as nt:
        need = _kernels.gemm_tn_floats(k, m, n, nt)
        _kernels.gemm_tn(A.reshape(k, m), Bm.reshape(k, n), C, 0, nt, s.empty("wgrad", (need,)))
    return C


def _gain_grad(d: np.ndarray, xhat: np.ndarray) -> np.ndarray:
    """A gain's gradient: ``sum over (T, B) of d * xhat`` (one pass, no temporary)."""
    n = d.shape[-1]
    g: np.ndarray = np.einsum("kn,kn->n", d.reshape(-1, n), xhat.reshape(-1, n))
    return g


def _layer_norm_grads(cache: Cache, dGx: np.ndarray, dGh: np.ndarray,
                      dcn: np.ndarray | None) -> LayerNormWeights:
    """The gains' and biases' gradients from the gradients of the normalized rows
    (each LN's beta gets the same sum as the bias added after it)."""
    d_ih, d_hh = _bias_grads(dGx, dGh)
    c_w = c_b = None
    if dcn is not None:
        c_w, c_b = _gain_grad(dcn, cache["ln_xc"]), dcn.reshape(-1, dcn.shape[-1]).sum(axis=0)
    return LayerNormWeights(_gain_grad(dGx, cache["ln_xih"]), d_ih,
                            _gain_grad(dGh, cache["ln_xhh"]), d_hh, c_w, c_b)


def _empty_layer_norm_grads(cache: Cache) -> LayerNormWeights:
    """:func:`_layer_norm_grads` of empty work: zeros."""
    GH, c = cache["ln_ih_weight"].shape[0], cache["ln_c_weight"]
    H = None if c is None else c.shape[0]
    return LayerNormWeights._make(np.zeros(n, F32) if n is not None else None
                                  for n in (GH, GH, GH, GH, H, H))


def _input_norm_backward(s: Scratch, cache: Cache, dGx: np.ndarray) -> np.ndarray:
    """The gradient of the input projection ``W_ih x`` from that of its normalized rows
    (``dGx``), through the input path's LN, rows split as the projection's."""
    T, B, GH = dGx.shape
    k, K = T * B, cache["ln_rstd"].shape[2]
    out = s.empty("dGxln", (T, B, GH))
    want = _parallel.gemm_threads(k, GH, cache["x"].shape[2])
    with _threads.claim(want) if want > 1 else nullcontext(1) as n:
        _kernels.layer_norm_rows_backward(dGx.reshape(k, GH), cache["ln_xih"].reshape(k, GH),
                                          cache["ln_rstd"].reshape(k, K),
                                          cache["ln_ih_weight"], out.reshape(k, GH), n)
    return out


# ----------------------------------------------------------------------------
# the public functions

#: the docstring text every cell's function shares, filled in by @_doc (so that
#: help() shows each page whole while the text is written once)
_DOC_PARTS = {
    "cache_dy": """    cache : Cache
        The ``cache`` of ``%(cell)s_forward(..., training=True)``.
    dy : array (T, B, H), optional
        Gradient of the loss with respect to ``y`` (zeros if None; entries past
        a sequence's length are ignored).""",
    "sequence_options": """    lengths : int array (B,), optional
        Valid steps per sequence, ``0 <= lengths[b] <= T``; outputs past a
        sequence's end are zeros and its state stops there.
    reverse : bool
        Run from each sequence's last valid step to the first.
    training : bool
        Keep what :func:`%(cell)s_backward` needs (returned as ``cache``).""",
    "layer_norm": """    layer_norm : LayerNormWeights, optional
        Keyword-only: a layer-normalized cell (Ba et al. 2016): the gains and
        biases ``(ih_weight, ih_bias, hh_weight, hh_bias%(ln_c)s)``,
        each (%(G)s,)%(ln_c_shape)s, real floats converted to float32 (any tuple
        in that order).  ``W_ih x`` and ``W_hh h`` are each normalized over the
        row of %(G)s values,
        ``LN(v; g, b) = (v - mean(v)) / sqrt(var(v) + eps) * g + b`` (population
        variance), before the biases join:%(ln_equations)s
        The backward pass then returns the ``LayerNorm...Gradients`` type, whose
        ``dlayer_norm`` holds the gains' and biases' gradients.
    layer_norm_eps : float
        Keyword-only: the ``eps`` of every normalization, finite and > 0.""",
    "notes_forward": """    Notes
    -----
    A call large enough to pay for it splits its time loop and its input
    products over up to :func:`fastcells.get_num_threads` threads: by batch
    rows, or at batch 1-4 with a large hidden size each step by hidden units;
    the same bits for any thread count.  The compiled loops release the GIL,
    so several Python threads can run calls at once, sharing that budget (each
    thread keeps its own scratch buffers: :func:`release_scratch`).""",
    "notes_backward": """    Notes
    -----
    A call large enough to pay for it splits its time loop and its products by
    batch rows over up to :func:`fastcells.get_num_threads` threads, with the
    same bits for any thread count.  The compiled loops release the GIL, so
    several Python threads can run calls at once, sharing that budget (each
    thread keeps its own scratch buffers: :func:`release_scratch`).""",
}

#: the per-cell words of the ``layer_norm`` section (the equations wrapped and indented)
_LN_DOC = {
    "rnn": {"ln_c": "", "ln_c_shape": "",
            "ln_equations": """
        ``h' = act(LN(W_ih x) + LN(W_hh h) + b_ih + b_hh)``."""},
    "gru": {"ln_c": "", "ln_c_shape": "",
            "ln_equations": """
        ``a_i = LN(W_ih x) + b_ih``, ``a_h = LN(W_hh h) + b_hh``, then the gates of
        ``linear_before_reset=True`` from them (the other form has no standard
        normalized form: ValueError)."""},
    "lstm": {"ln_c": ", c_weight, c_bias", "ln_c_shape": " and ``c_*`` (H,)",
             "ln_equations": """
        ``a = LN(W_ih x) + LN(W_hh h) + b_ih + b_hh`` (then the peephole terms),
        gates as above, ``c' = f*c + i*g`` carried as it is, and
        ``h' = o * tanh(LN(c'; c_weight, c_bias))`` over H (PyTorch's
        ``custom_lstms.LayerNormLSTMCell`` and TF Addons' cell carry the
        normalized ``c`` instead)."""},
}


_Function = TypeVar("_Function", bound=Callable[..., Any])


def _doc(function: _Function) -> _Function:
    """Fill the shared sections of a public function's docstring (:data:`_DOC_PARTS`)."""
    words = {**_LN_DOC[function.__name__.split("_")[0]], "G": "%(G)s"}   # G: fill_doc's
    return fill_doc(function, {**_DOC_PARTS, "layer_norm": _DOC_PARTS["layer_norm"] % words})


@_doc
def rnn_forward(x: Any, W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None,
                h0: Any = None, *, nonlinearity: str = "tanh", lengths: Any = None,
                reverse: bool = False, training: bool = False, layer_norm: Any = None,
                layer_norm_eps: float = 1e-5) -> ForwardResult:
    """Run an Elman RNN over a sequence: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Parameters
    ----------
    x : array (T, B, I)
        Time-major inputs.  Real floats, converted to float32.
    W_ih : array (H, I)
    W_hh : array (H, H)
    b_ih, b_hh : array (H,), optional
        Both or neither.
    h0 : array (B, H), optional
        Initial hidden state, zeros if None.
    nonlinearity : {"tanh", "relu"}
        The activation ``act``.
%(sequence_options)s
%(layer_norm)s

    Returns
    -------
    ForwardResult
        ``y`` (T, B, H) float32, ``h`` (B, H) float32 (the state after each
        sequence's last valid step), ``cache`` (None unless ``training``).

%(notes_forward)s
    """
    return cast(ForwardResult, _forward(
        "rnn", {"nonlinearity": check_nonlinearity(nonlinearity)}, x, W_ih, W_hh, b_ih, b_hh,
        h0, None, None, lengths, reverse, training, layer_norm, layer_norm_eps))


@_doc
def rnn_backward(cache: Any, dy: Any = None, dh: Any = None
                 ) -> Gradients | LayerNormGradients:
    """Backpropagate through :func:`rnn_forward` (BPTT).

    Parameters
    ----------
%(cache_dy)s
    dh : array (B, H), optional
        Gradient with respect to the final hidden state ``h`` (zeros if None).

    Returns
    -------
    Gradients
        ``dx (T, B, I), dh0 (B, H), dW_ih (H, I), dW_hh (H, H), db_ih, db_hh (H,)``,
        all float32; the bias gradients are None when the forward pass had no biases.
        A :class:`LayerNormGradients` (the same plus ``dlayer_norm``) when the
        forward pass had ``layer_norm``.

%(notes_backward)s
    """
    return cast(Gradients | LayerNormGradients, _backward("rnn", cache, dy, (dh,)))


@_doc
def gru_forward(x: Any, W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None,
                h0: Any = None, *, linear_before_reset: bool = True, lengths: Any = None,
                reverse: bool = False, training: bool = False, layer_norm: Any = None,
                layer_norm_eps: float = 1e-5) -> ForwardResult:
    """Run a GRU over a sequence (gates r, z, n in PyTorch's order).

    ``r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})``;
    ``linear_before_reset=True`` (PyTorch, cuDNN, Keras ``reset_after=True``):
    ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``; ``False`` (Cho et al. 2014,
    ONNX's default): ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``;
    ``h' = (1-z)*n + z*h``.

    Parameters
    ----------
    x : array (T, B, I)
        Time-major inputs.  Real floats, converted to float32.
    W_ih : array (3*H, I)
        Rows in the gate order r, z, n.
    W_hh : array (3*H, H)
    b_ih, b_hh : array (3*H,), optional
        Both or neither.
    h0 : array (B, H), optional
        Initial hidden state, zeros if None.
    linear_before_reset : bool
        Which GRU form (above).
%(sequence_options)s
%(layer_norm)s

    Returns
    -------
    ForwardResult
        ``y`` (T, B, H) float32, ``h`` (B, H) float32 (the state after each
        sequence's last valid step), ``cache`` (None unless ``training``).

%(notes_forward)s
    """
    options = {"linear_before_reset": check_bool("linear_before_reset", linear_before_reset)}
    return cast(ForwardResult, _forward("gru", options, x, W_ih, W_hh, b_ih, b_hh, h0, None,
                                        None, lengths, reverse, training, layer_norm,
                                        layer_norm_eps))


@_doc
def gru_backward(cache: Any, dy: Any = None, dh: Any = None
                 ) -> Gradients | LayerNormGradients:
    """Backpropagate through :func:`gru_forward` (BPTT), either GRU form.

    Parameters
    ----------
%(cache_dy)s
    dh : array (B, H), optional
        Gradient with respect to the final hidden state ``h`` (zeros if None).

    Returns
    -------
    Gradients
        ``dx (T, B, I), dh0 (B, H), dW_ih (3*H, I), dW_hh (3*H, H), db_ih, db_hh
        (3*H,)``, all float32; the bias gradients are None when the forward pass
        had no biases.  A :class:`LayerNormGradients` (the same plus
        ``dlayer_norm``) when the forward pass had ``layer_norm``.

%(notes_backward)s
    """
    return cast(Gradients | LayerNormGradients, _backward("gru", cache, dy, (dh,)))


@_doc
def lstm_forward(x: Any, W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None,
                 h0: Any = None, c0: Any = None, *, peephole: Any = None, lengths: Any = None,
                 reverse: bool = False, training: bool = False, layer_norm: Any = None,
                 layer_norm_eps: float = 1e-5, W_hr: Any = None) -> LSTMForwardResult:
    """Run an LSTM over a sequence (gates i, f, g, o in PyTorch's order).

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` of ``W_ih x + b_ih + W_hh h + b_hh``;
    ``c' = f*c + i*g``; ``h' = o*tanh(c')``.  With ``peephole = (p_i, p_f, p_o)``
    (ONNX, oneDNN) the pre-activations of i and f also get ``p_i*c``, ``p_f*c``
    and that of o gets ``p_o*c'``.  With a projection ``W_hr`` (P, H) (Sak et al.
    2014, PyTorch's ``proj_size``): ``h' = W_hr (o*tanh(c'))``, so ``h``, ``y`` and
    the columns of ``W_hh`` have ``P < H`` values while ``c`` keeps H.

    Parameters
    ----------
    x : array (T, B, I)
        Time-major inputs.  Real floats, converted to float32.
    W_ih : array (4*H, I)
        Rows in the gate order i, f, g, o.
    W_hh : array (4*H, H), or (4*H, P) with ``W_hr``
    b_ih, b_hh : array (4*H,), optional
        Both or neither.
    h0, c0 : array (B, H), optional
        Initial hidden and cell state, zeros if None (``h0`` (B, P) with ``W_hr``).
    peephole : array (3*H,), optional
        Peephole weights in the order i, f, o.
%(sequence_options)s
%(layer_norm)s
    W_hr : array (P, H), optional
        Keyword-only: the projection, ``1 <= P < H``; real floats converted to
        float32.  Combines with every other option (with ``layer_norm``,
        ``h' = W_hr (o * tanh(LN(c')))``).  The backward pass then returns a
        :class:`ProjLSTMGradients`, whatever the other options.  Its loop
        splits by batch rows only, never by hidden units.

    Returns
    -------
    LSTMForwardResult
        ``y`` (T, B, H), ``h`` (B, H), ``c`` (B, H), all float32 (the states
        after each sequence's last valid step; ``y`` (T, B, P) and ``h`` (B, P)
        with ``W_hr``), ``cache`` (None unless ``training``).

%(notes_forward)s
    """
    return cast(LSTMForwardResult, _forward("lstm", {}, x, W_ih, W_hh, b_ih, b_hh, h0, c0,
                                            peephole, lengths, reverse, training, layer_norm,
                                            layer_norm_eps, W_hr))


@_doc
def lstm_backward(cache: Any, dy: Any = None, dh: Any = None, dc: Any = None
                  ) -> (LSTMGradients | PeepholeLSTMGradients | LayerNormLSTMGradients
                        | ProjLSTMGradients):
    """Backpropagate through :func:`lstm_forward` (BPTT).

    Parameters
    ----------
%(cache_dy)s
    dh, dc : array (B, H), optional
        Gradients with respect to the final hidden and cell states (zeros if None);
        with a projection ``dy`` is (T, B, P) and ``dh`` (B, P).

    Returns
    -------
    LSTMGradients
        ``dx (T, B, I), dh0 (B, H), dc0 (B, H), dW_ih (4*H, I), dW_hh (4*H, H),
        db_ih, db_hh (4*H,)``, all float32; the bias gradients are None when the
        forward pass had no biases.  A :class:`PeepholeLSTMGradients` (the same
        plus ``dpeephole (3*H,)``) when the forward pass had peepholes.  A
        :class:`LayerNormLSTMGradients` (``dpeephole`` None without peepholes, and
        ``dlayer_norm``) when the forward pass had ``layer_norm``.  A
        :class:`ProjLSTMGradients` whenever it had ``W_hr``: ``dh0 (B, P)``,
        ``dW_hh (4*H, P)``, ``dpeephole`` and ``dlayer_norm`` (None when absent)
        and ``dW_hr (P, H)``.

%(notes_backward)s
    """
    return cast(LSTMGradients | PeepholeLSTMGradients | LayerNormLSTMGradients
                | ProjLSTMGradients, _backward("lstm", cache, dy, (dh, dc)))


# ----------------------------------------------------------------------------
# prepared weights: streaming and serving


class Stepper:
    """Advance a cell one time step at a time, for streaming inference.

    The weights are checked, packed and their biases folded once, here; each
    call then runs the input projection, the recurrent product and the gate
    pass of one step in one compiled call with the GIL released.
    :meth:`forward` runs whole sequences with the same prepared weights
    (serving).  The Stepper keeps float32 copies of the weights as they were
    when it was built: build a new one after changing them.

    Threads: one Stepper may be called from several threads at once, with the
    GIL released; a step runs on its calling thread, and :meth:`forward` splits
    large batches over threads as the functional calls do.

    Pickling (and ``copy``) keeps the weights and options, not the packs: the
    pickle holds ``W_ih`` and ``W_hh`` unpacked from the panels (float16 arrays
    for ``weight_dtype="float16"``, whose values they are), the folded bias
    ``b_ih + b_hh`` (a GRU with ``linear_before_reset`` keeps ``b_hn`` apart),
    the peepholes, ``W_hr``, the options, and a format header; unpickling builds the
    Stepper again from them, packs included, and steps with the same bits.
    A pickle of a newer format than this fastcells reads raises ``ValueError``
    naming both versions.

    Parameters
    ----------
    cell : {"rnn", "gru", "lstm"}
    W_ih : array (G*H, I)
        Input weights, ``G`` the cell's gate count (RNN 1, GRU 3, LSTM 4), rows in
        PyTorch's gate order.  Real floats, converted to float32.
    W_hh : array (G*H, H)
        Recurrent weights.
    b_ih, b_hh : array (G*H,), optional
        Both or neither.
    peephole : array (3*H,), optional
        LSTM only: peephole weights in the order i, f, o.
    nonlinearity : {"tanh", "relu"}
        RNN only.
    linear_before_reset : bool
        GRU only: which GRU form (see :func:`gru_forward`).
    weight_dtype : {"float32", "float16"}
        ``"float16"``: ``W_ih`` and ``W_hh`` are rounded to float16 (to nearest)
        once, here, and every product uses the rounded values; the arithmetic
        stays float32, and biases and peepholes are not rounded.  The results
        are the bits of a float32 Stepper built from ``W.astype(np.float16)``.
        Products of one or two rows (steps at batch 1 or 2) then read the
        weights as float16, half the bytes, on the AVX2 and AVX-512 paths
        (:func:`fastcells.show_config`): those products stream ``W_hh`` from
        cache at every step, so fewer bytes make them faster.  The cost: each
        weight's rounding error (relative 2**-11; magnitudes under 6.1e-5 lose
        bits, under 3e-8 become zero), and memory for both packs.  ValueError
        if a finite weight's magnitude exceeds float16's largest value, 65504.
        The layer norm's gains and biases are not rounded either.
    layer_norm : LayerNormWeights, optional
        A layer-normalized cell's gains and biases, as the functional calls take
        them (see :func:`lstm_forward`); RNN, GRU (``linear_before_reset=True``
        only) and LSTM.
    layer_norm_eps : float
        The ``eps`` of every normalization, finite and > 0.
    W_hr : array (P, H), optional
        LSTM only: the projection (PyTorch's ``proj_size``, see
        :func:`lstm_forward`), ``1 <= P < H``; ``W_hh`` is then (4*H, P) and the
        hidden state ``h`` (B, P), ``c`` (B, H).  With ``weight_dtype="float16"``
        it is rounded and read as ``W_hh`` is.  A pickle of such a Stepper has
        pickle format 2 (a fastcells that reads only format 1 refuses it, naming
        both versions).

    Attributes
    ----------
    proj_size : int
        ``W_hr``'s rows P, 0 without a projection.

    Examples
    --------
    >>> step = Stepper("gru", W_ih, W_hh, b_ih, b_hh)          # doctest: +SKIP
    >>> h = None
    >>> for x_t in stream:                                     # x_t (B, I)
    ...     h = step(x_t, h)                                   # h (B, H)
    """

    def __init__(self, cell: str, W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None,
                 *, peephole: Any = None, nonlinearity: str = "tanh",
                 linear_before_reset: bool = True, weight_dtype: str = "float32",
                 layer_norm: Any = None, layer_norm_eps: float = 1e-5,
                 W_hr: Any = None) -> None:
        spec = cell_spec(cell)
        # every cell's options: each adapter reads its own
        options: Options = {
            "linear_before_reset": check_bool("linear_before_reset", linear_before_reset),
            "nonlinearity": check_nonlinearity(nonlinearity)}
        half = check_weight_dtype(weight_dtype)
        I = np.shape(W_ih)[1] if np.ndim(W_ih) == 2 else 0
        # validate the weights with the one set of checks, on an empty sequence
        a = check_forward(cell, np.zeros((0, 1, I), F32), W_ih, W_hh, b_ih, b_hh,
                          dtype=F32, peephole=peephole, W_hr=W_hr)
        ln, eps = check_layer_norm(cell, layer_norm, layer_norm_eps, a.H, F32,
                                   linear_before_reset=options["linear_before_reset"])
        if ln is not None:      # float32 copies, as the weights' packs are
            ln = LayerNormWeights._make(None if v is None else v.copy() for v in ln)
        options.update(layer_norm=ln, layer_norm_eps=eps)
        W_hr = a.W_hr
        if half:
            W_ih, W_hh = float16_values("W_ih", a.W_ih), float16_values("W_hh", a.W_hh)
            if W_hr is not None:
                W_hr = float16_values("W_hr", W_hr)
        else:
            W_ih, W_hh = a.W_ih, a.W_hh
        w, P_ih = prepared_weights(a, _ADAPTERS[cell].layout(options), W_ih, W_hh, half)
        # the projection: W_hr packed as W_hh is (its float16 panels too), and a float32
        # copy of its (rounded) values, which forward's checks and a pickle read
        self._W_hr = None if W_hr is None else W_hr.copy()
        self._wr = None if W_hr is None else (
            _kernels.pack_half(W_hr) if half else _kernels.pack(W_hr, True))
        self.cell, self.input_size, self.hidden_size = cell, a.I, a.H
        #: the size of h: ``W_hr``'s rows, 0 without a projection (PyTorch's ``proj_size``)
        self.proj_size = 0 if W_hr is None else a.P
        self._P = a.P
        self.weight_dtype = "float16" if half else "float32"
        self._spec, self._options, self._weights = spec, options, w
        self._P_ih = P_ih           # W_ih's pack: a pickle unpacks it (__getstate__)
        step_ln = None if ln is None else (
            ln.ih_weight, ln.ih_bias if w.bias is None else ln.ih_bias + w.bias, ln.hh_weight,
            ln.hh_bias, ln.c_weight, ln.c_bias, eps)
        self._kernel = _kernels.StepKernel(
            cell, P_ih, w.wp, w.wp_n,
            np.zeros(a.G * a.H, F32) if w.bias is None else w.bias,
            np.zeros(a.H, F32) if w.bhn is None else w.bhn, w.peephole, a.I, a.H,
            options["nonlinearity"] == "relu", options["linear_before_reset"], w.packing,
            step_ln, self._wr, a.P)

    #: the entries of a pickled Stepper (besides the header)
    _STEPPER_STATE = ("cell", "W_ih", "W_hh", "bias", "b_hn", "peephole", "weight_dtype",
                      "options")
    #: ... and the projection's, in the pickle format that holds one
    _PROJ_STATE = "W_hr"

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state: the weights unpacked, the folded biases and the options."""
        w, G, H = self._weights, self._spec.G, self.hidden_size
        layout = _ADAPTERS[self.cell].layout(self._options)
        # W_hh's pack, or with split_n its first rows' and W_hn's
        parts = [unpacked(w.wp, (G - 1 if layout.split_n else G) * H, self._P)]
        if w.wp_n is not None:
            parts.append(unpacked(w.wp_n, H, H))
        W_hh = np.concatenate(parts)
        W_ih = unpacked(self._P_ih, G * H, self.input_size)
        W_hr = self._W_hr
        if self.weight_dtype == "float16":      # float16 values: exact in half the bytes
            W_ih, W_hh = W_ih.astype(np.float16), W_hh.astype(np.float16)
            W_hr = None if W_hr is None else W_hr.astype(np.float16)
        b_hn = w.bhn if layout.bhn_apart and w.bias is not None else None
        state = {
            "cell": self.cell, "W_ih": W_ih, "W_hh": W_hh, "bias": w.bias, "b_hn": b_hn,
            "peephole": w.peephole, "weight_dtype": self.weight_dtype,
            "options": dict(self._options)}
        if W_hr is None:
            return with_header(state)
        # a format an older fastcells refuses by name, rather than dropping W_hr
        return with_header({**state, self._PROJ_STATE: W_hr}, PROJ_PICKLE_FORMAT)

    def __setstate__(self, state: Any) -> None:
        """Build the Stepper again from a pickled state (its weights packed anew)."""
        s = without_header("Stepper", state, self._STEPPER_STATE, header_required=True)
        bias, b_hh = s["bias"], None
        if bias is not None:
            # b_ih + b_hh is the pickled bias bit for bit: -0.0 adds nothing to any float
            b_hh = np.full_like(bias, -0.0)
            if s["b_hn"] is not None:
                b_hh[len(bias) - len(s["b_hn"]):] = s["b_hn"]
        Stepper.__init__(self, s["cell"], s["W_ih"], s["W_hh"], bias, b_hh,
                         peephole=s["peephole"], weight_dtype=s["weight_dtype"],
                         W_hr=s.get(self._PROJ_STATE), **s["options"])

    def forward(self, x: Any, h0: Any = None, c0: Any = None, *, lengths: Any = None,
                reverse: bool = False) -> AnyForwardResult:
        """Run a whole sequence with the prepared weights (inference: serving).

        The same as ``<cell>_forward(x, <the weights>, h0, c0, lengths=lengths,
        reverse=reverse)`` without a cache, less the per-call work on the
        weights: no checks, no bias folding and no packing.  The products are
        always the packed ones; the functional call multiplies a few rows
        unpacked (``T*B < 32``, or batch 1 and ``T <= 16``), where its results
        then differ from these by float32 rounding; elsewhere they are the same
        bits.  Safe to call from several threads at once (the GIL released; a
        large call splits its batch rows over threads, the same bits for any
        thread count).

        Parameters
        ----------
        x : array (T, B, I)
            Time-major inputs.  Real floats, converted to float32.
        h0, c0 : array (B, H), optional
            Initial states, zeros if None (``c0``: LSTM only; ``h0`` (B, P) with a
            projection, as ``y`` (T, B, P) and ``h``).
        lengths : int array (B,), optional
            Valid steps per sequence, ``0 <= lengths[b] <= T``; outputs past a
            sequence's end are zeros and its state stops there.
        reverse : bool
            Run from each sequence's last valid step to the first.

        Returns
        -------
        ForwardResult or LSTMForwardResult
            ``y`` (T, B, H), ``h`` (B, H) (LSTM also ``c``), float32; ``cache`` None.
        """
        reverse = check_bool("reverse", reverse)
        I, H = self.input_size, self.hidden_size
        x = check_sequence("x", x, I, F32)
        T, B = x.shape[:2]
        h0, c0, lengths = check_states(self.cell, h0, c0, lengths, T, B, H, F32, self._P)
        # no weights: they are prepared (the ForwardArgs fields they fill are unused)
        a = ForwardArgs._make((x, None, None, None, None, h0, c0, lengths,
                               self._weights.peephole, T, B, I, H, self._spec.G, self._W_hr,
                               self._P))
        y, states, _ = _run(self.cell, a, self._options, reverse, False, self._weights,
                            self._wr)
        return _ADAPTERS[self.cell].forward_result(y, *states, None)

    def _state(self, name: str, s: Any, B: int) -> np.ndarray:
        # h has P values with a projection, c (and h without one) H
        width, symbol = (self._P, "P") if name == "h" and self.proj_size else (
            self.hidden_size, "H")
        if s is None:
            return np.zeros((B, width), F32)
        if not is_f32c(s):
            s = as_float(name, s, F32)
        if s.shape != (B, width):
            check_shape(name, s, ("B", symbol), (B, width))
        state: np.ndarray = s.copy()   # the kernel updates it in place: never the caller's
        return state

    def __call__(self, x_t: Any, h: Any = None, c: Any = None, *,
                 out: Any = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Advance the state by one time step.

        Parameters
        ----------
        x_t : array (B, I)
            The inputs of this step.  Real floats, converted to float32.
        h : array (B, H), optional
            The hidden state before the step; zeros if None.  Real floats,
            converted to float32.  Not written (unless it is ``out``).  (B, P)
            with a projection (``W_hr``), as are ``out``'s ``h_out`` and the
            returned ``h``.
        c : array (B, H), optional
            LSTM only: the cell state before the step; zeros if None.
        out : array (B, H), or for an LSTM a pair ``(h_out, c_out)``, optional
            Keyword-only: where to write the new state, instead of into new
            arrays.  Each a writable, C-contiguous float32 ndarray (not a
            subclass) of shape (B, H); a row ``s[k]`` of a larger (L, B, H)
            array ``s`` is one.  The state may be updated in place:
            ``step(x_t, h, out=h)``, or ``step(x_t, h, c, out=(h, c))`` for an
            LSTM.  Otherwise the old state is first copied into ``out`` (which
            may share memory with it), so an array of ``out`` that is not its
            own old state must not share memory with ``x_t``, nor ``h_out``
            with ``c``: the copy would change an input before it is read.
            ``h_out`` and ``c_out`` must not share memory.  ValueError else.

        Returns
        -------
        h : float32 array (B, H)
            RNN and GRU: the new hidden state; ``out`` itself if given, else a
            new array.
        (h, c) : pair of float32 arrays (B, H)
            LSTM: the new hidden and cell states; the arrays of ``out`` if
            given, else new arrays.

        Raises
        ------
        TypeError
            ``x_t`` or a state not real floats; an array of ``out`` not a
            float32 ndarray, or for an LSTM ``out`` not a pair.
        ValueError
            A shape that does not fit; ``c`` given to an RNN or GRU; an array
            of ``out`` read-only, not C-contiguous or sharing memory it must
            not.  The inputs are not written then; ``out`` may hold a copy of
            the old state.
        """
        if not is_f32c(x_t):
            x_t = as_float("x_t", x_t, F32)
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t: expected shape (B, I) = (B, {self.input_size}), got "
                             f"{x_t.shape}")
        B = x_t.shape[0]
        lstm = self._spec.has_cell_state
        if c is not None and not lstm:
            raise ValueError(f"c: only LSTM has a cell state, got c for {self.cell}")
        if out is None:
            h_new = self._state("h", h, B)
            if not lstm:
                self._kernel.step(x_t, h_new, None)
                return h_new
            c_new = self._state("c", c, B)
            self._kernel.step(x_t, h_new, c_new)
            return h_new, c_new
        # The kernel updates a state in place: the old state is copied into out
        # (unless it is out), then updated there.  The kernel's arguments check
        # out's dtype, layout, writability and shape; a failure is named below.
        h_out: Any
        c_out: Any
        if not lstm:
            h_out, c_out = out, None
        elif type(out) is tuple and len(out) == 2:
            h_out, c_out = out
        else:
            raise TypeError(f"out: expected a pair (h_out, c_out) of float32 arrays (B, H) for "
                            f"lstm, got {type(out).__name__}")
        shape = (B, self.hidden_size)
        hshape = (B, self._P)           # P values with a projection
        if h is not None and h is not h_out and not (is_f32c(h) and h.shape == hshape):
            h = self._state("h", h, B)          # converted and checked: a copy
        if c is not None and c is not c_out and not (is_f32c(c) and c.shape == shape):
            c = self._state("c", c, B)
        share = np.may_share_memory
        try:
            if type(h_out) is not np.ndarray or lstm and type(c_out) is not np.ndarray:
                raise TypeError("out")          # named below
            # Writing an old state (or zeros) into out must not change an input still
            # to be read: x_t, or c when h goes first (c_out may share h's memory).
            # In place, nothing is written before the kernel, which reads x_t whole
            # (the input projection) before it writes a state.
            if h is not h_out and (share(h_out, x_t) or lstm and c is not None and share(
                    h_out, c)) or lstm and (share(h_out, c_out) or c is not c_out and share(
                    c_out, x_t)):
                raise ValueError("out: expected arrays that share no memory with each other, "
                                 "nor with x_t or (h_out) c unless updated in place, got "
                                 "overlapping ones")
            if h is None:
                h_out.fill(0)
            elif h is not h_out:
                h_out[...] = h
            if c is None:
                if lstm:
                    c_out.fill(0)
            elif c is not c_out:
                c_out[...] = c
            self._kernel.step(x_t, h_out, c_out)
        except (TypeError, ValueError):
            hsym = "(B, P)" if self.proj_size else "(B, H)"
            for name, o, want, sym in zip(("out[0]", "out[1]") if lstm else ("out",),
                                          (h_out, c_out), (hshape, shape), (hsym, "(B, H)")):
                if type(o) is not np.ndarray or o.dtype != F32 or not o.dtype.isnative:
                    got = f"dtype {o.dtype}" if type(o) is np.ndarray else type(o).__name__
                    raise TypeError(f"{name}: expected a float32 ndarray {sym} = {want}, "
                                    f"got {got}") from None
                if o.shape != want:
                    raise ValueError(f"{name}: expected shape {sym} = {want}, got "
                                     f"{o.shape}") from None
                if not o.flags.c_contiguous:
                    raise ValueError(f"{name}: expected a C-contiguous array, got strides "
                                     f"{o.strides}") from None
                if not o.flags.writeable:
                    raise ValueError(f"{name}: expected a writable array, got a read-only "
                                     f"one") from None
            raise
        return (h_out, c_out) if lstm else h_out
