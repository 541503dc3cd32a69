"""The C++ backend's training path from the layer input: lstm_forward_from_input /
gru_forward_from_input under autograd.from_input, and the input projection and its gradients
(input_projection, input_projection_backward, csrc/input_projection.cpp), against the float64
reference on every output and gradient, on oneDNN's matmul and on ATen's (oneDNN disabled)."""

import pytest
import torch

from common import (assert_close, check_against_reference, gru_inputs, input_projection, leaves,
                    lstm_inputs)
from gated_kernels import reference
from gated_kernels.autograd import from_input
from gated_kernels.spec import GRU, LSTM
from gated_kernels.tolerance import max_rel_error

ops = torch.ops.gated_kernels
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


def lstm_from_input(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse):
    return from_input(LSTM, x, w_ih, bias, (w_hh, w_hr), (h0, c0), lengths, reverse)


def gru_from_input(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse):
    return from_input(GRU, x, w_ih, b_ih, (w_hh, b_hh), (h0,), lengths, reverse)


# (T, B, I, H, P, lengths, reverse): chunks of input gates (T=300 at B=1: three, the last one
# short), lengths with reverse, a projection, H=1.
CASES = {
    "T1-B3-I5-H8": (1, 3, 5, 8, None, None, False),
    "T11-B5-I7-H12-lengths-reverse": (11, 5, 7, 12, None, [11, 1, 6, 11, 3], True),
    "T300-B1-I3-H20": (300, 1, 3, 20, None, None, False),
    "T10-B4-I6-H20-P7-lengths": (10, 4, 6, 20, 7, [10, 1, 4, 7], False),
    "T6-B2-I1-H1": (6, 2, 1, 1, None, None, False),
}


def lstm_from_input_args(case, bias=True):
    T, B, I, H, P, lengths, reverse = case
    _, w_hh, w_hr, h0, c0, lens = lstm_inputs(T, B, H, P, lengths)
    x, w_ih, b = input_projection(T, B, I, 4 * H, bias=bias)
    return [x, w_ih, b, w_hh, w_hr, h0, c0], lens, reverse


def lstm_reference(x, w_ih, bias, *rest):
    return reference.lstm_recurrence(torch.nn.functional.linear(x, w_ih, bias), *rest)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_lstm_from_input_matches_reference(case, dtype):
    args, lens, reverse = lstm_from_input_args(case)
    check_against_reference(lstm_from_input, lstm_reference, args, lens, reverse, dtype,
                            ("y", "h_n", "c_n"), ("x", "w_ih", "bias", "w_hh", "w_hr", "h0", "c0"))


def gru_from_input_args(case, bias=True):
    T, B, I, H, _, lengths, reverse = case
    _, w_hh, b_hh, h0, lens = gru_inputs(T, B, H, lengths)
    x, w_ih, b = input_projection(T, B, I, 3 * H, bias=bias)
    return [x, w_ih, b, w_hh, b_hh, h0], lens, reverse


def gru_reference(x, w_ih, b_ih, *rest):
    return reference.gru_recurrence(torch.nn.functional.linear(x, w_ih, b_ih), *rest)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gru_from_input_matches_reference(case, dtype):
    args, lens, reverse = gru_from_input_args(case)
    check_against_reference(gru_from_input, gru_reference, args, lens, reverse, dtype,
                            ("y", "h_n"), ("x", "w_ih", "b_ih", "w_hh", "b_hh", "h0"))


def test_from_input_without_bias_matches_reference():
    args, lens, reverse = lstm_from_input_args(CASES["T11-B5-I7-H12-lengths-reverse"], False)
    check_against_reference(lstm_from_input, lstm_reference, args, lens, reverse,
                            torch.float64, ("y", "h_n", "c_n"),
                            ("x", "w_ih", "bias", "w_hh", "w_hr", "h0", "c0"))
    args, lens, reverse = gru_from_input_args(CASES["T11-B5-I7-H12-lengths-reverse"], False)
    check_against_reference(gru_from_input, gru_reference, args, lens, reverse,
                            torch.float64, ("y", "h_n"),
                            ("x", "w_ih", "b_ih", "w_hh", "b_hh", "h0"))


