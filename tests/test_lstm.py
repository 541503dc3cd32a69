"""The C++ LSTM recurrence (gated_kernels::lstm_forward / lstm_backward / lstm_inference):
each product kernel, thread counts, gradcheck, opcheck, poisoned and large outputs, layouts and
argument errors. Every case against the reference, on every backend, is test_sequence_ops.py."""

import re

import pytest
import torch

from common import (INFERENCE_CASES, assert_close, bf16_brgemm_expected, cases_of,
                    check_against_reference, check_inference_against_reference,
                    check_layout_independent, grads, inference_args, leaves, lstm_inputs)
from gated_kernels import LSTMFunction, reference
from gated_kernels.spec import LSTM

CASES = cases_of(LSTM, INFERENCE_CASES)
OUTPUTS = ("y", "h_n", "c_n")
INPUTS = ("xg", "w_hh", "w_hr", "h0", "c0")
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("threads", [1, 3], ids=["threads1", "threads3"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_lstm_cpp_matches_reference_on_any_thread_count(threads, dtype):
    # The kernels split the hidden units (forward, and the backward at B=1) and the batch rows
    # (backward) over torch's threads in blocks of 16 units: H=50 and P=20 give uneven shares,
    # and 3 threads one with 2 units and one with no projected unit; 1 thread runs without a
    # team.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for B, P, lengths in ((5, 20, [12, 1, 7, 12, 4]), (1, None, [9])):
            *args, lens = lstm_inputs(12, B, 50, P, lengths)
            check_against_reference(LSTMFunction.apply, reference.lstm_recurrence, args, lens,
                                    True, dtype, OUTPUTS, INPUTS)
    finally:
        torch.set_num_threads(previous)


# Cases for each product kernel: B=1 (the forward's one-row product, the backward's unit split),
# rows split over the threads, projection with lengths, a wide H (large rows of W_hh).
KERNEL_CASES = ("T9-B1-H40-lengths-reverse", "T63-B4-H100", "T10-B4-H20-P7-lengths-reverse",
                "T5-B1-H520")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernel", ["own", "brgemm", "mkl"])
def test_lstm_cpp_matches_reference_on_every_product_kernel(kernel, dtype, monkeypatch):
    # GATED_KERNELS_CPU_GEMM forces one kernel for every product of the forward, the backward
    # and the inference operator's input gates (the other tests run `auto`).
    monkeypatch.setenv("GATED_KERNELS_CPU_GEMM", kernel)
    if kernel == "brgemm" and dtype == torch.bfloat16 and not bf16_brgemm_expected():
        args, lens, reverse = inference_args(LSTM, CASES[KERNEL_CASES[0]], dtype)
        with pytest.raises(RuntimeError, match="brgemm does not run here for BFloat16"):
            torch.ops.gated_kernels.lstm_inference(*args, lens, reverse)
        return
    for name in KERNEL_CASES:
        T, B, H, P, lengths, reverse = CASES[name]
        *args, lens = lstm_inputs(T, B, H, P, lengths)
        check_against_reference(LSTMFunction.apply, reference.lstm_recurrence, args, lens,
                                reverse, dtype, OUTPUTS, INPUTS)
        args, lens, reverse = inference_args(LSTM, CASES[name], dtype)
        check_inference_against_reference(torch.ops.gated_kernels.lstm_inference,
                                          reference.lstm_recurrence, args, lens, reverse, dtype,
                                          OUTPUTS)


@pytest.mark.parametrize("P,lengths,reverse", [(None, [4, 1, 3], False), (2, [4, 2, 1], True)],
                         ids=["lengths", "P2-lengths-reverse"])
def test_lstm_gradcheck(P, lengths, reverse):
    *args, lens = lstm_inputs(4, 3, 3, P, lengths)
    inputs = leaves(args)
    assert torch.autograd.gradcheck(lambda *a: LSTMFunction.apply(*a, lens, reverse), inputs)


@pytest.mark.parametrize("P", [None, 3], ids=["H5", "H5-P3"])
def test_lstm_opcheck(P):
    *args, lens = lstm_inputs(4, 3, 5, P, [4, 2, 1])
    inputs = leaves(args)
    fwd_args = (*inputs, lens, True)
    torch.library.opcheck(torch.ops.gated_kernels.lstm_forward.default, fwd_args)
    y, h_n, c_n, gates, c_all = torch.ops.gated_kernels.lstm_forward(*fwd_args)
    dy, dh_n, dc_n = leaves([torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n)])
    xg, w_hh, w_hr, h0, c0 = inputs
    bwd_args = (dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lens, True, y, gates, c_all)
    torch.library.opcheck(torch.ops.gated_kernels.lstm_backward.default, bwd_args)


def test_lstm_poisoned_outputs_are_all_written(monkeypatch):
    """Outputs start as NaN: every element of every output and gradient must be written,
    including the rows past their length."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = lstm_inputs(7, 4, 9, 5, [7, 1, 3, 5])
    inputs = leaves(args)
    outs = torch.ops.gated_kernels.lstm_forward(*inputs, lens, False)
    for name, t in zip(("y", "h_n", "c_n", "gates", "c_all"), outs):
        assert torch.isfinite(t).all(), name
    for name, g in zip(INPUTS, grads(LSTMFunction.apply(*inputs, lens, False), inputs)):
        assert torch.isfinite(g).all(), f"d{name}"


def test_lstm_outputs_of_32_mb_or_more_are_written_and_match_reference(monkeypatch):
    """Outputs of 32 MB or more have their pages touched before the kernel runs (csrc/common.cpp):
    gates and dxg here are [64, 64, 2048] float32, 33.5 MB. Poisoned, so an element that touch
    left behind would show as NaN."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = lstm_inputs(64, 64, 512, None, list(range(64, 0, -1)))
    check_against_reference(LSTMFunction.apply, reference.lstm_recurrence, args, lens, False,
                            torch.float32, OUTPUTS, INPUTS)


def test_lstm_non_contiguous_inputs_give_the_same_result():
    *args, lens = lstm_inputs(6, 4, 8, 5, [6, 2, 5, 1])
    check_layout_independent(LSTMFunction.apply, args, lens, True)


def _bad(**changes):
    """Valid lstm_forward arguments (T=5, B=3, H=4, P=2) with some replaced."""
    xg, w_hh, w_hr, h0, c0, lens = lstm_inputs(5, 3, 4, 2, [5, 2, 1])
    args = dict(xg=xg, w_hh=w_hh, w_hr=w_hr, h0=h0, c0=c0, lengths=lens, reverse=False)
    args.update(changes)
    return args


BAD_INPUTS = {
    "xg-rank": (_bad(xg=torch.randn(5, 16)), "xg must be 3-D"),
    "xg-gate-width": (_bad(xg=torch.randn(5, 3, 15, dtype=torch.float64)), "xg.size(2) must be 4H"),
    "w_hh-rows": (_bad(w_hh=torch.randn(12, 2, dtype=torch.float64)), "w_hh.size(0) must be 4H"),
    "w_hh-cols": (_bad(w_hh=torch.randn(16, 3, dtype=torch.float64)), "w_hh.size(1) must be P"),
    "w_hr-cols": (_bad(w_hr=torch.randn(2, 5, dtype=torch.float64)), "w_hr.size(1) must be H"),
    "h0-batch": (_bad(h0=torch.randn(4, 2, dtype=torch.float64)), "h0.size(0) must be B"),
    "h0-size": (_bad(h0=torch.randn(3, 4, dtype=torch.float64)), "h0.size(1) must be P"),
    "c0-size": (_bad(c0=torch.randn(3, 2, dtype=torch.float64)), "c0.size(1) must be H"),
    "c0-rank": (_bad(c0=torch.randn(3, dtype=torch.float64)), "c0 must be 2-D"),
    "mixed-dtype": (_bad(w_hh=torch.randn(16, 2)), "w_hh must have dtype Double"),
    "int-dtype": (_bad(xg=torch.ones(5, 3, 16, dtype=torch.int64)), "xg must be float32, float64 or bfloat16"),
    "lengths-zero": (_bad(lengths=torch.tensor([5, 0, 1])), "lengths[1] must be in [1, T] = [1, 5], got 0"),
    "lengths-above-T": (_bad(lengths=torch.tensor([5, 6, 1])), "lengths[1] must be in [1, T] = [1, 5], got 6"),
    "lengths-dtype": (_bad(lengths=torch.tensor([5.0, 2.0, 1.0])), "lengths must have dtype int64"),
    "lengths-size": (_bad(lengths=torch.tensor([5, 2])), "lengths.size(0) must be B"),
    "T-zero": (_bad(xg=torch.randn(0, 3, 16, dtype=torch.float64)), "T >= 1"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_lstm_forward_rejects_bad_input(args, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.gated_kernels.lstm_forward(**args)


@pytest.mark.parametrize("name", ["w_hh", "h0", "c0", "w_hr"])
def test_lstm_forward_rejects_tensors_on_another_device(name):
    args = _bad()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} must be on cpu .* got meta"):
        torch.ops.gated_kernels.lstm_forward(**args)


# ---- lstm_inference: from the input x, without xg or the tensors saved for backward ----

def test_lstm_inference_without_bias_matches_reference():
    args, lens, reverse = inference_args(LSTM, CASES["T37-B5-H40-P8-lengths-reverse-chunks"],
                                         torch.float64, bias=False)
    check_inference_against_reference(torch.ops.gated_kernels.lstm_inference,
                                      reference.lstm_recurrence, args, lens, reverse,
                                      torch.float64, OUTPUTS)


def test_lstm_inference_poisoned_outputs_are_all_written(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    for P in (None, 5):
        args, lens, _ = inference_args(LSTM, (7, 4, 9, P, [7, 1, 3, 5], False), torch.float64)
        for reverse in (False, True):
            outs = torch.ops.gated_kernels.lstm_inference(*args, lens, reverse)
            for name, t in zip(OUTPUTS, outs):
                assert torch.isfinite(t).all(), name


@pytest.mark.parametrize("P", [None, 3], ids=["H5", "H5-P3"])
def test_lstm_inference_opcheck(P):
    args, lens, _ = inference_args(LSTM, (4, 3, 5, P, [4, 2, 1], True), torch.float64)
    torch.library.opcheck(torch.ops.gated_kernels.lstm_inference.default, (*args, lens, True))


def _bad_inference(**changes):
    """Valid lstm_inference arguments (T=5, B=3, I=7, H=4, P=2) with some replaced."""
    case = (5, 3, 4, 2, [5, 2, 1], False)
    (x, w_ih, bias, w_hh, w_hr, h0, c0), lens, _ = inference_args(LSTM, case, torch.float64)
    args = dict(x=x, w_ih=w_ih, bias=bias, w_hh=w_hh, w_hr=w_hr, h0=h0, c0=c0, lengths=lens,
                reverse=False)
    args.update(changes)
    return args


BAD_INFERENCE_INPUTS = {
    "x-rank": (_bad_inference(x=torch.randn(5, 7, dtype=torch.float64)), "x must be 3-D"),
    "x-int-dtype": (_bad_inference(x=torch.ones(5, 3, 7, dtype=torch.int64)), "x must be float32, float64 or bfloat16"),
    "T-zero": (_bad_inference(x=torch.randn(0, 3, 7, dtype=torch.float64)), "T >= 1"),
    "w_ih-cols": (_bad_inference(w_ih=torch.randn(16, 6, dtype=torch.float64)), "w_ih.size(1) must be I (x.size(2)) = 7"),
    "w_ih-rows": (_bad_inference(w_ih=torch.randn(15, 7, dtype=torch.float64)), "w_ih.size(0) must be 4H"),
    "w_ih-dtype": (_bad_inference(w_ih=torch.randn(16, 7)), "w_ih must have dtype Double"),
    "bias-size": (_bad_inference(bias=torch.randn(12, dtype=torch.float64)), "bias.size(0) must be w_ih.size(0) = 16"),
    "w_hh-rows": (_bad_inference(w_hh=torch.randn(12, 2, dtype=torch.float64)), "w_hh.size(0) must be 4H"),
    "h0-batch": (_bad_inference(h0=torch.randn(4, 2, dtype=torch.float64)), "h0.size(0) must be B"),
    "c0-size": (_bad_inference(c0=torch.randn(3, 2, dtype=torch.float64)), "c0.size(1) must be H"),
    "lengths-zero": (_bad_inference(lengths=torch.tensor([5, 0, 1])), "lengths[1] must be in [1, T] = [1, 5], got 0"),
}


@pytest.mark.parametrize("args,message", BAD_INFERENCE_INPUTS.values(),
                         ids=BAD_INFERENCE_INPUTS.keys())
def test_lstm_inference_rejects_bad_input(args, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.gated_kernels.lstm_inference(**args)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_lstm_layer_uses_inference_only_without_grad(grad, monkeypatch):
    """lstm_layer takes lstm_inference exactly when nothing needs a gradient, with the same y."""
    from gated_kernels.functional import lstm_layer

    T, B, I, H = 5, 3, 4, 6
    g = torch.Generator().manual_seed(0)
    x, w_ih, w_hh = (torch.randn(*s, generator=g) for s in [(T, B, I), (4 * H, I), (4 * H, H)])
    h0, c0 = torch.zeros(B, H), torch.zeros(B, H)
    expected = lstm_layer(x, h0, c0, w_ih, w_hh.requires_grad_(), backend="cpp")
    calls = []
    real = torch.ops.gated_kernels.lstm_inference

    class Spy:
        def __call__(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setattr(torch.ops.gated_kernels, "lstm_inference", Spy())
    with torch.set_grad_enabled(grad):
        out = lstm_layer(x, h0, c0, w_ih, w_hh, backend="cpp")
    assert len(calls) == (0 if grad else 1)
    assert out[0].requires_grad == grad
    # The inference operator makes the input projection itself, in its own summation order.
    for name, a, e in zip(OUTPUTS, out, expected):
        assert_close(a.detach(), e.detach().double(), torch.float32, "out", name)
