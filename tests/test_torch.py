"""fastcells against torch.nn.RNN / GRU / LSTM on the same weights (float32).

One bidirectional torch module checks both directions at once: its first
direction is our ``reverse=False`` and its second (``*_reverse`` weights) our
``reverse=True``, each with its own weights and initial state.  ``lengths``
are checked against packed sequences (``pack_padded_sequence(...,
enforce_sorted=False)`` then ``pad_packed_sequence``), whose reverse
direction starts each sequence at its own last step, as ours does.  The loss
``sum(dy*y) + sum(dh*h_n) (+ sum(dc*c_n))`` exercises every upstream gradient.

torch has no GRU with ``linear_before_reset=False``, and its packed sequences
reject zero lengths (those are covered against the reference).
"""
import numpy as np
import pytest
from conftest import assert_close, is_lstm, make_inputs, make_upstream, run_both, state_names

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

#: fastcells (float32) vs torch (float32), relative to max(1, max|torch|)
TORCH_TOL = 1e-5
#: torch module class and constructor options per cell
MODULES = {
    "rnn-tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
    "gru-lbr": (torch.nn.GRU, {}),
    "lstm": (torch.nn.LSTM, {}),
}
#: (T, B, I, H): long with a full batch and odd H; short with a wide hidden size
SHAPES = [(37, 16, 24, 17), (5, 3, 4, 64)]


def torch_param(module, name, direction):
    """The torch parameter of our ``name`` (W_ih, W_hh, b_ih, b_hh), direction 0 or 1."""
    kind = {"W": "weight", "b": "bias"}[name[0]]
    return getattr(module, f"{kind}_{name[2:]}_l0{('', '_reverse')[direction]}", None)


def torch_bidirectional(cell, T, B, I, H, weights, inputs, lengths, upstream):
    """Run the torch module; returns its outputs and gradients as NumPy arrays.

    ``weights[d]``, ``inputs`` (states stacked over the two directions) and
    ``upstream`` (dy of width 2H, states stacked) in torch's layout.
    """
    cls, options = MODULES[cell]
    module = cls(I, H, bias=weights[0]["b_ih"] is not None, bidirectional=True, **options)
    with torch.no_grad():
        for d in range(2):
            for name, value in weights[d].items():
                if value is not None:
                    torch_param(module, name, d).copy_(torch.from_numpy(value))
    leaf = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items() if v is not None}
    states = tuple(leaf.get(f"{s}0") for s in state_names(cell))
    states = None if states[0] is None else (states if is_lstm(cell) else states[0])
    x = leaf["x"]
    if lengths is not None:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.from_numpy(lengths),
                                                    enforce_sorted=False)
    y, final = module(x, states)
    if lengths is not None:
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)
    final = final if is_lstm(cell) else (final,)
    loss = (y * torch.from_numpy(upstream["dy"])).sum()
    for s, value in zip(state_names(cell), final):
        loss = loss + (value * torch.from_numpy(upstream[f"d{s}"])).sum()
    loss.backward()
    outputs = {"y": y, **dict(zip(state_names(cell), final))}
    grads = {f"d{k}": v.grad for k, v in leaf.items()}
    grad = lambda p: None if p is None else p.grad  # noqa: E731
    params = {f"d{k}": [grad(torch_param(module, k, d)) for d in range(2)] for k in weights[0]}
    to_np = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
    return ({k: to_np(v) for k, v in outputs.items()}, {k: to_np(v) for k, v in grads.items()},
            {k: [to_np(t) for t in v] for k, v in params.items()})


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("initial_state", [False, True], ids=["no-h0", "h0"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("cell", list(MODULES))
def test_matches_torch_in_both_directions(cell, shape, bias, initial_state, with_lengths, rng):
    T, B, I, H = shape
    # our inputs per direction: x shared, weights and initial states of their own
    inputs = [make_inputs(cell, rng, T, B, I, H, bias=bias, initial_state=initial_state)
              for _ in range(2)]
    inputs[1]["x"] = inputs[0]["x"]
    upstream = [make_upstream(cell, rng, T, B, H) for _ in range(2)]
    lengths = None
    if with_lengths:   # packed sequences need lengths >= 1: T and 1 both present
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0], lengths[-1] = T, 1

    weight_names = ("W_ih", "W_hh", "b_ih", "b_hh")
    stacked = {"x": inputs[0]["x"]}
    for s in state_names(cell):
        stacked[f"{s}0"] = (np.stack([inputs[d][f"{s}0"] for d in range(2)])
                            if initial_state else None)
    torch_upstream = {"dy": np.concatenate([upstream[0]["dy"], upstream[1]["dy"]], axis=2)}
    for s in state_names(cell):
        torch_upstream[f"d{s}"] = np.stack([upstream[d][f"d{s}"] for d in range(2)])
    t_out, t_grads, t_params = torch_bidirectional(
        cell, T, B, I, H, [{k: inputs[d][k] for k in weight_names} for d in range(2)],
        stacked, lengths, torch_upstream)

    ours = [run_both(cell, inputs[d], upstream[d], lengths=lengths, reverse=bool(d))
            for d in range(2)]
    for d, (out, grads) in enumerate(ours):
        half = slice(d * H, (d + 1) * H)
        assert_close(out.y, t_out["y"][:, :, half], TORCH_TOL, f"y[{d}]")
        for s in state_names(cell):
            assert_close(getattr(out, s), t_out[s][d], TORCH_TOL, f"{s}[{d}]")
            if initial_state:
                assert_close(getattr(grads, f"d{s}0"), t_grads[f"d{s}0"][d], TORCH_TOL,
                             f"d{s}0[{d}]")
        for k in weight_names:
            assert_close(getattr(grads, f"d{k}"), t_params[f"d{k}"][d], TORCH_TOL,
                         f"d{k}[{d}]")
    assert_close(ours[0][1].dx + ours[1][1].dx, t_grads["dx"], TORCH_TOL, "dx")

