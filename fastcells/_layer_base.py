"""What every layer has: parameters, gradients, train/eval mode, state dicts and pickles.

A layer owns its parameters as float32 C-contiguous arrays under PyTorch's
names and shapes, and a gradient of the same shape for each.  Optimizers
and :meth:`_Layer.load_state_dict` write the parameters in place, so the
references a layer keeps to them stay valid; what a layer derives from
them (the prepared weights of ``step``) is dropped by
:meth:`_Layer.parameters_changed` and rebuilt when next needed.
``load_state_dict(..., assign=True)`` instead makes the given arrays the
parameters (no copy; read-only ones for inference), and the layer refreshes
its references (:meth:`_Layer._parameters_replaced`).

A layer pickles (and copies) to its parameters and its options: everything
in its ``__dict__`` except the gradients (zeros again on load), what the
last training call kept for ``backward`` and the prepared steppers, with the
header of ``_pickle`` (format and version, checked on load).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._checks import as_float, check_bool, check_shape, is_f32c, to_numpy
from ._pickle import PROJ_PICKLE_FORMAT, with_header, without_header

F32 = np.dtype(np.float32)

#: a float32 array, as the layers store and return them
Array = np.ndarray


class LoadResult(NamedTuple):
    """What :meth:`load_state_dict` skipped (only non-empty with ``strict=False``)."""

    #: parameters of the layer that the state dict did not hold
    missing_keys: list[str]
    #: keys of the state dict that are not parameters of the layer
    unexpected_keys: list[str]


class _Layer:
    """Parameters, gradients, train/eval mode and state dicts, common to every layer."""

    def __init__(self) -> None:
        self._params: dict[str, Array] = {}
        #: what is derived from the parameters (the prepared steppers); None: rebuild
        self._derived: Any = None
        self._symbols: dict[str, tuple[str, ...]] = {}
        #: accumulated parameter gradients, float32, same keys and shapes as the parameters
        self.grads: dict[str, Array] = {}
        #: True in training mode (the default, as in PyTorch)
        self.training = True

    def _add_param(self, name: str, symbols: tuple[str, ...], value: Array) -> Array:
        self._params[name] = np.ascontiguousarray(value, dtype=F32)
        self._symbols[name] = symbols
        self.grads[name] = np.zeros_like(self._params[name])
        return self._params[name]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - defined by each layer
        raise NotImplementedError

    def _drop_tape(self) -> None:
        """Forget what the last training call kept for backward."""

    def _parameters_replaced(self) -> None:
        """Refresh what refers to the parameter arrays, after new arrays replaced them
        in ``_params`` (``load_state_dict(..., assign=True)``).  Layers that keep such
        references besides ``_params`` override it."""

    def _keys_hint(self, missing: list[str], unexpected: list[str]) -> str:
        """What the missing and unexpected keys of a state dict suggest, for the message
        of :meth:`load_state_dict` ("" when nothing)."""
        return ""

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state: the ``__dict__`` without gradients, tape or prepared steppers.

        Plain NumPy arrays (the parameters, each once: other references to them
        are memoized by pickle) and plain values, with the format header.
        """
        state = self.__dict__.copy()
        # the layer's own hook forgets the tape, here in a shell over the copy
        shell = object.__new__(type(self))
        shell.__dict__ = state
        shell._drop_tape()
        del state["grads"]
        state["_derived"] = None
        # a projection is format 2: a fastcells that reads format 1 only would load it
        # without knowing weight_hr and fail (or misread it) at the first call
        projected = bool(getattr(self, "proj_size", 0))
        return with_header(state, PROJ_PICKLE_FORMAT if projected else None)

    def __setstate__(self, state: Any) -> None:
        """Restore a pickled state (a newer format raises ``ValueError`` naming both
        versions); the gradients are zeros, nothing is kept for ``backward``."""
        attrs = without_header(type(self).__name__, state, ("_params",))
        self.__dict__.update(attrs)
        # a dict of its own: assign=True in a shallow copy must not touch the original
        self._params = dict(self._params)
        self.grads = {name: np.zeros(p.shape, F32) for name, p in self._params.items()}
        self._derived = None
        self._drop_tape()

    def train(self, mode: bool = True) -> _Layer:
        """Set training mode (``mode=True``) or eval mode (``mode=False``).

        Training mode (a new layer's mode, as in PyTorch) keeps what
        ``backward`` needs from each call and applies dropout between
        recurrent layers; eval mode keeps nothing and applies no dropout.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for eval mode.

        Returns
        -------
        layer
            The layer itself, so ``layer = LSTM(...).train()`` chains.

        Raises
        ------
        TypeError
            ``mode`` is not a bool.
        """
        self.training = check_bool("mode", mode)
        if not self.training:
            self._drop_tape()
        return self

    def eval(self) -> _Layer:
        """Set eval (inference) mode: no dropout, nothing kept for backward.

        The same as ``train(False)``.  ``backward`` raises ``RuntimeError``
        until the layer is called again in training mode.

        Returns
        -------
        layer
            The layer itself, so ``layer = LSTM(...).eval()`` chains.
        """
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every accumulated gradient in ``grads`` to zero, in place.

        ``backward`` adds to the gradients (as PyTorch's ``.grad``); call this
        between optimizer steps.  The arrays stay the same objects, so
        references to them (an optimizer's) stay valid.

        Returns
        -------
        None
        """
        for g in self.grads.values():
            g.fill(0)

    def parameters_changed(self) -> None:
        """Forget what was derived from the parameters: the prepared weights of ``step``.

        The optimizers and :meth:`load_state_dict` call it; call it yourself
        after writing into the arrays of :meth:`parameters` directly, so that
        the next ``step`` prepares the new values.

        Returns
        -------
        None
        """
        self._derived = None

    def parameters(self) -> dict[str, Array]:
        """The parameters, name -> the live float32 array.

        Optimizers update these arrays in place; after writing into them
        yourself, call :meth:`parameters_changed`.

        Returns
        -------
        dict of str to float32 array
            In PyTorch's names and order (the keys of :meth:`state_dict`).
        """
        return dict(self._params)

    def state_dict(self) -> dict[str, Array]:
        """A copy of the parameters, name -> float32 array, in PyTorch's names, shapes and order.

        For a PyTorch module of the same configuration:
        ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

        Returns
        -------
        dict of str to float32 array
            New arrays: writing them does not change the layer.
        """
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict: Any, strict: bool = True, *,
                        assign: bool = False) -> LoadResult:
        """Load parameters from ``state_dict``: copied into this layer's arrays, or assigned.

        Parameters
        ----------
        state_dict : mapping of str to array
            NumPy arrays or framework tensors (duck-typed: PyTorch's
            ``module.state_dict()`` loads as it is); values are converted to
            float32.
        strict : bool, default True
            Require exactly this layer's keys.  With ``False``, missing and
            unexpected keys are skipped and returned.
        assign : bool, default False
            False: copy the values into the layer's parameter arrays, in place
            (references to them, an optimizer's, stay valid).  True (PyTorch's
            name): the given arrays *become* the parameters, without a copy, when
            they are float32, C-contiguous, native-order ndarrays (a NumPy view of
            a tensor or a memory map included); other arrays are converted, a
            copy.  Read-only arrays (Ray's object store, ``np.load(...,
            mmap_mode="r")``) are taken as they are: the layer then runs forward
            and ``backward`` (gradients are the layer's own arrays), but an
            optimizer step on them raises ``ValueError`` naming the parameter,
            and so does a later ``load_state_dict`` with ``assign=False``.
            Writes to an assigned array (by its owner) change the layer: call
            :meth:`parameters_changed` after such a write.

        Returns
        -------
        LoadResult
            ``(missing_keys, unexpected_keys)``, lists of str.

        Raises
        ------
        ValueError
            Missing or unexpected keys (``strict=True``), a shape that differs
            from the layer's, or (``assign=False``) a read-only parameter to
            write; nothing is loaded then.
        TypeError
            ``state_dict`` is not a mapping, or a value is not a real
            floating-point array, or ``assign`` not a bool; nothing is loaded then.
        """
        strict = check_bool("strict", strict)
        assign = check_bool("assign", assign)
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
                f"{self._keys_hint(missing, unexpected)}"
            )
        # convert and check everything before writing anything: no half-loaded layer
        loaded = {}
        for name in keys:
            if name in self._params:
                value = to_numpy(state_dict[name])
                if not is_f32c(value):
                    value = as_float(name, value, F32)
                check_shape(name, value, self._symbols[name], self._params[name].shape)
                if not (assign or self._params[name].flags.writeable):
                    raise ValueError(
                        f"state_dict: cannot copy {name} into its parameter, a read-only array "
                        f"(assigned or unpickled without a copy); expected assign=True, which "
                        f"replaces the arrays instead, got assign=False")
                loaded[name] = value
        for name, value in loaded.items():
            if assign:
                self._params[name] = value
            else:
                self._params[name][...] = value
        if assign:
            self._parameters_replaced()
        self.parameters_changed()
        return LoadResult(missing, unexpected)
