"""Drop-in torch.nn.LSTM and torch.nn.GRU.

Same constructor, parameters (names, shapes, order, initialisation), state_dict, forward
signature, outputs and errors as torch.nn; the recurrence runs in gated_kernels' operators.
The classes derive from nn.RNNBase, which builds the parameters exactly as torch.nn does (and, on
`.cuda()` / `.to()`, flattens them into one cuDNN buffer as torch.nn does), and not from
nn.LSTM / nn.GRU: Dynamo refuses to trace those and their subclasses, while a model using these
compiles with torch.compile(fullgraph=True). On the `torch` backend, and while torch.onnx exports
the model, a call runs torch.nn's own forward (nn.LSTM.forward / nn.GRU.forward) on the module.
"""

import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from gated_kernels import autocast, dispatch, functional
from gated_kernels.autograd import needs_grad
from gated_kernels.backends import BACKENDS, backend_forced, resolve_backend


def check_backend_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def current_parameters(module, names):
    """The module's tensors of these names as they are now: read by name, so
    torch.func.functional_call and torch.export (which swap them) see theirs. A parameter comes
    from module._parameters, as nn.Module.__getattr__ would find it (3.2 us for an LSTM's four
    through it, 0.5 us here, on an AMD EPYC Zen 5: a one-step call pays it every step); a name
    swapped for a plain tensor falls back to getattr."""
    params = module._parameters
    return [params[n] if n in params else getattr(module, n) for n in names]


def _check_rate(name, p, closed):
    """A probability argument: in [0, 1] (closed) or [0, 1)."""
    if not (0.0 <= p <= 1.0) or (not closed and p == 1.0):
        raise ValueError(f"{name} must be in {'[0, 1]' if closed else '[0, 1)'}, got {p}")


def check_regularizers(backend, zoneout, dropconnect):
    """zoneout and DropConnect run on every backend but `torch` (torch.nn's forward has no
    zoneout and reads its own weights)."""
    _check_rate("zoneout", zoneout, closed=True)
    _check_rate("dropconnect", dropconnect, closed=False)
    if zoneout > 0.0 and backend == "torch":
        raise ValueError("zoneout cannot run on backend='torch': torch.nn's forward has none")
    if dropconnect > 0.0 and backend == "torch":
        raise ValueError("dropconnect cannot run on backend='torch': torch.nn's forward reads "
                         "the module's own weights")


def _pad(data, batch_sizes):
    """Packed data [sum(lengths), I] -> time-major padded [T, B, I] in sorted batch order, 0
    past each row's length, and lengths [B] (int64, CPU, decreasing). One index_copy, whose
    backward is one gather: torch's _pad_packed_sequence writes a slice per distinct batch size,
    and autograd's node for each slice cloned the whole [T, B, I] gradient (35 clones, 13 ms of
    a 194 ms bidirectional GRU training step at T=100, B=64, H=512, long-tailed lengths,
    float32, on the EPYC)."""
    T, B = batch_sizes.size(0), int(batch_sizes[0])
    steps = torch.arange(T).repeat_interleave(batch_sizes)  # each packed row's step
    starts = (batch_sizes.cumsum(0) - batch_sizes).repeat_interleave(batch_sizes)
    rows = torch.arange(steps.size(0)) - starts  # and its row in the sorted batch
    positions = (steps * B + rows).to(data.device)
    padded = data.new_zeros(T * B, *data.shape[1:]).index_copy(0, positions, data)
    lengths = (batch_sizes[None, :] > torch.arange(B)[:, None]).sum(1)
    return padded.view(T, B, *data.shape[1:]), lengths


def _pack(y, lengths):
    """The inverse of _pad: time-major [T, B, F] in sorted order -> packed data [sum, F]."""
    return torch._VF._pack_padded_sequence(y, lengths, False)[0]


