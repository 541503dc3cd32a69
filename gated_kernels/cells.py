"""Drop-in torch.nn.LSTMCell and torch.nn.GRUCell: one step of the recurrence operators (T=1),
plus the keywords `zoneout` and `dropconnect` (issue 17; a cell draws its masks at every call).

They derive from the torch.nn cells (Dynamo traces those), so isinstance checks still hold and
parameters, initialisation and state_dict are torch.nn's own. On the `torch` backend, and while
torch.onnx exports the model, a call runs torch.nn's own cell forward.
"""

import warnings

import torch
from torch import nn

from gated_kernels import autocast, dispatch, functional
from gated_kernels.autograd import gru_cell, lstm_cell, needs_grad
from gated_kernels.backends import backend_forced, resolve_backend
from gated_kernels.functional import gru_layer, lstm_layer
from gated_kernels.rnn import check_backend_name, check_regularizers, current_parameters


def _check_cell_state(input, state, index, hidden_size):
    """ATen's checks for a cell's state, with its messages."""
    if input.size(0) != state.size(0):
        raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{index} "
                           f"batch size {state.size(0)}")
    if state.size(1) != hidden_size:
        raise RuntimeError(f"hidden{index} has inconsistent hidden_size: got {state.size(1)}, "
                           f"expected {hidden_size}")


# A cell's parameters in torch.nn's names (the biases None with bias=False).
_CELL_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _CellBase:
    """What both cells share: the constructor (torch.nn's arguments plus `backend`, `zoneout`
    and `dropconnect`), conversion from torch.nn, input checks, the step. A mixin placed before
    nn.LSTMCell / nn.GRUCell."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0, dropconnect=0.0, backend="auto"):
        check_backend_name(backend)
        check_regularizers(backend, zoneout, dropconnect)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.backend = backend
        self.zoneout, self.dropconnect = float(zoneout), float(dropconnect)

    def extra_repr(self):
        s = super().extra_repr()
        for name in ("zoneout", "dropconnect"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    @classmethod
    def from_torch(cls, module, *, backend="auto"):
        """An equivalent cell: same sizes, parameter values, device, dtype and training mode."""
        weight = module.weight_ih
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            new = cls(module.input_size, module.hidden_size, module.bias, device="meta",
                      dtype=weight.dtype, backend=backend)
        new = new.to_empty(device=weight.device)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def _call_backend(self, input):
        """The backend of this call: with zoneout functional.options_backend's; `torch` while
        torch.onnx exports the model; else the requested one resolved by device and, for `auto`
        on CUDA, by dispatch's rule, but never torch.nn's code for a DropConnect training call
        (it would read the unmasked weight)."""
        if self.zoneout > 0.0:
            return functional.options_backend(self.backend, input)
        if dispatch.exporting_onnx():
            return "torch"
        backend = self._shape_backend(input)
        if backend == "torch" and self.dropconnect > 0.0 and self.training:
            return "cpp" if input.device.type == "cpu" else "triton"
        return backend

    def _shape_backend(self, input):
        """_call_backend's choice for a call without regularizers."""
        backend = resolve_backend(self.backend, input.device)
        if backend not in ("cpp", "triton") or self.backend != "auto" or backend_forced():
            return backend
        name = type(self).__name__
        B = input.size(0) if input.dim() == 2 else 1
        if backend == "cpp":
            if not torch.is_autocast_enabled("cpu") or input.dtype != torch.float32:
                return backend
            training = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad
                for t in (input, *current_parameters(self, _CELL_PARAMETERS)))
            return dispatch.cpu_autocast_backend(name, torch.get_autocast_dtype("cpu"), 1, B,
                                                 self.hidden_size, training)
        cell = name.removesuffix("Cell")
        dtype = autocast.compute_dtype(name, input) or input.dtype
        return dispatch.cuda_backend(torch.cuda.get_device_properties(input.device), cell, dtype,
                                     1, B, self.input_size, self.hidden_size)

    def _check_rank(self, input):
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead")

    def _batched(self, input, states, count):
        """(input [N, I], `count` states [N, H], is_batched): unbatched input and states gain a
        batch dimension, missing states are zeros (one tensor shared, as torch.nn does), and the
        states are checked against the input with ATen's messages."""
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if states is None:
            states = (input.new_zeros(input.size(0), self.hidden_size),) * count
        elif not is_batched:
            states = tuple(s.unsqueeze(0) for s in states)
        for index, state in enumerate(states):
            _check_cell_state(input, state, index, self.hidden_size)
        return input, states, is_batched

    def _layer_norm(self):
        """The step's LayerNorms, as lstm_layer / gru_layer take them (None: none; the
        LayerNorm cells override it)."""

    def _step(self, backend, layer, cell_step, input, states):
        """One step in the dtype torch.nn's cell would use under autocast; with DropConnect on
        a masked W_hh, and with zoneout or LayerNorm one step of `layer` (lstm_layer or
        gru_layer) with them."""
        w_ih, w_hh, b_ih, b_hh = current_parameters(self, _CELL_PARAMETERS)
        w_hh = functional.drop_connect(w_hh, self.dropconnect, self.training)
        layer_norm, keep = self._layer_norm(), None
        if self.zoneout > 0.0:
            keep = tuple(functional.zoneout_keep(self.zoneout, self.training, (1, *s.shape),
                                                 input) for s in states)
        if keep is not None or layer_norm is not None:
            out = layer(input.unsqueeze(0), *states, w_ih, w_hh, b_ih, b_hh, backend=backend,
                        layer_norm=layer_norm, keep=keep)
            return out[1:]
        tensors = [input, *states, w_ih, w_hh, b_ih, b_hh]
        name = type(self).__name__
        dtype = autocast.compute_dtype(name, input)
        if dtype is None:
            return self._run_step(backend, layer, cell_step, tensors)
        products = autocast.cpu_products(self, name, backend, dtype, input.size(0),
                                         needs_grad(*tensors), tensors[-4:-2])
        with torch.autocast(input.device.type, enabled=False):
            tensors[:-4] = autocast.cast(tensors[:-4], dtype)  # input and states
            tensors[-4:-2] = autocast.cast_parameters(tensors[-4:-2], products)  # w_ih, w_hh
            tensors[-2:] = autocast.cast_parameters(tensors[-2:], dtype)  # b_ih, b_hh
            return self._run_step(backend, layer, cell_step, tensors)

    @staticmethod
    def _run_step(backend, layer, cell_step, tensors):
        """tensors: [input, *states, *parameters]. On the C++ backend the cell operators run
        (`cell_step`: autograd.lstm_cell or gru_cell; a single step cannot repay the sequence
        operators' thread team and packing); elsewhere `layer` (lstm_layer or gru_layer) with
        T=1."""
        if backend == "cpp":
            out = cell_step(*tensors)
            return out if isinstance(out, tuple) else (out,)
        return layer(tensors[0].unsqueeze(0), *tensors[1:], backend=backend)[1:]

    def _check_input_size(self, input):
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(-1)} "
                               f"expected {self.input_size}")


