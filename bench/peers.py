"""The peers' runners: PyTorch and ONNX Runtime on a benchmark problem, one thread each.

Each runner builds everything outside the timed call (module, session,
tensors), checks the peer's ``y`` against fastcells' (``fastcells.bench.agree``)
and returns a zero-argument callable, or raises ``fastcells.bench.Unavailable``
saying why the peer cannot run (not installed, inference only, disagrees).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastcells.bench import NOT_APPLICABLE, Problem, Runner, Unavailable, agree

from . import onnx_model

#: PyTorch's parameter name of each weight (single layer, forward direction)
TORCH_NAMES = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0",
               "b_hh": "bias_hh_l0"}


def torch_runner(p: Problem, mode: str) -> Runner:
    """``torch.nn.RNN/GRU/LSTM`` with ``p``'s weights: forward under
    ``torch.inference_mode()``; forward+backward with ``y.backward(dy)`` and
    gradients for the input, the initial states and the parameters (what
    fastcells computes)."""
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    torch.set_num_threads(1)
    # torch.nn names its layers as fastcells does: RNN, GRU, LSTM
    mod = getattr(torch.nn, p.spec.layer)(p.shape.I, p.shape.H)
    with torch.no_grad():
        for ours, theirs in TORCH_NAMES.items():
            getattr(mod, theirs).copy_(torch.from_numpy(getattr(p, ours)))
    x = torch.from_numpy(p.x)
    states = [torch.from_numpy(s)[None] for s in p.states()]

    def call(x: Any, states: list) -> Any:
        return mod(x, tuple(states) if len(states) > 1 else states[0])[0]

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


def ort_runner(p: Problem, mode: str) -> Runner:
    """ONNX Runtime on :func:`onnx_model.model_bytes`, one intra- and one inter-op
    thread, forward only (ONNX Runtime's inference sessions have no backward)."""
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
    sess = ort.InferenceSession(onnx_model.model_bytes(p), opts,
                                providers=["CPUExecutionProvider"])
    feed = {name: s[None] for name, s in zip(onnx_model.state_inputs(p), p.states())}
    feed["X"] = p.x
    agree("ort", sess.run(["Y"], feed)[0][:, 0], p)
    return lambda: sess.run(["Y"], feed)


#: the peers' runners, by system name (``fastcells.bench.PEERS``)
RUNNERS: dict[str, Callable[[Problem, str], Runner]] = {"torch": torch_runner,
                                                        "ort": ort_runner}
