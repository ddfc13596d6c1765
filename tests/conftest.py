"""Shared set-up of the kernel tests: tolerances, ISA paths, random cells.

Everything the test files have in common lives here, once:

- the tolerances (named once, used everywhere) and :func:`assert_close`, which
  measures an error relative to the magnitude of the float64 reference;
- the ``isa`` fixture, which runs a test once per instruction-set path this
  machine supports and restores the path in use afterwards;
- the table of cells (:data:`CELLS`) and the helpers that build random
  weights, inputs, lengths and upstream gradients for them, and call the
  forward/backward of a module (``fastcells`` or ``fastcells.reference``)
  by cell name.

Test files import the helpers with ``from conftest import ...`` (pytest puts
``tests/`` on ``sys.path``, there is no ``__init__.py``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

import fastcells
from fastcells import _kernels
from fastcells._cells import CELLS as CELL_TABLE
from fastcells._cells import cell_functions

#: forward results (y, h, c) vs the float64 reference, relative to max(1, max|ref|)
FWD_TOL = 1e-5
#: gradients vs the float64 reference, relative to max(1, max|ref|)
GRAD_TOL = 1e-4
#: one seed for every random draw of the suite (each test makes its own generator)
SEED = 20240611


class Cell(NamedTuple):
    """A cell variant: the function family and its forward options (the facts of
    the family, gate count and states, come from ``fastcells._cells``)."""

    family: str    # "rnn", "gru" or "lstm": the prefix of <family>_forward/_backward
    options: dict

    @property
    def gates(self) -> int:
        """The gate count G of the family."""
        return CELL_TABLE[self.family].G


#: every kernel variant, by test id
CELLS = {
    "rnn-tanh": Cell("rnn", {"nonlinearity": "tanh"}),
    "rnn-relu": Cell("rnn", {"nonlinearity": "relu"}),
    "gru-lbr": Cell("gru", {"linear_before_reset": True}),
    "gru-cho": Cell("gru", {"linear_before_reset": False}),
    "lstm": Cell("lstm", {}),
}
#: forward argument -> name of its gradient in the backward result
GRAD_OF = {"x": "dx", "h0": "dh0", "c0": "dc0", "W_ih": "dW_ih", "W_hh": "dW_hh",
           "b_ih": "db_ih", "b_hh": "db_hh"}


def is_lstm(cell: str) -> bool:
    """Whether the variant carries a cell state ``c`` (the LSTM)."""
    return CELL_TABLE[CELLS[cell].family].has_cell_state


# ----------------------------------------------------------------------------
# fixtures


@pytest.fixture
def rng():
    """A freshly seeded generator: every test sees the same numbers on every run."""
    return np.random.default_rng(SEED)


@pytest.fixture(params=_kernels.isa_available())
def isa(request):
    """Run the test on one ISA path (once per path the machine supports)."""
    previous = _kernels.get_isa()
    _kernels.set_isa(request.param)
    try:
        yield request.param
    finally:
        _kernels.set_isa(previous)


# ----------------------------------------------------------------------------
# comparisons


def max_error(actual, expected) -> float:
    """max|actual - expected| / max(1, max|expected|), NaN/inf where both agree ignored."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if expected.size == 0:
        return 0.0
    same_special = (np.isnan(actual) & np.isnan(expected)) | (
        np.isinf(expected) & (actual == expected))
    diff = np.where(same_special, 0.0, np.abs(actual - expected))
    if np.isnan(diff).any():
        return np.inf
    scale = max(1.0, float(np.abs(np.where(np.isfinite(expected), expected, 0)).max()))
    return float(diff.max()) / scale


def assert_close(actual, expected, tol: float, what: str = "") -> None:
    """``max|actual - expected| <= tol * max(1, max|expected|)`` (NaN/inf must match)."""
    if expected is None:
        assert actual is None, f"{what}: expected None, got {type(actual).__name__}"
        return
    assert actual is not None, f"{what}: expected an array, got None"
    err = max_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def assert_same(actual, expected, what: str = "") -> None:
    """Bitwise-equal results (named tuples of arrays, None or cache allowed)."""
    for name in expected._fields:
        a, e = getattr(actual, name), getattr(expected, name)
        if name == "cache":
            continue
        if e is None:
            assert a is None, f"{what}{name}: expected None"
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"{what}{name}")


# ----------------------------------------------------------------------------
# random cells


def make_weights(cell: str, rng, I: int, H: int, *, bias: bool = True,
                 dtype=np.float32) -> dict:
    """``W_ih (G*H, I)``, ``W_hh (G*H, H)``, ``b_ih``, ``b_hh`` (None without bias).

    Scaled like PyTorch's default initialisation (about 1/sqrt(H)), a little
    larger so that the gates leave their linear range.
    """
    G = CELLS[cell].gates
    scale = 1.5 / np.sqrt(H)
    w = {"W_ih": rng.standard_normal((G * H, I)) * scale,
         "W_hh": rng.standard_normal((G * H, H)) * scale,
         "b_ih": rng.standard_normal(G * H) * 0.5 if bias else None,
         "b_hh": rng.standard_normal(G * H) * 0.5 if bias else None}
    return {k: None if v is None else v.astype(dtype) for k, v in w.items()}


