"""LSTM and GRU as functions: one layer in one direction (the input projection plus the
recurrence), and stacks of layers and directions built from it.

Shapes: x [T, B, I]; LSTM weights w_ih [4H, I], w_hh [4H, P], b_ih / b_hh [4H], w_hr [P, H];
GRU weights w_ih [3H, I], w_hh [3H, H], b_ih / b_hh [3H]; h0 [B, P], c0 [B, H]; lengths [B]
int64 (each in [1, T]) or None. The modules add batch_first, unbatched and packed input.
"""

import torch
import torch.nn.functional as F

from gated_kernels import dispatch, reference
from gated_kernels.autograd import (
    LAYERNORM_FUNCTIONS,
    STEPS,
    InputProjection,
    distinct,
    needs_grad,
    operator,
    recurrence,
)
from gated_kernels.backends import resolve_backend
from gated_kernels.spec import GRU, LSTM


def _layer_backend(name, device):
    backend = resolve_backend(name, device)
    if backend == "torch":
        raise ValueError("backend 'torch' runs torch.nn's own forward and exists for the modules "
                         "(LSTM, GRU, LSTMCell, GRUCell) only, not for one layer; choose 'cpp', "
                         "'triton' or 'reference' here")
    return backend


# The dtypes each backend runs LayerNorm and zoneout in (issue 17): the layernorm_* operators,
# csrc/layernorm.cpp and triton_kernels/layernorm.py (the plain cells with zoneout run them
# without their LayerNorms).
LAYERNORM_DTYPES = {"cpp": (torch.float32, torch.float64, torch.bfloat16),
                    "triton": (torch.float32, torch.float16, torch.bfloat16)}


def options_backend(requested, data, projection=False):
    """The backend a module's call with LayerNorm or zoneout runs (and the benchmark records):
    the reference while torch.onnx exports the model (its torch ops export; the operators do
    not); `auto` the layernorm_* operators where they run data's dtype (LAYERNORM_DTYPES: C++
    on the CPU, Triton on CUDA) and the layer has no projection, else the reference; a backend
    asked for by name runs or raises (lstm_layer, gru_layer)."""
    if dispatch.exporting_onnx():
        return "reference"
    backend = resolve_backend(requested, data.device)
    if requested == "auto" and (projection
                                or data.dtype not in LAYERNORM_DTYPES.get(backend, ())):
        return "reference"
    return backend


def _check_options(backend, layer_norm, keep, tensors):
    """LayerNorm and zoneout (issue 17) run on the reference backend, and on the C++ and Triton
    ones in LAYERNORM_DTYPES (`tensors`: the layer's, for the dtype)."""
    if backend == "reference" or (layer_norm is None and keep is None):
        return
    dtype = tensors[0].dtype
    if dtype not in LAYERNORM_DTYPES.get(backend, ()):
        raise ValueError(f"LayerNorm and zoneout run on the 'reference' backend, on 'cpp' for "
                         f"float32, float64 and bfloat16 and on 'triton' for float32, float16 "
                         f"and bfloat16, got backend {backend!r} ({dtype})")


def _no_layer_norm(count):
    """A layer's LayerNorms where it has none: (weight, bias) pairs of None, as the layernorm_*
    operators take them for the plain cells."""
    return ((None, None),) * count


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
               reverse=False, backend="auto", *, layer_norm=None, keep=None):
    """Returns y [T, B, P], h_n [B, P], c_n [B, H]. layer_norm: (ln_ih, ln_hh, ln_c), each a
    (weight, bias) pair, for G = LN(x W_ih^T; ln_ih) + b_ih + b_hh + LN(h W_hh^T; ln_hh) and
    h = o tanh(LN(c; ln_c)); keep: zoneout's (keep_h [T, B, P], keep_c [T, B, H]) (see
    reference.py). Both on the reference backend; LayerNorm, without projection, also on the
    C++ and Triton ones in their LAYERNORM_DTYPES.

    >>> T, B, I, H = 7, 2, 3, 4
    >>> y, h, c = lstm_layer(torch.randn(T, B, I), torch.zeros(B, H), torch.zeros(B, H),
    ...                      torch.randn(4 * H, I), torch.randn(4 * H, H), backend="reference")
    >>> tuple(y.shape)
    (7, 2, 4)
    """
    return _layer(LSTM, x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, backend,
                  layer_norm, keep)


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
              backend="auto", *, layer_norm=None, keep=None):
    """Returns y [T, B, H], h_n [B, H]. layer_norm: (ln_ih, ln_hh) for A = LN(x W_ih^T; ln_ih)
    + b_ih and R = LN(h W_hh^T; ln_hh) + b_hh; keep: zoneout's (keep_h [T, B, H],). Both on the
    reference backend; LayerNorm also on the C++ and Triton ones in their LAYERNORM_DTYPES.

    >>> T, B, I, H = 7, 2, 3, 4
    >>> y, h = gru_layer(torch.randn(T, B, I), torch.zeros(B, H), torch.randn(3 * H, I),
    ...                  torch.randn(3 * H, H), backend="reference")
    >>> tuple(h.shape)
    (2, 4)
    """
    return _layer(GRU, x, (h0,), w_ih, w_hh, b_ih, b_hh, None, lengths, reverse, backend,
                  layer_norm, keep)


