"""The zoneout and dropconnect keywords of LSTM and GRU (issue 17): DropConnect on our kernels
(C++ here) with its mask drawn from torch's RNG; zoneout inside the layernorm_* operators
without their LayerNorms (C++, and Triton in its interpreter) and on the reference backend;
against gated_kernels.reference in float64; the backends each refuses."""

import os

import pytest
import torch

from common import FP64_ATOL, assert_close, max_abs_error
from gated_kernels import GRU, LSTM, GRUCell, LSTMCell, dispatch, reference

MODULES = {"LSTM": LSTM, "GRU": GRU}
# On a GPU the Triton test is a `cuda` test (benchmarks/gpu_layernorm.sh runs it with the
# LayerNorm kernels it shares); without one it runs in the interpreter with the rest.
ON_GPU = [pytest.mark.cuda] if torch.cuda.is_available() else []
T, B, I, H = 6, 3, 4, 5


def _setup(cell, **kwargs):
    torch.manual_seed(0)
    module = MODULES[cell](I, H, dtype=torch.float64, **kwargs)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(1, B, H, dtype=torch.float64) for _ in range(2 if cell == "LSTM" else 1)]
    return module, x, (tuple(states) if cell == "LSTM" else states[0])


def _reference(cell, module, x, hx, w_hh, keep=(None, None)):
    """One layer through the reference with the module's weights, W_hh replaced by `w_hh`."""
    states = [s[0] for s in (hx if cell == "LSTM" else (hx,))]
    xg = x @ module.weight_ih_l0.T + module.bias_ih_l0
    if cell == "LSTM":
        return reference.lstm_recurrence(xg + module.bias_hh_l0, w_hh, None, *states,
                                         keep_h=keep[0], keep_c=keep[1])[0]
    return reference.gru_recurrence(xg, w_hh, module.bias_hh_l0, *states, keep_h=keep[0])[0]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_dropconnect_trains_on_our_kernels_with_a_mask_of_torch_s_rng(cell):
    """Training: W_hh times a Bernoulli(1 - p) mask / (1 - p), one draw per forward; outputs and
    the gradients of x and every parameter (W_hh's through the mask) as the reference's on the
    masked weight."""
    module, x, hx = _setup(cell, dropconnect=0.3, backend="cpp")
    torch.manual_seed(5)
    y, _ = module(x, hx)
    torch.manual_seed(5)
    kept = torch.rand_like(module.weight_hh_l0) >= 0.3
    expected = _reference(cell, module, x, hx, module.weight_hh_l0 * kept / 0.7)
    assert max_abs_error(y, expected) <= FP64_ATOL
    dy = torch.randn_like(y)
    inputs = [x, *module.parameters()]
    for a, b in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(expected, inputs, dy)):
        assert max_abs_error(a, b) <= FP64_ATOL
    module.eval()
    plain = _reference(cell, module, x, hx, module.weight_hh_l0)
    assert max_abs_error(module(x, hx)[0], plain) <= FP64_ATOL  # eval: W_hh as it is