class _RecurrentBase(nn.RNNBase):
    """What LSTM and GRU share: the backend, conversion from torch.nn, input plumbing."""

    _CONFIG = ("num_layers", "bias", "batch_first", "dropout", "bidirectional")

    def __init__(self, mode, *args, backend="auto", zoneout=0.0, dropconnect=0.0, **kwargs):
        check_backend_name(backend)
        check_regularizers(backend, zoneout, dropconnect)
        super().__init__(mode, *args, **kwargs)
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
        """An equivalent module: same configuration, parameter values, device, dtype and
        training mode. Builds on the meta device first, so no random init is drawn."""
        weight = module.weight_ih_l0
        config = {name: getattr(module, name) for name in cls._CONFIG}
        with warnings.catch_warnings():  # torch.nn already warned about dropout with 1 layer
            warnings.simplefilter("ignore", UserWarning)
            new = cls(module.input_size, module.hidden_size, **config, device="meta",
                      dtype=weight.dtype, backend=backend)
        new = new.to_empty(device=weight.device)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def _call_backend(self, input, hx):
        """The backend of this call: with zoneout functional.options_backend's (the
        layernorm_* operators without their LayerNorms, or the reference); `torch` while
        torch.onnx exports the model; else the requested one resolved by device and, for
        `auto`, by shape (dispatch), but never torch.nn's code for a DropConnect training call
        (it would read the unmasked weights)."""
        if self.zoneout > 0.0:
            data = input.data if isinstance(input, PackedSequence) else input
            return functional.options_backend(self.backend, data,
                                              getattr(self, "proj_size", 0) > 0)
        backend = self._shape_backend(input, hx)
        if backend == "torch" and self.dropconnect > 0.0 and self.training:
            data = input.data if isinstance(input, PackedSequence) else input
            return "cpp" if data.device.type == "cpu" else "triton"
        return backend

    def _shape_backend(self, input, hx):
        """_call_backend's choice for a call without regularizers."""
        if dispatch.exporting_onnx():
            if getattr(self, "proj_size", 0) > 0:
                raise RuntimeError(
                    "gated_kernels.LSTM with proj_size > 0 cannot be exported to ONNX: ONNX's "
                    "LSTM operator has no projection, and torch.nn.LSTM with proj_size cannot "
                    "be exported either (the TorchScript exporter refuses it; the dynamo "
                    "exporter writes a model onnxruntime rejects)")
            return "torch"
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        backend = resolve_backend(self.backend, data.device)
        if self.backend != "auto":
            return backend
        # The CPU rules concern bfloat16, autocast and the float32 LSTM without AVX-512: other
        # float32 calls pay nothing more here.
        if (backend == "cpp" and data.dtype != torch.bfloat16
                and not torch.is_autocast_enabled("cpu")
                and not (self.mode == "LSTM" and dispatch._no_avx512())):
            return backend
        if backend not in ("cpp", "triton") or backend_forced():
            return backend
        if packed:
            T, B = len(input.batch_sizes), int(input.batch_sizes[0])
        elif data.dim() != 3:
            T, B = data.size(0), 1
        else:
            T, B = (data.size(1), data.size(0)) if self.batch_first else data.shape[:2]
        dtype = autocast.compute_dtype(type(self).__name__, data, T) or data.dtype
        states = [] if hx is None else [hx] if isinstance(hx, torch.Tensor) else list(hx)
        training = torch.is_grad_enabled() and any(
            t.requires_grad for t in (data, *states, *self._flat_weights))
        proj = getattr(self, "proj_size", 0) > 0
        if (backend == "cpp" and dtype == data.dtype == torch.float32
                and torch.is_autocast_enabled("cpu")):
            return dispatch.cpu_autocast_backend(self.mode, torch.get_autocast_dtype("cpu"), T,
                                                 B, self.hidden_size, training)
        if backend == "cpp":
            return dispatch.cpu_backend(self.mode, dtype, T, B, self.hidden_size,
                                        self.num_layers, self.bidirectional, proj, training,
                                        packed)
        return dispatch.cuda_backend(torch.cuda.get_device_properties(data.device), self.mode,
                                     dtype, T, B, self.input_size, self.hidden_size,
                                     self.num_layers, self.bidirectional, proj, packed, training)

    def _zeros(self, input, batch_sizes, size):
        D = 2 if self.bidirectional else 1
        if batch_sizes is not None:
            B = int(batch_sizes[0])
        else:
            B = input.size(0) if self.batch_first else input.size(1)
        return torch.zeros(self.num_layers * D, B, size, dtype=input.dtype, device=input.device)

    def _run(self, input, hx, run, backend=None):
        """The forward every cell type shares. hx: the state tuple (or None); run(x, states,
        lengths, weights) -> (y, *final_states); backend: the call's, where _autocast_dtypes
        reads it."""
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        sizes = self._state_sizes()
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
        if hx is None:
            states = tuple(self._zeros(input, batch_sizes, size) for size in sizes)
        else:
            states = self._check_state_ranks(hx, is_batched)
            if not is_batched:
                states = tuple(s.unsqueeze(1) for s in states)
        self._check_forward(input, states, batch_sizes)
        if sorted_indices is not None:
            states = tuple(s.index_select(1, sorted_indices) for s in states)

        # Time-major [T, B, I]; packed data comes padded in sorted batch order, with lengths.
        if packed:
            x, lengths_cpu = _pad(input, batch_sizes)
            lengths = lengths_cpu.to(x.device)
        else:
            x, lengths = (input.transpose(0, 1) if self.batch_first else input), None
            if x.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        # Nothing is written back to the module.
        weights = current_parameters(self, self._flat_weights_names)
        dtype = autocast.compute_dtype(name, x, x.size(0))
        if dtype is not None:
            out_dtype = autocast.output_dtype(name, x, dtype)
            dtype, products = self._autocast_dtypes(backend, dtype, x, states, lengths, weights)
            with torch.autocast(x.device.type, enabled=False):
                x, *cast_states = autocast.cast([x, *states], dtype)
                weights = [autocast.cast_parameter(w, products if n.startswith("weight_")
                                                   else dtype)
                           for n, w in zip(self._flat_weights_names, weights)]
                y, *final = run(x, cast_states, lengths, weights)
                y, *final = autocast.cast([y, *final], out_dtype)
            final = self._autocast_states(final, states)
        else:
            y, *final = run(x, states, lengths, weights)
        if unsorted_indices is not None:
            final = tuple(s.index_select(1, unsorted_indices) for s in final)
        if packed:
            output = PackedSequence(_pack(y, lengths_cpu), batch_sizes, sorted_indices,
                                    unsorted_indices)
        else:
            output = y.transpose(0, 1) if self.batch_first else y
            if not is_batched:
                output = output.squeeze(batch_dim)
                final = tuple(s.squeeze(1) for s in final)
        return output, final

    def _autocast_dtypes(self, backend, dtype, x, states, lengths, weights):
        """(the dtype the call computes in, the dtype W_ih and W_hh are cast to) under autocast,
        given compute_dtype's `dtype` (x: time-major, lengths: None unless packed): `dtype` for
        both but for one float32 step on the C++ backend (the subclasses)."""
        return dtype, dtype

    def _cell_step(self, backend, T, packed, input_dtype):
        """Whether a call under CPU bfloat16 autocast is one step of a float32 input on the cell
        operator (functional's T=1 path: no lengths, projection or zoneout), the one path that
        takes bfloat16 weights with a float32 x and state."""
        return (backend == "cpp" and T == 1 and not packed and input_dtype == torch.float32
                and self.zoneout == 0.0 and getattr(self, "proj_size", 0) == 0
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class LSTM(_RecurrentBase):
    """Drop-in torch.nn.LSTM: the same arguments, plus the keywords `backend` ("auto", "cpp",
    "triton", "torch", "reference"), `zoneout` and `dropconnect` (rates, 0 by default; see
    functional.lstm: zoneout runs the layernorm_* operators without their LayerNorms, or the
    reference backend with a projection or a dtype they lack).

    >>> lstm = LSTM(10, 20, num_layers=2)
    >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((5, 3, 20), (2, 3, 20))
    """

    _CONFIG = _RecurrentBase._CONFIG + ("proj_size",)

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, **kwargs)

    # torch.nn.LSTM's own checks, so the errors are the same.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden  # for nn.LSTM.forward (the `torch` backend)

    def _check_forward(self, input, states, batch_sizes):
        self.check_forward_args(input, states, batch_sizes)

    def _state_sizes(self):
        return (self.proj_size or self.hidden_size, self.hidden_size)

    @staticmethod
    def _check_state_ranks(hx, is_batched):
        if not isinstance(hx, torch.Tensor) and len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        h, c = hx[0], hx[1]
        rank = 3 if is_batched else 2
        if h.dim() != rank or c.dim() != rank:
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {rank}-D but got "
                               f"({h.dim()}-D, {c.dim()}-D) tensors")
        return h, c

    def _autocast_dtypes(self, backend, dtype, x, states, lengths, weights):
        # One step for inference computes as the LSTMCell does, the state in float32 and the
        # products per autocast.cpu_products, and rounds its outputs to bfloat16, torch.nn's
        # dtype. In bfloat16 it cast all four weights and the state each call: against torch.nn
        # (AMD EPYC Zen 4, 2 threads, 9 interleaved rounds) 0.79x at B=8, H=256, 1.67x at B=8,
        # H=512, now 1.17x and 1.85x; from B=32 the two read alike (B=32-64, H=64-1024, two
        # runs: now ahead by 0.11x-0.18x at three points, behind by 0.12x at one, within 0.06x
        # elsewhere). Training stays in bfloat16, whose products are the faster there.
        if (not self._cell_step(backend, x.size(0), lengths is not None, x.dtype)
                or needs_grad(x, *states, *weights)):
            return dtype, dtype
        products = autocast.cpu_products(self, "LSTM", backend, torch.float32, x.size(1), False,
                                         weights)
        return torch.float32, products

    def _autocast_states(self, final, initial):
        # With a projection torch.nn leaves oneDNN for ATen's own cell, where CPU autocast casts
        # only the matmuls: the cell state keeps the dtype of c0.
        h_n, c_n = final
        if self.proj_size > 0 and h_n.device.type == "cpu":
            c_n = c_n.to(initial[1].dtype)
        return [h_n, c_n]

    def forward(self, input, hx=None):
        backend = self._call_backend(input, hx)
        if backend == "torch":
            return nn.LSTM.forward(self, input, hx)

        def run(x, states, lengths, weights):
            return functional.lstm(
                x, *states, weights, self.num_layers, self.bidirectional,
                self.dropout, self.training, self.bias, self.proj_size > 0, lengths, backend,
                zoneout=self.zoneout, dropconnect=self.dropconnect)

        output, (h_n, c_n) = self._run(input, hx, run, backend)
        return output, (h_n, c_n)


