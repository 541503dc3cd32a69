"""The baselines of the `layernorm` and `zoneout` suites: the LayerNorm LSTM and GRU, and the
LSTM and GRU with zoneout, as users write them today, since neither torch.nn nor cuDNN has them
(issue 17): a Python loop over the steps of torch ops, one layer and one direction, the
LayerNorms through torch.nn.functional.layer_norm. Parameters carry gated_kernels' names
(weight_ih_l0, ..., ln_c_bias_l0), so a state_dict moves between this and gated_kernels'
module (OURS, with OURS_KWARGS).
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import gated_kernels
from gated_kernels.bench.suites import ZONEOUT_RATE


class _Loop(nn.Module):
    """Parameters as gated_kernels' module OURS (by default the loop's name without `Loop`)
    initialises them."""

    OURS_KWARGS: ClassVar[dict] = {}

    @classmethod
    def ours_name(cls):
        return getattr(cls, "OURS", cls.__name__.removeprefix("Loop"))

    def __init__(self, input_size, hidden_size, dtype=None):
        super().__init__()
        ours = getattr(gated_kernels, self.ours_name())(input_size, hidden_size, dtype=dtype,
                                                        **self.OURS_KWARGS)
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


def _zoneout_keeps(x, hidden_size, count, training):
    """zoneout's weights of the old states, as gated_kernels draws them (functional.zoneout_keep):
    `count` [T, B, H] masks of float32 uniforms < ZONEOUT_RATE in training, the rate in eval."""
    if not training:
        return [ZONEOUT_RATE] * count
    shape = (x.shape[0], x.shape[1], hidden_size)
    return [(torch.rand(shape, device=x.device) < ZONEOUT_RATE).to(x.dtype)
            for _ in range(count)]


def _zone(keep, new, old):
    return keep * old + (1 - keep) * new


class LoopZoneoutLSTM(_Loop):
    OURS, OURS_KWARGS = "LSTM", {"zoneout": ZONEOUT_RATE}

    def forward(self, x, hx=None):
        """x [T, B, I], hx (h0, c0) [1, B, H] or None -> (y [T, B, H], (h_n, c_n))."""
        H = self.hidden_size
        h, c = (s[0] for s in hx) if hx is not None else (x.new_zeros(x.shape[1], H),) * 2
        keep_h, keep_c = _zoneout_keeps(x, H, 2, self.training)
        ys = []
        for t, x_t in enumerate(x):
            G = (F.linear(x_t, self.weight_ih_l0, self.bias_ih_l0)
                 + F.linear(h, self.weight_hh_l0, self.bias_hh_l0))
            i, f, g, o = G.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            kh, kc = (k[t] if self.training else k for k in (keep_h, keep_c))
            h, c = _zone(kh, h_new, h), _zone(kc, c_new, c)
            ys.append(h)
        return torch.stack(ys), (h[None], c[None])


class LoopZoneoutGRU(_Loop):
    OURS, OURS_KWARGS = "GRU", {"zoneout": ZONEOUT_RATE}

    def forward(self, x, hx=None):
        """x [T, B, I], hx [1, B, H] or None -> (y [T, B, H], h_n)."""
        h = hx[0] if hx is not None else x.new_zeros(x.shape[1], self.hidden_size)
        (keep_h,) = _zoneout_keeps(x, self.hidden_size, 1, self.training)
        ys = []
        for t, x_t in enumerate(x):
            a = F.linear(x_t, self.weight_ih_l0, self.bias_ih_l0)
            b = F.linear(h, self.weight_hh_l0, self.bias_hh_l0)
            (a_r, a_z, a_n), (r_r, r_z, r_n) = a.chunk(3, dim=1), b.chunk(3, dim=1)
            r = torch.sigmoid(a_r + r_r)
            z = torch.sigmoid(a_z + r_z)
            n = torch.tanh(a_n + r * r_n)
            h = _zone(keep_h[t] if self.training else keep_h, (1 - z) * n + z * h, h)
            ys.append(h)
        return torch.stack(ys), h[None]


LOOPS = {"LayerNormLSTM": LoopLayerNormLSTM, "LayerNormGRU": LoopLayerNormGRU,
         "ZoneoutLSTM": LoopZoneoutLSTM, "ZoneoutGRU": LoopZoneoutGRU}
