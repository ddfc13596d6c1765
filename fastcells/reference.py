"""The pure-NumPy reference of the recurrent cells: the oracle the kernels are tested against.

How it is built, and why:
- It computes in the input's dtype (the common float type of the arguments),
  so that float64 inputs give float64 results precise enough for finite
  differences and for judging the float32 kernels.
- It imports nothing of fastcells but ``_checks`` (argument validation),
  ``_results`` (result types, the cache) and ``_cells`` (the cell table, data
  only): an oracle must not share code with what it checks.
- One time-loop skeleton (``_forward`` / ``_backward``) serves the three cells.
  It handles what they have in common: the input projection of all steps at
  once, the direction, variable lengths and the weight gradients of the input
  side.  Each cell gives one step forward and its exact derivative
  (``_<cell>_step`` / ``_<cell>_step_backward``), written out gate by gate.
- Variable lengths are a mask: every row computes every step, and rows whose
  step ``t >= lengths[b]`` keep their state and output zeros.  Running the
  reverse direction from ``T - 1`` with that mask starts each sequence at its
  own last valid step.  In backward, the masked rows get a zero upstream
  gradient (the step's derivative is linear in it, so they add nothing to the
  weights) and pass their state gradient through unchanged.
- Clarity over speed: the loop over time is Python, everything in a step is
  vectorized over the batch.

Layer normalization (``layer_norm``, Ba, Kiros and Hinton 2016) normalizes the
input projection of all steps at once before the loop, and the recurrent
projection (and the LSTM's new cell state inside its output) in each step:
``_layer_norm`` / ``_layer_norm_backward``.  The backward pass recomputes the
normalized rows from the cached states rather than caching their statistics.

The cache (``training=True``) holds copies of ``x``, ``W_ih``, ``W_hh``, the
``lengths`` (None or int64 (B,)), the ``peephole``, the gains and biases of
layer normalization ``ln_<field>`` (None without it) and, indexed by the
original time t:
``h_prev`` (T, B, H) the state entering step t (LSTM also ``c_prev``); RNN
``h_new`` (T, B, H); GRU ``gates`` (T, B, 3H) = r, z, n and ``hn`` (T, B, H)
the hidden side of n (W_hn h + b_hn, or W_hn (r h) + b_hn; normalized: the n
part of LN(W_hh h) + b_hh); LSTM ``gates`` (T, B, 4H) = i, f, g, o.  Its options:
``reverse``, ``bias``, ``layer_norm_eps`` (None without layer normalization) and
the cell's own.

An LSTM with projection (``W_hr`` (P, H), Sak et al. 2014, PyTorch's
``proj_size``) outputs ``h' = W_hr m`` with ``m = o * tanh(c')``: ``h`` (and so
``y``, ``h_prev``, ``W_hh``'s columns) has P values, ``c`` keeps H.  The cache
then also holds a copy of ``W_hr`` (None without); backward recomputes ``m``
from the cached gates and cell states.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
import numpy.typing as npt

from . import _checks
from ._cells import CELLS, STATES, fill_doc
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

__all__ = [
    "rnn_forward", "rnn_backward",
    "gru_forward", "gru_backward",
    "lstm_forward", "lstm_backward",
    "LayerNormWeights", "LayerNormGradients", "LayerNormLSTMGradients", "ProjLSTMGradients",
]

_BACKEND = "reference"
#: an array of the compute dtype (the common float type of the arguments)
Array = npt.NDArray[np.floating[Any]]
#: the recurrent state of a cell, in the order of ``_cells.STATES`` (h, or h and c)
State = tuple[Array, ...]
#: the LSTM's gate count (i, f, g, o) and how many of its gates have a peephole (i, f, o)
_LSTM_GATES = CELLS["lstm"].G
_PEEPHOLES = 3


def _sigmoid(a: Array) -> Array:
    # 1 / (1 + exp(-a)) without overflow for large negative a
    out: Array = np.exp(-np.logaddexp(0, -a))
    return out


def _time_order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(lengths: npt.NDArray[np.int64] | None, T: int, B: int) -> npt.NDArray[np.bool_]:
    """(T, B, 1) bool: does step t of row b count (t < lengths[b])."""
    if lengths is None:
        return np.ones((T, B, 1), dtype=bool)
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def _options(cache: Cache) -> Mapping[str, Any]:
    """The forward options a cache was made with (``reverse``, ``bias``,
    ``layer_norm_eps``, the cell's own)."""
    return cache.options


# ----------------------------------------------------------------------------
# layer normalization


class _LayerNorm(NamedTuple):
    """The gains and biases of a layer-normalized cell with its epsilon."""

    weights: LayerNormWeights
    eps: float


def _layer_norm(v: Array, gain: Array, bias: Array, eps: float) -> Array:
    """``LN(v) = (v - mean(v)) / sqrt(var(v) + eps) * gain + bias`` over the last axis
    (population variance)."""
    out: Array = _normalized(v, eps)[0] * gain + bias
    return out


def _normalized(v: Array, eps: float) -> tuple[Array, Array]:
    """``(v_hat, 1 / sqrt(var(v) + eps))``, ``v_hat = (v - mean(v)) / sqrt(var(v) + eps)``
    over the last axis."""
    centered = v - v.mean(axis=-1, keepdims=True)
    inv_std: Array = 1 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    return centered * inv_std, inv_std


def _layer_norm_backward(d_out: Array, v: Array, gain: Array,
                         eps: float) -> tuple[Array, Array, Array]:
    """Derivatives of ``LN(v; gain, bias)`` given ``d_out`` wrt its result:
    ``(dv, dgain, dbias)``, the gain and bias ones summed over every row."""
    v_hat, inv_std = _normalized(v, eps)
    d_hat = d_out * gain
    dv: Array = inv_std * (d_hat - d_hat.mean(axis=-1, keepdims=True)
                           - v_hat * (d_hat * v_hat).mean(axis=-1, keepdims=True))
    rows = (d_out * v_hat).reshape(-1, v.shape[-1]), d_out.reshape(-1, v.shape[-1])
    return dv, rows[0].sum(axis=0), rows[1].sum(axis=0)


def _check_layer_norm(cell: str, layer_norm: Any, eps: Any, args: _checks.ForwardArgs,
                      linear_before_reset: bool = True) -> _LayerNorm | None:
    weights, eps = _checks.check_layer_norm(cell, layer_norm, eps, args.H, args.x.dtype,
                                            linear_before_reset=linear_before_reset)
    return None if weights is None else _LayerNorm(weights, eps)


def _cached_layer_norm(cache: Cache) -> _LayerNorm | None:
    """The layer normalization a forward pass ran with (None without)."""
    eps = _options(cache)["layer_norm_eps"]
    if eps is None:
        return None
    return _LayerNorm(LayerNormWeights._make(cache[f"ln_{field}"]
                                             for field in LayerNormWeights._fields), eps)


# ----------------------------------------------------------------------------
# the time loop shared by the three cells

#: step(gx_t, state, W_hh, b_hh) -> (new_state, saved): ``gx_t`` (B, G*H) is
#: W_ih x_t + b_ih, ``state`` the (B, H) arrays entering the step, ``saved``
#: the (B, width) arrays that the step's backward needs, by cache key.
Step = Callable[[Array, State, Array, Array | None], tuple[State, dict[str, Array]]]


def _forward(cell: str, args: _checks.ForwardArgs, step: Step, saved_widths: Mapping[str, int],
             options: Mapping[str, Any], reverse: bool, training: bool,
             ln: _LayerNorm | None = None) -> tuple[Array, State, Cache | None]:
    """Run ``step`` over time; returns (y, final state tuple, cache or None).

    ``gx_t`` is ``W_ih x_t + b_ih``, or ``LN(W_ih x_t; γ_ih, β_ih) + b_ih`` with
    ``ln`` (the step itself normalizes its recurrent side).

    The cache holds, indexed by the original time t: ``<s>_prev`` (T, B, width) the
    state entering step t for each state name s (h: P values, c: H), and every key of
    ``saved_widths`` as a (T, B, width) array.
    """
    W_ih, W_hh, b_ih, b_hh = args.W_ih, args.W_hh, args.b_ih, args.b_hh
    T, B = args.T, args.B
    # h has P values (P = H but with a projection), c has H
    widths = {"h": args.P, "c": args.H}
    # every row computes every step (a mask keeps its state): padding past a
    # sequence's length must not be inf/NaN, which would reach dW_ih (0 * inf)
    x = args.x if args.lengths is None else _checks.without_padding(args.x, args.lengths)
    dtype = x.dtype
    initial = {"h": args.h0, "c": args.c0}
    state: State = tuple(np.zeros((B, widths[s]), dtype) if (s0 := initial[s]) is None
                         else s0.copy() for s in STATES[cell])

    gx = x @ W_ih.T  # input projection of every step at once: (T, B, G*H)
    if ln is not None:
        gx = _layer_norm(gx, ln.weights.ih_weight, ln.weights.ih_bias, ln.eps)
    if b_ih is not None:
        gx += b_ih
    active = _active(args.lengths, T, B)
    y = np.zeros((T, B, args.P), dtype)
    saved = {f"{s}_prev": np.empty((T, B, widths[s]), dtype) for s in STATES[cell]}
    saved.update({key: np.empty((T, B, width), dtype) for key, width in saved_widths.items()})

    for t in _time_order(T, reverse):
        for s, value in zip(STATES[cell], state):
            saved[f"{s}_prev"][t] = value
        new_state, step_saved = step(gx[t], state, W_hh, b_hh)
        for key, value in step_saved.items():
            saved[key][t] = value
        y[t] = np.where(active[t], new_state[0], 0)
        state = tuple(np.where(active[t], new, old) for new, old in zip(new_state, state))

    cache = None
    if training:
        # copies, so that a caller who reuses x or the weights after this call
        # does not change what backward computes
        arrays: dict[str, Any] = {
            "x": x.copy() if x is args.x else x, "W_ih": W_ih.copy(), "W_hh": W_hh.copy(),
            "lengths": None if args.lengths is None else args.lengths.copy(),
            "peephole": None if args.peephole is None else args.peephole.copy(),
            "W_hr": None if args.W_hr is None else args.W_hr.copy(), **saved}
        for field in LayerNormWeights._fields:
            ln_array = None if ln is None else getattr(ln.weights, field)
            arrays[f"ln_{field}"] = None if ln_array is None else ln_array.copy()
        cache = Cache(cell, _BACKEND, {**options, "reverse": reverse, "bias": b_ih is not None,
                                       "layer_norm_eps": None if ln is None else ln.eps},
                      arrays)
    return y, state, cache


class _StepGrads(NamedTuple):
    """Derivatives of one step, given the gradients of its new state.

    dgx (B, G*H): wrt the input pre-activations W_ih x_t + b_ih.
    dgh (B, G*H): wrt the hidden pre-activations W_hh h + b_hh (their sum over
    the batch is the step's share of db_hh).
    dW_hh (G*H, H): the step's share of dW_hh.
    d_prev: tuple of (B, H), wrt the state entering the step.
    dextra: the step's share of the gradients of the cell's extra parameters, by
    cache key (``peephole``, ``ln_hh_weight``, ...; the keys the cell has).
    """

    dgx: Array
    dgh: Array
    dW_hh: Array
    d_prev: State
    dextra: Mapping[str, Array] = MappingProxyType({})


#: step_backward(cache, t, d_new) -> _StepGrads, ``d_new`` the gradients wrt
#: the state the step produced (h, or h and c).
StepBackward = Callable[[Cache, int, State], _StepGrads]


class _BackwardResult(NamedTuple):
    """What the shared backward loop returns.  ``dextra`` holds the gradient of
    each extra parameter of the forward pass, by cache key: ``peephole`` and the
    ``ln_<field>`` of layer normalization, those that were not None."""

    dx: Array
    d_initial: State
    dW_ih: Array
    dW_hh: Array
    db_ih: Array | None
    db_hh: Array | None
    dextra: dict[str, Array]


def _backward(cell: str, cache: Any, step_backward: StepBackward, dy: Any,
              d_final: Mapping[str, Any]) -> _BackwardResult:
    """Back-propagate through time.

    ``d_final`` maps each state name to the gradient wrt the final state (or None).
    """
    cache = _checks.check_cache(cache, cell, _BACKEND)
    x, W_ih, W_hh = cache["x"], cache["W_ih"], cache["W_hh"]
    T, B, I = x.shape
    GH = W_hh.shape[0]
    dtype = x.dtype
    # each state's width and its symbol: h has P values with a projection
    widths = {s: cache[f"{s}_prev"].shape[2] for s in STATES[cell]}
    symbols = {s: "P" if s == "h" and cache["W_hr"] is not None else "H"
               for s in STATES[cell]}
    dy = _checks.check_grad("dy", dy, ("T", "B", symbols["h"]), (T, B, widths["h"]), dtype)
    d_state = []
    for s in STATES[cell]:
        g = _checks.check_grad(f"d{s}", d_final[s], ("B", symbols[s]), (B, widths[s]), dtype)
        d_state.append(np.zeros((B, widths[s]), dtype) if g is None else g.copy())

    active = _active(cache["lengths"], T, B)
    dgx = np.zeros((T, B, GH), dtype)
    dW_hh = np.zeros_like(W_hh)
    db_hh: Array | None = np.zeros(GH, dtype)
    dextra = {key: np.zeros_like(cache[key]) for key in _EXTRAS if cache[key] is not None}
    for t in reversed(_time_order(T, _options(cache)["reverse"])):
        d_new = list(d_state)
        if dy is not None:
            d_new[0] = d_new[0] + dy[t]
        # masked rows: the step did not count, so it gets no gradient (and
        # adds nothing to the weights); their state gradient passes through
        step = step_backward(cache, t, tuple(np.where(active[t], g, 0) for g in d_new))
        # where() rather than trusting the zero upstream gradient: 0 * NaN is NaN
        # when a finished sequence's state is not finite
        dgx[t] = np.where(active[t], step.dgx, 0)
        dW_hh += step.dW_hh
        db_hh += step.dgh.sum(axis=0)
        for key, value in step.dextra.items():
            dextra[key] += value
        d_state = [np.where(active[t], g_prev, g) for g_prev, g in zip(step.d_prev, d_state)]

    db_ih = dgx.sum(axis=(0, 1)) if _options(cache)["bias"] else None
    ln = _cached_layer_norm(cache)
    if ln is not None:     # back through LN(W_ih x): dgx becomes the gradient wrt W_ih x
        dgx, dextra["ln_ih_weight"], dextra["ln_ih_bias"] = _layer_norm_backward(
            dgx, x @ W_ih.T, ln.weights.ih_weight, ln.eps)
    dx = dgx @ W_ih
    dW_ih = dgx.reshape(T * B, GH).T @ x.reshape(T * B, I)
    if db_ih is None:
        db_hh = None
    return _BackwardResult(dx, tuple(d_state), dW_ih, dW_hh, db_ih, db_hh, dextra)


#: the cache keys of the parameters whose gradients the step backward functions add up
_EXTRAS = ("peephole", "W_hr", *(f"ln_{field}" for field in LayerNormWeights._fields))


def _hidden_projection(h: Array, W_hh: Array, b_hh: Array | None,
                       ln: _LayerNorm | None = None) -> Array:
    """``W_hh h + b_hh``, or ``LN(W_hh h; γ_hh, β_hh) + b_hh`` with ``ln``."""
    gh: Array = h @ W_hh.T
    if ln is not None:
        gh = _layer_norm(gh, ln.weights.hh_weight, ln.weights.hh_bias, ln.eps)
    if b_hh is not None:
        gh += b_hh
    return gh


def _hidden_backward(cache: Cache, t: int, dgh: Array) -> tuple[Array, Array, dict[str, Array]]:
    """Back through :func:`_hidden_projection` at step t, given ``dgh`` wrt its result:
    ``(dW_hh, dh, dextra)``, the step's share of dW_hh, the gradient wrt the state h
    entering the step, and the gradients of LN's gain and bias (by cache key)."""
    h, W_hh = cache["h_prev"][t], cache["W_hh"]
    ln = _cached_layer_norm(cache)
    dextra = {}
    if ln is not None:
        dgh, dextra["ln_hh_weight"], dextra["ln_hh_bias"] = _layer_norm_backward(
            dgh, h @ W_hh.T, ln.weights.hh_weight, ln.eps)
    return dgh.T @ h, dgh @ W_hh, dextra


# ----------------------------------------------------------------------------
# the docstring sections every cell shares: written once here, filled into each
# public function's docstring by @_doc, so that help() shows every page whole.
# Lines after the first carry the 4-space indentation of a docstring body.

_DOC_PARTS = {
    "oracle": """The reference computes in the input's dtype (the common float dtype of all
    array arguments: float64 inputs give float64 results, precise enough for
    finite differences) with a Python loop over time.  It is the oracle the
    compiled ``fastcells.%(cell)s_forward`` is tested against, not a fast path.""",
    "x": """x : array (T, B, I)
        Inputs, time-major.  Real floating point (bool, integer, complex and
        object arrays raise ``TypeError``).""",
    "biases": """b_ih, b_hh : array (%(G)s,) or None
        Input and recurrent biases: both or neither; None means no bias.""",
    "sequence": """lengths : int array (B,) or None
        Valid steps per sequence, ``0 <= lengths[b] <= T``; None means all T.
        Steps ``t >= lengths[b]`` leave row b's state unchanged and output zeros.
    reverse : bool
        Run from ``t = T-1`` down to 0 (each sequence from its own last valid
        step).  ``y[t]`` is always indexed by the original time t.
    training : bool
        Keep the activations that :func:`fastcells.reference.%(cell)s_backward`
        needs, in the result's ``cache``.""",
    "layer_norm": """layer_norm : LayerNormWeights or None
        ``(ih_weight, ih_bias, hh_weight, hh_bias)``: γ_ih, β_ih, γ_hh, β_hh of
        shape (%(G)s,) (a 4-tuple in this order also works; ``c_weight`` and
        ``c_bias`` must be None); None means no layer normalization.
    layer_norm_eps : float
        The ``eps`` of LN, finite and > 0.""",
    "forward_raises": """Raises
    ------
    TypeError, ValueError
        An argument of the wrong type, dtype, shape or value; the message
        names the argument, what was expected and what was received.""",
    "backward": """Back-propagation through time in the dtype the forward pass computed in;
    the oracle of ``fastcells.%(cell)s_backward``, checked by finite differences.

    Parameters
    ----------
    cache : Cache
        The ``cache`` of a ``fastcells.reference.%(cell)s_forward(..., training=True)``
        result (a cache of the compiled ``fastcells.%(cell)s_forward`` is refused).
    dy : array (T, B, H) or None
        Gradient of the loss wrt the outputs ``y``; entries at masked steps
        are ignored.  None means zeros.""",
    "h_backward": """dh : array (B, H) or None
        Gradient of the loss wrt the final hidden state ``h``.  None means zeros.

    Returns
    -------
    Gradients or LayerNormGradients
        ``dx (T, B, I)``, ``dh0 (B, H)`` (also when h0 was None),
        ``dW_ih (%(G)s, I)``, ``dW_hh (%(G)s, H)``, ``db_ih, db_hh (%(G)s,)`` (None
        when the forward pass had no biases); with ``layer_norm`` a
        ``LayerNormGradients`` whose ``dlayer_norm`` (a ``LayerNormWeights``)
        holds the gradients of the gains and biases.  New arrays of the
        compute dtype.""",
    "backward_raises": """Raises
    ------
    TypeError, ValueError
        A cache that is not from this forward pass, or an upstream gradient
        of the wrong dtype or shape, naming the argument.""",
}

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _doc(function: _Function) -> _Function:
    """Fill the ``%(name)s`` sections of a public function's docstring from
    :data:`_DOC_PARTS`."""
    return fill_doc(function, _DOC_PARTS)


# ----------------------------------------------------------------------------
# RNN


def _rnn_step(nonlinearity: str, ln: _LayerNorm | None) -> Step:
    def relu(a: Array) -> Array:
        return np.maximum(a, 0)

    act = np.tanh if nonlinearity == "tanh" else relu

    def step(gx_t: Array, state: State, W_hh: Array,
             b_hh: Array | None) -> tuple[State, dict[str, Array]]:
        (h,) = state
        h_new: Array = act(gx_t + _hidden_projection(h, W_hh, b_hh, ln))
        return (h_new,), {"h_new": h_new}

    return step


def _rnn_step_backward(cache: Cache, t: int, d_new: State) -> _StepGrads:
    (dh,) = d_new
    h_new = cache["h_new"][t]
    if _options(cache)["nonlinearity"] == "tanh":
        da = dh * (1 - h_new * h_new)
    else:
        da = dh * (h_new > 0)
    dW_hh, dh_prev, dextra = _hidden_backward(cache, t, da)
    return _StepGrads(da, da, dW_hh, (dh_prev,), dextra)


@_doc
def rnn_forward(x: npt.ArrayLike, W_ih: npt.ArrayLike, W_hh: npt.ArrayLike,
                b_ih: npt.ArrayLike | None = None, b_hh: npt.ArrayLike | None = None,
                h0: npt.ArrayLike | None = None, *, nonlinearity: str = "tanh",
                lengths: npt.ArrayLike | None = None, reverse: bool = False,
                training: bool = False, layer_norm: Sequence[npt.ArrayLike | None] | None = None,
                layer_norm_eps: float = 1e-5) -> ForwardResult:
    """Elman RNN over a sequence, in pure NumPy (the oracle of ``fastcells.rnn_forward``).

    ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with ``act`` tanh or relu.

    With ``layer_norm`` (Ba, Kiros and Hinton 2016), where
    ``LN(v; γ, β) = (v - mean(v)) / sqrt(var(v) + eps) * γ + β`` over a row
    (population variance, ``eps = layer_norm_eps``):
    ``h' = act(LN(W_ih x; γ_ih, β_ih) + LN(W_hh h; γ_hh, β_hh) + b_ih + b_hh)``
    (each LN over the H values).

    %(oracle)s

    Parameters
    ----------
    %(x)s
    W_ih : array (H, I)
        Input weights.
    W_hh : array (H, H)
        Recurrent weights.
    %(biases)s
    h0 : array (B, H) or None
        Initial hidden state; None means zeros.
    nonlinearity : {"tanh", "relu"}
        The activation ``act``.
    %(sequence)s
    %(layer_norm)s

    Returns
    -------
    ForwardResult
        ``y (T, B, H)`` the outputs (zeros at masked steps), ``h (B, H)`` the
        state after each sequence's last valid step, ``cache`` (None unless
        ``training``).  New arrays of the compute dtype; the arguments are
        never written.

    %(forward_raises)s
    """
    nonlinearity = _checks.check_nonlinearity(nonlinearity)
    reverse = _checks.check_bool("reverse", reverse)
    training = _checks.check_bool("training", training)
    args = _checks.check_forward("rnn", x, W_ih, W_hh, b_ih, b_hh, h0, lengths=lengths)
    ln = _check_layer_norm("rnn", layer_norm, layer_norm_eps, args)
    y, (h,), cache = _forward("rnn", args, _rnn_step(nonlinearity, ln), {"h_new": args.H},
                              {"nonlinearity": nonlinearity}, reverse, training, ln)
    return ForwardResult(y, h, cache)


@_doc
def rnn_backward(cache: Cache, dy: npt.ArrayLike | None = None,
                 dh: npt.ArrayLike | None = None) -> Gradients | LayerNormGradients:
    """Gradients of a :func:`fastcells.reference.rnn_forward` pass, in pure NumPy.

    %(backward)s
    %(h_backward)s

    %(backward_raises)s
    """
    return _h_backward("rnn", cache, _rnn_step_backward, dy, dh)


def _h_backward(cell: str, cache: Cache, step_backward: StepBackward, dy: Any,
                dh: Any) -> Gradients | LayerNormGradients:
    """``<cell>_backward`` of a cell whose only state is h (RNN, GRU)."""
    g = _backward(cell, cache, step_backward, dy, {"h": dh})
    if _options(cache)["layer_norm_eps"] is not None:
        return LayerNormGradients(g.dx, g.d_initial[0], g.dW_ih, g.dW_hh, g.db_ih, g.db_hh,
                                  _layer_norm_gradients(g.dextra))
    return Gradients(g.dx, g.d_initial[0], g.dW_ih, g.dW_hh, g.db_ih, g.db_hh)


# ----------------------------------------------------------------------------
# GRU (gates r, z, n)


def _gru_step(linear_before_reset: bool, ln: _LayerNorm | None) -> Step:
    def step(gx_t: Array, state: State, W_hh: Array,
             b_hh: Array | None) -> tuple[State, dict[str, Array]]:
        (h,) = state
        H = h.shape[1]
        gx_r, gx_z, gx_n = gx_t[:, :H], gx_t[:, H:2 * H], gx_t[:, 2 * H:]
        if linear_before_reset:
            # all three blocks of W_hh h + b_hh (of LN(W_hh h) + b_hh: LN over the 3*H)
            gh = _hidden_projection(h, W_hh, b_hh, ln)
        else:
            gh = _hidden_projection(h, W_hh[:2 * H], None if b_hh is None else b_hh[:2 * H])
        r = _sigmoid(gx_r + gh[:, :H])
        z = _sigmoid(gx_z + gh[:, H:2 * H])
        if linear_before_reset:
            hn = gh[:, 2 * H:]    # W_hn h + b_hn
            n = np.tanh(gx_n + r * hn)
        else:
            b_hn = None if b_hh is None else b_hh[2 * H:]
            hn = _hidden_projection(r * h, W_hh[2 * H:], b_hn)  # W_hn (r h) + b_hn
            n = np.tanh(gx_n + hn)
        h_new = (1 - z) * n + z * h
        return (h_new,), {"gates": np.concatenate([r, z, n], axis=1), "hn": hn}

    return step


def _gru_step_backward(cache: Cache, t: int, d_new: State) -> _StepGrads:
    (dh,) = d_new
    h = cache["h_prev"][t]
    H = h.shape[1]
    gates, hn, W_hh = cache["gates"][t], cache["hn"][t], cache["W_hh"]
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    W_hrz, W_hn = W_hh[:2 * H], W_hh[2 * H:]

    dn = dh * (1 - z)
    dz = dh * (h - n)
    dh_prev = dh * z
    dan = dn * (1 - n * n)          # wrt the argument of tanh
    daz = dz * z * (1 - z)
    dextra: dict[str, Array] = {}
    if _options(cache)["linear_before_reset"]:
        dhn = dan * r                # wrt W_hn h + b_hn
        dar = dan * hn * r * (1 - r)
        dgh = np.concatenate([dar, daz, dhn], axis=1)
        dW_hh, dh_hidden, dextra = _hidden_backward(cache, t, dgh)
        dh_prev += dh_hidden
    else:
        d_rh = dan @ W_hn            # wrt r * h
        dar = d_rh * h * r * (1 - r)
        dgh = np.concatenate([dar, daz, dan], axis=1)
        dW_hh = np.concatenate([dgh[:, :2 * H].T @ h, dan.T @ (r * h)], axis=0)
        dh_prev += dgh[:, :2 * H] @ W_hrz + d_rh * r
    dgx = np.concatenate([dar, daz, dan], axis=1)
    return _StepGrads(dgx, dgh, dW_hh, (dh_prev,), dextra)


@_doc
def gru_forward(x: npt.ArrayLike, W_ih: npt.ArrayLike, W_hh: npt.ArrayLike,
                b_ih: npt.ArrayLike | None = None, b_hh: npt.ArrayLike | None = None,
                h0: npt.ArrayLike | None = None, *, linear_before_reset: bool = True,
                lengths: npt.ArrayLike | None = None, reverse: bool = False,
                training: bool = False, layer_norm: Sequence[npt.ArrayLike | None] | None = None,
                layer_norm_eps: float = 1e-5) -> ForwardResult:
    """GRU over a sequence, in pure NumPy (the oracle of ``fastcells.gru_forward``).

    Gates in PyTorch's order r, z, n:
    ``r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})``;
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` when
    ``linear_before_reset`` (PyTorch, cuDNN, Keras ``reset_after=True``), else
    ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)`` (Cho et al. 2014, ONNX
    default); ``h' = (1 - z) * n + z * h``.

    With ``layer_norm`` (Ba, Kiros and Hinton 2016; ``linear_before_reset``
    only), where ``LN(v; γ, β) = (v - mean(v)) / sqrt(var(v) + eps) * γ + β``
    over a row (population variance, ``eps = layer_norm_eps``):
    ``a_i = LN(W_ih x; γ_ih, β_ih) + b_ih`` and ``a_h = LN(W_hh h; γ_hh, β_hh) + b_hh``
    (each LN over all 3*H values, blocks r, z, n);
    ``r = σ(a_i,r + a_h,r)``, ``z = σ(a_i,z + a_h,z)``, ``n = tanh(a_i,n + r * a_h,n)``,
    ``h' = (1 - z) * n + z * h``.

    %(oracle)s

    Parameters
    ----------
    %(x)s
    W_ih : array (3*H, I)
        Input weights, row blocks r, z, n.
    W_hh : array (3*H, H)
        Recurrent weights, row blocks r, z, n.
    %(biases)s
    h0 : array (B, H) or None
        Initial hidden state; None means zeros.
    linear_before_reset : bool
        Which form of ``n`` (see above); True is PyTorch's.  False with
        ``layer_norm`` raises ``ValueError`` (no standard normalized form).
    %(sequence)s
    %(layer_norm)s

    Returns
    -------
    ForwardResult
        ``y (T, B, H)`` the outputs (zeros at masked steps), ``h (B, H)`` the
        state after each sequence's last valid step, ``cache`` (None unless
        ``training``).  New arrays of the compute dtype; the arguments are
        never written.

    %(forward_raises)s
    """
    linear_before_reset = _checks.check_bool("linear_before_reset", linear_before_reset)
    reverse = _checks.check_bool("reverse", reverse)
    training = _checks.check_bool("training", training)
    args = _checks.check_forward("gru", x, W_ih, W_hh, b_ih, b_hh, h0, lengths=lengths)
    ln = _check_layer_norm("gru", layer_norm, layer_norm_eps, args, linear_before_reset)
    y, (h,), cache = _forward("gru", args, _gru_step(linear_before_reset, ln),
                              {"gates": args.G * args.H, "hn": args.H},
                              {"linear_before_reset": linear_before_reset}, reverse, training,
                              ln)
    return ForwardResult(y, h, cache)


@_doc
def gru_backward(cache: Cache, dy: npt.ArrayLike | None = None,
                 dh: npt.ArrayLike | None = None) -> Gradients | LayerNormGradients:
    """Gradients of a :func:`fastcells.reference.gru_forward` pass, in pure NumPy.

    %(backward)s
    %(h_backward)s

    %(backward_raises)s
    """
    return _h_backward("gru", cache, _gru_step_backward, dy, dh)


# ----------------------------------------------------------------------------
# LSTM (gates i, f, g, o)


def _peephole_parts(peephole: Array | None) -> tuple[Any, Any, Any]:
    """(p_i, p_f, p_o), each (H,), or zeros when the LSTM has no peepholes."""
    if peephole is None:
        return 0, 0, 0
    p_i, p_f, p_o = np.split(peephole, _PEEPHOLES)
    return p_i, p_f, p_o


def _c_norm(ln: _LayerNorm) -> tuple[Array, Array]:
    """(γ_c, β_c) of a layer-normalized LSTM (``check_layer_norm`` requires them)."""
    return cast(Array, ln.weights.c_weight), cast(Array, ln.weights.c_bias)


def _lstm_step(peephole: Array | None, ln: _LayerNorm | None, W_hr: Array | None) -> Step:
    p_i, p_f, p_o = _peephole_parts(peephole)

    def step(gx_t: Array, state: State, W_hh: Array,
             b_hh: Array | None) -> tuple[State, dict[str, Array]]:
        h, c = state
        H = c.shape[1]
        a = gx_t + _hidden_projection(h, W_hh, b_hh, ln)
        i = _sigmoid(a[:, :H] + p_i * c)
        f = _sigmoid(a[:, H:2 * H] + p_f * c)
        g = np.tanh(a[:, 2 * H:3 * H])
        c_new = f * c + i * g
        o = _sigmoid(a[:, 3 * H:] + p_o * c_new)
        # the carried state is c_new itself; only what h sees of it is normalized
        c_out = c_new if ln is None else _layer_norm(c_new, *_c_norm(ln), ln.eps)
        h_new = o * np.tanh(c_out)
        if W_hr is not None:
            h_new = h_new @ W_hr.T      # the projection: h' = W_hr m, m = o * tanh(c_out)
        return (h_new, c_new), {"gates": np.concatenate([i, f, g, o], axis=1)}

    return step


def _lstm_step_backward(cache: Cache, t: int, d_new: State) -> _StepGrads:
    dh, dc = d_new
    c = cache["c_prev"][t]
    i, f, g, o = np.split(cache["gates"][t], _LSTM_GATES, axis=1)
    c_new = f * c + i * g
    ln = _cached_layer_norm(cache)
    dextra: dict[str, Array] = {}
    if ln is None:
        tanh_c = np.tanh(c_new)
    else:
        tanh_c = np.tanh(_layer_norm(c_new, *_c_norm(ln), ln.eps))

    W_hr = cache["W_hr"]
    if W_hr is not None:    # back through h' = W_hr m: dh becomes the gradient wrt m
        dextra["W_hr"] = dh.T @ (o * tanh_c)
        dh = dh @ W_hr
    peephole = cache["peephole"]
    p_i, p_f, p_o = _peephole_parts(peephole)
    dao = dh * tanh_c * o * (1 - o)
    # the gradient wrt the new c through h: through tanh (and LN(c_new) with ln)
    dc_out = dh * o * (1 - tanh_c * tanh_c)
    if ln is not None:
        dc_out, dextra["ln_c_weight"], dextra["ln_c_bias"] = _layer_norm_backward(
            dc_out, c_new, _c_norm(ln)[0], ln.eps)
    # total gradient wrt the new c: carried, through h, and through o's peephole
    dc = dc + dc_out + dao * p_o
    dai, daf, dag = dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g)
    da = np.concatenate([dai, daf, dag, dao], axis=1)
    dc_prev = dc * f + dai * p_i + daf * p_f
    if peephole is not None:
        dextra["peephole"] = np.concatenate([(dai * c).sum(axis=0), (daf * c).sum(axis=0),
                                             (dao * c_new).sum(axis=0)])
    dW_hh, dh_prev, dextra_hh = _hidden_backward(cache, t, da)
    return _StepGrads(da, da, dW_hh, (dh_prev, dc_prev), {**dextra, **dextra_hh})


