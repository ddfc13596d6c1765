"""How one call splits across threads: the cost model and the row blocks.

How it is built, and why:
- A call has two parallel parts.  The time loop splits by batch rows: each
  thread runs every step on its own contiguous block of rows, so the
  threads never wait for each other between steps (one fork and one join
  per loop call).  A forward at batch 1-4 with a large H, which rows cannot
  split, splits each step by hidden units instead (``column_threads``: one
  fork and join per step).  The input projection, one large GEMM, splits by
  rows too (``_kernels.gemm``'s ``nthreads``), or a short one by columns.
- Bits: the packed GEMM gives a row the same bits whatever rows it is
  multiplied with, for products of 2 rows or more (csrc/gemm_impl.h), and
  every other step of the loops is per row.  So every block has at least
  ``SPLIT_MIN_ROWS`` = 2 rows (one row would take the GEMV, which sums in
  another order), a batch of 1 is never split, and the answers are the same
  for any thread count.
- The cost model below says how many threads a call wants; the shared
  budget (``_threads.claim``) says how many it gets.  Calls that want one
  thread never touch the budget: a small call costs a few comparisons more.
- A batch of 1 to 3 rows (or 4, when the rows do not pay) cannot split by
  rows: its forward loop splits each step by hidden units instead (whole
  16-column panels of every gate, ``_kernels``' "column blocks"), one fork and
  one join per step; same bits for any count, since the GEMM sums each
  column within its panel and the activations work lane by lane.
- With ``lengths``, blocks are cut so that their valid steps (the sum of
  their rows' lengths) are even, so the threads finish together; a block
  whose rows have all ended skips its recurrent product (in the loops).

The constants are to be set from ``scripts/measure/thread_costmodel.py``
run on a quiet machine (1 vs 2 threads per cell and shape, and the cost of
one fork/join); the figures go to docs/design.md, not here.
"""
from __future__ import annotations

import numpy as np

from . import _kernels

#: a block of the time loop never has fewer rows than this: one row would take
#: the GEMV path and change the bits (a fact of the GEMM, not a tunable)
SPLIT_MIN_ROWS = 2
#: the time loop splits only when each thread gets at least this many rows: fewer
#: rows than a GEMM tile per thread leave the tiles part empty while each thread
#: still streams all of ``W_hh`` at every step
MIN_ROWS_PER_THREAD = 4
#: ... and at least this much recurrent product per step and thread
#: (``2 * rows * G*H * H`` flops): below it a step is dominated by the gate pass
#: and the call's fixed costs, which a split does not shorten
MIN_STEP_FLOPS_PER_THREAD = 1 << 15

#: with only 2 or 3 rows per thread, the split pays only for more work per step
#: (each thread streams all of ``W_hh`` for few rows) ...
MIN_STEP_FLOPS_FEW_ROWS = 1 << 18
#: ... and up to this hidden size: beyond it both threads stream a ``W_hh`` that
#: outgrows the caches, and the forward ran no faster split (docs/design.md,
#: "Threads")
FEW_ROWS_MAX_H = 512
#: batches of at most this many rows that the rows do not split split each forward
#: step by hidden units instead (the columns of the recurrent product): one fork
#: and one join per step, paid for by a large enough step
COLUMN_SPLIT_MAX_ROWS = 4
#: ... from this hidden size (below it a step is too short for a join per step) ...
COLUMN_SPLIT_MIN_H = 256
#: ... with at least this many units per thread ...
COLUMN_MIN_UNITS = 128
#: ... and at least this much recurrent product per step and thread (``2 * B * G*H
#: * H`` flops): below it the join each step costs about what the split saves
MIN_COLUMN_STEP_FLOPS_PER_THREAD = 1 << 18
#: a column block is whole packed panels of this many columns (``_kernels``: the
#: GEMM sums each column within its panel; a fact of the GEMM, not a tunable)
COLUMN_GRANULE: int = _kernels.panel_columns()
#: a product (input projection, ``dx``) splits only when each thread gets at
#: least this many flops, far above the cost of one fork/join
MIN_GEMM_FLOPS_PER_THREAD = 1 << 21
#: products split in blocks of a multiple of this many rows (``_kernels``: a
#: multiple of every ISA's tile height)
GEMM_ROW_GRANULE: int = _kernels.gemm_row_granule()


def step_flops(B: int, G: int, H: int, P: int | None = None) -> int:
    """Flops of one step's products over ``B`` rows: the recurrent product, and for an
    LSTM with projection to ``P < H`` values (``h`` of P) also ``h = W_hr m``."""
    if P is None or P >= H:
        return 2 * B * G * H * H
    return 2 * B * H * P * (G + 1)


