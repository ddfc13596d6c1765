"""One call split across threads gives the bits of one thread, for any thread count.

The time loops split by batch rows (each thread runs every step on its own
rows) and the input projection by row blocks (``fastcells._parallel``).  The
cost model keeps small shapes on one thread, so these tests lower its
thresholds (:func:`split_everything`) until the small shapes here are split
too, record the plans the kernels receive and assert that the split really
happened.  Then: every cell and option, forward outputs, final states, the
cache's arrays and backward's input gradients bit for bit at 1, 2, 3 and 8
threads; oversubscribed (8 and 16 threads on this machine) in a subprocess;
several Python threads at once; and no CPU used after a threaded call
returns.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import CELLS, backward, forward, is_lstm, make_inputs, make_lengths, make_upstream

import fastcells
from fastcells import _kernels, _packing, _parallel

THREAD_COUNTS = (1, 2, 3, 8)
T, I = 7, 12
#: the batch sizes: never split (2, 3: a block needs 2 rows), split unevenly, evenly
BATCHES = (2, 3, 5, 16, 33)
HIDDEN = (8, 40)
#: the cache's arrays that depend on the loop (the rest are copies of the inputs)
CACHED = ("y", "gates", "cs", "hn")
#: the gradients the loops and the dx product make (the weight gradients are BLAS's)
INPUT_GRADS = ("dx", "dh0", "dc0")
#: a forward (or backward) loop of this many rows or more is split when forced
SPLIT_FROM = 4


@pytest.fixture
def split_everything(monkeypatch):
    """Lower the cost model's thresholds so every shape with 2 rows per thread splits
    (the bits floor stays), and record the row blocks and product threads the kernels
    get.  Yields the record: ``{"blocks": [...], "gemm": [...]}``."""
    monkeypatch.setattr(_parallel, "MIN_ROWS_PER_THREAD", _parallel.SPLIT_MIN_ROWS)
    monkeypatch.setattr(_parallel, "MIN_STEP_FLOPS_PER_THREAD", 0)
    monkeypatch.setattr(_parallel, "MIN_GEMM_FLOPS_PER_THREAD", 0)
    record: dict[str, list] = {"blocks": [], "gemm": []}
    for family in ("rnn", "gru", "lstm"):
        for kind in ("forward", "backward"):
            name = f"{family}_{kind}"
            real = getattr(_kernels, name)

            def spy(*args, _real=real, **kwargs):
                record["blocks"].append(args[-1])
                return _real(*args, **kwargs)
            monkeypatch.setattr(_kernels, name, spy)
    real_gemm = _kernels.gemm

    def gemm_spy(A, P, n, C, nthreads=1, bias=None):
        record["gemm"].append(nthreads)
        return real_gemm(A, P, n, C, nthreads, bias)
    monkeypatch.setattr(_kernels, "gemm", gemm_spy)
    saved = fastcells.get_num_threads()
    yield record
    fastcells.set_num_threads(saved)


VARIANTS = [(cell, peephole) for cell in CELLS for peephole in (False, True)
            if not peephole or is_lstm(cell)]


def _problem(cell, B, H, peephole, with_lengths, seed=0):
    rng = np.random.default_rng(seed)
    inputs = make_inputs(cell, rng, T, B, I, H)
    if peephole:
        inputs["peephole"] = rng.standard_normal(3 * H).astype(np.float32)
    lengths = make_lengths(rng, T, B) if with_lengths else None
    return inputs, lengths, make_upstream(cell, rng, T, B, H)


def _run(cell, inputs, lengths, upstream, reverse, training):
    """Every array of a forward (and, training, backward) call, by name."""
    out = forward(fastcells, cell, inputs, lengths=lengths, reverse=reverse, training=training)
    arrays = {f: getattr(out, f) for f in out._fields if f != "cache"}
    if training:
        arrays.update((f"cache.{k}", out.cache[k]) for k in CACHED
                      if out.cache.arrays.get(k) is not None)
        grads = backward(fastcells, cell, out.cache, upstream)
        arrays.update((k, getattr(grads, k)) for k in INPUT_GRADS if k in grads._fields)
    return arrays


def _assert_bits(got, want, what):
    assert got.keys() == want.keys(), what
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{what}: {k}")


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forwards", "reverse"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("H", HIDDEN)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("cell,peephole", VARIANTS)
def test_same_bits_for_any_thread_count(split_everything, monkeypatch, cell, peephole, B, H,
                                        with_lengths, reverse, training):
    # inference in chunks of a few steps: each chunk's loop and projection split too
    monkeypatch.setattr(_packing, "CHUNK_FLOATS", 3 * B * CELLS[cell].gates * H)
    inputs, lengths, upstream = _problem(cell, B, H, peephole, with_lengths)
    fastcells.set_num_threads(1)
    want = _run(cell, inputs, lengths, upstream, reverse, training)
    assert all(b is None for b in split_everything["blocks"]), "one thread: no plan"
    for n in THREAD_COUNTS[1:]:
        split_everything["blocks"].clear()
        fastcells.set_num_threads(n)
        _assert_bits(_run(cell, inputs, lengths, upstream, reverse, training), want,
                     f"{n} threads")
        plans = split_everything["blocks"]
        if B >= SPLIT_FROM:      # the split really happened, in every loop call
            assert plans and all(p is not None and len(p) - 1 == min(n, B // 2) for p in plans)
            for p in plans:
                assert p[0] == 0 and p[-1] == B and np.diff(p).min() >= 2
        else:
            assert all(p is None for p in plans)


def test_projection_split_same_bits(split_everything, rng):
    """A projection of many rows splits into blocks of whole tiles (asserted), bits kept;
    also by the kernel directly at awkward row counts."""
    cell = "lstm"
    inputs = make_inputs(cell, rng, 30, 16, I, 8)
    fastcells.set_num_threads(1)
    want = forward(fastcells, cell, inputs)
    for n in (2, 3, 8):
        split_everything["gemm"].clear()
        fastcells.set_num_threads(n)
        got = forward(fastcells, cell, inputs)
        assert split_everything["gemm"] == [n]
        np.testing.assert_array_equal(got.y, want.y)
    P = _kernels.pack(rng.standard_normal((24, 40), dtype=np.float32), True)
    for m in (1, 2, 47, 48, 49, 73, 200):
        A = rng.standard_normal((m, 40), dtype=np.float32)
        one = np.empty((m, 24), np.float32)
        _kernels.gemm(A, P, 24, one)
        for n in (2, 3, 7, 16):
            many = np.full((m, 24), np.nan, np.float32)
            _kernels.gemm(A, P, 24, many, n)
            np.testing.assert_array_equal(many, one, err_msg=f"m={m} n={n}")


@pytest.mark.parametrize("m,n", [(0, 2), (1, 2), (47, 2), (48, 2), (49, 2), (73, 3), (1000, 7)])
def test_gemm_blocks(m, n):
    b = _kernels.gemm_blocks(m, n)
    g = _kernels.gemm_row_granule()
    assert b[0] == 0 and b[-1] == m and len(b) - 1 <= n
    sizes = np.diff(b)
    assert (sizes[:-1] % g == 0).all() and (m == 0 or sizes.min() >= min(m, g))


@pytest.mark.parametrize("lengths,n,expected", [
    (None, 2, [0, 4, 8]),
    (None, 3, [0, 2, 5, 8]),
    ([8, 8, 8, 8, 1, 1, 1, 1], 2, [0, 2, 8]),        # the long rows apart
    ([0, 0, 0, 0, 0, 0, 8, 8], 2, [0, 6, 8]),        # the zeros together
    ([0] * 8, 2, [0, 4, 8]),                          # nothing valid: equal rows
    ([9, 0, 0, 0, 0, 0, 0, 0], 3, [0, 2, 4, 8]),    # at least 2 rows each
])
def test_row_blocks_balance_valid_steps(lengths, n, expected):
    lens = None if lengths is None else np.array(lengths, np.int64)
    assert _parallel.row_blocks(8, n, lens).tolist() == expected


def test_row_blocks_never_split_small_batches():
    assert _parallel.row_blocks(1, 8) is None
    assert _parallel.row_blocks(3, 8) is None
    assert _parallel.row_blocks(5, 8).tolist() == [0, 2, 5]


def test_cost_model_keeps_small_calls_on_one_thread():
    assert _parallel.forward_threads(1, 1, 64, 4, 64) == 1
    assert _parallel.forward_threads(100, 1, 64, 4, 64) == 1
    assert _parallel.loop_threads(B=4, G=4, H=1024) == 1     # under 2 x 4 rows
    assert _parallel.loop_threads(B=64, G=4, H=512) >= 2
    assert _parallel.gemm_threads(3200, 2048, 512) >= 2


def test_cost_model_counts_a_projections_products():
    """An LSTM projecting H to P steps 2*B*H*P*(G+1) flops, not the plain cell's 2*B*G*H*H:
    a batch the plain cell splits may stay on one thread when P is small."""
    assert _parallel.step_flops(8, 4, 256, 64) == 2 * 8 * 256 * 64 * 5
    assert _parallel.step_flops(8, 4, 256, 256) == _parallel.step_flops(8, 4, 256)
    B, H = 16, 128
    plain = _parallel.loop_threads(B, 4, H)
    assert _parallel.loop_threads(B, 4, H, H) == plain
    assert _parallel.loop_threads(B, 4, H, 1) <= plain
    assert any(_parallel.loop_threads(b, 4, h, 1) < _parallel.loop_threads(b, 4, h)
               for b in (8, 16, 32, 64) for h in (64, 128, 256, 512))


@pytest.mark.parametrize("blocks,message", [
    ([0, 4], "from 0 to B = 8"),
    ([1, 8], "from 0 to B = 8"),
    ([0, 1, 8], "at least 2 rows"),
    ([0, 5, 4, 8], "at least 2 rows"),
])
def test_bad_plan_is_refused(blocks, message):
    B, H = 8, 4
    h, gh = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    y, gx = np.zeros((2, B, H), np.float32), np.zeros((2, B, H), np.float32)
    wp = _kernels.pack(np.zeros((H, H), np.float32), True)
    with pytest.raises(ValueError, match=message):
        _kernels.rnn_forward(0, gx, wp, _kernels.PACK_FLOAT, h, y, None, False, False, gh,
                             np.array(blocks, np.int64))


def test_python_threads_at_once_same_bits(split_everything):
    """Several callers share the budget (each gets what is free) and all get the bits
    of one thread."""
    problems = [_problem("lstm", 16, 40, False, k % 2 == 1, seed=k) for k in range(6)]
    fastcells.set_num_threads(1)
    want = [_run("lstm", inp, lens, up, False, True) for inp, lens, up in problems]
    fastcells.set_num_threads(3)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(problems))

    def call(k):
        try:
            barrier.wait()
            for _ in range(3):
                inp, lens, up = problems[k]
                _assert_bits(_run("lstm", inp, lens, up, False, True), want[k], f"caller {k}")
        except BaseException as exc:    # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert fastcells._threads.threads_in_use() == 0


_CHILD = """
import numpy as np, fastcells
from fastcells import _parallel
_parallel.MIN_ROWS_PER_THREAD = 2
_parallel.MIN_STEP_FLOPS_PER_THREAD = 0
_parallel.MIN_GEMM_FLOPS_PER_THREAD = 0
rng = np.random.default_rng(1)
T, B, I, H = 9, 33, 10, 16
x = rng.standard_normal((T, B, I), dtype=np.float32)
W_ih = rng.standard_normal((4 * H, I), dtype=np.float32) * 0.3
W_hh = rng.standard_normal((4 * H, H), dtype=np.float32) * 0.3
lengths = rng.integers(0, T + 1, B)
def run():
    out = fastcells.lstm_forward(x, W_ih, W_hh, lengths=lengths, training=True)
    g = fastcells.lstm_backward(out.cache, dy=np.ones_like(out.y))
    return [out.y, out.h, out.c, g.dx, g.dh0, g.dc0]
