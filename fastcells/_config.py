"""The instruction-set choice at import, and ``show_config()``.

The widest ISA path the CPU supports is used unless the environment variable
``FASTCELLS_ISA`` (generic, avx2 or avx512) asks for another; asking for one
the CPU cannot run raises at import rather than crashing later with SIGILL.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from . import _kernels


def _choose_isa() -> None:
    wanted = os.environ.get("FASTCELLS_ISA", "").strip().lower()
    if wanted:
        try:
            _kernels.set_isa(wanted)
        except ValueError as exc:
            raise ImportError(f"FASTCELLS_ISA={wanted!r}: {exc}") from None
    else:
        _kernels.set_isa(_kernels.isa_available()[-1])


def _blas_info() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # NumPy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # pragma: no cover - older NumPy
        return "unknown"


def config() -> dict:
    """The configuration as a dict (what :func:`show_config` prints)."""
    from . import __version__

    return {
        "fastcells": __version__,
        "isa": _kernels.get_isa(),
        "isa_available": _kernels.isa_available(),
        "isa_forced": os.environ.get("FASTCELLS_ISA") or None,
        "numpy": np.__version__,
        "numpy_blas": _blas_info(),
        "python": sys.version.split()[0],
    }


def show_config() -> None:
    """Print the version, the ISA path in use and those available, and NumPy's BLAS."""
    c = config()
    print(f"fastcells {c['fastcells']}")
    print(f"  ISA in use:    {c['isa']}" + (" (forced by FASTCELLS_ISA)" if c["isa_forced"] else ""))
    print(f"  ISA available: {', '.join(c['isa_available'])}")
    print(f"  NumPy:         {c['numpy']} (BLAS: {c['numpy_blas']})")
    print(f"  Python:        {c['python']}")


_choose_isa()
