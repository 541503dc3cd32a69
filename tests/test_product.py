"""One thread's per-step product of the CPU kernels (csrc/product.h) on every kernel, against
float64: odd sizes (K and N not multiples of 16, M from 1 to 17, the [., 1] x [1, 4] of H=1),
with and without bias, both panel orders; the kernel choice, its overrides and the L2 size; and
all of it again under every CPU capability build (ATEN_CPU_CAPABILITY, in a subprocess)."""

import os
import subprocess
import sys

import pytest
import torch

from common import assert_close, bf16_brgemm_expected
from gated_kernels.tolerance import max_rel_error

ops = torch.ops.gated_kernels
KERNELS = ("auto", "own", "brgemm", "mkl")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (M, K, N): one thread's rows, the product's depth and width.
SHAPES = {
    "M1-K1-N4": (1, 1, 4),  # H=1: one unit, four gates
    "M9-K1-N4": (9, 1, 4),
    "M1-K7-N5": (1, 7, 5),
    "M2-K33-N70": (2, 33, 70),
    "M3-K100-N129": (3, 100, 129),
    "M5-K130-N33": (5, 130, 33),
    "M16-K257-N100": (16, 257, 100),
    "M17-K64-N200": (17, 64, 200),
    # A row of 1024 floats is 4 KB: brgemm gets a padded row length (product.cpp, brgemm_ld).
    "M4-K40-N1024": (4, 40, 1024),
}


def product_inputs(M, K, N, dtype, a_dtype, bias, transposed=False, seed=0):
    """(a [M, K], w [K, N], bias [N] or None) at nn.LSTM-like scales; with `transposed`, w is
    the transpose of contiguous [N, K] rows, as the forward hands a thread's rows of W_hh."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g, dtype=torch.float64)
    w = (torch.rand(N, K, generator=g, dtype=torch.float64) * 2 - 1) * K**-0.5
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None
    w = w.to(dtype).t() if transposed else w.t().contiguous().to(dtype)
    return a.to(a_dtype), w, b


def check_product(kernel, dtype, M, K, N, bias, a_dtype=torch.float32, transposed=False):
    """_product on `kernel` against float64 on the same (rounded) inputs, for one and two calls
    (the second walks the panels the other way). bfloat16 is judged by the shared rule: at most
    2x PyTorch's own bfloat16 product error."""
    os.environ["GATED_KERNELS_CPU_GEMM"] = kernel
    a, w, b = product_inputs(M, K, N, dtype, a_dtype, bias, transposed)
    if kernel == "brgemm" and dtype == torch.bfloat16 and not bf16_brgemm_expected():
        with pytest.raises(RuntimeError, match="brgemm does not run here for BFloat16"):
            ops._product(a, w, None if b is None else b.float())
        return
    expected = a.double() @ w.double() + (0 if b is None else b)
    own_error = None
    if dtype == torch.bfloat16:
        theirs = torch.mm(a.to(dtype), w) + (0 if b is None else b.to(dtype))
        own_error = max_rel_error(theirs, expected)
    for calls in (1, 2):
        out = ops._product(a, w, None if b is None else b.float(), calls)
        assert out.dtype == torch.float32
        assert_close(out, expected, dtype, "out", f"{kernel} {M}x{K}x{N} calls={calls}",
                     own_error)


@pytest.fixture
def restore_gemm(monkeypatch):
    monkeypatch.delenv("GATED_KERNELS_CPU_GEMM", raising=False)
    yield
    os.environ.pop("GATED_KERNELS_CPU_GEMM", None)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("kernel", KERNELS)
def test_product_matches_float64(kernel, dtype, shape, bias, restore_gemm):
    check_product(kernel, dtype, *shape, bias)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("kernel", KERNELS)
def test_product_of_every_row_count_from_1_to_17_matches_float64(kernel, dtype, restore_gemm):
    # Every tile remainder of the panel kernel (4 or 2 rows at a time) and brgemm's row blocks.
    for M in range(1, 18):
        check_product(kernel, dtype, M, 33, 70, True)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("kernel", KERNELS)
