"""The unpacked product of csrc/ (``_kernels.gemm_nt``: ``C = A @ W.T``, W as it is)
on every ISA path, and the forward paths that use it.

Sizes hit every branch: batch 1 (its wider tiles) and every remainder of the
row tiles (m up to 9), column counts off the tile width (n), depths that are
empty, shorter than a register, and not a multiple of one (k).
"""
import numpy as np
import pytest
from conftest import CELLS, FWD_TOL, as_float64, assert_close, forward, make_inputs

import fastcells
from fastcells import _kernels, _packing

#: as tests/test_gemm.py: k * max|A| * max|W| * eps(float32) units
ERR_UNITS = 2.0
EPS32 = float(np.finfo(np.float32).eps)
GUARD = 64
SENTINEL = np.float32(-7.25e33)


def guarded_nt(A, W):
    """``gemm_nt`` into a NaN-filled view of a sentinel-guarded buffer: (C, buffer)."""
    m, n = A.shape[0], W.shape[0]
    buf = np.full(m * n + 2 * GUARD, SENTINEL, np.float32)
    buf[GUARD:GUARD + m * n] = np.nan
    C = buf[GUARD:GUARD + m * n].reshape(m, n)
    _kernels.gemm_nt(A, W, C)
    return C, buf


@pytest.mark.parametrize("k", [0, 1, 5, 16, 17, 64, 100, 257])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 8, 9, 33])
def test_gemm_nt_matches_float64_matmul(n, k, isa, rng):
    for m in range(1, 10):
        A = rng.standard_normal((m, k)).astype(np.float32)
        W = rng.standard_normal((n, k)).astype(np.float32)
        C, buf = guarded_nt(A, W)
        expected = A.astype(np.float64) @ W.T.astype(np.float64)
        bound = ERR_UNITS * max(k, 1) * EPS32 * (
            np.abs(A).max(initial=0.0) * np.abs(W).max(initial=0.0)) + 1e-30
        what = f"{isa} m={m} n={n} k={k}"
        assert not np.isnan(C).any(), f"{what}: C not fully written"
        assert np.abs(C - expected).max(initial=0.0) <= bound, what
        assert (buf[:GUARD] == SENTINEL).all() and (buf[GUARD + C.size:] == SENTINEL).all(), \
            f"{what}: wrote outside C"


def test_a_row_gets_the_same_bits_whatever_the_rows_around_it(isa, rng):
    """Projecting a sequence whole or in chunks must agree bit for bit (training vs
    inference): each row's result may not depend on m or on the row's tile."""
    A = rng.standard_normal((23, 77)).astype(np.float32)
    W = rng.standard_normal((41, 77)).astype(np.float32)
    whole, _ = guarded_nt(A, W)
    for start, stop in [(0, 1), (1, 2), (3, 7), (5, 16), (16, 23), (0, 22)]:
        part, _ = guarded_nt(A[start:stop], W)
        np.testing.assert_array_equal(part, whole[start:stop], err_msg=f"rows {start}:{stop}")
    one_by_one = np.concatenate([guarded_nt(W[j:j + 1], A)[0] for j in range(41)])
    np.testing.assert_array_equal(one_by_one.T, whole)   # the batch-1 tiles too


def test_gemm_nt_nan_and_inf_stay_in_their_row_and_column(isa, rng):
    A = rng.standard_normal((6, 40)).astype(np.float32)
    W = rng.standard_normal((10, 40)).astype(np.float32)
    A[2, 7], W[4, 30] = np.nan, np.inf
    C, _ = guarded_nt(A, W)
    expected = A.astype(np.float64) @ W.T.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(C), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(C), np.isinf(expected))


def test_gemm_nt_checks_shapes():
    A, W = np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"W: expected shape \(4, 3\), got \(4, 5\)"):
        _kernels.gemm_nt(A, W, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"C: expected shape \(2, 4\)"):
        _kernels.gemm_nt(A, np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32))


# ----------------------------------------------------------------------------
# the forward paths that choose it


EDGE = _packing.UNPACKED_MAX_STEPS


def test_the_step_limit_separates_the_two_recurrent_paths():
    """So that the next test runs each path on either side of it."""
    a = lambda T, B: type("A", (), {"T": T, "B": B})  # noqa: E731
    assert not _packing.packs_forward(a(EDGE, 1))
    assert _packing.packs_forward(a(EDGE + 1, 1))
    assert _packing.packs_forward(a(2, 2))


@pytest.mark.parametrize("T", [1, EDGE, EDGE + 1])
@pytest.mark.parametrize("cell", list(CELLS))
def test_batch_one_matches_the_reference_on_both_paths(cell, T, isa, rng):
    inputs = make_inputs(cell, rng, T, 1, 9, 20)
    got = forward(fastcells, cell, inputs, training=True)
    want = forward(fastcells.reference, cell, as_float64(inputs))
    for name in ("y", "h") + (("c",) if cell == "lstm" else ()):
        assert_close(getattr(got, name), getattr(want, name), FWD_TOL, f"{cell} T={T} {name}")


PROJECTIONS = [(25, 1, 300), (30, 1, 8), (40, 2, 256), (9, 16, 12)]


def test_the_projection_cases_cover_both_products():
    assert {_packing.unpacked_projection(T * B, I) for T, B, I in PROJECTIONS} == {True, False}


@pytest.mark.parametrize("T,B,I", PROJECTIONS)
def test_unpacked_projection_matches_the_reference(T, B, I, rng):
    """Projections on both sides of the rule (rows = T*B, I), inference and training."""
    for cell in ("lstm", "gru-cho"):
        inputs = make_inputs(cell, rng, T, B, I, 16)
        want = forward(fastcells.reference, cell, as_float64(inputs))
        for training in (False, True):
            got = forward(fastcells, cell, inputs, training=training)
            assert_close(got.y, want.y, FWD_TOL, f"{cell} {T, B, I} training={training}")
