"""gated_kernels::input_projection and its backward (csrc/input_projection.cpp): the training
path's xg = x w_ih^T + bias and dx, dw_ih, dbias, against float64, on oneDNN's matmul and on
ATen's (oneDNN disabled)."""

import pytest
import torch

from common import assert_close, grads, input_projection, leaves
from gated_kernels.tolerance import max_rel_error

ops = torch.ops.gated_kernels
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
# (T, B, I, G)
SHAPES = {"T1-B1-I1-G4": (1, 1, 1, 4), "T7-B3-I33-G20": (7, 3, 33, 20),
          "T5-B4-I100-G388": (5, 4, 100, 388)}


def projection_and_grads(args):
    x, w_ih, bias = args
    xg = ops.input_projection(x, w_ih, bias)
    return [xg], grads([xg], [t for t in args if t is not None])


def reference_and_grads(args):
    x, w_ih, bias = args
    xg = torch.nn.functional.linear(x, w_ih, bias)
    return [xg], grads([xg], [t for t in args if t is not None])


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "aten"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_input_projection_matches_float64(dtype, shape, bias, onednn):
    T, B, I, G = shape
    args = input_projection(T, B, I, G, bias=bias)
    expected, expected_grads = reference_and_grads(leaves(args))
    low = reference_and_grads(leaves(args, dtype)) if dtype == torch.bfloat16 else None
    with torch.backends.mkldnn.flags(enabled=onednn):
        actual, actual_grads = projection_and_grads(leaves(args, dtype))
    names = ["dx", "dw_ih", "dbias"][: len(actual_grads)]
    for k, (name, kind, a, e) in enumerate(
            zip(["xg", *names], ["out"] + ["grad"] * len(names), actual + list(actual_grads),
                expected + list(expected_grads))):
        low_error = max_rel_error((low[0] + list(low[1]))[k], e) if low else None
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, kind, name, low_error)


def test_input_projection_poisoned_outputs_are_all_written(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    x, w_ih, bias = input_projection(6, 5, 9, 12, torch.float32)
    assert torch.isfinite(ops.input_projection(x, w_ih, bias)).all()
    for out in ops.input_projection_backward(torch.randn(6, 5, 12), x, w_ih, True):
        assert torch.isfinite(out).all()


def test_input_projection_opcheck():
    args = leaves(input_projection(4, 3, 5, 8, torch.float32))
    torch.library.opcheck(ops.input_projection.default, tuple(args))


def test_input_projection_rejects_bad_input():
    x, w_ih, bias = input_projection(4, 3, 5, 8, torch.float32)
    with pytest.raises(RuntimeError, match=r"w_ih.size\(1\) must be I \(x.size\(2\)\) = 5, got 6"):
        ops.input_projection(x, torch.randn(8, 6), bias)
    with pytest.raises(RuntimeError, match=r"bias.size\(0\) must be w_ih.size\(0\)"):
        ops.input_projection(x, w_ih, torch.randn(7))
    with pytest.raises(RuntimeError, match="dxg must have shape"):
        ops.input_projection_backward(torch.randn(4, 3, 9), x, w_ih, True)
