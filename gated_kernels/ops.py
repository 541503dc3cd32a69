"""The recurrence operators: schemas and fake (meta) implementations, over the argument checks
of contract.py and the cells' descriptions of spec.py.

One forward and one backward operator per cell, each over one layer, one direction and the whole
sequence (DESIGN.md: the op boundary). The schemas are declared here, once, so that the operators
exist wherever the package imports; device kernels register against them: the C++ extension
`gated_kernels._C` for CPU tensors, the Triton launchers for CUDA tensors. The sequence and the
LayerNorm operators' schemas and fakes are made from each cell's description (spec.Cell); the
lists below give them written out.

Shapes (T steps, B batch, H hidden, P projected size or H, G gate width):
  lstm_forward(xg [T,B,4H], w_hh [4H,P], w_hr [P,H]?, h0 [B,P], c0 [B,H], lengths [B]?, reverse)
      -> y [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,4H], c_all [T,B,H]
  lstm_inference(x [T,B,I], w_ih [4H,I], bias [4H]?, w_hh, w_hr?, h0, c0, lengths?, reverse)
      -> y, h_n, c_n: lstm_forward's first three outputs for xg = x w_ih^T + bias (bias is
      b_ih + b_hh), with nothing saved; the CPU kernel never makes xg [T,B,4H]
  lstm_backward(dy, dh_n, dc_n, w_hh, w_hr?, h0, c0, lengths?, reverse, y, gates, c_all)
      -> dxg [T,B,4H], dw_hh [4H,P], dw_hr [P,H] (or [0] without w_hr), dh0 [B,P], dc0 [B,H]
  gru_forward(xg [T,B,3H], w_hh [3H,H], b_hh [3H], h0 [B,H], lengths [B]?, reverse)
      -> y [T,B,H], h_n [B,H], gates [T,B,4H]
  gru_inference(x [T,B,I], w_ih [3H,I], b_ih [3H]?, w_hh, b_hh, h0, lengths?, reverse)
      -> y, h_n: gru_forward's for xg = x w_ih^T + b_ih, nothing saved, no xg made on the CPU
  gru_backward(dy, dh_n, w_hh, h0, lengths?, reverse, y, gates)
      -> dxg [T,B,3H], dw_hh [3H,H], db_hh [3H], dh0 [B,H]
`gates` and `c_all` are saved for backward: the LSTM's gates in float32 for 16-bit inputs on the
CPU and in float16 on CUDA (lstm_gates_dtype), its cell states in float32; the GRU's gates in
the input's dtype.

The C++ backend's training path takes the layer input, as the inference operators do, and saves
what backward needs; the input projection's gradients come from their own operator:
  lstm_forward_from_input(x, w_ih, bias?, w_hh, w_hr?, h0, c0, lengths?, reverse)
      -> lstm_forward's outputs for xg = x w_ih^T + bias, without making xg on the CPU
  gru_forward_from_input(x, w_ih, b_ih?, w_hh, b_hh, h0, lengths?, reverse)
      -> gru_forward's outputs for xg = x w_ih^T + b_ih
  input_projection(x [T,B,I], w_ih [G,I]) -> xg [T,B,G] = x w_ih^T, for callers that need xg
      itself (the LayerNorm cells)
  input_projection_backward(dxg [T,B,G], x [T,B,I], w_ih [G,I], bias: bool, lengths?)
      -> dx [T,B,I], dw_ih [G,I], dbias [G] (or [0]); with lengths, dxg is 0 past each row's
      length and the products take the running rows alone
(csrc/input_projection.cpp: one product each, on oneDNN's matmul where it is large enough to
repay oneDNN's fixed cost, since ATen's float32 product would run MKL's generic code on AMD
CPUs.)

One step of a cell, for LSTMCell, GRUCell and one-layer T=1 calls (CPU; csrc/cell.cpp): two
products and one fused pass, without the sequence operators' thread team and packing:
  lstm_cell_inference(x [B,I], h [B,H], c [B,H], w_ih [4H,I], w_hh [4H,H], b_ih?, b_hh?)
      -> h1 [B,H], c1 [B,H]
  lstm_cell_forward(same) -> h1, c1, gates [B,4H], c_saved [B,H] (both saved_dtype)
  lstm_cell_backward(dh1, dc1, x, h, c, w_ih, w_hh, gates, c_saved, bias: bool,
                     output_mask: bool[4])
      -> dx, dh, dc, dw_ih, dw_hh, db [4H] (or [0]; the gradient of b_ih and of b_hh alike);
      output_mask: which of dx, dh, dw_ih, dw_hh to compute, the others [0] (torch.nn's cell
      skips the product of an input that needs no gradient, as a detached state)
  gru_cell_inference(x, h, w_ih [3H,I], w_hh [3H,H], b_ih?, b_hh?) -> h1
  gru_cell_forward(same) -> h1, gates [B,4H] (r, z, n, h W_hn^T + b_hn; saved_dtype)
  gru_cell_backward(dh1, x, h, w_ih, w_hh, gates, bias: bool, output_mask: bool[4])
      -> dx, dh, dw_ih, dw_hh, db_ih [3H] (or [0]), db_hh [3H] (or [0])
  Every argument has x's dtype but w_ih and w_hh, which may be bfloat16 under a float32 x (the
  cells under CPU autocast: products in bfloat16, the state and the pass in float32); each
  gradient has its input's dtype.

The LayerNorm cells' recurrence (CPU, float32 / float64 / bfloat16, what is saved in
saved_dtype; csrc/layernorm.cpp and
layernorm_backward.cpp, which give the math): xn is the input side, LN(x W_ih^T; ln_ih) plus
the biases that add to it, made above the training operators, and by the inference operators
themselves a step at a time (their ln_ih_bias holding those biases too).
  layernorm_lstm_forward(xn [T,B,4H], w_hh [4H,H], ln_hh_weight, ln_hh_bias [4H],
      ln_c_weight, ln_c_bias [H], h0, c0 [B,H], lengths?, reverse) -> y, h_n, c_n,
      gates [T,B,4H], norm_hh [T,B,4H], c_all [T,B,H], norm_c [T,B,H], rstd [T,B,2]
  layernorm_lstm_inference(x [T,B,I], w_ih [4H,I], ln_ih_weight, ln_ih_bias [4H], w_hh,
      ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0, lengths?, reverse)
      -> y, h_n, c_n
  layernorm_lstm_backward(dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0,
      lengths?, reverse, y, gates, norm_hh, c_all, norm_c, rstd)
      -> dxn, dw_hh, dln_hh_weight, dln_hh_bias, dln_c_weight, dln_c_bias, dh0, dc0
  layernorm_gru_forward(xn [T,B,3H], w_hh [3H,H], b_hh [3H], ln_hh_weight, ln_hh_bias [3H],
      h0 [B,H], lengths?, reverse) -> y, h_n, gates [T,B,4H], norm_hh [T,B,3H], rstd [T,B,1]
  layernorm_gru_inference(x [T,B,I], w_ih [3H,I], ln_ih_weight, ln_ih_bias [3H], w_hh, b_hh,
      ln_hh_weight, ln_hh_bias, h0, lengths?, reverse) -> y, h_n
  layernorm_gru_backward(dy, dh_n, w_hh, ln_hh_weight, h0, lengths?, reverse, y, gates,
      norm_hh, rstd) -> dxn, dw_hh, db_hh (also ln_hh_bias's), dln_hh_weight, dh0
"""

