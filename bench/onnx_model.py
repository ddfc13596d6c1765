"""One-node ONNX models of a benchmark problem, built in memory with ``onnx.helper``.

ONNX stores the gates of ``W``, ``R`` and ``B`` in its own order (LSTM
``i, o, f, c``; GRU ``z, r, h``); the rows are reordered from fastcells'
(PyTorch's) order, read from the cell table and ``fastcells.interop``'s gate
layout table, never restated here.  A variable-length problem's model declares
the ``sequence_lens`` input (int32, ``(B,)``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fastcells import _cells
from fastcells.bench import Problem
from fastcells.interop import GATE_LAYOUT

#: the opset of the models; its IR version, which older runtimes require to be no newer
OPSET, IR_VERSION = 17, 8


def onnx_gate_order(cell: str) -> tuple[int, ...]:
    """ONNX's gate order for ``cell`` as indices of fastcells' gate blocks."""
    ours = _cells.GATE_ORDER[cell]
    return tuple(ours.index(g) for g in GATE_LAYOUT["onnx"][cell])


def state_inputs(p: Problem) -> list[str]:
    """The model's initial-state input names (``initial_h``, and ``initial_c`` for the LSTM)."""
    return [f"initial_{name}" for name in p.spec.states]


#: the name of the lengths input of a variable-length problem's model
SEQUENCE_LENS = "sequence_lens"


def feed(p: Problem) -> dict[str, np.ndarray]:
    """The inputs of ``p``'s model: ``X``, the initial states ``(1, B, H)`` and, for a
    variable-length problem, ``sequence_lens``."""
    inputs = {name: s[None] for name, s in zip(state_inputs(p), p.states())}
    inputs["X"] = p.x
    if p.lengths is not None:
        inputs[SEQUENCE_LENS] = p.lengths.astype(np.int32)
    return inputs


def model_bytes(p: Problem) -> bytes:
    """The serialized model of ``p``'s cell: weights as initializers; inputs ``X``,
    ``sequence_lens`` (a variable-length problem only) and the initial states;
    outputs ``Y`` ``(T, 1, B, H)`` and ``Y_h``."""
    from onnx import TensorProto, helper, numpy_helper

    H = p.shape.H
    order = onnx_gate_order(p.cell)

    def reorder(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[g * H:(g + 1) * H] for g in order])[None]

    inits = [numpy_helper.from_array(reorder(p.W_ih), "W"),
             numpy_helper.from_array(reorder(p.W_hh), "R"),
             numpy_helper.from_array(np.concatenate([reorder(p.b_ih), reorder(p.b_hh)], 1), "B")]
    states = state_inputs(p)
    attrs: dict[str, Any] = {"hidden_size": H}
    if "linear_before_reset" in p.spec.options:       # fastcells' default: PyTorch's GRU
        attrs["linear_before_reset"] = int(p.spec.options["linear_before_reset"])
    # ONNX names its operators as the layer classes are named: RNN, GRU, LSTM
    lens = [] if p.lengths is None else [
        helper.make_tensor_value_info(SEQUENCE_LENS, TensorProto.INT32, [p.shape.B])]
    node = helper.make_node(p.spec.layer, ["X", "W", "R", "B", SEQUENCE_LENS if lens else ""]
                            + states, ["Y", "Y_h"], **attrs)
    T, B, I = p.x.shape
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], f"fastcells_bench_{p.cell}",
        [helper.make_tensor_value_info("X", f32, [T, B, I])] + lens
        + [helper.make_tensor_value_info(s, f32, [1, B, H]) for s in states],
        [helper.make_tensor_value_info("Y", f32, [T, 1, B, H]),
         helper.make_tensor_value_info("Y_h", f32, [1, B, H])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model.SerializeToString()
