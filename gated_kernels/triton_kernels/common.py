"""What the LSTM and GRU Triton kernels share: activations, the grid barrier, the path heuristic
and launch settings."""

import os

import torch
import triton
import triton.language as tl

# Batch rows per program: the smallest M of an mma tile.
BLOCK_B = 16
# Hidden units per program in the persistent path: the 4 LSTM gates of 8 units make the N=32 of
# one tl.dot, and H=1024 then needs 128 programs, within the 132 SMs of an H100 (one each).
PERSISTENT_BLOCK_H = 8
# Largest H whose whole W_hh one program holds without spilling registers; the `small` path needs
# no barrier. At H=128 in fp16 the LSTM kernels spill 100-300 bytes on sm_80 and sm_90, so the
# limit is 64 for every dtype (H=128 runs persistent, which is clean).
SMALL_MAX_H = {torch.float32: 64, torch.float16: 64, torch.bfloat16: 64}
# Largest H whose W_hh slices stay in shared memory across steps: 98 KB per program at H=1024
# in bf16; fp32 needs 194 KB at H=1024, more than an A100 gives one program (163 KB), so there
# fp32 stops at 512 (98 KB).
PERSISTENT_MAX_H = 1024
FP32_PERSISTENT_SHARED_MEMORY = 200 * 1024
# Above PERSISTENT_MAX_H W_hh streams from L2 every step (bf16 H=2048: 33.5 MB, more than 132
# SMs' shared memory) and a persistent program owns 16 units, as a per_step one does: H=2048
# then needs 128 programs. That saves the per-step launches (20-22 us a step on the H200 against
# ~5.6 us of streamed W, reference/gpu_large_batch.md 3d).
STREAM_BLOCK_H = 16
PATHS = ("small", "persistent", "per_step")
# Triton compiles an integer argument equal to 1 as a constant. At B=1 that turned the fp32 GRU
# forward at H=1024 into a 32-register build with 1204 spilled bytes, 36.9 ms against 2.2 ms at
# B=2 (H200, Triton 3.6): the kernels take T and B as plain runtime integers.
NO_SPECIALIZE = ["T", "B"]


def new_output(shape, dtype, device):
    """With GATED_KERNELS_POISON_OUTPUTS=1 outputs start as NaN, like the C++ kernels', so an
    element a kernel never writes fails the tests."""
    if os.environ.get("GATED_KERNELS_POISON_OUTPUTS") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def previous_hidden(y, h0, lengths, reverse):
    """h_{t-1} of every step, rebuilt from y and h0 (csrc/common.cpp previous_hidden)."""
    hprev = torch.empty_like(y)
    if not reverse:
        hprev[0] = h0
        hprev[1:] = y[:-1]
        return hprev
    hprev[:-1] = y[1:]
    hprev[-1] = h0
    if lengths is not None:  # a reversed row starts at t = lengths[b] - 1 from h0
        batch = torch.arange(y.shape[1], device=y.device)
        hprev[lengths - 1, batch] = h0
    return hprev


def interpreting():
    """Triton's interpreter runs programs one after another on the CPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def input_precision(dtype):
    """tl.dot precision: fp32 follows PyTorch's TF32 setting for cuDNN RNNs, like torch.nn (TF32
    by default; full fp32 when torch.backends.cudnn.allow_tf32 is False). An "ieee" dot lowers to
    multiply-adds with the whole K operand in registers, so the kernels stream W_hh in narrow K
    chunks there ("tf32x3" is no way out: it spilled in most fp32 configurations too)."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def sm_count(device):
    if device.type != "cuda":
        return 1 << 30  # the interpreter has no SM limit
    return torch.cuda.get_device_properties(device).multi_processor_count


def shared_memory(device):
    """Shared memory one program may use on `device` (None: no limit, the interpreter)."""
    if device.type != "cuda":
        return None
    # Older torch builds lack the field: then no limit is assumed (the H100's 227 KB covers
    # every configuration the heuristic picks).
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", None)


def persistent_options(maxnreg=True):
    """Compile and launch options of a persistent kernel, one program per SM (CUDAOptions fields
    from Triton 3.6 on; none in the interpreter):
    - launch_cooperative_grid: the driver refuses a grid that cannot be co-resident instead of
      letting the barrier deadlock;
    - maxnreg=255 (where asked): ptxas otherwise aims for several programs per SM, which a
      persistent grid never has. It held the LSTM forward (one tile or several) and the GRU's
      multi-tile forward to 128 or 168 registers with 8-56 bytes of stack on sm_80 / sm_90;
      lifted, they compile clean (149-209 registers). The GRU's single-tile kernels go the
      other way (clean without it, 255 registers and 8-112 bytes of stack with it)."""
    if interpreting():
        return {}
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return {}
    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    wanted = {"launch_cooperative_grid": True, **({"maxnreg": 255} if maxnreg else {})}
    return {k: v for k, v in wanted.items() if k in fields}


