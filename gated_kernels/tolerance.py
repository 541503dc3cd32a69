"""How close is close enough: the error rule shared by the tests and the benchmark's gate.

Errors are measured against a float64 reference on the same inputs, relative to the largest
magnitude of the reference tensor (a gradient that sums T*B products is judged on its own
scale). The allowed error:
- float64: 1e-10. Both sides differ only in summation order, a few ulp (about 1e-15); any real
  mistake (a wrong gate, a missing term) is 1e-2 or larger.
- float32: 1e-5 for outputs, 1e-4 for gradients (about sqrt(T*B) * 6e-8 per element of a
  summed gradient), or the low-precision rule below if torch.nn itself is further off.
- float16 / bfloat16 (flash-attention's rule): at most 2x (outputs) / 3x (gradients) the error
  of PyTorch's own computation in that dtype, plus the float32 gradient floor.
"""

import torch

FP64_TOLERANCE = 1e-10
FP32_TOLERANCE = {"out": 1e-5, "grad": 1e-4}
LOW_PRECISION_FACTOR = {"out": 2.0, "grad": 3.0}


def max_abs_error(actual, expected):
    if expected.numel() == 0:  # batch size 0: nothing can differ
        return 0.0
    return (actual.double() - expected.double()).abs().max().item()


def max_rel_error(actual, expected):
    """Largest absolute difference over the largest magnitude of `expected`."""
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    return max_abs_error(actual, expected) / max(scale, 1e-30)


def allowed_error(dtype, kind, torch_error=None):
    """The largest acceptable max_rel_error for a tensor of `kind` ("out" or "grad") computed in
    `dtype`, given torch.nn's (or PyTorch's own) error on the same tensor, where known."""
    if dtype == torch.float64:
        return FP64_TOLERANCE
    low_precision = None if torch_error is None else LOW_PRECISION_FACTOR[kind] * torch_error
    if dtype == torch.float32:
        return max(FP32_TOLERANCE[kind], low_precision or 0.0)
    if low_precision is None:
        raise ValueError(f"the {dtype} tolerance needs PyTorch's own error on the same tensor")
    return low_precision + FP32_TOLERANCE["grad"]
