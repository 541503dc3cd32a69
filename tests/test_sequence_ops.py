"""Every cell's sequence operators (gated_kernels.spec.CELLS) on every backend against the
reference, through the package's own Functions (LSTMFunction / GRUFunction with backend=...):
every output and every gradient, the outputs NaN-poisoned (conftest). The cases follow from the
cell's description (tests/common.sequence_inputs); a cell without a projection runs the
projection cases without one.

The C++ kernels run every case (tests/common.SEQUENCE_CASES) in float64, float32 and bfloat16,
and the inference operators also the cases of their input gates' chunks (INFERENCE_CASES). The
Triton kernels run on a GPU, or without one in Triton's interpreter on CPU tensors, at the
interpreter's tiny shapes, in float32 and float16, on each of their three paths."""

import pytest
import torch

from common import (INFERENCE_CASES, SEQUENCE_CASES, TRITON_CASES, cases_of,
                    check_against_reference, check_inference_against_reference, inference_args,
                    sequence_inputs)
from gated_kernels import reference
from gated_kernels.autograd import FUNCTIONS
from gated_kernels.spec import CELLS

try:
    from gated_kernels.triton_kernels import common as triton_common
    from gated_kernels.triton_kernels import gru as triton_gru
except ImportError:  # the C++ backend's cases still run
    triton_common = None

CPP_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
TRITON_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TRITON_PATHS = ("small", "persistent", "per_step")


def _params():
    """(cell, backend, path, case, dtype) with readable ids."""
    backends = [("cpp", (None,), SEQUENCE_CASES, CPP_DTYPES)]
    if triton_common is not None:
        backends.append(("triton", TRITON_PATHS, TRITON_CASES, TRITON_DTYPES))
    for cell in CELLS.values():
        for backend, paths, cases, dtypes in backends:
            for path in paths:
                for case_id, case in cases_of(cell, cases).items():
                    for dtype_id, dtype in dtypes.items():
                        ids = [cell.name, backend, path, case_id, dtype_id]
                        yield pytest.param(cell, backend, path, case, dtype,
                                           id="-".join(k for k in ids if k))


def _on_device(args, backend):
    """The Triton kernels' tensors on the GPU where there is one, else on the CPU (the
    interpreter)."""
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    return [None if t is None else t.to(device) for t in args]


@pytest.mark.parametrize("cell,backend,path,case,dtype", _params())
def test_sequence_function_matches_reference(monkeypatch, cell, backend, path, case, dtype):
    if backend == "triton":
        monkeypatch.setenv("GATED_KERNELS_TRITON_PATH", path)
        # fp32 tolerances (1e-5) assume fp32 products: no TF32 on a GPU.
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        # The GRU's per_step kernels in 8-unit blocks and 16-wide K chunks: the small shapes
        # the interpreter affords still span several programs and several chunks.
        monkeypatch.setattr(triton_gru, "PER_STEP_BLOCK_H", 8)
        monkeypatch.setattr(triton_gru, "STREAM_BLOCK_K", 16)
    T, B, H, P, lengths, reverse = case
    *args, lens = _on_device(sequence_inputs(cell, T, B, H, P, lengths), backend)
    names = ("xg", *(p.name for p in cell.params), *(f"{s.name}0" for s in cell.states))
    outputs = ("y", *(f"{s.name}_n" for s in cell.states))

    def function(*tensors):
        return FUNCTIONS[cell.name].apply(*tensors, backend)

    check_against_reference(function, getattr(reference, f"{cell.stem}_recurrence"), args, lens,
                            reverse, dtype, outputs, names)


def _inference_params():
    for cell in CELLS.values():
        for case_id, case in cases_of(cell, INFERENCE_CASES).items():
            for dtype_id, dtype in CPP_DTYPES.items():
                yield pytest.param(cell, case, dtype, id=f"{cell.name}-{case_id}-{dtype_id}")


@pytest.mark.parametrize("cell,case,dtype", _inference_params())
def test_inference_operator_matches_reference(cell, case, dtype):
    """The C++ inference operator ({stem}_inference: from the layer input, nothing saved)
    against the reference on x w_ih^T + the input bias."""
    args, lens, reverse = inference_args(cell, case, dtype)
    check_inference_against_reference(
        getattr(torch.ops.gated_kernels, f"{cell.stem}_inference"),
        getattr(reference, f"{cell.stem}_recurrence"), args, lens, reverse, dtype,
        ("y", *(f"{s.name}_n" for s in cell.states)))
