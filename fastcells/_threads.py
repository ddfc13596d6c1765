"""fastcells' threads: how many one call may use, and the budget shared by concurrent calls.

How it is built, and why:
- The kernels run their parallel loops with OpenMP (Cython ``prange``), the
  mechanism scikit-learn uses, so ``threadpoolctl`` sees and limits fastcells'
  threads like NumPy's BLAS.  OpenMP's threads wait passively soon after a
  parallel region ends (libgomp spins briefly, then sleeps): nothing of ours
  keeps a core busy after a call returns.
- The thread count is fastcells' own setting: ``set_num_threads(n)`` or the
  environment variable ``FASTCELLS_NUM_THREADS`` (read at import).  Without
  either, a call may use the cores this process may run on, limited by
  OpenMP's own limit in the calling thread (``OMP_NUM_THREADS``,
  ``threadpoolctl.threadpool_limits``), which is how joblib, Dask and Ray
  workers cap their libraries.  An explicit setting is used as it is.
- Several Python threads may call fastcells at once (the kernels release the
  GIL).  The calls share one budget of ``get_num_threads()`` threads: a call
  takes what is free when it starts (at least its own thread), so concurrent
  callers do not oversubscribe the cores with fastcells' threads.
- Whether a call is worth splitting at all is the kernels' cost model's
  decision (``_packing``); this module only says how many threads it may have.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _kernels
from ._checks import check_int

#: the environment variable that sets the thread count at import
THREADS_VARIABLE = "FASTCELLS_NUM_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # not Linux: all the machine's cores
        return max(1, os.cpu_count() or 1)


def _from_environment() -> int | None:
    value = os.environ.get(THREADS_VARIABLE)
    if value is None or value.strip() == "":
        return None
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_VARIABLE}: expected a positive integer, got {value!r}")
    return n


#: the explicit setting (set_num_threads or the environment), None for the default
_setting: int | None = _from_environment()
_lock = threading.Lock()
_in_use = 0


def _openmp_limit() -> int:
    return int(_kernels.openmp_max_threads())


def set_num_threads(n: Any) -> None:
    """Set how many threads one fastcells call may use.

    Parameters
    ----------
    n : int
        A positive integer.  Numbers above the cores present are allowed
        (oversubscription is the caller's choice; the answers are the same).
        The setting is process-wide and replaces ``FASTCELLS_NUM_THREADS``.

    Raises
    ------
    TypeError
        If ``n`` is not an integer (a bool is refused too).
    ValueError
        If ``n < 1``.
    """
    global _setting
    _setting = check_int("n", n, 1)


def get_num_threads() -> int:
    """How many threads one fastcells call may use.

    Returns
    -------
    int
        The value of :func:`set_num_threads` or ``FASTCELLS_NUM_THREADS`` when
        set; otherwise the cores this process may run on, limited by OpenMP's
        limit in the calling thread (``OMP_NUM_THREADS``, ``threadpoolctl``).
        Small calls use fewer threads than this (see the cost model in
        ``docs/design.md``), and concurrent calls share it.
    """
    if _setting is not None:
        return _setting
    return max(1, min(available_cores(), _openmp_limit()))


def thread_setting() -> int | None:
    """The explicit thread setting, or None when the default applies."""
    return _setting


@contextmanager
def claim(want: int) -> Iterator[int]:
    """Take up to ``want`` threads of the shared budget for one call.

    Yields the number of threads the call may run with: ``want`` when that
    many are free, else what is free, and at least 1 (the calling thread
    itself).  Calls that want one thread do not touch the budget.
    """
    global _in_use
    if want <= 1:
        yield 1
        return
    budget = get_num_threads()
    with _lock:
        n = max(1, min(want, budget - _in_use))
        _in_use += n
    try:
        yield n
    finally:
        with _lock:
            _in_use -= n


def threads_in_use() -> int:
    """How many threads of the budget running calls hold now (for tests and diagnostics)."""
    return _in_use
