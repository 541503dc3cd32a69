"""The C++ GRU recurrence (gated_kernels::gru_forward / gru_backward / gru_inference): each
product kernel, gradcheck, opcheck, poisoned outputs, layouts and argument errors. Every case
against the reference, on every backend, is test_sequence_ops.py."""

import re

import pytest
import torch

from common import (INFERENCE_CASES, assert_close, bf16_brgemm_expected, cases_of,
                    check_against_reference, check_inference_against_reference,
                    check_layout_independent, grads, gru_inputs, inference_args, leaves)
from gated_kernels import GRUFunction, reference
from gated_kernels.spec import GRU

CASES = cases_of(GRU, INFERENCE_CASES)
OUTPUTS = ("y", "h_n")
INPUTS = ("xg", "w_hh", "b_hh", "h0")
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


# Cases for each product kernel: B=1, rows split over the threads, lengths, a wide H.
KERNEL_CASES = ("T9-B1-H40-lengths-reverse", "T63-B4-H100", "T11-B5-H12-lengths-reverse",
                "T5-B1-H520")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernel", ["own", "brgemm", "mkl"])
def test_gru_cpp_matches_reference_on_every_product_kernel(kernel, dtype, monkeypatch):
    # GATED_KERNELS_CPU_GEMM forces one kernel for every product of the forward, the backward
    # and the inference operator's input gates (the other tests run `auto`).
    monkeypatch.setenv("GATED_KERNELS_CPU_GEMM", kernel)
    if kernel == "brgemm" and dtype == torch.bfloat16 and not bf16_brgemm_expected():
        args, lens, reverse = inference_args(GRU, CASES[KERNEL_CASES[0]], dtype)
        with pytest.raises(RuntimeError, match="brgemm does not run here for BFloat16"):
            torch.ops.gated_kernels.gru_inference(*args, lens, reverse)
        return
    for name in KERNEL_CASES:
        T, B, H, _, lengths, reverse = CASES[name]
        *args, lens = gru_inputs(T, B, H, lengths)
        check_against_reference(GRUFunction.apply, reference.gru_recurrence, args, lens,
                                reverse, dtype, OUTPUTS, INPUTS)
        args, lens, reverse = inference_args(GRU, CASES[name], dtype)
        check_inference_against_reference(torch.ops.gated_kernels.gru_inference,
                                          reference.gru_recurrence, args, lens, reverse, dtype,
                                          OUTPUTS)


@pytest.mark.parametrize("lengths,reverse", [(None, False), ([4, 2, 1], True)],
                         ids=["plain", "lengths-reverse"])
def test_gru_gradcheck(lengths, reverse):
    *args, lens = gru_inputs(4, 3, 3, lengths)
    inputs = leaves(args)
    assert torch.autograd.gradcheck(lambda *a: GRUFunction.apply(*a, lens, reverse), inputs)


def test_gru_opcheck():
    *args, lens = gru_inputs(4, 3, 5, [4, 2, 1])
    inputs = leaves(args)
    fwd_args = (*inputs, lens, True)
    torch.library.opcheck(torch.ops.gated_kernels.gru_forward.default, fwd_args)
    y, h_n, gates = torch.ops.gated_kernels.gru_forward(*fwd_args)
    dy, dh_n = leaves([torch.randn_like(y), torch.randn_like(h_n)])
    xg, w_hh, b_hh, h0 = inputs
    bwd_args = (dy, dh_n, w_hh, h0, lens, True, y, gates)
    torch.library.opcheck(torch.ops.gated_kernels.gru_backward.default, bwd_args)


