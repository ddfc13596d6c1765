"""How a forward call's weights reach the time loop: the packing and projection policy.

Phase 1 of a forward pass projects the inputs of all steps with one GEMM,
``x @ W_ih.T + bias``; phase 2 multiplies the state by ``W_hh`` at every
step.  Each product either reads its weight packed into SIMD panels
(``_kernels.pack``: a transposing copy, paid once per call) or reads its rows
as they are (``_kernels.gemm_nt``: no copy, a little slower per row).  This
module decides which, per call, folds the biases, and cuts long inference
projections into chunks of time.  The rules (and why) are stated at each
constant and function; the figures behind them are in docs/design.md,
"Measurements behind the code's choices".

Every choice depends on the whole call (``T``, ``B``, ``I``), never on an
inference chunk, so training (one piece) and inference (chunks) sum in the
same order and give the same bits.  The packed product sums every row in the
same order whatever the rows around it, except one row alone (the batch-1
GEMV), the unpacked one in another: in the deterministic mode (``_config``)
every call packs and the GEMV sums in the tiles' order, so a sequence's
results do not depend on the batch it runs in.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np

from . import _config, _kernels
from ._checks import ForwardArgs
from ._parallel import gemm_nt_threads, gemm_threads
from ._scratch import Scratch

F32 = np.float32

#: ``product(A, C, nthreads, bias)`` writes ``C = A @ W_ih.T`` (``+ bias`` unless None) on
#: up to ``nthreads`` threads
Product = Callable[[np.ndarray, np.ndarray, int, "np.ndarray | None"], None]


class InputNorm(NamedTuple):
    """The input path of a layer-normalized cell: each projected row becomes
    ``LN(W_ih x; gain, beta)``, ``beta`` the layer's ``ih_bias`` with the folded
    biases added (so the projection adds no bias of its own).  ``xhat`` (T*B, G*H)
    and ``rstd`` (T*B, K) receive the normalized rows and ``1/sqrt(var + eps)`` (its
    column 0) when training keeps them, else None."""

    gain: np.ndarray
    beta: np.ndarray
    eps: float
    xhat: np.ndarray | None = None
    rstd: np.ndarray | None = None

#: inference projects the input at most this many floats of (steps x B x G*H) at
#: a time (1 MiB), into one reused buffer: memory beyond the output then does
#: not grow with T, and each chunk is still a GEMM large enough to be efficient
CHUNK_FLOATS = 1 << 18

#: ... times the threads of a threaded call: each chunk costs two parallel
#: regions (projection, loop), so a call on n threads takes chunks n times
#: larger, each thread's share of a chunk staying what one thread's is

#: batch-1 forward calls of at most this many steps multiply by ``W_hh`` as it is,
#: unpacked: packing costs more than the few unpacked steps lose (docs/design.md,
#: "Measurements behind the code's choices", "Packing policy")
UNPACKED_MAX_STEPS = 16


def unpacked_projection(rows: int, I: int) -> bool:
    """Whether the input projection of ``rows`` (T*B) rows multiplies by ``W_ih`` as it
    is (``_kernels.gemm_nt``) rather than packed (``_kernels.gemm``).

    Packing costs a copy of ``W_ih`` that a few rows do not amortize: up to 16
    rows, and up to 31 when ``I >= 256``, the unpacked product is faster; from
    32 rows the packed one is (docs/design.md, "Measurements behind the
    code's choices", "Unpacked projection").  Depends on the whole call's
    rows, not a chunk's, so training and inference project alike, bit for bit.
    """
    return rows <= 16 or (rows < 32 and I >= 256)


def packs_forward(a: ForwardArgs) -> bool:
    """Whether a forward call of ``a.T`` steps at batch ``a.B`` packs ``W_hh`` by its shape
    (else it multiplies by its rows as they are: batch 1 and at most
    ``UNPACKED_MAX_STEPS``); the deterministic mode packs in every call."""
    return not (a.B == 1 and a.T <= UNPACKED_MAX_STEPS)


class RecurrentLayout(NamedTuple):
    """How a cell's ``W_hh`` and ``b_hh`` enter its loop (a GRU's n gate differs).

    ``has_bhn``: the loop takes a ``b_hn`` vector (H,) apart from the projection's
    bias (zeros unless ``bhn_apart``); ``bhn_apart``: ``b_hn`` stays inside
    ``r * (W_hn h + b_hn)`` instead of joining the projection's bias (GRU with
    ``linear_before_reset``); ``split_n``: the last H rows of ``W_hh`` (``W_hn``)
    are packed apart, since their product waits for ``r`` (GRU without it).
    """

    has_bhn: bool = False
    bhn_apart: bool = False
    split_n: bool = False


class Weights(NamedTuple):
    """The weights as the time loop takes them: biases folded, products chosen.

    ``project(A, C, nthreads, bias)`` writes ``C = A @ W_ih.T + bias`` (see :data:`Product`);
    ``wp``/``wp_n`` are ``W_hh`` (or its
    parts, see :func:`pack_recurrent`) in the form ``packing`` names
    (``_kernels.PACK_NONE``: its rows as they are; ``PACK_FLOAT``: ``pack()``;
    ``PACK_HALF``: ``pack_half()``, float16 weights).
    """

    bias: np.ndarray | None
    bhn: np.ndarray | None
    project: Product
    packing: int
    wp: np.ndarray
    wp_n: np.ndarray | None
    peephole: np.ndarray | None


def project(x: np.ndarray, product: Product, GH: int, bias: np.ndarray | None,
            out: np.ndarray | None = None, nthreads: int = 1,
            norm: InputNorm | None = None) -> np.ndarray:
    """Phase 1: ``x (T, B, I) @ W_ih.T + bias`` as one GEMM, float32 C order (T, B, G*H),
    on up to ``nthreads`` threads (the product takes as many as its size pays for);
    with ``norm``, ``LN(x @ W_ih.T)`` instead (its beta holds the bias), its rows split
    as the projection's."""
    T, B, I = x.shape
    gx = np.empty((T * B, GH), F32) if out is None else out.reshape(T * B, GH)
    product(x.reshape(T * B, I), gx, nthreads, bias if norm is None else None)
    if norm is not None:
        n = min(nthreads, gemm_threads(T * B, GH, I)) if nthreads > 1 else 1
        _kernels.layer_norm_rows(gx, norm.gain, norm.beta, norm.eps, norm.xhat, norm.rstd, n)
    return gx.reshape(T, B, GH)