@pytest.mark.parametrize("backend", ["auto", "cpp", "reference"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_trains_with_masks_of_torch_s_rng(cell, backend):
    """Training and eval against the reference in float64: `auto` and `cpp` run the
    layernorm_* operators without their LayerNorms (zoneout inside the fused kernels), outputs
    and the gradients of x and every parameter."""
    module, x, hx = _setup(cell, zoneout=0.25, backend=backend)
    assert module._call_backend(x, hx) == ("cpp" if backend == "auto" else backend)
    torch.manual_seed(6)
    y, _ = module(x, hx)
    torch.manual_seed(6)
    keep = [(torch.rand(T, B, H) < 0.25).double() for _ in range(2 if cell == "LSTM" else 1)]
    expected = _reference(cell, module, x, hx, module.weight_hh_l0, (keep + [None])[:2])
    assert max_abs_error(y, expected) <= FP64_ATOL
    dy = torch.randn_like(y)
    inputs = [x, *module.parameters()]
    for a, b in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(expected, inputs, dy)):
        assert max_abs_error(a, b) <= FP64_ATOL
    module.eval()
    p = torch.full((T, B, H), 0.25, dtype=torch.float64)
    expected = _reference(cell, module, x, hx, module.weight_hh_l0, (p, p))
    with torch.no_grad():
        assert max_abs_error(module(x, hx)[0], expected) <= FP64_ATOL


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="needs Triton on a GPU or in its interpreter")
@pytest.mark.parametrize("cell", [pytest.param(c, marks=ON_GPU) for c in ("LSTM", "GRU")])
def test_zoneout_runs_the_triton_kernels(cell):
    """float32 on backend='triton' (its interpreter without a GPU): the layernorm_* Triton
    kernels without their LayerNorms, eval's outputs and training's gradients (masks drawn
    in float32, as the module draws them) against the reference in float64."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    module = MODULES[cell](I, H, zoneout=0.25, backend="triton", device=device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    hx = tuple(torch.randn(1, B, H, device=device) for _ in range(2 if cell == "LSTM" else 1))
    hx = hx if cell == "LSTM" else hx[0]
    assert module._call_backend(x, hx) == "triton"
    torch.manual_seed(6)
    y, _ = module(x, hx)
    torch.manual_seed(6)
    keep = [(torch.rand(T, B, H, device=device) < 0.25).double().cpu()
            for _ in range(2 if cell == "LSTM" else 1)]
    exact = MODULES[cell](I, H, dtype=torch.float64)
    exact.load_state_dict(module.state_dict())
    x64 = x.detach().double().cpu().requires_grad_()
    hx64 = tuple(s.double().cpu() for s in hx) if cell == "LSTM" else hx.double().cpu()
    expected = _reference(cell, exact, x64, hx64, exact.weight_hh_l0, (keep + [None])[:2])
    assert_close(y.detach().cpu(), expected.detach(), torch.float32, "out", "y")
    dy = torch.randn_like(expected)
    got = torch.autograd.grad(y, [x, *module.parameters()], dy.float().to(device))
    want = torch.autograd.grad(expected, [x64, *exact.parameters()], dy)
    for name, a, b in zip(["x", *dict(module.named_parameters())], got, want):
        assert_close(a.cpu(), b, torch.float32, "grad", name)


def test_a_dropconnect_training_call_never_runs_torch_nn_s_code(monkeypatch):
    """`auto` leaves one bfloat16 LSTM step to torch.nn's code (dispatch.cpu_backend) where
    torch.nn runs oneDNN's bfloat16 LSTM, which would read the unmasked weights: with
    DropConnect a training call runs ours."""
    monkeypatch.setattr(dispatch, "_torch_lstm_on_onednn_bf16", lambda: True)
    module = LSTM(16, 256, dtype=torch.bfloat16, dropconnect=0.2)
    x, state = torch.randn(1, 64, 16, dtype=torch.bfloat16), torch.zeros(1, 64, 256,
                                                                          dtype=torch.bfloat16)
    with torch.no_grad():
        assert module._call_backend(x, (state, state)) == "cpp"
        assert module.eval()._call_backend(x, (state, state)) == "torch"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_the_backends_each_keyword_refuses(cell):
    cls = MODULES[cell]
    with pytest.raises(ValueError, match="zoneout cannot run on backend='torch'"):
        cls(3, 4, zoneout=0.1, backend="torch")
    with pytest.raises(ValueError, match="dropconnect cannot run on backend='torch'"):
        cls(3, 4, dropconnect=0.1, backend="torch")
    with pytest.raises(ValueError, match=r"zoneout must be in \[0, 1\], got -0.1"):
        cls(3, 4, zoneout=-0.1)
    with pytest.raises(ValueError, match=r"dropconnect must be in \[0, 1\), got 1.0"):
        cls(3, 4, dropconnect=1.0)
    assert "zoneout=0.5" in repr(cls(3, 4, zoneout=0.5))


def test_zoneout_with_a_projection_runs_the_reference():
    """The layernorm_* operators have no projection: `auto` runs the reference, `cpp` says so."""
    x = torch.randn(T, B, I)
    assert LSTM(I, H, proj_size=2, zoneout=0.2)._call_backend(x, None) == "reference"
    module = LSTM(I, H, proj_size=2, zoneout=0.2, backend="cpp")
    with pytest.raises(ValueError, match="no projection .*'reference' backend runs it"):
        module(x)


def test_revert_refuses_what_torch_nn_cannot_run():
    """torch.nn's modules have neither keyword: revert() says so rather than drop them."""
    import gated_kernels

    for keyword in ("zoneout", "dropconnect"):
        model = torch.nn.Sequential(LSTM(3, 4, **{keyword: 0.2}))
        with pytest.raises(ValueError, match=f"torch.nn.LSTM has no {keyword}"):
            gated_kernels.revert(model)
    assert type(gated_kernels.revert(GRU(3, 4))) is torch.nn.GRU


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_in_a_packed_bidirectional_stack_matches_the_reference(cell):
    """Two layers, both directions, a PackedSequence of unsorted lengths 1 to T, DropConnect
    too: the fused operators (`cpp`) against the reference backend under the same seed, outputs
    and every gradient, in training and in eval."""
    kwargs = dict(num_layers=2, bidirectional=True, dtype=torch.float64, zoneout=0.3,
                  dropconnect=0.2)
    torch.manual_seed(0)
    fused = MODULES[cell](I, H, backend="cpp", **kwargs)
    slow = MODULES[cell](I, H, backend="reference", **kwargs)
    slow.load_state_dict(fused.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        fused.train(training)
        slow.train(training)
        outs = []
        for module in (fused, slow):
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, T, 1]),
                                                             enforce_sorted=False)
            torch.manual_seed(11)
            y, final = module(packed)
            states = final if cell == "LSTM" else (final,)
            loss = y.data.square().sum() + sum(s.sum() for s in states)
            outs.append((y.data, *states,
                         *torch.autograd.grad(loss, [x, *module.parameters()])))
        for a, b in zip(*outs):
            assert max_abs_error(a, b) <= FP64_ATOL


