"""LSTM peepholes (reference by finite differences, kernels against the reference)
and the chunked input projection of inference (same numbers, bounded memory)."""
import tracemalloc

import numpy as np
import pytest

import fastcells
import fastcells._packing as packing
from fastcells import reference

FD_EPS = 1e-6          # central-difference step (float64)
FD_RTOL = 1e-6         # finite differences vs analytic, relative to the largest gradient
KERNEL_FWD_TOL = 1e-5  # float32 kernels vs float64 reference, relative to max(1, |ref|)
KERNEL_GRAD_TOL = 1e-4

LENGTHS = [None, np.array([4, 0, 2])]


def _problem(rng, T=4, B=3, I=3, H=2, dtype=np.float64):
    W = lambda *s: (rng.standard_normal(s) * 0.5).astype(dtype)  # noqa: E731
    return dict(x=W(T, B, I), W_ih=W(4 * H, I), W_hh=W(4 * H, H), b_ih=W(4 * H),
                b_hh=W(4 * H), h0=W(B, H), c0=W(B, H), peephole=W(3 * H))


def _loss_weights(rng, T, B, H):
    return rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))


def _close(a, ref, tol):
    assert a.shape == ref.shape
    assert np.max(np.abs(a - ref), initial=0) <= tol * max(1.0, np.max(np.abs(ref), initial=0))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "lengths"])
def test_reference_peephole_gradients_match_finite_differences(reverse, lengths):
    rng = np.random.default_rng(7)
    p = _problem(rng)
    Wy, Wh, Wc = _loss_weights(rng, 4, 3, 2)

    def loss(**change):
        r = reference.lstm_forward(**{**p, **change}, lengths=lengths, reverse=reverse)
        return (r.y * Wy).sum() + (r.h * Wh).sum() + (r.c * Wc).sum()

    out = reference.lstm_forward(**p, lengths=lengths, reverse=reverse, training=True)
    g = reference.lstm_backward(out.cache, Wy, Wh, Wc)
    assert isinstance(g, fastcells.PeepholeLSTMGradients)
    for name, grad in [("peephole", g.dpeephole), ("c0", g.dc0), ("W_hh", g.dW_hh),
                       ("x", g.dx)]:
        fd = np.zeros_like(p[name])
        for k in np.ndindex(fd.shape):
            plus, minus = p[name].copy(), p[name].copy()
            plus[k] += FD_EPS
            minus[k] -= FD_EPS
            fd[k] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * FD_EPS)
        assert np.max(np.abs(fd - grad)) <= FD_RTOL * max(1.0, np.max(np.abs(fd))), name


def test_zero_peepholes_equal_plain_lstm():
    p = _problem(np.random.default_rng(3))
    plain = reference.lstm_forward(**{**p, "peephole": None})
    zero = reference.lstm_forward(**{**p, "peephole": np.zeros_like(p["peephole"])})
    np.testing.assert_array_equal(plain.y, zero.y)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "lengths"])
@pytest.mark.parametrize("isa", fastcells._kernels.isa_available())
def test_kernel_peephole_matches_reference(isa, reverse, lengths):
    rng = np.random.default_rng(11)
    p = _problem(rng)
    Wy, Wh, Wc = _loss_weights(rng, 4, 3, 2)
    ref = reference.lstm_forward(**p, lengths=lengths, reverse=reverse, training=True)
    gref = reference.lstm_backward(ref.cache, Wy, Wh, Wc)
    previous = fastcells._kernels.get_isa()
    fastcells._kernels.set_isa(isa)
    try:
        out = fastcells.lstm_forward(**p, lengths=lengths, reverse=reverse, training=True)
        g = fastcells.lstm_backward(out.cache, Wy, Wh, Wc)
    finally:
        fastcells._kernels.set_isa(previous)
    for name in ("y", "h", "c"):
        _close(getattr(out, name), getattr(ref, name), KERNEL_FWD_TOL)
    assert type(g) is type(gref)
    for name in g._fields:
        _close(getattr(g, name), getattr(gref, name), KERNEL_GRAD_TOL)


def test_peephole_rejected_with_a_clear_message():
    p = _problem(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"peephole: expected shape \(3\*H,\) = \(6,\), got \(4,\)"):
        fastcells.lstm_forward(**{**p, "peephole": np.zeros(4)})
    with pytest.raises(TypeError, match="peephole"):
        fastcells.lstm_forward(**{**p, "peephole": np.zeros(6, dtype=int)})


def test_peephole_empty_sequence_has_zero_gradient():
    p = _problem(np.random.default_rng(0), T=0)
    for module in (fastcells, reference):
        out = module.lstm_forward(**p, training=True)
        g = module.lstm_backward(out.cache)
        assert g.dpeephole.shape == (6,) and not g.dpeephole.any()


#: (T, I): the projection's paths, packed (short and blocked depth) and unpacked
PROJECTIONS = {"packed": (23, 4), "packed-deep": (50, 600), "unpacked": (9, 300)}


