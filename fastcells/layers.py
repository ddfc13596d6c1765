"""Layers: ``RNN``, ``GRU``, ``LSTM`` and ``Linear``, built on ``fastcells.functional``.

How they are built, and why:
- A layer owns its parameters as float32 C-contiguous arrays under PyTorch's
  names and shapes (``_layer_base``).  ``functional`` takes such arrays
  without converting them, and optimizers and ``load_state_dict`` update
  them in place, so the references a layer keeps (per layer and direction)
  never go stale.
- A call loops over layers and directions and runs ``<cell>_forward`` once per
  (layer, direction): the time loop stays in the kernels.  Bidirectional
  outputs are concatenated ``[forward, reverse]`` on the last axis.
- Training mode (the default, as in PyTorch) keeps a *tape* of the caches and
  dropout masks of the last call for ``backward``; eval mode runs the kernels
  with ``training=False`` and keeps nothing.
- ``backward`` walks the tape in reverse and *accumulates* the parameter
  gradients into ``grads`` (same keys as the state dict), like PyTorch's
  ``.grad``; ``zero_grad`` clears them in place.
- ``step`` runs one prepared ``Stepper`` per layer (``_layer_step``).
- Arguments are checked where the caller's view of them is known
  (``_layer_args``); the help pages come from one template per page
  (``_layer_docs``).
- Data flows layers -> functional -> kernels; a layer never reaches past
  ``functional``.  ``backend=fastcells.reference`` swaps in the NumPy oracle
  (same signatures), which the tests use.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import functional
from ._cells import CELLS, CellSpec, cell_functions
from ._checks import (
    as_float,
    check_bool,
    check_int,
    check_layer_norm,
    check_nonlinearity,
    check_number,
    check_shape,
    float_dtype,
    is_f32c,
    to_numpy,
)
from ._float16 import check_weight_dtype, float16_values
from ._layer_args import (
    check_proj_size,
    compute_dtype,
    pack_states,
    split_states,
    stack,
    time_major,
)
from ._layer_base import Array, LoadResult, _Layer  # noqa: F401  (LoadResult re-exported)
from ._layer_docs import METHOD_DOCS, class_doc, documented, method_doc
from ._layer_step import (
    ReferenceStepper,
    StepFn,
    compiled_stepper,
    step_h,
    step_hc,
    step_weights,
)
from ._results import LayerNormWeights

F32 = np.float32
#: the float32 dtype object, which arrays made with np.float32 share (an identity test)
_F32 = np.dtype(F32)

__all__ = ["GRU", "LSTM", "RNN", "Linear"]

#: a state in the call convention: ``h``, or ``(h, c)`` for the LSTM
State = Array | tuple[Array, Array]
#: one parameter to create: (name without suffix, axis symbols, shape)
ParamSpec = tuple[str, tuple[str, ...], tuple[int, ...]]


# ----------------------------------------------------------------------------
# recurrent layers


class _RNNBase(_Layer):
    """The recurrent layers' common machinery; ``_spec`` is the cell's table entry."""

    _spec: CellSpec = CELLS["rnn"]
    _step_dtype = "float32"     # also the value of layers pickled before it existed
    #: the initial states' names in messages: ``("h0",)`` or ``("h0", "c0")``
    _state_names: tuple[str, ...] = ("h0",)
    #: the final states' gradients' names in messages: ``("dh",)`` or ``("dh", "dc")``
    _grad_names: tuple[str, ...] = ("dh",)
    #: one step through the stacked layers (``_layer_step.step_h`` or ``step_hc``)
    _step_layers: Callable[..., tuple[Array, Any]] = staticmethod(step_h)
    #: a step's initial state when none is given: None (zeros) per state kind
    _no_states: tuple[None, ...] = (None,)
    # also the values of layers pickled before layer normalization existed
    layer_norm = False
    layer_norm_eps = 1e-5
    #: the LSTM's projection size P (0: none); PyTorch's RNN and GRU have it as 0 too
    proj_size = 0
    #: per optional parameter of a (layer, direction): its name without suffix and the
    #: field of the backward result that holds its gradient
    _EXTRA_GRADS = (("peephole", "dpeephole"), ("weight_hr", "dW_hr"))
    #: per (layer, direction): the layer norm's parameter names, in LayerNormWeights order
    _ln_names: list[tuple[str, ...]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls._spec
        cls._state_names = tuple(s + "0" for s in spec.states)
        cls._grad_names = tuple("d" + s for s in spec.states)
        cls._step_layers = staticmethod(step_hc if spec.has_cell_state else step_h)
        cls._no_states = (None,) * len(spec.states)
        # each layer class gets its own help() pages, from the templates of _layer_docs
        cls.__doc__ = class_doc(cls._spec)
        for method in METHOD_DOCS:
            setattr(cls, method, documented(getattr(cls, method), method_doc(method, cls._spec),
                                            cls))

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, layer_norm: bool = False,
                 layer_norm_eps: float = 1e-5, seed: Any = None, backend: Any = None) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.layer_norm = check_bool("layer_norm", layer_norm)
        self.layer_norm_eps = check_layer_norm(self._spec.name, None, layer_norm_eps,
                                               self.hidden_size, F32)[1]
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.dropout = check_number("dropout", dropout, 0.0, 1.0)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout: dropout acts between layers, so it does nothing with "
                          f"num_layers=1 (got dropout={dropout})", stacklevel=3)
        self._forward_fn, self._backward_fn = self._resolve_backend(backend)
        self.backend = backend
        # the generator seeds the parameters, then continues for the dropout masks:
        # seeded runs repeat exactly
        self._rng = np.random.default_rng(seed)
        #: per (layer, direction): names of W_ih, W_hh, b_ih, b_hh (None without bias), extras
        self._names: list[tuple[str | None, ...]] = self._create_parameters()
        self._parameters_replaced()
        self._tape: Any = None

    # -- configuration -----------------------------------------------------

    @property
    def num_directions(self) -> int:
        """2 for a bidirectional layer, else 1 (D in the shapes)."""
        return 2 if self.bidirectional else 1

    @property
    def _h_width(self) -> tuple[str, int]:
        """The width of ``h`` and of each direction's output, with its symbol in
        messages: ``("P", proj_size)`` for an LSTM with projection, else ``("H", H)``."""
        return ("P", self.proj_size) if self.proj_size else ("H", self.hidden_size)

    # cached (in the instance's dict) as they are read at every step; the sizes are fixed
    @functools.cached_property
    def _widths(self) -> tuple[tuple[str, int], ...]:
        """Each state kind's width and symbol: ``h``'s, then (LSTM) ``c``'s, H."""
        return (self._h_width,) + (("H", self.hidden_size),) * (len(self._spec.states) - 1)

    @functools.cached_property
    def _step_sizes(self) -> tuple[int, ...]:
        """Each state kind's width, as :meth:`step` stacks them."""
        return tuple(size for _, size in self._widths)

    def _param_name(self, base: str, i: int) -> str:
        """The name of parameter ``base`` (``"peephole"``, ...) of (layer, direction) ``i``."""
        return base + str(self._names[i][0])[len("weight_ih"):]

    def _resolve_backend(self, backend: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
        module = functional if backend is None else backend
        names = (f"{self._spec.name}_forward", f"{self._spec.name}_backward")
        if not all(callable(getattr(module, n, None)) for n in names):
            raise TypeError(f"backend: expected None (fastcells.functional) or a module with "
                            f"{names[0]} and {names[1]} such as fastcells.reference, got "
                            f"{backend!r}")
        return cell_functions(module, self._spec.name)

    def _parameters_replaced(self) -> None:
        # the live arrays functional is called with, per (layer, direction)
        self._weights = [tuple(None if n is None else self._params[n] for n in names[:4])
                         for names in self._names]

    def _extra_parameters(self) -> list[ParamSpec]:
        """Parameters of the cell beyond the weights and biases, per (layer, direction)."""
        return []

    def _norm_parameters(self) -> list[tuple[ParamSpec, float]]:
        """The layer norm's parameters per (layer, direction), with their initial
        values (gains 1, biases 0), in :class:`LayerNormWeights` order; none without."""
        if not self.layer_norm:
            return []
        G, H = self._spec.G, self.hidden_size
        rows: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = [
            (path, (f"{G}*H",), (G * H,)) for path in ("ih", "hh")]
        if self._spec.has_cell_state:
            rows.append(("c", ("H",), (H,)))
        return [((f"ln_{path}_{kind}", sym, shape), 1.0 if kind == "weight" else 0.0)
                for path, sym, shape in rows for kind in ("weight", "bias")]

    def _create_parameters(self) -> list[tuple[str | None, ...]]:
        """Create the parameters in PyTorch's order and initialisation; return their names.

        PyTorch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), drawn in
        state-dict order; the layer norm's (after them) are constants, so a
        normalized layer draws the weights of the same seed's plain layer.
        """
        G, H, D = self._spec.G, self.hidden_size, self.num_directions
        h_sym, h_size = self._h_width
        bound = 1.0 / math.sqrt(H)
        names = []
        norm = self._norm_parameters()
        self._ln_names = []
        for k in range(self.num_layers):
            in_size, in_sym = ((self.input_size, "input_size") if k == 0
                               else (D * h_size, f"D*{h_sym}"))
            shapes: list[ParamSpec] = [("weight_ih", (f"{G}*H", in_sym), (G * H, in_size)),
                                       ("weight_hh", (f"{G}*H", h_sym), (G * H, h_size))]
            if self.bias:
                shapes += [("bias_ih", (f"{G}*H",), (G * H,)), ("bias_hh", (f"{G}*H",), (G * H,))]
            shapes += self._extra_parameters()
            for d in range(D):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                for base, sym, shape in shapes:
                    self._add_param(base + suffix, sym, self._rng.uniform(-bound, bound, shape))
                for (base, sym, shape), value in norm:
                    self._add_param(base + suffix, sym, np.full(shape, value))
                self._ln_names.append(tuple(base + suffix for (base, _, _), _ in norm))
                row: list[str | None] = [base + suffix for base, _, _ in shapes]
                if not self.bias:
                    row[2:2] = [None, None]
                names.append(tuple(row))
        return names

    def _options(self) -> dict[str, Any]:
        """The cell's own keyword options for ``<cell>_forward``."""
        return {}

    def _direction_options(self, i: int) -> dict[str, Any]:
        """Keyword options for ``<cell>_forward`` of (layer, direction) number ``i``."""
        options = {**self._options(), **self._cell_options(i)}
        if self.layer_norm:
            options["layer_norm"] = LayerNormWeights(*(self._params[n] for n in self._ln_names[i]))
            options["layer_norm_eps"] = self.layer_norm_eps
        return options

    def _cell_options(self, i: int) -> dict[str, Any]:
        """The cell's own options of (layer, direction) number ``i`` that are parameters."""
        return {}

    def __repr__(self) -> str:
        args = [str(self.input_size), str(self.hidden_size)]
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0),
                              ("layer_norm", False), ("layer_norm_eps", 1e-5)):
            if getattr(self, name) != default:
                args.append(f"{name}={getattr(self, name)!r}")
        args += [f"{k}={v!r}" for k, v in self._repr_options().items()]
        return f"{type(self).__name__}({', '.join(args)})"

    def _repr_options(self) -> dict[str, Any]:
        return {}

    def _drop_tape(self) -> None:
        self._tape = None

    def _split(self, value: Any, B: int, arg: str, names: tuple[str, ...],
               L: int) -> list[Array | None]:
        """A state argument as one (L, B, width) stack per state kind (None: zeros)."""
        return split_states(self._spec, value, B, arg, names, L, self._widths,
                            self.backend is None)

    # -- the sequence call: forward and backward over layers and directions -----

    def forward(self, x: Any, hx: Any = None, lengths: Any = None) -> tuple[Array, State]:
        """Run the layer over a batch of sequences (each layer class documents it)."""
        compiled = self.backend is None
        x = time_major("x", x, self.input_size, "input_size", self.batch_first, compiled)
        T, B = x.shape[:2]
        init = self._split(hx, B, "hx", self._state_names, self.num_layers * self.num_directions)
        finals: list[list[Array]] = [[] for _ in init]
        tape = []
        for k in range(self.num_layers):
            x, caches = self._forward_layer(k, x, init, finals, lengths)
            mask = None
            if self.training and self.dropout > 0 and k < self.num_layers - 1:
                mask = self._dropout_mask(x.shape)
                x = x * mask
            tape.append((caches, mask))
        self._tape = (tape, T, B) if self.training else None
        if self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        return x, pack_states([stack(f, compiled) for f in finals])

    def _forward_layer(self, k: int, x: Array, init: list[Array | None],
                       finals: list[list[Array]], lengths: Any) -> tuple[Array, list[Any]]:
        """Layer ``k`` over the time-major ``x``, every direction: its output and caches.

        Appends each direction's final states to ``finals`` (one list per state kind).
        """
        D = self.num_directions
        outs, caches = [], []
        for d in range(D):
            i = k * D + d
            res = self._forward_fn(x, *self._weights[i],
                                   *(None if s is None else s[i] for s in init),
                                   lengths=lengths, reverse=bool(d), training=self.training,
                                   **self._direction_options(i))
            outs.append(res.y)
            caches.append(res.cache)
            for j, f in enumerate(finals):
                f.append(res[1 + j])
        return (outs[0] if D == 1 else np.concatenate(outs, axis=-1)), caches

    def _dropout_mask(self, shape: tuple[int, ...]) -> Array:
        """Inverted dropout, as PyTorch: keep with probability 1-p, scale kept by 1/(1-p)."""
        p = self.dropout
        if p >= 1:
            return np.zeros(shape, F32)
        mask: Array = (self._rng.random(shape) >= p).astype(F32) * F32(1.0 / (1.0 - p))
        return mask

    def backward(self, dy: Any = None, dh: Any = None) -> tuple[Array, State]:
        """Backpropagate through the last training call (each layer class documents it)."""
        if self._tape is None:
            raise RuntimeError(
                "backward: no activations kept; call the layer in training mode (layer.train(), "
                "the default) before backward (eval mode and step() keep nothing)")
        tape, T, B = self._tape
        L = self.num_layers * self.num_directions
        d_out = self._output_grad(dy, T, B)
        upstream = self._split(dh, B, "dh", self._grad_names, L)
        initial: list[list[Any]] = [[None] * L for _ in upstream]
        for k in range(self.num_layers - 1, -1, -1):
            d_inp = self._backward_layer(k, tape[k][0], d_out, upstream, initial)
            below = tape[k - 1][1] if k > 0 else None
            d_out = d_inp if below is None else d_inp * below
        assert d_out is not None
        dx = d_out.astype(F32, copy=False)
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        compiled = self.backend is None
        return dx, pack_states([stack(s, compiled).astype(F32, copy=False) for s in initial])

    def _output_grad(self, dy: Any, T: int, B: int) -> Array | None:
        """``dy`` checked against the last call's output and made time-major (None: zeros)."""
        if dy is None:
            return None
        D, (sym, width) = self.num_directions, self._h_width
        d_out = time_major("dy", dy, D * width, f"D*{sym}", self.batch_first,
                           self.backend is None)
        if d_out.shape[:2] != (T, B):
            order = "(B, T)" if self.batch_first else "(T, B)"
            got = d_out.shape[1::-1] if self.batch_first else d_out.shape[:2]
            want = (B, T) if self.batch_first else (T, B)
            raise ValueError(f"dy: expected leading axes {order} = {want} as the output of the "
                             f"last call, got {got}")
        return d_out

    def _backward_layer(self, k: int, caches: list[Any], d_out: Array | None,
                        upstream: list[Array | None], initial: list[list[Any]]) -> Array:
        """Layer ``k``'s gradients, every direction: accumulate the parameter gradients,
        store the initial-state gradients in ``initial`` and return the input gradient."""
        D, W = self.num_directions, self._h_width[1]
        d_inp: Any = None
        for d in range(D):
            i = k * D + d
            dy_d = None if d_out is None else (d_out if D == 1 else d_out[..., d * W:(d + 1) * W])
            g = self._backward_fn(caches[d], dy_d, *(None if u is None else u[i] for u in upstream))
            d_inp = g.dx if d_inp is None else d_inp + g.dx
            for j, init in enumerate(initial):
                init[i] = g[1 + j]
            self._accumulate(i, g)
        return d_inp   # type: ignore[no-any-return]

    def _accumulate(self, i: int, g: Any) -> None:
        names = self._names[i]
        for name, value in zip(names[:4], (g.dW_ih, g.dW_hh, g.db_ih, g.db_hh)):
            if name is not None:
                self.grads[name] += value
        for base, field in self._EXTRA_GRADS:
            value = getattr(g, field, None)
            if value is not None:
                self.grads[self._param_name(base, i)] += value
        if self.layer_norm:
            for name, value in zip(self._ln_names[i], g.dlayer_norm):
                self.grads[name] += value

    # -- streaming ---------------------------------------------------------------

    def step(self, x_t: Any, state: Any = None) -> tuple[Array, State]:
        """Advance one time step (each layer class documents it)."""
        steppers = self._derived or self._steppers()
        compiled = self.backend is None
        if not (compiled and is_f32c(x_t)):
            x_t = as_float("x_t", to_numpy(x_t), compute_dtype(compiled, x_t))
        shape = x_t.shape
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ValueError(f"x_t: expected shape (B, input_size) = (B, {self.input_size}), "
                             f"got {shape}")
        states = self._step_states(state, shape[0]) if compiled else None
        if states is None:
            states = self._split(state, shape[0], "state", self._state_names, self.num_layers)
        mask = self._dropout_mask if self.training and self.dropout > 0 else None
        # the new states' dtype: float32, or the reference's common float type of the inputs
        dtype = _F32 if compiled else float_dtype(x_t, *states, *self._weights[0])
        return self._step_layers(steppers, x_t, states, mask,
                                 self._step_sizes, dtype)

    def _step_states(self, state: Any, B: int) -> Sequence[Any] | None:
        """The state of a compiled step as ``[h]`` or ``[h, c]``, when it needs no checks
        here (None, or float32 arrays (num_layers, B, width): the Stepper copies each
        layer's view); None when it needs the full checks of :meth:`_split`."""
        if state is None:
            return self._no_states
        parts = state if type(state) is tuple else (state,)
        if len(parts) != len(self._no_states):
            return None
        P = self.proj_size
        shape = (self.num_layers, B, P or self.hidden_size)     # h's
        for part in parts:
            if not (type(part) is np.ndarray and part.dtype is _F32 and part.shape == shape):
                return None
            if P:
                shape = (self.num_layers, B, self.hidden_size)   # c's, wider than h
        return parts

    def _steppers(self) -> list[StepFn]:
        """The per-layer steppers of :meth:`step`, built on first use and dropped when
        the parameters change (``parameters_changed``)."""
        if self._derived is None:
            if self.bidirectional:
                raise ValueError("step: expected a unidirectional layer, got bidirectional=True "
                                 "(the reverse direction starts at the end of the sequence; "
                                 "run the whole sequence with layer(x) instead)")
            half = self._step_dtype == "float16"
            self._derived = [self._stepper(k, half) for k in range(self.num_layers)]
        steppers: list[StepFn] = self._derived
        return steppers

    def _stepper(self, k: int, half: bool) -> StepFn:
        """Layer ``k``'s weights prepared for :meth:`step`: a compiled Stepper, or for
        another backend (the reference) a stand-in with the Stepper's call."""
        w = step_weights(self._names[k], self._weights[k], half)
        options = self._direction_options(k)
        if half and "W_hr" in options:      # a projection's weights are rounded too
            options["W_hr"] = float16_values(self._param_name("weight_hr", k), options["W_hr"],
                                             "step_weight_dtype")
        if self.backend is None:
            return compiled_stepper(self._spec.name, w, half, options)
        return ReferenceStepper(self._forward_fn, w, options, self._spec.has_cell_state)

    def _prepared(self, k: int) -> StepFn:
        """Layer ``k``'s prepared stepper (built if needed)."""
        return self._steppers()[k]

    @property
    def step_weight_dtype(self) -> str:
        """The weights :meth:`step` multiplies by: ``"float32"`` (the default) or ``"float16"``.

        With ``"float16"``, ``W_ih`` and ``W_hh`` (and an LSTM's projection
        ``W_hr``) are rounded to float16 values when the steppers are prepared;
        the arithmetic stays float32, and steps at batch 1 and 2 read half the
        bytes (see :class:`fastcells.Stepper`'s ``weight_dtype``).  For serving: the
        sequence call and training are not affected.  Setting it prepares the
        weights again at the next step; the reference backend rounds the same
        weights.

        Raises
        ------
        ValueError
            On setting, a value other than ``"float32"``/``"float16"`` (or their
            NumPy dtypes); at the next step with ``"float16"``, a weight beyond
            float16's range, naming the parameter (``weight_hh_l0``, ...).
        """
        return self._step_dtype

    @step_weight_dtype.setter
    def step_weight_dtype(self, value: Any) -> None:
        half = check_weight_dtype(value, "step_weight_dtype")
        self._step_dtype = "float16" if half else "float32"
        self._derived = None


