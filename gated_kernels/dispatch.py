"""Which backend a module call runs when its backend is `auto`, shape by shape.

On the CPU `auto` is the C++ backend, but for the bfloat16 LSTM inference calls cpu_backend
names. On CUDA it is the Triton kernels only where they were measured faster than cuDNN, and
torch.nn's own code (the `torch` backend) elsewhere, so that converting a model never makes it
slower.

The measurements: the `gpu` suite on an H200 (132 SMs), our kernels forced against torch.nn as
users have it, each call timed from an idle GPU: T=256, one layer, B in {1, 16, 64, 128, 256},
H in {256, 512, 1024, 2048}, float16, bfloat16 and float32, inference and training
(benchmarks/results/2026-11-30-h200-f0ad29a-gpu_suite.md). What decides is how many batch
tiles each program of our persistent forward loops over a step (1 while (H/8) x (B/16)
programs fit one per SM; on the H200 2 at H=256 B=128, 4 at H=512 B=128 or H=1024 B=64):
cuDNN's time barely moves with B (about 3 ms a forward at H <= 1024 in bfloat16), ours grows
with the tiles. MAX_TILES keeps our kernels wherever every measured point of a (cell, mode,
dtype, H) at that many tiles or fewer ran at >= 1.05x, and, timed again with the GPU kept busy
ahead of each call (the GPU's work alone, as in a model whose other layers hide the launches;
benchmarks/results/2026-11-30-h200-d03e6a2-gpu_auto_triton.md), at >= 1.0x; everywhere else
torch.nn's code runs.
Left to torch.nn besides:
- float16 LSTMs where cuDNN runs its persistent kernel (cudnn/RNN.cpp `get_algo`: one layer,
  one direction, no projection, unpacked, H <= 1024 with H and I multiples of 128, B a multiple
  of 8 up to 128, on sm_80+ chips with >= 98 SMs but sm_86): 0.45x-0.91x at B=16 and 128.
  (At B=64 it ran slower than at B=128 and ours won, 1.14x-1.87x: too erratic to route on.)
- a forward that runs one launch a step (`per_step`: the unit blocks alone do not fit the SMs,
  e.g. H=1024 on chips with under 128 SMs), and H > 2048 (not measured);
- one step a call (cells, T=1): our single-step CUDA path is not built (issue 14), and one
  step through the sequence kernels adds launches torch.nn's fused cell does not make.
The `gpu` suite times our kernels forced and records this choice next to them.
"""

import functools

import torch

from gated_kernels import cpu, spec

# The measured H; a call takes the entry of the smallest one at or above its H.
MEASURED_H = (256, 512, 1024, 2048)
# (cell, training, dtype) -> the most batch tiles a forward program may loop over for our
# kernels to run, at each MEASURED_H (0: never). The H200 ratios that set them, at 1 / 2 / 4
# tiles (the first ratio below the 1.05x bar in brackets):
# - LSTM inference: 2.4x-3.7x / 2.0x-2.1x / 1.25x-1.5x at H <= 512 in 16 bits; float32
#   2.2x-2.6x / 1.5x-1.7x / [0.93x]; H=1024 1.3x-2.5x / - / [0.52x-0.75x]; H=2048 1.07x-1.32x
#   at one tile but float16 [0.96x at B=16].
# - LSTM training: H <= 256 1.8x-3.0x at one tile, 2 tiles [1.01x float32]; H=512 2.0x-2.2x
#   in 16 bits, float32 [1.00x at B=1]; H=1024 1.09x-1.14x in 16 bits but [0.92x-0.98x] on
#   the GPU's work alone (its backward launches a kernel a step), float32 [0.73x]; H=2048
#   [0.53x-0.66x].
# - GRU inference: H <= 512 1.5x-2.9x / 1.26x-1.64x in 16 bits (float32 1.09x at H=256,
#   [1.02x] at H=512), 4 tiles [0.64x-1.00x]; H=1024 1.5x-2.0x in 16 bits, float32 [0.98x];
#   H=2048 [0.30x-0.50x].
# - GRU training: H=256 2.2x-3.3x / 1.12x-1.24x / 1.26x-1.27x; H=512 1.5x-2.6x at one tile,
#   2 tiles 1.16x float32 but [0.94x-1.05x] in 16 bits; H >= 1024 [0.32x-0.99x].
MAX_TILES = {
    ("LSTM", False, torch.float16): (4, 4, 1, 0),
    ("LSTM", False, torch.bfloat16): (4, 4, 1, 1),
    ("LSTM", False, torch.float32): (2, 2, 1, 1),
    ("LSTM", True, torch.float16): (1, 1, 0, 0),
    ("LSTM", True, torch.bfloat16): (1, 1, 0, 0),
    ("LSTM", True, torch.float32): (1, 0, 0, 0),
    ("GRU", False, torch.float16): (2, 2, 1, 0),
    ("GRU", False, torch.bfloat16): (2, 2, 1, 0),
    ("GRU", False, torch.float32): (2, 1, 0, 0),
    ("GRU", True, torch.float16): (4, 1, 0, 0),
    ("GRU", True, torch.bfloat16): (4, 1, 0, 0),
    ("GRU", True, torch.float32): (4, 2, 0, 0),
}


