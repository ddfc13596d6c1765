"""``fastcells.LSTM(..., proj_size=P)``: the layer with projection, as ``torch.nn.LSTM``'s.

``h' = W_hr (o * tanh(c'))`` with ``weight_hr_l{k}`` (P, H): ``h``, ``y`` and the
columns of ``weight_hh_l{k}`` have P values, layer k > 0 reads D*P inputs, ``c``
keeps H.  Checked against ``torch.nn.LSTM(proj_size=P)`` (outputs, states, every
gradient, state dicts both ways) when torch is installed; always against the
layer run on the float64 reference backend (its plumbing by finite
differences), step by step, through pickles and an optimizer, and for bad input.
"""
import copy
import pickle

import numpy as np
import pytest
from conftest import assert_close, assert_gradients_by_finite_differences

# torch_run pads torch's outputs to test_layers' T, which these tests share
from test_layers import LENGTHS, T, assert_close_rel, torch_run, valid_only

import fastcells
from fastcells import interop, reference

#: fastcells (float32) vs torch (float32) or the float64 reference, outputs
FWD_TOL = 2e-5
#: gradients, relative to the largest entry of each
GRAD_RTOL = 1e-4
#: finite differences of the float64 reference backend (float32 parameters): a small
#: step, as layer normalization of W_hh h with few values of h (P) is strongly curved
FD_EPS = 1e-5
FD_RTOL = 1e-5
#: the layer normalization's eps in the finite-difference checks: the default 1e-5
#: curves a row of small variance further still
FD_LN_EPS = 1e-3

B, I, H, P = 3, 4, 7, 3
# (num_layers, bidirectional, batch_first)
CONFIGS = [(1, False, False), (2, False, True), (2, True, False), (3, True, True)]
#: fastcells' own options, which torch's LSTM has not: against the reference only
OPTIONS = {"plain": {}, "peephole": {"peephole": True}, "layer_norm": {"layer_norm": True},
           "both": {"peephole": True, "layer_norm": True}}


def make(num_layers=1, bidirectional=False, batch_first=False, seed=1, **kw):
    return fastcells.LSTM(I, H, num_layers, batch_first=batch_first,
                          bidirectional=bidirectional, proj_size=P, seed=seed, **kw)


def inputs(layer, rng, dtype=np.float32):
    """x, the initial state (h0, c0), and upstream gradients dy, (dh, dc) for ``layer``."""
    LD, D = layer.num_layers * layer.num_directions, layer.num_directions
    x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I)).astype(dtype)
    state = (0.5 * rng.standard_normal((LD, B, P)).astype(dtype),
             0.5 * rng.standard_normal((LD, B, H)).astype(dtype))
    dy = rng.standard_normal(x.shape[:2] + (D * P,)).astype(dtype)
    dstate = (rng.standard_normal((LD, B, P)).astype(dtype),
              rng.standard_normal((LD, B, H)).astype(dtype))
    return x, state, dy, dstate


def perturbed(layer, rng, scale=0.2):
    """The layer's parameters moved off their initial values (layer norm gains off 1)."""
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in layer.state_dict().items()}


# ----------------------------------------------------------------------------
# parameters and state dicts


def test_parameters_are_pytorch_names_shapes_order_and_init():
    layer = fastcells.LSTM(I, 16, 2, bidirectional=True, proj_size=5, seed=0)
    sd = layer.state_dict()
    expected = []
    for k in range(2):
        for suffix in ("", "_reverse"):
            in_size = I if k == 0 else 2 * 5
            expected += [(f"weight_ih_l{k}{suffix}", (64, in_size)),
                         (f"weight_hh_l{k}{suffix}", (64, 5)),
                         (f"bias_ih_l{k}{suffix}", (64,)), (f"bias_hh_l{k}{suffix}", (64,)),
                         (f"weight_hr_l{k}{suffix}", (5, 16))]
    assert [(k, v.shape) for k, v in sd.items()] == expected
    assert {k: g.shape for k, g in layer.grads.items()} == dict(expected)
    # PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)), H the cell's size, weight_hr included
    bound = 1 / np.sqrt(16)
    hr = np.concatenate([v.ravel() for k, v in sd.items() if k.startswith("weight_hr")])
    assert hr.dtype == np.float32 and np.abs(hr).max() <= bound
    assert hr.min() < -0.8 * bound and hr.max() > 0.8 * bound
    assert repr(layer) == "LSTM(4, 16, num_layers=2, bidirectional=True, proj_size=5)"
    assert layer.proj_size == 5 and fastcells.LSTM(I, 16).proj_size == 0
    # positional as in torch.nn.LSTM: (..., dropout, bidirectional, proj_size)
    assert fastcells.LSTM(I, 16, 1, True, False, 0.0, False, 5).proj_size == 5


