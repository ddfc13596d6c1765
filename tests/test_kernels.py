"""The compiled kernels against the float64 NumPy reference, on every ISA path.

The conformance grid -- T in {0, 1, 2, 37}, B in {0, 1, 3, 16}, H in {1, 3,
17, 64} (empty work, single rows and steps, sizes off and on the vector
widths), I != H; with/without bias, initial state, lengths; forward/reverse --
times five cells times the ISA paths is too big to run in full, so it is covered in
two parts that together hold every axis value and every pair that matters:

- ``test_shape_grid``: every (T, B, H) with every option on (bias, h0/c0,
  lengths) -- the case with the most code paths -- the direction alternating
  so that every pair of axis values meets both directions;
- ``test_option_grid``: every combination of the options on a few shapes
  chosen to stress them (long with a full batch, short with a wide hidden
  size, single row with H = 1).

Both run every cell on every ISA path and check the forward results and all
the gradients (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh).  The float64
reference is computed once per case and shared by the ISA paths.

The other tests pin the contract around the numbers: inference equals
training, real-float dtypes and strided layouts are converted without
changing the result, the caller's arrays are never written, a cache is
reusable and independent of the caller's later writes, NaN/inf propagate,
outputs are fresh float32 arrays; and the packed GEMM and the activations of
``csrc`` on awkward sizes.
"""
import functools
import itertools

import numpy as np
import pytest
from conftest import (
    CELLS,
    FWD_TOL,
    GRAD_OF,
    GRAD_TOL,
    SEED,
    as_float64,
    assert_close,
    assert_same,
    backward,
    forward,
    is_lstm,
    make_inputs,
    make_lengths,
    make_upstream,
    max_error,
    run_both,
)

import fastcells
from fastcells import _kernels, reference

TS, BS, HS = (0, 1, 2, 37), (0, 1, 3, 16), (1, 3, 17, 64)
#: input size for each hidden size: never equal to H, smaller and larger
I_OF_H = {1: 4, 3: 1, 17: 24, 64: 33}
#: (T, B, H) of the option grid
OPTION_SHAPES = [(37, 16, 17), (2, 3, 64), (37, 1, 1)]
#: a middle-sized shape for the contract tests (lengths with 0 and T present)
T0, B0, I0, H0 = 7, 4, 5, 6


# ----------------------------------------------------------------------------
# the grid against the reference


@functools.cache
def reference_case(cell, T, B, H, bias, initial_state, with_lengths, reverse):
    """float32 inputs, options, upstream gradients and the float64 reference results."""
    flags = [int(f) for f in (bias, initial_state, with_lengths, reverse)]
    rng = np.random.default_rng([SEED, list(CELLS).index(cell), T, B, H, *flags])
    I = I_OF_H[H]
    inputs = make_inputs(cell, rng, T, B, I, H, bias=bias, initial_state=initial_state)
    options = {"reverse": reverse,
               "lengths": make_lengths(rng, T, B) if with_lengths else None}
    upstream = make_upstream(cell, rng, T, B, H)
    ref = run_both(cell, as_float64(inputs), as_float64(upstream), module=reference, **options)
    return inputs, options, upstream, ref


def check_against_reference(cell, *case):
    inputs, options, upstream, (ref_out, ref_grads) = reference_case(cell, *case)
    out, grads = run_both(cell, inputs, upstream, **options)
    assert out.cache is not None
    for name in ("y", "h", "c") if is_lstm(cell) else ("y", "h"):
        assert getattr(out, name).dtype == np.float32
        assert_close(getattr(out, name), getattr(ref_out, name), FWD_TOL, name)
    for arg, name in GRAD_OF.items():
        if arg in inputs:  # no dc0 outside LSTM
            g = getattr(grads, name)
            assert g is None or g.dtype == np.float32, name
            assert_close(g, getattr(ref_grads, name), GRAD_TOL, name)


#: every (T, B, H); the direction alternates like a checkerboard, so that every
#: value of each axis, and every pair of two of them, meets both directions
SHAPE_GRID = [(T, B, H, (i + j + k) % 2 == 1) for (i, T), (j, B), (k, H)
              in itertools.product(enumerate(TS), enumerate(BS), enumerate(HS))]


@pytest.mark.parametrize("T, B, H, reverse", SHAPE_GRID,
                         ids=["T{}-B{}-H{}-{}".format(*s[:3], "rev" if s[3] else "fwd")
                              for s in SHAPE_GRID])
