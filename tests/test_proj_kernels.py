"""LSTM with projection (``W_hr`` (P, H), PyTorch's ``proj_size``) in the compiled loops.

``h' = W_hr (o * tanh(c'))``: the kernels (forward, BPTT, ``Stepper``) against the
float64 reference on every option and ISA path, against ``torch.nn.LSTM(proj_size)``,
the same bits at any thread count, and the refusals of bad input.
"""
import numpy as np
import pytest
from conftest import (
    FWD_TOL,
    GRAD_TOL,
    SEED,
    assert_close,
    make_inputs,
    make_lengths,
    max_error,
)
from test_layer_norm import OPTIONS as LN_OPTIONS
from test_layer_norm import make_ln, split_everything  # noqa: F401 (a fixture)

import fastcells
from fastcells import _kernels, _packing, _parallel, reference
from fastcells._results import ProjLSTMGradients
from fastcells.functional import Stepper

#: forward argument -> name of its gradient
GRAD_OF = {"x": "dx", "h0": "dh0", "c0": "dc0", "W_ih": "dW_ih", "W_hh": "dW_hh",
           "b_ih": "db_ih", "b_hh": "db_hh", "W_hr": "dW_hr", "peephole": "dpeephole"}


def proj_case(T, B, I, H, P, *, seed=0, bias=True, initial_state=True, peephole=False):
    """Inputs of a projected LSTM (float32 values), its upstream gradients, a generator."""
    rng = np.random.default_rng([SEED, T, B, I, H, P, seed])
    inputs = make_inputs("lstm", rng, T, B, I, H, bias=bias, initial_state=initial_state)
    scale = 1.5 / np.sqrt(H)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inputs["W_hh"] = (f32(4 * H, P) * scale).astype(np.float32)
    inputs["W_hr"] = (f32(P, H) * scale * 2).astype(np.float32)
    if initial_state:
        inputs["h0"] = f32(B, P)
    if peephole:
        inputs["peephole"] = (0.5 * f32(3 * H)).astype(np.float32)
    upstream = {"dy": f32(T, B, P), "dh": f32(B, P), "dc": f32(B, H)}
    return inputs, upstream, rng


def _run(module, inputs, upstream, dtype, **options):
    cast = {k: v if v is None or k == "lengths" or isinstance(v, tuple) else
            np.asarray(v, dtype) for k, v in {**inputs, **upstream}.items()}
    if options.get("layer_norm") is not None:
        options = {**options, "layer_norm": tuple(np.asarray(v, dtype)
                                                  for v in options["layer_norm"])}
    out = module.lstm_forward(**{k: cast[k] for k in inputs}, training=True, **options)
    grads = module.lstm_backward(out.cache, **{k: cast[k] for k in upstream})
    arrays = {"y": out.y, "h": out.h, "c": out.c}
    for name in GRAD_OF.values():
        arrays[name] = getattr(grads, name)
    if grads.dlayer_norm is not None:
        arrays.update((f"dlayer_norm.{f}", v) for f, v in zip(grads.dlayer_norm._fields,
                                                               grads.dlayer_norm))
    return out, grads, arrays


def check_against_reference(inputs, upstream, **options):
    """The kernels against the float64 reference, within the suite's tolerances, or
    within 3x what the reference itself attains in float32 when that is more (as
    tests/test_layer_norm.py: a normalized row of close values magnifies rounding)."""
    out, grads, got = _run(fastcells, inputs, upstream, np.float32, **options)
    want = _run(reference, inputs, upstream, np.float64, **options)[2]
    f32 = _run(reference, inputs, upstream, np.float32, **options)[2]
    assert type(grads) is ProjLSTMGradients
    for name, value in got.items():
        if want[name] is None:
            assert value is None, name
            continue
        assert value.dtype == np.float32, name
        tol = FWD_TOL if name in ("y", "h", "c") else GRAD_TOL
        tol = max(tol, 3 * max_error(f32[name], want[name]))
        assert_close(value, want[name], tol, name)
    return out, grads


# ----------------------------------------------------------------------------
# the kernels against the reference