@pytest.mark.parametrize("option", ["peephole", "layer_norm"])
def test_options_add_their_parameters_after_weight_hr(option):
    layer = make(2, True, **{option: True})
    keys = list(layer.state_dict())
    plain = list(make(2, True).state_dict())
    assert [k for k in keys if k in plain] == plain
    first = "peephole_l0" if option == "peephole" else "ln_ih_weight_l0"
    assert keys.index(first) == keys.index("weight_hr_l0") + 1
    assert layer.state_dict()["weight_hh_l1"].shape == (4 * H, P)


def test_state_dict_round_trip_and_mismatch_hints():
    layer = make(2, True, seed=3)
    other = make(2, True, seed=4)
    other.load_state_dict(layer.state_dict())
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, layer.state_dict()[k])
    plain = fastcells.LSTM(I, H, 2, bidirectional=True, seed=3)
    with pytest.raises(ValueError, match=r"missing keys \['weight_hr_l0', .*ONNX and Keras "
                                         r"LSTMs have none.*proj_size=0"):
        layer.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_hr_l0', .*make the layer "
                                         r"with proj_size=P"):
        plain.load_state_dict(layer.state_dict())


def test_keras_weights_have_no_projection():
    rng = np.random.default_rng(0)
    sd = interop.from_keras("LSTM", rng.standard_normal((I, 4 * H)),
                            rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H))
    assert "proj_size" not in sd.options.layer_kwargs()
    with pytest.raises(ValueError, match=r"weight_hr_l0.*ONNX and Keras LSTMs have none"):
        make().load_state_dict(sd)
    fastcells.LSTM(**sd.options.layer_kwargs()).load_state_dict(sd)   # without: loads


# ----------------------------------------------------------------------------
# against torch


def torch_module(torch, layer):
    mod = torch.nn.LSTM(I, H, layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                        bidirectional=layer.bidirectional, proj_size=layer.proj_size)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return mod


@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS)
def test_matches_torch(num_layers, bidirectional, batch_first, use_lengths):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    layer = make(num_layers, bidirectional, batch_first)
    x, state, dy, dstate = inputs(layer, np.random.default_rng(0))
    lengths = LENGTHS if use_lengths else None
    dy = valid_only(dy, lengths, batch_first)  # torch's padded outputs carry no gradient
    y_t, states_t, dx_t, dstate_t, grads_t = torch_run(
        torch, torch_module(torch, layer), x, state, dy, dstate, lengths)

    y, (h, c) = layer(x, state, lengths=lengths)
    assert y.dtype == np.float32 and y.shape == y_t.shape
    assert h.shape == (num_layers * layer.num_directions, B, P) and c.shape[-1] == H
    np.testing.assert_allclose(y, y_t, atol=FWD_TOL)
    for s, s_t in zip((h, c), states_t):
        np.testing.assert_allclose(s, s_t, atol=FWD_TOL)

    dx, dstate0 = layer.backward(dy, dstate)
    assert dx.shape == x.shape
    assert_close_rel(dx, dx_t, GRAD_RTOL, "dx")
    for name, d, d_t in zip(("dh0", "dc0"), dstate0, dstate_t):
        assert d.shape == d_t.shape
        assert_close_rel(d, d_t, GRAD_RTOL, name)
    assert list(layer.grads) == list(grads_t)
    for name, g in layer.grads.items():
        assert_close_rel(g, grads_t[name], GRAD_RTOL, name)


