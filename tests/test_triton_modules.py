"""The modules with backend="triton" on CPU tensors, in Triton's interpreter (set by conftest when
no GPU is present), against the float64 reference on every path: packed bidirectional input
(lengths 1 and T, reverse), projection, given initial states, every output and gradient."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gated_kernels as gk
from common import assert_close
from gated_kernels.tolerance import max_rel_error

pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip("the interpreter tests run where there is no GPU", allow_module_level=True)

PATHS = ("small", "persistent", "per_step")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
CELLS = {"LSTM-P3": ("LSTM", {"proj_size": 3}), "GRU": ("GRU", {})}
T, B, I, H = 6, 3, 4, 8
LENGTHS = torch.tensor([6, 1, 4])


def _run(module, dtype, seed=0):
    """Outputs (packed data, h_n[, c_n]) and gradients (input, states, parameters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    P = module.proj_size or H
    h0 = (0.5 * torch.randn(4, B, P, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    states = [h0]
    if isinstance(module, gk.LSTM):
        c0 = (0.5 * torch.randn(4, B, H, generator=g, dtype=torch.float64)).to(dtype)
        states.append(c0.requires_grad_())
    hx = tuple(states) if isinstance(module, gk.LSTM) else h0
    output, hidden = module(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), hx)
    outs = [output.data, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(dtype) for o in outs]
    inputs = [x, *states, *module.parameters()]
    return outs, torch.autograd.grad(outs, inputs, weights)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_triton_backend_matches_reference(cell, dtype, path, monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", path)
    name, extra = cell
    torch.manual_seed(0)
    base = getattr(gk, name)(I, H, num_layers=2, bidirectional=True, backend="reference", **extra)
    expected, expected_grads = _run(base.double(), torch.float64)
    low, low_grads = _run(getattr(gk, name).from_torch(base, backend="reference").to(dtype), dtype)
    actual, actual_grads = _run(getattr(gk, name).from_torch(base, backend="triton").to(dtype), dtype)
    for k, (a, e, l) in enumerate(zip(actual, expected, low)):
        assert a.dtype == dtype
        assert_close(a, e, dtype, "out", f"output {k}", max_rel_error(l, e))
    for k, (a, e, l) in enumerate(zip(actual_grads, expected_grads, low_grads)):
        assert_close(a, e, dtype, "grad", f"grad {k}", max_rel_error(l, e))
