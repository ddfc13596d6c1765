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
    # T*B < 32: the functional call multiplies unpacked, equal to STEP_TOL (its docstring)
    assert_close(h, fastcells.gru_forward(x.astype(np.float32), *weights).h, STEP_TOL)
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


# -- out=: the new state written into the caller's arrays ----------------------------


def _stepper_and_inputs(cell, options, B=3, I=5, H=7, seed=4):
    rng = np.random.default_rng(seed)
    kw = dict(options)
    if kw.pop("peephole", False):
        kw["peephole"] = rng.standard_normal(3 * H).astype(np.float32)
    step = Stepper(cell, *_weights(rng, cell, I, H), **kw)
    x = rng.standard_normal((B, I)).astype(np.float32)
    states = [rng.standard_normal((B, H)).astype(np.float32)
              for _ in range(2 if cell == "lstm" else 1)]
    return step, x, states


def _as_tuple(new):
    return new if isinstance(new, tuple) else (new,)


@pytest.mark.parametrize("zeros", [False, True], ids=["state", "no-state"])
@pytest.mark.parametrize("cell,options", VARIANTS)
def test_out_gives_the_bits_of_new_arrays(cell, options, zeros):
    step, x, states = _stepper_and_inputs(cell, options)
    given = [None] * len(states) if zeros else states
    kept = [s.copy() for s in states]
    want = _as_tuple(step(x, *given))
    # each state into its row of a larger (L, B, H) array, the other rows untouched
    stacks = [np.full((3,) + s.shape, 7.0, np.float32) for s in states]
    outs = tuple(s[1] for s in stacks)
    got = step(x, *given, out=outs if cell == "lstm" else outs[0])
    assert all(g is o for g, o in zip(_as_tuple(got), outs))
    for g, w, s in zip(outs, want, stacks):
        np.testing.assert_array_equal(g, w)
        assert (s[0] == 7).all() and (s[2] == 7).all()
    for s, k in zip(states, kept):            # the old states were not written
        np.testing.assert_array_equal(s, k)


@pytest.mark.parametrize("cell,options", VARIANTS)
def test_out_may_be_the_old_state_itself(cell, options):
    step, x, states = _stepper_and_inputs(cell, options)
    want = _as_tuple(step(x, *states))
    # in place, several steps: each the bits of a step into new arrays
    for _ in range(3):
        got = step(x, *states, out=tuple(states) if cell == "lstm" else states[0])
        for g, s, w in zip(_as_tuple(got), states, want):
            assert g is s
            np.testing.assert_array_equal(s, w)
        want = _as_tuple(step(x, *[s.copy() for s in states]))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_out_may_overlap_its_own_old_state(cell):
    # out one row further along the same buffer as the old state: copied first
    step, x, states = _stepper_and_inputs(cell, {}, B=2)
    bufs = [np.zeros((3,) + s.shape[1:], np.float32) for s in states]
    for b, s in zip(bufs, states):
        b[:2] = s
    want = _as_tuple(step(x, *[b[:2].copy() for b in bufs]))
    outs = tuple(b[1:] for b in bufs)
    step(x, *[b[:2] for b in bufs], out=outs if cell == "lstm" else outs[0])
    for o, w in zip(outs, want):
        np.testing.assert_array_equal(o, w)


def test_lstm_c_out_may_be_the_old_h():
    # c_out shares h's memory: h is copied into h_out before c_out is written
    step, x, (h, c) = _stepper_and_inputs("lstm", {})
    want = step(x, h, c)
    h_out = np.empty_like(h)
    got = step(x, h, c, out=(h_out, h))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_out_sharing_memory_with_an_input_is_refused(cell):
    step, x, states = _stepper_and_inputs(cell, {}, I=7, H=7)
    kept = [a.copy() for a in [x, *states]]
    n = len(states)

    def call(*outs):
        return step(x, *states, out=outs if n == 2 else outs[0])

    fresh = [np.empty_like(s) for s in states]
    cases = [[x] + fresh[1:]]                   # h_out is x_t
    if n == 2:
        cases += [[fresh[0], x],                # c_out is x_t
                  [fresh[0], fresh[0]],         # h_out is c_out
                  [states[1], fresh[1]]]        # h_out is the old c
    for outs in cases:
        with pytest.raises(ValueError, match="out.*share no memory"):
            call(*outs)
        for a, k in zip([x, *states], kept):     # nothing read was written
            np.testing.assert_array_equal(a, k)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_bad_out_is_named(cell):
    step, x, states = _stepper_and_inputs(cell, {}, B=3, H=7)
    good = np.empty((3, 7), np.float32)
    read_only = np.empty((3, 7), np.float32)
    read_only.flags.writeable = False
    bad = [
        (np.empty((3, 7), np.float64), TypeError, "float32"),
        (np.empty((3, 7), np.dtype(">f4") if np.little_endian else "<f4"), TypeError, "float32"),
        ([[0.0] * 7] * 3, TypeError, "float32 ndarray"),
        (np.empty((3, 8), np.float32), ValueError, r"shape \(B, H\) = \(3, 7\)"),
        (np.empty((7, 3), np.float32).T, ValueError, "C-contiguous"),
        (read_only, ValueError, "writable"),
        (np.empty((3, 7), np.float32).view(np.matrix), TypeError, "float32 ndarray"),
    ]
    for o, error, message in bad:
        if cell == "lstm":
            for outs, name in [((o, good), r"out\[0\]"), ((good, o), r"out\[1\]")]:
                with pytest.raises(error, match=f"{name}: expected .*{message}"):
                    step(x, *states, out=outs)
        else:
            with pytest.raises(error, match=f"out: expected .*{message}"):
                step(x, *states, out=o)
    for s in states:                             # with the old state as out, too
        s_bad = s.astype(np.float64)
        with pytest.raises(TypeError, match="out.*float32"):
            step(x, *[s_bad] * len(states), out=tuple([s_bad] * len(states))
                 if cell == "lstm" else s_bad)
    if cell == "lstm":
        for pair in [good, (good,), [good, good], (good, good, good)]:
            with pytest.raises(TypeError, match=r"out: expected a pair \(h_out, c_out\)"):
                step(x, *states, out=pair)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_in_place_state_may_be_the_input_too(cell):
    # in place nothing is written before the kernel, which reads x_t whole (the input
    # projection) before it writes a state: x_t may then be h itself (I == H)
    step, _, states = _stepper_and_inputs(cell, {}, I=7, H=7)
    want = _as_tuple(step(states[0].copy(), *[s.copy() for s in states]))
    got = step(states[0], *states, out=tuple(states) if cell == "lstm" else states[0])
    for g, s, w in zip(_as_tuple(got), states, want):
        assert g is s
        np.testing.assert_array_equal(s, w)
