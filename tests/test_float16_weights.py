"""Stepper(..., weight_dtype="float16"): weights rounded to float16 once, float32 arithmetic.

The contract: the results are the bits of a float32 Stepper built from
``W.astype(np.float16)``, on every ISA path, for every call; products with
few rows (``_kernels.half_max_rows()``: batch-1 steps and small batches) read
the float16 panels (half the bytes) where the ISA converts float16 in
hardware (AVX2+F16C, AVX-512).  Checked here:
- bit identity with the rounded-weights Stepper (forward and step, every cell
  variant, batch 1 and more, lengths, reverse, float16 subnormal weights);
- the float16 panels really are what few-row products read (and only those);
- the numbers against the float64 reference with the rounded weights;
- the range check, bad arguments, and the caller's arrays left alone.
"""
import numpy as np
import pytest
from conftest import assert_close
from test_stepper import VARIANTS, _variant

import fastcells
from fastcells import _kernels, reference
from fastcells.functional import Stepper

#: float32 kernels vs the float64 reference (same rounded weights), as test_kernels
TOL = 2e-5


def _rounded(w):
    return [None if a is None else a.astype(np.float16).astype(np.float32) for a in w]


def _with_tiny_weights(weights):
    """Weights including float16 subnormals (normal floats): they must survive exactly."""
    W_ih, W_hh = weights[0].copy(), weights[1].copy()
    W_hh.flat[::7] = np.float32(3e-6)
    W_hh.flat[3::11] = np.float32(-4.5e-5)
    W_ih.flat[::5] = np.float32(1e-7)
    return [W_ih, W_hh, *weights[2:]]


def _states(rng, cell, B, H):
    return [rng.standard_normal((B, H)).astype(np.float32)
            for _ in range(2 if cell == "lstm" else 1)]


