"""The layer-normalized cells of the NumPy reference, and the validation of their arguments.

``fastcells._checks.check_layer_norm`` is the one check of ``layer_norm`` and
``layer_norm_eps`` that the reference and the compiled path share: its tests
are here, with the reference's.
"""
import math

import numpy as np
import pytest

from fastcells import _checks
from fastcells._cells import CELLS as CELL_TABLE
from fastcells._results import LayerNormWeights

H = 4


def ln_weights(cell, rng, H=H, dtype=np.float64):
    """Random gains and biases of a ``cell`` of hidden size H (c's for an LSTM only)."""
    GH = CELL_TABLE[cell].G * H

    def rand(n, center):
        return (center + 0.3 * rng.standard_normal(n)).astype(dtype)

    c = (rand(H, 1.0), rand(H, 0.0)) if cell == "lstm" else (None, None)
    return LayerNormWeights(rand(GH, 1.0), rand(GH, 0.0), rand(GH, 1.0), rand(GH, 0.0), *c)


# ----------------------------------------------------------------------------
# check_layer_norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_check_converts_to_the_callers_dtype(cell, dtype):
    weights = ln_weights(cell, np.random.default_rng(0), dtype=np.float16)
    checked, eps = _checks.check_layer_norm(cell, weights, 1e-5, H, dtype)
    assert isinstance(checked, LayerNormWeights) and eps == 1e-5
    for field, got, given in zip(LayerNormWeights._fields, checked, weights):
        if given is None:
            assert got is None, field
        else:
            assert got.dtype == dtype and got.flags.c_contiguous, field
            np.testing.assert_array_equal(got, given.astype(dtype))


def test_check_passes_fitting_arrays_unchanged_and_accepts_plain_tuples():
    weights = ln_weights("lstm", np.random.default_rng(0))
    checked, _ = _checks.check_layer_norm("lstm", tuple(weights), 1e-5, H, np.float64)
    assert all(got is given for got, given in zip(checked, weights))
    # a 4-tuple is a cell without c's
    four = tuple(ln_weights("gru", np.random.default_rng(0)))[:4]
    checked, _ = _checks.check_layer_norm("gru", list(four), 1e-5, H, np.float64)
    assert checked.c_weight is None and checked.c_bias is None


def test_check_without_layer_norm_returns_none_and_the_eps():
    assert _checks.check_layer_norm("rnn", None, 3, H, np.float32) == (None, 3.0)


@pytest.mark.parametrize("eps", [0, -1e-5, 0.0, math.nan, math.inf, -math.inf,
                                 np.float32("nan")])
def test_check_refuses_eps_not_positive_and_finite(eps):
    with pytest.raises(ValueError, match=r"layer_norm_eps: expected a finite number > 0, "
                                         r"got"):
        _checks.check_layer_norm("rnn", None, eps, H, np.float64)


@pytest.mark.parametrize("eps", [True, "1e-5", None, 1j])
def test_check_refuses_eps_not_a_number(eps):
    with pytest.raises(TypeError, match=r"layer_norm_eps: expected a finite number > 0, got"):
        _checks.check_layer_norm("lstm", None, eps, H, np.float64)


#: (cell, field) of every array a cell's layer_norm holds
CELL_FIELDS = [(cell, field) for cell in ("rnn", "gru", "lstm")
               for field in LayerNormWeights._fields if cell == "lstm" or "c_" not in field]


@pytest.mark.parametrize(("cell", "field"), CELL_FIELDS)
def test_check_refuses_a_wrong_shape_naming_field_expected_and_received(cell, field):
    weights = ln_weights(cell, np.random.default_rng(0))
    n = getattr(weights, field).shape[0]
    symbol = "H" if field.startswith("c_") else f"{CELL_TABLE[cell].G}\\*H"
    for bad in (np.ones(n + 1), np.ones((1, n))):
        with pytest.raises(ValueError, match=fr"layer_norm\.{field}: expected shape "
                                             fr"\({symbol},\) = \({n},\), got "
                                             fr"{re_shape(bad.shape)}"):
            _checks.check_layer_norm(cell, weights._replace(**{field: bad}), 1e-5, H,
                                     np.float64)


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("bad", [np.ones(3 * H, dtype=np.int64), np.ones(3 * H, dtype=bool),
                                 np.ones(3 * H, dtype=complex), ["a"] * (3 * H)])
def test_check_refuses_a_non_float_gain(bad):
    weights = ln_weights("gru", np.random.default_rng(0))._replace(hh_bias=bad)
    with pytest.raises(TypeError, match=r"layer_norm\.hh_bias: expected a real "
                                        r"floating-point array"):
        _checks.check_layer_norm("gru", weights, 1e-5, H, np.float32)


@pytest.mark.parametrize("field", ["c_weight", "c_bias"])
def test_check_requires_c_for_lstm(field):
    weights = ln_weights("lstm", np.random.default_rng(0))._replace(**{field: None})
    with pytest.raises(ValueError, match=fr"layer_norm\.{field}: expected an array of shape "
                                         fr"\(H,\) = \({H},\), got None"):
        _checks.check_layer_norm("lstm", weights, 1e-5, H, np.float64)
    with pytest.raises(ValueError, match=r"layer_norm\.c_weight: .* got None"):
        _checks.check_layer_norm("lstm", tuple(weights)[:4], 1e-5, H, np.float64)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_check_refuses_c_without_lstm(cell):
    weights = ln_weights(cell, np.random.default_rng(0))._replace(c_weight=np.ones(H))
    with pytest.raises(ValueError, match=fr"layer_norm\.c_weight: expected None \(only an "
                                         fr"LSTM normalizes its cell state\), got array of "
                                         fr"dtype float64 and shape \({H},\) for {cell}"):
        _checks.check_layer_norm(cell, weights, 1e-5, H, np.float64)


@pytest.mark.parametrize("bad", [np.ones(4), {"ih_weight": 1}, (np.ones(4),) * 5, 1.0])
def test_check_refuses_a_layer_norm_that_is_not_four_or_six_arrays(bad):
    with pytest.raises(TypeError, match=r"layer_norm: expected None or a LayerNormWeights"):
        _checks.check_layer_norm("rnn", bad, 1e-5, H, np.float64)


def test_check_refuses_gru_without_linear_before_reset():
    weights = ln_weights("gru", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"layer_norm: expected linear_before_reset=True "
                                         r"with layer_norm .* got linear_before_reset=False"):
        _checks.check_layer_norm("gru", weights, 1e-5, H, np.float64,
                                 linear_before_reset=False)


def test_check_never_writes_the_callers_arrays():
    weights = ln_weights("lstm", np.random.default_rng(0), dtype=np.float32)
    before = [a.copy() for a in weights]
    for a in weights:
        a.setflags(write=False)
    checked, _ = _checks.check_layer_norm("lstm", weights, 1e-5, H, np.float64)
    for a, b in zip(weights, before):
        np.testing.assert_array_equal(a, b)
