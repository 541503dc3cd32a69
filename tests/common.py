"""Shared test helpers: the error assertion (the rule itself lives in gated_kernels.tolerance)
and input builders for the ops."""

import torch

from gated_kernels.spec import GRU, LSTM
from gated_kernels.tolerance import FP64_TOLERANCE, allowed_error, max_abs_error, max_rel_error

FP64_ATOL = FP64_TOLERANCE


def assert_close(actual, expected, dtype, kind, name, low_precision_error=None):
    """actual vs expected (float64) for a tensor of `kind` "out" or "grad" computed in `dtype`.
    Float64 is judged by absolute error, the rest by gated_kernels.tolerance's relative rule;
    for half types `low_precision_error` is PyTorch's own error on the same tensor."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} vs {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    if dtype == torch.float64:
        err, tol = max_abs_error(actual, expected), FP64_ATOL
    elif dtype == torch.float32:
        err, tol = max_rel_error(actual, expected), allowed_error(dtype, kind)
    else:
        err = max_rel_error(actual, expected)
        tol = allowed_error(dtype, kind, low_precision_error)
    assert err <= tol, f"{name}: error {err:.3e} > tolerance {tol:.3e} ({dtype})"


def sequence_inputs(cell, T, B, H, P=None, lengths=None, dtype=torch.float64, seed=0):
    """A sequence operator's arguments for `cell` (a gated_kernels.spec.Cell): xg [T, B, G],
    then its parameters and initial states in its order, then lengths [B] or None. torch.nn-like
    scales: parameters U(-1/sqrt(H), 1/sqrt(H)), pre-activations of order one, states N(0, 1/4).
    The projection (w_hr) only with P."""
    g = torch.Generator().manual_seed(seed)
    dims = {"B": B, "H": H, "G": cell.gates * H, "P": P or H}

    def shape(t):
        return tuple(dims[d] for d in t.shape)

    def uniform(t):
        u = torch.rand(shape(t), generator=g, dtype=torch.float64) * 2 - 1
        return (u * H**-0.5).to(dtype)

    xg = torch.randn(T, B, dims["G"], generator=g, dtype=torch.float64).to(dtype)
    params = [None if p.name == cell.projection and not P else uniform(p) for p in cell.params]
    states = [torch.randn(shape(s), generator=g, dtype=torch.float64).to(dtype) * 0.5
              for s in cell.states]
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return xg, *params, *states, lens


# (T, B, H, P, lengths, reverse) for the C++ kernels: T=1, an odd T with B=1 and a
# non-power-of-two H, B=1 with H above one 16-unit block (the backward splits the units over
# the threads), a wide H (rows of W_hh beyond 1 MB a thread), lengths including 1 and T,
# reverse, a projection.
SEQUENCE_CASES = {
    "T1-B3-H8": (1, 3, 8, None, None, False),
    "T63-B4-H100": (63, 4, 100, None, None, False),
    "T9-B1-H16": (9, 1, 16, None, None, False),
    "T9-B1-H40-lengths-reverse": (9, 1, 40, None, [5], True),
    "T5-B1-H520": (5, 1, 520, None, None, False),
    "T6-B3-H10-reverse": (6, 3, 10, None, None, True),
    "T11-B5-H12-lengths": (11, 5, 12, None, [11, 1, 6, 11, 3], False),
    "T11-B5-H12-lengths-reverse": (11, 5, 12, None, [11, 1, 6, 11, 3], True),
    "T10-B3-H20-P7": (10, 3, 20, 7, None, False),
    "T10-B4-H20-P7-lengths-reverse": (10, 4, 20, 7, [10, 1, 4, 7], True),
    "T33-B16-H64-P16-lengths": (33, 16, 64, 16, list(range(33, 17, -1)), False),
}
# The inference operators compute each thread's input gates about 128 rows of x at a time:
# T=300 at B=1 is three chunks (the last one short), T=37 at B=5 two. At H=520 on two threads
# each thread's rows of W_hh exceed 1 MB (the mkl kernel's blocked one-row product; for the
# panel kernel, rows streamed from L3).
INFERENCE_CASES = {
    **SEQUENCE_CASES,
    "T9-B1-H520-reverse-gemv-blocks": (9, 1, 520, None, None, True),
    "T300-B1-H20-chunks": (300, 1, 20, None, None, False),
    "T37-B5-H40-P8-lengths-reverse-chunks": (37, 5, 40, 8, [37, 9, 1, 30, 2], True),
}

# For the Triton kernels, shapes the interpreter affords: T=1, odd T with B=1 and a
# non-power-of-two H, two batch tiles (B=17, B=18) with rows of lengths 1 and T (a tile whose
# rows have all ended skips its dots from then on, in reverse too), a projection with lengths.
TRITON_CASES = {
    "T1-B3-H8": (1, 3, 8, None, None, False),
    "T7-B1-H20": (7, 1, 20, None, None, False),
    "T5-B1-H20-reverse": (5, 1, 20, None, None, True),
    "T5-B17-H12-lengths": (5, 17, 12, None, [5, 1, 3, 5, 2] * 3 + [4, 1], False),
    "T6-B18-H12-lengths-reverse": (6, 18, 12, None, [6, 1, 4] + [3, 6] * 6 + [5, 2, 1], True),
    "T6-B4-H16-lengths-reverse": (6, 4, 16, None, [6, 1, 4, 2], True),
    "T4-B2-H24-reverse": (4, 2, 24, None, None, True),
    "T5-B4-H24-P9-lengths": (5, 4, 24, 9, [5, 1, 3, 5], False),
    "T4-B3-H16-P5-lengths-reverse": (4, 3, 16, 5, [4, 1, 2], True),
}


def cases_of(cell, cases):
    """`cases` as `cell` runs them: where the cell has no projection, a case with one runs
    without it, under its id without "-P{P}", unless that id is already a case."""
    out = {}
    for case_id, (T, B, H, P, lengths, reverse) in cases.items():
        if P is not None and cell.projection is None:
            case_id, P = case_id.replace(f"-P{P}", ""), None
        out.setdefault(case_id, (T, B, H, P, lengths, reverse))
    return out


def inference_args(cell, case, dtype, bias=True, I=7):
    """((x [T,B,I], w_ih [G,I], the input bias [G] or None, params, states), lengths, reverse)
    for `cell`'s inference operator."""
    T, B, H, P, lengths, reverse = case
    _, *rest, lens = sequence_inputs(cell, T, B, H, P, lengths, dtype)
    x, w_ih, b = input_projection(T, B, I, cell.gates * H, dtype, bias)
    return (x, w_ih, b, *rest), lens, reverse


