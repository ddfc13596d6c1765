"""Float16 weights for serving: the one rule for choosing and rounding them.

``Stepper(weight_dtype="float16")`` and ``layer.step_weight_dtype`` both
round their weights here, so both refuse the same weights with the same
message.  The arithmetic stays float32; only the stored weights are rounded.
"""
from __future__ import annotations

from typing import Any

import numpy as np

F32 = np.float32

#: the largest float16 (weight_dtype="float16" refuses weights beyond it)
F16_MAX = float(np.finfo(np.float16).max)


def check_weight_dtype(weight_dtype: Any, name: str = "weight_dtype") -> bool:
    """Whether ``weight_dtype`` (the argument ``name``) asks for float16 weights (else
    float32)."""
    try:
        dt = np.dtype(weight_dtype)
    except (TypeError, ValueError, SyntaxError):   # what np.dtype raises for odd strings
        dt = None
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"{name}: expected 'float32' or 'float16', got {weight_dtype!r}")
    return bool(dt == np.float16)


def float16_values(name: str, W: np.ndarray, setting: str = "weight_dtype") -> np.ndarray:
    """``W`` (float32, the argument ``name``) rounded to float16 (to nearest even), as
    float32: a new array.  ``setting`` names what asked for it, in the error."""
    over = np.abs(W) > F16_MAX          # NaN and inf compare False: they stay what they are
    with np.errstate(over="ignore"):
        W16 = W.astype(np.float16)
    over &= np.isfinite(W)
    if over.any():
        at = tuple(int(i) for i in np.argwhere(over)[0])
        raise ValueError(f"{name}: expected magnitudes float16 holds (at most {F16_MAX:g}) for "
                         f"{setting}='float16', got {float(W[at])!r} at {at} "
                         f"({int(over.sum())} such weights)")
    return W16.astype(F32)