def test_from_input_saves_what_the_xg_operators_save():
    # The forward from x returns lstm_forward's / gru_forward's outputs for xg = x w_ih^T + b,
    # saved tensors included (up to the summation order of the input products).
    args, lens, reverse = lstm_from_input_args(CASES["T11-B5-I7-H12-lengths-reverse"])
    x, w_ih, b, *rest = args
    ours = ops.lstm_forward_from_input(x, w_ih, b, *rest, lens, reverse)
    theirs = ops.lstm_forward(torch.nn.functional.linear(x, w_ih, b), *rest, lens, reverse)
    for a, e in zip(ours, theirs):
        assert a.dtype == e.dtype and torch.allclose(a, e, rtol=0, atol=1e-12)
    args, lens, reverse = gru_from_input_args(CASES["T11-B5-I7-H12-lengths-reverse"])
    x, w_ih, b, *rest = args
    ours = ops.gru_forward_from_input(x, w_ih, b, *rest, lens, reverse)
    theirs = ops.gru_forward(torch.nn.functional.linear(x, w_ih, b), *rest, lens, reverse)
    for a, e in zip(ours, theirs):
        assert a.dtype == e.dtype and torch.allclose(a, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "aten"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_input_projection_backward_matches_float64(dtype, bias, onednn):
    # dx, dw_ih and dbias of xg = x w_ih^T + b for a random dxg, against autograd through
    # F.linear in float64; bfloat16 within 3x of PyTorch's own bfloat16 gradients.
    T, B, I, G = 5, 4, 100, 388
    x, w_ih, b = leaves(input_projection(T, B, I, G, bias=bias))
    dxg = torch.randn(T, B, G, dtype=torch.float64)
    low = None
    if dtype == torch.bfloat16:
        xl, wl, bl = leaves([x, w_ih, b], dtype)
        xg = torch.nn.functional.linear(xl, wl, bl)
        low = torch.autograd.grad([xg], [t for t in (xl, wl, bl) if t is not None], [dxg.to(dtype)])
    expected = torch.autograd.grad([torch.nn.functional.linear(x, w_ih, b)],
                                   [t for t in (x, w_ih, b) if t is not None], [dxg])
    with torch.backends.mkldnn.flags(enabled=onednn):
        dx, dw, db = ops.input_projection_backward(dxg.to(dtype), x.detach().to(dtype),
                                                   w_ih.detach().to(dtype), bias)
    actual = [dx, dw] + ([db] if bias else [])
    assert db.shape == ((G,) if bias else (0,))
    for k, (name, a, e) in enumerate(zip(("dx", "dw_ih", "dbias"), actual, expected)):
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, "grad", name, max_rel_error(low[k], e) if low else None)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "aten"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_input_projection_matches_float64(dtype, onednn, monkeypatch):
    """xg = x w_ih^T, every element written (poisoned outputs), x strided; opcheck; errors
    naming the argument."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, I, G = 5, 4, 100, 388
    x, w_ih, _ = input_projection(T, B, I, G)
    with torch.backends.mkldnn.flags(enabled=onednn):
        xg = ops.input_projection(x.to(dtype).transpose(0, 1).contiguous().transpose(0, 1),
                                  w_ih.to(dtype))
    assert xg.dtype == dtype
    assert_close(xg, x @ w_ih.T, dtype, "out", "xg")
    torch.library.opcheck(ops.input_projection.default, (x.float(), w_ih.float()))
    with pytest.raises(RuntimeError, match=r"w_ih.size\(1\) must be"):
        ops.input_projection(x, w_ih[:, :-1])


def test_from_input_poisoned_outputs_are_all_written(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    args, lens, reverse = lstm_from_input_args(CASES["T10-B4-I6-H20-P7-lengths"])
    for out in ops.lstm_forward_from_input(*args, lens, reverse):
        assert torch.isfinite(out).all()
    args, lens, reverse = gru_from_input_args(CASES["T11-B5-I7-H12-lengths-reverse"])
    for out in ops.gru_forward_from_input(*args, lens, reverse):
        assert torch.isfinite(out).all()
    x, w_ih, _ = input_projection(6, 5, 9, 12, torch.float32)
    for out in ops.input_projection_backward(torch.randn(6, 5, 12), x, w_ih, True):
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("lengths", [[6, 1, 2, 1, 3], [6, 6, 5, 6, 6]], ids=["fill-43%", "fill-97%"])
def test_input_projection_backward_with_lengths_skips_only_zero_rows(lengths, monkeypatch):
    """Past each row's length dxg is 0 (the recurrence's backward writes it so): with lengths
    the products take the running rows alone (under 90% of them) and every output matches the
    op without lengths; dx past the lengths is 0 and written."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B = 6, 5
    x, w_ih, _ = input_projection(T, B, 9, 12, torch.float32)
    lens = torch.tensor(lengths)
    running = (torch.arange(T).unsqueeze(1) < lens).unsqueeze(2)
    dxg = torch.randn(T, B, 12) * running
    expected = ops.input_projection_backward(dxg, x, w_ih, True)
    got = ops.input_projection_backward(dxg, x, w_ih, True, lens)
    for name, e, g in zip(("dx", "dw_ih", "dbias"), expected, got):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=name)
    assert (got[0] * ~running == 0).all()
    torch.library.opcheck(ops.input_projection_backward.default, (dxg, x, w_ih, True, lens))


