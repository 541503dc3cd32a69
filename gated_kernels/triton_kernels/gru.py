"""GRU recurrence in Triton: the forward and backward of gated_kernels::gru_forward / gru_backward.

Same contract as csrc/gru.cpp (its header comment is the spec): PyTorch's GRU variant
n = tanh(xg_n + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h, gate order r, z, n.

One forward and one backward kernel, each serving the three paths of common.choose_path:
- small: one program per batch tile owns all H units (and all of W_hh) and runs every step;
- persistent: program (p, q) owns units [p*BLOCK_H, (p+1)*BLOCK_H) of batch tile q for every
  step, its W_hh slice loaded once; the programs of a batch tile meet at a grid barrier per step.
  A forward batch with more tiles than SMs to spare has each program loop over a group of tiles
  (TILED); above PERSISTENT_MAX_H W_hh streams in K chunks inside the one launch;
- per_step: the same kernel launched once per step (n_steps=1), W_hh streamed in K chunks.
State crosses steps through global memory: h in a two-slot buffer (a step reads slot s % 2 and
writes slot (s + 1) % 2, so one barrier per step suffices), dh in a [B, H] buffer.
"""

import itertools

import torch
import triton
import triton.language as tl

from gated_kernels import contract, spec
from gated_kernels.triton_kernels import common
from gated_kernels.triton_kernels.common import BLOCK_B, NO_SPECIALIZE, grid_barrier, sigmoid, tanh

# Units per program of the per_step path: 16 is the n of one mma tile, and H=2048 then has 128
# programs per batch tile, about one wave on 132 SMs.
PER_STEP_BLOCK_H = 16
# K chunk where W_hh is streamed from L2 each step instead of kept on chip (see _config).
STREAM_BLOCK_K = 32
AOT_HIDDEN_SIZES = (64, 128, 256, 512, 768, 1024, 2048)
AOT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _fwd_dots(acc_r, acc_z, acc_n, h_ptr, w_ptr, rows, row_ok, units, unit_ok, k, H,
              INPUT_PRECISION: tl.constexpr):
    """acc_g += h[rows, k] @ W_hh[g*H + units, k]^T for the gates g = r, z, n (one K chunk)."""
    k_ok = k < H
    h = tl.load(h_ptr + rows[:, None] * H + k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                other=0.0, cache_modifier=".cg").to(w_ptr.dtype.element_ty)
    w = w_ptr + units[None, :] * H + k[:, None]
    w_ok = k_ok[:, None] & unit_ok[None, :]
    acc_r = tl.dot(h, tl.load(w, mask=w_ok, other=0.0), acc_r, input_precision=INPUT_PRECISION)
    acc_z = tl.dot(h, tl.load(w + H * H, mask=w_ok, other=0.0), acc_z,
                   input_precision=INPUT_PRECISION)
    acc_n = tl.dot(h, tl.load(w + 2 * H * H, mask=w_ok, other=0.0), acc_n,
                   input_precision=INPUT_PRECISION)
    return acc_r, acc_z, acc_n


