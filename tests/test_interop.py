"""fastcells.interop: ONNX and Keras weights give the same numbers in fastcells.

ONNX: single-node models on random weights run by onnxruntime and by the ONNX
reference evaluator, against fastcells' functional API with the converted
weights.  Keras (never imported): Keras-layout weights are built from
PyTorch-layout ones by a hand-written inverse, and Keras' cell equations are
written out in NumPy, so both the layout and the run options are checked.
"""
import numpy as np
import pytest
from conftest import TensorLike

import fastcells
from fastcells import interop
from fastcells._cells import GATES, cell_functions

TOL = 1e-5          # float32 kernels against ORT / the float64 Keras equations
OPSET = 14          # the first opset with the `layout` attribute
#: the ONNX operator and Keras class of each cell
OP_TYPES = {"RNN": "rnn", "GRU": "gru", "LSTM": "lstm"}
KERAS_KINDS = {"SimpleRNN": "rnn", "GRU": "gru", "LSTM": "lstm"}
G = {op: GATES[cell] for op, cell in OP_TYPES.items()}
FORWARD = {op: cell_functions(fastcells, cell)[0] for op, cell in OP_TYPES.items()}


# ----------------------------------------------------------------------------
# ONNX


def _onnx_case(op_type, direction="forward", with_B=True, lengths=False, layout=0,
               T=5, B=3, I=4, H=6, **attrs):
    """Random inputs for one ONNX node: (feeds dict, node attributes)."""
    rng = np.random.default_rng(
        [G[op_type], ["forward", "reverse", "bidirectional"].index(direction), with_B, lengths,
         layout, attrs.get("linear_before_reset", 0)])
    D = 2 if direction == "bidirectional" else 1
    g = G[op_type]
    f32 = np.float32
    feeds = {
        "X": rng.standard_normal((T, B, I) if layout == 0 else (B, T, I)).astype(f32),
        "W": (0.5 * rng.standard_normal((D, g * H, I))).astype(f32),
        "R": (0.5 * rng.standard_normal((D, g * H, H))).astype(f32),
    }
    if with_B:
        feeds["B"] = (0.5 * rng.standard_normal((D, 2 * g * H))).astype(f32)
    if lengths:
        feeds["sequence_lens"] = np.array([T, 2, T - 1][:B] + [1] * (B - 3), np.int32)
    state = (D, B, H) if layout == 0 else (B, D, H)
    if attrs.pop("peephole", False):
        feeds["P"] = (0.5 * rng.standard_normal((D, 3 * H))).astype(f32)
    feeds["initial_h"] = (0.5 * rng.standard_normal(state)).astype(f32)
    if op_type == "LSTM":
        feeds["initial_c"] = (0.5 * rng.standard_normal(state)).astype(f32)
    attrs = dict(hidden_size=H, direction=direction, layout=layout, **attrs)
    return feeds, attrs


