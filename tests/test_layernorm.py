"""LayerNormLSTM, LayerNormGRU and their cells (issue 17; the reference backend so far):
parameters as the issue names them, each layer-direction wired to its own LayerNorms, torch.nn's
input forms, and the zoneout and DropConnect keywords, against gated_kernels.reference in
float64."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from common import FP64_ATOL, max_abs_error
from gated_kernels import (LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell,
                           reference)

MODULES = {"LSTM": LayerNormLSTM, "GRU": LayerNormGRU}
NORMS = {"LSTM": (("ih", 4), ("hh", 4), ("c", 1)), "GRU": (("ih", 3), ("hh", 3))}


def _module(cell, I, H, **kwargs):
    """A float64 module with every parameter drawn away from its initial value (LayerNorm
    weights near 1, biases near 0), so that a parameter in the wrong place shows."""
    module = MODULES[cell](I, H, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.startswith("ln_") and "_weight" in name else 0.0
            p.copy_(base + 0.4 * torch.randn_like(p))
    return module


def _direction(cell, module, x, states, layer, sfx, reverse, keep=(None, None), lengths=None):
    """One layer-direction through the reference, with the module's parameters by name."""
    p = {n: getattr(module, f"{n}_l{layer}{sfx}") for n in ("weight_ih", "weight_hh")}
    G = p["weight_hh"].shape[0]
    for n in ("bias_ih", "bias_hh"):  # zeros for a module without biases
        p[n] = getattr(module, f"{n}_l{layer}{sfx}") if module.bias else x.new_zeros(G)
    ln = {norm: (getattr(module, f"ln_{norm}_weight_l{layer}{sfx}"),
                 getattr(module, f"ln_{norm}_bias_l{layer}{sfx}")) for norm, _ in NORMS[cell]}
    xg = reference.layer_norm(x @ p["weight_ih"].T, ln["ih"]) + p["bias_ih"]
    if cell == "LSTM":
        return reference.lstm_recurrence(xg + p["bias_hh"], p["weight_hh"], None, *states,
                                         lengths, reverse, ln_hh=ln["hh"], ln_c=ln["c"],
                                         keep_h=keep[0], keep_c=keep[1])
    return reference.gru_recurrence(xg, p["weight_hh"], p["bias_hh"], *states, lengths, reverse,
                                    ln_hh=ln["hh"], keep_h=keep[0])


