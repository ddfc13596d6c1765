"""One place that validates and converts the arguments of every cell.

Both the NumPy reference and the compiled path call these helpers, so a
wrong argument gets the same message from either.  Every message names the
argument, what was expected and what was received.  The helpers never write
to a caller's array: conversions make new arrays, and arrays that already
have the right dtype and layout are passed on unchanged (and only read).

The cell facts (gate counts, state names) come from ``_cells``; the result
types and the training cache live in ``_results``.
"""
from __future__ import annotations

import sys
from typing import Any, NamedTuple, Optional

import numpy as np

from ._cells import GATE_ORDER, GATES, NONLINEARITIES  # noqa: F401  (re-exported)
from ._results import Cache


# ----------------------------------------------------------------------------
# dtypes

#: the compute dtype of the kernels.  Arrays made with ``np.float32`` share this
#: one object, so ``a.dtype is _F32`` is the cheap first test of the fast paths;
#: an equal dtype that is another object just takes the full checks.
_F32 = np.dtype(np.float32)
_NDARRAY = np.ndarray


def is_f32c(a: Any) -> bool:
    """True when ``a`` is a float32 C-contiguous ndarray (not a subclass), native order.

    Exactly the arrays that ``as_float(name, a, np.float32)`` returns unchanged
    (or a subset of them): the fast paths accept these and send anything else
    to the full checks, which convert or raise.
    """
    return type(a) is _NDARRAY and a.dtype is _F32 and a.flags.c_contiguous


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy view of an array or a framework tensor, duck-typed (no framework import).

    The one tensor -> NumPy conversion of fastcells (layers' state dicts,
    interop, diagnostics).  PyTorch tensors (``detach``, ``cpu``, ``numpy``),
    TensorFlow tensors and variables (``numpy``), and anything with
    ``__array__`` (JAX, CuPy on host...).  Arrays are returned as they are.
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        return np.asarray(value.numpy())
    if hasattr(value, "numpy") and callable(value.numpy):
        return np.asarray(value.numpy())
    return np.asarray(value)


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"array of dtype {a.dtype} and shape {a.shape}"
    return f"{type(a).__name__}"


def _to_array(name: str, a: Any) -> np.ndarray:
    if isinstance(a, np.ma.MaskedArray):
        # np.asarray would drop the mask and compute with the hidden values
        raise TypeError(f"{name}: expected a real floating-point array, got a masked array "
                        "(fill it, e.g. np.ma.filled(a, 0), or use lengths)")
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(
                f"{name}: expected a real floating-point array, got {type(a).__name__} "
                f"that NumPy cannot convert ({exc})"
            ) from None
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name}: expected a real floating-point array (float16/32/64), got "
            f"{_describe(arr) if isinstance(a, np.ndarray) else 'dtype ' + str(arr.dtype)}"
        )
    return arr


def float_dtype(*arrays: Any) -> np.dtype:
    """The compute dtype of the reference: the common float type of the given arrays."""
    dts = [np.asarray(a).dtype for a in arrays if a is not None]
    dt = np.result_type(*dts) if dts else np.dtype(np.float64)
    if dt.kind != "f":
        dt = np.dtype(np.float64)
    return np.dtype(dt).newbyteorder("=")


def as_float(name: str, a: Any, dtype: np.dtype) -> np.ndarray:
    """Convert ``a`` to a C-contiguous array of ``dtype`` (native byte order).

    Real floats are converted; bool, integer, complex, object and string
    arrays raise ``TypeError`` naming ``name``.  An array that already fits
    is returned as it is (never written by fastcells).
    """
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous \
            and a.dtype.isnative:
        return a   # the common case, kept cheap: it is paid per argument per call
    arr = _to_array(name, a)
    # asarray, not ascontiguousarray, which would turn a 0-d array into 1-d
    return np.asarray(arr, dtype=np.dtype(dtype).newbyteorder("="), order="C")


# ----------------------------------------------------------------------------
# shapes


