"""The cell operators (csrc/cell.cpp) against the float64 reference: every output and gradient,
float64 / float32 / bfloat16, sizes that are not multiples of a vector, poisoned outputs, the
schemas (opcheck) and the argument errors. The modules' parity with torch.nn is in test_cells.py
and test_rnn.py."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from common import assert_close, bf16_brgemm_expected, max_rel_error
from test_product import capabilities

from gated_kernels import autograd, reference
from gated_kernels.tolerance import allowed_error

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
# (B, I, H): one unit in one row and in 17; odd sizes against 8- and 16-float vectors; a pass split
# over two threads (B*H above twice the grain of 16384 units).
SIZES = [(1, 5, 1), (17, 5, 1), (3, 17, 70), (17, 33, 20), (40, 64, 900)]


def _inputs(cell, B, I, H, bias, seed=0):
    """float64 (x, states, w_ih, w_hh, b_ih, b_hh) at torch.nn's scales."""
    g = torch.Generator().manual_seed(seed)
    G = (4 if cell == "LSTM" else 3) * H
    bound = H**-0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound

    x = torch.randn(B, I, generator=g, dtype=torch.float64)
    states = [torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
              for _ in range(2 if cell == "LSTM" else 1)]
    biases = [uniform(G), uniform(G)] if bias else [None, None]
    return [x, *states, uniform(G, I), uniform(G, H), *biases]


def _reference(cell, x, *rest):
    """One step of gated_kernels.reference's recurrence: (h1, c1) or (h1,)."""
    if cell == "LSTM":
        h, c, w_ih, w_hh, b_ih, b_hh = rest
        bias = None if b_ih is None else b_ih + b_hh
        _, h1, c1 = reference.lstm_recurrence(F.linear(x, w_ih, bias)[None], w_hh, None, h, c)
        return h1, c1
    h, w_ih, w_hh, b_ih, b_hh = rest
    b_hh = w_hh.new_zeros(w_hh.shape[0]) if b_hh is None else b_hh
    return (reference.gru_recurrence(F.linear(x, w_ih, b_ih)[None], w_hh, b_hh, h)[1],)


def _ours(cell, *args):
    out = (autograd.lstm_cell if cell == "LSTM" else autograd.gru_cell)(*args)
    return out if isinstance(out, tuple) else (out,)


def _outputs_and_grads(fn, args, weights):
    args = [None if a is None else a.detach().requires_grad_() for a in args]
    outs = fn(*args)
    leaves = [a for a in args if a is not None]
    return outs, torch.autograd.grad(outs, leaves, weights)


# The shared bfloat16 rule scales PyTorch's own error, a statistic of the tensor: with one element
# it is one draw, often near 0 (0.08% where ours was 0.57%, 1.5 bfloat16 ulps, for a B=1 H=1
# GRU's w_hh gradient). So bfloat16 meets H=1 with B=17 rows, not 1.
DTYPE_SIZES = [pytest.param(dtype, size, id=f"{name}-B{size[0]}-I{size[1]}-H{size[2]}")
               for name, dtype in DTYPES.items() for size in SIZES
               if not (dtype == torch.bfloat16 and size[0] * size[2] == 1)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype, size", DTYPE_SIZES)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cell_outputs_and_gradients_match_reference(cell, dtype, size, bias, monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")  # an unwritten element stays NaN
    args64 = _inputs(cell, *size, bias)
    args = [None if a is None else a.to(dtype) for a in args64]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(size[0], size[2], generator=g, dtype=torch.float64)
               for _ in range(2 if cell == "LSTM" else 1)]
    expected, expected_grads = _outputs_and_grads(lambda *a: _reference(cell, *a), args64,
                                                  weights)
    low_out = low_grad = None
    if dtype == torch.bfloat16:  # the shared rule: PyTorch's own error in bfloat16
        low_outs, low_grads = _outputs_and_grads(lambda *a: _reference(cell, *a), args,
                                                 [w.to(dtype) for w in weights])
        low_out = [(o.double() - e).abs().max().item() / e.abs().max().item()
                   for o, e in zip(low_outs, expected)]
        low_grad = [(o.double() - e).abs().max().item() / e.abs().max().item()
                    for o, e in zip(low_grads, expected_grads)]
    with torch.no_grad():
        inference = _ours(cell, *args)
    actual, grads = _outputs_and_grads(lambda *a: _ours(cell, *a),
                                       args, [w.to(dtype) for w in weights])
    for k, e in enumerate(expected):
        for name, a in (("inference", inference[k]), ("forward", actual[k])):
            assert a.dtype == dtype
            assert_close(a, e, dtype, "out", f"{name} output {k}", low_out and low_out[k])
    names = [n for n, a in zip(["x", *(["h", "c"] if cell == "LSTM" else ["h"]), "w_ih", "w_hh",
                                "b_ih", "b_hh"], [*args]) if a is not None]
    for k, (a, e) in enumerate(zip(grads, expected_grads)):
        assert a.dtype == dtype
        assert_close(a, e, dtype, "grad", f"grad of {names[k]}", low_grad and low_grad[k])


