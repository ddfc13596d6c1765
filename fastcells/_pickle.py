"""What fastcells' pickles have in common: a format header, its check, and unpacked weights.

Layers, ``Stepper`` and the optimizers each decide what their pickle holds
(their ``__getstate__``); every such state is a plain dict of plain NumPy
arrays and Python values (protocol 5 ships the arrays out of band), with two
entries added here: the pickle format, :data:`PICKLE_FORMAT`, and the
fastcells version that wrote it.  Loading checks them first: a state of a
newer format than this fastcells reads raises ``ValueError`` naming both
versions, before anything is set.  A format changes only when an older
fastcells could not read the new state; each fastcells reads every older one,
and writes each state in the oldest format that holds it (so an older
fastcells still reads what it can).

Formats:

- 0: no header: a layer or optimizer pickled by fastcells before formats
  existed, its ``__dict__`` as it was.
- 1: the header; layers without gradients, training tape and prepared
  steppers, random generators as their states (:class:`GeneratorState`),
  modules by name; a ``Stepper`` as its unpacked weights and constructor
  options.
- 2: a ``Stepper`` of an LSTM with projection (format 1's entries plus
  ``W_hr``), and an LSTM layer with ``proj_size`` (its ``weight_hr_l{k}``).  A
  fastcells that reads format 1 only refuses them by their format, naming
  both versions, rather than run them without the projection.  Every other
  state is still written in format 1.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import numpy as np

from . import _kernels

#: the newest pickle format this fastcells writes, and the newest it reads
PICKLE_FORMAT = 2
#: the format of every state that holds nothing newer (:func:`with_header`'s default)
BASE_PICKLE_FORMAT = 1
#: the format of a ``Stepper`` or an LSTM layer with a projection (its ``W_hr``)
PROJ_PICKLE_FORMAT = 2
#: the state entries of the header
FORMAT_KEY = "_pickle_format"
VERSION_KEY = "_fastcells_version"
#: the format of a state with no header (fastcells before pickle formats)
NO_HEADER_FORMAT = 0


class ModuleRef(str):
    """A module in a pickled state, by name (modules do not pickle); imported on load."""


class GeneratorState(dict):  # type: ignore[type-arg]
    """A ``numpy.random.Generator`` in a pickled state, as its bit generator's state
    (plain ints and names), made a generator again on load.  NumPy's own pickle
    of a generator does not load across NumPy 1 and 2; this does."""


def _generator(state: GeneratorState) -> np.random.Generator:
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = dict(state)
    return np.random.Generator(bit_generator)


def with_header(state: dict[str, Any], fmt: int | None = None) -> dict[str, Any]:
    """``state`` (a dict this function may change) with the header, modules by name and
    random generators as their states; ``fmt``: its pickle format, the oldest that holds
    it (None: :data:`BASE_PICKLE_FORMAT`)."""
    from . import __version__
    for key, value in state.items():
        if isinstance(value, ModuleType):
            state[key] = ModuleRef(value.__name__)
        elif isinstance(value, np.random.Generator):
            state[key] = GeneratorState(value.bit_generator.state)
    state[FORMAT_KEY] = BASE_PICKLE_FORMAT if fmt is None else fmt
    state[VERSION_KEY] = __version__
    return state


def without_header(what: str, state: Any, required: tuple[str, ...], *,
                   header_required: bool = False) -> dict[str, Any]:
    """A pickled ``state`` checked and without its header, modules imported again (a new dict).

    ``what`` names the object in messages (``"LSTM"``, ``"Stepper"``);
    ``required``: the entries the state must have.  A state without a header is
    format 0, refused when ``header_required`` (objects that did not pickle
    before formats existed).

    Raises
    ------
    TypeError
        ``state`` is not a dict.
    ValueError
        The format is not an int, is newer than :data:`PICKLE_FORMAT` (naming
        both versions), or is missing where ``header_required``; a required
        entry is missing.
    """
    if type(state) is not dict:
        raise TypeError(f"cannot load this fastcells {what}: expected its pickled state to be a "
                        f"dict, got {type(state).__name__} (not a fastcells pickle, or corrupted)")
    attrs: dict[str, Any] = dict(state)
    version = attrs.pop(VERSION_KEY, None)
    fmt = attrs.pop(FORMAT_KEY, NO_HEADER_FORMAT)
    if fmt == NO_HEADER_FORMAT and header_required:
        raise ValueError(f"cannot load this fastcells {what}: its pickled state has no pickle "
                         f"format (expected the entry {FORMAT_KEY!r}; not a fastcells pickle, "
                         f"or corrupted)")
    if type(fmt) is not int or fmt < NO_HEADER_FORMAT:
        raise ValueError(f"cannot load this fastcells {what}: expected its pickle format to be "
                         f"an int >= {NO_HEADER_FORMAT}, got {fmt!r} (corrupted)")
    if fmt > PICKLE_FORMAT:
        from . import __version__
        writer = f"fastcells {version}" if isinstance(version, str) else "an unknown fastcells"
        raise ValueError(
            f"cannot load this fastcells {what}: it was pickled in pickle format {fmt} by "
            f"{writer}, and this fastcells {__version__} reads pickle formats up to "
            f"{PICKLE_FORMAT}; install {writer} (or newer) where it is loaded, or pickle it "
            f"again with fastcells {__version__}")
    missing = [key for key in required if key not in attrs]
    if missing:
        raise ValueError(f"cannot load this fastcells {what}: its pickled state lacks the "
                         f"entries {missing} (not a fastcells {what}, or corrupted)")
    for key, value in attrs.items():
        if type(value) is ModuleRef:
            attrs[key] = importlib.import_module(value)
        elif type(value) is GeneratorState:
            attrs[key] = _generator(value)
    return attrs


@functools.cache
def panel_width() -> int:
    """Columns of ``W.T`` (rows of ``W``) per panel of ``_kernels.pack``: the pack of
    a 1 x 1 weight is one panel of one row."""
    return int(_kernels.pack(np.zeros((1, 1), np.float32), True).size)


def unpacked(P: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The weight ``W`` (rows, cols), float32, of its pack ``P = _kernels.pack(W, True)``
    (or ``pack_half(W)``, whose float32 panels come first): a new array.

    Panel ``p`` holds ``W[p*nr + j, l]`` at ``P[(p*k + l)*nr + j]``, ``nr`` the
    panel width (the last panel zero-padded).  The layout is csrc's, so the
    result is packed again and compared bit for bit: a layout this does not
    invert raises ``RuntimeError`` instead of pickling wrong weights.
    """
    nr = panel_width()
    npanels = -(-rows // nr)
    size = npanels * nr * cols
    panels = P[:size].reshape(npanels, cols, nr)
    W = np.ascontiguousarray(panels.transpose(0, 2, 1).reshape(npanels * nr, cols)[:rows])
    again = _kernels.pack(W, True)[:size]
    if not np.array_equal(again.view(np.int32), P[:size].view(np.int32)):
        raise RuntimeError("unpacking the weights: the packed layout is not the one this "
                           "fastcells expects (csrc/gemm.h changed?)")
    return W
