"""On a CUDA GPU: the Triton backend against torch.nn (cuDNN) and the float64 reference, in every
dtype and on every path, outputs and all gradients, with the error rule of
gated_kernels.tolerance (ours within 2x / 3x of cuDNN's own error)."""

import pytest
import torch

from gated_kernels.bench import measure
from gated_kernels.bench.suites import Case

pytestmark = pytest.mark.cuda

# (cell, T, B, H): small H, persistent-sized H, a large batch, H beyond the persistent limit.
SHAPES = [("LSTM", 33, 5, 64), ("GRU", 33, 5, 64), ("LSTM", 64, 16, 512), ("GRU", 64, 16, 512),
          ("LSTM", 16, 300, 256), ("GRU", 16, 3, 2048)]
DTYPES = ["fp32", "fp16", "bf16"]


def _check(case):
    theirs = measure.torch_module(case)
    ours = measure.ours_module(theirs, backend="triton")
    errors = measure.gate(case, theirs, ours, measure.make_input(case))
    assert errors["ours_out_error"] <= errors["allowed_out_error"], errors
    assert errors["ours_grad_error"] <= errors["allowed_grad_error"], errors


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_triton_matches_cudnn_and_reference(shape, dtype):
    cell, T, B, H = shape
    _check(Case(cell, "fwdbwd", T, B, H, H, dtype, device="cuda"))


@pytest.mark.parametrize("path", ["small", "persistent", "per_step"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_every_path_on_the_gpu(cell, path, monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", path)
    H = 64 if path == "small" else 256
    _check(Case(cell, "fwdbwd", 20, 7, H, H, "fp32", device="cuda"))


def test_bidirectional_projection_packed_lengths():
    from torch.nn.utils.rnn import pack_padded_sequence

    import gated_kernels as gk

    torch.manual_seed(0)
    theirs = torch.nn.LSTM(32, 128, num_layers=2, bidirectional=True, proj_size=48, device="cuda")
    ours = gk.LSTM.from_torch(theirs, backend="triton")
    reference = gk.LSTM.from_torch(theirs, backend="reference").double()
    x = torch.randn(40, 6, 32, device="cuda")
    lengths = torch.tensor([40, 1, 17, 40, 3, 25])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_ours = ours(packed)[0].data
    y_ref = reference(pack_padded_sequence(x.double(), lengths, enforce_sorted=False))[0].data
    y_cudnn = theirs(packed)[0].data
    err = lambda a: ((a.double() - y_ref).abs().max() / y_ref.abs().max()).item()
    assert err(y_ours) <= max(1e-5, 2 * err(y_cudnn))