import torch

from gated_kernels.contract import (
    check_args,
    check_cell_args,
    check_layernorm_args,
    check_normalised,
    check_vectors_like,
    input_gates_like,
)
from gated_kernels.spec import CELLS, saved_dtype

LIBRARY = torch.library.Library("gated_kernels", "DEF")


def _args(tensors, prefix="", suffix=""):
    """Schema arguments for spec.Tensor descriptions, `Tensor?` where optional, or for names
    (always given: an operator's outputs)."""
    return ", ".join(f"Tensor{'?' if getattr(t, 'optional', False) else ''} "
                     f"{prefix}{getattr(t, 'name', t)}{suffix}" for t in tensors)


def sequence_schemas(cell):
    """The four sequence operators of `cell` (a spec.Cell), name -> schema: forward from xg,
    inference and forward_from_input from the layer input x, and backward, as the module
    docstring lists them for the LSTM and the GRU."""
    params, states0 = _args(cell.params), _args(cell.states, suffix="0")
    tail = "Tensor? lengths, bool reverse"
    finals, saved = _args(cell.states, suffix="_n"), _args(cell.saved)
    from_x = f"Tensor x, Tensor w_ih, Tensor? {cell.input_bias}, {params}, {states0}, {tail}"
    forward_outputs = f"(Tensor y, {finals}, {saved})"
    s, dparams = cell.stem, _args([p.name for p in cell.params], "d")
    return {
        f"{s}_forward": f"(Tensor xg, {params}, {states0}, {tail}) -> {forward_outputs}",
        f"{s}_inference": f"({from_x}) -> (Tensor y, {finals})",
        f"{s}_forward_from_input": f"({from_x}) -> {forward_outputs}",
        f"{s}_backward": (f"(Tensor dy, {_args(cell.states, 'd', '_n')}, {_args(cell.weights)}, "
                          f"{states0}, {tail}, Tensor y, {saved}) -> (Tensor dxg, "
                          f"{dparams}, {_args(cell.states, 'd', '0')})"),
    }


