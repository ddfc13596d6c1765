"""The layer-normalized cells of the NumPy reference, and the validation of their arguments.

``fastcells._checks.check_layer_norm`` is the one check of ``layer_norm`` and
``layer_norm_eps`` that the reference and the compiled path share: its tests
are here, with the reference's.
"""
import math
from pathlib import Path

import numpy as np
import pytest
from test_reference_gradcheck import RELU_MARGIN, assert_gradient

from fastcells import _checks, bench, reference
from fastcells._cells import CELLS as CELL_TABLE
from fastcells._results import LayerNormGradients, LayerNormLSTMGradients, LayerNormWeights

H = 4


def ln_weights(cell, rng, H=H, dtype=np.float64):
    """Random gains and biases of a ``cell`` of hidden size H (c's for an LSTM only)."""
    GH = CELL_TABLE[cell].G * H

    def rand(n, center):
        return (center + 0.3 * rng.standard_normal(n)).astype(dtype)

    c = (rand(H, 1.0), rand(H, 0.0)) if cell == "lstm" else (None, None)
    return LayerNormWeights(rand(GH, 1.0), rand(GH, 0.0), rand(GH, 1.0), rand(GH, 0.0), *c)


# ----------------------------------------------------------------------------
# check_layer_norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_check_converts_to_the_callers_dtype(cell, dtype):
    weights = ln_weights(cell, np.random.default_rng(0), dtype=np.float16)
    checked, eps = _checks.check_layer_norm(cell, weights, 1e-5, H, dtype)
    assert isinstance(checked, LayerNormWeights) and eps == 1e-5
    for field, got, given in zip(LayerNormWeights._fields, checked, weights):
        if given is None:
            assert got is None, field
        else:
            assert got.dtype == dtype and got.flags.c_contiguous, field
            np.testing.assert_array_equal(got, given.astype(dtype))


def test_check_passes_fitting_arrays_unchanged_and_accepts_plain_tuples():
    weights = ln_weights("lstm", np.random.default_rng(0))
    checked, _ = _checks.check_layer_norm("lstm", tuple(weights), 1e-5, H, np.float64)
    assert all(got is given for got, given in zip(checked, weights))
    # a 4-tuple is a cell without c's
    four = tuple(ln_weights("gru", np.random.default_rng(0)))[:4]
    checked, _ = _checks.check_layer_norm("gru", list(four), 1e-5, H, np.float64)
    assert checked.c_weight is None and checked.c_bias is None


def test_check_without_layer_norm_returns_none_and_the_eps():
    assert _checks.check_layer_norm("rnn", None, 3, H, np.float32) == (None, 3.0)


@pytest.mark.parametrize("eps", [0, -1e-5, 0.0, math.nan, math.inf, -math.inf,
                                 np.float32("nan")])
def test_check_refuses_eps_not_positive_and_finite(eps):
    with pytest.raises(ValueError, match=r"layer_norm_eps: expected a finite number > 0, "
                                         r"got"):
        _checks.check_layer_norm("rnn", None, eps, H, np.float64)


@pytest.mark.parametrize("eps", [True, "1e-5", None, 1j])
def test_check_refuses_eps_not_a_number(eps):
    with pytest.raises(TypeError, match=r"layer_norm_eps: expected a finite number > 0, got"):
        _checks.check_layer_norm("lstm", None, eps, H, np.float64)


#: (cell, field) of every array a cell's layer_norm holds
CELL_FIELDS = [(cell, field) for cell in ("rnn", "gru", "lstm")
               for field in LayerNormWeights._fields if cell == "lstm" or "c_" not in field]


