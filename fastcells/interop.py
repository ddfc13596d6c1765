"""Weights from ONNX and Keras, converted to fastcells' (PyTorch's) layout; models to ONNX.

Frameworks agree on the cell equations but not on how the gates are stacked
in the weight matrices, nor on which way round the matrices are.  Everything
that differs is in one table, :data:`GATE_LAYOUT`, read by every converter:
a converter transposes to ``(gates*H, in)`` rows, then reorders the gate
blocks from the framework's order to ours with :func:`_to_fastcells_order`.

A PyTorch module's ``state_dict()`` needs no conversion: it loads as it is,
that of ``torch.nn.LSTM(..., proj_size=P)`` (``weight_hr_l{k}``) into
``fastcells.LSTM(..., proj_size=P)``.  ONNX's and Keras' LSTMs have no
projection: their converted weights load into an LSTM with ``proj_size=0``
(``load_state_dict`` of a layer with a projection says so), and
:func:`to_onnx` refuses a layer with one.

The other way, :func:`to_onnx` (built in ``fastcells._onnx_export``) writes a
layer, or a layer and its ``Linear`` head, as an ONNX model whose recurrent
nodes :func:`from_onnx` reads back.

Each converter returns a :class:`StateDict`: a plain ``dict`` of PyTorch-named
arrays that also carries, as ``.options``, the :class:`RunOptions` the weights
must be run with (GRU form, RNN nonlinearity, direction, batch layout).  The
options travel with the weights because running them with the wrong options
(say a Keras ``reset_after=False`` GRU with ``linear_before_reset=True``)
gives plausible but wrong numbers, with no error to point at the mistake.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._cells import GATE_ORDER, GATES, NONLINEARITIES
from ._checks import _to_array, check_bool, to_numpy
from ._onnx_export import to_onnx

__all__ = ["from_onnx", "from_keras", "to_onnx", "StateDict", "RunOptions", "GATE_LAYOUT"]

#: a framework's gate layout: per cell (and ``"peephole"``) the gate names in
#: the order of its weight blocks
Layout = dict[str, tuple[str, ...]]

#: Gate order of the weight blocks in each framework, in fastcells' gate names
#: (rnn h; gru r, z, n; lstm i, f, g, o).  ONNX calls LSTM's g "c" and GRU's n
#: "h"; Keras calls LSTM's g "c" and GRU's n "h".  The entry ``"peephole"`` is
#: the order of the three peephole vectors.  fastcells' own entry is the cell
#: table's (``fastcells._cells.GATE_ORDER``); the foreign ones are interop's.
GATE_LAYOUT: dict[str, Layout] = {
    "fastcells": {**GATE_ORDER, "peephole": ("i", "f", "o")},
    "onnx": {"rnn": ("h",), "gru": ("z", "r", "n"), "lstm": ("i", "o", "f", "g"),
             "peephole": ("i", "o", "f")},
    "keras": {"rnn": ("h",), "gru": ("z", "r", "n"), "lstm": ("i", "f", "g", "o")},
}

_ONNX_CELLS = {"RNN": "rnn", "GRU": "gru", "LSTM": "lstm"}
_KERAS_CELLS = {"SimpleRNN": "rnn", "GRU": "gru", "LSTM": "lstm"}
#: ONNX default activations per direction (the operator's spec)
_ONNX_DEFAULT_ACTIVATIONS = {
    "rnn": ("Tanh",), "gru": ("Sigmoid", "Tanh"), "lstm": ("Sigmoid", "Tanh", "Tanh"),
}
#: attributes each ONNX operator defines besides those every one has
_ONNX_OWN_ATTRIBUTES = {"rnn": (), "gru": ("linear_before_reset",), "lstm": ("input_forget",)}
_ONNX_COMMON_ATTRIBUTES = ("hidden_size", "direction", "activations", "activation_alpha",
                           "activation_beta", "clip", "layout")


@dataclass(frozen=True)
class RunOptions:
    """How converted weights must be run.

    Attributes
    ----------
    cell : {"rnn", "gru", "lstm"}
        The cell: the weights run with ``fastcells.<cell>_forward`` or the
        layer ``fastcells.RNN`` / ``GRU`` / ``LSTM``.
    input_size, hidden_size : int
        ``I`` and ``H`` of the weights.
    bidirectional : bool
        Two directions: keys ``*_l0`` (forward) and ``*_l0_reverse``.
    reverse : bool
        One direction that runs from the last step to the first (ONNX
        ``direction="reverse"``): the keys are ``*_l0`` and the weights must
        be run with ``reverse=True`` in the functional API.  The layers have
        no such option, so :meth:`layer_kwargs` refuses it.
    batch_first : bool
        ONNX ``layout=1``: inputs and outputs are ``(B, T, ...)``.
    linear_before_reset : bool
        GRU form (ONNX ``linear_before_reset``, Keras ``reset_after``).
    nonlinearity : {"tanh", "relu"}
        RNN activation.
    peephole : bool
        LSTM peepholes were given (key ``peephole_l0``).
    """

    cell: str
    input_size: int
    hidden_size: int
    bidirectional: bool = False
    reverse: bool = False
    batch_first: bool = False
    linear_before_reset: bool = True
    nonlinearity: str = "tanh"
    peephole: bool = False

    def functional_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``fastcells.<cell>_forward`` (one direction).

        Returns
        -------
        dict
            ``reverse``, and the cell's own option: ``nonlinearity`` (RNN) or
            ``linear_before_reset`` (GRU).
        """
        kw: dict[str, Any] = {"reverse": self.reverse}
        if self.cell == "rnn":
            kw["nonlinearity"] = self.nonlinearity
        elif self.cell == "gru":
            kw["linear_before_reset"] = self.linear_before_reset
        return kw

    def layer_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for ``fastcells.RNN`` / ``GRU`` / ``LSTM``.

        Returns
        -------
        dict
            ``input_size``, ``hidden_size``, ``bidirectional``,
            ``batch_first``, and ``nonlinearity`` (RNN),
            ``linear_before_reset`` (GRU) or ``peephole=True`` (an LSTM with
            peepholes).

        Raises
        ------
        ValueError
            For a single reverse direction, which the layers cannot express
            (use the functional API with ``reverse=True``).
        """
        if self.reverse:
            raise ValueError(
                "direction: a single reverse direction has no layer equivalent; run the "
                "weights with fastcells.<cell>_forward(..., reverse=True)")
        kw: dict[str, Any] = {"input_size": self.input_size, "hidden_size": self.hidden_size,
                    "bidirectional": self.bidirectional, "batch_first": self.batch_first}
        if self.cell == "rnn":
            kw["nonlinearity"] = self.nonlinearity
        elif self.cell == "gru":
            kw["linear_before_reset"] = self.linear_before_reset
        elif self.peephole:
            kw["peephole"] = True
        return kw


class StateDict(dict[str, np.ndarray]):
    """A state dict (``dict`` of PyTorch-named arrays) with its :class:`RunOptions`.

    It is an ordinary ``dict`` for every other purpose (``load_state_dict``
    takes it as it is); ``dict(sd)`` drops ``.options``.

    Parameters
    ----------
    arrays : dict of str to array
        The weights by PyTorch's names (``weight_ih_l0``, ...).
    options : RunOptions
        How the weights must be run; kept as ``.options``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], options: RunOptions) -> None:
        super().__init__(arrays)
        self.options = options

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.shape}" for k, v in self.items())
        return f"StateDict({{{shapes}}}, options={self.options!r})"


