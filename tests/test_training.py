"""Training pieces: losses, SGD/Adam, clip_grad_norm, truncated BPTT.

Against torch when installed (a 20-step training run must end with the same
weights); otherwise against the update rules and formulas written out here.
"""
import math

import numpy as np
import pytest

import fastcells
from fastcells import losses, optim

#: fastcells vs torch: weights after the same training run agree to this
WEIGHT_TOL = 1e-4
#: single float32 computations (losses, one optimizer step, a norm)
TOL = 1e-5
#: analytic vs central-difference gradients of a loss (float32 inputs, float64 check)
FD_EPS, FD_RTOL = 1e-3, 1e-3

T, B, I, H = 8, 4, 3, 6
STEPS = 20


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def to_torch(torch, layer, module):
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return module


def data(rng):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    target = np.sin(np.cumsum(x[..., :1], axis=0)).astype(np.float32)
    return x, target


# ----------------------------------------------------------------------------
# losses


def test_losses_match_torch(torch):
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((2, T, B, 5)).astype(np.float32)
    p = torch.tensor(pred, requires_grad=True)
    ref = torch.nn.functional.mse_loss(p, torch.tensor(target))
    ref.backward()
    loss, grad = losses.mse(pred, target)
    assert isinstance(loss, float) and grad.dtype == np.float32
    np.testing.assert_allclose(loss, ref.item(), rtol=TOL)
    np.testing.assert_allclose(grad, p.grad.numpy(), rtol=TOL, atol=1e-9)

    logits = (rng.standard_normal((T, B, 5)) * 30).astype(np.float32)  # large: stability
    labels = rng.integers(0, 5, (T, B))
    z = torch.tensor(logits.reshape(-1, 5), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(z, torch.tensor(labels.reshape(-1)))
    ref.backward()
    loss, grad = losses.cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, ref.item(), rtol=TOL)
    np.testing.assert_allclose(grad.reshape(-1, 5), z.grad.numpy(), atol=TOL)


def test_losses_values_and_gradients():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((2, 4, 3))
    loss, grad = losses.mse(pred, target)
    np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=TOL)
    np.testing.assert_allclose(grad, 2 * (pred - target) / pred.size, rtol=TOL)

    logits = rng.standard_normal((4, 3, 5))
    labels = rng.integers(0, 5, (4, 3))
    loss, grad = losses.cross_entropy(logits, labels)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p, labels[..., None], -1).mean()
    np.testing.assert_allclose(loss, expected, rtol=TOL)
    u = rng.standard_normal(logits.shape)
    fd = (losses.cross_entropy(logits + FD_EPS * u, labels)[0]
          - losses.cross_entropy(logits - FD_EPS * u, labels)[0]) / (2 * FD_EPS)
    np.testing.assert_allclose(np.sum(grad * u), fd, rtol=FD_RTOL)
    # huge logits: no overflow, the right class certain
    loss, grad = losses.cross_entropy(np.array([[1e4, -1e4, 0.0]]), np.array([0]))
    assert loss == 0.0 and np.isfinite(grad).all()


def test_losses_bad_input():
    with pytest.raises(ValueError, match=r"target: expected the shape of pred \(2, 3\), got \(3, 2\)"):
        losses.mse(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="labels: expected an integer array"):
        losses.cross_entropy(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"labels: expected shape logits.shape\[:-1\] = \(2,\)"):
        losses.cross_entropy(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, C\) = \[0, 3\), got 3"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


# ----------------------------------------------------------------------------
# a training run, against torch


def train_fastcells(make_opt, x, target, clip=None):
    lstm = fastcells.LSTM(I, H, 2, seed=0)
    head = fastcells.Linear(H, 1, seed=1)
    opt = make_opt([lstm, head])
    for _ in range(STEPS):
        opt.zero_grad()
        y, _ = lstm(x)
        loss, grad = losses.mse(head(y), target)
        lstm.backward(head.backward(grad))
        if clip is not None:
            fastcells.clip_grad_norm([lstm, head], clip)
        opt.step()
    return lstm, head, loss


