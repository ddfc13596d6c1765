"""The packed GEMM with a bias (``_kernels.gemm(..., bias=b)``, the input
projection's ``x @ W_ih.T + b``) on every ISA path.

Specification: the bits of the product followed by ``C += b`` (the bias joins
the product's last store), for every tile remainder, partial panel, k block
and row split; C's neighbours untouched; a wrong bias length refused.
"""
import numpy as np
import pytest

from fastcells import _kernels

#: floats of guard on both sides of C that the kernel must leave alone
GUARD = 64
SENTINEL = np.float32(-7.25e33)

#: rows (1: the batch-1 product; every tile remainder; many tiles), columns (partial
#: and whole panels), depths (empty, odd, several k blocks on every ISA path)
SHAPES = [(m, n, k) for m in (1, 2, 3, 4, 7, 13, 50) for n in (1, 17, 64) for k in (0, 5, 130)]
#: several k blocks on every ISA path; several row blocks (FC_MC_ROWS = 192 in gemm.c),
#: the last of one row
DEEP = [(9, 33, 2500), (40, 16, 4100), (385, 20, 70)]


def _data(rng, m, n, k):
    A = rng.standard_normal((m, k), dtype=np.float32)
    W = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    return A, _kernels.pack(W, True), b


@pytest.mark.parametrize("m, n, k", SHAPES + DEEP)
def test_bias_gives_the_bits_of_adding_it_after(m, n, k, isa, rng):
    A, P, b = _data(rng, m, n, k)
    expected = np.empty((m, n), np.float32)
    _kernels.gemm(A, P, n, expected)
    expected += b
    buf = np.full(m * n + 2 * GUARD, SENTINEL, np.float32)
    buf[GUARD:GUARD + m * n] = np.nan
    C = buf[GUARD:GUARD + m * n].reshape(m, n)
    _kernels.gemm(A, P, n, C, 1, b)
    np.testing.assert_array_equal(C, expected)
    assert (buf[:GUARD] == SENTINEL).all() and (buf[GUARD + m * n:] == SENTINEL).all()


@pytest.mark.parametrize("bias", [False, True])
def test_rows_of_a_tall_product_get_the_bits_of_short_ones(bias, isa, rng):
    """Row blocks (the projection's T*B rows) do not change a row's sums."""
    m, n, k = 400, 40, 70
    A, P, b = _data(rng, m, n, k)
    b = b if bias else None
    tall = np.empty((m, n), np.float32)
    _kernels.gemm(A, P, n, tall, 1, b)
    for i in range(0, m, 9):      # (never one row: that is the GEMV)
        rows = A[i:i + 9]
        short = np.empty((rows.shape[0], n), np.float32)
        _kernels.gemm(rows, P, n, short, 1, b)
        np.testing.assert_array_equal(tall[i:i + 9], short)


@pytest.mark.parametrize("nthreads", [2, 3])
def test_bias_bits_do_not_depend_on_the_threads(nthreads, isa, rng):
    m, n, k = 100, 40, 70
    A, P, b = _data(rng, m, n, k)
    one, many = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    _kernels.gemm(A, P, n, one, 1, b)
    _kernels.gemm(A, P, n, many, nthreads, b)
    np.testing.assert_array_equal(many, one)


def test_bias_of_the_wrong_length_is_refused(rng):
    A, P, b = _data(rng, 3, 16, 8)
    with pytest.raises(ValueError, match="bias: expected 16 floats, got 15"):
        _kernels.gemm(A, P, 16, np.empty((3, 16), np.float32), 1, b[:15])