# ----------------------------------------------------------------------------
# the one reordering rule


def _reorder_gates(a: np.ndarray, cell: str, H: int, source: str, target: str) -> np.ndarray:
    """Reorder the gate blocks of axis 0 of ``a`` ((G*H, ...)) from ``source``'s order
    to ``target``'s (framework names of :data:`GATE_LAYOUT`; ``cell`` may be
    ``"peephole"``); a new C-contiguous array."""
    src = GATE_LAYOUT[source][cell]
    dst = GATE_LAYOUT[target][cell]
    blocks = a.reshape((len(src), H) + a.shape[1:])
    return np.ascontiguousarray(blocks[[src.index(g) for g in dst]].reshape(a.shape))


def _to_fastcells_order(a: np.ndarray, source: str, cell: str, H: int) -> np.ndarray:
    """Reorder the gate blocks of axis 0 of ``a`` ((G*H, ...) in ``source``'s order)."""
    return _reorder_gates(a, cell, H, source, "fastcells")


def _float_array(name: str, a: Any) -> np.ndarray:
    """A real floating array (dtype kept) from an array, list or framework tensor;
    ``TypeError`` naming ``name`` for anything else."""
    # lists go to _to_array as they are, which names the argument when NumPy
    # cannot convert them (ragged lists)
    return _to_array(name, a if isinstance(a, (list, tuple)) else to_numpy(a))


