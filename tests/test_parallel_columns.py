"""Small batches split each forward step by hidden units, with the bits of one thread.

A batch of 1 to 3 rows cannot split by rows (``fastcells._parallel``; 4 rows
often do not pay for it), so its forward loop splits every step by hidden
units: each thread computes whole 16-column panels of every gate's recurrent
product and the gate pass of those units (``_kernels``, "column blocks").  The cost model keeps these small
shapes on one thread, so the tests lower its thresholds (:func:`split_columns`),
record the plans the kernels get and assert the split really ran; then
outputs, final states and the cache's arrays bit for bit at 1, 2, 3 and 8
threads, with lengths (0 and T among them), reverse, training and chunked
inference, and ``Stepper.forward``.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import CELLS, forward, is_lstm, make_inputs

import fastcells
from fastcells import _kernels, _packing, _parallel

THREAD_COUNTS = (1, 2, 3, 8)
#: more steps than the unpacked batch-1 calls take (those never split)
T = _packing.UNPACKED_MAX_STEPS + 3
I = 5
#: 4 rows: split by units where the rows do not split (always, at these sizes)
BATCHES = (1, 2, 3, 4)
#: one panel (no split), three (uneven splits), four
HIDDEN = (16, 48, 64)
#: the cells whose loop splits by units (the GRU without linear_before_reset does not)
SPLIT_CELLS = ("rnn-tanh", "rnn-relu", "gru-lbr", "lstm")
VARIANTS = [(cell, peephole) for cell in SPLIT_CELLS for peephole in (False, True)
            if not peephole or is_lstm(cell)]
#: the cache's arrays that depend on the loop
CACHED = ("y", "gates", "cs", "hn")
PANEL = _kernels.panel_columns()


@pytest.fixture
def split_columns(monkeypatch):
    """Lower the column split's thresholds to one panel per thread, and record the
    ``cols`` plans the forward kernels get.  Yields the list of plans."""
    monkeypatch.setattr(_parallel, "COLUMN_SPLIT_MIN_H", PANEL)
    monkeypatch.setattr(_parallel, "COLUMN_MIN_UNITS", PANEL)
    monkeypatch.setattr(_parallel, "MIN_COLUMN_STEP_FLOPS_PER_THREAD", 0)
    plans: list = []
    for family in ("rnn", "gru", "lstm"):
        name = f"{family}_forward"
        real = getattr(_kernels, name)

        def spy(*args, _real=real, cols=None, **kwargs):
            plans.append(cols)
            return _real(*args, cols=cols, **kwargs)
        monkeypatch.setattr(_kernels, name, spy)
    saved = fastcells.get_num_threads()
    yield plans
    fastcells.set_num_threads(saved)


def _lengths(rng, B):
    """int64 (B,) with 0 and T present (both at B = 1 over the seeds' cases)."""
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T
    if B >= 2:
        lengths[-1] = 0
    return lengths


def _problem(cell, B, H, peephole, seed=0):
    rng = np.random.default_rng(seed)
    inputs = make_inputs(cell, rng, T, B, I, H)
    if peephole:
        inputs["peephole"] = rng.standard_normal(3 * H).astype(np.float32)
    return inputs, _lengths(rng, B)


def _arrays(out):
    arrays = {f: getattr(out, f) for f in out._fields if f != "cache"}
    if out.cache is not None:
        arrays.update((f"cache.{k}", out.cache[k]) for k in CACHED
                      if out.cache.arrays.get(k) is not None)
    return arrays


def _assert_bits(got, want, what):
    assert got.keys() == want.keys(), what
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{what}: {k}")


def _assert_split(plans, n, H):
    """Every loop call got a plan of min(n, panels) whole-panel blocks."""
    assert plans
    for p in plans:
        assert p is not None and len(p) - 1 == min(n, H // PANEL)
        assert p[0] == 0 and p[-1] == H and np.all(np.diff(p) > 0)
        assert np.all(p % PANEL == 0)


@pytest.mark.parametrize("mode", ["training", "inference", "chunked"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forwards", "reverse"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("H", HIDDEN)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("cell,peephole", VARIANTS)
def test_same_bits_for_any_thread_count(split_columns, monkeypatch, cell, peephole, B, H,
                                        with_lengths, reverse, mode):
    if mode == "chunked":       # inference a few steps at a time: every chunk splits
        monkeypatch.setattr(_packing, "CHUNK_FLOATS", 3 * B * CELLS[cell].gates * H)
    inputs, lengths = _problem(cell, B, H, peephole)
    kwargs = {"lengths": lengths if with_lengths else None, "reverse": reverse,
              "training": mode == "training"}
    fastcells.set_num_threads(1)
    want = _arrays(forward(fastcells, cell, inputs, **kwargs))
    assert all(p is None for p in split_columns), "one thread: no plan"
    if mode == "chunked":
        assert len(split_columns) > 1, "inference ran in chunks"
    for n in THREAD_COUNTS[1:]:
        split_columns.clear()
        fastcells.set_num_threads(n)
        _assert_bits(_arrays(forward(fastcells, cell, inputs, **kwargs)), want,
                     f"{n} threads")
        if H > PANEL:
            _assert_split(split_columns, n, H)
        else:
            assert all(p is None for p in split_columns), "one panel: one block"


@pytest.mark.parametrize("H", (48, 80))
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("cell,peephole", [("rnn-tanh", False), ("gru-lbr", False),
                                           ("lstm", True)])
def test_same_bits_on_every_isa(split_columns, isa, cell, peephole, B, H):
    """Each ISA path's products (the GEMV at one row, side-by-side panels at 2 and 4
    on AVX-512, one panel per tile otherwise) sum each column alike for any panels."""
    inputs, lengths = _problem(cell, B, H, peephole, seed=3)
    fastcells.set_num_threads(1)
    want = _arrays(forward(fastcells, cell, inputs, lengths=lengths, training=True))
    for n in (2, 3):
        split_columns.clear()
        fastcells.set_num_threads(n)
        got = forward(fastcells, cell, inputs, lengths=lengths, training=True)
        _assert_bits(_arrays(got), want, f"{isa}, {n} threads")
        _assert_split(split_columns, n, H)


@pytest.mark.parametrize("lengths", [[0], [T], [7]], ids=["0", "T", "7"])
@pytest.mark.parametrize("cell,peephole", VARIANTS)
def test_batch_one_lengths(split_columns, cell, peephole, lengths):
    """A batch of one row that is wholly masked, wholly valid or cut mid-way."""
    inputs, _ = _problem(cell, 1, 48, peephole, seed=1)
    lens = np.array(lengths, np.int64)
    fastcells.set_num_threads(1)
    want = _arrays(forward(fastcells, cell, inputs, lengths=lens, training=True))
    for n in THREAD_COUNTS[1:]:
        split_columns.clear()
        fastcells.set_num_threads(n)
        _assert_bits(_arrays(forward(fastcells, cell, inputs, lengths=lens, training=True)),
                     want, f"{n} threads")
        _assert_split(split_columns, n, 48)


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("cell,peephole", VARIANTS)
def test_stepper_forward(split_columns, cell, peephole, B):
    inputs, lengths = _problem(cell, B, 64, peephole, seed=2)
    c = CELLS[cell]
    step = fastcells.Stepper(c.family, inputs["W_ih"], inputs["W_hh"], inputs["b_ih"],
                             inputs["b_hh"], peephole=inputs.get("peephole"), **c.options)
    states = {k: inputs[k] for k in ("h0", "c0") if k in inputs}
    fastcells.set_num_threads(1)
    want = _arrays(step.forward(inputs["x"], **states, lengths=lengths, reverse=True))
    for n in THREAD_COUNTS[1:]:
        split_columns.clear()
        fastcells.set_num_threads(n)
        got = step.forward(inputs["x"], **states, lengths=lengths, reverse=True)
        _assert_bits(_arrays(got), want, f"{n} threads")
        _assert_split(split_columns, n, 64)


def test_cho_gru_and_half_weights_stay_on_one_thread(split_columns):
    """The GRU without linear_before_reset (two products per step) and float16 weights
    never split by units."""
    inputs, _ = _problem("gru-cho", 1, 64, False)
    fastcells.set_num_threads(2)
    forward(fastcells, "gru-cho", inputs)
    inputs, _ = _problem("lstm", 1, 64, False)
    half = fastcells.Stepper("lstm", inputs["W_ih"], inputs["W_hh"], weight_dtype="float16")
    half.forward(inputs["x"])
    assert split_columns and all(p is None for p in split_columns)


def test_cost_model():
    """Batch 1-4 from H = 256 wants threads (one per 128 units, when the step is
    large enough); small H, small steps, larger batches that split by rows, and H off
    the panels do not."""
    assert _parallel.column_threads(1, 4, 1024) == 8
    assert _parallel.column_threads(3, 3, 512) == 4
    assert _parallel.column_threads(1, 4, 256) == 2
    assert _parallel.column_threads(1, 4, 128) == 1
    assert _parallel.column_threads(1, 1, 256) == 1          # an RNN step: too small
    assert _parallel.column_threads(1, 1, 512) == 2
    assert _parallel.column_threads(1, 4, 520) == 1          # not whole panels
    assert _parallel.column_threads(4, 4, 512) == 1          # its rows split
    assert _parallel.column_threads(4, 4, 1024) == 8         # its rows do not
    assert _parallel.column_threads(8, 4, 1024) == 1
    assert _parallel.forward_threads(25, 1, 1024, 4, 1024, columns=True) == 8
    assert _parallel.forward_threads(25, 1, 1024, 4, 1024) == 1
    assert _parallel.forward_threads(25, 1, 64, 4, 64, columns=True) == 1


def test_column_blocks():
    assert _parallel.column_blocks(64, 1) is None
    assert _parallel.column_blocks(16, 4) is None
    np.testing.assert_array_equal(_parallel.column_blocks(48, 2), [0, 16, 48])
    np.testing.assert_array_equal(_parallel.column_blocks(64, 8), [0, 16, 32, 48, 64])
    np.testing.assert_array_equal(_parallel.column_blocks(1024, 2), [0, 512, 1024])


def _rnn_call(cols, packing=_kernels.PACK_FLOAT, blocks=None, H=32, B=1):
    h, gh = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    y, gx = np.zeros((2, B, H), np.float32), np.zeros((2, B, H), np.float32)
    W = np.zeros((H, H), np.float32)
    wp = _kernels.pack(W, True) if packing == _kernels.PACK_FLOAT else W.ravel()
    _kernels.rnn_forward(0, gx, wp, packing, h, y, None, False, False, gh,
                         None if blocks is None else np.array(blocks, np.int64),
                         cols=np.array(cols, np.int64))


@pytest.mark.parametrize("cols,message", [
    ([0, 16], "from 0 to H = 32"),
    ([0, 16, 48], "from 0 to H = 32"),
    ([0, 8, 32], "multiples of 16"),
    ([0, 16, 16, 32], "increasing"),
])
def test_bad_column_plan_is_refused(cols, message):
    with pytest.raises(ValueError, match=message):
        _rnn_call(cols)


def test_column_plan_needs_packed_floats_and_no_row_plan():
    with pytest.raises(ValueError, match="packing: expected PACK_FLOAT"):
        _rnn_call([0, 16, 32], packing=_kernels.PACK_NONE)
    with pytest.raises(ValueError, match="one plan"):
        _rnn_call([0, 16, 32], blocks=[0, 2, 4], B=4)
    H, B = 32, 1
    h, y = np.zeros((B, H), np.float32), np.zeros((2, B, H), np.float32)
    gx = np.zeros((2, B, 3 * H), np.float32)
    wp = _kernels.pack(np.zeros((2 * H, H), np.float32), True)
    wp_n = _kernels.pack(np.zeros((H, H), np.float32), True)
    with pytest.raises(ValueError, match="linear_before_reset"):
        _kernels.gru_forward(0, gx, wp, wp_n, _kernels.PACK_FLOAT, np.zeros(H, np.float32),
                             h, y, None, False, False, None, None,
                             np.zeros((B, 2 * H), np.float32), np.zeros((B, H), np.float32),
                             np.zeros((B, H), np.float32), cols=np.array([0, 16, 32]))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (25, 2048, 512), (3, 100, 37), (31, 17, 0),
                                   (7, 48, 130)])
def test_unpacked_product_split_by_columns_same_bits(m, n, k):
    """The unpacked product (short projections) splits C's columns: the bits of one
    thread for any count, and NumPy's values."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((m, k)).astype(np.float32)
    W = rng.standard_normal((n, k)).astype(np.float32)
    want = np.empty((m, n), np.float32)
    _kernels.gemm_nt(A, W, want)
    np.testing.assert_allclose(want, A.astype(np.float64) @ W.T.astype(np.float64),
                               rtol=1e-4, atol=1e-4 * max(k, 1))
    for nthreads in THREAD_COUNTS[1:]:
        got = np.full((m, n), np.nan, np.float32)
        _kernels.gemm_nt(A, W, got, nthreads)
        np.testing.assert_array_equal(got, want, err_msg=f"{nthreads} threads")


def test_unpacked_product_cost_model():
    assert _parallel.gemm_nt_threads(25, 2048, 512) >= 2
    assert _parallel.gemm_nt_threads(25, 2048, 512) <= 2048 // PANEL
    assert _parallel.gemm_nt_threads(2, 64, 16) == 1
    assert _parallel.gemm_nt_threads(1, 8, 1 << 20) == 1      # fewer columns than a block


def test_unpacked_product_refuses_bad_thread_count():
    A, W, C = (np.zeros(s, np.float32) for s in ((2, 3), (4, 3), (2, 4)))
    with pytest.raises(ValueError, match="nthreads: expected a positive integer, got 0"):
        _kernels.gemm_nt(A, W, C, 0)