class LSTMCell(_CellBase, nn.LSTMCell):
    """Drop-in torch.nn.LSTMCell, plus the keywords `backend`, `zoneout` and `dropconnect`.

    >>> cell = LSTMCell(10, 20)
    >>> h, c = cell(torch.randn(3, 10))
    >>> tuple(h.shape)
    (3, 20)
    """

    def forward(self, input, hx=None):
        backend = self._call_backend(input)
        if backend == "torch":
            return nn.LSTMCell.forward(self, input, hx)
        self._check_rank(input)
        if isinstance(hx, torch.Tensor):
            raise TypeError("LSTMCell: hx must be a tuple of two Tensors (h_0, c_0), not Tensor")
        if hx is not None:
            for index, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        self._check_input_size(input)
        input, hx, is_batched = self._batched(input, hx, count=2)
        h, c = self._step(backend, lstm_layer, lstm_cell, input, hx)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellBase, nn.GRUCell):
    """Drop-in torch.nn.GRUCell, plus the keywords `backend`, `zoneout` and `dropconnect`.

    >>> cell = GRUCell(10, 20)
    >>> tuple(cell(torch.randn(3, 10)).shape)
    (3, 20)
    """

    def forward(self, input, hx=None):
        backend = self._call_backend(input)
        if backend == "torch":
            return nn.GRUCell.forward(self, input, hx)
        self._check_rank(input)
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        self._check_input_size(input)
        input, hx, is_batched = self._batched(input, None if hx is None else (hx,), count=1)
        (h,) = self._step(backend, gru_layer, gru_cell, input, hx)
        return h if is_batched else h.squeeze(0)