def _define(schemas):
    """Declares the operators `schemas` names (name -> schema); returns their names. The
    operators themselves are not differentiable: gradients come from the autograd Functions
    (autograd.py), which call the backward operators. A fallthrough at the Autograd key says so
    to the dispatcher, so a direct call returns tensors that do not require grad instead of a
    silently wrong graph."""
    for name, schema in schemas.items():
        LIBRARY.define(name + schema)
        LIBRARY.impl(name, torch.library.fallthrough_kernel, "Autograd")
    return list(schemas)


OPERATORS = [name for cell in CELLS.values() for name in _define(sequence_schemas(cell))]

LIBRARY.define(
    "input_projection_backward(Tensor dxg, Tensor x, Tensor w_ih, bool bias, "
    "Tensor? lengths=None) "
    "-> (Tensor dx, Tensor dw_ih, Tensor dbias)"
)
LIBRARY.impl("input_projection_backward", torch.library.fallthrough_kernel, "Autograd")
LIBRARY.define("input_projection(Tensor x, Tensor w_ih) -> Tensor xg")
LIBRARY.impl("input_projection", torch.library.fallthrough_kernel, "Autograd")

def cell_schemas(cell):
    """The three one-step operators of `cell` (a spec.Cell), name -> schema, as the module
    docstring lists them for the LSTM and the GRU; a cell of one state returns it as a Tensor."""
    states, saved = _args(cell.states), _args(cell.step_saved)
    args = f"Tensor x, {states}, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh"
    new = _args(cell.states, suffix="1")
    returned = new if len(cell.states) == 1 else f"({new})"
    s = f"{cell.stem}_cell"
    return {
        f"{s}_inference": f"({args}) -> {returned}",
        f"{s}_forward": f"({args}) -> ({new}, {saved})",
        f"{s}_backward": (f"({_args(cell.states, 'd', '1')}, Tensor x, {states}, Tensor w_ih, "
                          f"Tensor w_hh, {saved}, bool bias, bool[4] output_mask) -> (Tensor dx, "
                          f"{_args(cell.states, 'd')}, Tensor dw_ih, Tensor dw_hh, "
                          f"{_args(cell.bias_grads)})"),
    }


# The cell operators' product choice on its own (cell_matmul in csrc/cell.cpp): c + a b in
# out_dtype (a's by default), for the tests and the product benchmark.
LIBRARY.define(
    "_cell_matmul(Tensor a, Tensor b, Tensor? c=None, ScalarType? out_dtype=None) -> Tensor"
)
LIBRARY.impl("_cell_matmul", torch.library.fallthrough_kernel, "Autograd")
CELL_OPERATORS = [name for cell in CELLS.values() if cell.step_saved
                  for name in _define(cell_schemas(cell))]


