"""The LSTM kernel configurations the launchers can pick, for triton_kernels.aot (the ahead-of-time
compile test): the same paths as lstm_forward_triton / lstm_backward_triton choose on each
target, with the block sizes and launch options of lstm.forward_config / backward_config."""

import itertools

import torch

from gated_kernels.spec import CUDA_GATES_DTYPE
from gated_kernels.triton_kernels import common
from gated_kernels.triton_kernels.lstm import (
    DTYPES,
    TL_DTYPES,
    _lstm_bwd_kernel,
    _lstm_fwd_kernel,
    backward_config,
    backward_path,
    forward_config,
)

HIDDEN_SIZES = (64, 128, 256, 512, 768, 1024, 2048)


def _aot_entry(kernel, path, dtype, cfg, pointers, constexprs):
    """One aot_configs() row: the signature as the launcher's tensors produce it."""
    cfg = dict(cfg)
    options = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
    if path == "persistent":
        options.update(common.persistent_options())
    scalars = ("T", "B", "H", "s0", "n_steps", "reverse")
    scalars += ("tiles",) if kernel is _lstm_fwd_kernel else ()
    constexprs = dict(BLOCK_B=common.BLOCK_B, PATH=path, **cfg, **constexprs)
    signature = dict(pointers, **{n: "i32" for n in scalars},
                     **{n: "constexpr" for n in constexprs})
    flags = "-".join(f"{k}{v}" for k, v in constexprs.items() if k not in ("BLOCK_B", "PATH"))
    name = f"{kernel.__name__}-{path}-{TL_DTYPES[dtype]}-{flags}"
    return name, kernel, signature, constexprs, options


def _paths(choose, H, dtype, shared_bytes):
    """The paths `choose` (common.choose_path or lstm.backward_path) picks at hidden size H on a
    chip with `shared_bytes` per program: with room for one persistent program per unit block
    (batch 1, unlimited SMs), and without (a batch too large for the SMs)."""
    return {choose(H, 1, dtype, 1 << 30, shared_bytes),
            choose(H, 1 << 20, dtype, 1, shared_bytes)}


def _pointers(kind, dtype, path, has_g0=False):
    dt, gates = TL_DTYPES[dtype], TL_DTYPES[CUDA_GATES_DTYPE[dtype]]
    counter = "*i32" if path == "persistent" else f"*{dt}"
    if kind == "fwd":
        return dict(xg_ptr=f"*{dt}", w_ptr=f"*{dt}", g0_ptr="*fp32" if has_g0 else f"*{dt}",
                    len_ptr="*i64", h_ptr=f"*{dt}", c_ptr="*fp32", y_ptr=f"*{dt}",
                    gates_ptr=f"*{gates}", c_all_ptr="*fp32", counter_ptr=counter)
    return dict(dm_ptr=f"*{dt}", w_ptr=f"*{dt}", len_ptr="*i64", dmc_ptr="*fp32",
                dc_ptr="*fp32", c0_ptr=f"*{dt}", gates_ptr=f"*{gates}", c_all_ptr="*fp32",
                dg_ptr=f"*{dt}", counter_ptr=counter)


def aot_configs(hidden_sizes=HIDDEN_SIZES, dtypes=DTYPES):
    """(name, kernel, signature, constexprs, options[, targets]) for every kernel configuration
    the launchers can pick at these hidden sizes (any batch size, SM count, projection and
    input_precision), for triton.compile(ASTSource(kernel, signature, constexprs), target,
    options) ahead of time. Sizes that only change runtime arguments give one entry. `targets`
    (names of aot.TARGETS) is there when only some chips pick the configuration: fp32
    persistent above H=512 needs more shared memory than an A100 gives a program."""
    from gated_kernels.triton_kernels.aot import TARGETS

    entries, targets = {}, {}

    def add(entry, target):
        entries[entry[0]] = entry
        targets.setdefault(entry[0], set()).add(target)

    for target, (_, shared_bytes) in TARGETS.items():
        for dtype in dtypes:
            precisions = ("tf32", "ieee") if dtype == torch.float32 else ("tf32",)
            for H in hidden_sizes:
                for precision in precisions:
                    for path in sorted(_paths(common.choose_path, H, dtype, shared_bytes)):
                        cfg = forward_config(path, H, precision)
                        # Persistent: one batch tile a program, or several (TILED).
                        tilings = (False, True) if path == "persistent" else (False,)
                        for has_g0, save, tiled in itertools.product((False, True), (False, True),
                                                                     tilings):
                            add(_aot_entry(_lstm_fwd_kernel, path, dtype, cfg,
                                           _pointers("fwd", dtype, path, has_g0),
                                           dict(HAS_G0=has_g0, PRECISION=precision,
                                                SAVE=save, TILED=tiled)), target)
                    for path in sorted(_paths(backward_path, H, dtype, shared_bytes)):
                        cfg = backward_config(path, H, precision)
                        add(_aot_entry(_lstm_bwd_kernel, path, dtype, cfg,
                                       _pointers("bwd", dtype, path), dict(PRECISION=precision)),
                            target)
    every = set(TARGETS)
    return [entry if targets[name] == every else (*entry, tuple(sorted(targets[name])))
            for name, entry in entries.items()]
