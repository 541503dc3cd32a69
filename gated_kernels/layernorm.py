"""LayerNormLSTM, LayerNormGRU and their cells (Ba et al. 2016, "Layer Normalization"), with
zoneout (Krueger et al. 2016) and DropConnect (Wan et al. 2013; AWD-LSTM's weight drop) as
keywords.

torch.nn.LSTM / torch.nn.GRU's constructor arguments (num_layers, bias, batch_first, dropout,
bidirectional; no proj_size), inputs (PackedSequence, batched or unbatched, hx) and outputs.
Each layer and direction has torch.nn's four parameters (`weight_ih_l{k}{sfx}` ...) and, per
LayerNorm, a weight (starting at 1) and a bias (starting at 0):
  ln_ih_weight_l{k}{sfx}, ln_ih_bias_l{k}{sfx}   [G]   on x W_ih^T (G = 4H or 3H)
  ln_hh_weight_l{k}{sfx}, ln_hh_bias_l{k}{sfx}   [G]   on h W_hh^T
  ln_c_weight_l{k}{sfx}, ln_c_bias_l{k}{sfx}     [H]   on the LSTM's cell state, before its tanh
(sfx: '' or '_reverse'; the cells' names have no `_l{k}{sfx}`). The math is reference.py's
(lstm_recurrence, gru_recurrence with LayerNorm), stacked by functional.lstm / gru.

The fused kernels (issue 17) run the modules and the cells (one step of the modules'
operators): csrc/layernorm.cpp on the CPU in float32, float64 and bfloat16,
triton_kernels/layernorm.py on CUDA in float32, float16 and bfloat16, inference and training,
zoneout inside (its masks drawn above). `auto` runs the `reference` backend (a loop of torch ops
over the steps, as users write these cells today) for the other dtypes. zoneout and DropConnect
are LSTM / GRU's keywords (rnn.py, functional.lstm).
"""

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from gated_kernels import functional, spec
from gated_kernels.cells import GRUCell, LSTMCell
from gated_kernels.rnn import GRU, LSTM


class _LayerNormBase:
    """What the LayerNorm modules and cells share: the extra parameters and the backend. A mixin
    placed before LSTM / GRU (which hold the zoneout and dropconnect keywords) or the cells.
    _NORMS: the LayerNorms of a layer-direction and their size in units of H."""

    _NORMS = ()

    def _check_backend(self, backend):
        if backend == "torch":
            raise ValueError(f"{type(self).__name__} has no torch.nn counterpart to run: choose "
                             f"backend 'auto', 'cpp', 'triton' or 'reference', got {backend!r}")

    def _call_backend(self, input, hx=None):
        """The backend a call runs (and the benchmark records): functional.options_backend's."""
        data = input.data if isinstance(input, PackedSequence) else input
        return functional.options_backend(self.backend, data)

    def _suffixes(self):
        """The parameter-name suffix of each layer-direction, in torch.nn's order."""
        directions = ("", "_reverse")[:2 if self.bidirectional else 1]
        return [f"_l{layer}{sfx}" for layer in range(self.num_layers) for sfx in directions]

    def _init_layer_norms(self):
        first = next(self.parameters())  # torch.nn's weight_ih(_l0)
        factory = {"device": first.device, "dtype": first.dtype}
        self._ln_names = []  # per layer-direction
        for sfx in self._suffixes():
            names = []
            for norm, units in self._NORMS:
                for part in ("weight", "bias"):
                    name = f"ln_{norm}_{part}{sfx}"
                    size = units * self.hidden_size
                    self.register_parameter(name, nn.Parameter(torch.empty(size, **factory)))
                    names.append(name)
            self._ln_names.append(names)
        self._reset_layer_norms()

    def _reset_layer_norms(self):
        with torch.no_grad():
            for names in self._ln_names:
                for name in names:
                    getattr(self, name).fill_(1.0 if "_weight" in name else 0.0)

    def reset_parameters(self):
        """torch.nn's initialisation for torch.nn's parameters; LayerNorm weights 1, biases 0."""
        super().reset_parameters()
        if hasattr(self, "_ln_names"):  # RNNBase.__init__ calls this before they exist
            self._reset_layer_norms()

    def _layer_norms(self):
        """Per layer-direction, its LayerNorms as (weight, bias) pairs, read by name."""
        return [tuple((getattr(self, names[2 * j]), getattr(self, names[2 * j + 1]))
                      for j in range(len(self._NORMS))) for names in self._ln_names]

    @classmethod
    def from_torch(cls, module, *, backend="auto"):
        raise TypeError(f"{cls.__name__} has no torch.nn counterpart to convert from")