# The LayerNorm cells' operators. Every ln_* argument None: the same cell without LayerNorm (the
# plain LSTM / GRU with zoneout), ln_ih_bias then the bias that adds to x W_ih^T, if any.
def layernorm_schemas(cell):
    """The three LayerNorm operators of `cell` (a spec.Cell), name -> schema, as the module
    docstring lists them for the LSTM and the GRU: forward from xn, inference from x, backward;
    zoneout's weights `keep_{state}` last, None by default."""
    params, states0 = _args(cell.ln_params), _args(cell.states, suffix="0")
    tail = "Tensor? lengths, bool reverse"
    keeps = ", ".join(f"Tensor? keep_{state.name}=None" for state in cell.states)
    finals, saved = _args(cell.states, suffix="_n"), _args(cell.ln_saved)
    after_xn = f"{params}, {states0}, {tail}, {keeps}"
    reads = _args(p for p in cell.ln_params if p.name in cell.ln_reads)
    s = f"layernorm_{cell.stem}"
    return {
        f"{s}_inference": (f"(Tensor x, Tensor w_ih, Tensor? ln_ih_weight, Tensor? ln_ih_bias, "
                           f"{after_xn}) -> (Tensor y, {finals})"),
        f"{s}_forward": f"(Tensor xn, {after_xn}) -> (Tensor y, {finals}, {saved})",
        f"{s}_backward": (f"(Tensor dy, {_args(cell.states, 'd', '_n')}, {reads}, {states0}, "
                          f"{tail}, Tensor y, {saved}, {keeps}) -> (Tensor dxn, "
                          f"{_args(cell.ln_grads, 'd')}, {_args(cell.states, 'd', '0')})"),
    }


LAYERNORM_OPERATORS = [name for cell in CELLS.values()
                       for name in _define(layernorm_schemas(cell))]

# One thread's per-step product of the CPU kernels (csrc/product.h, csrc/product_ops.cpp), for
# the tests, the product benchmark and gated_kernels.cpu: out = a w (+ bias) on the kernel
# GATED_KERNELS_CPU_GEMM selects, that kernel's name for a shape, the L2 size the kernels tune
# for, and the median time of a call with every thread of a team multiplying at once. CPU only;
# implemented by the C++ extension.
LIBRARY.define("_product(Tensor a, Tensor w, Tensor? bias, int calls=1) -> Tensor")
LIBRARY.impl("_product", torch.library.fallthrough_kernel, "Autograd")
LIBRARY.define("_product_kernel(int M, int K, ScalarType dtype) -> str")
LIBRARY.define("_l2_cache() -> (int bytes, str source)")
# A weight in `dtype` through autocast's cache of weight casts (csrc/autocast_weight.cpp): under
# torch.autocast a leaf float32 weight that requires grad is cast once a region, as torch.nn's
# products cast theirs. Implemented by the C++ extension; gated_kernels.autocast.cast_parameters
# calls it.
LIBRARY.define("_autocast_weight(Tensor weight, ScalarType dtype) -> Tensor")
LIBRARY.define(
    "_product_bench(int M, int K, int N, ScalarType dtype, int threads, int calls) -> float"
)



def _triton_kernel(name):
    """The CUDA kernel of an operator: the Triton launcher, imported on first use so the package
    imports without Triton. Run without grad mode, so a direct operator call records nothing."""

    def kernel(*args):
        from gated_kernels.triton_kernels import launchers

        with torch.no_grad():
            return getattr(launchers, name)(*args)

    return kernel


def _triton_from_input(name, outputs, save):
    """The CUDA kernel of an operator that takes the layer input: the input projection, then the
    Triton forward `name`, its first `outputs` outputs. An inference operator (save=False) has
    the kernels skip the tensors backward would read."""

    def kernel(x, w_ih, bias, *args):
        from gated_kernels.triton_kernels import launchers

        with torch.no_grad():
            xg = torch.nn.functional.linear(x, w_ih, bias)
            return getattr(launchers, name)(xg, *args, save=save)[:outputs]

    return kernel


for _cell in CELLS.values():
    _forward, _outputs = f"{_cell.stem}_forward", 1 + len(_cell.states)
    LIBRARY.impl(_forward, _triton_kernel(_forward), "CUDA")
    LIBRARY.impl(f"{_cell.stem}_backward", _triton_kernel(f"{_cell.stem}_backward"), "CUDA")
    LIBRARY.impl(f"{_cell.stem}_inference", _triton_from_input(_forward, _outputs, False), "CUDA")
    LIBRARY.impl(f"{_cell.stem}_forward_from_input",
                 _triton_from_input(_forward, _outputs + len(_cell.saved), True), "CUDA")
for _name in LAYERNORM_OPERATORS:  # triton_kernels/layernorm.py
    LIBRARY.impl(_name, _triton_kernel(_name), "CUDA")