def test_gru_poisoned_outputs_are_all_written(monkeypatch):
    """Outputs start as NaN: every element of every output and gradient must be written,
    including the rows past their length."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = gru_inputs(7, 4, 9, [7, 1, 3, 5])
    inputs = leaves(args)
    outs = torch.ops.gated_kernels.gru_forward(*inputs, lens, True)
    for name, t in zip(("y", "h_n", "gates"), outs):
        assert torch.isfinite(t).all(), name
    for name, g in zip(INPUTS, grads(GRUFunction.apply(*inputs, lens, True), inputs)):
        assert torch.isfinite(g).all(), f"d{name}"


def test_gru_outputs_of_32_mb_or_more_are_written_and_match_reference(monkeypatch):
    """As for the LSTM: gates [64, 64, 2048] float32 (33.5 MB) take the page-touching path of
    csrc/common.cpp; poisoned, so an element left behind would show as NaN."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = gru_inputs(64, 64, 512, list(range(64, 0, -1)))
    check_against_reference(GRUFunction.apply, reference.gru_recurrence, args, lens, False,
                            torch.float32, OUTPUTS, INPUTS)


def test_gru_non_contiguous_inputs_give_the_same_result():
    *args, lens = gru_inputs(6, 4, 8, [6, 2, 5, 1])
    check_layout_independent(GRUFunction.apply, args, lens, False)


def _bad(**changes):
    """Valid gru_forward arguments (T=5, B=3, H=4) with some replaced."""
    xg, w_hh, b_hh, h0, lens = gru_inputs(5, 3, 4, [5, 2, 1])
    args = dict(xg=xg, w_hh=w_hh, b_hh=b_hh, h0=h0, lengths=lens, reverse=False)
    args.update(changes)
    return args