#: (T, B, I, H, P): one step; a batch off the vector widths; batch 1 long (packed) and
#: short (W_hh, W_hr unpacked), P = 1; a wide batch and H
SHAPES = [(1, 1, 3, 5, 2), (7, 3, 5, 17, 4), (23, 1, 4, 8, 1), (5, 1, 3, 20, 3),
          (5, 16, 9, 64, 24)]
#: the options of tests/test_layer_norm.py, and those the projection combines with
OPTIONS = {
    **LN_OPTIONS,
    "peephole": {"peephole": True, "with_lengths": True},
    "layer-norm": {"layer_norm": True},
    "everything": {"layer_norm": True, "peephole": True, "with_lengths": True,
                   "reverse": True},
}


def _case_and_options(shape, option, seed=0):
    o = dict(OPTIONS[option])
    T, B = shape[:2]
    inputs, upstream, rng = proj_case(*shape, seed=seed, bias=o.pop("bias", True),
                                      initial_state=o.pop("initial_state", True),
                                      peephole=o.pop("peephole", False))
    options = {"reverse": o.pop("reverse", False)}
    if o.pop("with_lengths", False):
        options["lengths"] = make_lengths(rng, T, B)
    if o.pop("layer_norm", False):
        options["layer_norm"] = make_ln("lstm", rng, shape[3])
    assert not o, o
    return inputs, upstream, options


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
def test_matches_reference(shape, option, isa):
    inputs, upstream, options = _case_and_options(shape, option)
    out, grads = check_against_reference(inputs, upstream, **options)
    T, B, _, H, P = shape
    assert out.y.shape == (T, B, P) and out.h.shape == (B, P) and out.c.shape == (B, H)
    assert grads.dW_hr.shape == (P, H) and grads.dW_hh.shape == (4 * H, P)
    assert (grads.dpeephole is None) == ("peephole" not in inputs)
    assert (grads.dlayer_norm is None) == ("layer_norm" not in options)


def test_zero_lengths_keep_the_initial_state_and_get_no_gradient():
    inputs, upstream, _ = proj_case(4, 3, 3, 8, 3)
    lengths = np.array([0, 4, 0])
    out, grads = check_against_reference(inputs, upstream, lengths=lengths)
    np.testing.assert_array_equal(out.y[:, [0, 2]], 0)
    np.testing.assert_array_equal(out.h[[0, 2]], inputs["h0"][[0, 2]])
    np.testing.assert_array_equal(out.c[[0, 2]], inputs["c0"][[0, 2]])
    # an empty sequence's state gradient passes through unchanged
    np.testing.assert_array_equal(grads.dh0[[0, 2]], upstream["dh"][[0, 2]])
    np.testing.assert_array_equal(grads.dc0[[0, 2]], upstream["dc"][[0, 2]])


def test_empty_work_returns_the_initial_states_and_zero_gradients():
    inputs, _, _ = proj_case(3, 2, 3, 6, 2)
    out = fastcells.lstm_forward(**{**inputs, "x": inputs["x"][:0]}, training=True)
    assert out.y.shape == (0, 2, 2)
    np.testing.assert_array_equal(out.h, inputs["h0"])
    grads = fastcells.lstm_backward(out.cache, dh=np.ones((2, 2), np.float32))
    assert type(grads) is ProjLSTMGradients
    np.testing.assert_array_equal(grads.dh0, 1)
    np.testing.assert_array_equal(grads.dW_hr, np.zeros((2, 6)))