def loop_threads(B: int, G: int, H: int, P: int | None = None) -> int:
    """How many threads the time loop of a batch of ``B`` rows (``G`` gates of ``H``,
    ``P``: a projection's width, see :func:`step_flops`) wants: at most one per
    ``MIN_ROWS_PER_THREAD`` rows and per ``MIN_STEP_FLOPS_PER_THREAD`` of product per
    step, or else, for ``H <= FEW_ROWS_MAX_H``, one per ``SPLIT_MIN_ROWS`` rows and per
    ``MIN_STEP_FLOPS_FEW_ROWS``; 1 for small work."""
    if B < 2 * SPLIT_MIN_ROWS:
        return 1
    flops = step_flops(B, G, H, P)
    n = min(B // max(MIN_ROWS_PER_THREAD, SPLIT_MIN_ROWS),
            flops // max(MIN_STEP_FLOPS_PER_THREAD, 1))
    if n < 2 and H <= FEW_ROWS_MAX_H:
        n = min(B // SPLIT_MIN_ROWS, flops // max(MIN_STEP_FLOPS_FEW_ROWS, 1))
    return max(1, n)


def column_threads(B: int, G: int, H: int) -> int:
    """How many threads the time loop of a batch too small to split by rows wants when
    each step splits by hidden units instead (:func:`column_blocks`): at most one per
    ``COLUMN_MIN_UNITS`` units and per ``MIN_COLUMN_STEP_FLOPS_PER_THREAD`` of
    recurrent product per step, from ``H >= COLUMN_SPLIT_MIN_H``, at most
    ``COLUMN_SPLIT_MAX_ROWS`` rows, ``H`` whole panels; 1 otherwise (and where the
    rows split)."""
    if (B > COLUMN_SPLIT_MAX_ROWS or H < COLUMN_SPLIT_MIN_H or H % COLUMN_GRANULE
            or loop_threads(B, G, H) > 1):
        return 1
    return max(1, min(H // max(COLUMN_MIN_UNITS, COLUMN_GRANULE),
                      2 * B * G * H * H // max(MIN_COLUMN_STEP_FLOPS_PER_THREAD, 1)))


def column_blocks(H: int, n: int) -> np.ndarray | None:
    """The unit bounds (int64, ``0 = j_0 < ... < j_k = H``, multiples of
    ``COLUMN_GRANULE``) of a column-split loop for at most ``n`` threads, or None
    for one block: whole panels, as even as they go."""
    panels = H // COLUMN_GRANULE
    n = min(n, panels)
    if n <= 1:
        return None
    return np.array([panels * i // n * COLUMN_GRANULE for i in range(n + 1)], dtype=np.int64)


def gemm_threads(m: int, n: int, k: int) -> int:
    """How many threads a packed product of ``m`` rows, ``n`` columns and depth ``k``
    wants: at most one per ``GEMM_ROW_GRANULE`` rows and per
    ``MIN_GEMM_FLOPS_PER_THREAD``; 1 for small products."""
    if m < 2 * GEMM_ROW_GRANULE:
        return 1
    return max(1, min(m // GEMM_ROW_GRANULE,
                      2 * m * n * k // max(MIN_GEMM_FLOPS_PER_THREAD, 1)))


def gemm_nt_threads(m: int, n: int, k: int) -> int:
    """How many threads an unpacked product (``_kernels.gemm_nt``: a short projection)
    of ``m`` rows, ``n`` columns and depth ``k`` wants: it splits C's columns, so at
    most one per ``COLUMN_GRANULE`` columns and per ``MIN_GEMM_FLOPS_PER_THREAD``."""
    return max(1, min(n // COLUMN_GRANULE, 2 * m * n * k // max(MIN_GEMM_FLOPS_PER_THREAD, 1)))


def forward_threads(T: int, B: int, I: int, G: int, H: int, columns: bool = False,
                    P: int | None = None) -> int:
    """How many threads a forward call wants (its loop's or its projection's need);
    ``columns``: its loop may split by hidden units (:func:`column_threads`); ``P``: an
    LSTM's projection width (:func:`step_flops`)."""
    if (B < 2 * SPLIT_MIN_ROWS and T * B < 2 * GEMM_ROW_GRANULE
            and (not columns or H < COLUMN_SPLIT_MIN_H)):
        return 1        # small calls: decided in a few comparisons
    loop = max(loop_threads(B, G, H, P), column_threads(B, G, H) if columns else 1)
    return max(loop, gemm_threads(T * B, G * H, I))


def row_blocks(B: int, n: int, lengths: np.ndarray | None = None) -> np.ndarray | None:
    """The row bounds (int64, ``0 = b_0 < ... < b_k = B``) of the time loop's blocks
    for at most ``n`` threads, or None for one block.

    Blocks are contiguous, of at least ``SPLIT_MIN_ROWS`` rows; without ``lengths``
    of equal size, with them cut where the running sum of lengths crosses each
    thread's share, so each block has about the same valid steps.
    """
    n = min(n, B // SPLIT_MIN_ROWS)
    if n <= 1:
        return None
    total = 0 if lengths is None else int(lengths.sum())
    if lengths is None or total == 0:      # no lengths, or none valid: equal rows
        cuts = [B * i // n for i in range(1, n)]
    else:
        # the cut whose prefix of valid steps is nearest each thread's share
        prefix = np.zeros(B + 1, np.int64)
        np.cumsum(lengths, out=prefix[1:])
        share = total * np.arange(1, n) / n
        above = np.minimum(np.searchsorted(prefix, share), B)
        nearer_below = share - prefix[above - 1] < prefix[above] - share
        cuts = (above - nearer_below).tolist()
    bounds = [0]
    for i, cut in enumerate(cuts, 1):   # each block keeps its minimum, and leaves room
        bounds.append(min(max(cut, bounds[-1] + SPLIT_MIN_ROWS), B - (n - i) * SPLIT_MIN_ROWS))
    bounds.append(B)
    return np.array(bounds, dtype=np.int64)
