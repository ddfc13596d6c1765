"""LSTM with projection (``W_hr`` (P, H), PyTorch's ``proj_size``): the NumPy reference.

``h' = W_hr (o * tanh(c'))``: ``h``, ``y`` and the columns of ``W_hh`` have P values,
``c`` keeps H.  The reference's forward is checked against the equations written
out here and against ``torch.nn.LSTM(proj_size=...)`` (float64), its gradients by
float64 finite differences and against torch's autograd.
"""
import numpy as np
import pytest
from test_reference_gradcheck import assert_gradient

from fastcells import reference
from fastcells._results import (
    LayerNormWeights,
    LSTMGradients,
    PeepholeLSTMGradients,
    ProjLSTMGradients,
)

T, B, I, H, P = 4, 3, 3, 5, 2
LENGTHS = np.array([4, 0, 2])  # a full sequence, an empty one, a partial one
#: reference vs torch, float64 both
TORCH_RTOL = 1e-10
#: forward vs the equations written out here (float64)
FORWARD_RTOL = 1e-12
#: the layer normalization's eps in the finite-difference checks (see there)
LN_EPS = 1e-3

#: forward argument -> name of its gradient
GRAD_NAME = {"x": "dx", "h0": "dh0", "c0": "dc0", "W_ih": "dW_ih", "W_hh": "dW_hh",
             "b_ih": "db_ih", "b_hh": "db_hh", "W_hr": "dW_hr", "peephole": "dpeephole"}


def make_inputs(rng, *, bias=True, initial_state=True, peephole=False, T=T, B=B):
    def rand(*shape, scale=1.0):
        return scale * rng.standard_normal(shape)

    inputs = {"x": rand(T, B, I), "W_ih": rand(4 * H, I, scale=0.6),
              "W_hh": rand(4 * H, P, scale=0.6), "W_hr": rand(P, H, scale=0.6)}
    inputs["b_ih"] = rand(4 * H, scale=0.3) if bias else None
    inputs["b_hh"] = rand(4 * H, scale=0.3) if bias else None
    inputs["h0"] = rand(B, P, scale=0.5) if initial_state else None
    inputs["c0"] = rand(B, H, scale=0.5) if initial_state else None
    if peephole:
        inputs["peephole"] = rand(3 * H, scale=0.5)
    return inputs


def ln_weights(rng):
    def rand(n, center):
        return center + 0.3 * rng.standard_normal(n)

    return LayerNormWeights(rand(4 * H, 1.0), rand(4 * H, 0.0), rand(4 * H, 1.0),
                            rand(4 * H, 0.0), rand(H, 1.0), rand(H, 0.0))


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


# ----------------------------------------------------------------------------
# the forward equations


def test_steps_follow_the_projected_equations(rng):
    inputs = make_inputs(rng)
    out = reference.lstm_forward(**inputs)
    assert out.y.shape == (T, B, P) and out.h.shape == (B, P) and out.c.shape == (B, H)
    h, c = inputs["h0"], inputs["c0"]
    for t in range(T):
        a = (inputs["x"][t] @ inputs["W_ih"].T + inputs["b_ih"] + h @ inputs["W_hh"].T
             + inputs["b_hh"])
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = (sigmoid(o) * np.tanh(c)) @ inputs["W_hr"].T
        np.testing.assert_allclose(out.y[t], h, rtol=FORWARD_RTOL, atol=FORWARD_RTOL)
    np.testing.assert_allclose(out.h, h, rtol=FORWARD_RTOL, atol=FORWARD_RTOL)
    np.testing.assert_allclose(out.c, c, rtol=FORWARD_RTOL, atol=FORWARD_RTOL)


def test_without_projection_nothing_changes(rng):
    """No ``W_hr``: the same types and shapes as before the projection existed."""
    inputs = make_inputs(rng)
    del inputs["W_hr"]
    inputs["W_hh"] = 0.6 * rng.standard_normal((4 * H, H))
    inputs["h0"] = 0.5 * rng.standard_normal((B, H))
    out = reference.lstm_forward(**inputs, training=True)
    assert out.cache["W_hr"] is None
    assert type(reference.lstm_backward(out.cache, dy=np.ones((T, B, H)))) is LSTMGradients
    out = reference.lstm_forward(**inputs, peephole=np.ones(3 * H), training=True)
    assert type(reference.lstm_backward(out.cache)) is PeepholeLSTMGradients


# ----------------------------------------------------------------------------
# gradients by central finite differences