def _shape_str(symbols: tuple, values: tuple) -> str:
    sym = "(" + ", ".join(symbols) + ("," if len(symbols) == 1 else "") + ")"
    val = "(" + ", ".join(str(v) for v in values) + ("," if len(values) == 1 else "") + ")"
    return sym if sym == val else f"{sym} = {val}"


def check_shape(name: str, arr: np.ndarray, symbols: tuple, values: tuple) -> None:
    """Raise ``ValueError`` unless ``arr.shape == values`` (``symbols`` names each axis)."""
    if arr.shape != tuple(values):
        raise ValueError(
            f"{name}: expected shape {_shape_str(symbols, values)}, got {arr.shape}"
        )


def _check_ndim(name: str, arr: np.ndarray, symbols: tuple) -> None:
    if arr.ndim != len(symbols):
        sym = "(" + ", ".join(symbols) + ("," if len(symbols) == 1 else "") + ")"
        raise ValueError(
            f"{name}: expected a {len(symbols)}-D array of shape {sym}, got "
            f"{arr.ndim}-D array of shape {arr.shape}"
        )


#: up to this batch size check_lengths reduces in Python (see there)
_SMALL_BATCH = 64


def check_lengths(lengths: Any, T: int, B: int) -> Optional[np.ndarray]:
    """Validate ``lengths``: None, or integers of shape (B,) with 0 <= lengths[b] <= T.

    Returns a C-contiguous int64 array, or None when every sequence is full
    length (the kernels then skip the per-row test).
    """
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TypeError(f"lengths: expected an integer array of shape (B,) = ({B},), got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape (B,) = ({B},), got {arr.shape}")
    if B == 0:
        return None
    # a NumPy reduction costs ~1.5 us whatever the size: for the usual small
    # batches, Python's min/max over the values are several times cheaper
    if B <= _SMALL_BATCH:
        values = arr.tolist()
        lo, hi = min(values), max(values)
    else:
        lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > T:
        bad = int(np.flatnonzero((arr < 0) | (arr > T))[0])
        raise ValueError(
            f"lengths: expected values in [0, T] = [0, {T}], got lengths[{bad}] = {int(arr[bad])}"
        )
    if lo == T:
        return None
    # values in [0, T]: int64 holds them exactly
    return np.ascontiguousarray(arr, dtype=np.int64)


class ForwardArgs(NamedTuple):
    x: np.ndarray
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: Optional[np.ndarray]
    b_hh: Optional[np.ndarray]
    h0: Optional[np.ndarray]
    c0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    peephole: Optional[np.ndarray]
    T: int
    B: int
    I: int
    H: int
    G: int


def check_forward(
    cell: str,
    x: Any,
    W_ih: Any,
    W_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    h0: Any = None,
    c0: Any = None,
    lengths: Any = None,
    dtype: Optional[np.dtype] = None,
    peephole: Any = None,
) -> ForwardArgs:
    """Validate and convert the arguments of ``<cell>_forward``.

    ``dtype`` None means the common float dtype of the arguments (the
    reference); the kernels pass float32.  ``h0``/``c0`` stay None when not
    given (the callers treat that as zeros).
    """
    if dtype is np.float32 or dtype is _F32:
        args = _forward_fast(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, peephole)
        if args is not None:
            return args
    G = GATES[cell]
    if dtype is None:
        for name, a in (("x", x), ("W_ih", W_ih), ("W_hh", W_hh), ("b_ih", b_ih),
                        ("b_hh", b_hh), ("h0", h0), ("c0", c0), ("peephole", peephole)):
            if a is not None:
                _to_array(name, a)
        dtype = float_dtype(x, W_ih, W_hh, b_ih, b_hh, h0, c0, peephole)
    x = as_float("x", x, dtype)
    _check_ndim("x", x, ("T", "B", "I"))
    T, B, I = x.shape
    W_hh = as_float("W_hh", W_hh, dtype)
    _check_ndim("W_hh", W_hh, (f"{G}*H", "H"))
    H = W_hh.shape[1]
    if H == 0:
        raise ValueError("W_hh: expected hidden size H >= 1, got W_hh of shape "
                         f"{W_hh.shape}")
    check_shape("W_hh", W_hh, (f"{G}*H", "H"), (G * H, H))
    W_ih = as_float("W_ih", W_ih, dtype)
    _check_ndim("W_ih", W_ih, (f"{G}*H", "I"))
    check_shape("W_ih", W_ih, (f"{G}*H", "I"), (G * H, I))
    if (b_ih is None) != (b_hh is None):
        missing = "b_hh" if b_hh is None else "b_ih"
        raise ValueError(f"{missing}: expected an array of shape ({G}*H,) = ({G * H},) "
                         "since the other bias is given (pass both or neither), got None")
    if b_ih is not None:
        b_ih = as_float("b_ih", b_ih, dtype)
        check_shape("b_ih", b_ih, (f"{G}*H",), (G * H,))
        b_hh = as_float("b_hh", b_hh, dtype)
        check_shape("b_hh", b_hh, (f"{G}*H",), (G * H,))
    if peephole is not None:
        if cell != "lstm":
            raise ValueError(f"peephole: only LSTM has peepholes, got peephole for {cell}")
        peephole = as_float("peephole", peephole, dtype)
        check_shape("peephole", peephole, ("3*H",), (3 * H,))
    h0, c0, lengths = check_states(cell, h0, c0, lengths, T, B, H, dtype)
    return ForwardArgs(x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, peephole, T, B, I, H, G)


