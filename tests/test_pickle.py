"""Shipping models: pickles and copies of layers, Steppers and optimizers; read-only weights.

What the tests hold fastcells to:

- a pickle holds the weights and options only: no gradients (zeros on load),
  no training tape, no packed panels; its size is at most
  :data:`SIZE_RATIO` times the weights' bytes at realistic sizes;
- unpickled, a layer or Stepper computes the same bits (forward, and in
  training mode backward and its dropout); an optimizer keeps its state;
- a pickle carries its format and the fastcells version that wrote it; a
  newer format raises naming both versions; the committed pickles in
  ``tests/data/pickles`` (made by ``make_pickles.py`` there) still load and
  give their stored values;
- ``copy.copy`` shares the parameters, ``copy.deepcopy`` is independent;
- read-only, zero-copy weights (Ray's object store, memory maps) are taken
  as they are by the functional calls, ``Stepper`` and
  ``load_state_dict(..., assign=True)``; an optimizer step on them raises
  naming the parameter.
"""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import FWD_TOL, GRAD_TOL, SEED

import fastcells
from fastcells import _pickle
from fastcells.optim import SGD, Adam

DATA = Path(__file__).resolve().parent / "data" / "pickles"
#: a pickle's bytes over the bytes of the weights it holds, at most
SIZE_RATIO = 1.05
PROTOCOLS = (pickle.DEFAULT_PROTOCOL, 5)
#: layer class and options, by test id
LAYERS = {
    "rnn-tanh": (fastcells.RNN, {}),
    "rnn-relu": (fastcells.RNN, {"nonlinearity": "relu"}),
    "gru": (fastcells.GRU, {}),
    "gru-cho": (fastcells.GRU, {"linear_before_reset": False}),
    "lstm": (fastcells.LSTM, {}),
    "lstm-peephole": (fastcells.LSTM, {"peephole": True}),
}
#: Stepper cell and options, by test id
STEPPERS = {
    "rnn-relu": ("rnn", {"nonlinearity": "relu"}),
    "gru": ("gru", {}),
    "gru-cho": ("gru", {"linear_before_reset": False}),
    "lstm": ("lstm", {}),
}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def bits(a):
    """An array's bits, so that comparisons tell -0.0 from 0.0 and NaNs apart."""
    return np.ascontiguousarray(a, np.float32).view(np.int32)


def assert_same_bits(got, want):
    np.testing.assert_array_equal(bits(got), bits(want))


def roundtrip(obj, protocol=5):
    return pickle.loads(pickle.dumps(obj, protocol=protocol))


def weight_bytes(*layers):
    return sum(p.nbytes for layer in layers for p in layer.parameters().values())


def model(key, H, bidirectional, num_layers=2, I=None, out=4, dropout=0.0):
    """A recurrent stack and a Linear head over its outputs, seeded."""
    cls, options = LAYERS[key]
    rnn = cls(I or H, H, num_layers, bidirectional=bidirectional, dropout=dropout,
              seed=SEED, **options)
    head = fastcells.Linear(rnn.num_directions * H, out, seed=SEED + 1)
    return rnn, head


def run(rnn, head, x, dout=None):
    """The model's output, and with ``dout`` its backward: (out, dx, grads of both)."""
    y, state = rnn(x)
    out = head(y)
    if dout is None:
        return out, state
    dx, dstate = rnn.backward(head.backward(dout))
    return out, dx, {**{f"rnn.{k}": v for k, v in rnn.grads.items()},
                     **{f"head.{k}": v for k, v in head.grads.items()}}


def assert_train_alike(original, clone, x, dout):
    """One training step of each (rnn, head, optimizer) gives the same parameters' bits."""
    for rnn, head, opt in (original, clone):
        opt.zero_grad()
        run(rnn, head, x, dout)
        opt.step()
    for layer, copied in zip(original[:2], clone[:2]):
        for name, p in layer.parameters().items():
            assert_same_bits(copied.parameters()[name], p)


def stepper_weights(cell, H, I, rng, bias=True, peephole=False):
    G = GATES[cell]
    w = [rng.uniform(-0.5, 0.5, (G * H, I)), rng.uniform(-0.5, 0.5, (G * H, H))]
    w += [rng.uniform(-0.5, 0.5, G * H), rng.uniform(-0.5, 0.5, G * H)] if bias else [None, None]
    w = [None if a is None else a.astype(np.float32) for a in w]
    extra = {"peephole": rng.uniform(-0.5, 0.5, 3 * H).astype(np.float32)} if peephole else {}
    return w, extra


