"""The benchmark report: ``python -m fastcells.bench``.

For each cell (LSTM, GRU, RNN), shape ``(T, B, I, H)`` and mode — forward
(inference, ``training=False``) and forward+backward (BPTT with one upstream
gradient ``dy``) — it times, in one run and on one thread each:

- ``fastcells`` (the compiled kernels, through ``<cell>_forward``/``_backward``:
  every call checks, folds and packs the weights);
- ``prepared``, forward only: ``fastcells.Stepper(cell, weights).forward(x, ...)``,
  the same kernels with the weights prepared once, as a server holds them (the
  way ONNX Runtime's session and torch's module hold theirs);
- ``fp16w``, forward at batch 1 only: the same with ``weight_dtype="float16"``
  (weights rounded to float16 once; batch-1 products read half the bytes).
  Other numbers than float32 weights give, so it is checked against its own
  contract instead: the bits of a float32 ``Stepper`` over the rounded weights;
  its error against the float64 reference (``y``, relative, unrounded weights)
  is the column ``fp16w err``;
- ``reference``: ``fastcells.reference`` on float32 inputs, so it computes in
  float32, the same arithmetic precision;
- ``torch`` when installed: ``nn.RNN/GRU/LSTM`` with the same weights,
  ``torch.set_num_threads(1)``, forward under ``torch.inference_mode()``,
  forward+backward with ``y.backward(dy)`` and gradients for the input, the
  initial state and the parameters (what fastcells computes);
- ``ort`` (ONNX Runtime) when installed, forward only: an RNN/GRU/LSTM node
  model built in memory with ``onnx.helper``, one intra- and one inter-op
  thread;
- ``floor``, the *GEMM floor*: NumPy's BLAS alone doing the same matrix
  products — the input projection ``(T*B, I) @ (I, G*H)`` and ``T`` recurrent
  products ``(B, H) @ (H, G*H)``; for forward+backward also ``T`` products
  ``dGates_t @ W_hh`` and the three gradient GEMMs ``dW_ih``, ``dW_hh``,
  ``dx``.  At batch 1 it includes about a microsecond of Python call overhead
  per step, so it is a floor for batched shapes and a loose one at batch 1.

Every peer's output is checked against fastcells' (within ``PEER_TOL``)
before it is timed; a peer that disagrees is reported, not timed.  Each row
also gives the largest error of fastcells against the float64 reference
(``y`` and final states; for forward+backward every gradient too), absolute
and relative to ``max(1, max|reference|)`` per array as in the tests; ``--check``
(on in ``--quick``) exits with status 1 if a relative error exceeds
``CHECK_TOL`` or ``prepared``/``fp16w`` break their contracts.

Timing: a warm-up call, then repeats until about ``target`` seconds per
measurement (0.2 s by default, less in ``--quick``, more in ``--full``), in
``ROUNDS`` rounds that take the systems of a row in turn (a slow spell of a
shared machine then slows them all alike); the median over all rounds and
the minimum per call are kept.  Ratios are ``system / fastcells``
(above 1: fastcells is faster), ``peer/prep`` and ``peer/fp16w``: the fastest
peer's time over ``prepared``'s and ``fp16w``'s, and ``fastcells / floor`` (1 is
the floor).
GFLOP/s counts the flops of all the GEMMs above, ``2*m*n*k`` each.

Single thread: run as a program, the module sets ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1 and re-executes itself
if they were not (``python -m`` imports NumPy, through the package, before
this module runs, and BLAS reads them only when it loads); it also applies
``threadpoolctl.threadpool_limits(1)`` when threadpoolctl is installed, and
``torch.set_num_threads(1)``.

Comparing honestly with NumPy's BLAS: some machines set ``OPENBLAS_CORETYPE``
or ``OPENBLAS_L2_SIZE``, which make OpenBLAS pick a slower kernel than the
CPU supports.  There, run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastcells.bench

The header prints such variables and, with threadpoolctl, the OpenBLAS core
type in use.  (Tests and CI never unset them.)

Usage::

    python -m fastcells.bench [--quick | --full] [--cells lstm,gru,rnn]
        [--shape T,B,I,H ...] [--modes fwd,fwdbwd]
        [--systems fastcells,prepared,fp16w,reference,torch,ort,floor]
        [--repeat N] [--json FILE] [--plot FILE.png] [--check]

Grids (``GRIDS``): the default is batch 1 and 16 at hidden 64 and 256, I = H
(under a minute on a 2-core machine); ``--quick`` two small shapes with short
timing, for CI; ``--full`` the issue-3 grid — latency, training and the
serving (DeepBench inference) shapes — which takes several minutes.
``--shape`` (repeatable) replaces the grid.  Peers are optional and imported
lazily: ``pip install .[bench]`` brings onnxruntime, onnx, matplotlib and
threadpoolctl; install torch separately (``pip install torch==2.13.0``, the
CPU build), as an extra would pull a CUDA build on some platforms.

The same problems and runners serve the pytest-benchmark suite in ``bench/``
(``python -m pytest bench --benchmark-only``): one source for both.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from . import _checks, reference
from . import functional as _fc
from .interop import GATE_LAYOUT

F32 = np.float32

CELLS = ("lstm", "gru", "rnn")
MODES = ("fwd", "fwdbwd")
#: every system the report can time, in table order
SYSTEMS = ("fastcells", "prepared", "fp16w", "reference", "torch", "ort", "floor")
#: the peers: other libraries, compared with fastcells' ways of running
PEERS = ("torch", "ort")
#: fastcells' prepared-weights systems: a disagreement of theirs fails --check
OWN_SYSTEMS = ("prepared", "fp16w")
#: relative error of fastcells against the float64 reference that fails --check
CHECK_TOL = 1e-4
#: relative disagreement of a peer with fastcells above which the peer is not timed
PEER_TOL = 1e-4
#: environment variables that pin BLAS/OpenMP to one thread
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: variables that change which OpenBLAS kernel runs (reported, never changed)
BLAS_TUNING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE",
                    "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")


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
    def parse(cls, text: str) -> "Shape":
        parts = text.strip().strip("()").split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or min(values) < 1:
            raise ValueError(f"shape: expected four positive integers T,B,I,H, got {text!r}")
        return cls(*values)


def _shapes(*tuples) -> tuple:
    return tuple(Shape(*t) for t in tuples)


#: the grid of each mode of the report (and of the pytest-benchmark suite)
GRIDS = {
    # CI smoke run: small, but both a batch-1 and a batched shape
    "quick": _shapes((50, 1, 32, 32), (20, 8, 64, 64)),
    # issue 2: batch 1 and 16, hidden 64 and 256, I = H
    "default": _shapes((100, 1, 64, 64), (100, 1, 256, 256), (50, 16, 64, 64),
                       (50, 16, 256, 256)),
    # issue 3: latency, training and the serving (DeepBench inference) shapes
    "full": _shapes((100, 1, 64, 64), (100, 1, 256, 256), (100, 16, 128, 128),
                    (50, 64, 256, 256), (50, 64, 512, 512), (25, 128, 1024, 1024),
                    (25, 1, 512, 512), (25, 4, 512, 512), (25, 1, 1024, 1024),
                    (25, 4, 1024, 1024)),
}
#: seconds of repeats per measurement, and the fewest repeats, per grid
TIMING = {"quick": (0.03, 3), "default": (0.2, 3), "full": (0.5, 3)}


#: why ONNX Runtime has no forward+backward time (not reported as a missing peer)
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
    """

    cell: str
    shape: Shape
    x: np.ndarray
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    h0: np.ndarray
    c0: Optional[np.ndarray]
    dy: np.ndarray
    _expected: dict = field(default_factory=dict, repr=False)

    @property
    def G(self) -> int:
        return _checks.GATES[self.cell]

    def args(self, dtype=F32) -> tuple:
        """Positional arguments of ``<cell>_forward``, in ``dtype``."""
        a = (self.x, self.W_ih, self.W_hh, self.b_ih, self.b_hh, self.h0)
        if self.cell == "lstm":
            a += (self.c0,)
        return tuple(v.astype(dtype) for v in a)

    def expected(self, mode: str) -> dict:
        """The float64 reference's outputs (and gradients for ``fwdbwd``), by name."""
        if mode not in self._expected:
            self._expected[mode] = outputs(reference, self, mode, np.float64)
        return self._expected[mode]


