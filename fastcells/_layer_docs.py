"""The docstrings of the recurrent layers, built from one template per page.

``RNN``, ``GRU`` and ``LSTM`` share their API, so their ``help()`` pages
share their text: each page is a template here, filled in with the facts
of one cell (its equations, its own option, its state).  Every page stands
alone: nothing says "as for RNN".
"""
from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, TypeVar

from ._cells import CellSpec

F = TypeVar("F", bound=Callable[..., Any])

#: per cell: the summary line, the equations and the cell's own constructor option
_CELL_TEXT: dict[str, dict[str, str]] = {
    "rnn": {
        "summary": "Elman RNN layer, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, with "
                   "PyTorch's API (``torch.nn.RNN``).",
        "equations": "    h' = act(W_ih x + b_ih + W_hh h + b_hh),  act = tanh or relu",
        "option": """nonlinearity : {"tanh", "relu"}, default "tanh"
    The activation ``act``.""",
        "extra": "",
        "ln_equations": "``h' = act(LN(W_ih x) + LN(W_hh h) + b_ih + b_hh)``",
        "ln_c": "",
    },
    "gru": {
        "summary": "GRU layer (gates r, z, n, as PyTorch) with PyTorch's API (``torch.nn.GRU``).",
        "equations": """    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      linear_before_reset=True
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      linear_before_reset=False
    h' = (1 - z) * n + z * h""",
        "option": """linear_before_reset : bool, default True
    True: PyTorch, cuDNN and Keras ``reset_after=True`` (the reset gate
    multiplies ``W_hn h + b_hn``); False: Cho et al. 2014, ONNX's default and
    Keras ``reset_after=False`` (the reset gate multiplies ``h`` first).""",
        "extra": "",
        "ln_equations": "``a_i = LN(W_ih x) + b_ih`` and ``a_h = LN(W_hh h) + b_hh`` in "
                        "place of the two products, ``linear_before_reset=True`` only (the "
                        "other form with ``layer_norm`` raises ValueError)",
        "ln_c": "",
    },
    "lstm": {
        "summary": "LSTM layer (gates i, f, g, o, as PyTorch) with PyTorch's API "
                   "(``torch.nn.LSTM``).",
        "equations": """    i, f, g, o = W_ih x + b_ih + W_hh h + b_hh    (split in 4 blocks of H)
    i, f, o = sigmoid(i, f, o);  g = tanh(g)
    c' = f * c + i * g;  h' = o * tanh(c')""",
        "option": """proj_size : int, default 0
    LSTM with projection (Sak et al. 2014), as PyTorch's ``proj_size``:
    ``h' = W_hr (o * tanh(c'))`` with ``W_hr`` the parameter
    ``weight_hr_l{k}`` (suffix ``_reverse``) of shape (P, H), P =
    ``proj_size``, ``1 <= P < H``.  Then ``h``, ``y``, their gradients and
    the step's output have P values where the shapes below say H (``y``
    (T, B, D*P), ``h`` (num_layers*num_directions, B, P)), ``weight_hh_l{k}``
    is (4*H, P) and ``weight_ih_l{k}`` of layer k > 0 is (4*H, D*P); ``c``
    keeps H.  0 means no projection.  ONNX's LSTM operator has none, so
    ``fastcells.interop.to_onnx`` refuses such a layer.
peephole : bool, default False
    Add the parameters ``peephole_l{k}`` (suffix ``_reverse``) of shape
    (3*H,), in the order i, f, o (ONNX's P, oneDNN): i and f also see
    ``p_i * c`` and ``p_f * c`` of the previous cell state, o sees
    ``p_o * c'`` of the new one.  PyTorch has no such option.""",
        "extra": ", with ``proj_size=P``, ``weight_hr_l{k}`` (P, H) and, with "
                 "``peephole=True``, ``peephole_l{k}`` (3*H,)",
        "ln_equations": "``i, f, g, o`` from ``LN(W_ih x) + LN(W_hh h) + b_ih + b_hh`` "
                        "(the peephole terms after), ``c' = f * c + i * g`` carried as it "
                        "is, and ``h' = o * tanh(LN(c'))`` (PyTorch's ``custom_lstms."
                        "LayerNormLSTMCell`` and TF Addons' cell carry the normalized c "
                        "instead)",
        "ln_c": " and ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}`` (H,)",
    },
}