def _onnx_model(op_type, feeds, attrs):
    from onnx import TensorProto, helper

    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][
        : 8 if op_type == "LSTM" else 6]
    inputs = [name if name in feeds else "" for name in order]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op_type == "LSTM" else [])
    node = helper.make_node(op_type, inputs, outputs, **attrs)
    infos = [helper.make_tensor_value_info(
        k, TensorProto.INT32 if k == "sequence_lens" else TensorProto.FLOAT, v.shape)
        for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs]
    graph = helper.make_graph([node], "cell", infos, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _fastcells_run(op_type, feeds, attrs):
    """Outputs in ONNX's layout (Y, Y_h[, Y_c]) computed by fastcells from converted weights."""
    sd = interop.from_onnx(op_type, feeds["W"], feeds["R"], feeds.get("B"), feeds.get("P"),
                           **attrs)
    opt = sd.options
    x, h0, c0 = feeds["X"], feeds["initial_h"], feeds.get("initial_c")
    if opt.batch_first:  # layout 1: X (B, T, I), states (B, D, H)
        x = x.transpose(1, 0, 2)
        h0 = h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    ys, hs, cs = [], [], []
    for d, sfx in enumerate(["_l0", "_l0_reverse"][: 2 if opt.bidirectional else 1]):
        kw = opt.functional_kwargs()
        kw["reverse"] = kw["reverse"] or d == 1
        extra = {} if c0 is None else {"c0": c0[d]}
        if opt.peephole:
            extra["peephole"] = sd["peephole" + sfx]
        out = FORWARD[op_type](x, sd["weight_ih" + sfx], sd["weight_hh" + sfx], sd["bias_ih" + sfx],
                               sd["bias_hh" + sfx], h0[d], lengths=feeds.get("sequence_lens"),
                               **extra, **kw)
        ys.append(out.y)
        hs.append(out.h)
        if op_type == "LSTM":
            cs.append(out.c)
    Y = np.stack(ys, axis=1)           # (T, D, B, H)
    states = [np.stack(hs)] + ([np.stack(cs)] if cs else [])   # (D, B, H)
    if opt.batch_first:
        Y = Y.transpose(2, 0, 1, 3)    # (B, T, D, H)
        states = [s.transpose(1, 0, 2) for s in states]
    return [Y] + states


CASES = [
    (op, direction, with_B, lengths, layout, extra)
    for op, extras in [("RNN", [{}, {"activations": ["Relu"]}]),
                       ("GRU", [{"linear_before_reset": 0}, {"linear_before_reset": 1}]),
                       ("LSTM", [{}, {"peephole": True}])]
    for extra in extras
    for direction in ["forward", "reverse", "bidirectional"]
    for with_B, lengths, layout in [(True, False, 0), (False, True, 0), (True, True, 1),
                                    (False, False, 1)]
]
CASE_IDS = [f"{op}-{d}-{'B' if b else 'noB'}-{'lens' if s else 'full'}-layout{l}-"
            + "-".join(f"{k}{v}" for k, v in e.items()) for op, d, b, s, l, e in CASES]


def _cases(keep):
    kept = [(c, i) for c, i in zip(CASES, CASE_IDS) if keep(*c)]
    return dict(argvalues=[c for c, _ in kept], ids=[i for _, i in kept])


# onnxruntime's CPU RNN/GRU/LSTM refuse layout=1: the reference evaluator checks it
@pytest.mark.parametrize("op_type,direction,with_B,lengths,layout,extra",
                         **_cases(lambda op, d, b, lens, layout, e: layout == 0))
def test_onnxruntime_matches(op_type, direction, with_B, lengths, layout, extra):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if extra.get("activations") and direction == "bidirectional":
        extra = {"activations": extra["activations"] * 2}
    feeds, attrs = _onnx_case(op_type, direction, with_B, lengths, layout, **extra)
    model = _onnx_model(op_type, feeds, attrs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, feeds)
    got = _fastcells_run(op_type, feeds, attrs)
    for name, e, g in zip(["Y", "Y_h", "Y_c"], expected, got):
        np.testing.assert_allclose(g, e, atol=TOL, rtol=0, err_msg=name)


# the reference evaluator ignores sequence_lens (onnxruntime checks it)
@pytest.mark.parametrize("op_type,direction,with_B,lengths,layout,extra",
                         **_cases(lambda op, d, b, lens, layout, e: not lens))
def test_onnx_reference_evaluator_matches(op_type, direction, with_B, lengths, layout, extra):
    pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    if extra.get("activations") and direction == "bidirectional":
        extra = {"activations": extra["activations"] * 2}
    feeds, attrs = _onnx_case(op_type, direction, with_B, lengths, layout, **extra)
    try:
        expected = ReferenceEvaluator(_onnx_model(op_type, feeds, attrs)).run(None, feeds)
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        pytest.skip(f"the ONNX reference evaluator does not run this case: {exc}")
    got = _fastcells_run(op_type, feeds, attrs)
    for name, e, g in zip(["Y", "Y_h", "Y_c"], expected, got):
        np.testing.assert_allclose(g, e, atol=TOL, rtol=0, err_msg=name)


def test_onnx_lstm_gate_and_peephole_order():
    """Blocks are moved, not mixed: ONNX i,o,f,c -> i,f,g,o and P i,o,f -> i,f,o."""
    H, I = 2, 3
    blocks = {g: np.full((H, I), k, np.float32) for k, g in enumerate("iofc")}
    W = np.concatenate([blocks[g] for g in "iofc"])[None]
    R = np.concatenate([blocks[g][:, :1].repeat(H, 1) for g in "iofc"])[None]
    B = np.concatenate([np.arange(4 * H), 100 + np.arange(4 * H)]).astype(np.float32)[None]
    P = np.concatenate([np.full(H, 10.0 * k) for k in range(3)]).astype(np.float32)[None]
    sd = interop.from_onnx("LSTM", W, R, B, P, hidden_size=H)
    gate_of_row = sd["weight_ih_l0"][:, 0]
    np.testing.assert_array_equal(gate_of_row, np.repeat([0, 2, 3, 1], H))   # i, f, c(=g), o
    np.testing.assert_array_equal(sd["weight_hh_l0"][:, 0], np.repeat([0, 2, 3, 1], H))
    np.testing.assert_array_equal(sd["bias_ih_l0"], [0, 1, 4, 5, 6, 7, 2, 3])
    np.testing.assert_array_equal(sd["bias_hh_l0"], 100 + np.array([0, 1, 4, 5, 6, 7, 2, 3]))
    np.testing.assert_array_equal(sd["peephole_l0"], [0, 0, 20, 20, 10, 10])          # i, f, o
    assert sd.options.peephole and sd.options.layer_kwargs()["peephole"]


def test_onnx_bidirectional_peephole_keys_and_zero_bias():
    H, I = 3, 2
    rng = np.random.default_rng(0)
    W, R = rng.standard_normal((2, 4 * H, I)), rng.standard_normal((2, 4 * H, H))
    P = rng.standard_normal((2, 3 * H))
    sd = interop.from_onnx("LSTM", W, R, None, P, direction="bidirectional")
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "peephole"]
    assert sorted(sd) == sorted(f"{n}_l0{s}" for n in names for s in ["", "_reverse"])
    np.testing.assert_array_equal(sd["bias_hh_l0_reverse"], np.zeros(4 * H))
    np.testing.assert_array_equal(sd["peephole_l0_reverse"],
                                  np.concatenate([P[1, :H], P[1, 2 * H:], P[1, H:2 * H]]))
    assert sd["weight_ih_l0"].dtype == np.float64      # dtype kept; layers convert on load