def _forward_fake(cell):
    """The fake forward operator of `cell`: (xg, params, states, lengths, reverse) -> y [T,B,P],
    the final states, and the saved tensors ([T,B,width H], each its dtype)."""

    def fake(xg, *args):
        params, states, lengths, _ = cell.split(args)
        T, B, H, P = check_args(cell, xg, params, states, lengths)
        dims = {"B": B, "H": H, "P": P}
        return (xg.new_empty(T, B, P),
                *(xg.new_empty(tuple(dims[d] for d in s.shape)) for s in cell.states),
                *(xg.new_empty(T, B, k.width * H, dtype=k.dtype(xg)) for k in cell.saved))

    return fake


def _from_input_fake(cell, outputs):
    """The fake operator that takes the layer input (x, w_ih, bias, ...): the input side
    checked, then the forward's first `outputs` outputs."""
    forward = _forward_fake(cell)

    def fake(x, w_ih, bias, *args):
        return forward(input_gates_like(x, w_ih, bias, cell.name, cell.gates), *args)[:outputs]

    return fake


def _backward_fake(cell):
    """The fake backward operator of `cell`: (dy, d final states, weights, states, lengths,
    reverse, y, saved) -> dxg [T,B,G], each parameter's gradient ([0] for an absent one), each
    initial state's, in h0's dtype."""
    n_s, n_w = len(cell.states), len(cell.weights)

    def fake(dy, *args):
        weights = dict(zip((w.name for w in cell.weights), args[n_s:n_s + n_w]))
        states = args[n_s + n_w:2 * n_s + n_w]
        y, h0 = args[2 * n_s + n_w + 2], states[0]
        G = weights[cell.weights[0].name].shape[0]
        dims = {"G": G, "H": G // cell.gates, "P": h0.shape[1]}
        dparams = (h0.new_empty(0) if p.name in weights and weights[p.name] is None
                   else h0.new_empty(tuple(dims[d] for d in p.shape)) for p in cell.params)
        return (h0.new_empty(*y.shape[:2], G), *dparams, *(s.new_empty(s.shape) for s in states))

    return fake


def _register_fakes(fakes):
    """Registers each fake implementation of `fakes` (operator name -> function)."""
    for name, fake in fakes.items():
        torch.library.register_fake(f"gated_kernels::{name}")(fake)


for _cell in CELLS.values():
    _outputs = 1 + len(_cell.states)
    _register_fakes({
        f"{_cell.stem}_forward": _forward_fake(_cell),
        f"{_cell.stem}_inference": _from_input_fake(_cell, _outputs),
        f"{_cell.stem}_forward_from_input": _from_input_fake(_cell, _outputs + len(_cell.saved)),
        f"{_cell.stem}_backward": _backward_fake(_cell)})


@torch.library.register_fake("gated_kernels::input_projection")
def _input_projection_fake(x, w_ih):
    xg = input_gates_like(x, w_ih, None, "LSTM or GRU", 1)
    return x.new_empty(xg.shape)


@torch.library.register_fake("gated_kernels::input_projection_backward")
def _input_projection_backward_fake(dxg, x, w_ih, bias, lengths=None):
    dbias = x.new_empty(dxg.shape[2] if bias else 0)
    return x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), dbias


def _cell_inference_fake(cell):
    """The fake one-step inference of `cell`: its arguments checked; the new states [B, H] (a
    Tensor for a cell of one state)."""

    def fake(x, *args):
        states, (w_ih, w_hh, b_ih, b_hh) = args[:len(cell.states)], args[len(cell.states):]
        B, H = check_cell_args(x, states[0], w_ih, w_hh, b_ih, b_hh, cell.gates, *states[1:])
        new = tuple(x.new_empty(B, H) for _ in cell.states)
        return new[0] if len(new) == 1 else new

    return fake


def _cell_forward_fake(cell):
    """The fake one-step forward of `cell`: the new states, then what it saves (cell.step_saved,
    saved_dtype)."""
    inference = _cell_inference_fake(cell)

    def fake(x, *args):
        new = inference(x, *args)
        h1 = new if len(cell.states) == 1 else new[0]
        B, H = h1.shape
        saved = (x.new_empty(B, k.width * H, dtype=saved_dtype(x.dtype)) for k in cell.step_saved)
        return (*((h1,) if len(cell.states) == 1 else new), *saved)

    return fake