def stepper_run(stepper, xs):
    """A Stepper's states over the steps of ``xs``, then its whole-sequence forward."""
    h = c = None
    outs = []
    for x_t in xs:
        if stepper.cell == "lstm":
            h, c = stepper(x_t, h, c)
            outs.append(c)
        else:
            h = stepper(x_t, h)
        outs.append(h)
    res = stepper.forward(xs)
    return np.stack(outs), res.y, res.h


# ----------------------------------------------------------------------------
# sizes: weights and options only


@pytest.mark.parametrize("key", ["rnn-tanh", "gru", "lstm"])
@pytest.mark.parametrize("H", [64, 256])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_model_pickles_to_its_weights_bytes(key, H, bidirectional):
    """A stack with a Linear head, after training calls (gradients and a tape kept):
    the pickle is no larger than the weights plus a little."""
    rnn, head = model(key, H, bidirectional, I=32)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((20, 4, 32)).astype(np.float32)
    run(rnn, head, x, np.ones((20, 4, 4), np.float32))
    assert rnn._tape is not None and head._x is not None
    for protocol in PROTOCOLS:
        size = len(pickle.dumps((rnn, head), protocol=protocol))
        assert size <= SIZE_RATIO * weight_bytes(rnn, head), (protocol, size)


def test_a_layer_pickle_holds_its_parameters_as_plain_arrays():
    """Protocol 5 takes the parameters out of band, one buffer each, and nothing else;
    what stays in band is small: no gradients, no tape, no other arrays."""
    rnn, head = model("lstm", 64, True)
    run(rnn, head, np.ones((3, 2, 64), np.float32), np.ones((3, 2, 4), np.float32))
    buffers = []
    data = pickle.dumps((rnn, head), protocol=5, buffer_callback=buffers.append)
    params = [p for layer in (rnn, head) for p in layer.parameters().values()]
    assert sorted(b.raw().nbytes for b in buffers) == sorted(p.nbytes for p in params)
    assert len(data) < 0.02 * weight_bytes(rnn, head)
    clone_rnn, clone_head = pickle.loads(data, buffers=buffers)
    for layer, clone in ((rnn, clone_rnn), (head, clone_head)):
        assert clone.state_dict().keys() == layer.state_dict().keys()
        for name, p in clone.parameters().items():
            assert_same_bits(p, layer.parameters()[name])


@pytest.mark.parametrize("key", list(STEPPERS))
@pytest.mark.parametrize("H", [64, 256])
def test_stepper_pickles_to_its_weights_bytes(key, H):
    cell, options = STEPPERS[key]
    (W_ih, W_hh, b_ih, b_hh), extra = stepper_weights(cell, H, 48, np.random.default_rng(SEED))
    stepper = fastcells.Stepper(cell, W_ih, W_hh, b_ih, b_hh, **options)
    nbytes = sum(a.nbytes for a in (W_ih, W_hh, b_ih, b_hh))
    for protocol in PROTOCOLS:
        assert len(pickle.dumps(stepper, protocol=protocol)) <= SIZE_RATIO * nbytes
    half = fastcells.Stepper(cell, W_ih, W_hh, b_ih, b_hh, weight_dtype="float16", **options)
    assert len(pickle.dumps(half, protocol=5)) <= SIZE_RATIO * nbytes * 0.55


def test_stepper_state_is_its_unpacked_weights():
    """The pickled state holds the weights as given (unpacked from the panels, bit for
    bit), the folded bias, the options, and the header."""
    rng = np.random.default_rng(SEED)
    (W_ih, W_hh, b_ih, b_hh), _ = stepper_weights("gru", 21, 5, rng)
    state = fastcells.Stepper("gru", W_ih, W_hh, b_ih, b_hh).__getstate__()
    assert_same_bits(state["W_ih"], W_ih)
    assert_same_bits(state["W_hh"], W_hh)
    n = slice(2 * 21, None)                     # b_hn stays apart from the folded bias
    want = b_ih + b_hh
    want[n] = b_ih[n]
    assert_same_bits(state["bias"], want)
    assert_same_bits(state["b_hn"], b_hh[n])
    assert state["options"]["linear_before_reset"] is True
    assert state[_pickle.FORMAT_KEY] == _pickle.BASE_PICKLE_FORMAT     # nothing newer in it
    assert state[_pickle.VERSION_KEY] == fastcells.__version__


