"""functional.Stepper: one step at a time gives the sequence call's numbers.

Bit for bit where both multiply the same way (packed products: batch > 1 and a
projection of more rows than the unpacked product takes); a short sequence call
multiplies unpacked, which sums in another order, so there the two agree to
float32 rounding (STEP_TOL)."""
import numpy as np
import pytest
from conftest import assert_close

import fastcells
from fastcells.functional import Stepper

#: Stepper vs an unpacked batch-1 sequence call: a few float32 ulps per step
STEP_TOL = 1e-6

VARIANTS = [
    ("rnn", {}), ("rnn", {"nonlinearity": "relu"}),
    ("gru", {}), ("gru", {"linear_before_reset": False}),
    ("lstm", {}), ("lstm", {"peephole": True}),
]


def _weights(rng, cell, I, H, bias=True):
    G = fastcells._checks.GATES[cell]
    w = [rng.standard_normal((G * H, I)).astype(np.float32) * 0.4,
         rng.standard_normal((G * H, H)).astype(np.float32) * 0.4]
    w += [rng.standard_normal(G * H).astype(np.float32) for _ in range(2)] if bias else [None, None]
    return w


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T,B", [(9, 1), (4, 4), (9, 4)])
@pytest.mark.parametrize("cell,options", VARIANTS)
def test_steps_equal_the_sequence_call(cell, options, T, B, bias):
    rng = np.random.default_rng(2)
    I, H = 5, 17
    packed = B > 1 and not fastcells._packing.unpacked_projection(T * B, I)
    weights = _weights(rng, cell, I, H, bias)
    kw = dict(options)
    if kw.pop("peephole", False):
        kw["peephole"] = rng.standard_normal(3 * H).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(2)]
    n_states = 2 if cell == "lstm" else 1
    whole = getattr(fastcells, f"{cell}_forward")(x, *weights, *state[:n_states], **kw)
    step = Stepper(cell, *weights, **kw)
    s = tuple(a.copy() for a in state[:n_states])
    kept = tuple(a.copy() for a in s)
    same = (lambda a, e: np.testing.assert_array_equal(a, e)) if packed else (
        lambda a, e: assert_close(a, e, STEP_TOL))
    for t in range(T):
        out = step(x[t], *s)
        s = out if isinstance(out, tuple) else (out,)
        same(s[0], whole.y[t])
    same(s[0], whole.h)
    if cell == "lstm":
        same(s[1], whole.c)
    for a, b in zip(state, kept):        # the caller's states were not written
        np.testing.assert_array_equal(a, b)


def test_stepper_converts_and_starts_from_zeros():
    rng = np.random.default_rng(0)
    weights = _weights(rng, "gru", 3, 4)
    x = rng.standard_normal((1, 2, 3))  # float64, converted
    h = Stepper("gru", *weights)(x[0])
    np.testing.assert_array_equal(h, fastcells.gru_forward(x.astype(np.float32), *weights).h)
    assert h.dtype == np.float32
    assert Stepper("gru", *weights)(np.zeros((0, 3), np.float32)).shape == (0, 4)


def test_stepper_keeps_the_weights_it_was_built_with():
    rng = np.random.default_rng(1)
    weights = _weights(rng, "lstm", 3, 4)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    step = Stepper("lstm", *weights)
    before = step(x)
    for w in weights:
        w *= 3
    np.testing.assert_array_equal(step(x)[0], before[0])


def test_stepper_bad_input_names_the_argument():
    rng = np.random.default_rng(0)
    weights = _weights(rng, "lstm", 3, 4)
    with pytest.raises(ValueError, match=r"W_hh: expected shape \(4\*H, H\)"):
        Stepper("lstm", weights[0], weights[1][:, :3], *weights[2:])
    with pytest.raises(ValueError, match="cell"):
        Stepper("elman", *weights)
    step = Stepper("lstm", *weights)
    with pytest.raises(ValueError, match=r"x_t: expected shape \(B, I\) = \(B, 3\), got \(2, 4\)"):
        step(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="x_t"):
        step(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"h: expected shape \(B, H\) = \(2, 4\)"):
        step(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="c: only LSTM"):
        Stepper("gru", *_weights(rng, "gru", 3, 4))(np.zeros((2, 3)), None, np.zeros((2, 4)))


def test_a_shared_stepper_is_thread_safe():
    """Threads stepping one Stepper with different batch sizes get the serial numbers
    (the kept scratch serves one call at a time; others get their own)."""
    import threading

    rng = np.random.default_rng(4)
    weights = _weights(rng, "lstm", 8, 64)
    step = Stepper("lstm", *weights)
    xs = {B: rng.standard_normal((40, B, 8)).astype(np.float32) for B in (1, 8)}

    def run(B, out):
        h = c = None
        for t in range(40):
            h, c = step(xs[B][t], h, c)
        out[B] = h

    serial, threaded = {}, {}
    for B in xs:
        run(B, serial)
    for _ in range(20):
        threads = [threading.Thread(target=run, args=(B, threaded)) for B in xs]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for B in xs:
            np.testing.assert_array_equal(threaded[B], serial[B])


