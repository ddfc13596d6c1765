"""The layers' messages name the likely mistake; step() in training mode applies dropout;
every layer's help() page stands alone."""
import pydoc

import numpy as np
import pytest

import fastcells
from fastcells import reference

#: step (a Stepper) vs the sequence call (functional), float32
FWD_TOL = 2e-5

T, B, I, H = 6, 3, 4, 5
LAYERS = {"rnn": fastcells.RNN, "gru": fastcells.GRU, "lstm": fastcells.LSTM}


def flat(s):
    return list(s) if isinstance(s, tuple) else [s]


# ----------------------------------------------------------------------------
# batch_first: messages in the caller's layout


@pytest.mark.parametrize("cell", list(LAYERS))
def test_integer_input_to_batch_first_layer_reports_the_callers_shape(cell):
    layer = LAYERS[cell](I, H, batch_first=True)
    x = np.zeros((B, T, I), dtype=np.int64)
    with pytest.raises(TypeError, match=r"x: expected a real floating-point array.*int64 and "
                                        rf"shape \({B}, {T}, {I}\)"):
        layer(x)
    y, _ = layer(np.zeros((B, T, I), np.float32))
    with pytest.raises(TypeError, match=rf"dy: .*shape \({B}, {T}, {H}\)"):
        layer.backward(y.astype(np.int32))


def test_input_size_on_the_wrong_axis_names_batch_first():
    layer = fastcells.GRU(I, H, batch_first=True)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, input_size\) \(batch_first="
                                         r"True\) with input_size = 4, got \(3, 4, 6\); "
                                         r"input_size = 4 is axis 1 of x.*batch_first=False"):
        layer(np.zeros((B, I, T), np.float32))
    time_major = fastcells.GRU(I, H)
    with pytest.raises(ValueError, match=r"\(T, B, input_size\) \(batch_first=False\).*"
                                         r"axis 0 of x"):
        time_major(np.zeros((I, B, T), np.float32))
    with pytest.raises(ValueError, match=r"batch_first=True"):   # no hint: none fits
        layer(np.zeros((B, T, I + 2), np.float32))


# ----------------------------------------------------------------------------
# the kind of state


@pytest.mark.parametrize("cell,article", [("gru", "a GRU"), ("rnn", "an RNN")])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_state_given_to_a_one_state_layer(cell, article, num_layers):
    layer = LAYERS[cell](I, H, num_layers)
    x = np.zeros((T, B, I), np.float32)
    pair = (np.zeros((num_layers, B, H)), np.zeros((num_layers, B, H)))
    with pytest.raises(ValueError, match=rf"hx: {article} takes one state h0 of shape "
                                         r"\(num_layers\*num_directions, B, H\).*got a tuple of "
                                         r"2.*\(h0, c0\) is the state of an LSTM"):
        layer(x, pair)
    with pytest.raises(ValueError, match=rf"state: {article} takes one state h0"):
        layer.step(x[0], pair)
    # a list of per-layer states that stacks to the right shape is still a state
    if num_layers == 2:
        h0 = np.ones((2, B, H), np.float32)
        np.testing.assert_array_equal(layer(x, list(h0))[0], layer(x, h0)[0])


def test_bare_array_given_to_an_lstm_says_it_takes_a_pair():
    lstm = fastcells.LSTM(I, H, 2)
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(TypeError, match=r"hx: expected None or a pair \(h0, c0\).*got ndarray "
                                        r"of shape \(2, 3, 5\); an LSTM's state is the pair "
                                        r"\(h0, c0\).*\(h0, None\)"):
        lstm(x, np.zeros((2, B, H)))
    h0 = np.ones((2, B, H), np.float32)
    y, _ = lstm(x, (h0, None))          # the hint's suggestion works
    np.testing.assert_array_equal(y, lstm(x, (h0, np.zeros_like(h0)))[0])


# ----------------------------------------------------------------------------
# step() and dropout


