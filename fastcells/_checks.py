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
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from ._cells import GATE_ORDER as GATE_ORDER  # re-exported
from ._cells import GATES as GATES  # re-exported
from ._cells import NONLINEARITIES
from ._results import Cache, LayerNormWeights

# ----------------------------------------------------------------------------
# dtypes

#: the compute dtype of the kernels.  Arrays made with ``np.float32`` share this
#: one object, so ``a.dtype is _F32`` is the cheap first test of the fast paths;
#: an equal dtype that is another object just takes the full checks.
_F32 = np.dtype(np.float32)
_NDARRAY = np.ndarray


def is_f32c(a: Any) -> bool:
    """True when ``a`` is a float32 C-contiguous ndarray (not a subclass), native order.

    The fast-path predicate (:func:`_as_is`) for float32: exactly the arrays the
    checks pass on as they are; anything else takes the full checks, which
    convert or raise.
    """
    return _as_is(a, _F32)


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
    native: np.dtype = np.dtype(dt).newbyteorder("=")
    return native


def as_float(name: str, a: Any, dtype: DTypeLike) -> np.ndarray:
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
    out: np.ndarray = np.asarray(arr, dtype=np.dtype(dtype).newbyteorder("="), order="C")
    return out


# ----------------------------------------------------------------------------
# shapes


def _shape_str(symbols: tuple[str, ...], values: tuple[int, ...]) -> str:
    sym = "(" + ", ".join(symbols) + ("," if len(symbols) == 1 else "") + ")"
    val = "(" + ", ".join(str(v) for v in values) + ("," if len(values) == 1 else "") + ")"
    return sym if sym == val else f"{sym} = {val}"