@_doc
def lstm_forward(x: npt.ArrayLike, W_ih: npt.ArrayLike, W_hh: npt.ArrayLike,
                 b_ih: npt.ArrayLike | None = None, b_hh: npt.ArrayLike | None = None,
                 h0: npt.ArrayLike | None = None, c0: npt.ArrayLike | None = None, *,
                 peephole: npt.ArrayLike | None = None,
                 lengths: npt.ArrayLike | None = None, reverse: bool = False,
                 training: bool = False,
                 layer_norm: Sequence[npt.ArrayLike | None] | None = None,
                 layer_norm_eps: float = 1e-5,
                 W_hr: npt.ArrayLike | None = None) -> LSTMForwardResult:
    """LSTM over a sequence, in pure NumPy (the oracle of ``fastcells.lstm_forward``).

    Gates in PyTorch's order i, f, g, o, from ``a = W_ih x + b_ih + W_hh h + b_hh``;
    ``i, f, o = σ(·)``, ``g = tanh(·)``; ``c' = f * c + i * g``;
    ``h' = o * tanh(c')``.  With ``peephole = (p_i, p_f, p_o)``, i and f also
    get ``p_i * c``, ``p_f * c`` and o gets ``p_o * c'`` before their sigmoid.

    With ``layer_norm`` (Ba, Kiros and Hinton 2016), where
    ``LN(v; γ, β) = (v - mean(v)) / sqrt(var(v) + eps) * γ + β`` over a row
    (population variance, ``eps = layer_norm_eps``):
    ``a = LN(W_ih x; γ_ih, β_ih) + LN(W_hh h; γ_hh, β_hh) + b_ih + b_hh`` (each LN
    over all 4*H values, the peephole terms added to ``a`` as above),
    ``c' = f * c + i * g`` and ``h' = o * tanh(LN(c'; γ_c, β_c))`` (over H).  The
    carried state ``c'`` is not normalized (PyTorch's ``custom_lstms``
    ``LayerNormLSTMCell`` and TensorFlow Addons' ``LayerNormLSTMCell`` carry
    ``LN(c')`` instead).

    With a projection ``W_hr`` (P, H) (Sak et al. 2014; PyTorch's ``proj_size``):
    ``h' = W_hr (o * tanh(c'))`` (``tanh(LN(c'))`` with ``layer_norm``), so ``h``,
    ``y`` and the columns of ``W_hh`` have ``P < H`` values and ``c`` keeps H.
    Peepholes and layer normalization combine with it as written above (PyTorch
    has neither).

    %(oracle)s

    Parameters
    ----------
    %(x)s
    W_ih : array (4*H, I)
        Input weights, row blocks i, f, g, o.
    W_hh : array (4*H, H), or (4*H, P) with ``W_hr``
        Recurrent weights, row blocks i, f, g, o.
    %(biases)s
    h0, c0 : array (B, H) or None
        Initial hidden and cell states; None means zeros.  With ``W_hr``,
        ``h0`` is (B, P).
    peephole : array (3*H,) or None
        Peephole weights, blocks i, f, o; None means none.
    %(sequence)s
    layer_norm : LayerNormWeights or None
        ``(ih_weight, ih_bias, hh_weight, hh_bias, c_weight, c_bias)``: γ_ih,
        β_ih, γ_hh, β_hh of shape (4*H,) and γ_c, β_c of shape (H,) (a
        6-tuple in this order also works); None means no layer normalization.
    layer_norm_eps : float
        The ``eps`` of LN, finite and > 0.
    W_hr : array (P, H) or None
        The projection of the hidden state, ``1 <= P < H`` (PyTorch's
        ``weight_hr_l{k}``); None means none.

    Returns
    -------
    LSTMForwardResult
        ``y (T, B, H)`` the outputs (zeros at masked steps), ``h (B, H)`` and
        ``c (B, H)`` the states after each sequence's last valid step (``y``
        and ``h`` have P values with ``W_hr``),
        ``cache`` (None unless ``training``).  New arrays of the compute
        dtype; the arguments are never written.

    %(forward_raises)s
    """
    reverse = _checks.check_bool("reverse", reverse)
    training = _checks.check_bool("training", training)
    args = _checks.check_forward("lstm", x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths=lengths,
                                 peephole=peephole, W_hr=W_hr)
    ln = _check_layer_norm("lstm", layer_norm, layer_norm_eps, args)
    y, (h, c), cache = _forward("lstm", args, _lstm_step(args.peephole, ln, args.W_hr),
                                {"gates": args.G * args.H}, {}, reverse, training, ln)
    return LSTMForwardResult(y, h, c, cache)


