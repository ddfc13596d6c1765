"""Hostile input: each case gives the right result or a clear exception, never a
crash, a hang or a wrong answer in silence.

The cases, and what each gets:

- sizes whose buffers cannot exist (products beyond 64 bits): ``ValueError``
  naming ``x``, before any allocation; beyond the address space:
  ``MemoryError`` at once (no attempt to fill memory);
- ``lengths`` at the integer limits (int64 max, uint64 max, int32 min):
  ``ValueError`` naming ``lengths``;
- huge ``T`` with tiny ``B`` (T = 100000, B = 1, H = 1): correct, and the
  same bits as running the sequence in two halves;
- zero-size dimensions (``T``, ``B`` or ``I`` zero, alone or together):
  correct empty results and gradients;
- read-only inputs and upstream gradients: accepted, same results;
- arguments that alias each other (``h0`` a view of ``x``, ``c0 is h0``,
  ``W_hh`` and ``W_ih`` views of one buffer, ``b_hh is b_ih``, ``dy`` the
  forward's own ``y``, ``dh`` its ``h``): same results as distinct copies;
- byte-swapped ``>f4``/``>f8`` everywhere, upstream gradients included:
  same results as native float32;
- NaN/inf in one batch row: stays in that row's outputs;
- subnormal states and inputs: not flushed to zero (matches the reference),
  and the caller's floating-point mode is left as it was;
- a cache used for several backward passes, interleaved with other calls:
  the same bits each time;
- a cache changed between forward and backward: its arrays are read-only,
  replacing an entry or an attribute raises, a copied or pickled cache gives
  the same gradients (deliberately re-enabling ``flags.writeable`` on a
  cache array is the one thing not detected: documented as unsupported);
- non-bool flags (``1``, ``"yes"``, ``None``, 1-element arrays): ``TypeError``;
  NumPy booleans are accepted; an unknown ``nonlinearity``: ``ValueError``;
- masked arrays (whose mask NumPy would drop): ``TypeError``; 0-d arrays:
  ``ValueError`` that says 0-D.
"""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from conftest import (
    CELLS,
    FWD_TOL,
    GRAD_TOL,
    as_float64,
    assert_close,
    assert_same,
    backward,
    forward,
    is_lstm,
    make_inputs,
    make_upstream,
    run_both,
    state_names,
)

import fastcells
from fastcells import reference

#: a small problem, enough to exercise every code path
T, B, I, H = 5, 3, 4, 4     # I == H so that h0 can be a view of x
#: a long sequence: 100,000 steps, where an error that grows with T would show
LONG_T = 100_000
#: smallest positive normal float32; values below it are subnormal
TINY = np.finfo(np.float32).tiny


def _same_results(cell, inputs, upstream, other_inputs, other_upstream, **kwargs):
    """Forward and backward with both argument sets give the same bits."""
    out, grads = run_both(cell, inputs, upstream, **kwargs)
    out2, grads2 = run_both(cell, other_inputs, other_upstream, **kwargs)
    assert_same(out2, out, "forward ")
    assert_same(grads2, grads, "backward ")


# ----------------------------------------------------------------------------
# sizes


@pytest.mark.parametrize("cell", CELLS)
def test_sizes_beyond_64_bits_raise_before_allocating(cell):
    # I = 0 makes x itself empty, so only the (T, B, G*H) buffers are huge
    x = np.empty((2**40, 2**20, 0), np.float32)
    G = CELLS[cell].gates
    with pytest.raises(ValueError, match=r"^x: .*address space"):
        forward(fastcells, cell, {"x": x, "W_ih": np.zeros((G * 3, 0), np.float32),
                                  "W_hh": np.zeros((G * 3, 3), np.float32)})


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_sizes_beyond_the_address_space_fail_at_once(cell, training):
    # 2**44 steps * G*H floats is over 2**47 bytes, more than x86-64/aarch64
    # user space maps: the allocation fails whatever the overcommit policy
    x = np.empty((2**44, 1, 0), np.float32)
    G = CELLS[cell].gates
    with pytest.raises(MemoryError):
        forward(fastcells, cell, {"x": x, "W_ih": np.zeros((G * 3, 0), np.float32),
                                  "W_hh": np.zeros((G * 3, 3), np.float32)}, training=training)


