"""The packed small GEMM of csrc/ (``_kernels.pack`` + ``_kernels.gemm``) on
every ISA path, against NumPy's float64 ``matmul``.

The sizes are chosen to hit each branch of the blocked kernel: batch 1 (the
multi-panel GEMV, and in the deterministic mode the tiles with one row) and every remainder of the row tiles (m up to 20 > the
largest tile height), partial and multiple 16-column panels (n), empty and
odd depths (k), and depths and batches large enough to be cut into k blocks.
"""
import itertools

import numpy as np
import pytest

from fastcells import _kernels

#: error bound in units of k * max|A| * max|B| * eps(float32): summation order
#: and FMA contraction differ from NumPy's, each term carries at most a few ulps
ERR_UNITS = 2.0
EPS32 = float(np.finfo(np.float32).eps)
#: floats of guard on both sides of C that the kernel must leave alone
GUARD = 64
SENTINEL = np.float32(-7.25e33)
#: columns per packed panel (FC_NR in csrc/gemm.h)
PANEL = 16

MS = range(1, 21)
NS = (1, 15, 16, 17, 33, 100)
KS = (0, 1, 5, 64, 257)


def pack(W, transpose):
    return _kernels.pack(np.ascontiguousarray(W, np.float32), transpose)


def guarded_product(A, P, n):
    """``_kernels.gemm`` into a view of a NaN-filled, sentinel-guarded buffer.

    Returns C and the buffer; NaN in C means an element was not written.
    """
    m = A.shape[0]
    buf = np.full(m * n + 2 * GUARD, SENTINEL, np.float32)
    buf[GUARD:GUARD + m * n] = np.nan
    C = buf[GUARD:GUARD + m * n].reshape(m, n)
    _kernels.gemm(A, P, n, C)
    return C, buf


def check_product(A, W, transpose, what):
    """One product: overwrites all of C, nothing outside it, within the bound."""
    k = A.shape[1]
    n = W.shape[0] if transpose else W.shape[1]
    C, buf = guarded_product(A, pack(W, transpose), n)
    B64 = (W.T if transpose else W).astype(np.float64)
    expected = A.astype(np.float64) @ B64
    bound = ERR_UNITS * max(k, 1) * EPS32 * (
        np.abs(A).max(initial=0.0) * np.abs(W).max(initial=0.0)) + 1e-30
    assert not np.isnan(C).any(), f"{what}: C not fully written"
    err = np.abs(C - expected).max(initial=0.0)
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"
    assert (buf[:GUARD] == SENTINEL).all(), f"{what}: wrote before C"
    assert (buf[GUARD + C.size:] == SENTINEL).all(), f"{what}: wrote past C"


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", NS)
def test_gemm_matches_float64_matmul_on_awkward_sizes(n, k, isa, rng):
    for m in MS:
        A = rng.standard_normal((m, k)).astype(np.float32)
        # W_hh layout (A @ W.T, forward) and its transpose (A @ W, backward)
        check_product(A, rng.standard_normal((n, k)).astype(np.float32), True,
                      f"{isa} m={m} n={n} k={k} A@W.T")
        check_product(A, rng.standard_normal((k, n)).astype(np.float32), False,
                      f"{isa} m={m} n={n} k={k} A@W")


@pytest.mark.parametrize("m, k, n", [
    (1, 1024, 4 * 64 + 5),   # batch 1, many panels and a partial one
    (33, 700, 70),           # several k blocks per tile column
    (64, 1100, 40),          # k longer than the L2 block of A
    (130, 600, 33),          # L2 block of A shorter than k at this batch
    (9, 2100, 40),           # k blocks of the AVX2 (2048) and AVX-512 (1024) paths
    (130, 2100, 33),         # ... and their L2 blocks of A, one k block each
])
def test_gemm_blocked_shapes(m, k, n, isa, rng):
    A = rng.standard_normal((m, k)).astype(np.float32)
    check_product(A, rng.standard_normal((n, k)).astype(np.float32), True,
                  f"{isa} m={m} n={n} k={k}")


def test_gemm_k_zero_writes_zeros(isa):
    for m, n in itertools.product((1, 3, 13, 20), (1, 16, 33)):
        C, _ = guarded_product(np.zeros((m, 0), np.float32), pack(np.zeros((0, n)), False), n)
        np.testing.assert_array_equal(C, np.zeros((m, n), np.float32))


@pytest.mark.parametrize("m", [1, 2, 7, 20])
def test_gemm_nan_and_inf_propagate(m, isa, rng):
    k, n = 37, 50
    A = rng.standard_normal((m, k)).astype(np.float32)
    W = rng.standard_normal((k, n)).astype(np.float32)
    A[0, 3] = np.nan          # row 0 of C: all NaN
    W[5, 17] = np.inf         # column 17: +-inf from the other rows (A[i, 5] != 0)
    W[9, 40] = -np.inf
    A[m - 1, 9] = 0.0         # ... except 0 * inf = NaN in column 40 of the last row
    C, _ = guarded_product(A, pack(W, False), n)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = A.astype(np.float64) @ W.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(C), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(C), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(C), np.isneginf(expected))
    assert np.isnan(C[0]).all()
    finite = np.isfinite(expected)
    bound = ERR_UNITS * k * EPS32 * np.abs(A[np.isfinite(A)]).max() * np.abs(
        W[np.isfinite(W)]).max()
    assert np.abs(C[finite] - expected[finite]).max(initial=0.0) <= bound


