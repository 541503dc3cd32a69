"""The Triton GRU recurrence (gru_forward_triton / gru_backward_triton) on each of its three
paths: inference, batch tiles, streamed W_hh, ieee products. Without a GPU the test session sets
TRITON_INTERPRET=1 and the kernels run in Triton's interpreter on CPU tensors; with one they run
on CUDA tensors. Every case against the reference, on each path, is test_sequence_ops.py."""

import pytest
import torch

pytest.importorskip("triton")

from common import TRITON_CASES, cases_of, check_against_reference, gru_inputs, leaves  # noqa: E402

from gated_kernels import GRUFunction, reference  # noqa: E402
from gated_kernels.spec import GRU  # noqa: E402
from gated_kernels.triton_kernels import common as triton_common  # noqa: E402
from gated_kernels.triton_kernels import gru  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = cases_of(GRU, TRITON_CASES)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
OUTPUTS = ("y", "h_n")
INPUTS = ("xg", "w_hh", "b_hh", "h0")


@pytest.fixture(params=triton_common.PATHS)
def path(request, monkeypatch):
    """Forces one path. per_step gets 8-unit blocks and 16-wide K chunks, so that the small
    shapes the interpreter affords still span several programs and several chunks."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", request.param)
    monkeypatch.setattr(gru, "PER_STEP_BLOCK_H", 8)
    monkeypatch.setattr(gru, "STREAM_BLOCK_K", 16)
    return request.param


def _on_device(t):
    return None if t is None else t.to(DEVICE)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_triton_inference_saves_nothing_and_matches_training(path, reverse, monkeypatch):
    """save=False (the inference operator) skips the gates; y and h_n are bitwise those of the
    training forward."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, H = 6, 4, 12
    g = torch.Generator().manual_seed(0)
    xg, w_hh = torch.randn(T, B, 3 * H, generator=g), torch.randn(3 * H, H, generator=g) / 4
    b_hh, h0 = torch.randn(3 * H, generator=g), torch.randn(B, H, generator=g)
    lengths = torch.tensor([6, 1, 3, 5])
    args = [_on_device(t) for t in (xg, w_hh, b_hh, h0, lengths)]
    y, h_n, gates = gru.gru_forward_triton(*args, reverse)
    y_inf, h_inf, none = gru.gru_forward_triton(*args, reverse, save=False)
    assert none is None
    assert torch.isfinite(y_inf).all() and torch.equal(y_inf, y)
    assert torch.isfinite(h_inf).all() and torch.equal(h_inf, h_n)


def triton_gru(xg, w_hh, b_hh, h0, lengths, reverse):
    """GRUFunction on the Triton backend (the launchers composed for autograd), on DEVICE."""
    args = [_on_device(t) for t in (xg, w_hh, b_hh, h0, lengths)]
    return tuple(out.cpu() for out in GRUFunction.apply(*args, reverse, "triton"))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_triton_persistent_forward_loops_over_batch_tiles(monkeypatch, reverse, dtype):
    """More batch tiles than SMs to spare: each persistent forward program loops over its
    group's tiles every step. With one SM, one program loops over B=40's 3 tiles (lengths 1 and
    T; the last tile's rows of lengths 2 and 1 skip its dots once they have all ended); y, h_n
    and the saved gates are bitwise those of one program per tile."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "persistent")
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = gru_inputs(5, 40, 12, [5, 1, 3, 5, 2] * 6 + [2] * 3 + [1] * 7)
    args = [_on_device(t.to(dtype)) for t in args] + [_on_device(lens)]
    expected = gru.gru_forward_triton(*args, reverse)
    monkeypatch.setattr(triton_common, "sm_count", lambda device: 1)
    tiled = gru.gru_forward_triton(*args, reverse)
    for name, got, want in zip(("y", "h_n", "gates"), tiled, expected):
        assert torch.isfinite(got).all() and torch.equal(got, want), name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_gru_triton_persistent_streams_w_above_the_on_chip_limit(monkeypatch, dtype):
    """Above PERSISTENT_MAX_H (H=2048 on a GPU; lowered to 16 here) the persistent kernels
    stream W_hh in K chunks inside their one launch, forward and backward."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "persistent")
    monkeypatch.setattr(triton_common, "PERSISTENT_MAX_H", 16)
    for kind in ("fwd", "bwd"):
        meta, _ = gru._config(kind, "persistent", 24, dtype, "tf32", interpreted=True)
        assert not meta["RESIDENT"], kind
    T, B, H, _, lengths, reverse = CASES["T6-B4-H16-lengths-reverse"]
    *args, lens = gru_inputs(T, B, 24, lengths)
    check_against_reference(triton_gru, reference.gru_recurrence, args, lens, reverse, dtype,
                            OUTPUTS, INPUTS)


