"""The autograd layer: torch.autograd.Functions over the recurrence operators, the sequence
ones made from each cell's description (spec.py).

LSTMFunction / GRUFunction take the precomputed input gates `xg`; the input projection and its
gradients stay in ordinary PyTorch above them (`recurrence` makes it). On the C++ backend the
training path takes the layer input instead (`from_input`: LSTMFromInput, GRUFromInput): its
forward operator makes the input gates a chunk of steps at a time and never the [T, B, G] xg,
and the xg gradient becomes dx, dW_ih and the bias gradient with one product each
(input_projection_backward) in a node of its own (InputGates). Without gradients the inference
operators take the input itself. Gradients are first order only
(`once_differentiable`): the backward operators are not themselves differentiated.

The operators dispatch by device (C++ for CPU tensors, Triton for CUDA tensors). The one
exception is the `triton` backend on CPU tensors, which only exists in Triton's interpreter (the
way the kernels are tested without a GPU): it calls the Triton launchers directly.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from gated_kernels import ops  # noqa: F401  (declares the torch.ops.gated_kernels operators)
from gated_kernels.spec import CELLS


def operator(name, backend, device):
    """The operator `name` for tensors on `device`: torch.ops' (dispatched by device), or the
    Triton launcher itself for the `triton` backend on CPU tensors (the interpreter)."""
    if backend == "triton" and device.type == "cpu":
        from gated_kernels.triton_kernels import launchers

        return getattr(launchers, name)
    return getattr(torch.ops.gated_kernels, name)


def _forward(ctx, cell, forward, inputs, args):
    """Runs `forward` (an operator of `cell`) on `inputs` and then args (params, states,
    lengths, reverse), saves what backward reads, and returns y and the final states."""
    params, states, lengths, reverse = cell.split(args)
    y, *outputs = forward(*inputs, *params, *states, lengths, reverse)
    weights = (t for p, t in zip(cell.params, params) if p in cell.weights)
    ctx.save_for_backward(*weights, *states, lengths, y, *outputs[len(cell.states):])
    ctx.reverse, ctx.absent = reverse, [t is None for t in params]
    return y, *outputs[:len(cell.states)]


def _backward(ctx, cell, backward, grads):
    """Runs `backward` (an operator of `cell`) on the outputs' gradients and what _forward
    saved; returns dxg, the parameters' gradients (None for an absent one) and the initial
    states'."""
    m = len(cell.weights) + len(cell.states)
    saved = ctx.saved_tensors
    dxg, *rest = backward(*grads, *saved[:m], saved[m], ctx.reverse, *saved[m + 1:])
    k = len(cell.params)
    return dxg, [None if absent else g for g, absent in zip(rest[:k], ctx.absent)], rest[k:]


def _sequence_function(cell):
    """The autograd Function of `cell`'s sequence operators (LSTMFunction, GRUFunction):
    (xg, params, states, lengths or None, reverse, backend="cpp") -> (y, final states), the
    parameters and states in the cell's order (spec.py)."""
    n = len(cell.params) + len(cell.states) + 2

    def forward(ctx, xg, *args):
        ctx.backend = args[n] if len(args) > n else "cpp"
        return _forward(ctx, cell, operator(f"{cell.stem}_forward", ctx.backend, xg.device),
                        (xg,), args[:n])

    @once_differentiable
    def backward(ctx, *grads):
        op = operator(f"{cell.stem}_backward", ctx.backend, grads[0].device)
        dxg, dparams, dstates = _backward(ctx, cell, op, grads)
        return dxg, *dparams, *dstates, None, None, None

    return type(f"{cell.name}Function", (torch.autograd.Function,), {
        "__doc__": _sequence_function.__doc__.replace("`cell`'s", f"the {cell.name}'s"),
        "forward": staticmethod(forward), "backward": staticmethod(backward)})


FUNCTIONS = {cell.name: _sequence_function(cell) for cell in CELLS.values()}
LSTMFunction, GRUFunction = FUNCTIONS["LSTM"], FUNCTIONS["GRU"]


