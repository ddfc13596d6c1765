# cython: language_level=3
"""Time loops of the RNN, GRU and LSTM cells, forward and backward (BPTT).

How this module is built, and why:
- Each public function here is a thin ``def`` over typed memoryviews (the
  boundary: ``fastcells.functional`` has already validated shapes and
  dtypes and allocated every buffer), which takes raw float32 pointers and
  runs a ``cdef ... noexcept nogil`` loop with the GIL released.
- The loops contain no Python, no allocation and no NumPy call: per step one
  small GEMM (``csrc/gemm.h``; ``W_hh`` packed once per call, or read as it is
  for short batch-1 calls) and one
  fused pointwise pass per batch row that applies the gates and writes the
  new state, the output and (training only) what backward needs.
- The input projection before the loop is one large GEMM on fastcells' own
  products (``gemm``: packed; ``gemm_nt``: unpacked, for few rows), called by
  the Python layer (``fastcells._packing``); after backward's loop, ``dx`` is
  one packed ``gemm`` and ``dW_ih``/``dW_hh`` are ``gemm_tn`` (``C = A^T B``,
  C's rows split across threads, see ``csrc/gemm_tn.h``).
- How each product reads its weight is the ``packing`` argument, one of the
  ``PACK_*`` constants below (exposed to Python); the cell facts the wrappers
  need (gate counts) come from ``fastcells._cells``.
- One call may run on several threads (OpenMP, ``prange``): each loop takes
  a block of batch rows and runs every step on it, and the products split by
  rows (see "row blocks" below); a forward loop of too few rows to split
  splits each step by hidden units instead ("column blocks"), and the
  unpacked product by columns; with one block nothing enters OpenMP.
- ``lengths`` (or NULL) marks the steps ``t >= lengths[b]`` that leave row
  ``b`` untouched; ``reverse`` walks time backwards, each row starting at its
  own last valid step.  Backward walks the forward order in reverse.
- A layer-normalized cell is the same loops with an ``ln`` argument: the
  recurrent product's rows (and the LSTM's new cell state) are normalized in
  the gate pass, their gradients in the BPTT pass (see "layer normalization").
- An LSTM with projection is the LSTM loops with a ``proj`` argument: one more
  small product per step and row block, ``h = W_hr m`` (see "projection").
"""
from cython.parallel cimport prange
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

import numpy as np

cimport openmp

from ._cells import CELLS


cdef extern from "cpu.h" nogil:
    int fc_isa_available()
    int fc_set_isa(int isa)
    int fc_get_isa()
    const char *fc_isa_name(int isa)
    int FC_ISA_COUNT

cdef extern from "gemm.h" nogil:
    enum:
        FC_NR               # columns per packed panel
    Py_ssize_t fc_packed_size(Py_ssize_t k, Py_ssize_t n)
    void fc_pack(const float *src, Py_ssize_t k, Py_ssize_t n, Py_ssize_t rs,
                 Py_ssize_t cs, float *P)
    void fc_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *A, Py_ssize_t lda,
                 const float *P, float *C, Py_ssize_t ldc)
    void fc_gemm_bias(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *A, Py_ssize_t lda,
                      const float *P, const float *bias, float *C, Py_ssize_t ldc)
    void fc_gemm_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *A, Py_ssize_t lda,
                    const float *W, Py_ssize_t ldw, float *C, Py_ssize_t ldc)
    void fc_gemm_half(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *A, Py_ssize_t lda,
                      const float *P, const unsigned short *Ph, float *C, Py_ssize_t ldc)
    int fc_has_half()

cdef extern from "activations.h" nogil:
    void fc_sigmoid(float *x, Py_ssize_t n)
    void fc_tanh(float *x, Py_ssize_t n)
    void fc_lstm_cell(float *a, Py_ssize_t H, float *c, float *h, float *y, Py_ssize_t n,
                      int keep)
    void fc_add(float *a, const float *x, Py_ssize_t n)

cdef extern from "layernorm.h" nogil:
    float fc_ln_forward(const float *x, float *out, Py_ssize_t n, float eps, const float *g,
                        const float *b, float *xhat)
    void fc_ln_backward(const float *dy, const float *xhat, float rstd, const float *g,
                        Py_ssize_t n, float *dx)

cdef extern from "fpenv.h" nogil:
    # flush-to-zero for the loops, the caller's mode restored after (see fpenv.h);
    # the saved control word: unsigned long long on every platform, as in fpenv.h
    ctypedef unsigned long long fc_fpenv_t
    fc_fpenv_t fc_fpenv_enter()
    void fc_fpenv_exit(fc_fpenv_t saved)


# ----------------------------------------------------------------------------
# named constants

#: how a product reads its weight W (the loops' ``packing`` argument)
cpdef enum Packing:
    PACK_NONE = 0      # W's own rows, k floats apart (gemm_nt: nothing to pack)
    PACK_FLOAT = 1     # packed by pack()
    PACK_HALF = 2      # packed by pack_half(): few-row products read its float16 panels

# Python sees Packing's members as module constants too (_kernels.PACK_FLOAT)
globals().update(Packing.__members__)

#: which cell a StepKernel runs (tested inside nogil)
cdef enum CellKind:
    KIND_RNN
    KIND_GRU
    KIND_LSTM

_KINDS = {"rnn": KIND_RNN, "gru": KIND_GRU, "lstm": KIND_LSTM}

#: the columns of a layer-normalized loop's kept ``rstd`` (T, B, LN_STATS): the
#: 1/sqrt(var + eps) of the input path, the recurrent path and (LSTM) the cell state
cpdef enum LayerNormStat:
    LN_IH = 0
    LN_HH = 1
    LN_C = 2

globals().update(LayerNormStat.__members__)

#: the stats kept per row and step, per cell (``ln_rstd``'s last axis)
LN_STATS = {"rnn": 2, "gru": 2, "lstm": 3}


# ----------------------------------------------------------------------------
# threads

def openmp_max_threads():
    """OpenMP's thread limit in the calling thread (``OMP_NUM_THREADS``, threadpoolctl)."""
    return openmp.omp_get_max_threads()


# ----------------------------------------------------------------------------
# instruction sets

def isa_names():
    """Names of all ISA paths, in order of preference (widest last)."""
    return [fc_isa_name(i).decode() for i in range(FC_ISA_COUNT)]


def isa_available():
    """Names of the ISA paths this machine can run."""
    cdef int mask = fc_isa_available()
    return [fc_isa_name(i).decode() for i in range(FC_ISA_COUNT) if mask & (1 << i)]


def get_isa():
    """Name of the ISA path in use."""
    return fc_isa_name(fc_get_isa()).decode()


def set_isa(str name):
    """Use the ISA path ``name``; ValueError if unknown or not supported here."""
    names = isa_names()
    if name not in names:
        raise ValueError(f"ISA: expected one of {names}, got {name!r}")
    if fc_set_isa(names.index(name)) != 0:
        raise ValueError(f"ISA: {name!r} is not supported by this CPU "
                         f"(available: {isa_available()})")


cdef extern from "gemm.h" nogil:
    void fc_set_gemv_tiles(int on)
    int fc_get_gemv_tiles()


def set_gemv_tiles(bint on):
    """Batch-1 products in the packed tiles' order (the deterministic mode) or not."""
    fc_set_gemv_tiles(on)


def get_gemv_tiles():
    """Whether batch-1 products sum in the packed tiles' order."""
    return bool(fc_get_gemv_tiles())


# ----------------------------------------------------------------------------
# weight packing