_CLASS = """{summary}

The cell, with x the input, h (and c) the state and W, b the parameters::

{equations}

Parameters
----------
input_size : int
    Features per time step of the input ``x`` (I), at least 1.
hidden_size : int
    Features of the hidden state (H), at least 1.
num_layers : int, default 1
    Stacked layers; layer k > 0 reads the outputs of layer k-1.
bias : bool, default True
    With False, the layer has no biases ``b_ih``, ``b_hh``.
batch_first : bool, default False
    ``x`` and ``y`` are (B, T, features) instead of (T, B, features).  The
    states stay (num_layers*num_directions, B, H), as in PyTorch.
dropout : float in [0, 1], default 0
    Dropout on the outputs of every layer but the last, in training mode
    only (the sequence call and :meth:`step`), as PyTorch: kept values are
    scaled by 1/(1-dropout).  It does nothing with ``num_layers=1`` (a
    warning says so).
bidirectional : bool, default False
    Add a reverse direction to every layer; its outputs are concatenated
    after the forward direction's (D = 2 directions, outputs D*H wide).
{option}
layer_norm : bool, default False
    Layer normalization (Ba et al. 2016), ``LN(v) = (v - mean(v)) /
    sqrt(var(v) + eps) * gain + bias`` over each row of G*H values (population
    variance): {ln_equations}.  Adds the parameters ``ln_ih_weight_l{{k}}``,
    ``ln_ih_bias_l{{k}}``, ``ln_hh_weight_l{{k}}``, ``ln_hh_bias_l{{k}}`` (G*H,){ln_c}
    (suffix ``_reverse``), gains initialised to 1 and biases to 0.
layer_norm_eps : float, default 1e-5
    The ``eps`` of every normalization, finite and > 0.
seed : int or numpy.random.Generator, optional
    Seeds the initialisation (PyTorch's default: every parameter
    ~ U(-1/sqrt(H), 1/sqrt(H))) and then the dropout masks, so seeded runs
    repeat exactly.
backend : module, optional
    None (the default) runs the compiled kernels of ``fastcells.functional``
    in float32; ``fastcells.reference`` runs the NumPy oracle in the
    input's precision (float64 for checks).

Attributes
----------
grads : dict of str to float32 array
    Accumulated parameter gradients (the keys and shapes of
    :meth:`state_dict`); :meth:`backward` adds to them, :meth:`zero_grad`
    clears them.
training : bool
    Training mode (the default) keeps what :meth:`backward` needs and
    applies dropout; :meth:`eval` turns both off.
step_weight_dtype : {{"float32", "float16"}}
    The weights :meth:`step` multiplies by.

Notes
-----
Call: ``{call}``, with ``lengths=`` (an int array (B,)) for sequences of
different lengths; ``{backward_call}`` after a call in training mode;
``{step_call}`` for streaming, one time step at a time.

Shapes and dtypes: ``x`` is (T, B, input_size), or (B, T, input_size) with
``batch_first``, of any real floating dtype (converted to float32; integer,
bool and complex arrays raise ``TypeError``).  ``y`` is float32
(T, B, D*H) (batch_first: (B, T, D*H)); each state is float32
(num_layers*num_directions, B, H), index ``layer * D + direction``.

Parameters are named and shaped as PyTorch's (G = {G} gates, in the order
{gates}): ``weight_ih_l{{k}}`` (G*H, input_size for k = 0, else D*H),
``weight_hh_l{{k}}`` (G*H, H), ``bias_ih_l{{k}}`` and ``bias_hh_l{{k}}``
(G*H,){extra}, with the suffix ``_reverse`` for the reverse direction.
:meth:`state_dict` and :meth:`load_state_dict` exchange them with PyTorch.

Threads: a large call splits over up to ``fastcells.get_num_threads()``
threads (by batch rows; the same bits at any count); the kernels release the
GIL, so several Python threads can run layers (or one layer's :meth:`step` on
separate states) at the same time.  Do not call :meth:`backward` of one
layer from two threads at once: it adds to the same ``grads``.

Examples
--------
>>> import numpy as np, fastcells
>>> {name} = fastcells.{layer}(input_size=8, hidden_size=16, num_layers=2, seed=0)
>>> x = np.zeros((5, 3, 8), np.float32)                # (T, B, input_size)
>>> {call_example}
>>> y.shape
(5, 3, 16)
"""

