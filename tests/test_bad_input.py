"""The bad-input contract, as tables: every wrong argument raises ValueError
(shapes, values) or TypeError (dtypes, types) with a message that starts with
the argument's name and gives what was expected and what was received.

Validation is shared (``fastcells._checks``), so every table runs against
both ``fastcells`` and ``fastcells.reference``.  Each case starts from a
valid call (every argument given, lengths included) and changes one thing.
"""
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
from conftest import CELLS, backward, forward, make_inputs, make_upstream

import fastcells
from fastcells import _checks, reference

T, B, I, H = 3, 2, 4, 5
LENGTHS = np.array([T, 1])
MODULES = {"fastcells": fastcells, "reference": reference}
#: one variant per function family: the checks do not depend on the options
FAMILY_CELL = {"rnn": "rnn-tanh", "gru": "gru-lbr", "lstm": "lstm"}
#: the expected shape as every message spells it
SHAPE_TEXT = {"x": "(T, B, I)", "W_ih": "*H, I)", "W_hh": "*H, H)", "b_ih": "*H,)",
              "b_hh": "*H,)", "h0": "(B, H)", "c0": "(B, H)", "dy": "(T, B, H)",
              "dh": "(B, H)", "dc": "(B, H)"}
#: unsupported dtypes and how a message names them
BAD_DTYPES = {"int64": np.int64, "int8": np.int8, "uint16": np.uint16, "bool": np.bool_,
              "complex64": np.complex64, "object": object, "str": "U3"}


class Case(NamedTuple):
    """Put ``bad(args)`` in ``args[arg]``; expect ``error`` naming ``blamed`` (default
    ``arg``) with every text of ``texts(args, G)`` in the message."""

    arg: str
    bad: Callable
    error: type
    texts: Callable
    blamed: str | None = None
    families: tuple = ("rnn", "gru", "lstm")


def _grow(axis):
    """The array with one more entry along ``axis`` (an inconsistent size)."""
    return lambda a: np.concatenate([a, np.take(a, [0], axis=axis)], axis=axis)


def _received(name):
    return lambda args, G: [SHAPE_TEXT[name], str(args[name].shape)]


ARRAYS = ("x", "W_ih", "W_hh", "b_ih", "b_hh", "h0", "c0")
GRADS = ("dy", "dh", "dc")


def _families(name):
    return ("lstm",) if name in ("c0", "dc") else ("rnn", "gru", "lstm")


def _shape_cases():
    cases = {}
    for name in ARRAYS + GRADS:
        fam = _families(name)
        cases[f"{name}-more-dims"] = Case(name, lambda a: a[None], ValueError, _received(name),
                                          families=fam)
        cases[f"{name}-fewer-dims"] = Case(name, lambda a: a[0], ValueError, _received(name),
                                           families=fam)
    # a dimension that disagrees with the others: blamed on the argument that
    # is checked against it, with the expected size spelled out
    cases.update({
        "x-I": Case("x", _grow(2), ValueError,
                    lambda a, G: [f"({G}*H, I) = ({G * H}, {I + 1})", str(a["W_ih"].shape)],
                    blamed="W_ih"),
        "x-B": Case("x", _grow(1), ValueError,
                    lambda a, G: [f"(B, H) = ({B + 1}, {H})", str(a["h0"].shape)], blamed="h0"),
        "W_ih-rows": Case("W_ih", _grow(0), ValueError,
                          lambda a, G: [f"= ({G * H}, {I})", f"({G * H + 1}, {I})"]),
        "W_ih-cols": Case("W_ih", _grow(1), ValueError,
                          lambda a, G: [f"= ({G * H}, {I})", f"({G * H}, {I + 1})"]),
        "W_hh-rows": Case("W_hh", _grow(0), ValueError,
                          lambda a, G: [f"= ({G * H}, {H})", f"({G * H + 1}, {H})"]),
        "W_hh-cols": Case("W_hh", _grow(1), ValueError,
                          lambda a, G: [f"= ({G * (H + 1)}, {H + 1})", f"({G * H}, {H + 1})"]),
        "W_hh-H0": Case("W_hh", lambda a: a[:0, :0], ValueError,
                        lambda a, G: ["H >= 1", "(0, 0)"]),
        "b_ih-size": Case("b_ih", _grow(0), ValueError,
                          lambda a, G: [f"= ({G * H},)", f"({G * H + 1},)"]),
        "b_hh-size": Case("b_hh", _grow(0), ValueError,
                          lambda a, G: [f"= ({G * H},)", f"({G * H + 1},)"]),
        "b_ih-alone": Case("b_hh", lambda a: None, ValueError,
                           lambda a, G: [f"= ({G * H},)", "both or neither", "None"]),
        "b_hh-alone": Case("b_ih", lambda a: None, ValueError,
                           lambda a, G: [f"= ({G * H},)", "both or neither", "None"]),
    })
    for name in ("h0", "c0", "dh", "dc"):
        for axis, (b, h) in enumerate([(B + 1, H), (B, H + 1)]):
            cases[f"{name}-axis{axis}"] = Case(
                name, _grow(axis), ValueError,
                lambda a, G, got=(b, h): [f"(B, H) = ({B}, {H})", str(got)],
                families=_families(name))
    for axis, shape in enumerate([(T + 1, B, H), (T, B + 1, H), (T, B, H + 1)]):
        cases[f"dy-axis{axis}"] = Case("dy", _grow(axis), ValueError,
                                       lambda a, G, s=shape: [f"= ({T}, {B}, {H})", str(s)])
    return cases


