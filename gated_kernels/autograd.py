"""The autograd layer: one torch.autograd.Function per cell over the recurrence operators.

The functions take the precomputed input gates `xg`; the input projection and its gradients stay
in ordinary PyTorch above them. Gradients are first order only (`once_differentiable`): the
backward operators are not themselves differentiated.

The operators dispatch by device (C++ for CPU tensors, Triton for CUDA tensors). The one
exception is the `triton` backend on CPU tensors, which only exists in Triton's interpreter (the
way the kernels are tested without a GPU): it calls the Triton launchers directly.
"""

import torch
from torch.autograd.function import once_differentiable

from gated_kernels import ops  # noqa: F401  (declares the torch.ops.gated_kernels operators)


def _op(name, backend, device):
    if backend == "triton" and device.type == "cpu":
        from gated_kernels.triton_kernels import launchers

        return getattr(launchers, name)
    return getattr(torch.ops.gated_kernels, name)


class LSTMFunction(torch.autograd.Function):
    """(xg, w_hh, w_hr or None, h0, c0, lengths or None, reverse, backend) -> (y, h_n, c_n)"""

    @staticmethod
    def forward(ctx, xg, w_hh, w_hr, h0, c0, lengths, reverse, backend="cpp"):
        y, h_n, c_n, gates, c_all = _op("lstm_forward", backend, xg.device)(
            xg, w_hh, w_hr, h0, c0, lengths, reverse
        )
        ctx.save_for_backward(w_hh, w_hr, h0, c0, lengths, y, gates, c_all)
        ctx.reverse, ctx.backend = reverse, backend
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        w_hh, w_hr, h0, c0, lengths, y, gates, c_all = ctx.saved_tensors
        dxg, dw_hh, dw_hr, dh0, dc0 = _op("lstm_backward", ctx.backend, dy.device)(
            dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, ctx.reverse, y, gates, c_all
        )
        return dxg, dw_hh, (dw_hr if w_hr is not None else None), dh0, dc0, None, None, None


def needs_grad(*tensors):
    """Whether autograd would record an op on these tensors (None entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_recurrence(xg, w_hh, w_hr, h0, c0, lengths, reverse, backend="cpp"):
    """(y, h_n, c_n): LSTMFunction where a gradient may be asked for; else the lstm_inference
    operator, which returns the same values without computing and storing the tensors that
    backward reads (gates [T, B, 4H] and c_all [T, B, H])."""
    if needs_grad(xg, w_hh, w_hr, h0, c0):
        return LSTMFunction.apply(xg, w_hh, w_hr, h0, c0, lengths, reverse, backend)
    if backend == "triton" and xg.device.type == "cpu":
        # Triton's interpreter: no inference launcher, the forward's saved tensors are dropped.
        return _op("lstm_forward", backend, xg.device)(xg, w_hh, w_hr, h0, c0, lengths, reverse)[:3]
    return torch.ops.gated_kernels.lstm_inference(xg, w_hh, w_hr, h0, c0, lengths, reverse)


class GRUFunction(torch.autograd.Function):
    """(xg, w_hh, b_hh, h0, lengths or None, reverse, backend) -> (y, h_n)"""

    @staticmethod
    def forward(ctx, xg, w_hh, b_hh, h0, lengths, reverse, backend="cpp"):
        y, h_n, gates = _op("gru_forward", backend, xg.device)(
            xg, w_hh, b_hh, h0, lengths, reverse
        )
        ctx.save_for_backward(w_hh, h0, lengths, y, gates)
        ctx.reverse, ctx.backend = reverse, backend
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n):
        w_hh, h0, lengths, y, gates = ctx.saved_tensors
        dxg, dw_hh, db_hh, dh0 = _op("gru_backward", ctx.backend, dy.device)(
            dy, dh_n, w_hh, h0, lengths, ctx.reverse, y, gates
        )
        return dxg, dw_hh, db_hh, dh0, None, None, None


def gru_recurrence(xg, w_hh, b_hh, h0, lengths, reverse, backend="cpp"):
    """(y, h_n): GRUFunction where a gradient may be asked for; else the gru_inference operator,
    the same values without the gates [T, B, 4H] that backward reads."""
    if needs_grad(xg, w_hh, b_hh, h0):
        return GRUFunction.apply(xg, w_hh, b_hh, h0, lengths, reverse, backend)
    if backend == "triton" and xg.device.type == "cpu":
        # Triton's interpreter: no inference launcher, the forward's saved tensors are dropped.
        return _op("gru_forward", backend, xg.device)(xg, w_hh, b_hh, h0, lengths, reverse)[:2]
    return torch.ops.gated_kernels.gru_inference(xg, w_hh, b_hh, h0, lengths, reverse)