@pytest.mark.parametrize("T,B", [(30, 1), (1, 1), (9, 3), (5, 4)])
@pytest.mark.parametrize("cell,options", VARIANTS)
def test_float16_weights_give_the_rounded_weights_bits(isa, cell, options, T, B):
    rng = np.random.default_rng(11)
    I, H = 7, 37                       # H not a multiple of 16: a partial last panel
    weights, kw = _variant(rng, cell, options, I, H)
    weights = _with_tiny_weights(weights)
    kept = [a.copy() for a in weights]
    half = Stepper(cell, *weights, weight_dtype="float16", **kw)
    want = Stepper(cell, *_rounded(weights[:2]), *weights[2:], **kw)
    assert half.weight_dtype == "float16" and want.weight_dtype == "float32"
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state = _states(rng, cell, B, H)
    lengths = rng.integers(0, T + 1, B) if B > 1 else None
    for reverse in (False, True):
        got = half.forward(x, *state, lengths=lengths, reverse=reverse)
        exp = want.forward(x, *state, lengths=lengths, reverse=reverse)
        for name in exp._fields[:-1]:
            np.testing.assert_array_equal(getattr(got, name), getattr(exp, name), name)
    s_half = s_want = tuple(state)
    for t in range(T):
        a, b = half(x[t], *s_half), want(x[t], *s_want)
        s_half = a if isinstance(a, tuple) else (a,)
        s_want = b if isinstance(b, tuple) else (b,)
        for u, v in zip(s_half, s_want):
            np.testing.assert_array_equal(u, v)
    for a, b in zip(weights, kept):          # the caller's weights were not rounded in place
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,options", VARIANTS)
def test_float16_weights_match_the_reference(cell, options):
    rng = np.random.default_rng(12)
    I, H, T, B = 6, 19, 25, 2
    weights, kw = _variant(rng, cell, options, I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state = _states(rng, cell, B, H)
    got = Stepper(cell, *weights, weight_dtype="float16", **kw).forward(x, *state)
    r64 = [None if a is None else a.astype(np.float64)
           for a in _rounded(weights[:2]) + weights[2:]]       # biases are not rounded
    kw64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    want = getattr(reference, f"{cell}_forward")(x.astype(np.float64), *r64,
                                                 *[s.astype(np.float64) for s in state], **kw64)
    assert_close(got.y, want.y, TOL)
    # and the rounding is what moved the numbers: float32 weights give other ones
    exact = Stepper(cell, *weights, **kw).forward(x, *state)
    assert not np.array_equal(exact.y, got.y)


def test_few_row_products_read_the_float16_panels(isa):
    """Change the float16 panels only: results of products with at most
    HALF_MAX_ROWS rows move where the ISA reads them (has_half); more rows never
    do (they read the float panels)."""
    rng = np.random.default_rng(13)
    H = 24
    W = rng.standard_normal((H, H)).astype(np.float16).astype(np.float32)
    wp = _kernels.pack_half(W)
    off = (wp.size - (_kernels.pack_floats(H, H, True) - 15 + 1) // 2)
    tail = wp[off:].view(np.float16)
    few = _kernels.half_max_rows()
    batches = (1, 2, few, few + 1, 8)
    results = {}
    for label in ("intact", "changed"):
        if label == "changed":
            tail *= 2
        for B in batches:
            h = np.ones((B, H), np.float32)
            y = np.empty((1, B, H), np.float32)
            gx = np.zeros((1, B, H), np.float32)
            _kernels.rnn_forward(0, gx, wp, _kernels.PACK_HALF, h, y, None, False, False,
                                 np.empty((B, H), np.float32))
            results[label, B] = y.copy()
    assert _kernels.has_half() == (isa != "generic")
    for B in batches:
        if _kernels.has_half() and B <= few:
            assert not np.array_equal(results["intact", B], results["changed", B]), B
        else:
            np.testing.assert_array_equal(results["intact", B], results["changed", B])
        # intact, every batch gives the same row (all rows are ones): one contract
        np.testing.assert_array_equal(results["intact", B][0, -1], results["intact", 1][0, 0])


def test_pack_half_wants_float16_values():
    W = np.full((16, 4), 0.1, np.float32)          # 0.1 is not a float16 value
    with pytest.raises(ValueError, match="W: expected float16 values"):
        _kernels.pack_half(W)
    P = _kernels.pack_half(W.astype(np.float16).astype(np.float32))
    assert P.ctypes.data % 64 == 0


@pytest.mark.parametrize("which", [0, 1])
def test_weights_beyond_float16_range_are_refused(which):
    rng = np.random.default_rng(14)
    weights, _ = _variant(rng, "gru", {}, 4, 8)
    weights[which] = weights[which].copy()
    weights[which][2, 3] = 65510.0     # rounds to 65504, but beyond it: refused too
    name = ("W_ih", "W_hh")[which]
    with pytest.raises(ValueError, match=rf"{name}: expected magnitudes float16 holds \(at "
                                         r"most 65504\) .* got 65510.0 at \(2, 3\) "
                                         r"\(1 such weights\)"):
        Stepper("gru", *weights, weight_dtype="float16")
    Stepper("gru", *weights)                           # float32 takes them
    weights[which][2, 3] = -65504.0                    # the largest float16 is fine
    Stepper("gru", *weights, weight_dtype="float16")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_weights_keep_the_contract(isa, bad):
    rng = np.random.default_rng(15)
    weights, _ = _variant(rng, "rnn", {}, 3, 5)
    weights[1] = weights[1].copy()
    weights[1][0, 0] = bad
    x = rng.standard_normal((4, 1, 3)).astype(np.float32)
    got = Stepper("rnn", *weights, weight_dtype="float16").forward(x).y
    want = Stepper("rnn", *_rounded(weights[:2]), *weights[2:]).forward(x).y
    np.testing.assert_array_equal(got, want)         # NaN where NaN
    assert not np.isfinite(got).all()


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_no_inputs(cell):
    """I = 0: an empty W_ih packs to nothing; the step is the recurrence alone."""
    rng = np.random.default_rng(18)
    weights, _ = _variant(rng, cell, {}, 0, 6)
    x = np.zeros((3, 1, 0), np.float32)
    got = Stepper(cell, *weights, weight_dtype="float16").forward(x)
    want = Stepper(cell, *_rounded(weights[:2]), *weights[2:]).forward(x)
    np.testing.assert_array_equal(got.y, want.y)


@pytest.mark.parametrize("I,H", [(33, 70), (5, 257)])
def test_larger_sizes_and_a_stepper_moved_across_isas(I, H):
    """Several full panels and k blocks; a Stepper built on one ISA path serves on
    every other (pack_half always writes both copies)."""
    rng = np.random.default_rng(19)
    weights, _ = _variant(rng, "lstm", {}, I, H)
    half = Stepper("lstm", *weights, weight_dtype="float16")
    want = Stepper("lstm", *_rounded(weights[:2]), *weights[2:])
    previous = _kernels.get_isa()
    try:
        for isa in _kernels.isa_available():
            _kernels.set_isa(isa)
            for B in (1, 3):
                x = rng.standard_normal((4, B, I)).astype(np.float32)
                np.testing.assert_array_equal(half.forward(x).y, want.forward(x).y)
    finally:
        _kernels.set_isa(previous)


@pytest.mark.parametrize("dtype", ["float16", np.float16, np.dtype("float16"), "f2"])
def test_weight_dtype_spellings(dtype):
    rng = np.random.default_rng(16)
    weights, _ = _variant(rng, "lstm", {}, 3, 5)
    assert Stepper("lstm", *weights, weight_dtype=dtype).weight_dtype == "float16"
    assert Stepper("lstm", *weights, weight_dtype=np.float32).weight_dtype == "float32"


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", None, 16, np.int16, "(", "f2,f2"])
def test_bad_weight_dtype_names_the_argument(dtype):
    rng = np.random.default_rng(17)
    weights, _ = _variant(rng, "lstm", {}, 3, 5)
    with pytest.raises(ValueError, match="weight_dtype: expected 'float32' or 'float16'"):
        Stepper("lstm", *weights, weight_dtype=dtype)


# ----------------------------------------------------------------------------
# layers: step_weight_dtype


LAYERS = [("RNN", {}), ("GRU", {}), ("LSTM", {})]


def _layer_steps(layer, xs):
    """y_t of layer.step over xs, and the final state."""
    state, ys = None, []
    for x_t in xs:
        y, state = layer.step(x_t, state)
        ys.append(y)
    return np.stack(ys), state


@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("name,options", LAYERS)
def test_layer_step_with_float16_weights(name, options, B):
    """Two stacked layers: float16 steps give the bits of the same layer with its
    weights rounded to float16 values; the sequence call is not affected."""
    rng = np.random.default_rng(20)
    layer = getattr(fastcells, name)(6, 20, num_layers=2, seed=3, **options).eval()
    xs = rng.standard_normal((5, B, 6)).astype(np.float32)
    exact, _ = _layer_steps(layer, xs)
    assert layer.step_weight_dtype == "float32"
    layer.step_weight_dtype = "float16"
    got, got_state = _layer_steps(layer, xs)
    rounded = getattr(fastcells, name)(6, 20, num_layers=2, seed=3, **options).eval()
    rounded.load_state_dict({k: (v.astype(np.float16).astype(np.float32) if "weight" in k else v)
                             for k, v in layer.state_dict().items()})
    want, want_state = _layer_steps(rounded, xs)
    np.testing.assert_array_equal(got, want)
    for a, b in zip(np.atleast_1d(got_state), np.atleast_1d(want_state)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got, exact)              # the setting took effect
    # the sequence call keeps the float32 weights: it agrees with the float32 steps
    # (to float32 rounding where it multiplies unpacked, see test_stepper)
    assert_close(layer(xs)[0], exact, 1e-6)
    layer.step_weight_dtype = "float32"                  # and back
    np.testing.assert_array_equal(_layer_steps(layer, xs)[0], exact)


def test_layer_float16_steps_match_the_reference_backend():
    rng = np.random.default_rng(21)
    compiled = fastcells.LSTM(5, 12, seed=4).eval()
    oracle = fastcells.LSTM(5, 12, seed=4, backend=reference).eval()
    for layer in (compiled, oracle):
        layer.step_weight_dtype = np.float16
    xs = rng.standard_normal((6, 2, 5))
    got, _ = _layer_steps(compiled, xs.astype(np.float32))
    want, _ = _layer_steps(oracle, xs)
    assert_close(got, want, TOL)


def test_layer_step_weight_dtype_names_the_attribute():
    layer = fastcells.GRU(3, 4)
    with pytest.raises(ValueError, match="step_weight_dtype: expected 'float32' or 'float16'"):
        layer.step_weight_dtype = "int8"
    assert layer.step_weight_dtype == "float32"


def test_layer_overflow_names_the_parameter():
    for backend in (None, reference):
        layer = fastcells.LSTM(3, 4, num_layers=2, seed=5, backend=backend).eval()
        layer.parameters()["weight_hh_l1"][1, 2] = 1e5       # the live array
        layer.parameters_changed()
        layer.step_weight_dtype = "float16"
        with pytest.raises(ValueError, match=r"weight_hh_l1: expected magnitudes float16 holds "
                                             r"\(at most 65504\) for step_weight_dtype='float16'"):
            layer.step(np.zeros((1, 3), np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_layer_copies_and_pickles_after_a_step(dtype):
    """The prepared steppers are not state: copies rebuild them and step the same."""
    import copy
    import pickle
    rng = np.random.default_rng(22)
    layer = fastcells.GRU(4, 9, seed=6).eval()
    layer.step_weight_dtype = dtype
    xs = rng.standard_normal((3, 1, 4)).astype(np.float32)
    want, _ = _layer_steps(layer, xs)                # prepares the steppers
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.step_weight_dtype == dtype
        np.testing.assert_array_equal(_layer_steps(clone, xs)[0], want)


def test_a_layer_pickled_before_step_weight_dtype_steps_in_float32():
    layer = fastcells.RNN(3, 5, seed=7).eval()
    state = layer.__getstate__()
    state.pop("_step_dtype", None)                  # as pickled by fastcells before it existed
    old = fastcells.RNN.__new__(fastcells.RNN)
    old.__dict__.update(state)
    assert old.step_weight_dtype == "float32"
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(old.step(x)[0], layer.step(x)[0])


def test_reference_layer_rounds_once_and_again_after_a_change():
    """The reference backend keeps its rounded weights like a compiled stepper: reused
    from step to step, rebuilt after parameters_changed()."""
    layer = fastcells.GRU(3, 4, seed=8, backend=reference).eval()
    layer.step_weight_dtype = "float16"
    x = np.ones((1, 3))
    first = layer.step(x)[0]
    kept = layer._prepared(0)
    assert layer._prepared(0) is kept and layer.step(x)[0].tolist() == first.tolist()
    layer.parameters()["weight_ih_l0"][...] *= 2    # h starts at zero: W_hh would not show
    layer.parameters_changed()
    assert layer._prepared(0) is not kept
    assert not np.array_equal(layer.step(x)[0], first)
