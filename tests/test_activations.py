"""The vectorized sigmoid and tanh of csrc/activations_impl.h, on every ISA path.

Specification (csrc/activations.h): within MAX_ULP float32 ulp of the float64
function over the whole float range, NaN in -> NaN out, exact limits; the
tail (n not a multiple of the vector width) gets the same results and
nothing past the end is touched.  In the loops' flush-to-zero mode
(csrc/fpenv.h) subnormal inputs read as zeros and subnormal results become
zeros; everything else is held to the same bound.

Errors are measured in ulps of the float64 value rounded to float32 (for a
reference that rounds to 0, the smallest subnormal).
"""
import numpy as np
import pytest

from fastcells import _kernels

#: accuracy contract, float32 ulps of the correctly rounded value
MAX_ULP = 3.0
#: smallest normal float32: below it, flush-to-zero mode may return zero
TINY = float(np.finfo(np.float32).tiny)
#: bit-pattern stride of the full-range sample (odd, so all mantissa bits vary)
STRIDE = 1021
#: points in the dense sample of [-10, 10], where the activations matter most
DENSE = 1_000_001
#: floats on each side of a branch point that are all tested
AROUND = 1 << 14

FUNCS = ["sigmoid", "tanh"]


def run(name, x, ftz=False):
    out = np.array(x, dtype=np.float32, copy=True)
    getattr(_kernels, name + "_")(out, ftz)
    return out


def reference(name, x):
    """float64 value of the function at float32 points x (scipy-free)."""
    x = np.asarray(x, np.float32).astype(np.float64)
    if name == "tanh":
        return np.tanh(x)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -709: the value is 0
        return 1.0 / (1.0 + np.exp(-x))


def ulp_error(got, ref):
    """|got - ref| in ulps of ref rounded to float32 (NaN where both are NaN)."""
    ref32 = ref.astype(np.float32)
    ulp = np.spacing(np.abs(ref32)).astype(np.float64)
    ulp[np.isinf(ref32)] = np.inf
    with np.errstate(invalid="ignore"):
        err = np.abs(got.astype(np.float64) - ref) / ulp
    err[np.isinf(got) & (got == ref)] = 0.0
    return err


def bits(pattern):
    return np.asarray(pattern, np.uint32).view(np.float32)


def around(value, k=AROUND):
    """All float32 within k of the given float32 value, both signs."""
    b = int(np.float32(value).view(np.uint32))
    pos = bits(np.arange(max(b - k, 0), b + k, dtype=np.uint32))
    return np.concatenate([pos, -pos])


def special_values():
    f = np.finfo(np.float32)
    v = [0.0, 1.0, 0.5, 2.0, 0.625, 9.0, 10.0, 17.0, 20.0, 44.0, 88.0, 88.8, 89.0, 103.9,
         104.0, 110.0, 1e10, float(f.max), float(f.tiny), float(f.smallest_subnormal),
         float(bits(0x007FFFFF)), 1e-20, 2.0 ** -12, np.inf]
    v = np.array(v, np.float32)
    return np.concatenate([v, -v])


@pytest.fixture(scope="module")
def sample():
    """Full range by bit pattern, dense [-10, 10], the branch points, specials."""
    full = bits(np.arange(0, 2**32, STRIDE, dtype=np.uint64).astype(np.uint32))
    parts = [full[~np.isnan(full)], np.linspace(-10, 10, DENSE, dtype=np.float32),
             around(0.625), around(-87.33654), around(-103.97), around(9.01), around(TINY),
             special_values()]
    return np.concatenate(parts)


@pytest.mark.parametrize("name", FUNCS)
def test_within_max_ulp_of_float64(isa, name, sample):
    got = run(name, sample)
    err = ulp_error(got, reference(name, sample))
    worst = int(np.argmax(err))
    assert not np.isnan(got).any(), f"NaN from finite input at x={sample[np.isnan(got)][:5]}"
    assert err[worst] <= MAX_ULP, (
        f"{name} on {isa}: {err[worst]:.2f} ulp at x={sample[worst]!r} "
        f"(got {got[worst]!r}, float64 {reference(name, sample[worst:worst + 1])[0]!r})")