def check_sequence(name: str, x: Any, I: int, dtype: np.dtype) -> np.ndarray:
    """``x`` as a C-contiguous (T, B, I) array of ``dtype`` (``I`` known: prepared weights)."""
    x = as_float(name, x, dtype)
    _check_ndim(name, x, ("T", "B", "I"))
    check_shape(name, x, ("T", "B", "I"), (x.shape[0], x.shape[1], I))
    return x


def without_padding(x: np.ndarray, lengths: Optional[np.ndarray]) -> np.ndarray:
    """A copy of ``x`` (T, B, I) with the steps past each sequence's length zeroed.

    The forward pass never uses them, but ``dW_ih = dG^T x`` sums over every
    step, where inf/NaN padding would give ``0 * inf = NaN``.  What both
    backends' caches keep (and the reference computes with).
    """
    x = x.copy()
    if lengths is not None:
        x[np.arange(x.shape[0])[:, None] >= lengths] = 0
    return x


def check_states(cell: str, h0: Any, c0: Any, lengths: Any, T: int, B: int, H: int,
                 dtype: np.dtype) -> tuple:
    """The initial states and lengths of a (T, B) batch, as ``check_forward`` returns them."""
    if h0 is not None:
        h0 = as_float("h0", h0, dtype)
        check_shape("h0", h0, ("B", "H"), (B, H))
    if c0 is not None:
        if cell != "lstm":
            raise ValueError(f"c0: only LSTM has a cell state, got c0 for {cell}")
        c0 = as_float("c0", c0, dtype)
        check_shape("c0", c0, ("B", "H"), (B, H))
    lengths = check_lengths(lengths, T, B)
    # the buffers are (T, B, G*H): fail clearly here (Python ints cannot
    # overflow) when they cannot exist, before any allocation is tried
    G = GATES[cell]
    if T * B * G * H * np.dtype(dtype).itemsize > sys.maxsize:
        raise ValueError(f"x: (T, B) = ({T}, {B}) with G*H = {G * H} needs buffers of "
                         f"{T * B * G * H} elements, more than the address space holds")
    return h0, c0, lengths


