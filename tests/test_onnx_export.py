"""fastcells.interop.to_onnx: exported models run by onnxruntime match the layers.

Every option the exporter supports (cell, RNN nonlinearity, GRU form, LSTM
peepholes, directions, 1-3 layers, bias, a Linear head on the last step or on
every step, batch_first, initial states, sequence_lens) is compared with the
layer's own call in eval mode; one exported model runs at several T and B;
every recurrent node reads back with from_onnx to the layer's state dict; and
what ONNX cannot express is refused with the option named.
"""
import dataclasses
import sys

import numpy as np
import pytest

import fastcells
from fastcells import interop
from fastcells._onnx_export import DEFAULT_OPSET, MIN_OPSET

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: float32 kernels in two runtimes: the issue's relative bound, with an absolute
#: floor for values near zero (a few float32 ulps of the O(1) outputs)
RTOL, ATOL = 1e-5, 2e-6
I, H, OUT = 3, 5, 2

#: (layer class, constructor options) for every cell form the exporter supports
CELL_FORMS = {
    "rnn-tanh": (fastcells.RNN, {}),
    "rnn-relu": (fastcells.RNN, {"nonlinearity": "relu"}),
    "gru-lbr": (fastcells.GRU, {}),
    "gru-nolbr": (fastcells.GRU, {"linear_before_reset": False}),
    "lstm": (fastcells.LSTM, {}),
    "lstm-peephole": (fastcells.LSTM, {"peephole": True}),
}


def _layer(form, num_layers=1, bidirectional=False, **kw):
    cls, opts = CELL_FORMS[form]
    return cls(I, H, num_layers, bidirectional=bidirectional, seed=7, **opts, **kw).eval()


def _session(proto):
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, feeds):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _problem(layer, T, B, *, initial_states=False, lengths=None, batch_first=False, seed=0):
    """The graph's feeds (``x`` batch-first when asked) and the layer's call on the same
    data: (feeds, expected outputs y, h, [c] in the graph's layout)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)

    def layout(a, want_batch_first):        # time-major (T, B, .) as asked
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if want_batch_first else a

    feeds = {"x": layout(x, batch_first)}
    states = list(layer._spec.states)
    L = layer.num_layers * layer.num_directions
    if initial_states:
        for s in states:
            feeds[s + "0"] = rng.standard_normal((L, B, H)).astype(np.float32)
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, np.int32)
    hx = tuple(feeds[s + "0"] for s in states) if initial_states else None
    hx = hx[0] if hx is not None and len(hx) == 1 else hx
    y, final = layer(layout(x, layer.batch_first), hx, lengths=lengths)
    y = layout(layout(y, layer.batch_first), batch_first)   # back to time-major, then as asked
    expected = {"y": y}
    expected.update(zip(states, final if isinstance(final, tuple) else (final,)))
    return feeds, expected


def _assert_close(actual, expected, name):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=name)


def _valid(y, lengths, batch_first):
    """Mask of the steps within each sequence's length, shaped like ``y``."""
    T = y.shape[1] if batch_first else y.shape[0]
    mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]       # (T, B)
    return np.broadcast_to((mask.T if batch_first else mask)[..., None], y.shape)


def _compare(got, expected, lengths=None, batch_first=False):
    assert set(got) >= set(expected)
    for name, want in expected.items():
        have = got[name]
        assert have.shape == want.shape, name
        if name == "y" and lengths is not None:
            valid = _valid(want, lengths, batch_first)
            _assert_close(have[valid], want[valid], name)
            # onnxruntime, like fastcells, writes zeros past a sequence's end
            assert not have[~valid].any()
        else:
            _assert_close(have, want, name)


# ----------------------------------------------------------------------------
# every cell form and stack, with states and mixed lengths


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("form", list(CELL_FORMS))
def test_every_cell_and_stack_matches(form, num_layers, bidirectional):
    layer = _layer(form, num_layers, bidirectional)
    session = _session(interop.to_onnx(layer, initial_states=True, sequence_lens=True))
    lengths = [7, 3, 0, 1, 6]
    feeds, expected = _problem(layer, 7, 5, initial_states=True, lengths=lengths)
    _compare(_run(session, feeds), expected, lengths)