def _cudnn_persistent_lstm(props, B, I, H, num_layers, bidirectional, proj, packed):
    """Whether cuDNN runs its persistent LSTM kernel for a float16 call (cudnn/RNN.cpp)."""
    return (props.major >= 8 and props.multi_processor_count >= 98
            and not (props.major == 8 and props.minor == 6)
            and num_layers == 1 and not bidirectional and not proj and not packed
            and H <= 1024 and H % 128 == 0 and I % 128 == 0 and B % 8 == 0 and B <= 128)


def cuda_backend(props, cell, dtype, T, B, I, H, num_layers=1, bidirectional=False, proj=False,
                 packed=False, training=False):
    """"triton" or "torch" for an `auto` call of `cell` ("LSTM" or "GRU") on a CUDA device with
    properties `props` (torch.cuda.get_device_properties)."""
    limits = MAX_TILES.get((cell, training, dtype))
    if T == 1 or H > MEASURED_H[-1] or limits is None:
        return "torch"
    if dtype == torch.float16 and cell == "LSTM" and _cudnn_persistent_lstm(
            props, B, I, H, num_layers, bidirectional, proj, packed):
        return "torch"
    path, tiles = _forward_path(props, dtype, B, H)
    limit = next(m for h, m in zip(MEASURED_H, limits) if H <= h)
    return "triton" if path != "per_step" and tiles <= limit else "torch"