@_doc
def lstm_backward(cache: Cache, dy: npt.ArrayLike | None = None,
                  dh: npt.ArrayLike | None = None, dc: npt.ArrayLike | None = None
                  ) -> (LSTMGradients | PeepholeLSTMGradients | LayerNormLSTMGradients
                        | ProjLSTMGradients):
    """Gradients of a :func:`fastcells.reference.lstm_forward` pass, in pure NumPy.

    %(backward)s
    dh, dc : array (B, H) or None
        Gradients of the loss wrt the final states ``h`` and ``c``.  None
        means zeros.  With a projection ``dy`` is (T, B, P) and ``dh`` (B, P).

    Returns
    -------
    LSTMGradients or PeepholeLSTMGradients or LayerNormLSTMGradients or ProjLSTMGradients
        ``dx (T, B, I)``, ``dh0, dc0 (B, H)`` (also when h0/c0 were None),
        ``dW_ih (4*H, I)``, ``dW_hh (4*H, H)``, ``db_ih, db_hh (4*H,)`` (None
        when the forward pass had no biases); with peepholes also
        ``dpeephole (3*H,)``.  With ``layer_norm``: a ``LayerNormLSTMGradients``,
        whose ``dpeephole`` is None without peepholes and ``dlayer_norm`` (a
        ``LayerNormWeights``) holds the gradients of the gains and biases.
        With ``W_hr``: a ``ProjLSTMGradients``, those nine fields (``dpeephole``
        and ``dlayer_norm`` None without the option; ``dh0 (B, P)``,
        ``dW_hh (4*H, P)``) and ``dW_hr (P, H)``.  New arrays of the compute
        dtype.

    %(backward_raises)s
    """
    g = _backward("lstm", cache, _lstm_step_backward, dy, {"h": dh, "c": dc})
    dh0, dc0 = g.d_initial
    dpeephole = g.dextra.get("peephole")
    if "W_hr" in g.dextra:
        dlayer_norm = (None if _options(cache)["layer_norm_eps"] is None
                       else _layer_norm_gradients(g.dextra))
        return ProjLSTMGradients(g.dx, dh0, dc0, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh,
                                 dpeephole, dlayer_norm, g.dextra["W_hr"])
    if _options(cache)["layer_norm_eps"] is not None:
        return LayerNormLSTMGradients(g.dx, dh0, dc0, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh,
                                      dpeephole, _layer_norm_gradients(g.dextra))
    if dpeephole is None:
        return LSTMGradients(g.dx, dh0, dc0, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh)
    return PeepholeLSTMGradients(g.dx, dh0, dc0, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh, dpeephole)


def _layer_norm_gradients(dextra: Mapping[str, Array]) -> LayerNormWeights:
    """The gradients of the gains and biases, from the backward loop's ``dextra``."""
    return LayerNormWeights._make(dextra.get(f"ln_{field}")
                                  for field in LayerNormWeights._fields)
