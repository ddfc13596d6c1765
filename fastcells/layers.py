"""Layers: ``RNN``, ``GRU``, ``LSTM`` and ``Linear``, built on ``fastcells.functional``.

How they are built, and why:
- A layer owns its parameters as float32 C-contiguous arrays under PyTorch's
  names and shapes.  ``functional`` takes such arrays without converting
  them, and optimizers and ``load_state_dict`` update them in place, so the
  references a layer keeps (per layer and direction) never go stale.
- A call loops over layers and directions and runs ``<cell>_forward`` once per
  (layer, direction): the time loop stays in the kernels.  Bidirectional
  outputs are concatenated ``[forward, reverse]`` on the last axis.
- Training mode (the default, as in PyTorch) keeps a *tape* of the caches and
  dropout masks of the last call for ``backward``; eval mode runs the kernels
  with ``training=False`` and keeps nothing.
- ``backward`` walks the tape in reverse and *accumulates* the parameter
  gradients into ``grads`` (same keys as the state dict), like PyTorch's
  ``.grad``; ``zero_grad`` clears them in place.
- Data flows layers -> functional -> kernels; a layer never reaches past
  ``functional``.  ``backend=fastcells.reference`` swaps in the NumPy oracle
  (same signatures), which the tests use.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple, Optional

import numpy as np

from . import functional
from ._float16 import check_weight_dtype, float16_values
from ._checks import (GATES, as_float, check_bool, check_nonlinearity, check_shape, float_dtype,
                      is_f32c)

F32 = np.float32

__all__ = ["RNN", "GRU", "LSTM", "Linear"]


class LoadResult(NamedTuple):
    """What :meth:`load_state_dict` ignored (only non-empty with ``strict=False``)."""

    missing_keys: list
    unexpected_keys: list


def _to_numpy(value: Any) -> np.ndarray:
    """A NumPy view of an array or a framework tensor, duck-typed (no framework import).

    PyTorch tensors (``detach``, ``cpu``, ``numpy``), TensorFlow tensors and
    variables (``numpy``), and anything with ``__array__`` (JAX, CuPy on host...).
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        return np.asarray(value.numpy())
    if hasattr(value, "numpy") and callable(value.numpy):
        return np.asarray(value.numpy())
    return np.asarray(value)


def _stack(states: list, view: bool) -> np.ndarray:
    """``np.stack(states)`` for the per-(layer, direction) states (B, H) of a call.

    np.stack costs ~3 us a call whatever the size, paid per state kind per call;
    this costs ~0.2 us for one state and ~0.3 us per state for more.  ``view``:
    a single state may be returned as a (1, B, H) view, for states that are new
    arrays nothing else holds (what ``functional`` returns).
    """
    first = states[0]
    if len(states) == 1:
        return first[None] if view else first[None].copy()
    out = np.empty((len(states),) + first.shape, np.result_type(*states))
    for i, state in enumerate(states):
        out[i] = state
    return out