def _dtype_cases():
    cases = {}
    for name in ARRAYS + GRADS:
        for dname, dtype in BAD_DTYPES.items():
            cases[f"{name}-{dname}"] = Case(
                name, lambda a, d=dtype: a.astype(d), TypeError,
                lambda a, G, d=dtype: ["float", str(np.dtype(d))], families=_families(name))
    for name, value, text in [("x", "abc", "<U3"), ("x", None, "object"),
                              ("W_hh", [[1.0, 2.0], [3.0]], "cannot convert"),
                              ("h0", {"h": 1.0}, "object")]:
        cases[f"{name}-{type(value).__name__}"] = Case(name, lambda a, v=value: v, TypeError,
                                                       lambda a, G, t=text: ["float", t])
    return cases


LENGTH_CASES = {
    "lengths-2d": Case("lengths", lambda a: a[:, None], ValueError,
                       lambda a, G: [f"(B,) = ({B},)", f"({B}, 1)"]),
    "lengths-size": Case("lengths", _grow(0), ValueError,
                         lambda a, G: [f"(B,) = ({B},)", f"({B + 1},)"]),
    "lengths-scalar": Case("lengths", lambda a: np.int64(T), ValueError,
                           lambda a, G: [f"(B,) = ({B},)", "()"]),
    "lengths-float": Case("lengths", lambda a: a.astype(float), TypeError,
                          lambda a, G: ["integer", "float64"]),
    "lengths-bool": Case("lengths", lambda a: a > 0, TypeError,
                        lambda a, G: ["integer", "bool"]),
    "lengths-str": Case("lengths", lambda a: a.astype(str), TypeError,
                        lambda a, G: ["integer", "<U"]),
    "lengths-object": Case("lengths", lambda a: a.astype(object), TypeError,
                           lambda a, G: ["integer", "object"]),
    "lengths-above-T": Case("lengths", lambda a: np.array([T, T + 1]), ValueError,
                            lambda a, G: [f"[0, T] = [0, {T}]", f"lengths[1] = {T + 1}"]),
    "lengths-negative": Case("lengths", lambda a: np.array([-1, T]), ValueError,
                             lambda a, G: [f"[0, T] = [0, {T}]", "lengths[0] = -1"]),
}

OPTION_CASES = {
    **{f"nonlinearity-{v}": Case("nonlinearity", lambda a, v=v: v, ValueError,
                                 lambda a, G, v=v: ["'tanh', 'relu'", repr(v)], families=("rnn",))
       for v in ("sigmoid", "Tanh", None, 1)},
    **{f"{opt}-{v!r}": Case(opt, lambda a, v=v: v, TypeError,
                            lambda a, G, v=v: ["True or False", repr(v)],
                            families=("gru",) if opt == "linear_before_reset" else
                            ("rnn", "gru", "lstm"))
       for opt in ("reverse", "training", "linear_before_reset")
       for v in (1, 0, "yes", None, np.array([True]))},
}

