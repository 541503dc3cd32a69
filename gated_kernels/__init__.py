"""gated_kernels: fast, exact LSTM and GRU recurrences for PyTorch.

Importing the package declares the operators torch.ops.gated_kernels.{lstm,gru}_{forward,backward}
and registers the C++ CPU kernels when the extension is built; nothing else.
"""

from gated_kernels import ops  # noqa: F401  (declares the operators first)
from gated_kernels.autograd import GRUFunction, LSTMFunction
from gated_kernels.backends import BACKENDS, cpp_available, resolve_backend
from gated_kernels.cells import GRUCell, LSTMCell
from gated_kernels.convert import convert, revert
from gated_kernels.functional import gru_layer, lstm_layer
from gated_kernels.layernorm import LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell
from gated_kernels.rnn import GRU, LSTM
from gated_kernels.version import __version__

__all__ = [
    "BACKENDS",
    "GRU",
    "LSTM",
    "GRUCell",
    "GRUFunction",
    "LSTMCell",
    "LSTMFunction",
    "LayerNormGRU",
    "LayerNormGRUCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "__version__",
    "convert",
    "cpp_available",
    "gru_layer",
    "lstm_layer",
    "resolve_backend",
    "revert",
]