def test_onnx_options():
    H, I = 4, 3
    W, R = np.zeros((1, 3 * H, I)), np.zeros((1, 3 * H, H))
    opt = interop.from_onnx("GRU", W, R, direction=b"reverse", layout=1).options
    assert (opt.cell, opt.input_size, opt.hidden_size) == ("gru", I, H)
    assert opt.reverse and opt.batch_first and not opt.linear_before_reset
    assert opt.functional_kwargs() == {"reverse": True, "linear_before_reset": False}
    with pytest.raises(ValueError, match="direction"):
        opt.layer_kwargs()
    opt = interop.from_onnx("RNN", W[:, :H], R[:, :H], activations=[b"Relu"]).options
    assert opt.layer_kwargs() == {"input_size": I, "hidden_size": H, "bidirectional": False,
                                  "batch_first": False, "nonlinearity": "relu"}


@pytest.mark.parametrize("op_type,attrs,match", [
    ("LSTM", {"clip": 3.0}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"]}, "activations"),
    ("GRU", {"activations": ["Sigmoid", "Relu"]}, "activations"),
    ("RNN", {"activations": ["Sigmoid"]}, "activations"),
    ("RNN", {"activations": ["Tanh", "Relu"], "direction": "bidirectional"}, "activations"),
    ("GRU", {"hidden_size": 5}, "hidden_size"),
    ("GRU", {"direction": "both"}, "direction"),
    ("GRU", {"layout": 2}, "layout"),
    ("GRU", {"direction": "bidirectional"}, "R"),
])
def test_onnx_unsupported_attributes_raise(op_type, attrs, match):
    H, I, g = 4, 3, G[op_type]
    W, R = np.zeros((1, g * H, I)), np.zeros((1, g * H, H))
    with pytest.raises(ValueError, match=match):
        interop.from_onnx(op_type, W, R, **attrs)


def test_onnx_bad_arguments():
    W, R = np.zeros((1, 12, 3)), np.zeros((1, 12, 4))
    with pytest.raises(TypeError, match="op_type"):
        interop.from_onnx("Lstm", W, R)
    with pytest.raises(TypeError, match="input_forget"):
        interop.from_onnx("GRU", W, R, input_forget=0)
    with pytest.raises(ValueError, match=r"B: expected shape .* = \(1, 24\), got \(1, 12\)"):
        interop.from_onnx("GRU", W, R, np.zeros((1, 12)))
    with pytest.raises(ValueError, match="R: expected shape"):
        interop.from_onnx("GRU", W, np.zeros((1, 12, 5)))
    with pytest.raises(TypeError, match="P"):
        interop.from_onnx("GRU", W, R, P=np.zeros((1, 12)))
    with pytest.raises(TypeError, match="W"):
        interop.from_onnx("GRU", W.astype(int), R)


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    W, R = torch.zeros(1, 12, 3, requires_grad=True), torch.ones(1, 12, 4)
    sd = interop.from_onnx("GRU", W, R)
    assert isinstance(sd["weight_ih_l0"], np.ndarray) and sd["weight_ih_l0"].shape == (12, 3)


# ----------------------------------------------------------------------------
# Keras


def _keras_from_torch(kind, W_ih, W_hh, b_ih, b_hh, reset_after=True):
    """Hand-written inverse of from_keras: PyTorch layout -> Keras layout."""
    H = W_hh.shape[1]
    if kind == "GRU":   # torch r, z, n -> Keras z, r, h
        def k(a):
            return np.concatenate([a[H:2 * H], a[:H], a[2 * H:]])
        kernel, rk = k(W_ih).T, k(W_hh).T
        bias = np.stack([k(b_ih), k(b_hh)]) if reset_after else k(b_ih + 0 * b_hh)
        return kernel, rk, bias
    # LSTM i, f, g, o and SimpleRNN: the same order in both, one bias
    return W_ih.T, W_hh.T, b_ih + b_hh


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _keras_run(kind, x, kernel, rk, bias, reset_after=True, activation="tanh"):
    """Keras' cell equations (keras/layers/rnn/{simple_rnn,gru,lstm}.py), float64, time-major."""
    T, B, _ = x.shape
    H = rk.shape[0]
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    act = np.tanh if activation == "tanh" else (lambda a: np.maximum(a, 0))
    ys = []
    for t in range(T):
        if kind == "SimpleRNN":
            h = act(x[t] @ kernel + bias + h @ rk)
        elif kind == "LSTM":
            zi, zf, zc, zo = np.split(x[t] @ kernel + h @ rk + bias, 4, axis=1)
            c = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zc)
            h = _sigmoid(zo) * np.tanh(c)
        elif reset_after:
            x_z, x_r, x_h = np.split(x[t] @ kernel + bias[0], 3, axis=1)
            h_z, h_r, h_h = np.split(h @ rk + bias[1], 3, axis=1)
            z, r = _sigmoid(x_z + h_z), _sigmoid(x_r + h_r)
            h = z * h + (1 - z) * np.tanh(x_h + r * h_h)
        else:
            x_z, x_r, x_h = np.split(x[t] @ kernel + bias, 3, axis=1)
            z = _sigmoid(x_z + h @ rk[:, :H])
            r = _sigmoid(x_r + h @ rk[:, H:2 * H])
            h = z * h + (1 - z) * np.tanh(x_h + (r * h) @ rk[:, 2 * H:])
        ys.append(h)
    return np.stack(ys)


