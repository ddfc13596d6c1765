"""The kernels' per-thread scratch (_scratch.Scratch): reuse never shows.

Forward (packed weights) and backward keep their scratch buffers per thread
and reuse them from call to call.  Whatever ran before on the thread
(another shape, another cell, a bigger or a smaller problem), a call gives
the bits of a call on fresh buffers, and nothing it returned earlier
changes afterwards.  The pool keeps buffers from SCRATCH_MIN_FLOATS up; the
tests set that to 0, so their small problems use it.
"""
import threading

import numpy as np
import pytest
from conftest import CELLS, SEED, backward, forward, make_inputs, make_lengths, make_upstream

import fastcells
from fastcells import _kernels, _scratch, functional


def _case(cell, seed, T, B, I, H):
    rng = np.random.default_rng(seed)
    inputs = make_inputs(cell, rng, T, B, I, H)
    lengths = make_lengths(rng, T, B)
    out = forward(fastcells, cell, inputs, training=True, lengths=lengths)
    return out.cache, make_upstream(cell, rng, T, B, H)


def _grads(cell, case):
    return backward(fastcells, cell, *case)


def _same(a, b):
    for name in b._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if y is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


def _copy(grads):
    return type(grads)(*(None if g is None else g.copy() for g in grads))


@pytest.fixture(autouse=True)
def pool_every_size(monkeypatch):
    monkeypatch.setattr(_scratch, "SCRATCH_MIN_FLOATS", 0)


@pytest.fixture
def fresh(monkeypatch):
    """Gradients computed with no buffer kept (every scratch array a new one)."""
    def run(cell, case):
        with monkeypatch.context() as m:
            m.setattr(_scratch, "SCRATCH_MAX_FLOATS", -1)
            return _grads(cell, case)
    return run


@pytest.mark.parametrize("cell", list(CELLS))
def test_reused_scratch_gives_the_bits_of_fresh_buffers(cell, fresh):
    small = _case(cell, SEED, 6, 3, 5, 7)
    big = _case(cell, SEED + 1, 9, 5, 11, 13)
    want_small, want_big = fresh(cell, small), fresh(cell, big)
    first = _grads(cell, small)
    kept = _copy(first)
    _same(_grads(cell, big), want_big)       # buffers grow
    _same(_grads(cell, small), want_small)   # and serve a smaller call again
    _same(first, kept)                       # an earlier result is never a view of them
    _same(first, want_small)


@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_with_kept_packs_gives_the_bits_of_fresh_ones(cell, monkeypatch):
    rng = np.random.default_rng(SEED + 7)
    big, small = (make_inputs(cell, rng, T, B, 9, H) for T, B, H in ((40, 3, 24), (20, 2, 8)))
    want = {}
    with monkeypatch.context() as m:
        m.setattr(_scratch, "SCRATCH_MAX_FLOATS", -1)
        for name, inputs in (("big", big), ("small", small)):
            want[name] = forward(fastcells, cell, inputs, training=True)
    outputs = lambda r: [a.copy() for a in r[:-1]]   # noqa: E731  (y, h[, c]; not the cache)
    first = forward(fastcells, cell, small, training=True)
    kept = outputs(first)
    for name, inputs in (("big", big), ("small", small), ("big", big)):
        got = forward(fastcells, cell, inputs, training=True)
        for a, b in zip(outputs(got), outputs(want[name])):
            np.testing.assert_array_equal(a, b, err_msg=name)
    for a, b in zip(first[:-1], kept):            # never a view of the kept packs
        np.testing.assert_array_equal(a, b)
    assert _scratch._POOL.bufs and not _scratch._POOL.busy


def test_cells_share_the_thread_s_buffers_safely(fresh):
    cases = {cell: _case(cell, SEED + 2, 8, 4, 6, 10) for cell in CELLS}
    want = {cell: fresh(cell, case) for cell, case in cases.items()}
    for _ in range(2):
        for cell, case in cases.items():
            _same(_grads(cell, case), want[cell])


