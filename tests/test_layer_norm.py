"""Layer-normalized cells in the compiled kernels, the Stepper and the layers.

The float32 kernels against the float64 reference (``fastcells.reference``,
checked itself by finite differences) on every option -- lengths, reverse,
no biases, no initial state, peepholes, the ISA paths -- forward and every
gradient, the gains' and biases' included; the same bits at 1, 2 and 3
threads (the loops split by batch rows; a normalized loop never splits by
hidden units); inference equal to training, in chunks too; the Stepper and
``layer.step`` equal to the sequence call; the layers' parameters, gradients,
state dicts and training; and bad input refused before any work.
"""
import numpy as np
import pytest
from conftest import (
    CELLS,
    FWD_TOL,
    GRAD_OF,
    GRAD_TOL,
    SEED,
    assert_close,
    backward,
    forward,
    is_lstm,
    make_inputs,
    make_lengths,
    make_upstream,
    max_error,
)

import fastcells
from fastcells import _kernels, _packing, _parallel, reference
from fastcells.functional import LayerNormWeights, Stepper

#: the cell variants that have a normalized form (not the GRU without linear_before_reset)
LN_CELLS = [c for c in CELLS if c != "gru-cho"]
#: the fields of LayerNormWeights each cell has (the LSTM's c_* too)
LN_FIELDS = LayerNormWeights._fields


def make_ln(cell, rng, H, dtype=np.float32):
    """Random gains (around 1) and biases, float32-representable whatever ``dtype``."""
    G = CELLS[cell].gates
    sizes = [G * H] * 4 + ([H, H] if is_lstm(cell) else [])
    values = [(1 + 0.3 * rng.standard_normal(n)) if i % 2 == 0 else 0.3 * rng.standard_normal(n)
              for i, n in enumerate(sizes)]
    return LayerNormWeights(*(v.astype(np.float32).astype(dtype) for v in values))


def case(cell, T, B, I, H, *, seed=0, bias=True, initial_state=True, peephole=False):
    rng = np.random.default_rng([SEED, LN_CELLS.index(cell), T, B, I, H, seed])
    inputs = make_inputs(cell, rng, T, B, I, H, bias=bias, initial_state=initial_state)
    if peephole:
        inputs["peephole"] = (0.5 * rng.standard_normal(3 * H)).astype(np.float32)
    return inputs, make_ln(cell, rng, H), make_upstream(cell, rng, T, B, H), rng


def ln_fields(cell):
    return LN_FIELDS if is_lstm(cell) else LN_FIELDS[:4]


def _reference_run(cell, inputs, ln, upstream, dtype, **options):
    as_dtype = (lambda v: None if v is None or isinstance(v, (int, np.integer))  # noqa: E731
                else np.asarray(v, dtype))
    out = forward(reference, cell, {k: v if k == "lengths" else as_dtype(v)
                                    for k, v in inputs.items()}, training=True,
                  layer_norm=LayerNormWeights(*(as_dtype(v) for v in ln)), **options)
    return out, backward(reference, cell, out.cache,
                         {k: as_dtype(v) for k, v in upstream.items()})


def _results(cell, inputs, out, grads):
    """name -> array of everything compared: outputs, gradients, the gains' gradients."""
    names = ["y", "h", "c"] if is_lstm(cell) else ["y", "h"]
    arrays = {n: getattr(out, n) for n in names}
    arrays.update((n, getattr(grads, n)) for a, n in GRAD_OF.items() if a in inputs)
    arrays.update((f"dlayer_norm.{f}", getattr(grads.dlayer_norm, f)) for f in ln_fields(cell))
    if "peephole" in inputs:
        arrays["dpeephole"] = grads.dpeephole
    return arrays