def _check_size(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


class _Layer:
    """Parameters, gradients, train/eval mode and state dicts, common to every layer."""

    def __init__(self) -> None:
        self._params: dict[str, np.ndarray] = {}
        self._derived: Any = None
        self._symbols: dict[str, tuple] = {}
        #: accumulated parameter gradients, float32, same keys and shapes as the parameters
        self.grads: dict[str, np.ndarray] = {}
        #: True in training mode (the default, as in PyTorch)
        self.training = True

    def _add_param(self, name: str, symbols: tuple, value: np.ndarray) -> np.ndarray:
        self._params[name] = np.ascontiguousarray(value, dtype=F32)
        self._symbols[name] = symbols
        self.grads[name] = np.zeros_like(self._params[name])
        return self._params[name]

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - every layer defines it
        raise NotImplementedError

    def train(self, mode: bool = True) -> "_Layer":
        """Set training mode (``mode=True``, keeps activations for backward) or eval mode."""
        self.training = check_bool("mode", mode)
        if not self.training:
            self._drop_tape()
        return self

    def eval(self) -> "_Layer":
        """Set eval (inference) mode: no dropout, no activations kept.  Returns the layer."""
        return self.train(False)

    def _drop_tape(self) -> None:
        """Forget what the last training call kept for backward."""

    def zero_grad(self) -> None:
        """Set every accumulated gradient in :attr:`grads` to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    def __getstate__(self) -> dict:
        # the prepared weights (compiled Steppers) are derived: rebuilt at the next step
        state = self.__dict__.copy()
        state["_derived"] = None
        return state

    def parameters_changed(self) -> None:
        """Forget what was derived from the parameters (the prepared weights of ``step``).

        The optimizers and :meth:`load_state_dict` call it; call it yourself after
        writing into the arrays of :meth:`parameters` directly.
        """
        self._derived = None

    def parameters(self) -> dict:
        """The parameters, name -> live float32 array (optimizers update them in place)."""
        return dict(self._params)

    def state_dict(self) -> dict:
        """A copy of the parameters, name -> float32 array, in PyTorch's names, shapes and order.

        For a PyTorch module: ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
        """
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> LoadResult:
        """Copy parameters from ``state_dict`` into this layer (in place).

        Parameters
        ----------
        state_dict : mapping name -> array
            NumPy arrays or framework tensors (PyTorch's ``module.state_dict()``
            loads as it is); values are converted to float32.
        strict : bool
            Require exactly this layer's keys.  With ``False``, missing and
            unexpected keys are skipped and returned.

        Returns
        -------
        LoadResult
            ``(missing_keys, unexpected_keys)``.

        Raises
        ------
        ValueError
            Missing or unexpected keys (``strict=True``), or a shape that differs
            from the layer's; nothing is loaded then.
        TypeError
            A value that is not a real floating-point array.
        """
        strict = check_bool("strict", strict)
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got "
                            f"{type(state_dict).__name__}")
        keys = list(state_dict.keys())
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in keys if k not in self._params]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict: does not match the parameters of {self!r}: missing keys "
                f"{missing}, unexpected keys {unexpected} (expected {list(self._params)})"
            )
        # convert and check everything before writing anything: no half-loaded layer
        loaded = {}
        for name in keys:
            if name in self._params:
                value = as_float(name, _to_numpy(state_dict[name]), F32)
                check_shape(name, value, self._symbols[name], self._params[name].shape)
                loaded[name] = value
        for name, value in loaded.items():
            self._params[name][...] = value
        self.parameters_changed()
        return LoadResult(missing, unexpected)


# ----------------------------------------------------------------------------
# recurrent layers


class _RNNBase(_Layer):
    _cell = "rnn"
    _state_names = ("h0",)
    _grad_names = ("dh",)
    _step_dtype = "float32"     # also the value of layers pickled before it existed

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, seed=None, backend=None,
                 _extra_params=()) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size, 1)
        self.hidden_size = H = _check_size("hidden_size", hidden_size, 1)
        self.num_layers = _check_size("num_layers", num_layers, 1)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, (int, float, np.floating, np.integer)):
            raise TypeError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout: dropout acts between layers, so it does nothing with "
                          f"num_layers=1 (got dropout={dropout})", stacklevel=3)
        self._forward_fn, self._backward_fn = self._resolve_backend(backend)
        self.backend = backend
        G = GATES[self._cell]
        D = self.num_directions
        # PyTorch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in state-dict order
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(H)
        #: per (layer, direction): names of W_ih, W_hh, b_ih, b_hh (None without bias), extras
        self._names: list[tuple] = []
        for k in range(self.num_layers):
            for d in range(D):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                in_size, in_sym = (self.input_size, "input_size") if k == 0 else (D * H, "D*H")
                shapes = [("weight_ih", (f"{G}*H", in_sym), (G * H, in_size)),
                          ("weight_hh", (f"{G}*H", "H"), (G * H, H))]
                if self.bias:
                    shapes += [("bias_ih", (f"{G}*H",), (G * H,)),
                               ("bias_hh", (f"{G}*H",), (G * H,))]
                shapes += [(n, sym, shp) for n, sym, shp in _extra_params]
                for base, sym, shape in shapes:
                    self._add_param(base + suffix, sym, rng.uniform(-bound, bound, shape))
                names = [base + suffix for base, _, _ in shapes]
                if not self.bias:
                    names[2:2] = [None, None]
                self._names.append(tuple(names))
        # the live arrays functional is called with, per (layer, direction)
        self._weights = [tuple(None if n is None else self._params[n] for n in names[:4])
                         for names in self._names]
        # the same generator continues for the dropout masks: seeded runs repeat exactly
        self._rng = rng
        self._tape = None

    # -- configuration -----------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _resolve_backend(self, backend):
        module = functional if backend is None else backend
        names = (f"{self._cell}_forward", f"{self._cell}_backward")
        if not all(callable(getattr(module, n, None)) for n in names):
            raise TypeError(f"backend: expected None (fastcells.functional) or a module with "
                            f"{names[0]} and {names[1]} such as fastcells.reference, got "
                            f"{backend!r}")
        return getattr(module, names[0]), getattr(module, names[1])

    def _options(self) -> dict:
        """The cell's own keyword options for ``<cell>_forward``."""
        return {}

    def _direction_options(self, i: int) -> dict:
        """Keyword options for ``<cell>_forward`` of (layer, direction) number ``i``."""
        return self._options()


    def __repr__(self) -> str:
        args = [str(self.input_size), str(self.hidden_size)]
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                args.append(f"{name}={getattr(self, name)!r}")
        args += [f"{k}={v!r}" for k, v in self._repr_options().items()]
        return f"{type(self).__name__}({', '.join(args)})"

    def _repr_options(self) -> dict:
        return {}

    def _drop_tape(self) -> None:
        self._tape = None

    # -- argument handling ---------------------------------------------------

    def _time_major(self, name: str, a: Any, last: int, last_sym: str) -> np.ndarray:
        """Check a sequence argument (x or dy) and return it time-major (T, B, last)."""
        arr = _to_numpy(a)
        if arr.ndim != 3 or arr.shape[2] != last:
            symbols = ("B", "T", last_sym) if self.batch_first else ("T", "B", last_sym)
            layout = f"({', '.join(symbols)})" + (" (batch_first=True)" if self.batch_first else "")
            if arr.ndim != 3:
                raise ValueError(f"{name}: expected a 3-D array of shape {layout}, got "
                                 f"{arr.ndim}-D array of shape {arr.shape}")
            raise ValueError(f"{name}: expected shape {layout} with {last_sym} = {last}, got "
                             f"{arr.shape}")
        return arr.transpose(1, 0, 2) if self.batch_first else arr

    def _states(self, states: Any, B: int, arg: str, names: tuple) -> list:
        """Split a state argument into per-kind stacks (L*D, B, H), or None for zeros.

        ``states`` is an array (RNN, GRU) or a pair (LSTM) of arrays or None;
        ``names`` names each kind in error messages.
        """
        kinds = len(self._state_names)
        if states is None:
            return [None] * kinds
        compiled = self.backend is None
        L, H = self.num_layers * self.num_directions, self.hidden_size
        if compiled:
            # arrays that fit are what the checks below return for them, at a fraction
            # of the cost (step() pays this per time step)
            shape = (L, B, H)
            if kinds == 1:
                if is_f32c(states) and states.shape == shape:
                    return [states]
            elif type(states) is tuple and len(states) == 2:
                h, c = states
                if is_f32c(h) and is_f32c(c) and h.shape == shape and c.shape == shape:
                    return [h, c]
        if kinds > 1:
            if not isinstance(states, (tuple, list)) or len(states) != kinds:
                raise TypeError(f"{arg}: expected None or a pair ({', '.join(names)}) of arrays "
                                f"of shape (num_layers*num_directions, B, H), got "
                                f"{type(states).__name__}")
            parts = list(states)
        else:
            parts = [states]
        out = []
        for part_name, part in zip(names, parts):
            if part is None:
                out.append(None)
                continue
            arr = _to_numpy(part)
            # float32 for the kernels; another backend (the reference) keeps the precision
            arr = as_float(part_name, arr, F32 if compiled else float_dtype(arr))
            check_shape(part_name, arr, ("num_layers*num_directions", "B", "H"), (L, B, H))
            out.append(arr)
        return out

    def _pack_states(self, stacks: list):
        """Return states in the call convention: ``h`` or ``(h, c)``."""
        return stacks[0] if len(stacks) == 1 else tuple(stacks)

    # -- forward / backward ----------------------------------------------------

    def forward(self, x, hx=None, lengths=None):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        x : array (T, B, input_size), or (B, T, input_size) with ``batch_first``
            Real floats, converted to float32.
        hx : array (num_layers*num_directions, B, H), optional
            Initial hidden state (LSTM: a pair ``(h0, c0)``); zeros if None.
        lengths : int array (B,), optional
            Valid steps per sequence, ``0 <= lengths[b] <= T`` (as PyTorch's packed
            sequences): outputs past a sequence's end are zeros, its final state is
            the state after its last valid step, and the reverse direction starts there.

        Returns
        -------
        y : float32 array (T, B, D*H), or (B, T, D*H) with ``batch_first``
            Outputs of the last layer, ``[forward, reverse]`` concatenated when
            bidirectional (D = 2).
        h : float32 array (num_layers*num_directions, B, H)
            Final hidden states, index ``layer * D + direction`` (LSTM: ``(h, c)``).

        Notes
        -----
        Truncated BPTT over stateful chunks: pass the previous chunk's final state
        as ``hx`` (a new array the layer never writes; ``h.copy()`` if you change
        it), then call :meth:`backward` for this chunk and ignore the ``dh0`` it
        returns: the gradient stops at the chunk boundary.
        """
        x = self._time_major("x", x, self.input_size, "input_size")
        T, B = x.shape[:2]
        init = self._states(hx, B, "hx", self._state_names)
        training, D = self.training, self.num_directions
        tape, finals = [], [[] for _ in init]
        inp = x
        for k in range(self.num_layers):
            outs, caches = [], []
            for d in range(D):
                i = k * D + d
                res = self._forward_fn(inp, *self._weights[i],
                                       *(None if s is None else s[i] for s in init),
                                       lengths=lengths, reverse=bool(d), training=training,
                                       **self._direction_options(i))
                outs.append(res.y)
                caches.append(res.cache)
                for j, f in enumerate(finals):
                    f.append(res[1 + j])
            y = outs[0] if D == 1 else np.concatenate(outs, axis=-1)
            mask = None
            if training and self.dropout > 0 and k < self.num_layers - 1:
                mask = self._dropout_mask(y.shape)
                y = y * mask
            tape.append((caches, mask))
            inp = y
        self._tape = (tape, T, B) if training else None
        if self.batch_first:
            inp = np.ascontiguousarray(inp.transpose(1, 0, 2))
        return inp, self._pack_states([_stack(f, self.backend is None) for f in finals])

    def _dropout_mask(self, shape: tuple) -> np.ndarray:
        """Inverted dropout, as PyTorch: keep with probability 1-p, scale kept by 1/(1-p)."""
        p = self.dropout
        if p >= 1:
            return np.zeros(shape, F32)
        return (self._rng.random(shape) >= p).astype(F32) * F32(1.0 / (1.0 - p))

    def backward(self, dy=None, dh=None):
        """Backpropagate through the last call (made in training mode).

        Parameters
        ----------
        dy : array shaped like the output ``y``, optional
            Gradient of the loss with respect to ``y`` (zeros if None).
        dh : array (num_layers*num_directions, B, H), optional
            Gradient with respect to the final state ``h`` (LSTM: a pair
            ``(dh_n, dc_n)``, either may be None); zeros if None.

        Returns
        -------
        dx : float32 array shaped like ``x``
        dh0 : float32 array (num_layers*num_directions, B, H)
            Gradient with respect to the initial state (LSTM: ``(dh0, dc0)``).
            With truncated BPTT, simply do not propagate it further.

        The parameter gradients are *added* to :attr:`grads` (call
        :meth:`zero_grad` between updates).  The tape is kept, so backward can
        be called again on the same call.
        """
        if self._tape is None:
            raise RuntimeError(
                "backward: no activations kept; call the layer in training mode (layer.train(), "
                "the default) before backward (eval mode and step() keep nothing)")
        tape, T, B = self._tape
        D, H = self.num_directions, self.hidden_size
        d_out = None if dy is None else self._time_major("dy", dy, D * H, "D*H")
        if d_out is not None and d_out.shape[:2] != (T, B):
            order = "(B, T)" if self.batch_first else "(T, B)"
            got = d_out.shape[1::-1] if self.batch_first else d_out.shape[:2]
            want = (B, T) if self.batch_first else (T, B)
            raise ValueError(f"dy: expected leading axes {order} = {want} as the output of the "
                             f"last call, got {got}")
        upstream = self._states(dh, B, "dh", self._grad_names)
        initial = [[None] * (self.num_layers * D) for _ in upstream]
        for k in range(self.num_layers - 1, -1, -1):
            caches, _ = tape[k]
            d_inp = None
            for d in range(D):
                i = k * D + d
                dy_d = None if d_out is None else (d_out if D == 1 else d_out[..., d * H:(d + 1) * H])
                g = self._backward_fn(caches[d], dy_d, *(None if u is None else u[i] for u in upstream))
                d_inp = g.dx if d_inp is None else d_inp + g.dx
                for j, init in enumerate(initial):
                    init[i] = g[1 + j]
                self._accumulate(i, g)
            below = tape[k - 1][1] if k > 0 else None
            d_out = d_inp if below is None else d_inp * below
        dx = d_out.astype(F32, copy=False)
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, self._pack_states([_stack(s, self.backend is None).astype(F32, copy=False)
                                      for s in initial])

    def _accumulate(self, i: int, g) -> None:
        names = self._names[i]
        for name, value in zip(names[:4], (g.dW_ih, g.dW_hh, g.db_ih, g.db_hh)):
            if name is not None:
                self.grads[name] += value
        if hasattr(g, "dpeephole"):
            self.grads[names[4]] += g.dpeephole

    # -- streaming -------------------------------------------------------------

    def step(self, x_t, state=None):
        """Advance one time step for a batch (streaming inference).

        Gives the same numbers as the sequence call (eval mode: no dropout) and
        keeps no activations, so there is no backward through ``step``.  The
        weights are prepared (checked, packed, biases folded) at the first step
        and reused, so a step costs a few microseconds at H = 64; they are
        prepared again after :meth:`load_state_dict`, an optimizer's ``step()``
        or :meth:`parameters_changed` (call it after editing the arrays of
        :meth:`parameters` yourself).

        Parameters
        ----------
        x_t : array (B, input_size)
        state : array (num_layers, B, H), optional
            The state returned by the previous step (LSTM: ``(h, c)``); zeros if None.

        Returns
        -------
        y_t : float32 array (B, H)
            Output of the last layer at this step.
        state : float32 array (num_layers, B, H)
            The new state (LSTM: ``(h, c)``), to pass to the next step.

        Raises
        ------
        ValueError
            For a bidirectional layer (its reverse direction needs the whole sequence).
        """
        if self.bidirectional:
            raise ValueError("step: expected a unidirectional layer, got bidirectional=True "
                             "(the reverse direction starts at the end of the sequence; run "
                             "the whole sequence with layer(x) instead)")
        # Per-step overhead matters here (a step of the kernels is a few us at H = 64):
        # arrays that already fit skip the conversions, which would return them as they are.
        compiled = self.backend is None
        x = x_t if compiled and is_f32c(x_t) else as_float(
            "x_t", _to_numpy(x_t), F32 if compiled else float_dtype(x_t))
        shape = x.shape
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ValueError(f"x_t: expected shape (B, input_size) = (B, {self.input_size}), "
                             f"got {shape}")
        init = self._states(state, shape[0], "state", self._state_names)
        if compiled and self.num_layers == 1:
            # the common streaming case, as the loop below computes it, less its bookkeeping
            out = self._prepared(0)(x, *[None if s is None else s[0] for s in init])
            if type(out) is tuple:
                h, c = out
                return h, (h[None], c[None])
            return out, out[None]
        finals = [[] for _ in init]
        inp = x
        for k in range(self.num_layers):
            states_k = [None if s is None else s[k] for s in init]
            if compiled:
                out = self._prepared(k)(inp, *states_k)
                out = out if type(out) is tuple else (out,)
            else:
                res = self._forward_fn(inp[None], *self._prepared(k), *states_k,
                                       **self._direction_options(k))
                out = tuple(res[1:1 + len(init)])
            inp = out[0]
            for f, o in zip(finals, out):
                f.append(o)
        return inp, self._pack_states([_stack(f, True) for f in finals])

    @property
    def step_weight_dtype(self) -> str:
        """What :meth:`step` multiplies by: ``"float32"`` (the default) or
        ``"float16"``, the weights ``W_ih``/``W_hh`` rounded to float16 when they are
        prepared (float32 arithmetic; batch-1 and batch-2 steps read half the bytes:
        see :class:`fastcells.Stepper`'s ``weight_dtype``).  For serving; the
        sequence call and training are not affected.  Setting it prepares the
        weights again at the next step; the reference backend rounds the same
        weights.  A weight beyond float16's range raises ValueError
        naming the parameter (``weight_hh_l0``, ...) at that step."""
        return self._step_dtype

    @step_weight_dtype.setter
    def step_weight_dtype(self, value) -> None:
        half = check_weight_dtype(value, "step_weight_dtype")
        self._step_dtype = "float16" if half else "float32"
        self._derived = None

    def _step_weights(self, k: int) -> tuple:
        """Layer ``k``'s weights as :meth:`step` multiplies by them (rounded to float16
        values for ``step_weight_dtype="float16"``; errors name the parameters)."""
        w = self._weights[k]
        if self._step_dtype == "float32":
            return w
        return tuple(float16_values(n, W, "step_weight_dtype")
                     for n, W in zip(self._names[k][:2], w[:2])) + tuple(w[2:])

    def _prepared(self, k: int):
        """Layer ``k``'s weights prepared for :meth:`step`, built on first use and dropped
        when the parameters change: a compiled Stepper, or for the reference backend
        the weights as a step multiplies by them."""
        derived = self._derived
        if derived is None:
            derived = self._derived = [None] * self.num_layers
        if derived[k] is None:
            w = self._step_weights(k)
            derived[k] = w if self.backend is not None else functional.Stepper(
                self._cell, *w, weight_dtype=self._step_dtype, **self._direction_options(k))
        return derived[k]


class RNN(_RNNBase):
    """Elman RNN layer, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, with PyTorch's API.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int
        Stacked layers; layer k > 0 reads the outputs of layer k-1.
    bias : bool
    batch_first : bool
        ``x`` and ``y`` are (B, T, features) instead of (T, B, features).
        States stay (num_layers*num_directions, B, H), as in PyTorch.
    dropout : float
        Dropout on the outputs of every layer but the last, in training mode only.
    bidirectional : bool
    nonlinearity : {"tanh", "relu"}
    seed : int or numpy Generator, optional
        Seeds the initialisation (PyTorch's default: every parameter
        ~ U(-1/sqrt(H), 1/sqrt(H))) and then the dropout masks.
    backend : module, optional
        None for the compiled kernels (``fastcells.functional``); ``fastcells.reference``
        runs the NumPy oracle in the input's dtype (for checks).

    Attributes
    ----------
    grads : dict name -> float32 array
        Accumulated parameter gradients (same keys as :meth:`state_dict`).
    training : bool
        Training mode (default) keeps activations for :meth:`backward` and
        applies dropout; :meth:`eval` turns both off.

    Parameters are named as PyTorch's: ``weight_ih_l{k}`` (G*H, in), ``weight_hh_l{k}``
    (G*H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,), suffix ``_reverse`` for the
    backward direction (G = 1 for RNN, 3 for GRU, 4 for LSTM).

    Call: ``y, h = rnn(x, h0=None, lengths=None)``; see :meth:`forward`,
    :meth:`backward` and :meth:`step`.
    """

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, nonlinearity="tanh", seed=None,
                 backend=None) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, seed=seed, backend=backend)

    def _options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    def _repr_options(self) -> dict:
        return {} if self.nonlinearity == "tanh" else {"nonlinearity": self.nonlinearity}


class GRU(_RNNBase):
    """GRU layer (gates r, z, n as PyTorch) with PyTorch's API.

    Parameters as :class:`RNN`, with ``linear_before_reset`` instead of ``nonlinearity``:
    True (PyTorch, cuDNN, Keras ``reset_after=True``): ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``;
    False (Cho et al. 2014, ONNX's default): ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``.

    Call: ``y, h = gru(x, h0=None, lengths=None)``.
    """

    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, linear_before_reset=True, seed=None,
                 backend=None) -> None:
        self.linear_before_reset = check_bool("linear_before_reset", linear_before_reset)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, seed=seed, backend=backend)

    def _options(self) -> dict:
        return {"linear_before_reset": self.linear_before_reset}

    def _repr_options(self) -> dict:
        return {} if self.linear_before_reset else {"linear_before_reset": False}


class LSTM(_RNNBase):
    """LSTM layer (gates i, f, g, o as PyTorch) with PyTorch's API.

    Parameters as :class:`RNN`, with ``peephole`` instead of ``nonlinearity``.
    ``peephole=True`` adds the parameters ``peephole_l{k}`` (suffix ``_reverse``)
    of shape (3*H,), order i, f, o (ONNX's P, oneDNN): i and f also see
    ``p_i * c_{t-1}``, ``p_f * c_{t-1}`` and o sees ``p_o * c_t``.

    Call: ``y, (h, c) = lstm(x, (h0, c0)=None, lengths=None)``;
    ``dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))``.
    """

    _cell = "lstm"
    _state_names = ("h0", "c0")
    _grad_names = ("dh", "dc")

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, peephole=False, seed=None,
                 backend=None) -> None:
        self.peephole = check_bool("peephole", peephole)
        extra = ((("peephole", ("3*H",), (3 * hidden_size,)),) if self.peephole else ())
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, seed=seed, backend=backend, _extra_params=extra)

    def _direction_options(self, i: int) -> dict:
        return {"peephole": self._params[self._names[i][4]]} if self.peephole else {}

    def _repr_options(self) -> dict:
        return {"peephole": True} if self.peephole else {}


# ----------------------------------------------------------------------------
# Linear


class Linear(_Layer):
    """Affine map over the last axis, ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    seed : int or numpy Generator, optional
        Seeds PyTorch's default initialisation: weight and bias
        ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).

    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,);
    gradients accumulate in :attr:`grads`.  Applied at every step of a sequence
    ``(T, B, H)`` (any leading axes) with one matrix product.
    """

    def __init__(self, in_features, out_features, bias=True, seed=None) -> None:
        super().__init__()
        self.in_features = _check_size("in_features", in_features, 1)
        self.out_features = _check_size("out_features", out_features, 1)
        self.bias = check_bool("bias", bias)
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self._add_param("weight", ("out_features", "in_features"),
                        rng.uniform(-bound, bound, (self.out_features, self.in_features)))
        if self.bias:
            self._add_param("bias", ("out_features",), rng.uniform(-bound, bound, self.out_features))
        self._x = None

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra})"

    def _drop_tape(self) -> None:
        self._x = None

    def forward(self, x):
        """``y = x @ weight.T + bias`` for ``x (..., in_features)``; returns float32 ``(..., out_features)``."""
        x_in = _to_numpy(x)
        x = as_float("x", x_in, F32)
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
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dy):
        """Gradient for ``dy (..., out_features)``: returns ``dx (..., in_features)``, adds to :attr:`grads`."""
        if self._x is None:
            raise RuntimeError("backward: no input kept; call the layer in training mode "
                               "(layer.train(), the default) before backward")
        x = self._x
        dy = as_float("dy", _to_numpy(dy), F32)
        check_shape("dy", dy, ("...", "out_features"), x.shape[:-1] + (self.out_features,))
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += np.matmul(dy2.T, x.reshape(-1, self.in_features))
        if self.bias:
            self.grads["bias"] += dy2.sum(axis=0)
        return np.matmul(dy2, self._params["weight"]).reshape(x.shape)