def test_torch_state_dict_loads_as_is():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mod = torch.nn.LSTM(I, H, 2, bidirectional=True, batch_first=True, proj_size=P)
    sd = mod.state_dict()                       # tensors, loaded as they are
    layer = fastcells.LSTM(I, H, 2, batch_first=True, bidirectional=True, proj_size=P, seed=5)
    assert list(layer.state_dict()) == list(sd)
    layer.load_state_dict(sd)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, sd[k].numpy())
    x = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32)
    with torch.no_grad():
        y_t, (h_t, c_t) = mod(torch.tensor(x))
    y, (h, c) = layer.eval()(x)
    np.testing.assert_allclose(y, y_t.numpy(), atol=FWD_TOL)
    np.testing.assert_allclose(h, h_t.numpy(), atol=FWD_TOL)
    np.testing.assert_allclose(c, c_t.numpy(), atol=FWD_TOL)


# ----------------------------------------------------------------------------
# against the reference backend (always run)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS)
def test_kernels_match_reference_backend(num_layers, bidirectional, batch_first, option):
    rng = np.random.default_rng(6)
    kw = dict(dropout=0.3 if num_layers > 1 else 0.0, **OPTIONS[option])
    fast = make(num_layers, bidirectional, batch_first, **kw)
    ref = make(num_layers, bidirectional, batch_first, backend=reference, **kw)
    sd = perturbed(fast, rng)
    fast.load_state_dict(sd)
    ref.load_state_dict(sd)
    x, state, dy, dstate = inputs(fast, rng)
    # the same seed draws the same dropout masks in both
    y, (h, c) = fast(x, state, lengths=LENGTHS)
    y_r, (h_r, c_r) = ref(x.astype(np.float64), state, lengths=LENGTHS)
    for name, a, b in (("y", y, y_r), ("h", h, h_r), ("c", c, c_r)):
        assert_close(a, b, FWD_TOL, name)
    dx, (dh0, dc0) = fast.backward(dy, dstate)
    dx_r, (dh0_r, dc0_r) = ref.backward(dy.astype(np.float64), dstate)
    for name, a, b in (("dx", dx, dx_r), ("dh0", dh0, dh0_r), ("dc0", dc0, dc0_r)):
        assert_close_rel(a, b, GRAD_RTOL, name)
    for name in fast.grads:
        assert_close_rel(fast.grads[name], ref.grads[name], GRAD_RTOL, name)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_gradients_by_finite_differences(option):
    """The layer's plumbing (stacking, directions, lengths, batch_first) with a projection,
    on the float64 reference: directional derivatives along random directions."""
    layer = make(2, True, True, seed=4, backend=reference, layer_norm_eps=FD_LN_EPS,
                 **OPTIONS[option])
    rng = np.random.default_rng(5)
    layer.load_state_dict(perturbed(layer, rng))
    x, state, dy, dstate = inputs(layer, rng, np.float64)
    assert_gradients_by_finite_differences(layer, x, state, dy, dstate, LENGTHS, rng, FD_EPS,
                                           FD_RTOL)
    assert np.abs(layer.grads["weight_hr_l1_reverse"]).max() > 0


@pytest.mark.parametrize("steps, batch", [(0, B), (T, 0)], ids=["T=0", "B=0"])
def test_empty_work(steps, batch):
    layer = make(2, True)
    rng = np.random.default_rng(16)
    h0 = rng.standard_normal((4, batch, P)).astype(np.float32)
    c0 = rng.standard_normal((4, batch, H)).astype(np.float32)
    y, (h, c) = layer(np.zeros((steps, batch, I), np.float32), (h0, c0))
    assert y.shape == (steps, batch, 2 * P)
    np.testing.assert_array_equal(h, h0)      # no step: the initial state
    np.testing.assert_array_equal(c, c0)
    dx, (dh0, dc0) = layer.backward(np.zeros(y.shape, np.float32), (h0, c0))
    assert dx.shape == (steps, batch, I)
    np.testing.assert_array_equal(dh0, h0)    # the gradient passes through unchanged
    np.testing.assert_array_equal(dc0, c0)