def _forward_fast(cell: str, x: Any, W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None,
                  h0: Any = None, c0: Any = None, lengths: Any = None,
                  peephole: Any = None) -> Optional[ForwardArgs]:
    """``check_forward`` for float32 when every array already fits (the common case).

    Returns None as soon as anything differs (a dtype, a layout, a shape, a
    missing bias...): ``check_forward`` then runs its full checks, which
    convert or raise the error naming the argument.  Each test here is one the
    full checks make too, so a result from here is one they would return.
    It exists because the full checks cost ~6 us a call, which matters at
    T = B = 1 (a whole 100-step H = 64 LSTM in ONNX Runtime takes ~225 us).
    """
    if not (is_f32c(x) and is_f32c(W_ih) and is_f32c(W_hh)):
        return None
    xs, ws = x.shape, W_hh.shape
    if len(xs) != 3 or len(ws) != 2:
        return None
    T, B, I = xs
    GH, H = ws
    G = GATES[cell]
    if H == 0 or GH != G * H or W_ih.shape != (GH, I):
        return None
    if b_ih is not None or b_hh is not None:
        if not (is_f32c(b_ih) and is_f32c(b_hh) and b_ih.shape == (GH,) and b_hh.shape == (GH,)):
            return None
    state = (B, H)
    if h0 is not None and not (is_f32c(h0) and h0.shape == state):
        return None
    if c0 is not None and not (cell == "lstm" and is_f32c(c0) and c0.shape == state):
        return None
    if peephole is not None and not (cell == "lstm" and is_f32c(peephole)
                                     and peephole.shape == (3 * H,)):
        return None
    # the buffer-size guard of the full checks, float32 = 4 bytes
    if T * B * GH * 4 > sys.maxsize:
        return None
    # every other argument passed the checks the full path makes before lengths,
    # so lengths gets the same checks (and errors) as there
    lengths = check_lengths(lengths, T, B)
    # _make: 0.25 us cheaper than ForwardArgs(...), which goes through a Python __new__
    return ForwardArgs._make((x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, peephole,
                              T, B, I, H, G))


def check_nonlinearity(nonlinearity: Any) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"nonlinearity: expected one of {NONLINEARITIES}, got {nonlinearity!r}"
        )
    return nonlinearity


def check_cache(cache: Any, cell: str, backend: str) -> Cache:
    """Validate that ``cache`` came from ``<backend>.<cell>_forward(..., training=True)``."""
    where = "fastcells" if backend == "fastcells" else "fastcells.reference"
    if cache is None:
        raise TypeError(
            f"cache: expected the cache of {where}.{cell}_forward(..., training=True), got None "
            "(the forward pass was run with training=False, which keeps no activations)"
        )
    if not isinstance(cache, Cache):
        raise TypeError(f"cache: expected a fastcells Cache from {where}.{cell}_forward, "
                        f"got {type(cache).__name__}")
    if cache.cell != cell:
        raise ValueError(f"cache: expected a cache from {cell}_forward, got one from "
                         f"{cache.cell}_forward")
    if cache.backend != backend:
        other = "fastcells" if cache.backend == "fastcells" else "fastcells.reference"
        raise ValueError(f"cache: expected a cache from {where}.{cell}_forward, got one from "
                         f"{other}.{cell}_forward")
    return cache


def check_grad(name: str, g: Any, symbols: tuple, shape: tuple, dtype: np.dtype) -> Optional[np.ndarray]:
    """Validate an upstream gradient (None stays None, meaning zeros)."""
    if g is None:
        return None
    if (dtype is np.float32 or dtype is _F32) and is_f32c(g) and g.shape == shape:
        return g   # the common case, kept cheap: it is paid per gradient per call
    g = as_float(name, g, dtype)
    if g.ndim != len(shape):
        _check_ndim(name, g, symbols)
    check_shape(name, g, symbols, shape)
    return g


def check_bool(name: str, value: Any) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, ``TypeError`` unless it is an integer (not a bool),
    ``ValueError`` if it is below ``minimum``; both name the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_number(name: str, value: Any, low: float = 0.0, high: float = float("inf"),
                 high_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``[low, high)`` with ``high_open``):
    ``TypeError`` unless it is a real number (not a bool), ``ValueError`` outside
    the interval; both name the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in {_interval(low, high, high_open)}, "
                        f"got {value!r}")
    value = float(value)
    if not (low <= value < high if high_open else low <= value <= high):
        raise ValueError(f"{name}: expected a value in {_interval(low, high, high_open)}, "
                         f"got {value}")
    return value


def _interval(low: float, high: float, high_open: bool) -> str:
    return f"[{low:g}, {high:g}{')' if high_open else ']'}"