def reference_pack(B):
    """The packed layout of gemm.h in NumPy: panel p holds B[:, 16p:16p+16]
    (k x 16, row-major), the last one zero-padded; panels back to back."""
    k, n = B.shape
    npan = -(-n // PANEL)
    padded = np.zeros((k, npan * PANEL), np.float32)
    padded[:, :n] = B
    return padded.reshape(k, npan, PANEL).transpose(1, 0, 2).ravel()


@pytest.mark.parametrize("transpose", [True, False], ids=["A@W.T", "A@W"])
@pytest.mark.parametrize("k, n", [
    (1, 1), (1, 16), (1, 37), (5, 1), (16, 16), (17, 15), (31, 33), (64, 48),
    (100, 250), (257, 129),
])
def test_pack_is_bit_identical_to_the_layout(k, n, transpose, isa, rng):
    """Every ISA's packing writes exactly the layout (values and padding
    bits: -0.0 and NaN payloads copied, padding +0.0), full and partial
    16 x 16 blocks alike."""
    B = rng.standard_normal((k, n)).astype(np.float32)
    B.flat[::7] = -0.0
    B.flat[3::11] = np.float32(np.nan)
    W = B.T if transpose else B
    P = pack(W, transpose)
    expected = reference_pack(B)
    assert P.shape[0] >= expected.shape[0]
    np.testing.assert_array_equal(P[:expected.shape[0]].view(np.uint32),
                                  expected.view(np.uint32))


@pytest.mark.parametrize("transpose", [True, False], ids=["A@W.T", "A@W"])
@pytest.mark.parametrize("k, n", [(1024, 2048 + 5), (1000, 2100)])
def test_pack_of_large_matrices_is_bit_identical(k, n, transpose, isa, rng):
    """Above 8 MiB of P, packing streams its stores past the cache, realigned
    to P's cache lines (k % 16 == 0 for A @ W.T; any k for A @ W)."""
    B = rng.standard_normal((k, n), dtype=np.float32)
    P = pack(B.T if transpose else B, transpose)
    np.testing.assert_array_equal(P.view(np.uint32), reference_pack(B).view(np.uint32))


def test_packed_layout_does_not_depend_on_the_isa(rng):
    """Weights packed under one ISA multiply correctly under every other."""
    A = rng.standard_normal((9, 70)).astype(np.float32)
    W = rng.standard_normal((45, 70)).astype(np.float32)
    previous = _kernels.get_isa()
    try:
        for packer, runner in itertools.product(_kernels.isa_available(), repeat=2):
            _kernels.set_isa(packer)
            P = pack(W, True)
            _kernels.set_isa(runner)
            C, _ = guarded_product(A, P, W.shape[0])
            expected = A.astype(np.float64) @ W.T.astype(np.float64)
            bound = ERR_UNITS * 70 * EPS32 * np.abs(A).max() * np.abs(W).max()
            assert np.abs(C - expected).max() <= bound, f"packed {packer}, run {runner}"
    finally:
        _kernels.set_isa(previous)


@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("n,k", [(1, 1), (17, 5), (256, 64)])
def test_packed_weights_start_on_a_cache_line(n, k, transpose):
    """The packed buffer is 64-byte aligned (one AVX-512 load per panel row, not two)."""
    P = pack(np.ones((n, k) if transpose else (k, n), np.float32), transpose)
    assert P.ctypes.data % 64 == 0
    assert P.flags.c_contiguous and P.dtype == np.float32


# ----------------------------------------------------------------------------
# many rows


@pytest.mark.parametrize("tiles, n", [(False, 20), (True, 20), (True, 200)])
def test_a_row_gets_the_same_bits_however_many_rows_are_multiplied(tiles, n, isa, rng):
    """L2 blocks of k and remainder tiles must not change a row's sums: projecting a
    sequence whole (training) or in chunks of time (inference) gives the same bits.
    By default from two rows up: one row is the batch-1 GEMV, which sums in its own
    order (the projection never multiplies a lone row unless the whole call has one).
    With ``tiles`` (the deterministic mode) one row too: the tiles' code with one row,
    2 panels side by side for weights that stay in L2 (n = 20), more for larger ones
    (n = 200, k * n > 2^16)."""
    A = rng.standard_normal((1100, 600)).astype(np.float32)
    P = pack(rng.standard_normal((600, n)).astype(np.float32), False)
    ranges = [(0, 2), (20, 23), (30, 34), (5, 12), (100, 229), (507, 1100), (1098, 1100)]
    if tiles:
        ranges += [(0, 1), (1099, 1100), (600, 601)]
    saved = _kernels.get_gemv_tiles()
    _kernels.set_gemv_tiles(tiles)
    try:
        whole, _ = guarded_product(A, P, n)
        for start, stop in ranges:
            part, _ = guarded_product(A[start:stop], P, n)
            np.testing.assert_array_equal(part, whole[start:stop],
                                          err_msg=f"rows {start}:{stop}")
    finally:
        _kernels.set_gemv_tiles(saved)