def test_a_call_while_the_buffers_are_in_use_gets_fresh_ones(fresh):
    # what a signal handler running a backward in the middle of one would see
    case = _case("lstm", SEED + 3, 5, 2, 4, 6)
    want = fresh("lstm", case)
    pool = _scratch._POOL
    kept = pool.bufs
    # the outer call's buffers, big enough for any of this call's: never touched
    pool.bufs = {name: np.full(4096, np.nan, np.float32)
                 for name in ("dG", "dGh", "W_hh", "W_hn", "W_ih", "tmp", "direct", "hprev",
                              "rh")}
    held = dict(pool.bufs)
    pool.busy = True
    try:
        _same(_grads("lstm", case), want)
        assert pool.busy                        # the outer call still holds them
        assert pool.bufs.keys() == held.keys()
        for name, buf in pool.bufs.items():
            assert buf is held[name] and np.isnan(buf).all(), name
    finally:
        pool.busy = False
        pool.bufs = kept


def test_threads_keep_their_own_buffers(fresh):
    cases = [(cell, _case(cell, SEED + 4 + i, 12, 3 + i, 8, 24))
             for i, cell in enumerate(["lstm", "gru-lbr", "gru-cho", "rnn-tanh"])]
    want = [fresh(cell, case) for cell, case in cases]
    got = [None] * len(cases)
    errors = []

    def run(i):
        try:
            for _ in range(15):
                got[i] = _grads(*cases[i])
                _same(got[i], want[i])
        except BaseException as exc:    # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


def test_an_exception_releases_the_buffers(monkeypatch, fresh):
    case = _case("gru-lbr", SEED + 5, 4, 2, 3, 5)
    want = fresh("gru-lbr", case)

    def fail(*args, **kwargs):
        raise RuntimeError("inside the scratch")
    with monkeypatch.context() as m:
        m.setattr(functional, "_weight_grads", fail)
        with pytest.raises(RuntimeError, match="inside the scratch"):
            _grads("gru-lbr", case)
    assert not _scratch._POOL.busy
    _same(_grads("gru-lbr", case), want)


def test_release_scratch_frees_the_thread_s_buffers(fresh):
    case = _case("gru-lbr", SEED + 6, 6, 3, 4, 5)
    want = fresh("gru-lbr", case)
    _grads("gru-lbr", case)
    assert _scratch._POOL.bufs
    functional.release_scratch()
    assert not _scratch._POOL.bufs
    _same(_grads("gru-lbr", case), want)


def test_pack_into_a_buffer_checks_it():
    W = np.arange(12, dtype=np.float32).reshape(3, 4)
    n = _kernels.pack_floats(3, 4, True)
    P = _kernels.pack(W, True, np.full(n, np.nan, np.float32))
    np.testing.assert_array_equal(P, _kernels.pack(W, True))
    assert P.ctypes.data % 64 == 0
    with pytest.raises(ValueError, match=f"buf: expected a writable 1-D C-contiguous float32 "
                                         fr"array of at least {n} floats, got shape \({n - 1},\)"):
        _kernels.pack(W, True, np.empty(n - 1, np.float32))
    with pytest.raises(ValueError, match="buf: .*, got dtype float64"):
        _kernels.pack(W, True, np.empty(n, np.float64))
    ro = np.empty(n, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="buf: .*, got a read-only array"):
        _kernels.pack(W, True, ro)
    with pytest.raises(ValueError, match="buf: .*, got a non-contiguous array"):
        _kernels.pack(W, True, np.empty(2 * n, np.float32)[::2])
    with pytest.raises(ValueError, match="buf: .*, got 2-D array"):
        _kernels.pack(W, True, np.empty((1, n), np.float32))
    with pytest.raises(ValueError, match="rows, cols"):
        _kernels.pack_floats(-1, 4, True)