@pytest.mark.parametrize("head", [None, "last", "all"])
@pytest.mark.parametrize("sequence_lens", [False, True])
@pytest.mark.parametrize("initial_states", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("form", ["gru-nolbr", "lstm-peephole"])
def test_options_match(form, batch_first, initial_states, sequence_lens, head):
    layer = _layer(form, 2, True)
    linear = fastcells.Linear(2 * H, OUT, seed=3)
    model = layer if head is None else [layer, linear]
    session = _session(interop.to_onnx(model, batch_first=batch_first,
                                       initial_states=initial_states,
                                       sequence_lens=sequence_lens, head=head or "last"))
    lengths = [4, 6, 1] if sequence_lens else None
    feeds, expected = _problem(layer, 6, 3, initial_states=initial_states, lengths=lengths,
                               batch_first=batch_first)
    if head == "last":
        # y[T-1]: zeros for a sequence that ended earlier, in both runtimes
        last = expected["y"][:, -1] if batch_first else expected["y"][-1]
        expected["out"] = linear(last)
    elif head == "all":
        expected["out"] = linear(expected["y"])
    got = _run(session, feeds)
    assert [i.name for i in session.get_inputs()] == list(feeds)
    assert ("out" in got) == (head is not None)
    _compare(got, expected, lengths, batch_first)


def test_batch_first_defaults_to_the_layers():
    layer = fastcells.GRU(I, H, batch_first=True, seed=1).eval()
    proto = interop.to_onnx(layer)
    feeds, expected = _problem(layer, 4, 2, batch_first=True)
    _compare(_run(_session(proto), feeds), expected)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", "T", I]


@pytest.mark.parametrize("form", ["rnn-relu", "gru-lbr", "lstm-peephole"])
def test_without_bias(form):
    layer = _layer(form, 2, True, bias=False)
    proto = interop.to_onnx(layer)
    assert not any(i.name.startswith("B_") for i in proto.graph.initializer)
    feeds, expected = _problem(layer, 5, 2)
    _compare(_run(_session(proto), feeds), expected)


def test_head_without_bias():
    layer = _layer("lstm", 2)
    linear = fastcells.Linear(H, OUT, bias=False, seed=3)
    proto = interop.to_onnx([layer, linear])
    assert "head.bias" not in {t.name for t in proto.graph.initializer}
    feeds, expected = _problem(layer, 5, 3)
    expected["out"] = linear(expected["y"][-1])
    _compare(_run(_session(proto), feeds), expected)


def test_dropout_is_not_exported():
    layer = fastcells.LSTM(I, H, 3, dropout=0.5, seed=2).eval()
    feeds, expected = _problem(layer, 5, 2)
    _compare(_run(_session(interop.to_onnx(layer)), feeds), expected)


def test_dynamic_time_and_batch():
    layer = _layer("lstm-peephole", 2, True)
    linear = fastcells.Linear(2 * H, OUT, seed=3)
    proto = interop.to_onnx([layer, linear], head="all", initial_states=True,
                            sequence_lens=True)
    for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]:
        assert d.dim_param in ("T", "B")
    session = _session(proto)
    for T, B in ((9, 4), (2, 1), (1, 6)):
        lengths = np.minimum(np.arange(B) + 1, T)
        feeds, expected = _problem(layer, T, B, initial_states=True, lengths=lengths, seed=T)
        expected["out"] = linear(expected["y"])
        _compare(_run(session, feeds), expected, lengths)


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, "newest"])
def test_opsets(opset):
    opset = onnx.defs.onnx_opset_version() if opset == "newest" else opset
    layer = _layer("gru-nolbr", 2, True)
    proto = interop.to_onnx(layer, opset=opset)
    assert [o.version for o in proto.opset_import] == [opset]
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    feeds, expected = _problem(layer, 4, 3)
    _compare(_run(_session(proto), feeds), expected)