def test_the_chunk_cases_cover_every_projection_path():
    paths = {packing.unpacked_projection(T * 3, I) for T, I in PROJECTIONS.values()}
    assert paths == {True, False}
    assert max(I for _, I in PROJECTIONS.values()) > 512   # more than one k block


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, np.array([9, 7, 0])], ids=["full", "lengths"])
@pytest.mark.parametrize("path", list(PROJECTIONS))
def test_chunked_inference_equals_one_projection(monkeypatch, cell, reverse, lengths, path):
    """Inference projects the input in chunks of time; training in one piece. Both must
    give the same numbers bit for bit, whatever the chunk size."""
    rng = np.random.default_rng(5)
    G, H = fastcells._checks.GATES[cell], 5
    T, I = PROJECTIONS[path]
    x = rng.standard_normal((T, 3, I), dtype=np.float32)
    W_ih = rng.standard_normal((G * H, I), dtype=np.float32) / np.float32(np.sqrt(I))
    W_hh = rng.standard_normal((G * H, H), dtype=np.float32) * 0.5
    kw = {"linear_before_reset": False} if cell == "gru" else {}
    forward = getattr(fastcells, f"{cell}_forward")
    whole = forward(x, W_ih, W_hh, lengths=lengths, reverse=reverse, training=True, **kw)
    for chunk_floats in (1, 3 * G * H * 4, 10 ** 9):   # 1 step, 4 steps, everything
        monkeypatch.setattr(packing, "CHUNK_FLOATS", chunk_floats)
        out = forward(x, W_ih, W_hh, lengths=lengths, reverse=reverse, **kw)
        np.testing.assert_array_equal(out.y, whole.y)
        np.testing.assert_array_equal(out.h, whole.h)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_batch_one_chunks_never_leave_a_lone_step(monkeypatch, cell, reverse):
    """Batch 1, T = 4k + 1 steps in chunks of 4: the last step joins the chunk before
    it (a one-row product is the GEMV, which would change the bits)."""
    rng = np.random.default_rng(6)
    G, H, T = fastcells._checks.GATES[cell], 5, 41
    I = 40                    # deep enough for the GEMV's interleaved sums to differ
    x = rng.standard_normal((T, 1, I), dtype=np.float32)
    W_ih = rng.standard_normal((G * H, I), dtype=np.float32) / np.float32(np.sqrt(I))
    W_hh = rng.standard_normal((G * H, H), dtype=np.float32) * 0.5
    assert not packing.unpacked_projection(T, I)       # the packed projection
    forward = getattr(fastcells, f"{cell}_forward")
    whole = forward(x, W_ih, W_hh, reverse=reverse, training=True)
    for steps in (1, 4):      # one step per chunk asked for: two given
        monkeypatch.setattr(packing, "CHUNK_FLOATS", G * H * steps)
        out = forward(x, W_ih, W_hh, reverse=reverse)
        np.testing.assert_array_equal(out.y, whole.y, err_msg=f"chunks of {steps}")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_inference_memory_does_not_grow_with_T(cell):
    """Inference at T = 10,000 (B = 8, H = 128) allocates at most 1.1x its output."""
    T, B, H = 10_000, 8, 128
    G = fastcells._checks.GATES[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H), dtype=np.float32)
    W_ih = rng.standard_normal((G * H, H), dtype=np.float32) * 0.1
    W_hh = rng.standard_normal((G * H, H), dtype=np.float32) * 0.1
    forward = getattr(fastcells, f"{cell}_forward")
    forward(x[:2], W_ih, W_hh)  # warm caches and lazy imports outside the measurement
    tracemalloc.start()
    try:
        out = forward(x, W_ih, W_hh)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.1 * out.y.nbytes, f"peak {peak / out.y.nbytes:.3f}x the output"


def test_peephole_gradient_with_lengths_ignores_stale_memory():
    """Masked steps never write the saved cell states; dpeephole must not pick up
    whatever the allocator left there (0 * inf is NaN)."""
    rng = np.random.default_rng(9)
    p = {k: v.astype(np.float32) for k, v in _problem(rng, T=6, B=3, I=3, H=5).items()}
    lengths = np.array([6, 2, 0])
    for _ in range(3):
        junk = [np.full(6 * 3 * 5, np.inf, np.float32) for _ in range(50)]
        del junk   # freed blocks full of inf, likely reused by the next allocation
        out = fastcells.lstm_forward(**p, lengths=lengths, training=True)
        g = fastcells.lstm_backward(out.cache, dy=np.ones_like(out.y))
        assert np.isfinite(g.dpeephole).all()
        ref = reference.lstm_backward(
            reference.lstm_forward(**{k: v.astype(np.float64) for k, v in p.items()},
                                   lengths=lengths, training=True).cache,
            dy=np.ones_like(out.y, dtype=np.float64))
        _close(g.dpeephole, ref.dpeephole, KERNEL_GRAD_TOL)
