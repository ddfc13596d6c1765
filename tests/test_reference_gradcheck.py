"""The NumPy reference, checked on its own: gradients by finite differences,
the forward equations by hand, and the documented conventions.

Every kernel is tested against this reference, so it must be right by
itself: nothing here compares it with other fastcells code.
"""
import numpy as np
import pytest
from conftest import CELLS as VARIANTS
from conftest import is_lstm

from fastcells import reference
from fastcells._cells import cell_functions

#: central-difference step (float64)
EPS = 1e-6
#: analytic vs finite-difference gradients, relative to the largest entry
GRAD_RTOL = 1e-6
#: relu pre-activations must stay this far from the kink for the check to mean anything
RELU_MARGIN = 100 * EPS
#: forward results vs hand-written equations (float64)
FORWARD_RTOL = 1e-12

T, B, I, H = 4, 3, 3, 2
LENGTHS = np.array([4, 0, 2])  # a full sequence, an empty one, a partial one

# name -> (forward, backward, gate count, options), for the variants of conftest
CELLS = {name: (*cell_functions(reference, v.family), v.gates, v.options)
         for name, v in VARIANTS.items()}
#: forward argument -> name of its gradient
GRAD_NAME = {"x": "dx", "h0": "dh0", "c0": "dc0", "W_ih": "dW_ih", "W_hh": "dW_hh",
             "b_ih": "db_ih", "b_hh": "db_hh"}