many = run()
assert fastcells.get_num_threads() == {n}
fastcells.set_num_threads(1)
one = run()
for a, b in zip(many, one):
    assert np.array_equal(a, b)
print("same")
"""


@pytest.mark.parametrize("n", [8, 16])
def test_oversubscribed_same_bits(n):
    """More threads than cores (this machine has 2): slower, the same bits."""
    env = dict(os.environ, FASTCELLS_NUM_THREADS=str(n))
    out = subprocess.run([sys.executable, "-c", _CHILD.replace("{n}", str(n))], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "same"


_QUIET = """
import time, numpy as np, fastcells
rng = np.random.default_rng(0)
T, B, I, H = 20, 64, 128, 128
x = rng.standard_normal((T, B, I), dtype=np.float32)
W_ih = rng.standard_normal((4 * H, I), dtype=np.float32) * 0.1
W_hh = rng.standard_normal((4 * H, H), dtype=np.float32) * 0.1
fastcells.set_num_threads(2)
from fastcells import _parallel
assert _parallel.forward_threads(T, B, I, 4, H) >= 2, "the call must be a threaded one"
for _ in range(5):
    out = fastcells.lstm_forward(x, W_ih, W_hh, training=True)
    fastcells.lstm_backward(out.cache, dy=np.ones_like(out.y))
cpu = time.process_time()
time.sleep(0.5)
print(time.process_time() - cpu)
"""


def test_quiet_after_return():
    """After a threaded call returns, the process uses at most 5% of a core over the
    next half second (OpenMP's threads sleep; BLAS is pinned to one thread so that
    only fastcells' threads count)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="2",
               MKL_NUM_THREADS="1")
    env.pop("FASTCELLS_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_QUIET)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) <= 0.05 * 0.5, f"CPU after return: {out.stdout.strip()} s"


@pytest.mark.parametrize("shape", [(1, 1), (17, 5), (16, 32), (33, 70), (100, 1000), (2048, 512)])
@pytest.mark.parametrize("transpose", [True, False])
def test_pack_split_over_threads_is_the_same_copy(shape, transpose):
    W = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    one = _kernels.pack(W, transpose)
    for n in (2, 3, 8):
        got = _kernels.pack(W, transpose, None, n)
        assert got.shape == one.shape and np.array_equal(got, one), n
    with pytest.raises(ValueError, match="nthreads: expected a positive integer, got 0"):
        _kernels.pack(W, transpose, None, 0)