@pytest.mark.parametrize("form", ["rnn-tanh", "gru-lbr", "lstm-peephole"])
def test_no_steps(form):
    # T = 0 with sequence_lens: empty outputs, the initial states as the final
    # states (as the layers do).  Without sequence_lens onnxruntime 1.32 ends in
    # zeros (RNN, LSTM) or aborts the process (GRU); B = 0 aborts it for GRU and
    # LSTM: docs/onnx.md says so, and these cases are not run here.
    layer = _layer(form, 2, True)
    session = _session(interop.to_onnx(layer, initial_states=True, sequence_lens=True))
    feeds, expected = _problem(layer, 0, 3, initial_states=True, lengths=[0, 0, 0])
    _compare(_run(session, feeds), expected)


# ----------------------------------------------------------------------------
# the file, and reading it back with from_onnx


def _read_back(proto):
    """Every recurrent node of ``proto`` through from_onnx, renamed to its layer:
    (state dict, the nodes' RunOptions)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    sd, options = {}, []
    nodes = [n for n in proto.graph.node if n.op_type in ("RNN", "GRU", "LSTM")]
    for k, node in enumerate(nodes):
        ins = list(node.input) + [""] * (8 - len(node.input))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        P = inits.get(ins[7]) if node.op_type == "LSTM" else None
        part = interop.from_onnx(node.op_type, inits[ins[1]], inits[ins[2]], inits.get(ins[3]),
                                 P, **attrs)
        sd.update({name.replace("_l0", f"_l{k}"): v for name, v in part.items()})
        options.append(part.options)
    return sd, options


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("form", list(CELL_FORMS))
def test_file_round_trips_through_from_onnx(form, bias, tmp_path):
    layer = _layer(form, 3, True, bias=bias)
    linear = fastcells.Linear(2 * H, OUT, seed=3)
    path = tmp_path / "model.onnx"
    returned = interop.to_onnx([layer, linear], path)
    proto = onnx.load(str(path))
    assert proto == returned
    sd, options = _read_back(proto)
    want = layer.state_dict()
    if not bias:       # from_onnx gives zero biases for a node without B
        want.update({k: np.zeros_like(v) for k, v in sd.items() if k.startswith("bias")})
    assert list(sorted(sd)) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(sd[name], value, err_msg=name)
    # the options run them as the layer: each node's are layer 0's but for its input size
    for k, opt in enumerate(options):
        assert opt == dataclasses.replace(options[0], input_size=I if k == 0 else 2 * H)
    kwargs = {**options[0].layer_kwargs(), "num_layers": layer.num_layers, "seed": 0}
    assert kwargs["input_size"] == I and kwargs["hidden_size"] == H and kwargs["bidirectional"]
    back = type(layer)(**kwargs).eval()
    back.load_state_dict(sd)
    x = np.random.default_rng(1).standard_normal((4, 2, I)).astype(np.float32)
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])


def test_path_accepts_pathlike_and_str(tmp_path):
    layer = _layer("rnn-tanh")
    for path in (tmp_path / "a.onnx", str(tmp_path / "b.onnx")):
        proto = interop.to_onnx(layer, path)
        assert onnx.load(str(path)) == proto


# ----------------------------------------------------------------------------
# bad input: before any work, naming the argument or the option


@pytest.mark.parametrize("model", [
    fastcells.Linear(2, 3), "LSTM", None, [], (fastcells.Linear(2, 3), fastcells.RNN(2, 3)),
    [fastcells.RNN(2, 3), fastcells.RNN(3, 3)],
    [fastcells.RNN(2, 3), fastcells.Linear(3, 1), fastcells.Linear(1, 1)],
])
def test_unsupported_model_type(model):
    with pytest.raises(TypeError, match=r"^model: expected an RNN, GRU or LSTM layer, or a "
                                        r"sequence \[layer, Linear\], got "):
        interop.to_onnx(model)


@pytest.mark.parametrize("option, value, what", [
    ("layer_norm", True, "no normalization inside the cell"),
    ("proj_size", 3, "no projection of the hidden state"),
])
def test_options_onnx_cannot_express(option, value, what, tmp_path):
    layer = _layer("lstm")
    setattr(layer, option, value)      # as the layers that have the option set it
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=rf"^{option}: ONNX's LSTM operator has {what}, so a "
                                         rf"layer with {option}={value!r} cannot be exported"):
        interop.to_onnx(layer, path)
    assert not path.exists()
    setattr(layer, option, type(value)())   # the option off: exported
    interop.to_onnx(layer)


@pytest.mark.parametrize("head", [False, True])
def test_a_layer_with_projection_is_refused(head, tmp_path):
    layer = fastcells.LSTM(3, 6, 2, bidirectional=True, proj_size=2, seed=0)
    model = [layer, fastcells.Linear(4, 1)] if head else layer
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"^proj_size: ONNX's LSTM operator has no projection "
                                         r"of the hidden state, so a layer with proj_size=2 "
                                         r"cannot be exported \(export one without it\)$"):
        interop.to_onnx(model, path)
    assert not path.exists()


def test_head_width_and_steps():
    layer = _layer("gru-lbr", bidirectional=True)
    with pytest.raises(ValueError, match=r"^model: the Linear head's in_features must be the "
                                         r"layer's output width D\*H = 10, got 5$"):
        interop.to_onnx([layer, fastcells.Linear(H, 1)])
    with pytest.raises(ValueError, match=r"^head: expected one of \('last', 'all'\), got "
                                         r"'first'$"):
        interop.to_onnx([layer, fastcells.Linear(2 * H, 1)], head="first")


@pytest.mark.parametrize("opset, error, match", [
    (MIN_OPSET - 1, ValueError, rf"^opset: expected an integer >= {MIN_OPSET}, got 13$"),
    (10_000, ValueError, rf"^opset: expected an integer from {MIN_OPSET} to \d+ \(the installed "
                         r"onnx [\d.]+'s newest\), got 10000$"),
    ("17", TypeError, r"^opset: expected an integer >= 14, got '17'$"),
    (True, TypeError, r"^opset: expected an integer >= 14, got True$"),
])
def test_bad_opset(opset, error, match):
    with pytest.raises(error, match=match):
        interop.to_onnx(_layer("rnn-tanh"), opset=opset)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_first": 1}, r"^batch_first: "),
    ({"initial_states": "yes"}, r"^initial_states: "),
    ({"sequence_lens": None}, r"^sequence_lens: "),
    ({"path": 3}, r"^path: expected None, a str or an os.PathLike, got int$"),
])
def test_bad_flags_and_path(kwargs, match):
    with pytest.raises(TypeError, match=match):
        interop.to_onnx(_layer("rnn-tanh"), **kwargs)


def test_missing_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)     # import onnx raises ImportError
    with pytest.raises(ImportError, match=r"pip install fastcells\[onnx\]"):
        interop.to_onnx(_layer("rnn-tanh"))


# the ONNX reference evaluator, a second runtime that reads the operators' spec:
# the graph around the nodes (Transpose, Reshape, Slice, Concat, Gather) is the
# spec's, not one runtime's.  It ignores sequence_lens and computes no "Relu".
@pytest.mark.parametrize("form", ["rnn-tanh", "gru-lbr", "gru-nolbr", "lstm", "lstm-peephole"])
def test_reference_evaluator_matches(form):
    from onnx.reference import ReferenceEvaluator

    layer = _layer(form, 3, True)
    linear = fastcells.Linear(2 * H, OUT, seed=3)
    proto = interop.to_onnx([layer, linear], batch_first=True, initial_states=True, head="all")
    feeds, expected = _problem(layer, 5, 4, initial_states=True, batch_first=True)
    expected["out"] = linear(expected["y"])
    evaluator = ReferenceEvaluator(proto)
    _compare(dict(zip(evaluator.output_names, evaluator.run(None, feeds))), expected)