class LayerNormLSTM(_LayerNormBase, LSTM):
    """An LSTM with LayerNorm on both products and on the cell state:
    G = LN(x W_ih^T) + LN(h W_hh^T) + b_ih + b_hh; c' = f c + i g; h' = o tanh(LN(c')).

    >>> lstm = LayerNormLSTM(10, 20, num_layers=2, zoneout=0.1)
    >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
    >>> tuple(output.shape), tuple(lstm.ln_c_weight_l1.shape)
    ((5, 3, 20), (20,))
    """

    _NORMS = spec.LSTM.norms

    def __init__(self, *args, backend="auto", **kwargs):
        self._check_backend(backend)
        super().__init__(*args, backend=backend, **kwargs)
        if self.proj_size > 0:
            raise ValueError("LayerNormLSTM has no proj_size")
        self._init_layer_norms()

    def forward(self, input, hx=None):
        backend = self._call_backend(input, hx)

        def run(x, states, lengths, weights):
            return functional.lstm(
                x, *states, weights, self.num_layers, self.bidirectional, self.dropout,
                self.training, self.bias, False, lengths, backend,
                layer_norms=self._layer_norms(), zoneout=self.zoneout,
                dropconnect=self.dropconnect)

        output, (h_n, c_n) = self._run(input, hx, run)
        return output, (h_n, c_n)


class LayerNormGRU(_LayerNormBase, GRU):
    """A GRU with LayerNorm on both products: A = LN(x W_ih^T) + b_ih, R = LN(h W_hh^T) + b_hh,
    r = sigmoid(A_r + R_r), z = sigmoid(A_z + R_z), n = tanh(A_n + r R_n),
    h' = (1 - z) n + z h.

    >>> gru = LayerNormGRU(10, 20, bidirectional=True)
    >>> output, h_n = gru(torch.randn(5, 3, 10))
    >>> tuple(output.shape), tuple(gru.ln_hh_bias_l0_reverse.shape)
    ((5, 3, 40), (60,))
    """

    _NORMS = spec.GRU.norms

    def __init__(self, *args, backend="auto", **kwargs):
        self._check_backend(backend)
        super().__init__(*args, backend=backend, **kwargs)
        self._init_layer_norms()

    def forward(self, input, hx=None):
        backend = self._call_backend(input, hx)

        def run(x, states, lengths, weights):
            return functional.gru(
                x, states[0], weights, self.num_layers, self.bidirectional, self.dropout,
                self.training, self.bias, lengths, backend, layer_norms=self._layer_norms(),
                zoneout=self.zoneout, dropconnect=self.dropconnect)

        output, (h_n,) = self._run(input, hx, run)
        return output, h_n


class _LayerNormCellBase(_LayerNormBase):
    """The LayerNorm cells: the parameters without `_l{k}{sfx}`, and the cells' step (with
    zoneout and DropConnect, cells.py) through the layer's LayerNorm operators (T=1) on the
    backend the modules would run."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0, dropconnect=0.0, backend="auto"):
        self._check_backend(backend)
        super().__init__(input_size, hidden_size, bias, device, dtype, zoneout=zoneout,
                         dropconnect=dropconnect, backend=backend)
        self._init_layer_norms()

    def _suffixes(self):
        return [""]

    def _layer_norm(self):
        return self._layer_norms()[0]


class LayerNormLSTMCell(_LayerNormCellBase, LSTMCell):
    """One step of LayerNormLSTM: parameters weight_ih, weight_hh, bias_ih, bias_hh, then
    ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias [4H], ln_c_weight, ln_c_bias [H].

    >>> cell = LayerNormLSTMCell(10, 20)
    >>> h, c = cell(torch.randn(3, 10))
    >>> tuple(h.shape), tuple(cell.ln_hh_weight.shape)
    ((3, 20), (80,))
    """

    _NORMS = spec.LSTM.norms


class LayerNormGRUCell(_LayerNormCellBase, GRUCell):
    """One step of LayerNormGRU: torch.nn.GRUCell's parameters, then ln_ih_weight, ln_ih_bias,
    ln_hh_weight, ln_hh_bias [3H].

    >>> cell = LayerNormGRUCell(10, 20)
    >>> tuple(cell(torch.randn(3, 10)).shape)
    (3, 20)
    """

    _NORMS = spec.GRU.norms