class InputGates(torch.autograd.Function):
    """The input gates xg = x w_ih^T + bias as the C++ backend's training path shows them to
    autograd, without making them: the forward returns a placeholder (zero strides, no memory)
    that LSTMFromInput / GRUFromInput take in place of xg, and the backward turns their dxg into
    dx, dw_ih and dbias (input_projection_backward). As a node of its own it runs after their
    backward has returned and released the gates they saved; inside that backward the gates were
    still held while the projection's products ran (GRU training peak at T=500 B=1 H=128: 3.4 MB
    against torch.nn's 2.7 MB)."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, lengths):
        ctx.save_for_backward(x, w_ih, lengths)
        ctx.bias = bias is not None
        return x.new_empty_strided((x.shape[0], x.shape[1], w_ih.shape[0]), (0, 0, 0))

    @staticmethod
    @once_differentiable
    def backward(ctx, dxg):
        x, w_ih, lengths = ctx.saved_tensors
        dx, dw_ih, dbias = torch.ops.gated_kernels.input_projection_backward(
            dxg, x, w_ih, ctx.bias, lengths
        )
        return dx, dw_ih, dbias if ctx.bias else None, None


def _from_input_function(cell):
    """The C++ backend's training path of `cell` (LSTMFromInput, GRUFromInput): (xg from
    InputGates, x, w_ih, the input bias or None, params, states, lengths or None, reverse) ->
    (y, final states), the input bias being spec.Cell.input_bias. The forward computes from x;
    the gradient of x, w_ih and the bias goes through xg (InputGates)."""

    def forward(ctx, xg, x, w_ih, bias, *args):
        op = getattr(torch.ops.gated_kernels, f"{cell.stem}_forward_from_input")
        return _forward(ctx, cell, op, (x, w_ih, bias), args)

    @once_differentiable
    def backward(ctx, *grads):
        op = getattr(torch.ops.gated_kernels, f"{cell.stem}_backward")
        dxg, dparams, dstates = _backward(ctx, cell, op, grads)
        return dxg, None, None, None, *dparams, *dstates, None, None

    return type(f"{cell.name}FromInput", (torch.autograd.Function,), {
        "__doc__": _from_input_function.__doc__.replace("`cell`", f"the {cell.name}"),
        "forward": staticmethod(forward), "backward": staticmethod(backward)})


FROM_INPUT = {cell.name: _from_input_function(cell) for cell in CELLS.values()}


def from_input(cell, x, w_ih, bias, params, states, lengths, reverse):
    """(y, final states) of one layer-direction on the C++ backend's training path."""
    xg = InputGates.apply(x, w_ih, bias, lengths)
    return FROM_INPUT[cell.name].apply(xg, x, w_ih, bias, *params, *states, lengths, reverse)