def test_chunked_inference_gives_the_training_bits_and_keeps_no_m(monkeypatch):
    # inference projects a few steps at a time and keeps no (T, B, H) m: memory does not
    # grow with T; the same bits as training's one piece
    T, B, H = 13, 4, 16
    inputs, _, rng = proj_case(T, B, 5, H, 5, peephole=True)
    lengths = make_lengths(rng, T, B)
    want = fastcells.lstm_forward(**inputs, lengths=lengths, training=True)
    seen = []
    real = _kernels.lstm_forward

    def spy(*args, **kwargs):
        seen.append((args[1].shape[0], kwargs["proj"][1]))
        return real(*args, **kwargs)
    monkeypatch.setattr(_kernels, "lstm_forward", spy)
    monkeypatch.setattr(_packing, "CHUNK_FLOATS", 3 * B * 4 * H)
    for reverse in (False, True):
        seen.clear()
        got = fastcells.lstm_forward(**inputs, lengths=lengths, reverse=reverse)
        ref = fastcells.lstm_forward(**inputs, lengths=lengths, reverse=reverse, training=True)
        assert len(seen) > 1 and all(steps <= 3 and m is None for steps, m in seen[:-1])
        for name in ("y", "h", "c"):
            np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), name)
    np.testing.assert_array_equal(fastcells.lstm_forward(**inputs, lengths=lengths).y, want.y)


# ----------------------------------------------------------------------------
# against PyTorch


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("P", [1, 6])
def test_matches_torch(bias, P):
    torch = pytest.importorskip("torch")
    T, B, I, H = 6, 3, 5, 16
    inputs, upstream, _ = proj_case(T, B, I, H, P, bias=bias)
    module = torch.nn.LSTM(I, H, bias=bias, proj_size=P)
    with torch.no_grad():
        for ours, theirs in (("W_ih", "weight_ih_l0"), ("W_hh", "weight_hh_l0"),
                             ("W_hr", "weight_hr_l0"), ("b_ih", "bias_ih_l0"),
                             ("b_hh", "bias_hh_l0")):
            if inputs[ours] is not None:
                getattr(module, theirs).copy_(torch.from_numpy(inputs[ours]))
    x = torch.from_numpy(inputs["x"]).requires_grad_()
    h0, c0 = (torch.from_numpy(inputs[s][None]).requires_grad_() for s in ("h0", "c0"))
    y, (h, c) = module(x, (h0, c0))
    loss = sum((a * torch.from_numpy(upstream[k])).sum()
               for a, k in ((y, "dy"), (h[0], "dh"), (c[0], "dc")))
    loss.backward()
    out = fastcells.lstm_forward(**inputs, training=True)
    for name, theirs in (("y", y), ("h", h[0]), ("c", c[0])):
        assert_close(getattr(out, name), theirs.detach().numpy(), FWD_TOL, name)
    grads = fastcells.lstm_backward(out.cache, **upstream)
    expected = {"dx": x.grad, "dh0": h0.grad[0], "dc0": c0.grad[0],
                "dW_ih": module.weight_ih_l0.grad, "dW_hh": module.weight_hh_l0.grad,
                "dW_hr": module.weight_hr_l0.grad}
    if bias:
        expected.update(db_ih=module.bias_ih_l0.grad, db_hh=module.bias_hh_l0.grad)
    for name, theirs in expected.items():
        assert_close(getattr(grads, name), theirs.numpy(), GRAD_TOL, name)


# ----------------------------------------------------------------------------
# threads