def persistent_max_h(dtype, shared_bytes=None):
    if dtype == torch.float32 and shared_bytes is not None:
        if shared_bytes < FP32_PERSISTENT_SHARED_MEMORY:
            return 512
    return PERSISTENT_MAX_H


def persistent_grid(unit_blocks, batch_tiles, num_sms):
    """(groups, tiles) of a persistent forward whose unit_blocks x batch_tiles programs do not
    fit one per SM: `groups` programs along the batch, each looping over `tiles` batch tiles a
    step, so unit_blocks x groups programs fit (W_hh is read from shared memory once a tile
    either way, where one launch a step reads it from L2)."""
    groups = max(1, min(batch_tiles, num_sms // unit_blocks))
    return groups, -(-batch_tiles // groups)


def persistent_launch(grid, num_sms, tiled, device):
    """(grid, tiles) of a persistent launch of grid = (unit blocks, batch tiles) programs. With
    `tiled` (the forward kernels), a grid with more programs than SMs becomes groups whose
    programs loop over `tiles` batch tiles each (persistent_grid). Raises where the programs
    still cannot be one per SM, which the grid barrier needs."""
    tiles = 1
    if tiled and grid[0] * grid[1] > num_sms and grid[0] <= num_sms:
        groups, tiles = persistent_grid(grid[0], grid[1], num_sms)
        grid = (grid[0], groups)
    if grid[0] * grid[1] > num_sms:
        raise ValueError(f"the persistent path needs its {grid[0] * grid[1]} programs "
                         f"co-resident, one per SM, but {device} has {num_sms} SMs")
    return grid, tiles


def choose_path(H, B, dtype, num_sms, shared_bytes=None, tiles=False):
    """Which forward/backward kernel runs (GATED_KERNELS_TRITON_PATH forces one):
    - small: H within SMALL_MAX_H; one program per batch tile holds all of W_hh, no barrier;
    - persistent: H up to 1024 (fp32 on chips with under 200 KB of shared memory per program:
      512) when (H / 8 unit blocks) x (batch tiles) programs fit one per SM; W_hh slices stay on
      chip, programs meet at a grid barrier each step. With `tiles` (the forward kernels) also
      when only the unit blocks fit: programs then loop over several batch tiles a step
      (persistent_grid);
    - persistent, streaming: above PERSISTENT_MAX_H, when its 16-unit programs fit (H=2048 at
      B <= 16 on an H100, any B with `tiles`): W_hh streams from L2 each step inside one launch;
    - per_step: otherwise (large batches without `tiles`, H > 2112 on an H100, fp32 H=1024 on
      chips with under 200 KB a program); one fused launch per step.
    """
    forced = os.environ.get("GATED_KERNELS_TRITON_PATH")
    if forced:
        if forced not in PATHS:
            raise ValueError(f"GATED_KERNELS_TRITON_PATH must be one of {PATHS}, got {forced!r}")
        return forced
    if H <= SMALL_MAX_H.get(dtype, 64):
        return "small"
    if H <= persistent_max_h(dtype, shared_bytes):
        unit_blocks = triton.cdiv(H, PERSISTENT_BLOCK_H)
    elif H > PERSISTENT_MAX_H:
        unit_blocks = triton.cdiv(H, STREAM_BLOCK_H)
    else:
        return "per_step"
    programs = unit_blocks * (1 if tiles else triton.cdiv(B, BLOCK_B))
    return "persistent" if programs <= num_sms else "per_step"


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Overflow-safe: exp of a non-positive argument only.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def grid_barrier(counter_ptr, expected):
    """All `expected` programs that share `counter_ptr` (a zeroed int32, one per step and batch
    tile, so no reset is needed) wait here until each has arrived. Triton 3.6 has no
    tl.atomic_load / tl.atomic_poll: the wait spins on an acquire atomic add of 0. The CTA
    barrier first makes every warp's stores part of the release."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < expected:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def end_step(counter_ptr, s, PATH: tl.constexpr):
    """Between two steps: on the persistent path the grid barrier of the programs that share a
    batch group (program_id(1)); on the small path the CTA barrier, since the next step reads
    what other warps of the program wrote."""
    if PATH == "persistent":
        grid_barrier(counter_ptr + s * tl.num_programs(1) + tl.program_id(1), tl.num_programs(0))
    elif PATH == "small":
        tl.debug_barrier()
