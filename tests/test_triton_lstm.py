"""The Triton LSTM launchers (lstm_forward_triton / lstm_backward_triton): batch tiles, streamed
W_hh, the grid, inference, strided gradients, the AOT table. Without a GPU they run under
TRITON_INTERPRET=1 (set by the test session before Triton is imported), on CPU tensors and tiny
shapes. Every case against the reference, on each path, is test_sequence_ops.py."""

import pytest
import torch

pytest.importorskip("triton")

from common import TRITON_CASES, check_against_reference, grads, leaves, lstm_inputs  # noqa: E402

from gated_kernels import LSTMFunction, reference  # noqa: E402
from gated_kernels.triton_kernels import common as triton_common  # noqa: E402
from gated_kernels.triton_kernels.lstm import (  # noqa: E402
    aot_configs,
    forward_config,
    lstm_backward_triton,
    lstm_forward_triton,
)

if torch.cuda.is_available():
    DEVICE = "cuda"
elif triton_common.interpreting():
    DEVICE = "cpu"
else:
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)


def triton_lstm(*args):
    """LSTMFunction on the Triton backend: the launchers, composed for autograd."""
    return LSTMFunction.apply(*args, "triton")


def on_device(args, lengths):
    return [None if t is None else t.to(DEVICE) for t in args], (
        None if lengths is None else lengths.to(DEVICE))