@pytest.mark.parametrize("size", [s for s in SIZES if s[0] * s[2] > 1],
                         ids=[f"B{B}-I{I}-H{H}" for B, I, H in SIZES if B * H > 1])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cell_with_bfloat16_weights_matches_reference(cell, size, monkeypatch):
    """A float32 x and state with bfloat16 weights (the cells under CPU bfloat16 autocast):
    outputs and the gradients of x, the state and the biases in float32, the weights' in
    bfloat16, against float64 with the weights as rounded, within the error rule given
    PyTorch's own error for the same step under bfloat16 autocast (its products in bfloat16)."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    args64 = _inputs(cell, *size, True)
    args64[-4:-2] = [w.bfloat16().double() for w in args64[-4:-2]]
    args = [a.float() for a in args64]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(size[0], size[2], generator=g, dtype=torch.float64)
               for _ in range(2 if cell == "LSTM" else 1)]
    expected, expected_grads = _outputs_and_grads(lambda *a: _reference(cell, *a), args64,
                                                  weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_outs, low_grads = _outputs_and_grads(lambda *a: _reference(cell, *a), args,
                                                 [w.float() for w in weights])
    args[-4:-2] = [w.bfloat16() for w in args[-4:-2]]
    with torch.no_grad():
        inference = _ours(cell, *args)
    actual, grads = _outputs_and_grads(lambda *a: _ours(cell, *a), args,
                                       [w.float() for w in weights])
    for k, e in enumerate(expected):
        tolerance = allowed_error(torch.float32, "out", max_rel_error(low_outs[k], e))
        for name, a in (("inference", inference[k]), ("forward", actual[k])):
            assert a.dtype == torch.float32
            assert torch.isfinite(a).all(), f"{name} output {k}"
            assert max_rel_error(a, e) <= tolerance, f"{name} output {k}"
    names = ["x", *(["h", "c"] if cell == "LSTM" else ["h"]), "w_ih", "w_hh", "b_ih", "b_hh"]
    for name, a, e, low, arg in zip(names, grads, expected_grads, low_grads, args):
        assert a.dtype == arg.dtype, name
        tolerance = allowed_error(torch.float32, "grad", max_rel_error(low, e))
        assert max_rel_error(a, e) <= tolerance, f"grad of {name}"


def test_cell_bias_gradients_are_separate_tensors():
    args = [a.float().requires_grad_() for a in _inputs("LSTM", 2, 3, 4, True)]
    h1, c1 = autograd.lstm_cell(*args)
    (h1.sum() + c1.sum()).backward()
    b_ih, b_hh = args[-2:]
    assert torch.equal(b_ih.grad, b_hh.grad)
    assert b_ih.grad.data_ptr() != b_hh.grad.data_ptr()


# The backward operators' output_mask (dx, dh, dw_ih, dw_hh): all, a detached state, weights alone.
MASKS = ([True] * 4, [True, False, True, True], [False, False, True, True])


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-weights"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cell_opcheck(cell, weights):
    args = [None if a is None else a.float() for a in _inputs(cell, 3, 5, 6, True)]
    args[-4:-2] = [w.to(weights) for w in args[-4:-2]]
    ops = torch.ops.gated_kernels
    if cell == "LSTM":
        torch.library.opcheck(ops.lstm_cell_inference.default, args)
        h1, c1, gates, c_saved = ops.lstm_cell_forward(*args)
        torch.library.opcheck(ops.lstm_cell_forward.default, args)
        x, h, c, w_ih, w_hh = args[:5]
        for mask in MASKS:
            torch.library.opcheck(ops.lstm_cell_backward.default,
                                  (torch.randn_like(h1), torch.randn_like(c1), x, h, c, w_ih,
                                   w_hh, gates, c_saved, True, mask))
    else:
        torch.library.opcheck(ops.gru_cell_inference.default, args)
        h1, gates = ops.gru_cell_forward(*args)
        torch.library.opcheck(ops.gru_cell_forward.default, args)
        x, h, w_ih, w_hh = args[:4]
        for mask in MASKS:
            torch.library.opcheck(ops.gru_cell_backward.default,
                                  (torch.randn_like(h1), x, h, w_ih, w_hh, gates, False, mask))


def _lstm_args(**changes):
    x, h, c, w_ih, w_hh, b_ih, b_hh = [a.float() for a in _inputs("LSTM", 3, 5, 6, True)]
    args = dict(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    args.update(changes)
    return args


ERRORS = {
    "x-1D": (dict(x=torch.randn(5)), "x must be 2-D"),
    "x-int": (dict(x=torch.ones(3, 5, dtype=torch.int64)), "x must be float32, float64 or bfloat16"),
    "w_hh-gates": (dict(w_hh=torch.randn(20, 6)), r"w_hh.size\(0\) must be"),
    "w_ih-input-size": (dict(w_ih=torch.randn(24, 4)), r"w_ih.size\(1\) must be I"),
    "h-batch": (dict(h=torch.randn(2, 6)), r"h.size\(0\) must be B"),
    "c-hidden": (dict(c=torch.randn(3, 5)), r"c.size\(1\) must be H"),
    "c-dtype": (dict(c=torch.randn(3, 6, dtype=torch.float64)), "c must have dtype Float"),
    "w_hh-dtype": (dict(w_hh=torch.randn(24, 6, dtype=torch.float64)),
                   r"w_hh must have dtype Float \(the dtype of x\) or BFloat16, got Double"),
    "w_ih-mixed": (dict(w_ih=torch.randn(24, 5, dtype=torch.bfloat16)),
                   r"w_ih must have dtype Float \(the dtype of w_hh\), got BFloat16"),
    "b_hh-size": (dict(b_hh=torch.randn(23)), r"b_hh.size\(0\) must be"),
    "bias-alone": (dict(b_hh=None), "b_ih and b_hh must be given together"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_lstm_cell_errors_name_the_argument(case):
    changes, message = case
    with pytest.raises(RuntimeError, match=message):
        torch.ops.gated_kernels.lstm_cell_inference(**_lstm_args(**changes))


# (M, K, N) for _cell_matmul, each kernel at odd sizes: one or two rows of a (dot, axpy over
# rows; over 2 MB of weight, axpy's threads split the sum: 2 x 1031 x 517), a sum of one or two
# terms (axpy in blocks), the libraries beyond (3 rows, 40 rows); for a bfloat16 weight, brgemm
# split over threads (64 x 128 x 1000) and a weight beyond its bound (300 x 500).
MATMUL_SHAPES = [(1, 37, 70), (2, 129, 1), (1, 1, 17), (2, 600, 131), (2, 1031, 517),
                 (130, 2, 70), (4099, 1, 300), (3, 17, 70), (40, 64, 90), (64, 128, 1000),
                 (5, 300, 500)]


def check_cell_matmul():
    """_cell_matmul against float64 for every layout a cell's products take: x W^T (dot), dG W
    (axpy over rows), dG^T x (axpy in blocks), with and without an accumulated c."""
    g = torch.Generator().manual_seed(3)
    for M, K, N in MATMUL_SHAPES:
        a = torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g)
        # "a w[:, :1]": one column of a wider weight, its rows N apart.
        for name, (left, right) in {"a w^T": (a, w.t()), "a w": (a, w.t().contiguous()),
                                    "a^T x": (a.t().contiguous().t(), w.t().contiguous()),
                                    "a w[:, :1]": (a, w.t().contiguous()[:, :1])}.items():
            for c in (None, torch.randn(M, right.shape[1], generator=g)):
                expected = left.double() @ right.double()
                if c is not None:
                    expected += c.double()
                actual = torch.ops.gated_kernels._cell_matmul(left, right, c)
                assert_close(actual, expected, torch.float32, "out", f"{name} {M}x{K}x{N}")
        # A bfloat16 cell's products: float rows times a bfloat16 weight into float (exact
        # products of the rounded weight), and float rows into a bfloat16 weight gradient (one
        # rounding of the float sums: at most 2^-8, bfloat16's unit roundoff, of the largest value).
        w16 = w.bfloat16()
        # (Mixed dtypes reach only our kernels, at one or two rows; a library converts a.)
        for name, right in ({"a w16^T": w16.t(), "a w16": w16.t().contiguous()}
                            if M <= 2 else {}).items():
            expected = a.double() @ right.double()
            actual = torch.ops.gated_kernels._cell_matmul(a, right, None)
            assert actual.dtype == torch.float32
            assert_close(actual, expected, torch.float32, "out", f"{name} {M}x{K}x{N}")
        # bfloat16 rows by a bfloat16 weight into float: where brgemm runs bfloat16, a weight
        # of up to 2^17 values goes into its pairs, whose products of bfloat16 values are exact
        # in float (float32's error, then); a larger one, or any without brgemm, to a library
        # in bfloat16 or widened to float, rounded once (2^-8).
        a16 = a.bfloat16()
        for name, right in {"a16 w16^T": w16.t(), "a16 w16": w16.t().contiguous()}.items():
            for c in (None, torch.randn(M, N, generator=g)):
                expected = a16.double() @ right.double()
                if c is not None:
                    expected += c.double()
                actual = torch.ops.gated_kernels._cell_matmul(a16, right, c, torch.float32)
                what = f"{name} {M}x{K}x{N}{' + c' if c is not None else ''}"
                if K * N <= 2**17 and bf16_brgemm_expected():
                    assert_close(actual, expected, torch.float32, "out", what)
                else:
                    assert max_rel_error(actual, expected) <= 2.0**-8, what
        left, right = a.t().contiguous().t(), w.t().contiguous()
        actual = torch.ops.gated_kernels._cell_matmul(left, right, None, torch.bfloat16)
        expected = left.double() @ right.double()
        assert actual.dtype == torch.bfloat16
        assert max_rel_error(actual, expected) <= 2.0**-8, f"a^T x -> bf16 {M}x{K}x{N}"


# A float product runs on whichever candidate is fastest on the machine (csrc/fastest.h), so
# each is forced in turn: every kernel is checked wherever the tests run.
@pytest.mark.parametrize("gemm", ["auto", "own", "onednn", "aten", "float"])
def test_cell_matmul_matches_float64(monkeypatch, gemm):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    monkeypatch.setenv("GATED_KERNELS_CELL_GEMM", gemm)
    previous = torch.get_num_threads()
    for threads in (1, 2):  # the kernels split columns or rows between threads
        torch.set_num_threads(threads)
        try:
            check_cell_matmul()
        finally:
            torch.set_num_threads(previous)


def test_cell_gemm_variable_names_the_choices(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_CELL_GEMM", "mkl")
    with pytest.raises(RuntimeError, match="GATED_KERNELS_CELL_GEMM must be one of auto, own, "
                                           "onednn, aten, float, got 'mkl'"):
        torch.ops.gated_kernels._cell_matmul(torch.randn(40, 64), torch.randn(64, 90))


@pytest.mark.parametrize("capability", capabilities())
def test_cell_matmul_under_every_capability_build(capability):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability.lower(),
               GATED_KERNELS_POISON_OUTPUTS="1", GATED_KERNELS_CELL_GEMM="own")
    script = ("import torch, test_cell_ops; test_cell_ops.check_cell_matmul(); "
              "print(torch.backends.cpu.get_cpu_capability())")
    result = subprocess.run([sys.executable, "-c", script], cwd=tests, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == capability
