"""The layers (RNN, GRU, LSTM, Linear): PyTorch's API and numbers.

Against ``torch.nn`` when torch is installed (outputs, every gradient, packed
sequences, state dicts both ways); otherwise against ``fastcells.reference``:
a stack composed here by hand from the reference functions, and finite
differences of the layer run on the reference backend in float64.
"""
import numpy as np
import pytest
from conftest import assert_gradients_by_finite_differences

import fastcells
from fastcells import reference

#: fastcells (float32) vs torch (float32) or the float64 reference, outputs
FWD_TOL = 2e-5
#: gradients, relative to the largest entry of each
GRAD_RTOL = 1e-4
#: finite differences of the float64 reference backend (float32 parameters)
FD_EPS = 1e-3
FD_RTOL = 1e-5

T, B, I, H = 6, 3, 4, 5
LENGTHS = np.array([6, 2, 4])

CELLS = {
    "rnn": (fastcells.RNN, {}),
    "rnn-relu": (fastcells.RNN, {"nonlinearity": "relu"}),
    "gru": (fastcells.GRU, {}),
    "lstm": (fastcells.LSTM, {}),
}
#: cells torch has no equivalent of: checked against the reference only
EXTRA_CELLS = {"lstm-peephole": (fastcells.LSTM, {"peephole": True})}
ALL_CELLS = {**CELLS, **EXTRA_CELLS}
# (num_layers, bidirectional, batch_first)
CONFIGS = [(2, False, False), (3, True, True), (1, True, False)]


def is_lstm(cell):
    return cell == "lstm"


def make(cell, num_layers=1, bidirectional=False, batch_first=False, **kw):
    cls, options = ALL_CELLS[cell]
    return cls(I, H, num_layers, batch_first=batch_first, bidirectional=bidirectional,
               seed=1, **options, **kw)


def inputs(layer, rng, dtype=np.float32):
    """x, initial state, and upstream gradients dy, dstate for ``layer``."""
    LD = layer.num_layers * layer.num_directions
    x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I)).astype(dtype)
    y_shape = x.shape[:2] + (layer.num_directions * H,)
    state = [rng.standard_normal((LD, B, H)).astype(dtype) * 0.5 for _ in range(2)]
    dstate = [rng.standard_normal((LD, B, H)).astype(dtype) for _ in range(2)]
    if isinstance(layer, fastcells.LSTM):
        return x, tuple(state), rng.standard_normal(y_shape).astype(dtype), tuple(dstate)
    return x, state[0], rng.standard_normal(y_shape).astype(dtype), dstate[0]


def assert_close_rel(actual, expected, rtol, name=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(initial=0.0), 1e-3)
    np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=rtol, err_msg=name)


def flat_states(s):
    return list(s) if isinstance(s, tuple) else [s]


# ----------------------------------------------------------------------------
# against torch


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def torch_module(torch, layer):
    cls = {fastcells.RNN: torch.nn.RNN, fastcells.GRU: torch.nn.GRU,
           fastcells.LSTM: torch.nn.LSTM}[type(layer)]
    kw = {"nonlinearity": layer.nonlinearity} if isinstance(layer, fastcells.RNN) else {}
    mod = cls(I, H, layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
              bidirectional=layer.bidirectional, **kw)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return mod


def torch_run(torch, mod, x, state, dy, dstate, lengths):
    """Outputs and gradients of torch for the loss sum(y*dy) + sum(state*dstate)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in flat_states(state)]
    hx = tuple(st) if len(st) == 2 else st[0]
    if lengths is None:
        y, hn = mod(xt, hx)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=mod.batch_first,
                                      enforce_sorted=False)
        out, hn = mod(packed, hx)
        y, _ = pad_packed_sequence(out, batch_first=mod.batch_first, total_length=T)
    hn = list(hn) if isinstance(hn, tuple) else [hn]
    loss = (y * torch.tensor(dy)).sum()
    for h, d in zip(hn, flat_states(dstate)):
        loss = loss + (h * torch.tensor(d)).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in mod.named_parameters()}
    return (y.detach().numpy(), [h.detach().numpy() for h in hn], xt.grad.numpy(),
            [s.grad.numpy() for s in st], grads)


def valid_only(dy, lengths, batch_first):
    """``dy`` zeroed past each sequence's length (``lengths`` None: unchanged)."""
    if lengths is None:
        return dy
    mask = (np.arange(T)[:, None] < lengths[None, :])[..., None]
    return dy * (mask.transpose(1, 0, 2) if batch_first else mask)


