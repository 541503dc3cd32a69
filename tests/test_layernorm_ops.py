"""The LayerNorm operators on each backend (C++: csrc/layernorm.cpp, csrc/layernorm_backward.cpp;
Triton: triton_kernels/layernorm.py, in its interpreter without a GPU) against
gated_kernels.reference: inference, and training's outputs and every gradient, in each backend's
dtypes, lengths (unsorted, 1 and T), reverse, zoneout, one and two threads, poisoned outputs;
gradcheck, opcheck and compile; the modules' choice between them and the reference; errors
naming the argument."""

import os

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from common import assert_close, max_rel_error
from gated_kernels import LayerNormGRU, LayerNormLSTM, contract, reference
from gated_kernels.autograd import LayerNormGRUFunction, LayerNormLSTMFunction, operator
from gated_kernels.spec import LSTM

# (T, B, H, lengths, reverse): B=1, odd H, two threads' worth of rows with lengths 1 and T.
CASES = {
    "T5-B1-H7": (5, 1, 7, None, False),
    "T6-B5-H12-lengths": (6, 5, 12, [3, 6, 1, 5, 6], False),
    "T6-B5-H12-lengths-reverse": (6, 5, 12, [3, 6, 1, 5, 6], True),
}
# One row over two threads' hidden units: inference splits them, as the plain operators do,
# from a W_hh of 384 KB (4 x 160 x 160 in float64, 3 x 256 x 256 in bfloat16); training keeps
# the rows split, tested above.
SPLIT_CASES = {
    "T7-B1-H160-lengths-reverse": (7, 1, 160, [5], True),
    "T4-B1-H160": (4, 1, 160, None, False),
    "T3-B1-H256-lengths": (3, 1, 256, [2], False),
}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


# On a GPU the Triton runs are `cuda` tests (benchmarks/gpu_layernorm.sh selects them); without
# one they run in the interpreter with the rest.
ON_GPU = [pytest.mark.cuda] if torch.cuda.is_available() else []


def _triton_runs():
    """(backend, dtype, threads) of the Triton kernels where they run: on a GPU in float32,
    float16 and bfloat16; in the interpreter in float32 and float16 (it gets bfloat16
    arithmetic wrong, DESIGN.md)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return []
    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if torch.cuda.is_available():
        dtypes["bf16"] = torch.bfloat16
    elif os.environ.get("TRITON_INTERPRET") != "1":
        return []
    return [pytest.param("triton", d, 1, id=f"triton-{name}", marks=ON_GPU)
            for name, d in dtypes.items()]


# Every backend's runs: the C++ operators with one and two threads, then Triton's.
RUNS = [pytest.param("cpp", d, threads, id=f"cpp-{name}-{threads}t")
        for name, d in DTYPES.items() for threads in (1, 2)] + _triton_runs()
DEVICE = {"cpp": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu"}


def _on(backend, a):
    """The arguments `a` (as _inputs makes them) on `backend`'s device."""
    device = DEVICE[backend]
    return {k: tuple(t.to(device) for t in v) if isinstance(v, tuple)
            else None if v is None else v.to(device) for k, v in a.items()}


def _with_threads(threads, run):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def _inputs(cell, T, B, H, lengths, dtype, seed=0, I=5):
    """The operators' arguments: the layer input x [T, B, I], w_ih and ln_ih (the inference
    operators'), xn = LN(x w_ih^T; ln_ih) (the training operators', made in float64), and the
    rest, drawn in float64 and cast (so every dtype gets the same values)."""
    g = torch.Generator().manual_seed(seed)
    G = (4 if cell == "LSTM" else 3) * H

    def draw(*shape, scale=1.0, shift=0.0):
        return shift + scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    args = {"x": draw(T, B, I), "w_ih": draw(G, I, scale=0.5),
            "ln_ih": (draw(G, scale=0.3, shift=1.0), draw(G, scale=0.3)),
            "w_hh": draw(G, H, scale=0.4), "h0": draw(B, H),
            "ln_hh": (draw(G, scale=0.3, shift=1.0), draw(G, scale=0.3))}
    args["xn"] = reference.layer_norm(args["x"] @ args["w_ih"].T, args["ln_ih"])
    if cell == "LSTM":
        args.update(c0=draw(B, H), ln_c=(draw(H, scale=0.3, shift=1.0), draw(H, scale=0.3)))
    else:
        args.update(b_hh=draw(G, scale=0.3))
    args = {k: tuple(t.to(dtype) for t in v) if isinstance(v, tuple) else v.to(dtype)
            for k, v in args.items()}
    args["lengths"] = None if lengths is None else torch.tensor(lengths)
    return args


