"""LSTM recurrence in Triton: the kernels and launchers behind gated_kernels::lstm_forward and
lstm_backward (contract: ops.py, contract.py and the header of csrc/lstm.cpp).

One forward kernel and one backward kernel, each serving the three paths of common.choose_path:
- small: one program per batch tile owns all H units; the time loop runs inside the kernel and a
  CTA barrier orders the steps;
- persistent: program (p, q) owns units [p*BLOCK_H, (p+1)*BLOCK_H) of batch tile q, keeps its
  W_hh slice on chip across steps and meets the other programs of tile q at a grid barrier. A
  forward batch with more tiles than SMs to spare has each program loop over a group of tiles
  (TILED); above PERSISTENT_MAX_H the W_hh slice streams from L2 inside the one launch;
- per_step: the same kernel launched once per step (n_steps=1), W_hh streamed from L2 in
  BLOCK_K chunks; the state waits in global memory between launches.

Projection (w_hr, P < H) never enters a kernel. With m_t = o_t * tanh(c_t) and h_t = m_t W_hr^T,
the recurrent product is h_{t-1} W_hh^T = m_{t-1} (W_hh W_hr)^T, so the kernels run the plain
recurrence on m with W = W_hh W_hr [4H, H]; h0 enters once, as h0 W_hh^T added to a row's first
step. y = m W_hr^T is then one GEMM over all steps, and the backward maps dy through W_hr before
its loop. That keeps one grid barrier per step instead of two (write m, barrier, project,
barrier).
"""


import torch
import triton
import triton.language as tl

from gated_kernels import contract, spec
from gated_kernels.spec import CUDA_GATES_DTYPE
from gated_kernels.triton_kernels import common

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TL_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# per_step: W_hh streams from L2 in K chunks of 64 rows (8 KB per chunk at 16 units in fp16),
# pipelined over 3 stages.
PER_STEP_BLOCK_H = 16
PER_STEP_BLOCK_K = 64
# Backward: the dh product is (BLOCK_B x 4H) @ (4H x BLOCK_H) and tl.dot needs N >= 16, so a
# backward program owns 16 units. Its W slice (4H x 16) and the dG operand (16 x 4H, in the
# model's dtype) both sit in shared memory: 128 KB at H=512 in fp16 / bf16 and at H=256 in fp32
# (255 registers at 8 warps, no spill on sm_80 or sm_90), 256 KB at H=1024 in 16 bits or H=512
# in fp32, over the H100's 227 KB. Above these the backward runs per_step.
BWD_BLOCK_H = 16
BWD_PERSISTENT_MAX_H = {torch.float32: 256, torch.float16: 512, torch.bfloat16: 512}

@triton.jit
def _recurrent_dot(h_cur, w, w_base, lb, row_ok, col_n, col_ok, offs_k, H, running,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                   RESIDENT: tl.constexpr, PRECISION: tl.constexpr):
    """h_{t-1} W^T for one batch tile's rows (h_cur: their [., H] rows) and the program's
    4*BLOCK_H gate columns: the resident W slice `w`, or W streamed in BLOCK_K chunks. 0 where
    `running` is 0 (every row of the tile has ended), skipping the dot: in a batch sorted by
    length (a PackedSequence) the last tiles end first. The streamed dot skips by its loop
    bound: a branch around the loop spilled 8 bytes (float32 ieee, sm_80)."""
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=tl.float32)
    if not RESIDENT:
        for k0 in range(0, H * running, BLOCK_K):
            k = k0 + offs_k
            h_k = tl.load(h_cur + lb[:, None] * H + k[None, :],
                          mask=row_ok[:, None] & (k[None, :] < H), other=0.0)
            w_k = tl.load(w_base + col_n[None, :] * H + k[:, None],
                          mask=col_ok[None, :] & (k[:, None] < H), other=0.0)
            acc = tl.dot(h_k, w_k, acc, input_precision=PRECISION)
    elif running > 0:
        h_prev = tl.load(h_cur + lb[:, None] * H + offs_k[None, :],
                         mask=row_ok[:, None] & (offs_k[None, :] < H), other=0.0)
        acc = tl.dot(h_prev, w, input_precision=PRECISION)
    return acc


