"""Type stubs of the compiled time loops (``fastcells/_kernels.pyx``).

Private module: ``fastcells.functional`` validates and allocates every buffer
before calling these.  Every array is C-contiguous float32 (``lengths`` and
``blocks``, ``cols`` int64) of the shape the Python layer gives it; arguments typed
``| None`` may be None (no lengths, inference without saved activations, the
other GRU form, no peepholes, one thread).  ``blocks``: the row bounds of one
thread each (``fastcells._parallel.row_blocks``); ``cols``: instead, the
hidden-unit bounds of one thread each at every forward step
(``fastcells._parallel.column_blocks``).  The loops write only the arguments
documented as outputs (states in/out, ``y``, saved activations, gradients,
scratch).
"""
import enum

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]

# named constants ---------------------------------------------------------------

class Packing(enum.IntEnum):
    """How a product reads its weight W (the loops' ``packing`` argument)."""

    PACK_NONE = 0
    PACK_FLOAT = 1
    PACK_HALF = 2

PACK_NONE: Packing
PACK_FLOAT: Packing
PACK_HALF: Packing

# instruction sets ------------------------------------------------------------

def openmp_max_threads() -> int: ...
def isa_names() -> list[str]: ...
def isa_available() -> list[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def set_gemv_tiles(on: bool) -> None: ...
def get_gemv_tiles() -> bool: ...

# packed GEMM and activations (for tests) -------------------------------------

def pack_floats(rows: int, cols: int, transpose: bool) -> int: ...
def pack(W: _F32, transpose: bool, buf: _F32 | None = ..., nthreads: int = ...) -> _F32: ...
def pack_half(W: _F32) -> _F32: ...
def has_half() -> bool: ...
def half_max_rows() -> int: ...
def gemm(A: _F32, P: _F32, n: int, C: _F32, nthreads: int = ...,
         bias: _F32 | None = ...) -> None: ...
def gemm_row_granule() -> int: ...
def panel_columns() -> int: ...
def gemm_blocks(m: int, nthreads: int) -> _I64: ...
def gemm_nt(A: _F32, W: _F32, C: _F32, nthreads: int = ...) -> None: ...
def sigmoid_(x: _F32, ftz: bool = ...) -> None: ...
def tanh_(x: _F32, ftz: bool = ...) -> None: ...

# time loops --------------------------------------------------------------------

def rnn_forward(t0: int, gx: _F32, wp: _F32, packing: int, h: _F32, y: _F32,
                lengths: _I64 | None, reverse: bool, relu: bool, gh: _F32,
                blocks: _I64 | None = ..., cols: _I64 | None = ...,
                ln: tuple[object, ...] | None = ...) -> None: ...
def rnn_backward(y: _F32, wpt: _F32, dy: _F32 | None, dh: _F32, dG: _F32,
                 lengths: _I64 | None, reverse: bool, relu: bool, tmp: _F32,
                 blocks: _I64 | None = ..., ln: tuple[object, ...] | None = ...) -> None: ...
def lstm_forward(t0: int, gx: _F32, wp: _F32, packing: int, peephole: _F32 | None, h: _F32,
                 c: _F32, y: _F32, lengths: _I64 | None, reverse: bool, gates: _F32 | None,
                 cs: _F32 | None, gh: _F32, blocks: _I64 | None = ...,
                 cols: _I64 | None = ..., ln: tuple[object, ...] | None = ...,
                 proj: tuple[_F32 | None, ...] | None = ...) -> None: ...
def lstm_backward(gates: _F32, cs: _F32, c0: _F32, wpt: _F32, peephole: _F32 | None,
                  dy: _F32 | None, dh: _F32, dc: _F32, dG: _F32,
                  lengths: _I64 | None, reverse: bool, tmp: _F32,
                  blocks: _I64 | None = ..., ln: tuple[object, ...] | None = ...,
                  proj: tuple[_F32, ...] | None = ...) -> None: ...
def gru_forward(t0: int, gx: _F32, wp: _F32, wp_n: _F32 | None, packing: int, bhn: _F32,
                h: _F32,
                y: _F32, lengths: _I64 | None, reverse: bool, linear_before_reset: bool,
                gates: _F32 | None, hn: _F32 | None, gh: _F32, rh: _F32,
                ghn: _F32, blocks: _I64 | None = ..., cols: _I64 | None = ...,
                ln: tuple[object, ...] | None = ...) -> None: ...
def gru_backward(gates: _F32, hn: _F32 | None, y: _F32, h0: _F32, wpt: _F32,
                 wpt_n: _F32 | None, dy: _F32 | None, dh: _F32, dGx: _F32,
                 dGh: _F32 | None, lengths: _I64 | None, reverse: bool,
                 linear_before_reset: bool, tmp: _F32, direct: _F32,
                 blocks: _I64 | None = ..., ln: tuple[object, ...] | None = ...) -> None: ...

# layer normalization -------------------------------------------------------------

class LayerNormStat(enum.IntEnum):
    """The columns of a layer-normalized loop's kept ``rstd``."""

    LN_IH = 0
    LN_HH = 1
    LN_C = 2

LN_IH: LayerNormStat
LN_HH: LayerNormStat
LN_C: LayerNormStat
LN_STATS: dict[str, int]

def layer_norm_rows(x: _F32, gamma: _F32, beta: _F32, eps: float, xhat: _F32 | None = ...,
                    rstd: _F32 | None = ..., nthreads: int = ...) -> None: ...
def layer_norm_rows_backward(dy: _F32, xhat: _F32, rstd: _F32, gamma: _F32, dx: _F32,
                             nthreads: int = ...) -> None: ...


class StepKernel:
    """One time step of a cell for a batch, weights packed once (streaming)."""

    cell: str

    def __init__(self, cell: str, wih: _F32, wp: _F32, wp_n: _F32 | None, bias: _F32,
                 bhn: _F32, peephole: _F32 | None, I: int, H: int, relu: bool,
                 linear_before_reset: bool, packing: int = ...,
                 ln: tuple[object, ...] | None = ..., wr: _F32 | None = ...,
                 P: int = ...) -> None: ...
    def step(self, x: _F32, h: _F32, c: _F32 | None) -> None: ...

# backward's weight gradients: C = A^T B -------------------------------------------

def gemm_tn_threads(m: int, nthreads: int) -> int: ...
def gemm_tn_floats(k: int, m: int, n: int, nthreads: int, n2: int = ...) -> int: ...
def gemm_tn(A: _F32, B: _F32, C: _F32, a0: int = ..., nthreads: int = ...,
            buf: _F32 | None = ..., B2: _F32 | None = ..., C2: _F32 | None = ...) -> None: ...
