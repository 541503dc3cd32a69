"""LayerNorm LSTM and GRU recurrence in Triton (issue 17): the kernels and launchers behind
gated_kernels::layernorm_{lstm,gru}_{forward,backward} and the inference operators on CUDA.
The contract (arguments, what is saved, zoneout, lengths) is csrc/layernorm.cpp's and
csrc/layernorm_backward.cpp's header; reference.py's recurrence is the oracle.

Every LayerNorm here reduces over one row: the 4H or 3H columns of h W_hh^T, the LSTM's H cell
units. So one program owns a tile of BLOCK_B rows and all their columns, and runs every step of
its rows inside one launch: no other program ever waits on it, and no grid barrier is needed
(the plain kernels' persistent path splits a row's units over programs, which LayerNorm would
turn into two more grid barriers a step). A step is a few passes over the row tile, each a loop
over column blocks, with what one pass hands the next in global memory (L1/L2-resident) behind a
CTA barrier:
- forward: the product h W_hh^T (W_hh streamed from L2 in BLOCK x BLOCK chunks), stored
  raw, with each row's mean and variance merged block by block (Chan et al.'s pairwise update:
  no E[x^2] - E[x]^2 cancellation); then the gates and the state unit block by unit block; the
  LSTM adds a pass for LN(c').
- backward: the gates' gradient (LSTM: two passes, through LN(c') first), then the gradient
  through LN(h W_hh^T) column block by column block, then dh_{t-1} = dgh W_hh.
Parallelism is the batch tiles, cdiv(B, 16) programs, each reading W_hh twice a step from L2
(forward: 0.5 MB a step at H=256 in bf16): the design suits H up to a few hundred, the sizes of
the models that use these cells; above that the W_hh stream bounds a step.

The LayerNorm parameters' gradients sum over rows and steps: each program adds its rows' terms
to its own row of a [programs, K] float32 buffer, summed after the launch (no atomics, so the
sums come out the same on every run). dW_hh is one product after the launch, over dgh saved
for all steps and h_{t-1} rebuilt from y.

Running state, saved tensors and every LayerNorm in float32 (the saved ones in
spec.saved_dtype, as the C++ operators save them); products on tensor cores in the model's
dtype (fp32 per torch.backends.cuda.matmul.allow_tf32, as the loop of torch ops these modules
replace multiplies).
"""

import inspect
import itertools

import torch
import triton
import triton.language as tl

from gated_kernels import contract, spec
from gated_kernels.reference import LN_EPS
from gated_kernels.triton_kernels import common

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Columns, K rows and units a block, and the launch: every kernel compiles without a stack
# frame at 32-wide blocks, 8 warps and up to 255 registers (one program a batch tile: no other
# program shares its SM). 64-wide blocks spilled 8-248 bytes (the LSTM's forward in 16 bits,
# every fp32 backward); 4 warps, or ptxas's own register cap of 128, 8-88 bytes (sm_90).
BLOCK = 32
NUM_WARPS = 8
_EPS = tl.constexpr(LN_EPS)  # a global a kernel reads must be a constexpr


def matmul_precision(dtype):
    """tl.dot precision of a float32 product: TF32 where torch's own float32 matmuls use it
    (torch.backends.cuda.matmul.allow_tf32, off by default), as the Python loop these modules
    replace multiplies."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@triton.jit
def _tile(len_ptr, B, BLOCK_B: tl.constexpr, BLOCK: tl.constexpr):
    """This program's rows (int64), which exist, a block's lanes, and the rows' lengths."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    return rows, row_ok, tl.arange(0, BLOCK), tl.load(len_ptr + rows, mask=row_ok, other=0)


@triton.jit
def _time_step(t, length, row_ok):
    """Which rows run step t: per row, and as a [rows, 1] mask."""
    active = (t < length) & row_ok
    return active, active[:, None]


@triton.jit
def _unit_block(u0, lane, rows, row_ok, H):
    """Units u0 + lane of the tile's rows: the units, which exist, and their offsets in a
    [B, H] state."""
    u = u0 + lane
    return u, row_ok[:, None] & (u < H)[None, :], rows[:, None] * H + u[None, :]


@triton.jit
def _dh_with_dy(dy_ptr, dh_ptr, step_h, state, u, ok, on):
    """A backward step's state gradient: the carried dh plus dy on the rows running (`on`)."""
    dy = tl.load(dy_ptr + step_h + u[None, :], mask=ok & on, other=0.0).to(tl.float32)
    return tl.load(dh_ptr + state, mask=ok, other=0.0) + dy


@triton.jit
def _row_stats(v, ok, mean, m2, count, width):
    """Chan et al.'s (1979) pairwise update of each row's (mean, m2, count) by the valid
    columns `ok` of a [rows, width] block: no E[x^2] - E[x]^2 cancellation."""
    block_mean = tl.sum(tl.where(ok, v, 0.0), axis=1) / width
    dev = tl.where(ok, v - block_mean[:, None], 0.0)
    total = count + width
    delta = block_mean - mean
    return (mean + delta * width / total,
            m2 + tl.sum(dev * dev, axis=1) + delta * delta * count * width / total, total)


