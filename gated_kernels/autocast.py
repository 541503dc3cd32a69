"""Which dtype a module computes in, and returns, under torch.autocast.

torch.nn's rules, as observed on torch 2.13 (CPU) and read in ATen's autocast lists (CUDA):
- CPU autocast: nn.LSTM runs in the autocast dtype (its oneDNN layer, mkldnn_rnn_layer, is in
  the CPU lower-precision list), so its output is bfloat16. nn.GRU and the cells return the
  input's dtype: their products (through linear) run in the autocast dtype, and their gates mix
  those with the float32 state.
- CUDA autocast: the cells' fused kernels are in the lower-precision list and run in the
  autocast dtype; nn.LSTM / nn.GRU go through cuDNN's autocast wrapper
  (_cudnn_rnn_cast_reflatten), which casts to float16 whatever the autocast dtype: under
  dtype=torch.bfloat16 their outputs are float16 (seen on an H200, torch 2.11, cuDNN 9.19).

Under CPU bfloat16 autocast ours compute a float32 GRU of more than one step in bfloat16
(bfloat16 products with float accumulation, the running state in float32) and return the
input's dtype, as torch.nn does. Its error against float64 is then about torch.nn's own (AMD
EPYC Zen 5, 2026-12-02, torch 2.13, y and h_n: T=100-500, B=1-64, H=64-512, 1-2 layers, ours
4.9e-3-6.9e-3 against torch.nn's 5.8e-3-7.5e-3; T=1-32, B=8, H=64-512 with a random h0, ours
0.43-0.83 of the allowed 2x torch.nn's error), and the runner's cpu suite under autocast read
1.35x-32.9x against 0.74x-26.1x in float32. One step (a GRU with T=1, the cells) keeps its
state in float32: rounded to bfloat16 on the way in and out, that rounding was most of the
error and ours exceeded the allowed error at B=8, H=128 (5.1e-3 against torch.nn's 2.5e-3), and
the cells suite read 1.18x / 1.15x geomean in bfloat16 against 1.49x / 1.38x in float32. Its
products run in bfloat16 where they are large (cpu_products: inference at B >= 32, the weights
cast for the call, x and h rounded for the products as torch.nn's linear rounds them), else in
float32; one LSTM step for inference computes the same way and rounds its outputs to bfloat16
(rnn.LSTM._autocast_dtypes). Under float16 CPU autocast (no float16 CPU kernel here) they stay
in the input's dtype.
"""

import torch

from gated_kernels import dispatch


def compute_dtype(cell, input, T=1):
    """The dtype `cell` ("LSTM", "GRU", "LSTMCell", "GRUCell") computes in for `input` of T
    steps, or None when autocast is off for the input's device (the module's own dtype rules
    then apply)."""
    device = input.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    if input.dtype == torch.float64:  # autocast casts no float64 tensor: torch.nn's stay float64
        return None
    if device == "cuda" and cell in ("LSTM", "GRU"):
        return torch.float16
    dtype = torch.get_autocast_dtype(device)
    if device == "cuda" or cell == "LSTM":
        return dtype
    if cell == "GRU" and T > 1 and dtype == torch.bfloat16 and input.dtype == torch.float32:
        return dtype
    return input.dtype


def output_dtype(cell, input, computed):
    """The dtype of `cell`'s outputs under autocast when it computed in `computed`: the input's
    for torch.nn's CPU GRU, else `computed` (the cells compute in the input's dtype there)."""
    return input.dtype if input.device.type == "cpu" and cell == "GRU" else computed


def cast(tensors, dtype):
    """Floating tensors in `dtype` (through autograd, so gradients reach the originals)."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


def cpu_products(cell, backend, dtype, B, H, training):
    """The dtype of the products of one step of `cell` ("LSTMCell", "GRUCell", or "LSTM" /
    "GRU" with T=1) that computes in `dtype` on `backend`, asked with autocast on: bfloat16 for
    a float32 step on the C++ backend under CPU bfloat16 autocast where
    dispatch.cpu_autocast_products finds bfloat16 products faster (the weights cast for the
    call; the cell operators round x and h for the products as torch.nn's linear does and keep
    the sums, the gates and the state in float32), else `dtype`."""
    if (backend == "cpp" and dtype == torch.float32 and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return dispatch.cpu_autocast_products(cell, B, H, training)
    return dtype
