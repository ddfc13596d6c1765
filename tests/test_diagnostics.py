"""fastcells.diagnostics.gradient_flow: exact per-step gradient norms of a last-step loss."""
import numpy as np
import pytest
from conftest import TensorLike

import fastcells
from fastcells import diagnostics, interop, reference
from fastcells._cells import CELL_NAMES, cell_functions
from fastcells._cells import CELLS as CELL_TABLE
from fastcells.diagnostics import gradient_flow

RTOL = 1e-4          # float32 kernels against float64 finite differences / torch
FD_EPS = 1e-6
#: the layer class of each cell
CELLS = {name: getattr(fastcells, spec.layer) for name, spec in CELL_TABLE.items()}


def _fd_norms(layer, cell, x, dy, **kw):
    """||dL/dh_t|| by central differences on the float64 reference (one layer, zeros init)."""
    sd = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    w = [sd[n + "_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    fwd = cell_functions(reference, cell)[0]
    if kw.pop("peephole", False):
        kw["peephole"] = sd["peephole_l0"]
    if kw.pop("layer_norm", False):
        kw["layer_norm"] = fastcells.LayerNormWeights(
            *(sd.get(f"ln_{f}_l0") for f in fastcells.LayerNormWeights._fields))
    if kw.pop("proj_size", 0):
        kw["W_hr"] = sd["weight_hr_l0"]
    T, B, _ = x.shape
    H = dy.shape[1]                                   # h's width: P with a projection
    h, c = np.zeros((B, H)), np.zeros((B, w[1].shape[0] // CELL_TABLE[cell].G))
    norms = []
    for t in range(T):
        out = fwd(x[t:t + 1], *w, h, **({"c0": c} if cell == "lstm" else {}), **kw)
        h, c = out.h, (out.c if cell == "lstm" else None)
        extra = {"c0": c} if cell == "lstm" else {}

        def loss(h_t, t=t, extra=extra):
            return np.sum(dy * fwd(x[t + 1:], *w, h_t, **extra, **kw).h)

        grad = np.zeros((B, H))
        for idx in np.ndindex(B, H):
            e = np.zeros((B, H))
            e[idx] = FD_EPS
            grad[idx] = (loss(h + e) - loss(h - e)) / (2 * FD_EPS)
        norms.append(np.linalg.norm(grad))
    return np.array(norms)


@pytest.mark.parametrize("cell,kw", [("rnn", {}), ("rnn", {"nonlinearity": "relu"}),
                                     ("gru", {}), ("gru", {"linear_before_reset": False}),
                                     ("lstm", {}), ("lstm", {"peephole": True}),
                                     ("rnn", {"layer_norm": True}), ("gru", {"layer_norm": True}),
                                     ("lstm", {"layer_norm": True}), ("lstm", {"proj_size": 2}),
                                     ("lstm", {"proj_size": 3, "layer_norm": True})])
def test_matches_finite_differences(cell, kw):
    T, B, I, H = 5, 2, 3, 4
    layer = CELLS[cell](I, H, seed=1, **kw)
    if kw.get("peephole"):      # the default initialisation gives peepholes too small to matter
        layer.load_state_dict({**layer.state_dict(), "peephole_l0": np.linspace(-2, 2, 3 * H)})
    if kw.get("layer_norm"):    # gains and biases away from (1, 0), so that dropping them shows
        rng_ln = np.random.default_rng(3)
        layer.load_state_dict({k: (v + rng_ln.uniform(-0.5, 0.5, v.shape)
                                   if k.startswith("ln_") else v)
                               for k, v in layer.state_dict().items()})
    kw = dict(kw)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((B, kw.get("proj_size") or H))
    got = gradient_flow(layer, x, dy_last=dy)
    want = _fd_norms(layer, cell, x, dy, **kw)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    assert got[-1] == pytest.approx(np.linalg.norm(dy), rel=1e-6)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_matches_torch_unrolled(cell):
    """Against PyTorch's h_t.grad in an unrolled two-layer loop (top layer's states)."""
    torch = pytest.importorskip("torch")
    T, B, I, H = 7, 3, 4, 5
    layer = CELLS[cell](I, H, num_layers=2, seed=3)
    sd = {k: torch.tensor(v) for k, v in layer.state_dict().items()}
    cls = {"rnn": torch.nn.RNNCell, "gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}[cell]
    cells = []
    for k, size in enumerate([I, H]):
        m = cls(size, H)
        m.load_state_dict({n: sd[f"{n}_l{k}"] for n in ("weight_ih", "weight_hh", "bias_ih",
                                                        "bias_hh")})
        cells.append(m)
    x = torch.tensor(np.random.default_rng(4).standard_normal((T, B, I)), dtype=torch.float32)
    states = [None, None]
    tops = []
    for t in range(T):
        inp = x[t]
        for k, m in enumerate(cells):
            states[k] = m(inp, states[k])
            inp = states[k][0] if cell == "lstm" else states[k]
        inp.retain_grad()
        tops.append(inp)
    tops[-1].sum().backward()
    want = np.array([t.grad.norm().item() for t in tops])
    np.testing.assert_allclose(gradient_flow(layer, x.numpy()), want, rtol=RTOL, atol=0)
    # a PyTorch module is a layer too (same weights, same curve)
    tmod = getattr(torch.nn, cell.upper())(I, H, num_layers=2)
    tmod.load_state_dict(sd)
    np.testing.assert_allclose(gradient_flow(tmod, x), want, rtol=RTOL, atol=0)


def test_vanishing_for_small_rnn_not_for_lstm_with_high_forget_bias():
    T, B, I, H = 40, 4, 3, 8
    rng = np.random.default_rng(5)
    x = 0.1 * rng.standard_normal((T, B, I))
    rnn = fastcells.RNN(I, H, seed=6)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    sd = rnn.state_dict()
    sd["weight_hh_l0"] = 0.5 * q                  # every singular value 0.5
    sd["bias_ih_l0"][:] = sd["bias_hh_l0"][:] = 0
    rnn.load_state_dict(sd)
    norms = gradient_flow(rnn, x)
    ratios = norms[:-1] / norms[1:]
    # geometric: each step back multiplies by 0.5 * tanh' (close to 1 for small inputs)
    assert np.all((ratios > 0.4) & (ratios <= 0.5 + 1e-6)), ratios
    assert norms[0] < 1e-10 * norms[-1]

    lstm = fastcells.LSTM(I, H, seed=6)
    sd = lstm.state_dict()
    sd["weight_hh_l0"] *= 0.5
    sd["bias_ih_l0"][H:2 * H] = 5.0               # forget gate ~ sigmoid(5) = 0.993
    lstm.load_state_dict(sd)
    lnorms = gradient_flow(lstm, x)
    assert np.all(lnorms > 0)
    assert lnorms[0] / lnorms[-1] > 1e6 * norms[0] / norms[-1]


def test_chunking_batch_first_state_dict_and_initial_state(monkeypatch):
    T, B, I, H = 9, 2, 3, 4
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, 1, B, H))
    lstm = fastcells.LSTM(I, H, seed=8)
    whole = gradient_flow(lstm, x, (h0, c0))
    monkeypatch.setattr(diagnostics, "_CHUNK_ELEMENTS", 1)     # one suffix problem per call
    np.testing.assert_allclose(gradient_flow(lstm, x, (h0, c0)), whole, rtol=1e-6)
    monkeypatch.undo()
    assert not np.allclose(gradient_flow(lstm, x), whole)      # hx is used
    lstm_bf = fastcells.LSTM(I, H, batch_first=True, seed=8)
    np.testing.assert_allclose(gradient_flow(lstm_bf, x.transpose(1, 0, 2), (h0, c0)), whole,
                               rtol=1e-6)
    # weights converted by interop carry their options (here GRU's form)
    gru = fastcells.GRU(I, H, seed=9, linear_before_reset=False)
    sd = interop.StateDict(gru.state_dict(), interop.RunOptions(
        "gru", I, H, linear_before_reset=False))
    np.testing.assert_allclose(gradient_flow(sd, x), gradient_flow(gru, x), rtol=1e-6)


def test_bad_arguments():
    x = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        gradient_flow(fastcells.GRU(4, 5, bidirectional=True), x)
    with pytest.raises(TypeError, match="layer"):
        gradient_flow(object(), x)
    with pytest.raises(TypeError, match="layer"):
        gradient_flow(fastcells.Linear(4, 5), x)
    with pytest.raises(ValueError, match=r"dy_last: expected shape \(B, H\) = \(2, 5\)"):
        gradient_flow(fastcells.GRU(4, 5), x, dy_last=np.ones((2, 4)))
    with pytest.raises(ValueError, match="hx"):
        gradient_flow(fastcells.GRU(4, 5), x, np.zeros((2, 2, 5)))
    with pytest.raises(TypeError, match="hx"):
        gradient_flow(fastcells.LSTM(4, 5), x, np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match="x"):
        gradient_flow(fastcells.GRU(4, 5), x[0])


def test_state_dict_missing_a_weight_names_it():
    sd = fastcells.GRU(4, 5, seed=0).state_dict()
    del sd["weight_hh_l0"]
    state = interop.StateDict(sd, interop.RunOptions("gru", 4, 5))
    with pytest.raises(ValueError, match="layer: expected state-dict key weight_hh_l0"):
        gradient_flow(state, np.zeros((3, 2, 4)))


def test_tensor_like_inputs_accepted():
    """x, hx and dy_last may be framework tensors (anything with ``.numpy()``)."""

    rng = np.random.default_rng(6)
    gru = fastcells.GRU(4, 5, seed=0)
    x, h0, dy = rng.standard_normal((3, 2, 4)), rng.standard_normal((1, 2, 5)), np.ones((2, 5))
    np.testing.assert_array_equal(
        gradient_flow(gru, TensorLike(x), TensorLike(h0), dy_last=TensorLike(dy)),
        gradient_flow(gru, x, h0, dy_last=dy))
