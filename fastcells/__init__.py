"""fastcells: fast recurrent cells (RNN, GRU, LSTM) for NumPy.

Compiled forward and backward-through-time kernels behind a NumPy-native
functional API (``rnn_forward`` ... ``lstm_backward``, ``Stepper``), layers
with PyTorch's API (``RNN``, ``GRU``, ``LSTM``, ``Linear``), training pieces
(``optim``, ``losses``, ``clip_grad_norm``), weight conversion (``interop``)
and the gradient-flow diagnostic (``diagnostics``).  ``fastcells.reference``
is the pure-NumPy oracle with the same functions.  ``show_config()`` prints
the version, the instruction-set path in use, the thread count and NumPy's
BLAS; ``set_num_threads`` / ``get_num_threads`` (or ``FASTCELLS_NUM_THREADS``)
set how many threads one call may use, ``set_deterministic`` /
``get_deterministic`` (or ``FASTCELLS_DETERMINISTIC``) whether every forward
call's results are independent of the batch they run in.
"""
from . import diagnostics, interop, losses, optim, reference
from ._config import get_deterministic, set_deterministic, show_config
from ._results import (
    Cache,
    ForwardResult,
    Gradients,
    LayerNormGradients,
    LayerNormLSTMGradients,
    LayerNormWeights,
    LSTMForwardResult,
    LSTMGradients,
    PeepholeLSTMGradients,
    ProjLSTMGradients,
)
from ._threads import get_num_threads, set_num_threads
from .functional import (
    Stepper,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from .layers import GRU, LSTM, RNN, Linear
from .optim import clip_grad_norm

__version__ = "0.1.0"

__all__ = [
    "rnn_forward", "rnn_backward", "gru_forward", "gru_backward",
    "lstm_forward", "lstm_backward", "Stepper",
    "RNN", "GRU", "LSTM", "Linear", "clip_grad_norm",
    "optim", "losses", "interop", "diagnostics", "reference", "show_config",
    "set_num_threads", "get_num_threads", "set_deterministic", "get_deterministic",
    "ForwardResult", "LSTMForwardResult", "Gradients", "LSTMGradients",
    "PeepholeLSTMGradients", "Cache",
    "LayerNormWeights", "LayerNormGradients", "LayerNormLSTMGradients",
    "ProjLSTMGradients",
]