@triton.jit
def _product_stats(h_ptr, w_ptr, raw_ptr, rows, row_ok, H, G, BLOCK_B: tl.constexpr,
                   BLOCK: tl.constexpr, PRECISION: tl.constexpr, NORM: tl.constexpr):
    """raw = h W^T for the tile's rows (h_ptr [B, H] float32, W [G, H]), stored at raw_ptr
    [B, G] float32; returns each row's mean and 1 / sqrt(var + eps) over its G columns (without
    NORM: 0 and 1, the identity's)."""
    lane = tl.arange(0, BLOCK)
    count = tl.zeros((BLOCK_B,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_B,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for n0 in range(0, G, BLOCK):
        n = n0 + lane
        acc = tl.zeros((BLOCK_B, BLOCK), dtype=tl.float32)
        for k0 in range(0, H, BLOCK):
            k = k0 + lane
            h_k = tl.load(h_ptr + rows[:, None] * H + k[None, :],
                          mask=row_ok[:, None] & (k < H)[None, :], other=0.0)
            w_k = tl.load(w_ptr + n[None, :] * H + k[:, None],
                          mask=(n < G)[None, :] & (k < H)[:, None], other=0.0)
            acc = tl.dot(h_k.to(w_k.dtype), w_k, acc, input_precision=PRECISION)
        ok = row_ok[:, None] & (n < G)[None, :]
        tl.store(raw_ptr + rows[:, None] * G + n[None, :], acc, mask=ok)
        if NORM:
            mean, m2, count = _row_stats(acc, ok, mean, m2, count,
                                         tl.minimum(G - n0, BLOCK).to(tl.float32))
    if not NORM:
        return mean, mean + 1.0
    return mean, 1.0 / tl.sqrt(m2 / G + _EPS)


@triton.jit
def _normalized(raw_ptr, at, ok, on, mean, rstd, lnw_ptr, lnb_ptr, cols, col_ok,
                SAVE: tl.constexpr, NORM: tl.constexpr):
    """LN of raw values at `at` (columns `cols` of their LayerNorm): the value with ln's weight
    and bias; with SAVE the normalised value is stored back (0 on rows not `on`). Without NORM
    the raw value itself (the identity in LN's place: the plain cells with zoneout), which
    stays where it is as what backward reads."""
    if not NORM:
        raw = tl.load(raw_ptr + at, mask=ok, other=0.0)
        if SAVE:
            tl.store(raw_ptr + at, tl.where(on, raw, 0.0), mask=ok)
        return raw
    norm = (tl.load(raw_ptr + at, mask=ok, other=0.0) - mean[:, None]) * rstd[:, None]
    if SAVE:
        tl.store(raw_ptr + at, tl.where(on, norm, 0.0), mask=ok)
    lnw = tl.load(lnw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    lnb = tl.load(lnb_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return norm * lnw[None, :] + lnb[None, :]


@triton.jit
def _zone(keep_ptr, at, ok, new, old, HAS_KEEP: tl.constexpr):
    """zoneout: keep old + (1 - keep) new, keep read at `at` (the identity without keep)."""
    if HAS_KEEP:
        keep = tl.load(keep_ptr + at, mask=ok, other=0.0).to(tl.float32)
        return new + keep * (old - new)
    return new


@triton.jit
def _split_zone(keep_ptr, at, ok, grad, HAS_KEEP: tl.constexpr):
    """A state's gradient through zoneout: (the new value's share, the old value's)."""
    if HAS_KEEP:
        keep = tl.load(keep_ptr + at, mask=ok, other=0.0).to(tl.float32)
        return grad * (1.0 - keep), grad * keep
    return grad, tl.zeros_like(grad)


@triton.jit
def _add_column_sums(sums_ptr, cols, values, col_ok):
    """Adds the column sums of `values` [rows, cols] to this program's partial sums."""
    at = sums_ptr + cols
    tl.store(at, tl.load(at, mask=col_ok, other=0.0) + tl.sum(values, axis=0), mask=col_ok)


@triton.jit
def _affine(norm_c, cw_ptr, cb_ptr, u, H, NORM: tl.constexpr):
    """LN(c'; ln_c) from the saved normalised c' (without NORM, the saved c' itself)."""
    if not NORM:
        return norm_c
    cw = tl.load(cw_ptr + u, mask=u < H, other=0.0).to(tl.float32)
    cb = tl.load(cb_ptr + u, mask=u < H, other=0.0).to(tl.float32)
    return norm_c * cw[None, :] + cb[None, :]


@triton.jit
def _gate(norm_ptr, step_g, add_ptr, add_at, k, H, u, ok, on, mean, rstd, lnw_ptr, lnb_ptr,
          SAVE: tl.constexpr, NORM: tl.constexpr):
    """Gate k's columns of LN(h W_hh^T; ln_hh) plus add_ptr's at add_at + columns (the LSTM:
    its row of xn; the GRU: b_hh)."""
    cols = k * H + u
    x = tl.load(add_ptr + add_at + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    return x + _normalized(norm_ptr, step_g + cols[None, :], ok, on, mean, rstd, lnw_ptr,
                           lnb_ptr, cols, u < H, SAVE, NORM)


@triton.jit(do_not_specialize=common.NO_SPECIALIZE)
def _layernorm_lstm_fwd_kernel(xn_ptr, w_ptr, lnw_ptr, lnb_ptr, cw_ptr, cb_ptr, len_ptr,
                               keep_h_ptr, keep_c_ptr, h_ptr, c_ptr, y_ptr, gates_ptr, norm_ptr,
                               c_all_ptr, norm_c_ptr, rstd_ptr, T, B, H, reverse,
                               BLOCK_B: tl.constexpr, BLOCK: tl.constexpr,
                               PRECISION: tl.constexpr, SAVE: tl.constexpr,
                               HAS_KEEP_H: tl.constexpr, HAS_KEEP_C: tl.constexpr,
                               NORM: tl.constexpr):
    """All T steps of one BLOCK_B-row tile (NORM: with LayerNorms, else the identity in their
    place, see _normalized). h_ptr / c_ptr [B, H] float32: the running state
    (h0, c0 in; h_n, c_n out). gates_ptr, norm_ptr [., B, 4H] and norm_c_ptr [., B, H] hold
    step t at slot t with SAVE (the saved tensors; norm_ptr holds the raw product until the
    gates' pass normalises it, norm_c_ptr the new cell until the last pass does), and are
    scratch at slot 0 without; c_all_ptr [T, B, H] and rstd_ptr [T, B, 2] are written with SAVE
    only."""
    rows, row_ok, lane, length = _tile(len_ptr, B, BLOCK_B, BLOCK)
    G = 4 * H
    for s in range(T):
        t = s + reverse * (T - 1 - 2 * s)
        slot = t if SAVE else 0
        active, on = _time_step(t, length, row_ok)
        step_g = (slot * B + rows)[:, None] * G  # a row's offset in a [., B, 4H] tensor
        step_h = (slot * B + rows)[:, None] * H
        xn_g = (t * B + rows)[:, None] * G
        out_h = (t * B + rows)[:, None] * H
        mean, rstd = _product_stats(h_ptr, w_ptr, norm_ptr + slot * B * G, rows, row_ok, H, G,
                                    BLOCK_B, BLOCK, PRECISION, NORM)
        tl.debug_barrier()
        # The gates and the new cell, a block of units at a time, and LN(c')'s statistics.
        count = tl.zeros((BLOCK_B,), dtype=tl.float32)
        c_mean = tl.zeros((BLOCK_B,), dtype=tl.float32)
        c_m2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for u0 in range(0, H, BLOCK):
            u, ok, state = _unit_block(u0, lane, rows, row_ok, H)
            i = common.sigmoid(_gate(norm_ptr, step_g, xn_ptr, xn_g, 0, H, u, ok, on, mean,
                                     rstd, lnw_ptr, lnb_ptr, SAVE, NORM))
            f = common.sigmoid(_gate(norm_ptr, step_g, xn_ptr, xn_g, 1, H, u, ok, on, mean,
                                     rstd, lnw_ptr, lnb_ptr, SAVE, NORM))
            g = common.tanh(_gate(norm_ptr, step_g, xn_ptr, xn_g, 2, H, u, ok, on, mean,
                                  rstd, lnw_ptr, lnb_ptr, SAVE, NORM))
            o = common.sigmoid(_gate(norm_ptr, step_g, xn_ptr, xn_g, 3, H, u, ok, on, mean,
                                     rstd, lnw_ptr, lnb_ptr, SAVE, NORM))
            c_old = tl.load(c_ptr + state, mask=ok, other=0.0)
            c_new = f * c_old + i * g
            c = tl.where(on, _zone(keep_c_ptr, out_h + u[None, :], ok, c_new, c_old, HAS_KEEP_C),
                         c_old)
            tl.store(c_ptr + state, c, mask=ok)
            if SAVE:
                tl.store(c_all_ptr + out_h + u[None, :], c, mask=ok)
            tl.store(norm_c_ptr + step_h + u[None, :], c_new, mask=ok)
            if NORM:
                c_mean, c_m2, count = _row_stats(c_new, ok, c_mean, c_m2, count,
                                                 tl.minimum(H - u0, BLOCK).to(tl.float32))
            at = gates_ptr + step_g + u[None, :]
            tl.store(at, tl.where(on, i, 0.0), mask=ok)
            tl.store(at + H, tl.where(on, f, 0.0), mask=ok)
            tl.store(at + 2 * H, tl.where(on, g, 0.0), mask=ok)
            tl.store(at + 3 * H, tl.where(on, o, 0.0), mask=ok)
        if NORM:
            rstd_c = 1.0 / tl.sqrt(c_m2 / H + _EPS)
        else:
            rstd_c = c_mean + 1.0
        if SAVE:
            tl.store(rstd_ptr + (t * B + rows) * 2, tl.where(active, rstd, 0.0), mask=row_ok)
            tl.store(rstd_ptr + (t * B + rows) * 2 + 1, tl.where(active, rstd_c, 0.0),
                     mask=row_ok)
        tl.debug_barrier()
        # h' = o tanh(LN(c'; ln_c)), zoned, and y.
        for u0 in range(0, H, BLOCK):
            u, ok, state = _unit_block(u0, lane, rows, row_ok, H)
            tanh_c = common.tanh(_normalized(norm_c_ptr, step_h + u[None, :], ok, on, c_mean,
                                             rstd_c, cw_ptr, cb_ptr, u, u < H, SAVE, NORM))
            o = tl.load(gates_ptr + step_g + 3 * H + u[None, :], mask=ok, other=0.0)
            h_old = tl.load(h_ptr + state, mask=ok, other=0.0)
            h = _zone(keep_h_ptr, out_h + u[None, :], ok, o * tanh_c, h_old, HAS_KEEP_H)
            tl.store(h_ptr + state, tl.where(on, h, h_old), mask=ok)
            tl.store(y_ptr + out_h + u[None, :], tl.where(on, h, 0.0).to(y_ptr.dtype.element_ty),
                     mask=ok)
        tl.debug_barrier()


@triton.jit(do_not_specialize=common.NO_SPECIALIZE)
def _layernorm_gru_fwd_kernel(xn_ptr, w_ptr, b_ptr, lnw_ptr, lnb_ptr, len_ptr, keep_h_ptr,
                              h_ptr, y_ptr, gates_ptr, norm_ptr, rstd_ptr, T, B, H, reverse,
                              BLOCK_B: tl.constexpr, BLOCK: tl.constexpr,
                              PRECISION: tl.constexpr, SAVE: tl.constexpr,
                              HAS_KEEP_H: tl.constexpr, NORM: tl.constexpr):
    """All T steps of one BLOCK_B-row tile (NORM: as the LSTM's). h_ptr [B, H] float32: the
    running state. norm_ptr [., B, 3H]: step t at slot t with SAVE (the raw product, then
    norm_hh), scratch at slot 0 without; gates_ptr [T, B, 4H] (r, z, n, R_n) and rstd_ptr
    [T, B, 1] with SAVE only."""
    rows, row_ok, lane, length = _tile(len_ptr, B, BLOCK_B, BLOCK)
    G = 3 * H
    for s in range(T):
        t = s + reverse * (T - 1 - 2 * s)
        slot = t if SAVE else 0
        active, on = _time_step(t, length, row_ok)
        step_g = (slot * B + rows)[:, None] * G
        xn_g = (t * B + rows)[:, None] * G
        out_h = (t * B + rows)[:, None] * H
        mean, rstd = _product_stats(h_ptr, w_ptr, norm_ptr + slot * B * G, rows, row_ok, H, G,
                                    BLOCK_B, BLOCK, PRECISION, NORM)
        tl.debug_barrier()
        for u0 in range(0, H, BLOCK):
            u, ok, state = _unit_block(u0, lane, rows, row_ok, H)
            # R = LN(h W_hh^T; ln_hh) + b_hh, gate by gate.
            r_r = _gate(norm_ptr, step_g, b_ptr, 0, 0, H, u, ok, on, mean, rstd, lnw_ptr,
                        lnb_ptr, SAVE, NORM)
            r_z = _gate(norm_ptr, step_g, b_ptr, 0, 1, H, u, ok, on, mean, rstd, lnw_ptr,
                        lnb_ptr, SAVE, NORM)
            r_n = _gate(norm_ptr, step_g, b_ptr, 0, 2, H, u, ok, on, mean, rstd, lnw_ptr,
                        lnb_ptr, SAVE, NORM)
            x = xn_ptr + xn_g + u[None, :]
            r = common.sigmoid(tl.load(x, mask=ok, other=0.0).to(tl.float32) + r_r)
            z = common.sigmoid(tl.load(x + H, mask=ok, other=0.0).to(tl.float32) + r_z)
            n = common.tanh(tl.load(x + 2 * H, mask=ok, other=0.0).to(tl.float32) + r * r_n)
            h_old = tl.load(h_ptr + state, mask=ok, other=0.0)
            h = _zone(keep_h_ptr, out_h + u[None, :], ok, n + z * (h_old - n), h_old,
                      HAS_KEEP_H)
            tl.store(h_ptr + state, tl.where(on, h, h_old), mask=ok)
            tl.store(y_ptr + out_h + u[None, :], tl.where(on, h, 0.0).to(y_ptr.dtype.element_ty),
                     mask=ok)
            if SAVE:
                at = gates_ptr + (t * B + rows)[:, None] * 4 * H + u[None, :]
                tl.store(at, tl.where(on, r, 0.0), mask=ok)
                tl.store(at + H, tl.where(on, z, 0.0), mask=ok)
                tl.store(at + 2 * H, tl.where(on, n, 0.0), mask=ok)
                tl.store(at + 3 * H, tl.where(on, r_n, 0.0), mask=ok)
        if SAVE:
            tl.store(rstd_ptr + t * B + rows, tl.where(active, rstd, 0.0), mask=row_ok)
        tl.debug_barrier()


@triton.jit
def _gate_gradient(dx, dr, k, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr, norm_ptr, lnw_ptr,
                   sums_ptr, b1, b2, NORM: tl.constexpr):
    """Gate k's gradients, 0 on rows not `on`: dx that of xn (stored in dxn at step_g), dr that
    of LN(h W_hh^T; ln_hh)'s output (kept in float32 in dg_ptr [B, G] for the LayerNorm's
    backward, and added to this program's sums of ln_hh's weight [0, G) and bias [G, 2G)
    gradients). Returns b1 + the rows' sums of dr w, b2 + those of dr w norm. Without NORM dr
    goes to dg_ptr alone (the GRU's sums of dR, b_hh's gradient, stay)."""
    cols = k * H + u
    col_ok = u < H
    dx = tl.where(on, dx, 0.0)
    dr = tl.where(on, dr, 0.0)
    tl.store(dxn_ptr + step_g + cols[None, :], dx.to(dxn_ptr.dtype.element_ty), mask=ok)
    tl.store(dg_ptr + rows[:, None] * G + cols[None, :], dr, mask=ok)
    if not NORM:
        _add_column_sums(sums_ptr + G, cols, dr, col_ok)
        return b1, b2
    norm = tl.load(norm_ptr + step_g + cols[None, :], mask=ok, other=0.0)
    _add_column_sums(sums_ptr, cols, dr * norm, col_ok)
    _add_column_sums(sums_ptr + G, cols, dr, col_ok)
    drw = dr * tl.load(lnw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return b1 + tl.sum(drw, axis=1), b2 + tl.sum(drw * norm, axis=1)


@triton.jit
def _through_layernorm(dg_ptr, norm_ptr, lnw_ptr, dgh_ptr, rows, row_ok, on, step_g, b1, b2,
                       rstd, G, BLOCK: tl.constexpr, NORM: tl.constexpr):
    """dgh = the gradient of h W_hh^T through LN (dg_ptr [B, G] the output's; b1, b2 the rows'
    sums of dg w and dg w norm): rstd (dg w - mean(dg w) - norm mean(dg w norm)), stored at
    step_g in dgh_ptr (0 on rows not `on`); without NORM dg itself."""
    lane = tl.arange(0, BLOCK)
    for n0 in range(0, G, BLOCK):
        n = n0 + lane
        ok = row_ok[:, None] & (n < G)[None, :]
        dgh = tl.load(dg_ptr + rows[:, None] * G + n[None, :], mask=ok, other=0.0)
        if NORM:
            norm = tl.load(norm_ptr + step_g + n[None, :], mask=ok, other=0.0)
            lnw = tl.load(lnw_ptr + n, mask=n < G, other=0.0).to(tl.float32)
            dgh = rstd[:, None] * (dgh * lnw[None, :] - (b1[:, None] + norm * b2[:, None]) / G)
        tl.store(dgh_ptr + step_g + n[None, :],
                 tl.where(on, dgh, 0.0).to(dgh_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _add_dgh_w(dgh_ptr, w_ptr, dh_ptr, rows, row_ok, step_g, H, G, BLOCK_B: tl.constexpr,
               BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """dh += dgh W_hh for the tile's rows (dgh at step_g, 0 on rows not running; W [G, H])."""
    lane = tl.arange(0, BLOCK)
    for u0 in range(0, H, BLOCK):
        u = u0 + lane
        acc = tl.zeros((BLOCK_B, BLOCK), dtype=tl.float32)
        for k0 in range(0, G, BLOCK):
            k = k0 + lane
            d_k = tl.load(dgh_ptr + step_g + k[None, :],
                          mask=row_ok[:, None] & (k < G)[None, :], other=0.0)
            w_k = tl.load(w_ptr + k[:, None] * H + u[None, :],
                          mask=(k < G)[:, None] & (u < H)[None, :], other=0.0)
            acc = tl.dot(d_k.to(w_k.dtype), w_k, acc, input_precision=PRECISION)
        at = dh_ptr + rows[:, None] * H + u[None, :]
        ok = row_ok[:, None] & (u < H)[None, :]
        tl.store(at, tl.load(at, mask=ok, other=0.0) + acc, mask=ok)


@triton.jit
def _to_previous_step(dg_ptr, norm_ptr, lnw_ptr, dgh_ptr, w_ptr, dh_ptr, rows, row_ok, on,
                      step_g, b1, b2, rstd, H, G, BLOCK_B: tl.constexpr, BLOCK: tl.constexpr,
                      PRECISION: tl.constexpr, NORM: tl.constexpr):
    """The end of a backward step, once the gates' pass has filled dg and b1, b2: the gradient
    through LN(h W_hh^T) into dgh, then dh += dgh W_hh; each pass behind a CTA barrier."""
    tl.debug_barrier()
    _through_layernorm(dg_ptr, norm_ptr, lnw_ptr, dgh_ptr, rows, row_ok, on, step_g, b1, b2,
                       rstd, G, BLOCK, NORM)
    tl.debug_barrier()
    _add_dgh_w(dgh_ptr, w_ptr, dh_ptr, rows, row_ok, step_g, H, G, BLOCK_B, BLOCK, PRECISION)
    tl.debug_barrier()


@triton.jit(do_not_specialize=common.NO_SPECIALIZE)
def _layernorm_lstm_bwd_kernel(dy_ptr, w_ptr, lnw_ptr, cw_ptr, cb_ptr, len_ptr, keep_h_ptr,
                               keep_c_ptr, c0_ptr, gates_ptr, norm_ptr, c_all_ptr, norm_c_ptr,
                               rstd_ptr, dh_ptr, dc_ptr, dl_ptr, dg_ptr, dxn_ptr, dgh_ptr,
                               sums_ptr, T, B, H, reverse, BLOCK_B: tl.constexpr,
                               BLOCK: tl.constexpr, PRECISION: tl.constexpr,
                               HAS_KEEP_H: tl.constexpr, HAS_KEEP_C: tl.constexpr,
                               NORM: tl.constexpr):
    """All T steps of one BLOCK_B-row tile backwards (NORM: as the forward's). dh_ptr / dc_ptr
    [B, H] float32: the state gradients (dh_n, dc_n in; dh0, dc0 out). dl_ptr [B, H] and
    dg_ptr [B, 4H] float32: scratch (the gradients of LN(c')'s and LN(h W_hh^T)'s outputs).
    dxn_ptr, dgh_ptr [T, B, 4H]: the gradients of xn and h W_hh^T. sums_ptr [programs,
    2G + 2H] float32 (zeros): this program's sums of the gradients of ln_hh's weight, its
    bias, ln_c's weight and its bias."""
    rows, row_ok, lane, length = _tile(len_ptr, B, BLOCK_B, BLOCK)
    G = 4 * H
    sums_ptr += tl.program_id(0).to(tl.int64) * (2 * G + 2 * H)
    for s in range(T):
        t = T - 1 - s + reverse * (2 * s + 1 - T)  # the forward's steps, last first
        prev_t = t - 1 + 2 * reverse
        has_prev = (prev_t >= 0) & (prev_t < T)
        on = _time_step(t, length, row_ok)[1]
        step_g = (t * B + rows)[:, None] * G
        step_h = (t * B + rows)[:, None] * H
        rstd_hh = tl.load(rstd_ptr + (t * B + rows) * 2, mask=row_ok, other=0.0)
        rstd_c = tl.load(rstd_ptr + (t * B + rows) * 2 + 1, mask=row_ok, other=0.0)
        # dy joins dh; the gradient of LN(c')'s output, d = dh' o (1 - tanh^2), into dl.
        c1 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        c2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for u0 in range(0, H, BLOCK):
            u, ok, state = _unit_block(u0, lane, rows, row_ok, H)
            dh = _dh_with_dy(dy_ptr, dh_ptr, step_h, state, u, ok, on)
            tl.store(dh_ptr + state, dh, mask=ok)
            dh_new, _ = _split_zone(keep_h_ptr, step_h + u[None, :], ok, dh, HAS_KEEP_H)
            norm_c = tl.load(norm_c_ptr + step_h + u[None, :], mask=ok, other=0.0)
            tanh_c = common.tanh(_affine(norm_c, cw_ptr, cb_ptr, u, H, NORM))
            o = tl.load(gates_ptr + step_g + 3 * H + u[None, :], mask=ok, other=0.0)
            d = tl.where(on, dh_new * o * (1.0 - tanh_c * tanh_c), 0.0)
            tl.store(dl_ptr + state, d, mask=ok)
            if NORM:
                cw = tl.load(cw_ptr + u, mask=u < H, other=0.0).to(tl.float32)[None, :]
                _add_column_sums(sums_ptr + 2 * G, u, d * norm_c, u < H)
                _add_column_sums(sums_ptr + 2 * G + H, u, d, u < H)
                c1 += tl.sum(d * cw, axis=1)
                c2 += tl.sum(d * cw * norm_c, axis=1)
        tl.debug_barrier()
        # The gates' gradients (dc' adds the part through LN(c')), the state's to step t-1.
        b1 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        b2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for u0 in range(0, H, BLOCK):
            u, ok, state = _unit_block(u0, lane, rows, row_ok, H)
            norm_c = tl.load(norm_c_ptr + step_h + u[None, :], mask=ok, other=0.0)
            d_ln = tl.load(dl_ptr + state, mask=ok, other=0.0)
            if NORM:  # through LN(c'; ln_c)
                cw = tl.load(cw_ptr + u, mask=u < H, other=0.0).to(tl.float32)[None, :]
                d_ln = rstd_c[:, None] * (d_ln * cw - (c1[:, None] + norm_c * c2[:, None]) / H)
            at = gates_ptr + step_g + u[None, :]
            i = tl.load(at, mask=ok, other=0.0)
            f = tl.load(at + H, mask=ok, other=0.0)
            g = tl.load(at + 2 * H, mask=ok, other=0.0)
            o = tl.load(at + 3 * H, mask=ok, other=0.0)
            dh = tl.load(dh_ptr + state, mask=ok, other=0.0)
            dh_new, dh_old = _split_zone(keep_h_ptr, step_h + u[None, :], ok, dh, HAS_KEEP_H)
            dc_in = tl.load(dc_ptr + state, mask=ok, other=0.0)
            dc_new, dc_old = _split_zone(keep_c_ptr, step_h + u[None, :], ok, dc_in, HAS_KEEP_C)
            dc = dc_new + d_ln
            # c_{t-1}: the cell state saved at the previous step (carried from c0 on rows not
            # yet started in reverse), c0 at the first.
            c_prev = (tl.load(c_all_ptr + (prev_t * B + rows)[:, None] * H + u[None, :],
                              mask=ok & has_prev, other=0.0)
                      + tl.load(c0_ptr + state, mask=ok & ((prev_t < 0) | (prev_t >= T)),
                                other=0.0).to(tl.float32))
            tanh_c = common.tanh(_affine(norm_c, cw_ptr, cb_ptr, u, H, NORM))
            d_i = dc * g * i * (1.0 - i)
            d_f = dc * c_prev * f * (1.0 - f)
            d_g = dc * i * (1.0 - g * g)
            d_o = dh_new * tanh_c * o * (1.0 - o)
            b1, b2 = _gate_gradient(d_i, d_i, 0, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr,
                                    norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            b1, b2 = _gate_gradient(d_f, d_f, 1, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr,
                                    norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            b1, b2 = _gate_gradient(d_g, d_g, 2, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr,
                                    norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            b1, b2 = _gate_gradient(d_o, d_o, 3, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr,
                                    norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            tl.store(dc_ptr + state, tl.where(on, dc * f + dc_old, dc_in), mask=ok)
            tl.store(dh_ptr + state, tl.where(on, dh_old, dh), mask=ok)
        _to_previous_step(dg_ptr, norm_ptr, lnw_ptr, dgh_ptr, w_ptr, dh_ptr, rows, row_ok, on,
                          step_g, b1, b2, rstd_hh, H, G, BLOCK_B, BLOCK, PRECISION, NORM)


@triton.jit(do_not_specialize=common.NO_SPECIALIZE)
def _layernorm_gru_bwd_kernel(dy_ptr, w_ptr, lnw_ptr, len_ptr, keep_h_ptr, hprev_ptr, gates_ptr,
                              norm_ptr, rstd_ptr, dh_ptr, dg_ptr, dxn_ptr, dgh_ptr, sums_ptr, T,
                              B, H, reverse, BLOCK_B: tl.constexpr, BLOCK: tl.constexpr,
                              PRECISION: tl.constexpr, HAS_KEEP_H: tl.constexpr,
                              NORM: tl.constexpr):
    """All T steps of one BLOCK_B-row tile backwards (NORM: as the forward's). dh_ptr [B, H]
    float32: the state gradient (dh_n in, dh0 out); hprev_ptr [T, B, H]: h_{t-1} of every
    step; dg_ptr [B, 3H] float32: scratch (the gradient of R); dxn_ptr, dgh_ptr [T, B, 3H];
    sums_ptr [programs, 2G] float32 (zeros): this program's sums of the gradients of ln_hh's
    weight and of R's bias (b_hh's and ln_hh's)."""
    rows, row_ok, lane, length = _tile(len_ptr, B, BLOCK_B, BLOCK)
    G = 3 * H
    sums_ptr += tl.program_id(0).to(tl.int64) * 2 * G
    for s in range(T):
        t = T - 1 - s + reverse * (2 * s + 1 - T)
        on = _time_step(t, length, row_ok)[1]
        step_g = (t * B + rows)[:, None] * G
        step_h = (t * B + rows)[:, None] * H
        b1 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        b2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for u0 in range(0, H, BLOCK):
            u, ok, state = _unit_block(u0, lane, rows, row_ok, H)
            dh = _dh_with_dy(dy_ptr, dh_ptr, step_h, state, u, ok, on)
            dh_new, dh_old = _split_zone(keep_h_ptr, step_h + u[None, :], ok, dh, HAS_KEEP_H)
            at = gates_ptr + (t * B + rows)[:, None] * 4 * H + u[None, :]
            r = tl.load(at, mask=ok, other=0.0)
            z = tl.load(at + H, mask=ok, other=0.0)
            n = tl.load(at + 2 * H, mask=ok, other=0.0)
            r_n = tl.load(at + 3 * H, mask=ok, other=0.0)
            h_prev = tl.load(hprev_ptr + step_h + u[None, :], mask=ok, other=0.0).to(tl.float32)
            d_n = dh_new * (1.0 - z) * (1.0 - n * n)
            d_r = d_n * r_n * r * (1.0 - r)
            d_z = dh_new * (h_prev - n) * z * (1.0 - z)
            b1, b2 = _gate_gradient(d_r, d_r, 0, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr,
                                    norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            b1, b2 = _gate_gradient(d_z, d_z, 1, H, G, u, ok, on, rows, step_g, dxn_ptr, dg_ptr,
                                    norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            b1, b2 = _gate_gradient(d_n, d_n * r, 2, H, G, u, ok, on, rows, step_g, dxn_ptr,
                                    dg_ptr, norm_ptr, lnw_ptr, sums_ptr, b1, b2, NORM)
            tl.store(dh_ptr + state, tl.where(on, dh_new * z + dh_old, dh), mask=ok)
        rstd = tl.load(rstd_ptr + t * B + rows, mask=row_ok, other=0.0)
        _to_previous_step(dg_ptr, norm_ptr, lnw_ptr, dgh_ptr, w_ptr, dh_ptr, rows, row_ok, on,
                          step_g, b1, b2, rstd, H, G, BLOCK_B, BLOCK, PRECISION, NORM)


def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise ValueError(f"the triton backend runs the LayerNorm cells in {DTYPES}, got {dtype}")


def _launch(kernel, B, dtype, *args, **flags):
    """One program per BLOCK_B-row tile, over contiguous tensors (any argument may be a strided
    view). The interpreter runs 16-wide blocks, so the tests' small H cross several blocks of
    every loop."""
    block = 16 if common.interpreting() else BLOCK
    args = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    kernel[(triton.cdiv(B, common.BLOCK_B),)](
        *args, BLOCK_B=common.BLOCK_B, BLOCK=block, PRECISION=matmul_precision(dtype),
        **_options(), **flags)


def _options():
    """Launch options: NUM_WARPS, and maxnreg where Triton's CUDA options have it (none in the
    interpreter). Not a cooperative launch: the programs never wait on each other, and a
    batch may have more tiles than SMs."""
    if common.interpreting():
        return {}
    from triton.backends.nvidia.compiler import CUDAOptions

    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    return {"num_warps": NUM_WARPS, **({"maxnreg": 255} if "maxnreg" in fields else {})}


def _lengths(lengths, T, B, device):
    return torch.full((B,), T, dtype=torch.int64, device=device) if lengths is None else lengths


def _or(t, fallback):
    """An optional argument (zoneout's keep, eval's an expanded scalar that _launch makes
    [T, B, H]; a LayerNorm's weight or bias), or `fallback` as a pointer the kernel never
    reads."""
    return fallback if t is None else t


def _state(t):
    return t.to(torch.float32, copy=True).contiguous()


def layernorm_lstm_forward(xn, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0,
                           lengths, reverse, keep_h=None, keep_c=None, save=True, like=None):
    """gated_kernels::layernorm_lstm_forward on Triton: y, h_n, c_n and, with save, gates,
    norm_hh, c_all, norm_c, rstd (float32), as csrc/layernorm.cpp returns them. like: an xn
    of the model's dtype for the checks, where xn itself is float32 (_inference)."""
    like = xn if like is None else like
    T, B, H = contract.check_layernorm_args(
        spec.LSTM, like, (w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias), (h0, c0),
        lengths, (keep_h, keep_c))
    dtype, device, f32 = like.dtype, xn.device, torch.float32
    _check_dtype(dtype)
    slots = T if save else 1
    y = common.new_output((T, B, H), dtype, device)
    gates, norm_hh = (common.new_output((slots, B, 4 * H), f32, device) for _ in range(2))
    norm_c = common.new_output((slots, B, H), f32, device)
    c_all = common.new_output((T, B, H), f32, device) if save else norm_c
    rstd = common.new_output((T, B, 2), f32, device) if save else norm_c
    h, c = _state(h0), _state(c0)
    _launch(_layernorm_lstm_fwd_kernel, B, dtype, xn, w_hh,
            *(_or(t, y) for t in (ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias)),
            _lengths(lengths, T, B, device), _or(keep_h, y), _or(keep_c, y), h, c, y, gates,
            norm_hh, c_all, norm_c, rstd, T, B, H, int(reverse), SAVE=save,
            HAS_KEEP_H=keep_h is not None, HAS_KEEP_C=keep_c is not None,
            NORM=ln_hh_weight is not None)
    outputs = (y, h.to(dtype), c.to(dtype))
    return (*outputs, gates, norm_hh, c_all, norm_c, rstd) if save else outputs


def layernorm_gru_forward(xn, w_hh, b_hh, ln_hh_weight, ln_hh_bias, h0, lengths, reverse,
                          keep_h=None, save=True, like=None):
    """gated_kernels::layernorm_gru_forward on Triton: y, h_n and, with save, gates (r, z, n,
    R_n), norm_hh, rstd (float32), as csrc/layernorm.cpp returns them. like: as the LSTM's."""
    like = xn if like is None else like
    T, B, H = contract.check_layernorm_args(spec.GRU, like, (w_hh, b_hh, ln_hh_weight, ln_hh_bias),
                                            (h0,), lengths, (keep_h,))
    dtype, device, f32 = like.dtype, xn.device, torch.float32
    _check_dtype(dtype)
    y = common.new_output((T, B, H), dtype, device)
    norm_hh = common.new_output((T if save else 1, B, 3 * H), f32, device)
    gates = common.new_output((T, B, 4 * H), f32, device) if save else norm_hh
    rstd = common.new_output((T, B, 1), f32, device) if save else norm_hh
    h = _state(h0)
    _launch(_layernorm_gru_fwd_kernel, B, dtype, xn, w_hh, b_hh, _or(ln_hh_weight, y),
            _or(ln_hh_bias, y), _lengths(lengths, T, B, device), _or(keep_h, y), h, y, gates,
            norm_hh, rstd, T, B, H, int(reverse), SAVE=save, HAS_KEEP_H=keep_h is not None,
            NORM=ln_hh_weight is not None)
    return (y, h.to(dtype), gates, norm_hh, rstd) if save else (y, h.to(dtype))


def _check_saved(device, **tensors):
    """A backward launcher's arguments, name=(tensor, shape, dtype): a saved tensor of another
    shape, dtype or device would be read as garbage by the kernel."""
    for name, (t, shape, dtype) in tensors.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype}, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} must be on {device}, got {t.device}")


def _layer_norms_to_check(dtype, **layer_norms):
    """_check_saved's entries for the LayerNorm arguments given (name=(tensor or None, size))."""
    return {name: (t, (size,), dtype) for name, (t, size) in layer_norms.items()
            if t is not None}


def _weight_gradient(dgh, hprev):
    """dW_hh = sum over steps and rows of dgh^T h_{t-1} (hprev): one product."""
    T, B, G = dgh.shape
    return dgh.view(T * B, G).t().mm(hprev.view(T * B, -1))


def layernorm_lstm_backward(dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0,
                            lengths, reverse, y, gates, norm_hh, c_all, norm_c, rstd,
                            keep_h=None, keep_c=None):
    """gated_kernels::layernorm_lstm_backward on Triton: dxn, dw_hh, dln_hh_weight,
    dln_hh_bias, dln_c_weight, dln_c_bias, dh0, dc0 in h0's dtype (without LayerNorm, every
    ln_* None, the four dln_* empty)."""
    T, B, H = y.shape
    G, dtype, device = 4 * H, h0.dtype, y.device
    _check_dtype(dtype)
    norm = contract.check_normalised(ln_hh_weight=ln_hh_weight, ln_c_weight=ln_c_weight,
                                     ln_c_bias=ln_c_bias)
    f32 = torch.float32
    _check_saved(device, dy=(dy, (T, B, H), dtype), dh_n=(dh_n, (B, H), dtype),
                 dc_n=(dc_n, (B, H), dtype), w_hh=(w_hh, (G, H), dtype),
                 h0=(h0, (B, H), dtype), c0=(c0, (B, H), dtype), gates=(gates, (T, B, G), f32),
                 norm_hh=(norm_hh, (T, B, G), f32), c_all=(c_all, (T, B, H), f32),
                 norm_c=(norm_c, (T, B, H), f32), rstd=(rstd, (T, B, 2), f32),
                 **_layer_norms_to_check(ln_hh_weight=(ln_hh_weight, G),
                                         ln_c_weight=(ln_c_weight, H), ln_c_bias=(ln_c_bias, H),
                                         dtype=dtype))
    dxn = common.new_output((T, B, G), dtype, device)
    # dgh in the model's dtype, as the plain kernels keep it (gru.py): the product with W_hh
    # reads it in that dtype anyway.
    dgh = common.new_output((T, B, G), dtype, device)
    dh, dc = _state(dh_n), _state(dc_n)
    dl = torch.empty(B, H, dtype=torch.float32, device=device)
    dg = torch.empty(B, G, dtype=torch.float32, device=device)
    sums = torch.zeros(triton.cdiv(B, common.BLOCK_B), 2 * G + 2 * H, dtype=torch.float32,
                       device=device)
    _launch(_layernorm_lstm_bwd_kernel, B, dtype, dy, w_hh,
            *(_or(t, dy) for t in (ln_hh_weight, ln_c_weight, ln_c_bias)),
            _lengths(lengths, T, B, device), _or(keep_h, dy), _or(keep_c, dy), c0, gates,
            norm_hh, c_all, norm_c, rstd, dh, dc, dl, dg, dxn, dgh, sums, T, B, H, int(reverse),
            HAS_KEEP_H=keep_h is not None, HAS_KEEP_C=keep_c is not None, NORM=norm)
    total = _layer_norm_gradients(sums, (G, G, H, H), dtype, norm)
    dw_hh = _weight_gradient(dgh, common.previous_hidden(y, h0, lengths, reverse))
    return dxn, dw_hh, *total, dh.to(dtype), dc.to(dtype)


def _layer_norm_gradients(sums, sizes, dtype, norm):
    """The programs' partial sums summed and cut into gradients of `sizes`; without LayerNorm
    (not `norm`) empty tensors, one each."""
    if not norm:
        return tuple(sums.new_empty(0, dtype=dtype) for _ in sizes)
    return tuple(t.to(dtype) for t in sums.sum(0).split(sizes))


def layernorm_gru_backward(dy, dh_n, w_hh, ln_hh_weight, h0, lengths, reverse, y, gates,
                           norm_hh, rstd, keep_h=None):
    """gated_kernels::layernorm_gru_backward on Triton: dxn, dw_hh, db_hh, dln_hh_weight, dh0
    in h0's dtype."""
    T, B, H = y.shape
    G, dtype, device = 3 * H, h0.dtype, y.device
    _check_dtype(dtype)
    f32 = torch.float32
    _check_saved(device, dy=(dy, (T, B, H), dtype), dh_n=(dh_n, (B, H), dtype),
                 w_hh=(w_hh, (G, H), dtype), h0=(h0, (B, H), dtype),
                 gates=(gates, (T, B, 4 * H), f32), norm_hh=(norm_hh, (T, B, G), f32),
                 rstd=(rstd, (T, B, 1), f32),
                 **_layer_norms_to_check(ln_hh_weight=(ln_hh_weight, G), dtype=dtype))
    dxn = common.new_output((T, B, G), dtype, device)
    dgh = common.new_output((T, B, G), dtype, device)
    dh = _state(dh_n)
    dg = torch.empty(B, G, dtype=torch.float32, device=device)
    sums = torch.zeros(triton.cdiv(B, common.BLOCK_B), 2 * G, dtype=torch.float32, device=device)
    hprev = common.previous_hidden(y, h0, lengths, reverse)
    norm = ln_hh_weight is not None
    _launch(_layernorm_gru_bwd_kernel, B, dtype, dy, w_hh, _or(ln_hh_weight, dy),
            _lengths(lengths, T, B, device), _or(keep_h, dy), hprev, gates, norm_hh, rstd, dh,
            dg, dxn, dgh, sums, T, B, H, int(reverse), HAS_KEEP_H=keep_h is not None,
            NORM=norm)
    # b_hh's gradient, the sums of dR, stands with or without LayerNorm.
    db_hh = sums[:, G:].sum(0).to(dtype)
    (dln_weight,) = _layer_norm_gradients(sums[:, :G], (G,), dtype, norm)
    return dxn, _weight_gradient(dgh, hprev), db_hh, dln_weight, dh.to(dtype)


def _inference(forward, cell):
    """The inference operator over `forward`: xn = LN(x W_ih^T; ln_ih) for all steps (ln_ih's
    bias holding the biases that add to it), in float32 as the C++ operators make it (a half
    type's xn rounded before the recurrence cost the float16 LSTM 2x PyTorch's own error), then
    the forward without saving."""

    def inference(x, w_ih, ln_ih_weight, ln_ih_bias, *args):
        like = contract.input_gates_like(x, w_ih, None, cell, spec.CELLS[cell].gates)
        contract.check_vectors_like(like, ln_ih_weight=ln_ih_weight, ln_ih_bias=ln_ih_bias)
        ln_hh_weight = args[1] if cell == "LSTM" else args[2]  # after w_hh (and b_hh)
        contract.check_normalised(ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight)
        f32 = torch.float32
        bias = None if ln_ih_bias is None else ln_ih_bias.to(f32)
        if ln_ih_weight is None:  # no LayerNorm: ln_ih_bias is the bias, where given
            xn = torch.nn.functional.linear(x.to(f32), w_ih.to(f32), bias)
        else:
            xn = torch.nn.functional.layer_norm(
                torch.nn.functional.linear(x.to(f32), w_ih.to(f32)), ln_ih_weight.shape,
                ln_ih_weight.to(f32), bias, LN_EPS)
        return forward(xn, *args, save=False, like=like)

    return inference


layernorm_lstm_inference = _inference(layernorm_lstm_forward, "LSTM")
layernorm_gru_inference = _inference(layernorm_gru_forward, "GRU")


_TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# What each pointer holds: the model's dtype ("io"), float32 or int64 lengths.
_FLOAT32_POINTERS = ("h_ptr", "c_ptr", "gates_ptr", "norm_ptr", "c_all_ptr", "norm_c_ptr",
                     "rstd_ptr", "dh_ptr", "dc_ptr", "dl_ptr", "dg_ptr", "sums_ptr")


def aot_configs():
    """Every (name, kernel, signature, constexprs, options) the launchers can launch, for
    triton.compile on sm_80 and sm_90 (aot.py): each kernel in each dtype and fp32 precision,
    the forward with and without saving (inference: xn in float32), with LayerNorm and without
    (the plain cells with zoneout), zoneout on (without it the kernels only drop code). The
    block sizes do not depend on H."""
    kernels = (("fwd", _layernorm_lstm_fwd_kernel), ("fwd", _layernorm_gru_fwd_kernel),
               ("bwd", _layernorm_lstm_bwd_kernel), ("bwd", _layernorm_gru_bwd_kernel))
    configs = []
    for dtype in DTYPES:
        io = _TYPE_NAMES[dtype]
        for precision in ("tf32", "ieee") if dtype == torch.float32 else ("tf32",):
            for kind, kernel in kernels:
                for save, norm in itertools.product(
                        (True, False) if kind == "fwd" else (None,), (True, False)):
                    params = inspect.signature(kernel.fn).parameters
                    signature = {}
                    for name in params:
                        if name.endswith("_ptr"):
                            kind_of = ("fp32" if name in _FLOAT32_POINTERS
                                       or (name == "xn_ptr" and save is False)
                                       else "i64" if name == "len_ptr" else io)
                            signature[name] = "*" + kind_of
                        elif name in ("T", "B", "H", "reverse"):
                            signature[name] = "i32"
                        else:
                            signature[name] = "constexpr"
                    constexprs = {"BLOCK_B": common.BLOCK_B, "BLOCK": BLOCK,
                                  "PRECISION": precision, "HAS_KEEP_H": True, "NORM": norm}
                    if "HAS_KEEP_C" in params:
                        constexprs["HAS_KEEP_C"] = True
                    if save is not None:
                        constexprs["SAVE"] = save
                    cell = "lstm" if "lstm" in kernel.fn.__name__ else "gru"
                    name = f"layernorm_{cell}_{kind}-{io}-{precision}"
                    name += ("-inference" if save is False else "") + ("" if norm else "-plain")
                    configs.append((name, kernel, signature, constexprs, _options()))
    return configs