def _all_arrays(inputs, upstream, training, **options):
    out = fastcells.lstm_forward(**inputs, training=training, **options)
    arrays = {f: getattr(out, f) for f in ("y", "h", "c")}
    if training:
        arrays.update((f"cache.{k}", v) for k, v in out.cache.arrays.items()
                      if isinstance(v, np.ndarray))
        grads = fastcells.lstm_backward(out.cache, **upstream)
        for f in grads._fields:
            v = getattr(grads, f)
            if f == "dlayer_norm" and v is not None:
                arrays.update((f"d{k}", w) for k, w in zip(v._fields, v))
            elif v is not None:
                arrays[f] = v
    return arrays


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("option", ["plain", "lengths-reverse", "everything"])
def test_same_bits_for_any_thread_count(split_everything, monkeypatch,  # noqa: F811
                                        option, training):
    B, H = 9, 24
    monkeypatch.setattr(_packing, "CHUNK_FLOATS", 3 * B * 4 * H)   # chunks split too
    inputs, upstream, options = _case_and_options((7, B, 10, H, 7), option)
    fastcells.set_num_threads(1)
    want = _all_arrays(inputs, upstream, training, **options)
    assert all(b is None for b in split_everything["blocks"])
    for n in (2, 3):
        split_everything["blocks"].clear()
        fastcells.set_num_threads(n)
        got = _all_arrays(inputs, upstream, training, **options)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{n} threads: {k}")
        plans = split_everything["blocks"]
        assert plans and all(p is not None and len(p) - 1 == min(n, B // 2) for p in plans)


def test_small_batches_never_split_by_units(split_everything, monkeypatch):  # noqa: F811
    # batch 1, large H: a plain LSTM splits each step by hidden units; a projected one
    # (h = W_hr m needs all of m) runs on one thread
    monkeypatch.setattr(_parallel, "MIN_COLUMN_STEP_FLOPS_PER_THREAD", 0)
    inputs, _, _ = proj_case(20, 1, 8, 256, 64)
    plain = {**inputs, "W_hh": np.zeros((1024, 256), np.float32), "W_hr": None,
             "h0": None}
    fastcells.set_num_threads(1)
    want = fastcells.lstm_forward(**inputs)
    fastcells.set_num_threads(2)
    split_everything["cols"].clear()
    fastcells.lstm_forward(**plain)
    assert any(c is not None for c in split_everything["cols"])
    split_everything["cols"].clear()
    got = fastcells.lstm_forward(**inputs)
    assert all(c is None for c in split_everything["cols"])
    np.testing.assert_array_equal(got.y, want.y)


def test_kernel_refuses_a_column_plan_with_a_projection():
    H, P = 32, 4
    f = np.zeros
    proj = (_kernels.pack(f((P, H), np.float32), True), None, f((1, H), np.float32),
            f((1, H), np.float32), f((1, P), np.float32))
    with pytest.raises(ValueError, match="cols: expected None for a projected loop"):
        _kernels.lstm_forward(0, f((2, 1, 4 * H), np.float32),
                              _kernels.pack(f((4 * H, P), np.float32), True),
                              _kernels.PACK_FLOAT, None, f((1, P), np.float32),
                              f((1, H), np.float32), f((2, 1, P), np.float32), None, False,
                              None, None, f((1, 4 * H), np.float32),
                              cols=np.array([0, 16, 32]), proj=proj)


@pytest.mark.parametrize("packing", ["float", "none"])
def test_kernel_refuses_a_projection_shorter_than_its_packing(packing):
    """W_hr (P, H) packed takes ceil(P/16)*16*H floats, more than P*H: a buffer of P*H
    floats is refused (the loop would read past it), as is one short of P*H unpacked."""
    H, P = 40, 10
    f = np.zeros
    mode = _kernels.PACK_FLOAT if packing == "float" else _kernels.PACK_NONE
    need = -(-P // 16) * 16 * H if packing == "float" else P * H    # 16-column panels
    for size, ok in ((need - 1, False), (need, True)):
        proj = (f(size, np.float32), None, f((1, H), np.float32), f((1, H), np.float32),
                f((1, P), np.float32))
        args = (0, f((2, 1, 4 * H), np.float32),
                _kernels.pack(f((4 * H, P), np.float32), True) if packing == "float"
                else f(4 * H * P, np.float32),
                mode, None, f((1, P), np.float32), f((1, H), np.float32),
                f((2, 1, P), np.float32), None, False, None, None, f((1, 4 * H), np.float32))
        if ok:
            _kernels.lstm_forward(*args, proj=proj)
        else:
            with pytest.raises(ValueError, match=f"wr: expected W_hr .* got {size}"):
                _kernels.lstm_forward(*args, proj=proj)


@pytest.mark.parametrize("T", [3, 33], ids=["short", "long"])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_deterministic_mode_gives_a_sequence_its_bits_in_any_batch(T, nthreads, isa):
    """set_deterministic(True): a projected sequence's forward outputs (functional, and a
    Stepper's steps) are the same bits alone and as row 5 of a batch of 16."""
    H, P, row = 48, 7, 5
    inputs, _, _ = proj_case(T, 16, 20, H, P, peephole=True)
    alone = {k: (v[:, row:row + 1] if k == "x" else v[row:row + 1] if k in ("h0", "c0")
                 else v) for k, v in inputs.items()}
    saved, saved_n = fastcells.get_deterministic(), fastcells.get_num_threads()
    fastcells.set_deterministic(True)
    fastcells.set_num_threads(nthreads)
    try:
        batch, one = fastcells.lstm_forward(**inputs), fastcells.lstm_forward(**alone)
        step = _stepper(inputs)
        (ys_b, h_b, c_b), (ys_1, h_1, c_1) = _steps(step, inputs), _steps(step, alone)
    finally:
        fastcells.set_deterministic(saved)
        fastcells.set_num_threads(saved_n)
    for name, a, b in (("y", one.y[:, 0], batch.y[:, row]), ("h", one.h[0], batch.h[row]),
                       ("c", one.c[0], batch.c[row]), ("step y", ys_1[:, 0], ys_b[:, row]),
                       ("step h", h_1[0], h_b[row]), ("step c", c_1[0], c_b[row])):
        np.testing.assert_array_equal(a, b, err_msg=name)


# ----------------------------------------------------------------------------
# Stepper


def _steps(step, inputs):
    h, c = inputs["h0"], inputs["c0"]
    ys = []
    for t in range(inputs["x"].shape[0]):
        h, c = step(inputs["x"][t], h, c)
        ys.append(h)
    return np.stack(ys), h, c


def _stepper(inputs, **kwargs):
    return Stepper("lstm", inputs["W_ih"], inputs["W_hh"], inputs["b_ih"], inputs["b_hh"],
                   peephole=inputs.get("peephole"), W_hr=inputs["W_hr"], **kwargs)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_stepper_steps_are_the_forward(B, layer_norm, isa):
    T, H, P = 6, 16, 5
    inputs, _, rng = proj_case(T, B, 4, H, P, peephole=True)
    ln = make_ln("lstm", rng, H) if layer_norm else None
    step = _stepper(inputs, layer_norm=ln)
    assert step.proj_size == P
    ys, h, c = _steps(step, inputs)
    served = step.forward(inputs["x"], inputs["h0"], inputs["c0"])
    seq = fastcells.lstm_forward(**inputs, layer_norm=ln)
    assert ys.shape == (T, B, P) and h.shape == (B, P) and c.shape == (B, H)
    if B > 1:       # the same packed products: the same bits
        np.testing.assert_array_equal(ys, served.y)
        np.testing.assert_array_equal(c, served.c)
    for name, a, b in (("y", ys, seq.y), ("h", h, seq.h), ("c", c, seq.c),
                       ("forward y", served.y, seq.y)):
        assert_close(a, b, FWD_TOL, name)


def test_stepper_float16_is_the_rounded_weights_stepper():
    inputs, _, _ = proj_case(5, 2, 4, 16, 3)
    half = _stepper(inputs, weight_dtype="float16")
    rounded = _stepper({**inputs, **{k: inputs[k].astype(np.float16).astype(np.float32)
                                     for k in ("W_ih", "W_hh", "W_hr")}})
    for a, b in zip(_steps(half, inputs), _steps(rounded, inputs)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(half.forward(inputs["x"]).y, rounded.forward(inputs["x"]).y)


def test_stepper_out_takes_the_projected_shapes():
    inputs, _, _ = proj_case(2, 3, 4, 16, 5)
    step = _stepper(inputs)
    h_out, c_out = np.empty((3, 5), np.float32), np.empty((3, 16), np.float32)
    h, c = step(inputs["x"][0], inputs["h0"], inputs["c0"], out=(h_out, c_out))
    assert h is h_out and c is c_out
    np.testing.assert_array_equal(h, step(inputs["x"][0], inputs["h0"], inputs["c0"])[0])
    with pytest.raises(ValueError, match=r"out\[0\]: expected shape \(B, P\) = \(3, 5\), "
                                         r"got \(3, 16\)"):
        step(inputs["x"][0], out=(np.empty((3, 16), np.float32), c_out))
    with pytest.raises(ValueError, match=r"h: expected shape \(B, P\) = \(3, 5\)"):
        step(inputs["x"][0], np.zeros((3, 16), np.float32))


# ----------------------------------------------------------------------------
# bad input


def _copies(inputs):
    return {k: None if v is None else np.array(v, copy=True) for k, v in inputs.items()}


BAD = [
    ("W_hr 1-D", {"W_hr": np.ones(16, np.float32)}, ValueError, "W_hr: expected a 2-D"),
    ("W_hr int", {"W_hr": np.ones((3, 16), np.int64)}, TypeError, "W_hr"),
    ("P = H", {"W_hr": np.eye(16, dtype=np.float32)}, ValueError,
     r"W_hr: expected shape \(P, H\) with 1 <= P < H .*got \(16, 16\)"),
    ("P > H", {"W_hr": np.ones((17, 16), np.float32)}, ValueError,
     r"W_hr: expected shape \(P, H\) with 1 <= P < H"),
    ("W_hh (4H, H)", {"W_hh": np.ones((64, 16), np.float32)}, ValueError,
     r"W_hh: expected shape \(4\*H, P\) = \(64, 3\), got \(64, 16\)"),
    ("h0 (B, H)", {"h0": np.ones((2, 16), np.float32)}, ValueError,
     r"h0: expected shape \(B, P\) = \(2, 3\), got \(2, 16\)"),
    ("W_hr for a P the rest does not have", {"W_hr": np.ones((4, 16), np.float32)},
     ValueError, r"W_hh: expected shape \(4\*H, P\) = \(64, 4\), got \(64, 3\)"),
]


@pytest.mark.parametrize("what, change, error, match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_any_work(monkeypatch, what, change, error, match):
    calls = []
    monkeypatch.setattr(_kernels, "lstm_forward", lambda *a, **k: calls.append(a))
    inputs, _, _ = proj_case(3, 2, 4, 16, 3)
    kept = _copies({**inputs, **change})
    with pytest.raises(error, match=match):
        fastcells.lstm_forward(**{**inputs, **change})
    if what != "W_hr int":       # (a Stepper checks the weights with the same checks)
        with pytest.raises(error, match=match.replace("h0", "h")):
            if what.startswith("h0"):
                _stepper(inputs)(inputs["x"][0], change["h0"])
            else:
                _stepper({**inputs, **change})
    assert calls == []
    for k, v in _copies({**inputs, **change}).items():
        if v is not None:
            np.testing.assert_array_equal(v, kept[k], err_msg=k)


def test_w_hr_is_refused_for_gru_and_rnn():
    rng = np.random.default_rng(SEED)
    W_hr = np.ones((2, 4), np.float32)
    for cell, G in (("gru", 3), ("rnn", 1)):
        W_ih, W_hh = rng.standard_normal((G * 4, 3)), rng.standard_normal((G * 4, 4))
        with pytest.raises(ValueError, match=f"W_hr: only LSTM has a projection, got W_hr "
                                             f"for {cell}"):
            Stepper(cell, W_ih, W_hh, W_hr=W_hr)
        forward = getattr(fastcells, f"{cell}_forward")
        with pytest.raises(TypeError, match="W_hr"):
            forward(np.zeros((2, 1, 3)), W_ih, W_hh, W_hr=W_hr)


def test_backward_refuses_upstream_gradients_of_size_h():
    inputs, upstream, _ = proj_case(3, 2, 4, 16, 3)
    out = fastcells.lstm_forward(**inputs, training=True)
    with pytest.raises(ValueError, match=r"dy: expected shape \(T, B, P\) = \(3, 2, 3\)"):
        fastcells.lstm_backward(out.cache, dy=np.zeros((3, 2, 16)))
    with pytest.raises(ValueError, match=r"dh: expected shape \(B, P\) = \(2, 3\)"):
        fastcells.lstm_backward(out.cache, dh=np.zeros((2, 16)))
    with pytest.raises(ValueError, match=r"dc: expected shape \(B, H\) = \(2, 16\)"):
        fastcells.lstm_backward(out.cache, dc=np.zeros((2, 3)))
    kept = _copies(upstream)
    fastcells.lstm_backward(out.cache, **upstream)
    for k, v in upstream.items():
        np.testing.assert_array_equal(v, kept[k], err_msg=k)
