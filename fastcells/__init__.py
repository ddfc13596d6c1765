"""fastcells: fast recurrent cells (RNN, GRU, LSTM) for NumPy.

Compiled forward and backward-through-time kernels behind a NumPy-native
functional API; ``fastcells.reference`` is the pure-NumPy oracle with the
same functions.
"""
from . import reference
from ._checks import (
    Cache,
    ForwardResult,
    Gradients,
    LSTMForwardResult,
    LSTMGradients,
    PeepholeLSTMGradients,
)
from ._config import show_config
from .functional import (
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)

__version__ = "0.1.0"

__all__ = [
    "rnn_forward", "rnn_backward", "gru_forward", "gru_backward",
    "lstm_forward", "lstm_backward", "reference", "show_config",
    "ForwardResult", "LSTMForwardResult", "Gradients", "LSTMGradients",
    "PeepholeLSTMGradients", "Cache",
]
from . import losses, optim
from .layers import GRU, LSTM, RNN, Linear
from .optim import clip_grad_norm

__all__ += ["RNN", "GRU", "LSTM", "Linear", "clip_grad_norm", "optim", "losses"]
from . import interop

__all__ += ["interop"]
from . import diagnostics

__all__ += ["diagnostics"]
