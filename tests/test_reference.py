"""The reference recurrence against torch.nn.LSTM / torch.nn.GRU in float64: it is the oracle for
every backend, so it is proven first, on outputs, final states and every gradient."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from common import FP64_ATOL, max_abs_error
from gated_kernels import reference
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


# ---- the options of issue 17: LayerNorm and zoneout (no kernel runs them yet) ----


def _ln(size, g):
    """A LayerNorm's (weight, bias), away from the initial (1, 0) so that both matter."""
    return (1 + 0.3 * torch.randn(size, generator=g, dtype=torch.float64),
            0.3 * torch.randn(size, generator=g, dtype=torch.float64))


def test_layer_norm_is_the_issue_s_formula():
    """LN(v; w, b) = (v - mean(v)) / sqrt(var(v) + 1e-5) * w + b, biased variance."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 3, 24, generator=g, dtype=torch.float64)
    weight, bias = _ln(24, g)
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    expected = (v - mean) / torch.sqrt(var + 1e-5) * weight + bias
    assert max_abs_error(reference.layer_norm(v, (weight, bias)), expected) <= FP64_ATOL


def _ln_lstm_steps(x, w_ih, w_hh, b, ln_ih, ln_hh, ln_c, h, c):
    """LayerNorm LSTM as issue 17 writes it, with torch's layer_norm, gates by name:
    G = LN(x W_ih^T) + LN(h W_hh^T) + b; c = f c + i g; h = o tanh(LN(c))."""
    ln = torch.nn.functional.layer_norm
    H = c.shape[1]
    ys = []
    for x_t in x:
        G = (ln(x_t @ w_ih.T, (4 * H,), *ln_ih) + ln(h @ w_hh.T, (4 * H,), *ln_hh) + b)
        i, f, g, o = G[:, :H], G[:, H:2 * H], G[:, 2 * H:3 * H], G[:, 3 * H:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, (H,), *ln_c))
        ys.append(h)
    return torch.stack(ys), h, c


def _ln_gru_steps(x, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, h):
    """LayerNorm GRU as issue 17 writes it: A = LN(x W_ih^T) + b_ih, R = LN(h W_hh^T) + b_hh;
    r, z from A + R, n = tanh(A_n + r R_n), h = (1 - z) n + z h."""
    ln = torch.nn.functional.layer_norm
    H = h.shape[1]
    ys = []
    for x_t in x:
        A = ln(x_t @ w_ih.T, (3 * H,), *ln_ih) + b_ih
        R = ln(h @ w_hh.T, (3 * H,), *ln_hh) + b_hh
        r = torch.sigmoid(A[:, :H] + R[:, :H])
        z = torch.sigmoid(A[:, H:2 * H] + R[:, H:2 * H])
        n = torch.tanh(A[:, 2 * H:] + r * R[:, 2 * H:])
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys), h


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_layernorm_recurrence_matches_the_formulas(cell):
    """Outputs, final states and every gradient (LayerNorm parameters included) against the
    formulas written out with torch's layer_norm."""
    g = torch.Generator().manual_seed(1)
    T, B, I, H = 6, 3, 5, 7
    G = (4 if cell == "LSTM" else 3) * H

    def rand(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    x, w_ih, w_hh, b_ih, b_hh, h0 = rand(T, B, I), rand(G, I), rand(G, H), rand(G), rand(G), rand(B, H)
    ln_ih, ln_hh = [tuple(t.requires_grad_() for t in _ln(G, g)) for _ in range(2)]
    if cell == "LSTM":
        c0 = rand(B, H)
        ln_c = tuple(t.requires_grad_() for t in _ln(H, g))
        xg = reference.layer_norm(x @ w_ih.T, ln_ih) + b_ih + b_hh
        ours = reference.lstm_recurrence(xg, w_hh, None, h0, c0, ln_hh=ln_hh, ln_c=ln_c)
        theirs = _ln_lstm_steps(x, w_ih, w_hh, b_ih + b_hh, ln_ih, ln_hh, ln_c, h0, c0)
        inputs = [x, w_ih, w_hh, b_ih, b_hh, h0, c0, *ln_ih, *ln_hh, *ln_c]
    else:
        xg = reference.layer_norm(x @ w_ih.T, ln_ih) + b_ih
        ours = reference.gru_recurrence(xg, w_hh, b_hh, h0, ln_hh=ln_hh)
        theirs = _ln_gru_steps(x, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, h0)
        inputs = [x, w_ih, w_hh, b_ih, b_hh, h0, *ln_ih, *ln_hh]
    _check_all(ours, theirs, inputs)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_mixes_each_state_with_its_previous_value(cell):
    """Each step against one un-zoned step of the reference from the zoned state: h_t =
    keep_t h_{t-1} + (1 - keep_t) h_new, and c likewise, where the LSTM's h_new comes from the
    un-zoned new cell; training masks (0 / 1) and eval's p alike; a row past its length carries
    its state."""
    g = torch.Generator().manual_seed(2)
    T, B, H = 5, 4, 6
    G = (4 if cell == "LSTM" else 3) * H
    xg = torch.randn(T, B, G, generator=g, dtype=torch.float64)
    w_hh = 0.5 * torch.randn(G, H, generator=g, dtype=torch.float64)
    b_hh = torch.randn(G, generator=g, dtype=torch.float64)
    states0 = [torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(2)]
    lengths = torch.tensor([5, 2, 4, 1])
    masks = [(torch.rand(T, B, H, generator=g) < 0.3).double() for _ in range(2)]
    for keep in (masks, [torch.full((T, B, H), 0.3, dtype=torch.float64)] * 2):
        if cell == "LSTM":
            y, *final = reference.lstm_recurrence(xg, w_hh, None, *states0, lengths,
                                                  keep_h=keep[0], keep_c=keep[1])
        else:
            y, *final = reference.gru_recurrence(xg, w_hh, b_hh, states0[0], lengths,
                                                 keep_h=keep[0])
        states = [s.clone() for s in states0[:len(final)]]
        for t in range(T):
            if cell == "LSTM":
                _, *new = reference.lstm_recurrence(xg[t:t + 1], w_hh, None, *states)
            else:
                _, *new = reference.gru_recurrence(xg[t:t + 1], w_hh, b_hh, *states)
            on = (t < lengths)[:, None]
            zoned = [k[t] * s + (1 - k[t]) * n for k, s, n in zip(keep, states, new)]
            expected_y = torch.where(on, zoned[0], 0.0)
            assert max_abs_error(y[t], expected_y) <= FP64_ATOL, f"y at t={t}"
            states = [torch.where(on, z, s) for z, s in zip(zoned, states)]
        for k, (a, b) in enumerate(zip(final, states)):
            assert max_abs_error(a, b) <= FP64_ATOL, f"final state {k}"
