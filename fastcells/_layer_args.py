"""Argument and state handling of the recurrent layers.

The layers check what is theirs to check (the layout ``batch_first`` gives a
sequence, the pairing of states, the stacked state shape) and leave the rest
to ``functional``.  Every message speaks of the arguments as the caller
passed them: a ``batch_first`` sequence is reported as (B, T, features),
never in the time-major layout the layer runs internally, and a state of
the wrong kind (``(h0, c0)`` to a GRU, a bare ``h0`` to an LSTM) says so.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._cells import CellSpec
from ._checks import as_float, check_int, check_shape, float_dtype, is_f32c, to_numpy

F32 = np.float32
Array = np.ndarray

#: how error messages name the stacked state axes (the last one: the state's width symbol)
STATE_SYMBOLS = ("num_layers*num_directions", "B")
#: one state kind's width: its symbol in messages and its size (``("H", 16)``, or ``("P", 4)``
#: for the ``h`` of an LSTM with projection)
Width = tuple[str, int]


def compute_dtype(compiled: bool, arr: Any) -> np.dtype:
    """float32 for the kernels; another backend (the reference) keeps the input's precision."""
    return np.dtype(F32) if compiled else float_dtype(arr)


def check_proj_size(proj_size: Any, hidden_size: Any) -> int:
    """An LSTM's ``proj_size`` as an int: 0 (no projection) or ``1 <= P < hidden_size``
    (PyTorch's rule); ``TypeError`` unless an integer (not a bool), ``ValueError`` outside."""
    H = check_int("hidden_size", hidden_size, 1)
    expected = f"0 (no projection) or an integer in [1, hidden_size) = [1, {H})"
    if isinstance(proj_size, (bool, np.bool_)) or not isinstance(proj_size, (int, np.integer)):
        raise TypeError(f"proj_size: expected {expected}, got {proj_size!r}")
    if not 0 <= proj_size < H:
        raise ValueError(f"proj_size: expected {expected} (the projection makes h smaller "
                         f"than the cell state c), got {proj_size}")
    return int(proj_size)


def _layout(batch_first: bool, last_sym: str) -> str:
    symbols = ("B", "T", last_sym) if batch_first else ("T", "B", last_sym)
    return f"({', '.join(symbols)}) (batch_first={batch_first})"


def time_major(name: str, value: Any, last: int, last_sym: str, batch_first: bool,
               compiled: bool) -> Array:
    """Check a sequence argument (``x`` or ``dy``) and return it time-major (T, B, last).

    Dtype errors are raised before the transpose, so they show the caller's
    shape; shape errors give the layout ``batch_first`` asks for and, when
    ``last`` sits on another axis, say where.
    """
    arr = to_numpy(value)
    if arr.dtype.kind != "f" or isinstance(arr, np.ma.MaskedArray):
        arr = as_float(name, arr, compute_dtype(compiled, arr))   # raises, naming the shape
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D array of shape {_layout(batch_first, last_sym)}, "
                         f"got {arr.ndim}-D array of shape {arr.shape}")
    if arr.shape[2] != last:
        hint = ""
        if last in arr.shape[:2]:
            axis = arr.shape.index(last)
            other = _layout(not batch_first, last_sym)
            hint = (f"; {last_sym} = {last} is axis {axis} of {name}, not its last axis: "
                    f"a layer made with batch_first={not batch_first} takes {other}, and "
                    f"{name}.transpose(...) reorders axes")
        raise ValueError(f"{name}: expected shape {_layout(batch_first, last_sym)} with "
                         f"{last_sym} = {last}, got {arr.shape}{hint}")
    return arr.transpose(1, 0, 2) if batch_first else arr


def _article(word: str) -> str:
    """"a" or "an" before an acronym, as it is spoken (an RNN, a GRU, an LSTM)."""
    return "an" if word[0] in "AEFHILMNORSX" else "a"