KERAS_CASES = [("SimpleRNN", True, "tanh"), ("SimpleRNN", True, "relu"), ("LSTM", True, "tanh"),
               ("GRU", True, "tanh"), ("GRU", False, "tanh")]


@pytest.mark.parametrize("kind,reset_after,activation", KERAS_CASES)
def test_keras_layout_round_trip(kind, reset_after, activation):
    g = GATES[KERAS_KINDS[kind]]
    H, I = 5, 3
    rng = np.random.default_rng(g)
    W_ih, W_hh = rng.standard_normal((g * H, I)), rng.standard_normal((g * H, H))
    b_ih = rng.standard_normal(g * H)
    b_hh = rng.standard_normal(g * H) if kind == "GRU" and reset_after else np.zeros(g * H)
    keras = _keras_from_torch(kind, W_ih, W_hh, b_ih, b_hh, reset_after)
    sd = interop.from_keras(kind, *keras, reset_after=reset_after, activation=activation)
    for key, want in [("weight_ih_l0", W_ih), ("weight_hh_l0", W_hh), ("bias_ih_l0", b_ih),
                      ("bias_hh_l0", b_hh)]:
        np.testing.assert_array_equal(sd[key], want, err_msg=key)


@pytest.mark.parametrize("kind,reset_after,activation", KERAS_CASES)
def test_keras_equations_match(kind, reset_after, activation):
    """Keras' own equations on Keras-layout weights equal fastcells on the converted ones."""
    g = GATES[KERAS_KINDS[kind]]
    T, B, I, H = 6, 3, 4, 5
    rng = np.random.default_rng(10 + g)
    kernel = (0.5 * rng.standard_normal((I, g * H))).astype(np.float32)
    rk = (0.5 * rng.standard_normal((H, g * H))).astype(np.float32)
    bias_shape = (2, g * H) if kind == "GRU" and reset_after else (g * H,)
    bias = (0.5 * rng.standard_normal(bias_shape)).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    expected = _keras_run(kind, x.astype(np.float64), kernel.astype(np.float64),
                          rk.astype(np.float64), bias.astype(np.float64), reset_after, activation)
    sd = interop.from_keras(kind, kernel, rk, bias, reset_after=reset_after, activation=activation)
    fwd = cell_functions(fastcells, KERAS_KINDS[kind])[0]
    out = fwd(x, sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"],
              **sd.options.functional_kwargs())
    np.testing.assert_allclose(out.y, expected, atol=TOL, rtol=0)


