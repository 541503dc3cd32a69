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


def _function(name, factory, cell, forward, backward):
    """The torch.autograd.Function class `name` (its graph nodes `{name}Backward`) that
    `factory` makes for `cell` from forward and backward, documented by the factory's
    docstring."""
    doc = factory.__doc__.replace("`cell`", f"the {cell.name}")
    return type(name, (torch.autograd.Function,), {
        "__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward)})


def _forward(ctx, cell, forward, inputs, args):
    """Runs `forward` (an operator of `cell`) on `inputs` and then args (params, states,
    lengths, reverse), saves what backward reads, and returns y and the final states."""
    params, states, lengths, reverse = cell.split(args)
    y, *outputs = forward(*inputs, *params, *states, lengths, reverse)
    weights = [t for p, t in zip(cell.params, params) if len(p.shape) == 2]  # cell.weights
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

    return _function(f"{cell.name}Function", _sequence_function, cell, forward, backward)


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

    return _function(f"{cell.name}FromInput", _from_input_function, cell, forward, backward)


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


def _layernorm_function(cell):
    """The autograd Function of `cell`'s LayerNorm operators (csrc/layernorm.cpp on the CPU,
    triton_kernels/layernorm.py on CUDA): (xn, cell.ln_params, states, lengths or None, reverse,
    zoneout's keep per state or None, backend="cpp") -> (y, final states). xn, LN(x W_ih^T;
    ln_ih) plus the biases that add to it, stays ordinary PyTorch above it; keep (reference.py)
    is not differentiated. Every ln_* None: the plain cell with zoneout."""
    names = [p.name for p in cell.ln_params]
    reads = [k for k, name in enumerate(names) if name in cell.ln_reads]
    shared, ns = dict(cell.ln_shared), len(cell.states)
    n = len(names) + 2 * ns + 2

    def forward(ctx, xn, *args):
        ctx.backend = args[n] if len(args) > n else "cpp"
        params, states, lengths, reverse, keep = cell.ln_split(args[:n])
        y, *outputs = operator(f"layernorm_{cell.stem}_forward", ctx.backend, xn.device)(
            xn, *params, *states, lengths, reverse, *keep)
        ctx.save_for_backward(*[params[k] for k in reads], *states, lengths, *keep, y,
                              *outputs[ns:])
        ctx.reverse = reverse
        ctx.normalised = params[names.index("ln_hh_weight")] is not None
        return y, *outputs[:ns]

    @once_differentiable
    def backward(ctx, dy, *dfinals):
        saved, r = ctx.saved_tensors, len(reads)
        states, lengths, keep = saved[r:r + ns], saved[r + ns], saved[r + ns + 1:r + 2 * ns + 1]
        op = operator(f"layernorm_{cell.stem}_backward", ctx.backend, dy.device)
        dxn, *grads = op(dy, *dfinals, *saved[:r], *states, lengths, ctx.reverse,
                         *saved[r + 2 * ns + 1:], *keep)
        by_name = dict(zip(cell.ln_grads, grads))
        dparams = [None if name.startswith("ln_") and not ctx.normalised
                   else by_name[name] if name in by_name
                   else by_name[shared[name]].clone()  # its own tensor, as accumulation keeps
                   for name in names]
        return (dxn, *dparams, *grads[len(cell.ln_grads):], None, None, *(None,) * ns, None)

    return _function(f"LayerNorm{cell.name}Function", _layernorm_function, cell, forward, backward)


LAYERNORM_FUNCTIONS = {cell.name: _layernorm_function(cell) for cell in CELLS.values()}
LayerNormLSTMFunction = LAYERNORM_FUNCTIONS["LSTM"]
LayerNormGRUFunction = LAYERNORM_FUNCTIONS["GRU"]


def _step_function(cell):
    """The autograd Function of `cell`'s one-step operators on the C++ backend (LSTMCellFunction,
    GRUCellFunction): (x [B,I], states, w_ih, w_hh, b_ih or None, b_hh or None) -> the new
    states (a Tensor for a cell of one state), over the cell operators (two products and one
    fused pass each way)."""
    ns = len(cell.states)
    forward_op = getattr(torch.ops.gated_kernels, f"{cell.stem}_cell_forward")
    backward_op = getattr(torch.ops.gated_kernels, f"{cell.stem}_cell_backward")

    def forward(ctx, x, *args):
        new = forward_op(x, *args)
        ctx.save_for_backward(x, *args[:ns + 2], *new[ns:])  # x, states, w_ih, w_hh, saved
        ctx.bias = args[ns + 2] is not None
        return new[0] if ns == 1 else tuple(new[:ns])

    @once_differentiable
    def backward(ctx, *grads):
        # Whether x, h, w_ih and w_hh need a gradient: the products of the others are skipped,
        # as torch.nn's cell skips them (a detached state, frozen weights).
        mask = [ctx.needs_input_grad[k] for k in (0, 1, ns + 1, ns + 2)]
        dx, dh, *rest = backward_op(*grads, *ctx.saved_tensors, ctx.bias, mask)
        dothers, (dw_ih, dw_hh), db = rest[:ns - 1], rest[ns - 1:ns + 1], rest[ns + 1:]
        if not ctx.bias:
            db_ih = db_hh = None
        elif len(db) == 1:  # both biases folded: the same gradient, each its own tensor
            db_ih, db_hh = db[0], db[0].clone()
        else:
            db_ih, db_hh = db
        dx, dh, dw_ih, dw_hh = (g if wanted else None
                                for g, wanted in zip((dx, dh, dw_ih, dw_hh), mask))
        return dx, dh, *dothers, dw_ih, dw_hh, db_ih, db_hh

    return _function(f"{cell.name}CellFunction", _step_function, cell, forward, backward)


STEP_FUNCTIONS = {cell.name: _step_function(cell) for cell in CELLS.values() if cell.step_saved}
LSTMCellFunction, GRUCellFunction = STEP_FUNCTIONS["LSTM"], STEP_FUNCTIONS["GRU"]


def distinct(states):
    """The states, each its own tensor: torch.nn's cells pass one zeros tensor for both of the
    LSTM's (a cell has at most two states), and Dynamo refuses an autograd.Function that gets
    one tensor as two inputs."""
    if len(states) == 2 and states[1] is states[0]:
        return [states[0], states[1].clone()]
    return states


def _step(cell):
    """One step of `cell` on the C++ backend (lstm_cell, gru_cell): (x, states, w_ih, w_hh,
    b_ih, b_hh) -> the new states (a Tensor for a cell of one state): the inference operator
    when no gradient can be asked for (nothing saved), else the cell's step Function."""
    ns, function = len(cell.states), STEP_FUNCTIONS[cell.name]
    inference = getattr(torch.ops.gated_kernels, f"{cell.stem}_cell_inference").default

    def step(x, *args):
        if needs_grad(x, *args):
            return function.apply(x, *distinct(args[:ns]), *args[ns:])
        return inference(x, *args)

    step.__doc__ = _step.__doc__.replace("`cell`", f"the {cell.name}")
    return step


# The cells with one-step operators (spec.Cell.step_saved).
STEPS = {cell.name: _step(cell) for cell in CELLS.values() if cell.step_saved}
lstm_cell, gru_cell = STEPS["LSTM"], STEPS["GRU"]