@pytest.mark.parametrize("lengths", [
    np.array([2**63 - 1, 1, 1]), np.array([2**64 - 1, 1, 1], np.uint64),
    np.array([-2**31, 1, 1], np.int32), np.array([-1, 1, 1], np.int8)],
    ids=["int64-max", "uint64-max", "int32-min", "int8-neg"])
def test_lengths_at_integer_limits_are_rejected(lengths, rng):
    inputs = make_inputs("gru-lbr", rng, T, B, I, H)
    with pytest.raises(ValueError, match=r"^lengths: expected values in \[0, T\]"):
        forward(fastcells, "gru-lbr", inputs, lengths=lengths)


@pytest.mark.parametrize("cell", CELLS)
def test_huge_T_tiny_B(cell, rng):
    """T = 100000, B = 1, H = 1: the same bits as two halves chained, and the
    first steps match the reference (which is too slow for all of them)."""
    inputs = make_inputs(cell, rng, LONG_T, 1, 1, 1)
    out = forward(fastcells, cell, inputs)
    assert np.isfinite(out.y).all()
    half = LONG_T // 2
    first = forward(fastcells, cell, dict(inputs, x=inputs["x"][:half]))
    state = {f"{s}0": getattr(first, s) for s in state_names(cell)}
    second = forward(fastcells, cell, dict(inputs, x=inputs["x"][half:], **state))
    np.testing.assert_array_equal(np.concatenate([first.y, second.y]), out.y)
    for s in state_names(cell):
        np.testing.assert_array_equal(getattr(second, s), getattr(out, s))
    head = dict(inputs, x=inputs["x"][:500])
    assert_close(out.y[:500], forward(reference, cell, as_float64(head)).y, FWD_TOL, "y")
    # backward over the whole sequence runs and stays finite
    grads = backward(fastcells, cell, forward(fastcells, cell, inputs, training=True).cache,
                     {"dy": np.ones_like(out.y)})
    assert all(np.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("shape", [(0, 3, 4), (5, 0, 4), (5, 3, 0), (0, 0, 0), (0, 3, 0)],
                         ids=lambda s: "TBI=" + "x".join(map(str, s)))
@pytest.mark.parametrize("cell", CELLS)
def test_zero_size_dimensions(cell, shape, rng):
    t, b, i = shape
    inputs = make_inputs(cell, rng, t, b, i, H)
    upstream = make_upstream(cell, rng, t, b, H)
    out, grads = run_both(cell, inputs, upstream)
    ref_out, ref_grads = run_both(cell, as_float64(inputs), as_float64(upstream),
                                  module=reference)
    for name in ("y",) + state_names(cell):
        assert_close(getattr(out, name), getattr(ref_out, name), FWD_TOL, name)
    for name in grads._fields:
        assert_close(getattr(grads, name), getattr(ref_grads, name), GRAD_TOL, name)


# ----------------------------------------------------------------------------
# memory layout: read-only, aliasing, byte order


def _readonly(arrays):
    out = {}
    for k, v in arrays.items():
        if v is not None:
            v = v.copy()
            v.flags.writeable = False
        out[k] = v
    return out


@pytest.mark.parametrize("cell", CELLS)
def test_read_only_arguments(cell, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    upstream = make_upstream(cell, rng, T, B, H)
    _same_results(cell, inputs, upstream, _readonly(inputs), _readonly(upstream),
                  lengths=np.array([5, 0, 2]))


@pytest.mark.parametrize("cell", CELLS)
def test_aliased_arguments(cell, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    G = CELLS[cell].gates
    # one buffer behind several arguments
    x = inputs["x"]
    weights = rng.standard_normal((2, G * H, H)).astype(np.float32) * 0.3
    bias = inputs["b_ih"]
    aliased = dict(inputs, h0=x[0], W_ih=weights[0], W_hh=weights[1], b_hh=bias)
    if is_lstm(cell):
        aliased["c0"] = aliased["h0"]
    distinct = {k: None if v is None else np.array(v) for k, v in aliased.items()}
    out = forward(fastcells, cell, aliased, training=True)
    ref = forward(fastcells, cell, distinct, training=True)
    assert_same(out, ref, "forward ")
    # dy is the forward's own output, dh (and dc) its final state
    up = {"dy": out.y, "dh": out.h}
    if is_lstm(cell):
        up["dc"] = out.h
    up_copy = {k: v.copy() for k, v in up.items()}
    assert_same(backward(fastcells, cell, out.cache, up),
                backward(fastcells, cell, ref.cache, up_copy), "backward ")
    for k in up:   # the aliased upstream gradients were only read
        np.testing.assert_array_equal(up[k], up_copy[k], err_msg=k)
    np.testing.assert_array_equal(x, distinct["x"])


@pytest.mark.parametrize("order", [">f4", ">f8"])
@pytest.mark.parametrize("cell", CELLS)
def test_byte_swapped_arguments_and_gradients(cell, order, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    upstream = make_upstream(cell, rng, T, B, H)
    swap = lambda d: {k: None if v is None else v.astype(order) for k, v in d.items()}  # noqa: E731
    _same_results(cell, inputs, upstream, swap(inputs), swap(upstream), reverse=True)


# ----------------------------------------------------------------------------
# special values


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's, on the NaN itself
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cell", CELLS)
def test_non_finite_input_stays_in_its_row(cell, bad, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    poisoned = dict(inputs, x=inputs["x"].copy())
    poisoned["x"][2, 0, 1] = bad
    out = forward(fastcells, cell, poisoned)
    clean = forward(fastcells, cell, inputs)
    # rows are independent: the other rows are exactly the clean run's
    np.testing.assert_array_equal(out.y[:, 1:], clean.y[:, 1:])
    np.testing.assert_array_equal(out.y[:2, 0], clean.y[:2, 0])
    ref = forward(reference, cell, as_float64(poisoned))
    assert_close(out.y, ref.y, FWD_TOL, "y")


@pytest.mark.parametrize("cell", CELLS)
def test_subnormals_inside_the_loop_count_as_zero(cell, rng):
    """The time loops run with flush-to-zero (FTZ and DAZ, restored on exit: see
    csrc/fpenv.h), so that a state decaying through the subnormal range cannot
    slow them down.  The documented cost: a subnormal state (here h0, c0) reads
    as zero inside the loop, even against a huge weight.  The input projection
    runs outside the loop (NumPy), so a subnormal input still counts."""
    G = CELLS[cell].gates
    x = np.zeros((2, 1, 1), np.float32)
    x[0, 0, 0] = TINY / 4                       # subnormal input
    inputs = {"x": x, "W_ih": np.full((G, 1), 2.0**100, np.float32),
              "W_hh": np.full((G, 1), 2.0**100, np.float32),
              "h0": np.full((1, 1), TINY / 8, np.float32)}  # subnormal state
    if is_lstm(cell):
        inputs["c0"] = np.full((1, 1), TINY / 16, np.float32)
    out = forward(fastcells, cell, inputs)
    flushed = {**inputs, **{k: np.zeros_like(v) for k, v in inputs.items() if k in ("h0", "c0")}}
    ref = forward(reference, cell, as_float64(flushed))
    assert_close(out.y, ref.y, FWD_TOL, "y")
    assert out.y[0, 0, 0] != 0                  # the subnormal input was not lost
    # the caller's floating-point mode is untouched: subnormals still exist
    assert np.float32(TINY) / np.float32(4) > 0


# ----------------------------------------------------------------------------
# the cache


@pytest.mark.parametrize("cell", CELLS)
def test_cache_reused_interleaved_with_other_calls(cell, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    up1, up2 = make_upstream(cell, rng, T, B, H), make_upstream(cell, rng, T, B, H)
    cache = forward(fastcells, cell, inputs, training=True).cache
    first = backward(fastcells, cell, cache, up1)
    other = forward(fastcells, cell, make_inputs(cell, rng, T, B, I, H), training=True)
    backward(fastcells, cell, other.cache, up2)
    backward(fastcells, cell, cache, up2)
    assert_same(backward(fastcells, cell, cache, up1), first, "second use ")


@pytest.mark.parametrize("module", [fastcells, reference], ids=["fastcells", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_cache_cannot_be_changed_between_forward_and_backward(cell, module, rng):
    inputs = make_inputs(cell, rng, T, B, I, H)
    upstream = make_upstream(cell, rng, T, B, H)
    cache = forward(module, cell, inputs, training=True).cache
    expected = backward(module, cell, cache, upstream)
    for value in cache.arrays.values():
        if isinstance(value, np.ndarray):
            with pytest.raises(ValueError, match="read-only"):
                value[...] = 0
    with pytest.raises(TypeError):
        cache.arrays["x"] = np.zeros((1, 1, 1), np.float32)
    with pytest.raises(TypeError):
        cache.options["reverse"] = True
    with pytest.raises(AttributeError, match="read-only"):
        cache.arrays = {}
    with pytest.raises(AttributeError, match="read-only"):
        cache.cell = "lstm" if cell != "lstm" else "gru"
    assert_same(backward(module, cell, cache, upstream), expected, "after attempts ")
    for clone in (copy.copy(cache), copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert_same(backward(module, cell, clone, upstream), expected, "clone ")


# ----------------------------------------------------------------------------
# flags and odd containers


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.array([True]), 1.0])
@pytest.mark.parametrize("flag", ["reverse", "training"])
def test_non_bool_flags_are_rejected(flag, value, rng):
    inputs = make_inputs("lstm", rng, T, B, I, H)
    with pytest.raises(TypeError, match=f"^{flag}: expected True or False"):
        forward(fastcells, "lstm", inputs, **{flag: value})


def test_numpy_bools_are_flags(rng):
    inputs = make_inputs("gru-lbr", rng, T, B, I, H)
    a = fastcells.gru_forward(**inputs, linear_before_reset=np.False_, reverse=np.True_)
    b = fastcells.gru_forward(**inputs, linear_before_reset=False, reverse=True)
    assert_same(a, b)
    with pytest.raises(TypeError, match="^linear_before_reset: expected True or False"):
        fastcells.gru_forward(**inputs, linear_before_reset=1)


@pytest.mark.parametrize("value", ["TANH", "sigmoid", None, ""])
def test_unknown_nonlinearity(value, rng):
    inputs = make_inputs("rnn-tanh", rng, T, B, I, H)
    with pytest.raises(ValueError, match="^nonlinearity: expected one of"):
        fastcells.rnn_forward(**inputs, nonlinearity=value)


@pytest.mark.parametrize("arg", ["x", "W_hh", "h0"])
def test_masked_arrays_are_rejected(arg, rng):
    inputs = make_inputs("rnn-tanh", rng, T, B, I, H)
    inputs[arg] = np.ma.masked_less(inputs[arg], 0)
    with pytest.raises(TypeError, match=f"^{arg}: .*masked array"):
        forward(fastcells, "rnn-tanh", inputs)


def test_zero_d_input_is_named_as_such(rng):
    inputs = make_inputs("rnn-tanh", rng, T, B, I, H)
    with pytest.raises(ValueError, match=r"^x: expected a 3-D array .* got 0-D"):
        forward(fastcells, "rnn-tanh", dict(inputs, x=np.float32(1.0)))