def _layer(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, backend, layer_norm,
           keep):
    """One layer-direction of `cell` (spec.Cell), lstm_layer's and gru_layer's body: (y, the
    final states)."""
    backend = _layer_backend(backend, x.device)
    _check_options(backend, layer_norm, keep, (x, w_ih, w_hh, b_ih, b_hh, w_hr, *states))
    options = layer_norm is not None or keep is not None
    if (backend == "cpp" and x.size(0) == 1 and w_hr is None and lengths is None and not options
            and cell.name in STEPS):
        # One step: the cell operators (a T=1 call is a cell call; see csrc/cell.cpp). A cell
        # without them (spec.Cell.step_saved) runs its step on the sequence operators.
        final = STEPS[cell.name](x[0], *states, w_ih, w_hh, b_ih, b_hh)
        h, *rest = (final,) if isinstance(final, torch.Tensor) else final
        return h.unsqueeze(0), h.clone(), *rest
    if cell.input_bias == "bias":
        # Both biases act on the same pre-activation, so they fold into the input projection.
        bias = b_ih + b_hh if b_ih is not None else None
    else:
        # b_hn sits inside r * (W_hn h + b_hn), so b_hh goes to the recurrence; zeros without
        # bias.
        bias, b_hh = b_ih, w_hh.new_zeros(w_hh.shape[0]) if b_hh is None else b_hh
    given = {"w_hh": w_hh, "b_hh": b_hh, "w_hr": w_hr}
    params = [given[p.name] for p in cell.params]
    if backend != "reference" and not options:  # the cell's own sequence operators
        return recurrence(cell, x, w_ih, bias, params, distinct(states), lengths, reverse,
                          backend)
    keep = keep or (None,) * len(cell.states)
    ln_ih, *norms = layer_norm or _no_layer_norm(len(cell.norms))
    if backend != "reference":  # LayerNorm or zoneout: the layernorm_* operators
        if w_hr is not None:
            raise ValueError(f"{cell.name} layers with LayerNorm or zoneout have no projection "
                             f"(w_hr) on backend {backend!r}; the 'reference' backend runs it")
        ln_params = (*(given[p.name] for p in cell.ln_params if not p.name.startswith("ln_")),
                     *(t for norm in norms for t in norm))
        if not needs_grad(x, w_ih, bias, *ln_params, *states, *ln_ih):
            # On the CPU the input side is made inside the operator, a step at a time: no xn
            # [T, B, G].
            return operator(f"layernorm_{cell.stem}_inference", backend, x.device)(
                x, w_ih, *_folded(ln_ih, bias), *ln_params, *states, lengths, reverse, *keep)
        return LAYERNORM_FUNCTIONS[cell.name].apply(
            _input_gates(x, w_ih, bias, ln_ih, backend), *ln_params, *distinct(states), lengths,
            reverse, *keep, backend)
    names = (f"ln_{name}" for name, _ in cell.norms if name != "ih")
    recurrent_norms = dict(zip(names, norms)) if layer_norm is not None else {}
    return getattr(reference, f"{cell.stem}_recurrence")(
        _input_gates(x, w_ih, bias, ln_ih), *params, *states, lengths, reverse,
        **recurrent_norms, **{f"keep_{s.name}": k for s, k in zip(cell.states, keep)})


def _input_gates(x, w_ih, bias, ln_ih, backend="reference"):
    """x W_ih^T + bias, or LN(x W_ih^T; ln_ih) + bias, for all steps at once: the product on
    the input projection operators on the C++ backend (which pick the kernel by size), ATen's on
    the reference. The bias adds to LN's own (one [G] sum, not a pass over [T, B, G]). ln_ih
    None or (None, None): no LayerNorm."""
    if ln_ih is None or ln_ih[0] is None:
        return F.linear(x, w_ih, bias)
    xg = InputProjection.apply(x.contiguous(), w_ih) if backend == "cpp" else x @ w_ih.T
    return reference.layer_norm(xg, _folded(ln_ih, bias))


def _folded(ln, bias):
    """A LayerNorm's (weight, bias) with `bias` (or None) added to its bias: LN(v; w, b) + bias
    = LN(v; w, b + bias); without LayerNorm ((None, None)), (None, bias)."""
    weight, ln_bias = ln
    return weight, ln_bias if bias is None else bias if ln_bias is None else ln_bias + bias