@triton.jit
def _preactivation(xg_ptr, h_cur, w, w_base, lb, row_ok, col_n, col_ok, offs_k, xg_tile, xg_ok,
                   rows, u0, H, running, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_K: tl.constexpr, RESIDENT: tl.constexpr, PRECISION: tl.constexpr):
    """G_t = xg_t + h_{t-1} W^T for one batch tile (rows: its [t*B + b] row index), fp32; the
    dot skipped where `running` is 0 (_recurrent_dot)."""
    acc = _recurrent_dot(h_cur, w, w_base, lb, row_ok, col_n, col_ok, offs_k, H, running,
                         BLOCK_B, BLOCK_H, BLOCK_K, RESIDENT, PRECISION)
    return acc + tl.load(xg_ptr + rows * 4 * H + u0 + xg_tile, mask=xg_ok,
                         other=0.0).to(tl.float32)


@triton.jit
def _cell_update(acc, c, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The gates of a pre-activation tile (columns interleaved i, f, g, o per unit) and the
    new state: (i, f, g, o, c_new, h_new)."""
    ig, fo = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_H, 2, 2)))
    i, g = tl.split(ig)
    f, o = tl.split(fo)
    i = common.sigmoid(i)
    f = common.sigmoid(f)
    g = common.tanh(g)
    o = common.sigmoid(o)
    c_new = f * c + i * g
    return i, f, g, o, c_new, o * common.tanh(c_new)


@triton.jit
def _store_step(h_cur, h_nxt, y_ptr, gates_ptr, c_all_ptr, rows, u0, unit_tile, gate_tile,
                tile_ok, on, i, f, g, o, c, h_new, H, SAVE: tl.constexpr):
    """One tile's step results: h_t (carried on inactive rows), y (0 there), and with SAVE the
    gates (0 there) and c_t."""
    h_old = tl.load(h_cur + u0 + unit_tile, mask=tile_ok, other=0.0)
    tl.store(h_nxt + unit_tile, tl.where(on, h_new.to(h_old.dtype), h_old), mask=tile_ok)
    out = rows * H + u0 + unit_tile
    tl.store(y_ptr + out, tl.where(on, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=tile_ok)
    if SAVE:
        tl.store(c_all_ptr + out, c, mask=tile_ok)
        gate = gates_ptr + rows * 4 * H + u0 + gate_tile
        tl.store(gate, tl.where(on, i, 0.0), mask=tile_ok)
        tl.store(gate + H, tl.where(on, f, 0.0), mask=tile_ok)
        tl.store(gate + 2 * H, tl.where(on, g, 0.0), mask=tile_ok)
        tl.store(gate + 3 * H, tl.where(on, o, 0.0), mask=tile_ok)


@triton.jit(do_not_specialize=common.NO_SPECIALIZE)
def _lstm_fwd_kernel(xg_ptr, w_ptr, g0_ptr, len_ptr, h_ptr, c_ptr, y_ptr, gates_ptr, c_all_ptr,
                     counter_ptr, T, B, H, s0, n_steps, reverse, tiles,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                     PATH: tl.constexpr, RESIDENT: tl.constexpr, HAS_G0: tl.constexpr,
                     PRECISION: tl.constexpr, SAVE: tl.constexpr, TILED: tl.constexpr):
    """Steps s0 .. s0+n_steps-1 of G_t = xg_t + h_{t-1} W^T, then the gates and the state.
    SAVE: store the gates and cell states backward reads (off for inference: 5H fp32 values a
    row and step fewer).
    RESIDENT: BLOCK_K covers H and the W slice is loaded once, before the loop; else W streams
    from L2 in BLOCK_K chunks every step (per_step, and ieee dots on every path).
    TILED (persistent path, a batch with more tiles than SMs to spare): the program loops over
    `tiles` batch tiles, q * P + program_id(1) for q < tiles (P programs along axis 1), every
    step, all on its W slice; their cell states wait in c_ptr between steps. Else the program
    owns batch tile program_id(1) and keeps its cell state in registers. (The single-tile loop
    is kept as it was: written as the tiled loop with one tile, 17 builds spilled 8-56 bytes.)
    h_ptr: [2, B, H] ping-pong state in the input dtype (step s reads s % 2); c_ptr: [B, H] fp32
    cell state, read at the start and written at the end of the launch.
    Addresses: int64 scalar bases per step plus int32 tile offsets, which stay live across the
    loop at one register per element instead of two."""
    u0 = tl.program_id(0).to(tl.int64) * BLOCK_H
    lb = tl.arange(0, BLOCK_B)
    lu = tl.arange(0, BLOCK_H)
    # Gate columns interleaved: column 4u + k of the dot is gate k (i, f, g, o) of unit u, so
    # one dot of N = 4*BLOCK_H yields every gate of the program's units.
    offs_n = tl.arange(0, 4 * BLOCK_H)
    col_n = (offs_n % 4) * H + offs_n // 4  # relative to unit u0
    col_ok = u0 + offs_n // 4 < H
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + u0 * H
    w = w_base  # a placeholder when W streams
    if RESIDENT:
        # W slice [H, 4*BLOCK_H], loaded once; Triton keeps it in shared memory for the loop.
        w = tl.load(w_base + col_n[None, :] * H + offs_k[:, None],
                    mask=col_ok[None, :] & (offs_k[:, None] < H), other=0.0)
    unit_tile = lb[:, None] * H + lu[None, :]  # [b, u] in a [., H] tensor
    gate_tile = lb[:, None] * 4 * H + lu[None, :]  # [b, u] of gate i in a [., 4H] tensor
    xg_tile = lb[:, None] * 4 * H + col_n[None, :]
    if TILED:
        for s in range(s0, s0 + n_steps):
            t = s + reverse * (T - 1 - 2 * s)
            for q in range(tiles):
                row0 = (q * tl.num_programs(1) + tl.program_id(1)).to(tl.int64) * BLOCK_B
                row_ok = row0 + lb < B
                tile_ok = row_ok[:, None] & (u0 + lu < H)[None, :]
                xg_ok = row_ok[:, None] & col_ok[None, :]
                length = tl.load(len_ptr + row0 + lb, mask=row_ok, other=0)
                state = row0 * H + u0
                c = tl.load(c_ptr + state + unit_tile, mask=tile_ok, other=0.0)
                h_cur = h_ptr + (s % 2) * B * H + row0 * H
                rows = t.to(tl.int64) * B + row0
                active = (t < length) & row_ok
                # A program loops over several tiles a step here: one whose rows have all ended
                # skips its dot, which shortens the step.
                running = tl.max(active.to(tl.int32), axis=0)
                acc = _preactivation(xg_ptr, h_cur, w, w_base, lb, row_ok, col_n, col_ok, offs_k,
                                     xg_tile, xg_ok, rows, u0, H, running, BLOCK_B, BLOCK_H,
                                     BLOCK_K, RESIDENT, PRECISION)
                if HAS_G0:  # h0 W_hh^T on a row's first step (0, or lengths[b]-1 in reverse)
                    first = active & (t == reverse * (length - 1))
                    acc += tl.load(g0_ptr + row0 * 4 * H + u0 + xg_tile,
                                   mask=xg_ok & first[:, None], other=0.0)
                i, f, g, o, c_new, h_new = _cell_update(acc, c, BLOCK_B, BLOCK_H)
                on = active[:, None]
                c = tl.where(on, c_new, c)
                tl.store(c_ptr + state + unit_tile, c, mask=tile_ok)
                h_nxt = h_ptr + ((s + 1) % 2) * B * H + state
                _store_step(h_cur, h_nxt, y_ptr, gates_ptr, c_all_ptr, rows, u0, unit_tile,
                            gate_tile, tile_ok, on, i, f, g, o, c, h_new, H, SAVE)
            common.end_step(counter_ptr, s, PATH)
    else:
        row0 = tl.program_id(1).to(tl.int64) * BLOCK_B
        row_ok = row0 + lb < B
        tile_ok = row_ok[:, None] & (u0 + lu < H)[None, :]
        length = tl.load(len_ptr + row0 + lb, mask=row_ok, other=0)
        first_t = reverse * (length - 1)  # a row's first step: 0, or lengths[b]-1 in reverse
        xg_ok = row_ok[:, None] & col_ok[None, :]
        state = row0 * H + u0
        c = tl.load(c_ptr + state + unit_tile, mask=tile_ok, other=0.0)
        if HAS_G0:
            # Loaded once: the values hold fewer registers across the loop than their 64-bit
            # addresses (the small path spilled 8 bytes at 16 warps on sm_90 with the addresses).
            g0 = tl.load(g0_ptr + row0 * 4 * H + u0 + xg_tile, mask=xg_ok, other=0.0)
        for s in range(s0, s0 + n_steps):
            t = s + reverse * (T - 1 - 2 * s)
            h_cur = h_ptr + (s % 2) * B * H + row0 * H
            h_nxt = h_ptr + ((s + 1) % 2) * B * H + state
            rows = t.to(tl.int64) * B + row0
            active = (t < length) & row_ok
            # One tile a program: the step waits for the slowest program anyway, so every dot
            # runs (`running` 1, a constant).
            acc = _preactivation(xg_ptr, h_cur, w, w_base, lb, row_ok, col_n, col_ok, offs_k,
                                 xg_tile, xg_ok, rows, u0, H, 1, BLOCK_B, BLOCK_H, BLOCK_K,
                                 RESIDENT, PRECISION)
            if HAS_G0:
                acc += tl.where((active & (t == first_t))[:, None], g0, 0.0)
            i, f, g, o, c_new, h_new = _cell_update(acc, c, BLOCK_B, BLOCK_H)
            on = active[:, None]
            c = tl.where(on, c_new, c)
            _store_step(h_cur, h_nxt, y_ptr, gates_ptr, c_all_ptr, rows, u0, unit_tile,
                        gate_tile, tile_ok, on, i, f, g, o, c, h_new, H, SAVE)
            common.end_step(counter_ptr, s, PATH)
        tl.store(c_ptr + state + unit_tile, c, mask=tile_ok)


@triton.jit(do_not_specialize=common.NO_SPECIALIZE)
def _lstm_bwd_kernel(dm_ptr, w_ptr, len_ptr, dmc_ptr, dc_ptr, c0_ptr, gates_ptr, c_all_ptr,
                     dg_ptr, counter_ptr, T, B, H, s0, n_steps, reverse,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                     PATH: tl.constexpr, RESIDENT: tl.constexpr, PRECISION: tl.constexpr):
    """Backward steps s0 .. s0+n_steps-1 (step s processes t = T-1-s, or t = s in reverse):
    dm = dG_{t'} W[:, units] on rows active at the previously processed step t' (else carried),
    plus dm_ptr[t] (dy, or dy W_hr) on active rows; then the pointwise gate gradients into
    dg_ptr [T, B, 4H] (the model's dtype; computed in fp32, rounded as stored). dmc_ptr /
    dc_ptr: [B, H] fp32 running dm and dc, read at the start and written at the end of the
    launch. RESIDENT and addresses as in _lstm_fwd_kernel."""
    row0 = tl.program_id(1).to(tl.int64) * BLOCK_B
    u0 = tl.program_id(0).to(tl.int64) * BLOCK_H
    lb = tl.arange(0, BLOCK_B)
    lu = tl.arange(0, BLOCK_H)
    row_ok = row0 + lb < B
    unit_ok = u0 + lu < H
    tile_ok = row_ok[:, None] & unit_ok[None, :]
    length = tl.load(len_ptr + row0 + lb, mask=row_ok, other=0)
    first_t = reverse * (length - 1)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + u0
    if RESIDENT:
        # W[:, units] over all 4H gate rows, loaded once.
        w = tl.load(w_base + offs_k[:, None] * H + lu[None, :],
                    mask=(offs_k[:, None] < 4 * H) & unit_ok[None, :], other=0.0)
    unit_tile = lb[:, None] * H + lu[None, :]
    gate_tile = lb[:, None] * 4 * H + lu[None, :]
    state = row0 * H + u0
    dm = tl.load(dmc_ptr + state + unit_tile, mask=tile_ok, other=0.0)
    dc = tl.load(dc_ptr + state + unit_tile, mask=tile_ok, other=0.0)
    for s in range(s0, s0 + n_steps):
        t = T - 1 - s + reverse * (2 * s - T + 1)
        t_pp = t + 1 - 2 * reverse  # processed just before t; its dG is complete
        dg_pp = dg_ptr + (t_pp.to(tl.int64) * B + row0) * 4 * H
        pp_ok = row_ok & (s > 0)
        if not RESIDENT:
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k0 in range(0, 4 * H, BLOCK_K):
                k = k0 + offs_k
                dg_k = tl.load(dg_pp + lb[:, None] * 4 * H + k[None, :],
                               mask=pp_ok[:, None] & (k[None, :] < 4 * H), other=0.0)
                w_k = tl.load(w_base + k[:, None] * H + lu[None, :],
                              mask=(k[:, None] < 4 * H) & unit_ok[None, :], other=0.0)
                acc = tl.dot(dg_k.to(w_k.dtype), w_k, acc, input_precision=PRECISION)
        else:
            dg_all = tl.load(dg_pp + lb[:, None] * 4 * H + offs_k[None, :],
                             mask=pp_ok[:, None] & (offs_k[None, :] < 4 * H), other=0.0)
            acc = tl.dot(dg_all.to(w.dtype), w, input_precision=PRECISION)
        dm = tl.where((pp_ok & (t_pp < length))[:, None], acc, dm)
        active = (t < length) & row_ok
        on = active[:, None]
        ld_ok = on & unit_ok[None, :]
        rows = t.to(tl.int64) * B + row0
        out = rows * H + u0 + unit_tile
        dm_t = dm + tl.load(dm_ptr + out, mask=ld_ok, other=0.0).to(tl.float32)
        gate = rows * 4 * H + u0 + gate_tile
        i = tl.load(gates_ptr + gate, mask=ld_ok, other=0.0).to(tl.float32)
        f = tl.load(gates_ptr + gate + H, mask=ld_ok, other=0.0).to(tl.float32)
        g = tl.load(gates_ptr + gate + 2 * H, mask=ld_ok, other=0.0).to(tl.float32)
        o = tl.load(gates_ptr + gate + 3 * H, mask=ld_ok, other=0.0).to(tl.float32)
        tc = common.tanh(tl.load(c_all_ptr + out, mask=ld_ok, other=0.0))
        # c_{t-1}: c0 on the row's first step, else the saved state of the step before t.
        is_first = (t == first_t)[:, None]
        rows_prev = (t - 1 + 2 * reverse).to(tl.int64) * B + row0
        c_prev = tl.load(c_all_ptr + rows_prev * H + u0 + unit_tile, mask=ld_ok & ~is_first,
                         other=0.0)
        c_prev += tl.load(c0_ptr + state + unit_tile, mask=ld_ok & is_first,
                          other=0.0).to(tl.float32)
        dcv = dc + dm_t * o * (1.0 - tc * tc)
        tl.store(dg_ptr + gate, tl.where(on, dcv * g * i * (1.0 - i), 0.0), mask=tile_ok)
        tl.store(dg_ptr + gate + H, tl.where(on, dcv * c_prev * f * (1.0 - f), 0.0),
                 mask=tile_ok)
        tl.store(dg_ptr + gate + 2 * H, tl.where(on, dcv * i * (1.0 - g * g), 0.0), mask=tile_ok)
        tl.store(dg_ptr + gate + 3 * H, tl.where(on, dm_t * tc * o * (1.0 - o), 0.0),
                 mask=tile_ok)
        dc = tl.where(on, dcv * f, dc)
        common.end_step(counter_ptr, s, PATH)
    tl.store(dmc_ptr + state + unit_tile, dm, mask=tile_ok)
    tl.store(dc_ptr + state + unit_tile, dc, mask=tile_ok)


def _block(n):
    """A dot dimension covering n: a power of 2, at least tl.dot's minimum of 16."""
    return max(16, triton.next_power_of_2(n))


def forward_config(path, H, precision):
    """Block sizes and launch options of the forward kernel on `path`. Every rule was checked by
    an ahead-of-time compile for sm_80 and sm_90 (lstm_aot, python -m ...triton_kernels.aot): no
    local memory, shared memory within the chip's limit."""
    full = _block(H)
    if path == "persistent" and H > common.PERSISTENT_MAX_H:
        # W_hh does not stay on chip: the per_step program, looped over the steps at a barrier.
        cfg = forward_config("per_step", H, precision)
        return dict(cfg, BLOCK_H=full) if common.interpreting() else cfg
    # The interpreter runs programs one after another: one program per barrier group.
    block_h = full if path == "small" or common.interpreting() else common.PERSISTENT_BLOCK_H
    if path == "per_step":
        block_h = PER_STEP_BLOCK_H
    if precision == "ieee":
        # An ieee dot lowers to FMAs with the whole K-wide operand in registers: a resident W
        # spilled 1.2-10 KB of stack on every path (even 152 bytes at H=128, 4 warps), so W
        # streams in K chunks of 16 (32 keep 255 registers and spill 16 bytes). The
        # whole-H block (small, 16 warps, 128 registers at most) runs unpipelined: 2 stages
        # spill 16-40 bytes on sm_80. per_step takes 8 warps (176 registers), persistent's
        # 8-unit block 4 (96-142).
        if path == "small":
            return dict(BLOCK_H=block_h, BLOCK_K=16, RESIDENT=False, num_warps=16, num_stages=1)
        return dict(BLOCK_H=block_h, BLOCK_K=16, RESIDENT=False,
                    num_warps=8 if path == "per_step" else 4, num_stages=2)
    if path == "small":
        # All of W (H x 4H) in one program; 16 warps: with 4 or 8 the fp16 H=64 kernel spills
        # (255 registers, 408 / 16 bytes of stack on sm_90).
        return dict(BLOCK_H=block_h, BLOCK_K=full, RESIDENT=True, num_warps=16, num_stages=1)
    if path == "persistent":
        # 8 warps from H=1024, where 4 spill (255 registers, 48 bytes of stack in fp16 on
        # sm_90); below, 8 warps spill 8 bytes at H=256 in fp16 where 4 do not.
        return dict(BLOCK_H=block_h, BLOCK_K=full, RESIDENT=True,
                    num_warps=4 if full <= 512 else 8, num_stages=1)
    # 8 warps: with 4, fp32 spills (64 bytes of stack on sm_90).
    return dict(BLOCK_H=block_h, BLOCK_K=PER_STEP_BLOCK_K, RESIDENT=False, num_warps=8,
                num_stages=3)


def backward_path(H, B, dtype, num_sms, shared_bytes=None):
    """common.choose_path, except that persistent runs per_step where the backward's W slice
    and dG operand do not fit shared memory (BWD_PERSISTENT_MAX_H)."""
    path = common.choose_path(H, B, dtype, num_sms, shared_bytes)
    if path == "persistent" and H > BWD_PERSISTENT_MAX_H[dtype]:
        return "per_step"
    return path


def backward_config(path, H, precision):
    """Block sizes and launch options of the backward kernel on `path` (checked as
    forward_config's)."""
    full = _block(H)
    block_h = full if path == "small" or common.interpreting() else BWD_BLOCK_H
    if path == "per_step":
        block_h = BWD_BLOCK_H
    if precision == "ieee":
        # As in forward_config: W streams in narrow K chunks of the 4H gate rows. The resident
        # W spilled 16 bytes at H=256 on sm_80, and per_step's 64-row chunks 16-24 bytes.
        # Whole-H block: 16-row chunks, 8 warps (218 registers). 16-unit blocks: 32-row chunks
        # and 8 warps (80 registers); 4 stop at 128 registers and spill 8 bytes on sm_80.
        if path == "small":
            return dict(BLOCK_H=block_h, BLOCK_K=16, RESIDENT=False, num_warps=8, num_stages=2)
        return dict(BLOCK_H=block_h, BLOCK_K=32, RESIDENT=False, num_warps=8, num_stages=2)
    if path == "small":
        # 8 warps: 16 (128 registers each) spill 8 bytes in fp16 and bf16 on sm_80, 4 spill
        # 128-160 bytes.
        return dict(BLOCK_H=block_h, BLOCK_K=4 * full, RESIDENT=True, num_warps=8, num_stages=1)
    if path == "persistent":
        # 4 warps up to H=128: 8 spill 8 bytes in fp16 and bf16 on sm_80 (ptxas stops at 128
        # registers there); 8 from H=256.
        return dict(BLOCK_H=block_h, BLOCK_K=4 * full, RESIDENT=True,
                    num_warps=4 if full <= 128 else 8, num_stages=1)
    return dict(BLOCK_H=block_h, BLOCK_K=PER_STEP_BLOCK_K, RESIDENT=False, num_warps=8,
                num_stages=3)


def _check_device_and_dtype(t):
    if t.dtype not in DTYPES:
        raise ValueError(f"the triton backend supports {DTYPES}, got {t.dtype}; "
                         "use backend='reference' for float64")
    if t.device.type != "cuda" and not common.interpreting():
        raise ValueError(f"the triton backend needs CUDA tensors (CPU tensors only under "
                         f"TRITON_INTERPRET=1), got device {t.device}")


def _fp32_copy(t):
    """A contiguous float32 copy: the kernels update their running state in place."""
    out = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    return out.copy_(t)


def _lengths(lengths, T, B, device):
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=device)
    return lengths.contiguous()


def _launch(kernel, path, cfg, T, B, H, reverse, args, constexprs, tiled=False):
    """Runs `kernel` over all T steps: one launch (small, persistent) or one per step. With
    `tiled` (the forward kernel), a persistent batch with more tiles than SMs to spare is split
    into groups whose programs loop over their tiles (common.persistent_grid)."""
    cfg = dict(cfg)
    block_h = cfg.pop("BLOCK_H")
    grid = (triton.cdiv(H, block_h), triton.cdiv(B, common.BLOCK_B))
    kw = dict(BLOCK_B=common.BLOCK_B, BLOCK_H=block_h, PATH=path, **constexprs, **cfg)
    extra = (1,) if tiled else ()  # the forward kernel's runtime tile count
    device = args[0].device
    if path == "per_step":
        for s in range(T):
            kernel[grid](*args, args[0], T, B, H, s, 1, int(reverse), *extra, **kw)
        return
    counters = args[0]  # unused without a grid barrier
    if path == "persistent":
        grid, tiles = common.persistent_launch(grid, common.sm_count(device), tiled, device)
        if tiles > 1:
            extra, kw["TILED"] = (tiles,), True
        # One zeroed int32 per (step, group of programs): no reset between steps
        # (kernel_design 1.1).
        counters = torch.zeros(T * grid[1], dtype=torch.int32, device=device)
        kw.update(common.persistent_options())
    kernel[grid](*args, counters, T, B, H, 0, T, int(reverse), *extra, **kw)


def lstm_forward_triton(xg, w_hh, w_hr, h0, c0, lengths, reverse, save=True):
    """gated_kernels::lstm_forward on CUDA tensors (CPU tensors under TRITON_INTERPRET=1).
    xg [T,B,4H], w_hh [4H,P], w_hr [P,H] or None, h0 [B,P], c0 [B,H], lengths [B] int64 or
    None -> y [T,B,P], h_n [B,P], c_n [B,H] in xg's dtype, gates [T,B,4H] (CUDA_GATES_DTYPE) and
    c_all [T,B,H] (float32); those two are None with save=False (inference)."""
    T, B, H, P = contract.check_args(spec.LSTM, xg, (w_hh, w_hr), (h0, c0), lengths)
    _check_device_and_dtype(xg)
    dtype, device = xg.dtype, xg.device
    path = common.choose_path(H, B, dtype, common.sm_count(device), common.shared_memory(device),
                              tiles=True)
    lens = _lengths(lengths, T, B, device)
    h = torch.empty(2, B, H, dtype=dtype, device=device)
    if w_hr is None:
        w, g0, m = w_hh.contiguous(), None, None
        h[0] = h0
    else:
        # The recurrence runs on m = o * tanh(c) (module docstring); the row's first step adds
        # h0 W_hh^T in fp32.
        w = (w_hh.float() @ w_hr.float()).to(dtype)
        g0 = h0.float() @ w_hh.float().T
        h[0] = 0
    c = _fp32_copy(c0)
    m = common.new_output((T, B, H), dtype, device)  # y itself without projection
    gates = common.new_output((T, B, 4 * H), CUDA_GATES_DTYPE[dtype], device) if save else None
    c_all = common.new_output((T, B, H), torch.float32, device) if save else None
    # Without saving, c stands in for the gates and c_all pointers (SAVE=False never uses them).
    args = (xg.contiguous(), w, xg if g0 is None else g0, lens, h, c, m,
            c if gates is None else gates, c if c_all is None else c_all)
    precision = common.input_precision(dtype)
    constexprs = dict(HAS_G0=g0 is not None, PRECISION=precision, SAVE=save, TILED=False)
    cfg = forward_config(path, H, precision)
    _launch(_lstm_fwd_kernel, path, cfg, T, B, H, reverse, args, constexprs, tiled=True)

    if w_hr is None:
        y = m
    else:
        y = common.new_output((T, B, P), dtype, device)
        torch.matmul(m, w_hr.T, out=y)  # y = 0 past a row's length, where m = 0
    batch = torch.arange(B, device=device)
    # A row's last step: lengths[b]-1, or 0 in reverse. The kernel carries c past it and leaves
    # the state after the last step processed in c.
    h_n = y[torch.zeros_like(lens) if reverse else lens - 1, batch]
    c_n = c.to(dtype)
    return y, h_n, c_n, gates, c_all


def _check_saved(name, t, shape, dtype):
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(f"{name} must have shape {shape} and dtype {dtype}, "
                         f"got {tuple(t.shape)} and {t.dtype}")


def lstm_backward_triton(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, reverse, y, gates, c_all):
    """gated_kernels::lstm_backward: gradients of lstm_forward_triton's y, h_n, c_n (dy, dh_n,
    dc_n) -> dxg [T,B,4H] (dG, the gradient of the pre-activation gates), dw_hh [4H,P], dw_hr
    [P,H] (an empty [0] tensor without w_hr), dh0 [B,P], dc0 [B,H], all in h0's dtype. The
    sequential dG loop runs in Triton; dw_hh = dG^T h_prev and dw_hr are GEMMs after it."""
    T, B, G = gates.shape
    H = G // 4
    xg_shape = h0.new_empty(1, 1, 1).expand(T, B, G)  # the checks read only shape and dtype
    _, _, _, P = contract.check_args(spec.LSTM, xg_shape, (w_hh, w_hr), (h0, c0), lengths)
    _check_device_and_dtype(h0)
    dtype, device = h0.dtype, h0.device
    _check_saved("dy", dy, (T, B, P), dtype)
    _check_saved("y", y, (T, B, P), dtype)
    _check_saved("dh_n", dh_n, (B, P), dtype)
    _check_saved("dc_n", dc_n, (B, H), dtype)
    _check_saved("gates", gates, (T, B, G), CUDA_GATES_DTYPE[dtype])
    _check_saved("c_all", c_all, (T, B, H), torch.float32)
    path = backward_path(H, B, dtype, common.sm_count(device), common.shared_memory(device))
    lens = _lengths(lengths, T, B, device)
    # Incoming gradients can be strided (batch_first outputs arrive transposed): the kernel and
    # the .view()s below need them dense.
    dy, dh_n, dc_n = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous()
    if w_hr is None:
        w, dm_in = w_hh.contiguous(), dy
        dm = _fp32_copy(dh_n)
    else:
        # dm = dh W_hr: the loop runs on dm with W = W_hh W_hr, like the forward on m.
        w = (w_hh.float() @ w_hr.float()).to(dtype)
        dm_in = dy @ w_hr
        dm = dh_n.float() @ w_hr.float()
    dc = _fp32_copy(dc_n)
    # dG in the model's dtype: the kernel rounds it once as it stores it (the dh product reads it
    # in that dtype anyway), and it is dxg itself, with no float32 copy beside it (bf16 T=256
    # B=256 H=1024: 0.5 GB where float32 dG and its bf16 copy took 1.6 GB).
    dg = common.new_output((T, B, G), dtype, device)
    args = (dm_in, w, lens, dm, dc, c0.contiguous(), gates.contiguous(), c_all.contiguous(), dg)
    precision = common.input_precision(dtype)
    cfg = backward_config(path, H, precision)
    _launch(_lstm_bwd_kernel, path, cfg, T, B, H, reverse, args, dict(PRECISION=precision))

    batch = torch.arange(B, device=device)
    first = lens - 1 if reverse else torch.zeros_like(lens)
    dg_first = dg[first, batch]  # [B, G]: each row's first step, whose h_{t-1} is h0
    dh0 = (dg_first.float() @ w_hh.float()).to(dtype)
    # dW_hh = sum_t dG_t^T h_{t-1}, with h_{t-1} read from y one step over (no copy of it): y is
    # 0 past a row's length, where dG is 0 too, and the rows' first steps add dG^T h0.
    dg_next, y_prev = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
    dw_hh = torch.addmm(dg_first.T @ h0, dg_next.reshape(-1, G).T, y_prev.reshape(-1, P))
    if w_hr is None:
        dw_hr = h0.new_empty(0)
    else:
        # dh_t = dy_t + dG_{t'} W_hh (t' the step after t in the forward, 0 past a row's
        # length), and dh_n on the row's last step. m = 0 past a row's length (o = 0 there).
        nxt = torch.zeros_like(dg)
        if reverse:
            nxt[1:] = dg[:-1]
        else:
            nxt[:-1] = dg[1:]
        dh = dy.float() + (nxt @ w_hh).float()
        dh[torch.zeros_like(lens) if reverse else lens - 1, batch] += dh_n.float()
        m = gates[..., 3 * H:].float() * torch.tanh(c_all.float())
        dw_hr = (dh.view(T * B, P).T @ m.view(T * B, H)).to(dtype)
    return dg, dw_hh, dw_hr, dh0, dc.to(dtype, copy=True)


def aot_configs(*args, **kwargs):
    """Every kernel configuration the launchers can pick, for the ahead-of-time compile test
    (lstm_aot.aot_configs; kept importable from here)."""
    from gated_kernels.triton_kernels import lstm_aot

    return lstm_aot.aot_configs(*args, **kwargs)