def _forward_path(props, dtype, B, H):
    """(path, batch tiles a program loops over each step) of the Triton forward on `props`."""
    from gated_kernels.triton_kernels import common

    sms = props.multi_processor_count
    shared = getattr(props, "shared_memory_per_block_optin", None)
    path = common.choose_path(H, B, dtype, sms, shared, tiles=True)
    if path != "persistent":
        return path, 1
    block = common.PERSISTENT_BLOCK_H if H <= common.PERSISTENT_MAX_H else common.STREAM_BLOCK_H
    return path, common.persistent_grid(-(-H // block), -(-B // common.BLOCK_B), sms)[1]


def triton_paths(props, cell, dtype, B, H):
    """(forward path, backward path) the Triton kernels take on a device with `props`; a
    persistent forward whose programs loop over N batch tiles a step reads
    "persistent:N tiles"."""
    from gated_kernels.triton_kernels import common, lstm

    forward, tiles = _forward_path(props, dtype, B, H)
    forward = forward if tiles == 1 else f"{forward}:{tiles} tiles"
    sms = props.multi_processor_count
    shared = getattr(props, "shared_memory_per_block_optin", None)
    if cell == "LSTM":
        return forward, lstm.backward_path(H, B, dtype, sms, shared)
    return forward, common.choose_path(H, B, dtype, sms, shared)


def _torch_lstm_on_onednn_bf16():
    """Whether torch.nn's bfloat16 LSTM runs oneDNN's fused LSTM here: oneDNN enabled, on a CPU
    where ATen lets it run bfloat16 (AVX-512 or avx_ne_convert). Elsewhere torch.nn computes
    bfloat16 products in a generic loop (about 1.6 GFLOP/s on an AMD EPYC Zen 3), far slower
    than ours."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def _has_amx():
    """Whether the CPU has AMX bfloat16 tiles (Linux's flags; False where unreadable), on which
    our bfloat16 products at a few rows hold their own against oneDNN's fused LSTM. Read once:
    reading /proc/cpuinfo takes longer than a step."""
    return "amx_bf16" in cpu.isa_flags()


_NO_AVX512 = []  # the answer, once read


@torch.compiler.assume_constant_result  # compiled code takes the answer, not /proc/cpuinfo
def _no_avx512():
    """Whether the CPU lacks AVX-512 (our products then run on AVX2). Read once: this is asked
    on every float32 LSTM call."""
    if not _NO_AVX512:
        _NO_AVX512.append("avx512f" not in cpu.isa_flags())
    return _NO_AVX512[0]


def cpu_float32_backend(cell, T, B, H, proj=False, training=False, packed=False):
    """"cpp" or "torch" for an `auto` float32 call on the CPU. On a CPU without AVX-512, a
    float32 LSTM sequence without projection on padded input runs torch.nn's code (oneDNN's
    LSTM), whose products there ran about 1.5x the rate of ours (70 against 105 GFLOP/s on two
    cores at B=16, H=512), where ours measured slower on an AMD EPYC Zen 3 (AVX2, 2 threads,
    2026-12-03, T=100 unless noted):
    - Inference at B >= 16 with H >= 256, and at H >= 512 (the cpu suite, 0186ed9): ours read
      0.67x-0.72x at H=512, B in {16, 64} and 0.83x-0.92x at B=1, H=512; 0.80x-0.98x at B in
      {16, 64}, H=256 (0.94x at B=32 in CI's quick suite; 0.79x for two bidirectional layers
      at B=16), against 1.04x-1.32x at B=1, H=256 and 0.94x-1.21x at H=128.
    - Training at H >= 512 with B >= 4, and with B >= 2 below H=1024 (the cpu suite and the
      runner's custom shapes, 30bd460): ours read 0.80x-0.93x at H=512, B in {4, 8, 16, 64}
      (T=500 too; 0.84x for two bidirectional layers at B=4), 0.93x at B=2, H=512, 0.85x at
      B=16, H=768 and 0.96x-0.97x at H=1024, B in {4, 16}, against 1.02x-1.04x at B=1, H=512
      and 1.25x-1.34x at B in {1, 2}, H=1024.
    - Training at 256 <= H < 512 with 8 <= B <= 16: at H=256, T=100 ours read 0.89x-0.96x at
      B=16 in four runs and 0.97x at B=8 (two bidirectional layers at B=16: 0.92x, 0.96x and
      1.11x in three), though 1.09x-1.18x at B=16, T=500 (1.10x once at H=384); at B=32
      0.87x-1.11x in four runs and at B=64 1.04x-1.24x in five, which stay ours, as does
      H=128 (1.00x-1.63x). This machine's runs scatter: the same torch.nn code on both sides
      read 0.91x and 1.28x at H=512, T=500.
    - One step (T=1) in inference at B >= 32 with H >= 256 (the step suite, 2026-12-02 at
      49eeffa and 2026-12-03 at fc33b03, and custom shapes): ours read 0.97x-0.99x at B=32,
      H=256, 0.86x-0.97x at B=32, H=512, 0.84x-0.96x at B=64, H=512 and 0.94x-0.99x at B=64,
      H=1024, each in two runs, and at B=64, H=256 1.04x, 0.82x and 0.96x in three, B=32,
      H=1024 1.03x, 1.07x and 0.76x, against 1.00x-1.18x at B in {8, 16}, H=256, 1.08x at B=8,
      H=1024 and 1.2x-4.1x at B=1 (torch.nn's code reorders the weights on each call). At B=8,
      H=512 ours read 1.01x, 0.90x and 0.97x; one-step training stays ours (0.98x-7.6x).
    Our GRU there read 1.15x-1.80x in inference (H 256-512, B 16-64): torch.nn's GRU has no
    oneDNN path. Projections and packed input stay ours (torch.nn runs those outside oneDNN)."""
    if (cell != "LSTM" or proj or packed or not _no_avx512()
            or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)):
        return "cpp"
    if T == 1:
        return "torch" if not training and B >= 32 and H >= 256 else "cpp"
    if training and H >= 512:
        return "torch" if B >= 4 or (B >= 2 and H < 1024) else "cpp"
    if training:
        return "torch" if H >= 256 and 8 <= B <= 16 else "cpp"
    return "torch" if (B >= 16 and H >= 256) or H >= 512 else "cpp"


def cpu_backend(cell, dtype, T, B, H, num_layers=1, bidirectional=False, proj=False,
                training=False, packed=False):
    """"cpp" or "torch" for an `auto` call on the CPU. Where torch.nn's bfloat16 LSTM runs
    oneDNN's fused LSTM, a bfloat16 LSTM in inference without projection on padded (not
    packed) input runs torch.nn's code at the shapes below (one layer and direction unless
    said): its oneDNN primitive does each step in one fused call where ours runs a product and
    a pass. Through our module torch.nn's code then reads 1.00x-1.02x. A PackedSequence stays
    ours: torch.nn runs it outside oneDNN, one step at a time, and our rows stop at their
    lengths (the packed suite's bfloat16 LSTM inference, bidirectional, B 16-64, H 256-512:
    ours 1.39x-3.68x on an AMD EPYC Zen 4, 0db74cb).
    - One step (T=1) at B >= 64, 128 < H <= 256. On an AMD EPYC Zen 4, 2 threads, 2026-12-01, a
      step with the state passed, medians of 40 interleaved runs: at H=256, B in {8, 32, 64},
      ours 173-364 us against torch.nn's 166-323 (0.89x-0.96x). Since products by such weights
      may run on brgemm (csrc/cell.cpp, bf16_weight_matmul), on an AMD EPYC Zen 5 (2 threads,
      2026-12-02, the step suite's runner) ours read 1.21x-1.37x at B in {8, 16, 24, 32} and
      1.05x at B=48, where torch.nn's code read 0.96x-1.00x through our module, and both
      0.98x-1.00x at B=64. At H <= 128 our products run on brgemm (csrc/cell.cpp,
      kPairsMaxWeight) and ours wins: 57-140 us against 92-225 (1.2x-2.2x).
    - A sequence on a CPU with AMX (an Intel Xeon) at B >= 64, 128 < H <= 512: its cpu suite
      (2026-12-01) read ours 0.86x-0.95x at B=64, H in {256, 512}, T in {100, 500}, but
      1.06x-1.07x at H=128 and 1.00x-1.27x at B=16.
    - A sequence on a CPU without AMX at B >= 8, 128 < H <= 1024 (any layers and directions),
      and at B >= 64, H <= 128 (one layer, one direction). On an AMD EPYC Zen 5 (2 threads,
      2026-12-02, the runner at T=100 unless noted) ours read 0.83x-0.93x at B in {8, 16, 32},
      H in {256, 512} (T=500 too), 0.66x-0.88x at H=1024, B in {8, 16, 64}, and 0.87x-0.92x at
      B in {64, 128}, H in {64, 128} (T=500 too), against 1.02x-1.33x at B <= 4 and
      1.07x-1.12x at B in {8, 32}, H=128; its cpu suite (98b7ee7) read 0.84x-0.93x at B=64, H
      in {256, 512}. An AMD EPYC Zen 4's (2026-11-30) read 0.89x-0.99x at B=64 and 0.93x-1.01x
      at B=16, H in {256, 512}. Bidirectional on the Zen 5: ours 0.93x at B=16, H=256 and 0.84x
      at B=64, H=512; with two layers 0.83x at B=8, H=512, 0.96x at B=64, H=256 and 0.94x-1.11x
      in two runs at B=16, H=256, but 1.01x at B=64, H=128 (torch.nn's code 0.95x) and 1.21x at
      B=4.
    Everything else measured at parity or faster on our kernels."""
    if dtype == torch.float32:
        return cpu_float32_backend(cell, T, B, H, proj, training, packed)
    if (cell != "LSTM" or dtype != torch.bfloat16 or training or proj or packed
            or not _torch_lstm_on_onednn_bf16()):
        return "cpp"
    one_layer = num_layers == 1 and not bidirectional
    if T == 1:
        fused = one_layer and B >= 64 and 128 < H <= 256
    elif _has_amx():
        fused = one_layer and B >= 64 and 128 < H <= 512
    else:
        fused = (B >= 8 and 128 < H <= 1024) or (one_layer and B >= 64 and H <= 128)
    return "torch" if fused else "cpp"


def cpu_autocast_backend(cell, autocast_dtype, T, B, H, training):
    """"cpp" or "torch" for an `auto` call on the CPU of a float32 LSTMCell, GRUCell or one-step
    GRU under CPU autocast, where ours computes in float32 (gated_kernels.autocast) and torch.nn
    runs the products in the autocast dtype (linear is in autocast's lower-precision list): where
    the products dominate in training, torch.nn's code is faster. Inference stays ours, its large
    products in bfloat16 (cpu_autocast_products); the readings below for inference are of our
    float32 products, before that. The bounds are in the gate width N = G H (4H for the LSTM, 3H
    for the GRU), the products' output columns. Measured under bfloat16 autocast only, 2
    threads, the runner's cells and step suites (amp_bf16), ours against torch.nn:
    - AMD EPYC Zen 5 (2026-12-02): training 0.69x-0.93x at B=8, H=1024 and 0.78x-0.98x at B in
      {32, 64}, H in {512, 1024}; 0.94x-1.11x at B=8, H=512 and 0.94x for the LSTMCell at B=64,
      H=256 (the GRU's 1.08x-1.10x). Inference 0.84x-0.99x at B=64, H in {512, 1024}, 0.94x-1.04x
      at B=32, H=512, 0.98x for the LSTMCell at B=64, H=256 (the GRU's 1.18x-1.19x).
    - AMD EPYC Zen 4 (2026-12-02), whose float32 products run at about a third of its bfloat16
      ones (a [512, 1024] x [1024, 1024] product: 74 against 251 GFLOP/s): training at B=8,
      H=512 the LSTMCell 0.71x-0.87x, the GRUCell 0.83x-1.02x, the one-step GRU 0.78x-0.95x, and
      the LSTMCell at B=64, H=256 0.83x-0.89x (the GRU's 0.85x-0.99x); inference 0.85x-1.00x at
      B=32, H=512 and 0.75x-0.95x for the LSTMCell at B=64, H=256 (the GRU's 0.87x-1.01x).
    Routed (as training still is), those read 0.97x-1.00x on the Zen 5 and 0.92x-0.99x on the
    noisier Zen 4 (torch.nn's code through our module). Elsewhere ours read 1.0x-2.8x, but for the
    one-step GRU at B=64, H=256 on the Zen 4 (0.85x-0.99x in four runs, against 1.10x-1.18x on the
    Zen 5, so left to ours) and the LSTMCell at B=32, H=256 on the Zen 4 (0.86x-1.09x in four runs).
    Not measured on an Intel Xeon (AMX)."""
    if (autocast_dtype != torch.bfloat16 or T != 1 or not training
            or cell not in ("GRU", "LSTMCell", "GRUCell")):
        return "cpp"
    N = (4 if cell == "LSTMCell" else 3) * H
    return "torch" if (B >= 8 and N >= 1536) or (B >= 64 and N >= 1024) else "cpp"


def cpu_autocast_products(cell, B, H, training):
    """The dtype of the products of one float32 step (`cell`: "LSTMCell", "GRUCell", or "LSTM" /
    "GRU" with T=1) on the C++ backend under CPU bfloat16 autocast: torch.bfloat16 (the weights
    cast for the call, x and h rounded for the products as torch.nn's linear rounds them; sums,
    gates and state in float32) for inference with B N >= 32768 from B=32 (gate width N = G H:
    B=32, N >= 1024 or B >= 64, N >= 512), else torch.float32. There the products dominate, and
    they run about 3x faster in bfloat16 on an AMD EPYC Zen 4 (a [512, 1024] x [1024, 1024]
    product: 251 against 74 GFLOP/s, 2 threads); below, the weights' cast (each weight read once
    more) costs more than it saves. Ours against torch.nn under autocast (AMD EPYC Zen 4,
    2026-12-02, 2 threads, inference, medians of 9-15 interleaved rounds; float32 products, then
    bfloat16):
    - B=64: LSTMCell H=64 3.14x / 2.44x, H=128 1.46x-1.52x / 1.65x-1.71x, H=1024 0.86x / 1.05x;
      one-step LSTM H=128 0.80x / 1.02x; GRUCell H=192 1.33x / 1.53x, H=256 0.97x / 1.25x;
      one-step GRU H=512 0.86x / 1.07x;
    - B=32: LSTMCell H=64 2.66x / 2.11x, H=128 1.62x / 1.58x, H=192 1.41x / 1.40x, H=256 1.03x
      / 1.39x; GRUCell H=128 1.90x / 2.05x, H=256 1.33x / 1.18x, H=512 0.97x / 1.06x, H=1024
      0.89x / 1.06x; one-step GRU H=256 1.22x / 1.10x;
    - B=16: LSTMCell H=256 1.34x / 1.22x, H=1024 1.05x / 1.02x; GRUCell H=512 1.05x / 1.09x;
    - B <= 8: LSTMCell B=1, H=256 2.31x / 1.55x, B=8, H=256 1.55x / 1.19x, B=8, H=1024
      3.89x / 1.03x.
    Training stays in float32, its large products handed to torch.nn (cpu_autocast_backend):
    with bfloat16 products the LSTMCell and GRUCell read 0.90x-1.06x torch.nn there (B=8-64,
    H=256-512; both pay the weights' casts each call), no better than torch.nn's code."""
    N = spec.gate_width(cell, H)
    large = (B >= 32 and N >= 1024) or (B >= 64 and N >= 512)
    return torch.bfloat16 if large and not training else torch.float32


def exporting_onnx():
    """True inside torch.onnx.export (either exporter): the modules then run torch.nn's code,
    which the exporters turn into ONNX's LSTM and GRU operators. The cheap checks first: a call
    that is neither traced nor exported pays 0.2 us, not is_in_onnx_export's 1.4 us."""
    if torch.jit.is_tracing():  # the TorchScript exporter traces
        return torch.onnx.is_in_onnx_export()
    if not torch.compiler.is_exporting():
        return False
    # The dynamo exporter runs torch.export, non-strict first, then strict. Dynamo folds
    # torch.onnx.is_in_onnx_export() to False, so the exporter's own flag is read (the exporter
    # has imported its module by now).
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:  # a torch whose exporter keeps its flag elsewhere
        return torch.onnx.is_in_onnx_export()
    return bool(getattr(_flags, "_is_onnx_exporting", False)) or torch.onnx.is_in_onnx_export()