@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS)
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("use_lengths", [False, True])
def test_matches_torch(torch, cell, num_layers, bidirectional, batch_first, use_lengths):
    layer = make(cell, num_layers, bidirectional, batch_first)
    rng = np.random.default_rng(0)
    x, state, dy, dstate = inputs(layer, rng)
    lengths = LENGTHS if use_lengths else None
    dy = valid_only(dy, lengths, batch_first)  # torch's padded outputs carry no gradient
    y_t, states_t, dx_t, dstate_t, grads_t = torch_run(
        torch, torch_module(torch, layer), x, state, dy, dstate, lengths)

    y, states = layer(x, state, lengths=lengths)
    assert y.dtype == np.float32 and y.shape == y_t.shape
    np.testing.assert_allclose(y, y_t, atol=FWD_TOL)
    for s, s_t in zip(flat_states(states), states_t):
        np.testing.assert_allclose(s, s_t, atol=FWD_TOL)

    dx, dstate0 = layer.backward(dy, dstate)
    assert dx.shape == x.shape
    assert_close_rel(dx, dx_t, GRAD_RTOL, "dx")
    for name, d, d_t in zip(("dh0", "dc0"), flat_states(dstate0), dstate_t):
        assert_close_rel(d, d_t, GRAD_RTOL, name)
    assert set(layer.grads) == set(grads_t)
    for name, g in layer.grads.items():
        assert_close_rel(g, grads_t[name], GRAD_RTOL, name)


def test_state_dict_round_trip_with_torch(torch):
    layer = make("lstm", 2, True, True)
    rng = np.random.default_rng(2)
    x, state, _, _ = inputs(layer, rng)
    mod = torch_module(torch, layer)  # fastcells -> torch
    with torch.no_grad():
        y_t, (h_t, c_t) = mod(torch.tensor(x), tuple(torch.tensor(s) for s in state))
    y, (h, c) = layer(x, state)
    np.testing.assert_allclose(y, y_t.numpy(), atol=FWD_TOL)
    np.testing.assert_allclose(c, c_t.numpy(), atol=FWD_TOL)

    # torch -> fastcells: the module's own state dict (tensors) loads as it is
    torch.manual_seed(0)
    mod = torch.nn.GRU(I, H, 2, bidirectional=True)
    sd = mod.state_dict()
    other = fastcells.GRU(I, H, 2, bidirectional=True, seed=5)
    assert list(other.state_dict()) == list(sd)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k].numpy())
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    with torch.no_grad():
        y_t, h_t = mod(torch.tensor(x))
    y, h = other(x)
    np.testing.assert_allclose(y, y_t.numpy(), atol=FWD_TOL)
    np.testing.assert_allclose(h, h_t.numpy(), atol=FWD_TOL)