def _expect_shape(name: str, a: np.ndarray, symbols: str, shape: tuple[int, ...]) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {symbols} = {shape}, got {a.shape}")


def _name(attr: str, value: Any) -> Any:
    """ONNX string attributes arrive as bytes from onnx.helper.get_attribute_value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_name(attr, v) for v in value]
    return value


# ----------------------------------------------------------------------------
# ONNX


def _onnx_nonlinearity(cell: str, activations: Any, num_directions: int) -> str:
    """Check ``activations`` against what the kernels compute; RNN's picks tanh or relu."""
    default = _ONNX_DEFAULT_ACTIVATIONS[cell]
    if activations is None or len(activations) == 0:
        return "tanh"
    acts = [str(a) for a in _name("activations", activations)]
    per_dir = len(default)
    if len(acts) not in (per_dir, per_dir * num_directions):
        raise ValueError(
            f"activations: expected {per_dir} names per direction ({per_dir * num_directions} "
            f"for {num_directions} direction(s)), got {len(acts)}: {acts}")
    if len(acts) == per_dir:
        acts = acts * num_directions
    if cell == "rnn":
        kinds = {a.lower() for a in acts}
        if len(kinds) == 1 and kinds <= set(NONLINEARITIES):
            return kinds.pop()
        raise ValueError(
            "activations: RNN supports 'Tanh' or 'Relu', the same for every direction, "
            f"got {acts}")
    for k, a in enumerate(acts):
        if a.lower() != default[k % per_dir].lower():
            raise ValueError(
                f"activations: {cell.upper()} supports only the default activations "
                f"{list(default)} per direction, got {acts}")
    return "tanh"