def _cell_backward_fake(cell):
    """The fake one-step backward of `cell`: dx, dh like their inputs where output_mask asks for
    them, else [0]; the other states' gradients; dw_ih, dw_hh as dx; the bias gradients [G], or
    [0] without biases."""
    ns = len(cell.states)

    def fake(*args):
        x, states, (w_ih, w_hh) = args[ns], args[ns + 1:2 * ns + 1], args[2 * ns + 1:2 * ns + 3]
        bias, mask = args[-2:]
        dx, dh, dw_ih, dw_hh = (t.new_empty(t.shape if wanted else 0)
                                for t, wanted in zip((x, states[0], w_ih, w_hh), mask))
        db = (x.new_empty(w_hh.shape[0] if bias else 0) for _ in cell.bias_grads)
        return (dx, dh, *(s.new_empty(s.shape) for s in states[1:]), dw_ih, dw_hh, *db)

    return fake


for _cell in (cell for cell in CELLS.values() if cell.step_saved):
    _register_fakes({f"{_cell.stem}_cell_inference": _cell_inference_fake(_cell),
                     f"{_cell.stem}_cell_forward": _cell_forward_fake(_cell),
                     f"{_cell.stem}_cell_backward": _cell_backward_fake(_cell)})


def _layernorm_forward_fake(cell):
    """The fake LayerNorm forward of `cell`: y [T,B,H], the final states, and what it saves
    (cell.ln_saved, saved_dtype)."""

    def fake(xn, *args):
        params, states, lengths, _, keep = cell.ln_split(args)
        T, B, H = check_layernorm_args(cell, xn, params, states, lengths, keep)
        acc = saved_dtype(xn.dtype)
        return (xn.new_empty(T, B, H), *(xn.new_empty(B, H) for _ in cell.states),
                *(xn.new_empty(T, B, k.width * H if k.per_unit else k.width, dtype=acc)
                  for k in cell.ln_saved))

    return fake


def _layernorm_inference_fake(cell):
    """The fake LayerNorm inference of `cell`: its input side checked (x, w_ih, ln_ih), then the
    forward's y and final states."""
    forward = _layernorm_forward_fake(cell)

    def fake(x, w_ih, ln_ih_weight, ln_ih_bias, *args):
        xn = input_gates_like(x, w_ih, None, cell.name, cell.gates)
        check_vectors_like(xn, ln_ih_weight=ln_ih_weight, ln_ih_bias=ln_ih_bias)
        ln_hh_weight = args[[p.name for p in cell.ln_params].index("ln_hh_weight")]
        check_normalised(ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight)
        return forward(xn, *args)[:1 + len(cell.states)]

    return fake


def _layernorm_backward_fake(cell):
    """The fake LayerNorm backward of `cell`: dxn [T,B,G], the gradients of cell.ln_grads (a
    LayerNorm's [0] without LayerNorm), each initial state's, in h0's dtype."""
    n_s, reads = len(cell.states), [p for p in cell.ln_params if p.name in cell.ln_reads]

    def fake(dy, *args):
        read = dict(zip((p.name for p in reads), args[n_s:n_s + len(reads)]))
        states = args[n_s + len(reads):2 * n_s + len(reads)]
        y, h0 = args[2 * n_s + len(reads) + 2], states[0]
        (T, B, H), G = y.shape, read["w_hh"].shape[0]
        dims, normalised = {"G": G, "H": H, "P": H}, read["ln_hh_weight"] is not None
        shapes = {p.name: tuple(dims[d] for d in p.shape) for p in cell.ln_params}
        grads = (h0.new_empty(0 if name.startswith("ln_") and not normalised else shapes[name])
                 for name in cell.ln_grads)
        return (h0.new_empty(T, B, G), *grads, *(s.new_empty(s.shape) for s in states))

    return fake


for _cell in CELLS.values():
    _register_fakes({f"layernorm_{_cell.stem}_forward": _layernorm_forward_fake(_cell),
                     f"layernorm_{_cell.stem}_inference": _layernorm_inference_fake(_cell),
                     f"layernorm_{_cell.stem}_backward": _layernorm_backward_fake(_cell)})