def test_keras_options_and_no_bias():
    H, I = 4, 2
    sd = interop.from_keras("GRU", np.ones((I, 3 * H)), np.ones((H, 3 * H)), None,
                            reset_after=False)
    assert sd.options.linear_before_reset is False
    assert sd.options.layer_kwargs()["linear_before_reset"] is False
    np.testing.assert_array_equal(sd["bias_ih_l0"], np.zeros(3 * H))
    sd = interop.from_keras("SimpleRNN", np.ones((I, H)), np.ones((H, H)), np.ones(H),
                            activation="relu")
    assert sd.options.functional_kwargs() == {"reverse": False, "nonlinearity": "relu"}


@pytest.mark.parametrize("args,kw,exc,match", [
    (("Dense", np.ones((2, 4)), np.ones((4, 4)), None), {}, TypeError, "kind"),
    (("GRU", np.ones((2, 12)), np.ones((4, 12)), np.ones(12)), {}, ValueError,
     r"bias: expected shape \(2, 3\*H\) for reset_after=True = \(2, 12\), got \(12,\)"),
    (("GRU", np.ones((2, 12)), np.ones((4, 12)), np.ones((2, 12))), {"reset_after": False},
     ValueError, "bias"),
    (("LSTM", np.ones((2, 12)), np.ones((4, 16)), None), {}, ValueError, "kernel"),
    (("LSTM", np.ones((2, 16)), np.ones((4, 12)), None), {}, ValueError, "recurrent_kernel"),
    (("LSTM", np.ones((2, 16)), np.ones((4, 16)), None), {"recurrent_activation": "hard_sigmoid"},
     ValueError, "recurrent_activation"),
    (("LSTM", np.ones((2, 16)), np.ones((4, 16)), None), {"activation": "relu"},
     ValueError, "activation"),
    (("GRU", np.ones((2, 12)), np.ones((4, 12)), None), {"reset_after": 1}, TypeError,
     "reset_after"),
])
def test_keras_bad_arguments(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        interop.from_keras(*args, **kw)


def test_pytorch_state_dict_loads_as_is():
    """No converter for PyTorch: its names and layout are ours (checked through the kernels)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    sd = {k: v.detach().numpy() for k, v in gru.state_dict().items()}
    y = fastcells.gru_forward(x.numpy(), sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"],
                              sd["bias_hh_l0"]).y
    np.testing.assert_allclose(y, gru(x)[0].detach().numpy(), atol=TOL, rtol=0)


def test_tensors_with_numpy_method_accepted():
    """Objects with ``.numpy()`` (TensorFlow tensors, variables) convert as their arrays do."""
    rng = np.random.default_rng(5)
    kernel, rk, bias = rng.standard_normal((2, 12)), rng.standard_normal((4, 12)), np.ones((2, 12))
    want = interop.from_keras("GRU", kernel, rk, bias)
    got = interop.from_keras("GRU", TensorLike(kernel), TensorLike(rk), TensorLike(bias))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(TypeError, match="kernel: expected a real floating-point array"):
        interop.from_keras("GRU", TensorLike(np.ones((2, 12), int)), rk, bias)


def test_ragged_list_names_the_argument():
    with pytest.raises(TypeError, match="W: expected a real floating-point array, got list"):
        interop.from_onnx("RNN", [[[1.0, 2.0]], [[1.0]]], np.zeros((1, 1, 1)))