BAD_INPUTS = {
    "xg-rank": (_bad(xg=torch.randn(5, 12, dtype=torch.float64)), "xg must be 3-D"),
    "xg-gate-width": (_bad(xg=torch.randn(5, 3, 13, dtype=torch.float64)), "xg.size(2) must be 3H"),
    "w_hh-rows": (_bad(w_hh=torch.randn(9, 4, dtype=torch.float64)), "w_hh.size(0) must be 3H"),
    "w_hh-cols": (_bad(w_hh=torch.randn(12, 3, dtype=torch.float64)), "w_hh.size(1) must be H"),
    "b_hh-size": (_bad(b_hh=torch.randn(9, dtype=torch.float64)), "b_hh.size(0) must be 3H"),
    "h0-batch": (_bad(h0=torch.randn(2, 4, dtype=torch.float64)), "h0.size(0) must be B"),
    "h0-rank": (_bad(h0=torch.randn(1, 3, 4, dtype=torch.float64)), "h0 must be 2-D"),
    "mixed-dtype": (_bad(h0=torch.randn(3, 4)), "h0 must have dtype Double"),
    "lengths-zero": (_bad(lengths=torch.tensor([0, 2, 1])), "lengths[0] must be in [1, T] = [1, 5], got 0"),
    "lengths-above-T": (_bad(lengths=torch.tensor([5, 2, 9])), "lengths[2] must be in [1, T] = [1, 5], got 9"),
    "T-zero": (_bad(xg=torch.randn(0, 3, 12, dtype=torch.float64)), "T >= 1"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_gru_forward_rejects_bad_input(args, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.gated_kernels.gru_forward(**args)


@pytest.mark.parametrize("name", ["w_hh", "b_hh", "h0"])
def test_gru_forward_rejects_tensors_on_another_device(name):
    args = _bad()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} must be on cpu .* got meta"):
        torch.ops.gated_kernels.gru_forward(**args)


# ---- gru_inference: from the input x, without xg or the gates saved for backward ----

def test_gru_inference_without_input_bias_matches_reference():
    args, lens, reverse = inference_args(GRU, CASES["T37-B5-H40-lengths-reverse-chunks"],
                                         torch.float64, bias=False)
    check_inference_against_reference(torch.ops.gated_kernels.gru_inference,
                                      reference.gru_recurrence, args, lens, reverse,
                                      torch.float64, OUTPUTS)


def test_gru_inference_poisoned_outputs_are_all_written(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    args, lens, _ = inference_args(GRU, (7, 4, 9, None, [7, 1, 3, 5], False), torch.float64)
    for reverse in (False, True):
        outs = torch.ops.gated_kernels.gru_inference(*args, lens, reverse)
        for name, t in zip(OUTPUTS, outs):
            assert torch.isfinite(t).all(), name


def test_gru_inference_opcheck():
    args, lens, _ = inference_args(GRU, (4, 3, 5, None, [4, 2, 1], True), torch.float64)
    torch.library.opcheck(torch.ops.gated_kernels.gru_inference.default, (*args, lens, True))


def _bad_inference(**changes):
    """Valid gru_inference arguments (T=5, B=3, I=7, H=4) with some replaced."""
    case = (5, 3, 4, None, [5, 2, 1], False)
    (x, w_ih, b_ih, w_hh, b_hh, h0), lens, _ = inference_args(GRU, case, torch.float64)
    args = dict(x=x, w_ih=w_ih, b_ih=b_ih, w_hh=w_hh, b_hh=b_hh, h0=h0, lengths=lens,
                reverse=False)
    args.update(changes)
    return args


BAD_INFERENCE_INPUTS = {
    "x-rank": (_bad_inference(x=torch.randn(5, 7, dtype=torch.float64)), "x must be 3-D"),
    "T-zero": (_bad_inference(x=torch.randn(0, 3, 7, dtype=torch.float64)), "T >= 1"),
    "w_ih-cols": (_bad_inference(w_ih=torch.randn(12, 6, dtype=torch.float64)), "w_ih.size(1) must be I (x.size(2)) = 7"),
    "w_ih-rows": (_bad_inference(w_ih=torch.randn(13, 7, dtype=torch.float64)), "w_ih.size(0) must be 3H"),
    "b_ih-size": (_bad_inference(b_ih=torch.randn(9, dtype=torch.float64)), "bias.size(0) must be w_ih.size(0) = 12"),
    "w_hh-rows": (_bad_inference(w_hh=torch.randn(9, 4, dtype=torch.float64)), "w_hh.size(0) must be 3H"),
    "b_hh-size": (_bad_inference(b_hh=torch.randn(9, dtype=torch.float64)), "b_hh.size(0) must be 3H"),
    "h0-batch": (_bad_inference(h0=torch.randn(4, 4, dtype=torch.float64)), "h0.size(0) must be B"),
    "mixed-dtype": (_bad_inference(w_hh=torch.randn(12, 4)), "w_hh must have dtype Double"),
    "lengths-above-T": (_bad_inference(lengths=torch.tensor([5, 6, 1])), "lengths[1] must be in [1, T] = [1, 5], got 6"),
}


@pytest.mark.parametrize("args,message", BAD_INFERENCE_INPUTS.values(),
                         ids=BAD_INFERENCE_INPUTS.keys())
def test_gru_inference_rejects_bad_input(args, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.gated_kernels.gru_inference(**args)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_gru_layer_uses_inference_only_without_grad(grad, monkeypatch):
    """gru_layer takes gru_inference exactly when nothing needs a gradient, with the same y."""
    from gated_kernels.functional import gru_layer

    T, B, I, H = 5, 3, 4, 6
    g = torch.Generator().manual_seed(0)
    x, w_ih, w_hh = (torch.randn(*s, generator=g) for s in [(T, B, I), (3 * H, I), (3 * H, H)])
    h0 = torch.zeros(B, H)
    expected = gru_layer(x, h0, w_ih, w_hh.requires_grad_(), backend="cpp")
    calls = []
    real = torch.ops.gated_kernels.gru_inference

    class Spy:
        def __call__(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setattr(torch.ops.gated_kernels, "gru_inference", Spy())
    with torch.set_grad_enabled(grad):
        out = gru_layer(x, h0, w_ih, w_hh, backend="cpp")
    assert len(calls) == (0 if grad else 1)
    assert out[0].requires_grad == grad
    # The inference operator makes the input projection itself, in its own summation order.
    for name, a, e in zip(OUTPUTS, out, expected):
        assert_close(a.detach(), e.detach().double(), torch.float32, "out", name)
