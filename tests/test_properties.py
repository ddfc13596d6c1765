"""Property-based tests: every cell, forward and backward, against the float64 reference.

Hypothesis draws the shape (T 0..12, B 0..5, I 1..7, H 1..20), the options
(bias, initial state, lengths, reverse and the cell's own option, through
the cell variants of ``conftest.CELLS``) and the values (a seed and a scale,
from gates in their linear range to saturated ones).  The grids of
``test_kernels.py`` fix the shapes; this file looks between them.

CI runs a fixed, bounded set of examples (``derandomize=True``, the same
examples on every run, no deadline: a shared machine is noisy).
``FASTCELLS_LONG=1`` explores more.
"""
from __future__ import annotations

import os

import numpy as np
from conftest import (
    CELLS,
    FWD_TOL,
    GRAD_OF,
    GRAD_TOL,
    as_float64,
    assert_close,
    make_inputs,
    make_lengths,
    make_upstream,
    run_both,
    state_names,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcells
from fastcells import reference

#: examples per test: bounded for CI, more when asked for the record
MAX_EXAMPLES = 1000 if os.environ.get("FASTCELLS_LONG") else 50

# Registered here, not in conftest, and applied per test: loading a profile
# globally would change every other hypothesis test of the suite.
settings.register_profile(
    "fastcells-robust", derandomize=True, max_examples=MAX_EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow], database=None,
)
ROBUST = settings.get_profile("fastcells-robust")


@st.composite
def cases(draw):
    """One random problem: cell variant, shape, options, values."""
    return {
        "cell": draw(st.sampled_from(sorted(CELLS))),
        "T": draw(st.integers(0, 12)),
        "B": draw(st.integers(0, 5)),
        "I": draw(st.integers(1, 7)),
        "H": draw(st.integers(1, 20)),
        "bias": draw(st.booleans()),
        "initial_state": draw(st.booleans()),
        "with_lengths": draw(st.booleans()),
        "reverse": draw(st.booleans()),
        "scale": draw(st.sampled_from([0.1, 1.0, 4.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _problem(case):
    """(inputs, upstream gradients, lengths) of a drawn case, float32-exact values."""
    rng = np.random.default_rng(case["seed"])
    cell, T, B, I, H = (case[k] for k in ("cell", "T", "B", "I", "H"))
    inputs = make_inputs(cell, rng, T, B, I, H, bias=case["bias"],
                         initial_state=case["initial_state"])
    for k in ("x", "W_ih", "W_hh"):
        inputs[k] = (inputs[k] * np.float32(case["scale"])).astype(np.float32)
    lengths = make_lengths(rng, T, B) if case["with_lengths"] else None
    return inputs, make_upstream(cell, rng, T, B, H), lengths


@ROBUST
@given(cases())
def test_forward_and_backward_match_the_reference(case):
    cell = case["cell"]
    inputs, upstream, lengths = _problem(case)
    kwargs = dict(lengths=lengths, reverse=case["reverse"])
    out, grads = run_both(cell, inputs, upstream, **kwargs)
    ref_out, ref_grads = run_both(cell, as_float64(inputs), as_float64(upstream),
                                  module=reference, **kwargs)
    for name in ("y",) + state_names(cell):
        assert_close(getattr(out, name), getattr(ref_out, name), FWD_TOL, f"{case} {name}")
    for arg, name in GRAD_OF.items():
        if arg == "c0" and cell != "lstm":
            continue
        assert_close(getattr(grads, name), getattr(ref_grads, name), GRAD_TOL, f"{case} {name}")


@ROBUST
@given(cases())
def test_inference_equals_training_bitwise(case):
    """training=False runs the same arithmetic: same bits, and no cache."""
    cell = case["cell"]
    inputs, _, lengths = _problem(case)
    fwd = getattr(fastcells, f"{CELLS[cell].family}_forward")
    kwargs = dict(inputs, **CELLS[cell].options, lengths=lengths, reverse=case["reverse"])
    infer, train = fwd(**kwargs), fwd(**kwargs, training=True)
    assert infer.cache is None
    for name in ("y",) + state_names(cell):
        np.testing.assert_array_equal(getattr(infer, name), getattr(train, name), err_msg=name)
