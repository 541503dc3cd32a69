"""On a CUDA GPU: CUDA graphs, torch.compile with the default and reduce-overhead modes, and
bitwise repeatable forward and backward (marked cuda: skipped without a GPU)."""

import pytest
import torch

import gated_kernels as gk

pytestmark = pytest.mark.cuda


def _model():
    torch.manual_seed(0)
    return gk.LSTM(32, 64, batch_first=True, backend="triton").cuda()


def _loss_and_grads(forward, model, x):
    model.zero_grad(set_to_none=True)
    y, _ = forward(x)
    y.square().mean().backward()
    return [y.detach(), *(p.grad.clone() for p in model.parameters())]


def test_cuda_graph_captures_forward_and_backward():
    model = _model()
    x = torch.randn(8, 20, 32, device="cuda", requires_grad=True)
    step = lambda inp: model(inp)[0]
    graphed = torch.cuda.make_graphed_callables(step, (x,))
    expected = step(x)
    actual = graphed(x)
    assert torch.equal(actual, expected)
    g = torch.randn_like(actual)
    (dx_graph,) = torch.autograd.grad(actual, x, g)
    (dx_eager,) = torch.autograd.grad(expected, x, g)
    assert torch.equal(dx_graph, dx_eager)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_fullgraph_on_cuda(mode):
    model = _model()
    x = torch.randn(8, 20, 32, device="cuda")
    expected = _loss_and_grads(model, model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    for _ in range(3):  # reduce-overhead records a graph on the first calls
        actual = _loss_and_grads(compiled, model, x)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_cuda_forward_and_backward_are_bitwise_repeatable():
    model = _model()
    x = torch.randn(8, 20, 32, device="cuda")
    first = _loss_and_grads(model, model, x)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(_loss_and_grads(model, model, x), first))
