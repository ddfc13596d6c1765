"""The peers' runners: PyTorch and ONNX Runtime on a benchmark problem, at a thread count.

Each runner builds everything outside the timed call (module, session,
tensors), checks the peer's ``y`` against fastcells' (``fastcells.bench.agree``)
and returns a zero-argument callable, or raises ``fastcells.bench.Unavailable``
saying why the peer cannot run (not installed, inference only, disagrees).
A variable-length problem (``p.lengths``) runs through PyTorch's packed
sequences and ONNX Runtime's ``sequence_lens``.

Threads: ``SET_THREADS[peer](n)`` sets a peer to ``n`` threads, or (None) to
its own default; ``fastcells.bench.make_runner`` calls it before the runner.
PyTorch holds its count process-wide; an ONNX Runtime session holds its own,
so its runner takes the count.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastcells import reference
from fastcells.bench import (
    NOT_APPLICABLE,
    PEER_TOL,
    Problem,
    Runner,
    Unavailable,
    agree,
    errors,
)
from fastcells.reference import LayerNormWeights

from . import onnx_model

#: PyTorch's parameter name of each weight (single layer, forward direction)
TORCH_NAMES = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0",
               "b_hh": "bias_hh_l0"}
#: PyTorch's own thread count, read before the report first sets it (its default)
_torch_default: list[int] = []


def _torch() -> Any:
    """The torch module, its default thread count recorded; Unavailable if not installed."""
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    if not _torch_default:
        _torch_default.append(torch.get_num_threads())
    return torch


def set_torch_threads(n: int | None) -> None:
    """PyTorch at ``n`` intra-op threads (one inter-op thread, when it may still be set),
    or back to its default for None; nothing when torch is not installed."""
    try:
        torch = _torch()
    except Unavailable:
        return
    torch.set_num_threads(_torch_default[0] if n is None else n)
    if n is not None:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:        # settable once, before any inter-op work
            pass


def _session_threads(n: int | None) -> None:
    """ONNX Runtime: a session holds its threads (``ort_runner`` takes them)."""


def _physical_cores() -> int | None:
    """Physical cores among those this process may use (Linux), else None."""
    import os

    try:
        allowed = os.sched_getaffinity(0)
        cores: set[tuple[str | None, str]] = set()
        cpu: int | None = None
        package: str | None = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cpu, package = int(value), None
                elif key == "physical id":
                    package = value.strip()
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value.strip()))
        return len(cores) or None
    except (AttributeError, OSError, ValueError):
        return None


def default_threads(peers: Sequence[str]) -> dict[str, str]:
    """What each of ``peers`` runs with at its default thread count, for the header."""
    got = {}
    if "torch" in peers:
        try:
            _torch()
            got["torch"] = f"{_torch_default[0]} (get_num_threads)"
        except Unavailable:
            pass
    if "ort" in peers:
        cores = _physical_cores()
        got["ONNX Runtime"] = ("its own (intra_op_num_threads=0: one per physical core"
                               + (f", {cores} here" if cores else "")
                               + "; spinning off, see bench/README.md)")
    return got


def torch_runner(p: Problem, mode: str, threads: int | None = 1) -> Runner:
    """``torch.nn.RNN/GRU/LSTM`` with ``p``'s weights: forward under
    ``torch.inference_mode()``; forward+backward with ``y.backward(dy)`` and
    gradients for the input, the initial states and the parameters (what
    fastcells computes).  With ``p.lengths``: ``pack_padded_sequence``
    (``enforce_sorted=False``) in, ``pad_packed_sequence`` out, both timed."""
    torch = _torch()
    set_torch_threads(threads)
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    # torch.nn names its layers as fastcells does: RNN, GRU, LSTM
    mod = getattr(torch.nn, p.spec.layer)(p.shape.I, p.shape.H)
    with torch.no_grad():
        for ours, theirs in TORCH_NAMES.items():
            getattr(mod, theirs).copy_(torch.from_numpy(getattr(p, ours)))
    x = torch.from_numpy(p.x)
    states = [torch.from_numpy(s)[None] for s in p.states()]
    lengths = None if p.lengths is None else torch.from_numpy(p.lengths.astype(np.int64))

    def call(x: Any, states: list[Any]) -> Any:
        hx = tuple(states) if len(states) > 1 else states[0]
        if lengths is None:
            return mod(x, hx)[0]
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return pad_packed_sequence(mod(packed, hx)[0], total_length=p.shape.T)[0]

    with torch.inference_mode():
        agree("torch", call(x, states).numpy(), p)
    return _torch_runner(torch, call, x, states, mod, mode, p.dy)


def ort_runner(p: Problem, mode: str, threads: int | None = 1) -> Runner:
    """ONNX Runtime on :func:`onnx_model.model_bytes`, ``threads`` intra-op threads and
    one inter-op thread (None: the session's defaults), forward only (ONNX
    Runtime's inference sessions have no backward).  With ``p.lengths``, fed as
    the model's ``sequence_lens``."""
    if mode != "fwd":
        raise Unavailable(NOT_APPLICABLE)
    try:
        import onnx  # noqa: F401  (the model builder)
        import onnxruntime as ort
    except ImportError as exc:
        raise Unavailable(f"{exc.name} not installed") from None
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if threads != 1:
        # ONNX Runtime's pool threads spin between runs and starve whatever the
        # report times next in this process (onnxruntime#13808): with more than
        # one thread they wait passively here.  Its own times may be a little
        # higher than in a process of its own.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_model.model_bytes(p), opts,
                                providers=["CPUExecutionProvider"])
    feed = onnx_model.feed(p)
    agree("ort", sess.run(["Y"], feed)[0][:, 0], p)
    return lambda: sess.run(["Y"], feed)