class GRU(_RecurrentBase):
    """Drop-in torch.nn.GRU: the same arguments, plus the keywords `backend`, `zoneout` and
    `dropconnect` (as LSTM's).

    >>> gru = GRU(10, 20, bidirectional=True)
    >>> output, h_n = gru(torch.randn(5, 3, 10))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((5, 3, 40), (2, 3, 20))
    """

    def __init__(self, *args, backend="auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, backend=backend, **kwargs)

    def _state_sizes(self):
        return (self.hidden_size,)

    def _check_forward(self, input, states, batch_sizes):
        self.check_forward_args(input, states[0], batch_sizes)

    @staticmethod
    def _check_state_ranks(hx, is_batched):
        rank = 3 if is_batched else 2
        if hx.dim() != rank:
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx should also be {rank}-D but got "
                               f"{hx.dim()}-D tensor")
        return (hx,)

    @staticmethod
    def _autocast_states(final, initial):
        return final

    def _autocast_dtypes(self, backend, dtype, x, states, lengths, weights):
        # One step computes in float32 (compute_dtype), its products as the GRUCell's.
        if not self._cell_step(backend, x.size(0), lengths is not None, x.dtype):
            return dtype, dtype
        return dtype, autocast.cpu_products(self, "GRU", backend, dtype, x.size(1),
                                            needs_grad(x, *states, *weights), weights)

    def forward(self, input, hx=None):
        backend = self._call_backend(input, hx)
        if backend == "torch":
            return nn.GRU.forward(self, input, hx)

        def run(x, states, lengths, weights):
            return functional.gru(
                x, states[0], weights, self.num_layers, self.bidirectional,
                self.dropout, self.training, self.bias, lengths, backend,
                zoneout=self.zoneout, dropconnect=self.dropconnect)

        output, (h_n,) = self._run(input, hx, run, backend)
        return output, h_n