CASES = {**_shape_cases(), **_dtype_cases(), **LENGTH_CASES, **OPTION_CASES}


def valid_call(family):
    """(forward args incl. lengths and options, upstream gradients), all valid."""
    rng = np.random.default_rng(0)
    cell = FAMILY_CELL[family]
    args = make_inputs(cell, rng, T, B, I, H)
    args["lengths"] = LENGTHS.copy()
    return args, make_upstream(cell, rng, T, B, H)


def _check_message(exc_info, blamed, texts):
    msg = str(exc_info.value)
    assert msg.startswith(f"{blamed}:"), f"message does not start with {blamed!r}: {msg}"
    for text in texts:
        assert text in msg, f"{text!r} missing from: {msg}"


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("family, case_name",
                         [(f, name) for f in FAMILY_CELL for name, c in CASES.items()
                          if f in c.families])
def test_bad_argument_is_named_with_expected_and_received(family, case_name, module):
    case = CASES[case_name]
    cell = FAMILY_CELL[family]
    mod = MODULES[module]
    args, upstream = valid_call(family)
    target = upstream if case.arg in GRADS else args
    options = {**CELLS[cell].options, "training": True}
    if case.arg in options or case.arg in ("reverse", "linear_before_reset"):
        options[case.arg] = case.bad(None)
    else:
        target[case.arg] = case.bad(target[case.arg])
    # the texts may cite the received array: computed on the bad call's arguments
    texts = case.texts({**args, **upstream}, CELLS[cell].gates)
    with pytest.raises(case.error) as exc_info:
        if target is upstream:
            out = forward(mod, cell, valid_call(family)[0], training=True)
            backward(mod, cell, out.cache, upstream)
        else:
            getattr(mod, f"{family}_forward")(**args, **options)
    _check_message(exc_info, case.blamed or case.arg, texts)


def _other_family(family):
    return {"rnn": "gru", "gru": "lstm", "lstm": "rnn"}[family]


#: what is passed as ``cache``: (error, texts) given the module and family
CACHE_CASES = {
    "none": (lambda mod, fam: None, TypeError, lambda name, fam: ["training=True", "None"]),
    "inference-run": (lambda mod, fam: forward(mod, FAMILY_CELL[fam], valid_call(fam)[0]).cache,
                      TypeError, lambda name, fam: ["training=True", "None"]),
    "other-cell": (lambda mod, fam: forward(mod, FAMILY_CELL[_other_family(fam)],
                                            valid_call(_other_family(fam))[0],
                                            training=True).cache,
                   ValueError, lambda name, fam: [f"expected a cache from {fam}_forward",
                                                  f"got one from {_other_family(fam)}_forward"]),
    "other-module": (lambda mod, fam: forward(
                         reference if mod is fastcells else fastcells, FAMILY_CELL[fam],
                         valid_call(fam)[0], training=True).cache,
                     ValueError, lambda name, fam: [
                         f"expected a cache from {name}.{fam}_forward",
                         f"got one from {'fastcells.reference' if name == 'fastcells' else 'fastcells'}"
                         f".{fam}_forward"]),
    "dict": (lambda mod, fam: {}, TypeError, lambda name, fam: ["Cache", "got dict"]),
    "forward-result": (lambda mod, fam: forward(mod, FAMILY_CELL[fam], valid_call(fam)[0],
                                                training=True),
                       TypeError, lambda name, fam: ["Cache", "Result"]),
}


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("family", list(FAMILY_CELL))
@pytest.mark.parametrize("case_name", list(CACHE_CASES))
def test_bad_cache_is_named_with_expected_and_received(case_name, family, module):
    make, error, texts = CACHE_CASES[case_name]
    mod = MODULES[module]
    name = "fastcells" if mod is fastcells else "fastcells.reference"
    with pytest.raises(error) as exc_info:
        backward(mod, FAMILY_CELL[family], make(mod, family), valid_call(family)[1])
    _check_message(exc_info, "cache", texts(name, family))


# ----------------------------------------------------------------------------
# the fast path of the checks: arrays that fit skip the full checks, and
# anything else gets them (and their conversions and messages)