def make_inputs(cell, rng, T=T, B=B, I=I, H=H, bias=True, initial_state=True, dtype=np.float64):
    """Keyword arguments of ``<cell>_forward`` (without options), random, of ``dtype``."""
    G = CELLS[cell][2]

    def rand(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    inputs = {"x": rand(T, B, I), "W_ih": rand(G * H, I, scale=0.6),
              "W_hh": rand(G * H, H, scale=0.6)}
    inputs["b_ih"] = rand(G * H, scale=0.3) if bias else None
    inputs["b_hh"] = rand(G * H, scale=0.3) if bias else None
    inputs["h0"] = rand(B, H, scale=0.5) if initial_state else None
    if is_lstm(cell):
        inputs["c0"] = rand(B, H, scale=0.5) if initial_state else None
    return inputs


def forward(cell, inputs, **kwargs):
    fwd, _, _, options = CELLS[cell]
    return fwd(**inputs, **options, **kwargs)


def backward(cell, cache, dy=None, dh=None, dc=None):
    bwd = CELLS[cell][1]
    if is_lstm(cell):
        return bwd(cache, dy=dy, dh=dh, dc=dc)
    return bwd(cache, dy=dy, dh=dh)


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


# ----------------------------------------------------------------------------
# gradients by central finite differences


def numerical_gradient(loss, inputs, name):
    """d loss / d inputs[name] by central differences (perturbs inputs[name] in place)."""
    a = inputs[name]
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        a[idx] = orig + EPS
        up = loss()
        a[idx] = orig - EPS
        down = loss()
        a[idx] = orig
        grad[idx] = (up - down) / (2 * EPS)
    return grad


def assert_gradient(analytic, loss, inputs, name, label=None):
    """``analytic`` (float64, the shape of ``inputs[name]``) against the central
    differences of ``loss`` over ``inputs[name]`` (None for an absent bias, whose
    gradient must be None too), within GRAD_RTOL of the larger of 1 and the numeric
    gradient's largest magnitude."""
    label = label or name
    if inputs[name] is None:  # no bias
        assert analytic is None, f"{label} should be None without biases"
        return
    numeric = numerical_gradient(loss, inputs, name)
    assert analytic.shape == inputs[name].shape and analytic.dtype == np.float64, label
    scale = max(np.abs(numeric).max(), 1.0)
    np.testing.assert_allclose(analytic, numeric, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale,
                               err_msg=label)


def assert_relu_away_from_kink(inputs, cache):
    x, W_ih, W_hh = inputs["x"], inputs["W_ih"], inputs["W_hh"]
    pre = x @ W_ih.T + cache["h_prev"] @ W_hh.T
    if inputs["b_ih"] is not None:
        pre += inputs["b_ih"] + inputs["b_hh"]
    assert np.abs(pre).min() > RELU_MARGIN, "choose another seed: relu kink within reach"


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("initial_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_gradients_match_finite_differences(cell, bias, initial_state, lengths, reverse):
    rng = np.random.default_rng(1234)
    inputs = make_inputs(cell, rng, bias=bias, initial_state=initial_state)
    # L = sum(Wy*y) + sum(Wh*h) (+ sum(Wc*c)): exercises dy, dh and dc at once
    Wy = rng.standard_normal((T, B, H))
    Wh, Wc = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    result = forward(cell, inputs, lengths=lengths, reverse=reverse, training=True)
    grads = backward(cell, result.cache, dy=Wy, dh=Wh, dc=Wc)
    if cell == "rnn-relu":
        assert_relu_away_from_kink(inputs, result.cache)

    # the gradient wrt a missing initial state is the gradient at zeros
    state_names = ("h0", "c0") if is_lstm(cell) else ("h0",)
    for name in state_names:
        if inputs[name] is None:
            inputs[name] = np.zeros((B, H))

    def loss():
        out = forward(cell, inputs, lengths=lengths, reverse=reverse)
        total = np.sum(Wy * out.y) + np.sum(Wh * out.h)
        return total + np.sum(Wc * out.c) if is_lstm(cell) else total

    for name in inputs:
        assert_gradient(getattr(grads, GRAD_NAME[name]), loss, inputs, name, GRAD_NAME[name])


# ----------------------------------------------------------------------------
# the forward equations, one step written out by hand


def one_step_by_hand(cell, x, W_ih, W_hh, b_ih, b_hh, h, c=None):
    if cell.startswith("rnn"):
        act = np.tanh if cell == "rnn-tanh" else (lambda a: np.maximum(a, 0))
        return act(W_ih @ x + b_ih + W_hh @ h + b_hh), None
    if cell.startswith("gru"):
        Wir, Wiz, Win = np.split(W_ih, 3)
        Whr, Whz, Whn = np.split(W_hh, 3)
        bir, biz, bin_ = np.split(b_ih, 3)
        bhr, bhz, bhn = np.split(b_hh, 3)
        r = sigmoid(Wir @ x + bir + Whr @ h + bhr)
        z = sigmoid(Wiz @ x + biz + Whz @ h + bhz)
        if cell == "gru-lbr":
            n = np.tanh(Win @ x + bin_ + r * (Whn @ h + bhn))
        else:
            n = np.tanh(Win @ x + bin_ + Whn @ (r * h) + bhn)
        return (1 - z) * n + z * h, None
    a_i, a_f, a_g, a_o = np.split(W_ih @ x + b_ih + W_hh @ h + b_hh, 4)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


@pytest.mark.parametrize("cell", list(CELLS))
def test_one_step_follows_the_cell_equations(cell):
    rng = np.random.default_rng(7)
    inputs = make_inputs(cell, rng, T=1)
    out = forward(cell, inputs)
    for b in range(B):
        h, c = one_step_by_hand(cell, inputs["x"][0, b], inputs["W_ih"], inputs["W_hh"],
                                inputs["b_ih"], inputs["b_hh"], inputs["h0"][b],
                                inputs["c0"][b] if is_lstm(cell) else None)
        np.testing.assert_allclose(out.y[0, b], h, rtol=FORWARD_RTOL)
        np.testing.assert_allclose(out.h[b], h, rtol=FORWARD_RTOL)
        if is_lstm(cell):
            np.testing.assert_allclose(out.c[b], c, rtol=FORWARD_RTOL)


@pytest.mark.parametrize("cell", list(CELLS))
def test_two_steps_feed_the_state_forward_and_reverse_runs_backwards(cell):
    rng = np.random.default_rng(8)
    inputs = make_inputs(cell, rng, T=2, B=1)
    args = (inputs["W_ih"], inputs["W_hh"], inputs["b_ih"], inputs["b_hh"])
    c0 = inputs["c0"][0] if is_lstm(cell) else None
    x0, x1 = inputs["x"][0, 0], inputs["x"][1, 0]

    h_a, c_a = one_step_by_hand(cell, x0, *args, inputs["h0"][0], c0)
    h_b, _ = one_step_by_hand(cell, x1, *args, h_a, c_a)
    out = forward(cell, inputs)
    np.testing.assert_allclose(out.y[:, 0], [h_a, h_b], rtol=FORWARD_RTOL)

    h_a, c_a = one_step_by_hand(cell, x1, *args, inputs["h0"][0], c0)
    h_b, _ = one_step_by_hand(cell, x0, *args, h_a, c_a)
    out = forward(cell, inputs, reverse=True)
    np.testing.assert_allclose(out.y[:, 0], [h_b, h_a], rtol=FORWARD_RTOL)  # y[t] by original t
    np.testing.assert_allclose(out.h[0], h_b, rtol=FORWARD_RTOL)


# ----------------------------------------------------------------------------
# variable lengths


def run_alone(cell, inputs, b, length, reverse=False, flip=False):
    """Row b's first ``length`` steps as a batch of one (time-flipped if ``flip``)."""
    alone = {}
    for name, value in inputs.items():
        if value is None or name.startswith(("W", "b_")):
            alone[name] = value
        elif name == "x":
            seq = value[:length, b:b + 1]
            alone[name] = seq[::-1] if flip else seq
        else:
            alone[name] = value[b:b + 1]
    return forward(cell, alone, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_lengths_truncate_each_sequence(cell, reverse):
    rng = np.random.default_rng(11)
    inputs = make_inputs(cell, rng)
    out = forward(cell, inputs, lengths=LENGTHS, reverse=reverse)
    for b, length in enumerate(LENGTHS):
        assert np.all(out.y[length:, b] == 0), "outputs past a sequence's length are zeros"
        alone = run_alone(cell, inputs, b, length, reverse=reverse)
        np.testing.assert_allclose(out.y[:length, b], alone.y[:, 0], rtol=FORWARD_RTOL)
        np.testing.assert_allclose(out.h[b], alone.h[0], rtol=FORWARD_RTOL)
        if is_lstm(cell):
            np.testing.assert_allclose(out.c[b], alone.c[0], rtol=FORWARD_RTOL)
        if length == 0:
            np.testing.assert_array_equal(out.h[b], inputs["h0"][b])


@pytest.mark.parametrize("cell", list(CELLS))
def test_reverse_with_lengths_is_each_truncated_sequence_reversed(cell):
    rng = np.random.default_rng(12)
    inputs = make_inputs(cell, rng)
    out = forward(cell, inputs, lengths=LENGTHS, reverse=True)
    for b, length in enumerate(LENGTHS):
        flipped = run_alone(cell, inputs, b, length, flip=True)
        np.testing.assert_allclose(out.y[:length, b], flipped.y[::-1, 0], rtol=FORWARD_RTOL)
        np.testing.assert_allclose(out.h[b], flipped.h[0], rtol=FORWARD_RTOL)


@pytest.mark.parametrize("cell", list(CELLS))
def test_full_lengths_equal_no_lengths(cell):
    rng = np.random.default_rng(13)
    inputs = make_inputs(cell, rng)
    a = forward(cell, inputs, lengths=np.full(B, T))
    b = forward(cell, inputs)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.h, b.h)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradients_at_masked_steps_are_zero(cell):
    rng = np.random.default_rng(14)
    inputs = make_inputs(cell, rng)
    out = forward(cell, inputs, lengths=LENGTHS, training=True)
    grads = backward(cell, out.cache, dy=rng.standard_normal((T, B, H)),
                     dh=rng.standard_normal((B, H)), dc=rng.standard_normal((B, H)))
    for b, length in enumerate(LENGTHS):
        assert np.all(grads.dx[length:, b] == 0)
    # an empty sequence passes dh straight to dh0 (and dc to dc0)
    out_empty = forward(cell, inputs, lengths=np.zeros(B, int), training=True)
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    g = backward(cell, out_empty.cache, dy=rng.standard_normal((T, B, H)), dh=dh, dc=dc)
    np.testing.assert_array_equal(g.dh0, dh)
    if is_lstm(cell):
        np.testing.assert_array_equal(g.dc0, dc)
    assert not g.dW_ih.any() and not g.dW_hh.any() and not g.dx.any()


# ----------------------------------------------------------------------------
# empty work


@pytest.mark.parametrize("shape", [(0, B), (T, 0)], ids=["T=0", "B=0"])
@pytest.mark.parametrize("initial_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_empty_work(cell, shape, initial_state):
    t, b = shape
    rng = np.random.default_rng(15)
    inputs = make_inputs(cell, rng, T=t, B=b, initial_state=initial_state)
    out = forward(cell, inputs, training=True)
    assert out.y.shape == (t, b, H)
    states = [("h", "h0")] + ([("c", "c0")] if is_lstm(cell) else [])
    for final, initial in states:
        expected = inputs[initial] if initial_state else np.zeros((b, H))
        np.testing.assert_array_equal(getattr(out, final), expected)
        if initial_state:
            assert not np.shares_memory(getattr(out, final), inputs[initial])

    dh = rng.standard_normal((b, H))
    grads = backward(cell, out.cache, dy=np.zeros((t, b, H)), dh=dh, dc=dh)
    assert grads.dx.shape == (t, b, I)
    np.testing.assert_array_equal(grads.dh0, dh if t == 0 else np.zeros((b, H)))
    assert not np.shares_memory(grads.dh0, dh)
    assert not grads.dW_ih.any() and not grads.dW_hh.any() and not grads.db_ih.any()


# ----------------------------------------------------------------------------
# arrays and dtypes


@pytest.mark.parametrize("layout", ["float64-contiguous", "float32-strided"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_caller_arrays_are_never_written_or_aliased(cell, layout):
    rng = np.random.default_rng(16)
    inputs = make_inputs(cell, rng)
    upstream = {"dy": rng.standard_normal((T, B, H)), "dh": rng.standard_normal((B, H)),
                "dc": rng.standard_normal((B, H))}
    if layout == "float32-strided":
        # every other element of a wider float32 buffer: views, not contiguous
        inputs = {k: np.repeat(v.astype(np.float32), 2, axis=-1)[..., ::2]
                  for k, v in inputs.items()}
        assert not any(v.flags.c_contiguous for v in inputs.values())
    mine = {**inputs, **upstream}
    before = {k: v.copy() for k, v in mine.items()}

    out = forward(cell, inputs, lengths=LENGTHS, training=True)
    grads = backward(cell, out.cache, **upstream)
    backward(cell, out.cache, **upstream)

    for name, value in mine.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
        assert value.flags.writeable
    results = [a for a in (*out[:-1], *grads) if a is not None]
    for name, value in mine.items():
        assert not any(np.shares_memory(r, value) for r in results), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(CELLS))
def test_dtype_is_preserved(cell, dtype):
    rng = np.random.default_rng(17)
    inputs = make_inputs(cell, rng, dtype=dtype)
    out = forward(cell, inputs, lengths=LENGTHS, training=True)
    grads = backward(cell, out.cache, dy=np.ones((T, B, H)), dh=np.ones((B, H)),
                     dc=np.ones((B, H)))
    for value in (*out[:-1], *grads):
        assert value.dtype == dtype


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(18)
    for cell in CELLS:
        inputs = make_inputs(cell, rng)
        single = {k: v.astype(np.float32) for k, v in inputs.items()}
        np.testing.assert_allclose(forward(cell, single).y, forward(cell, inputs).y,
                                   rtol=1e-5, atol=1e-6, err_msg=cell)


@pytest.mark.parametrize("cell", list(CELLS))
def test_training_false_keeps_no_cache(cell):
    out = forward(cell, make_inputs(cell, np.random.default_rng(19)))
    assert out.cache is None


# ----------------------------------------------------------------------------
# bad arguments: a few cases (the full grid is tested with the kernels)


def replace(inputs, **changes):
    return {**inputs, **changes}


BAD_FORWARD = [
    # (name, change of the inputs or options, exception, argument named in the message)
    ("x-2d", lambda i: replace(i, x=i["x"][0]), {}, ValueError, "x"),
    ("x-int", lambda i: replace(i, x=i["x"].astype(int)), {}, TypeError, "x"),
    ("W_hh-shape", lambda i: replace(i, W_hh=i["W_hh"][:, :1]), {}, ValueError, "W_hh"),
    ("W_ih-shape", lambda i: replace(i, W_ih=i["W_ih"][:-1]), {}, ValueError, "W_ih"),
    ("b_hh-missing", lambda i: replace(i, b_hh=None), {}, ValueError, "b_hh"),
    ("h0-shape", lambda i: replace(i, h0=i["h0"][:1]), {}, ValueError, "h0"),
    ("lengths-too-long", lambda i: i, {"lengths": [T + 1, 1, 1]}, ValueError, "lengths"),
    ("lengths-float", lambda i: i, {"lengths": [1.0, 1.0, 1.0]}, TypeError, "lengths"),
    ("reverse-not-bool", lambda i: i, {"reverse": "yes"}, TypeError, "reverse"),
    ("training-not-bool", lambda i: i, {"training": 1}, TypeError, "training"),
]


@pytest.mark.parametrize("name, change, options, error, argument", BAD_FORWARD,
                         ids=[case[0] for case in BAD_FORWARD])
@pytest.mark.parametrize("cell", ["rnn-tanh", "gru-lbr", "lstm"])
def test_bad_forward_arguments_raise_naming_the_argument(cell, name, change, options, error,
                                                         argument):
    inputs = change(make_inputs(cell, np.random.default_rng(20)))
    with pytest.raises(error, match=rf"^{argument}\b"):
        forward(cell, inputs, **options)


def test_bad_cell_options_raise_naming_the_option():
    rng = np.random.default_rng(21)
    rnn, gru = make_inputs("rnn-tanh", rng), make_inputs("gru-lbr", rng)
    with pytest.raises(ValueError, match="^nonlinearity"):
        reference.rnn_forward(**rnn, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="^linear_before_reset"):
        reference.gru_forward(**gru, linear_before_reset=1)


@pytest.mark.parametrize("cell", ["rnn-tanh", "gru-lbr", "lstm"])
def test_bad_upstream_gradients_raise_naming_the_argument(cell):
    out = forward(cell, make_inputs(cell, np.random.default_rng(22)), training=True)
    with pytest.raises(ValueError, match="^dy"):
        backward(cell, out.cache, dy=np.zeros((T, B, H + 1)))
    with pytest.raises(ValueError, match="^dh"):
        backward(cell, out.cache, dh=np.zeros((B,)))
    with pytest.raises(TypeError, match="^dy"):
        backward(cell, out.cache, dy=np.zeros((T, B, H), dtype=int))
    if is_lstm(cell):
        with pytest.raises(ValueError, match="^dc"):
            backward(cell, out.cache, dc=np.zeros((B + 1, H)))


@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_rejects_a_missing_or_foreign_cache(cell):
    with pytest.raises(TypeError, match="^cache"):
        backward(cell, None)
    other = "gru-lbr" if cell.startswith("rnn") else "rnn-tanh"
    foreign = forward(other, make_inputs(other, np.random.default_rng(23)), training=True)
    with pytest.raises(ValueError, match="^cache"):
        backward(cell, foreign.cache)


@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_twice_gives_identical_results(cell):
    rng = np.random.default_rng(24)
    out = forward(cell, make_inputs(cell, rng), lengths=LENGTHS, reverse=True, training=True)
    upstream = dict(dy=rng.standard_normal((T, B, H)), dh=rng.standard_normal((B, H)),
                    dc=rng.standard_normal((B, H)))
    first = backward(cell, out.cache, **upstream)
    second = backward(cell, out.cache, **upstream)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
        assert a is not b