@pytest.mark.parametrize("name", FUNCS)
def test_range_is_never_exceeded(isa, name, sample):
    got = run(name, sample)
    lo = 0.0 if name == "sigmoid" else -1.0
    assert got.min() >= lo and got.max() <= 1.0


@pytest.mark.parametrize("name", FUNCS)
def test_nan_in_nan_out(isa, name):
    nans = bits([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFFFFFFF])
    x = np.concatenate([nans, np.ones(20, np.float32), nans])  # vector body and tail
    got = run(name, x)
    assert np.isnan(got[:5]).all() and np.isnan(got[-5:]).all()
    assert not np.isnan(got[5:-5]).any()


@pytest.mark.parametrize("ftz", [False, True])
def test_limits_are_exact(isa, ftz):
    inf = np.float32(np.inf)
    xs = np.array([inf, -inf, 0.0, -0.0, 20.0, 1e30, -1e30, 120.0, -120.0], np.float32)
    np.testing.assert_array_equal(run("sigmoid", xs, ftz), [1, 0, 0.5, 0.5, 1, 1, 0, 1, 0])
    x = np.array([inf, -inf, 0.0, -0.0, 20.0, -20.0, 1e30, -1e30], np.float32)
    t = run("tanh", x, ftz)
    np.testing.assert_array_equal(t, [1, -1, 0, 0, 1, -1, 1, -1])
    assert not np.signbit(t[2]) and np.signbit(t[3])  # tanh keeps the sign of zero


def test_subnormal_results_are_rounded_not_lost(isa):
    """Without flush-to-zero, sigmoid's far tail is exp(x) down to the last subnormal."""
    x = np.linspace(-104.5, -86.0, 20001, dtype=np.float32)
    ref = reference("sigmoid", x)
    got = run("sigmoid", x)
    assert (got[ref.astype(np.float32) > 0] > 0).all()
    assert ulp_error(got, ref).max() <= MAX_ULP
    tiny = bits(np.arange(1, 1 << 23, 4099, dtype=np.uint32))  # subnormal inputs
    np.testing.assert_array_equal(run("tanh", tiny), tiny)
    np.testing.assert_array_equal(run("tanh", -tiny), -tiny)


@pytest.mark.parametrize("name", FUNCS)
def test_flush_to_zero_mode(isa, name, sample):
    """Subnormal inputs read as zeros, subnormal results become zeros, the rest as above."""
    got = run(name, sample, ftz=True)
    assert not ((got != 0) & (np.abs(got) < TINY)).any(), "subnormal result under FTZ"
    flushed = np.where(np.abs(sample) < TINY, np.copysign(np.float32(0), sample), sample)
    ref = reference(name, flushed)
    err = ulp_error(got, ref)
    near_zero = np.abs(ref) < 2 * TINY
    assert np.all(err[~near_zero] <= MAX_ULP)
    assert np.all(np.abs(got[near_zero] - ref[near_zero]) <= TINY)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_every_length_and_nothing_past_the_end(isa, name, offset):
    rng = np.random.default_rng(40 + offset)
    data = (8 * rng.standard_normal(64)).astype(np.float32)
    whole = run(name, data)  # reference: the same values in the vector body
    sentinel = np.float32(-7.25)
    for n in range(41):
        buf = np.full(offset + n + 24, sentinel, np.float32)
        buf[offset:offset + n] = data[:n]
        getattr(_kernels, name + "_")(buf[offset:offset + n])
        np.testing.assert_array_equal(buf[offset:offset + n], whole[:n], err_msg=f"n={n}")
        assert (buf[:offset] == sentinel).all() and (buf[offset + n:] == sentinel).all(), \
            f"n={n}: memory outside x[:n] was written"