cdef inline Py_ssize_t _pack_floats(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # the packed panels, plus room to start them on a 64-byte boundary
    return max(fc_packed_size(k, n), 1) + 15


def pack_floats(Py_ssize_t rows, Py_ssize_t cols, bint transpose):
    """Floats of the buffer :func:`pack` needs for a (rows, cols) ``W`` (room to align)."""
    if rows < 0 or cols < 0:
        raise ValueError(f"rows, cols: expected sizes >= 0, got ({rows}, {cols})")
    return _pack_floats(cols, rows) if transpose else _pack_floats(rows, cols)


cdef void _pack_range(const float *W, Py_ssize_t k, Py_ssize_t n, Py_ssize_t rs,
                      Py_ssize_t cs, float *P, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Panels [p0, p1) of the pack of a K x N matrix: the pack of its columns from
    16 p0 on is the same panels, so threads may each pack a range (a copy: the same
    bits whatever the split)."""
    cdef Py_ssize_t c0 = p0 * FC_NR, c1 = min(n, p1 * FC_NR)
    if c1 > c0:
        fc_pack(W + c0 * cs, k, c1 - c0, rs, cs, P + c0 * k)


def pack(const float[:, ::1] W, bint transpose, buf=None, Py_ssize_t nthreads=1):
    """Pack ``W`` (N_out, K) for ``A @ W.T`` (transpose=True) or ``W`` (K, N) for ``A @ W``.

    Into ``buf`` (float32, C order, at least :func:`pack_floats` floats) when
    given, else a new array; returns the 64-byte aligned packed view.  The panels
    are split over up to ``nthreads`` threads (a copy: the same bits)."""
    cdef Py_ssize_t k, n, rs, cs, npan, per, i, nt
    if transpose:
        n, k = W.shape[0], W.shape[1]
        rs, cs = 1, W.shape[1]
    else:
        k, n = W.shape[0], W.shape[1]
        rs, cs = W.shape[1], 1
    # aligned to 64 bytes (a cache line, one AVX-512 register): NumPy gives 16,
    # and a misaligned 64-byte load costs two (docs/design.md, "The packed GEMM")
    cdef Py_ssize_t need = _pack_floats(k, n), size = need - 15
    if buf is None:
        buf = np.empty(need, dtype=np.float32)
    else:
        _check_pack_buffer(buf, need)
    cdef Py_ssize_t off = (16 - (<size_t>buf.ctypes.data // 4) % 16) % 16
    out = buf[off:off + size]
    cdef float[::1] P = out
    if nthreads < 1:
        raise ValueError(f"nthreads: expected a positive integer, got {nthreads}")
    npan = (n + FC_NR - 1) // FC_NR
    nt = min(nthreads, npan)
    if W.shape[0] and W.shape[1]:
        with nogil:
            if nt <= 1:
                fc_pack(&W[0, 0], k, n, rs, cs, &P[0])
            else:
                per = (npan + nt - 1) // nt
                for i in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                    _pack_range(&W[0, 0], k, n, rs, cs, &P[0], i * per,
                                min(npan, (i + 1) * per))
    return out


#: products of at most this many rows read pack_half's float16 panels: they stream the
#: weights, so fewer bytes make them faster; products of more rows are bound by their
#: arithmetic, not the weights' bytes, and gain nothing measurable (docs/design.md,
#: "Measurements behind the code's choices", "Float16 weights")
cdef Py_ssize_t HALF_MAX_ROWS = 2


def half_max_rows():
    """Products of at most this many rows read :func:`pack_half`'s float16 panels."""
    return HALF_MAX_ROWS


cdef inline Py_ssize_t _half_offset(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # where pack_half's float16 panels start: after the float panels, 64-byte aligned
    return _pack_floats(k, n) // 16 * 16


cdef Py_ssize_t _weight_floats(int packing, Py_ssize_t k, Py_ssize_t n):
    """The floats of W (n x k) for ``A @ W.T`` in the form ``packing`` names: W's rows
    (PACK_NONE), :func:`pack`'s panels (PACK_FLOAT) or :func:`pack_half`'s (PACK_HALF)."""
    if packing == PACK_NONE:
        return n * k
    if packing == PACK_HALF:
        return _half_offset(k, n) + (fc_packed_size(k, n) + 1) // 2
    return fc_packed_size(k, n)


def has_half():
    """Whether the ISA in use reads float16 weights in few-row products (:func:`pack_half`)."""
    return bool(fc_has_half())


def pack_half(const float[:, ::1] W):
    """Pack ``W`` (N_out, K) for ``A @ W.T`` as :func:`pack` does, followed by the same
    panels as float16: products of at most :func:`half_max_rows` rows read those (half the
    bytes) on ISA paths that convert float16 in hardware (:func:`has_half`), with the same
    bits.  ``W``'s values must be float16 values (the caller rounds them), so that the
    copy is exact; checked.
    Returns the 64-byte aligned view of both (pass it with ``packing = PACK_HALF``)."""
    cdef Py_ssize_t n = W.shape[0], k = W.shape[1]
    cdef Py_ssize_t size = fc_packed_size(k, n), off = _half_offset(k, n)
    cdef Py_ssize_t total = off + (size + 1) // 2
    buf = np.empty(total + 15, dtype=np.float32)
    P = pack(W, True, buf)        # buf's aligned start, and the float panels there
    start = (P.ctypes.data - buf.ctypes.data) // 4
    out = buf[start:start + total]
    P = P[:size]                  # pack() keeps one float even when W is empty
    halves = out[off:].view(np.float16)[:size]
    halves[...] = P
    if not np.array_equal(halves, P, equal_nan=True):
        raise ValueError("W: expected float16 values (round with W.astype(np.float16)), "
                         "got values float16 does not hold")
    return out


def _check_pack_buffer(buf, Py_ssize_t need):
    if (type(buf) is np.ndarray and buf.dtype == np.float32 and buf.ndim == 1
            and buf.flags.c_contiguous and buf.flags.writeable and buf.shape[0] >= need):
        return      # the messages below cost microseconds: only on failure
    want = f"buf: expected a writable 1-D C-contiguous float32 array of at least {need} floats"
    if type(buf) is not np.ndarray:
        raise ValueError(f"{want}, got {type(buf).__name__}")
    for ok, got in ((buf.dtype == np.float32, f"dtype {buf.dtype}"),
                    (buf.ndim == 1, f"{buf.ndim}-D array"),
                    (buf.flags.c_contiguous, "a non-contiguous array"),
                    (buf.flags.writeable, "a read-only array"),
                    (buf.ndim != 1 or buf.shape[0] >= need, f"shape {buf.shape}")):
        if not ok:
            raise ValueError(f"{want}, got {got}")


#: the arguments of one unpacked product C = A @ W.T, for _run_rows over W's rows
ctypedef struct ProductNT:
    Py_ssize_t m, k, ldc
    const float *A
    const float *W
    float *C


cdef void _gemm_nt_cols(const void *p, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """C's columns [j0, j1) (W's rows) of an unpacked product."""
    cdef const ProductNT *a = <const ProductNT *>p
    fc_gemm_nt(a.m, j1 - j0, a.k, a.A, a.k, a.W + j0 * a.k, a.k, a.C + j0, a.ldc)


def gemm_nt(const float[:, ::1] A, const float[:, ::1] W, float[:, ::1] C,
            Py_ssize_t nthreads=1):
    """``C = A @ W.T`` with ``W`` unpacked (for tests and projections), C's columns (W's
    rows) split over up to ``nthreads`` threads in blocks of whole cache lines: every
    element is summed in the same order whatever its block (csrc/gemm_nt_impl.h), so
    the same bits for any ``nthreads``.  Runs in the caller's floating-point mode."""
    cdef Py_ssize_t m = A.shape[0], k = A.shape[1], n = W.shape[0], per, nb
    if W.shape[1] != k:
        raise ValueError(f"W: expected shape ({n}, {k}), got ({W.shape[0]}, {W.shape[1]})")
    if C.shape[0] != m or C.shape[1] != n:
        raise ValueError(f"C: expected shape ({m}, {n}), got ({C.shape[0]}, {C.shape[1]})")
    if nthreads < 1:
        raise ValueError(f"nthreads: expected a positive integer, got {nthreads}")
    if not (m and n):
        return
    # equal blocks of whole FC_NR-column groups (C's cache lines), the last taking the rest
    per = ((n + FC_NR - 1) // FC_NR + nthreads - 1) // nthreads * FC_NR
    cdef const int64_t[::1] bounds = np.array(list(range(0, n, per)) + [n], dtype=np.int64)
    nb = bounds.shape[0] - 1
    cdef ProductNT prod
    cdef float dummy = 0     # k == 0: a valid address, never read (not NULL + offsets)
    prod.m, prod.k, prod.ldc = m, k, n
    prod.A, prod.W, prod.C = &A[0, 0] if k else &dummy, &W[0, 0] if k else &dummy, &C[0, 0]
    with nogil:
        _run_rows(_gemm_nt_cols, &prod, n, &bounds[0], nb, False)


cdef void _activate(float *x, Py_ssize_t n, bint tanh, bint ftz) noexcept nogil:
    cdef fc_fpenv_t env = 0
    if ftz:
        env = fc_fpenv_enter()
    if tanh:
        fc_tanh(x, n)
    else:
        fc_sigmoid(x, n)
    if ftz:
        fc_fpenv_exit(env)


def sigmoid_(float[::1] x, bint ftz=False):
    """In-place sigmoid over a contiguous float32 vector (the ISA in use; for tests);
    ``ftz``: in the loops' flush-to-zero mode, else in the caller's."""
    if x.shape[0]:
        with nogil:
            _activate(&x[0], x.shape[0], False, ftz)


def tanh_(float[::1] x, bint ftz=False):
    """In-place tanh over a contiguous float32 vector (the ISA in use; for tests);
    ``ftz``: in the loops' flush-to-zero mode, else in the caller's."""
    if x.shape[0]:
        with nogil:
            _activate(&x[0], x.shape[0], True, ftz)


# ----------------------------------------------------------------------------
# shared pieces of the loops

cdef inline bint _masked(const int64_t *lens, Py_ssize_t t, Py_ssize_t b) noexcept nogil:
    return lens != NULL and t >= lens[b]


cdef inline Py_ssize_t _step_time(Py_ssize_t s, Py_ssize_t t0, Py_ssize_t n,
                                  bint backwards) noexcept nogil:
    """Time of the s-th step of a walk over [t0, t0 + n), forwards or backwards."""
    return t0 + (n - 1 - s if backwards else s)


cdef inline Py_ssize_t _block_steps(const int64_t *lens, Py_ssize_t b0,
                                    Py_ssize_t b1) noexcept nogil:
    """Steps t below which some row of [b0, b1) is active (no lengths: every step).
    From there on the block's rows are all masked: its recurrent product is skipped."""
    cdef Py_ssize_t b, most = 0
    if lens == NULL:
        return PY_SSIZE_T_MAX
    for b in range(b0, b1):
        if lens[b] > most:
            most = lens[b]
    return most


cdef inline const float *_prev_row(const float *seq, const float *init, Py_ssize_t t,
                                   Py_ssize_t b, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                                   const int64_t *lens, bint reverse) noexcept nogil:
    """Row b of the state before step t: the previous processed step's, or the initial one."""
    cdef Py_ssize_t last = lens[b] if lens != NULL else T
    if reverse:
        if t + 1 < last:
            return seq + ((t + 1) * B + b) * H
    elif t > 0:
        return seq + ((t - 1) * B + b) * H
    return init + b * H


def _check_chunk(Py_ssize_t t0, Py_ssize_t n, Py_ssize_t T):
    if t0 < 0 or n < 1 or t0 + n > T:
        raise ValueError(f"chunk: expected steps within [0, {T}), got [{t0}, {t0 + n})")


cdef _check_kept(Py_ssize_t t0, const float[:, :, ::1] gx, const float[:, :, ::1] y,
                 float[:, :, ::1] gates, Py_ssize_t G, kept, Py_ssize_t H=-1):
    """What the loop keeps for backward covers every step (``gates`` (T, B, G*H),
    each of ``kept`` (T, B, H)); ``gates`` may be ``gx`` only when that is all of T.
    ``H``: the hidden size, when not ``y``'s (a projected LSTM's ``y`` has P values)."""
    cdef Py_ssize_t T = y.shape[0], B = y.shape[1]
    if H < 0:
        H = y.shape[2]
    if gates is None:
        return
    got = (gates.shape[0], gates.shape[1], gates.shape[2])
    if got != (T, B, G * H):
        raise ValueError(f"gates: expected shape (T, B, G*H) = ({T}, {B}, {G * H}), got {got}")
    for name, a in kept:
        if a is not None and a.shape != (T, B, H):
            raise ValueError(f"{name}: expected shape (T, B, H) = ({T}, {B}, {H}), got "
                             f"{a.shape}")
    if B and &gates[0, 0, 0] == &gx[0, 0, 0] and (t0 != 0 or gx.shape[0] != T):
        raise ValueError(f"gates: may be gx's buffer only for one chunk of all {T} steps, "
                         f"got steps [{t0}, {t0 + gx.shape[0]})")


cdef inline void _recur(int packing, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *A,
                        const float *w, float *C) noexcept nogil:
    """C (m x n) = A (m x k) @ W.T for a forward step: ``w`` is W in the form ``packing``
    names (PACK_FLOAT: :func:`pack`; PACK_HALF: :func:`pack_half`, whose float16 panels
    few rows read; PACK_NONE: W's own rows, k floats apart, see gemm_nt_impl.h)."""
    if packing == PACK_HALF and m <= HALF_MAX_ROWS:
        fc_gemm_half(m, n, k, A, k, w, <const unsigned short *>(w + _half_offset(k, n)), C, n)
    elif packing == PACK_NONE:
        fc_gemm_nt(m, n, k, A, k, w, k, C, n)
    else:
        fc_gemm(m, n, k, A, k, w, C, n)


cdef inline const float *_opt(const float[:, :, ::1] a) noexcept nogil:
    return &a[0, 0, 0] if a is not None else NULL


cdef inline float *_opt_w(float[:, :, ::1] a) noexcept nogil:
    return &a[0, 0, 0] if a is not None else NULL


cdef inline const int64_t *_lens(const int64_t[::1] lengths) noexcept nogil:
    return &lengths[0] if lengths is not None else NULL


cdef inline void _copy_rows_active(float *dst, const float *src, const float *extra,
                                   Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t H,
                                   const int64_t *lens, Py_ssize_t t) noexcept nogil:
    """dst[b] = src[b] (+ extra[b]) for the rows of [b0, b1) active at step t."""
    cdef Py_ssize_t b, j
    for b in range(b0, b1):
        if _masked(lens, t, b):
            continue
        if extra == NULL:
            memcpy(dst + b * H, src + b * H, H * sizeof(float))
        else:
            for j in range(H):
                dst[b * H + j] = src[b * H + j] + extra[b * H + j]


# ----------------------------------------------------------------------------
# row blocks: one call's rows split across threads
#
# Each loop runs every step of its chunk on the rows [b0, b1) of the batch
# (strides stay the whole batch B), so the threads of one call never wait for
# each other between steps.  Every buffer a loop writes is indexed by row (the
# states, outputs, kept arrays, gradients and the scratch gh, rh, ghn, tmp,
# direct), so blocks never share memory.  The packed product gives a row the
# same bits whatever other rows it is multiplied with, for 2 rows or more
# (csrc/gemm_impl.h): with blocks of at least 2 rows (or the whole batch of
# one row) the results do not depend on the split.

#: the arguments of one forward loop over a chunk of time (see rnn_forward & co.)
ctypedef struct FwdLoop:
    Py_ssize_t t0, n, B, H
    int packing
    bint reverse, relu, lbr
    const int64_t *lens
    const float *gx
    const float *wp
    const float *wp_n
    const float *peep
    const float *bhn
    float *h
    float *c
    float *y
    float *gates
    float *kept          # LSTM: cs; GRU with linear_before_reset: hn
    float *gh
    float *rh
    float *ghn
    # layer normalization (see "layer normalization" below); ln_hh_w NULL: none
    float ln_eps
    Py_ssize_t ln_k      # columns of ln_rstd
    const float *ln_hh_w
    const float *ln_hh_b
    const float *ln_c_w
    const float *ln_c_b
    float *ln_xih        # kept (T, B, G*H): zeroed at masked steps (written before the loop)
    float *ln_xhh        # kept (T, B, G*H): the normalized W_hh h
    float *ln_xc         # kept (T, B, H), LSTM: the normalized c_t
    float *ln_rstd       # kept (T, B, ln_k)
    # projection (LSTM with W_hr, see "projection"); wr NULL: none.  h and y then
    # have P values per row, c and the gates H
    Py_ssize_t P
    const float *wr      # W_hr (P, H) in the form ``packing`` names, for m @ W_hr.T
    float *m             # kept (T, B, H) when training: m = o * tanh(c), else NULL
    float *mb            # scratch (B, H): the step's m when not kept
    float *mx            # scratch (B, H): where the gate pass copies m as its h (unread)
    float *hp            # scratch (B, P): the step's W_hr m

#: the arguments of one BPTT loop (see rnn_backward & co.)
ctypedef struct BwdLoop:
    Py_ssize_t T, B, H
    bint reverse, relu, lbr
    const int64_t *lens
    const float *y
    const float *gates
    const float *cs
    const float *init    # LSTM: c0; GRU: h0
    const float *hn
    const float *wpt
    const float *wpt_n
    const float *peep
    const float *dy
    float *dh
    float *dc
    float *dG
    float *dGh
    float *tmp
    float *direct
    # layer normalization: ln_hh_w NULL: none
    Py_ssize_t ln_k
    const float *ln_hh_w
    const float *ln_c_w
    const float *ln_c_b
    const float *ln_xhh
    const float *ln_xc
    const float *ln_rstd
    float *dGln          # (T, B, G*H): the gradient of W_hh h, which the product reads
    float *dcn           # (T, B, H), LSTM: the gradient of LN(c_t)
    # projection: wrt NULL: none (dh, dy, tmp then have P values per row)
    Py_ssize_t P
    const float *wrt     # W_hr (P, H) packed for dh @ W_hr
    float *dht           # (T, B, P): the gradient of h_t, dh + dy, kept for dW_hr
    float *dm            # scratch (B, H): the step's gradient of m

#: the rows [r0, r1) of a loop (or product) whose arguments ``args`` points to
ctypedef void (*RowLoop)(const void *args, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil


cdef inline fc_fpenv_t _fp_mode() noexcept nogil:
    """The calling thread's floating-point control word (read, left as it is)."""
    cdef fc_fpenv_t mode = fc_fpenv_enter()
    fc_fpenv_exit(mode)
    return mode


cdef inline fc_fpenv_t _enter_as(fc_fpenv_t caller, bint ftz) noexcept nogil:
    """Put the calling (pool) thread in the caller's floating-point mode ``caller``, with
    flush-to-zero when ``ftz``; returns the thread's own mode, to restore after."""
    cdef fc_fpenv_t own = fc_fpenv_enter()
    fc_fpenv_exit(caller)
    if ftz:
        fc_fpenv_enter()
    return own


cdef void _run_rows(RowLoop loop, const void *args, Py_ssize_t rows, const int64_t *bounds,
                    Py_ssize_t nblocks, bint ftz) noexcept nogil:
    """Run ``loop`` over the row blocks [bounds[i], bounds[i+1]), one thread each, or
    over all ``rows`` on the calling thread when ``nblocks <= 1`` (no OpenMP then).

    Every thread runs in the caller's floating-point mode, with flush-to-zero when
    ``ftz`` (the loops; the products run in the caller's mode as they do on one
    thread): the mode is per thread, and a pool thread keeps whatever it had."""
    cdef Py_ssize_t i
    cdef fc_fpenv_t caller, own
    if nblocks <= 1:
        own = fc_fpenv_enter() if ftz else 0
        loop(args, 0, rows)
        if ftz:
            fc_fpenv_exit(own)
        return
    caller = _fp_mode()
    for i in prange(nblocks, num_threads=nblocks, schedule="static", chunksize=1):
        own = _enter_as(caller, ftz)
        loop(args, bounds[i], bounds[i + 1])
        fc_fpenv_exit(own)


cdef Py_ssize_t _check_blocks(const int64_t[::1] blocks, Py_ssize_t B) except -1:
    """The number of row blocks ``blocks`` (bounds 0 = b_0 < b_1 < ... = B, each block
    of at least 2 rows) describes; 1 for None.  A wrong plan would let two threads
    write one row, so it is refused, naming what it got."""
    cdef Py_ssize_t i, n
    if blocks is None:
        return 1
    n = blocks.shape[0] - 1
    if n < 1 or blocks[0] != 0 or blocks[n] != B:
        raise ValueError(f"blocks: expected row bounds from 0 to B = {B}, got "
                         f"{list(blocks)}")
    for i in range(n):
        if blocks[i + 1] - blocks[i] < (2 if n > 1 else 0):
            raise ValueError(f"blocks: expected blocks of at least 2 rows, got "
                             f"{list(blocks)}")
    return n


cdef inline const int64_t *_bounds(const int64_t[::1] blocks) noexcept nogil:
    return &blocks[0] if blocks is not None else NULL


#: products are split across threads in blocks of a multiple of this many rows: a
#: multiple of every ISA's tile height (FC_MR in csrc/gemm.c: 3 generic, 6 AVX2,
#: 8 AVX-512), so that no block but the last ends in a partial tile
cdef Py_ssize_t GEMM_ROW_GRANULE = 24


def gemm_row_granule():
    """A threaded :func:`gemm` splits its rows in blocks of a multiple of this many."""
    return GEMM_ROW_GRANULE


def panel_columns():
    """Columns per panel of :func:`pack`: a loop's ``cols`` bounds are multiples of it."""
    return FC_NR


def gemm_blocks(Py_ssize_t m, Py_ssize_t nthreads):
    """Row bounds of a product of ``m`` rows split for ``nthreads`` threads (int64, one
    more than the blocks): equal blocks of a multiple of :func:`gemm_row_granule` rows,
    the last taking the rest (joined to the one before when shorter than a granule)."""
    if nthreads < 1 or m < 0:
        raise ValueError(f"m, nthreads: expected m >= 0 and nthreads >= 1, got "
                         f"{m}, {nthreads}")
    cdef Py_ssize_t g = GEMM_ROW_GRANULE, span = nthreads * g
    cdef Py_ssize_t per = max(1, (m + span - 1) // span) * g
    bounds = list(range(0, m, per)) + [m]
    cdef Py_ssize_t k = len(bounds)       # (no negative indices: wraparound is off)
    if k > 2 and bounds[k - 1] - bounds[k - 2] < g:
        del bounds[k - 2]
    return np.array(bounds if m else [0, 0], dtype=np.int64)


#: the arguments of one product C = A @ B (+ bias; B packed), for _run_rows
ctypedef struct Product:
    Py_ssize_t n, k, lda, ldc
    const float *A
    const float *P
    const float *bias    # n floats added to every row, or NULL
    float *C


cdef void _gemm_rows(const void *p, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef const Product *a = <const Product *>p
    if a.bias != NULL:
        fc_gemm_bias(r1 - r0, a.n, a.k, a.A + r0 * a.lda, a.lda, a.P, a.bias,
                     a.C + r0 * a.ldc, a.ldc)
    else:
        fc_gemm(r1 - r0, a.n, a.k, a.A + r0 * a.lda, a.lda, a.P, a.C + r0 * a.ldc, a.ldc)


def gemm(const float[:, ::1] A, const float[::1] P, Py_ssize_t n, float[:, ::1] C,
         Py_ssize_t nthreads=1, const float[::1] bias=None):
    """``C = A @ B`` (``+ bias``, n floats added to every row, when given) with ``B``
    (A.shape[1], n) packed by :func:`pack`, the rows split over up to ``nthreads``
    threads (:func:`gemm_blocks`): the same bits for any ``nthreads``, and with a
    bias the bits of adding it to the product afterwards, in one pass over ``C``.
    Runs in the caller's floating-point mode."""
    cdef Py_ssize_t m = A.shape[0], k = A.shape[1]
    if C.shape[0] != m or C.shape[1] != n:
        raise ValueError(f"C: expected shape ({m}, {n}), got ({C.shape[0]}, {C.shape[1]})")
    if P.shape[0] < fc_packed_size(k, n):
        raise ValueError(f"P: expected at least {fc_packed_size(k, n)} floats, got {P.shape[0]}")
    if nthreads < 1:
        raise ValueError(f"nthreads: expected a positive integer, got {nthreads}")
    if bias is not None and bias.shape[0] != n:
        raise ValueError(f"bias: expected {n} floats, got {bias.shape[0]}")
    if not (m and n):
        return
    cdef const int64_t[::1] blocks = gemm_blocks(m, nthreads) if nthreads > 1 else None
    cdef Product prod
    cdef float dummy = 0     # k == 0: a valid address, never read (not NULL + offsets)
    prod.n, prod.k, prod.lda, prod.ldc = n, k, k, n
    prod.A, prod.P, prod.C = &A[0, 0] if k else &dummy, &P[0], &C[0, 0]
    prod.bias = &bias[0] if bias is not None else NULL
    with nogil:
        _run_rows(_gemm_rows, &prod, m, _bounds(blocks),
                  blocks.shape[0] - 1 if blocks is not None else 1, False)


# ----------------------------------------------------------------------------
# column blocks: one step's hidden units split across threads
#
# A batch of 1 to 3 rows cannot be split by rows (a block needs 2 rows, see
# above), so its forward steps split by hidden units instead: at every step
# each thread takes the units [j0, j1) (whole panels of FC_NR columns) and
# computes their columns of every gate's recurrent product, then their part
# of the gate pass, for all rows.  One fork and one join per step: the next
# step's product reads all of h, so the threads meet once per step.
# - Bits: the packed product sums each column within its own panel, in the
#   same order whatever panels it is asked for (csrc/gemm_impl.h), and the
#   activations work lane by lane (csrc/activations_impl.h), so a block of
#   whole panels gets the bits of the whole row, for any split.
# - h is double-buffered: a thread's product reads all of h_{t-1} while the
#   others write their units of h_t.  c (LSTM) is updated in place: each
#   thread reads and writes only its own units of it.
# - The gate passes below (_col_rnn, _col_lstm) serve the whole-row loops too,
#   called for all H units: one copy of each cell's arithmetic.
# - Only the forms whose step is one product then one pass: RNN, LSTM and GRU
#   with linear_before_reset (the other GRU form multiplies twice per step),
#   with W_hh packed as floats (PACK_FLOAT) and H a multiple of FC_NR.

#: one step of a column-split forward loop (the loop's arguments, the step, the states)
ctypedef struct ColStep:
    const FwdLoop *L
    CellKind kind
    Py_ssize_t G            # gates per unit: gh and gx have G*H columns per row
    Py_ssize_t t
    bint product            # some row is active at t (else the product is skipped)
    const float *hp         # h_{t-1}
    float *hn               # h_t


cdef inline void _add(float *a, const float *x, Py_ssize_t n) noexcept nogil:
    fc_add(a, x, n)     # the ISA's registers (this module is compiled for baseline SSE2)


cdef void _col_rnn(const ColStep *S, Py_ssize_t n, float *a, float *yr,
                   float *hr) noexcept nogil:
    """The RNN's n units of one row: ``a`` their pre-activations (gx added)."""
    cdef Py_ssize_t j
    cdef float v
    if S.L.relu:
        for j in range(n):
            v = a[j]
            a[j] = 0.0 if v < 0 else v   # NaN stays NaN, as in NumPy
    else:
        fc_tanh(a, n)
    memcpy(hr, a, n * sizeof(float))
    memcpy(yr, a, n * sizeof(float))


cdef void _col_lstm(const ColStep *S, Py_ssize_t j0, Py_ssize_t n, Py_ssize_t b, float *a,
                    float *yr, float *hr) noexcept nogil:
    """The LSTM's units [j0, j0 + n) of row b: ``a`` its gate i's pre-activations (gx
    added), the other gates H floats apart; as _lstm_fwd does for whole rows."""
    cdef const FwdLoop *L = S.L
    cdef Py_ssize_t j, row, H = L.H
    cdef float r
    cdef const float *peep = L.peep
    cdef float *cb = L.c + b * H + j0
    if peep == NULL and L.ln_c_w == NULL:   # the plain cell: one fused pass, the same bits
        fc_lstm_cell(a, H, cb, hr, yr, n, L.gates != NULL)
        _keep_lstm(S, j0, n, b, a, cb)
        return
    if peep != NULL:                 # i and f see c_{t-1}
        for j in range(n):
            a[j] += peep[j0 + j] * cb[j]
            a[H + j] += peep[H + j0 + j] * cb[j]
    fc_sigmoid(a, n)              # i
    fc_sigmoid(a + H, n)          # f
    fc_tanh(a + 2 * H, n)         # g
    for j in range(n):
        cb[j] = a[H + j] * cb[j] + a[j] * a[2 * H + j]
    if peep != NULL:                 # o sees c_t
        for j in range(n):
            a[3 * H + j] += peep[2 * H + j0 + j] * cb[j]
    fc_sigmoid(a + 3 * H, n)      # o
    if L.ln_c_w != NULL:             # h = o * tanh(LN(c)): whole rows only (j0 = 0, n = H)
        row = S.t * L.B + b
        r = fc_ln_forward(cb, yr, n, L.ln_eps, L.ln_c_w, L.ln_c_b,
                          L.ln_xc + row * H if L.ln_xc != NULL else NULL)
        if L.ln_rstd != NULL:
            L.ln_rstd[row * L.ln_k + LN_C] = r
    else:
        memcpy(yr, cb, n * sizeof(float))
    fc_tanh(yr, n)
    for j in range(n):
        yr[j] = a[3 * H + j] * yr[j]
    memcpy(hr, yr, n * sizeof(float))
    _keep_lstm(S, j0, n, b, a, cb)


cdef inline void _keep_lstm(const ColStep *S, Py_ssize_t j0, Py_ssize_t n, Py_ssize_t b,
                            const float *a, const float *cb) noexcept nogil:
    """Training: the activated gates ``a`` and the new cell state ``cb`` of the LSTM's
    units [j0, j0 + n) of row b into what backward reads (nothing in inference)."""
    cdef const FwdLoop *L = S.L
    cdef Py_ssize_t g, H = L.H
    if L.gates != NULL:
        for g in range(4):
            memcpy(L.gates + (S.t * L.B + b) * 4 * H + g * H + j0, a + g * H,
                   n * sizeof(float))
        memcpy(L.kept + (S.t * L.B + b) * H + j0, cb, n * sizeof(float))


cdef void _col_gru(const ColStep *S, Py_ssize_t j0, Py_ssize_t n, Py_ssize_t b, float *a,
                   const float *x, float *yr, float *hr) noexcept nogil:
    """The GRU's (linear_before_reset) units [j0, j0 + n) of row b: ``a`` its r gate's
    pre-activations (gx added to r and z only), the others H floats apart; ``x`` its
    gx; as _gru_fwd does for whole rows."""
    cdef const FwdLoop *L = S.L
    cdef Py_ssize_t j, g, H = L.H, row = S.t * L.B + b
    cdef const float *hp = S.hp + b * H + j0
    cdef float hn, nv, z
    fc_sigmoid(a, n)              # r
    fc_sigmoid(a + H, n)          # z
    for j in range(n):
        hn = a[2 * H + j] + L.bhn[j0 + j]
        if L.kept != NULL:
            L.kept[row * H + j0 + j] = hn
        a[2 * H + j] = x[2 * H + j] + a[j] * hn
    fc_tanh(a + 2 * H, n)
    for j in range(n):
        nv = a[2 * H + j]
        z = a[H + j]
        hr[j] = nv + z * (hp[j] - nv)
    memcpy(yr, hr, n * sizeof(float))
    if L.gates != NULL:
        for g in range(3):
            memcpy(L.gates + row * 3 * H + g * H + j0, a + g * H, n * sizeof(float))


cdef void _col_step(const ColStep *S, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Step S.t of the units [j0, j1) (whole panels) of every row: their columns of each
    gate's recurrent product, then their part of the gate pass (masked rows: output
    zeros, state kept, kept arrays zeros, as the whole-row loops do)."""
    cdef const FwdLoop *L = S.L
    cdef Py_ssize_t b, g, B = L.B, H = L.H, G = S.G, n = j1 - j0, row
    cdef Py_ssize_t added = 2 if S.kind == KIND_GRU else G    # gates gx joins before
    cdef float *a
    cdef const float *x
    cdef float *yr
    cdef float *hr
    if S.product:
        # gate g's units [j0, j1) are the panels from (g*H + j0) / FC_NR, each FC_NR*H floats
        for g in range(G):
            fc_gemm(B, n, H, S.hp, H, L.wp + (g * H + j0) * H, L.gh + g * H + j0, G * H)
    for b in range(B):
        row = S.t * B + b
        yr = L.y + row * H + j0
        hr = S.hn + b * H + j0
        if _masked(L.lens, S.t, b):
            memset(yr, 0, n * sizeof(float))
            memcpy(hr, S.hp + b * H + j0, n * sizeof(float))
            if L.gates != NULL:     # may be gx's buffer: no projection left behind
                for g in range(G):
                    memset(L.gates + row * G * H + g * H + j0, 0, n * sizeof(float))
            if S.kind == KIND_GRU and L.kept != NULL:
                memset(L.kept + row * H + j0, 0, n * sizeof(float))
            continue
        a = L.gh + b * G * H + j0
        x = L.gx + ((S.t - L.t0) * B + b) * G * H + j0
        for g in range(added):
            _add(a + g * H, x + g * H, n)
        if S.kind == KIND_RNN:
            _col_rnn(S, n, a, yr, hr)
        elif S.kind == KIND_LSTM:
            _col_lstm(S, j0, n, b, a, yr, hr)
        else:
            _col_gru(S, j0, n, b, a, x, yr, hr)


cdef void _run_cols(const FwdLoop *L, CellKind kind, Py_ssize_t G, const int64_t *cols,
                    Py_ssize_t ncols, float *spare) noexcept nogil:
    """The forward loop ``L`` with every step split over the unit blocks
    [cols[i], cols[i+1]), one thread each; ``spare`` (B*H floats) is h's second buffer.
    Every thread runs in the caller's floating-point mode with flush-to-zero."""
    cdef ColStep S
    cdef Py_ssize_t s, i, steps = _block_steps(L.lens, 0, L.B)
    cdef fc_fpenv_t caller = _fp_mode(), own
    cdef float *other
    S.L, S.kind, S.G = L, kind, G
    S.hp, S.hn = L.h, spare
    for s in range(L.n):
        S.t = _step_time(s, L.t0, L.n, L.reverse)
        S.product = S.t < steps
        for i in prange(ncols, num_threads=ncols, schedule="static", chunksize=1):
            own = _enter_as(caller, True)
            _col_step(&S, cols[i], cols[i + 1])
            fc_fpenv_exit(own)
        other = <float *>S.hp       # the state just written becomes the previous one
        S.hp, S.hn = S.hn, other
    if S.hp != L.h:
        memcpy(L.h, S.hp, L.B * L.H * sizeof(float))


cdef Py_ssize_t _check_cols(const int64_t[::1] cols, const int64_t[::1] blocks,
                            Py_ssize_t H, int packing) except -1:
    """The number of unit blocks ``cols`` (bounds 0 = j_0 < j_1 < ... = H, multiples of
    FC_NR) describes; 1 for None.  Refused (naming what it got) unless W_hh is packed
    as floats and there is no row plan: a wrong plan would let two threads write one
    unit, or read panels that are not there."""
    cdef Py_ssize_t i, n
    if cols is None:
        return 1
    n = cols.shape[0] - 1
    if n < 1 or cols[0] != 0 or cols[n] != H:
        raise ValueError(f"cols: expected unit bounds from 0 to H = {H}, got {list(cols)}")
    for i in range(n):
        if cols[i + 1] <= cols[i] or cols[i + 1] % FC_NR:
            raise ValueError(f"cols: expected increasing multiples of {FC_NR}, got "
                             f"{list(cols)}")
    if n > 1 and packing != PACK_FLOAT:
        raise ValueError(f"packing: expected PACK_FLOAT ({int(PACK_FLOAT)}) with cols, "
                         f"got {packing}")
    if n > 1 and blocks is not None:
        raise ValueError(f"blocks, cols: expected one plan, got blocks {list(blocks)} "
                         f"and cols {list(cols)}")
    return n


def _spare_state(Py_ssize_t ncols, Py_ssize_t B, Py_ssize_t H):
    """h's second buffer for a column-split loop (None on one thread)."""
    return np.empty(B * H, np.float32) if ncols > 1 else None


cdef inline float *_spare_ptr(float[::1] spare) noexcept nogil:
    return &spare[0] if spare is not None else NULL


# ----------------------------------------------------------------------------
# layer normalization
#
# A layer-normalized cell (Ba et al. 2016) normalizes each row of the input
# projection W_ih x and of the recurrent product W_hh h over all its G*H values
# (and the LSTM its new cell state over H before tanh): csrc/layernorm.h.
# - The input path is normalized on the whole projection before the loop
#   (layer_norm_rows: its rows are independent of the state), with b_ih + b_hh
#   folded into its beta; backward's layer_norm_rows_backward after the loop.
# - The recurrent path inside the loop: each active row of the step's product is
#   normalized in place right after the product, in the gate pass, and BPTT turns
#   the row's pre-activation gradient into the gradient of W_hh h there too
#   (dGln, which the step's product then reads).  The c path inside the LSTM's
#   gate pass.  A row's statistics need the whole row: these loops split by
#   batch rows only, never by hidden units.
# - Training keeps the normalized rows (xhat) and 1/sqrt(var + eps) per row and
#   step (ln_rstd, LN_STATS columns), zeros at masked steps: backward reads them
#   and the gain gradients are sums of dG * xhat (in functional, after the loop).

cdef inline void _ln_hh(const FwdLoop *L, Py_ssize_t t, Py_ssize_t b, float *a,
                        Py_ssize_t n) noexcept nogil:
    """Normalize the recurrent product's row ``a`` (n = G*H values) of row b in place."""
    cdef Py_ssize_t row = t * L.B + b
    cdef float *xh = L.ln_xhh + row * n if L.ln_xhh != NULL else NULL
    cdef float r = fc_ln_forward(a, a, n, L.ln_eps, L.ln_hh_w, L.ln_hh_b, xh)
    if L.ln_rstd != NULL:
        L.ln_rstd[row * L.ln_k + LN_HH] = r


cdef inline void _ln_masked(const FwdLoop *L, Py_ssize_t t, Py_ssize_t b,
                            Py_ssize_t n) noexcept nogil:
    """Zero what a normalized loop keeps of row b at a masked step t (n = G*H): the
    gain gradients sum dG * xhat over every step, and 0 * garbage may be NaN."""
    cdef Py_ssize_t row = t * L.B + b
    if L.ln_rstd == NULL:
        return
    memset(L.ln_rstd + row * L.ln_k, 0, L.ln_k * sizeof(float))
    memset(L.ln_xih + row * n, 0, n * sizeof(float))
    memset(L.ln_xhh + row * n, 0, n * sizeof(float))
    if L.ln_xc != NULL:
        memset(L.ln_xc + row * L.H, 0, L.H * sizeof(float))


cdef inline const float *_ln_hh_back(const BwdLoop *L, Py_ssize_t row, const float *d,
                                     Py_ssize_t n) noexcept nogil:
    """The gradient of W_hh h of a normalized loop's ``row`` (t*B + b) from ``d``, the
    gradient of LN(W_hh h) (n = G*H values), into dGln; returns d when not normalized."""
    if L.ln_hh_w == NULL:
        return d
    fc_ln_backward(d, L.ln_xhh + row * n, L.ln_rstd[row * L.ln_k + LN_HH], L.ln_hh_w, n,
                   L.dGln + row * n)
    return L.dGln + row * n


cdef inline void _ln_bwd_masked(const BwdLoop *L, Py_ssize_t row, Py_ssize_t n) noexcept nogil:
    if L.ln_hh_w == NULL:
        return
    memset(L.dGln + row * n, 0, n * sizeof(float))
    if L.dcn != NULL:
        memset(L.dcn + row * L.H, 0, L.H * sizeof(float))


cdef const float *_vec(name, a, Py_ssize_t n) except NULL:
    """The pointer to a C-contiguous float32 vector of n floats (ValueError else)."""
    cdef const float[::1] v = a
    if v.shape[0] != n:
        raise ValueError(f"{name}: expected {n} floats, got {v.shape[0]}")
    return &v[0] if n else <const float *>1    # n == 0: never read


cdef float *_kept(name, a, tuple shape) except? NULL:
    """The pointer to a kept (T, B, n) float32 array of ``shape``, NULL for None."""
    if a is None:
        return NULL
    cdef float[:, :, ::1] v = a
    if (v.shape[0], v.shape[1], v.shape[2]) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return &v[0, 0, 0] if v.shape[0] * v.shape[1] * v.shape[2] else NULL


cdef const float *_kept_ro(name, a, tuple shape) except? NULL:
    """:func:`_kept` of a read-only array (the cache's)."""
    if a is None:
        return NULL
    cdef const float[:, :, ::1] v = a
    if (v.shape[0], v.shape[1], v.shape[2]) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return &v[0, 0, 0] if v.shape[0] * v.shape[1] * v.shape[2] else NULL


cdef _set_ln_fwd(FwdLoop *L, ln, Py_ssize_t T, Py_ssize_t G, bint lstm, Py_ssize_t nc):
    """L's layer-norm fields from ``ln``: None (not normalized) or ``(hh_weight, hh_bias,
    c_weight, c_bias, eps, xih, xhh, xc, rstd)`` (the kept arrays None, or all of them
    when training; c_* and xc None unless ``lstm``).  Checks every shape."""
    if ln is None:
        return
    if nc > 1:
        raise ValueError(f"cols: expected None for a layer-normalized loop (a row's "
                         f"statistics need the whole row), got {nc} blocks")
    hh_w, hh_b, c_w, c_b, eps, xih, xhh, xc, rstd = ln
    cdef Py_ssize_t B = L.B, H = L.H, GH = G * H, K = LN_STATS["lstm" if lstm else "rnn"]
    if not eps > 0:
        raise ValueError(f"layer_norm_eps: expected a finite float > 0, got {eps}")
    L.ln_eps, L.ln_k = eps, K
    L.ln_hh_w, L.ln_hh_b = _vec("ln_hh_weight", hh_w, GH), _vec("ln_hh_bias", hh_b, GH)
    if lstm:
        L.ln_c_w, L.ln_c_b = _vec("ln_c_weight", c_w, H), _vec("ln_c_bias", c_b, H)
    if (xih is None) != (rstd is None) or (xih is None) != (xhh is None) or lstm and (
            (xih is None) != (xc is None)):
        raise ValueError("ln: expected every kept array (training) or none")
    L.ln_xih, L.ln_xhh = _kept("ln_xih", xih, (T, B, GH)), _kept("ln_xhh", xhh, (T, B, GH))
    L.ln_xc = _kept("ln_xc", xc, (T, B, H)) if lstm else NULL
    L.ln_rstd = _kept("ln_rstd", rstd, (T, B, K))


cdef _set_ln_bwd(BwdLoop *L, ln, Py_ssize_t G, bint lstm):
    """L's layer-norm fields from ``ln``: None or ``(hh_weight, c_weight, c_bias, xhh, xc,
    rstd, dGln, dcn)`` (c_*, xc, dcn None unless ``lstm``).  Checks every shape."""
    if ln is None:
        return
    hh_w, c_w, c_b, xhh, xc, rstd, dGln, dcn = ln
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H, GH = G * H, K = LN_STATS["lstm" if lstm else "rnn"]
    L.ln_k = K
    L.ln_hh_w = _vec("ln_hh_weight", hh_w, GH)
    L.ln_xhh = _kept_ro("ln_xhh", xhh, (T, B, GH))
    L.ln_rstd = _kept_ro("ln_rstd", rstd, (T, B, K))
    L.dGln = _kept("dGln", dGln, (T, B, GH))
    if L.ln_xhh == NULL or L.ln_rstd == NULL or L.dGln == NULL:
        raise ValueError("ln: expected the kept arrays and dGln")
    if lstm:
        L.ln_c_w, L.ln_c_b = _vec("ln_c_weight", c_w, H), _vec("ln_c_bias", c_b, H)
        L.ln_xc, L.dcn = _kept_ro("ln_xc", xc, (T, B, H)), _kept("dcn", dcn, (T, B, H))
        if L.ln_xc == NULL or L.dcn == NULL:
            raise ValueError("ln: expected xc and dcn for the LSTM")


#: the arguments of layer_norm_rows(_backward) over a block of rows
ctypedef struct LNRows:
    Py_ssize_t n, ldr
    float eps
    const float *g
    const float *b
    float *x
    float *xhat
    float *rstd
    const float *dy
    float *dx


cdef void _ln_rows(const void *p, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef const LNRows *a = <const LNRows *>p
    cdef Py_ssize_t r
    cdef float v
    for r in range(r0, r1):
        v = fc_ln_forward(a.x + r * a.n, a.x + r * a.n, a.n, a.eps, a.g, a.b,
                          a.xhat + r * a.n if a.xhat != NULL else NULL)
        if a.rstd != NULL:
            a.rstd[r * a.ldr] = v


cdef void _ln_rows_back(const void *p, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef const LNRows *a = <const LNRows *>p
    cdef Py_ssize_t r
    for r in range(r0, r1):
        fc_ln_backward(a.dy + r * a.n, a.xhat + r * a.n, a.rstd[r * a.ldr], a.g, a.n,
                       a.dx + r * a.n)


cdef const int64_t[::1] _ln_blocks(Py_ssize_t m, Py_ssize_t nthreads):
    if nthreads < 1:
        raise ValueError(f"nthreads: expected a positive integer, got {nthreads}")
    return gemm_blocks(m, nthreads) if nthreads > 1 and m else None


def layer_norm_rows(float[:, ::1] x, const float[::1] gamma, const float[::1] beta, float eps,
                    float[:, ::1] xhat=None, float[:, :] rstd=None, Py_ssize_t nthreads=1):
    """Each row of ``x`` (m, n) := ``LN(row; gamma, beta)`` (the input path of a normalized
    loop, ``beta`` with the biases folded in), in place; ``xhat`` (m, n) receives the
    normalized rows and ``rstd[:, 0]`` (m, >= 1; any strides) 1/sqrt(var + eps) when
    given.  Rows split over up to ``nthreads`` threads (each row alone: the same bits).
    Runs in the loops' floating-point mode (flush-to-zero)."""
    cdef Py_ssize_t m = x.shape[0], n = x.shape[1]
    if gamma.shape[0] != n or beta.shape[0] != n:
        raise ValueError(f"gamma, beta: expected {n} floats, got {gamma.shape[0]}, "
                         f"{beta.shape[0]}")
    if not eps > 0:
        raise ValueError(f"eps: expected a finite float > 0, got {eps}")
    if xhat is not None and (xhat.shape[0] != m or xhat.shape[1] != n):
        raise ValueError(f"xhat: expected shape ({m}, {n})")
    if rstd is not None and (rstd.shape[0] != m or rstd.shape[1] < 1):
        raise ValueError(f"rstd: expected shape ({m}, >= 1)")
    cdef const int64_t[::1] blocks = _ln_blocks(m, nthreads)
    if not (m and n):
        return
    cdef LNRows a
    memset(&a, 0, sizeof(a))
    a.n, a.eps, a.g, a.b, a.x = n, eps, &gamma[0], &beta[0], &x[0, 0]
    if xhat is not None:
        a.xhat = &xhat[0, 0]
    if rstd is not None:
        a.rstd, a.ldr = &rstd[0, 0], rstd.strides[0] // sizeof(float)
    with nogil:
        _run_rows(_ln_rows, &a, m, _bounds(blocks),
                  blocks.shape[0] - 1 if blocks is not None else 1, True)


def layer_norm_rows_backward(const float[:, ::1] dy, const float[:, ::1] xhat,
                             const float[:, :] rstd, const float[::1] gamma, float[:, ::1] dx,
                             Py_ssize_t nthreads=1):
    """Each row of ``dx`` (m, n) := the gradient through LN of the same row of ``dy``
    (the gradient of LN's output), given the forward pass's ``xhat`` and ``rstd[:, 0]``
    (as :func:`layer_norm_rows` keeps them); ``dx`` may be ``dy``.  Rows split over up
    to ``nthreads`` threads (the same bits)."""
    cdef Py_ssize_t m = dy.shape[0], n = dy.shape[1]
    if gamma.shape[0] != n:
        raise ValueError(f"gamma: expected {n} floats, got {gamma.shape[0]}")
    for name, v in (("xhat", xhat), ("dx", dx)):
        if v.shape[0] != m or v.shape[1] != n:
            raise ValueError(f"{name}: expected shape ({m}, {n}), got "
                             f"({v.shape[0]}, {v.shape[1]})")
    if rstd.shape[0] != m or rstd.shape[1] < 1:
        raise ValueError(f"rstd: expected shape ({m}, >= 1)")
    cdef const int64_t[::1] blocks = _ln_blocks(m, nthreads)
    if not (m and n):
        return
    cdef LNRows a
    memset(&a, 0, sizeof(a))
    a.n, a.g, a.xhat, a.dy, a.dx = n, &gamma[0], <float *>&xhat[0, 0], &dy[0, 0], &dx[0, 0]
    a.rstd, a.ldr = <float *>&rstd[0, 0], rstd.strides[0] // sizeof(float)
    with nogil:
        _run_rows(_ln_rows_back, &a, m, _bounds(blocks),
                  blocks.shape[0] - 1 if blocks is not None else 1, True)


# ----------------------------------------------------------------------------
# RNN

cdef void _rnn_fwd(const void *p, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    cdef const FwdLoop *L = <const FwdLoop *>p
    cdef Py_ssize_t s, t, b, t0 = L.t0, B = L.B, H = L.H
    cdef Py_ssize_t steps = _block_steps(L.lens, b0, b1)
    cdef float *h = L.h
    cdef float *y = L.y
    cdef float *gh = L.gh
    cdef float *a
    cdef ColStep S              # the gate pass is the column loops' (all H units)
    S.L = L
    for s in range(L.n):
        t = _step_time(s, t0, L.n, L.reverse)
        if t < steps:
            _recur(L.packing, b1 - b0, H, H, h + b0 * H, L.wp, gh + b0 * H)
        S.t = t
        for b in range(b0, b1):
            if _masked(L.lens, t, b):
                memset(y + (t * B + b) * H, 0, H * sizeof(float))
                _ln_masked(L, t, b, H)
                continue
            a = gh + b * H
            if L.ln_hh_w != NULL:
                _ln_hh(L, t, b, a, H)
            _add(a, L.gx + ((t - t0) * B + b) * H, H)
            _col_rnn(&S, H, a, y + (t * B + b) * H, h + b * H)


def rnn_forward(Py_ssize_t t0, const float[:, :, ::1] gx, const float[::1] wp, int packing,
                float[:, ::1] h, float[:, :, ::1] y, const int64_t[::1] lengths, bint reverse,
                bint relu, float[:, ::1] gh, const int64_t[::1] blocks=None,
                const int64_t[::1] cols=None, ln=None):
    """Forward loop over the steps [t0, t0 + len(gx)) (a chunk of time, walked backwards
    when ``reverse``); ``gx`` holds ``x W_ih^T + b_ih + b_hh`` for those steps; ``h`` is
    the state before the chunk in, after it out; ``y`` is the whole (T, B, H) output.
    ``wp`` is ``W_hh`` in the form ``packing`` names: packed by :func:`pack` (``PACK_FLOAT``)
    or :func:`pack_half` (``PACK_HALF``), or ``W_hh.ravel()`` (``PACK_NONE``).
    ``blocks``: row bounds ``0 = b_0 < ... < b_n = B`` (int64, blocks of at least 2 rows),
    one thread per block, or None: one thread (every loop takes the same).
    ``cols``: instead, unit bounds ``0 = j_0 < ... < j_n = H`` (int64, multiples of 16,
    ``PACK_FLOAT``), one thread per block at every step (see "column blocks"; the
    LSTM and the GRU with linear_before_reset take it too), or None.
    ``ln``: None, or a layer-normalized cell's ``(hh_weight, hh_bias, c_weight, c_bias,
    eps, xih, xhh, xc, rstd)`` (see "layer normalization"; ``gx`` then holds the
    normalized input path, biases in): the recurrent product's rows are normalized
    in the gate pass; the kept arrays (training, else None) are whole (T, ...) arrays;
    ``cols`` must be None (every cell takes ``ln`` alike)."""
    _check_chunk(t0, gx.shape[0], y.shape[0])
    cdef Py_ssize_t nb = _check_blocks(blocks, y.shape[1])
    cdef Py_ssize_t nc = _check_cols(cols, blocks, y.shape[2], packing)
    cdef float[::1] spare = _spare_state(nc, y.shape[1], y.shape[2])
    cdef FwdLoop L
    memset(&L, 0, sizeof(L))     # every pointer it does not set is NULL
    L.t0, L.n, L.B, L.H = t0, gx.shape[0], y.shape[1], y.shape[2]
    L.packing, L.reverse, L.relu, L.lens = packing, reverse, relu, _lens(lengths)
    L.gx, L.wp, L.h, L.y, L.gh = &gx[0, 0, 0], &wp[0], &h[0, 0], &y[0, 0, 0], &gh[0, 0]
    _set_ln_fwd(&L, ln, y.shape[0], 1, False, nc)
    with nogil:
        if nc > 1:
            _run_cols(&L, KIND_RNN, 1, &cols[0], nc, _spare_ptr(spare))
        else:
            _run_rows(_rnn_fwd, &L, L.B, _bounds(blocks), nb, True)


cdef void _rnn_bwd(const void *p, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    cdef const BwdLoop *L = <const BwdLoop *>p
    cdef Py_ssize_t s, t, b, j, row, T = L.T, B = L.B, H = L.H
    cdef Py_ssize_t steps = _block_steps(L.lens, b0, b1)
    cdef const float *y = L.y
    cdef const float *dy = L.dy
    cdef float *dh = L.dh
    cdef float *dG = L.dG
    cdef float d, v
    for s in range(T):
        t = _step_time(s, 0, T, not L.reverse)
        for b in range(b0, b1):
            row = (t * B + b) * H
            if _masked(L.lens, t, b):
                memset(dG + row, 0, H * sizeof(float))
                _ln_bwd_masked(L, t * B + b, H)
                continue
            for j in range(H):
                d = dh[b * H + j]
                if dy != NULL:
                    d = d + dy[row + j]
                v = y[row + j]
                if L.relu:
                    dG[row + j] = d if v > 0 else 0.0
                else:
                    dG[row + j] = d * (1 - v * v)
            _ln_hh_back(L, t * B + b, dG + row, H)
        if t < steps:
            fc_gemm(b1 - b0, H, H, (L.dGln if L.ln_hh_w != NULL else dG) + (t * B + b0) * H, H,
                    L.wpt, L.tmp + b0 * H, H)
            _copy_rows_active(dh, L.tmp, NULL, b0, b1, H, L.lens, t)


def rnn_backward(const float[:, :, ::1] y, const float[::1] wpt, const float[:, :, ::1] dy,
                 float[:, ::1] dh, float[:, :, ::1] dG, const int64_t[::1] lengths,
                 bint reverse, bint relu, float[:, ::1] tmp, const int64_t[::1] blocks=None,
                 ln=None):
    """BPTT loop: ``dG`` receives the pre-activation gradients; ``dh`` is dh in, dh0 out;
    ``blocks`` as in :func:`rnn_forward`.  ``ln``: None, or a layer-normalized cell's
    ``(hh_weight, c_weight, c_bias, xhh, xc, rstd, dGln, dcn)`` (the forward pass's kept
    arrays; ``dGln`` (T, B, G*H) receives the gradient of ``W_hh h``, ``dcn`` (T, B, H),
    LSTM only, that of ``LN(c_t)``; c_*, xc, dcn None for the RNN and GRU)."""
    cdef Py_ssize_t nb = _check_blocks(blocks, y.shape[1])
    cdef BwdLoop L
    memset(&L, 0, sizeof(L))     # every pointer it does not set is NULL
    L.T, L.B, L.H = y.shape[0], y.shape[1], y.shape[2]
    L.reverse, L.relu, L.lens = reverse, relu, _lens(lengths)
    L.y, L.wpt, L.dy, L.dh, L.dG, L.tmp = (&y[0, 0, 0], &wpt[0], _opt(dy), &dh[0, 0],
                                           &dG[0, 0, 0], &tmp[0, 0])
    _set_ln_bwd(&L, ln, 1, False)
    with nogil:
        _run_rows(_rnn_bwd, &L, L.B, _bounds(blocks), nb, True)


# ----------------------------------------------------------------------------
# LSTM
#
# projection (W_hr (P, H), PyTorch's proj_size): h = W_hr m, m = o * tanh(c).
# - Forward, per step and row block: the product h @ W_hh.T reads P values per
#   row; the gate pass writes m where it would write h (the kept (T, B, H) m
#   when training, else a (B, H) scratch: inference memory does not grow with
#   T); then m @ W_hr.T for the block's rows (W_hr in W_hh's packing) into the
#   scratch hp, copied to h and y for the rows active at the step.
# - BPTT, per step and row block: dht = dh + dy (kept (T, B, P), zeros at
#   masked steps, for dW_hr = dht^T m after the loop), dm = dht @ W_hr, the
#   gate backward from dm, then dh = dG @ W_hh (P values per row).
# - Every buffer is indexed by row: row blocks split it as any loop; the
#   column split is refused (h = W_hr m needs all of m).

cdef void _lstm_fwd(const void *p, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    cdef const FwdLoop *L = <const FwdLoop *>p
    cdef bint proj = L.wr != NULL
    cdef Py_ssize_t s, t, b, t0 = L.t0, B = L.B, H = L.H, G = 4 * L.H
    cdef Py_ssize_t P = L.P if proj else L.H       # the values of h and y per row
    cdef Py_ssize_t steps = _block_steps(L.lens, b0, b1)
    cdef float *gates = L.gates
    cdef float *gh = L.gh
    cdef float *a
    cdef float *yr
    cdef float *mt = NULL       # projection: the step's m rows (kept, or the scratch)
    cdef ColStep S              # the gate pass is the column loops' (all H units)
    S.L = L
    for s in range(L.n):
        t = _step_time(s, t0, L.n, L.reverse)
        if t < steps:
            _recur(L.packing, b1 - b0, G, P, L.h + b0 * P, L.wp, gh + b0 * G)
        S.t = t
        if proj:
            mt = L.m + t * B * H if L.m != NULL else L.mb
        for b in range(b0, b1):
            yr = L.y + (t * B + b) * P
            if _masked(L.lens, t, b):
                memset(yr, 0, P * sizeof(float))
                if proj:              # zeros: the kept m is summed over every step
                    memset(mt + b * H, 0, H * sizeof(float))
                if gates != NULL:     # may be gx's buffer: no projection left behind
                    memset(gates + (t * B + b) * G, 0, G * sizeof(float))
                _ln_masked(L, t, b, G)
                continue
            a = gh + b * G
            if L.ln_hh_w != NULL:
                _ln_hh(L, t, b, a, G)
            _add(a, L.gx + ((t - t0) * B + b) * G, G)
            if proj:                  # the gate pass writes m; h = W_hr m below
                _col_lstm(&S, 0, H, b, a, mt + b * H, L.mx + b * H)
            else:
                _col_lstm(&S, 0, H, b, a, yr, L.h + b * H)
        if proj and t < steps:
            _recur(L.packing, b1 - b0, P, H, mt + b0 * H, L.wr, L.hp + b0 * P)
            _copy_rows_active(L.h, L.hp, NULL, b0, b1, P, L.lens, t)
            _copy_rows_active(L.y + t * B * P, L.hp, NULL, b0, b1, P, L.lens, t)


cdef _set_proj_fwd(FwdLoop *L, proj, Py_ssize_t T, const float[:, ::1] h,
                   const float[:, :, ::1] y, Py_ssize_t nc):
    """L's projection fields from ``proj``: None (no projection) or ``(wr, m, mb, mx, hp)``
    (see :func:`lstm_forward`).  Checks every shape: the loop trusts them."""
    cdef Py_ssize_t B = L.B, H = L.H, P
    if proj is None:
        if h.shape[1] != H or y.shape[2] != H:
            raise ValueError(f"h, y: expected H = {H} values per row, got {h.shape[1]}, "
                             f"{y.shape[2]}")
        return
    if nc > 1:
        raise ValueError(f"cols: expected None for a projected loop (h = W_hr m needs all "
                         f"of m), got {nc} blocks")
    wr, m, mb, mx, hp = proj
    P = y.shape[2]
    if not 1 <= P < H or h.shape[1] != P:
        raise ValueError(f"h, y: expected P values per row, 1 <= P < H = {H}, got "
                         f"{h.shape[1]}, {P}")
    cdef const float[::1] w = wr
    if w.shape[0] < _weight_floats(L.packing, H, P):
        raise ValueError(f"wr: expected W_hr (P, H) = ({P}, {H}) in the loop's packing "
                         f"({_weight_floats(L.packing, H, P)} floats), got {w.shape[0]}")
    L.P, L.wr = P, &w[0]
    L.m = _kept("m", m, (T, B, H))
    L.mb = _kept("mb", mb.reshape(1, B, H), (1, B, H))
    L.mx = _kept("mx", mx.reshape(1, B, H), (1, B, H))
    L.hp = _kept("hp", hp.reshape(1, B, P), (1, B, P))


def lstm_forward(Py_ssize_t t0, const float[:, :, ::1] gx, const float[::1] wp, int packing,
                 const float[::1] peephole, float[:, ::1] h, float[:, ::1] c,
                 float[:, :, ::1] y, const int64_t[::1] lengths, bint reverse,
                 float[:, :, ::1] gates, float[:, :, ::1] cs, float[:, ::1] gh,
                 const int64_t[::1] blocks=None, const int64_t[::1] cols=None, ln=None,
                 proj=None):
    """Forward loop over a chunk of time (as :func:`rnn_forward`); ``h``/``c`` are the
    state in and out; ``peephole`` (3H: i, f, o) or None; ``gates`` (activated i, f, g, o)
    and ``cs`` (cell state after each step), whole (T, ...) arrays, written when not None
    (zeros at masked steps).  ``gates`` may be ``gx`` itself (one chunk, t0 = 0): a
    step's row of ``gx`` is read before its gates overwrite it.  ``blocks``, ``cols``,
    ``ln`` as in :func:`rnn_forward` (``h = o * tanh(LN(c))``, ``cs`` the carried ``c``).
    ``proj``: None, or a projected LSTM's ``(wr, m, mb, mx, hp)`` (see "projection"):
    ``W_hr`` (P, H) in the form ``packing`` names (as ``wp``), the kept ``m`` (T, B, H)
    (training, zeros at masked steps) or None, and scratch ``mb``, ``mx`` (B, H), ``hp``
    (B, P); ``h`` (B, P), ``y`` (T, B, P), ``wp`` then packs ``W_hh`` (4H, P); ``cols``
    must be None."""
    cdef Py_ssize_t H = c.shape[1]
    _check_chunk(t0, gx.shape[0], y.shape[0])
    _check_kept(t0, gx, y, gates, CELLS["lstm"].G, (("cs", cs),), H)
    cdef Py_ssize_t nb = _check_blocks(blocks, y.shape[1])
    cdef Py_ssize_t nc = _check_cols(cols, blocks, H, packing)
    cdef float[::1] spare = _spare_state(nc, y.shape[1], H)
    cdef FwdLoop L
    memset(&L, 0, sizeof(L))     # every pointer it does not set is NULL
    L.t0, L.n, L.B, L.H = t0, gx.shape[0], y.shape[1], H
    L.packing, L.reverse, L.lens = packing, reverse, _lens(lengths)
    L.gx, L.wp, L.gh = &gx[0, 0, 0], &wp[0], &gh[0, 0]
    L.peep = &peephole[0] if peephole is not None else NULL
    L.h, L.c, L.y = &h[0, 0], &c[0, 0], &y[0, 0, 0]
    L.gates, L.kept = _opt_w(gates), _opt_w(cs)
    cdef Py_ssize_t G = CELLS["lstm"].G
    _set_ln_fwd(&L, ln, y.shape[0], G, True, nc)
    _set_proj_fwd(&L, proj, y.shape[0], h, y, nc)
    with nogil:
        if nc > 1:
            _run_cols(&L, KIND_LSTM, G, &cols[0], nc, _spare_ptr(spare))
        else:
            _run_rows(_lstm_fwd, &L, L.B, _bounds(blocks), nb, True)


cdef void _lstm_bwd_ln_row(const BwdLoop *L, Py_ssize_t row, Py_ssize_t b, const float *a,
                           const float *cprev, const float *dhr, const float *dyr,
                           float *d) noexcept nogil:
    """One active row of a layer-normalized LSTM's BPTT step: ``d`` (4H) := the gradients
    of the gates' pre-activations, dc of row b carried back, dGln (and dcn) written;
    ``dhr + dyr`` (dyr may be NULL) the gradient of the row's o * tanh(LN(c)).
    As _lstm_bwd's rows, with ``h = o * tanh(LN(c))``: the c path's gradient goes
    through LN (a reduction over the row) before it joins the carried dc."""
    cdef Py_ssize_t j, H = L.H
    cdef const float *peep = L.peep
    cdef float *dcn = L.dcn + row * H
    cdef float dhj, dcj, tc, i, f, gg, o, di, df
    # tanh(LN(c_t)) from the kept normalized row: d's o block, overwritten below
    for j in range(H):
        d[3 * H + j] = L.ln_xc[row * H + j] * L.ln_c_w[j] + L.ln_c_b[j]
    fc_tanh(d + 3 * H, H)
    for j in range(H):
        dhj = dhr[j]
        if dyr != NULL:
            dhj = dhj + dyr[j]
        tc = d[3 * H + j]
        o = a[3 * H + j]
        d[3 * H + j] = dhj * tc * o * (1 - o)           # do
        dcn[j] = dhj * o * (1 - tc * tc)                # the gradient of LN(c_t)
    fc_ln_backward(dcn, L.ln_xc + row * H, L.ln_rstd[row * L.ln_k + LN_C], L.ln_c_w, H,
                   d + 2 * H)                           # its c_t part, in d's g block
    for j in range(H):
        dcj = L.dc[b * H + j] + d[2 * H + j]
        if peep != NULL:
            dcj = dcj + d[3 * H + j] * peep[2 * H + j]
        i = a[j]
        f = a[H + j]
        gg = a[2 * H + j]
        di = dcj * gg * i * (1 - i)
        df = dcj * cprev[j] * f * (1 - f)
        d[j] = di
        d[H + j] = df
        d[2 * H + j] = dcj * i * (1 - gg * gg)
        dcj = dcj * f
        if peep != NULL:
            dcj = dcj + di * peep[j] + df * peep[H + j]
        L.dc[b * H + j] = dcj
    _ln_hh_back(L, row, d, 4 * H)


cdef void _proj_back(const BwdLoop *L, Py_ssize_t t, Py_ssize_t b0, Py_ssize_t b1,
                     bint product) noexcept nogil:
    """A projected LSTM's step t, rows [b0, b1): the gradient of h_t, ``dht = dh + dy``
    (kept; zeros at masked steps), then that of m, ``dm = dht @ W_hr`` (when
    ``product``: some row of the block is active)."""
    cdef Py_ssize_t b, B = L.B, P = L.P
    cdef float *r = L.dht + t * B * P
    for b in range(b0, b1):
        if _masked(L.lens, t, b):
            memset(r + b * P, 0, P * sizeof(float))
    _copy_rows_active(r, L.dh, NULL if L.dy == NULL else L.dy + t * B * P, b0, b1, P,
                      L.lens, t)
    if product:
        fc_gemm(b1 - b0, L.H, P, L.dht + (t * B + b0) * P, P, L.wrt, L.dm + b0 * L.H, L.H)


cdef void _lstm_bwd(const void *p, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    cdef const BwdLoop *L = <const BwdLoop *>p
    cdef bint proj = L.wrt != NULL
    cdef Py_ssize_t s, t, b, j, T = L.T, B = L.B, H = L.H, G = 4 * L.H
    cdef Py_ssize_t P = L.P if proj else L.H        # the values of h per row
    cdef Py_ssize_t steps = _block_steps(L.lens, b0, b1)
    cdef const float *peep = L.peep
    cdef const float *cs = L.cs
    cdef float *dh = L.dh
    cdef float *dc = L.dc
    cdef const float *a
    cdef const float *cprev
    cdef const float *dhr       # the row's gradient of o * tanh(c) (m, or h) ...
    cdef const float *dyr       # ... plus this one's, or NULL
    cdef float *d
    cdef float dhj, dcj, tc, i, f, gg, o, do_, di, df
    for s in range(T):
        t = _step_time(s, 0, T, not L.reverse)
        if proj:
            _proj_back(L, t, b0, b1, t < steps)
        for b in range(b0, b1):
            d = L.dG + (t * B + b) * G
            if _masked(L.lens, t, b):
                memset(d, 0, G * sizeof(float))
                _ln_bwd_masked(L, t * B + b, G)
                continue
            if proj:
                dhr, dyr = L.dm + b * H, NULL
            else:
                dhr = dh + b * H
                dyr = L.dy + (t * B + b) * H if L.dy != NULL else NULL
            a = L.gates + (t * B + b) * G
            cprev = _prev_row(cs, L.init, t, b, T, B, H, L.lens, L.reverse)
            if L.ln_c_w != NULL:
                _lstm_bwd_ln_row(L, t * B + b, b, a, cprev, dhr, dyr, d)
                continue
            memcpy(d + 3 * H, cs + (t * B + b) * H, H * sizeof(float))
            fc_tanh(d + 3 * H, H)         # tanh(c_t), overwritten below
            for j in range(H):
                dhj = dhr[j]
                if dyr != NULL:
                    dhj = dhj + dyr[j]
                tc = d[3 * H + j]
                i = a[j]
                f = a[H + j]
                gg = a[2 * H + j]
                o = a[3 * H + j]
                do_ = dhj * tc * o * (1 - o)
                dcj = dc[b * H + j] + dhj * o * (1 - tc * tc)
                if peep != NULL:
                    dcj = dcj + do_ * peep[2 * H + j]
                di = dcj * gg * i * (1 - i)
                df = dcj * cprev[j] * f * (1 - f)
                d[j] = di
                d[H + j] = df
                d[2 * H + j] = dcj * i * (1 - gg * gg)
                d[3 * H + j] = do_
                dcj = dcj * f
                if peep != NULL:
                    dcj = dcj + di * peep[j] + df * peep[H + j]
                dc[b * H + j] = dcj
        if t < steps:
            fc_gemm(b1 - b0, P, G, (L.dGln if L.ln_hh_w != NULL else L.dG) + (t * B + b0) * G,
                    G, L.wpt, L.tmp + b0 * P, P)
            _copy_rows_active(dh, L.tmp, NULL, b0, b1, P, L.lens, t)


def lstm_backward(const float[:, :, ::1] gates, const float[:, :, ::1] cs,
                  const float[:, ::1] c0, const float[::1] wpt, const float[::1] peephole,
                  const float[:, :, ::1] dy,
                  float[:, ::1] dh, float[:, ::1] dc, float[:, :, ::1] dG,
                  const int64_t[::1] lengths, bint reverse, float[:, ::1] tmp,
                  const int64_t[::1] blocks=None, ln=None, proj=None):
    """BPTT loop: ``dG`` receives the pre-activation gradients (i, f, g, o);
    ``dh``/``dc`` are the final-state gradients in, dh0/dc0 out; ``blocks`` as in
    :func:`rnn_forward`, ``ln`` as in :func:`rnn_backward` (with c_*, xc and dcn).
    ``proj``: None, or a projected LSTM's ``(wrt, dht, dm)``: ``W_hr`` (P, H) packed by
    ``pack(W_hr, False)``, ``dht`` (T, B, P) receiving the gradients of each ``h_t``
    (``dh + dy``, zeros at masked steps: ``dW_hr = dht^T m`` after the loop) and scratch
    ``dm`` (B, H); ``dy`` (T, B, P), ``dh``, ``tmp`` (B, P), ``wpt`` packs ``W_hh`` (4H, P)."""
    cdef Py_ssize_t nb = _check_blocks(blocks, cs.shape[1])
    cdef BwdLoop L
    memset(&L, 0, sizeof(L))     # every pointer it does not set is NULL
    L.T, L.B, L.H = cs.shape[0], cs.shape[1], cs.shape[2]
    cdef Py_ssize_t P = dh.shape[1]
    if (dh.shape[0], tmp.shape[0], tmp.shape[1]) != (L.B, L.B, P) or (
            dy is not None and (dy.shape[0], dy.shape[1], dy.shape[2]) != (L.T, L.B, P)):
        raise ValueError(f"dh, tmp, dy: expected (B, {P}), (B, {P}), (T, B, {P})")
    if proj is None and P != L.H:
        raise ValueError(f"dh: expected shape (B, H) = ({L.B}, {L.H}) without proj, got "
                         f"({L.B}, {P})")
    L.reverse, L.lens = reverse, _lens(lengths)
    L.gates, L.cs, L.init, L.wpt = &gates[0, 0, 0], &cs[0, 0, 0], &c0[0, 0], &wpt[0]
    L.peep = &peephole[0] if peephole is not None else NULL
    L.dy, L.dh, L.dc, L.dG, L.tmp = _opt(dy), &dh[0, 0], &dc[0, 0], &dG[0, 0, 0], &tmp[0, 0]
    _set_ln_bwd(&L, ln, CELLS["lstm"].G, True)
    cdef const float[::1] w
    if proj is not None:
        wrt, dht, dm = proj
        if not 1 <= P < L.H:
            raise ValueError(f"dh: expected P values per row, 1 <= P < H = {L.H}, got {P}")
        w = wrt
        if w.shape[0] < fc_packed_size(P, L.H):      # pack(W_hr, False): dm = dh @ W_hr
            raise ValueError(f"wrt: expected W_hr (P, H) = ({P}, {L.H}) packed for dh @ W_hr "
                             f"({fc_packed_size(P, L.H)} floats), got {w.shape[0]}")
        L.P, L.wrt = P, &w[0]
        L.dht = _kept("dht", dht, (L.T, L.B, P))
        L.dm = _kept("dm", dm.reshape(1, L.B, L.H), (1, L.B, L.H))
    with nogil:
        _run_rows(_lstm_bwd, &L, L.B, _bounds(blocks), nb, True)


# ----------------------------------------------------------------------------
# GRU

cdef void _gru_fwd(const void *p, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """lbr: n = tanh(gx_n + r*(W_hn h + b_hn)), wp packs all of W_hh (3H outputs).
    not lbr: n = tanh(gx_n + W_hn (r*h)), wp packs W_hr, W_hz (2H) and wp_n W_hn."""
    cdef const FwdLoop *L = <const FwdLoop *>p
    cdef bint lbr = L.lbr
    cdef Py_ssize_t s, t, b, j, t0 = L.t0, B = L.B, H = L.H, G = 3 * L.H
    cdef Py_ssize_t ldh = 3 * H if lbr else 2 * H
    cdef Py_ssize_t steps = _block_steps(L.lens, b0, b1)
    cdef const float *bhn = L.bhn
    cdef float *h = L.h
    cdef float *y = L.y
    cdef float *gates = L.gates
    cdef float *hn_out = L.kept
    cdef float *gh = L.gh
    cdef float *rh = L.rh
    cdef float *ghn = L.ghn
    cdef float *a
    cdef float *hb
    cdef const float *g
    cdef float hn, nv, z
    for s in range(L.n):
        t = _step_time(s, t0, L.n, L.reverse)
        if t < steps:
            _recur(L.packing, b1 - b0, ldh, H, h + b0 * H, L.wp, gh + b0 * ldh)
        for b in range(b0, b1):
            if _masked(L.lens, t, b):
                if hn_out != NULL:    # zeros, as the gates: the cache is the same every run
                    memset(hn_out + (t * B + b) * H, 0, H * sizeof(float))
                _ln_masked(L, t, b, G)
                continue
            a = gh + b * ldh
            if L.ln_hh_w != NULL:     # linear_before_reset only: a has all 3H
                _ln_hh(L, t, b, a, G)
            g = L.gx + ((t - t0) * B + b) * G
            for j in range(2 * H):
                a[j] += g[j]
            fc_sigmoid(a, 2 * H)          # r, z
            if lbr:
                for j in range(H):
                    hn = a[2 * H + j] + bhn[j]
                    if hn_out != NULL:
                        hn_out[(t * B + b) * H + j] = hn
                    a[2 * H + j] = g[2 * H + j] + a[j] * hn
            else:
                for j in range(H):
                    rh[b * H + j] = a[j] * h[b * H + j]
        if not lbr and t < steps:
            _recur(L.packing, b1 - b0, H, H, rh + b0 * H, L.wp_n, ghn + b0 * H)
        for b in range(b0, b1):
            if _masked(L.lens, t, b):
                memset(y + (t * B + b) * H, 0, H * sizeof(float))
                if gates != NULL:     # may be gx's buffer: no projection left behind
                    memset(gates + (t * B + b) * G, 0, G * sizeof(float))
                continue
            a = gh + b * ldh
            g = L.gx + ((t - t0) * B + b) * G
            if not lbr:
                # gh has room for 2H per row only: n goes to ghn
                for j in range(H):
                    ghn[b * H + j] += g[2 * H + j]
                fc_tanh(ghn + b * H, H)
            else:
                fc_tanh(a + 2 * H, H)
            hb = h + b * H
            for j in range(H):
                nv = a[2 * H + j] if lbr else ghn[b * H + j]
                z = a[H + j]
                hb[j] = nv + z * (hb[j] - nv)
            memcpy(y + (t * B + b) * H, hb, H * sizeof(float))
            if gates != NULL:
                memcpy(gates + (t * B + b) * G, a, 2 * H * sizeof(float))
                memcpy(gates + (t * B + b) * G + 2 * H,
                       a + 2 * H if lbr else ghn + b * H, H * sizeof(float))


def gru_forward(Py_ssize_t t0, const float[:, :, ::1] gx, const float[::1] wp,
                const float[::1] wp_n, int packing,
                const float[::1] bhn, float[:, ::1] h, float[:, :, ::1] y,
                const int64_t[::1] lengths, bint reverse, bint linear_before_reset,
                float[:, :, ::1] gates, float[:, :, ::1] hn, float[:, ::1] gh,
                float[:, ::1] rh, float[:, ::1] ghn, const int64_t[::1] blocks=None,
                const int64_t[::1] cols=None, ln=None):
    """Forward loop.  ``gx`` holds ``x W_ih^T + b_ih`` plus ``b_hr, b_hz`` (and ``b_hn``
    when not linear_before_reset); ``bhn`` is ``b_hn`` for linear_before_reset.
    ``gates`` (r, z, n; zeros at masked steps) and, for linear_before_reset,
    ``hn = W_hn h + b_hn`` are written when not None; ``gates`` may be ``gx`` itself, as
    in :func:`lstm_forward`.  Steps, ``blocks``, ``cols`` and ``ln`` (both
    linear_before_reset only) as in :func:`rnn_forward`."""
    _check_chunk(t0, gx.shape[0], y.shape[0])
    _check_kept(t0, gx, y, gates, CELLS["gru"].G, (("hn", hn),))
    cdef Py_ssize_t nb = _check_blocks(blocks, y.shape[1])
    cdef Py_ssize_t nc = _check_cols(cols, blocks, y.shape[2], packing)
    if nc > 1 and not linear_before_reset:
        raise ValueError("cols: expected None without linear_before_reset (two products "
                         f"per step), got {list(cols)}")
    cdef float[::1] spare = _spare_state(nc, y.shape[1], y.shape[2])
    cdef FwdLoop L
    memset(&L, 0, sizeof(L))     # every pointer it does not set is NULL
    L.t0, L.n, L.B, L.H = t0, gx.shape[0], y.shape[1], y.shape[2]
    L.packing, L.reverse, L.lbr, L.lens = packing, reverse, linear_before_reset, _lens(lengths)
    L.gx, L.wp, L.bhn = &gx[0, 0, 0], &wp[0], &bhn[0]
    L.wp_n = &wp_n[0] if wp_n is not None else NULL
    L.h, L.y, L.gates, L.kept = &h[0, 0], &y[0, 0, 0], _opt_w(gates), _opt_w(hn)
    L.gh, L.rh, L.ghn = &gh[0, 0], &rh[0, 0], &ghn[0, 0]
    cdef Py_ssize_t G = CELLS["gru"].G
    if ln is not None and not linear_before_reset:
        raise ValueError("ln: expected None without linear_before_reset, got layer norm")
    _set_ln_fwd(&L, ln, y.shape[0], G, False, nc)
    with nogil:
        if nc > 1:
            _run_cols(&L, KIND_GRU, G, &cols[0], nc, _spare_ptr(spare))
        else:
            _run_rows(_gru_fwd, &L, L.B, _bounds(blocks), nb, True)


cdef void _gru_bwd(const void *p, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """lbr: wpt packs W_hh (3H x H) and dGh gets [dr, dz, dn*r] (gradient of W_hh h + b_hh).
    not lbr: wpt packs W_hr, W_hz (2H x H), wpt_n W_hn; dGh is unused."""
    cdef const BwdLoop *L = <const BwdLoop *>p
    cdef bint lbr = L.lbr
    cdef Py_ssize_t s, t, b, j, row, T = L.T, B = L.B, H = L.H, G = 3 * L.H
    cdef Py_ssize_t steps = _block_steps(L.lens, b0, b1)
    cdef const float *gates = L.gates
    cdef const float *hn = L.hn
    cdef const float *y = L.y
    cdef const float *dy = L.dy
    cdef float *dh = L.dh
    cdef float *dGx = L.dG
    cdef float *dGh = L.dGh
    cdef float *tmp = L.tmp
    cdef float *direct = L.direct
    cdef const float *a
    cdef const float *hp
    cdef float *d
    cdef float *e
    cdef float dhj, r, z, n, dnp, dr
    for s in range(T):
        t = _step_time(s, 0, T, not L.reverse)
        for b in range(b0, b1):
            row = t * B + b
            d = dGx + row * G
            if _masked(L.lens, t, b):
                memset(d, 0, G * sizeof(float))
                if lbr:
                    memset(dGh + row * G, 0, G * sizeof(float))
                _ln_bwd_masked(L, row, G)
                continue
            a = gates + row * G
            hp = _prev_row(y, L.init, t, b, T, B, H, L.lens, L.reverse)
            for j in range(H):
                dhj = dh[b * H + j]
                if dy != NULL:
                    dhj = dhj + dy[row * H + j]
                r = a[j]
                z = a[H + j]
                n = a[2 * H + j]
                direct[b * H + j] = dhj * z
                dnp = dhj * (1 - z) * (1 - n * n)
                d[H + j] = dhj * (hp[j] - n) * z * (1 - z)
                d[2 * H + j] = dnp
                if lbr:
                    d[j] = dnp * hn[row * H + j] * r * (1 - r)
            if lbr:
                e = dGh + row * G
                memcpy(e, d, 2 * H * sizeof(float))
                for j in range(H):
                    e[2 * H + j] = d[2 * H + j] * a[j]
                _ln_hh_back(L, row, e, G)
        if t >= steps:      # every row of the block masked: nothing flows
            continue
        if lbr:
            fc_gemm(b1 - b0, H, G, (L.dGln if L.ln_hh_w != NULL else dGh) + (t * B + b0) * G,
                    G, L.wpt, tmp + b0 * H, H)
        else:
            # dr needs (dn W_hn) first: tmp = dn @ W_hn, then the r, z rows
            fc_gemm(b1 - b0, H, H, dGx + (t * B + b0) * G + 2 * H, G, L.wpt_n, tmp + b0 * H, H)
            for b in range(b0, b1):
                row = t * B + b
                if _masked(L.lens, t, b):
                    continue
                a = gates + row * G
                d = dGx + row * G
                hp = _prev_row(y, L.init, t, b, T, B, H, L.lens, L.reverse)
                for j in range(H):
                    r = a[j]
                    dr = tmp[b * H + j] * hp[j]
                    d[j] = dr * r * (1 - r)
                    direct[b * H + j] += tmp[b * H + j] * r
            fc_gemm(b1 - b0, H, 2 * H, dGx + (t * B + b0) * G, G, L.wpt, tmp + b0 * H, H)
        _copy_rows_active(dh, tmp, direct, b0, b1, H, L.lens, t)


def gru_backward(const float[:, :, ::1] gates, const float[:, :, ::1] hn,
                 const float[:, :, ::1] y, const float[:, ::1] h0, const float[::1] wpt,
                 const float[::1] wpt_n, const float[:, :, ::1] dy, float[:, ::1] dh,
                 float[:, :, ::1] dGx, float[:, :, ::1] dGh, const int64_t[::1] lengths,
                 bint reverse, bint linear_before_reset, float[:, ::1] tmp,
                 float[:, ::1] direct, const int64_t[::1] blocks=None, ln=None):
    """BPTT loop: ``dGx`` receives the gradients of the input pre-activations (r, z, n);
    for linear_before_reset ``dGh`` receives those of ``W_hh h + b_hh``; ``dh`` is dh in,
    dh0 out; ``blocks`` as in :func:`rnn_forward`, ``ln`` (linear_before_reset only) as
    in :func:`rnn_backward` (``dGh`` then the gradient of ``LN(W_hh h) + b_hh``)."""
    cdef Py_ssize_t nb = _check_blocks(blocks, y.shape[1])
    cdef BwdLoop L
    memset(&L, 0, sizeof(L))     # every pointer it does not set is NULL
    if ln is not None and not linear_before_reset:
        raise ValueError("ln: expected None without linear_before_reset, got layer norm")
    L.T, L.B, L.H = y.shape[0], y.shape[1], y.shape[2]
    L.reverse, L.lbr, L.lens = reverse, linear_before_reset, _lens(lengths)
    L.gates, L.hn, L.y, L.init = &gates[0, 0, 0], _opt(hn), &y[0, 0, 0], &h0[0, 0]
    L.wpt, L.wpt_n = &wpt[0], &wpt_n[0] if wpt_n is not None else NULL
    L.dy, L.dh, L.dG, L.dGh = _opt(dy), &dh[0, 0], &dGx[0, 0, 0], _opt_w(dGh)
    L.tmp, L.direct = &tmp[0, 0], &direct[0, 0]
    _set_ln_bwd(&L, ln, CELLS["gru"].G, False)
    with nogil:
        _run_rows(_gru_bwd, &L, L.B, _bounds(blocks), nb, True)


# ----------------------------------------------------------------------------
# streaming: one step at a time

cdef class StepKernel:
    """One time step of a cell for a batch, for streaming inference.

    Built once from the weights: ``W_ih`` and ``W_hh`` are packed and the biases
    folded here, so that a step is one call with the GIL released: the input
    projection (packed GEMM), the recurrent product and the fused gate pass.
    The arrays given are kept alive by the kernel; the caller
    (``functional.Stepper``) validated them.  Scratch space grows with the largest batch seen.
    """
    cdef readonly str cell
    cdef CellKind kind
    cdef bint relu, lbr
    cdef int packing            # PACK_FLOAT or PACK_HALF
    cdef Py_ssize_t I, H, G, ldh, cap
    cdef object keep, scratch
    cdef const float *wih
    cdef const float *wp
    cdef const float *wp_n
    cdef const float *bias
    cdef const float *bhn
    cdef const float *peep          # peephole weights (3H: i, f, o) or NULL
    cdef bint busy              # the kept scratch is in use by a call (GIL-protected)
    cdef FwdLoop ln             # the layer-norm fields of its loops (ln_hh_w NULL: none)
    cdef const float *ln_ih_w   # the input path's gain, and its beta with the biases folded
    cdef const float *ln_ih_b
    cdef const float *wr        # LSTM with projection: W_hr packed as W_hh is; else NULL
    cdef Py_ssize_t P           # the values of h: H, or W_hr's rows

    def __init__(self, str cell, const float[::1] wih, const float[::1] wp, const float[::1] wp_n,
                 const float[::1] bias, const float[::1] bhn, const float[::1] peephole,
                 Py_ssize_t I, Py_ssize_t H, bint relu, bint linear_before_reset,
                 int packing=PACK_FLOAT, ln=None, wr=None, Py_ssize_t P=0):
        if cell not in _KINDS:
            raise ValueError(f"cell: expected one of {tuple(_KINDS)}, got {cell!r}")
        if packing not in (PACK_FLOAT, PACK_HALF):
            raise ValueError(f"packing: expected PACK_FLOAT ({int(PACK_FLOAT)}) or PACK_HALF "
                             f"({int(PACK_HALF)}), got {packing}")
        self.packing = packing
        self.cell, self.I, self.H = cell, I, H
        self.G = CELLS[cell].G
        self.kind = _KINDS[cell]
        self.relu, self.lbr = relu, linear_before_reset
        self.ldh = 2 * H if (cell == "gru" and not linear_before_reset) else self.G * H
        if bias.shape[0] != self.G * H or bhn.shape[0] != H:
            raise ValueError("bias: expected G*H floats and bhn H floats")
        self.keep = (wih, wp, wp_n, bias, bhn, peephole)
        self.wih, self.wp, self.bias, self.bhn = &wih[0], &wp[0], &bias[0], &bhn[0]
        self.wp_n = &wp_n[0] if wp_n is not None else NULL
        self.peep = &peephole[0] if peephole is not None else NULL
        self.cap = 0
        self.busy = False
        self.P, self.wr = H, NULL
        cdef const float[::1] w
        if wr is not None:
            if self.kind != KIND_LSTM or not 1 <= P < H:
                raise ValueError(f"wr: expected an LSTM's W_hr (P, H) with 1 <= P < H = {H}, "
                                 f"got P = {P} for {cell}")
            w = wr
            if w.shape[0] < _weight_floats(packing, H, P):
                raise ValueError(f"wr: expected W_hr ({P}, {H}) packed "
                                 f"({_weight_floats(packing, H, P)} floats), got {w.shape[0]}")
            self.P, self.wr = P, &w[0]
            self.keep = self.keep + (wr,)
        # ln: None or (ih_weight, ih_bias + bias, hh_weight, hh_bias, c_weight, c_bias, eps)
        memset(&self.ln, 0, sizeof(self.ln))
        if ln is not None:
            if self.kind == KIND_GRU and not linear_before_reset:
                raise ValueError("ln: expected None without linear_before_reset, got "
                                 "layer norm")
            ih_w, ih_b, hh_w, hh_b, c_w, c_b, eps = ln
            self.ln.B, self.ln.H = 0, H
            _set_ln_fwd(&self.ln, (hh_w, hh_b, c_w, c_b, eps, None, None, None, None), 0,
                        self.G, self.kind == KIND_LSTM, 1)
            self.ln_ih_w = _vec("ln_ih_weight", ih_w, self.G * H)
            self.ln_ih_b = _vec("ln_ih_bias", ih_b, self.G * H)
            self.keep = self.keep + tuple(ln)

    def _scratch(self, Py_ssize_t B):
        """Scratch arrays for a batch of B: gx (B*G*H), gh (B*ldh), and rh, ghn, y (B*H)
        (with a projection also m, its unread copy and W_hr m: see FwdLoop)."""
        return (np.zeros(B * self.G * self.H, np.float32), np.zeros(B * self.ldh, np.float32),
                np.zeros((3 if self.wr == NULL else 6, B * self.H), np.float32))

    def step(self, const float[:, ::1] x, float[:, ::1] h, float[:, ::1] c):
        """Advance ``h`` (and ``c``, LSTM) in place by one step of input ``x`` (B, I).

        Thread-safe: the kept scratch serves one call at a time (claimed under the
        GIL); a call that finds it in use works in scratch of its own.
        """
        cdef Py_ssize_t B = x.shape[0], H = self.H
        if x.shape[1] != self.I or h.shape[0] != B or h.shape[1] != self.P:
            raise ValueError(f"x, h: expected shapes (B, {self.I}) and (B, {self.P}), got "
                             f"({x.shape[0]}, {x.shape[1]}) and ({h.shape[0]}, {h.shape[1]})")
        if self.kind == KIND_LSTM and (c is None or c.shape[0] != B or c.shape[1] != H):
            raise ValueError(f"c: expected shape (B, H) = ({B}, {H})")
        if B == 0:
            return
        cdef bint own = not self.busy      # check and claim with no GIL release between
        if own:
            self.busy = True
        try:
            if own:
                if B > self.cap:
                    self.scratch, self.cap = self._scratch(B), B
                scratch = self.scratch
            else:
                scratch = self._scratch(B)
            self._step(B, x, h, c, scratch)
        finally:
            if own:
                self.busy = False

    cdef _step(self, Py_ssize_t B, const float[:, ::1] x, float[:, ::1] h, float[:, ::1] c,
               tuple scratch):
        cdef Py_ssize_t H = self.H, GH = self.G * self.H, b, j
        cdef float[::1] sgx = scratch[0], sgh = scratch[1]
        cdef float[:, ::1] rest = scratch[2]
        cdef float *gx = &sgx[0]
        cdef float *gh = &sgh[0]
        cdef float *rh = &rest[0, 0]
        cdef float *ghn = &rest[1, 0]
        cdef float *y = &rest[2, 0]
        cdef fc_fpenv_t env
        cdef FwdLoop L          # one step of the whole batch, nothing kept
        L = self.ln             # its layer-norm fields (all NULL without)
        L.n, L.B, L.H, L.packing, L.relu, L.lbr = 1, B, H, self.packing, self.relu, self.lbr
        L.gx, L.wp, L.wp_n, L.peep, L.bhn = gx, self.wp, self.wp_n, self.peep, self.bhn
        L.h, L.c, L.y = &h[0, 0], &c[0, 0] if c is not None else NULL, y
        L.gh, L.rh, L.ghn = gh, rh, ghn
        if self.wr != NULL:     # scratch rows 3, 4, 5: m, its unread copy, W_hr m
            L.P, L.wr, L.mb, L.mx, L.hp = self.P, self.wr, &rest[3, 0], &rest[4, 0], &rest[5, 0]
        with nogil:
            env = fc_fpenv_enter()
            if self.I:
                _recur(self.packing, B, GH, self.I, &x[0, 0], self.wih, gx)
            else:
                memset(gx, 0, B * GH * sizeof(float))
            if L.ln_hh_w != NULL:       # the bias is in the input path's beta
                for b in range(B):
                    fc_ln_forward(gx + b * GH, gx + b * GH, GH, L.ln_eps, self.ln_ih_w,
                                  self.ln_ih_b, NULL)
            else:
                for b in range(B):
                    for j in range(GH):
                        gx[b * GH + j] += self.bias[j]
            if self.kind == KIND_LSTM:
                _lstm_fwd(&L, 0, B)
            elif self.kind == KIND_GRU:
                _gru_fwd(&L, 0, B)
            else:
                _rnn_fwd(&L, 0, B)
            fc_fpenv_exit(env)


# ----------------------------------------------------------------------------
# backward's weight gradients: C = A^T B on the packed GEMM, C's rows split across threads

from cpython.pyport cimport PY_SSIZE_T_MAX

cdef extern from "gemm_tn.h" nogil:
    enum:
        FC_TN_BLOCK
        FC_TN_MAX_B
    ctypedef struct fc_tn_product:
        Py_ssize_t n
        const float *P
        float *C
        Py_ssize_t ldc
    int fc_gemm_tn_threads(Py_ssize_t m, int nthreads)
    Py_ssize_t fc_gemm_tn_split(Py_ssize_t m, int nthreads, int t)
    void fc_gemm_tn_rows(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t k, const float *A,
                         Py_ssize_t lda, int nb, const fc_tn_product *prods, float *At)

#: the largest buffer (in floats) a size is allowed to ask for: its bytes fit a Py_ssize_t
cdef Py_ssize_t _MAX_FLOATS = PY_SSIZE_T_MAX // sizeof(float)


def gemm_tn_threads(Py_ssize_t m, int nthreads):
    """How many of ``nthreads`` threads :func:`gemm_tn` runs for a C of ``m`` rows
    (C's rows are split in ranges of whole tiles; more threads would have none)."""
    if nthreads < 1:
        raise ValueError(f"nthreads: expected an integer >= 1, got {nthreads}")
    return fc_gemm_tn_threads(m, nthreads)


def gemm_tn_floats(Py_ssize_t k, Py_ssize_t m, Py_ssize_t n, int nthreads, Py_ssize_t n2=0):
    """Floats of the work buffer :func:`gemm_tn` needs for C (m, n) = A^T B (and C2 (m, n2)
    = A^T B2) with A (k, m), B (k, n), B2 (k, n2) at ``nthreads`` threads: the B packed
    (with room to align them) and each thread's block of A's columns transposed.
    MemoryError if that many bytes cannot be addressed."""
    if k < 0 or m < 0 or n < 0 or n2 < 0:
        raise ValueError(f"k, m, n, n2: expected sizes >= 0, got ({k}, {m}, {n}, {n2})")
    nt = gemm_tn_threads(m, nthreads)
    # in Python integers (objects), so nothing overflows before the check
    cdef object K = k, M = m
    need = nt * min(FC_TN_BLOCK, M) * K
    for N in (n, n2):
        need += max((N + FC_NR - 1) // FC_NR * FC_NR * K, 1) + 15     # as _pack_floats
    if need > _MAX_FLOATS:
        raise MemoryError(f"gemm_tn: a work buffer of {need} floats for k={k}, m={m}, n={n}, "
                          f"n2={n2} at {nt} threads exceeds the address space")
    return need


cdef void _pack_panels(int t, int nt, Py_ssize_t k, int nb, const float **B,
                       const fc_tn_product *prods) noexcept nogil:
    """Thread t's share (of nt) of the panels of every B_j (k x n_j) packed into its
    P: the panels of columns [j0, j1) are those of the matrix of these columns alone
    (an exact copy)."""
    cdef Py_ssize_t total = 0, first = 0, g0, g1, j0, j1, n
    cdef int j
    for j in range(nb):
        total += (prods[j].n + FC_NR - 1) // FC_NR
    g0, g1 = total * t // nt, total * (t + 1) // nt     # this thread's panels, all B's
    for j in range(nb):
        n = prods[j].n
        j0 = max(g0 - first, 0) * FC_NR
        j1 = min(max(g1 - first, 0) * FC_NR, n)
        if j1 > j0:
            # the panels are written here only, read-only after (hence const in prods)
            fc_pack(B[j] + j0, k, j1 - j0, n, 1, <float *>prods[j].P + j0 * k)
        first += (n + FC_NR - 1) // FC_NR


cdef void _gemm_tn_part(int t, int nt, Py_ssize_t m, Py_ssize_t k, const float *A,
                        Py_ssize_t lda, int nb, const fc_tn_product *prods,
                        float *At) noexcept nogil:
    """Thread t's rows of every C (of nt threads), in its own block At of A's columns;
    in the loops' floating-point mode, which every thread sets for itself."""
    cdef fc_fpenv_t env = fc_fpenv_enter()
    fc_gemm_tn_rows(fc_gemm_tn_split(m, nt, t), fc_gemm_tn_split(m, nt, t + 1), k, A, lda,
                    nb, prods, At + t * min(<Py_ssize_t>FC_TN_BLOCK, m) * k)
    fc_fpenv_exit(env)


cdef float *_aligned(float *p) noexcept nogil:
    # the first 64-byte boundary from p, where pack() places its panels too
    return p + (16 - (<size_t>p // sizeof(float)) % 16) % 16


def _check_tn_shapes(str bname, const float[:, ::1] B, str cname, float[:, ::1] C,
                     Py_ssize_t k, Py_ssize_t m):
    if B.shape[0] != k or B.shape[1] != C.shape[1]:
        raise ValueError(f"{bname}: expected shape (k, n) = ({k}, {C.shape[1]}), got "
                         f"({B.shape[0]}, {B.shape[1]})")
    if C.shape[0] != m:
        raise ValueError(f"{cname}: expected shape (m, n) = ({m}, {C.shape[1]}), got "
                         f"({C.shape[0]}, {C.shape[1]})")


cdef Py_ssize_t _tn_product(fc_tn_product *prods, const float **Bp, int j,
                            const float[:, ::1] B, float[:, ::1] C, Py_ssize_t k,
                            float *region):
    """prods[j], Bp[j]: the product C = A^T B, B to be packed into region (64-byte
    aligned within it); returns the floats the region takes."""
    cdef Py_ssize_t n = C.shape[1]
    prods[j].n = n
    prods[j].P = _aligned(region)
    prods[j].C = &C[0, 0] if n else NULL
    prods[j].ldc = n
    Bp[j] = &B[0, 0] if n else NULL
    return _pack_floats(k, n)


def gemm_tn(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C, Py_ssize_t a0=0,
            int nthreads=1, buf=None, const float[:, ::1] B2=None, float[:, ::1] C2=None):
    """``C = A[:, a0:a0 + m].T @ B`` with ``m = C.shape[0]``: backward's ``dW = dG^T X``;
    with ``B2`` and ``C2``, also ``C2 = A[:, a0:a0 + m].T @ B2`` (A copied once for both).

    ``A`` (k, >= a0 + m), ``B`` (k, n), ``C`` (m, n), ``B2`` (k, n2), ``C2`` (m, n2) are
    C-contiguous float32.  Runs on the packed GEMM (each ``B`` packed once, each block
    of C's rows from A's columns copied transposed) over ``nthreads`` threads, each
    computing whole rows of C over all of k in the GEMM's fixed order: the result
    has the same bits at any thread count, and with or without the second product.
    Work space: ``buf`` (float32, C order, at least :func:`gemm_tn_floats` floats)
    when given, else a new array."""
    cdef Py_ssize_t k = A.shape[0], m = C.shape[0]
    if nthreads < 1:
        raise ValueError(f"nthreads: expected an integer >= 1, got {nthreads}")
    if a0 < 0 or a0 + m > A.shape[1]:
        raise ValueError(f"A: expected columns [a0, a0 + m) = [{a0}, {a0 + m}) within its "
                         f"shape ({k}, {A.shape[1]})")
    if (B2 is None) != (C2 is None):
        raise ValueError("B2, C2: expected both or neither, got "
                         f"{'B2' if C2 is None else 'C2'} alone")
    _check_tn_shapes("B", B, "C", C, k, m)
    cdef int nb = 1, t
    if B2 is not None:
        _check_tn_shapes("B2", B2, "C2", C2, k, m)
        nb = 2
    if m == 0 or (C.shape[1] == 0 and (nb == 1 or C2.shape[1] == 0)):
        return
    if k == 0:                      # empty sums
        C[...] = 0
        if nb == 2:
            C2[...] = 0
        return
    cdef int nt = fc_gemm_tn_threads(m, nthreads)
    need = gemm_tn_floats(k, m, C.shape[1], nt, C2.shape[1] if nb == 2 else 0)
    if buf is None:
        buf = np.empty(need, dtype=np.float32)
    else:
        _check_pack_buffer(buf, need)
    cdef float[::1] work = buf
    cdef fc_tn_product prods[FC_TN_MAX_B]
    cdef const float *Bp[FC_TN_MAX_B]
    cdef Py_ssize_t at = _tn_product(prods, Bp, 0, B, C, k, &work[0])
    if nb == 2:
        at += _tn_product(prods, Bp, 1, B2, C2, k, &work[at])
    cdef float *At = &work[at]
    with nogil:
        if nt == 1:
            _pack_panels(0, 1, k, nb, Bp, prods)
            _gemm_tn_part(0, 1, m, k, &A[0, a0], A.shape[1], nb, prods, At)
        else:
            # every thread packs its share of the panels, then (after the loop's
            # barrier) multiplies its rows of A's columns by all of them
            for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                _pack_panels(t, nt, k, nb, Bp, prods)
            for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                _gemm_tn_part(t, nt, m, k, &A[0, a0], A.shape[1], nb, prods, At)