@triton.jit
def _gru_fwd_tile(xg_ptr, w_ptr, h_ptr, y_ptr, gates_ptr, w_r, w_z, w_n, b_r, b_z, b_n, k,
                  rows, row_ok, tile_ok, lengths, units, unit_ok, s, t, B, H,
                  HAS_LENGTHS: tl.constexpr, RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                  SAVE: tl.constexpr, SKIP_ENDED: tl.constexpr):
    """Step s (time t) of one batch tile (`rows`) for the program's units. SKIP_ENDED (a program
    looping over several tiles a step): a tile whose rows have all ended skips the dots, which
    shortens the step; in a batch sorted by length (a PackedSequence) the last tiles end first.
    With W_hh resident only: the multi-tile kernel streaming it (float32 at ieee precision) has
    its 255 registers full, and a skip there spilled 8-16 bytes at H=2048."""
    h_in = h_ptr + (s % 2) * B * H
    h_out = h_ptr + ((s + 1) % 2) * B * H
    acc_r = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_n = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    if RESIDENT:
        running = 1  # a constant without SKIP_ENDED
        if SKIP_ENDED:
            running = tl.max(((t < lengths) & row_ok).to(tl.int32), axis=0)
        if running > 0:
            h = tl.load(h_in + rows[:, None] * H + k[None, :],
                        mask=row_ok[:, None] & (k < H)[None, :], other=0.0,
                        cache_modifier=".cg").to(w_ptr.dtype.element_ty)
            acc_r = tl.dot(h, w_r, acc_r, input_precision=INPUT_PRECISION)
            acc_z = tl.dot(h, w_z, acc_z, input_precision=INPUT_PRECISION)
            acc_n = tl.dot(h, w_n, acc_n, input_precision=INPUT_PRECISION)
    else:
        for k0 in range(0, H, BLOCK_K):
            acc_r, acc_z, acc_n = _fwd_dots(acc_r, acc_z, acc_n, h_in, w_ptr, rows, row_ok,
                                            units, unit_ok, k0 + tl.arange(0, BLOCK_K), H,
                                            INPUT_PRECISION)
    # Pointwise: the gates of this program's units, then h' = n + z * (h - n).
    row_t = t * B + rows
    x = xg_ptr + row_t[:, None] * (3 * H) + units[None, :]
    x_r = tl.load(x, mask=tile_ok, other=0.0).to(tl.float32)
    x_z = tl.load(x + H, mask=tile_ok, other=0.0).to(tl.float32)
    x_n = tl.load(x + 2 * H, mask=tile_ok, other=0.0).to(tl.float32)
    r = sigmoid(x_r + acc_r + b_r)
    z = sigmoid(x_z + acc_z + b_z)
    hn = acc_n + b_n
    n = tanh(x_n + r * hn)
    own = rows[:, None] * H + units[None, :]
    h_prev = tl.load(h_in + own, mask=tile_ok, other=0.0, cache_modifier=".cg")
    h_prev = h_prev.to(tl.float32)
    h_new = n + z * (h_prev - n)
    # Rows past their length carry h; their y and gates are 0.
    if HAS_LENGTHS:
        active = (t < lengths)[:, None]
    else:
        active = row_ok[:, None]
    tl.store(h_out + own, tl.where(active, h_new, h_prev).to(h_ptr.dtype.element_ty),
             mask=tile_ok)
    tl.store(y_ptr + row_t[:, None] * H + units[None, :],
             tl.where(active, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=tile_ok)
    if SAVE:
        g = gates_ptr + row_t[:, None] * (4 * H) + units[None, :]
        gate_ty = gates_ptr.dtype.element_ty
        tl.store(g, tl.where(active, r, 0.0).to(gate_ty), mask=tile_ok)
        tl.store(g + H, tl.where(active, z, 0.0).to(gate_ty), mask=tile_ok)
        tl.store(g + 2 * H, tl.where(active, n, 0.0).to(gate_ty), mask=tile_ok)
        tl.store(g + 3 * H, tl.where(active, hn, 0.0).to(gate_ty), mask=tile_ok)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _gru_fwd_kernel(xg_ptr, w_ptr, b_ptr, lengths_ptr, h_ptr, y_ptr, gates_ptr, counter_ptr,
                    T, B, H, step0, n_steps, tiles,
                    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, PERSISTENT: tl.constexpr,
                    RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, SAVE: tl.constexpr,
                    TILED: tl.constexpr):
    """Steps [step0, step0 + n_steps) for units [p*BLOCK_H, ...) of rows [q*BLOCK_B, ...).
    h_ptr: [2, B, H] in the input dtype, slot 0 holds h0. RESIDENT: BLOCK_K covers all of H and
    the W_hh slice is loaded once, before the time loop (Triton keeps it in shared memory).
    SAVE: store the gates backward reads (off for inference: 4H values a row and step fewer).
    TILED (persistent, as in _lstm_fwd_kernel): the program loops over `tiles` batch tiles,
    j * P + q for j < tiles (P programs along axis 1), every step, on its W_hh slice."""
    pid_h = tl.program_id(0).to(tl.int64)
    pid_b = tl.program_id(1).to(tl.int64)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    unit_ok = units < H
    b_r = tl.load(b_ptr + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
    b_z = tl.load(b_ptr + H + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
    b_n = tl.load(b_ptr + 2 * H + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
    k = tl.arange(0, BLOCK_K)
    # Placeholders when W_hh streams.
    w_r = w_ptr
    w_z = w_ptr
    w_n = w_ptr
    if RESIDENT:
        w = w_ptr + units[None, :] * H + k[:, None]
        w_ok = (k < H)[:, None] & unit_ok[None, :]
        w_r = tl.load(w, mask=w_ok, other=0.0)
        w_z = tl.load(w + H * H, mask=w_ok, other=0.0)
        w_n = tl.load(w + 2 * H * H, mask=w_ok, other=0.0)
    lengths = tl.zeros((BLOCK_B,), dtype=tl.int64)  # a placeholder without lengths
    if TILED:
        for s in range(step0, step0 + n_steps):
            t = T - 1 - s if REVERSE else s
            for j in range(tiles):
                rows = (j * tl.num_programs(1) + pid_b) * BLOCK_B + tl.arange(0, BLOCK_B)
                row_ok = rows < B
                tile_ok = row_ok[:, None] & unit_ok[None, :]
                if HAS_LENGTHS:
                    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
                _gru_fwd_tile(xg_ptr, w_ptr, h_ptr, y_ptr, gates_ptr, w_r, w_z, w_n, b_r, b_z,
                              b_n, k, rows, row_ok, tile_ok, lengths, units, unit_ok, s, t, B, H,
                              HAS_LENGTHS, RESIDENT, BLOCK_B, BLOCK_H, BLOCK_K, INPUT_PRECISION,
                              SAVE, HAS_LENGTHS)
            grid_barrier(counter_ptr + s * tl.num_programs(1) + pid_b, tl.num_programs(0))
    else:
        rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        tile_ok = row_ok[:, None] & unit_ok[None, :]
        if HAS_LENGTHS:
            lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
        for s in range(step0, step0 + n_steps):
            # t * B stays far below 2**31; adding the int64 rows makes every offset int64.
            t = T - 1 - s if REVERSE else s
            _gru_fwd_tile(xg_ptr, w_ptr, h_ptr, y_ptr, gates_ptr, w_r, w_z, w_n, b_r, b_z, b_n,
                          k, rows, row_ok, tile_ok, lengths, units, unit_ok, s, t, B, H,
                          HAS_LENGTHS, RESIDENT, BLOCK_B, BLOCK_H, BLOCK_K, INPUT_PRECISION, SAVE,
                          False)
            if PERSISTENT:
                grid_barrier(counter_ptr + s * tl.num_programs(1) + pid_b, tl.num_programs(0))


@triton.jit
def _bwd_dots(acc, dgh_ptr, w_ptr, rows, row_ok, units, unit_ok, k, H, valid,
              INPUT_PRECISION: tl.constexpr):
    """acc += sum over g = r, z, n of dGh[rows, g*H + k] @ W_hh[g*H + k, units] (one K chunk,
    `rows` indexing dGh viewed as [T*B, 3H]);
    `valid` false (the first backward step has no later step) adds nothing."""
    k_ok = k < H
    a = dgh_ptr + rows[:, None] * (3 * H) + k[None, :]
    a_ok = (row_ok[:, None] & k_ok[None, :]) & valid
    w = w_ptr + k[:, None] * H + units[None, :]
    w_ok = k_ok[:, None] & unit_ok[None, :]
    for g in tl.static_range(3):
        dg = tl.load(a + g * H, mask=a_ok, other=0.0, cache_modifier=".cg")
        acc = tl.dot(dg.to(w_ptr.dtype.element_ty), tl.load(w + g * H * H, mask=w_ok, other=0.0),
                     acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _gru_bwd_kernel(dy_ptr, w_ptr, lengths_ptr, hprev_ptr, gates_ptr, dh_ptr, dxg_ptr, dgh_ptr,
                    counter_ptr, T, B, H, step0, n_steps,
                    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, PERSISTENT: tl.constexpr,
                    RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Backward steps u in [step0, step0 + n_steps) (u = 0 is the last forward step) for units
    [p*BLOCK_H, ...) of rows [q*BLOCK_B, ...). Per step: dh = dh_carry + dGh_{later step} @ W_hh
    for this program's units, then the pointwise gate gradients of time t:
      dn = dh (1 - z)(1 - n^2), dz = dh (h_prev - n) z (1 - z), dr = dn hn r (1 - r),
      dGx = [dr, dz, dn] (stored as dxg), dGh = [dr, dz, dn r] (fp32, read by the next step),
      dh_carry = dh z (the direct path h_prev -> h).
    dh_ptr [B, H] fp32 holds dh_carry (dh_n at the start); each program touches its own units."""
    pid_h = tl.program_id(0).to(tl.int64)
    pid_b = tl.program_id(1).to(tl.int64)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    unit_ok = units < H
    row_ok = rows < B
    tile_ok = row_ok[:, None] & unit_ok[None, :]
    own = rows[:, None] * H + units[None, :]
    if HAS_LENGTHS:
        lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    if RESIDENT:
        k = tl.arange(0, BLOCK_K)
        w = w_ptr + k[:, None] * H + units[None, :]
        w_ok = (k < H)[:, None] & unit_ok[None, :]
        w_r = tl.load(w, mask=w_ok, other=0.0)
        w_z = tl.load(w + H * H, mask=w_ok, other=0.0)
        w_n = tl.load(w + 2 * H * H, mask=w_ok, other=0.0)
    for u in range(step0, step0 + n_steps):
        # Time of this step and of the step before it in backward order (one later in time).
        if REVERSE:
            t = u
            t_later = t - 1
        else:
            t = T - 1 - u
            t_later = t + 1
        dh = tl.load(dh_ptr + own, mask=tile_ok, other=0.0)
        later_rows = t_later * B + rows
        if RESIDENT:
            a = dgh_ptr + later_rows[:, None] * (3 * H) + k[None, :]
            a_ok = (row_ok[:, None] & (k < H)[None, :]) & (u > 0)
            w_ty = w_ptr.dtype.element_ty
            dg_r = tl.load(a, mask=a_ok, other=0.0, cache_modifier=".cg").to(w_ty)
            dh = tl.dot(dg_r, w_r, dh, input_precision=INPUT_PRECISION)
            dg_z = tl.load(a + H, mask=a_ok, other=0.0, cache_modifier=".cg").to(w_ty)
            dh = tl.dot(dg_z, w_z, dh, input_precision=INPUT_PRECISION)
            dg_n = tl.load(a + 2 * H, mask=a_ok, other=0.0, cache_modifier=".cg").to(w_ty)
            dh = tl.dot(dg_n, w_n, dh, input_precision=INPUT_PRECISION)
        else:
            for k0 in range(0, H, BLOCK_K):
                dh = _bwd_dots(dh, dgh_ptr, w_ptr, later_rows, row_ok, units, unit_ok,
                               k0 + tl.arange(0, BLOCK_K), H, u > 0, INPUT_PRECISION)
        row_t = t * B + rows
        g = gates_ptr + row_t[:, None] * (4 * H) + units[None, :]
        r = tl.load(g, mask=tile_ok, other=0.0).to(tl.float32)
        z = tl.load(g + H, mask=tile_ok, other=0.0).to(tl.float32)
        n = tl.load(g + 2 * H, mask=tile_ok, other=0.0).to(tl.float32)
        hn = tl.load(g + 3 * H, mask=tile_ok, other=0.0).to(tl.float32)
        step = row_t[:, None] * H + units[None, :]
        dy = tl.load(dy_ptr + step, mask=tile_ok, other=0.0).to(tl.float32)
        h_prev = tl.load(hprev_ptr + step, mask=tile_ok, other=0.0).to(tl.float32)
        # Rows past their length: no gate gradient, y is a constant 0 (dy ignored), dh carried.
        if HAS_LENGTHS:
            active = (t < lengths)[:, None]
        else:
            active = row_ok[:, None]
        dh_total = tl.where(active, dh + dy, 0.0)
        d_n = dh_total * (1.0 - z) * (1.0 - n * n)
        d_z = dh_total * (h_prev - n) * z * (1.0 - z)
        d_r = d_n * hn * r * (1.0 - r)
        dx = dxg_ptr + row_t[:, None] * (3 * H) + units[None, :]
        dx_ty = dxg_ptr.dtype.element_ty
        tl.store(dx, d_r.to(dx_ty), mask=tile_ok)
        tl.store(dx + H, d_z.to(dx_ty), mask=tile_ok)
        tl.store(dx + 2 * H, d_n.to(dx_ty), mask=tile_ok)
        dg = dgh_ptr + row_t[:, None] * (3 * H) + units[None, :]
        dg_ty = dgh_ptr.dtype.element_ty
        tl.store(dg, d_r.to(dg_ty), mask=tile_ok)
        tl.store(dg + H, d_z.to(dg_ty), mask=tile_ok)
        tl.store(dg + 2 * H, (d_n * r).to(dg_ty), mask=tile_ok)
        tl.store(dh_ptr + own, tl.where(active, dh_total * z, dh), mask=tile_ok)
        if PERSISTENT:
            grid_barrier(counter_ptr + u * tl.num_programs(1) + pid_b, tl.num_programs(0))


def _config(kind, path, H, dtype, precision, interpreted, save=True):
    """Compile-time parameters and launch options of the `kind` ("fwd" or "bwd") kernel on one
    path at hidden size H (save=False: the inference forward). Every rule below was checked by
    an ahead-of-time compile for sm_80 and sm_90 (aot_configs): no local-memory spills, no stack
    frame, shared memory within 163 KB."""
    # tl.dot needs K >= 16; H is padded to a power of two and masked.
    h_pad = max(16, triton.next_power_of_2(H))
    # Above PERSISTENT_MAX_H the persistent path streams W_hh with per_step's 16-unit programs.
    stream = path == "persistent" and H > common.PERSISTENT_MAX_H
    if path == "per_step":
        block_h = PER_STEP_BLOCK_H
    elif path == "small" or interpreted:
        # The interpreter runs programs one after another: a barrier group of one program.
        block_h = h_pad
    else:
        block_h = common.STREAM_BLOCK_H if stream else common.PERSISTENT_BLOCK_H
    # W_hh stays resident (loaded once, kept in shared memory) except: per_step (one step per
    # launch); ieee fp32 dots, which lower to FMA with the whole K-wide operand in registers
    # (255 registers and spills from H=64 on); the backward from H=1024, whose three fp32
    # K-wide dGh tiles (3 x 64 KB a program) spill even at 8 warps; the forward of a 128-unit
    # block (small path), whose 3 x 128 x 128 W_hh prologue spills even at 16 warps. Those
    # stream W_hh in K chunks.
    resident = (path != "per_step" and not stream and precision != "ieee"
                and not (kind == "bwd" and h_pad >= 1024)
                and not (kind == "fwd" and block_h >= 128))
    if resident:
        block_k = h_pad
        # Forward: 8 warps from a 16 x 512 h tile on. Backward (3 dGh tiles): 8 warps from
        # H=128 on, 16 for a 128-unit block (8 spill 48 bytes on sm_90).
        if kind == "fwd":
            num_warps = 8 if h_pad >= 512 else 4
        else:
            num_warps = 16 if block_h >= 128 else 8 if h_pad >= 128 else 4
    else:
        # 32-wide chunks: 64 spill in fp32 at 16 units a program (255 registers); a whole-H
        # unit block (small path) takes 16-wide chunks and 8 warps.
        block_k = min(16 if block_h > PER_STEP_BLOCK_H else STREAM_BLOCK_K, h_pad)
        # The persistent loop streaming ieee dots: 4 warps left 24-32 bytes of stack on sm_90
        # (255 registers), 8 none.
        num_warps = 8 if block_h > PER_STEP_BLOCK_H or (stream and precision == "ieee") else 4
    num_stages = 1 if resident else 2
    if kind == "fwd" and not save and dtype == torch.float32:
        # Without the gate stores ptxas gives sm_90 builds a stack frame: 24 bytes at 4 warps
        # (fp32 H=128 persistent, 168 registers), 32 bytes for the whole-H streaming block at
        # 2 stages (fp32 ieee small path, 128 registers). 8 warps and 1 stage compile clean.
        if resident:
            num_warps = max(num_warps, 8)
        elif block_h > PER_STEP_BLOCK_H:
            num_stages = 1
    meta = dict(PERSISTENT=path == "persistent", RESIDENT=resident, BLOCK_B=BLOCK_B,
                BLOCK_H=block_h, BLOCK_K=block_k, INPUT_PRECISION=precision)
    return meta, dict(num_warps=num_warps, num_stages=num_stages)


def _run(kernel, pointers, T, B, H, dtype, lengths, reverse, **flags):
    """Launches `kernel` over all T steps on the path common.choose_path picks; `flags`: further
    constexprs (the forward's SAVE). The forward's persistent path also takes a batch with more
    tiles than SMs to spare: its programs loop over several tiles (common.persistent_grid)."""
    device = pointers[0].device
    num_sms = common.sm_count(device)
    forward = kernel is _gru_fwd_kernel
    path = common.choose_path(H, B, dtype, num_sms, common.shared_memory(device), tiles=forward)
    if path == "small" and H > common.SMALL_MAX_H[dtype]:
        raise ValueError(f"the small path holds all of W_hh in one program: H <= "
                         f"{common.SMALL_MAX_H[dtype]} for {dtype}, got H = {H}")
    kind = "fwd" if forward else "bwd"
    meta, options = _config(kind, path, H, dtype, common.input_precision(dtype),
                            common.interpreting(), flags.get("SAVE", True))
    grid = (triton.cdiv(H, meta["BLOCK_H"]), triton.cdiv(B, BLOCK_B))
    if B == 0:
        return
    # Any tensor stands in for an absent pointer (lengths None, the counters off the persistent
    # path): the constexpr flags keep the kernel from touching it.
    counters = pointers[0]
    pointers = [counters if p is None else p for p in pointers]
    tiles = ()  # the forward kernel's runtime tile count
    if forward:
        tiles, flags["TILED"] = (1,), False
    if path == "persistent":
        grid, count = common.persistent_launch(grid, num_sms, forward, device)
        if count > 1:
            tiles, flags["TILED"] = (count,), True
        counters = torch.zeros(T * grid[1], dtype=torch.int32, device=device)
        options = {**options, **common.persistent_options(maxnreg=flags.get("TILED", False))}
    args = [*pointers, counters, T, B, H]
    flags = dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, **flags)
    if path == "per_step":
        for s in range(T):
            kernel[grid](*args, s, 1, *tiles, **flags, **meta, **options)
    else:
        kernel[grid](*args, 0, T, *tiles, **flags, **meta, **options)


def _check_dtype(dtype):
    if dtype not in AOT_DTYPES:
        raise ValueError(f"the triton backend supports {AOT_DTYPES}, got {dtype}")


def gru_forward_triton(xg, w_hh, b_hh, h0, lengths, reverse, save=True):
    """gated_kernels::gru_forward on Triton. xg [T,B,3H], w_hh [3H,H], b_hh [3H], h0 [B,H],
    lengths [B] int64 or None (values in [1, T], not checked: that would sync the device).
    Returns y [T,B,H], h_n [B,H] (input dtype) and gates [T,B,4H] = r, z, n, W_hn h + b_hn
    (in the input's dtype, as the C++ kernel saves them: a bfloat16 model trains in half the
    memory), all 0 past a row's length; gates is None with save=False (inference).

        y, h_n, gates = gru_forward_triton(xg, w_hh, b_hh, h0, None, False)
    """
    T, B, H, _ = contract.check_args(spec.GRU, xg, (w_hh, b_hh), (h0,), lengths)
    _check_dtype(xg.dtype)
    y = common.new_output((T, B, H), xg.dtype, xg.device)
    gates = common.new_output((T, B, 4 * H), xg.dtype, xg.device) if save else None
    h = common.new_output((2, B, H), xg.dtype, xg.device)  # step s reads slot s % 2
    h[0].copy_(h0)
    # Without saving, y stands in for the gates pointer (SAVE=False never touches it).
    pointers = [xg.contiguous(), w_hh.contiguous(), b_hh.contiguous(), lengths, h, y,
                y if gates is None else gates]
    _run(_gru_fwd_kernel, pointers, T, B, H, xg.dtype, lengths, reverse, SAVE=save)
    return y, h[T % 2], gates


def gru_backward_triton(dy, dh_n, w_hh, h0, lengths, reverse, y, gates):
    """gated_kernels::gru_backward on Triton: the sequential loop in the kernel, then
    dW_hh = dGh^T h_prev and db_hh = sum dGh as torch ops over all T*B rows.
    dy [T,B,H], dh_n [B,H], y and gates from gru_forward_triton. Returns dxg [T,B,3H],
    dw_hh [3H,H], db_hh [3H], dh0 [B,H] in the dtype of h0.

        dxg, dw_hh, db_hh, dh0 = gru_backward_triton(dy, dh_n, w_hh, h0, None, False, y, gates)
    """
    T, B, H = y.shape
    dtype = h0.dtype
    _check_dtype(dtype)
    expected = {"dy": (dy, (T, B, H)), "dh_n": (dh_n, (B, H)), "w_hh": (w_hh, (3 * H, H)),
                "h0": (h0, (B, H)), "gates": (gates, (T, B, 4 * H))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    hprev = common.previous_hidden(y, h0, lengths, reverse)
    dxg = common.new_output((T, B, 3 * H), dtype, y.device)
    # dGh in the model's dtype, as the C++ kernel keeps it: computed in fp32, rounded as stored,
    # read by the next step's product in that dtype anyway (bf16 T=256 B=256 H=1024: 0.4 GB
    # where float32 took 0.8).
    dgh = common.new_output((T, B, 3 * H), dtype, y.device)
    dh = dh_n.to(torch.float32, copy=True).contiguous()
    w = w_hh.contiguous()
    pointers = [dy.contiguous(), w, lengths, hprev, gates.contiguous(), dh, dxg, dgh]
    _run(_gru_bwd_kernel, pointers, T, B, H, dtype, lengths, reverse)
    # The kernel leaves dh_carry of the last backward step; its dGh @ W_hh completes dh0.
    dh0 = dh.addmm(dgh[T - 1 if reverse else 0].float(), w.float())
    dgh_2d = dgh.view(T * B, 3 * H)
    dw_hh = dgh_2d.t().mm(hprev.view(T * B, H))  # float32 sums inside the product
    return dxg, dw_hh, dgh_2d.sum(0, dtype=torch.float32).to(dtype), dh0.to(dtype)


_TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_FWD_POINTERS = ("xg_ptr", "w_ptr", "b_ptr", "lengths_ptr", "h_ptr", "y_ptr", "gates_ptr")
_BWD_POINTERS = ("dy_ptr", "w_ptr", "lengths_ptr", "hprev_ptr", "gates_ptr", "dh_ptr", "dxg_ptr",
                 "dgh_ptr")


def _paths(H, dtype):
    """The paths the launchers accept at hidden size H (choose_path's pick, or a forced one)."""
    paths = ["small"] if H <= common.SMALL_MAX_H[dtype] else []
    return [*paths, "persistent", "per_step"]


def aot_configs():
    """Every (name, kernel, signature, constexprs, options) the launchers can pick for H in
    AOT_HIDDEN_SIZES and AOT_DTYPES (fp32 with tf32 and ieee dots), forward and backward, for
    triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget(...), options).
    Each is specialised with lengths and reverse on: the other variants only drop code."""
    configs = []
    for dtype in AOT_DTYPES:
        io = _TYPE_NAMES[dtype]
        ptr_types = {"xg_ptr": io, "w_ptr": io, "b_ptr": io, "lengths_ptr": "i64", "h_ptr": io,
                     "y_ptr": io, "gates_ptr": io, "dy_ptr": io, "hprev_ptr": io,
                     "dh_ptr": "fp32", "dxg_ptr": io, "dgh_ptr": io, "counter_ptr": "i32"}
        precisions = ("tf32", "ieee") if dtype == torch.float32 else ("tf32",)
        for precision, H in ((p, H) for p in precisions for H in AOT_HIDDEN_SIZES):
            for path in _paths(H, dtype):
                for kind, kernel, pointers in (("fwd", _gru_fwd_kernel, _FWD_POINTERS),
                                               ("bwd", _gru_bwd_kernel, _BWD_POINTERS)):
                    # The forward with and without the saved gates (training, inference) and,
                    # when persistent, with one batch tile a program or several (TILED).
                    saves = (True, False) if kind == "fwd" else (None,)
                    tilings = (False, True) if kind == "fwd" and path == "persistent" else (None,)
                    for save, tiled in itertools.product(saves, tilings):
                        meta, options = _config(kind, path, H, dtype, precision,
                                                interpreted=False, save=save is not False)
                        if path == "persistent":
                            options = {**options,
                                       **common.persistent_options(maxnreg=bool(tiled))}
                        constexprs = dict(REVERSE=True, HAS_LENGTHS=True, **meta)
                        name = f"gru_{kind}-{path}-H{H}-{io}-{precision}"
                        scalars = ("T", "B", "H", "step0", "n_steps")
                        if save is not None:
                            constexprs.update(SAVE=save, TILED=bool(tiled))
                            name += ("" if save else "-inference") + ("-tiled" if tiled else "")
                            scalars += ("tiles",)
                        signature = {p: "*" + ptr_types[p] for p in (*pointers, "counter_ptr")}
                        signature.update({a: "i32" for a in scalars})
                        signature.update({c: "constexpr" for c in constexprs})
                        configs.append((name, kernel, signature, constexprs, options))
    return configs
