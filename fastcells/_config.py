"""The instruction-set choice at import, the deterministic mode, and ``show_config()``.

The widest ISA path the CPU supports is used unless the environment variable
``FASTCELLS_ISA`` (generic, avx2 or avx512) asks for another; asking for one
the CPU cannot run raises at import rather than crashing later with SIGILL.

The deterministic mode (``set_deterministic``, ``FASTCELLS_DETERMINISTIC``)
makes every forward call batch invariant: it packs the weights of the short
calls that would otherwise multiply by them unpacked (``_packing``), and the
batch-1 products sum in the packed tiles' order (``csrc/gemm.h``,
``fc_set_gemv_tiles``), so every product sums as the tiles do.  It is one
process-wide flag: a call reads it when it prepares its weights, each
batch-1 product when it starts.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, TypedDict

import numpy as np

from . import _kernels, _threads
from ._checks import check_bool

#: the environment variable that forces an ISA path
ISA_VARIABLE = "FASTCELLS_ISA"
#: the environment variable that sets the deterministic mode at import: "0" or "1"
DETERMINISTIC_VARIABLE = "FASTCELLS_DETERMINISTIC"


def _choose_isa() -> None:
    wanted = os.environ.get(ISA_VARIABLE, "").strip().lower()
    if wanted:
        try:
            _kernels.set_isa(wanted)
        except ValueError as exc:
            raise ImportError(f"{ISA_VARIABLE}={wanted!r}: {exc}") from None
    else:
        _kernels.set_isa(_kernels.isa_available()[-1])


def _deterministic_from_environment() -> bool:
    value = os.environ.get(DETERMINISTIC_VARIABLE)
    if value is None or value.strip() == "":
        return False
    if value.strip() not in ("0", "1"):
        raise ValueError(f"{DETERMINISTIC_VARIABLE}: expected 0 or 1, got {value!r}")
    return value.strip() == "1"


#: the deterministic mode (set_deterministic or the environment); a bool, whose reads
#: are atomic, so calls on many threads read it without a lock
_deterministic: bool = _deterministic_from_environment()
#: held while the mode and the kernels' flag change together (concurrent setters)
_mode_lock = threading.Lock()


def set_deterministic(flag: Any) -> None:
    """Make every forward call's results independent of the batch it runs in, or not.

    With the mode on, a sequence's forward outputs and final states are the
    same bits whether it runs alone or among other sequences (any batch size,
    any thread count, with or without ``lengths``), in the functional calls,
    the layers and ``Stepper`` (steps and ``forward``).  Without it a
    sequence's results may differ by float32 rounding with the batch it runs
    in: batch-1 products sum in a faster order than the batched ones, and
    short calls (``T * B < 32``, or batch 1 and ``T <= 16``) multiply by the
    weights unpacked.  The mode costs some speed at batch 1, most on the
    AVX2 and generic paths, and more in short calls, which then pack their
    weights (measured in ``docs/design.md``, "Batch invariance").
    Gradients (``*_backward``) are not covered: they may differ by float32
    rounding.

    Parameters
    ----------
    flag : bool
        True to turn the mode on, False (the default, unless
        ``FASTCELLS_DETERMINISTIC=1`` at import) to turn it off.  The setting
        is process-wide.  A call running while it changes may see the change
        part way (its results are then those of either mode, step by step):
        set it before the calls whose results must agree.

    Raises
    ------
    TypeError
        If ``flag`` is not a bool.
    """
    global _deterministic
    flag = check_bool("flag", flag)
    with _mode_lock:
        _deterministic = flag
        _kernels.set_gemv_tiles(flag)


def get_deterministic() -> bool:
    """Whether the deterministic mode is on (see :func:`set_deterministic`).

    Returns
    -------
    bool
        The value of :func:`set_deterministic`, or of ``FASTCELLS_DETERMINISTIC``
        at import, or False.
    """
    return _deterministic


_kernels.set_gemv_tiles(_deterministic)


def _blas_info() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # NumPy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # pragma: no cover - older NumPy
        return "unknown"


class Config(TypedDict):
    """What :func:`config` returns (a plain dict)."""

    fastcells: str
    isa: str
    isa_available: list[str]
    isa_forced: str | None
    numpy: str
    numpy_blas: str
    python: str
    threads: int
    threads_setting: int | None
    cores: int
    deterministic: bool


def config() -> Config:
    """The configuration as a dict: what :func:`show_config` prints.

    Returns
    -------
    dict
        ``fastcells`` (version), ``isa`` (the ISA path in use),
        ``isa_available`` (those this CPU runs, narrowest first),
        ``isa_forced`` (the value of ``FASTCELLS_ISA``, or None), ``numpy``
        (version), ``numpy_blas`` (the BLAS NumPy was built with),
        ``python`` (version), ``threads`` (what one call may use:
        ``fastcells.get_num_threads()``), ``threads_setting`` (the explicit
        setting, ``set_num_threads`` or ``FASTCELLS_NUM_THREADS``, or None),
        ``cores`` (the cores this process may run on) and ``deterministic``
        (:func:`get_deterministic`).
    """
    from . import __version__

    return {
        "fastcells": __version__,
        "isa": _kernels.get_isa(),
        "isa_available": _kernels.isa_available(),
        "isa_forced": os.environ.get(ISA_VARIABLE) or None,
        "numpy": np.__version__,
        "numpy_blas": _blas_info(),
        "python": sys.version.split()[0],
        "threads": _threads.get_num_threads(),
        "threads_setting": _threads.thread_setting(),
        "cores": _threads.available_cores(),
        "deterministic": get_deterministic(),
    }


#: what show_config says of the deterministic mode, off and on
DETERMINISTIC_SUMMARY = {
    False: "off (results may differ with the batch by float32 rounding)",
    True: "on (forward results do not depend on the batch)",
}


def show_config() -> None:
    """Print the version, the ISA paths, the threads, the deterministic mode and the BLAS.

    The kernels' instruction-set path (generic, avx2 or avx512) is chosen at
    import: the widest this CPU supports, unless the environment variable
    ``FASTCELLS_ISA`` names another (set it before importing fastcells; an
    ISA the CPU cannot run makes the import fail).  Every path is tested
    against the same NumPy reference.

    Prints, for example::

        fastcells 0.1.0
          ISA in use:    avx512
          ISA available: generic, avx2, avx512
          threads:       2 per call (default: the cores this process may use, 2)
          deterministic: off (results may differ with the batch by float32 rounding)
          NumPy:         2.1.0 (BLAS: scipy-openblas 0.3.27)
          Python:        3.11.7

    Returns
    -------
    None
        The same facts as a dict: ``fastcells._config.config()``.
    """
    c = config()
    print(f"fastcells {c['fastcells']}")
    forced = f" (forced by {ISA_VARIABLE})" if c["isa_forced"] else ""
    print(f"  ISA in use:    {c['isa']}{forced}")
    print(f"  ISA available: {', '.join(c['isa_available'])}")
    how = (f"set by set_num_threads or {_threads.THREADS_VARIABLE}" if c["threads_setting"]
           else f"default: the cores this process may use, {c['cores']}")
    print(f"  threads:       {c['threads']} per call ({how})")
    print(f"  deterministic: {DETERMINISTIC_SUMMARY[c['deterministic']]}")
    print(f"  NumPy:         {c['numpy']} (BLAS: {c['numpy_blas']})")
    print(f"  Python:        {c['python']}")


_choose_isa()