# ----------------------------------------------------------------------------
# the same bits after unpickling


@pytest.mark.parametrize("key", list(LAYERS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unpickled_layer_computes_the_same_bits(key, bidirectional):
    """Forward, backward and dropout (the generator's state travels) of a layer that
    trained a little: the same bits from the original and from its unpickled copy."""
    rnn, head = model(key, 24, bidirectional, num_layers=3, I=7, dropout=0.25)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((9, 5, 7)).astype(np.float32)
    dout = rng.standard_normal((9, 5, 4)).astype(np.float32)
    opt = Adam([rnn, head], lr=1e-2)
    run(rnn, head, x, dout)
    opt.step()
    clone_rnn, clone_head = roundtrip((rnn, head))
    for layer, clone in ((rnn, clone_rnn), (head, clone_head)):
        assert all(not g.any() for g in clone.grads.values())     # gradients: zeros
        assert clone.training and repr(clone) == repr(layer)
        layer.zero_grad()
    with pytest.raises(RuntimeError, match="training mode"):
        clone_rnn.backward(np.ones((9, 5, 24 * rnn.num_directions), np.float32))
    want, got = run(rnn, head, x, dout), run(clone_rnn, clone_head, x, dout)
    for a, b in zip(want[:2], got[:2]):
        assert_same_bits(b, a)
    assert want[2].keys() == got[2].keys()
    for name in want[2]:
        assert_same_bits(got[2][name], want[2][name])
    for layer in (rnn, clone_rnn, head, clone_head):
        layer.eval()
    for a, b in zip(run(rnn, head, x), run(clone_rnn, clone_head, x)):
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        assert_same_bits(b, a)


@pytest.mark.parametrize("step_dtype", ["float32", "float16"])
def test_unpickled_layer_steps_the_same_bits(step_dtype):
    rnn = fastcells.LSTM(6, 16, 2, seed=SEED, peephole=True).eval()
    rnn.step_weight_dtype = step_dtype
    xs = np.random.default_rng(SEED).standard_normal((4, 3, 6)).astype(np.float32)
    state = None
    for x_t in xs:
        want, state = rnn.step(x_t, state)          # prepares the steppers
    assert rnn._derived is not None
    clone = roundtrip(rnn)
    assert clone._derived is None and clone.step_weight_dtype == step_dtype
    for layer in (rnn, clone):
        s = None
        for x_t in xs:
            y, s = layer.step(x_t, s)
        assert_same_bits(y, want)


def test_layer_with_the_reference_backend_pickles():
    layer = fastcells.GRU(3, 5, seed=SEED, backend=fastcells.reference)
    clone = roundtrip(layer)
    assert clone.backend is fastcells.reference
    x = np.ones((4, 2, 3))
    assert_same_bits(clone(x)[0].astype(np.float32), layer(x)[0].astype(np.float32))


@pytest.mark.parametrize("key", list(STEPPERS))
@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
@pytest.mark.parametrize("bias", [True, False])
def test_unpickled_stepper_steps_the_same_bits(key, weight_dtype, bias):
    cell, options = STEPPERS[key]
    rng = np.random.default_rng(SEED)
    (W_ih, W_hh, b_ih, b_hh), extra = stepper_weights(cell, 19, 33, rng, bias,
                                                      peephole=cell == "lstm")
    stepper = fastcells.Stepper(cell, W_ih, W_hh, b_ih, b_hh, weight_dtype=weight_dtype,
                                **options, **extra)
    xs = rng.standard_normal((6, 2, 33)).astype(np.float32)
    want = stepper_run(stepper, xs)
    for clone in (roundtrip(stepper), roundtrip(stepper, pickle.DEFAULT_PROTOCOL),
                  copy.copy(stepper), copy.deepcopy(stepper)):
        assert clone.weight_dtype == weight_dtype and clone.cell == cell
        for a, b in zip(want, stepper_run(clone, xs)):
            assert_same_bits(b, a)


def proj_stepper(weight_dtype="float32", layer_norm=False):
    """An LSTM Stepper with a projection (H = 19, P = 7), peepholes, and its inputs."""
    rng = np.random.default_rng(SEED)
    H, I, P = 19, 33, 7
    (W_ih, _, b_ih, b_hh), extra = stepper_weights("lstm", H, I, rng, peephole=True)
    W_hh = rng.uniform(-0.5, 0.5, (4 * H, P)).astype(np.float32)
    W_hr = rng.uniform(-0.5, 0.5, (P, H)).astype(np.float32)
    ln = None
    if layer_norm:
        ln = tuple((1 + 0.3 * rng.standard_normal(n)).astype(np.float32) if k % 2 == 0 else
                   (0.3 * rng.standard_normal(n)).astype(np.float32)
                   for k, n in enumerate([4 * H] * 4 + [H, H]))
    stepper = fastcells.Stepper("lstm", W_ih, W_hh, b_ih, b_hh, W_hr=W_hr,
                                weight_dtype=weight_dtype, layer_norm=ln, **extra)
    return stepper, W_hr, rng.standard_normal((6, 2, I)).astype(np.float32)


@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_unpickled_projected_stepper_steps_the_same_bits(weight_dtype, layer_norm):
    stepper, W_hr, xs = proj_stepper(weight_dtype, layer_norm)

    def run(s):                         # h (B, P) and c (B, H) of every step, and forward's
        h = c = None
        outs = []
        for x_t in xs:
            h, c = s(x_t, h, c)
            outs += [h, c]
        return [*outs, *s.forward(xs)[:3]]
    want = run(stepper)
    state = stepper.__getstate__()
    assert state[_pickle.FORMAT_KEY] == _pickle.PROJ_PICKLE_FORMAT
    if weight_dtype == "float32":
        assert_same_bits(state["W_hr"], W_hr)
    else:                               # float16 values, in half the bytes
        assert state["W_hr"].dtype == np.float16
        assert_same_bits(state["W_hr"], W_hr.astype(np.float16))
    for clone in (roundtrip(stepper), roundtrip(stepper, pickle.DEFAULT_PROTOCOL),
                  copy.deepcopy(stepper)):
        assert clone.proj_size == 7 and clone.weight_dtype == weight_dtype
        for a, b in zip(want, run(clone), strict=True):
            assert_same_bits(b, a)


@pytest.mark.parametrize("make", ["stepper", "layer"])
def test_a_reader_of_format_1_refuses_a_projection(monkeypatch, make):
    """An older fastcells (format 1 only) names both versions rather than drop or
    misread W_hr (a Stepper's, or a layer's weight_hr_l{k}); plain layers stay format 1."""
    obj = proj_stepper()[0] if make == "stepper" else fastcells.LSTM(3, 8, proj_size=7,
                                                                      peephole=True)
    data = pickle.dumps(obj)
    assert pickle.loads(data).proj_size == 7
    plain = pickle.dumps(fastcells.LSTM(3, 8, peephole=True))
    monkeypatch.setattr(_pickle, "PICKLE_FORMAT", 1)
    with pytest.raises(ValueError, match=f"pickle format {_pickle.PROJ_PICKLE_FORMAT} by "
                                         f"fastcells {fastcells.__version__}.* reads pickle "
                                         "formats up to 1"):
        pickle.loads(data)
    assert pickle.loads(plain).proj_size == 0


def test_stepper_bias_signs_survive():
    """The folded bias is rebuilt bit for bit, -0.0 included (b_hh = -0.0 adds nothing)."""
    W_ih, W_hh = np.zeros((4, 2), np.float32), np.zeros((4, 4), np.float32)
    b_ih = np.array([-0.0, 0.0, -0.0, 1.0], np.float32)
    stepper = fastcells.Stepper("rnn", W_ih, W_hh, b_ih, np.full(4, -0.0, np.float32))
    assert_same_bits(roundtrip(stepper).__getstate__()["bias"], b_ih)


# ----------------------------------------------------------------------------
# optimizers: their state survives, their layers stay theirs


@pytest.mark.parametrize("make", [lambda ls: Adam(ls, lr=1e-2, weight_decay=1e-3),
                                  lambda ls: SGD(ls, lr=1e-2, momentum=0.9, nesterov=True)],
                         ids=["adam", "sgd"])
def test_optimizer_pickled_with_its_model_resumes_training(make):
    rnn, head = model("lstm", 12, False, I=5)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    dout = rng.standard_normal((6, 3, 4)).astype(np.float32)
    opt = make([rnn, head])
    for _ in range(2):
        opt.zero_grad()
        run(rnn, head, x, dout)
        opt.step()
    clone_rnn, clone_head, clone_opt = roundtrip((rnn, head, opt))
    assert clone_opt.layers[0] is clone_rnn and clone_opt.layers[1] is clone_head
    assert clone_opt.state.keys() == opt.state.keys()
    assert_train_alike((rnn, head, opt), (clone_rnn, clone_head, clone_opt), x, dout)


def test_optimizer_pickled_alone_brings_copies_of_its_layers():
    layer = fastcells.GRU(3, 4, seed=SEED)
    opt = Adam(layer)
    clone = roundtrip(opt)
    assert clone.layers[0] is not layer
    assert_same_bits(clone.layers[0].parameters()["weight_hh_l0"],
                     layer.parameters()["weight_hh_l0"])
    assert clone.betas == opt.betas and clone.lr == opt.lr


# ----------------------------------------------------------------------------
# versions


def newer_pickles(monkeypatch):
    """Pickles of each kind as a newer fastcells (99.0.0, the next format) writes them."""
    layer = fastcells.LSTM(3, 4, seed=SEED)
    objects = {"LSTM": layer, "Linear": fastcells.Linear(2, 3),
               "Stepper": fastcells.Stepper("rnn", np.ones((4, 2)), np.ones((4, 4))),
               "Adam": Adam([])}
    monkeypatch.setattr(_pickle, "BASE_PICKLE_FORMAT", _pickle.PICKLE_FORMAT + 1)
    monkeypatch.setattr(fastcells, "__version__", "99.0.0")
    data = {name: pickle.dumps(obj) for name, obj in objects.items()}
    monkeypatch.undo()
    return data


def test_a_newer_format_names_both_versions(monkeypatch):
    for name, data in newer_pickles(monkeypatch).items():
        with pytest.raises(ValueError) as err:
            pickle.loads(data)
        msg = str(err.value)
        assert f"fastcells {name}" in msg
        assert f"pickle format {_pickle.PICKLE_FORMAT + 1} by fastcells 99.0.0" in msg
        assert f"this fastcells {fastcells.__version__} reads pickle formats up to " \
               f"{_pickle.PICKLE_FORMAT}" in msg


@pytest.mark.parametrize("cls", [fastcells.GRU, fastcells.Linear, fastcells.Stepper, Adam])
def test_corrupted_states_are_refused(cls):
    obj = cls.__new__(cls)
    with pytest.raises(TypeError, match=f"fastcells {cls.__name__}.*dict, got list"):
        obj.__setstate__([1, 2])
    with pytest.raises(ValueError, match="pickle format to be an int >= 0, got 'one'"):
        obj.__setstate__({_pickle.FORMAT_KEY: "one"})
    with pytest.raises(ValueError, match="pickle format to be an int >= 0, got -1"):
        obj.__setstate__({_pickle.FORMAT_KEY: -1})
    with pytest.raises(ValueError, match="by an unknown fastcells, and this fastcells"):
        obj.__setstate__({_pickle.FORMAT_KEY: 10**6})        # no version entry
    with pytest.raises(ValueError, match=f"fastcells {cls.__name__}: its pickled state lacks "
                                         f"the entries \\[.*\\] \\(not a fastcells"):
        obj.__setstate__({_pickle.FORMAT_KEY: _pickle.PICKLE_FORMAT, "cell": "gru"})


def test_a_stepper_state_without_a_header_is_refused():
    with pytest.raises(ValueError, match="fastcells Stepper: its pickled state has no pickle "
                                         "format"):
        fastcells.Stepper.__new__(fastcells.Stepper).__setstate__({"cell": "gru"})


def test_a_layer_pickled_before_formats_still_loads():
    """Format 0: a layer's ``__dict__`` as fastcells pickled it before (gradients and
    tape included); it loads, its gradients zeros."""
    layer = fastcells.RNN(3, 5, seed=SEED)
    y, _ = layer(np.ones((2, 1, 3), np.float32))
    layer.backward(np.ones_like(y))
    old = layer.__dict__.copy()
    old["_derived"] = None
    clone = fastcells.RNN.__new__(fastcells.RNN)
    clone.__setstate__(old)
    assert all(not g.any() for g in clone.grads.values())
    assert_same_bits(clone(np.ones((2, 1, 3)))[0], layer(np.ones((2, 1, 3)))[0])


@pytest.mark.parametrize("path", sorted(DATA.glob("format*.pkl")), ids=lambda p: p.stem)
def test_committed_pickle_loads_and_gives_its_values(path):
    """Each committed pickle (one per format, kept forever) loads in this fastcells
    and gives the values stored beside it: the weights exactly, the outputs within
    the kernels' tolerance (they were computed on another machine's ISA path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_pickles", DATA / "make_pickles.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    with open(path, "rb") as f:
        saved = pickle.load(f)      # a file of the repository's: trusted
    expected = dict(np.load(path.with_name(path.stem + "_expected.npz")))
    lstm, head, adam, stepper = (saved[k] for k in ("lstm", "head", "adam", "stepper"))
    assert adam.layers[0] is lstm and adam.layers[1] is head
    for prefix, layer in (("lstm", lstm), ("head", head)):
        for name, p in layer.state_dict().items():
            assert_same_bits(p, expected[f"{prefix}.{name}"])
    st = stepper.__getstate__()
    assert_same_bits(st["W_ih"], expected["gru.W_ih"])
    assert_same_bits(st["W_hh"], expected["gru.W_hh"])
    x = expected["x"]
    np.testing.assert_allclose(make.model_outputs(lstm, head, x), expected["out"],
                               rtol=FWD_TOL, atol=FWD_TOL)
    np.testing.assert_allclose(make.stepper_outputs(stepper, x), expected["steps"],
                               rtol=FWD_TOL, atol=FWD_TOL)
    if "proj_stepper" in saved:     # format 2 on: projected LSTMs
        st = saved["proj_stepper"].__getstate__()
        for name in ("W_ih", "W_hh", "W_hr"):
            assert_same_bits(st[name], expected[f"proj.{name}"])
        np.testing.assert_allclose(make.stepper_outputs(saved["proj_stepper"], x),
                                   expected["proj_steps"], rtol=FWD_TOL, atol=FWD_TOL)
        for name, p in saved["proj_lstm"].state_dict().items():
            assert_same_bits(p, expected[f"proj_lstm.{name}"])
        np.testing.assert_allclose(saved["proj_lstm"](x)[0], expected["proj_y"],
                                   rtol=FWD_TOL, atol=FWD_TOL)
    # one more step: Adam's moments and step counts came along
    make.train_step(lstm, head, adam, x, expected["dout"])
    for prefix, layer in (("lstm", lstm), ("head", head)):
        for name, p in layer.state_dict().items():
            np.testing.assert_allclose(p, expected[f"trained.{prefix}.{name}"],
                                       rtol=GRAD_TOL, atol=GRAD_TOL)


def test_this_format_has_a_committed_pickle():
    """Changing the format of what make_pickles.py pickles needs a new committed pickle."""
    assert (DATA / f"format{_pickle.PICKLE_FORMAT}.pkl").is_file()


# ----------------------------------------------------------------------------
# copies


def test_shallow_copy_shares_parameters_and_deep_copy_is_independent():
    rnn = fastcells.GRU(4, 6, 2, bidirectional=True, seed=SEED)
    rnn(np.ones((3, 2, 4), np.float32))
    rnn.backward(np.ones((3, 2, 12), np.float32))
    shallow, deep = copy.copy(rnn), copy.deepcopy(rnn)
    for name, p in rnn.parameters().items():
        assert shallow.parameters()[name] is p
        assert not np.shares_memory(deep.parameters()[name], p)
        assert_same_bits(deep.parameters()[name], p)
        assert not np.shares_memory(shallow.grads[name], rnn.grads[name])
        assert not shallow.grads[name].any() and not deep.grads[name].any()
    x = np.ones((3, 2, 4), np.float32)
    want = rnn(x)[0]
    deep.load_state_dict({k: v + 1 for k, v in deep.state_dict().items()})
    assert_same_bits(rnn(x)[0], want)                          # the deep copy is its own
    # assigning in a shallow copy replaces its arrays, not the original's
    shallow.load_state_dict({k: v * 0 for k, v in rnn.state_dict().items()}, assign=True)
    assert_same_bits(rnn(x)[0], want)
    assert not shallow(x)[0].any()


# ----------------------------------------------------------------------------
# read-only weights, without a copy


def read_only(arrays):
    out = {}
    for k, v in arrays.items():
        v = np.array(v)
        v.flags.writeable = False
        out[k] = v
    return out


@pytest.mark.parametrize("key", list(LAYERS))
def test_assign_takes_read_only_arrays_without_a_copy(key):
    cls, options = LAYERS[key]
    source = cls(5, 7, 2, bidirectional=True, seed=SEED + 3, **options)
    weights = read_only(source.state_dict())
    layer = cls(5, 7, 2, bidirectional=True, seed=SEED, **options)
    layer.load_state_dict(weights, assign=True)
    for name, p in layer.parameters().items():
        assert p is weights[name] and np.shares_memory(p, weights[name])
    x = np.random.default_rng(SEED).standard_normal((6, 3, 5)).astype(np.float32)
    # eval and training (backward writes only the layer's own gradients)
    for mode in (False, True):
        source.train(mode)
        layer.train(mode)
        want, got = source(x), layer(x)
        assert_same_bits(got[0], want[0])
    dy = np.ones((6, 3, 14), np.float32)
    assert_same_bits(layer.backward(dy)[0], source.backward(dy)[0])
    uni = cls(5, 7, seed=SEED, **options).eval()
    uni.load_state_dict(read_only(cls(5, 7, seed=1, **options).state_dict()), assign=True)
    uni.step(x[0])                                     # the steppers take them too


def test_assign_converts_what_does_not_fit():
    """Non-float32 or non-contiguous arrays are converted: a copy, equal values."""
    layer = fastcells.LSTM(3, 4, seed=SEED)
    sd = layer.state_dict()
    given = {"weight_ih_l0": sd["weight_ih_l0"].astype(np.float64),
             "weight_hh_l0": np.asfortranarray(sd["weight_hh_l0"]),
             "bias_ih_l0": np.repeat(sd["bias_ih_l0"], 2)[::2],
             "bias_hh_l0": sd["bias_hh_l0"]}
    target = fastcells.LSTM(3, 4, seed=SEED + 1)
    target.load_state_dict(given, assign=True)
    params = target.parameters()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
        assert not np.shares_memory(params[name], given[name])
        assert params[name].dtype == np.float32 and params[name].flags.c_contiguous
        np.testing.assert_array_equal(params[name], sd[name])
    assert params["bias_hh_l0"] is given["bias_hh_l0"]


def test_assign_takes_a_memory_map_without_a_copy(tmp_path):
    layer = fastcells.Linear(6, 3, seed=SEED)
    np.save(tmp_path / "w.npy", layer.state_dict()["weight"])
    mm = np.load(tmp_path / "w.npy", mmap_mode="r")
    target = fastcells.Linear(6, 3, seed=SEED + 1).eval()
    target.load_state_dict({"weight": mm}, strict=False, assign=True)
    assert np.shares_memory(target.parameters()["weight"], mm)
    np.testing.assert_array_equal(target.parameters()["weight"], layer.parameters()["weight"])


def test_assign_checks_everything_before_assigning():
    layer = fastcells.GRU(3, 4, seed=SEED)
    before = layer.parameters()
    bad = layer.state_dict()
    bad["bias_hh_l0"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="bias_hh_l0"):
        layer.load_state_dict(bad, assign=True)
    with pytest.raises(TypeError, match="assign"):
        layer.load_state_dict(layer.state_dict(), assign=1)
    assert all(p is before[k] for k, p in layer.parameters().items())


def test_optimizer_step_on_read_only_parameters_names_them():
    rnn, head = model("lstm", 6, False, I=3)
    rnn.load_state_dict(read_only(rnn.state_dict()), assign=True)
    x = np.ones((4, 2, 3), np.float32)
    run(rnn, head, x, np.ones((4, 2, 4), np.float32))       # training works: own gradients
    before = {k: v.copy() for k, v in head.parameters().items()}
    for opt in (Adam([head, rnn]), SGD([head, rnn], lr=0.1)):
        with pytest.raises(ValueError, match=r"read-only array for weight_ih_l0 of layers\[1\] "
                                             r"\(LSTM\(3, 6, num_layers=2\)\).*assign=True"):
            opt.step()
        for k, v in head.parameters().items():               # nothing was updated
            assert_same_bits(v, before[k])
    with pytest.raises(ValueError, match="cannot copy weight_ih_l0 into its parameter, a "
                                         "read-only array.*assign=True"):
        rnn.load_state_dict(rnn.state_dict())
    # the way out the message gives
    rnn.load_state_dict(rnn.state_dict(), assign=True)
    Adam([head, rnn]).step()


def test_out_of_band_pickle_with_read_only_buffers():
    """As Ray's object store ships a model: protocol 5, the parameters' buffers
    read-only and not copied.  The layer serves; a training step names the problem."""
    rnn = fastcells.GRU(4, 8, 2, seed=SEED)
    buffers = []
    data = pickle.dumps(rnn, protocol=5, buffer_callback=buffers.append)
    frozen = [memoryview(b.raw()).toreadonly() for b in buffers]
    clone = pickle.loads(data, buffers=frozen)
    for p in clone.parameters().values():
        assert not p.flags.writeable
        assert any(np.shares_memory(p, np.frombuffer(f, np.uint8)) for f in frozen)
    x = np.ones((3, 2, 4), np.float32)
    assert_same_bits(clone.eval()(x)[0], rnn.eval()(x)[0])
    with pytest.raises(ValueError, match="read-only array for weight_ih_l0"):
        Adam(clone).step()


@pytest.mark.parametrize("make", [Adam, lambda ls: SGD(ls, lr=1e-3, momentum=0.5)],
                         ids=["adam", "sgd"])
def test_optimizer_shipped_with_read_only_buffers_resumes(make):
    """Out of band and read-only, as Ray ships them: the optimizer's own state comes back
    writable (it is updated in place); the layers' parameters stay read-only until the
    layers get arrays of their own, and then training resumes with the same bits."""
    rnn, head = model("gru", 8, False, I=3)
    x = np.random.default_rng(SEED).standard_normal((5, 2, 3)).astype(np.float32)
    dout = np.ones((5, 2, 4), np.float32)
    opt = make([rnn, head])
    run(rnn, head, x, dout)
    opt.step()
    buffers = []
    data = pickle.dumps((rnn, head, opt), protocol=5, buffer_callback=buffers.append)
    c_rnn, c_head, c_opt = pickle.loads(data, buffers=[b.raw().toreadonly() for b in buffers])
    with pytest.raises(ValueError, match="read-only array for weight_ih_l0"):
        c_opt.step()
    for layer in (c_rnn, c_head):
        layer.load_state_dict(layer.state_dict(), assign=True)
    assert_train_alike((rnn, head, opt), (c_rnn, c_head, c_opt), x, dout)


@pytest.mark.parametrize("key", list(STEPPERS))
def test_functional_calls_and_stepper_take_read_only_weights(key):
    cell, options = STEPPERS[key]
    rng = np.random.default_rng(SEED)
    (W_ih, W_hh, b_ih, b_hh), _ = stepper_weights(cell, 9, 5, rng)
    frozen = list(read_only({"a": W_ih, "b": W_hh, "c": b_ih, "d": b_hh}).values())
    x = rng.standard_normal((7, 3, 5)).astype(np.float32)
    forward = getattr(fastcells, f"{cell}_forward")
    backward = getattr(fastcells, f"{cell}_backward")
    want = forward(x, W_ih, W_hh, b_ih, b_hh, training=True, **options)
    got = forward(x, *frozen, training=True, **options)
    assert_same_bits(got.y, want.y)
    for a, b in zip(backward(want.cache, np.ones_like(want.y)),
                    backward(got.cache, np.ones_like(got.y))):
        assert_same_bits(b, a)
    for a, b in zip(stepper_run(fastcells.Stepper(cell, W_ih, W_hh, b_ih, b_hh, **options), x),
                    stepper_run(fastcells.Stepper(cell, *frozen, **options), x)):
        assert_same_bits(b, a)


def test_an_lstm_cache_from_before_projections_runs_backward():
    """A training cache pickled before projections existed has no W_hr or m: backward
    treats it as the plain LSTM it is, with the same bits as a cache of today."""
    from fastcells._results import Cache
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    W_ih, W_hh = (rng.standard_normal(s).astype(np.float32) for s in ((8, 4), (8, 2)))
    cache = fastcells.lstm_forward(x, W_ih, W_hh, training=True).cache
    old = Cache(cache.cell, cache.backend, dict(cache.options),
                {k: v for k, v in cache.arrays.items() if k not in ("W_hr", "m")})
    dy = rng.standard_normal((3, 2, 2)).astype(np.float32)
    got = fastcells.lstm_backward(pickle.loads(pickle.dumps(old)), dy=dy)
    want = fastcells.lstm_backward(cache, dy=dy)
    assert type(got) is type(want) is fastcells.LSTMGradients
    for a, b in zip(got, want):
        assert_same_bits(a, b)