# ----------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("option", ["plain", "both"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("backend", [None, reference], ids=["compiled", "reference"])
def test_step_equals_the_sequence_call(backend, training, option):
    layer = make(3, seed=6, backend=backend, **OPTIONS[option]).train(training)
    rng = np.random.default_rng(7)
    layer.load_state_dict(perturbed(layer, rng, 0.1))
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = 0.5 * rng.standard_normal((3, B, P)).astype(np.float32)
    c0 = 0.5 * rng.standard_normal((3, B, H)).astype(np.float32)
    y, (h, c) = layer(x, (h0, c0))
    state = (h0, c0)
    for t in range(T):
        y_t, state = layer.step(x[t], state)
        assert y_t.shape == (B, P)
        assert_close(y_t, y[t], FWD_TOL, f"step {t}")
    assert state[0].shape == (3, B, P) and state[1].shape == (3, B, H)
    assert_close(state[0], h, FWD_TOL, "h")
    assert_close(state[1], c, FWD_TOL, "c")
    # a zero state (None) is that of the sequence call without hx
    y_0, _ = layer(x[:1])
    y_t, _ = layer.step(x[0])
    assert_close(y_t, y_0[0], FWD_TOL, "step from zeros")


@pytest.mark.parametrize("backend", [None, reference], ids=["compiled", "reference"])
def test_step_applies_dropout_as_a_one_step_call(backend):
    # training mode with dropout: the masks come from the same generator as the call's
    stepping = make(3, dropout=0.5, seed=8, backend=backend)
    calling = make(3, dropout=0.5, seed=8, backend=backend)
    x = np.random.default_rng(9).standard_normal((1, B, I)).astype(np.float32)
    y, (h, c) = calling(x)
    y_t, (h_t, c_t) = stepping.step(x[0])
    assert_close(y_t, y[0], FWD_TOL, "y")
    assert_close(h_t, h, FWD_TOL, "h")
    assert_close(c_t, c, FWD_TOL, "c")
    assert not np.allclose(y_t, make(3, seed=8, backend=backend).step(x[0])[0])


@pytest.mark.parametrize("backend", [None, reference], ids=["compiled", "reference"])
def test_float16_step_is_the_rounded_weights_step(backend):
    # weight_hr is rounded with weight_ih and weight_hh: the bits of a float32 step of them
    half = make(2, seed=17, backend=backend).eval()
    rounded = make(2, seed=17, backend=backend).eval()
    rounded.load_state_dict({k: v.astype(np.float16).astype(np.float32)
                             if k.startswith("weight_") else v
                             for k, v in half.state_dict().items()})
    half.step_weight_dtype = "float16"
    x = np.random.default_rng(18).standard_normal((3, 2, I)).astype(np.float32)
    s_half = s_rounded = None
    for t in range(3):
        y_half, s_half = half.step(x[t], s_half)
        y_rounded, s_rounded = rounded.step(x[t], s_rounded)
        np.testing.assert_array_equal(y_half, y_rounded)
    np.testing.assert_array_equal(s_half[1], s_rounded[1])
    # a weight_hr beyond float16's range is named
    half.load_state_dict({"weight_hr_l1": np.full((P, H), 1e5, np.float32)}, strict=False)
    with pytest.raises(ValueError, match="weight_hr_l1"):
        half.step(x[0])


def test_step_refuses_a_wrong_state_naming_the_width():
    layer = make(2).eval()
    x_t = np.zeros((B, I), np.float32)
    with pytest.raises(ValueError, match=r"^h0: expected shape \(num_layers\*num_directions, "
                                         r"B, P\) = \(2, 3, 3\), got \(2, 3, 7\)$"):
        layer.step(x_t, (np.zeros((2, B, H), np.float32), None))


# ----------------------------------------------------------------------------
# pickles, copies, training


