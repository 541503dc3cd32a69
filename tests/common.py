"""Shared test helpers: the error assertion (the rule itself lives in gated_kernels.tolerance)
and input builders for the ops."""

import torch

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


def lstm_inputs(T, B, H, P=None, lengths=None, dtype=torch.float64, seed=0):
    """Op arguments (xg, w_hh, w_hr, h0, c0, lengths) with nn.LSTM-like scales: weights
    U(-1/sqrt(H), 1/sqrt(H)), pre-activations of order one."""
    g = torch.Generator().manual_seed(seed)
    P_ = P or H
    bound = H**-0.5

    def uniform(*shape):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(dtype)

    xg = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64).to(dtype)
    w_hh = uniform(4 * H, P_)
    w_hr = uniform(P_, H) if P else None
    h0 = torch.randn(B, P_, generator=g, dtype=torch.float64).to(dtype) * 0.5
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) * 0.5
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return xg, w_hh, w_hr, h0, c0, lens


def gru_inputs(T, B, H, lengths=None, dtype=torch.float64, seed=0):
    """Op arguments (xg, w_hh, b_hh, h0, lengths) with nn.GRU-like scales."""
    g = torch.Generator().manual_seed(seed)
    bound = H**-0.5

    def uniform(*shape):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(dtype)

    xg = torch.randn(T, B, 3 * H, generator=g, dtype=torch.float64).to(dtype)
    w_hh = uniform(3 * H, H)
    b_hh = uniform(3 * H)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) * 0.5
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return xg, w_hh, b_hh, h0, lens


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