def make_lengths(rng, T: int, B: int) -> np.ndarray:
    """int64 (B,) in [0, T], with 0 and T both present when B >= 2."""
    lengths = rng.integers(0, T + 1, size=B)
    if B >= 2:
        lengths[0], lengths[-1] = T, 0
    return lengths


def make_inputs(cell: str, rng, T: int, B: int, I: int, H: int, *, bias: bool = True,
                initial_state: bool = True, dtype=np.float32) -> dict:
    """Positional/keyword arguments of ``<family>_forward`` without options.

    Values are float32-representable whatever ``dtype``, so the float64
    reference sees exactly the numbers the float32 kernels see.
    """
    inputs = {"x": rng.standard_normal((T, B, I)).astype(np.float32).astype(dtype)}
    inputs.update(make_weights(cell, rng, I, H, bias=bias, dtype=dtype))
    state = lambda: rng.standard_normal((B, H)).astype(np.float32).astype(dtype)  # noqa: E731
    inputs["h0"] = state() if initial_state else None
    if is_lstm(cell):
        inputs["c0"] = state() if initial_state else None
    return inputs


def make_upstream(cell: str, rng, T: int, B: int, H: int, dtype=np.float32) -> dict:
    """Random ``dy (T, B, H)``, ``dh (B, H)`` and, for LSTM, ``dc (B, H)``."""
    grads = {"dy": rng.standard_normal((T, B, H)).astype(dtype),
             "dh": rng.standard_normal((B, H)).astype(dtype)}
    if is_lstm(cell):
        grads["dc"] = rng.standard_normal((B, H)).astype(dtype)
    return grads


def as_float64(arrays: dict) -> dict:
    return {k: None if v is None or k == "lengths" else np.asarray(v, np.float64)
            for k, v in arrays.items()}


# ----------------------------------------------------------------------------
# calling a cell by name


def forward(module, cell: str, inputs: dict, **kwargs):
    """``module.<family>_forward(**inputs, <cell options>, **kwargs)``."""
    c = CELLS[cell]
    return cell_functions(module, c.family)[0](**inputs, **c.options, **kwargs)


def backward(module, cell: str, cache, upstream: dict | None = None):
    """``module.<family>_backward(cache, **upstream)``."""
    return cell_functions(module, CELLS[cell].family)[1](cache, **(upstream or {}))


def run_both(cell: str, inputs: dict, upstream: dict, module=fastcells, **kwargs):
    """Forward (training) and backward of ``module``: (forward result, gradients)."""
    out = forward(module, cell, inputs, training=True, **kwargs)
    return out, backward(module, cell, out.cache, upstream)


def state_names(cell: str) -> tuple:
    """The recurrent state names of the variant (``("h",)`` or ``("h", "c")``)."""
    return CELL_TABLE[CELLS[cell].family].states


class TensorLike:
    """A framework tensor as fastcells sees it (TensorFlow's): no ``__array__``,
    only ``.numpy()``."""

    def __init__(self, a):
        self._a = a

    def numpy(self):
        return self._a


def assert_gradients_by_finite_differences(layer, x, state, dy, dstate, lengths, rng, eps,
                                           rtol, params_rtol=None):
    """``layer.backward`` against central differences of the loss
    ``sum(y * dy) + sum(state_n * dstate)``, along one random direction each for
    ``x``, the initial state and all the parameters (moved together, as stored:
    the difference is taken over the float32 values the layer holds), within
    ``rtol`` (``params_rtol`` for the parameters, if given)."""
    parts = list if isinstance(state, tuple) else (lambda s: [s])
    params = layer.parameters()
    start = {k: p.copy() for k, p in params.items()}

    def loss(x, state):
        y, s = layer(x, state, lengths=lengths)
        return np.sum(y * dy) + sum(np.sum(a * b) for a, b in zip(parts(s), parts(dstate)))

    loss(x, state)
    layer.zero_grad()
    dx, dstate0 = layer.backward(dy, dstate)
    u = rng.standard_normal(x.shape)
    v = [rng.standard_normal(s.shape) for s in parts(state)]
    w = {k: rng.standard_normal(p.shape) for k, p in params.items()}

    def moved(t, what):
        """The loss with ``what`` ("x", "state" or "params") moved by ``t`` along its
        direction, and the parameters' float64 values then."""
        new = [s + t * d for s, d in zip(parts(state), v)] if what == "state" else None
        for k, p in params.items():
            p[...] = start[k] + t * w[k] if what == "params" else start[k]
        values = {k: p.astype(np.float64) for k, p in params.items()}
        value = loss(x + t * u if what == "x" else x,
                     state if new is None else type(state)(new) if isinstance(state, tuple)
                     else new[0])
        for k, p in params.items():
            p[...] = start[k]
        return value, values

    grads = {"x": lambda *_: np.sum(dx * u),
             "state": lambda *_: sum(np.sum(d * d_v) for d, d_v in zip(parts(dstate0), v)),
             "params": lambda plus, minus: sum(np.sum(layer.grads[k] * (plus[k] - minus[k]))
                                               for k in params) / (2 * eps)}
    for what, grad in grads.items():
        (up, plus), (down, minus) = moved(eps, what), moved(-eps, what)
        tol = params_rtol if what == "params" and params_rtol is not None else rtol
        np.testing.assert_allclose(grad(plus, minus), (up - down) / (2 * eps), rtol=tol,
                                   err_msg=what)
