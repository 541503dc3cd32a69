"""Repeated forward and backward on the same device and inputs are bitwise identical."""

import pytest
import torch

import gated_kernels as gk


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cpu_forward_and_backward_are_bitwise_repeatable(cell):
    torch.manual_seed(0)
    # B*H = 32 * 256 = 8192 units: large enough for the gate pass and BLAS to use both threads.
    module = getattr(gk, cell)(64, 256, num_layers=2, bidirectional=True, backend="cpp")
    x = torch.randn(30, 32, 64)

    def run():
        module.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_()
        y, _ = module(x_)
        y.square().mean().backward()
        return [y.detach(), x_.grad, *(p.grad for p in module.parameters())]

    first = run()
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(run(), first))
