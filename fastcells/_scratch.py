"""The kernels' scratch buffers, kept per thread and reused from call to call.

A call's scratch (forward: the packed weights; backward: those, the gate
gradients and the previous states) would otherwise be a fresh allocation
every call, and a fresh allocation costs its page faults: glibc returns
freed memory to the system (large blocks always, smaller ones when it trims
the heap), so a training loop would fault its scratch in again at every
step.  So each thread keeps its buffers in a pool (a ``threading.local``)
and :class:`Scratch` lends them to one call at a time.  The figures behind
the size limits are in docs/design.md, "Measurements behind the code's
choices" ("Scratch reuse").

Safety: threads never share a buffer; a call made while the thread's pool is
in use (a signal handler) gets fresh buffers; the pool is released on every
path, exceptions included; nothing a call returns or keeps in its cache is
a view of a scratch buffer.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import _kernels

F32 = np.float32

#: buffers are kept per thread up to this many floats each (64 MiB); larger ones
#: are allocated per call, so a thread never holds more than a few of this size
SCRATCH_MAX_FLOATS = 16 << 20
#: ... and from this many floats (128 KiB, glibc's first mmap threshold): smaller
#: ones come back from the heap warm anyway, and keeping them costs more in
#: bookkeeping than it saves
SCRATCH_MIN_FLOATS = 32 << 10


class _ScratchPool(threading.local):
    """One thread's kept buffers (by name) and whether a call is using them."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}
        self.busy = False


_POOL = _ScratchPool()


class Scratch:
    """The scratch of one call, a context manager: ``with Scratch() as s: ...``.

    :meth:`empty` and :meth:`pack` hand out the calling thread's kept buffers
    (by name), claimed at the first buffer kept and released on exit; buffers
    outside ``[SCRATCH_MIN_FLOATS, SCRATCH_MAX_FLOATS]`` are plain allocations.
    """

    __slots__ = ("bufs", "owner")
    bufs: dict[str, np.ndarray] | None
    owner: bool

    def __enter__(self) -> Scratch:
        # the pool is claimed at the first buffer it keeps, not here: a call
        # with only small buffers pays nothing for it
        self.bufs = None
        self.owner = False
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owner:
            _POOL.busy = False

    def _claim(self) -> dict[str, np.ndarray]:
        if _POOL.busy:          # in use on this thread (a signal handler): fresh ones
            self.bufs = {}
        else:
            _POOL.busy = self.owner = True
            self.bufs = _POOL.bufs
        return self.bufs

    def empty(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized float32 array of ``shape``, backed by the buffer ``name``."""
        n = 1
        for d in shape:
            n *= d
        if not SCRATCH_MIN_FLOATS <= n <= SCRATCH_MAX_FLOATS:
            return np.empty(shape, F32)
        bufs = self.bufs if self.bufs is not None else self._claim()
        buf = bufs.get(name)
        if buf is None or buf.shape[0] < n:
            buf = bufs[name] = np.empty(n, F32)
        return buf[:n].reshape(shape)

    def pack(self, name: str, W: np.ndarray, transpose: bool,
             nthreads: int = 1) -> np.ndarray:
        """``_kernels.pack(W, transpose)`` into the buffer ``name``, its panels split
        over up to ``nthreads`` threads."""
        n = _kernels.pack_floats(W.shape[0], W.shape[1], transpose)
        if n < SCRATCH_MIN_FLOATS:          # not kept: no bookkeeping
            return _kernels.pack(W, transpose)
        return _kernels.pack(W, transpose, self.empty(name, (n,)), nthreads)


def release_scratch() -> None:
    """Free the calling thread's kept scratch buffers.

    A thread keeps the largest scratch its calls have needed, at most
    ``SCRATCH_MAX_FLOATS`` floats (64 MiB) per buffer: the packed weights and,
    after a backward pass, up to four buffers the size of the gate gradients
    or the states.  Call this when a long-lived thread is done with
    fastcells; its next call allocates afresh.  Does nothing while the
    thread's buffers are in use (from a signal handler during a call).
    """
    if not _POOL.busy:
        _POOL.bufs.clear()