def needs_grad(*tensors):
    """Whether autograd would record an op on these tensors (None entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def recurrence(cell, x, w_ih, bias, params, states, lengths, reverse, backend="cpp"):
    """(y, final states) of one layer-direction of `cell` (spec.LSTM, spec.GRU) from its input
    x [T, B, I]: where a gradient may be asked for, the input projection xg = x w_ih^T + bias
    and the cell's Function (on the C++ backend from_input, which never makes xg); else the
    inference operator, which returns the same values without computing and storing the
    tensors that backward reads (cell.saved: the gates [T, B, 4H], the LSTM's c_all [T, B, H])
    and, on the CPU, without making xg at all. `bias` is cell.input_bias."""
    if needs_grad(x, w_ih, bias, *params, *states):
        if backend == "cpp":
            return from_input(cell, x, w_ih, bias, params, states, lengths, reverse)
        xg = F.linear(x, w_ih, bias)
        return FUNCTIONS[cell.name].apply(xg, *params, *states, lengths, reverse, backend)
    if backend == "triton" and x.device.type == "cpu":
        # Triton's interpreter: the launcher itself, as the CUDA inference operator calls it.
        forward = operator(f"{cell.stem}_forward", backend, x.device)
        outputs = forward(F.linear(x, w_ih, bias), *params, *states, lengths, reverse,
                          save=False)
        return outputs[:1 + len(cell.states)]
    inference = getattr(torch.ops.gated_kernels, f"{cell.stem}_inference")
    return inference(x.contiguous(), w_ih, bias, *params, *states, lengths, reverse)


class InputProjection(torch.autograd.Function):
    """xg = x w_ih^T [T, B, G] on the C++ backend, for the LayerNorm cells, which normalise it:
    the product and both gradients on the input projection operators (oneDNN for large
    products, where ATen's float32 product would run MKL's generic code on AMD CPUs)."""

    @staticmethod
    def forward(ctx, x, w_ih):
        ctx.save_for_backward(x, w_ih)
        return torch.ops.gated_kernels.input_projection(x, w_ih)

    @staticmethod
    @once_differentiable
    def backward(ctx, dxg):
        x, w_ih = ctx.saved_tensors
        dx, dw_ih, _ = torch.ops.gated_kernels.input_projection_backward(
            dxg.contiguous(), x, w_ih, False
        )
        return dx, dw_ih


class LayerNormLSTMFunction(torch.autograd.Function):
    """A LayerNorm LSTM layer-direction on the operators (csrc/layernorm.cpp on the CPU,
    triton_kernels/layernorm.py on CUDA): (xn, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight,
    ln_c_bias, h0, c0, lengths or None, reverse, keep_h or None, keep_c or None, backend) ->
    (y, h_n, c_n). xn = LN(x W_ih^T; ln_ih) + b_ih + b_hh stays ordinary PyTorch above it;
    keep_h / keep_c are zoneout's weights of the old state (reference.py), not differentiated.
    The four ln_* None: the plain LSTM (with zoneout), xn = x W_ih^T + b_ih + b_hh."""

    @staticmethod
    def forward(ctx, xn, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0, lengths,
                reverse, keep_h=None, keep_c=None, backend="cpp"):
        y, h_n, c_n, *saved = operator("layernorm_lstm_forward", backend, xn.device)(
            xn, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0, lengths, reverse,
            keep_h, keep_c
        )
        ctx.save_for_backward(w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0, lengths,
                              keep_h, keep_c, y, *saved)
        ctx.reverse, ctx.backend = reverse, backend
        ctx.normalised = ln_hh_weight is not None
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        (w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0, lengths, keep_h, keep_c,
         *saved) = ctx.saved_tensors
        grads = operator("layernorm_lstm_backward", ctx.backend, dy.device)(
            dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0, lengths,
            ctx.reverse, *saved, keep_h, keep_c
        )
        dxn, dw_hh, *ln, dh0, dc0 = grads
        if not ctx.normalised:  # no LayerNorm parameters to differentiate
            ln = [None] * 4
        return (dxn, dw_hh, *ln, dh0, dc0, None, None, None, None, None)


class LayerNormGRUFunction(torch.autograd.Function):
    """A LayerNorm GRU layer-direction on the operators: (xn, w_hh, b_hh, ln_hh_weight,
    ln_hh_bias, h0, lengths or None, reverse, keep_h or None, backend) -> (y, h_n),
    xn = LN(x W_ih^T; ln_ih) + b_ih; ln_hh None: the plain GRU (with zoneout)."""

    @staticmethod
    def forward(ctx, xn, w_hh, b_hh, ln_hh_weight, ln_hh_bias, h0, lengths, reverse, keep_h=None,
                backend="cpp"):
        y, h_n, *saved = operator("layernorm_gru_forward", backend, xn.device)(
            xn, w_hh, b_hh, ln_hh_weight, ln_hh_bias, h0, lengths, reverse, keep_h
        )
        ctx.save_for_backward(w_hh, ln_hh_weight, h0, lengths, keep_h, y, *saved)
        ctx.reverse, ctx.backend = reverse, backend
        ctx.normalised = ln_hh_weight is not None
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n):
        w_hh, ln_hh_weight, h0, lengths, keep_h, *saved = ctx.saved_tensors
        dxn, dw_hh, db_hh, dln_hh_weight, dh0 = operator(
            "layernorm_gru_backward", ctx.backend, dy.device)(
            dy, dh_n, w_hh, ln_hh_weight, h0, lengths, ctx.reverse, *saved, keep_h
        )
        # b_hh and ln_hh's bias add to the same R: one gradient, each its own tensor.
        ln = (dln_hh_weight, db_hh.clone()) if ctx.normalised else (None, None)
        return dxn, dw_hh, db_hh, *ln, dh0, None, None, None, None


def _product_grads_mask(ctx, *inputs):
    """A cell backward's output_mask: whether x, h, w_ih and w_hh (these inputs of its Function)
    need a gradient; the products of the others are skipped, as torch.nn's cell skips them."""
    return [ctx.needs_input_grad[k] for k in inputs]


def _wanted(mask, *grads):
    """The gradients the mask asked for; None for the rest (returned empty by the operator)."""
    return tuple(g if wanted else None for g, wanted in zip(grads, mask))


class LSTMCellFunction(torch.autograd.Function):
    """One LSTM step on the C++ backend: (x [B,I], h, c, w_ih, w_hh, b_ih or None, b_hh or None)
    -> (h1, c1), over the cell operators (two products and one fused pass each way)."""

    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh):
        h1, c1, gates, c_saved = torch.ops.gated_kernels.lstm_cell_forward(
            x, h, c, w_ih, w_hh, b_ih, b_hh
        )
        ctx.save_for_backward(x, h, c, w_ih, w_hh, gates, c_saved)
        ctx.bias = b_ih is not None
        return h1, c1

    @staticmethod
    @once_differentiable
    def backward(ctx, dh1, dc1):
        x, h, c, w_ih, w_hh, gates, c_saved = ctx.saved_tensors
        mask = _product_grads_mask(ctx, 0, 1, 3, 4)
        dx, dh, dc, dw_ih, dw_hh, db = torch.ops.gated_kernels.lstm_cell_backward(
            dh1, dc1, x, h, c, w_ih, w_hh, gates, c_saved, ctx.bias, mask
        )
        # Both biases get the same gradient; each its own tensor, as accumulation may keep it.
        db_ih, db_hh = (db, db.clone()) if ctx.bias else (None, None)
        dx, dh, dw_ih, dw_hh = _wanted(mask, dx, dh, dw_ih, dw_hh)
        return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh


