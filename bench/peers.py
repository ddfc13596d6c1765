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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastcells.bench import NOT_APPLICABLE, Problem, Runner, Unavailable, agree

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
    if mode == "fwd":
        def run() -> Any:
            with torch.inference_mode():
                return call(x, states)
        return run

    dy = torch.from_numpy(p.dy)

    def run_bwd() -> Any:
        xg = x.detach().requires_grad_(True)
        sg = [s.detach().requires_grad_(True) for s in states]
        mod.zero_grad(set_to_none=True)
        call(xg, sg).backward(dy)
        return xg.grad
    return run_bwd


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


#: the peers' runners, by system name (``fastcells.bench.PEERS``)
RUNNERS: dict[str, Callable[[Problem, str, int | None], Runner]] = {"torch": torch_runner,
                                                                    "ort": ort_runner}
#: how each peer is set to a thread count (None: its default)
SET_THREADS: dict[str, Callable[[int | None], None]] = {"torch": set_torch_threads,
                                                        "ort": _session_threads}
