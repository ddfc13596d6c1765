"""The cell table: every per-cell fact, in one place.

Each recurrent cell (RNN, GRU, LSTM) is one :class:`CellSpec` entry in
:data:`CELLS`.  The functional API, the kernels' wrappers, the reference,
the layers, interop, diagnostics, the benchmark, the scripts and the tests
read gate counts, gate orders, state names, options and cache fields from
here instead of restating them.  This module is data only: it imports
nothing of fastcells, so the reference (the oracle) may read it without
sharing any code with the kernels it checks.

Adding a cell variant is one entry here, one kernel (``_kernels.pyx``) and
one reference step (``reference.py``); ``docs/design.md`` ("Adding a cell")
walks through it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar


@dataclass(frozen=True)
class CellSpec:
    """The facts of one cell.

    Attributes
    ----------
    name : str
        The cell's key: ``"rnn"``, ``"gru"`` or ``"lstm"`` (also the prefix of
        its functional calls, ``<name>_forward`` / ``<name>_backward``).
    layer : str
        The name of its layer class in :mod:`fastcells.layers`.
    gates : tuple of str
        Gate names in the order of the rows of ``W_ih`` / ``W_hh``
        (PyTorch's layout); ``len(gates)`` is the gate count ``G``.
    states : tuple of str
        The recurrent state, in the order of the state tuples (``("h",)`` or
        ``("h", "c")``).
    options : mapping of str to default
        The cell's own keyword options of ``<name>_forward``, with defaults
        (the options every cell takes, ``lengths``, ``reverse`` and
        ``training``, are not listed).
    cache_fields : tuple of str
        The arrays the compiled forward pass keeps for backward, besides the
        inputs (``x``, the weights, the initial states, ``lengths``).
    """

    name: str
    layer: str
    gates: tuple[str, ...]
    states: tuple[str, ...]
    options: Mapping[str, Any]
    cache_fields: tuple[str, ...]

    @property
    def G(self) -> int:
        """The gate count: the number of ``H``-row blocks of ``W_ih`` and ``W_hh``."""
        return len(self.gates)

    @property
    def has_cell_state(self) -> bool:
        """Whether the cell carries a second state ``c`` (the LSTM)."""
        return "c" in self.states


def _spec(name: str, layer: str, gates: tuple[str, ...], states: tuple[str, ...],
          options: dict[str, Any], cache_fields: tuple[str, ...]) -> CellSpec:
    return CellSpec(name, layer, gates, states, MappingProxyType(options), cache_fields)


#: the cells, by name, in the order the docs and reports list them
CELLS: Mapping[str, CellSpec] = MappingProxyType({
    spec.name: spec for spec in (
        _spec("rnn", "RNN", ("h",), ("h",), {"nonlinearity": "tanh"}, ("y",)),
        _spec("gru", "GRU", ("r", "z", "n"), ("h",), {"linear_before_reset": True},
              ("y", "gates", "hn")),
        _spec("lstm", "LSTM", ("i", "f", "g", "o"), ("h", "c"), {"peephole": None},
              ("y", "gates", "cs")),
    )
})

#: the cell names, in table order
CELL_NAMES: tuple[str, ...] = tuple(CELLS)
#: gate count per cell (derived from :data:`CELLS`)
GATES: Mapping[str, int] = MappingProxyType({n: s.G for n, s in CELLS.items()})
#: gate names per cell, in the order of the rows of ``W_ih`` / ``W_hh``
GATE_ORDER: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {n: s.gates for n, s in CELLS.items()})
#: the recurrent state names per cell
STATES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {n: s.states for n, s in CELLS.items()})
#: the RNN's activations
NONLINEARITIES: tuple[str, ...] = ("tanh", "relu")


def cell_spec(cell: Any, name: str = "cell") -> CellSpec:
    """The :class:`CellSpec` of ``cell`` (a cell name); ``ValueError`` naming the
    argument ``name`` otherwise."""
    spec = CELLS.get(cell) if isinstance(cell, str) else None
    if spec is None:
        raise ValueError(f"{name}: expected one of {CELL_NAMES}, got {cell!r}")
    return spec


def cell_functions(module: Any, cell: str) -> tuple[Any, Any]:
    """``(module.<cell>_forward, module.<cell>_backward)``: the one way to find a
    cell's functions in a backend module (``fastcells.functional`` or
    ``fastcells.reference``)."""
    spec = cell_spec(cell)
    return getattr(module, f"{spec.name}_forward"), getattr(module, f"{spec.name}_backward")


_Function = TypeVar("_Function", bound=Callable[..., Any])


def fill_doc(function: _Function, parts: Mapping[str, str]) -> _Function:
    """Fill the ``%(name)s`` sections of a public function's docstring from ``parts``,
    for the cell its name starts with (a part may itself use ``%(cell)s`` and
    ``%(G)s``): shared text written once, every ``help()`` page whole."""
    spec = cell_spec(function.__name__.split("_")[0], "function")
    values = {"cell": spec.name, "G": "H" if spec.G == 1 else f"{spec.G}*H"}
    filled = {name: text % values for name, text in parts.items()}
    function.__doc__ = (function.__doc__ or "") % {**filled, **values}
    return function
