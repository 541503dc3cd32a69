"""Which backend a module call runs when its backend is `auto`, shape by shape.

On the CPU `auto` is the C++ backend, but for the one-step calls cpu_backend names. On CUDA it
is the Triton kernels only where they were measured faster than cuDNN, and torch.nn's own code
(the `torch` backend) elsewhere, so that converting a model never makes it slower. The
measurements: the `gpu` suite on an H200, T=256,
B in {1, 16, 64, 256}, H in {256, 512, 1024}, bf16 and fp32, our kernels forced
(benchmarks/results/2026-11-26-h200-331edbb-gpu_suite.md):
- inference: 1.06x-3.92x wherever the forward kernel kept W_hh on chip with one batch tile a
  program (the `small` and `persistent` paths); 0.27x-0.79x wherever it ran one launch per step
  (`per_step`: more than one program per SM, i.e. B > 16 at H=1024, B > 32 at H=512, B > 64 at
  H=256);
- training: 1.42x-2.94x where the backward kept W on chip too and H <= 512 (the LSTM's
  backward did so up to H=256, the GRU's up to 1024); 0.74x-1.07x for the GRU at H=1024 and
  the LSTM with a per-step backward (H >= 512).
Not measured, so left to torch.nn:
- what came after that run: the persistent forward looping over several batch tiles a program,
  the 16-bit LSTM's persistent backward at H=512, W_hh streamed inside one launch above
  H=1024 (and H=2048 itself);
- float16 LSTMs where cuDNN runs its persistent kernel (cudnn/RNN.cpp `get_algo`: one layer,
  one direction, no projection, unpacked, H <= 1024 with H and I multiples of 128, B a multiple
  of 8 up to 128, on sm_80+ chips with >= 98 SMs but sm_86): about 2 us a step (FlashRNN's
  H100 figures, reference/gpu_large_batch.md) against our persistent kernel's fixed ~4 us;
- one step a call (cells, T=1): our single-step CUDA path is not built (issue 14), and one
  step through the sequence kernels adds launches torch.nn's fused cell does not make.
The `gpu` suite times our kernels forced and records this choice next to them.
"""

import torch

# Training runs our kernels up to this H: measured above for the GRU (H=1024: 0.91x-1.07x) and,
# for the LSTM, up to where its backward was persistent then (H=256; the 16-bit persistent
# backward at H=512 came later and is not measured yet).
TRAINING_MAX_H = {"LSTM": 256, "GRU": 512}
# The largest H measured (the persistent path streaming W_hh at H=2048 is not).
MEASURED_MAX_H = 1024


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
    if T == 1:
        return "torch"
    if dtype == torch.float16 and cell == "LSTM" and _cudnn_persistent_lstm(
            props, B, I, H, num_layers, bidirectional, proj, packed):
        return "torch"
    if H > MEASURED_MAX_H:
        return "torch"
    forward, backward = triton_paths(props, cell, dtype, B, H)
    on_chip = ("small", "persistent")  # a persistent forward looping over tiles: not measured
    if forward not in on_chip:
        return "torch"
    if training and (backward not in on_chip or H > TRAINING_MAX_H[cell]):
        return "torch"
    return "triton"


def triton_paths(props, cell, dtype, B, H):
    """(forward path, backward path) the Triton kernels take on a device with `props`; a
    persistent forward whose programs loop over N batch tiles a step reads
    "persistent:N tiles"."""
    from gated_kernels.triton_kernels import common, lstm

    sms = props.multi_processor_count
    shared = getattr(props, "shared_memory_per_block_optin", None)
    forward = common.choose_path(H, B, dtype, sms, shared, tiles=True)
    if forward == "persistent":
        block = common.PERSISTENT_BLOCK_H if H <= common.PERSISTENT_MAX_H else common.STREAM_BLOCK_H
        unit_blocks = -(-H // block)
        tiles = common.persistent_grid(unit_blocks, -(-B // common.BLOCK_B), sms)[1]
        forward = forward if tiles == 1 else f"persistent:{tiles} tiles"
    if cell == "LSTM":
        return forward, lstm.backward_path(H, B, dtype, sms, shared)
    return forward, common.choose_path(H, B, dtype, sms, shared)


def cpu_backend(cell, dtype, T, B, H, num_layers=1, bidirectional=False, proj=False,
                 training=False):
    """"cpp" or "torch" for an `auto` call on the CPU. One bfloat16 LSTM step (T=1) of B >= 8
    rows at H <= 256, in inference, runs torch.nn's code: its oneDNN LSTM primitive does the
    step in one fused call where our cell operators run two products and a pass. On an AMD EPYC
    (Zen 4), step suite, 2026-11-30: ours 0.72x-0.90x of torch.nn there (4ed7df0, and timed
    beside backend='torch' at d40f73c), torch.nn's code behind our module (backend='torch')
    0.98x-1.12x, and through this rule 0.83x-0.95x (eb7e269; the rest is the module's Python,
    benchmarks/cpu_profile.md). Everything else measured at parity or faster on our kernels."""
    if (cell == "LSTM" and dtype == torch.bfloat16 and T == 1 and B >= 8 and H <= 256
            and not training and num_layers == 1 and not bidirectional and not proj):
        return "torch"
    return "cpp"


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