def test_product_of_transposed_rows_matches_float64(kernel, dtype, restore_gemm):
    # The forward's weight: rows [N, K] seen as [K, N] (the packing transposes them; even K
    # takes bfloat16's one-pass pairing).
    for M, K, N in ((1, 7, 5), (3, 100, 129), (17, 64, 200), (4, 40, 1024)):
        check_product(kernel, dtype, M, K, N, True, transposed=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_product_of_bf16_rows_matches_float64(kernel, restore_gemm):
    # The input gates' product multiplies the layer input itself, in bfloat16 (odd K: brgemm
    # pads it).
    for M, K, N in ((1, 7, 5), (17, 33, 70), (128, 64, 48)):
        check_product(kernel, torch.bfloat16, M, K, N, True, a_dtype=torch.bfloat16)


def test_product_of_no_rows_is_empty(restore_gemm):
    for kernel in KERNELS:
        os.environ["GATED_KERNELS_CPU_GEMM"] = kernel
        out = ops._product(torch.randn(0, 8), torch.randn(8, 5), None)
        assert out.shape == (0, 5)


def test_float64_products_run_on_aten(restore_gemm):
    for kernel in KERNELS:
        os.environ["GATED_KERNELS_CPU_GEMM"] = kernel
        assert ops._product_kernel(1, 64, torch.float64) == "aten"
    a, w, _ = product_inputs(3, 10, 7, torch.float64, torch.float64, False)
    assert torch.allclose(ops._product(a, w, None), a @ w, rtol=0, atol=1e-12)


def test_auto_picks_own_for_one_row_and_brgemm_beyond(restore_gemm):
    # The CI machines are x86-64 with AVX2 or AVX-512 and torch's oneDNN: brgemm runs float
    # everywhere, bfloat16 where the CPU has bfloat16 dot products (not on an AMD EPYC Zen 3).
    assert ops._product_kernel(1, 256, torch.float32) == "own"
    assert ops._product_kernel(2, 256, torch.float32) == "brgemm"
    assert ops._product_kernel(64, 256, torch.float32) == "brgemm"
    assert ops._product_kernel(1, 256, torch.bfloat16) == ("brgemm" if bf16_brgemm_expected()
                                                           else "own")
    for kernel in ("own", "brgemm", "mkl"):
        os.environ["GATED_KERNELS_CPU_GEMM"] = kernel
        assert ops._product_kernel(16, 256, torch.float32) == kernel


def test_without_onednn_auto_falls_back_to_own_and_brgemm_says_why(restore_gemm):
    with torch.backends.mkldnn.flags(enabled=False):
        assert ops._product_kernel(16, 256, torch.float32) == "own"
        assert ops._product_kernel(16, 256, torch.bfloat16) == "own"
        check_product("auto", torch.bfloat16, 17, 33, 70, True)
        os.environ["GATED_KERNELS_CPU_GEMM"] = "brgemm"
        with pytest.raises(RuntimeError, match="GATED_KERNELS_CPU_GEMM=brgemm.*oneDNN"):
            ops._product(torch.randn(2, 8), torch.randn(8, 5), None)


def test_unknown_gemm_choice_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_CPU_GEMM", "fast")
    with pytest.raises(RuntimeError, match="GATED_KERNELS_CPU_GEMM must be one of auto, own, "
                                           "brgemm, mkl, got 'fast'"):
        ops._product_kernel(1, 8, torch.float32)


def test_product_rejects_bad_input():
    with pytest.raises(RuntimeError, match=r"a.size\(1\) must be K \(w.size\(0\)\) = 8, got 7"):
        ops._product(torch.randn(2, 7), torch.randn(8, 5), None)
    with pytest.raises(RuntimeError, match="a must have w's dtype"):
        ops._product(torch.randn(2, 8, dtype=torch.float64), torch.randn(8, 5), None)
    with pytest.raises(RuntimeError, match=r"bias.size\(0\) must be N"):
        ops._product(torch.randn(2, 8), torch.randn(8, 5), torch.randn(4))


def test_l2_size_is_read_at_run_time_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv("GATED_KERNELS_L2_BYTES", raising=False)
    size, source = ops._l2_cache()
    assert size >= 64 * 1024 and source in ("sysfs", "sysconf", "default")
    monkeypatch.setenv("GATED_KERNELS_L2_BYTES", "3M")
    assert ops._l2_cache() == (3 << 20, "GATED_KERNELS_L2_BYTES")
    monkeypatch.setenv("GATED_KERNELS_L2_BYTES", "big")
    with pytest.raises(RuntimeError, match="GATED_KERNELS_L2_BYTES must be a positive size"):
        ops._l2_cache()


def check_all_kernels():
    """Every product check of this file, for a subprocess under another capability build."""
    for kernel in KERNELS:
        for dtype in DTYPES.values():
            for shape in SHAPES.values():
                for bias in (False, True):
                    check_product(kernel, dtype, *shape, bias)
            check_product(kernel, torch.bfloat16, 17, 33, 70, True, a_dtype=torch.bfloat16)
            check_product(kernel, dtype, 3, 100, 129, True, transposed=True)
    print(torch.backends.cpu.get_cpu_capability())


def capabilities():
    """The capability builds this CPU can run: ATen's own and every one below it."""
    order = ["DEFAULT", "AVX2", "AVX512"]
    best = torch.backends.cpu.get_cpu_capability()
    return order[: order.index(best) + 1] if best in order else ["DEFAULT"]


@pytest.mark.parametrize("capability", capabilities())
def test_products_match_float64_under_every_capability_build(capability):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability.lower())
    script = "import test_product; test_product.check_all_kernels()"
    result = subprocess.run([sys.executable, "-c", script], cwd=tests, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == capability