def zoneout_keep(p, training, shape, like):
    """zoneout's weights of the previous state, `shape` [T, B, H] (reference.py's keep_h /
    keep_c): Bernoulli(p) masks drawn from torch's RNG in training, p everywhere in eval. The
    uniforms are float32 whatever like's dtype: the same masks in every dtype under one seed
    (a bfloat16 uniform has 8 bits, which would also round p)."""
    if training:
        return (torch.rand(shape, device=like.device) < p).to(like.dtype)
    return torch.full((), p, dtype=like.dtype, device=like.device).expand(shape)


def drop_connect(w_hh, p, training):
    """DropConnect: W_hh times a Bernoulli(1 - p) mask / (1 - p), drawn once per call, in
    training; W_hh in eval (or with p = 0)."""
    if p == 0.0 or not training:
        return w_hh
    return w_hh * (torch.rand_like(w_hh) >= p) / (1.0 - p)


def _split_weights(weights, has_bias, has_proj):
    """One (layer, direction)'s parameters in torch.nn order -> (w_ih, w_hh, b_ih, b_hh, w_hr)."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    w_hr = weights[-1] if has_proj else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def _stack(run_layer, x, states, num_layers, bidirectional, dropout, training):
    """Layers and directions as torch.nn runs them: directions concatenated on the feature dim,
    dropout on the output of every layer but the last, in training only. `states` holds the
    initial state tensors [L*D, B, *]; run_layer(x, k, reverse) runs layer-direction k."""
    if num_layers == 1 and not bidirectional:
        # One layer-direction: its output and final states as views, not copies.
        y, *final = run_layer(x, 0, False)
        return (y, *(f.unsqueeze(0) for f in final))
    D = 2 if bidirectional else 1
    finals = [[] for _ in states]
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            y, *final = run_layer(layer_input, layer * D + d, d == 1)
            outputs.append(y)
            for store, f in zip(finals, final):
                store.append(f)
        layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return (layer_input, *(torch.stack(f) for f in finals))


def _layers(cell, x, states, weights, num_layers, bidirectional, dropout, training, has_bias,
            has_proj, lengths, backend, layer_norms, zoneout, dropconnect):
    """A stack of `cell`'s layers (_layer), each with its DropConnect mask and zoneout's masks
    drawn in that order, the masks in the order of the states."""
    n = len(weights) // (num_layers * (2 if bidirectional else 1))

    def run_layer(layer_input, k, reverse):
        w_ih, w_hh, b_ih, b_hh, w_hr = _split_weights(weights[k * n:(k + 1) * n], has_bias,
                                                      has_proj)
        w_hh = drop_connect(w_hh, dropconnect, training)
        keep = None
        if zoneout > 0.0:
            T, B = layer_input.shape[:2]
            keep = tuple(zoneout_keep(zoneout, training, (T, B, s.shape[-1]), layer_input)
                         for s in states)
        return _layer(cell, layer_input, [s[k] for s in states], w_ih, w_hh, b_ih, b_hh,
                      w_hr, lengths, reverse, backend,
                      None if layer_norms is None else layer_norms[k], keep)

    return _stack(run_layer, x, states, num_layers, bidirectional, dropout, training)


def lstm(x, h0, c0, weights, num_layers=1, bidirectional=False, dropout=0.0, training=False,
         has_bias=True, has_proj=False, lengths=None, backend="auto", *, layer_norms=None,
         zoneout=0.0, dropconnect=0.0):
    """A stacked, optionally bidirectional LSTM over a time-major sequence.

    x [T, B, I]; h0 [L*D, B, P]; c0 [L*D, B, H]; weights: the flat parameter list in torch.nn
    order (`module._flat_weights`). Returns y [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H].
    layer_norms: per layer-direction, lstm_layer's layer_norm; zoneout, dropconnect: their rates
    (lstm_layer's keep, drop_connect). Random draws per layer-direction, in order: the
    DropConnect mask, zoneout's h masks, its c masks.
    """
    return _layers(LSTM, x, (h0, c0), weights, num_layers, bidirectional, dropout, training,
                   has_bias, has_proj, lengths, backend, layer_norms, zoneout, dropconnect)


def gru(x, h0, weights, num_layers=1, bidirectional=False, dropout=0.0, training=False,
        has_bias=True, lengths=None, backend="auto", *, layer_norms=None, zoneout=0.0,
        dropconnect=0.0):
    """A stacked, optionally bidirectional GRU over a time-major sequence.

    x [T, B, I]; h0 [L*D, B, H]; weights: the flat parameter list in torch.nn order.
    Returns y [T, B, D*H], h_n [L*D, B, H]. layer_norms, zoneout, dropconnect: as lstm's.
    """
    return _layers(GRU, x, (h0,), weights, num_layers, bidirectional, dropout, training,
                   has_bias, False, lengths, backend, layer_norms, zoneout, dropconnect)