def check_against_reference(cell, inputs, ln, upstream, **options):
    """The kernels against the float64 reference, within the suite's tolerances, or
    within 3x what the reference itself attains in float32 when that is more:
    normalization divides by a row's spread, so a row whose values lie close
    together (relative to their size) magnifies float32 rounding in any
    implementation of the same equations."""
    out = forward(fastcells, cell, inputs, training=True, layer_norm=ln, **options)
    grads = backward(fastcells, cell, out.cache, upstream)
    got = _results(cell, inputs, out, grads)
    want = _results(cell, inputs, *_reference_run(cell, inputs, ln, upstream, np.float64,
                                                  **options))
    f32 = _results(cell, inputs, *_reference_run(cell, inputs, ln, upstream, np.float32,
                                                 **options))
    assert type(grads).__name__ == f"LayerNorm{'LSTM' if is_lstm(cell) else ''}Gradients"
    for name, value in got.items():
        assert value is None or value.dtype == np.float32, name
        tol = FWD_TOL if name in ("y", "h", "c") else GRAD_TOL
        if want[name] is not None:
            tol = max(tol, 3 * max_error(f32[name], want[name]))
        assert_close(value, want[name], tol, name)
    return out, grads


# ----------------------------------------------------------------------------
# the kernels against the reference

