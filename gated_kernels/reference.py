"""The reference recurrence in plain PyTorch: the test oracle and the `reference` backend.

Written for clarity, one step at a time, with autograd providing the gradients. It computes in
the dtype it is given (float64 for tests) and follows the op contract in `ops.py`: for
t >= lengths[b] row b carries its state unchanged and its output is 0; with `reverse` a row runs
from lengths[b]-1 down to 0.
"""

import torch


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _carry(active, new, old):
    """The new state on rows still inside their length, the old one elsewhere."""
    return new if active is None else torch.where(active, new, old)


def _active_rows(lengths, t):
    return None if lengths is None else (t < lengths).unsqueeze(1)


def lstm_recurrence(xg, w_hh, w_hr, h0, c0, lengths=None, reverse=False):
    """LSTM over a sequence. xg [T,B,4H] (gates i,f,g,o, biases included), w_hh [4H,P],
    w_hr [P,H] or None, h0 [B,P], c0 [B,H], lengths [B] or None.
    Returns y [T,B,P], h_n [B,P], c_n [B,H].

    >>> T, B, H = 5, 2, 3
    >>> y, h, c = lstm_recurrence(torch.randn(T, B, 4 * H), torch.randn(4 * H, H), None,
    ...                           torch.zeros(B, H), torch.zeros(B, H))
    >>> tuple(y.shape)
    (5, 2, 3)
    """
    h, c = h0, c0
    ys = [None] * xg.shape[0]
    for t in _steps(xg.shape[0], reverse):
        i, f, g, o = (xg[t] + h @ w_hh.T).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        active = _active_rows(lengths, t)
        ys[t] = _carry(active, h_new, torch.zeros_like(h_new))
        h, c = _carry(active, h_new, h), _carry(active, c_new, c)
    return torch.stack(ys), h, c


def gru_recurrence(xg, w_hh, b_hh, h0, lengths=None, reverse=False):
    """GRU (PyTorch's variant) over a sequence. xg [T,B,3H] (gates r,z,n, b_ih included),
    w_hh [3H,H], b_hh [3H], h0 [B,H], lengths [B] or None. Returns y [T,B,H], h_n [B,H].

    n = tanh(xg_n + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """
    h = h0
    ys = [None] * xg.shape[0]
    for t in _steps(xg.shape[0], reverse):
        x_r, x_z, x_n = xg[t].chunk(3, dim=1)
        h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n + z * h
        active = _active_rows(lengths, t)
        ys[t] = _carry(active, h_new, torch.zeros_like(h_new))
        h = _carry(active, h_new, h)
    return torch.stack(ys), h
