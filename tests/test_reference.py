"""The reference recurrence against torch.nn.LSTM / torch.nn.GRU in float64: it is the oracle for
every backend, so it is proven first, on outputs, final states and every gradient."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from common import FP64_ATOL, max_abs_error
from gated_kernels.functional import gru_layer, lstm_layer

# (cell, T, B, I, H, P): T=1, an odd T with a non-power-of-two H, B=1, projection.
SHAPES = {
    "T1-B3-I5-H8": (1, 3, 5, 8, 0),
    "T63-B2-I7-H100": (63, 2, 7, 100, 0),
    "T9-B1-I4-H16": (9, 1, 4, 16, 0),
}
CASES = {f"{cell}-{name}": (cell, *shape) for cell in ("LSTM", "GRU") for name, shape in SHAPES.items()}
CASES["LSTM-T10-B3-I5-H12-P5"] = ("LSTM", 10, 3, 5, 12, 5)
PACKED_LENGTHS = [9, 1, 5, 9, 3]  # includes 1 and T


def _module(cell, I, H, P, bidirectional=False):
    kwargs = {"proj_size": P} if P else {}
    module = getattr(torch.nn, cell)(I, H, bidirectional=bidirectional, dtype=torch.float64, **kwargs)
    for p in module.parameters():  # stretch the default init so every gate saturates somewhere
        torch.nn.init.uniform_(p, -0.6, 0.6)
    return module


def _states(cell, D, B, H, P):
    h0 = torch.randn(D, B, P or H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
    return (h0, c0) if cell == "LSTM" else (h0,)


def _layer(cell, module, x, states, sfx, d, lengths=None, reverse=False):
    """One direction of layer 0 through the reference backend, with the module's weights."""
    w = {name: getattr(module, f"{name}_l0{sfx}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    if cell == "LSTM":
        w_hr = getattr(module, f"weight_hr_l0{sfx}", None)
        return lstm_layer(x, states[0][d], states[1][d], w["weight_ih"], w["weight_hh"],
                          w["bias_ih"], w["bias_hh"], w_hr, lengths, reverse, backend="reference")
    return gru_layer(x, states[0][d], w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                     lengths, reverse, backend="reference")


def _check_all(ours, theirs, inputs):
    """Every output and the gradient of every input, float64 tolerance."""
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"output {k}: {max_abs_error(a, b):.3e}"
    weights = [torch.randn_like(t) for t in theirs]
    g_ours = torch.autograd.grad(ours, inputs, weights)
    g_theirs = torch.autograd.grad(theirs, inputs, weights)
    for k, (a, b) in enumerate(zip(g_ours, g_theirs)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"grad {k}: {max_abs_error(a, b):.3e}"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_reference_matches_torch_nn(case):
    cell, T, B, I, H, P = case
    module = _module(cell, I, H, P)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    states = _states(cell, 1, B, H, P)
    theirs_y, theirs_state = module(x, states if cell == "LSTM" else states[0])
    theirs = [theirs_y] + ([s[0] for s in theirs_state] if cell == "LSTM" else [theirs_state[0]])
    ours = _layer(cell, module, x, states, "", 0)
    _check_all(ours, theirs, [x, *states, *module.parameters()])


@pytest.mark.parametrize("cell,P", [("LSTM", 0), ("LSTM", 4), ("GRU", 0)], ids=["LSTM", "LSTM-P4", "GRU"])
def test_reference_lengths_and_reverse_match_packed_bidirectional(cell, P):
    """lengths and reverse, as the op defines them, reproduce a bidirectional torch.nn layer on a
    PackedSequence: the forward direction with lengths, the reverse direction with both."""
    T, B, I, H = max(PACKED_LENGTHS), len(PACKED_LENGTHS), 6, 10
    module = _module(cell, I, H, P, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(PACKED_LENGTHS)
    states = _states(cell, 2, B, H, P)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    theirs_y, theirs_state = module(packed, states if cell == "LSTM" else states[0])
    theirs_y = pad_packed_sequence(theirs_y, total_length=T)[0]

    fwd = _layer(cell, module, x, states, "", 0, lengths, reverse=False)
    bwd = _layer(cell, module, x, states, "_reverse", 1, lengths, reverse=True)
    ours = [torch.cat([fwd[0], bwd[0]], dim=2)] + [torch.stack([f, b]) for f, b in zip(fwd[1:], bwd[1:])]
    theirs = [theirs_y] + (list(theirs_state) if cell == "LSTM" else [theirs_state])
    _check_all(ours, theirs, [x, *states, *module.parameters()])