def train_torch(torch, lstm, head, make_opt, x, target, clip=None):
    mods = [to_torch(torch, lstm, torch.nn.LSTM(I, H, 2)), to_torch(torch, head, torch.nn.Linear(H, 1))]
    params = [p for m in mods for p in m.parameters()]
    opt = make_opt(params)
    for _ in range(STEPS):
        opt.zero_grad()
        y, _ = mods[0](torch.tensor(x))
        loss = torch.nn.functional.mse_loss(mods[1](y), torch.tensor(target))
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    return mods, loss.item()


OPTIMIZERS = {
    "sgd-momentum": (lambda ls: optim.SGD(ls, lr=0.1, momentum=0.9, weight_decay=1e-3),
                     lambda t, ps: t.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3), None),
    "adam": (lambda ls: optim.Adam(ls, lr=1e-2, weight_decay=1e-3),
             lambda t, ps: t.optim.Adam(ps, lr=1e-2, weight_decay=1e-3), None),
    "adam-clipped": (lambda ls: optim.Adam(ls, lr=1e-2, betas=(0.8, 0.99)),
                     lambda t, ps: t.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99)), 0.05),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_run_matches_torch(torch, name):
    ours, theirs, clip = OPTIMIZERS[name]
    x, target = data(np.random.default_rng(0))
    start = (fastcells.LSTM(I, H, 2, seed=0), fastcells.Linear(H, 1, seed=1))
    mods, loss_t = train_torch(torch, *start, lambda ps: theirs(torch, ps), x, target, clip)
    lstm, head, loss = train_fastcells(ours, x, target, clip)
    first = losses.mse(start[1](start[0](x)[0]), target)[0]
    assert loss < first  # it trained
    np.testing.assert_allclose(loss, loss_t, rtol=1e-4)
    for layer, mod in zip((lstm, head), mods):
        for k, v in mod.state_dict().items():
            np.testing.assert_allclose(layer.parameters()[k], v.numpy(), atol=WEIGHT_TOL, err_msg=k)


# ----------------------------------------------------------------------------
# update rules, written out (always run)


class _Param:
    """A one-parameter layer: what optimizers need (parameters() and grads)."""

    def __init__(self, value):
        self.p = {"w": np.array(value, np.float32)}
        self.grads = {"w": np.zeros_like(self.p["w"])}

    def parameters(self):
        return dict(self.p)

    def zero_grad(self):
        self.grads["w"].fill(0)


GRADS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.2]), np.array([-1.0, 0.0, 1.0])]


def test_sgd_rule():
    layer = _Param([1.0, 2.0, -3.0])
    opt = optim.SGD(layer, lr=0.1, momentum=0.9, weight_decay=0.01)
    p, buf = np.array([1.0, 2.0, -3.0]), None
    for g in GRADS:
        layer.grads["w"][...] = g
        opt.step()
        d = g + 0.01 * p
        buf = d if buf is None else 0.9 * buf + d  # the first step starts the buffer at d
        p = p - 0.1 * buf
        np.testing.assert_allclose(layer.p["w"], p, rtol=TOL)
    opt.zero_grad()
    assert not layer.grads["w"].any()