def _exact(a, inference=False):
    """The arguments `a` (as _inputs makes them in some dtype) in float64 exactly as rounded:
    the oracle's inputs, so that a kernel's error is its own and not the rounding of its
    inputs (a float16 LayerNorm LSTM's c_n: 7e-3 from that rounding alone, where PyTorch's
    float16 loop happened to land at 4.5e-3). For an inference operator xn is made again from
    the rounded x, w_ih and ln_ih, as the operator makes it."""
    b = {k: tuple(t.double() for t in v) if isinstance(v, tuple)
         else v if v is None or not v.is_floating_point() else v.double() for k, v in a.items()}
    if inference:
        b["xn"] = reference.layer_norm(b["x"] @ b["w_ih"].T, b["ln_ih"])
    return b


def _op(cell, a, reverse, backend="cpp"):
    """The inference operator, from the layer input (with zoneout's a["keep"] where given)."""
    keep = a.get("keep", ())
    op = operator(f"layernorm_{cell.lower()}_inference", backend, a["x"].device)
    if cell == "LSTM":
        return op(a["x"], a["w_ih"], *a["ln_ih"], a["w_hh"], *a["ln_hh"], *a["ln_c"], a["h0"],
                  a["c0"], a["lengths"], reverse, *keep)
    return op(a["x"], a["w_ih"], *a["ln_ih"], a["w_hh"], a["b_hh"], *a["ln_hh"], a["h0"],
              a["lengths"], reverse, *keep)


def _reference(cell, a, reverse):
    if cell == "LSTM":
        return reference.lstm_recurrence(a["xn"], a["w_hh"], None, a["h0"], a["c0"],
                                         a["lengths"], reverse, ln_hh=a["ln_hh"], ln_c=a["ln_c"])
    return reference.gru_recurrence(a["xn"], a["w_hh"], a["b_hh"], a["h0"], a["lengths"],
                                    reverse, ln_hh=a["ln_hh"])