class RNN(_RNNBase):
    _spec = CELLS["rnn"]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, nonlinearity: str = "tanh",
                 layer_norm: bool = False, layer_norm_eps: float = 1e-5, seed: Any = None,
                 backend: Any = None) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, layer_norm=layer_norm, layer_norm_eps=layer_norm_eps,
                         seed=seed, backend=backend)

    def _options(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}

    def _repr_options(self) -> dict[str, Any]:
        return {} if self.nonlinearity == "tanh" else {"nonlinearity": self.nonlinearity}


class GRU(_RNNBase):
    _spec = CELLS["gru"]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, linear_before_reset: bool = True,
                 layer_norm: bool = False, layer_norm_eps: float = 1e-5, seed: Any = None,
                 backend: Any = None) -> None:
        self.linear_before_reset = check_bool("linear_before_reset", linear_before_reset)
        if check_bool("layer_norm", layer_norm) and not self.linear_before_reset:
            raise ValueError("layer_norm: expected linear_before_reset=True with "
                             "layer_norm=True (a GRU with linear_before_reset=False has no "
                             "standard normalized form), got linear_before_reset=False")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, layer_norm=layer_norm, layer_norm_eps=layer_norm_eps,
                         seed=seed, backend=backend)

    def _options(self) -> dict[str, Any]:
        return {"linear_before_reset": self.linear_before_reset}

    def _repr_options(self) -> dict[str, Any]:
        return {} if self.linear_before_reset else {"linear_before_reset": False}