def test_pickle_and_copies_give_the_same_numbers():
    layer = make(2, True, peephole=True, seed=10)
    x, state, dy, _ = inputs(layer, np.random.default_rng(11))
    y, (h, c) = layer(x, state)
    layer.backward(dy)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), copy.copy(layer)):
        assert other.proj_size == P and repr(other) == repr(layer)
        assert all(not g.any() for g in other.grads.values())
        y2, (h2, c2) = other(x, state)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(h2, h)
        np.testing.assert_array_equal(c2, c)
    # a stepping layer pickles without its steppers and steps the same afterwards
    streaming = make(2, seed=12).eval()
    x_t = x[0]
    first = streaming.step(x_t)
    again = pickle.loads(pickle.dumps(streaming)).step(x_t)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1][1], first[1][1])


def test_adam_trains_a_projected_layer():
    rng = np.random.default_rng(13)
    layer = make(2, dropout=0.1, seed=14)
    head = fastcells.Linear(P, 1, seed=15)
    opt = fastcells.optim.Adam([layer, head], lr=0.01)
    x = rng.standard_normal((10, 8, I)).astype(np.float32)
    target = np.cumsum(x[..., :1], axis=0) * 0.3
    hr = layer.state_dict()["weight_hr_l1"]

    def epoch():
        opt.zero_grad()
        y, _ = layer(x)
        pred = head(y)
        layer.backward(head.backward(2 * (pred - target) / pred.size))
        opt.step()
        return float(((pred - target) ** 2).mean())

    first = epoch()
    for _ in range(40):
        last = epoch()
    assert last < 0.5 * first
    assert not np.allclose(layer.state_dict()["weight_hr_l1"], hr)


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("value, error, got", [
    (-1, ValueError, "-1"), (H, ValueError, str(H)), (H + 5, ValueError, str(H + 5)),
    (2.0, TypeError, "2.0"), (True, TypeError, "True"), ("3", TypeError, "'3'"),
    (None, TypeError, "None"),
])
def test_bad_proj_size(value, error, got):
    with pytest.raises(error, match=rf"^proj_size: expected 0 \(no projection\) or an integer "
                                    rf"in \[1, hidden_size\) = \[1, {H}\).*, got {got}$"):
        fastcells.LSTM(I, H, proj_size=value)


def test_np_integer_proj_size_is_taken():
    assert fastcells.LSTM(I, H, proj_size=np.int64(2)).proj_size == 2


@pytest.mark.parametrize("cls", [fastcells.RNN, fastcells.GRU])
def test_rnn_and_gru_have_no_proj_size(cls):
    # as torch: proj_size is an LSTM's (torch.nn.RNN/GRU raise for a non-zero one)
    with pytest.raises(TypeError, match="proj_size"):
        cls(I, H, proj_size=3)
    assert cls(I, H).proj_size == 0


def test_shapes_of_states_and_gradients_are_checked():
    layer = make(2, True)
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(ValueError, match=r"^h0: expected shape \(num_layers\*num_directions, B, "
                                         r"P\) = \(4, 3, 3\), got \(4, 3, 7\)$"):
        layer(x, (np.zeros((4, B, H), np.float32), None))
    with pytest.raises(ValueError, match=r"^c0: expected shape \(num_layers\*num_directions, B, "
                                         r"H\) = \(4, 3, 7\), got \(4, 3, 3\)$"):
        layer(x, (None, np.zeros((4, B, P), np.float32)))
    with pytest.raises(TypeError, match=r"^hx: expected None or a pair \(h0, c0\) of arrays of "
                                        r"shape \(num_layers\*num_directions, B, P\) = "
                                        r"\(4, B, 3\) and .*, B, H\) = \(4, B, 7\), got"):
        layer(x, np.zeros((4, B, P), np.float32))
    layer(x)
    with pytest.raises(ValueError, match=r"^dy: expected shape \(T, B, D\*P\) "
                                         r"\(batch_first=False\) with D\*P = 6, got \(6, 3, 14\)"):
        layer.backward(np.zeros((T, B, 2 * H), np.float32))
    with pytest.raises(ValueError, match=r"^dh: expected shape .* = \(4, 3, 3\), got \(4, 3, 7\)"):
        layer.backward(None, (np.zeros((4, B, H), np.float32), None))