def make_problem(cell: str, shape: Shape, seed: int = 0) -> Problem:
    """The seeded :class:`Problem` of ``cell`` at ``shape``."""
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    GH = _checks.GATES[cell] * H
    rng = np.random.default_rng([seed, CELLS.index(cell), T, B, I, H])
    k = 1.0 / np.sqrt(H)

    def uniform(*s):
        return rng.uniform(-k, k, s).astype(F32)

    def normal(*s):
        return rng.standard_normal(s, dtype=F32)

    return Problem(cell, shape, x=normal(T, B, I), W_ih=uniform(GH, I), W_hh=uniform(GH, H),
                   b_ih=uniform(GH), b_hh=uniform(GH), h0=normal(B, H),
                   c0=normal(B, H) if cell == "lstm" else None, dy=normal(T, B, H))


def _module_fns(module, cell: str) -> tuple:
    return getattr(module, f"{cell}_forward"), getattr(module, f"{cell}_backward")


def outputs(module, p: Problem, mode: str, dtype=F32) -> dict:
    """Run ``module`` (fastcells or its reference) once; the results by name."""
    forward, backward = _module_fns(module, p.cell)
    out = forward(*p.args(dtype), training=(mode == "fwdbwd"))
    result = {"y": out.y, "h": out.h}
    if p.cell == "lstm":
        result["c"] = out.c
    if mode == "fwdbwd":
        grads = backward(out.cache, dy=p.dy.astype(dtype))
        result.update((k, v) for k, v in grads._asdict().items() if v is not None)
    return result