def lstm_inputs(T, B, H, P=None, lengths=None, dtype=torch.float64, seed=0):
    """(xg, w_hh, w_hr, h0, c0, lengths): sequence_inputs of the LSTM."""
    return sequence_inputs(LSTM, T, B, H, P, lengths, dtype, seed)


def gru_inputs(T, B, H, lengths=None, dtype=torch.float64, seed=0):
    """(xg, w_hh, b_hh, h0, lengths): sequence_inputs of the GRU."""
    return sequence_inputs(GRU, T, B, H, None, lengths, dtype, seed)


def input_projection(T, B, I, G, dtype=torch.float64, bias=True, seed=2):
    """(x [T, B, I], w_ih [G, I], bias [G] or None) for the inference operators, with
    nn.LSTM-like weight scales."""
    g = torch.Generator().manual_seed(seed)
    bound = I**-0.5
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    w_ih = (torch.rand(G, I, generator=g, dtype=torch.float64) * 2 - 1) * bound
    b = (torch.rand(G, generator=g, dtype=torch.float64) * 2 - 1) * bound if bias else None
    return x.to(dtype), w_ih.to(dtype), None if b is None else b.to(dtype)


def check_inference_against_reference(op, ref_fn, args, lengths, reverse, dtype, output_names):
    """An inference operator op(x, w_ih, bias, *rest, lengths, reverse) in `dtype` against
    ref_fn(x w_ih^T + bias, *rest, lengths, reverse) in float64, on every output. In low
    precision the bound comes from the same reference run in that dtype."""
    def reference(tensors):
        x, w_ih, bias, *rest = tensors
        return ref_fn(torch.nn.functional.linear(x, w_ih, bias), *rest, lengths, reverse)

    expected = reference([None if t is None else t.double() for t in args])
    low = reference(args) if dtype not in (torch.float32, torch.float64) else None
    actual = op(*args, lengths, reverse)
    assert len(actual) == len(output_names)
    for k, name in enumerate(output_names):
        ref_err = max_rel_error(low[k], expected[k]) if low else None
        assert actual[k].dtype == dtype, f"{name}: dtype {actual[k].dtype}"
        assert_close(actual[k], expected[k], dtype, "out", name, ref_err)