@pytest.mark.parametrize(("cell", "field"), CELL_FIELDS)
def test_check_refuses_a_wrong_shape_naming_field_expected_and_received(cell, field):
    weights = ln_weights(cell, np.random.default_rng(0))
    n = getattr(weights, field).shape[0]
    symbol = "H" if field.startswith("c_") else f"{CELL_TABLE[cell].G}\\*H"
    for bad in (np.ones(n + 1), np.ones((1, n))):
        with pytest.raises(ValueError, match=fr"layer_norm\.{field}: expected shape "
                                             fr"\({symbol},\) = \({n},\), got "
                                             fr"{re_shape(bad.shape)}"):
            _checks.check_layer_norm(cell, weights._replace(**{field: bad}), 1e-5, H,
                                     np.float64)


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("bad", [np.ones(3 * H, dtype=np.int64), np.ones(3 * H, dtype=bool),
                                 np.ones(3 * H, dtype=complex), ["a"] * (3 * H)])
def test_check_refuses_a_non_float_gain(bad):
    weights = ln_weights("gru", np.random.default_rng(0))._replace(hh_bias=bad)
    with pytest.raises(TypeError, match=r"layer_norm\.hh_bias: expected a real "
                                        r"floating-point array"):
        _checks.check_layer_norm("gru", weights, 1e-5, H, np.float32)


@pytest.mark.parametrize("field", ["c_weight", "c_bias"])
def test_check_requires_c_for_lstm(field):
    weights = ln_weights("lstm", np.random.default_rng(0))._replace(**{field: None})
    with pytest.raises(ValueError, match=fr"layer_norm\.{field}: expected an array of shape "
                                         fr"\(H,\) = \({H},\), got None"):
        _checks.check_layer_norm("lstm", weights, 1e-5, H, np.float64)
    with pytest.raises(ValueError, match=r"layer_norm\.c_weight: .* got None"):
        _checks.check_layer_norm("lstm", tuple(weights)[:4], 1e-5, H, np.float64)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_check_refuses_c_without_lstm(cell):
    weights = ln_weights(cell, np.random.default_rng(0))._replace(c_weight=np.ones(H))
    with pytest.raises(ValueError, match=fr"layer_norm\.c_weight: expected None \(only an "
                                         fr"LSTM normalizes its cell state\), got array of "
                                         fr"dtype float64 and shape \({H},\) for {cell}"):
        _checks.check_layer_norm(cell, weights, 1e-5, H, np.float64)


@pytest.mark.parametrize("bad", [np.ones(4), {"ih_weight": 1}, (np.ones(4),) * 5, 1.0])
def test_check_refuses_a_layer_norm_that_is_not_four_or_six_arrays(bad):
    with pytest.raises(TypeError, match=r"layer_norm: expected None or a LayerNormWeights"):
        _checks.check_layer_norm("rnn", bad, 1e-5, H, np.float64)


def test_check_refuses_gru_without_linear_before_reset():
    weights = ln_weights("gru", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"layer_norm: expected linear_before_reset=True "
                                         r"with layer_norm .* got linear_before_reset=False"):
        _checks.check_layer_norm("gru", weights, 1e-5, H, np.float64,
                                 linear_before_reset=False)


def test_check_never_writes_the_callers_arrays():
    weights = ln_weights("lstm", np.random.default_rng(0), dtype=np.float32)
    before = [a.copy() for a in weights]
    for a in weights:
        a.setflags(write=False)
    checked, _ = _checks.check_layer_norm("lstm", weights, 1e-5, H, np.float64)
    for a, b in zip(weights, before):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# the reference's layer-normalized cells: shared set-up

T, B, I = 4, 3, 3
LENGTHS = np.array([4, 0, 2])  # a full sequence, an empty one, a partial one

#: the layer-normalized variants: test id -> (family, forward options)
LN_CELLS = {
    "rnn-tanh": ("rnn", {"nonlinearity": "tanh"}),
    "rnn-relu": ("rnn", {"nonlinearity": "relu"}),
    "gru": ("gru", {"linear_before_reset": True}),
    "lstm": ("lstm", {}),
    "lstm-peephole": ("lstm", {"peephole": True}),
}


def family(cell):
    return LN_CELLS[cell][0]


