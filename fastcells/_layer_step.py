"""The streaming step of the recurrent layers: prepared steppers and the run of one step.

``layer.step`` runs one :class:`fastcells.Stepper` per layer: the weights
are checked, packed and their biases folded once, when the steppers are
built, and the steppers are kept until the parameters change
(``parameters_changed``).  A step then costs little more than the steppers
it wraps (see docs/design.md, "Layer step overhead"): arrays that already
fit are passed on unchecked (the Stepper checks its own arguments), and the
stacked result starts as a copy of the old state that each layer updates in
its own row (``Stepper(..., out=)``), instead of new arrays stacked afterwards.
The reference backend gets a stand-in with the Stepper's call convention,
``out`` included, so there is one path through a step for both backends.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import functional
from ._float16 import float16_values

Array = np.ndarray
#: one layer's step: ``(x, h, c) -> h`` (RNN, GRU) or ``(h, c)`` (LSTM)
StepFn = Callable[..., Array | tuple[Array, Array]]
#: the dropout mask generator of a layer: shape -> mask
MaskFn = Callable[[tuple[int, ...]], Array]


class ReferenceStepper:
    """One layer of the reference backend, called as a :class:`fastcells.Stepper` is.

    Runs ``forward_fn`` on a one-step sequence with the weights it was built
    with (rounded to float16 values already, for ``step_weight_dtype``).
    """

    def __init__(self, forward_fn: Callable[..., Any], weights: Sequence[Array | None],
                 options: dict[str, Any], lstm: bool) -> None:
        self.forward_fn, self.weights, self.options, self.lstm = (
            forward_fn, tuple(weights), options, lstm)

    def __call__(self, x: Array, h: Array | None = None, c: Array | None = None, *,
                 out: Array | tuple[Array, Array]) -> Array | tuple[Array, Array]:
        """One step; the new state is written into ``out`` (``(h_out, c_out)`` for
        the LSTM), arrays (B, H) (``h_out`` (B, P) with a projection) of the
        result's dtype, and returned."""
        states = (h, c) if self.lstm else (h,)
        res = self.forward_fn(x[None], *self.weights, *states, **self.options)
        outs = out if isinstance(out, tuple) else (out,)
        for o, new in zip(outs, (res.h, res.c) if self.lstm else (res.h,)):
            o[...] = new
        return out


def step_weights(names: Sequence[str | None], weights: Sequence[Array | None],
                 half: bool) -> tuple[Array | None, ...]:
    """One layer's ``(W_ih, W_hh, b_ih, b_hh)`` as a step multiplies by them: as they
    are, or with ``W_ih``/``W_hh`` rounded to float16 values (errors name them)."""
    if not half:
        return tuple(weights)
    rounded = tuple(float16_values(str(n), W, "step_weight_dtype")
                    for n, W in zip(names[:2], weights[:2]) if W is not None)
    return rounded + tuple(weights[2:])


def compiled_stepper(cell: str, weights: Sequence[Array | None], half: bool,
                     options: dict[str, Any]) -> functional.Stepper:
    """A :class:`fastcells.Stepper` for one layer (``weights`` already rounded if ``half``)."""
    return functional.Stepper(cell, *weights, weight_dtype="float16" if half else "float32",
                              **options)


def new_state(old: Array | None, shape: tuple[int, int, int], dtype: np.dtype) -> Array:
    """The stack (L, B, H) a step writes one state kind into: a C-ordered copy of
    the old state in ``dtype`` (zeros for None), which the layers update in place."""
    return np.zeros(shape, dtype) if old is None else old.astype(dtype, order="C")


def step_h(steppers: Sequence[StepFn], x: Array, states: Sequence[Array | None],
           mask: MaskFn | None, widths: Sequence[int], dtype: np.dtype) -> tuple[Array, Array]:
    """One step through stacked one-state layers (RNN, GRU): ``(y, h (L, B, H))``.

    ``states`` is ``[h0]``, h0 (L, B, H) or None for zeros; ``widths`` is
    ``[H]``, the width of each state kind.  ``mask`` (training mode with
    dropout) draws the dropout mask applied to each layer's output before the
    next layer, as the sequence call does.  The result (of ``dtype``, the
    backend's) starts as a copy of the old state, and each layer updates its
    row in place; ``y`` is the last row.
    """
    hs = new_state(states[0], (len(steppers), x.shape[0], widths[0]), dtype)
    inp = x
    for stepper, h in zip(steppers, hs):
        if mask is not None and inp is not x:
            inp = inp * mask(inp.shape)
        inp = stepper(inp, h, out=h)    # type: ignore[assignment]
    return inp, hs


def step_hc(steppers: Sequence[StepFn], x: Array, states: Sequence[Array | None],
            mask: MaskFn | None, widths: Sequence[int],
            dtype: np.dtype) -> tuple[Array, tuple[Array, Array]]:
    """One step through stacked LSTM layers: ``(y, (h, c))``, h (L, B, P) and c (L, B, H).

    ``states`` is ``[h0, c0]``, each of those shapes or None; ``widths`` is
    ``[P, H]`` (P = H without a projection); ``mask`` and ``dtype`` as for
    :func:`step_h`.
    """
    h_shape = (len(steppers), x.shape[0], widths[0])
    c_shape = h_shape if widths[1] == widths[0] else h_shape[:2] + (widths[1],)
    hs, cs = new_state(states[0], h_shape, dtype), new_state(states[1], c_shape, dtype)
    inp = x
    for stepper, h, c in zip(steppers, hs, cs):
        if mask is not None and inp is not x:
            inp = inp * mask(inp.shape)
        stepper(inp, h, c, out=(h, c))
        inp = h
    return inp, (hs, cs)
