"""Backward's weight gradients on fastcells' own GEMM: ``_kernels.gemm_tn`` (``C = A^T B``)
and ``functional._weight_grads``, which runs ``dW_ih = dG^T X`` and ``dW_hh = dG^T H_prev``
through it across fastcells' threads.

What is specified here:

- the product against NumPy's float64 ``matmul`` on every ISA path, for depths k
  of 0 (zeros), 1, 2, 17 and 1000 and row/column counts that are not multiples
  of the 16-column panels, nothing written outside C;
- its arguments checked by name (shapes, column range, thread count, work
  buffer), non-contiguous or non-float32 arrays refused (the Python layer
  hands it C-ordered float32 arrays);
- the same bits at 1, 2, 3 and 8 threads (more threads than the two cores
  here: the bits must not depend on the split), for the product and for every
  cell's backward, and threads really used by backward above the threshold;
- nothing keeps a core busy after a backward returns, with NumPy's BLAS at its
  default thread count (it is not called in backward any more).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import (
    CELLS,
    GRAD_TOL,
    SEED,
    as_float64,
    assert_close,
    backward,
    forward,
    make_inputs,
    make_upstream,
)
from test_gemm import EPS32, ERR_UNITS, GUARD, SENTINEL

import fastcells
from fastcells import _kernels, _threads, functional, reference

#: thread counts whose bits must agree (8 oversubscribes this machine on purpose)
THREAD_COUNTS = (1, 2, 3, 8)

KS = (0, 1, 2, 17, 1000)
#: C's rows: one row (the GEMV), the row tiles' remainders, a block and a bit
MS = (1, 2, 3, 5, 17, 25, 50, 97, 200)
NS = (1, 7, 19, 40)


def random(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def guarded_product(A, B, m, a0=0, nthreads=1):
    """``gemm_tn`` into a NaN-filled view of a sentinel-guarded buffer: (C, buffer)."""
    n = B.shape[1]
    buf = np.full(m * n + 2 * GUARD, SENTINEL, np.float32)
    buf[GUARD:GUARD + m * n] = np.nan
    C = buf[GUARD:GUARD + m * n].reshape(m, n)
    _kernels.gemm_tn(A, B, C, a0, nthreads)
    return C, buf


def check_product(A, B, m, a0, what, nthreads=1):
    """One product: within test_gemm's bound of the float64 product (a NaN, an
    element not written, fails), nothing written around C."""
    C, buf = guarded_product(A, B, m, a0, nthreads)
    cols = A[:, a0:a0 + m].astype(np.float64)
    scale = np.abs(cols).max(initial=0.0) * np.abs(B).max(initial=0.0)
    np.testing.assert_allclose(C, cols.T @ B.astype(np.float64), rtol=0,
                               atol=ERR_UNITS * max(A.shape[0], 1) * EPS32 * scale + 1e-30,
                               err_msg=what)
    guards = np.concatenate([buf[:GUARD], buf[-GUARD:]])
    assert (guards == SENTINEL).all(), f"{what}: wrote outside C"
    return C


# ----------------------------------------------------------------------------
# the product


@pytest.mark.parametrize("k", KS)
def test_product_matches_float64_numpy(isa, rng, k):
    for m in MS:
        for n in NS:
            A, B = random(rng, k, m), random(rng, k, n)
            check_product(A, B, m, 0, f"{isa} k={k} m={m} n={n}")


def test_empty_depth_gives_zeros():
    C, _ = guarded_product(np.zeros((0, 5), np.float32), np.zeros((0, 3), np.float32), 5)
    np.testing.assert_array_equal(C, np.zeros((5, 3), np.float32))


@pytest.mark.parametrize("m, n", [(0, 3), (4, 0), (0, 0)])
def test_empty_output_is_fine(m, n):
    C = np.empty((m, n), np.float32)
    _kernels.gemm_tn(np.ones((6, m), np.float32), np.ones((6, n), np.float32), C)
    assert C.shape == (m, n)


def test_column_range_of_A(isa, rng):
    """``a0``: C = A[:, a0:a0 + m].T @ B (GRU's n rows of W_hh multiply another matrix)."""
    k, cols, n = 300, 70, 33
    A, B = random(rng, k, cols), random(rng, k, n)
    for a0, m in ((0, 70), (0, 53), (17, 53), (68, 2), (69, 1)):
        check_product(A, B, m, a0, f"{isa} a0={a0} m={m}", nthreads=2)


def test_deep_product_many_k_blocks(isa, rng):
    """k of several of the GEMM's k blocks, rows over several transposed blocks."""
    A, B = random(rng, 5000, 250), random(rng, 5000, 20)
    check_product(A, B, 250, 0, f"{isa} deep", nthreads=3)


def test_own_work_buffer_reused(rng):
    k, m, n = 400, 60, 30
    A, B = random(rng, k, m), random(rng, k, n)
    buf = np.full(_kernels.gemm_tn_floats(k, m, n, 2), np.nan, np.float32)
    C1, C2 = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    _kernels.gemm_tn(A, B, C1, 0, 2, buf)
    _kernels.gemm_tn(A, B, C2, 0, 2, buf)        # stale contents in buf do not matter
    np.testing.assert_array_equal(C1, C2)
    _kernels.gemm_tn(A, B, C2, 0, 1)
    np.testing.assert_array_equal(C1, C2)


def test_second_product_shares_A_with_the_same_bits(isa, rng):
    """``B2``, ``C2``: dW_hh beside dW_ih from one transposed copy of dG, each with the
    bits it has alone, at any thread count; an empty second product is fine."""
    k, cols = 500, 60
    A, B, B2 = random(rng, k, cols), random(rng, k, 37), random(rng, k, 20)
    for a0, m in ((0, 60), (10, 50)):
        alone = check_product(A, B, m, a0, f"{isa} B"), check_product(A, B2, m, a0, "B2")
        for t in THREAD_COUNTS:
            C, C2 = np.empty((m, 37), np.float32), np.empty((m, 20), np.float32)
            _kernels.gemm_tn(A, B, C, a0, t, None, B2, C2)
            np.testing.assert_array_equal(C, alone[0], err_msg=f"{isa} C, {t} threads")
            np.testing.assert_array_equal(C2, alone[1], err_msg=f"{isa} C2, {t} threads")
    C, C2 = np.empty((50, 37), np.float32), np.empty((50, 0), np.float32)
    _kernels.gemm_tn(A, B, C, 10, 2, None, np.empty((k, 0), np.float32), C2)
    np.testing.assert_array_equal(C, alone[0], err_msg=f"{isa} C beside an empty C2")


def test_second_product_with_empty_depth_gives_zeros():
    C, C2 = np.full((4, 3), np.nan, np.float32), np.full((4, 2), np.nan, np.float32)
    _kernels.gemm_tn(np.ones((0, 4), np.float32), np.ones((0, 3), np.float32), C, 0, 1, None,
                     np.ones((0, 2), np.float32), C2)
    assert not C.any() and not C2.any()


# ----------------------------------------------------------------------------
# bad arguments


def test_bad_arguments_are_named():
    A, B, C = (np.ones((10, 8), np.float32), np.ones((10, 4), np.float32),
               np.empty((8, 4), np.float32))
    cases = [
        ((A, np.ones((9, 4), np.float32), C), {}, r"B: expected shape \(k, n\) = \(10, 4\)"),
        ((A, np.ones((10, 5), np.float32), C), {}, r"B: expected shape"),
        ((A, B, np.empty((9, 4), np.float32)), {}, r"A: expected columns \[a0, a0 \+ m\)"),
        ((A, B, C), {"a0": 1}, r"A: expected columns \[a0, a0 \+ m\) = \[1, 9\)"),
        ((A, B, C), {"a0": -1}, r"A: expected columns"),
        ((A, B, C), {"nthreads": 0}, r"nthreads: expected an integer >= 1, got 0"),
        ((A, B, C), {"buf": np.empty(10, np.float32)}, r"buf: expected .* at least \d+ floats"),
        ((A, B, C), {"buf": np.empty(10 ** 4, np.float64)}, r"buf: .* got dtype float64"),
        ((A, B, C), {"B2": B}, r"B2, C2: expected both or neither, got B2 alone"),
        ((A, B, C), {"C2": C}, r"B2, C2: expected both or neither, got C2 alone"),
        ((A, B, C), {"B2": np.ones((9, 4), np.float32), "C2": C},
         r"B2: expected shape \(k, n\) = \(10, 4\), got \(9, 4\)"),
        ((A, B, C), {"B2": np.ones((10, 3), np.float32), "C2": C}, r"B2: expected shape"),
        ((A, B, C), {"B2": B, "C2": np.empty((7, 4), np.float32)},
         r"C2: expected shape \(m, n\) = \(8, 4\), got \(7, 4\)"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            _kernels.gemm_tn(*args, **kwargs)


@pytest.mark.parametrize("which", ["A", "B", "C"])
def test_non_contiguous_or_other_dtypes_refused(which):
    """The boundary takes C-ordered float32 only (functional passes nothing else)."""
    arrays = {"A": np.ones((10, 8), np.float32), "B": np.ones((10, 4), np.float32),
              "C": np.empty((8, 4), np.float32)}
    wide = {"A": np.ones((10, 16), np.float32), "B": np.ones((10, 8), np.float32),
            "C": np.empty((8, 8), np.float32)}
    for bad in (wide[which][:, ::2], np.asfortranarray(arrays[which]),
                arrays[which].astype(np.float64)):
        with pytest.raises(ValueError):
            _kernels.gemm_tn(**{**arrays, which: bad})


def test_size_overflow_refused_before_allocating():
    with pytest.raises(MemoryError, match="gemm_tn: a work buffer of"):
        _kernels.gemm_tn_floats(2 ** 42, 2 ** 20, 2 ** 20, 4)   # 2^62 floats of B packed
    with pytest.raises(MemoryError, match="gemm_tn: a work buffer of"):
        _kernels.gemm_tn_floats(2 ** 62, 2 ** 62, 2 ** 62, 1)   # overflows 64 bits
    with pytest.raises(ValueError, match="k, m, n, n2: expected sizes >= 0"):
        _kernels.gemm_tn_floats(-1, 2, 2, 1)


def test_threads_used_are_the_ranges_with_rows():
    assert _kernels.gemm_tn_threads(1, 8) == 1
    assert _kernels.gemm_tn_threads(24, 8) == 1
    assert _kernels.gemm_tn_threads(25, 8) == 2
    assert _kernels.gemm_tn_threads(2048, 8) == 8
    with pytest.raises(ValueError, match="nthreads"):
        _kernels.gemm_tn_threads(10, 0)


# ----------------------------------------------------------------------------
# the same bits at any thread count


@pytest.mark.parametrize("m", [2, 3, 24, 25, 26, 49, 73, 97, 193, 500])
def test_product_bits_do_not_depend_on_threads(isa, rng, m):
    """Rows split at any count (m - 1 a multiple of the split unit included: no range
    of one row, which would take the GEMV's summation order); B's panels packed by
    one thread or shared among several (fewer panels than threads included)."""
    for n in (5, 21, 50):
        A, B = random(rng, 777, m + 3), random(rng, 777, n)
        results = [guarded_product(A, B, m, 3, t)[0] for t in THREAD_COUNTS]
        for t, C in zip(THREAD_COUNTS[1:], results[1:]):
            np.testing.assert_array_equal(C, results[0],
                                          err_msg=f"{isa} m={m} n={n}: {t} threads")


@pytest.fixture
def spy_threads(monkeypatch):
    """Every product split across threads (threshold 1 flop); records the thread count
    of each ``gemm_tn`` call backward makes."""
    calls: list[int] = []
    real = _kernels.gemm_tn

    def gemm_tn(A, B, C, a0=0, nthreads=1, buf=None, B2=None, C2=None):
        calls.append(nthreads)
        real(A, B, C, a0, nthreads, buf, B2, C2)

    monkeypatch.setattr(functional, "WGRAD_FLOPS_PER_THREAD", 1)
    monkeypatch.setattr(_kernels, "gemm_tn", gemm_tn)
    return calls


@pytest.fixture
def restore_threads(monkeypatch):
    """set_num_threads in a test, the setting restored after it."""
    monkeypatch.setattr(_threads, "_setting", _threads.thread_setting())


@pytest.mark.parametrize("T, B, I, H", [(9, 7, 30, 26), (5, 6, 11, 40)])
@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_weight_gradients_bits_do_not_depend_on_threads(cell, T, B, I, H, spy_threads,
                                                                 restore_threads):
    """Every cell (GRU's two forms: dGh of its own, W_hh's n rows apart), I above and
    below H; also within the kernels' gradient tolerance of the float64 reference."""
    rng = np.random.default_rng(SEED)
    inputs = make_inputs(cell, rng, T, B, I, H)
    upstream = make_upstream(cell, rng, T, B, H)
    cache = forward(fastcells, cell, inputs, training=True).cache
    results = {}
    for t in THREAD_COUNTS:
        fastcells.set_num_threads(t)
        spy_threads.clear()
        results[t] = backward(fastcells, cell, cache, upstream)
        used = max(spy_threads)
        assert (used == 1) if t == 1 else (2 <= used <= t), (
            f"{cell}: {t} threads set, products ran on {spy_threads}")
    for t in THREAD_COUNTS[1:]:
        for name in ("dW_ih", "dW_hh"):
            np.testing.assert_array_equal(getattr(results[t], name), getattr(results[1], name),
                                          err_msg=f"{cell} {name}: {t} threads")
    ref = backward(reference, cell, forward(reference, cell, as_float64(inputs),
                                            training=True).cache, as_float64(upstream))
    for name in ("dW_ih", "dW_hh"):
        assert_close(getattr(results[1], name), getattr(ref, name), GRAD_TOL, f"{cell} {name}")


def test_small_products_stay_on_the_calling_thread(monkeypatch, restore_threads):
    calls: list[int] = []
    real = _kernels.gemm_tn
    monkeypatch.setattr(_kernels, "gemm_tn", lambda *a: (calls.append(a[4]), real(*a)))
    fastcells.set_num_threads(8)
    rng = np.random.default_rng(SEED)
    inputs = make_inputs("lstm", rng, 3, 2, 4, 5)
    cache = forward(fastcells, "lstm", inputs, training=True).cache
    backward(fastcells, "lstm", cache, make_upstream("lstm", rng, 3, 2, 5))
    assert calls and set(calls) == {1}


@pytest.mark.parametrize("cell", list(CELLS))
def test_one_step_one_row(cell):
    """T*B == 1: the products are outer products (k = 1)."""
    rng = np.random.default_rng(SEED)
    inputs = make_inputs(cell, rng, 1, 1, 6, 5)
    upstream = make_upstream(cell, rng, 1, 1, 5)
    got = backward(fastcells, cell, forward(fastcells, cell, inputs, training=True).cache,
                   upstream)
    ref = backward(reference, cell, forward(reference, cell, as_float64(inputs),
                                            training=True).cache, as_float64(upstream))
    for name in ("dW_ih", "dW_hh", "dx"):
        assert_close(getattr(got, name), getattr(ref, name), GRAD_TOL, f"{cell} {name}")


# ----------------------------------------------------------------------------
# quiet after return

QUIET_SCRIPT = textwrap.dedent("""
    import time
    import numpy as np
    import fastcells

    rng = np.random.default_rng(0)
    T, B, I, H = 20, 64, 256, 256
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    W_ih = (rng.standard_normal((4 * H, I)) * 0.05).astype(np.float32)
    W_hh = (rng.standard_normal((4 * H, H)) * 0.05).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    for _ in range(3):
        out = fastcells.lstm_forward(x, W_ih, W_hh, b, b, training=True)
        fastcells.lstm_backward(out.cache, dy)
    t0 = time.process_time()
    time.sleep(0.5)
    print(time.process_time() - t0)
""")
#: the most CPU time the process may use while it sleeps 0.5 s after a backward:
#: 5% of one core
QUIET_CPU_SECONDS = 0.025
#: variables that would pin NumPy's BLAS (or OpenMP) to fewer threads than its default
PINNING = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
           "GOTO_NUM_THREADS", "FASTCELLS_NUM_THREADS")


def test_quiet_after_backward_returns_with_default_blas_threads():
    env = {k: v for k, v in os.environ.items() if k not in PINNING}
    run = subprocess.run([sys.executable, "-c", QUIET_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(fastcells.__file__)))
    assert run.returncode == 0, run.stderr
    used = float(run.stdout.strip().splitlines()[-1])
    assert used <= QUIET_CPU_SECONDS, (
        f"{used * 1e3:.1f} ms of CPU in the 0.5 s after a backward returned "
        f"(at most {QUIET_CPU_SECONDS * 1e3:.0f} ms)")