def errors(got: dict, want: dict) -> tuple:
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


# ----------------------------------------------------------------------------
# runners: a zero-argument callable per system, problem and mode


def _fastcells_like(module) -> Callable:
    def make(p: Problem, mode: str) -> Callable:
        forward, backward = _module_fns(module, p.cell)
        args, dy = p.args(F32), p.dy
        if mode == "fwd":
            return lambda: forward(*args)

        def run():
            return backward(forward(*args, training=True).cache, dy=dy)
        return run
    return make


#: PyTorch's parameter name of each weight (single layer, forward direction)
TORCH_NAMES = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0",
               "b_hh": "bias_hh_l0"}


def _torch_runner(p: Problem, mode: str) -> Callable:
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    torch.set_num_threads(1)
    T, B, I, H = p.shape.T, p.shape.B, p.shape.I, p.shape.H
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[p.cell]
    mod = cls(I, H)
    with torch.no_grad():
        for ours, theirs in TORCH_NAMES.items():
            getattr(mod, theirs).copy_(torch.from_numpy(getattr(p, ours)))
    x = torch.from_numpy(p.x)
    state = [torch.from_numpy(p.h0)[None]]
    if p.cell == "lstm":
        state.append(torch.from_numpy(p.c0)[None])

    def call(x, state):
        return mod(x, tuple(state) if p.cell == "lstm" else state[0])[0]

    with torch.inference_mode():
        y = call(x, state).numpy()
    _agree("torch", y, p)
    if mode == "fwd":
        def run():
            with torch.inference_mode():
                return call(x, state)
        return run

    dy = torch.from_numpy(p.dy)

    def run_bwd():
        # gradients for the input and the initial state too: fastcells computes them
        xg = x.detach().requires_grad_(True)
        sg = [s.detach().requires_grad_(True) for s in state]
        mod.zero_grad(set_to_none=True)
        call(xg, sg).backward(dy)
        return xg.grad
    return run_bwd