@pytest.fixture(autouse=True)
def _fp32_without_tf32(monkeypatch):
    """fp32 tolerances (1e-5) assume fp32 products: no TF32 on a GPU for these tests."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


PATHS = ("small", "persistent", "per_step")
CASES = TRITON_CASES
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
OUTPUTS = ("y", "h_n", "c_n")
INPUTS = ("xg", "w_hh", "w_hr", "h0", "c0")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", ["T6-B18-H12-lengths-reverse", "T5-B4-H24-P9-lengths"])
def test_triton_lstm_persistent_forward_loops_over_batch_tiles(monkeypatch, case, dtype):
    """A batch with more tiles than SMs to spare: each persistent forward program loops over
    its group's tiles every step. With one SM (the interpreter's programs hold all units), one
    program loops over every tile (B=18 and, widened, B=40: 2 and 3 tiles); each output, saved
    tensors included, is bitwise that of one program per tile."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "persistent")
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, H, P, lengths, reverse = CASES[case]
    if B < 16:
        B, lengths = 40, (lengths * 10)[:40]
    *args, lens = lstm_inputs(T, B, H, P, lengths, dtype=dtype)
    args, lens = on_device(args, lens)
    expected = lstm_forward_triton(*args, lens, reverse)
    monkeypatch.setattr(triton_common, "sm_count", lambda device: 1)
    tiled = lstm_forward_triton(*args, lens, reverse)
    for name, got, want in zip(OUTPUTS + ("gates", "c_all"), tiled, expected):
        assert torch.isfinite(got).all() and torch.equal(got, want), name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_triton_lstm_persistent_streams_w_above_the_on_chip_limit(monkeypatch, dtype):
    """Above PERSISTENT_MAX_H (H=2048 on a GPU; lowered to 16 here) the persistent forward
    streams W_hh in K chunks inside its one launch."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "persistent")
    monkeypatch.setattr(triton_common, "PERSISTENT_MAX_H", 16)
    assert not forward_config("persistent", 24, "tf32")["RESIDENT"]
    T, B, H, P, lengths, reverse = CASES["T6-B18-H12-lengths-reverse"]
    *args, lens = lstm_inputs(T, B, 24, P, lengths)
    args, lens = on_device(args, lens)
    check_against_reference(triton_lstm, reference.lstm_recurrence, args, lens, reverse, dtype,
                            OUTPUTS, INPUTS)


def test_persistent_grid_splits_tiles_over_the_free_sms():
    assert triton_common.persistent_grid(128, 1, 132) == (1, 1)  # B <= 16 at H=1024
    assert triton_common.persistent_grid(128, 16, 132) == (1, 16)  # B=256 at H=1024
    assert triton_common.persistent_grid(64, 16, 132) == (2, 8)  # B=256 at H=512
    assert triton_common.persistent_grid(32, 5, 132) == (4, 2)  # B=80 at H=256
    # A launch: tiled where the forward may loop over tiles, refused where it cannot.
    assert triton_common.persistent_launch((64, 16), 132, True, "cuda") == ((64, 2), 8)
    assert triton_common.persistent_launch((64, 2), 132, True, "cuda") == ((64, 2), 1)
    with pytest.raises(ValueError, match="128 programs co-resident, one per SM, but cuda has 100"):
        triton_common.persistent_launch((64, 2), 100, False, "cuda")


@pytest.mark.parametrize("path", PATHS)
def test_triton_lstm_writes_every_output(monkeypatch, path):
    """Outputs start as NaN: every element of every output and gradient must be written,
    including the rows past their length; saved gates are 0 there and c_all carries c."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", path)
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    lengths = [7, 1, 3, 5]
    *args, lens = lstm_inputs(7, 4, 9, 5, lengths, dtype=torch.float32)
    (xg, w_hh, w_hr, h0, c0), lens = on_device(args, lens)
    outs = lstm_forward_triton(xg, w_hh, w_hr, h0, c0, lens, False)
    for name, t in zip(("y", "h_n", "c_n", "gates", "c_all"), outs):
        assert torch.isfinite(t).all(), name
    y, h_n, c_n, gates, c_all = outs
    assert gates.dtype == c_all.dtype == torch.float32
    for b, n in enumerate(lengths):
        assert (gates[n:, b] == 0).all() and (y[n:, b] == 0).all()
        assert torch.equal(c_all[n:, b], c_all[n - 1, b].expand(7 - n, -1))
    dy, dh_n, dc_n = (torch.randn_like(t) for t in (y, h_n, c_n))
    back = lstm_backward_triton(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lens, False, y, gates, c_all)
    for name, g in zip(("dxg", "dw_hh", "dw_hr", "dh0", "dc0"), back):
        assert torch.isfinite(g).all(), name
    assert (back[0][1:, 1] == 0).all()  # row 1 ran one step: no gate gradient after it


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_triton_lstm_inference_saves_nothing_and_matches_training(monkeypatch, path, reverse):
    """save=False (the inference operator) skips gates and c_all; y, h_n and c_n (taken from
    the running state, not c_all) are bitwise those of the training forward."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", path)
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = lstm_inputs(6, 4, 9, 5, [6, 1, 3, 5], dtype=torch.float32)
    args, lens = on_device(args, lens)
    trained = lstm_forward_triton(*args, lens, reverse)
    inferred = lstm_forward_triton(*args, lens, reverse, save=False)
    assert inferred[3:] == (None, None)
    for name, got, expected in zip(OUTPUTS, inferred, trained):
        assert torch.isfinite(got).all() and torch.equal(got, expected), name
    c_last = trained[4][0 if reverse else -1]  # c_all carries c past each row's length
    assert torch.equal(inferred[2], c_last)


def test_triton_lstm_half_types_save_float16_gates_and_float32_state(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "small")
    *args, lens = lstm_inputs(3, 2, 8, dtype=torch.float16)
    args, _ = on_device(args, lens)
    y, h_n, c_n, gates, c_all = lstm_forward_triton(*args, None, False)
    assert (y.dtype, h_n.dtype, c_n.dtype) == (torch.float16,) * 3
    assert (gates.dtype, c_all.dtype) == (torch.float16, torch.float32)
    xg, w_hh, w_hr, h0, c0 = args
    back = lstm_backward_triton(y, h_n, c_n, w_hh, w_hr, h0, c0, None, False, y, gates, c_all)
    assert [tuple(g.shape) for g in back] == [(3, 2, 32), (32, 8), (0,), (2, 8), (2, 8)]
    assert all(g.dtype == torch.float16 for g in back)


def test_triton_lstm_rejects_float64():
    args, _ = on_device(lstm_inputs(2, 2, 4)[:5], None)
    with pytest.raises(ValueError, match="use backend='reference' for float64"):
        lstm_forward_triton(*args, None, False)


def test_triton_lstm_gradients_through_autograd_are_written(monkeypatch):
    """The autograd composition with poisoned outputs, on the per-step path, every input."""
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", "per_step")
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    *args, lens = lstm_inputs(4, 3, 8, 3, [4, 2, 1], dtype=torch.float32)
    args, lens = on_device(args, lens)
    inputs = leaves(args)
    for name, g in zip(INPUTS, grads(triton_lstm(*inputs, lens, True), inputs)):
        assert torch.isfinite(g).all(), f"d{name}"


@pytest.mark.parametrize("P", [None, 3], ids=["noproj", "P3"])
def test_triton_lstm_backward_takes_strided_gradients(P):
    """Gradients of a batch_first output arrive transposed ([T, B, P] with B-major strides)."""
    T, B, H = 5, 2, 8
    *args, lens = lstm_inputs(T, B, H, P, None, dtype=torch.float32)
    args, _ = on_device(args, lens)
    y, h_n, c_n, gates, c_all = lstm_forward_triton(*args, None, False)
    dy = torch.randn(B, T, y.shape[-1], device=DEVICE)
    dh_n, dc_n = torch.randn_like(h_n), torch.randn_like(c_n)
    saved = (args[1], args[2], args[3], args[4], None, False, y, gates, c_all)
    expected = lstm_backward_triton(dy.transpose(0, 1).contiguous(), dh_n, dc_n, *saved)
    got = lstm_backward_triton(dy.transpose(0, 1), dh_n, dc_n, *saved)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_aot_configs_cover_every_path_once():
    names = [entry[0] for entry in aot_configs(hidden_sizes=(64, 256, 2048))]
    assert len(names) == len(set(names))
    for path in PATHS:
        assert any(f"-{path}-" in n for n in names), path