class GRUCellFunction(torch.autograd.Function):
    """One GRU step on the C++ backend: (x [B,I], h, w_ih, w_hh, b_ih or None, b_hh or None)
    -> h1."""

    @staticmethod
    def forward(ctx, x, h, w_ih, w_hh, b_ih, b_hh):
        h1, gates = torch.ops.gated_kernels.gru_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, h, w_ih, w_hh, gates)
        ctx.bias = b_ih is not None
        return h1

    @staticmethod
    @once_differentiable
    def backward(ctx, dh1):
        x, h, w_ih, w_hh, gates = ctx.saved_tensors
        mask = _product_grads_mask(ctx, 0, 1, 2, 3)
        dx, dh, dw_ih, dw_hh, db_ih, db_hh = torch.ops.gated_kernels.gru_cell_backward(
            dh1, x, h, w_ih, w_hh, gates, ctx.bias, mask
        )
        if not ctx.bias:
            db_ih = db_hh = None
        return (*_wanted(mask, dx, dh, dw_ih, dw_hh), db_ih, db_hh)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """(h1, c1) of one LSTM step on the C++ backend: the inference operator when no gradient can
    be asked for (nothing saved), else LSTMCellFunction."""
    if needs_grad(x, h, c, w_ih, w_hh, b_ih, b_hh):
        if c is h:  # one zeros tensor for both states: Dynamo refuses it as two inputs
            c = c.clone()
        return LSTMCellFunction.apply(x, h, c, w_ih, w_hh, b_ih, b_hh)
    return torch.ops.gated_kernels.lstm_cell_inference.default(x, h, c, w_ih, w_hh, b_ih, b_hh)


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """h1 of one GRU step on the C++ backend, as lstm_cell."""
    if needs_grad(x, h, w_ih, w_hh, b_ih, b_hh):
        return GRUCellFunction.apply(x, h, w_ih, w_hh, b_ih, b_hh)
    return torch.ops.gated_kernels.gru_cell_inference.default(x, h, w_ih, w_hh, b_ih, b_hh)