class _Sub(np.ndarray):
    """An ndarray subclass: never taken as it is by the fast path."""


#: a change to one valid float32 argument that leaves its values as they are
NEAR_MISSES = {
    "float64": lambda a: a.astype(np.float64),
    "big-endian": lambda a: a.astype(">f4"),
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
    "subclass": lambda a: a.view(_Sub),
    "equal-dtype-other-object": lambda a: a.view(np.dtype(np.float32, metadata={"k": 1})),
    "list": lambda a: a.tolist(),
}
PEEPHOLE = np.linspace(-0.5, 0.5, 3 * H, dtype=np.float32)


def _fields_equal(got, want):
    for name, g, w in zip(want._fields, got, want):
        if isinstance(w, np.ndarray):
            assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape, name
            assert g.flags.c_contiguous and g.dtype.isnative, name
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            assert g == w, name


def _check_args(family):
    args, _ = valid_call(family)
    if family == "lstm":
        args["peephole"] = PEEPHOLE.copy()
    return args


def _full_checks(family, args):
    # a dtype given as a string is not the float32 dtype object: the full checks
    return _checks.check_forward(family, dtype="float32", **args)


@pytest.mark.parametrize("family", list(FAMILY_CELL))
def test_fitting_arrays_take_the_fast_path_as_they_are(family):
    args = _check_args(family)
    fast = _checks.forward_as_is(family, **args)
    assert fast is not None
    for name in ARRAYS + ("peephole",):
        if name in args:
            assert getattr(fast, name) is args[name], f"{name} was copied"
    _fields_equal(fast, _full_checks(family, args))
    _fields_equal(_checks.check_forward(family, dtype=np.float32, **args), fast)


@pytest.mark.parametrize("change", list(NEAR_MISSES))
@pytest.mark.parametrize("arg", ARRAYS + ("peephole",))
def test_near_misses_get_the_full_checks(arg, change):
    family = "lstm" if arg in ("c0", "peephole") else "gru"
    args = _check_args(family)
    want = _full_checks(family, args)
    args[arg] = NEAR_MISSES[change](args[arg])
    assert _checks.forward_as_is(family, **args) is None
    _fields_equal(_checks.check_forward(family, dtype=np.float32, **args), want)


@pytest.mark.parametrize("family", list(FAMILY_CELL))
def test_fast_path_lengths_get_the_full_checks(family):
    args = _check_args(family)
    args["lengths"] = np.array([T, T])          # all full length: None for the kernels
    assert _checks.check_forward(family, dtype=np.float32, **args).lengths is None
    args["lengths"] = [T + 1, 0]
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, T\]"):
        _checks.check_forward(family, dtype=np.float32, **args)


@pytest.mark.parametrize("B_", [1, 5, _checks._SMALL_BATCH, _checks._SMALL_BATCH + 1, 300])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint64])
def test_lengths_checks_agree_for_small_and_large_batches(B_, dtype):
    # small batches are reduced in Python, large ones by NumPy: same results
    T_ = 7
    rng = np.random.default_rng(B_)
    lengths = rng.integers(0, T_ + 1, B_).astype(dtype)
    lengths[0] = 0
    got = _checks.check_lengths(lengths, T_, B_)
    assert got.dtype == np.int64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, lengths.astype(np.int64))
    assert _checks.check_lengths(np.full(B_, T_, dtype), T_, B_) is None
    assert _checks.check_lengths(lengths.tolist(), T_, B_) is not None
    too_long = lengths.copy()
    too_long[B_ // 2] = T_ + 1
    with pytest.raises(ValueError, match=rf"lengths\[{B_ // 2}\] = {T_ + 1}"):
        _checks.check_lengths(too_long, T_, B_)
    huge = lengths.copy()
    huge[-1] = np.iinfo(dtype).max
    with pytest.raises(ValueError, match=rf"lengths\[{B_ - 1}\] = {np.iinfo(dtype).max}"):
        _checks.check_lengths(huge, T_, B_)
    if np.issubdtype(dtype, np.signedinteger):
        negative = lengths.copy()
        negative[-1] = -1
        with pytest.raises(ValueError, match=rf"lengths\[{B_ - 1}\] = -1"):
            _checks.check_lengths(negative, T_, B_)