#: ONNX gate order (LSTM i,o,f,c; GRU z,r,h) as indices of fastcells' gate blocks,
#: from the one gate-layout table of ``fastcells.interop``
ONNX_GATES = {c: tuple(GATE_LAYOUT["fastcells"][c].index(g) for g in GATE_LAYOUT["onnx"][c])
              for c in CELLS}


def _onnx_model_bytes(p: Problem) -> bytes:
    """A one-node ONNX model of ``p``'s cell, weights as initializers, inputs X and states."""
    from onnx import TensorProto, helper, numpy_helper

    H = p.shape.H

    def reorder(a):
        return np.concatenate([a[g * H:(g + 1) * H] for g in ONNX_GATES[p.cell]])[None]

    inits = [numpy_helper.from_array(reorder(p.W_ih), "W"),
             numpy_helper.from_array(reorder(p.W_hh), "R"),
             numpy_helper.from_array(np.concatenate([reorder(p.b_ih), reorder(p.b_hh)], 1), "B")]
    states = ["initial_h"] + (["initial_c"] if p.cell == "lstm" else [])
    attrs = {"hidden_size": H}
    if p.cell == "gru":
        attrs["linear_before_reset"] = 1  # PyTorch's GRU
    node = helper.make_node(p.cell.upper(), ["X", "W", "R", "B", ""] + states,
                            ["Y", "Y_h"], **attrs)
    T, B, I = p.x.shape
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], f"fastcells_bench_{p.cell}",
        [helper.make_tensor_value_info("X", f32, [T, B, I])]
        + [helper.make_tensor_value_info(s, f32, [1, B, H]) for s in states],
        [helper.make_tensor_value_info("Y", f32, [T, 1, B, H]),
         helper.make_tensor_value_info("Y_h", f32, [1, B, H])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what opset 17 needs; older runtimes refuse newer IR versions
    return model.SerializeToString()


def _ort_runner(p: Problem, mode: str) -> Callable:
    if mode != "fwd":
        raise Unavailable(NOT_APPLICABLE)
    try:
        import onnx  # noqa: F401  (the model builder)
        import onnxruntime as ort
    except ImportError as exc:
        raise Unavailable(f"{exc.name} not installed") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(_onnx_model_bytes(p), opts, providers=["CPUExecutionProvider"])
    feed = {"X": p.x, "initial_h": p.h0[None]}
    if p.cell == "lstm":
        feed["initial_c"] = p.c0[None]
    _agree("ort", sess.run(["Y"], feed)[0][:, 0], p)
    return lambda: sess.run(["Y"], feed)


def _agree(system: str, y: np.ndarray, p: Problem) -> None:
    """Raise :class:`Unavailable` if ``system``'s ``y`` differs from fastcells' by > PEER_TOL."""
    _, rel = errors({"y": y}, {"y": outputs(_fc, p, "fwd")["y"].astype(np.float64)})
    if not rel <= PEER_TOL:
        raise Unavailable(f"{system} disagrees with fastcells: relative error {rel:.2e}")


def gemm_flops(cell: str, shape: Shape, mode: str) -> int:
    """Flops (``2*m*n*k`` per product) of the GEMMs of one call, as the floor does them."""
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    GH = _checks.GATES[cell] * H
    proj, rec = 2 * T * B * I * GH, 2 * T * B * H * GH
    if mode == "fwd":
        return proj + rec
    # backward: dGates_t @ W_hh per step, then dW_ih, dW_hh and dx
    return proj + rec + rec + 2 * GH * T * B * I + 2 * GH * T * B * H + 2 * T * B * GH * I


def _floor_runner(p: Problem, mode: str) -> Callable:
    T, B, I, H = p.shape.T, p.shape.B, p.shape.I, p.shape.H
    GH = p.G * H
    x2, W_ih, W_hh = p.x.reshape(T * B, I), p.W_ih, p.W_hh
    W_ihT, W_hhT = W_ih.T, W_hh.T
    gx = np.empty((T * B, GH), F32)
    gh = np.empty((B, GH), F32)
    h = p.h0.copy()
    dG = np.full((T * B, GH), 0.01, F32)
    Hs = np.ascontiguousarray(np.broadcast_to(p.h0, (T, B, H)).reshape(T * B, H))
    dh = np.empty((B, H), F32)
    dW_ih, dW_hh, dx = np.empty((GH, I), F32), np.empty((GH, H), F32), np.empty((T * B, I), F32)
    matmul = np.matmul

    def forward():
        matmul(x2, W_ihT, out=gx)
        for _ in range(T):
            matmul(h, W_hhT, out=gh)

    if mode == "fwd":
        return forward

    def fwdbwd():
        forward()
        for t in range(T - 1, -1, -1):
            matmul(dG[t * B:(t + 1) * B], W_hh, out=dh)
        matmul(dG.T, x2, out=dW_ih)
        matmul(dG.T, Hs, out=dW_hh)
        matmul(dG, W_ih, out=dx)
    return fwdbwd


def _stepper_setup(p: Problem, mode: str, **options):
    """``(x, states, Stepper)`` of a prepared-weights system (forward only)."""
    if mode != "fwd":
        raise Unavailable(NOT_APPLICABLE)
    x, *weights = p.args(F32)
    states = weights[4:6 if p.cell == "lstm" else 5]
    return x, states, _fc.Stepper(p.cell, *weights[:4], **options)


def _prepared_runner(p: Problem, mode: str) -> Callable:
    x, states, step = _stepper_setup(p, mode)
    _agree("prepared", step.forward(x, *states).y, p)
    return lambda: step.forward(x, *states)


def _fp16w_runner(p: Problem, mode: str) -> Callable:
    if mode == "fwd" and p.shape.B != 1:
        raise Unavailable(NOT_BATCH1)
    x, states, step = _stepper_setup(p, mode, weight_dtype="float16")
    rounded = [np.asarray(w, F32).astype(np.float16).astype(F32) for w in (p.W_ih, p.W_hh)]
    want = _fc.Stepper(p.cell, *rounded, p.b_ih, p.b_hh).forward(x, *states).y
    if not np.array_equal(step.forward(x, *states).y, want):
        raise Unavailable("fp16w disagrees with a float32 Stepper over the rounded weights")
    return lambda: step.forward(x, *states)


RUNNERS = {
    "fastcells": _fastcells_like(_fc),
    "prepared": _prepared_runner,
    "fp16w": _fp16w_runner,
    "reference": _fastcells_like(reference),
    "torch": _torch_runner,
    "ort": _ort_runner,
    "floor": _floor_runner,
}


def make_runner(system: str, p: Problem, mode: str) -> Callable:
    """A zero-argument callable that runs ``system`` once on ``p``.

    Parameters
    ----------
    system : {"fastcells", "prepared", "fp16w", "reference", "torch", "ort", "floor"}
    p : Problem
        From :func:`make_problem`; float32 arrays, built once and shared.
    mode : {"fwd", "fwdbwd"}
        Inference forward, or a training forward and the backward of ``p.dy``.

    Returns
    -------
    callable
        Everything that does not depend on the call (modules, sessions,
        packed buffers, tensors) is built here, outside the timed call.

    Raises
    ------
    Unavailable
        The system is not installed, does not apply (ONNX Runtime backward)
        or its output disagrees with fastcells' by more than ``PEER_TOL``.
    """
    if system not in RUNNERS:
        raise ValueError(f"system: expected one of {SYSTEMS}, got {system!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return RUNNERS[system](p, mode)


# ----------------------------------------------------------------------------
# timing


#: rounds per row: every system is timed once per round, in turn, so that a slow
#: spell of a shared machine (its clock moved by 30% within minutes on the
#: machine of the README's table) falls on all the systems of a row alike
ROUNDS = 5


def _timed_calls(fn: Callable, repeat: int) -> list:
    """Seconds of each of ``repeat`` calls, the garbage collector off (as in timeit)."""
    perf = time.perf_counter
    times = []
    # gc off, not gc.collect(): with torch imported a full collection takes ~0.4 s
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


def measure_rounds(fns: dict, target: float, min_repeats: int = 3,
                   repeat: Optional[int] = None, rounds: int = ROUNDS) -> dict:
    """Median and minimum milliseconds per call of each function in ``fns`` (name ->
    callable), timed in ``rounds`` interleaved rounds.

    One warm-up call each (which also estimates the cost), then per round
    ``repeat`` timed calls or, if None, as many as fit in ``target / rounds``
    seconds (at least ``min_repeats`` in all).  Medians pool every round.
    """
    per_round = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        estimate = time.perf_counter() - t0
        total = repeat if repeat is not None else int(
            min(max(target / max(estimate, 1e-7), min_repeats), 100_000))
        # ``total`` calls in all, spread over the rounds
        per_round[name] = [total // rounds + (i < total % rounds) for i in range(rounds)]
    times = {name: [] for name in fns}
    for i in range(rounds):
        for name, fn in fns.items():
            times[name] += _timed_calls(fn, per_round[name][i])
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
                   "repeats": len(t)} for name, t in times.items()}


def measure(fn: Callable, target: float, min_repeats: int = 3,
            repeat: Optional[int] = None) -> dict:
    """Median and minimum milliseconds per call of ``fn`` (one round; see
    :func:`measure_rounds`)."""
    return measure_rounds({"fn": fn}, target, min_repeats, repeat, rounds=1)["fn"]


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


def _version(distribution: str) -> Optional[str]:
    """The installed version, without importing the package (torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the header prints and the JSON keeps: versions, ISA, BLAS, CPU, threads."""
    from ._config import config

    info = dict(config())
    info.update(cpu=_cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                torch=_version("torch"), onnxruntime=_version("onnxruntime"),
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


def _header(info: dict) -> str:
    lines = [f"fastcells {info['fastcells']}  ISA {info['isa']} "
             f"(available: {', '.join(info['isa_available'])})"
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
    lines.append(f"torch {info['torch'] or 'not installed'}  "
                 f"onnxruntime {info['onnxruntime'] or 'not installed'}")
    env = info["env"]
    lines.append("env: " + (" ".join(f"{k}={v}" for k, v in env.items()) or "(none set)"))
    tuned = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in env]
    if tuned:
        lines.append(f"warning: {', '.join(tuned)} set: NumPy's BLAS may run a slower kernel; "
                     "for an honest floor run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
                     "python -m fastcells.bench")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# the report


def run_row(cell: str, shape: Shape, mode: str, systems: Sequence[str], target: float,
            min_repeats: int, repeat: Optional[int], problem: Optional[Problem] = None,
            progress: Callable[[str], None] = lambda s: None) -> dict:
    """Time every system on one cell, shape and mode; the row of the table as a dict."""
    p = problem or make_problem(cell, shape)
    row = {"cell": cell, "shape": [shape.T, shape.B, shape.I, shape.H], "mode": mode,
           "times": {}, "skipped": {}}
    got = outputs(_fc, p, mode)
    row["abs_err"], row["rel_err"] = errors(got, p.expected(mode))
    fns = {}
    for system in systems:
        try:
            fns[system] = make_runner(system, p, mode)
        except Unavailable as exc:
            row["skipped"][system] = str(exc)
    if "fp16w" in fns:      # what float16 weights cost in accuracy: y against float64
        row["fp16w_rel_err"] = errors({"y": fns["fp16w"]().y}, {"y": p.expected(mode)["y"]})[1]
    row["times"] = measure_rounds(fns, target, min_repeats, repeat)
    for system, t in row["times"].items():
        progress(f"{system} {t['median_ms']:.3f} ms")
    fc = row["times"].get("fastcells", {}).get("median_ms")
    row["ratios"] = {s: t["median_ms"] / fc for s, t in row["times"].items()
                     if fc and s not in ("fastcells", "floor")}
    peers = [row["times"][s]["median_ms"] for s in PEERS if s in row["times"]]
    for system in ("prepared", "fp16w"):
        t = row["times"].get(system, {}).get("median_ms")
        row[f"best_peer_over_{system}"] = min(peers) / t if t and peers else None
    floor = row["times"].get("floor", {}).get("median_ms")
    row["fastcells_over_floor"] = fc / floor if fc and floor else None
    flops = gemm_flops(cell, shape, mode)
    row["gflop"] = flops / 1e9
    row["gflops"] = flops / (fc * 1e6) if fc else None
    row["floor_gflops"] = flops / (floor * 1e6) if floor else None
    return row


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width text table (times are medians in ms, and fastcells' minimum)."""
    head = ["cell", "shape (T,B,I,H)", "mode", "fastcells", "fc min", "prepared", "fp16w",
            "reference", "torch", "ort", "floor", "ref/fc", "torch/fc", "ort/fc", "peer/prep",
            "peer/fp16w", "fc/floor", "GFLOP/s", "abs err", "rel err", "fp16w err"]
    body = []
    for r in rows:
        t = {s: r["times"].get(s, {}).get("median_ms") for s in SYSTEMS}
        fc_min = r["times"].get("fastcells", {}).get("min_ms")
        body.append([r["cell"], "(" + ",".join(map(str, r["shape"])) + ")", r["mode"],
                     _fmt(t["fastcells"], ".3f"), _fmt(fc_min, ".3f"),
                     *(_fmt(t[s], ".3f") for s in SYSTEMS[1:]),
                     *(_fmt(r["ratios"].get(s), ".2f") for s in ("reference", "torch", "ort")),
                     _fmt(r.get("best_peer_over_prepared"), ".2f"),
                     _fmt(r.get("best_peer_over_fp16w"), ".2f"),
                     _fmt(r["fastcells_over_floor"], ".2f"), _fmt(r["gflops"], ".1f"),
                     _fmt(r["abs_err"], ".1e"), _fmt(r["rel_err"], ".1e"),
                     _fmt(r.get("fp16w_rel_err"), ".1e")])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    left = 3  # cell, shape and mode are text, the rest numbers

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_plot(rows: Sequence[dict], path: str) -> bool:
    """A bar chart of each peer's time / fastcells' per row; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    peers = [s for s in ("reference", "torch", "ort") if any(s in r["ratios"] for r in rows)]
    labels = [f"{r['cell']} {'(' + ','.join(map(str, r['shape'])) + ')'} {r['mode']}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 5))
    width = 0.8 / max(len(peers), 1)
    xs = np.arange(len(rows))
    for k, s in enumerate(peers):
        vals = [r["ratios"].get(s, np.nan) for r in rows]
        ax.bar(xs + (k - (len(peers) - 1) / 2) * width, vals, width, label=f"{s} / fastcells")
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("time / fastcells' time (above 1: fastcells faster)")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_title("fastcells benchmark, one thread, median")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def pin_threads() -> Optional[object]:
    """Limit BLAS/OpenMP pools to one thread now (threadpoolctl), if installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m fastcells.bench",
        description="Time fastcells against the NumPy reference, torch, ONNX Runtime "
                    "and the GEMM floor, one thread each.")
    grid = ap.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help="small grid, short timing (CI)")
    grid.add_argument("--full", action="store_true", help="the issue-3 grid incl. serving shapes")
    ap.add_argument("--cells", default=",".join(CELLS),
                    help="comma-separated cells (default: %(default)s)")
    ap.add_argument("--shape", action="append", type=Shape.parse, metavar="T,B,I,H",
                    help="run this shape instead of the grid (repeatable)")
    ap.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="default: %(default)s")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="timed calls per measurement (default: enough for the time target)")
    ap.add_argument("--json", metavar="FILE", help="write the rows and the machine info")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (matplotlib)")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if a relative error exceeds {CHECK_TOL:g} (on with --quick)")
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
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the report; the exit status (1 when ``--check`` fails)."""
    args = _parse_args(argv)
    grid = "quick" if args.quick else "full" if args.full else "default"
    check = args.check or args.quick
    target, min_repeats = TIMING[grid]
    shapes = tuple(args.shape) if args.shape else GRIDS[grid]
    limits = pin_threads()
    try:
        info = machine_info()
        print(_header(info), flush=True)
        jobs = [(c, s, m) for c in args.cells for s in shapes for m in args.modes]
        rows = []
        start = time.perf_counter()
        for k, (cell, shape, mode) in enumerate(jobs, 1):
            tag = f"[{k}/{len(jobs)}] {cell} {shape} {mode}:"
            print(tag, end="", file=sys.stderr, flush=True)
            rows.append(run_row(cell, shape, mode, args.systems, target, min_repeats,
                                args.repeat,
                                progress=lambda s: print(" " + s, end="", file=sys.stderr,
                                                         flush=True)))
            print(file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - start
    finally:
        if limits is not None:
            limits.restore_original_limits()
    print()
    print(f"median ms per call, one thread; x/fc = time of x / fastcells' time; "
          f"errors of fastcells vs the float64 reference; fp16w: float16 weights, batch 1 "
          f"({elapsed:.1f} s)")
    print(format_table(rows))
    skipped = sorted({f"{s}: {why}" for r in rows for s, why in r["skipped"].items()
                      if why not in (NOT_APPLICABLE, NOT_BATCH1)})
    for line in skipped:
        print(f"  not timed - {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "grid": grid, "target_seconds": target,
                       "elapsed_seconds": elapsed, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        if write_plot(rows, args.plot):
            print(f"wrote {args.plot}")
        else:
            print(f"not writing {args.plot}: matplotlib is not installed "
                  "(pip install matplotlib, or the 'bench' extra)")
    if check:
        bad = [r for r in rows if not r["rel_err"] <= CHECK_TOL]
        for r in bad:
            print(f"CHECK FAILED: {r['cell']} {tuple(r['shape'])} {r['mode']}: relative error "
                  f"{r['rel_err']:.2e} > {CHECK_TOL:g}", file=sys.stderr)
        # fastcells' other ways of running must hold their contracts too
        broken = [(r, s) for r in rows for s in OWN_SYSTEMS
                  if "disagrees" in r["skipped"].get(s, "")]
        for r, s in broken:
            print(f"CHECK FAILED: {r['cell']} {tuple(r['shape'])} {r['mode']}: "
                  f"{r['skipped'][s]}", file=sys.stderr)
        if bad or broken:
            return 1
        print(f"check passed: every relative error <= {CHECK_TOL:g}; prepared and fp16w "
              "hold their contracts")
    return 0


def _reexec_single_threaded() -> None:
    """Re-run this program with BLAS/OpenMP pinned to one thread by the environment.

    BLAS libraries read these variables once, when loaded, and ``python -m``
    has loaded NumPy (through ``fastcells/__init__``) before this module runs.
    """
    if os.name != "posix" or all(os.environ.get(v) == "1" for v in THREAD_VARS):
        return
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastcells.bench", *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_single_threaded()
    sys.exit(main())
