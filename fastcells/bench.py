"""The benchmark report: ``python -m fastcells.bench``.

For each cell, shape ``(T, B, I, H)`` and mode — ``fwd`` (inference,
``training=False``) and ``fwdbwd`` (a training forward and the backward of
one upstream gradient ``dy``) — the report times these systems, every one at
the same thread count (``--threads N``, default 1) or each at its own default
(``--threads default``), and checks fastcells against the float64 reference:

- ``fastcells``: ``<cell>_forward`` / ``<cell>_backward`` (every call checks
  and packs the weights);
- ``prepared`` (fwd): ``Stepper(cell, weights).forward``, the weights
  prepared once, as a server holds them (and as torch's module and ONNX
  Runtime's session hold theirs);
- ``fp16w`` (fwd, batch 1): the same with ``weight_dtype="float16"``;
- ``reference``: ``fastcells.reference`` on float32 inputs;
- ``floor``: NumPy's BLAS alone doing the same matrix products;
- the peers ``torch`` (``nn.RNN/GRU/LSTM``) and ``ort`` (ONNX Runtime, fwd),
  when installed.

Beside the grid, a variable-length row: the LSTM with ``lengths`` drawn
uniformly in ``[T/2, T]`` (torch through packed sequences, ONNX Runtime with
``sequence_lens``); and layer-normalized LSTM rows (``lstm+ln``), against
PyTorch's normalized LSTM written as a user would (``bench/peers.py``: the
``custom_lstms`` cell under TorchScript), each with what the normalization
costs over fastcells' plain LSTM on the same problem.  ``--scaling`` times
fastcells and the peers at 1, 2, 4, ... threads up to the cores this process
may use, with each one's speed-up over its own one-thread time.

This module holds what the command needs: the grids, the seeded problems,
fastcells' own systems and the floor, the timing, the correctness check, the
tables and the Markdown report.  The peers' runners, the ONNX model builder
and the plot live in the repository's ``bench/`` folder; run from a clone
(or an editable install of one), the report finds it beside the package.
From an installed wheel without the clone, the peers and the plot are
reported as missing and everything else runs.  ``bench/README.md`` explains
the columns and how the published figures are made.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from . import _cells, _threads, reference
from . import functional as _fc
from ._results import LayerNormWeights

F32 = np.float32

#: the cells, in the cell table's order
CELLS: tuple[str, ...] = _cells.CELL_NAMES
MODES = ("fwd", "fwdbwd")
#: every system the report can time, in the wide table's order, and what it runs
#: (the --help text and the wide table's legend)
SYSTEM_NOTES = {
    "fastcells": "the functional <cell>_forward/_backward (checks and packs weights every call)",
    "prepared": "Stepper.forward, the weights prepared once (fwd only)",
    "fp16w": "the same with float16 weights (fwd, batch 1 only)",
    "reference": "fastcells.reference, pure NumPy, on float32 inputs",
    "torch": "PyTorch nn.RNN/GRU/LSTM (peer)",
    "ort": "ONNX Runtime, a one-node model (peer, fwd only)",
    "floor": "NumPy's BLAS alone doing the same matrix products",
}
SYSTEMS = tuple(SYSTEM_NOTES)
#: the peers: other libraries, whose runners live in the repository's bench/ folder
PEERS = ("torch", "ort")
#: the distribution that brings each peer (what ``pip install`` takes)
PEER_DISTRIBUTIONS = {"torch": "torch", "ort": "onnxruntime"}
#: fastcells' prepared-weights systems: a disagreement of theirs fails --check
OWN_SYSTEMS = ("prepared", "fp16w")
#: relative error of fastcells against the float64 reference that fails --check
CHECK_TOL = 1e-4
#: relative disagreement of a peer with fastcells above which the peer is not timed
PEER_TOL = 1e-4
#: environment variables that set BLAS's and OpenMP's thread counts (read when they load)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: fastcells' own thread variable: removed for ``--threads default`` (no settings)
FASTCELLS_THREAD_VAR = "FASTCELLS_NUM_THREADS"
#: ``--threads default``: every system at its own default thread count
DEFAULT_THREADS = "default"
#: the systems ``--scaling`` times: fastcells and the peers
SCALING_SYSTEMS = ("fastcells", "torch", "ort")
#: variables that change which OpenBLAS kernel runs (reported, never changed)
BLAS_TUNING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE",
                    "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")
#: the widest line of the default output
MAX_WIDTH = 100

#: the repository's benchmark folder (peers, ONNX model builder, plot), beside the
#: package in a clone; absent beside an installed wheel
BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
#: the file that tells fastcells' bench folder from any other folder named bench
_BENCH_MARKER = "peers.py"
#: why a peer or the plot is missing when the bench folder is not found
NO_BENCH_DIR = "no bench/ folder of a clone beside the package; see --bench-dir"


@dataclass(frozen=True)
class Shape:
    """A problem size: ``T`` steps, batch ``B``, input size ``I``, hidden size ``H``."""

    T: int
    B: int
    I: int
    H: int

    def __str__(self) -> str:
        return f"({self.T},{self.B},{self.I},{self.H})"

    @classmethod
    def parse(cls, text: str) -> Shape:
        """``"T,B,I,H"`` (parentheses allowed) as a :class:`Shape`; ``ValueError`` otherwise."""
        parts = text.strip().strip("()").split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or min(values) < 1:
            raise ValueError(f"shape: expected four positive integers T,B,I,H, got {text!r}")
        return cls(*values)


def _shapes(*tuples: tuple[int, int, int, int]) -> tuple[Shape, ...]:
    return tuple(Shape(*t) for t in tuples)


#: the grid of each mode of the report (and of the pytest-benchmark suite)
GRIDS = {
    # CI smoke run: small, but both a batch-1 and a batched shape
    "quick": _shapes((50, 1, 32, 32), (20, 8, 64, 64)),
    # batch 1 and 16, hidden 64 and 256, I = H
    "default": _shapes((100, 1, 64, 64), (100, 1, 256, 256), (50, 16, 64, 64),
                       (50, 16, 256, 256)),
    # latency (batch 1), training (batched) and serving (DeepBench inference) shapes
    "full": _shapes((100, 1, 64, 64), (100, 1, 256, 256), (100, 16, 128, 128),
                    (50, 64, 256, 256), (50, 64, 512, 512), (25, 128, 1024, 1024),
                    (25, 1, 512, 512), (25, 4, 512, 512), (25, 1, 1024, 1024),
                    (25, 4, 1024, 1024)),
}
#: the cell of the variable-length row, and its shape per grid
VARLEN_CELL = "lstm"
VARLEN_GRIDS = {"quick": _shapes((20, 8, 64, 64)), "default": _shapes((50, 16, 256, 256)),
                "full": _shapes((50, 64, 512, 512))}
#: the cell of the layer-normalized rows, and their shapes per grid
LN_CELL = "lstm"
LN_GRIDS = {"quick": _shapes((20, 8, 64, 64)),
            "default": _shapes((100, 1, 64, 64), (50, 16, 256, 256)),
            "full": _shapes((100, 1, 64, 64), (50, 16, 256, 256), (50, 64, 512, 512))}
#: what marks a layer-normalized row's cell in the cell column
LN_MARK = "+ln"
#: the cell of the projection rows (PyTorch's ``proj_size``), and their shapes per grid;
#: each projects H to ``H // PROJ_RATIO`` (speech models project 1024 or 2048 to 256-512)
PROJ_CELL = "lstm"
PROJ_GRIDS = {"quick": _shapes((20, 8, 64, 64)),
              "default": _shapes((100, 1, 256, 256), (50, 16, 512, 512)),
              "full": _shapes((100, 1, 256, 256), (50, 16, 512, 512), (25, 64, 1024, 1024))}
PROJ_RATIO = 4
#: what marks a projection row's cell in the cell column, followed by its proj_size
PROJ_MARK = "+p"
#: the gains are ``1 + LN_SPREAD * N(0, 1)`` and the biases ``LN_SPREAD * N(0, 1)``: near
#: the layers' initialisation (1, 0) but not equal to it, so that a check sees a wrong
#: gain or bias
LN_SPREAD = 0.1
#: fastcells' plain cell on a layer-normalized row's problem, timed in the same rounds
PLAIN = "plain"
#: what marks a variable-length row's T in the shape column: each sequence has at most T
#: steps (two characters: the default table keeps within MAX_WIDTH)
VARLEN_MARK = "<="
#: the (cell, shape) problems of --scaling, per grid
SCALING_GRIDS: dict[str, tuple[tuple[str, Shape], ...]] = {
    "quick": (("lstm", Shape(20, 8, 64, 64)),),
    "default": (("lstm", Shape(50, 64, 512, 512)), ("lstm", Shape(100, 16, 128, 128)),
                ("gru", Shape(50, 64, 512, 512)), ("lstm", Shape(25, 1, 1024, 1024))),
}
SCALING_GRIDS["full"] = SCALING_GRIDS["default"] + (
    ("lstm", Shape(25, 128, 1024, 1024)), ("lstm", Shape(25, 4, 512, 512)),
    ("rnn", Shape(50, 64, 512, 512)))
#: seconds of repeats per measurement, and the fewest repeats, per grid
TIMING = {"quick": (0.03, 3), "default": (0.2, 3), "full": (0.5, 3)}
#: rounds per row: every system is timed once per round, in turn, so that a slow
#: spell of a shared machine falls on all the systems of a row alike
ROUNDS = 5

#: why a system has no forward+backward time (not reported as a missing peer)
NOT_APPLICABLE = "inference only"
#: why fp16w has no time at batch > 1: those products read the float32 panels
NOT_BATCH1 = "batch 1 only"


class Unavailable(Exception):
    """A system cannot run this problem (not installed, not applicable, or disagrees)."""


# ----------------------------------------------------------------------------
# problems


@dataclass
class Problem:
    """The inputs of one benchmark: float32 weights, inputs, initial states and ``dy``.

    Weights are uniform in ``±1/sqrt(H)`` (PyTorch's initialisation), inputs,
    initial states and the upstream gradient standard normal; all seeded by
    the cell and the shape, so every system and every run sees the same data.
    ``lengths`` (a variable-length problem) are uniform in ``[ceil(T/2), T]``,
    seeded apart, so the other arrays are those of the fixed-length problem.
    ``layer_norm`` (a normalized problem) holds the gains and biases, seeded apart too.
    ``W_hr`` (an LSTM with projection to P, PyTorch's ``proj_size``): ``W_hr (P, H)``,
    seeded apart; ``W_hh``, ``h0`` and ``dy`` then have P columns.
    """

    cell: str
    shape: Shape
    x: np.ndarray
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    h0: np.ndarray
    c0: np.ndarray | None
    dy: np.ndarray
    lengths: np.ndarray | None = None
    layer_norm: LayerNormWeights | None = None
    W_hr: np.ndarray | None = None
    _expected: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def spec(self) -> _cells.CellSpec:
        """The cell's entry of the cell table."""
        return _cells.CELLS[self.cell]

    @property
    def G(self) -> int:
        """The cell's gate count."""
        return self.spec.G

    def states(self) -> tuple[np.ndarray, ...]:
        """The initial states, in the cell table's order (``h0``, and ``c0`` for the LSTM)."""
        return tuple(getattr(self, f"{name}0") for name in self.spec.states)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``<cell>_forward`` beyond the arrays: ``lengths`` and
        ``layer_norm`` and ``W_hr`` when set."""
        options: dict[str, Any] = {}
        if self.lengths is not None:
            options["lengths"] = self.lengths
        if self.layer_norm is not None:
            options["layer_norm"] = self.layer_norm
        if self.W_hr is not None:
            options["W_hr"] = self.W_hr
        return options

    @property
    def proj_size(self) -> int:
        """P of an LSTM with projection, else 0."""
        return 0 if self.W_hr is None else int(self.W_hr.shape[0])

    def plain(self) -> Problem:
        """The same problem without layer normalization."""
        return replace(self, layer_norm=None, _expected={})

    def valid(self) -> np.ndarray | None:
        """``(T, B, 1)`` True at each sequence's valid steps; None when every step is valid."""
        if self.lengths is None:
            return None
        return (np.arange(self.shape.T)[:, None] < self.lengths[None, :])[:, :, None]

    def args(self, dtype: Any = F32) -> tuple[np.ndarray, ...]:
        """Positional arguments of ``<cell>_forward``, in ``dtype``."""
        a = (self.x, self.W_ih, self.W_hh, self.b_ih, self.b_hh, *self.states())
        return tuple(v.astype(dtype) for v in a)

    def expected(self, mode: str) -> dict[str, Any]:
        """The float64 reference's outputs (and gradients for ``fwdbwd``), by name."""
        if mode not in self._expected:
            self._expected[mode] = outputs(reference, self, mode, np.float64)
        expected: dict[str, Any] = self._expected[mode]
        return expected


#: the seeds that tell the lengths' and the gains' generators from the arrays'
_LENGTHS_SEED = 1
_LN_SEED = 2
_PROJ_SEED = 3


def make_problem(cell: str, shape: Shape, seed: int = 0, *, varlen: bool = False,
                 layer_norm: bool = False, proj_size: int = 0) -> Problem:
    """The seeded :class:`Problem` of ``cell`` at ``shape``; with ``varlen``, with
    ``lengths`` uniform in ``[ceil(T/2), T]`` (at least 1: PyTorch packs no empty
    sequence); with ``layer_norm``, with gains and biases (:data:`LN_SPREAD`); with
    ``proj_size`` (LSTM, ``1 <= proj_size < H``), with the projection ``W_hr``."""
    spec = _cells.cell_spec(cell)
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    GH = spec.G * H
    rng = np.random.default_rng([seed, CELLS.index(cell), T, B, I, H])
    k = 1.0 / np.sqrt(H)

    def uniform(*s: int) -> np.ndarray:
        return rng.uniform(-k, k, s).astype(F32)

    def normal(*s: int) -> np.ndarray:
        return rng.standard_normal(s, dtype=F32)

    lengths = None
    if varlen:
        rng_lengths = np.random.default_rng([seed, CELLS.index(cell), T, B, I, H, _LENGTHS_SEED])
        lengths = rng_lengths.integers((T + 1) // 2, T, size=B, endpoint=True, dtype=np.int64)
    ln = None
    if layer_norm:
        rng_ln = np.random.default_rng([seed, CELLS.index(cell), T, B, I, H, _LN_SEED])
        sizes = (GH, GH, GH, GH) + ((H, H) if spec.has_cell_state else ())
        # gains (even fields) near 1, biases (odd fields) near 0
        ln = LayerNormWeights(*((1.0 - k % 2 + LN_SPREAD * rng_ln.standard_normal(n)).astype(F32)
                                for k, n in enumerate(sizes)))
    p = Problem(cell, shape, x=normal(T, B, I), W_ih=uniform(GH, I), W_hh=uniform(GH, H),
                b_ih=uniform(GH), b_hh=uniform(GH), h0=normal(B, H),
                c0=normal(B, H) if spec.has_cell_state else None, dy=normal(T, B, H),
                lengths=lengths, layer_norm=ln)
    if not proj_size:
        return p
    if cell != "lstm" or not 1 <= proj_size < H:
        raise ValueError(f"proj_size: expected an LSTM with 1 <= proj_size < H = {H}, got "
                         f"{proj_size} for {cell!r}")
    rng_proj = np.random.default_rng([seed, CELLS.index(cell), T, B, I, H, _PROJ_SEED])
    W_hr = rng_proj.uniform(-k, k, (proj_size, H)).astype(F32)
    cols = slice(0, proj_size)      # the recurrent side reads h, now of P values
    return replace(p, W_hh=np.ascontiguousarray(p.W_hh[:, cols]), W_hr=W_hr,
                   h0=np.ascontiguousarray(p.h0[:, cols]),
                   dy=np.ascontiguousarray(p.dy[..., cols]))


def outputs(module: ModuleType, p: Problem, mode: str, dtype: Any = F32) -> dict[str, Any]:
    """Run ``module`` (fastcells or its reference) once; the results by name."""
    forward, backward = _cells.cell_functions(module, p.cell)
    out = forward(*p.args(dtype), training=(mode == "fwdbwd"), **p.options())
    result = {name: getattr(out, name) for name in ("y", *p.spec.states)}
    if mode == "fwdbwd":
        grads = backward(out.cache, dy=p.dy.astype(dtype))
        for k, v in grads._asdict().items():
            if isinstance(v, LayerNormWeights):         # the gains' and biases' gradients
                result.update((f"{k}.{f}", g) for f, g in v._asdict().items() if g is not None)
            elif v is not None:
                result[k] = v
    return result


def errors(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
    """Largest absolute error over the arrays in ``want``, and the largest relative one.

    The relative error of an array is its largest absolute error divided by
    ``max(1, max|reference|)``, the convention of the kernel tests.
    """
    abs_err = rel_err = 0.0
    for name, ref in want.items():
        diff = float(np.max(np.abs(np.asarray(got[name], np.float64) - ref), initial=0.0))
        abs_err = max(abs_err, diff)
        rel_err = max(rel_err, diff / max(1.0, float(np.max(np.abs(ref), initial=0.0))))
    return abs_err, rel_err


def agree(system: str, y: np.ndarray, p: Problem) -> None:
    """Raise :class:`Unavailable` if ``system``'s ``y`` differs from fastcells' by > PEER_TOL
    (on the valid steps of a variable-length problem: what lies past a sequence's end
    is padding)."""
    want = outputs(_fc, p, "fwd")["y"].astype(np.float64)
    valid = p.valid()
    if valid is not None:
        y, want = np.where(valid, y, 0.0), np.where(valid, want, 0.0)
    _, rel = errors({"y": y}, {"y": want})
    if not rel <= PEER_TOL:
        raise Unavailable(f"{system} disagrees with fastcells: relative error {rel:.2e}")


# ----------------------------------------------------------------------------
# fastcells' systems and the floor: a zero-argument callable per problem and mode

Runner = Callable[[], Any]


def _fastcells_like(module: ModuleType) -> Callable[[Problem, str], Runner]:
    def make(p: Problem, mode: str) -> Runner:
        forward, backward = _cells.cell_functions(module, p.cell)
        args, dy, options = p.args(F32), p.dy, p.options()
        if mode == "fwd":
            return lambda: forward(*args, **options)

        def run() -> Any:
            return backward(forward(*args, training=True, **options).cache, dy=dy)
        return run
    return make


def gemm_flops(cell: str, shape: Shape, mode: str, proj_size: int = 0) -> int:
    """Flops (``2*m*n*k`` per product) of the GEMMs of one call, as the floor does them;
    ``proj_size``: an LSTM with projection to that many values (0: none)."""
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    GH = _cells.GATES[cell] * H
    R = proj_size or H                  # the width of the recurrent input h
    inp, rec = 2 * T * B * I * GH, 2 * T * B * R * GH
    out = 2 * T * B * H * proj_size     # h = W_hr m per step
    if mode == "fwd":
        return inp + rec + out
    # backward: dGates_t @ W_hh (and dh_t @ W_hr) per step, then dW_ih, dW_hh (dW_hr) and
    # dx: each product of the forward twice more
    return 3 * (inp + rec + out)


def _floor_runner(p: Problem, mode: str) -> Runner:
    """NumPy's BLAS doing the GEMMs of one call: the input projection, ``T``
    recurrent products, and for ``fwdbwd`` ``T`` products ``dGates_t @ W_hh``
    and the three gradient GEMMs.  Called from Python, so at batch 1 it carries
    call overhead per step: a true floor for batched shapes only.  With
    ``lengths``, the padded products (every step of every row).  With a projection
    ``W_hr`` (P, H), also ``h = m @ W_hr.T`` per step, ``dm = dh @ W_hr`` per step
    and ``dW_hr``."""
    T, B, I, H = p.shape.T, p.shape.B, p.shape.I, p.shape.H
    GH, P = p.G * H, p.proj_size
    R = P or H                          # the width of the recurrent input h
    x2, W_ih, W_hh, W_hr = p.x.reshape(T * B, I), p.W_ih, p.W_hh, p.W_hr
    W_ihT, W_hhT = W_ih.T, W_hh.T
    gx = np.empty((T * B, GH), F32)
    gh = np.empty((B, GH), F32)
    h = p.h0.copy()
    m = np.ones((B, H), F32)
    dG = np.full((T * B, GH), 0.01, F32)
    Hs = np.ascontiguousarray(np.broadcast_to(p.h0, (T, B, R)).reshape(T * B, R))
    Ms = np.ones((T * B, H), F32)
    dh, dm = np.empty((B, R), F32), np.empty((B, H), F32)
    dW_ih, dW_hh, dx = np.empty((GH, I), F32), np.empty((GH, R), F32), np.empty((T * B, I), F32)
    dW_hr = np.empty((P, H), F32)
    matmul = np.matmul

    def forward() -> None:
        matmul(x2, W_ihT, out=gx)
        for _ in range(T):
            matmul(h, W_hhT, out=gh)
            if W_hr is not None:
                matmul(m, W_hr.T, out=h)

    if mode == "fwd":
        return forward

    def fwdbwd() -> None:
        forward()
        for t in range(T - 1, -1, -1):
            matmul(dG[t * B:(t + 1) * B], W_hh, out=dh)
            if W_hr is not None:
                matmul(dh, W_hr, out=dm)
        matmul(dG.T, x2, out=dW_ih)
        matmul(dG.T, Hs, out=dW_hh)
        if W_hr is not None:
            matmul(Hs.T, Ms, out=dW_hr)
        matmul(dG, W_ih, out=dx)
    return fwdbwd


def _stepper_setup(p: Problem, mode: str, **options: Any) -> tuple[Any, ...]:
    """``(x, states, Stepper)`` of a prepared-weights system (forward only)."""
    if mode != "fwd":
        raise Unavailable(NOT_APPLICABLE)
    x, W_ih, W_hh, b_ih, b_hh, *states = p.args(F32)
    if p.layer_norm is not None:
        options["layer_norm"] = p.layer_norm
    options["W_hr"] = p.W_hr
    return x, states, _fc.Stepper(p.cell, W_ih, W_hh, b_ih, b_hh, **options)


def _sequence_options(p: Problem) -> dict[str, Any]:
    """The options of ``Stepper.forward`` (its weights' options are the Stepper's own)."""
    return {k: v for k, v in p.options().items() if k not in ("layer_norm", "W_hr")}


def _prepared_runner(p: Problem, mode: str) -> Runner:
    x, states, step = _stepper_setup(p, mode)
    options = _sequence_options(p)
    agree("prepared", step.forward(x, *states, **options).y, p)
    return lambda: step.forward(x, *states, **options)


def _fp16w_runner(p: Problem, mode: str) -> Runner:
    """Float16 weights give other numbers than float32 ones, so they are checked
    against their own contract: the bits of a float32 ``Stepper`` over the
    rounded weights."""
    if mode == "fwd" and p.shape.B != 1:
        raise Unavailable(NOT_BATCH1)
    x, states, step = _stepper_setup(p, mode, weight_dtype="float16")
    options = _sequence_options(p)
    W_ih, W_hh = (np.asarray(w, F32).astype(np.float16).astype(F32) for w in (p.W_ih, p.W_hh))
    W_hr = None if p.W_hr is None else p.W_hr.astype(np.float16).astype(F32)
    want = _fc.Stepper(p.cell, W_ih, W_hh, p.b_ih, p.b_hh, layer_norm=p.layer_norm,
                       W_hr=W_hr).forward(x, *states, **options).y
    if not np.array_equal(step.forward(x, *states, **options).y, want):
        raise Unavailable("fp16w disagrees with a float32 Stepper over the rounded weights")
    return lambda: step.forward(x, *states, **options)


#: the runners this module holds; the peers' come from the bench/ folder
RUNNERS: dict[str, Callable[[Problem, str], Runner]] = {
    "fastcells": _fastcells_like(_fc),
    "prepared": _prepared_runner,
    "fp16w": _fp16w_runner,
    "reference": _fastcells_like(reference),
    "floor": _floor_runner,
}


# ----------------------------------------------------------------------------
# threads: each system's setter, ``n`` threads or (None) the system's own default

ThreadSetter = Callable[[int | None], None]


def set_blas_threads(n: int | None) -> None:
    """NumPy's BLAS at ``n`` threads from now on (threadpoolctl, when installed).

    None leaves BLAS as it is: its default is what it read from the
    environment when it loaded (the report clears the variables for
    ``--threads default``)."""
    if n is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n, user_api="blas")


def set_fastcells_threads(n: int | None) -> None:
    """fastcells at ``n`` threads (:func:`fastcells.set_num_threads`), or back to its
    default (no setting) for None."""
    if n is None:
        _threads._setting = None    # what FASTCELLS_NUM_THREADS unset gives at import
    else:
        _threads.set_num_threads(n)


#: how each of this module's systems is set to a thread count
THREAD_SETTERS: dict[str, ThreadSetter] = {
    "fastcells": set_fastcells_threads, "prepared": set_fastcells_threads,
    "fp16w": set_fastcells_threads, "reference": set_blas_threads, "floor": set_blas_threads,
}


def scaling_counts(most: int) -> tuple[int, ...]:
    """The thread counts of ``--scaling``: 1, 2, 4, ... below ``most``, then ``most``."""
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    return tuple(counts + [most] if most > 1 else counts)


# ----------------------------------------------------------------------------
# the repository's bench/ folder: the peers, the ONNX model builder, the plot

_loaded_benches: dict[Path, ModuleType] = {}


def load_bench(folder: Path | None = None) -> ModuleType | None:
    """The repository's ``bench`` package found in ``folder`` (default :data:`BENCH_DIR`),
    or None when the folder does not hold it (an installed wheel without the clone).

    It is loaded under a private module name, so an unrelated top-level module
    named ``bench`` is neither used nor shadowed.
    """
    folder = Path(folder if folder is not None else BENCH_DIR).resolve()
    if folder in _loaded_benches:
        return _loaded_benches[folder]
    if not (folder / _BENCH_MARKER).is_file() or not (folder / "__init__.py").is_file():
        return None
    # a name no other copy of this module (``python -m``'s ``__main__``) has taken
    name = next(f"_fastcells_bench_{k}" for k in range(len(sys.modules) + 1)
                if f"_fastcells_bench_{k}" not in sys.modules)
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    for module in ("peers", "plot"):
        importlib.import_module(f"{name}.{module}")
    _loaded_benches[folder] = package
    return package


def thread_setter(system: str, bench_dir: Path | None = None) -> ThreadSetter:
    """The function that sets ``system`` to a thread count (None: its default).

    A peer's comes from the bench/ folder (ONNX Runtime's does nothing: a
    session holds its threads, see :func:`make_runner`); without the folder,
    a peer's setter does nothing either."""
    if system in THREAD_SETTERS:
        return THREAD_SETTERS[system]
    bench = load_bench(bench_dir)
    setter: ThreadSetter = bench.peers.SET_THREADS[system] if bench else (lambda n: None)
    return setter


def make_runner(system: str, p: Problem, mode: str, bench_dir: Path | None = None,
                threads: int | None = 1) -> Runner:
    """A zero-argument callable that runs ``system`` once on ``p`` at ``threads``.

    Parameters
    ----------
    system : {"fastcells", "prepared", "fp16w", "reference", "torch", "ort", "floor"}
        The system to time.
    p : Problem
        From :func:`make_problem`; float32 arrays, built once and shared.
    mode : {"fwd", "fwdbwd"}
        Inference forward, or a training forward and the backward of ``p.dy``.
    bench_dir : Path, optional
        The repository's bench/ folder, which holds the peers' runners
        (default: :data:`BENCH_DIR`).
    threads : int or None, optional
        The system's thread count, set here (:func:`thread_setter`; for
        ONNX Runtime, the session's intra-op threads); None: the system's own
        default.  fastcells, torch and BLAS hold it process-wide.

    Returns
    -------
    callable
        Everything that does not depend on the call (modules, sessions,
        packed buffers, tensors) is built here, outside the timed call.

    Raises
    ------
    Unavailable
        The system is not installed, does not apply (ONNX Runtime backward),
        its runner is in a bench/ folder that is not found, or its output
        disagrees with fastcells' by more than ``PEER_TOL``.
    """
    if system not in SYSTEMS:
        raise ValueError(f"system: expected one of {SYSTEMS}, got {system!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if system in RUNNERS:
        thread_setter(system)(threads)
        return RUNNERS[system](p, mode)
    bench = load_bench(bench_dir)
    if bench is None:
        raise Unavailable(NO_BENCH_DIR)
    if p.layer_norm is not None:
        if system not in bench.peers.LAYER_NORM_RUNNERS:
            raise Unavailable(f"{system} has no layer-normalized {p.cell}")
        ln_runner: Runner = bench.peers.LAYER_NORM_RUNNERS[system](p, mode, threads)
        return ln_runner
    if p.W_hr is not None:
        if system not in bench.peers.PROJ_RUNNERS:
            raise Unavailable(f"{system} has no {p.cell} with projection")
        proj_runner: Runner = bench.peers.PROJ_RUNNERS[system](p, mode, threads)
        return proj_runner
    runner: Runner = bench.peers.RUNNERS[system](p, mode, threads)
    return runner


# ----------------------------------------------------------------------------
# timing


def _timed_calls(fn: Runner, repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` calls, the garbage collector off (as in timeit)."""
    perf = time.perf_counter
    times = []
    # gc off rather than gc.collect(): a full collection with torch loaded is slow
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = perf()
            fn()
            times.append(perf() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return times


#: with more than one thread per system, each system's turn in a round starts with
#: this pause and one untimed call: the threads of the system timed before (a
#: spinning pool: libgomp's, PyTorch's) go idle first, and its own wake up, so no
#: system is timed while another's threads still hold the cores (bench/README.md
#: says what a shorter pause did)
SETTLE_SECONDS = 0.1


def measure_rounds(fns: dict[str, Any], target: float, min_repeats: int = 3,
                   repeat: int | None = None, rounds: int = ROUNDS,
                   setup: dict[str, Callable[[], Any]] | None = None,
                   settle: bool = False) -> dict[str, Any]:
    """Median and minimum milliseconds per call of each function in ``fns`` (name ->
    callable), timed in ``rounds`` interleaved rounds.

    One warm-up call each (which also estimates the cost), then per round
    ``repeat`` timed calls or, if None, as many as fit in ``target / rounds``
    seconds (at least ``min_repeats`` in all).  Medians pool every round.
    ``setup[name]``, when given, runs untimed before the warm-up and before each
    round's calls of ``name`` (``--scaling`` sets the thread count there).
    ``settle``: each turn starts with a pause and one untimed call (``SETTLE_SECONDS``;
    the reports at more than one thread).
    """
    setup = setup or {}
    per_round = {}
    for name, fn in fns.items():
        setup.get(name, _nothing)()
        t0 = time.perf_counter()
        fn()
        estimate = time.perf_counter() - t0
        total = repeat if repeat is not None else int(
            min(max(target / max(estimate, 1e-7), min_repeats), 100_000))
        # ``total`` calls in all, spread over the rounds
        per_round[name] = [total // rounds + (i < total % rounds) for i in range(rounds)]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        for name, fn in fns.items():
            setup.get(name, _nothing)()
            if settle:
                time.sleep(SETTLE_SECONDS)
                fn()
            times[name] += _timed_calls(fn, per_round[name][i])
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
                   "repeats": len(t)} for name, t in times.items()}


def _nothing() -> None:
    """No set-up."""


def measure(fn: Runner, target: float, min_repeats: int = 3,
            repeat: int | None = None) -> dict[str, Any]:
    """Median and minimum milliseconds per call of ``fn`` (one round; see
    :func:`measure_rounds`)."""
    timing: dict[str, Any] = measure_rounds({"fn": fn}, target, min_repeats, repeat,
                                            rounds=1)["fn"]
    return timing


def pin_threads(n: int | None = 1) -> Any | None:
    """Limit BLAS/OpenMP pools to ``n`` threads now (threadpoolctl), if installed.

    Returns the limiter, whose ``restore_original_limits()`` undoes this and any
    later limit; None leaves the pools as they are (and still returns one)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(n)


# ----------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    """The installed version, without importing the package (importing torch is slow)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The short commit of the clone the package runs from, ``+`` if it has local changes."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """What the header prints and the JSON keeps: versions, ISA, BLAS, CPU, threads."""
    from ._config import config

    info = dict(config())
    info.update(cpu=_cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                commit=_git_commit(),
                **{d: _version(d) for d in PEER_DISTRIBUTIONS.values()},
                env={k: v for k, v in sorted(os.environ.items())
                     if k in THREAD_VARS or k in BLAS_TUNING_VARS})
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads",
                                                      "architecture", "threading_layer")}
                               for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = None
    return info


def _blas_pools() -> list[dict[str, Any]] | None:
    """NumPy's BLAS pools as threadpoolctl sees them; None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [d for d in threadpool_info() if d.get("user_api") == "blas"]


def _plural(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def threads_info(threads: int | None, systems: Sequence[str] = SYSTEMS,
                 bench_dir: Path | None = None,
                 counts: Sequence[int] | None = None) -> dict[str, Any]:
    """How many threads each system runs with, as the header, the Markdown report and
    the plot say it.

    Parameters
    ----------
    threads : int or None
        Every system's thread count, or None for each system's own default.
    systems : sequence of str
        The systems asked for (a default is read only for those).
    bench_dir : Path, optional
        The bench/ folder, whose peers report their defaults.
    counts : sequence of int, optional
        ``--scaling``'s thread counts (then ``threads`` is not used).

    Returns
    -------
    dict
        ``setting`` (N, ``"default"`` or ``"scaling"``), ``line`` (the header's
        line), ``title`` (a few words for the plot), ``systems`` (with the default:
        what each system got), ``blas`` (threadpoolctl's count per BLAS, or None)
        and ``warnings`` (a BLAS that does not run the threads asked for).
    """
    pools = _blas_pools()
    blas = None if pools is None else {d["internal_api"]: d["num_threads"] for d in pools}
    got: dict[str, str] = {}
    warnings: list[str] = []
    setting: int | str
    if counts:
        setting = "scaling"
        line = (f"threads: fastcells and each peer at {', '.join(map(str, counts))} threads "
                f"in turn (NumPy's BLAS alike); this process may use "
                f"{_plural(_threads.available_cores()).replace('thread', 'core')}")
        title = f"{', '.join(map(str, counts))} threads"
    elif threads is None:
        setting = DEFAULT_THREADS
        got["fastcells"] = f"{_threads.get_num_threads()} (get_num_threads)"
        bench = load_bench(bench_dir)
        if bench is not None:
            got.update(bench.peers.default_threads([s for s in PEERS if s in systems]))
        got["NumPy's BLAS"] = (", ".join(f"{k} {v}" for k, v in blas.items()) if blas
                               else "its own (threadpoolctl is not installed to read it)")
        line = ("threads: each system at its own default (no settings): "
                + "; ".join(f"{k} {v}" for k, v in got.items()))
        title = "each system at its default thread count"
    else:
        setting = threads
        line = (f"threads: every system at {_plural(threads)}: fastcells "
                f"set_num_threads({threads}), torch.set_num_threads({threads}) with 1 "
                f"inter-op thread, ONNX Runtime {threads} intra-op and 1 inter-op, NumPy's "
                f"BLAS {threads} (" + ("environment, threadpoolctl)" if blas is not None
                                       else "environment; threadpoolctl not installed)"))
        title = f"every system at {_plural(threads)}"
        warnings = [f"warning: {api} runs {n} threads, not the {threads} asked for"
                    for api, n in (blas or {}).items() if n != threads]
    return {"setting": setting, "line": line, "title": title, "systems": got, "blas": blas,
            "warnings": warnings}


def wrap(line: str) -> str:
    """``line`` broken at spaces into lines of at most :data:`MAX_WIDTH`, indented after
    the first."""
    return "\n".join(textwrap.wrap(line, MAX_WIDTH, subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False))


def header(info: dict[str, Any]) -> str:
    """The machine lines printed above the table, each at most :data:`MAX_WIDTH` wide."""
    lines = [f"fastcells {info['fastcells']}"
             + (f" (commit {info['commit']})" if info.get("commit") else "")
             + f"  ISA {info['isa']} (available: {', '.join(info['isa_available'])})"
             + ("  [forced by FASTCELLS_ISA]" if info["isa_forced"] else ""),
             f"CPU: {info['cpu']} ({info['cores']} logical cores)  Python {info['python']}",
             f"NumPy {info['numpy']}  BLAS: {info['numpy_blas']}"]
    if info["threadpools"] is None:
        lines.append("thread pools: threadpoolctl not installed (pinned by environment only)")
    else:
        for d in info["threadpools"]:
            lines.append(f"thread pool: {d['internal_api']} {d['version']}, "
                         f"{d['num_threads']} thread(s)"
                         + (f", core type {d['architecture']}" if d.get("architecture") else ""))
    lines.append("  ".join(f"{d} {info[d] or 'not installed'}"
                           for d in PEER_DISTRIBUTIONS.values()))
    threads = info.get("threads") or threads_info(1)
    lines += [threads["line"], *threads["warnings"]]
    env = info["env"]
    lines.append("env: " + (" ".join(f"{k}={v}" for k, v in env.items()) or "(none set)"))
    tuned = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in env]
    if tuned:
        lines.append(f"warning: {', '.join(tuned)} set: NumPy's BLAS may run a slower kernel; "
                     "for an honest floor: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
                     "python -m fastcells.bench")
    return "\n".join(wrap(line) for line in lines)


# ----------------------------------------------------------------------------
# one row: every system on one cell, shape and mode


def _new_row(p: Problem, mode: str) -> dict[str, Any]:
    """A row's key (cell, shape, mode, lengths) and fastcells' errors against float64."""
    shape = p.shape
    row: dict[str, Any] = {"cell": p.cell, "shape": [shape.T, shape.B, shape.I, shape.H],
                           "mode": mode, "varlen": p.lengths is not None,
                           "layer_norm": p.layer_norm is not None,
                           "proj_size": p.proj_size,
                           "lengths": None if p.lengths is None else p.lengths.tolist(),
                           "times": {}, "skipped": {}}
    row["abs_err"], row["rel_err"] = errors(outputs(_fc, p, mode), p.expected(mode))
    return row


def run_row(cell: str, shape: Shape, mode: str, systems: Sequence[str], target: float,
            min_repeats: int, repeat: int | None, problem: Problem | None = None,
            progress: Callable[[str], None] = lambda s: None,
            bench_dir: Path | None = None, threads: int | None = 1,
            varlen: bool = False, layer_norm: bool = False,
            proj_size: int = 0) -> dict[str, Any]:
    """Time every system on one cell, shape and mode at ``threads`` (None: each
    system's default); the row of the table as a dict.  ``varlen``: the problem
    with ``lengths``; ``layer_norm``: the normalized cell, with fastcells' plain
    cell on the same problem timed in the same rounds; ``proj_size``: the LSTM with
    projection (see :func:`make_problem`)."""
    p = problem or make_problem(cell, shape, varlen=varlen, layer_norm=layer_norm,
                                proj_size=proj_size)
    fns = {}
    skipped = {}
    for system in systems:
        try:
            fns[system] = make_runner(system, p, mode, bench_dir, threads)
        except Unavailable as exc:
            skipped[system] = str(exc)
    if p.layer_norm is not None and "fastcells" in fns:
        fns[PLAIN] = make_runner("fastcells", p.plain(), mode, bench_dir, threads)
    # fastcells' check runs at the thread count it is timed at
    row = _new_row(p, mode)
    row.update(threads=DEFAULT_THREADS if threads is None else threads, skipped=skipped)
    if "fp16w" in fns:      # what float16 weights cost in accuracy: y against float64
        row["fp16w_rel_err"] = errors({"y": fns["fp16w"]().y}, {"y": p.expected(mode)["y"]})[1]
    row["times"] = measure_rounds(fns, target, min_repeats, repeat,
                                  settle=threads is None or threads > 1)
    for system, t in row["times"].items():
        progress(f"{system} {t['median_ms']:.3f} ms")
    median = {s: t["median_ms"] for s, t in row["times"].items()}
    fc = median.get("fastcells")
    plain = median.pop(PLAIN, None)
    row["ln_over_plain"] = fc / plain if fc and plain else None
    row["ratios"] = {s: t / fc for s, t in median.items() if fc and s not in ("fastcells", "floor")}
    peers = {s: median[s] for s in PEERS if s in median}
    row["best_peer"] = min(peers, key=peers.__getitem__) if peers else None
    for system in OWN_SYSTEMS:
        t = median.get(system)
        row[f"peer_over_{system}"] = {s: v / t for s, v in peers.items()} if t else {}
        row[f"best_peer_over_{system}"] = min(peers.values()) / t if t and peers else None
    floor = median.get("floor")
    row["fastcells_over_floor"] = fc / floor if fc and floor else None
    flops = gemm_flops(cell, shape, mode, p.proj_size)
    row["gflop"] = flops / 1e9
    row["gflops"] = flops / (fc * 1e6) if fc else None
    row["floor_gflops"] = flops / (floor * 1e6) if floor else None
    return row


def _threads_setup(setter: ThreadSetter, n: int) -> Callable[[], None]:
    """A set-up that puts a system (``setter``) and NumPy's BLAS at ``n`` threads."""
    def setup() -> None:
        set_blas_threads(n)
        setter(n)
    return setup


def run_scaling(cell: str, shape: Shape, mode: str, systems: Sequence[str],
                counts: Sequence[int], target: float, min_repeats: int, repeat: int | None,
                progress: Callable[[str], None] = lambda s: None,
                bench_dir: Path | None = None) -> list[dict[str, Any]]:
    """Time each system of ``systems`` (of :data:`SCALING_SYSTEMS`) at each thread count
    of ``counts`` on one cell, shape and mode: one row per count.

    Every (system, count) pair takes its turn in the same interleaved rounds; before
    its calls of a round the pair's thread count is set (the system's and NumPy's
    BLAS's: fastcells' weight gradients may run on BLAS).  A row holds each system's
    time, its ``speedup`` over its own time at the first count, and fastcells'
    errors against the float64 reference at that count.
    """
    p = make_problem(cell, shape)
    fns: dict[str, Runner] = {}
    setup: dict[str, Callable[[], Any]] = {}
    rows = []
    for n in counts:
        skipped = {}
        for system in systems:
            try:
                fns[f"{system}@{n}"] = make_runner(system, p, mode, bench_dir, n)
            except Unavailable as exc:
                skipped[system] = str(exc)
                continue
            setup[f"{system}@{n}"] = _threads_setup(thread_setter(system, bench_dir), n)
        set_fastcells_threads(n)
        set_blas_threads(n)
        row = _new_row(p, mode)
        row.update(threads=n, skipped=skipped)
        rows.append(row)
    times = measure_rounds(fns, target, min_repeats, repeat, setup=setup, settle=True)
    for row in rows:
        n = row["threads"]
        row["times"] = {s: times[f"{s}@{n}"] for s in systems if f"{s}@{n}" in times}
        row["speedup"] = {}
        for s, t in row["times"].items():
            first = times.get(f"{s}@{counts[0]}")
            if first:
                row["speedup"][s] = first["median_ms"] / t["median_ms"]
        progress(f"{n}: " + ", ".join(f"{s} {t['median_ms']:.3f} ms"
                                      for s, t in row["times"].items()))
    return rows


# ----------------------------------------------------------------------------
# tables: one column list per table, rendered as text or Markdown


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(system: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: _fmt(r["times"].get(system, {}).get("median_ms"), ".3f")


def _ratio(system: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: _fmt(r["ratios"].get(system), ".2f")


def _field(key: str, spec: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: _fmt(r.get(key), spec)


def _best_peer_ms(r: dict[str, Any]) -> str:
    return _ms(r["best_peer"])(r) if r.get("best_peer") else "-"


def _best_peer_ratio(r: dict[str, Any]) -> str:
    return _ratio(r["best_peer"])(r) if r.get("best_peer") else "-"


@dataclass(frozen=True)
class Column:
    """One column of a table: its head, what it means, and its cell of a row."""

    head: str
    meaning: str
    cell: Callable[[dict[str, Any]], str]
    text: bool = False      # left-aligned (names), otherwise right-aligned (numbers)


def shape_text(r: dict[str, Any]) -> str:
    """A row's shape as ``(T,B,I,H)``, or ``(<=T,B,I,H)`` when the row has lengths."""
    return "(" + (VARLEN_MARK if r.get("varlen") else "") + ",".join(map(str, r["shape"])) + ")"


def cell_text(r: dict[str, Any]) -> str:
    """A row's cell, ``lstm+ln`` when the row is layer-normalized, ``lstm+p64`` with a
    projection to 64 values."""
    return (str(r["cell"]) + (LN_MARK if r.get("layer_norm") else "")
            + (f"{PROJ_MARK}{r['proj_size']}" if r.get("proj_size") else ""))


_KEY = (
    Column("cell", f"the recurrent cell; {LN_MARK}: layer-normalized; {PROJ_MARK}P: with "
           "projection to P (proj_size)", cell_text, text=True),
    Column("shape (T,B,I,H)", f"steps, batch, input size, hidden size; {VARLEN_MARK}T: "
           "lengths uniform in [T/2, T]", shape_text, text=True),
    Column("mode", "fwd: inference forward; fwdbwd: training forward + backward",
           lambda r: r["mode"], text=True),
)
#: the default table: fastcells, the best installed peer and the reference
COMPACT = _KEY + (
    Column("fastcells ms", "fastcells' median ms per call", _ms("fastcells")),
    Column("peer ms", "the fastest installed peer's median ms", _best_peer_ms),
    Column("peer", "which peer that is (torch or ort)",
           lambda r: r.get("best_peer") or "-", text=True),
    Column("ref ms", "the NumPy reference's median ms (float32)", _ms("reference")),
    Column("peer/fc", "peer ms / fastcells ms (above 1: fastcells faster)", _best_peer_ratio),
    Column("ref/fc", "ref ms / fastcells ms", _ratio("reference")),
)
#: the one-line legend above the default table
LEGEND = ("ms: median per call; peer: fastest of torch, ort; ref: NumPy reference; "
          "x/fc > 1: fastcells faster")
#: the line below the legend when the table has a variable-length row
VARLEN_LEGEND = (f"{VARLEN_MARK}T: lengths uniform in [T/2, T]; fastcells lengths=, torch "
                 "packed sequences, ort sequence_lens")
#: the wide table: every system and ratio, the floor and the errors
WIDE = _KEY + tuple(Column(s, f"{note}; median ms", _ms(s)) for s, note in SYSTEM_NOTES.items()) + (
    Column("fc min", "fastcells' fastest call, ms",
           lambda r: _fmt(r["times"].get("fastcells", {}).get("min_ms"), ".3f")),
    *(Column(f"{short}/fc", f"{short} ms / fastcells ms", _ratio(s))
      for s, short in (("reference", "ref"), ("torch", "torch"), ("ort", "ort"))),
    Column("peer/prep", "the fastest peer's ms / prepared ms",
           _field("best_peer_over_prepared", ".2f")),
    Column("peer/fp16w", "the fastest peer's ms / fp16w ms", _field("best_peer_over_fp16w", ".2f")),
    Column("fc/floor", "fastcells ms / floor ms (1 is the floor)",
           _field("fastcells_over_floor", ".2f")),
    Column("GFLOP/s", "fastcells' GEMM flops (2*m*n*k) per second", _field("gflops", ".1f")),
    Column("abs err", "fastcells' largest absolute error against the float64 reference",
           _field("abs_err", ".1e")),
    Column("rel err", "the same, relative to max(1, max|reference|) per array",
           _field("rel_err", ".1e")),
    Column("fp16w err", "fp16w's relative error on y against the float64 reference",
           _field("fp16w_rel_err", ".1e")),
)


def _scaling_ms(system: str) -> Callable[[dict[str, Any]], str]:
    def cell(r: dict[str, Any]) -> str:
        ms = r["times"].get(system, {}).get("median_ms")
        # three significant digits or more, in at most 8 characters below 100 s
        return _fmt(ms, ".1f" if ms and ms >= 100 else ".2f" if ms and ms >= 10 else ".3f")
    return cell


def _speedup(system: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: _fmt(r["speedup"].get(system), ".2f")


#: the --scaling table: per row one thread count, each system's time and speed-up
SCALING = _KEY + (Column("threads", "the thread count of every system in the row",
                         lambda r: str(r["threads"])),) + tuple(
    c for s, short in (("fastcells", "fc"), ("torch", "torch"), ("ort", "ort")) for c in (
        Column(f"{short} ms", f"{s}'s median ms per call", _scaling_ms(s)),
        Column(f"{short} x", f"{s}'s speed-up: its time at 1 thread / this time",
               _speedup(s))))
#: the one-line legend above the --scaling table
SCALING_LEGEND = ("ms: median per call at that many threads; x: the system's 1-thread time / "
                  "this time")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column] = COMPACT) -> str:
    """The rows as a fixed-width text table of ``columns`` (default: :data:`COMPACT`)."""
    head = [c.head for c in columns]
    body = [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(s) for s in col) for col in zip(head, *body)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(s.ljust(w) if c.text else s.rjust(w)
                         for s, w, c in zip(cells, widths, columns)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column] = COMPACT) -> str:
    """The rows as a Markdown (GitHub) table of ``columns``."""
    lines = ["| " + " | ".join(c.head for c in columns) + " |",
             "|" + "|".join(":---" if c.text else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def missing_peers(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> str:
    """One line: the peers asked for that were not timed, and why (or that none is missing)."""
    why = {s: r["skipped"][s] for r in rows for s in PEERS if s in r["skipped"]
           and r["skipped"][s] != NOT_APPLICABLE}
    missing = [s for s in PEERS if s in systems and s in why
               and not any(s in r["times"] for r in rows)]
    wanted = [s for s in PEERS if s in systems]
    if not missing:
        return f"peers: {', '.join(wanted) or 'none asked for'}" + (
            " (all installed)" if wanted else "")
    reasons = dict.fromkeys(why[s] for s in missing)      # peers that share a reason together
    return "peers missing: " + "; ".join(
        f"{', '.join(s for s in missing if why[s] == reason)} ({reason})" for reason in reasons)


def layer_norm_cost(rows: Sequence[dict[str, Any]]) -> str:
    """One line: what layer normalization costs fastcells, per normalized row (its time
    over fastcells' plain cell on the same problem, timed in the same rounds)."""
    costs = [f"{shape_text(r)} {r['mode']} {_fmt(r.get('ln_over_plain'), '.2f')}x"
             for r in rows if r.get("layer_norm")]
    return (f"{LN_MARK[1:]} cost: fastcells' normalized {LN_CELL} ms / its plain {LN_CELL} ms "
            "on the same problem: " + ", ".join(costs))


def _legend_lines(columns: Sequence[Column]) -> list[str]:
    return [f"- `{c.head}`: {c.meaning}" for c in columns]


def write_markdown(path: str, rows: Sequence[dict[str, Any]], info: dict[str, Any], *, grid: str,
                   elapsed: float, command: str) -> None:
    """Write the report as Markdown: the machine, the date, the commit, the version, the
    threads, a short legend, the default table and then every column (for ``--scaling``
    rows, the scaling table)."""
    peers = ", ".join(f"{d} {info[d] or 'not installed'}" for d in PEER_DISTRIBUTIONS.values())
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# fastcells benchmark results", "",
        (f"Written by `{command}` on {date} ({grid} grid, {len(rows)} rows, "
         f"{elapsed:.0f} s). Regenerate it rather than edit it; `bench/README.md` says how."),
        "",
        f"- fastcells {info['fastcells']}, commit {info.get('commit') or 'unknown (not a clone)'}",
        f"- CPU: {info['cpu']} ({info['cores']} logical cores), {info['platform']}",
        f"- ISA: {info['isa']} (available: {', '.join(info['isa_available'])})",
        f"- Python {info['python']}, NumPy {info['numpy']} (BLAS: {info['numpy_blas']})",
        f"- peers: {peers}",
        f"- {(info.get('threads') or threads_info(1))['line']}",
        *(f"- {w}" for w in (info.get("threads") or {}).get("warnings", ())),
        "",
    ]
    if rows and "speedup" in rows[0]:
        lines += [
            ("Times are medians over interleaved rounds, every system at every thread count "
             "taking its turn in each round; `x` is a system's time at 1 thread over its time "
             "at that count. Every fastcells result was checked against the float64 "
             "reference."),
            "", "## Scaling", "", *_legend_lines(SCALING[3:]), "",
            markdown_table(rows, SCALING), ""]
    else:
        lines += [
            ("Times are medians over interleaved rounds; ratios `x/fc` are a system's time over "
             "fastcells' (above 1: fastcells is faster). Every fastcells result was checked "
             "against the float64 reference (`rel err` below)."
             + (f" `{VARLEN_MARK}T`: {VARLEN_LEGEND.split(': ', 1)[1]}."
                if any(r.get("varlen") for r in rows) else "")),
            "", "## Summary", "", *_legend_lines(COMPACT[3:]), "", markdown_table(rows, COMPACT),
            *(["", layer_norm_cost(rows)] if any(r.get("layer_norm") for r in rows) else []),
            "", "## Every column", "", *_legend_lines(WIDE[3:]), "", markdown_table(rows, WIDE),
            ""]
    Path(path).write_text("\n".join(lines))


# ----------------------------------------------------------------------------
# the command

_EPILOG = f"""\
grids (--shape replaces them):
  default  {' '.join(map(str, GRIDS['default']))}
  --quick  {' '.join(map(str, GRIDS['quick']))} (short timing, --check on)
  --full   latency, training and serving shapes:
           {' '.join(map(str, GRIDS['full'][:5]))}
           {' '.join(map(str, GRIDS['full'][5:]))}
  and the variable-length LSTM row ({VARLEN_MARK}T: lengths uniform in [T/2, T]; --varlen
  replaces it): default {VARLEN_GRIDS['default'][0]}, --quick {VARLEN_GRIDS['quick'][0]}, \
--full {VARLEN_GRIDS['full'][0]}
  and the layer-normalized LSTM rows ({LN_CELL}{LN_MARK}; --layer-norm replaces them): default
  {' '.join(map(str, LN_GRIDS['default']))}, --quick {' '.join(map(str, LN_GRIDS['quick']))}, \
--full adds {LN_GRIDS['full'][-1]}
  and the LSTM-with-projection rows ({PROJ_CELL}{PROJ_MARK}P, P = H/{PROJ_RATIO}; --proj replaces
  them): default {' '.join(map(str, PROJ_GRIDS['default']))}, --quick \
{' '.join(map(str, PROJ_GRIDS['quick']))}, --full adds {PROJ_GRIDS['full'][-1]}

--scaling (--cells and --shape narrow or replace them; --quick, --full as above):
  default  {' '.join(f"{c} {s}" for c, s in SCALING_GRIDS['default'])}
  --quick  {' '.join(f"{c} {s}" for c, s in SCALING_GRIDS['quick'])}
  --full   the default's and {' '.join(f"{c} {s}" for c, s in SCALING_GRIDS['full'][4:])}

systems:
{chr(10).join(f"  {s:<10} {note}" for s, note in SYSTEM_NOTES.items())}

default columns:
{chr(10).join(f"  {c.head:<13} {c.meaning}" for c in COMPACT[3:])}
{textwrap.fill("--wide prints every column: " + ", ".join(
    c.head.replace(" ", chr(0xA0)) for c in WIDE[3:]) + ".", 88).replace(chr(0xA0), " ")}

threads: --threads N (default 1) runs every system at N threads: fastcells
set_num_threads(N), torch.set_num_threads(N) with one inter-op thread, ONNX Runtime N
intra-op and one inter-op thread, and NumPy's BLAS (the reference, the floor) at N: run as a
program, the report sets {', '.join(THREAD_VARS)} to N and
re-executes itself if they were not, and applies threadpoolctl's limit when installed.
--threads default runs each system at its own default, what a user gets with no settings
(the report removes those variables and {FASTCELLS_THREAD_VAR}); the header says what
each got.  --scaling sets each system (and BLAS) to each count in turn.

The peers' runners, the ONNX model builder and the plot are in the repository's bench/
folder, found beside the package when it runs from a clone (pip install -e .).  From an
installed wheel without the clone, torch, ort and --plot are reported missing unless
--bench-dir names that folder.  Peers: pip install torch onnxruntime onnx; plot:
pip install matplotlib.
"""


def _threads_arg(text: str) -> int | str:
    """``--threads``: a positive integer, or ``default``."""
    if text.strip().lower() == DEFAULT_THREADS:
        return DEFAULT_THREADS
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or {DEFAULT_THREADS!r}, got {text!r}")
    return n


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m fastcells.bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Time fastcells' RNN, GRU and LSTM against the NumPy reference, PyTorch and ONNX "
            "Runtime, every system at the same thread count (one by default), and check "
            "fastcells against the float64 reference.  Prints the machine, then per cell, "
            "shape and mode fastcells' time, the fastest installed peer's, the reference's "
            "and the ratios.  Progress goes to stderr.", 88),
        epilog=_EPILOG)
    grid = ap.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true",
                      help="two small shapes, short timing, and --check (for CI)")
    grid.add_argument("--full", action="store_true",
                      help="the full grid: latency, training and serving shapes (minutes)")
    ap.add_argument("--threads", type=_threads_arg, metavar="N|default",
                    help="every system at N threads (default: 1), or 'default': each system "
                         "at its own default thread count, as a user gets it with no "
                         "settings; with --scaling, the most threads (default: the cores "
                         "this process may use)")
    ap.add_argument("--scaling", action="store_true",
                    help="time fastcells and each installed peer at 1, 2, 4, ... threads up "
                         "to the cores this process may use, with each one's speed-up over "
                         "its own 1-thread time")
    ap.add_argument("--wide", action="store_true",
                    help="print every column (every system, the floor, errors) instead of "
                         "the default table")
    ap.add_argument("--cells", default=",".join(CELLS),
                    help="comma-separated cells to run (default: %(default)s)")
    ap.add_argument("--shape", action="append", type=Shape.parse, metavar="T,B,I,H",
                    help="run this shape instead of the grid (repeatable)")
    ap.add_argument("--varlen", action="append", type=Shape.parse, metavar="T,B,I,H",
                    help=f"run the variable-length LSTM row ({VARLEN_MARK}T) at this shape "
                         "instead of the grid's (repeatable; with --shape, none unless given)")
    ap.add_argument("--layer-norm", action="append", type=Shape.parse, metavar="T,B,I,H",
                    help=f"run the layer-normalized LSTM row ({LN_CELL}{LN_MARK}) at this shape "
                         "instead of the grid's (repeatable; with --shape, none unless given)")
    ap.add_argument("--proj", action="append", type=Shape.parse, metavar="T,B,I,H",
                    help=f"run the LSTM-with-projection row ({PROJ_CELL}{PROJ_MARK}P, "
                         f"P = H/{PROJ_RATIO}) at this shape instead of the grid's "
                         "(repeatable; with --shape, none unless given)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma-separated modes: fwd (inference), fwdbwd (training forward "
                         "+ backward) (default: %(default)s)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated systems to time (default: %(default)s; --scaling "
                         f"times those of {','.join(SCALING_SYSTEMS)})")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="timed calls per measurement (default: as many as fit the grid's "
                         "time per measurement)")
    ap.add_argument("--json", metavar="FILE",
                    help="write every row (median, minimum, repeats per system) and the "
                         "machine as JSON")
    ap.add_argument("--markdown", metavar="FILE",
                    help="write the report as Markdown: machine, date, commit, version, "
                         "threads, legend, the default table and every column (with "
                         "--scaling: the scaling table)")
    ap.add_argument("--plot", metavar="FILE.png",
                    help="draw fastcells' speed-up over each peer per shape as a PNG "
                         "(needs matplotlib and the bench/ folder; not with --scaling)")
    ap.add_argument("--bench-dir", metavar="DIR", type=Path,
                    help="the repository's bench/ folder, with the peers and the plot "
                         "(default: beside the package, in a clone)")
    ap.add_argument("--check", action="store_true",
                    help=f"exit with status 1 if fastcells' relative error against the float64 "
                         f"reference exceeds {CHECK_TOL:g}, or prepared/fp16w break their "
                         f"contracts (on with --quick)")
    args = ap.parse_args(argv)
    for name, allowed in (("cells", CELLS), ("modes", MODES), ("systems", SYSTEMS)):
        values = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            ap.error(f"--{name}: expected a comma-separated subset of {','.join(allowed)}, "
                     f"got {getattr(args, name)!r}")
        setattr(args, name, values)
    if args.repeat is not None and args.repeat < 1:
        ap.error(f"--repeat: expected a positive integer, got {args.repeat}")
    if args.bench_dir is not None and load_bench(args.bench_dir) is None:
        ap.error(f"--bench-dir: expected the repository's bench/ folder (with {_BENCH_MARKER}),"
                 f" got {str(args.bench_dir)!r}")
    if args.scaling:
        if args.threads == DEFAULT_THREADS:
            ap.error("--threads: expected the most threads of --scaling (a positive integer), "
                     f"got {DEFAULT_THREADS!r}")
        for option in ("plot", "wide", "varlen", "layer_norm", "proj"):
            if getattr(args, option):
                ap.error(f"--{option.replace('_', '-')}: not with --scaling")
        if not set(args.systems) & set(SCALING_SYSTEMS):
            ap.error(f"--systems: --scaling times {','.join(SCALING_SYSTEMS)}, got "
                     f"{','.join(args.systems)!r}")
    return args


def _grid(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full" if args.full else "default"


def _report_threads(args: argparse.Namespace) -> int | None:
    """The report's thread count: N, or None for each system's default."""
    return None if args.threads == DEFAULT_THREADS else (args.threads or 1)


def _scaling_most(args: argparse.Namespace) -> int:
    """--scaling's most threads: --threads, else the cores this process may use."""
    most: int = args.threads or _threads.available_cores()
    return most


def _check(rows: Sequence[dict[str, Any]]) -> bool:
    """Print why each failing row fails --check (stderr); True when none does."""
    ok = True
    for r in rows:
        where = f"{r['cell']} {shape_text(r)} {r['mode']}" + (
            f" at {r['threads']} threads" if "speedup" in r else "")
        if not r["rel_err"] <= CHECK_TOL:
            ok = False
            print(f"CHECK FAILED: {where}: relative error {r['rel_err']:.2e} > {CHECK_TOL:g}",
                  file=sys.stderr)
        # fastcells' other ways of running must hold their contracts too
        for s in OWN_SYSTEMS:
            if "disagrees" in r["skipped"].get(s, ""):
                ok = False
                print(f"CHECK FAILED: {where}: {r['skipped'][s]}", file=sys.stderr)
    return ok


class Job(NamedTuple):
    """One row to run: its cell, shape and mode, whether it has lengths or is
    layer-normalized, and its projection (0: none)."""

    cell: str
    shape: Shape
    mode: str
    varlen: bool = False
    layer_norm: bool = False
    proj_size: int = 0


def _jobs(args: argparse.Namespace) -> list[Job]:
    """Every row to run, in the table's order."""
    grid = _grid(args)
    if args.scaling:
        pairs = ([(c, s) for c in args.cells for s in args.shape] if args.shape
                 else [(c, s) for c, s in SCALING_GRIDS[grid] if c in args.cells])
        return [Job(c, s, m) for c, s in pairs for m in args.modes]
    shapes = tuple(args.shape) if args.shape else GRIDS[grid]
    varlen = args.varlen or (() if args.shape else VARLEN_GRIDS[grid])
    normalized = args.layer_norm or (() if args.shape else LN_GRIDS[grid])
    jobs = [Job(c, s, m) for c in args.cells for s in shapes for m in args.modes]
    if VARLEN_CELL in args.cells:
        jobs += [Job(VARLEN_CELL, s, m, varlen=True) for s in varlen for m in args.modes]
    if LN_CELL in args.cells:
        jobs += [Job(LN_CELL, s, m, layer_norm=True) for s in normalized for m in args.modes]
    projected = args.proj or (() if args.shape else PROJ_GRIDS[grid])
    if PROJ_CELL in args.cells:
        jobs += [Job(PROJ_CELL, s, m, proj_size=max(1, s.H // PROJ_RATIO))
                 for s in projected for m in args.modes]
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; the exit status (1 when ``--check`` fails)."""
    args = _parse_args(argv)
    grid = _grid(args)
    check = args.check or args.quick
    target, min_repeats = TIMING[grid]
    threads = _report_threads(args)
    counts = scaling_counts(_scaling_most(args)) if args.scaling else None
    systems = [s for s in args.systems if s in SCALING_SYSTEMS] if args.scaling else args.systems
    saved_setting = _threads.thread_setting()
    limits = pin_threads(None if args.scaling else threads)
    try:
        if not args.scaling:
            set_fastcells_threads(threads)
        info = machine_info()
        info["threads"] = threads_info(threads, systems, args.bench_dir, counts)
        print(header(info), flush=True)
        jobs = _jobs(args)
        rows: list[dict[str, Any]] = []
        start = time.perf_counter()
        for k, (cell, shape, mode, varlen, layer_norm, proj_size) in enumerate(jobs, 1):
            key = {"cell": cell, "shape": [shape.T, shape.B, shape.I, shape.H], "varlen": varlen,
                   "layer_norm": layer_norm, "proj_size": proj_size}
            print(f"[{k}/{len(jobs)}] {cell_text(key)} {shape_text(key)} {mode}:", end="",
                  file=sys.stderr, flush=True)

            def progress(s: str) -> None:
                print(" " + s, end="", file=sys.stderr, flush=True)
            if counts:
                rows += run_scaling(cell, shape, mode, systems, counts, target, min_repeats,
                                    args.repeat, progress=progress, bench_dir=args.bench_dir)
            else:
                rows.append(run_row(cell, shape, mode, systems, target, min_repeats,
                                    args.repeat, progress=progress, bench_dir=args.bench_dir,
                                    threads=threads, varlen=varlen, layer_norm=layer_norm,
                                    proj_size=proj_size))
            print(file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - start
    finally:
        if limits is not None:
            limits.restore_original_limits()
        set_fastcells_threads(saved_setting)
    what = "scaling" if counts else "grid"
    print(f"\n{grid} {what}, {len(rows)} rows in {elapsed:.1f} s")
    if counts:
        print(SCALING_LEGEND)
        print(format_table(rows, SCALING))
    elif args.wide:
        print("\n".join(f"{c.head}: {c.meaning}" for c in WIDE[3:]))
        print(format_table(rows, WIDE))
    else:
        print(LEGEND)
        if any(r["varlen"] for r in rows):
            print(VARLEN_LEGEND)
        print(format_table(rows, COMPACT))
        if any(r.get("layer_norm") for r in rows):
            print(wrap(layer_norm_cost(rows)))
    print(wrap(missing_peers(rows, systems)))
    for line in sorted({f"{s}: {why}" for r in rows for s, why in r["skipped"].items()
                        if "disagrees" in why}):
        print(wrap(f"not timed - {line}"))
    command = " ".join(["python -m fastcells.bench", *(argv if argv is not None
                                                         else sys.argv[1:])])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "grid": grid, "scaling": bool(counts),
                       "target_seconds": target, "elapsed_seconds": elapsed,
                       "command": command, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        write_markdown(args.markdown, rows, info, grid=grid, elapsed=elapsed, command=command)
        print(f"wrote {args.markdown}")
    if args.plot:
        _plot(rows, info, args.plot, args.bench_dir)
    if check:
        if not _check(rows):
            return 1
        print(f"check passed: every relative error <= {CHECK_TOL:g}; prepared and fp16w "
              "hold their contracts")
    return 0


def _plot(rows: Sequence[dict[str, Any]], info: dict[str, Any], path: str,
          bench_dir: Path | None) -> None:
    """Draw the plot with the bench/ folder's plotter, or say what is missing."""
    bench = load_bench(bench_dir)
    if bench is None:
        print(wrap(f"not writing {path}: the plot is drawn by bench/plot.py: {NO_BENCH_DIR}"))
    elif bench.plot.write_plot(rows, info, path):
        print(f"wrote {path}")
    else:
        print(f"not writing {path}: matplotlib is not installed (pip install matplotlib)")


def thread_environment(argv: Sequence[str]) -> dict[str, str | None]:
    """The environment variables the report needs before BLAS loads, for ``argv``:
    the thread variables at N (``--threads N``, and ``--scaling``'s most threads),
    or removed (None) for ``--threads default``."""
    args = _parse_args(argv)
    if args.threads == DEFAULT_THREADS and not args.scaling:
        return dict.fromkeys((*THREAD_VARS, FASTCELLS_THREAD_VAR))
    n = _scaling_most(args) if args.scaling else args.threads or 1
    return dict.fromkeys(THREAD_VARS, str(n))


def _reexec_with_threads() -> None:
    """Re-run this program with BLAS/OpenMP set to the report's thread count by the
    environment (or their variables removed for ``--threads default``).

    BLAS libraries read these variables once, when loaded, and ``python -m``
    has loaded NumPy (through ``fastcells/__init__``) before this module runs.
    Bad arguments end the program here, before the re-execution.
    """
    want = thread_environment(sys.argv[1:])
    if os.name != "posix" or all(os.environ.get(k) == v for k, v in want.items()):
        return
    env = {k: v for k, v in os.environ.items() if k not in want}
    env.update((k, v) for k, v in want.items() if v is not None)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastcells.bench", *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_with_threads()
    # Run the imported module, not this ``__main__`` copy, so that the bench/ folder's
    # peers (which import fastcells.bench) raise the same Unavailable that is caught.
    sys.exit(importlib.import_module("fastcells.bench").main())
