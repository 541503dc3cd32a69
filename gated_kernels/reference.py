"""The reference recurrence in plain PyTorch: the test oracle and the `reference` backend.

Written for clarity, one step at a time, with autograd providing the gradients. It computes in
the dtype it is given (float64 for tests) and follows the op contract in `ops.py`: for
t >= lengths[b] row b carries its state unchanged and its output is 0; with `reverse` a row runs
from lengths[b]-1 down to 0.

Two options extend both cells (issue 17; no kernel runs them yet):
- LayerNorm (Ba et al. 2016, "Layer Normalization"): the recurrent product normalised over its
  gate width, LN(h W_hh^T; ln_hh), and for the LSTM the cell state before its tanh, LN(c; ln_c).
  The input side, LN(x W_ih^T; ln_ih) plus the biases, is the layer's xg (parallel over T).
- zoneout (Krueger et al. 2016): `keep` [T,B,H] per state, the weight of the previous value,
  h_t = keep_t * h_{t-1} + (1 - keep_t) * h_new: Bernoulli(p) masks in training, p itself in
  eval. The LSTM's h_new uses the new cell state before zoneout.
"""

import torch

LN_EPS = 1e-5  # torch.nn.LayerNorm's default


def layer_norm(v, ln):
    """(v - mean(v)) / sqrt(var(v) + LN_EPS) * weight + bias over the last dimension, with the
    biased variance; ln = (weight, bias). torch's fused layer_norm: as the formula written out
    in ops, it took the LayerNorm modules' training step at B=32, H=256 (T=100, float32) to
    2.3x the time of a user's loop over torch's layer_norm, and float32 errors to 3.3x."""
    return torch.nn.functional.layer_norm(v, v.shape[-1:], *ln, eps=LN_EPS)


def _zone(keep, t, new, old):
    """Zoneout of one state at step t: keep[t] of the old value (keep None: none)."""
    return new if keep is None else keep[t] * old + (1 - keep[t]) * new


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _carry(active, new, old):
    """The new state on rows still inside their length, the old one (a tensor, or 0.0 for an
    output) elsewhere."""
    return new if active is None else torch.where(active, new, old)


def _unbind(xg):
    """xg's steps as views with one backward node for all: indexed step by step, autograd's
    backward of each step's view builds a zero tensor the size of all of xg, T of them (a
    LayerNormLSTM training step, T=100, B=32, H=128: 132 ms indexed, 64 ms unbound)."""
    return xg.unbind(0)


def _active_rows(lengths, t):
    return None if lengths is None else (t < lengths).unsqueeze(1)


def lstm_recurrence(xg, w_hh, w_hr, h0, c0, lengths=None, reverse=False, *, ln_hh=None,
                    ln_c=None, keep_h=None, keep_c=None):
    """LSTM over a sequence. xg [T,B,4H] (gates i,f,g,o, biases included), w_hh [4H,P],
    w_hr [P,H] or None, h0 [B,P], c0 [B,H], lengths [B] or None; LayerNorm: ln_hh
    (weight, bias) [4H] and ln_c [H] (both or neither); zoneout: keep_h [T,B,P], keep_c [T,B,H].
    Returns y [T,B,P], h_n [B,P], c_n [B,H].

    >>> T, B, H = 5, 2, 3
    >>> y, h, c = lstm_recurrence(torch.randn(T, B, 4 * H), torch.randn(4 * H, H), None,
    ...                           torch.zeros(B, H), torch.zeros(B, H))
    >>> tuple(y.shape)
    (5, 2, 3)
    """
    h, c = h0, c0
    ys = [None] * xg.shape[0]
    xgs = _unbind(xg)
    for t in _steps(xg.shape[0], reverse):
        recurrent = h @ w_hh.T
        if ln_hh is not None:
            recurrent = layer_norm(recurrent, ln_hh)
        i, f, g, o = (xgs[t] + recurrent).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new if ln_c is None else layer_norm(c_new, ln_c))
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h_new, c_new = _zone(keep_h, t, h_new, h), _zone(keep_c, t, c_new, c)
        active = _active_rows(lengths, t)
        ys[t] = _carry(active, h_new, 0.0)
        h, c = _carry(active, h_new, h), _carry(active, c_new, c)
    return torch.stack(ys), h, c


def gru_recurrence(xg, w_hh, b_hh, h0, lengths=None, reverse=False, *, ln_hh=None,
                   keep_h=None):
    """GRU (PyTorch's variant) over a sequence. xg [T,B,3H] (gates r,z,n, b_ih included),
    w_hh [3H,H], b_hh [3H], h0 [B,H], lengths [B] or None; LayerNorm: ln_hh (weight, bias)
    [3H]; zoneout: keep_h [T,B,H]. Returns y [T,B,H], h_n [B,H].

    n = tanh(xg_n + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h; with LayerNorm W_hh h is
    LN(h W_hh^T; ln_hh) over all 3H.
    """
    h = h0
    ys = [None] * xg.shape[0]
    xgs = _unbind(xg)
    for t in _steps(xg.shape[0], reverse):
        x_r, x_z, x_n = xgs[t].chunk(3, dim=1)
        recurrent = h @ w_hh.T
        if ln_hh is not None:
            recurrent = layer_norm(recurrent, ln_hh)
        h_r, h_z, h_n = (recurrent + b_hh).chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = _zone(keep_h, t, (1 - z) * n + z * h, h)
        active = _active_rows(lengths, t)
        ys[t] = _carry(active, h_new, 0.0)
        h = _carry(active, h_new, h)
    return torch.stack(ys), h