def from_onnx(op_type: str, W: Any, R: Any, B: Any = None, P: Any = None,
              **attributes: Any) -> StateDict:
    """Convert the inputs of an ONNX ``RNN``/``GRU``/``LSTM`` node to a state dict.

    Parameters
    ----------
    op_type : {"RNN", "GRU", "LSTM"}
        The node's operator.
    W : array (num_directions, G*H, I)
        Input weights, gates in ONNX order (LSTM i, o, f, c; GRU z, r, h).
    R : array (num_directions, G*H, H)
        Recurrent weights, same order.
    B : array (num_directions, 2*G*H), optional
        ``[Wb, Rb]`` concatenated; zeros when missing.
    P : array (num_directions, 3*H), optional
        LSTM peepholes in ONNX order i, o, f.
    **attributes
        The node's attributes: ``hidden_size``, ``direction`` ("forward",
        "reverse", "bidirectional"), ``linear_before_reset`` (GRU),
        ``activations``, ``activation_alpha``, ``activation_beta``, ``clip``,
        ``input_forget`` (LSTM), ``layout``.  Strings may be ``bytes`` as
        ``onnx.helper.get_attribute_value`` returns them.

    Returns
    -------
    StateDict
        ``weight_ih_l0 (G*H, I)``, ``weight_hh_l0 (G*H, H)``, ``bias_ih_l0``,
        ``bias_hh_l0 (G*H,)``, and for LSTM with ``P`` ``peephole_l0 (3*H,)``
        in order i, f, o; the same with suffix ``_reverse`` for the second
        direction of a bidirectional node.  A node with
        ``direction="reverse"`` gives ``*_l0`` keys and ``options.reverse``:
        run it with ``reverse=True``.  Arrays keep their floating dtype.
        ``.options`` (:class:`RunOptions`) says how to run them.

    Raises
    ------
    ValueError
        A shape that does not fit, or an attribute value the kernels do not
        compute (a ``clip``, ``input_forget=1``, activations other than the
        defaults, except RNN's "Relu"), naming the attribute.
    TypeError
        An unknown ``op_type`` or an attribute the operator does not define.
    """
    if op_type not in _ONNX_CELLS:
        raise TypeError(f"op_type: expected one of {tuple(_ONNX_CELLS)}, got {op_type!r}")
    cell = _ONNX_CELLS[op_type]
    known = _ONNX_COMMON_ATTRIBUTES + _ONNX_OWN_ATTRIBUTES[cell]
    for attr in attributes:
        if attr not in known:
            raise TypeError(f"{attr}: not an attribute of ONNX {op_type} "
                            f"(expected some of {known})")
    G = GATES[cell]

    direction = _name("direction", attributes.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError("direction: expected 'forward', 'reverse' or 'bidirectional', "
                         f"got {direction!r}")
    D = 2 if direction == "bidirectional" else 1
    if attributes.get("clip") is not None:
        raise ValueError(f"clip: cell clipping is not supported, got clip={attributes['clip']!r} "
                         "(remove the attribute to run without clipping)")
    if int(attributes.get("input_forget", 0) or 0) != 0:
        raise ValueError(f"input_forget: only 0 is supported (independent input and forget "
                         f"gates), got {attributes['input_forget']!r}")
    layout = int(attributes.get("layout", 0) or 0)
    if layout not in (0, 1):
        raise ValueError(f"layout: expected 0 (time-major) or 1 (batch-major), got {layout}")
    lbr = int(attributes.get("linear_before_reset", 0) or 0)
    if lbr not in (0, 1):
        raise ValueError(f"linear_before_reset: expected 0 or 1, got {lbr}")
    # activation_alpha/beta only parameterise activations we refuse anyway
    # (LeakyRelu, Affine, ...): with the supported ones they change nothing.
    nonlinearity = _onnx_nonlinearity(cell, attributes.get("activations"), D)

    W = _float_array("W", W)
    R = _float_array("R", R)
    if W.ndim != 3:
        raise ValueError(f"W: expected shape (num_directions, {G}*H, I), got {W.shape}")
    if R.ndim != 3:
        raise ValueError(f"R: expected shape (num_directions, {G}*H, H), got {R.shape}")
    H = R.shape[2]
    if attributes.get("hidden_size") is not None and int(attributes["hidden_size"]) != H:
        raise ValueError(f"hidden_size: attribute says {int(attributes['hidden_size'])}, but R "
                         f"of shape {R.shape} has H = {H}")
    I = W.shape[2]
    _expect_shape("R", R, f"(num_directions, {G}*H, H) for direction={direction!r}", (D, G * H, H))
    _expect_shape("W", W, f"(num_directions, {G}*H, I) for direction={direction!r}", (D, G * H, I))
    if B is not None:
        B = _float_array("B", B)
        _expect_shape("B", B, f"(num_directions, 2*{G}*H)", (D, 2 * G * H))
    if P is not None:
        if cell != "lstm":
            raise TypeError(f"P: peepholes exist only for LSTM, got P for {op_type}")
        P = _float_array("P", P)
        _expect_shape("P", P, "(num_directions, 3*H)", (D, 3 * H))

    out = {}
    for d in range(D):
        sfx = "_l0_reverse" if d == 1 else "_l0"
        out["weight_ih" + sfx] = _to_fastcells_order(W[d], "onnx", cell, H)
        out["weight_hh" + sfx] = _to_fastcells_order(R[d], "onnx", cell, H)
        if B is None:
            zeros = np.zeros(G * H, np.result_type(W, R))
            out["bias_ih" + sfx], out["bias_hh" + sfx] = zeros, zeros.copy()
        else:
            out["bias_ih" + sfx] = _to_fastcells_order(B[d, :G * H], "onnx", cell, H)
            out["bias_hh" + sfx] = _to_fastcells_order(B[d, G * H:], "onnx", cell, H)
        if P is not None:
            out["peephole" + sfx] = _to_fastcells_order(P[d], "onnx", "peephole", H)
    options = RunOptions(cell=cell, input_size=I, hidden_size=H, bidirectional=D == 2,
                         reverse=direction == "reverse", batch_first=layout == 1,
                         linear_before_reset=bool(lbr) if cell == "gru" else True,
                         nonlinearity=nonlinearity, peephole=P is not None)
    return StateDict(out, options)


# ----------------------------------------------------------------------------
# Keras


#: the Keras activations the kernels compute (Keras names the RNN's as we do)
_KERAS_ACTIVATIONS = {"activation": NONLINEARITIES, "recurrent_activation": ("sigmoid",)}


def from_keras(kind: str, kernel: Any, recurrent_kernel: Any, bias: Any = None,
               reset_after: bool = True, *, activation: str = "tanh",
               recurrent_activation: str = "sigmoid") -> StateDict:
    """Convert the weights of a Keras ``LSTM``/``GRU``/``SimpleRNN`` layer to a state dict.

    Pass the arrays of ``layer.get_weights()`` (in that order) and the
    layer's configuration.

    Parameters
    ----------
    kind : {"LSTM", "GRU", "SimpleRNN"}
        The Keras class name.
    kernel : array (I, G*H)
        Input weights, transposed with respect to ours; gates in Keras order
        (LSTM i, f, c, o; GRU z, r, h).
    recurrent_kernel : array (H, G*H)
        Recurrent weights, transposed with respect to ours; same gate order.
    bias : array, optional
        ``(G*H,)``; for a GRU with ``reset_after=True`` ``(2, 3*H)`` holding
        the input and the recurrent bias.  None (``use_bias=False``) gives
        zero biases.
    reset_after : bool
        GRU only: Keras' ``reset_after``; ``False`` maps to
        ``linear_before_reset=False`` (see ``.options``).
    activation : {"tanh", "relu"}
        Keras' ``activation``; "relu" only for SimpleRNN.
    recurrent_activation : {"sigmoid"}
        Keras' ``recurrent_activation`` (LSTM, GRU).  Old Keras defaulted to
        "hard_sigmoid", which the kernels do not compute: it is refused.

    Returns
    -------
    StateDict
        ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``;
        Keras' single bias becomes ``bias_ih_l0`` with ``bias_hh_l0 = 0``.
        A layer with ``go_backwards=True`` is these weights run with
        ``reverse=True``; a ``Bidirectional`` wrapper is two conversions, the
        backward one renamed with suffix ``_reverse``.  Arrays keep their
        floating dtype; ``.options`` (:class:`RunOptions`) says how to run them.

    Raises
    ------
    TypeError
        An unknown ``kind``, ``reset_after`` not a bool, or weights that are
        not real floating point, naming the argument.
    ValueError
        A shape that does not fit, or an activation the kernels do not
        compute, naming the argument.
    """
    if kind not in _KERAS_CELLS:
        raise TypeError(f"kind: expected one of {tuple(_KERAS_CELLS)}, got {kind!r}")
    cell = _KERAS_CELLS[kind]
    G = GATES[cell]
    if activation not in _KERAS_ACTIVATIONS["activation"] or (
            activation == "relu" and cell != "rnn"):
        expected = "'tanh' or 'relu'" if cell == "rnn" else "'tanh'"
        raise ValueError(f"activation: expected {expected} for {kind}, got {activation!r}")
    if cell != "rnn" and recurrent_activation not in _KERAS_ACTIVATIONS["recurrent_activation"]:
        raise ValueError(f"recurrent_activation: expected 'sigmoid', got {recurrent_activation!r}")
    reset_after = check_bool("reset_after", reset_after)

    kernel = _float_array("kernel", kernel)
    recurrent_kernel = _float_array("recurrent_kernel", recurrent_kernel)
    if recurrent_kernel.ndim != 2:
        raise ValueError(f"recurrent_kernel: expected shape (H, {G}*H), "
                         f"got {recurrent_kernel.shape}")
    H = recurrent_kernel.shape[0]
    _expect_shape("recurrent_kernel", recurrent_kernel, f"(H, {G}*H)", (H, G * H))
    if kernel.ndim != 2:
        raise ValueError(f"kernel: expected shape (I, {G}*H) = (I, {G * H}), got {kernel.shape}")
    I = kernel.shape[0]
    _expect_shape("kernel", kernel, f"(I, {G}*H)", (I, G * H))

    dtype = np.result_type(kernel, recurrent_kernel)
    two_biases = cell == "gru" and reset_after
    if bias is None:
        b_ih, b_hh = np.zeros(G * H, dtype), np.zeros(G * H, dtype)
    else:
        bias = _float_array("bias", bias)
        if two_biases:
            _expect_shape("bias", bias, "(2, 3*H) for reset_after=True", (2, G * H))
            b_ih, b_hh = bias[0], bias[1]
        else:
            what = "(3*H,) for reset_after=False" if cell == "gru" else f"({G}*H,)"
            _expect_shape("bias", bias, what, (G * H,))
            b_ih, b_hh = bias, np.zeros(G * H, bias.dtype)

    out = {
        "weight_ih_l0": _to_fastcells_order(kernel.T, "keras", cell, H),
        "weight_hh_l0": _to_fastcells_order(recurrent_kernel.T, "keras", cell, H),
        "bias_ih_l0": _to_fastcells_order(b_ih, "keras", cell, H),
        "bias_hh_l0": _to_fastcells_order(b_hh, "keras", cell, H),
    }
    options = RunOptions(cell=cell, input_size=I, hidden_size=H,
                         linear_before_reset=reset_after if cell == "gru" else True,
                         nonlinearity=activation if cell == "rnn" else "tanh")
    return StateDict(out, options)