@pytest.mark.parametrize("backend", [None, reference])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_step_in_training_mode_applies_forwards_dropout(cell, backend):
    def make():
        return LAYERS[cell](I, H, 3, dropout=0.5, seed=5, backend=backend)

    stepped, called = make(), make()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    s_step = s_call = None
    for t in range(T):
        y_t, s_step = stepped.step(x[t], s_step)
        y_call, s_call = called(x[t:t + 1], s_call)
        np.testing.assert_allclose(y_t, y_call[0], atol=FWD_TOL)
        for a, b in zip(flat(s_step), flat(s_call)):
            np.testing.assert_allclose(a, b, atol=FWD_TOL)
    # the masks were drawn: without dropout the numbers differ
    plain = LAYERS[cell](I, H, 3, seed=5, backend=backend)
    assert not np.allclose(plain.step(x[0])[0], make().step(x[0])[0], atol=1e-3)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_step_in_eval_mode_applies_no_dropout(cell):
    layer = LAYERS[cell](I, H, 3, dropout=0.5, seed=5).eval()
    plain = LAYERS[cell](I, H, 3, seed=5).eval()
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    s = s_plain = None
    for t in range(T):
        y_t, s = layer.step(x[t], s)
        y_plain, s_plain = plain.step(x[t], s_plain)
        np.testing.assert_array_equal(y_t, y_plain)
        np.testing.assert_allclose(y_t, plain(x[:t + 1])[0][t], atol=FWD_TOL)


def test_dropout_one_zeroes_the_layers_above_in_step():
    layer = fastcells.GRU(I, H, 2, dropout=1.0, bias=False, seed=2)
    y, _ = layer.step(np.ones((B, I), np.float32))
    np.testing.assert_array_equal(y, 0)   # no bias: zero input to layer 1 gives zero
    layer.eval()
    assert np.abs(layer.step(np.ones((B, I), np.float32))[0]).max() > 0


# ----------------------------------------------------------------------------
# help()


def page(obj):
    return pydoc.render_doc(obj, renderer=pydoc.plaintext)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_help_page_of_each_layer_stands_alone(cell):
    cls = LAYERS[cell]
    text = page(cls)
    assert "as :class:" not in text and "Parameters as" not in text
    for word in ("input_size :", "hidden_size :", "num_layers :", "bias :", "batch_first :",
                 "dropout :", "bidirectional :", "seed :", "backend :", {
                     "rnn": "nonlinearity :", "gru": "linear_before_reset :",
                     "lstm": "peephole :"}[cell],
                 "GIL", "one thread", "lengths=", "float32"):
        assert word in text, word
    call = "y, (h, c) = lstm(x, (h0, c0)" if cell == "lstm" else f"y, h = {cell}(x, h0"
    assert call in text
    calls = ({"forward": "y, (h, c) = lstm(x, (h0, c0)",
              "backward": "dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))",
              "step": "y_t, (h, c) = lstm.step(x_t, (h, c))"} if cell == "lstm" else
             {"forward": f"y, h = {cell}(x, h0", "backward": f"dx, dh0 = {cell}.backward(dy, dh_n)",
              "step": f"y_t, h = {cell}.step(x_t, h)"})
    for method, convention in calls.items():
        doc = getattr(cls, method).__doc__
        assert "Parameters\n" in doc and "Returns\n" in doc, method
        assert convention in doc, method
    for method in ("state_dict", "load_state_dict", "train", "eval", "zero_grad", "parameters",
                   "parameters_changed"):
        assert "Returns\n" in getattr(cls, method).__doc__, method
    assert "Raises\n" in cls.step_weight_dtype.__doc__


def test_help_page_of_linear_stands_alone():
    text = page(fastcells.Linear)
    for word in ("in_features :", "out_features :", "bias :", "seed :", "Returns", "thread"):
        assert word in text, word


def test_documented_methods_run_the_same_code():
    # the per-class pages are copies of one function: same code, own docstring
    assert fastcells.GRU.forward.__code__ is fastcells.LSTM.forward.__code__
    assert fastcells.GRU.forward.__doc__ != fastcells.LSTM.forward.__doc__
    assert fastcells.GRU.step.__qualname__ == "GRU.step"