def grads(outputs, inputs, seed=1):
    """Gradients of sum(out * random weight) over all outputs, w.r.t. every input."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outputs]
    return torch.autograd.grad(outputs, inputs, weights)


def leaves(tensors, dtype=None):
    """Detached copies (optionally cast) that require grad; None stays None."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
        else:
            out.append((t.to(dtype) if dtype else t).detach().clone().requires_grad_())
    return out


def run_with_grads(fn, inputs, lengths, reverse):
    """fn(*inputs, lengths, reverse) and the gradients of every non-None input."""
    outs = fn(*inputs, lengths, reverse)
    return outs, grads(outs, [t for t in inputs if t is not None])


def check_against_reference(fn, ref_fn, args, lengths, reverse, dtype, output_names, input_names):
    """fn in `dtype` vs ref_fn in float64 on every output and every gradient. In low precision,
    the bound comes from ref_fn run in that dtype (PyTorch's own low-precision error)."""
    expected, expected_grads = run_with_grads(ref_fn, leaves(args), lengths, reverse)
    actual, actual_grads = run_with_grads(fn, leaves(args, dtype), lengths, reverse)
    low, low_grads = None, None
    if dtype not in (torch.float32, torch.float64):
        low, low_grads = run_with_grads(ref_fn, leaves(args, dtype), lengths, reverse)
    for k, name in enumerate(output_names):
        ref_err = max_rel_error(low[k], expected[k]) if low else None
        assert actual[k].dtype == dtype, f"{name}: dtype {actual[k].dtype}"
        assert_close(actual[k], expected[k], dtype, "out", name, ref_err)
    names = [n for n, t in zip(input_names, args) if t is not None]
    for k, name in enumerate(names):
        ref_err = max_rel_error(low_grads[k], expected_grads[k]) if low else None
        assert_close(actual_grads[k], expected_grads[k], dtype, "grad", f"d{name}", ref_err)


def strided_copy(t):
    """The same values as t behind a non-contiguous layout (every other column of a wider
    tensor); lengths and other integer tensors too."""
    wide = torch.stack([t, torch.zeros_like(t)], dim=-1)
    return wide[..., 0]


def check_layout_independent(fn, args, lengths, reverse):
    """fn gives bitwise the same outputs and gradients for non-contiguous inputs."""
    inputs = leaves(args)
    strided = [None if t is None else strided_copy(t.detach()).requires_grad_() for t in args]
    assert not any(t.is_contiguous() for t in strided if t is not None)
    outs, grads_ = run_with_grads(fn, inputs, lengths, reverse)
    outs_s, grads_s = run_with_grads(fn, strided, strided_copy(lengths), reverse)
    for a, b in zip(list(outs_s) + list(grads_s), list(outs) + list(grads_)):
        assert torch.equal(a, b)


def cpu_flags():
    """This CPU's feature flags as /proc/cpuinfo lists them (empty where it lists none)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_brgemm_expected():
    """Whether oneDNN's bfloat16 brgemm runs here (csrc/product.cpp, brgemm_available): a CPU
    with bfloat16 dot products (avx512_bf16, or AMX's tiles) and torch's oneDNN enabled. Not on
    an AVX2-only CPU such as the AMD EPYC Zen 3, where our own kernels take those products."""
    return (bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)