_FORWARD = """Run the layer over a batch of sequences: ``{call}``.

Parameters
----------
x : array (T, B, input_size), or (B, T, input_size) with ``batch_first``
    Real floats, converted to float32 (integer input raises ``TypeError``).
{state_param}
lengths : int array (B,), optional
    Valid steps per sequence, ``0 <= lengths[b] <= T`` (as PyTorch's packed
    sequences): outputs past a sequence's end are zeros, its final state is
    the state after its last valid step, and the reverse direction starts
    there.

Returns
-------
y : float32 array (T, B, D*H), or (B, T, D*H) with ``batch_first``
    Outputs of the last layer, ``[forward, reverse]`` concatenated when
    bidirectional (D = 2).
{state_return}

Raises
------
ValueError
    A shape that does not fit (the message gives the expected layout, with
    ``batch_first``), or ``lengths`` out of range.
TypeError
    A non-floating ``x`` or state, or a state of the wrong kind.

Notes
-----
In training mode (the default) the call keeps what :meth:`backward` needs
and applies dropout between layers; in eval mode it keeps nothing.  A large
call splits over fastcells' threads (``fastcells.set_num_threads``), with the
GIL released.

Truncated BPTT over stateful chunks: pass the previous chunk's final state
as ``hx`` (a new array the layer never writes; ``.copy()`` it if you change
it), then call :meth:`backward` for this chunk and ignore the initial-state
gradient it returns: the gradient stops at the chunk boundary.
"""

_BACKWARD = """Backpropagate through the last call made in training mode: ``{backward_call}``.

Parameters
----------
dy : array shaped like the output ``y``, optional
    Gradient of the loss with respect to ``y``, (T, B, D*H) or (B, T, D*H)
    with ``batch_first``; zeros if None.
{grad_param}

Returns
-------
dx : float32 array shaped like ``x``
    Gradient with respect to the input.
{grad_return}

Raises
------
RuntimeError
    No call in training mode was made (eval mode and :meth:`step` keep
    nothing).
ValueError
    A gradient whose shape does not match the last call's outputs.

Notes
-----
The parameter gradients are *added* to ``grads`` (call :meth:`zero_grad`
between updates).  What the call kept is not consumed, so backward can be
run again on the same call.  With truncated BPTT, do not propagate the
initial-state gradient further.
"""

_STEP = """Advance one time step for a batch (streaming): ``{step_call}``.

Gives the numbers of the sequence call on a one-step sequence and keeps
nothing for :meth:`backward`.  In training mode with ``dropout > 0`` it
applies dropout between layers exactly as the sequence call does (as
PyTorch's layer called on a one-step sequence): the masks come from the
same generator, so a step and a one-step call made from the same seed give
the same numbers; in eval mode no dropout is applied (call :meth:`eval`
for inference).

The weights are prepared (checked, packed, biases folded, one
:class:`fastcells.Stepper` per layer) at the first step and reused; they
are prepared again after :meth:`load_state_dict`, an optimizer's ``step()``
or :meth:`parameters_changed` (call it after editing the arrays of
:meth:`parameters` yourself), and after ``step_weight_dtype`` is set.

Parameters
----------
x_t : array (B, input_size)
    One time step of the input, real floats (converted to float32).
{step_state_param}

Returns
-------
y_t : float32 array (B, H)
    Output of the last layer at this step.
{step_state_return}

Raises
------
ValueError
    A bidirectional layer (its reverse direction needs the whole sequence),
    or a shape that does not fit.
TypeError
    A non-floating input or state, or a state of the wrong kind.

Notes
-----
One step runs on one thread with the GIL released: several Python threads
may step the same layer on separate states at once.
"""

