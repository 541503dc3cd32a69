"""convert(model): swap every torch.nn LSTM, GRU, LSTMCell and GRUCell inside a model for
gated_kernels' drop-in equivalent, in place."""

from torch import nn

from gated_kernels.cells import GRUCell, LSTMCell
from gated_kernels.rnn import GRU, LSTM

REPLACEMENTS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}


def convert(model, *, backend="auto"):
    """Replaces each torch.nn.LSTM / GRU / LSTMCell / GRUCell in `model` (at any depth) with
    gated_kernels' module of the same configuration, parameter values, device, dtype and
    training mode; returns the model (or the replacement, if `model` itself is one).

    The replacements hold new Parameter objects: build the optimizer after converting.

    >>> model = nn.Sequential(nn.Embedding(100, 16), nn.LSTM(16, 32, batch_first=True))
    >>> type(convert(model)[1]).__name__
    'LSTM'
    """
    replacement = REPLACEMENTS.get(type(model))
    if replacement is not None:
        return replacement.from_torch(model, backend=backend)
    for name, child in model.named_children():
        new = convert(child, backend=backend)
        if new is not child:
            setattr(model, name, new)
    return model
