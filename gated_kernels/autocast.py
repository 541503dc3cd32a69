"""Which dtype a module computes in under torch.autocast: the one torch.nn's would.

torch.nn's rules, as observed on torch 2.13 (CPU) and read in ATen's autocast lists (CUDA):
- CPU autocast: nn.LSTM runs in the autocast dtype (its oneDNN layer, mkldnn_rnn_layer, is in
  the CPU lower-precision list), so its output is bfloat16; nn.GRU and the cells keep the
  input's dtype for their gates, states and outputs (their products, through linear, run in
  bfloat16: an error of about 3e-3 at H=64), and ours compute all of it in the input's dtype.
- CUDA autocast: the cells' fused kernels are in the lower-precision list and run in the
  autocast dtype; nn.LSTM / nn.GRU go through cuDNN's autocast wrapper
  (_cudnn_rnn_cast_reflatten), which casts to float16 whatever the autocast dtype: under
  dtype=torch.bfloat16 their outputs are float16 (seen on an H200, torch 2.11, cuDNN 9.19).
"""

import torch


def compute_dtype(cell, input):
    """The dtype `cell` ("LSTM", "GRU", "LSTMCell", "GRUCell") computes in for `input`, or None
    when autocast is off for the input's device (the module's own dtype rules then apply)."""
    device = input.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    if device == "cuda" and cell in ("LSTM", "GRU"):
        return torch.float16
    if device == "cuda" or cell == "LSTM":
        return torch.get_autocast_dtype(device)
    return input.dtype


def cpu_bfloat16():
    """True under CPU autocast to bfloat16: torch.nn's float32 GRU and cells then run their
    products in bfloat16, ours in float32 (dispatch.cpu_autocast_backend)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def cast(tensors, dtype):
    """Floating tensors in `dtype` (through autograd, so gradients reach the originals)."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]