def _torch_runner(torch: Any, call: Callable[[Any, list[Any]], Any], x: Any, states: list[Any],
                 module: Any, mode: str, dy: np.ndarray) -> Runner:
    """The runner of a PyTorch ``call(x, states) -> y``: forward under
    ``torch.inference_mode()``; forward+backward with ``y.backward(dy)`` and gradients
    for the input, the initial states and ``module``'s parameters."""
    if mode == "fwd":
        def run() -> Any:
            with torch.inference_mode():
                return call(x, states)
        return run

    dy_t = torch.from_numpy(dy)

    def run_bwd() -> Any:
        xg = x.detach().requires_grad_(True)
        sg = [s.detach().requires_grad_(True) for s in states]
        module.zero_grad(set_to_none=True)
        call(xg, sg).backward(dy_t)
        return xg.grad
    return run_bwd


def _torch_lstm_peer(p: Problem, threads: int | None, what: str) -> Any:
    """torch at ``threads``, for a peer of ``what`` that runs fixed-length LSTM problems
    only (Unavailable for others)."""
    torch = _torch()
    if p.cell != "lstm":
        raise Unavailable(f"{what} is an LSTM's, not {p.cell}'s")
    if p.lengths is not None:
        raise Unavailable(f"variable lengths: the {what} peer runs full sequences")
    set_torch_threads(threads)
    return torch


# ----------------------------------------------------------------------------
# the layer-normalized LSTM written in PyTorch the way a user would (issue 12)
#
# PyTorch has no normalized LSTM: users write one after the ``LayerNormLSTMCell`` of
# its ``benchmarks/fastrnns/custom_lstms.py``, a cell of ``nn.LayerNorm``s scripted
# with TorchScript, and loop over time in a scripted layer.  Ours differs in what it
# carries: ``c' = f * c + i * g`` itself (custom_lstms carries ``LN(c')``), which
# costs the same.  The biases ``b_ih + b_hh`` go into the LN biases, as in
# custom_lstms (no separate bias): ``LN(v) + b = v_hat * γ + (β + b)``.

def torch_ln_lstm(torch: Any, I: int, H: int, eps: float) -> tuple[Any, bool]:
    """The normalized LSTM layer in PyTorch, ``layer(x, (h0, c0)) -> (y, (h, c))``, and
    whether it is TorchScript (True) or, when scripting fails, the same modules run
    eagerly (a Python loop over time).

    Its parameters: ``cell.weight_ih (4*H, I)``, ``cell.weight_hh (4*H, H)`` and the
    ``nn.LayerNorm`` s ``cell.layernorm_i``, ``cell.layernorm_h`` (4*H) and
    ``cell.layernorm_c`` (H), initialised by PyTorch.
    """
    nn = torch.nn

    class LayerNormLSTMCell(nn.Module):
        """custom_lstms' cell, carrying the un-normalized c (fastcells' equations)."""

        def __init__(self, input_size: int, hidden_size: int, eps: float):
            super().__init__()
            self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
            self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
            # the LayerNorms' biases are the cell's biases
            self.layernorm_i = nn.LayerNorm(4 * hidden_size, eps=eps)
            self.layernorm_h = nn.LayerNorm(4 * hidden_size, eps=eps)
            self.layernorm_c = nn.LayerNorm(hidden_size, eps=eps)

        def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            hx, cx = state
            gates = (self.layernorm_i(torch.mm(x, self.weight_ih.t()))
                     + self.layernorm_h(torch.mm(hx, self.weight_hh.t())))
            ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
            cy = (torch.sigmoid(forgetgate) * cx
                  + torch.sigmoid(ingate) * torch.tanh(cellgate))
            hy = torch.sigmoid(outgate) * torch.tanh(self.layernorm_c(cy))
            return hy, (hy, cy)

    class LSTMLayer(nn.Module):
        """custom_lstms' layer: the cell over time."""

        def __init__(self, cell: LayerNormLSTMCell):
            super().__init__()
            self.cell = cell

        def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            outputs: list[torch.Tensor] = []
            for x_t in x.unbind(0):
                out, state = self.cell(x_t, state)
                outputs.append(out)
            return torch.stack(outputs), state

    layer = LSTMLayer(LayerNormLSTMCell(I, H, eps))
    try:
        with warnings.catch_warnings():     # torch.jit.script is deprecated in torch 2.x
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(layer), True
    except Exception:           # TorchScript gone or refusing: the same modules, eagerly
        return layer, False


