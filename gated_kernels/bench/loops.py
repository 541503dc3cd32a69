"""The baseline of the `layernorm` suite: the LayerNorm LSTM and GRU as users write them today,
since neither torch.nn nor cuDNN has them (issue 17): a Python loop over the steps of torch ops,
one layer and one direction, the LayerNorms through torch.nn.functional.layer_norm. Parameters
carry gated_kernels' names (weight_ih_l0, ..., ln_c_bias_l0), so a state_dict moves between this
and gated_kernels.LayerNormLSTM / LayerNormGRU.
"""

import torch
import torch.nn.functional as F
from torch import nn

import gated_kernels


class _Loop(nn.Module):
    """Parameters as gated_kernels' module of the same name initialises them."""

    def __init__(self, input_size, hidden_size, dtype=None):
        super().__init__()
        ours = getattr(gated_kernels, type(self).__name__.removeprefix("Loop"))(
            input_size, hidden_size, dtype=dtype)
        for name, p in ours.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone()))
        self.hidden_size = hidden_size

    def _norm(self, v, name):
        return F.layer_norm(v, v.shape[-1:], getattr(self, f"ln_{name}_weight_l0"),
                            getattr(self, f"ln_{name}_bias_l0"))


class LoopLayerNormLSTM(_Loop):
    def forward(self, x, hx=None):
        """x [T, B, I], hx (h0, c0) [1, B, H] or None -> (y [T, B, H], (h_n, c_n))."""
        H = self.hidden_size
        h, c = (s[0] for s in hx) if hx is not None else (x.new_zeros(x.shape[1], H),) * 2
        ys = []
        for x_t in x:
            G = (self._norm(x_t @ self.weight_ih_l0.T, "ih")
                 + self._norm(h @ self.weight_hh_l0.T, "hh") + self.bias_ih_l0 + self.bias_hh_l0)
            i, f, g, o = G.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self._norm(c, "c"))
            ys.append(h)
        return torch.stack(ys), (h[None], c[None])


class LoopLayerNormGRU(_Loop):
    def forward(self, x, hx=None):
        """x [T, B, I], hx [1, B, H] or None -> (y [T, B, H], h_n)."""
        h = hx[0] if hx is not None else x.new_zeros(x.shape[1], self.hidden_size)
        ys = []
        for x_t in x:
            a = self._norm(x_t @ self.weight_ih_l0.T, "ih") + self.bias_ih_l0
            b = self._norm(h @ self.weight_hh_l0.T, "hh") + self.bias_hh_l0
            (a_r, a_z, a_n), (r_r, r_z, r_n) = a.chunk(3, dim=1), b.chunk(3, dim=1)
            r = torch.sigmoid(a_r + r_r)
            z = torch.sigmoid(a_z + r_z)
            n = torch.tanh(a_n + r * r_n)
            h = (1 - z) * n + z * h
            ys.append(h)
        return torch.stack(ys), h[None]


LOOPS = {"LayerNormLSTM": LoopLayerNormLSTM, "LayerNormGRU": LoopLayerNormGRU}