def test_adam_rule():
    layer = _Param([1.0, 2.0, -3.0])
    opt = optim.Adam(layer, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    p, m, v = np.array([1.0, 2.0, -3.0]), 0.0, 0.0
    for t, g in enumerate(GRADS, start=1):
        layer.grads["w"][...] = g
        opt.step()
        g = g + 0.1 * p
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        p = p - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
        np.testing.assert_allclose(layer.p["w"], p, rtol=TOL)


def test_optimizer_bad_arguments():
    with pytest.raises(ValueError, match="lr: expected a value in"):
        optim.SGD(_Param([1.0]), lr=-1)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam(_Param([1.0]), betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="layers: expected a fastcells layer"):
        optim.Adam([object()])


# ----------------------------------------------------------------------------
# clip_grad_norm


def test_clip_grad_norm_rule():
    a, b = _Param([0.0, 0.0]), _Param([0.0])
    a.grads["w"][...] = [3.0, 0.0]
    b.grads["w"][...] = [4.0]
    assert fastcells.clip_grad_norm([a, b], 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(a.grads["w"], [3.0, 0.0])  # under the limit: untouched
    assert fastcells.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(a.grads["w"], [3.0 / (5.0 + 1e-6), 0.0], rtol=TOL)
    np.testing.assert_allclose(b.grads["w"], [4.0 / (5.0 + 1e-6)], rtol=TOL)
    assert fastcells.clip_grad_norm([a, b], 1.0, norm_type=math.inf) == pytest.approx(0.8, rel=TOL)


def test_clip_grad_norm_matches_torch(torch):
    rng = np.random.default_rng(3)
    lstm, head = fastcells.LSTM(I, H, seed=0), fastcells.Linear(H, 2, seed=0)
    mods = [to_torch(torch, lstm, torch.nn.LSTM(I, H)), to_torch(torch, head, torch.nn.Linear(H, 2))]
    for layer, mod in zip((lstm, head), mods):
        for k, p in mod.named_parameters():
            g = rng.standard_normal(p.shape).astype(np.float32)
            layer.grads[k][...] = g
            p.grad = torch.tensor(g)
    params = [p for m in mods for p in m.parameters()]
    total_t = torch.nn.utils.clip_grad_norm_(params, 2.0).item()
    total = fastcells.clip_grad_norm([lstm, head], 2.0)
    np.testing.assert_allclose(total, total_t, rtol=TOL)
    for layer, mod in zip((lstm, head), mods):
        for k, p in mod.named_parameters():
            np.testing.assert_allclose(layer.grads[k], p.grad.numpy(), rtol=TOL, atol=1e-7)


# ----------------------------------------------------------------------------
# truncated BPTT: carry the state across chunks, stop the gradient there

CHUNK = 3  # T = 8: chunks of 3, 3, 2


def tbptt_fastcells(layer, x, dy):
    """Chunked forward/backward; returns the outputs and the accumulated grads."""
    state, ys = None, []
    for t0 in range(0, T, CHUNK):
        y, (h, c) = layer(x[t0:t0 + CHUNK], state)
        layer.backward(dy[t0:t0 + CHUNK])  # dh0 returned and dropped: the gradient stops here
        state = (h.copy(), c.copy())
        ys.append(y)
    return np.concatenate(ys)


def test_truncated_bptt_matches_torch(torch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    layer = fastcells.LSTM(I, H, 2, seed=0)
    mod = to_torch(torch, layer, torch.nn.LSTM(I, H, 2))
    state = None
    for t0 in range(0, T, CHUNK):
        y, state = mod(torch.tensor(x[t0:t0 + CHUNK]), state)
        (y * torch.tensor(dy[t0:t0 + CHUNK])).sum().backward()
        state = tuple(s.detach() for s in state)
    tbptt_fastcells(layer, x, dy)
    for k, p in mod.named_parameters():
        np.testing.assert_allclose(layer.grads[k], p.grad.numpy(), atol=WEIGHT_TOL, err_msg=k)


def test_truncated_bptt_chunks():
    """Chunked outputs equal the full sequence's; gradients are the sum of per-chunk ones."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    layer = fastcells.LSTM(I, H, 2, seed=0)
    y_full, _ = layer(x)
    layer.zero_grad()
    y = tbptt_fastcells(layer, x, dy)
    np.testing.assert_allclose(y, y_full, atol=TOL)
    chunked = {k: g.copy() for k, g in layer.grads.items()}
    # the same chunks, each backpropagated alone from a fixed initial state
    expected = {k: np.zeros_like(g) for k, g in chunked.items()}
    fresh = fastcells.LSTM(I, H, 2, seed=0)
    state = None
    for t0 in range(0, T, CHUNK):
        fresh.zero_grad()
        _, state = fresh(x[t0:t0 + CHUNK], state)
        fresh.backward(dy[t0:t0 + CHUNK])
        for k in expected:
            expected[k] += fresh.grads[k]
    for k in expected:
        np.testing.assert_allclose(chunked[k], expected[k], atol=TOL, err_msg=k)
    # and they differ from full BPTT: the boundary really stops the gradient
    layer.zero_grad()
    layer(x)
    layer.backward(dy)
    assert not np.allclose(layer.grads["weight_hh_l0"], chunked["weight_hh_l0"], atol=TOL)