@pytest.mark.parametrize("option", ["plain", "peephole", "layer_norm", "both"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("initial_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gradients_match_finite_differences(bias, initial_state, lengths, reverse, option):
    rng = np.random.default_rng(4321)
    inputs = make_inputs(rng, bias=bias, initial_state=initial_state,
                         peephole=option in ("peephole", "both"))
    extra = {}
    if option in ("layer_norm", "both"):
        # without h0 the first rows LN(W_hh h) are constant, where LN's derivative is
        # about 1/sqrt(eps): eps = 1e-3 keeps central differences accurate there (as
        # tests/test_layer_norm_reference.py)
        extra.update(layer_norm=ln_weights(rng), layer_norm_eps=LN_EPS)
    # L = sum(Wy*y) + sum(Wh*h) + sum(Wc*c): exercises dy, dh and dc at once
    Wy, Wh, Wc = (rng.standard_normal(s) for s in ((T, B, P), (B, P), (B, H)))

    result = reference.lstm_forward(**inputs, **extra, lengths=lengths, reverse=reverse,
                                    training=True)
    grads = reference.lstm_backward(result.cache, dy=Wy, dh=Wh, dc=Wc)
    assert type(grads) is ProjLSTMGradients
    assert (grads.dpeephole is None) == ("peephole" not in inputs)
    assert (grads.dlayer_norm is None) == ("layer_norm" not in extra)
    # the gradient wrt a missing initial state is the gradient at zeros
    for name, width in (("h0", P), ("c0", H)):
        if inputs[name] is None:
            inputs[name] = np.zeros((B, width))
    params = dict(inputs)
    if "layer_norm" in extra:
        params.update({f"ln_{k}": v for k, v in extra["layer_norm"]._asdict().items()})

    def loss():
        ln = None
        if "layer_norm" in extra:
            ln = LayerNormWeights(*(params[f"ln_{k}"] for k in LayerNormWeights._fields))
        args = {k: v for k, v in params.items() if not k.startswith("ln_")}
        out = reference.lstm_forward(**args, layer_norm=ln, layer_norm_eps=LN_EPS,
                                     lengths=lengths, reverse=reverse)
        return np.sum(Wy * out.y) + np.sum(Wh * out.h) + np.sum(Wc * out.c)

    for name in params:
        analytic = (getattr(grads.dlayer_norm, name[3:]) if name.startswith("ln_")
                    else getattr(grads, GRAD_NAME[name]))
        assert_gradient(analytic, loss, params, name)


def test_caller_arrays_are_never_written_and_the_cache_copies_W_hr(rng):
    inputs = make_inputs(rng)
    before = {k: v.copy() for k, v in inputs.items()}
    out = reference.lstm_forward(**inputs, training=True)
    reference.lstm_backward(out.cache, dy=np.ones((T, B, P)))
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert not np.shares_memory(out.cache["W_hr"], inputs["W_hr"])
    inputs["W_hr"][:] = 0   # the caller reuses its array: backward is unchanged
    again = reference.lstm_backward(out.cache, dy=np.ones((T, B, P)))
    assert np.abs(again.dW_hh).max() > 0 and np.abs(again.dW_hr).max() > 0


# ----------------------------------------------------------------------------
# against torch.nn.LSTM(proj_size=...)


@pytest.mark.parametrize("initial_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_matches_torch_forward_and_gradients(bias, initial_state, rng):
    torch = pytest.importorskip("torch")
    inputs = make_inputs(rng, bias=bias, initial_state=initial_state)
    module = torch.nn.LSTM(I, H, bias=bias, proj_size=P).double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(inputs["W_ih"]))
        module.weight_hh_l0.copy_(torch.from_numpy(inputs["W_hh"]))
        module.weight_hr_l0.copy_(torch.from_numpy(inputs["W_hr"]))
        if bias:
            module.bias_ih_l0.copy_(torch.from_numpy(inputs["b_ih"]))
            module.bias_hh_l0.copy_(torch.from_numpy(inputs["b_hh"]))
    x = torch.from_numpy(inputs["x"]).requires_grad_()
    states = None
    if initial_state:
        states = tuple(torch.from_numpy(inputs[s][None]).requires_grad_() for s in ("h0", "c0"))
    y, (h, c) = module(x, states)
    Wy, Wh, Wc = (rng.standard_normal(s) for s in ((T, B, P), (B, P), (B, H)))
    loss = ((y * torch.from_numpy(Wy)).sum() + (h[0] * torch.from_numpy(Wh)).sum()
            + (c[0] * torch.from_numpy(Wc)).sum())
    loss.backward()

    out = reference.lstm_forward(**inputs, training=True)
    for name, ours, theirs in (("y", out.y, y), ("h", out.h, h[0]), ("c", out.c, c[0])):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=TORCH_RTOL,
                                   atol=TORCH_RTOL, err_msg=name)
    grads = reference.lstm_backward(out.cache, dy=Wy, dh=Wh, dc=Wc)
    expected = {"dx": x.grad, "dW_ih": module.weight_ih_l0.grad,
                "dW_hh": module.weight_hh_l0.grad, "dW_hr": module.weight_hr_l0.grad}
    if bias:
        expected.update(db_ih=module.bias_ih_l0.grad, db_hh=module.bias_hh_l0.grad)
    if initial_state:
        expected.update(dh0=states[0].grad[0], dc0=states[1].grad[0])
    for name, theirs in expected.items():
        np.testing.assert_allclose(getattr(grads, name), theirs.numpy(), rtol=TORCH_RTOL,
                                   atol=TORCH_RTOL, err_msg=name)


def test_reverse_matches_torch_on_the_flipped_sequence(rng):
    """Full lengths: the reverse direction is the forward one on the flipped sequence."""
    inputs = make_inputs(rng)
    rev = reference.lstm_forward(**inputs, reverse=True)
    flipped = reference.lstm_forward(**{**inputs, "x": inputs["x"][::-1].copy()})
    np.testing.assert_allclose(rev.y, flipped.y[::-1], rtol=FORWARD_RTOL, atol=FORWARD_RTOL)
    np.testing.assert_allclose(rev.c, flipped.c, rtol=FORWARD_RTOL, atol=FORWARD_RTOL)


# ----------------------------------------------------------------------------
# bad input


BAD = [
    ("W_hr", lambda a: {**a, "W_hr": a["W_hr"][0]}, ValueError, "W_hr: expected a 2-D"),
    ("P = H", lambda a: {**a, "W_hr": np.eye(H)}, ValueError,
     r"W_hr: expected shape \(P, H\) with 1 <= P < H"),
    ("P > H", lambda a: {**a, "W_hr": np.zeros((H + 1, H))}, ValueError,
     r"W_hr: expected shape \(P, H\) with 1 <= P < H .*got \(6, 5\)"),
    ("P = 0", lambda a: {**a, "W_hr": np.zeros((0, H))}, ValueError, r"got \(0, 5\)"),
    ("W_hh (4H, H)", lambda a: {**a, "W_hh": np.zeros((4 * H, H))}, ValueError,
     r"W_hh: expected shape \(4\*H, P\) = \(20, 2\), got \(20, 5\)"),
    ("h0 (B, H)", lambda a: {**a, "h0": np.zeros((B, H))}, ValueError,
     r"h0: expected shape \(B, P\) = \(3, 2\), got \(3, 5\)"),
    ("c0 (B, P)", lambda a: {**a, "c0": np.zeros((B, P))}, ValueError,
     r"c0: expected shape \(B, H\) = \(3, 5\), got \(3, 2\)"),
    ("W_hr int", lambda a: {**a, "W_hr": np.zeros((P, H), int)}, TypeError, "W_hr"),
]


@pytest.mark.parametrize("change, error, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_forward_arguments_raise_naming_the_argument(change, error, match, rng):
    with pytest.raises(error, match=match):
        reference.lstm_forward(**change(make_inputs(rng)))


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_W_hr_with_another_cell_is_refused(cell):
    with pytest.raises(TypeError, match="W_hr"):
        getattr(reference, f"{cell}_forward")(np.zeros((T, B, I)), np.zeros((H, I)),
                                              np.zeros((H, H)), W_hr=np.zeros((P, H)))


def test_check_forward_refuses_W_hr_for_another_cell():
    from fastcells import _checks
    with pytest.raises(ValueError, match="W_hr: only LSTM has a projection, got W_hr for gru"):
        _checks.check_forward("gru", np.zeros((T, B, I)), np.zeros((3 * H, I)),
                              np.zeros((3 * H, P)), W_hr=np.zeros((P, H)))


def test_bad_upstream_gradients_raise_naming_the_argument(rng):
    out = reference.lstm_forward(**make_inputs(rng), training=True)
    with pytest.raises(ValueError, match=r"dy: expected shape \(T, B, P\) = \(4, 3, 2\)"):
        reference.lstm_backward(out.cache, dy=np.zeros((T, B, H)))
    with pytest.raises(ValueError, match=r"dh: expected shape \(B, P\) = \(3, 2\)"):
        reference.lstm_backward(out.cache, dh=np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"dc: expected shape \(B, H\) = \(3, 5\)"):
        reference.lstm_backward(out.cache, dc=np.zeros((B, P)))