@pytest.mark.parametrize("cell", list(CELLS))
def test_shape_grid(cell, T, B, H, reverse, isa):
    check_against_reference(cell, T, B, H, True, True, True, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("initial_state", [False, True], ids=["no-h0", "h0"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("shape", OPTION_SHAPES, ids=lambda s: "T{}-B{}-H{}".format(*s))
@pytest.mark.parametrize("cell", list(CELLS))
def test_option_grid(cell, shape, bias, initial_state, with_lengths, reverse, isa):
    check_against_reference(cell, *shape, bias, initial_state, with_lengths, reverse)


@pytest.mark.parametrize("missing", ["dy", "dh", "dc", "all"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_missing_upstream_gradients_count_as_zeros(cell, missing, rng):
    if missing == "dc" and not is_lstm(cell):
        pytest.skip("only LSTM has dc")
    inputs = make_inputs(cell, rng, T0, B0, I0, H0)
    lengths = make_lengths(rng, T0, B0)
    upstream = make_upstream(cell, rng, T0, B0, H0)
    upstream = {} if missing == "all" else {k: v for k, v in upstream.items() if k != missing}
    _, grads = run_both(cell, inputs, upstream, lengths=lengths)
    _, ref = run_both(cell, as_float64(inputs), as_float64(upstream), module=reference,
                      lengths=lengths)
    for name in ref._fields:
        assert_close(getattr(grads, name), getattr(ref, name), GRAD_TOL, name)


# ----------------------------------------------------------------------------
# the contract around the numbers


def contract_case(cell, rng, dtype=np.float32):
    """Inputs (with every argument given), lengths and upstream gradients of one cell."""
    inputs = make_inputs(cell, rng, T0, B0, I0, H0, dtype=dtype)
    return inputs, make_lengths(rng, T0, B0), make_upstream(cell, rng, T0, B0, H0, dtype)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_inference_equals_training_and_keeps_no_cache(cell, reverse, isa, rng):
    inputs, lengths, _ = contract_case(cell, rng)
    train = forward(fastcells, cell, inputs, lengths=lengths, reverse=reverse, training=True)
    infer = forward(fastcells, cell, inputs, lengths=lengths, reverse=reverse, training=False)
    default = forward(fastcells, cell, inputs, lengths=lengths, reverse=reverse)
    assert infer.cache is None and default.cache is None
    assert_same(infer, train)
    assert_same(default, train)


def _strided(a):
    """Same values, every other element of a twice-as-long last axis."""
    wide = np.repeat(a[..., None], 2, axis=-1).reshape(a.shape[:-1] + (2 * a.shape[-1],))
    view = wide[..., ::2]
    assert not view.flags.c_contiguous or view.size <= 1
    return view


#: conversions that must not change any result (applied to every array argument)
VARIANTS = {
    "float64": lambda a: a.astype(np.float64),
    "float16": lambda a: a.astype(np.float16),
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder("S")),
    "fortran": np.asfortranarray,
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "strided": _strided,
    "negative-strides": lambda a: np.flip(np.flip(a).copy()),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_dtypes_and_layouts_give_the_contiguous_float32_results(cell, variant, rng):
    inputs, lengths, upstream = contract_case(cell, rng)
    # float16-representable values, so that every variant holds the same numbers
    round16 = lambda d: {k: v.astype(np.float16).astype(np.float32) for k, v in d.items()  # noqa: E731
                         if v is not None}
    inputs, upstream = round16(inputs), round16(upstream)
    change = VARIANTS[variant]
    odd_inputs = {k: change(v) for k, v in inputs.items()}
    odd_upstream = {k: change(v) for k, v in upstream.items()}
    odd_lengths = lengths.astype(np.int32)   # lengths are integers: only layouts apply
    if not variant.startswith("float"):
        odd_lengths = change(odd_lengths)
    for reverse in (False, True):
        expected = run_both(cell, inputs, upstream, lengths=lengths, reverse=reverse)
        got = run_both(cell, odd_inputs, odd_upstream, lengths=odd_lengths, reverse=reverse)
        for e, g in zip(expected, got):
            assert_same(g, e, f"{variant}: ")
            for name in e._fields:
                value = getattr(g, name)
                if isinstance(value, np.ndarray):
                    assert value.dtype == np.float32, name


def _snapshot(arrays: dict) -> dict:
    return {k: (v.copy(), v.flags.writeable) for k, v in arrays.items() if v is not None}


def _assert_unchanged(arrays: dict, snapshot: dict) -> None:
    for k, (before, writeable) in snapshot.items():
        np.testing.assert_array_equal(arrays[k], before, err_msg=f"{k} was modified")
        assert arrays[k].flags.writeable == writeable, f"{k}: writeable flag changed"


@pytest.mark.parametrize("module", [fastcells, reference], ids=["fastcells", "reference"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_callers_arrays_are_never_modified(cell, module, rng):
    inputs, lengths, upstream = contract_case(cell, rng)
    args = {**inputs, "lengths": lengths, **upstream}
    snapshot = _snapshot(args)
    for reverse in (False, True):
        for lens in (lengths, None):
            forward(module, cell, inputs, lengths=lens, reverse=reverse)
            run_both(cell, inputs, upstream, module=module, lengths=lens, reverse=reverse)
            _assert_unchanged(args, snapshot)


def _arrays_of(result) -> dict:
    return {n: v for n, v in zip(result._fields, result) if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("cell", list(CELLS))
def test_outputs_are_fresh_float32_arrays(cell, rng):
    inputs, lengths, upstream = contract_case(cell, rng)
    out, grads = run_both(cell, inputs, upstream, lengths=lengths)
    outputs = {**_arrays_of(out), **_arrays_of(grads)}
    others = {**{k: v for k, v in inputs.items() if v is not None}, **upstream,
              "lengths": lengths, **{f"cache.{k}": v for k, v in out.cache.arrays.items()
                                     if isinstance(v, np.ndarray)}}
    for name, value in outputs.items():
        assert value.dtype == np.float32, name
        assert value.flags.writeable and value.flags.c_contiguous, name
        for other_name, other in {**others, **outputs}.items():
            if other_name != name:
                assert not np.shares_memory(value, other), f"{name} shares memory with {other_name}"
    # the empty-work path returns the initial state: as a copy
    empty = forward(fastcells, cell, {**inputs, "x": inputs["x"][:0]}, training=True)
    for name in ("h", "c") if is_lstm(cell) else ("h",):
        np.testing.assert_array_equal(getattr(empty, name), inputs[f"{name}0"])
        assert not np.shares_memory(getattr(empty, name), inputs[f"{name}0"])
    g = backward(fastcells, cell, empty.cache, {k: v for k, v in upstream.items() if k != "dy"})
    assert not np.shares_memory(g.dh0, upstream["dh"])


@pytest.mark.parametrize("cell", list(CELLS))
def test_cache_is_reusable_and_unaffected_by_writes_to_outputs(cell, rng):
    inputs, lengths, upstream = contract_case(cell, rng)
    other = make_upstream(cell, rng, T0, B0, H0)
    out, first = run_both(cell, inputs, upstream, lengths=lengths, reverse=True)
    for value in _arrays_of(out).values():
        value[...] = 123.0   # the caller owns the outputs
    for value in _arrays_of(first).values():
        value[...] = -5.0
    backward(fastcells, cell, out.cache, other)
    again = backward(fastcells, cell, out.cache, upstream)
    fresh = run_both(cell, inputs, upstream, lengths=lengths, reverse=True)[1]
    assert_same(again, fresh)


@pytest.mark.parametrize("cell", list(CELLS))
def test_writing_inputs_after_forward_does_not_change_backward(cell, rng):
    inputs, lengths, upstream = contract_case(cell, rng)
    pristine = {k: None if v is None else v.copy() for k, v in inputs.items()}
    expected = run_both(cell, pristine, upstream, lengths=lengths.copy())[1]
    out = forward(fastcells, cell, inputs, lengths=lengths, training=True)
    for value in inputs.values():
        value[...] = 0.5
    lengths[...] = 0
    assert_same(backward(fastcells, cell, out.cache, upstream), expected)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_and_inf_propagate_like_the_reference(cell, isa, rng):
    inputs, _, upstream = contract_case(cell, rng)
    lengths = np.array([T0, 5, 4, 0])
    inputs["x"][1, 0, 2] = np.nan
    inputs["x"][3, 1, 0] = np.inf
    inputs["x"][2, 2, 1] = -np.inf
    inputs["h0"][0, 1] = np.nan
    # only in rows that run: at steps past a row's length the reference still
    # computes (and masks) the step, so a NaN state there would leak into its dx
    out, grads = run_both(cell, inputs, upstream, lengths=lengths)
    ref_out, ref_grads = run_both(cell, as_float64(inputs), as_float64(upstream),
                                  module=reference, lengths=lengths)
    for name in ref_out._fields[:-1]:
        assert np.isnan(getattr(out, name)).any() or name == "c", name
        assert_close(getattr(out, name), getattr(ref_out, name), FWD_TOL, name)
    for name in ref_grads._fields:
        assert_close(getattr(grads, name), getattr(ref_grads, name), GRAD_TOL, name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_padding_past_lengths_never_reaches_the_gradients(cell, reverse, isa, rng):
    # inf/NaN in the padding of shorter sequences: the forward never reads it, and
    # backward must give the gradients of zero padding, bit for bit (dW_ih sums
    # dG^T x over every step, where 0 * inf would be NaN)
    inputs, _, upstream = contract_case(cell, rng)
    lengths = np.array([3, 1, 0, T0])        # the last row has no padding
    padded = {k: v.copy() for k, v in inputs.items()}
    for b, n in enumerate(lengths):
        inputs["x"][n:, b] = 0.0
        padded["x"][n:, b] = [np.nan, np.inf, -np.inf, 0.0][b]
    want = run_both(cell, inputs, upstream, lengths=lengths, reverse=reverse)
    got = run_both(cell, padded, upstream, lengths=lengths, reverse=reverse)
    for w, g in zip(want, got):
        assert_same(g, w)
    # the reference too (it computes the padded steps, masked): finite, and
    # the same gradients within tolerance
    ref = run_both(cell, as_float64(padded), as_float64(upstream), module=reference,
                   lengths=lengths, reverse=reverse)[1]
    for name in ref._fields:
        value = getattr(ref, name)
        if value is not None:
            assert np.isfinite(value).all(), name
            assert_close(getattr(got[1], name), value, GRAD_TOL, name)


# ----------------------------------------------------------------------------
# csrc: the packed GEMM and the activations


@pytest.mark.parametrize("transpose", [True, False], ids=["A@W.T", "A@W"])
def test_packed_gemm_matches_numpy_on_awkward_sizes(transpose, isa, rng):
    for m, n, k in itertools.product(range(1, 10), (1, 7, 15, 17, 33, 50), (0, 1, 5, 64)):
        A = rng.standard_normal((m, k)).astype(np.float32)
        W = rng.standard_normal((n, k) if transpose else (k, n)).astype(np.float32)
        before = W.copy()
        P = _kernels.pack(W, transpose)
        C = np.full((m, n), np.nan, np.float32)   # gemm must overwrite, not accumulate
        _kernels.gemm(A, P, n, C)
        expected = A.astype(np.float64) @ (W.T if transpose else W).astype(np.float64)
        assert_close(C, expected, FWD_TOL, f"m={m} n={n} k={k}")
        np.testing.assert_array_equal(W, before)


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e-8, 9.0, -9.0,
                    20.0, -20.0, 88.0, -88.0, 89.0, -104.0, 1e30, -1e30], np.float32)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activations_match_numpy_on_every_length_and_special_values(name, isa, rng):
    kernel = {"sigmoid": _kernels.sigmoid_, "tanh": _kernels.tanh_}[name]
    exact = {"sigmoid": lambda v: 0.5 * (1 + np.tanh(0.5 * v)), "tanh": np.tanh}[name]
    values = [SPECIAL] + [(rng.standard_normal(n) * 4).astype(np.float32) for n in range(41)]
    for v in values:
        got = v.copy()
        kernel(got)
        want = exact(v.astype(np.float64))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{v}")
        # a few float32 ulps (2**-24 relative), and never outside the function's range
        assert max_error(got, want) <= 8 * 2.0 ** -24, f"{name}({v}) = {got}, want {want}"
        low = 0.0 if name == "sigmoid" else -1.0
        finite = ~np.isnan(got)
        assert np.all((got[finite] >= low) & (got[finite] <= 1.0)), name


def test_the_loops_refuse_kept_arrays_that_miss_steps():
    # gates/cs/hn cover every step, and gates may be the projection's own buffer
    # only when that buffer is one chunk of all T steps (else rows would be
    # overwritten before they are read, or past its end)
    T, B, H = 4, 2, 3
    f32 = lambda *s: np.zeros(s, np.float32)   # noqa: E731
    wp = _kernels.pack(f32(4 * H, H), True)
    gx = f32(T, B, 4 * H)

    def lstm(t0, gx, gates, cs):
        _kernels.lstm_forward(t0, gx, wp, _kernels.PACK_FLOAT, None, f32(B, H), f32(B, H),
                              f32(T, B, H), None, False, gates, cs, f32(B, 4 * H))
    lstm(0, gx, gx, f32(T, B, H))                       # one chunk: allowed
    with pytest.raises(ValueError, match=r"gates: may be gx's buffer only for one chunk "
                                         r"of all 4 steps, got steps \[1, 3\)"):
        lstm(1, gx[:2], gx, f32(T, B, H))             # a chunk's rows would be wrong
    with pytest.raises(ValueError, match=r"gates: expected shape \(T, B, G\*H\) = "
                                         r"\(4, 2, 12\), got \(2, 2, 12\)"):
        lstm(0, gx, f32(2, B, 4 * H), f32(T, B, H))
    with pytest.raises(ValueError, match=r"cs: expected shape \(T, B, H\) = \(4, 2, 3\)"):
        lstm(0, gx, gx, f32(T - 1, B, H))
    gxg = f32(T, B, 3 * H)
    with pytest.raises(ValueError, match=r"hn: expected shape \(T, B, H\) = \(4, 2, 3\)"):
        _kernels.gru_forward(0, gxg, _kernels.pack(f32(3 * H, H), True), None,
                             _kernels.PACK_FLOAT, f32(H), f32(B, H), f32(T, B, H), None, False,
                             True, gxg, f32(1, B, H), f32(B, 3 * H), f32(B, H), f32(B, H))