def test_from_input_opcheck():
    args, lens, reverse = lstm_from_input_args(CASES["T10-B4-I6-H20-P7-lengths"])
    torch.library.opcheck(ops.lstm_forward_from_input.default,
                          (*leaves(args), lens, reverse))
    args, lens, reverse = gru_from_input_args(CASES["T11-B5-I7-H12-lengths-reverse"])
    torch.library.opcheck(ops.gru_forward_from_input.default, (*leaves(args), lens, reverse))
    x, w_ih, _ = input_projection(4, 3, 5, 8, torch.float32)
    torch.library.opcheck(ops.input_projection_backward.default,
                          (torch.randn(4, 3, 8), x, w_ih, True))


def test_from_input_rejects_bad_input():
    args, lens, reverse = lstm_from_input_args(CASES["T1-B3-I5-H8"])
    x, w_ih, b, *rest = args
    with pytest.raises(RuntimeError, match=r"w_ih.size\(1\) must be I \(x.size\(2\)\) = 5, got 6"):
        ops.lstm_forward_from_input(x, torch.randn(32, 6, dtype=x.dtype), b, *rest, lens, reverse)
    with pytest.raises(RuntimeError, match=r"bias.size\(0\) must be w_ih.size\(0\)"):
        ops.lstm_forward_from_input(x, w_ih, b[:7], *rest, lens, reverse)
    with pytest.raises(RuntimeError, match="dxg must have shape"):
        ops.input_projection_backward(torch.randn(1, 3, 9, dtype=x.dtype), x, w_ih, True)
    x, w_ih, _ = input_projection(6, 5, 9, 12, torch.float32)
    dxg = torch.randn(6, 5, 12)
    with pytest.raises(RuntimeError, match=r"lengths.size\(0\) must be B"):
        ops.input_projection_backward(dxg, x, w_ih, True, torch.tensor([6, 1, 2]))
    with pytest.raises(RuntimeError, match=r"lengths\[1\] must be in \[1, T\] = \[1, 6\]"):
        ops.input_projection_backward(dxg, x, w_ih, True, torch.tensor([6, 7, 2, 1, 3]))
    with pytest.raises(RuntimeError, match="lengths must have dtype int64"):
        ops.input_projection_backward(dxg, x, w_ih, True, torch.ones(5, dtype=torch.int32))