def torch_ln_lstm_runner(p: Problem, mode: str, threads: int | None = 1, *,
                         layer_norm: LayerNormWeights | None = None,
                         layer_norm_eps: float = 1e-5) -> Runner:
    """The layer-normalized LSTM of :func:`torch_ln_lstm` (TorchScript) with ``p``'s
    weights and ``layer_norm`` (default ``p.layer_norm``: see
    ``fastcells.bench.make_problem(..., layer_norm=True)``), timed as
    :func:`torch_runner` times ``nn.LSTM``; checked against the float64
    ``fastcells.reference.lstm_forward(..., layer_norm=...)`` first (Unavailable if
    they differ by more than ``PEER_TOL``).  Fixed-length LSTM problems only."""
    torch = _torch_lstm_peer(p, threads, "the layer-normalized LSTM")
    if layer_norm is None and p.layer_norm is None:
        raise Unavailable("the layer-normalized LSTM peer needs a problem with layer_norm")
    ln = LayerNormWeights(*(p.layer_norm if layer_norm is None else layer_norm))
    layer, _ = torch_ln_lstm(torch, p.shape.I, p.shape.H, layer_norm_eps)
    cell = layer.cell
    with torch.no_grad():
        for param, value in ((cell.weight_ih, p.W_ih), (cell.weight_hh, p.W_hh),
                             (cell.layernorm_i.weight, ln.ih_weight),
                             (cell.layernorm_i.bias, ln.ih_bias + p.b_ih),
                             (cell.layernorm_h.weight, ln.hh_weight),
                             (cell.layernorm_h.bias, ln.hh_bias + p.b_hh),
                             (cell.layernorm_c.weight, ln.c_weight),
                             (cell.layernorm_c.bias, ln.c_bias)):
            param.copy_(torch.from_numpy(np.asarray(value, np.float32)))
    x = torch.from_numpy(p.x)
    states = [torch.from_numpy(s) for s in p.states()]

    def call(x: Any, states: list[Any]) -> Any:
        return layer(x, (states[0], states[1]))[0]

    with torch.inference_mode():
        y = call(x, states).numpy()
    want = reference.lstm_forward(*p.args(np.float64), layer_norm=ln,
                                  layer_norm_eps=layer_norm_eps).y
    _, rel = errors({"y": y}, {"y": want})
    if not rel <= PEER_TOL:
        raise Unavailable(f"torch (layer norm) disagrees with fastcells.reference: relative "
                          f"error {rel:.2e}")
    return _torch_runner(torch, call, x, states, layer, mode, p.dy)


# ----------------------------------------------------------------------------
# PyTorch's LSTM with projection (issue 12): torch.nn.LSTM(proj_size=P)


def torch_proj_runner(p: Problem, mode: str, threads: int | None = 1) -> Runner:
    """``torch.nn.LSTM(I, H, proj_size=P)`` with the weights of ``p`` (an LSTM problem
    with ``W_hr``, see ``make_problem(..., proj_size=)``), timed as :func:`torch_runner`
    times ``nn.LSTM``; Unavailable if its ``y`` disagrees with fastcells'.  Fixed-length
    problems only."""
    torch = _torch_lstm_peer(p, threads, "proj_size")
    if p.W_hr is None:
        raise Unavailable("the problem has no projection (W_hr)")
    mod = torch.nn.LSTM(p.shape.I, p.shape.H, proj_size=p.proj_size)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", p.W_ih), ("weight_hh_l0", p.W_hh),
                            ("bias_ih_l0", p.b_ih), ("bias_hh_l0", p.b_hh),
                            ("weight_hr_l0", p.W_hr)):
            getattr(mod, name).copy_(torch.from_numpy(value))
    x = torch.from_numpy(p.x)
    states = [torch.from_numpy(s)[None] for s in p.states()]

    def call(x: Any, states: list[Any]) -> Any:
        return mod(x, (states[0], states[1]))[0]

    with torch.inference_mode(), warnings.catch_warnings():
        # said once per process, on the first call: PyTorch runs its own LSTM code then
        warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
        y = call(x, states).numpy()
    agree("torch (proj_size)", y, p)
    return _torch_runner(torch, call, x, states, mod, mode, p.dy)


#: the peers' runners, by system name (``fastcells.bench.PEERS``)
RUNNERS: dict[str, Callable[[Problem, str, int | None], Runner]] = {"torch": torch_runner,
                                                                    "ort": ort_runner}
#: the peers of a layer-normalized problem (``p.layer_norm``), by the same names
LAYER_NORM_RUNNERS: dict[str, Callable[[Problem, str, int | None], Runner]] = {
    "torch": torch_ln_lstm_runner}
#: the peers of an LSTM problem with projection (``p.W_hr``); ONNX has none
PROJ_RUNNERS: dict[str, Callable[[Problem, str, int | None], Runner]] = {
    "torch": torch_proj_runner}
#: how each peer is set to a thread count (None: its default)
SET_THREADS: dict[str, Callable[[int | None], None]] = {"torch": set_torch_threads,
                                                        "ort": _session_threads}