def make_ln_inputs(cell, rng, T=T, B=B, I=I, H=H, bias=True):
    """Random float64 arguments of ``<family>_forward``, flat by name: the layer
    normalization's arrays are ``ln_<field>`` (see :func:`call_args`)."""
    fam, options = LN_CELLS[cell]
    G = CELL_TABLE[fam].G

    def rand(*shape, scale=1.0):
        return scale * rng.standard_normal(shape)

    inputs = {"x": rand(T, B, I), "W_ih": rand(G * H, I, scale=0.6),
              "W_hh": rand(G * H, H, scale=0.6),
              "b_ih": rand(G * H, scale=0.3) if bias else None,
              "b_hh": rand(G * H, scale=0.3) if bias else None,
              "h0": rand(B, H, scale=0.5)}
    if fam == "lstm":
        inputs["c0"] = rand(B, H, scale=0.5)
    if options.get("peephole"):
        inputs["peephole"] = rand(3 * H, scale=0.5)
    for field, value in ln_weights(fam, rng, H=H)._asdict().items():
        if value is not None:
            inputs[f"ln_{field}"] = value
    return inputs


def call_args(cell, inputs):
    """``inputs`` as keyword arguments of ``<family>_forward`` (a ``layer_norm``)."""
    fam, options = LN_CELLS[cell]
    kwargs = {k: v for k, v in inputs.items() if not k.startswith("ln_")}
    kwargs["layer_norm"] = LayerNormWeights(*(inputs.get(f"ln_{field}")
                                              for field in LayerNormWeights._fields))
    kwargs.update({k: v for k, v in options.items() if k != "peephole"})
    return kwargs


def ln_forward(cell, inputs, **kwargs):
    return getattr(reference, f"{family(cell)}_forward")(**call_args(cell, inputs), **kwargs)


def ln_backward(cell, cache, dy, dh, dc):
    bwd = getattr(reference, f"{family(cell)}_backward")
    return bwd(cache, dy, dh, dc) if family(cell) == "lstm" else bwd(cache, dy, dh)


def gradient_of(grads, name):
    """The gradient of forward argument ``name`` in a backward result."""
    if name.startswith("ln_"):
        return getattr(grads.dlayer_norm, name[3:])
    return getattr(grads, "d" + name)


def upstream(rng, T=T, B=B, H=H):
    """Random gradients wrt y, h and c (the loss sum(dy*y) + sum(dh*h) + sum(dc*c))."""
    return rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), \
        rng.standard_normal((B, H))


def loss_of(cell, out, dy, dh, dc):
    total = np.sum(dy * out.y) + np.sum(dh * out.h)
    return total + np.sum(dc * out.c) if family(cell) == "lstm" else total


