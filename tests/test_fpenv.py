"""Flush-to-zero inside the time loops (csrc/fpenv.h), and only there.

The kernels switch FTZ/DAZ on for their loop and restore the caller's mode
on exit: Python and NumPy must keep IEEE gradual underflow after any call,
and kernels fed subnormal values (or whose state decays through the
subnormal range) must still match the float64 reference, since flushing a
value below 2^-126 changes nothing at float32 tolerances.
"""
import numpy as np
import pytest

import fastcells
from fastcells import _kernels, reference

#: kernel (float32) vs reference (float64)
ATOL = 2e-5
RTOL = 1e-4
TINY = np.finfo(np.float32).tiny
SUBNORMAL = np.float32(TINY / 1024)

T, B, I, H = 12, 3, 5, 8

# name -> (fastcells forward, reference forward, backward pair, gate count, options)
CELLS = {
    "rnn": (fastcells.rnn_forward, reference.rnn_forward,
            (fastcells.rnn_backward, reference.rnn_backward), 1, {}),
    "gru": (fastcells.gru_forward, reference.gru_forward,
            (fastcells.gru_backward, reference.gru_backward), 3, {}),
    "gru-cho": (fastcells.gru_forward, reference.gru_forward,
                (fastcells.gru_backward, reference.gru_backward), 3,
                {"linear_before_reset": False}),
    "lstm": (fastcells.lstm_forward, reference.lstm_forward,
             (fastcells.lstm_backward, reference.lstm_backward), 4, {}),
}


def assert_ieee_underflow_in_python():
    """Gradual underflow (no FTZ) and subnormal operands honoured (no DAZ), here."""
    tiny = np.float32(TINY)
    half = np.float32(0.5)
    assert tiny * half != 0, "FTZ left on: a subnormal product flushed to zero"
    assert SUBNORMAL + np.float32(0) == SUBNORMAL, "DAZ left on: a subnormal operand read as 0"
    assert np.array([SUBNORMAL], np.float32).sum() == SUBNORMAL
    assert 5e-324 * 1.0 != 0 and 2.2250738585072014e-308 / 4 != 0  # Python floats too


def inputs(cell, rng, subnormal=True):
    G = CELLS[cell][3]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    if subnormal:
        # subnormal inputs in every position of a few steps
        x[::3] = SUBNORMAL * rng.integers(-1000, 1000, (len(x[::3]), B, I))
    args = dict(x=x, W_ih=(0.5 * rng.standard_normal((G * H, I))).astype(np.float32),
                W_hh=(0.5 * rng.standard_normal((G * H, H))).astype(np.float32),
                b_ih=(0.1 * rng.standard_normal(G * H)).astype(np.float32),
                b_hh=(0.1 * rng.standard_normal(G * H)).astype(np.float32),
                h0=np.full((B, H), SUBNORMAL, np.float32))
    if cell == "lstm":
        args["c0"] = np.full((B, H), -SUBNORMAL, np.float32)
    return args


def f64(args):
    return {k: v.astype(np.float64) for k, v in args.items()}


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_restore_the_callers_fp_mode(isa, cell):
    fwd, _, (bwd, _), _, options = CELLS[cell]
    assert_ieee_underflow_in_python()
    out = fwd(**inputs(cell, np.random.default_rng(1)), **options, training=True)
    assert_ieee_underflow_in_python()
    bwd(out.cache, dy=np.ones_like(out.y))
    assert_ieee_underflow_in_python()


def test_flush_to_zero_is_on_inside_only():
    x = np.array([SUBNORMAL, -SUBNORMAL], np.float32)
    inside = x.copy()
    _kernels.tanh_(inside, True)
    assert (inside == 0).all()  # DAZ: subnormal operands read as zero in the kernel
    outside = x.copy()
    _kernels.tanh_(outside, False)
    np.testing.assert_array_equal(outside, x)
    assert_ieee_underflow_in_python()


@pytest.mark.parametrize("cell", CELLS)
def test_subnormal_inputs_match_reference(isa, cell):
    fwd, ref_fwd, (bwd, ref_bwd), _, options = CELLS[cell]
    args = inputs(cell, np.random.default_rng(2))
    out = fwd(**args, **options, training=True)
    ref = ref_fwd(**f64(args), **options, training=True)
    for got, want in zip(out[:-1], ref[:-1]):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    dy = np.random.default_rng(3).standard_normal(out.y.shape).astype(np.float32)
    dy[1::4] = SUBNORMAL
    grads = bwd(out.cache, dy=dy)
    ref_grads = ref_bwd(ref.cache, dy=dy.astype(np.float64))
    for name, got, want in zip(grads._fields, grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_state_decaying_through_subnormals(isa):
    """relu RNN with h' = h / 4: the state passes 2^-126 and is flushed, not slowed."""
    steps = 80
    x = np.zeros((steps, 1, 1), np.float32)
    h0 = np.array([[1e-30]], np.float32)
    W = np.array([[0.25]], np.float32)
    out = fastcells.rnn_forward(x, W, W, h0=h0, nonlinearity="relu")
    ref = reference.rnn_forward(x.astype(np.float64), W.astype(np.float64),
                                W.astype(np.float64), h0=h0.astype(np.float64),
                                nonlinearity="relu")
    np.testing.assert_allclose(out.y, ref.y, rtol=RTOL, atol=TINY)
    y = out.y.ravel()
    assert not ((y != 0) & (np.abs(y) < TINY)).any(), "subnormal state: FTZ not applied"
    assert y[-1] == 0
    assert_ieee_underflow_in_python()
