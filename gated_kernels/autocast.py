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
(rnn.LSTM._autocast_dtypes). In a loop of steps inside one autocast region (a decoder) the
weights are cast once a region, through autocast's own cache as torch.nn's are (cast_parameters),
and inference takes bfloat16 products from the second step on where the weights outgrow the
L2 cache (_outgrow_l2). Under float16 CPU autocast (no float16 CPU kernel here) they stay in
the input's dtype.
"""

import functools

import torch

from gated_kernels import dispatch
from gated_kernels.backends import cpp_available


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


def cast_parameters(parameters, dtype):
    """Parameters in `dtype`, each as cast_parameter casts it."""
    return [cast_parameter(p, dtype) for p in parameters]


def cast_parameter(parameter, dtype):
    """A parameter in `dtype`, as cast() casts it, but through autocast's cache of weight casts
    where the C++ extension is built (csrc/autocast_weight.cpp): inside one autocast region a
    float32 leaf that requires grad is then cast once however many calls read it, and torch.nn's
    products read the same cache. Called inside the caller's torch.autocast(enabled=False) block,
    whose exit clears the cache when no autocast region encloses it (as the outermost region's
    exit does). Compiled code casts as cast() does: the cache holds real tensors only."""
    if parameter is None or parameter.dtype == dtype:
        return parameter
    if not cpp_available() or torch.compiler.is_compiling():
        return parameter.to(dtype)
    return torch.ops.gated_kernels._autocast_weight(parameter, dtype)


def cpu_products(module, cell, backend, dtype, B, training, weights):
    """The dtype of the products of one step of `module` (`cell`: "LSTMCell", "GRUCell", or
    "LSTM" / "GRU" with T=1) that computes in `dtype` on `backend`, asked with autocast on:
    bfloat16 for a float32 step on the C++ backend under CPU bfloat16 autocast where
    dispatch.cpu_autocast_products finds bfloat16 products faster, or, for inference, where
    `weights` (the step's parameters: W_ih and W_hh, and any biases) are cast once a region,
    outgrow the L2 cache (_outgrow_l2) and the module's previous call ran in the region still
    open (a loop over steps: the casts are then cached, same_region); else `dtype`.
    The cell operators round x and h for bfloat16 products as torch.nn's linear does and keep
    the sums, the gates and the state in float32."""
    if (backend != "cpp" or dtype != torch.float32 or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != torch.bfloat16):
        return dtype
    products = dispatch.cpu_autocast_products(cell, B, module.hidden_size, training)
    # In a loop under one region torch.nn's products read weights cast on its first step, and
    # so do ours: float32 products then lose where the weights outweigh the rows (LSTMCell
    # inference, 16 steps a region, B=8, H=1024: 0.55x torch.nn in float32, 0.99x in bfloat16;
    # one call a region: 3.89x against 1.03x, the cast paid each call; AMD EPYC Zen 4).
    # Asking same_region costs a cast each region (15-20 us a call one call a region, LSTMCell
    # B=8, H=64: 1.51x torch.nn against 2.53x without it), so only large weights ask:
    # _outgrow_l2.
    if (products != torch.bfloat16 and not training and _outgrow_l2(weights)
            and all(map(_cached_cast, weights)) and same_region(module)):
        products = torch.bfloat16
    return products


@functools.cache
def _l2_bytes():
    return torch.ops.gated_kernels._l2_cache()[0]


def _outgrow_l2(weights):
    """Whether the float32 weights take more than twice a core's L2 cache, where bfloat16
    products from cached casts beat float32 products in a loop of steps (AMD EPYC Zen 4, 1 MB
    L2, 32 steps a region, inference: 6-8 MB of weights, B=8, H=512, 0.81x-0.88x torch.nn
    against 0.72x-0.76x; 1.5-2 MB, H=256, 0.85x-1.26x against 0.83x-1.12x, worse at B <= 8)."""
    return sum(w.numel() for w in weights) * 4 > 2 * _l2_bytes()


def _cached_cast(weight):
    """Whether autocast's cache keeps `weight`'s cast for the region (ATen's cached_cast: a
    float32 leaf that requires grad)."""
    return weight.dtype == torch.float32 and weight.is_leaf and weight.requires_grad


def same_region(module):
    """Whether `module`'s previous call ran in the autocast region still open. Each call casts a
    one-element float32 leaf of the module through autocast's cache: within a region the cast
    returned is the previous call's, after the region's exit (which clears the cache) a new one.
    Compiled code answers False (the cache holds real tensors only)."""
    if torch.compiler.is_compiling():
        return False
    state = module.__dict__
    sentinel = state.get("_autocast_sentinel")
    if sentinel is None:
        sentinel = state["_autocast_sentinel"] = torch.zeros(1, requires_grad=True)
    cast = torch.ops.gated_kernels._autocast_weight(sentinel, torch.bfloat16)
    previous, state["_autocast_sentinel_cast"] = state.get("_autocast_sentinel_cast"), cast
    return cast is previous