class LSTM(_RNNBase):
    _spec = CELLS["lstm"]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *, peephole: bool = False,
                 layer_norm: bool = False, layer_norm_eps: float = 1e-5, seed: Any = None,
                 backend: Any = None) -> None:
        self.peephole = check_bool("peephole", peephole)
        self.proj_size = check_proj_size(proj_size, hidden_size)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, layer_norm=layer_norm, layer_norm_eps=layer_norm_eps,
                         seed=seed, backend=backend)

    def _extra_parameters(self) -> list[ParamSpec]:
        # PyTorch's order: weight_hr after the biases; the peepholes (not PyTorch's) last
        H, P = self.hidden_size, self.proj_size
        return ([("weight_hr", ("P", "H"), (P, H))] if P else []) + (
            [("peephole", ("3*H",), (3 * H,))] if self.peephole else [])

    def _cell_options(self, i: int) -> dict[str, Any]:
        options = {}
        if self.peephole:
            options["peephole"] = self._params[self._param_name("peephole", i)]
        if self.proj_size:
            options["W_hr"] = self._params[self._param_name("weight_hr", i)]
        return options

    def _repr_options(self) -> dict[str, Any]:
        return {"peephole": True} if self.peephole else {}

    def _keys_hint(self, missing: list[str], unexpected: list[str]) -> str:
        if any(k.startswith("weight_hr") for k in missing):
            return ("; weight_hr_l{k} is the projection of an LSTM with proj_size (PyTorch's): "
                    "ONNX and Keras LSTMs have none, so their converted weights load only "
                    "into an LSTM with proj_size=0")
        if any(k.startswith("weight_hr") for k in unexpected):
            return ("; weight_hr_l{k} is the projection of an LSTM with proj_size: make the "
                    "layer with proj_size=P, P the first axis of weight_hr_l0")
        return ""


