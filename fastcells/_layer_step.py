"""The streaming step of the recurrent layers: prepared steppers and the run of one step.

``layer.step`` runs one :class:`fastcells.Stepper` per layer: the weights
are checked, packed and their biases folded once, when the steppers are
built, and the steppers are kept until the parameters change
(``parameters_changed``).  A step then costs little more than the steppers
it wraps: arrays that already fit are passed on unchecked (the Stepper
checks its own arguments), and the new states are stacked without
``np.stack``.  The reference backend gets a stand-in with the Stepper's
call convention, so there is one path through a step for both backends.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from . import functional
from ._float16 import float16_values
from ._layer_args import stack

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

    def __call__(self, x: Array, h: Array | None = None,
                 c: Array | None = None) -> Array | tuple[Array, Array]:
        states = (h, c) if self.lstm else (h,)
        res = self.forward_fn(x[None], *self.weights, *states, **self.options)
        return (res.h, res.c) if self.lstm else res.h


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


def _per_layer(stack: Array | None) -> Iterable[Array | None]:
    """The layers' states (B, H) of a stacked state (L, B, H), or None for each if None."""
    return repeat(None) if stack is None else stack


def step_h(steppers: Sequence[StepFn], x: Array, states: Sequence[Array | None],
           mask: MaskFn | None) -> tuple[Array, Array]:
    """One step through stacked one-state layers (RNN, GRU): ``(y, h (L, B, H))``.

    ``states`` is ``[h0]``, h0 (L, B, H) or None for zeros.  ``mask`` (training
    mode with dropout) draws the dropout mask applied to each layer's output
    before the next layer, as the sequence call does.
    """
    hs: list[Array] = []
    inp = x
    for stepper, h in zip(steppers, _per_layer(states[0])):
        if hs and mask is not None:
            inp = inp * mask(inp.shape)
        inp = stepper(inp, h)    # type: ignore[assignment]
        hs.append(inp)
    return inp, stack(hs, True)


def step_hc(steppers: Sequence[StepFn], x: Array, states: Sequence[Array | None],
            mask: MaskFn | None) -> tuple[Array, tuple[Array, Array]]:
    """One step through stacked LSTM layers: ``(y, (h, c))``, each (L, B, H).

    ``states`` is ``[h0, c0]``, each (L, B, H) or None; ``mask`` as for :func:`step_h`.
    """
    hs: list[Array] = []
    cs: list[Array] = []
    inp = x
    for stepper, h, c in zip(steppers, _per_layer(states[0]), _per_layer(states[1])):
        if hs and mask is not None:
            inp = inp * mask(inp.shape)
        inp, c_new = stepper(inp, h, c)
        hs.append(inp)
        cs.append(c_new)
    return inp, (stack(hs, True), stack(cs, True))