#: per state kind count: (forward state parameter, forward state return,
#: backward gradient parameter, backward gradient return, step state, step return)
_ONE_STATE = {
    "state_param": """hx : array (num_layers*num_directions, B, H), optional
    Initial hidden state ``h0``, real floats; zeros if None.  One array:
    the pair ``(h0, c0)`` is an LSTM's state.""",
    "state_return": """h : float32 array (num_layers*num_directions, B, H)
    Final hidden states, index ``layer * D + direction``.""",
    "grad_param": """dh : array (num_layers*num_directions, B, H), optional
    Gradient with respect to the final state ``h``; zeros if None.""",
    "grad_return": """dh0 : float32 array (num_layers*num_directions, B, H)
    Gradient with respect to the initial state ``h0``.""",
    "step_state_param": """state : array (num_layers, B, H), optional
    The state returned by the previous step; zeros if None.""",
    "step_state_return": """state : float32 array (num_layers, B, H)
    The new state, a new array, to pass to the next step.""",
}
_TWO_STATES = {
    "state_param": """hx : pair (h0, c0) of arrays (num_layers*num_directions, B, H), optional
    Initial hidden and cell states, real floats; zeros if None, and either
    of the two may be None for zeros.  With ``proj_size=P``, ``h0`` is
    (num_layers*num_directions, B, P), and ``y`` below (T, B, D*P).""",
    "state_return": """(h, c) : pair of float32 arrays (num_layers*num_directions, B, H)
    Final hidden and cell states, index ``layer * D + direction`` (``h`` of
    P values with ``proj_size=P``).""",
    "grad_param": """dh : pair (dh_n, dc_n) of arrays (num_layers*num_directions, B, H), optional
    Gradients with respect to the final states ``h`` and ``c``; zeros if
    None, and either of the two may be None for zeros.  With
    ``proj_size=P``, ``dh_n`` is (num_layers*num_directions, B, P) and ``dy``
    above (T, B, D*P).""",
    "grad_return": """(dh0, dc0) : pair of float32 arrays (num_layers*num_directions, B, H)
    Gradients with respect to the initial states ``h0`` and ``c0``.""",
    "step_state_param": """state : pair (h, c) of arrays (num_layers, B, H), optional
    The state returned by the previous step; zeros if None.  With
    ``proj_size=P``, ``h`` is (num_layers, B, P) and ``y_t`` below (B, P).""",
    "step_state_return": """state : pair (h, c) of float32 arrays (num_layers, B, H)
    The new state, new arrays, to pass to the next step.""",
}


def _facts(spec: CellSpec) -> dict[str, Any]:
    name = spec.name
    if spec.has_cell_state:
        calls = {"call": f"y, (h, c) = {name}(x, (h0, c0), lengths=None)",
                 "call_example": f"y, (h, c) = {name}(x)",
                 "backward_call": f"dx, (dh0, dc0) = {name}.backward(dy, (dh_n, dc_n))",
                 "step_call": f"y_t, (h, c) = {name}.step(x_t, (h, c))"}
        states = _TWO_STATES
    else:
        calls = {"call": f"y, h = {name}(x, h0, lengths=None)",
                 "call_example": f"y, h = {name}(x)",
                 "backward_call": f"dx, dh0 = {name}.backward(dy, dh_n)",
                 "step_call": f"y_t, h = {name}.step(x_t, h)"}
        states = _ONE_STATE
    return {"name": name, "layer": spec.layer, "G": spec.G, "gates": ", ".join(spec.gates),
            **_CELL_TEXT[name], **calls, **states}


def class_doc(spec: CellSpec) -> str:
    """The class docstring of ``spec``'s layer."""
    return _CLASS.format(**_facts(spec))


#: the recurrent layers' methods whose page depends on the cell
METHOD_DOCS = {"forward": _FORWARD, "backward": _BACKWARD, "step": _STEP}


def method_doc(method: str, spec: CellSpec) -> str:
    """The docstring of ``method`` (a key of :data:`METHOD_DOCS`) for ``spec``'s layer."""
    return METHOD_DOCS[method].format(**_facts(spec))


def documented(func: F, doc: str, owner: type) -> F:
    """A copy of the function ``func`` with the docstring ``doc``, as a method of ``owner``.

    The copy shares ``func``'s code (no wrapper, no cost per call), so each
    layer class shows its own page in ``help()``.
    """
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__,
                              func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__annotations__ = dict(func.__annotations__)
    copy.__module__ = func.__module__
    copy.__qualname__ = f"{owner.__name__}.{func.__name__}"
    copy.__doc__ = doc
    return copy  # type: ignore[return-value]