def test_gru_stepper_copies_b_hn():
    rng = np.random.default_rng(5)
    weights = _weights(rng, "gru", 3, 4)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    step = Stepper("gru", *weights)
    before = step(x)
    weights[3] += 1          # b_hh, edited after the Stepper was built
    np.testing.assert_array_equal(step(x), before)


# ----------------------------------------------------------------------------
# Stepper.forward: whole sequences with the prepared weights (serving)


def _variant(rng, cell, options, I, H):
    kw = dict(options)
    if kw.pop("peephole", False):
        kw["peephole"] = rng.standard_normal(3 * H).astype(np.float32)
    return _weights(rng, cell, I, H), kw


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("T,B", [(40, 1), (9, 4), (3, 2), (5, 1), (60, 3)])
@pytest.mark.parametrize("cell,options", VARIANTS)
def test_forward_equals_the_sequence_call(cell, options, T, B, reverse, monkeypatch):
    """Same bits as the functional call where both multiply packed; within STEP_TOL
    where the call multiplies a few rows unpacked.  (60, 3) runs in chunks of a few
    steps (CHUNK_FLOATS made small), both here and in the functional call."""
    fn = fastcells._packing
    chunked = []
    if T == 60:
        monkeypatch.setattr(fn, "CHUNK_FLOATS", 1024)
        real = fn.inference_chunks
        monkeypatch.setattr(fn, "inference_chunks", lambda *a: chunked.append(1) or real(*a))
    rng = np.random.default_rng(6)
    I, H = 5, 17
    weights, kw = _variant(rng, cell, options, I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    n_states = 2 if cell == "lstm" else 1
    state = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(n_states)]
    lengths = rng.integers(0, T + 1, B) if B > 1 else None
    kept = [a.copy() for a in [x, *state, *weights]]
    want = getattr(fastcells, f"{cell}_forward")(x, *weights, *state, lengths=lengths,
                                                  reverse=reverse, **kw)
    got = Stepper(cell, *weights, **kw).forward(x, *state, lengths=lengths, reverse=reverse)
    assert type(got) is type(want) and got.cache is None
    assert len(chunked) == (2 if T == 60 else 0)       # both calls chunked
    packed = not fn.unpacked_projection(T * B, I) and fn.packs_forward(
        fastcells._checks.ForwardArgs(*[None] * 9, T, B, I, H, 1))
    for name in want._fields[:-1]:
        if packed:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)
        else:
            assert_close(getattr(got, name), getattr(want, name), STEP_TOL, name)
    for a, b in zip([x, *state, *weights], kept):     # nothing of the caller's written
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,options", VARIANTS)
def test_forward_equals_stepping(cell, options):
    # batch > 1: one packed projection of every step is the per-step one, row by row
    rng = np.random.default_rng(7)
    weights, kw = _variant(rng, cell, options, 6, 20)
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    step = Stepper(cell, *weights, **kw)
    whole = step.forward(x)
    s = ()
    for t in range(x.shape[0]):
        out = step(x[t], *s)
        s = out if isinstance(out, tuple) else (out,)
        np.testing.assert_array_equal(s[0], whole.y[t])
    np.testing.assert_array_equal(s[0], whole.h)


def test_forward_empty_and_converted_inputs():
    rng = np.random.default_rng(8)
    weights = _weights(rng, "lstm", 3, 4)
    step = Stepper("lstm", *weights)
    h0 = rng.standard_normal((2, 4))
    out = step.forward(np.zeros((0, 2, 3)), h0)          # float64, converted; T = 0
    assert out.y.shape == (0, 2, 4) and out.y.dtype == np.float32
    np.testing.assert_array_equal(out.h, h0.astype(np.float32))
    assert step.forward(np.zeros((5, 0, 3), np.float32)).y.shape == (5, 0, 4)
    x = rng.standard_normal((20, 2, 3))
    np.testing.assert_array_equal(step.forward(x).y, step.forward(x.astype(np.float32)).y)


def test_forward_bad_input_names_the_argument():
    rng = np.random.default_rng(9)
    step = Stepper("gru", *_weights(rng, "gru", 3, 4))
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(T, B, I\) = \(5, 2, 3\), "
                                         r"got \(5, 2, 4\)"):
        step.forward(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x: expected a 3-D array of shape \(T, B, I\), "
                                         r"got 2-D array of shape \(2, 3\)"):
        step.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="x"):
        step.forward(x.astype(np.int32))
    with pytest.raises(ValueError, match=r"h0: expected shape \(B, H\) = \(2, 4\), got \(1, 4\)"):
        step.forward(x, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="c0: only LSTM"):
        step.forward(x, None, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, T\] = \[0, 5\]"):
        step.forward(x, lengths=np.array([6, 1]))
    with pytest.raises(TypeError, match="reverse"):
        step.forward(x, reverse="yes")


def test_forward_from_threads_gives_the_serial_numbers():
    import threading

    rng = np.random.default_rng(10)
    step = Stepper("lstm", *_weights(rng, "lstm", 8, 64))
    xs = [rng.standard_normal((30, B, 8)).astype(np.float32) for B in (1, 4, 1, 4)]
    serial = [step.forward(x).y for x in xs]
    for _ in range(10):
        got = [None] * len(xs)

        def run(i, got=got):
            got[i] = step.forward(xs[i]).y
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for g, s in zip(got, serial):
            np.testing.assert_array_equal(g, s)
