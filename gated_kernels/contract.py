"""The operators' contract in code: the argument checks, over the cells' descriptions
(spec.Cell, passed in). A leaf (it imports torch alone): ops.py, which declares the operators
and their fake implementations, and the Triton launchers both import it, so imports run one way
(ops.py imports the launchers, on first use, and nothing below imports ops.py).
"""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _expect(cond, exc, message):
    if not cond:
        raise exc(message)


def _check_tensor(name, t, shape, dtype, device):
    """One argument against its expected shape (None entries are free), dtype and device."""
    _expect(
        isinstance(t, torch.Tensor),
        TypeError,
        f"{name} must be a Tensor, got {type(t).__name__}",
    )
    _expect(
        t.dim() == len(shape),
        ValueError,
        f"{name} must be {len(shape)}-D, got {t.dim()}-D with shape {tuple(t.shape)}",
    )
    expected = tuple(t.shape[k] if s is None else s for k, s in enumerate(shape))
    _expect(
        tuple(t.shape) == expected,
        ValueError,
        f"{name} must have shape {expected}, got {tuple(t.shape)}",
    )
    _expect(
        t.dtype == dtype,
        ValueError,
        f"{name} must have dtype {dtype} (the dtype of the input, xg or x), got {t.dtype}",
    )
    _expect(
        t.device == device,
        ValueError,
        f"{name} must be on {device} (the device of the input, xg or x), got {t.device}",
    )


def _check_xg(xg, cell, gates):
    _check_tensor("xg", xg, (None, None, None), xg.dtype, xg.device)
    _expect(
        xg.dtype in FLOAT_DTYPES,
        ValueError,
        f"xg must have a floating dtype {FLOAT_DTYPES}, got {xg.dtype}",
    )
    T, B, G = xg.shape
    _expect(T >= 1, ValueError, f"xg must have at least one step (T >= 1), got T = {T}")
    _expect(
        G % gates == 0,
        ValueError,
        f"xg.size(2) must be {gates}H for {cell}, got {G}",
    )
    return T, B, G // gates


def _check_lengths(lengths, T, B, device):
    """Shape, dtype and device only: checking values in [1, T] would read device memory (a host
    sync on CUDA), so value checks belong to the CPU kernel and the module layer."""
    if lengths is None:
        return
    _expect(
        lengths.dtype == torch.int64,
        ValueError,
        f"lengths must have dtype torch.int64, got {lengths.dtype}",
    )
    _check_tensor("lengths", lengths, (B,), torch.int64, device)


def check_args(cell, xg, params, states, lengths):
    """Validates the arguments of `cell`'s forward operator (spec.Cell: xg [T,B,G], its params
    and states in its order, lengths [B] or None); returns (T, B, H, P). The projection first,
    since its size P shapes the rest."""
    T, B, H = _check_xg(xg, cell.name, cell.gates)
    dims = {"T": T, "B": B, "H": H, "G": cell.gates * H, "P": H}
    given = dict(zip((p.name for p in cell.params), params))
    if given.get(cell.projection) is not None:
        _check_tensor(cell.projection, given[cell.projection], (None, H), xg.dtype, xg.device)
        dims["P"] = given[cell.projection].shape[0]
    for p, t in zip(cell.params, params):
        if p.name != cell.projection:
            _check_tensor(p.name, t, tuple(dims[d] for d in p.shape), xg.dtype, xg.device)
    for s, t in zip(cell.states, states):
        _check_tensor(f"{s.name}0", t, tuple(dims[d] for d in s.shape), xg.dtype, xg.device)
    _check_lengths(lengths, T, B, xg.device)
    return T, B, H, dims["P"]


