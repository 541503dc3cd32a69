"""The registry of benchmark cases: one Case per measured point, suites as lists of them."""

import itertools
from dataclasses import asdict, dataclass

import torch

# The dtype of the weights and inputs. amp_bf16 / amp_fp16: float32 weights and inputs, every
# call under torch.autocast in AUTOCAST's dtype, as a mixed-precision training loop runs them,
# each call entering its own autocast region (a model called once a region, an RL policy once an
# environment step). amp_bf16_loop: the same calls inside one region held open across all of a
# case's timed calls, as a decoder's loop over steps holds it: autocast casts a float32 weight
# once a region, so both sides' weight casts are then cached (LOOP_REGION).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64, "amp_bf16": torch.float32, "amp_fp16": torch.float32,
          "amp_bf16_loop": torch.float32}
AUTOCAST = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16,
            "amp_bf16_loop": torch.bfloat16}
LOOP_REGION = ("amp_bf16_loop",)
MODES = ("fwd", "fwdbwd")  # inference under no_grad; a training step (forward + backward)
CELLS = ("LSTM", "GRU")
CELL_MODULES = ("LSTMCell", "GRUCell")  # one step a call: the `cells` suite
# No torch.nn twin: timed against a Python loop of torch ops (bench/loops.py).
LAYERNORM_CELLS = ("LayerNormLSTM", "LayerNormGRU")
# Our LSTM / GRU with zoneout (ZONEOUT_RATE), timed against the same cells as a Python loop
# (bench/loops.py): torch.nn has no zoneout either.
ZONEOUT_CELLS = ("ZoneoutLSTM", "ZoneoutGRU")
ZONEOUT_RATE = 0.1
# One-step calls: B and H of the `cells` and `step` suites (a decoder, an RL policy, streaming).
STEP_BATCHES = (1, 8, 32, 64)
STEP_HIDDEN = (64, 128, 256, 512, 1024)
# Training batch sizes on a GPU; float16 is the dtype for which cuDNN runs its persistent LSTM.
GPU_BATCHES = (1, 16, 64, 128, 256)
GPU_HIDDEN = (256, 512, 1024, 2048)


@dataclass(frozen=True)
class Case:
    # "LSTM", "GRU", "LSTMCell", "GRUCell" (T=1: a call is a step), LAYERNORM_CELLS or
    # ZONEOUT_CELLS
    cell: str
    mode: str  # "fwd" or "fwdbwd"
    T: int
    B: int
    I: int
    H: int
    dtype: str = "fp32"
    layers: int = 1
    bidirectional: bool = False
    device: str = "cpu"
    # Row lengths of a PackedSequence input (LENGTHS), or None: every row runs all T steps.
    lengths: str = None

    @property
    def name(self):
        extra = f"-L{self.layers}" if self.layers > 1 else ""
        extra += "-bi" if self.bidirectional else ""
        extra += f"-{self.lengths}" if self.lengths else ""
        return (f"{self.cell}-{self.mode}-T{self.T}-B{self.B}-I{self.I}-H{self.H}"
                f"{extra}-{self.dtype}")

    @property
    def is_cell(self):
        return self.cell in CELL_MODULES

    def shape_key(self):
        """Cases that differ only in mode share inputs and the correctness gate."""
        fields = asdict(self)
        del fields["mode"]
        return tuple(fields.items())


def _grid(cells, Ts, Bs, Hs, dtypes, device, layers=1, bidirectional=False):
    return [Case(cell, mode, T, B, H, H, dtype, layers, bidirectional, device)
            for cell, dtype, T, H, B, mode in itertools.product(cells, dtypes, Ts, Hs, Bs, MODES)]


# Length distributions of the `packed` suite: the longest row runs all T steps, as in a padded
# batch. uniform: lengths uniform in [T/10, T] (fill ratio sum(lengths) / (T B) about 55%);
# longtail: T u^3 for u uniform in (0, 1], most rows short (fill about 25%).
LENGTHS = ("uniform", "longtail")


def draw_lengths(case, generator):
    """The row lengths of a `packed` case, int64 [B] on the CPU, in no particular order."""
    if case.lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {case.lengths!r}")
    u = torch.rand(case.B, generator=generator, dtype=torch.float64)
    if case.lengths == "uniform":
        lengths = case.T // 10 + (u * (case.T - case.T // 10 + 1)).long()
    else:
        lengths = (case.T * u**3).ceil().long()
    lengths = lengths.clamp(1, case.T)
    lengths[int(torch.randint(case.B, (1,), generator=generator))] = case.T
    return lengths


def _packed(device):
    """The `packed` suite: the issue's batches (PackedSequence input, bidirectional), 1 and 2
    layers, float32 and bfloat16."""
    shapes = [(200, 32, 256, "uniform"), (200, 32, 256, "longtail"), (100, 64, 512, "longtail"),
              (300, 16, 384, "longtail")]
    return [Case(cell, mode, T, B, H, H, dtype, layers, True, device, lengths)
            for cell, dtype, layers, (T, B, H, lengths), mode in itertools.product(
                CELLS, ("fp32", "bf16"), (1, 2), shapes, MODES)]


def suite(name, device):
    """The cases of a named suite on `device` ("cpu" or "cuda")."""
    if name == "quick":
        return (_grid(CELLS, [100], [1, 32], [256], ["fp32"], device)
                + _grid(CELLS, [50], [16], [128], ["fp32"], device, layers=2, bidirectional=True))
    if name == "cpu":
        return (_grid(CELLS, [100, 500], [1, 16, 64], [128, 256, 512], ["fp32", "bf16"], device)
                + _grid(CELLS, [100], [16], [256], ["fp32"], device, layers=2, bidirectional=True))
    if name == "gpu":
        return _grid(CELLS, [256], GPU_BATCHES, GPU_HIDDEN, ["fp16", "bf16", "fp32"], device)
    if name == "cells":
        return _grid(CELL_MODULES, [1], STEP_BATCHES, STEP_HIDDEN, ["fp32", "bf16"], device)
    if name == "step":
        return _grid(CELLS, [1], STEP_BATCHES, STEP_HIDDEN, ["fp32", "bf16"], device)
    if name == "fastrnns":  # PyTorch's fastrnns benchmark default
        return _grid(CELLS, [100], [64], [512], ["fp32"], device)
    if name == "flashrnn":  # the FlashRNN paper's setting (Pöppel et al., 2024)
        return _grid(["LSTM"], [1024], [16], [768], ["bf16"], device)
    if name == "packed":
        return _packed(device)
    if name == "layernorm":  # issue 17's cells against the Python loop users write for them
        return _grid(LAYERNORM_CELLS, [100], [1, 32], [128, 256], ["fp32", "bf16"], device)
    if name == "zoneout":  # issue 17's zoneout in our plain LSTM / GRU against the Python loop
        return _grid(ZONEOUT_CELLS, [100], [1, 32], [128, 256], ["fp32", "bf16"], device)
    raise ValueError(f"unknown suite {name!r}; choose from {SUITES}")


SUITES = ("quick", "cpu", "gpu", "cells", "step", "fastrnns", "flashrnn", "packed", "layernorm",
          "zoneout")