def test_linear_matches_torch(torch):
    lin = fastcells.Linear(H, 3, seed=0)
    mod = torch.nn.Linear(H, 3)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, 3)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y_t = mod(xt)
    (y_t * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(lin(x), y_t.detach().numpy(), atol=FWD_TOL)
    assert_close_rel(lin.backward(dy), xt.grad.numpy(), GRAD_RTOL, "dx")
    assert_close_rel(lin.grads["weight"], mod.weight.grad.numpy(), GRAD_RTOL, "weight")
    assert_close_rel(lin.grads["bias"], mod.bias.grad.numpy(), GRAD_RTOL, "bias")


# ----------------------------------------------------------------------------
# against the reference (always run)

FUNCS = {
    fastcells.RNN: (reference.rnn_forward, lambda l: {"nonlinearity": l.nonlinearity}),
    fastcells.GRU: (reference.gru_forward, lambda l: {"linear_before_reset": l.linear_before_reset}),
    fastcells.LSTM: (reference.lstm_forward, lambda l: {}),
}


def reference_stack(layer, x, state, lengths):
    """The layer's forward, composed by hand from the reference functions (time-major x)."""
    fwd, opts = FUNCS[type(layer)]
    sd, D = layer.state_dict(), layer.num_directions
    states = flat_states(state)
    inp, finals = x, [[] for _ in states]
    for k in range(layer.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w = [sd[n + sfx] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            res = fwd(inp, *w, *(s[k * D + d] for s in states), lengths=lengths,
                      reverse=bool(d), **opts(layer))
            outs.append(res.y)
            for j, f in enumerate(finals):
                f.append(res[1 + j])
        inp = np.concatenate(outs, axis=-1)
    return inp, [np.stack(f) for f in finals]


@pytest.mark.parametrize("cell,options", [
    ("rnn", {}), ("rnn-relu", {}), ("gru", {}), ("gru", {"linear_before_reset": False}), ("lstm", {})])
def test_matches_reference_stack(cell, options):
    cls, base = CELLS[cell]
    layer = cls(I, H, 2, bidirectional=True, seed=3, **{**base, **options})
    x, state, _, _ = inputs(layer, np.random.default_rng(1), np.float64)
    y_ref, states_ref = reference_stack(layer, x, state, LENGTHS)
    y, states = layer(x, state, lengths=LENGTHS)
    np.testing.assert_allclose(y, y_ref, atol=FWD_TOL)
    for s, s_ref in zip(flat_states(states), states_ref):
        np.testing.assert_allclose(s, s_ref, atol=FWD_TOL)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lstm-peephole"])
def test_gradients_by_finite_differences(cell):
    """The layer's plumbing (stacking, directions, lengths, batch_first) on the float64 reference."""
    cls, options = ALL_CELLS[cell]
    layer = cls(I, H, 2, batch_first=True, bidirectional=True, seed=4, backend=reference,
                **options)
    rng = np.random.default_rng(5)
    x, state, dy, dstate = inputs(layer, rng, np.float64)

    assert_gradients_by_finite_differences(layer, x, state, dy, dstate, LENGTHS, rng, FD_EPS,
                                           FD_RTOL, params_rtol=FD_RTOL * 10)


@pytest.mark.parametrize("cell", list(ALL_CELLS))
def test_kernels_match_reference_backend(cell):
    fast = make(cell, 2, True, False)
    ref = make(cell, 2, True, False, backend=reference)
    x, state, dy, dstate = inputs(fast, np.random.default_rng(6))
    y, s = fast(x, state, lengths=LENGTHS)
    y_r, s_r = ref(x.astype(np.float64), state, lengths=LENGTHS)
    np.testing.assert_allclose(y, y_r, atol=FWD_TOL)
    dx, _ = fast.backward(dy, dstate)
    dx_r, _ = ref.backward(dy, dstate)
    assert_close_rel(dx, dx_r, GRAD_RTOL, "dx")
    for name in fast.grads:
        assert_close_rel(fast.grads[name], ref.grads[name], GRAD_RTOL, name)


# ----------------------------------------------------------------------------
# initialisation, modes, dropout


@pytest.mark.parametrize("cls", [fastcells.RNN, fastcells.GRU, fastcells.LSTM])
def test_init_is_pytorch_default(cls):
    layer = cls(7, 16, 2, bidirectional=True, seed=0)
    bound = 1 / np.sqrt(16)
    values = np.concatenate([p.ravel() for p in layer.parameters().values()])
    assert values.dtype == np.float32
    assert np.abs(values).max() <= bound
    # uniform on [-bound, bound]: fills the interval, mean ~0, variance bound^2/3
    assert values.min() < -0.95 * bound and values.max() > 0.95 * bound
    assert abs(values.mean()) < 0.05 * bound
    np.testing.assert_allclose(values.var(), bound ** 2 / 3, rtol=0.1)
    same = cls(7, 16, 2, bidirectional=True, seed=0).parameters()
    other = cls(7, 16, 2, bidirectional=True, seed=1).parameters()
    for k, p in layer.parameters().items():
        np.testing.assert_array_equal(p, same[k])
        assert not np.array_equal(p, other[k])


def test_linear_init_bounds():
    lin = fastcells.Linear(25, 40, seed=0)
    for name, p in lin.parameters().items():
        assert np.abs(p).max() <= 1 / 5 and np.abs(p).max() > 0.9 / 5, name
    assert lin.parameters()["weight"].shape == (40, 25)
    assert list(fastcells.Linear(3, 2, bias=False).state_dict()) == ["weight"]


def test_dropout_off_in_eval_and_at_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    plain = fastcells.LSTM(I, H, 3, seed=0)
    dropped = fastcells.LSTM(I, H, 3, dropout=0.5, seed=0)
    y_plain, _ = plain(x)  # training mode, dropout 0
    y_train, _ = dropped(x)
    assert not np.allclose(y_train, y_plain)
    y_eval, (h, c) = dropped.eval()(x)
    np.testing.assert_array_equal(y_eval, y_plain)
    np.testing.assert_array_equal(plain.eval()(x)[0], y_plain)


def test_dropout_statistics():
    """Dropout between layers: kept with probability 1-p, scaled by 1/(1-p), seeded."""
    p, n = 0.3, 64
    layer = fastcells.RNN(n, n, 2, dropout=p, nonlinearity="relu", seed=0)
    # layer 1 copies its (dropped-out) input: relu(I @ v) = v for v >= 0
    layer.load_state_dict({"weight_ih_l1": np.eye(n), "weight_hh_l1": np.zeros((n, n)),
                           "bias_ih_l1": np.zeros(n), "bias_hh_l1": np.zeros(n)}, strict=False)
    x = np.random.default_rng(1).standard_normal((20, 50, n)).astype(np.float32)
    layer.eval()
    ref, _ = layer(x)
    layer.train()
    y, _ = layer(x)
    live = ref > 1e-3
    kept = y[live] != 0
    assert abs(kept.mean() - (1 - p)) < 0.01  # 20*50*64/2 samples: sd ~0.002
    np.testing.assert_allclose(y[live][kept], ref[live][kept] / (1 - p), rtol=1e-5)
    again = fastcells.RNN(n, n, 2, dropout=p, nonlinearity="relu", seed=0)
    again.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(again(x)[0], y)  # the seed fixes the masks
    # backward routes gradients through the same mask
    dx, _ = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.isfinite(dx).all()


def test_eval_keeps_no_activations_and_grads_accumulate():
    layer = fastcells.GRU(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, _ = layer.eval()(x)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.ones_like(y))
    layer.train()
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    once = {k: g.copy() for k, g in layer.grads.items()}
    layer.backward(np.ones_like(y))
    for k, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-6)
    live = layer.grads["weight_hh_l0"]
    layer.zero_grad()
    assert layer.grads["weight_hh_l0"] is live and not live.any()


# ----------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("cell", list(ALL_CELLS))
def test_step_matches_sequence(cell):
    layer = make(cell, 2)
    x, state, _, _ = inputs(layer, np.random.default_rng(7))
    y, final = layer(x, state)
    s = state
    for t in range(T):
        y_t, s = layer.step(x[t], s)
        np.testing.assert_allclose(y_t, y[t], atol=FWD_TOL)
    for a, b in zip(flat_states(s), flat_states(final)):
        np.testing.assert_allclose(a, b, atol=FWD_TOL)
    y0, _ = layer.step(x[0])  # no state: zeros
    np.testing.assert_allclose(y0, layer(x[:1])[0][0], atol=FWD_TOL)


def test_step_rejects_bidirectional():
    with pytest.raises(ValueError, match="bidirectional"):
        fastcells.GRU(I, H, bidirectional=True).step(np.zeros((B, I)))


# ----------------------------------------------------------------------------
# bad input


def test_bad_shapes_raise_clear_errors():
    lstm = fastcells.LSTM(I, H, 2, batch_first=True)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, input_size\).*input_size = 4"):
        lstm(np.zeros((B, T, I + 1)))
    with pytest.raises(ValueError, match=r"x: expected a 3-D array"):
        lstm(np.zeros((T, I)))
    with pytest.raises(ValueError, match=r"h0: expected shape \(num_layers\*num_directions, B, H\)"):
        lstm(np.zeros((B, T, I)), (np.zeros((1, B, H)), np.zeros((2, B, H))))
    with pytest.raises(TypeError, match="hx: expected None or a pair"):
        lstm(np.zeros((B, T, I)), np.zeros((2, B, H)))
    with pytest.raises(TypeError, match="x: expected a real floating-point array"):
        lstm(np.zeros((B, T, I), dtype=np.int64))
    y, _ = lstm(np.zeros((B, T, I)))
    with pytest.raises(ValueError, match="dy: expected"):
        lstm.backward(np.zeros((B, T, 2 * H)))
    with pytest.raises(ValueError, match="dc: expected shape"):
        lstm.backward(y, (None, np.zeros((B, H))))
    with pytest.raises(ValueError, match="x_t: expected shape"):
        lstm.step(np.zeros((B, I + 1)))
    lin = fastcells.Linear(3, 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(..., in_features\)"):
        lin(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="hidden_size: expected an integer >= 1"):
        fastcells.RNN(3, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        fastcells.RNN(3, 2, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        fastcells.GRU(3, 2, 2, dropout=1.5)
    with pytest.raises(TypeError, match="backend"):
        fastcells.GRU(3, 2, backend=object())


def test_load_state_dict_names_what_is_wrong():
    layer = fastcells.GRU(I, H, 2)
    sd = layer.state_dict()
    bad = dict(sd)
    del bad["bias_hh_l1"]
    bad["weight_ih_l2"] = np.zeros((3 * H, H))
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1'\], unexpected keys \['weight_ih_l2'\]"):
        layer.load_state_dict(bad)
    result = layer.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["bias_hh_l1"] and result.unexpected_keys == ["weight_ih_l2"]
    wrong = dict(sd, weight_ih_l1=np.zeros((3 * H, I)))
    before = layer.state_dict()
    with pytest.raises(ValueError, match=r"weight_ih_l1: expected shape \(3\*H, D\*H\) = \(15, 5\), got \(15, 4\)"):
        layer.load_state_dict(dict(wrong, weight_hh_l0=np.ones((3 * H, H))))
    for k, v in layer.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="weight_hh_l0: expected a real floating-point array"):
        layer.load_state_dict(dict(sd, weight_hh_l0=np.zeros((3 * H, H), dtype=np.int32)))


class _FakeTensor:
    """Duck-typed framework tensor: detach().cpu().numpy()."""

    def __init__(self, a):
        self.a = a

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.a


def test_load_state_dict_accepts_tensor_likes():
    layer = fastcells.RNN(I, H)
    sd = fastcells.RNN(I, H, seed=9).state_dict()
    layer.load_state_dict({k: _FakeTensor(v.astype(np.float64)) for k, v in sd.items()})
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_peephole_parameters_are_used_and_trained():
    lstm = fastcells.LSTM(I, H, 2, bidirectional=True, peephole=True, seed=3)
    sd = lstm.state_dict()
    for name in ("peephole_l0", "peephole_l0_reverse", "peephole_l1", "peephole_l1_reverse"):
        assert sd[name].shape == (3 * H,)
    assert "peephole_l0" not in fastcells.LSTM(I, H).state_dict()
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, _ = lstm(x)
    lstm.backward(np.ones_like(y))
    assert all(np.abs(lstm.grads[n]).max() > 0 for n in sd if n.startswith("peephole"))
    plain = fastcells.LSTM(I, H, 2, bidirectional=True, seed=3)
    plain.load_state_dict({k: v for k, v in sd.items() if not k.startswith("peephole")})
    assert not np.allclose(plain(x)[0], y)   # the peepholes change the numbers


@pytest.mark.parametrize("cell", list(ALL_CELLS))
def test_step_uses_new_weights_after_an_update(cell):
    """step() prepares the weights once; an optimizer step or load_state_dict refreshes them."""
    layer = make(cell, 2).eval()
    rng = np.random.default_rng(8)
    x_t = rng.standard_normal((B, I)).astype(np.float32)
    before, _ = layer.step(x_t)
    layer.grads = {k: np.ones_like(v) for k, v in layer.grads.items()}
    fastcells.optim.SGD(layer, lr=0.1).step()
    after, _ = layer.step(x_t)
    np.testing.assert_allclose(after, layer(x_t[None])[0][0], atol=FWD_TOL)
    assert not np.allclose(before, after)
    layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})
    np.testing.assert_allclose(layer.step(x_t)[0], layer(x_t[None])[0][0], atol=FWD_TOL)
    for p in layer.parameters().values():   # edited by hand: parameters_changed() says so
        p *= 2
    layer.parameters_changed()
    np.testing.assert_allclose(layer.step(x_t)[0], layer(x_t[None])[0][0], atol=FWD_TOL)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", list(ALL_CELLS))
def test_step_gives_the_same_for_inputs_that_need_converting(cell, num_layers):
    # float32 C-order arrays skip the conversions in step(); everything else is
    # converted first: both must give exactly the same numbers and layout
    layer = make(cell, num_layers).eval()
    x, state, _, _ = inputs(layer, np.random.default_rng(11))
    y_fast, s_fast = layer.step(x[0], state)
    converted = [
        (x[0].astype(np.float64), state),
        (x[0].tolist(), state),
        (np.asfortranarray(x[0]), state),
        (x[0], tuple(np.asfortranarray(s) for s in flat_states(state))
         if isinstance(state, tuple) else np.asfortranarray(state)),
        (x[0], list(state) if isinstance(state, tuple) else state.astype(np.float64)),
    ]
    for x_t, s in converted:
        y_t, s_new = layer.step(x_t, s)
        assert y_t.dtype == np.float32 and y_t.shape == (B, H)
        np.testing.assert_array_equal(y_t, y_fast)
        for got, want in zip(flat_states(s_new), flat_states(s_fast)):
            assert got.dtype == np.float32 and got.shape == (num_layers, B, H)
            np.testing.assert_array_equal(got, want)
    # the outputs are new arrays: the caller's state is never written
    before = [s.copy() for s in flat_states(state)]
    layer.step(x[1], state)
    for s, b in zip(flat_states(state), before):
        np.testing.assert_array_equal(s, b)


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_state_of_wrong_size_is_named(cell):
    layer = make(cell, 2).eval()
    x, state, _, _ = inputs(layer, np.random.default_rng(12))
    one = [s[:1] for s in flat_states(state)]
    bad = tuple(one) if isinstance(state, tuple) else one[0]
    with pytest.raises(ValueError, match=r"h0: expected shape \(num_layers\*num_directions, B, H\)"):
        layer.step(x[0], bad)
    with pytest.raises(ValueError, match=r"x_t: expected shape \(B, input_size\)"):
        layer.step(x[0][:, :-1], state)
    if isinstance(state, tuple):
        with pytest.raises(TypeError, match="state: expected None or a pair"):
            layer.step(x[0], state[0])


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", list(CELLS))
def test_final_states_are_arrays_of_their_own(cell, num_layers):
    # the final states are (views of) new arrays: writing one changes nothing else
    layer = make(cell, num_layers)
    x, state, dy, _ = inputs(layer, np.random.default_rng(13))
    y, final = layer(x, state)
    for s in flat_states(final):
        assert s.dtype == np.float32 and s.shape == (num_layers, B, H)
        assert not np.shares_memory(s, y)
        assert not any(np.shares_memory(s, p) for p in layer.parameters().values())
    y_copy = y.copy()
    for s in flat_states(final):
        s += 1.0
    np.testing.assert_array_equal(y, y_copy)
    np.testing.assert_array_equal(layer(x, state)[0], y_copy)
    dx, d0 = layer.backward(dy)
    for d in flat_states(d0):
        assert d.dtype == np.float32 and d.shape == (num_layers, B, H)
        assert not np.shares_memory(d, dx)