def _kind_error(spec: CellSpec, arg: str, names: Sequence[str], value: Any,
                L: int, widths: Sequence[Width]) -> Exception | None:
    """The error for a state of the wrong kind for ``spec``'s layer, or None if it is not one."""
    shape = " and ".join(
        f"({', '.join(STATE_SYMBOLS)}, {sym}) = {(L, 'B', size)}".replace("'", "")
        for sym, size in dict.fromkeys(widths))
    layer = spec.layer
    if spec.has_cell_state:
        if isinstance(value, (tuple, list)) and len(value) == len(names):
            return None
        got = (f"{type(value).__name__} of shape {np.shape(value)}" if hasattr(value, "shape")
               else f"{type(value).__name__} of length {len(value)}"
               if isinstance(value, (tuple, list)) else type(value).__name__)
        return TypeError(
            f"{arg}: expected None or a pair ({', '.join(names)}) of arrays of shape {shape}, "
            f"got {got}; {_article(layer)} {layer}'s state is the pair ({', '.join(names)}) "
            f"(a bare {names[0]} is the state of an RNN or GRU): pass ({names[0]}, None) for a "
            f"zero cell state")
    if isinstance(value, (tuple, list)) and len(value) == 2:
        shapes = ", ".join(str(np.shape(v)) if v is not None else "None" for v in value)
        return ValueError(
            f"{arg}: {_article(layer)} {layer} takes one state {names[0]} of shape {shape}, got "
            f"a {type(value).__name__} of 2 (shapes {shapes}); a pair (h0, c0) is the "
            f"state of an LSTM")
    return None


def split_states(spec: CellSpec, value: Any, B: int, arg: str, names: Sequence[str], L: int,
                 widths: Sequence[Width], compiled: bool) -> list[Array | None]:
    """Split a state argument into one stack (L, B, width) per state kind, None for zeros.

    ``value`` is an array (RNN, GRU) or a pair (LSTM) of arrays, or None;
    ``names`` name each kind in messages (``("h0", "c0")``, ``("dh", "dc")``) and
    ``widths`` give each kind's width (``h`` of an LSTM with projection: P, else H).
    """
    kinds = len(spec.states)
    if value is None:
        return [None] * kinds
    shapes = [(L, B, size) for _, size in widths]
    if compiled:
        # what the checks below return for arrays that already fit, without their cost
        if kinds == 1:
            if is_f32c(value) and value.shape == shapes[0]:
                return [value]
        elif type(value) is tuple and len(value) == 2:
            h, c = value
            if is_f32c(h) and is_f32c(c) and h.shape == shapes[0] and c.shape == shapes[1]:
                return [h, c]
    error = _kind_error(spec, arg, names, value, L, widths)
    if error is not None and (kinds > 1 or _stack_shape(value) != shapes[0]):
        raise error
    parts = list(value) if kinds > 1 else [value]
    out: list[Array | None] = []
    for name, part, shape, (sym, _) in zip(names, parts, shapes, widths):
        if part is None:
            out.append(None)
            continue
        arr = to_numpy(part)
        arr = as_float(name, arr, compute_dtype(compiled, arr))
        check_shape(name, arr, (*STATE_SYMBOLS, sym), shape)
        out.append(arr)
    return out


def _stack_shape(value: Any) -> tuple[int, ...] | None:
    """The shape a sequence of arrays stacks to, or None if it does not stack."""
    try:
        return tuple(np.shape(value))
    except ValueError:   # ragged
        return None


def pack_states(stacks: Sequence[Array]) -> Any:
    """States in the call convention: ``h``, or ``(h, c)`` for the LSTM."""
    return stacks[0] if len(stacks) == 1 else tuple(stacks)


def stack(states: Sequence[Array], view: bool) -> Array:
    """``np.stack(states)`` for the per-(layer, direction) states (B, H) of a call.

    A single state is returned as a (1, B, H) view when ``view`` (for states
    that are new arrays nothing else holds, as ``functional`` returns them),
    else copied; more are copied into one new array by ``np.array``, which
    costs less per call than ``np.stack`` (paid per step by ``layer.step``).
    """
    if len(states) == 1:
        return states[0][None] if view else states[0][None].copy()
    return np.array(states)
