"""The zoneout and dropconnect keywords of LSTM and GRU (issue 17): DropConnect on our kernels
(C++ here) with its mask drawn from torch's RNG, zoneout on the reference backend, against
gated_kernels.reference in float64; the backends each refuses."""

import pytest
import torch

from common import FP64_ATOL, max_abs_error
from gated_kernels import GRU, LSTM, reference

MODULES = {"LSTM": LSTM, "GRU": GRU}
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


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_runs_the_reference_with_masks_of_torch_s_rng(cell):
    module, x, hx = _setup(cell, zoneout=0.25)
    torch.manual_seed(6)
    y, _ = module(x, hx)
    torch.manual_seed(6)
    keep = [(torch.rand(T, B, H, dtype=torch.float64) < 0.25).double()
            for _ in range(2 if cell == "LSTM" else 1)]
    expected = _reference(cell, module, x, hx, module.weight_hh_l0, (keep + [None])[:2])
    assert max_abs_error(y, expected) <= FP64_ATOL
    module.eval()
    p = torch.full((T, B, H), 0.25, dtype=torch.float64)
    expected = _reference(cell, module, x, hx, module.weight_hh_l0, (p, p))
    assert max_abs_error(module(x, hx)[0], expected) <= FP64_ATOL


def test_a_dropconnect_training_call_never_runs_torch_nn_s_code():
    """`auto` leaves one bfloat16 LSTM step to torch.nn's code (dispatch.cpu_backend), which
    would read the unmasked weights: with DropConnect a training call runs ours."""
    module = LSTM(16, 256, dtype=torch.bfloat16, dropconnect=0.2)
    x, state = torch.randn(1, 8, 16, dtype=torch.bfloat16), torch.zeros(1, 8, 256,
                                                                         dtype=torch.bfloat16)
    with torch.no_grad():
        assert module._call_backend(x, (state, state)) == "cpp"
        assert module.eval()._call_backend(x, (state, state)) == "torch"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_the_backends_each_keyword_refuses(cell):
    cls = MODULES[cell]
    with pytest.raises(ValueError, match="zoneout runs on the 'reference' backend only.*'cpp'"):
        cls(3, 4, zoneout=0.1, backend="cpp")
    with pytest.raises(ValueError, match="dropconnect cannot run on backend='torch'"):
        cls(3, 4, dropconnect=0.1, backend="torch")
    with pytest.raises(ValueError, match=r"zoneout must be in \[0, 1\], got -0.1"):
        cls(3, 4, zoneout=-0.1)
    with pytest.raises(ValueError, match=r"dropconnect must be in \[0, 1\), got 1.0"):
        cls(3, 4, dropconnect=1.0)
    assert "zoneout=0.5" in repr(cls(3, 4, zoneout=0.5))


def test_revert_refuses_what_torch_nn_cannot_run():
    """torch.nn's modules have neither keyword: revert() says so rather than drop them."""
    import gated_kernels

    for keyword in ("zoneout", "dropconnect"):
        model = torch.nn.Sequential(LSTM(3, 4, **{keyword: 0.2}))
        with pytest.raises(ValueError, match=f"torch.nn.LSTM has no {keyword}"):
            gated_kernels.revert(model)
    assert type(gated_kernels.revert(GRU(3, 4))) is torch.nn.GRU