CELLS = {"LSTM": LSTMCell, "GRU": GRUCell}


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_the_cells_take_zoneout_and_dropconnect(cell, backend):
    """A cell's step with both keywords in float64: training's output and every gradient
    against the same step without them on the masked W_hh, zoned with the same masks (drawn at
    each call: DropConnect's, then h's, then c's); eval mixes in p of the old state."""
    torch.manual_seed(0)
    cls = CELLS[cell]
    module = cls(I, H, dtype=torch.float64, zoneout=0.3, dropconnect=0.2, backend=backend)
    plain = cls(I, H, dtype=torch.float64)
    plain.load_state_dict(module.state_dict())
    assert module._call_backend(torch.randn(B, I, dtype=torch.float64)) == (
        "cpp" if backend == "auto" else backend)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    states = tuple(torch.randn(B, H, dtype=torch.float64) for _ in range(2 if cell == "LSTM"
                                                                         else 1))
    hx = states if cell == "LSTM" else states[0]
    torch.manual_seed(7)
    got = module(x, hx)
    torch.manual_seed(7)
    mask = torch.rand_like(module.weight_hh) >= 0.2
    keeps = [(torch.rand(1, B, H) < 0.3).double()[0] for _ in states]
    w_hh = module.weight_hh * mask / 0.8
    new = torch.func.functional_call(plain, {**dict(module.named_parameters()), "weight_hh": w_hh},
                                     (x, hx))
    new = new if cell == "LSTM" else (new,)
    want = tuple(k * s + (1 - k) * n for k, s, n in zip(keeps, states, new))
    got = got if cell == "LSTM" else (got,)
    inputs = [x, *module.parameters()]
    weights = [torch.randn_like(t) for t in want]
    for a, b in zip(got, want):
        assert max_abs_error(a, b) <= FP64_ATOL
    for a, b in zip(torch.autograd.grad(got, inputs, weights),
                    torch.autograd.grad(want, inputs, weights)):
        assert max_abs_error(a, b) <= FP64_ATOL
    module.eval()
    plain.eval()
    zoned = module(x, hx)
    zoned = zoned if cell == "LSTM" else (zoned,)
    new = plain(x, hx)
    for a, n, s in zip(zoned, new if cell == "LSTM" else (new,), states):
        assert max_abs_error(a, 0.3 * s + 0.7 * n) <= FP64_ATOL
    assert "zoneout=0.3, dropconnect=0.2" in repr(module)
    with pytest.raises(ValueError, match="zoneout cannot run on backend='torch'"):
        cls(I, H, zoneout=0.1, backend="torch")