def test_gru_triton_ieee_streams_w_hh(path, monkeypatch):
    """With TF32 off the dots run in ieee fp32 and every path streams W_hh in K chunks."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    T, B, H, _, lengths, reverse = CASES["T6-B4-H16-lengths-reverse"]
    *args, lens = gru_inputs(T, B, 2 * H, lengths)
    check_against_reference(triton_gru, reference.gru_recurrence, args, lens, reverse,
                            torch.float32, OUTPUTS, INPUTS)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_triton_saved_gates(path, reverse):
    """gates = r, z, n, hn: they rebuild y (h' = n + z (h - n), n = tanh(xg_n + r hn)) on the
    rows still running and are 0 past a row's length. (The gradient tests read them too.)"""
    T, B, H = 5, 4, 12
    xg, w_hh, b_hh, h0, lens = gru_inputs(T, B, H, [5, 1, 3, 4], dtype=torch.float32)
    y, _, gates = gru.gru_forward_triton(*[_on_device(t) for t in (xg, w_hh, b_hh, h0, lens)],
                                         reverse)
    y, gates = y.cpu().double(), gates.cpu().double()
    assert gates.dtype == torch.float64 and torch.isfinite(gates).all()
    r, z, n, hn = gates.chunk(4, dim=2)
    active = (torch.arange(T)[:, None] < lens[None, :])[..., None]
    h_prev = triton_common.previous_hidden(y, h0.double(), lens, reverse)
    torch.testing.assert_close(y, torch.where(active, n + z * (h_prev - n), 0.0), atol=1e-6,
                               rtol=0)
    n_expected = torch.tanh(xg.double()[..., 2 * H:] + r * hn)
    torch.testing.assert_close(n, torch.where(active, n_expected, 0.0), atol=1e-6, rtol=0)
    assert (gates.masked_select(~active) == 0).all()


def test_gru_triton_poisoned_outputs_are_all_written(path, monkeypatch):
    """Outputs start as NaN: every element of every output and gradient must be written,
    including the rows past their length."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = gru_inputs(5, 17, 12, [5, 1, 3, 5, 2] * 3 + [4, 1], dtype=torch.float16)
    inputs = [_on_device(t) for t in leaves(args)]
    y, h_n, gates = gru.gru_forward_triton(*inputs, _on_device(lens), True)
    for name, t in zip(("y", "h_n", "gates"), (y, h_n, gates)):
        assert torch.isfinite(t).all(), name
    assert gates.dtype == torch.float16  # saved in the model's dtype, as the C++ kernel does
    dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
    outs = gru.gru_backward_triton(dy, dh_n, inputs[1], inputs[3], _on_device(lens), True, y,
                                   gates)
    for name, g in zip(INPUTS, outs):
        assert g.dtype == torch.float16 and torch.isfinite(g).all(), f"d{name}"


def test_gru_triton_small_path_refuses_large_h(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "small")
    H = triton_common.SMALL_MAX_H[torch.float32] + 8
    args = [_on_device(t) for t in gru_inputs(1, 1, H, dtype=torch.float32)]
    with pytest.raises(ValueError, match="small path holds all of W_hh"):
        gru.gru_forward_triton(*args, False)
