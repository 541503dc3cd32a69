"""One recurrent layer in one direction, as functions: the input projection plus the recurrence.

Shapes: x [T, B, I]; LSTM weights w_ih [4H, I], w_hh [4H, P], b_ih / b_hh [4H], w_hr [P, H];
GRU weights w_ih [3H, I], w_hh [3H, H], b_ih / b_hh [3H]; h0 [B, P], c0 [B, H]; lengths [B]
int64 (each in [1, T]) or None. The modules build layers, directions and batching from these.
"""

import torch
import torch.nn.functional as F

from gated_kernels import reference
from gated_kernels.autograd import GRUFunction, LSTMFunction
from gated_kernels.backends import resolve_backend


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
               reverse=False, backend="auto"):
    """Returns y [T, B, P], h_n [B, P], c_n [B, H].

    >>> T, B, I, H = 7, 2, 3, 4
    >>> y, h, c = lstm_layer(torch.randn(T, B, I), torch.zeros(B, H), torch.zeros(B, H),
    ...                      torch.randn(4 * H, I), torch.randn(4 * H, H), backend="reference")
    >>> tuple(y.shape)
    (7, 2, 4)
    """
    # Both biases act on the same pre-activation, so they fold into the input projection.
    bias = b_ih + b_hh if b_ih is not None else None
    xg = F.linear(x, w_ih, bias)
    if resolve_backend(backend, x.device) == "reference":
        return reference.lstm_recurrence(xg, w_hh, w_hr, h0, c0, lengths, reverse)
    return LSTMFunction.apply(xg, w_hh, w_hr, h0, c0, lengths, reverse)


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
              backend="auto"):
    """Returns y [T, B, H], h_n [B, H].

    >>> T, B, I, H = 7, 2, 3, 4
    >>> y, h = gru_layer(torch.randn(T, B, I), torch.zeros(B, H), torch.randn(3 * H, I),
    ...                  torch.randn(3 * H, H), backend="reference")
    >>> tuple(h.shape)
    (2, 4)
    """
    xg = F.linear(x, w_ih, b_ih)
    # b_hn sits inside r * (W_hn h + b_hn), so b_hh goes to the recurrence; zeros without bias.
    if b_hh is None:
        b_hh = w_hh.new_zeros(w_hh.shape[0])
    if resolve_backend(backend, x.device) == "reference":
        return reference.gru_recurrence(xg, w_hh, b_hh, h0, lengths, reverse)
    return GRUFunction.apply(xg, w_hh, b_hh, h0, lengths, reverse)