def check_shape(name: str, arr: np.ndarray, symbols: tuple[str, ...],
                values: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``arr.shape == values`` (``symbols`` names each axis)."""
    if arr.shape != tuple(values):
        raise ValueError(
            f"{name}: expected shape {_shape_str(symbols, values)}, got {arr.shape}"
        )


def _check_ndim(name: str, arr: np.ndarray, symbols: tuple[str, ...]) -> None:
    if arr.ndim != len(symbols):
        sym = "(" + ", ".join(symbols) + ("," if len(symbols) == 1 else "") + ")"
        raise ValueError(
            f"{name}: expected a {len(symbols)}-D array of shape {sym}, got "
            f"{arr.ndim}-D array of shape {arr.shape}"
        )


#: up to this batch size check_lengths reduces in Python (see there)
_SMALL_BATCH = 64


def check_lengths(lengths: Any, T: int, B: int) -> np.ndarray | None:
    """Validate ``lengths``: None, or integers of shape (B,) with 0 <= lengths[b] <= T.

    Returns a C-contiguous int64 array, or None when every sequence is full
    length (the kernels then skip the per-row test).
    """
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TypeError(f"lengths: expected an integer array of shape (B,) = ({B},), "
                        f"got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape (B,) = ({B},), got {arr.shape}")
    if B == 0:
        return None
    # a NumPy reduction has a fixed cost whatever the size: for the usual small
    # batches, Python's min/max over the values are cheaper (docs/design.md,
    # "Per-call overhead")
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
    """The checked arguments of ``<cell>_forward`` and the sizes they imply."""

    x: np.ndarray
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None
    h0: np.ndarray | None
    c0: np.ndarray | None
    lengths: np.ndarray | None
    peephole: np.ndarray | None
    T: int
    B: int
    I: int
    H: int
    G: int
    #: LSTM with projection: ``W_hr`` (P, H), ``h`` of size ``P``; without one, None
    #: and ``P = H`` as the checks set it (the defaults serve callers that read neither)
    W_hr: np.ndarray | None = None
    P: int = 0


# ----------------------------------------------------------------------------
# the forward checks: one set of per-argument checks, cheap when an argument fits
#
# Each check below first asks the fast-path predicate (the argument can be used
# as it is: ``_as_is``, a shape that matches); only when that fails does it
# convert or raise.  A call whose arrays all fit therefore pays a few attribute
# tests per argument, which matters at T = B = 1 (docs/design.md, "Measurements
# behind the code's choices", "Fast checks").  ``as_is=True`` raises
# ``_NotAsIs`` instead of converting or raising: :func:`forward_as_is`, which
# says whether a call's arguments pass exactly as they are.


class _NotAsIs(Exception):
    """An argument needs a conversion (or is wrong): raised in ``as_is`` mode."""


def _as_is(a: Any, dtype: Any) -> bool:
    """The fast-path predicate: ``a`` is an ndarray (not a subclass) whose dtype is the
    object ``dtype`` itself (so native order), C-contiguous.  Such an array is what
    ``as_float(name, a, dtype)`` returns unchanged (a subset of those)."""
    return type(a) is _NDARRAY and a.dtype is dtype and a.flags.c_contiguous


def _array(name: str, a: Any, dtype: Any, as_is: bool) -> np.ndarray:
    if _as_is(a, dtype):
        return a                # type: ignore[no-any-return]
    if as_is:
        raise _NotAsIs
    return as_float(name, a, dtype)


def _bad_shape(name: str, arr: np.ndarray, symbols: tuple[str, ...],
               values: tuple[int, ...], as_is: bool) -> None:
    """The error naming ``name`` for ``arr.shape != values`` (the callers compare first,
    so the common case costs no call)."""
    if as_is:
        raise _NotAsIs
    check_shape(name, arr, symbols, values)


def _bad_ndim(name: str, arr: np.ndarray, symbols: tuple[str, ...], as_is: bool) -> None:
    """The error naming ``name`` for ``arr.ndim != len(symbols)``."""
    if as_is:
        raise _NotAsIs
    _check_ndim(name, arr, symbols)


def _refuse(as_is: bool, error: Exception) -> None:
    raise _NotAsIs if as_is else error


#: the row symbol of each cell's weights ("4*H")
_GH = {cell: f"{G}*H" for cell, G in GATES.items()}


def _projection_checks(cell: str, W_hr: Any, dtype: Any, as_is: bool) -> np.ndarray:
    """``W_hr`` (P, H) of an LSTM with projection: 2-D, ``1 <= P < H``."""
    if cell != "lstm":
        _refuse(as_is, ValueError(f"W_hr: only LSTM has a projection, got W_hr for {cell}"))
    W = _array("W_hr", W_hr, dtype, as_is)
    if W.ndim != 2:
        _bad_ndim("W_hr", W, ("P", "H"), as_is)
    P, H = W.shape
    if not 1 <= P < H:
        _refuse(as_is, ValueError(f"W_hr: expected shape (P, H) with 1 <= P < H (the "
                                  f"projection size below the hidden size), got {W.shape}"))
    return W


def _forward_checks(cell: str, x: Any, W_ih: Any, W_hh: Any, b_ih: Any, b_hh: Any, h0: Any,
                    c0: Any, lengths: Any, dtype: Any, peephole: Any,
                    as_is: bool, W_hr: Any = None) -> ForwardArgs:
    G, GH = GATES[cell], _GH[cell]
    x = _array("x", x, dtype, as_is)
    if x.ndim != 3:
        _bad_ndim("x", x, ("T", "B", "I"), as_is)
    T, B, I = x.shape
    W_hh = _array("W_hh", W_hh, dtype, as_is)
    if W_hr is None:
        if W_hh.ndim != 2:
            _bad_ndim("W_hh", W_hh, (GH, "H"), as_is)
        H = P = W_hh.shape[1]
        if H == 0:
            _refuse(as_is, ValueError("W_hh: expected hidden size H >= 1, got W_hh of shape "
                                      f"{W_hh.shape}"))
        if W_hh.shape != (G * H, H):
            _bad_shape("W_hh", W_hh, (GH, "H"), (G * H, H), as_is)
    else:
        # with a projection, h has P values and c has H: W_hh is (4*H, P)
        W_hr = _projection_checks(cell, W_hr, dtype, as_is)
        P, H = W_hr.shape
        if W_hh.shape != (G * H, P):
            if W_hh.ndim != 2:
                _bad_ndim("W_hh", W_hh, (GH, "P"), as_is)
            _bad_shape("W_hh", W_hh, (GH, "P"), (G * H, P), as_is)
    W_ih = _array("W_ih", W_ih, dtype, as_is)
    if W_ih.shape != (G * H, I):
        if W_ih.ndim != 2:
            _bad_ndim("W_ih", W_ih, (GH, "I"), as_is)
        _bad_shape("W_ih", W_ih, (GH, "I"), (G * H, I), as_is)
    if (b_ih is None) != (b_hh is None):
        missing = "b_hh" if b_hh is None else "b_ih"
        _refuse(as_is, ValueError(f"{missing}: expected an array of shape ({GH},) = "
                                  f"({G * H},) since the other bias is given (pass both or "
                                  "neither), got None"))
    if b_ih is not None:
        b_ih = _array("b_ih", b_ih, dtype, as_is)
        if b_ih.shape != (G * H,):
            _bad_shape("b_ih", b_ih, (GH,), (G * H,), as_is)
        b_hh = _array("b_hh", b_hh, dtype, as_is)
        if b_hh.shape != (G * H,):
            _bad_shape("b_hh", b_hh, (GH,), (G * H,), as_is)
    if peephole is not None:
        if cell != "lstm":
            _refuse(as_is, ValueError(f"peephole: only LSTM has peepholes, got peephole for "
                                      f"{cell}"))
        peephole = _array("peephole", peephole, dtype, as_is)
        if peephole.shape != (3 * H,):
            _bad_shape("peephole", peephole, ("3*H",), (3 * H,), as_is)
    h0, c0, lengths = _state_checks(cell, h0, c0, lengths, T, B, H, dtype, as_is, P)
    # _make: cheaper than ForwardArgs(...), which goes through a Python __new__
    return ForwardArgs._make((x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, peephole,
                              T, B, I, H, G, W_hr, P))


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
    dtype: Any | None = None,
    peephole: Any = None,
    W_hr: Any = None,
) -> ForwardArgs:
    """Validate and convert the arguments of ``<cell>_forward``.

    ``dtype`` None means the common float dtype of the arguments (the
    reference); the kernels pass float32.  ``W_hr`` (P, H): an LSTM with
    projection, whose ``W_hh`` is then (4*H, P) and ``h0`` (B, P).  ``h0``/``c0`` stay None when not
    given (the callers treat that as zeros).  Arrays that fit are returned as
    they are (never written).
    """
    if dtype is None:
        for name, a in (("x", x), ("W_ih", W_ih), ("W_hh", W_hh), ("b_ih", b_ih),
                        ("b_hh", b_hh), ("h0", h0), ("c0", c0), ("peephole", peephole),
                        ("W_hr", W_hr)):
            if a is not None:
                _to_array(name, a)
        dtype = float_dtype(x, W_ih, W_hh, b_ih, b_hh, h0, c0, peephole, W_hr)
    elif dtype is np.float32:
        dtype = _F32              # the dtype object, which _as_is compares by identity
    elif dtype is not _F32:
        dtype = np.dtype(dtype)
    return _forward_checks(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, dtype, peephole,
                           False, W_hr)


def forward_as_is(cell: str, x: Any, W_ih: Any, W_hh: Any, b_ih: Any = None,
                  b_hh: Any = None, h0: Any = None, c0: Any = None, lengths: Any = None,
                  peephole: Any = None) -> ForwardArgs | None:
    """``check_forward(..., dtype=float32)`` when every array passes exactly as it is
    (:func:`_as_is`, right shapes), else None: the same checks, in ``as_is`` mode.
    ``lengths`` gets its full checks (and errors) here too."""
    try:
        return _forward_checks(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, _F32,
                               peephole, True)
    except _NotAsIs:
        return None


def check_sequence(name: str, x: Any, I: int, dtype: DTypeLike) -> np.ndarray:
    """``x`` as a C-contiguous (T, B, I) array of ``dtype`` (``I`` known: prepared weights)."""
    seq = as_float(name, x, dtype)
    _check_ndim(name, seq, ("T", "B", "I"))
    check_shape(name, seq, ("T", "B", "I"), (seq.shape[0], seq.shape[1], I))
    return seq


def without_padding(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
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
                 dtype: Any, P: int | None = None) -> tuple[np.ndarray | None,
                                                            np.ndarray | None,
                                                            np.ndarray | None]:
    """The initial states and lengths of a (T, B) batch, as ``check_forward`` returns them
    (``P``: the size of ``h`` of an LSTM with projection; None means ``H``)."""
    return _state_checks(cell, h0, c0, lengths, T, B, H, np.dtype(dtype), False,
                         H if P is None else P)


def _state_checks(cell: str, h0: Any, c0: Any, lengths: Any, T: int, B: int, H: int,
                  dtype: Any, as_is: bool, P: int) -> tuple[np.ndarray | None,
                                                            np.ndarray | None,
                                                            np.ndarray | None]:
    if h0 is not None:
        h0 = _array("h0", h0, dtype, as_is)
        if h0.shape != (B, P):
            _bad_shape("h0", h0, ("B", "H" if P == H else "P"), (B, P), as_is)
    if c0 is not None:
        if cell != "lstm":
            _refuse(as_is, ValueError(f"c0: only LSTM has a cell state, got c0 for {cell}"))
        c0 = _array("c0", c0, dtype, as_is)
        if c0.shape != (B, H):
            _bad_shape("c0", c0, ("B", "H"), (B, H), as_is)
    # every other argument has passed its checks: lengths gets the same checks
    # (and errors) in either mode
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    # the buffers are (T, B, G*H): fail clearly here (Python ints cannot
    # overflow) when they cannot exist, before any allocation is tried
    G = GATES[cell]
    if T * B * G * H * dtype.itemsize > sys.maxsize:
        _refuse(as_is, ValueError(f"x: (T, B) = ({T}, {B}) with G*H = {G * H} needs buffers "
                                  f"of {T * B * G * H} elements, more than the address space "
                                  "holds"))
    return h0, c0, lengths


#: how many arrays a layer-normalized cell's gains and biases hold, without and with c's
_LN_FIELDS_HC = 4
_LN_FIELDS_C = len(LayerNormWeights._fields)


def check_layer_norm(cell: str, layer_norm: Any, eps: Any, H: int, dtype: Any, *,
                     linear_before_reset: bool = True) -> tuple[LayerNormWeights | None, float]:
    """Validate and convert the ``layer_norm`` and ``layer_norm_eps`` arguments of
    ``<cell>_forward``; returns ``(weights, eps)``.

    ``layer_norm`` is None (no normalization: returned as None) or a
    :class:`LayerNormWeights`, or any 4- or 6-sequence in its field order.  Each
    array must be real floating point of its shape: ``(G*H,)`` for the ih/hh
    gains and biases, ``(H,)`` for ``c_weight``/``c_bias``, which an LSTM needs
    and the other cells refuse.  The arrays are converted to ``dtype`` (the
    compute dtype, float32 for the kernels) as :func:`as_float` does: an array
    that already fits is returned as it is (never written).  ``eps`` must be a
    finite real number > 0, returned as a float.  A GRU with
    ``linear_before_reset=False`` has no standard normalized form and is refused.
    Every error names the argument, what was expected and what was received.
    """
    if isinstance(eps, (bool, np.bool_)) or not isinstance(
            eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"layer_norm_eps: expected a finite number > 0, got {eps!r}")
    eps_value = float(eps)
    if not (np.isfinite(eps_value) and eps_value > 0):
        raise ValueError(f"layer_norm_eps: expected a finite number > 0, got {eps_value}")
    if layer_norm is None:
        return None, eps_value
    if cell == "gru" and not linear_before_reset:
        raise ValueError("layer_norm: expected linear_before_reset=True with layer_norm "
                         "(a GRU with linear_before_reset=False has no standard normalized "
                         "form), got linear_before_reset=False and layer_norm given")
    if not isinstance(layer_norm, (tuple, list)) or \
            len(layer_norm) not in (_LN_FIELDS_HC, _LN_FIELDS_C):
        what = (f"{type(layer_norm).__name__} of length {len(layer_norm)}"
                if isinstance(layer_norm, (tuple, list)) else type(layer_norm).__name__)
        raise TypeError(f"layer_norm: expected None or a LayerNormWeights (a 4- or 6-tuple "
                        f"{LayerNormWeights._fields}), got {what}")
    weights = LayerNormWeights(*layer_norm)
    dtype = _F32 if dtype is np.float32 else np.dtype(dtype)
    GH = f"{GATES[cell]}*H"
    shapes = {"ih_weight": ((GH,), (GATES[cell] * H,)), "ih_bias": ((GH,), (GATES[cell] * H,)),
              "hh_weight": ((GH,), (GATES[cell] * H,)), "hh_bias": ((GH,), (GATES[cell] * H,)),
              "c_weight": (("H",), (H,)), "c_bias": (("H",), (H,))}
    converted: list[np.ndarray | None] = []
    for field, value in zip(LayerNormWeights._fields, weights):
        name = f"layer_norm.{field}"
        symbols, shape = shapes[field]
        if field.startswith("c_") and cell != "lstm":
            if value is not None:
                raise ValueError(f"{name}: expected None (only an LSTM normalizes its cell "
                                 f"state), got {_describe(value)} for {cell}")
            converted.append(None)
            continue
        if value is None:
            raise ValueError(f"{name}: expected an array of shape {_shape_str(symbols, shape)}"
                             f", got None")
        arr = _array(name, value, dtype, False)
        if arr.shape != shape:
            check_shape(name, arr, symbols, shape)
        converted.append(arr)
    return LayerNormWeights._make(converted), eps_value


def check_nonlinearity(nonlinearity: Any) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"nonlinearity: expected one of {NONLINEARITIES}, got {nonlinearity!r}"
        )
    return str(nonlinearity)


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


def check_grad(name: str, g: Any, symbols: tuple[str, ...], shape: tuple[int, ...],
               dtype: Any) -> np.ndarray | None:
    """Validate an upstream gradient (None stays None, meaning zeros)."""
    if g is None:
        return None
    grad = _array(name, g, _F32 if dtype is np.float32 else dtype, False)
    if grad.shape != shape:
        if grad.ndim != len(shape):
            _check_ndim(name, grad, symbols)
        check_shape(name, grad, symbols, shape)
    return grad


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
    number = float(value)
    if not (low <= number < high if high_open else low <= number <= high):
        raise ValueError(f"{name}: expected a value in {_interval(low, high, high_open)}, "
                         f"got {number}")
    return number


def _interval(low: float, high: float, high_open: bool) -> str:
    return f"[{low:g}, {high:g}{')' if high_open else ']'}"
