"""One description per cell: what the layers above the kernels know of the LSTM and the GRU.

A leaf (it imports torch alone). From a `Cell` follow the schemas and fake implementations of
the sequence, LayerNorm and one-step operators (ops.py), their argument checks
(contract.check_args, check_layernorm_args), their autograd Functions, the one-layer recurrence
and the one step (autograd.py), the layer and the stack of layers (functional.py), the
LayerNorm modules' parameters (layernorm.py), the gate width the dispatch rules and the
benchmark read, and the operator tests' inputs and cases (tests/). What a description cannot
hold is the math: the reference step (reference.py) and the kernels (csrc/, triton_kernels/).

Shapes are written in the fixed letters (T, B, H, P, G = gates * H); P is the projection's
size where the cell has one and it is given, else H.
"""

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Tensor:
    """One argument of an operator: its name, its shape in letters, and whether it may be None
    (`Tensor?` in a schema)."""

    name: str
    shape: tuple
    optional: bool = False


@dataclass(frozen=True)
class Saved:
    """One tensor forward saves for backward: [T, B, width * H] in dtype(xg), or [T, B, width]
    where not per_unit."""

    name: str
    width: int
    dtype: object
    per_unit: bool = True


def saved_dtype(dtype):
    """dtype of the saved gates and cell states: float32 for half types, else the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# The LSTM's saved gates on CUDA (the Triton kernels): the gates (i, f, g, o: in [0, 1] or
# [-1, 1]) of a 16-bit model are float16, 11 significant bits where bfloat16 has 8, at half
# float32's memory (bf16 T=256 B=256 H=1024: 0.5 GB instead of 1.1). The cell states stay
# float32 (unbounded).
CUDA_GATES_DTYPE = {torch.float32: torch.float32, torch.float16: torch.float16,
                    torch.bfloat16: torch.float16}


def lstm_gates_dtype(xg):
    """dtype of the LSTM's saved gates: CUDA_GATES_DTYPE on CUDA, saved_dtype on the CPU
    (csrc/lstm.cpp)."""
    if xg.device.type == "cuda" and xg.dtype in CUDA_GATES_DTYPE:
        return CUDA_GATES_DTYPE[xg.dtype]
    return saved_dtype(xg.dtype)


def _accumulated(xg):
    return saved_dtype(xg.dtype)


def _as_input(xg):
    return xg.dtype


@dataclass(frozen=True)
class Cell:
    """A gated recurrent cell as the operators take it, one layer and one direction:

    name        torch.nn's mode, and in lower case the operators' stem (`lstm_forward`)
    gates       G / H, the gate pre-activations per hidden unit
    params      the recurrence's parameters after xg, in the operators' order; the 2-D ones
                (weights) are read again by backward, which returns a gradient for each
    projection  the parameter whose first dimension is P, or None (P = H)
    states      the recurrent states: `h0`, `c0` in, `h_n`, `c_n` out; the first is the output
    input_bias  the inference operators' bias after w_ih: `bias` = b_ih + b_hh, folded because
                both add to the same pre-activation (LSTM), or `b_ih` where b_hh sits inside
                the recurrence (the GRU's r * (h W_hn^T + b_hn))
    saved       what forward saves for backward, after y and the final states
    norms       the LayerNorms of a LayerNorm layer (layernorm.py): name and size in units of H;
                `ih` normalises the input side, the others sit in the recurrence
    step_saved  what the one-step cell operators' forward ({stem}_cell_forward, csrc/cell.cpp)
                saves for backward, [B, width * H], after the new states; empty for a cell
                without them (its one step runs on the sequence operators)
    The LayerNorm operators (layernorm_{stem}_*: the cell with its LayerNorms, and with
    zoneout's weights `keep_{state}`; ln_params below):
    ln_saved    what their forward saves for backward, after y and the final states
    ln_reads    the parameters their backward reads again, by name
    ln_grads    the parameters whose gradients their backward returns, in order; each other
                parameter shares the gradient of the one ln_shared names for it
    """

    name: str
    gates: int
    params: tuple
    projection: str | None
    states: tuple
    input_bias: str
    saved: tuple
    norms: tuple
    step_saved: tuple
    ln_saved: tuple
    ln_reads: tuple
    ln_grads: tuple
    ln_shared: tuple = ()

    @cached_property
    def stem(self):
        return self.name.lower()

    @cached_property
    def weights(self):
        """The parameters backward reads: the 2-D ones."""
        return tuple(p for p in self.params if len(p.shape) == 2)

    @cached_property
    def bias_grads(self):
        """The bias gradients of the one-step backward: one where both biases fold into the
        input side (db, b_ih's and b_hh's alike), else db_ih and db_hh."""
        return ("db",) if self.input_bias == "bias" else ("db_ih", "db_hh")

    @cached_property
    def ln_params(self):
        """The LayerNorm operators' parameters after xn: the cell's, without a projection, then
        a weight and a bias for each LayerNorm in the recurrence, None all where the layer has
        no LayerNorm (the plain cell with zoneout)."""
        norms = tuple(Tensor(f"ln_{norm}_{part}", ("G" if units == self.gates else "H",),
                             optional=True)
                      for norm, units in self.norms if norm != "ih" for part in ("weight", "bias"))
        return tuple(p for p in self.params if p.name != self.projection) + norms

    def ln_split(self, args):
        """A LayerNorm operator's arguments after xn (or x, w_ih and ln_ih) -> (params, states,
        lengths, reverse, keep): zoneout's weights, absent where left at their default, None."""
        n, m = len(self.ln_params), len(self.ln_params) + len(self.states)
        keep = tuple(args[m + 2:m + 2 + len(self.states)])
        return (args[:n], args[n:m], args[m], args[m + 1],
                keep + (None,) * (len(self.states) - len(keep)))

    def split(self, args):
        """A sequence operator's arguments after its input side (xg, or x, w_ih and the input
        bias) -> (params, states, lengths, reverse)."""
        n, m = len(self.params), len(self.params) + len(self.states)
        return args[:n], args[n:m], *args[m:m + 2]


LSTM = Cell(
    name="LSTM",
    gates=4,
    params=(Tensor("w_hh", ("G", "P")), Tensor("w_hr", ("P", "H"), optional=True)),
    projection="w_hr",
    states=(Tensor("h", ("B", "P")), Tensor("c", ("B", "H"))),
    input_bias="bias",
    saved=(Saved("gates", 4, lstm_gates_dtype), Saved("c_all", 1, _accumulated)),
    norms=(("ih", 4), ("hh", 4), ("c", 1)),
    step_saved=(Saved("gates", 4, _accumulated), Saved("c_saved", 1, _accumulated)),
    # The gates, LN(h W_hh^T)'s normalised input, the cell states, LN(c)'s normalised input,
    # and the two LayerNorms' 1 / sqrt(var + eps) per row and step.
    ln_saved=(Saved("gates", 4, _accumulated), Saved("norm_hh", 4, _accumulated),
              Saved("c_all", 1, _accumulated), Saved("norm_c", 1, _accumulated),
              Saved("rstd", 2, _accumulated, per_unit=False)),
    ln_reads=("w_hh", "ln_hh_weight", "ln_c_weight", "ln_c_bias"),
    ln_grads=("w_hh", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias"),
)

GRU = Cell(
    name="GRU",
    gates=3,
    params=(Tensor("w_hh", ("G", "H")), Tensor("b_hh", ("G",))),
    projection=None,
    states=(Tensor("h", ("B", "H")),),
    input_bias="b_ih",
    # r, z, n and h W_hn^T + b_hn, in the input's dtype (a bfloat16 model trains in half the
    # memory).
    saved=(Saved("gates", 4, _as_input),),
    norms=(("ih", 3), ("hh", 3)),
    step_saved=(Saved("gates", 4, _accumulated),),  # r, z, n, h W_hn^T + b_hn
    ln_saved=(Saved("gates", 4, _accumulated), Saved("norm_hh", 3, _accumulated),
              Saved("rstd", 1, _accumulated, per_unit=False)),
    ln_reads=("w_hh", "ln_hh_weight"),
    # b_hh and ln_hh's bias add to the same R: one gradient.
    ln_grads=("w_hh", "b_hh", "ln_hh_weight"),
    ln_shared=(("ln_hh_bias", "b_hh"),),
)

CELLS = {cell.name: cell for cell in (LSTM, GRU)}


def gate_width(cell, H):
    """G of `cell` (a name: "LSTM", "GRU", or their cells "LSTMCell", "GRUCell") at hidden size
    H."""
    return CELLS[cell.removesuffix("Cell")].gates * H
