"""torch.compile(fullgraph=True) traces the autograd.Functions and their operators: forward and
backward of a function built on them match eager, with the default inductor backend."""

import pytest
import torch

from common import FP64_ATOL, max_abs_error
from gated_kernels.functional import gru_layer, lstm_layer


def _lstm_model(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, head, lengths):
    y, h_n, c_n = lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, backend="cpp")
    return torch.tanh(y @ head).sum() + h_n.square().sum() + c_n.sum()


def _gru_model(x, h0, w_ih, w_hh, b_ih, b_hh, head, lengths):
    y, h_n = gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse=True, backend="cpp")
    return torch.tanh(y @ head).sum() + h_n.square().sum()


def _tensors(*shapes):
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


CASES = {
    "lstm-P3": (_lstm_model, lambda T, B, I, H: _tensors(
        (T, B, I), (B, 3), (B, H), (4 * H, I), (4 * H, 3), (4 * H,), (4 * H,), (3, H), (3, 2))),
    "gru": (_gru_model, lambda T, B, I, H: _tensors(
        (T, B, I), (B, H), (3 * H, I), (3 * H, H), (3 * H,), (3 * H,), (H, 2))),
}


@pytest.mark.parametrize("model,make", CASES.values(), ids=CASES.keys())
def test_compile_fullgraph_matches_eager(model, make):
    tensors = make(7, 4, 5, 6)
    lengths = torch.tensor([7, 3, 1, 5])
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    expected = model(*tensors, lengths)
    expected_grads = torch.autograd.grad(expected, tensors)
    actual = compiled(*tensors, lengths)
    actual_grads = torch.autograd.grad(actual, tensors)
    assert max_abs_error(actual, expected) <= FP64_ATOL
    for k, (a, b) in enumerate(zip(actual_grads, expected_grads)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"grad {k}"


def _cells_model(x, h, c, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, gb_ih, gb_hh, head):
    """A decoder-style loop over the cell operators (LSTMCell's, then GRUCell's), three steps."""
    from gated_kernels.autograd import gru_cell, lstm_cell

    for _ in range(3):
        h, c = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
        h = gru_cell(x, h, g_ih, g_hh, gb_ih, gb_hh)
    return torch.tanh(h @ head).sum() + c.square().sum()


def test_compile_fullgraph_cells_match_eager():
    B, I, H = 3, 5, 6
    tensors = _tensors((B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,),
                       (3 * H, I), (3 * H, H), (3 * H,), (3 * H,), (H, 2))
    torch._dynamo.reset()
    compiled = torch.compile(_cells_model, fullgraph=True)
    expected = _cells_model(*tensors)
    expected_grads = torch.autograd.grad(expected, tensors)
    actual = compiled(*tensors)
    actual_grads = torch.autograd.grad(actual, tensors)
    assert max_abs_error(actual, expected) <= FP64_ATOL
    for k, (a, b) in enumerate(zip(actual_grads, expected_grads)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"grad {k}"


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_compile_fullgraph_modules_match_eager(backend):
    """The modules themselves, on our kernels and on the `torch` backend (torch.nn's forward
    called on our module): a bidirectional LSTM into a GRU into an LSTMCell step."""
    import gated_kernels as gk

    torch.manual_seed(0)
    lstm = gk.LSTM(5, 6, num_layers=2, bidirectional=True, dtype=torch.float64, backend=backend)
    gru = gk.GRU(12, 4, dtype=torch.float64, backend=backend)
    cell = gk.LSTMCell(4, 3, dtype=torch.float64, backend=backend)
    params = [*lstm.parameters(), *gru.parameters(), *cell.parameters()]
    x = torch.randn(7, 2, 5, dtype=torch.float64, requires_grad=True)

    def model(x):
        y, _ = gru(lstm(x)[0])
        h, c = cell(y[-1])
        return h.square().sum() + c.sum() + y.sum()

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    expected = model(x)
    expected_grads = torch.autograd.grad(expected, [x, *params])
    actual = compiled(x)
    actual_grads = torch.autograd.grad(actual, [x, *params])
    assert max_abs_error(actual, expected) <= FP64_ATOL
    for k, (a, b) in enumerate(zip(actual_grads, expected_grads)):
        assert max_abs_error(a, b) <= FP64_ATOL, f"grad {k}"