def projected_chunks(a: ForwardArgs, w: Weights, training: bool, reverse: bool,
                     nthreads: int = 1,
                     norm: InputNorm | None = None) -> Iterable[tuple[int, np.ndarray]]:
    """``(t0, gx)`` pairs: the input projection of steps ``[t0, t0 + len(gx))``, in the
    order the loop walks time, each on up to ``nthreads`` threads.

    Training projects all steps at once, and the kernel then overwrites each
    step's projection with its activated gates (kept for backward): one
    (T, B, G*H) buffer, not two (a second one would cost a fresh allocation's
    page faults).  Inference projects at once too when that fits one chunk;
    longer inference a chunk at a time into one buffer.  ``norm``: the input
    path of a layer-normalized cell (its kept arrays: training only).
    """
    GH = a.G * a.H
    if training or a.T * a.B * GH <= CHUNK_FLOATS:   # one piece: no generator
        return ((0, project(a.x, w.project, GH, w.bias, nthreads=nthreads, norm=norm)),)
    return inference_chunks(a, w.project, w.bias, reverse, nthreads, norm)


def inference_chunks(a: ForwardArgs, product: Product, bias: np.ndarray | None,
                     reverse: bool, nthreads: int = 1,
                     norm: InputNorm | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The inference chunks of :func:`projected_chunks`, one reused buffer."""
    # never a chunk of one row: the packed product of one row is the GEMV, which
    # sums in another order than the tiles of the whole call (training), unless
    # the deterministic mode is on.  So at batch 1 chunks have 2 steps at least,
    # and a step left over joins the last
    floats = CHUNK_FLOATS * max(1, nthreads)
    steps = max(2 if a.B == 1 else 1, min(a.T, floats // (a.B * a.G * a.H)))
    starts = list(range(0, a.T, steps))
    if a.B == 1 and len(starts) > 1 and a.T - starts[-1] == 1:
        starts.pop()
    buf = np.empty((max(steps, a.T - starts[-1]), a.B, a.G * a.H), F32)   # the largest
    ends = starts[1:] + [a.T]
    spans = list(zip(starts, ends))
    for t0, t1 in (reversed(spans) if reverse else spans):
        yield t0, project(a.x[t0:t1], product, a.G * a.H, bias, buf[:t1 - t0], nthreads, norm)


def fold_biases(a: ForwardArgs,
                layout: RecurrentLayout) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The bias added to the input projection, and ``b_hn`` kept apart.

    ``b_ih + b_hh`` for every gate, except ``b_hn`` when ``layout.bhn_apart``.
    Returns ``(bias or None, b_hn)``: ``b_hn`` is None unless ``layout.has_bhn``,
    zeros when it is not kept apart (or there are no biases).
    """
    bhn = np.zeros(a.H, F32) if layout.has_bhn else None
    if a.b_ih is None or a.b_hh is None:
        return None, bhn
    bias = a.b_ih + a.b_hh
    if layout.bhn_apart:
        n = slice(a.G * a.H - a.H, None)
        bias[n] = a.b_ih[n]
        bhn = a.b_hh[n].copy()   # never a view of the caller's b_hh (Stepper keeps it)
    return bias, bhn


def pack_recurrent(W_hh: np.ndarray, split_n: bool,
                   prep: Callable[[np.ndarray, int], np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """``W_hh`` as the loop takes it: ``prep(W, i)`` of its part ``i`` (packed, or its
    own rows flat).  With ``split_n`` the last H rows (``W_hn``, part 1) go apart
    from the others (part 0).  Returns ``(wp, wp_n or None)``."""
    if not split_n:
        return prep(W_hh, 0), None
    rest = W_hh.shape[0] - W_hh.shape[1]
    return prep(W_hh[:rest], 0), prep(W_hh[rest:], 1)


#: the scratch buffer names of ``W_hh``'s parts (see :func:`pack_recurrent`)
RECURRENT_BUFFERS = ("W_hh", "W_hn")


def packed_projection(P: np.ndarray, GH: int) -> Product:
    """The projection product by ``W_ih`` packed (``_kernels.pack(W_ih, True)``) in ``P``,
    its rows split over up to the threads it is given, as many as its size pays for
    (``gemm_threads``; the same bits for any count)."""
    def product(A: np.ndarray, C: np.ndarray, nthreads: int, bias: np.ndarray | None) -> None:
        n = min(nthreads, gemm_threads(A.shape[0], GH, A.shape[1])) if nthreads > 1 else 1
        _kernels.gemm(A, P, GH, C, n, bias)   # the bias joins the product's store
    return product


def unpacked_projection_product(W_ih: np.ndarray) -> Product:
    """The projection product by ``W_ih`` as it is (few rows), its columns split over up
    to the threads it is given, as many as its size pays for (``gemm_nt_threads``; the
    same bits for any count)."""
    GH, I = W_ih.shape
    def product(A: np.ndarray, C: np.ndarray, nthreads: int, bias: np.ndarray | None) -> None:
        n = min(nthreads, gemm_nt_threads(A.shape[0], GH, I)) if nthreads > 1 else 1
        _kernels.gemm_nt(A, W_ih, C, n)
        if bias is not None:
            C += bias
    return product


#: a weight is packed on several threads (a threaded call's) from this many floats:
#: smaller packs are cheaper than a fork/join
PACK_SPLIT_MIN_FLOATS = 1 << 16


def weights_for_call(a: ForwardArgs, s: Scratch, layout: RecurrentLayout,
                     nthreads: int = 1) -> Weights:
    """The weights of one forward call: packed (into ``s``'s buffers, kept by the
    thread) when the call's shape pays for it or the deterministic mode is on,
    large packs split over up to ``nthreads`` threads.  The packs use backward's
    buffer names: a thread never runs both at once, so one buffer per weight serves
    either layout."""
    def threads_for(W: np.ndarray) -> int:
        return nthreads if W.size >= PACK_SPLIT_MIN_FLOATS else 1

    deterministic = _config.get_deterministic()   # read once: one mode for the whole call
    bias, bhn = fold_biases(a, layout)
    project: Product
    if not deterministic and unpacked_projection(a.T * a.B, a.I):
        project = unpacked_projection_product(a.W_ih)
    else:
        project = packed_projection(s.pack("W_ih", a.W_ih, True, threads_for(a.W_ih)),
                                    a.G * a.H)
    if deterministic or packs_forward(a):
        packing = _kernels.PACK_FLOAT
        prep = lambda W, i: s.pack(RECURRENT_BUFFERS[i], W, True, threads_for(W))  # noqa: E731
    else:
        packing = _kernels.PACK_NONE
        prep = lambda W, i: W.ravel()  # noqa: E731
    wp, wp_n = pack_recurrent(a.W_hh, layout.split_n, prep)
    return Weights(bias, bhn, project, packing, wp, wp_n, a.peephole)


def prepared_weights(a: ForwardArgs, layout: RecurrentLayout, W_ih: np.ndarray,
                     W_hh: np.ndarray, half: bool) -> tuple[Weights, np.ndarray]:
    """Weights prepared once (``Stepper``): always packed, into buffers of their own.

    ``W_ih``/``W_hh`` are ``a``'s, or their float16 values when ``half`` (packed by
    ``pack_half``, whose few-row products read the float16 panels).  Returns the
    weights and ``W_ih``'s pack (the step kernel projects with it too).
    """
    bias, bhn = fold_biases(a, layout)
    if half:
        packing = _kernels.PACK_HALF
        pack: Callable[[np.ndarray], np.ndarray] = _kernels.pack_half
    else:
        packing = _kernels.PACK_FLOAT
        pack = lambda W: _kernels.pack(W, True)  # noqa: E731
    wp, wp_n = pack_recurrent(W_hh, layout.split_n, lambda W, i: pack(W))
    P_ih = pack(W_ih)
    peephole = None if a.peephole is None else a.peephole.copy()
    weights = Weights(bias, bhn, packed_projection(P_ih, a.G * a.H), packing, wp, wp_n,
                      peephole)
    return weights, P_ih