# ----------------------------------------------------------------------------
# Linear


class Linear(_Layer):
    """Affine map over the last axis, ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features : int
        Size of the last axis of the input, at least 1.
    out_features : int
        Size of the last axis of the output, at least 1.
    bias : bool, default True
        With False, the layer has no ``bias`` parameter.
    seed : int or numpy.random.Generator, optional
        Seeds PyTorch's default initialisation: weight and bias
        ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).

    Attributes
    ----------
    grads : dict of str to float32 array
        Accumulated gradients of ``weight`` and ``bias``.
    training : bool
        Training mode (the default) keeps the input for :meth:`backward`.

    Notes
    -----
    Call: ``y = linear(x)`` for ``x`` of shape (..., in_features), any
    leading axes (a whole sequence (T, B, H) at once, with one matrix
    product); ``dx = linear.backward(dy)``.  Parameters ``weight``
    (out_features, in_features) and ``bias`` (out_features,), float32, as
    PyTorch's.  Threads: one call runs NumPy's matrix product; several
    Python threads may call layers at once, but not ``backward`` of one
    layer (it adds to the same ``grads``).

    Examples
    --------
    >>> import numpy as np, fastcells
    >>> head = fastcells.Linear(16, 3, seed=0)
    >>> head(np.zeros((5, 2, 16), np.float32)).shape
    (5, 2, 3)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 seed: Any = None) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.bias = check_bool("bias", bias)
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self._add_param("weight", ("out_features", "in_features"),
                        rng.uniform(-bound, bound, (self.out_features, self.in_features)))
        if self.bias:
            self._add_param("bias", ("out_features",),
                            rng.uniform(-bound, bound, self.out_features))
        self._x: Array | None = None

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra})"

    def _drop_tape(self) -> None:
        self._x = None

    def forward(self, x: Any) -> Array:
        """Apply the map: ``y = x @ weight.T + bias``.

        Parameters
        ----------
        x : array (..., in_features)
            Real floats, converted to float32; any leading axes.

        Returns
        -------
        y : float32 array (..., out_features)

        Raises
        ------
        ValueError
            The last axis is not ``in_features`` long.
        TypeError
            A non-floating ``x``.

        Notes
        -----
        In training mode the layer keeps (a copy of) ``x`` for :meth:`backward`.
        """
        x_in = to_numpy(x)
        x = as_float("x", x_in, _F32)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., in_features) = (..., {self.in_features}), "
                             f"got {x.shape}")
        x2 = x.reshape(-1, self.in_features)
        y = np.matmul(x2, self._params["weight"].T)
        if self.bias:
            y += self._params["bias"]
        if self.training:
            # keep our own copy: the caller may reuse its buffer before backward
            self._x = x.copy() if x is x_in else x
        else:
            self._x = None
        out: Array = y.reshape(x.shape[:-1] + (self.out_features,))
        return out

    def backward(self, dy: Any) -> Array:
        """Backpropagate through the last call made in training mode.

        Parameters
        ----------
        dy : array (..., out_features)
            Gradient of the loss with respect to the output, shaped like it.

        Returns
        -------
        dx : float32 array (..., in_features)
            Gradient with respect to the input.

        Raises
        ------
        RuntimeError
            No call in training mode was made.
        ValueError
            ``dy`` is not shaped like the last output.

        Notes
        -----
        The gradients of ``weight`` and ``bias`` are *added* to ``grads``.
        """
        if self._x is None:
            raise RuntimeError("backward: no input kept; call the layer in training mode "
                               "(layer.train(), the default) before backward")
        x = self._x
        dy = as_float("dy", to_numpy(dy), _F32)
        check_shape("dy", dy, ("...", "out_features"), x.shape[:-1] + (self.out_features,))
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += np.matmul(dy2.T, x.reshape(-1, self.in_features))
        if self.bias:
            self.grads["bias"] += dy2.sum(axis=0)
        dx: Array = np.matmul(dy2, self._params["weight"]).reshape(x.shape)
        return dx