def _expected(cell, module, x, states, lengths=None):
    """The stack: directions concatenated, layer after layer (no dropout)."""
    D = 2 if module.bidirectional else 1
    finals = [[] for _ in states]
    for layer in range(module.num_layers):
        outputs = []
        for d, sfx in enumerate(("", "_reverse")[:D]):
            k = layer * D + d
            y, *final = _direction(cell, module, x, [s[k] for s in states], layer, sfx, d == 1,
                                   lengths=lengths)
            outputs.append(y)
            for store, f in zip(finals, final):
                store.append(f)
        x = torch.cat(outputs, dim=2)
    return (x, *(torch.stack(f) for f in finals))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_parameters_are_torch_nn_s_plus_the_layer_norms(cell):
    H = 5
    module = MODULES[cell](3, H, num_layers=2, bidirectional=True)
    names = [n for n, _ in module.named_parameters()]
    plain = [n for n, _ in getattr(torch.nn, cell)(3, H, num_layers=2,
                                                   bidirectional=True).named_parameters()]
    assert names[:len(plain)] == plain
    expected = [f"ln_{norm}_{part}_l{layer}{sfx}" for layer in range(2)
                for sfx in ("", "_reverse") for norm, _ in NORMS[cell]
                for part in ("weight", "bias")]
    assert names[len(plain):] == expected
    for name in expected:
        p = getattr(module, name)
        units = dict(NORMS[cell])[name.split("_")[1]]
        assert p.shape == (units * H,), name
        assert torch.equal(p, torch.full_like(p, 1.0 if "_weight" in name else 0.0)), name
    bound = 1 / math.sqrt(H)  # torch.nn's initialisation for the rest
    assert all(getattr(module, n).abs().max() <= bound for n in plain)
    copy = MODULES[cell](3, H, num_layers=2, bidirectional=True)
    copy.load_state_dict(module.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), module.parameters()))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_outputs_and_gradients_match_the_reference_per_layer_direction(cell, bias):
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    module = _module(cell, I, H, num_layers=2, bidirectional=True, bias=bias)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(4, B, H, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if cell == "LSTM" else 1)]
    hx = tuple(states) if cell == "LSTM" else states[0]
    y, final = module(x, hx)
    ours = (y, *(final if cell == "LSTM" else (final,)))
    theirs = _expected(cell, module, x, states)
    inputs = [x, *states, *module.parameters()]
    weights = [torch.randn_like(t) for t in theirs]
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"output {k}"
    for k, (a, b) in enumerate(zip(torch.autograd.grad(ours, inputs, weights),
                                   torch.autograd.grad(theirs, inputs, weights))):
        assert max_abs_error(a, b) <= FP64_ATOL, f"grad {k}"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_batch_first_and_unbatched_input(cell):
    """A PackedSequence (unsorted lengths, 1 and T) against each row run alone at its length;
    batch_first and unbatched input against the time-major batch."""
    torch.manual_seed(1)
    T, B, I, H = 7, 4, 3, 5
    module = _module(cell, I, H, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = torch.tensor([3, 7, 1, 5])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    y, final = module(packed)
    y, _ = pad_packed_sequence(y, batch_first=True)
    h_n = final[0] if cell == "LSTM" else final
    for b in range(B):
        row_y, row_final = module(x[b:b + 1, :lengths[b]])
        row_h = row_final[0] if cell == "LSTM" else row_final
        assert max_abs_error(y[b, :lengths[b]], row_y[0]) <= FP64_ATOL, f"row {b}"
        assert max_abs_error(h_n[:, b], row_h[:, 0]) <= FP64_ATOL, f"row {b} h_n"
        assert torch.equal(y[b, lengths[b]:], torch.zeros_like(y[b, lengths[b]:]))
    batched, _ = module(x)
    single, _ = module(x[2])  # unbatched: [T, I]
    assert max_abs_error(single, batched[2]) <= FP64_ATOL


def _one_layer(cell, zoneout=0.0, dropconnect=0.0):
    torch.manual_seed(2)
    module = _module(cell, 3, 4, zoneout=zoneout, dropconnect=dropconnect)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    states = [torch.randn(1, 2, 4, dtype=torch.float64) for _ in range(2 if cell == "LSTM" else 1)]
    hx = tuple(states) if cell == "LSTM" else states[0]
    return module, x, states, hx


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_in_eval_mixes_in_p_of_the_previous_state(cell):
    module, x, states, hx = _one_layer(cell, zoneout=0.3)
    module.eval()
    y, _ = module(x, hx)
    keep = torch.full((5, 2, 4), 0.3, dtype=torch.float64)
    expected, *_ = _direction(cell, module, x, [s[0] for s in states], 0, "", False,
                              keep=(keep, keep))
    assert max_abs_error(y, expected) <= FP64_ATOL


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_in_training_draws_masks_from_torch_s_rng(cell):
    """Masks of rate p per step, unit and row, h's then c's, repeated under torch.manual_seed;
    p = 1 keeps every state as it started."""
    module, x, states, hx = _one_layer(cell, zoneout=0.3)
    torch.manual_seed(7)
    y, _ = module(x, hx)
    torch.manual_seed(7)
    keep = [(torch.rand(5, 2, 4) < 0.3).double() for _ in states]
    expected, *_ = _direction(cell, module, x, [s[0] for s in states], 0, "", False,
                              keep=(keep + [None])[:2])
    assert max_abs_error(y, expected) <= FP64_ATOL
    module.zoneout = 1.0
    y, final = module(x, hx)
    h_n = final[0] if cell == "LSTM" else final
    assert torch.equal(h_n, states[0]) and torch.equal(y, states[0].expand(5, 2, 4))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_dropconnect_masks_w_hh_in_training_only(cell):
    """Training: W_hh times a Bernoulli(1 - p) mask / (1 - p), one draw per call; eval: W_hh."""
    module, x, _, hx = _one_layer(cell, dropconnect=0.4)
    torch.manual_seed(3)
    y, _ = module(x, hx)
    torch.manual_seed(3)
    mask = torch.rand_like(module.weight_hh_l0) >= 0.4
    plain = _one_layer(cell)[0]
    with torch.no_grad():
        plain.weight_hh_l0.copy_(module.weight_hh_l0 * mask / 0.6)
    expected, _ = plain(x, hx)
    assert max_abs_error(y, expected) <= FP64_ATOL
    module.eval()
    assert max_abs_error(module(x, hx)[0], _one_layer(cell)[0](x, hx)[0]) <= FP64_ATOL


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_bad_arguments_name_themselves(cell):
    cls = MODULES[cell]
    with pytest.raises(ValueError, match="no torch.nn counterpart to run.*got 'torch'"):
        cls(3, 4, backend="torch")
    with pytest.raises(ValueError, match=r"zoneout must be in \[0, 1\], got 1.5"):
        cls(3, 4, zoneout=1.5)
    with pytest.raises(ValueError, match=r"dropconnect must be in \[0, 1\), got 1.0"):
        cls(3, 4, dropconnect=1.0)
    with pytest.raises(TypeError, match="no torch.nn counterpart"):
        cls.from_torch(getattr(torch.nn, cell)(3, 4))
    if cell == "LSTM":
        with pytest.raises(ValueError, match="no proj_size"):
            cls(3, 4, proj_size=2)
    module = cls(3, 4)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        module(torch.randn(5, 2, 6))


def test_revert_leaves_the_layer_norm_modules_alone():
    """torch.nn has no LayerNorm LSTM to revert to: revert() keeps them (and their LayerNorms)."""
    import gated_kernels

    model = torch.nn.Sequential(LayerNormLSTM(3, 4), LayerNormGRU(4, 4))
    reverted = gated_kernels.revert(model)
    assert [type(m) for m in reverted] == [LayerNormLSTM, LayerNormGRU]


CELLS = {"LSTM": LayerNormLSTMCell, "GRU": LayerNormGRUCell}


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_a_cell_is_one_step_of_the_module(cell):
    """The cell's parameters are the module's layer 0 without `_l0` (LayerNorms at 1 and 0 to
    start); a call, batched or not, is one step of the module with them."""
    torch.manual_seed(4)
    module = _module(cell, 3, 4)
    cell_module = CELLS[cell](3, 4, dtype=torch.float64)
    names = [n for n, _ in cell_module.named_parameters()]
    assert names == [n.removesuffix("_l0") for n, _ in module.named_parameters()]
    for name in names:
        p = getattr(cell_module, name)
        if name.startswith("ln_"):
            assert torch.equal(p, torch.full_like(p, 1.0 if "_weight" in name else 0.0)), name
    cell_module.load_state_dict({k.removesuffix("_l0"): v for k, v in module.state_dict().items()})
    x = torch.randn(2, 3, dtype=torch.float64)
    states = [torch.randn(2, 4, dtype=torch.float64) for _ in range(2 if cell == "LSTM" else 1)]
    seq_states = tuple(s[None] for s in states) if cell == "LSTM" else states[0][None]
    _, final = module(x[None], seq_states)
    out = cell_module(x, tuple(states) if cell == "LSTM" else states[0])
    expected = [f[0] for f in final] if cell == "LSTM" else [final[0]]
    for a, b in zip(out if cell == "LSTM" else (out,), expected):
        assert max_abs_error(a, b) <= FP64_ATOL
    single = cell_module(x[1], tuple(s[1] for s in states) if cell == "LSTM" else states[0][1])
    assert max_abs_error(single[0] if cell == "LSTM" else single, expected[0][1]) <= FP64_ATOL


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_a_cell_s_zoneout_in_eval_mixes_in_p_of_the_previous_state(cell):
    torch.manual_seed(5)
    cell_module = CELLS[cell](3, 4, dtype=torch.float64, zoneout=0.4).eval()
    plain = CELLS[cell](3, 4, dtype=torch.float64).eval()
    plain.load_state_dict(cell_module.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    states = [torch.randn(2, 4, dtype=torch.float64) for _ in range(2 if cell == "LSTM" else 1)]
    hx = tuple(states) if cell == "LSTM" else states[0]
    zoned, new = (o if cell == "LSTM" else (o,) for o in (cell_module(x, hx), plain(x, hx)))
    for a, b, s in zip(zoned, new, states):
        assert max_abs_error(a, 0.4 * s + 0.6 * b) <= FP64_ATOL
    with pytest.raises(ValueError, match="no torch.nn counterpart to run.*got 'torch'"):
        CELLS[cell](3, 4, backend="torch")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_a_cell_runs_the_cpp_operators_as_the_reference_backend(cell):
    """A cell's call on `auto` (the C++ operators, one step) against backend='reference': output
    and every gradient, with zoneout's training masks drawn from the same seed."""
    torch.manual_seed(6)
    fast = CELLS[cell](3, 4, dtype=torch.float64, zoneout=0.3)
    slow = CELLS[cell](3, 4, dtype=torch.float64, zoneout=0.3, backend="reference")
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if cell == "LSTM" else 1)]
    hx = tuple(states) if cell == "LSTM" else states[0]
    assert fast._call_backend(x) == "cpp" and slow._call_backend(x) == "reference"
    outs = []
    for module in (fast, slow):
        torch.manual_seed(7)
        out = module(x, hx)
        out = out if cell == "LSTM" else (out,)
        weights = [torch.ones_like(o) * (k + 1) for k, o in enumerate(out)]
        outs.append((out, torch.autograd.grad(out, [x, *states, *module.parameters()], weights)))
    (ours, our_grads), (theirs, their_grads) = outs
    for a, b in zip(ours, theirs):
        assert max_abs_error(a, b) <= FP64_ATOL
    for k, (a, b) in enumerate(zip(our_grads, their_grads)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"grad {k}"
