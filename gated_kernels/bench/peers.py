"""Optional peers, timed next to gated_kernels and torch.nn where they are importable on a GPU:
haste (LSTM and GRU; lmnt-com/haste) and FlashRNN (LSTM, its fused CUDA kernel; Pöppel et al.,
2024). Timing only: their parameter layouts differ from torch.nn's, so they get the case's
shapes (with a random input projection for FlashRNN, which takes precomputed input gates), not
its weights, and no correctness gate. Where a peer is not installed it is left out silently.

The LayerNorm and zoneout cells get one peer everywhere: `plain`, our own LSTM / GRU at the same
shape without them (issue 17's target: a LayerNorm module within 1.3x of it)."""

import importlib.util

import torch

import gated_kernels
from gated_kernels.bench.suites import DTYPES, LAYERNORM_CELLS, ZONEOUT_CELLS


def _haste(case):
    import haste_pytorch as haste

    cls = haste.LSTM if case.cell == "LSTM" else haste.GRU
    return cls(case.I, case.H).to(device=case.device, dtype=DTYPES[case.dtype])


class _FlashRNNLSTM(torch.nn.Module):
    """x [T, B, I] -> (y [T, B, H], final states), through flashrnn's fused CUDA LSTM."""

    def __init__(self, case):
        super().__init__()
        from flashrnn import flashrnn

        self.flashrnn = flashrnn
        kw = {"device": case.device, "dtype": DTYPES[case.dtype]}
        H = case.H
        self.w_ih = torch.nn.Parameter(torch.randn(4 * H, case.I, **kw) * case.I**-0.5)
        self.R = torch.nn.Parameter(torch.randn(4, 1, H, H, **kw) * H**-0.5)  # gates, heads, D, D
        self.b = torch.nn.Parameter(torch.zeros(4, 1, H, **kw))

    def forward(self, x):
        T, B, _ = x.shape
        wx = (x @ self.w_ih.T).view(T, B, 4, 1, -1).transpose(0, 1)  # [B, T, gates, heads, D]
        states, last = self.flashrnn(wx, self.R, self.b, function="lstm", backend="cuda_fused")
        return states[0, :, :, 0].transpose(0, 1), last  # h of every step, time-major


def _plain(case):
    """gated_kernels.LSTM / GRU at a LayerNorm or zoneout case's shape, without either."""
    cls = getattr(gated_kernels, case.cell.removeprefix("LayerNorm").removeprefix("Zoneout"))
    return cls(case.I, case.H, dtype=DTYPES[case.dtype]).to(case.device)


# name: (module to import, factory, cells it runs)
PEERS = {
    "haste": ("haste_pytorch", _haste, ("LSTM", "GRU")),
    "flashrnn": ("flashrnn", _FlashRNNLSTM, ("LSTM",)),
}


def available(case):
    """{name: factory(case) -> module} of the peers that can run `case` here."""
    if case.cell in LAYERNORM_CELLS + ZONEOUT_CELLS:
        return {"plain": _plain}
    if not case.device.startswith("cuda") or case.layers != 1 or case.bidirectional:
        return {}
    return {name: factory for name, (module, factory, cells) in PEERS.items()
            if case.cell in cells and importlib.util.find_spec(module) is not None}