def numpy_ln(v, gain, bias, eps=1e-5):
    mean = v.mean(axis=-1, keepdims=True)
    var = v.var(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * gain + bias


def assert_relu_away_from_kink(inputs, cache):
    """Every relu pre-activation, at every step and row, is far from 0 (else finite
    differences across the kink mean nothing)."""
    pre = (numpy_ln(inputs["x"] @ inputs["W_ih"].T, inputs["ln_ih_weight"],
                    inputs["ln_ih_bias"])
           + numpy_ln(cache["h_prev"] @ inputs["W_hh"].T, inputs["ln_hh_weight"],
                      inputs["ln_hh_bias"]))
    if inputs["b_ih"] is not None:
        pre += inputs["b_ih"] + inputs["b_hh"]
    assert np.abs(pre).min() > RELU_MARGIN, "choose another seed: relu kink within reach"


# ----------------------------------------------------------------------------
# gradients by central finite differences


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_gradients_match_finite_differences(cell, bias, lengths, reverse):
    rng = np.random.default_rng(1234)
    inputs = make_ln_inputs(cell, rng, bias=bias)
    dy, dh, dc = upstream(rng)
    out = ln_forward(cell, inputs, lengths=lengths, reverse=reverse, training=True)
    grads = ln_backward(cell, out.cache, dy, dh, dc)
    if cell == "rnn-relu":
        assert_relu_away_from_kink(inputs, out.cache)
    expected_type = LayerNormLSTMGradients if family(cell) == "lstm" else LayerNormGradients
    assert type(grads) is expected_type

    def loss():
        return loss_of(cell, ln_forward(cell, inputs, lengths=lengths, reverse=reverse),
                       dy, dh, dc)

    for name in inputs:
        assert_gradient(gradient_of(grads, name), loss, inputs, name)
    if family(cell) == "lstm" and "peephole" not in inputs:
        assert grads.dpeephole is None
    if family(cell) != "lstm":
        assert grads.dlayer_norm.c_weight is None and grads.dlayer_norm.c_bias is None


@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_gradients_without_initial_state_match_finite_differences(cell):
    """h0 (c0) None: the recurrent rows LN(W_hh h) start constant (zero variance), where
    LN's derivative is about 1/sqrt(eps); eps = 1e-3 keeps central differences of step
    1e-6 accurate there (at 1e-5 their own error reaches the tolerance)."""
    rng = np.random.default_rng(4321)
    inputs = make_ln_inputs(cell, rng)
    states = [name for name in ("h0", "c0") if name in inputs]
    dy, dh, dc = upstream(rng)
    out = ln_forward(cell, {**inputs, **dict.fromkeys(states)}, training=True,
                     layer_norm_eps=1e-3)
    grads = ln_backward(cell, out.cache, dy, dh, dc)
    for name in states:
        inputs[name] = np.zeros_like(inputs[name])
    np.testing.assert_array_equal(ln_forward(cell, inputs, layer_norm_eps=1e-3).y, out.y)

    def loss():
        return loss_of(cell, ln_forward(cell, inputs, layer_norm_eps=1e-3), dy, dh, dc)

    for name in inputs:
        assert_gradient(gradient_of(grads, name), loss, inputs, name)


# ----------------------------------------------------------------------------
# against a float64 PyTorch autograd cell written from the equations of issue 12
# (LN by torch.nn.functional.layer_norm; no fastcells code)


def torch_step(torch, fam, options, x_t, state, p):
    """One step of the layer-normalized ``fam`` cell on (1, ·) tensors; ``p`` the parameters
    by forward-argument name.  Returns the new state tuple (h,) or (h, c)."""
    F = torch.nn.functional
    eps = p["eps"]

    def ln(v, name):
        return F.layer_norm(v, (v.shape[-1],), p[f"ln_{name}_weight"], p[f"ln_{name}_bias"],
                            eps)

    zero = torch.zeros((), dtype=torch.float64)
    a_i = ln(x_t @ p["W_ih"].T, "ih") + p.get("b_ih", zero)
    a_h = ln(state[0] @ p["W_hh"].T, "hh") + p.get("b_hh", zero)
    if fam == "rnn":
        act = torch.tanh if options.get("nonlinearity", "tanh") == "tanh" else torch.relu
        return (act(a_i + a_h),)
    if fam == "gru":
        (h,) = state
        ir, iz, in_ = a_i.chunk(3, dim=-1)
        hr, hz, hn = a_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return ((1 - z) * n + z * h,)
    h, c = state
    ai, af, ag, ao = (a_i + a_h).chunk(4, dim=-1)
    pi, pf, po = p["peephole"].chunk(3) if "peephole" in p else (zero, zero, zero)
    i, f = torch.sigmoid(ai + pi * c), torch.sigmoid(af + pf * c)
    c_new = f * c + i * torch.tanh(ag)
    o = torch.sigmoid(ao + po * c_new)
    return (o * torch.tanh(ln(c_new, "c")), c_new)


def torch_forward(torch, cell, p, lengths, reverse):
    """y (T, B, H) and the final states, each sequence run alone over its own steps."""
    fam, options = LN_CELLS[cell]
    x = p["x"]
    T_, B_ = x.shape[:2]
    H_ = p["W_hh"].shape[1]
    states = ["h0", "c0"] if fam == "lstm" else ["h0"]
    ys, finals = [], []
    for b in range(B_):
        length = T_ if lengths is None else int(lengths[b])
        state = tuple(p[s][b:b + 1] for s in states)
        out = [None] * length
        steps = range(length - 1, -1, -1) if reverse else range(length)
        for t in steps:
            state = torch_step(torch, fam, options, x[t, b:b + 1], state, p)
            out[t] = state[0][0]
        pad = [torch.zeros(H_, dtype=torch.float64)] * (T_ - length)
        ys.append(torch.stack(out + pad) if T_ else torch.zeros(0, H_, dtype=torch.float64))
        finals.append(state)
    y = torch.stack(ys, dim=1)
    return y, [torch.cat([f[k] for f in finals]) for k in range(len(states))]


#: reference results vs the PyTorch cell (float64 both: only rounding differs)
TORCH_RTOL = 1e-10


@pytest.mark.parametrize("eps", [1e-5, 0.1])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_reference_matches_a_pytorch_autograd_cell(cell, lengths, reverse, eps):
    check_against_pytorch(cell, lengths, reverse, eps)


@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_reference_without_initial_state_matches_the_pytorch_cell(cell):
    """h0 (c0) None, given to PyTorch as zeros: LN of a constant row at the first step."""
    check_against_pytorch(cell, None, False, 1e-5, initial_state=False)


def check_against_pytorch(cell, lengths, reverse, eps, initial_state=True):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(99)
    inputs = make_ln_inputs(cell, rng)
    dy, dh, dc = upstream(rng)
    states = [name for name in ("h0", "c0") if name in inputs]
    if not initial_state:
        for name in states:
            inputs[name] = np.zeros_like(inputs[name])
    given = inputs if initial_state else {**inputs, **dict.fromkeys(states)}
    out = ln_forward(cell, given, lengths=lengths, reverse=reverse, training=True,
                     layer_norm_eps=eps)
    grads = ln_backward(cell, out.cache, dy, dh, dc)

    p = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    y, states = torch_forward(torch, cell, {**p, "eps": eps}, lengths, reverse)
    loss = (y * torch.tensor(dy)).sum() + (states[0] * torch.tensor(dh)).sum()
    if family(cell) == "lstm":
        loss = loss + (states[1] * torch.tensor(dc)).sum()
    loss.backward()

    np.testing.assert_allclose(out.y, y.detach().numpy(), rtol=TORCH_RTOL, atol=TORCH_RTOL)
    np.testing.assert_allclose(out.h, states[0].detach().numpy(), rtol=TORCH_RTOL,
                               atol=TORCH_RTOL)
    if family(cell) == "lstm":
        np.testing.assert_allclose(out.c, states[1].detach().numpy(), rtol=TORCH_RTOL,
                                   atol=TORCH_RTOL)
    for name, tensor in p.items():
        expected = np.zeros(tensor.shape) if tensor.grad is None else tensor.grad.numpy()
        np.testing.assert_allclose(gradient_of(grads, name), expected, rtol=1e-9, atol=1e-9,
                                   err_msg=name)


# ----------------------------------------------------------------------------
# the reference's other promises, with layer normalization


@pytest.mark.parametrize("shape", [(0, B), (T, 0)], ids=["T=0", "B=0"])
@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_empty_work_gives_zero_gradients_of_the_right_shapes(cell, shape):
    rng = np.random.default_rng(5)
    inputs = make_ln_inputs(cell, rng, T=shape[0], B=shape[1])
    out = ln_forward(cell, inputs, training=True)
    dy, dh, dc = upstream(rng, T=shape[0], B=shape[1])
    grads = ln_backward(cell, out.cache, dy, dh, dc)
    for name, value in inputs.items():
        if name.startswith("ln_") or name == "peephole":
            grad = gradient_of(grads, name)
            assert grad.shape == value.shape and not grad.any(), name
    np.testing.assert_array_equal(grads.dh0, dh if shape[0] == 0 else 0)


@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_layer_norm_arrays_are_never_written_aliased_or_read_after_the_call(cell):
    rng = np.random.default_rng(6)
    inputs = make_ln_inputs(cell, rng)
    before = {k: v.copy() for k, v in inputs.items()}
    dy, dh, dc = upstream(rng)
    out = ln_forward(cell, inputs, lengths=LENGTHS, training=True)
    first = ln_backward(cell, out.cache, dy, dh, dc)
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    for value in inputs.values():   # the cache holds copies: backward ignores changes
        value += 1
    second = ln_backward(cell, out.cache, dy, dh, dc)
    results = [a for a in (*out[:-1], *first[:-1], *first.dlayer_norm) if a is not None]
    for name, value in inputs.items():
        assert not any(np.shares_memory(r, value) for r in results), name
    for a, b in zip((*first[:-1], *first.dlayer_norm), (*second[:-1], *second.dlayer_norm)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_dtype_follows_the_other_arguments(cell, dtype):
    rng = np.random.default_rng(7)
    inputs = {k: v.astype(dtype) if k.startswith(("x", "W", "b", "h", "c", "p")) else v
              for k, v in make_ln_inputs(cell, rng).items()}   # ln_* stay float64
    out = ln_forward(cell, inputs, training=True)
    grads = ln_backward(cell, out.cache, *upstream(rng))
    assert out.y.dtype == dtype
    assert all(g.dtype == dtype for g in grads.dlayer_norm if g is not None)


@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_without_layer_norm_the_results_are_unchanged(cell):
    rng = np.random.default_rng(8)
    inputs = make_ln_inputs(cell, rng)
    kwargs = call_args(cell, inputs)
    kwargs["layer_norm"] = None
    out = getattr(reference, f"{family(cell)}_forward")(**kwargs, training=True)
    grads = ln_backward(cell, out.cache, *upstream(rng))
    assert not hasattr(grads, "dlayer_norm")
    with_ln = ln_forward(cell, inputs)
    assert not np.allclose(out.y, with_ln.y)    # the gains were random: LN changes y


def test_layer_norm_makes_the_output_invariant_to_scaling_the_weights():
    """LN(W x) does not change when W is scaled (up to eps): a property of the equations."""
    rng = np.random.default_rng(9)
    inputs = make_ln_inputs("lstm", rng)
    a = ln_forward("lstm", inputs, layer_norm_eps=1e-12)
    scaled = {**inputs, "W_ih": 3 * inputs["W_ih"], "W_hh": 0.5 * inputs["W_hh"]}
    b = ln_forward("lstm", scaled, layer_norm_eps=1e-12)
    np.testing.assert_allclose(a.y, b.y, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.c, b.c, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------
# bad input, through the reference's forward functions


@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_forward_refuses_bad_gains_naming_them(cell):
    inputs = make_ln_inputs(cell, np.random.default_rng(10))
    for name in [k for k in inputs if k.startswith("ln_")]:
        n = inputs[name].shape[0]
        with pytest.raises(ValueError, match=fr"^layer_norm\.{name[3:]}: expected shape "
                                             fr".*\({n},\), got \({n - 1},\)"):
            ln_forward(cell, {**inputs, name: inputs[name][1:]})
        with pytest.raises(TypeError, match=fr"^layer_norm\.{name[3:]}: expected a real "
                                            "floating-point array"):
            ln_forward(cell, {**inputs, name: inputs[name].astype(np.int32)})


@pytest.mark.parametrize("eps", [0.0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("cell", list(LN_CELLS))
def test_forward_refuses_a_bad_eps(cell, eps):
    inputs = make_ln_inputs(cell, np.random.default_rng(11))
    with pytest.raises(ValueError, match=r"^layer_norm_eps: expected a finite number > 0"):
        ln_forward(cell, inputs, layer_norm_eps=eps)


@pytest.mark.parametrize("cell", ["rnn-tanh", "gru"])
def test_forward_refuses_c_gains_without_lstm(cell):
    inputs = {**make_ln_inputs(cell, np.random.default_rng(12)), "ln_c_weight": np.ones(H),
              "ln_c_bias": np.zeros(H)}
    with pytest.raises(ValueError, match=r"^layer_norm\.c_weight: expected None"):
        ln_forward(cell, inputs)


@pytest.mark.parametrize("field", ["c_weight", "c_bias"])
def test_forward_requires_c_gains_for_lstm(field):
    inputs = make_ln_inputs("lstm", np.random.default_rng(13))
    del inputs[f"ln_{field}"]
    with pytest.raises(ValueError, match=fr"^layer_norm\.{field}: expected an array of shape "
                                         r"\(H,\) = \(4,\), got None"):
        ln_forward("lstm", inputs)


def test_forward_refuses_gru_without_linear_before_reset():
    inputs = make_ln_inputs("gru", np.random.default_rng(14))
    with pytest.raises(ValueError, match=r"^layer_norm: expected linear_before_reset=True"):
        reference.gru_forward(**{**call_args("gru", inputs), "linear_before_reset": False})


# ----------------------------------------------------------------------------
# the benchmark's PyTorch peers (bench/peers.py): the normalized LSTM computes what
# the reference computes, forward and backward, so the report compares like with like

#: float32 PyTorch vs the float64 reference, relative to max(1, max|reference|)
PEER_RTOL = 1e-4


def peers():
    return bench.load_bench(Path(__file__).resolve().parents[1] / "bench").peers


def test_torch_normalized_lstm_peer_matches_the_reference_forward_and_backward():
    torch = pytest.importorskip("torch")
    p = bench.make_problem("lstm", bench.Shape(5, 3, 6, 8), layer_norm=True)
    ln, eps = p.layer_norm, 1e-3
    out = reference.lstm_forward(*p.args(np.float64), layer_norm=ln, layer_norm_eps=eps,
                                 training=True)
    want = reference.lstm_backward(out.cache, dy=p.dy.astype(np.float64))
    # what the benchmark times: the runner's forward+backward returns dx
    dx = peers().torch_ln_lstm_runner(p, "fwdbwd", threads=1, layer_norm=ln,
                                      layer_norm_eps=eps)()
    assert_peer_close(dx.numpy(), want.dx, "dx")

    # the peer's layer, with the runner's weights, run by hand to read every gradient
    layer, scripted = peers().torch_ln_lstm(torch, 6, 8, eps)
    assert scripted, "TorchScript refused the custom_lstms-style cell"
    cell = layer.cell
    params = {  # the peer's parameter -> (its value, the reference's gradient of it)
        cell.weight_ih: (p.W_ih, want.dW_ih), cell.weight_hh: (p.W_hh, want.dW_hh),
        cell.layernorm_i.weight: (ln.ih_weight, want.dlayer_norm.ih_weight),
        cell.layernorm_i.bias: (ln.ih_bias + p.b_ih, want.dlayer_norm.ih_bias),
        cell.layernorm_h.weight: (ln.hh_weight, want.dlayer_norm.hh_weight),
        cell.layernorm_h.bias: (ln.hh_bias + p.b_hh, want.dlayer_norm.hh_bias),
        cell.layernorm_c.weight: (ln.c_weight, want.dlayer_norm.c_weight),
        cell.layernorm_c.bias: (ln.c_bias, want.dlayer_norm.c_bias)}
    with torch.no_grad():
        for tensor, (value, _) in params.items():
            tensor.copy_(torch.from_numpy(np.asarray(value, np.float32)))
    x = torch.from_numpy(p.x).requires_grad_(True)
    h0, c0 = (torch.from_numpy(s).requires_grad_(True) for s in p.states())
    y, (h, c) = layer(x, (h0, c0))
    y.backward(torch.from_numpy(p.dy))

    assert_peer_close(y.detach().numpy(), out.y, "y")
    assert_peer_close(h.detach().numpy(), out.h, "h")
    assert_peer_close(c.detach().numpy(), out.c, "c (carried, not normalized)")
    for name, mine in (("dx", x.grad), ("dh0", h0.grad), ("dc0", c0.grad)):
        assert_peer_close(mine.numpy(), getattr(want, name), name)
    for k, (tensor, (_, theirs)) in enumerate(params.items()):
        assert_peer_close(tensor.grad.numpy(), theirs, f"parameter {k}")
    # the folded biases: LN's bias and b_ih (b_hh) are added alike, so their gradients agree
    np.testing.assert_allclose(want.dlayer_norm.ih_bias, want.db_ih, rtol=1e-12)
    np.testing.assert_allclose(want.dlayer_norm.hh_bias, want.db_hh, rtol=1e-12)


def assert_peer_close(got, want, name):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=PEER_RTOL * scale, err_msg=name)


def test_torch_normalized_lstm_peer_refuses_what_it_does_not_compute(monkeypatch):
    pytest.importorskip("torch")
    shape = bench.Shape(4, 2, 3, 4)
    module = peers()
    with pytest.raises(bench.Unavailable, match="the layer-normalized LSTM is an LSTM's, not gru's"):
        module.torch_ln_lstm_runner(bench.make_problem("gru", shape, layer_norm=True), "fwd")
    with pytest.raises(bench.Unavailable, match="variable lengths"):
        module.torch_ln_lstm_runner(
            bench.make_problem("lstm", shape, varlen=True, layer_norm=True), "fwd")
    # a peer that computes something else is caught by the agreement check, not timed
    original = module.torch_ln_lstm
    monkeypatch.setattr(module, "torch_ln_lstm",
                        lambda torch, I, H, eps: original(torch, I, H, 100 * eps))
    with pytest.raises(bench.Unavailable, match="disagrees with fastcells.reference"):
        module.torch_ln_lstm_runner(bench.make_problem("lstm", shape, layer_norm=True), "fwd",
                                    layer_norm_eps=1e-2)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_torch_projection_peer_runs_pytorchs_lstm_with_proj_size():
    torch = pytest.importorskip("torch")
    p = bench.make_problem("lstm", bench.Shape(5, 3, 6, 8), proj_size=3)
    y = peers().torch_proj_runner(p, "fwd")().numpy()
    # the runner's module has the weights it says: an nn.LSTM given them gives its y
    lstm = torch.nn.LSTM(6, 8, proj_size=3)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", p.W_ih), ("weight_hh_l0", p.W_hh),
                            ("bias_ih_l0", p.b_ih), ("bias_hh_l0", p.b_hh),
                            ("weight_hr_l0", p.W_hr)):
            getattr(lstm, name).copy_(torch.from_numpy(value))
        expected = lstm(torch.from_numpy(p.x), (torch.from_numpy(p.h0)[None],
                                                torch.from_numpy(p.c0)[None]))[0]
    np.testing.assert_array_equal(y, expected.numpy())
    dx = peers().torch_proj_runner(p, "fwdbwd")()
    assert dx.shape == (5, 3, 6) and torch.isfinite(dx).all()


def test_torch_projection_peer_refuses_a_problem_without_projection():
    pytest.importorskip("torch")
    with pytest.raises(bench.Unavailable, match="no projection"):
        peers().torch_proj_runner(bench.make_problem("lstm", bench.Shape(4, 2, 3, 4)), "fwd")
    with pytest.raises(bench.Unavailable, match="proj_size is an LSTM's"):
        peers().torch_proj_runner(bench.make_problem("rnn", bench.Shape(4, 2, 3, 4)), "fwd")
