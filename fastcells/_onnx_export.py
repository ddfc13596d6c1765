"""Export of fastcells layers to ONNX: :func:`to_onnx` (re-exported by ``fastcells.interop``).

How the graph is built, and why:
- One ONNX ``RNN`` / ``GRU`` / ``LSTM`` node per layer of the stack, with the
  weights as initializers in ONNX's gate order (``interop``'s gate-layout
  table, reordered by the same rule ``from_onnx`` uses the other way).  A
  node's attributes are only those ``from_onnx`` reads back, so each node
  round-trips through it.
- The nodes are time-major (``layout=0``): ONNX Runtime's CPU kernels refuse
  ``layout=1``, so ``batch_first`` is a ``Transpose`` at the graph's input and
  output instead.
- A node's ``Y`` is ``(T, D, B, H)``; the next layer, like fastcells, reads
  ``(T, B, D*H)`` with the directions side by side (``[forward, reverse]``):
  a ``Transpose`` then a ``Reshape`` between layers.
- The initial and final states are stacks ``(L*D, B, H)`` as the layers take
  and return them: ``Slice`` gives each node its ``D`` rows, ``Concat`` joins
  the nodes' ``Y_h`` / ``Y_c``.
- ``T`` and ``B`` are symbolic dimensions: one exported model runs any batch
  of any length.
- ``onnx`` is imported inside :func:`to_onnx` only: it is an optional extra.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import check_bool, check_int
from .layers import GRU, LSTM, RNN, Linear, _RNNBase

__all__ = ["to_onnx", "DEFAULT_OPSET", "MIN_OPSET", "HEAD_STEPS"]

#: the opset :func:`to_onnx` writes unless told otherwise: widely served (ONNX
#: Runtime, OpenVINO, TensorRT) and the one ``bench/onnx_model.py`` uses
DEFAULT_OPSET = 17
#: the oldest opset exported: 14 is the current definition of RNN, GRU and LSTM
#: (the ``layout`` attribute), the one ``from_onnx`` reads
MIN_OPSET = 14
#: where a ``Linear`` head is applied: the last step's output ``y[T-1]``, as
#: fastcells' examples do (``examples/forecast_lstm.py``), or every step's
HEAD_STEPS = ("last", "all")

#: options of a recurrent layer that ONNX's RNN/GRU/LSTM operators cannot
#: express, with the reason; read with ``getattr`` (a layer without the
#: option has the default)
_REFUSED_OPTIONS = {
    "layer_norm": "ONNX's {op} operator has no normalization inside the cell",
    "proj_size": "ONNX's {op} operator has no projection of the hidden state",
}
#: the layer classes exported; each one's ``_spec.layer`` is its ONNX operator's name
_EXPORTED = (RNN, GRU, LSTM)
#: the graph's input and output names besides the states (inputs ``h0``, ``c0``, the
#: layers' state names; outputs ``h``, ``c``, the cell table's)
X, LENS, Y, OUT = "x", "sequence_lens", "y", "out"
#: the permutations: (T, D, B, H) -> (T, B, D, H) and (T, B, .) <-> (B, T, .)
_DIRECTIONS_LAST, _SWAP_TB = (0, 2, 1, 3), (1, 0, 2)


@dataclass(frozen=True)
class _Model:
    """What is exported: the recurrent layer, its head and how the head is applied."""

    layer: _RNNBase
    head: Linear | None
    head_steps: str


def _describe(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, (list, tuple)) else (
        f"{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})")


def _check_model(model: Any, head: Any) -> _Model:
    """The layer and head of ``model``, or ``TypeError``/``ValueError`` naming what is wrong."""
    parts = list(model) if isinstance(model, (list, tuple)) else [model]
    ok = (len(parts) in (1, 2) and isinstance(parts[0], _EXPORTED)
          and (len(parts) == 1 or isinstance(parts[1], Linear)))
    if not ok:
        raise TypeError("model: expected an RNN, GRU or LSTM layer, or a sequence "
                        f"[layer, Linear], got {_describe(model)}")
    layer: _RNNBase = parts[0]
    op = layer._spec.layer
    for option, why in _REFUSED_OPTIONS.items():
        value = getattr(layer, option, None)
        if value:
            raise ValueError(f"{option}: {why.format(op=op)}, so a layer with "
                             f"{option}={value!r} cannot be exported (export one without it)")
    if head not in HEAD_STEPS:
        raise ValueError(f"head: expected one of {HEAD_STEPS}, got {head!r}")
    linear = parts[1] if len(parts) == 2 else None
    width = layer.num_directions * layer.hidden_size
    if linear is not None and linear.in_features != width:
        raise ValueError(f"model: the Linear head's in_features must be the layer's output "
                         f"width D*H = {width}, got {linear.in_features}")
    return _Model(layer, linear, head)


def to_onnx(model: Any, path: str | os.PathLike[str] | None = None, *,
            batch_first: bool | None = None, opset: int = DEFAULT_OPSET,
            initial_states: bool = False, sequence_lens: bool = False,
            head: str = "last") -> Any:
    """Export a recurrent layer (and a ``Linear`` head) as an ONNX model.

    Parameters
    ----------
    model : RNN, GRU or LSTM, or a sequence [layer, Linear]
        The layer: any ``num_layers``, ``bidirectional``, ``bias``, RNN
        ``nonlinearity``, both GRU forms (``linear_before_reset``, ONNX's
        attribute of that name), LSTM ``peephole`` (ONNX's ``P`` input).
        ``dropout`` acts only in training and is not exported.  With a
        ``Linear`` head (``in_features = D*H``) the graph also applies it,
        where ``head`` says.
    path : str or os.PathLike, optional
        Where to write the model (``onnx.save``); None writes nothing.
    batch_first : bool, optional
        ``x`` and ``y`` as ``(B, T, ...)``; None (default) takes the layer's
        own ``batch_first``.  The states stay ``(L*D, B, H)`` either way.
    opset : int, default 17
        The ONNX opset of the model, from 14 to the installed ``onnx``'s
        newest.  Its IR version is the oldest that carries the opset, so
        older runtimes load it.
    initial_states : bool, default False
        Add the graph inputs ``h0`` (and ``c0`` for the LSTM), float32
        ``(L*D, B, H)``; without them the states start at zero.
    sequence_lens : bool, default False
        Add the graph input ``sequence_lens``, int32 ``(B,)``, the
        ``lengths`` of the layer's call: steps past a sequence's length
        leave its state alone and give zero outputs (ONNX Runtime writes
        zeros there too).
    head : {"last", "all"}, default "last"
        With a ``Linear`` head: apply it to the last step's output
        ``y[T-1]`` (as fastcells' examples do; ``out (B, out_features)``)
        or to every step's (``out`` shaped like ``y`` with ``out_features``
        last).  Ignored without a head.

    Returns
    -------
    onnx.ModelProto
        A model that passes ``onnx.checker.check_model``.  Inputs: ``x``
        float32 ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), then
        ``h0``, ``c0``, ``sequence_lens`` when asked for; ``T`` and ``B`` are
        symbolic.  Outputs: ``y`` ``(T, B, D*H)`` (``(B, T, D*H)``), ``h``
        ``(L*D, B, H)``, for the LSTM ``c``, and with a head ``out``: the
        layer's call ``y, h = layer(x, h0, lengths=...)`` (``y, (h, c)``)
        and ``out = head(y[-1])`` (or ``head(y)``).

    Raises
    ------
    TypeError
        ``model`` is not a layer or ``[layer, Linear]``; ``batch_first``,
        ``initial_states`` or ``sequence_lens`` not a bool; ``opset`` not an
        integer; ``path`` not a path.
    ValueError
        An option ONNX's operators cannot express (``layer_norm``,
        ``proj_size``), naming it; a head whose ``in_features`` is not
        ``D*H``; ``head`` not "last" or "all"; ``opset`` out of range.
    ImportError
        ``onnx`` is not installed (``pip install fastcells[onnx]``).

    Notes
    -----
    Each ``RNN`` / ``GRU`` / ``LSTM`` node reads back with
    ``fastcells.interop.from_onnx`` (its ``W``, ``R``, ``B``, ``P``
    initializers and attributes) as layer ``0`` of a state dict; the head's
    weights are initializers ``head.weight`` (transposed) and ``head.bias``.

    Examples
    --------
    >>> import numpy as np, fastcells
    >>> lstm = fastcells.LSTM(3, 8, num_layers=2).eval()
    >>> proto = fastcells.interop.to_onnx([lstm, fastcells.Linear(8, 1)])  # doctest: +SKIP
    >>> import onnxruntime as ort                                           # doctest: +SKIP
    >>> sess = ort.InferenceSession(proto.SerializeToString())              # doctest: +SKIP
    >>> sess.run(["out"], {"x": np.zeros((5, 2, 3), np.float32)})[0].shape  # doctest: +SKIP
    (2, 1)
    """
    spec = _check_model(model, head)
    layer = spec.layer
    batch_first = layer.batch_first if batch_first is None else check_bool(
        "batch_first", batch_first)
    initial_states = check_bool("initial_states", initial_states)
    sequence_lens = check_bool("sequence_lens", sequence_lens)
    opset = check_int("opset", opset, MIN_OPSET)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected None, a str or an os.PathLike, got {_describe(path)}")
    try:
        import onnx
    except ImportError as error:
        raise ImportError("to_onnx needs the onnx package: pip install fastcells[onnx] "
                          "(or pip install onnx)") from error
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ValueError(f"opset: expected an integer from {MIN_OPSET} to {newest} (the installed "
                         f"onnx {onnx.__version__}'s newest), got {opset}")
    proto = _Graph(spec, batch_first, initial_states, sequence_lens).model(opset)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


class _Graph:
    """Builds the nodes, initializers and values of one exported model."""

    def __init__(self, spec: _Model, batch_first: bool, initial_states: bool,
                 sequence_lens: bool) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.spec = spec
        self.params = spec.layer.state_dict()
        self.batch_first, self.initial_states, self.lens = (batch_first, initial_states,
                                                            sequence_lens)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    # -- small builders ---------------------------------------------------------

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(value, name))
        return name

    def _node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def _time_major(self, name: str, out: str) -> str:
        """``name`` (B, T, .) as (T, B, .) when batch-first, else itself (and the reverse)."""
        if not self.batch_first:
            return name
        return self._node("Transpose", [name], out, perm=list(_SWAP_TB))

    # -- the recurrent nodes -------------------------------------------------------

    def _weights(self, k: int) -> list[str]:
        """Initializers W, R, B, P of layer ``k`` in ONNX's layout; "" for a missing input."""
        from .interop import _reorder_gates

        layer = self.spec.layer
        cell, H, D = layer._spec.name, layer.hidden_size, layer.num_directions
        sd = self.params
        sfx = [f"_l{k}" + ("_reverse" if d else "") for d in range(D)]

        def onnx_order(base: str, kind: str = cell) -> np.ndarray | None:
            if base + sfx[0] not in sd:
                return None
            return np.stack([_reorder_gates(sd[base + s], kind, H, "fastcells", "onnx")
                             for s in sfx])

        W, R = onnx_order("weight_ih"), onnx_order("weight_hh")
        b_ih, b_hh = onnx_order("bias_ih"), onnx_order("bias_hh")
        P = onnx_order("peephole", "peephole")
        assert W is not None and R is not None
        names = [self._const(f"W_l{k}", W), self._const(f"R_l{k}", R)]
        names.append("" if b_ih is None or b_hh is None else
                     self._const(f"B_l{k}", np.concatenate([b_ih, b_hh], axis=1)))
        return names + ["" if P is None else self._const(f"P_l{k}", P)]

    def _initial(self, name: str, k: int) -> str:
        """Layer ``k``'s rows of the initial-state input ``name`` (L*D, B, H), or ""."""
        layer = self.spec.layer
        if not self.initial_states:
            return ""
        if layer.num_layers == 1:
            return name
        D = layer.num_directions
        bounds = [self._const(f"{name}_l{k}_{end}", np.array([v], np.int64))
                  for end, v in (("start", k * D), ("end", (k + 1) * D), ("axis", 0))]
        return self._node("Slice", [name] + bounds, f"{name}_l{k}")

    def _empty_rows(self) -> str:
        """A bool (1, B, 1): the sequences of length 0 (made once)."""
        name = "empty_sequences"
        if not any(n.output[0] == name for n in self.nodes):
            zero = self._const("zero_length", np.array(0, np.int32))
            is_empty = self._node("Equal", [LENS, zero], "is_empty")
            axes = self._const("states_axes", np.array([0, 2], np.int64))
            self._node("Unsqueeze", [is_empty, axes], name)
        return name

    def _recurrent(self, k: int, x: str) -> tuple[str, list[str]]:
        """Layer ``k``'s node over the time-major ``x`` (T, B, in): its output
        (T, B, D*H) and its final states (D, B, H)."""
        layer = self.spec.layer
        cell, D = layer._spec.name, layer.num_directions
        W, R, B, P = self._weights(k)
        states = list(layer._spec.states)
        initial = [self._initial(name, k) for name in layer._state_names]
        inputs = [x, W, R, B, LENS if self.lens else ""] + initial
        if P:
            inputs.append(P)
        while inputs[-1] == "":        # trailing optional inputs are left out
            inputs.pop()
        attrs: dict[str, Any] = {"hidden_size": layer.hidden_size,
                                 "direction": "bidirectional" if D == 2 else "forward"}
        options = layer._options()          # the cell's own options of <cell>_forward
        if options.get("nonlinearity", "tanh") != "tanh":
            attrs["activations"] = [str(options["nonlinearity"]).capitalize()] * D
        if "linear_before_reset" in options:
            attrs["linear_before_reset"] = int(options["linear_before_reset"])
        y = f"Y_l{k}"
        finals = [f"Y_{s}_l{k}" for s in states]
        self.nodes.append(self.helper.make_node(layer._spec.layer, inputs, [y] + finals,
                                                name=f"{cell}_l{k}", **attrs))
        if self.lens and self.initial_states:
            # ONNX Runtime ends an empty sequence (length 0) in zeros, fastcells in
            # the initial state (as the design's empty work does): choose it here
            empty = self._empty_rows()
            finals = [self._node("Where", [empty, init, final], f"{final}_or_initial")
                      for init, final in zip(initial, finals)]
        side_by_side = self._node("Transpose", [y], f"{y}_directions_last",
                                  perm=list(_DIRECTIONS_LAST))
        # (T, B, D*H) spelled out: a -1 cannot be inferred when T = 0
        width = self._const(f"{y}_shape", np.array([0, 0, D * layer.hidden_size], np.int64))
        return self._node("Reshape", [side_by_side, width], f"{y}_TBDH"), finals

    # -- the model --------------------------------------------------------------------

    def model(self, opset: int) -> Any:
        """The ``ModelProto`` at ``opset``, with the oldest IR version that carries it."""
        from onnx import TensorProto

        helper, layer, head = self.helper, self.spec.layer, self.spec.head
        L, D, H, In = (layer.num_layers, layer.num_directions, layer.hidden_size,
                       layer.input_size)
        states = list(layer._spec.states)
        f32 = TensorProto.FLOAT
        time_batch = ["B", "T"] if self.batch_first else ["T", "B"]

        x = self._time_major(X, f"{X}_time_major")
        finals: list[list[str]] = [[] for _ in states]
        for k in range(L):
            x, node_finals = self._recurrent(k, x)
            for f, name in zip(finals, node_finals):
                f.append(name)
        y_tm = x
        outputs = [(self._time_major(y_tm, Y) if self.batch_first else
                    self._node("Identity", [y_tm], Y), time_batch + [D * H])]
        for s, names in zip(states, finals):
            if L > 1:
                self._node("Concat", names, s, axis=0)
            else:
                self._node("Identity", names, s)
            outputs.append((s, [L * D, "B", H]))
        if head is not None:
            outputs.append(self._head(head, y_tm, time_batch))

        inputs = [helper.make_tensor_value_info(X, f32, time_batch + [In])]
        if self.initial_states:
            inputs += [helper.make_tensor_value_info(name, f32, [L * D, "B", H])
                       for name in layer._state_names]
        if self.lens:
            inputs.append(helper.make_tensor_value_info(LENS, TensorProto.INT32, ["B"]))
        graph = helper.make_graph(
            self.nodes, f"fastcells_{layer._spec.name}", inputs,
            [helper.make_tensor_value_info(name, f32, shape) for name, shape in outputs],
            initializer=self.inits)
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="fastcells")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model

    def _head(self, head: Linear, y_tm: str, time_batch: list[Any]) -> tuple[str, list[Any]]:
        """The head's nodes over the time-major output ``y_tm``: (``out``, its shape)."""
        params = head.state_dict()
        inp, shape = y_tm, time_batch
        if self.spec.head_steps == "last":
            last = self._const("last_step", np.array(-1, np.int64))
            inp, shape = self._node("Gather", [y_tm, last], "y_last", axis=0), ["B"]
        weight = self._const("head.weight", np.ascontiguousarray(params["weight"].T))
        out = self._node("MatMul", [inp, weight], "head_matmul")
        if "bias" in params:
            out = self._node("Add", [out, self._const("head.bias", params["bias"])], "head_add")
        if self.spec.head_steps == "all" and self.batch_first:
            out = self._node("Transpose", [out], OUT, perm=list(_SWAP_TB))
        else:
            out = self._node("Identity", [out], OUT)
        return out, shape + [head.out_features]
