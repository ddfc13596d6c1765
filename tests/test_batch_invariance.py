"""Batch invariance in the deterministic mode (``set_deterministic(True)``): a sequence's
forward results (y, h, c) are the same bits whether it runs alone or among other
sequences, at batch 1, 2 and 3 and inside a batch of 16 (with and without ``lengths``),
on every ISA path, at 1 and 2 threads.

How (docs/design.md, "Batch invariance"): every product then sums each element in
the packed tiles' order, one row alone (the batch-1 product) included, and short
calls pack their weights instead of multiplying by them unpacked.  Covered: the
functional calls of every cell and option, ``Stepper`` steps and ``Stepper.forward``
(float16 weights too).

At 2 threads the cost model's thresholds are lowered so that these small shapes do
split: by rows (batch 16), by hidden units (batch 1 to 3), the projection by rows.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import CELLS as BASE_CELLS
from conftest import SEED, make_inputs

import fastcells
from fastcells import _config, _kernels, _packing, _parallel
from fastcells._cells import cell_functions
from fastcells.functional import LayerNormWeights, Stepper

#: hidden units: 3 panels (RNN), 9 (GRU), 12 (LSTM) of 16 columns, so the batch-1
#: product has whole and partial groups of side-by-side panels on every ISA
H = 48
#: the batch a sequence rides in besides alone, and where it sits in each
BATCHES = {2: 1, 3: 1, 16: 7}
#: (T, I): a short call (unpacked products without the mode), a long one (packed at
#: any batch), and an input deep enough to cut every ISA's k blocks (FC_KC)
SHAPES = {"short": (5, 20), "long": (33, 20), "deep": (3, 2100)}

#: the variants: conftest's cells, peepholes, and the layer-normalized cells
CASES = {**{name: (c.family, dict(c.options)) for name, c in BASE_CELLS.items()},
         "lstm-peephole": ("lstm", {"peephole": True}),
         "rnn-ln": ("rnn", {"layer_norm": True}),
         "gru-ln": ("gru", {"linear_before_reset": True, "layer_norm": True}),
         "lstm-ln": ("lstm", {"layer_norm": True})}


def _options(case, rng):
    """The forward keyword arguments of a case (peephole and layer-norm weights drawn)."""
    family, options = CASES[case]
    options = dict(options)
    G = fastcells._cells.CELLS[family].G
    if options.pop("peephole", False):
        options["peephole"] = rng.standard_normal(3 * H).astype(np.float32)
    if options.pop("layer_norm", False):
        vec = lambda n, m: (m + 0.3 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
        c = (vec(H, 1.0), vec(H, 0.0)) if family == "lstm" else (None, None)
        options["layer_norm"] = LayerNormWeights(vec(G * H, 1.0), vec(G * H, 0.0),
                                                 vec(G * H, 1.0), vec(G * H, 0.0), *c)
    return family, options


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, monkeypatch):
    """The thread count; at 2, the cost model lowered so that the small shapes split."""
    saved = fastcells.get_num_threads()
    fastcells.set_num_threads(request.param)
    if request.param > 1:
        for name in ("MIN_STEP_FLOPS_PER_THREAD", "MIN_STEP_FLOPS_FEW_ROWS",
                     "MIN_COLUMN_STEP_FLOPS_PER_THREAD", "MIN_GEMM_FLOPS_PER_THREAD"):
            monkeypatch.setattr(_parallel, name, 0)
        monkeypatch.setattr(_parallel, "COLUMN_SPLIT_MIN_H", 16)
        monkeypatch.setattr(_parallel, "COLUMN_MIN_UNITS", 16)
    yield request.param
    fastcells.set_num_threads(saved)


@pytest.fixture
def deterministic():
    """The deterministic mode on for the test, the setting restored after."""
    saved = fastcells.get_deterministic()
    fastcells.set_deterministic(True)
    yield
    fastcells.set_deterministic(saved)


#: a conftest cell of each family (make_inputs draws by it; only the gate count matters)
_DRAW_AS = {"rnn": "rnn-tanh", "gru": "gru-lbr", "lstm": "lstm"}


def _weights(family, rng, I):
    """Random ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh`` of a cell family."""
    w = make_inputs(_DRAW_AS[family], rng, 1, 1, I, H)
    return {k: w[k] for k in ("W_ih", "W_hh", "b_ih", "b_hh")}


def _sequence(family, rng, T, I):
    """One sequence: ``x`` (T, 1, I), ``h0`` (1, H) and, for an LSTM, ``c0``."""
    seq = make_inputs(_DRAW_AS[family], rng, T, 1, I, H)
    return {k: seq[k] for k in ("x", "h0", "c0") if k in seq}


def _embed(rng, seq, B, row, T, I):
    """A batch of B: the sequence's arrays (x (T, 1, I), states (1, H)) at ``row``, the
    other rows random."""
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[:, row] = seq["x"][:, 0]
    out = {"x": x}
    for name in ("h0", "c0"):
        if name in seq:
            s = rng.standard_normal((B, H)).astype(np.float32)
            s[row] = seq[name][0]
            out[name] = s
    return out


def _embed_with_lengths(rng, seq, B, row, T, I, own_length):
    """:func:`_embed`, and ``lengths`` (B,): random, the sequence's ``own_length`` at
    ``row`` (None when ``own_length`` is None)."""
    lengths = None
    if own_length is not None:
        lengths = rng.integers(0, T + 1, size=B)
        lengths[row] = own_length
    return _embed(rng, seq, B, row, T, I), lengths


def _has_c(family):
    return fastcells._cells.CELLS[family].has_cell_state


def _results(out, family):
    return (out.y, out.h, out.c) if _has_c(family) else (out.y, out.h)


def _assert_rows_equal(alone, batch, row, what):
    """``batch``'s results at ``row`` are ``alone``'s (batch 1) bit for bit."""
    for name, a, b in zip(("y", "h", "c"), alone, batch):
        got = b[:, row] if name == "y" else b[row]
        want = a[:, 0] if name == "y" else a[0]
        np.testing.assert_array_equal(got, want, err_msg=f"{what}: {name}")


def _check_forward(run, family, T, I, rng, chunk_floats=None, monkeypatch=None):
    """``run(x, h0, c0, lengths, reverse)`` gives the same rows at every batch."""
    seq = _sequence(family, rng, T, I)
    for reverse in (False, True):
        for own_length in (None, T - 1):       # a full sequence, one that ends early
            if chunk_floats is not None:       # inference in chunks of few steps
                monkeypatch.setattr(_packing, "CHUNK_FLOATS", chunk_floats)
            lens = None if own_length is None else np.array([own_length])
            alone = run(seq, lens, reverse)
            for B, row in BATCHES.items():
                batch, lengths = _embed_with_lengths(rng, seq, B, row, T, I, own_length)
                what = f"batch {B}, reverse {reverse}, lengths {lengths}"
                _assert_rows_equal(alone, run(batch, lengths, reverse), row, what)


def _functional(family, options):
    fwd = cell_functions(fastcells, family)[0]

    def run(arrays, lengths, reverse, weights):
        out = fwd(**arrays, **weights, **options, lengths=lengths, reverse=reverse)
        return _results(out, family)
    return run


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", list(CASES))
def test_forward_is_batch_invariant_in_the_deterministic_mode(case, shape, isa, threads,
                                                              deterministic, monkeypatch):
    rng = np.random.default_rng(SEED)
    family, options = _options(case, rng)
    T, I = SHAPES[shape]
    weights = _weights(family, rng, I)
    run = _functional(family, options)
    check = lambda seq, lens, rev: run(seq, lens, rev, weights)  # noqa: E731
    _check_forward(check, family, T, I, rng)
    G = fastcells._cells.CELLS[family].G
    _check_forward(check, family, T, I, rng, chunk_floats=2 * G * H, monkeypatch=monkeypatch)


@pytest.mark.parametrize("case", list(CASES))
def test_batches_of_two_rows_and_more_agree_by_default(case, isa, threads):
    """Without the mode, a sequence gets the same bits in every batch of 2 rows or
    more whose call is packed (T * B >= 32: here T = 16); batch 1 (the GEMV) and
    shorter calls (unpacked) may differ by float32 rounding."""
    assert not fastcells.get_deterministic()
    rng = np.random.default_rng(SEED + 4)
    family, options = _options(case, rng)
    T, I = 16, SHAPES["short"][1]
    assert not _packing.unpacked_projection(2 * T, I)
    weights = _weights(family, rng, I)
    run = _functional(family, options)
    seq = _sequence(family, rng, T, I)
    for reverse in (False, True):
        for own_length in (None, T - 3):
            got = {}
            for B, row in BATCHES.items():
                batch, lengths = _embed_with_lengths(rng, seq, B, row, T, I, own_length)
                out = run(batch, lengths, reverse, weights)
                got[B] = tuple(a[:, row:row + 1] if i == 0 else a[row:row + 1]
                               for i, a in enumerate(out))
            for B in BATCHES:
                _assert_rows_equal(got[2], got[B], 0, f"batch {B} vs 2, reverse {reverse}")


def _stepper(case, rng, I, weight_dtype):
    family, options = _options(case, rng)
    w = _weights(family, rng, I)
    kwargs = {k: options[k] for k in ("nonlinearity", "linear_before_reset", "peephole",
                                      "layer_norm") if k in options}
    step = Stepper(family, w["W_ih"], w["W_hh"], w["b_ih"], w["b_hh"],
                   weight_dtype=weight_dtype, **kwargs)
    return family, step


@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", list(CASES))
def test_stepper_forward_is_batch_invariant(case, weight_dtype, isa, threads, deterministic):
    rng = np.random.default_rng(SEED + 2)
    T, I = SHAPES["short"]
    family, step = _stepper(case, rng, I, weight_dtype)

    def run(arrays, lengths, reverse):
        return _results(step.forward(**arrays, lengths=lengths, reverse=reverse), family)
    _check_forward(run, family, T, I, rng)


@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", list(CASES))
def test_stepper_steps_are_batch_invariant(case, weight_dtype, isa, deterministic):
    rng = np.random.default_rng(SEED + 3)
    T, I = 4, SHAPES["short"][1]
    family, step = _stepper(case, rng, I, weight_dtype)
    runs = {1: (0, _sequence(family, rng, T, I))}
    for B, row in BATCHES.items():
        runs[B] = (row, _embed(rng, runs[1][1], B, row, T, I))
    states = {B: [a[k] for k in ("h0", "c0") if k in a] for B, (_, a) in runs.items()}
    for t in range(T):
        for B, (_, arrays) in runs.items():
            new = step(arrays["x"][t], *states[B])
            states[B] = list(new) if _has_c(family) else [new]
        for B, (row, _) in runs.items():
            for name, got, want in zip(("h", "c"), states[B], states[1]):
                np.testing.assert_array_equal(got[row], want[0],
                                              err_msg=f"step {t}, batch {B}: {name}")


# ----------------------------------------------------------------------------
# the setting


@pytest.fixture
def _restore_mode():
    saved = _config._deterministic
    yield
    _config._deterministic = saved


def test_set_and_get(_restore_mode):
    for flag in (True, False, np.bool_(True)):
        fastcells.set_deterministic(flag)
        assert fastcells.get_deterministic() is bool(flag)
        assert _config.config()["deterministic"] is bool(flag)
        assert _kernels.get_gemv_tiles() is bool(flag)    # the batch-1 products' order


@pytest.mark.parametrize("bad", [1, 0, "1", None, 1.0])
def test_set_deterministic_refuses_what_is_not_a_bool(bad, _restore_mode):
    before = fastcells.get_deterministic()
    with pytest.raises(TypeError, match=r"^flag: expected True or False, got"):
        fastcells.set_deterministic(bad)
    assert fastcells.get_deterministic() is before


def test_show_config_prints_the_mode(capsys, _restore_mode):
    fastcells.set_deterministic(True)
    fastcells.show_config()
    assert "deterministic: on (forward results do not depend on the batch)" in \
        capsys.readouterr().out
    fastcells.set_deterministic(False)
    fastcells.show_config()
    assert "deterministic: off (results may differ with the batch" in capsys.readouterr().out


def _import_with(value):
    code = "import fastcells; print(fastcells.get_deterministic())"
    env = {"FASTCELLS_DETERMINISTIC": value}
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value, flag", [("1", "True"), ("0", "False"), (" 1 ", "True"),
                                         ("", "False")])
def test_environment_variable_sets_the_mode(value, flag):
    out = _import_with(value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == flag


@pytest.mark.parametrize("value", ["yes", "2", "true", "-1"])
def test_bad_environment_variable_fails_at_import_naming_it(value):
    out = _import_with(value)
    assert out.returncode != 0
    assert f"FASTCELLS_DETERMINISTIC: expected 0 or 1, got {value!r}" in out.stderr


def test_the_mode_packs_short_calls(monkeypatch, _restore_mode):
    """Short calls multiply unpacked by default and packed in the mode, read once per call."""
    packings = []
    real = _packing.weights_for_call

    def spy(*args, **kwargs):
        w = real(*args, **kwargs)
        packings.append(w.packing)
        return w
    monkeypatch.setattr(fastcells.functional, "weights_for_call", spy)
    rng = np.random.default_rng(SEED)
    inputs = make_inputs("lstm", rng, 3, 1, 8, H)
    fastcells.set_deterministic(False)
    off = fastcells.lstm_forward(**inputs)
    fastcells.set_deterministic(True)
    on = fastcells.lstm_forward(**inputs)
    assert packings == [_kernels.PACK_NONE, _kernels.PACK_FLOAT]
    np.testing.assert_allclose(on.y, off.y, rtol=0, atol=1e-5)


def test_setting_the_mode_while_calls_run(_restore_mode):
    """Calls on other threads while the mode flips: no error, and results that are
    those of either mode (here the batch-1 products of both modes meet in one call:
    float32 rounding apart from either)."""
    rng = np.random.default_rng(SEED)
    inputs = make_inputs("lstm", rng, 5, 1, 20, H)
    want = {}
    for flag in (False, True):
        fastcells.set_deterministic(flag)
        want[flag] = fastcells.lstm_forward(**inputs)
    assert not np.array_equal(want[False].y, want[True].y)   # the modes differ here
    stop = threading.Event()
    failures, calls = [], [0, 0]

    def caller(i):
        while not stop.is_set():
            got = fastcells.lstm_forward(**inputs)
            calls[i] += 1
            if not all(np.allclose(getattr(got, f), getattr(want[False], f), rtol=0,
                                   atol=1e-5) for f in "yhc"):
                failures.append(got)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    flips = 0
    while min(calls) < 30:
        fastcells.set_deterministic(flips % 2 == 0)
        flips += 1
        time.sleep(0)   # let the callers run between flips
    stop.set()
    for t in threads:
        t.join()
    assert not failures


def test_concurrent_setters_leave_one_mode(_restore_mode):
    """The mode and the kernels' batch-1 flag change together, whatever the setters."""
    def setter(flag):
        for _ in range(2000):
            fastcells.set_deterministic(flag)

    threads = [threading.Thread(target=setter, args=(flag,)) for flag in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _kernels.get_gemv_tiles() is fastcells.get_deterministic()