#: (T, B, I, H): one step, a batch off the vector widths, a long batch-1 run, wide H
SHAPES = [(1, 1, 3, 5), (7, 3, 5, 17), (23, 1, 4, 8), (5, 16, 9, 64)]
OPTIONS = {
    "plain": {},
    "lengths": {"with_lengths": True},
    "reverse": {"reverse": True},
    "lengths-reverse": {"with_lengths": True, "reverse": True},
    "no-bias-no-h0": {"bias": False, "initial_state": False},
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("cell", LN_CELLS)
def test_matches_reference(cell, shape, option, isa):
    opts = dict(OPTIONS[option])
    with_lengths = opts.pop("with_lengths", False)
    reverse = opts.pop("reverse", False)
    inputs, ln, upstream, rng = case(cell, *shape, **opts)
    lengths = make_lengths(rng, shape[0], shape[1]) if with_lengths else None
    check_against_reference(cell, inputs, ln, upstream, lengths=lengths, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_lstm_peephole_matches_reference(with_lengths, reverse, isa):
    inputs, ln, upstream, rng = case("lstm", 9, 5, 6, 12, peephole=True)
    lengths = make_lengths(rng, 9, 5) if with_lengths else None
    check_against_reference("lstm", inputs, ln, upstream, lengths=lengths, reverse=reverse)


@pytest.mark.parametrize("eps", [1e-5, 0.5])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_eps_matches_reference(cell, eps):
    # a large eps changes the numbers: the kernels use the one given
    inputs, ln, upstream, _ = case(cell, 4, 3, 5, 7)
    check_against_reference(cell, inputs, ln, upstream, layer_norm_eps=eps)


@pytest.mark.parametrize("cell", LN_CELLS)
def test_constant_rows_stay_finite(cell):
    # zero inputs, zero state: every row of W x is constant (variance 0); eps keeps it finite
    inputs, ln, upstream, _ = case(cell, 3, 2, 4, 6, initial_state=False)
    inputs["x"] = np.zeros_like(inputs["x"])
    out, grads = check_against_reference(cell, inputs, ln, upstream)
    assert np.isfinite(out.y).all() and all(np.isfinite(g).all() for g in grads.dlayer_norm
                                            if g is not None)


@pytest.mark.parametrize("T, B", [(0, 3), (4, 0)])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_empty_work(cell, T, B):
    inputs, ln, upstream, _ = case(cell, T, B, 3, 5)
    out = forward(fastcells, cell, inputs, training=True, layer_norm=ln)
    assert out.y.shape == (T, B, 5)
    grads = backward(fastcells, cell, out.cache, upstream)
    for field in ln_fields(cell):
        g = getattr(grads.dlayer_norm, field)
        assert g.shape == getattr(ln, field).shape and not g.any(), field


@pytest.mark.parametrize("cell", LN_CELLS)
def test_without_layer_norm_the_types_are_unchanged(cell):
    inputs, _, upstream, _ = case(cell, 3, 2, 4, 5)
    grads = backward(fastcells, cell, forward(fastcells, cell, inputs, training=True).cache,
                     upstream)
    assert not hasattr(grads, "dlayer_norm")


# ----------------------------------------------------------------------------
# threads: the same bits at any count, by batch rows only


@pytest.fixture
def split_everything(monkeypatch):
    """Lower the cost model's thresholds so that small shapes split, and record the
    plans the loops get (``blocks``, ``cols``)."""
    monkeypatch.setattr(_parallel, "MIN_ROWS_PER_THREAD", _parallel.SPLIT_MIN_ROWS)
    monkeypatch.setattr(_parallel, "MIN_STEP_FLOPS_PER_THREAD", 0)
    monkeypatch.setattr(_parallel, "MIN_GEMM_FLOPS_PER_THREAD", 0)
    record = {"blocks": [], "cols": []}
    for family in ("rnn", "gru", "lstm"):
        for kind in ("forward", "backward"):
            real = getattr(_kernels, f"{family}_{kind}")

            def spy(*args, _real=real, **kwargs):
                record["blocks"].append(args[-1])
                record["cols"].append(kwargs.get("cols"))
                return _real(*args, **kwargs)
            monkeypatch.setattr(_kernels, f"{family}_{kind}", spy)
    saved = fastcells.get_num_threads()
    yield record
    fastcells.set_num_threads(saved)


def _all_arrays(cell, inputs, ln, upstream, lengths, reverse, training):
    out = forward(fastcells, cell, inputs, layer_norm=ln, lengths=lengths, reverse=reverse,
                  training=training)
    arrays = {f: getattr(out, f) for f in out._fields if f != "cache"}
    if training:
        arrays.update((f"cache.{k}", v) for k, v in out.cache.arrays.items()
                      if isinstance(v, np.ndarray))
        grads = backward(fastcells, cell, out.cache, upstream)
        for f in grads._fields:
            v = getattr(grads, f)
            if f == "dlayer_norm":
                arrays.update((f"d{k}", w) for k, w in zip(LN_FIELDS, v) if w is not None)
            elif v is not None:
                arrays[f] = v
    return arrays


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_same_bits_for_any_thread_count(split_everything, monkeypatch, cell, with_lengths,
                                        reverse, training):
    B, H = 9, 24
    # inference in chunks of a few steps: each chunk's projection and loop split too
    monkeypatch.setattr(_packing, "CHUNK_FLOATS", 3 * B * CELLS[cell].gates * H)
    inputs, ln, upstream, rng = case(cell, 7, B, 10, H, peephole=is_lstm(cell))
    lengths = make_lengths(rng, 7, B) if with_lengths else None
    fastcells.set_num_threads(1)
    want = _all_arrays(cell, inputs, ln, upstream, lengths, reverse, training)
    assert all(b is None for b in split_everything["blocks"])
    for n in (2, 3):
        split_everything["blocks"].clear()
        fastcells.set_num_threads(n)
        got = _all_arrays(cell, inputs, ln, upstream, lengths, reverse, training)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{n} threads: {k}")
        plans = split_everything["blocks"]
        assert plans and all(p is not None and len(p) - 1 == min(n, B // 2) for p in plans)


@pytest.mark.parametrize("cell", LN_CELLS)
def test_small_batches_never_split_by_units(split_everything, monkeypatch, cell):
    # batch 1, large H: a plain call splits each step by hidden units; a normalized
    # one needs whole rows for its statistics, so it runs on one thread
    monkeypatch.setattr(_parallel, "MIN_COLUMN_STEP_FLOPS_PER_THREAD", 0)
    inputs, ln, _, _ = case(cell, 20, 1, 8, 256)
    fastcells.set_num_threads(1)
    want = forward(fastcells, cell, inputs, layer_norm=ln)
    fastcells.set_num_threads(2)
    split_everything["cols"].clear()
    forward(fastcells, cell, inputs)          # the plain call does split by units
    assert any(c is not None for c in split_everything["cols"])
    split_everything["cols"].clear()
    got = forward(fastcells, cell, inputs, layer_norm=ln)
    assert all(c is None for c in split_everything["cols"])
    np.testing.assert_array_equal(got.y, want.y)


def test_kernel_refuses_a_column_plan_with_layer_norm():
    inputs, ln, _, _ = case("rnn-tanh", 2, 1, 3, 32)
    H = 32
    gx = np.zeros((2, 1, H), np.float32)
    wp = _kernels.pack(inputs["W_hh"], True)
    with pytest.raises(ValueError, match="cols: expected None for a layer-normalized loop"):
        _kernels.rnn_forward(0, gx, wp, _kernels.PACK_FLOAT, np.zeros((1, H), np.float32),
                             np.zeros((2, 1, H), np.float32), None, False, False,
                             np.zeros((1, H), np.float32), None,
                             cols=np.array([0, 16, 32], np.int64),
                             ln=(ln.hh_weight, ln.hh_bias, None, None, 1e-5, None, None, None,
                                 None))


# ----------------------------------------------------------------------------
# inference, chunks and streaming


@pytest.mark.parametrize("cell", LN_CELLS)
def test_inference_equals_training_and_chunks(monkeypatch, cell):
    inputs, ln, _, rng = case(cell, 11, 4, 6, 16, peephole=is_lstm(cell))
    lengths = make_lengths(rng, 11, 4)
    train = forward(fastcells, cell, inputs, layer_norm=ln, lengths=lengths, training=True)
    infer = forward(fastcells, cell, inputs, layer_norm=ln, lengths=lengths)
    monkeypatch.setattr(_packing, "CHUNK_FLOATS", 2 * 4 * CELLS[cell].gates * 16)
    chunked = forward(fastcells, cell, inputs, layer_norm=ln, lengths=lengths, reverse=False)
    for f in ("y", "h", "c") if is_lstm(cell) else ("y", "h"):
        np.testing.assert_array_equal(getattr(infer, f), getattr(train, f), err_msg=f)
        np.testing.assert_array_equal(getattr(chunked, f), getattr(train, f), err_msg=f)


def _stepper_args(cell, inputs):
    args = [inputs[k] for k in ("W_ih", "W_hh", "b_ih", "b_hh")]
    kw = dict(CELLS[cell].options)
    if "peephole" in inputs:
        kw["peephole"] = inputs["peephole"]
    return args, kw


@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_stepper_streams_a_normalized_cell(cell, weight_dtype):
    T, B, I, H = 6, 3, 5, 16
    inputs, ln, _, _ = case(cell, T, B, I, H, peephole=is_lstm(cell))
    args, kw = _stepper_args(cell, inputs)
    step = Stepper(CELLS[cell].family, *args, layer_norm=ln, weight_dtype=weight_dtype, **kw)
    if weight_dtype == "float16":      # the bits of a float32 Stepper of the rounded weights
        inputs = {**inputs, **{k: inputs[k].astype(np.float16).astype(np.float32)
                               for k in ("W_ih", "W_hh")}}
    seq = forward(fastcells, cell, inputs, layer_norm=ln)
    h0 = inputs["h0"]
    state = (h0, inputs["c0"]) if is_lstm(cell) else (h0,)
    for t in range(T):
        new = step(inputs["x"][t], *state)
        state = new if is_lstm(cell) else (new,)
    assert_close(state[0], seq.h, FWD_TOL, "h")
    if is_lstm(cell):
        assert_close(state[1], seq.c, FWD_TOL, "c")
    served = step.forward(inputs["x"], *[inputs[k] for k in ("h0", "c0") if k in inputs])
    assert_close(served.y, seq.y, FWD_TOL, "forward y")


def test_stepper_without_layer_norm_unchanged():
    inputs, ln, _, _ = case("lstm", 4, 2, 3, 8)
    args, kw = _stepper_args("lstm", inputs)
    plain = Stepper("lstm", *args, **kw).forward(inputs["x"]).y
    normed = Stepper("lstm", *args, layer_norm=ln, **kw).forward(inputs["x"]).y
    # (a short call projects unpacked: float32 rounding apart, see Stepper.forward)
    assert_close(plain, forward(fastcells, "lstm", {**inputs, "h0": None, "c0": None}).y,
                 FWD_TOL, "y")
    assert not np.allclose(plain, normed)


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("cell", LN_CELLS)
def test_bad_layer_norm_is_refused_naming_the_argument(cell):
    inputs, ln, _, _ = case(cell, 3, 2, 4, 5)
    G = CELLS[cell].gates
    with pytest.raises(ValueError, match=rf"layer_norm.ih_weight: .*\({G}\*H,\).*{G * 5}"):
        forward(fastcells, cell, inputs, layer_norm=ln._replace(ih_weight=np.ones(G * 5 + 1)))
    with pytest.raises(TypeError, match="layer_norm.hh_bias"):
        forward(fastcells, cell, inputs, layer_norm=ln._replace(hh_bias=np.zeros(G * 5, int)))
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="layer_norm_eps"):
            forward(fastcells, cell, inputs, layer_norm=ln, layer_norm_eps=eps)
    if is_lstm(cell):
        with pytest.raises(ValueError, match="layer_norm.c_weight"):
            forward(fastcells, cell, inputs, layer_norm=tuple(ln[:4]) + (None, ln.c_bias))
    else:
        with pytest.raises(ValueError, match="layer_norm.c_weight"):
            forward(fastcells, cell, inputs, layer_norm=tuple(ln[:4]) + (np.ones(5), np.zeros(5)))
    with pytest.raises(TypeError, match="layer_norm"):
        forward(fastcells, cell, inputs, layer_norm=np.ones(4))


def test_gru_without_linear_before_reset_is_refused():
    inputs, ln, _, _ = case("gru-lbr", 3, 2, 4, 5)
    for call in (lambda: fastcells.gru_forward(**inputs, linear_before_reset=False,
                                               layer_norm=ln),
                 lambda: Stepper("gru", inputs["W_ih"], inputs["W_hh"],
                                 linear_before_reset=False, layer_norm=ln),
                 lambda: fastcells.GRU(4, 5, linear_before_reset=False, layer_norm=True)):
        with pytest.raises(ValueError, match="linear_before_reset"):
            call()


def test_callers_arrays_are_not_written():
    inputs, ln, upstream, _ = case("lstm", 5, 3, 4, 6, peephole=True)
    saved = [v.copy() for v in ln]
    out = fastcells.lstm_forward(**inputs, layer_norm=ln, training=True)
    fastcells.lstm_backward(out.cache, **upstream)
    Stepper("lstm", inputs["W_ih"], inputs["W_hh"], layer_norm=ln)(inputs["x"][0])
    for a, b in zip(ln, saved):
        np.testing.assert_array_equal(a, b)


def test_cache_keeps_its_own_gains():
    # backward uses the gains of the forward pass, not the caller's later edits
    inputs, ln, upstream, _ = case("lstm", 5, 3, 4, 6)
    ln = LayerNormWeights(*(v.copy() for v in ln))
    out = fastcells.lstm_forward(**inputs, layer_norm=ln, training=True)
    want = fastcells.lstm_backward(out.cache, **upstream)
    for v in ln:
        v *= 3
    got = fastcells.lstm_backward(out.cache, **upstream)
    np.testing.assert_array_equal(got.dx, want.dx)
    np.testing.assert_array_equal(got.dlayer_norm.c_weight, want.dlayer_norm.c_weight)


# ----------------------------------------------------------------------------
# layers

LAYERS = {"rnn-tanh": fastcells.RNN, "gru-lbr": fastcells.GRU, "lstm": fastcells.LSTM}


def _ln_names(layer, k, suffix=""):
    paths = ("ih", "hh", "c") if isinstance(layer, fastcells.LSTM) else ("ih", "hh")
    return [f"ln_{p}_{kind}_l{k}{suffix}" for p in paths for kind in ("weight", "bias")]


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_parameters_and_state_dict(name):
    layer = LAYERS[name](5, 8, num_layers=2, bidirectional=True, layer_norm=True, seed=3)
    plain = LAYERS[name](5, 8, num_layers=2, bidirectional=True, seed=3)
    sd = layer.state_dict()
    G = CELLS[name].gates
    for k in range(2):
        for suffix in ("", "_reverse"):
            for key in _ln_names(layer, k, suffix):
                n = 8 if "_c_" in key else G * 8
                assert sd[key].shape == (n,) and sd[key].dtype == np.float32, key
                np.testing.assert_array_equal(sd[key], 1.0 if "_weight_" in key else 0.0)
                assert layer.grads[key].shape == (n,)
    # the weights are those of the same seed's plain layer; the LN parameters come after
    assert [k for k in sd if not k.startswith("ln_")] == list(plain.state_dict())
    for k, v in plain.state_dict().items():
        np.testing.assert_array_equal(sd[k], v)
    assert "layer_norm=True" in repr(layer)
    # round trip, and a plain state dict does not fit
    other = LAYERS[name](5, 8, num_layers=2, bidirectional=True, layer_norm=True, seed=4)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    with pytest.raises(ValueError, match="missing keys"):
        layer.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_the_reference_backend(name):
    rng = np.random.default_rng(SEED)
    kw = dict(num_layers=2, bidirectional=True, layer_norm=True, seed=5)
    fast = LAYERS[name](4, 6, **kw)
    ref = LAYERS[name](4, 6, backend=reference, **kw)
    sd = {k: (v + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
          for k, v in fast.state_dict().items()}
    fast.load_state_dict(sd)
    ref.load_state_dict(sd)
    x = rng.standard_normal((7, 3, 4)).astype(np.float32)
    lengths = np.array([7, 3, 5])
    y, _ = fast(x, lengths=lengths)
    y_ref, _ = ref(x.astype(np.float64), lengths=lengths)
    assert_close(y, y_ref, FWD_TOL, "y")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = fast.backward(dy)
    dx_ref, _ = ref.backward(dy.astype(np.float64))
    assert_close(dx, dx_ref, GRAD_TOL, "dx")
    for k in fast.grads:
        assert_close(fast.grads[k], ref.grads[k], GRAD_TOL, k)


@pytest.mark.parametrize("backend", [None, reference], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_step_equals_the_sequence_call(name, backend):
    layer = LAYERS[name](4, 16, num_layers=2, layer_norm=True, seed=6, backend=backend).eval()
    rng = np.random.default_rng(SEED)
    for v in layer.parameters().values():
        v += 0.1 * rng.standard_normal(v.shape).astype(np.float32)
    layer.parameters_changed()
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    y, final = layer(x)
    state = None
    for t in range(5):
        y_t, state = layer.step(x[t], state)
        assert_close(y_t, y[t], FWD_TOL, f"step {t}")
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    final if isinstance(final, tuple) else (final,)):
        assert_close(a, b, FWD_TOL, "state")


@pytest.mark.parametrize("name", list(LAYERS))
def test_training_a_normalized_layer_reduces_the_loss(name):
    rng = np.random.default_rng(SEED)
    layer = LAYERS[name](3, 12, num_layers=2, dropout=0.1, layer_norm=True, seed=7)
    head = fastcells.Linear(12, 1, seed=8)
    opt = fastcells.optim.Adam([layer, head], lr=0.01)
    x = rng.standard_normal((10, 8, 3)).astype(np.float32)
    target = np.cumsum(x[..., :1], axis=0) * 0.3

    def epoch():
        opt.zero_grad()
        y, _ = layer(x)
        pred = head(y)
        loss = float(((pred - target) ** 2).mean())
        layer.backward(head.backward(2 * (pred - target) / pred.size))
        opt.step()
        return loss
    first = epoch()
    for _ in range(40):
        last = epoch()
    assert last < 0.5 * first
    # the gains moved: their gradients reached the optimizer
    assert not np.allclose(layer.state_dict()["ln_hh_weight_l0"], 1.0)


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="layer_norm_eps"):
        fastcells.LSTM(3, 4, layer_norm=True, layer_norm_eps=0)
    with pytest.raises(TypeError, match="layer_norm"):
        fastcells.LSTM(3, 4, layer_norm="yes")


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_float16_step_is_the_rounded_weights_step(name):
    # float16 step weights: the bits of a float32 step of the weights rounded to float16
    half = LAYERS[name](4, 16, num_layers=2, layer_norm=True, seed=9).eval()
    rounded = LAYERS[name](4, 16, num_layers=2, layer_norm=True, seed=9).eval()
    rng = np.random.default_rng(SEED)
    for v in half.parameters().values():
        v += 0.1 * rng.standard_normal(v.shape).astype(np.float32)
    half.parameters_changed()
    rounded.load_state_dict({k: v.astype(np.float16).astype(np.float32)
                             if k.startswith("weight_") else v
                             for k, v in half.state_dict().items()})
    half.step_weight_dtype = "float16"
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    s_half = s_rounded = None
    for t in range(3):
        y_half, s_half = half.step(x[t], s_half)
        y_rounded, s_rounded = rounded.step(x[t], s_rounded)
        np.testing.assert_array_equal(y_half, y_rounded)