@pytest.mark.parametrize(("backend", "dtype", "threads"), RUNS)
@pytest.mark.parametrize("case", [*CASES.values(), *SPLIT_CASES.values()],
                         ids=[*CASES, *SPLIT_CASES])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_layernorm_inference_matches_the_reference(cell, case, backend, dtype, threads,
                                                   monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")  # an unwritten element stays NaN
    T, B, H, lengths, reverse = case
    a = _inputs(cell, T, B, H, lengths, dtype)
    expected = _reference(cell, _exact(a, inference=True), reverse)
    a = _on(backend, a)
    actual = _with_threads(threads, lambda: _op(cell, a, reverse, backend))
    # Half types: within 2x PyTorch's own error, the reference run in that type.
    low = _reference(cell, _inputs(cell, T, B, H, lengths, dtype), reverse)
    for k, (got, want) in enumerate(zip(actual, expected)):
        assert got.dtype == dtype and got.device.type == DEVICE[backend]
        assert_close(got.cpu(), want, dtype, "out", f"output {k}", max_rel_error(low[k], want))


def _differentiable(cell, a):
    """The Function's tensor arguments in its order, each requiring grad."""
    names = (("xn", "w_hh", "ln_hh", "ln_c", "h0", "c0") if cell == "LSTM"
             else ("xn", "w_hh", "b_hh", "ln_hh", "h0"))
    tensors = []
    for name in names:
        tensors.extend(a[name] if isinstance(a[name], tuple) else (a[name],))
    return [t.detach().requires_grad_() for t in tensors]


def _function(cell, tensors, lengths, reverse, keep=(), backend="cpp"):
    if cell == "LSTM":
        return LayerNormLSTMFunction.apply(*tensors, lengths, reverse, *(keep or (None, None)),
                                           backend)
    return LayerNormGRUFunction.apply(*tensors, lengths, reverse, *(keep or (None,)), backend)


def _reference_of(cell, tensors, lengths, reverse):
    """reference.py's recurrence on the Function's arguments."""
    if cell == "LSTM":
        xn, w_hh, lw, lb, cw, cb, h0, c0 = tensors
        return reference.lstm_recurrence(xn, w_hh, None, h0, c0, lengths, reverse, ln_hh=(lw, lb),
                                         ln_c=(cw, cb))
    xn, w_hh, b_hh, lw, lb, h0 = tensors
    return reference.gru_recurrence(xn, w_hh, b_hh, h0, lengths, reverse, ln_hh=(lw, lb))


@pytest.mark.parametrize(("backend", "dtype", "threads"), RUNS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_layernorm_training_matches_the_reference(cell, case, backend, dtype, threads,
                                                  monkeypatch):
    """The forward operator's outputs and the backward operator's gradient of every argument
    (through LayerNormLSTMFunction / LayerNormGRUFunction), weighted by random output
    gradients, against the reference's in float64."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, H, lengths, reverse = case
    a = _inputs(cell, T, B, H, lengths, dtype)
    want_in = _differentiable(cell, _exact(a))
    expected = _reference_of(cell, want_in, a["lengths"], reverse)
    weights = [torch.randn_like(t) for t in expected]
    want_grads = torch.autograd.grad(expected, want_in, weights)
    on = _on(backend, a)
    got_in = _differentiable(cell, on)

    def run():
        actual = _function(cell, got_in, on["lengths"], reverse, backend=backend)
        dev = got_in[0].device
        return actual, torch.autograd.grad(actual, got_in, [w.to(dev, dtype) for w in weights])

    actual, got_grads = _with_threads(threads, run)
    # Half types: within 2x (outputs) / 3x (gradients) PyTorch's own error, the reference run
    # in that type.
    low_in = _differentiable(cell, a)
    low = _reference_of(cell, low_in, a["lengths"], reverse)
    low_grads = torch.autograd.grad(low, low_in, [w.to(dtype) for w in weights])
    for k, (got, want) in enumerate(zip(actual, expected)):
        assert got.dtype == dtype
        assert_close(got.cpu(), want, dtype, "out", f"output {k}", max_rel_error(low[k], want))
    for k, (got, want) in enumerate(zip(got_grads, want_grads)):
        assert got.dtype == dtype
        assert_close(got.cpu(), want, dtype, "grad", f"gradient of argument {k}",
                     max_rel_error(low_grads[k], want))


def _keep(cell, T, B, H, dtype, training, seed=3):
    """zoneout's weights of the old state: Bernoulli(0.3) masks (training) or 0.3 everywhere
    (eval, as functional.zoneout_keep expands it), one per state."""
    g = torch.Generator().manual_seed(seed)
    states = 2 if cell == "LSTM" else 1
    if training:
        return tuple((torch.rand(T, B, H, generator=g) < 0.3).to(dtype) for _ in range(states))
    return tuple(torch.full((), 0.3, dtype=dtype).expand(T, B, H) for _ in range(states))


@pytest.mark.parametrize("training", [True, False], ids=["masks", "eval"])
@pytest.mark.parametrize(("backend", "dtype", "threads"), RUNS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_matches_the_reference(cell, backend, dtype, threads, training, monkeypatch):
    """zoneout inside the operators: inference from the layer input, and training's outputs and
    every gradient, against reference.py's keep_h / keep_c, with lengths in reverse (a row
    past its length keeps its state whatever the mask)."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, H, lengths, reverse = CASES["T6-B5-H12-lengths-reverse"]
    a = _inputs(cell, T, B, H, lengths, dtype)
    lengths = a["lengths"]
    keep = _keep(cell, T, B, H, dtype, training)
    keep64 = tuple(k.double() for k in keep)

    def run_reference(tensors, keeps):
        kwargs = dict(zip(("keep_h", "keep_c"), keeps))
        if cell == "LSTM":
            xn, w_hh, lw, lb, cw, cb, h0, c0 = tensors
            return reference.lstm_recurrence(xn, w_hh, None, h0, c0, lengths, reverse,
                                             ln_hh=(lw, lb), ln_c=(cw, cb), **kwargs)
        xn, w_hh, b_hh, lw, lb, h0 = tensors
        return reference.gru_recurrence(xn, w_hh, b_hh, h0, lengths, reverse, ln_hh=(lw, lb),
                                        **kwargs)

    want_in = _differentiable(cell, _exact(a))
    expected = run_reference(want_in, keep64)
    expected_inference = run_reference(_differentiable(cell, _exact(a, inference=True)), keep64)
    weights = [torch.randn_like(t) for t in expected]
    want_grads = torch.autograd.grad(expected, want_in, weights)
    low_in = _differentiable(cell, a)  # half types: PyTorch's own error, the reference in them
    low = run_reference(low_in, keep)
    low_grads = torch.autograd.grad(low, low_in, [w.to(dtype) for w in weights])
    a["keep"] = keep
    on = _on(backend, a)
    got_in = _differentiable(cell, on)

    def run():
        actual = _function(cell, got_in, on["lengths"], reverse, on["keep"], backend)
        dev = got_in[0].device
        got_grads = torch.autograd.grad(actual, got_in, [w.to(dev, dtype) for w in weights])
        return actual, got_grads, _op(cell, on, reverse, backend)

    actual, got_grads, inferred = _with_threads(threads, run)
    for k in range(len(expected)):
        for got, want in ((actual[k], expected[k]), (inferred[k], expected_inference[k])):
            assert_close(got.cpu(), want, dtype, "out", f"output {k}",
                         max_rel_error(low[k], want))
    for k, (got, want) in enumerate(zip(got_grads, want_grads)):
        assert_close(got.cpu(), want, dtype, "grad", f"gradient of argument {k}",
                     max_rel_error(low_grads[k], want))


@pytest.mark.parametrize("training", [True, False], ids=["masks", "eval"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_zoneout_in_one_row_split_over_threads(cell, dtype, training, monkeypatch):
    """zoneout in the inference operators' split of one row's hidden units over two threads,
    against reference.py's keep_h / keep_c."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, H, lengths, reverse = SPLIT_CASES["T7-B1-H160-lengths-reverse"]
    a = _inputs(cell, T, B, H, lengths, dtype)
    keep = _keep(cell, T, B, H, dtype, training)

    def run_reference(b, keeps):
        kwargs = {"ln_hh": b["ln_hh"], "keep_h": keeps[0]}
        if cell == "LSTM":
            return reference.lstm_recurrence(b["xn"], b["w_hh"], None, b["h0"], b["c0"],
                                             b["lengths"], reverse, ln_c=b["ln_c"],
                                             keep_c=keeps[1], **kwargs)
        return reference.gru_recurrence(b["xn"], b["w_hh"], b["b_hh"], b["h0"], b["lengths"],
                                        reverse, **kwargs)

    expected = run_reference(_exact(a, inference=True), tuple(k.double() for k in keep))
    low = run_reference(a, keep)  # bfloat16: PyTorch's own error, the reference run in it
    a["keep"] = keep
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        actual = _op(cell, a, reverse)
    finally:
        torch.set_num_threads(previous)
    for k, (got, want) in enumerate(zip(actual, expected)):
        assert_close(got, want, dtype, "out", f"output {k}", max_rel_error(low[k], want))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_gradcheck(cell):
    lengths = torch.tensor([3, 1, 2])
    for reverse in (False, True):
        tensors = _differentiable(cell, _inputs(cell, 3, 3, 4, None, torch.float64, seed=1))
        assert torch.autograd.gradcheck(
            lambda *t, reverse=reverse: _function(cell, t, lengths, reverse), tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_opcheck_of_the_training_operators(cell, dtype):
    """The fake implementations against the kernels, saved dtypes included (float32 for
    bfloat16)."""
    a = _inputs(cell, 4, 3, 5, [4, 1, 3], dtype)
    ops = torch.ops.gated_kernels
    tensors = [t.detach() for t in _differentiable(cell, a)]
    forward = ops.layernorm_lstm_forward if cell == "LSTM" else ops.layernorm_gru_forward
    if cell == "LSTM":
        xn, w_hh, lw, lb, cw, cb, h0, c0 = tensors
        args = (xn, w_hh, lw, lb, cw, cb, h0, c0, a["lengths"], True)
    else:
        xn, w_hh, b_hh, lw, lb, h0 = tensors
        args = (xn, w_hh, b_hh, lw, lb, h0, a["lengths"], True)
    torch.library.opcheck(forward.default, args)
    y, h_n, *rest = forward(*args)
    if cell == "LSTM":
        c_n, *saved = rest
        backward = ops.layernorm_lstm_backward.default
        grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n))
        back_args = (*grads, w_hh, lw, cw, cb, h0, c0, a["lengths"], True, y, *saved)
    else:
        backward = ops.layernorm_gru_backward.default
        back_args = (torch.randn_like(y), torch.randn_like(h_n), w_hh, lw, h0, a["lengths"],
                     True, y, *rest)
    torch.library.opcheck(backward, back_args)


def test_the_backward_operators_name_a_bad_argument():
    a = _inputs("GRU", 4, 2, 6, None, torch.float32)
    xn, w_hh, b_hh, lw, lb, h0 = (t.detach() for t in _differentiable("GRU", a))
    y, h_n, gates, norm_hh, rstd = torch.ops.gated_kernels.layernorm_gru_forward(
        xn, w_hh, b_hh, lw, lb, h0, None, False)
    backward = torch.ops.gated_kernels.layernorm_gru_backward
    with pytest.raises(RuntimeError, match=r"norm_hh must have shape \[4, 2, 18\]"):
        backward(y, h_n, w_hh, lw, h0, None, False, y, gates, norm_hh[:, :, :17], rstd)
    with pytest.raises(RuntimeError, match=r"w_hh must have dtype Double, got Float"):
        backward(y.double(), h_n.double(), w_hh, lw.double(), h0.double(), None, False,
                 y.double(), gates.double(), norm_hh.double(), rstd.double())
    with pytest.raises(RuntimeError, match=r"gates must have dtype Float \(saved for h0's Float"):
        backward(y, h_n, w_hh, lw, h0, None, False, y, gates.bfloat16(), norm_hh, rstd)


@pytest.mark.parametrize(("device", "dtype"), [
    ("cpu", torch.float64), pytest.param("cuda", torch.float32, marks=pytest.mark.cuda)])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_compile_fullgraph_trains_as_eager(cell, device, dtype):
    """A two-layer bidirectional module's training step under torch.compile(fullgraph=True):
    the same loss and gradients as eager (the C++ operators in float64; on a GPU the Triton
    ones in float32)."""
    torch.manual_seed(3)
    cls = LayerNormLSTM if cell == "LSTM" else LayerNormGRU
    module = cls(3, 4, num_layers=2, bidirectional=True, dtype=dtype, device=device)
    x = torch.randn(5, 2, 3, dtype=dtype, device=device, requires_grad=True)

    def loss(x):
        return module(x)[0].square().sum()

    torch._dynamo.reset()
    inputs = [x, *module.parameters()]
    expected = torch.autograd.grad(loss(x), inputs)
    actual = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x), inputs)
    for k, (a, b) in enumerate(zip(actual, expected)):
        assert_close(a.double().cpu(), b.double().cpu(), dtype, "grad", f"grad {k}")


def _stack_and_reference(cell, **kwargs):
    """A two-layer bidirectional module (kwargs: its backend, device, dtype) with parameters
    moved off their initial values, the reference backend's in float64 with the same values, an
    input [6, 4, 3] in float64 and its rows as a PackedSequence of lengths 2, 6, 1, 4."""
    torch.manual_seed(0)
    cls = LayerNormLSTM if cell == "LSTM" else LayerNormGRU
    module = cls(3, 5, num_layers=2, bidirectional=True, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    exact = cls(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, backend="reference")
    exact.load_state_dict(module.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, 6, 1, 4]),
                                                     enforce_sorted=False)
    return module, exact, x, packed


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_the_modules_run_the_operators(cell):
    """float32 / float64 on the CPU without zoneout: the operators, the same values as the
    reference backend (bidirectional, two layers, a PackedSequence; the gradients in
    test_layernorm.py), bfloat16 and zoneout included; float16: the reference."""
    cls = LayerNormLSTM if cell == "LSTM" else LayerNormGRU
    module, slow, x, packed = _stack_and_reference(cell, dtype=torch.float64)
    with torch.no_grad():
        assert module._call_backend(x) == "cpp" and slow._call_backend(x) == "reference"
        for inputs in ((x,), (packed,)):
            fast, ref = module(*inputs), slow(*inputs)
            y_fast, y_ref = (o.data if hasattr(o, "data") else o for o in (fast[0], ref[0]))
            assert_close(y_fast, y_ref, torch.float64, "out", "y")
            finals = zip(fast[1], ref[1]) if cell == "LSTM" else [(fast[1], ref[1])]
            for a, b in finals:
                assert_close(a, b, torch.float64, "out", "final state")
        assert module.bfloat16()._call_backend(x.bfloat16()) == "cpp"
        assert module.half()._call_backend(x.half()) == "reference"
    assert module.double()._call_backend(x) == "cpp"  # parameters require grad
    with torch.no_grad():
        assert cls(3, 5, zoneout=0.1)._call_backend(x.float()) == "cpp"


def test_the_operators_name_a_bad_argument():
    a = _inputs("LSTM", 4, 2, 6, None, torch.float32)
    with pytest.raises(RuntimeError, match=r"ln_c_weight must have shape \[6\]"):
        torch.ops.gated_kernels.layernorm_lstm_inference(
            a["x"], a["w_ih"], *a["ln_ih"], a["w_hh"], *a["ln_hh"], a["ln_c"][0][:5],
            a["ln_c"][1], a["h0"], a["c0"], None, False)
    with pytest.raises(RuntimeError, match=r"ln_ih_bias must have shape \[24\]"):
        torch.ops.gated_kernels.layernorm_lstm_inference(
            a["x"], a["w_ih"], a["ln_ih"][0], a["ln_ih"][1][:5], a["w_hh"], *a["ln_hh"],
            *a["ln_c"], a["h0"], a["c0"], None, False)
    with pytest.raises(RuntimeError, match=r"w_ih.size\(1\) must be I"):
        torch.ops.gated_kernels.layernorm_lstm_inference(
            a["x"], a["w_ih"][:, :4], *a["ln_ih"], a["w_hh"], *a["ln_hh"], *a["ln_c"], a["h0"],
            a["c0"], None, False)
    b = _inputs("GRU", 4, 2, 6, None, torch.float16)
    with pytest.raises(RuntimeError, match="x must be float32, float64 or bfloat16"):
        torch.ops.gated_kernels.layernorm_gru_inference(
            b["x"], b["w_ih"], *b["ln_ih"], b["w_hh"], b["b_hh"], *b["ln_hh"], b["h0"], None,
            False)
    with pytest.raises(RuntimeError, match="must be float32, float64 or bfloat16"):
        torch.ops.gated_kernels.layernorm_gru_forward(
            b["xn"], b["w_hh"], b["b_hh"], *b["ln_hh"], b["h0"], None, False)
    b = _inputs("GRU", 4, 2, 6, None, torch.float32)
    with pytest.raises(RuntimeError, match=r"lengths\[1\] must be in \[1, T\]"):
        torch.ops.gated_kernels.layernorm_gru_inference(
            b["x"], b["w_ih"], *b["ln_ih"], b["w_hh"], b["b_hh"], *b["ln_hh"], b["h0"],
            torch.tensor([4, 0]), False)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_opcheck(cell):
    a = _inputs(cell, 4, 3, 5, [4, 1, 3], torch.float32)
    if cell == "LSTM":
        op = torch.ops.gated_kernels.layernorm_lstm_inference.default
        args = (a["x"], a["w_ih"], *a["ln_ih"], a["w_hh"], *a["ln_hh"], *a["ln_c"], a["h0"],
                a["c0"], a["lengths"], True)
    else:
        op = torch.ops.gated_kernels.layernorm_gru_inference.default
        args = (a["x"], a["w_ih"], *a["ln_ih"], a["w_hh"], a["b_hh"], *a["ln_hh"], a["h0"],
                a["lengths"], True)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_strided_arguments(cell):
    """Every tensor argument of the inference operators as a strided view (x, w_ih and w_hh
    transposed back, the vectors every other element of a longer one)."""
    a = _inputs(cell, 5, 3, 6, [5, 2, 4], torch.float64)
    expected = _reference(cell, a, False)

    def strided(t):
        if t is None or t.dtype == torch.int64:
            return t
        if t.dim() == 1:
            return torch.stack([t, torch.zeros_like(t)], dim=1).reshape(-1)[::2]
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)

    b = {k: tuple(map(strided, v)) if isinstance(v, tuple) else strided(v) for k, v in a.items()}
    assert not b["x"].is_contiguous() and not b["ln_ih"][1].is_contiguous()
    for got, want in zip(_op(cell, b, False), expected):
        assert_close(got, want, torch.float64, "out", "output")


@pytest.mark.skipif(not _triton_runs(), reason="needs Triton, on a GPU or in its interpreter")
@pytest.mark.parametrize("cell", [pytest.param(c, marks=ON_GPU) for c in ("LSTM", "GRU")])
def test_the_modules_run_the_triton_kernels(cell):
    """float32 on the `triton` backend (`auto` on a GPU): the Triton operators, with the
    reference backend's outputs and gradients (two layers, bidirectional, a PackedSequence),
    and zoneout in eval."""
    device = DEVICE["triton"]
    backend = "auto" if device == "cuda" else "triton"
    module, exact, x, packed = _stack_and_reference(cell, backend=backend, device=device)
    assert module._call_backend(x.float().to(device)) == "triton"
    for inputs in (x, packed):
        fast = module(inputs.float().to(device))
        want = exact(inputs)
        y_fast, y_want = (o.data if isinstance(o, PackedSequence) else o
                          for o in (fast[0], want[0]))
        assert_close(y_fast.cpu(), y_want, torch.float32, "out", "y")
        params = list(module.parameters())
        got = torch.autograd.grad(y_fast.square().sum(), params)
        expected = torch.autograd.grad(y_want.square().sum(), list(exact.parameters()))
        for name, a, b in zip(dict(module.named_parameters()), got, expected):
            assert_close(a.cpu(), b, torch.float32, "grad", name)
    # zoneout in eval (each state p old + (1 - p) new; the masks' draws depend on the dtype,
    # and the operator tests check them).
    module.zoneout = exact.zoneout = 0.25
    module.eval()
    exact.eval()
    with torch.no_grad():
        y_fast, y_want = module(x.float().to(device))[0], exact(x)[0]
    assert_close(y_fast.cpu(), y_want, torch.float32, "out", "y with zoneout")


@pytest.mark.skipif(not _triton_runs(), reason="needs Triton, on a GPU or in its interpreter")
@pytest.mark.parametrize("device", [pytest.param(DEVICE["triton"], marks=ON_GPU)])
def test_the_triton_operators_name_a_bad_argument(device):
    a = _on("triton", _inputs("LSTM", 4, 2, 6, None, torch.float32))
    forward = operator("layernorm_lstm_forward", "triton", a["x"].device)
    args = [a["xn"], a["w_hh"], *a["ln_hh"], *a["ln_c"], a["h0"], a["c0"], None, False]
    bad = list(args)
    bad[4] = a["ln_c"][0][:5]
    with pytest.raises(ValueError, match=r"ln_c_weight must have shape \(6,\)"):
        forward(*bad)
    with pytest.raises(ValueError, match=r"keep_h must be 3-D, got 2-D"):
        forward(*args, a["h0"])
    with pytest.raises(ValueError, match="float64"):
        forward(*(t.double() if isinstance(t, torch.Tensor) else t for t in args))
    y, h_n, c_n, *saved = forward(*args)
    backward = operator("layernorm_lstm_backward", "triton", a["x"].device)
    with pytest.raises(ValueError, match=r"norm_c must have shape \(4, 2, 6\)"):
        backward(y, h_n, c_n, a["w_hh"], a["ln_hh"][0], *a["ln_c"], a["h0"], a["c0"], None,
                 False, y, *saved[:3], saved[3][:, :, :5], saved[4])
    with pytest.raises(ValueError, match="gates must have dtype torch.float32, got torch.float64"):
        backward(y, h_n, c_n, a["w_hh"], a["ln_hh"][0], *a["ln_c"], a["h0"], a["c0"], None,
                 False, y, saved[0].double(), *saved[1:])
    inference = operator("layernorm_gru_inference", "triton", a["x"].device)
    b = _on("triton", _inputs("GRU", 4, 2, 6, None, torch.float32))
    with pytest.raises(ValueError, match=r"ln_ih_bias must have shape \(18,\)"):
        inference(b["x"], b["w_ih"], b["ln_ih"][0], b["ln_ih"][1][:5], b["w_hh"], b["b_hh"],
                  *b["ln_hh"], b["h0"], None, False)


def _plain_reference(cell, a, reverse, keep, differentiable=None):
    """reference.py's plain recurrence (no LayerNorm) on `a` with zoneout's `keep`, from
    xg = x W_ih^T + bias (a["bias"]); with `differentiable` (xg, w_hh, [b_hh,] h0[, c0]) those
    tensors in place of a's."""
    if cell == "LSTM":
        xg, w_hh, h0, c0 = differentiable or (a["x"] @ a["w_ih"].T + a["bias"], a["w_hh"],
                                              a["h0"], a["c0"])
        return reference.lstm_recurrence(xg, w_hh, None, h0, c0, a["lengths"], reverse,
                                         keep_h=keep[0], keep_c=keep[1])
    xg, w_hh, b_hh, h0 = differentiable or (a["x"] @ a["w_ih"].T + a["bias"], a["w_hh"],
                                            a["b_hh"], a["h0"])
    return reference.gru_recurrence(xg, w_hh, b_hh, h0, a["lengths"], reverse, keep_h=keep[0])


@pytest.mark.parametrize("training", [True, False], ids=["masks", "eval"])
@pytest.mark.parametrize(("backend", "dtype", "threads"), RUNS)
@pytest.mark.parametrize("case", [CASES["T6-B5-H12-lengths-reverse"],
                                  SPLIT_CASES["T7-B1-H160-lengths-reverse"]],
                         ids=["T6-B5-H12-lengths-reverse", "T7-B1-H160-lengths-reverse"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_without_layer_norm_the_operators_run_the_plain_cells(cell, case, backend, dtype,
                                                               threads, training, monkeypatch):
    """Every ln_* argument None (the plain LSTM / GRU with zoneout): inference from the layer
    input (ln_ih_bias the bias; one row over the team's threads at H=160 in C++), the forward's
    outputs and the backward's gradients, empty for the LayerNorms', against the plain
    reference with zoneout on the rounded inputs."""
    monkeypatch.setenv("GATED_KERNELS_POISON_OUTPUTS", "1")
    T, B, H, lengths, reverse = case
    G = (4 if cell == "LSTM" else 3) * H
    a = _inputs(cell, T, B, H, lengths, dtype)
    a["bias"] = (0.3 * torch.randn(G, generator=torch.Generator().manual_seed(4),
                                   dtype=torch.float64)).to(dtype)
    keep = _keep(cell, T, B, H, dtype, training)
    keep64 = tuple(k.double() for k in keep)
    a64 = _exact(a)
    a64["bias"] = a["bias"].double()
    expected = _plain_reference(cell, a64, reverse, (*keep64, None))
    low = _plain_reference(cell, a, reverse, (*keep, None))  # PyTorch's own error in dtype
    on = _on(backend, {**a, "keep": keep})
    dev = on["x"].device
    ops = {k: operator(f"layernorm_{cell.lower()}_{k}", backend, dev)
           for k in ("inference", "forward", "backward")}
    none = (None, None)

    def run():
        if cell == "LSTM":
            inferred = ops["inference"](on["x"], on["w_ih"], None, on["bias"], on["w_hh"],
                                        *none, *none, on["h0"], on["c0"], on["lengths"], reverse,
                                        *on["keep"])
        else:
            inferred = ops["inference"](on["x"], on["w_ih"], None, on["bias"], on["w_hh"],
                                        on["b_hh"], *none, on["h0"], on["lengths"], reverse,
                                        *on["keep"])
        return inferred

    inferred = _with_threads(threads, run)
    for k, want in enumerate(expected):
        assert_close(inferred[k].cpu(), want, dtype, "out", f"inference output {k}",
                     max_rel_error(low[k], want))
    # Training: xg given (the exact oracle's, rounded), every gradient.
    xg = (a64["x"] @ a64["w_ih"].T + a64["bias"]).to(dtype)
    tensors = ([xg, a["w_hh"], a["h0"], a["c0"]] if cell == "LSTM"
               else [xg, a["w_hh"], a["b_hh"], a["h0"]])
    want_in = [t.double().requires_grad_() for t in tensors]
    expected = _plain_reference(cell, a64, reverse, (*keep64, None), want_in)
    weights = [torch.randn_like(t) for t in expected]
    want_grads = torch.autograd.grad(expected, want_in, weights)
    low_in = [t.detach().clone().requires_grad_() for t in tensors]
    low = _plain_reference(cell, a, reverse, (*keep, None), low_in)
    low_grads = torch.autograd.grad(low, low_in, [w.to(dtype) for w in weights])
    got_in = [t.to(dev) for t in tensors]
    dys = [w.to(dev, dtype) for w in weights]
    if cell == "LSTM":
        xg_d, w_hh, h0, c0 = got_in
        out = _with_threads(threads, lambda: ops["forward"](
            xg_d, w_hh, *none, *none, h0, c0, on["lengths"], reverse, *on["keep"]))
        grads = _with_threads(threads, lambda: ops["backward"](
            *dys, w_hh, None, *none, h0, c0, on["lengths"], reverse, out[0], *out[3:],
            *on["keep"]))
        got_grads = (grads[0], grads[1], grads[6], grads[7])
        assert all(g.numel() == 0 for g in grads[2:6])
    else:
        xg_d, w_hh, b_hh, h0 = got_in
        out = _with_threads(threads, lambda: ops["forward"](
            xg_d, w_hh, b_hh, *none, h0, on["lengths"], reverse, *on["keep"]))
        grads = _with_threads(threads, lambda: ops["backward"](
            *dys, w_hh, None, h0, on["lengths"], reverse, out[0], *out[2:], *on["keep"]))
        got_grads = (grads[0], grads[1], grads[2], grads[4])
        assert grads[3].numel() == 0
    for k, want in enumerate(expected):
        assert_close(out[k].cpu(), want, dtype, "out", f"output {k}", max_rel_error(low[k], want))
    for k, (got, want) in enumerate(zip(got_grads, want_grads)):
        assert_close(got.cpu(), want, dtype, "grad", f"gradient of argument {k}",
                     max_rel_error(low_grads[k], want))


def test_the_layer_norm_arguments_come_all_or_none():
    a = _inputs("LSTM", 4, 2, 6, None, torch.float32)
    with pytest.raises(RuntimeError, match="ln_hh_weight, ln_hh_bias, ln_c_weight and ln_c_bias "
                                           "must all be given .* or all be None"):
        torch.ops.gated_kernels.layernorm_lstm_forward(
            a["xn"], a["w_hh"], *a["ln_hh"], None, a["ln_c"][1], a["h0"], a["c0"], None, False)
    with pytest.raises(RuntimeError, match="ln_ih_weight, ln_hh_weight and ln_hh_bias must all"):
        b = _inputs("GRU", 4, 2, 6, None, torch.float32)
        torch.ops.gated_kernels.layernorm_gru_inference(
            b["x"], b["w_ih"], None, None, b["w_hh"], b["b_hh"], *b["ln_hh"], b["h0"], None,
            False)
    # The fake implementations' and the Triton launchers' check.
    with pytest.raises(ValueError, match="ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias must "
                                         "all be given"):
        contract.check_layernorm_args(LSTM, a["xn"], (a["w_hh"], None, a["ln_hh"][1], *a["ln_c"]),
                                      (a["h0"], a["c0"]), None)


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_opcheck_of_the_triton_operators(cell):
    """On a GPU: the fake implementations against the Triton kernels, every operator."""
    a = _on("triton", _inputs(cell, 4, 3, 5, [4, 1, 3], torch.float32))
    ops = torch.ops.gated_kernels
    tensors = [t.detach() for t in _differentiable(cell, a)]
    lengths = a["lengths"]
    if cell == "LSTM":
        xn, w_hh, lw, lb, cw, cb, h0, c0 = tensors
        forward, args = ops.layernorm_lstm_forward, (xn, w_hh, lw, lb, cw, cb, h0, c0, lengths,
                                                     True)
        inference = (ops.layernorm_lstm_inference, (a["x"], a["w_ih"], *a["ln_ih"], w_hh, lw,
                                                    lb, cw, cb, h0, c0, lengths, True))
    else:
        xn, w_hh, b_hh, lw, lb, h0 = tensors
        forward, args = ops.layernorm_gru_forward, (xn, w_hh, b_hh, lw, lb, h0, lengths, True)
        inference = (ops.layernorm_gru_inference, (a["x"], a["w_ih"], *a["ln_ih"], w_hh, b_hh,
                                                   lw, lb, h0, lengths, True))
    torch.library.opcheck(forward.default, args)
    torch.library.opcheck(inference[0].default, inference[1])
    y, h_n, *rest = forward(*args)
    if cell == "LSTM":
        c_n, *saved = rest
        back_args = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), w_hh,
                     lw, cw, cb, h0, c0, lengths, True, y, *saved)
        torch.library.opcheck(ops.layernorm_lstm_backward.default, back_args)
    else:
        back_args = (torch.randn_like(y), torch.randn_like(h_n), w_hh, lw, h0, lengths, True, y,
                     *rest)
        torch.library.opcheck(ops.layernorm_gru_backward.default, back_args)