def input_gates_like(x, w_ih, bias, cell, gates):
    """Validates an inference operator's input projection (x [T,B,I], w_ih [G,I], bias [G]?);
    returns an empty tensor shaped like its input gates xg [T,B,G], for the checks of xg."""
    _check_tensor("x", x, (None, None, None), x.dtype, x.device)
    _check_tensor("w_ih", w_ih, (None, x.shape[2]), x.dtype, x.device)
    _expect(
        w_ih.shape[0] % gates == 0,
        ValueError,
        f"w_ih.size(0) must be {gates}H for {cell}, got {w_ih.shape[0]}",
    )
    if bias is not None:
        _check_tensor("bias", bias, (w_ih.shape[0],), x.dtype, x.device)
    return x.new_empty(x.shape[0], x.shape[1], w_ih.shape[0])


def check_cell_args(x, h, w_ih, w_hh, b_ih, b_hh, gates, c=None):
    """Validates a cell operator's arguments (x [B,I], h [B,H], w_ih [G,I], w_hh [G,H], biases
    [G] or None, G = gates * H; the LSTM's c [B,H]); returns (B, H)."""
    _check_tensor("x", x, (None, None), x.dtype, x.device)
    # The weights have x's dtype, or bfloat16 under a float32 x (products in bfloat16, the
    # state and the pass in float32: the cells under CPU autocast).
    w_dtype = w_hh.dtype if (x.dtype, w_hh.dtype) == (torch.float32, torch.bfloat16) else x.dtype
    _check_tensor("w_hh", w_hh, (None, None), w_dtype, x.device)
    B, H = x.shape[0], w_hh.shape[1]
    _check_tensor("w_hh", w_hh, (gates * H, H), w_dtype, x.device)
    _check_tensor("w_ih", w_ih, (gates * H, x.shape[1]), w_dtype, x.device)
    _check_tensor("h", h, (B, H), x.dtype, x.device)
    _expect((b_ih is None) == (b_hh is None), ValueError,
            "b_ih and b_hh must be given together or both be None")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_tensor(name, b, (gates * H,), x.dtype, x.device)
    if c is not None:
        _check_tensor("c", c, (B, H), x.dtype, x.device)
    return B, H


def check_vectors_like(xn, **vectors):
    """Each named vector [G] (or None) in xn's dtype and device, G = xn.size(2)."""
    for name, t in vectors.items():
        if t is not None:
            _check_tensor(name, t, (xn.shape[2],), xn.dtype, xn.device)


def check_normalised(**layer_norms):
    """Whether a LayerNorm operator normalises: its named LayerNorm arguments all given, or all
    None (the cell without LayerNorm: the plain LSTM / GRU with zoneout); raises on a mix."""
    given = {t is not None for t in layer_norms.values()}
    _expect(len(given) == 1, ValueError,
            f"{', '.join(layer_norms)} must all be given (LayerNorm) or all be None (none), got "
            f"some of each")
    return given.pop()


def check_layernorm_args(cell, xn, params, states, lengths, keep=()):
    """Validates the arguments of `cell`'s LayerNorm forward (spec.Cell: xn [T,B,G], then
    cell.ln_params, their LayerNorms all given or all None, see check_normalised; the states;
    lengths; keep: zoneout's keep_h (and keep_c), each [T, B, H] or None), and those of its
    inference operator past their input side; returns (T, B, H)."""
    T, B, H = _check_xg(xn, cell.name, cell.gates)
    dims = {"B": B, "H": H, "G": cell.gates * H, "P": H}
    norms = {}
    for p, t in zip(cell.ln_params, params):
        if p.name.startswith("ln_"):
            norms[p.name] = t
        else:
            _check_tensor(p.name, t, tuple(dims[d] for d in p.shape), xn.dtype, xn.device)
    for s, t in zip(cell.states, states):
        _check_tensor(f"{s.name}0", t, (B, H), xn.dtype, xn.device)
    check_normalised(**norms)
    for p, t in zip(cell.ln_params, params):
        if p.name in norms and t is not None:
            _check_tensor(p.name, t, tuple(dims[d] for d in p.shape), xn.dtype, xn.device)
    _check_lengths(lengths, T, B, xn.device)
    for s, k in zip(cell.states, keep):
        if k is not None:
            _check_tensor(f"keep_{s.name}", k, (T, B, H), xn.dtype, xn.device)
    return T, B, H
