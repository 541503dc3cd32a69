"""Under torch.autocast the modules compute in, and return, the dtype torch.nn's would."""

import copy

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gated_kernels as gk
from gated_kernels import autocast, autograd
from gated_kernels.tolerance import allowed_error, max_rel_error

FP32, BF16 = torch.float32, torch.bfloat16
# (module, input shape, input dtype); torch.nn's cells reject a bfloat16 input with float32
# weights, so they take float32 only.
CPU_CASES = {
    "LSTM-fp32-in": (lambda lib: lib.LSTM(4, 6, num_layers=2), (5, 3, 4), FP32),
    "LSTM-bf16-in": (lambda lib: lib.LSTM(4, 6, num_layers=2), (5, 3, 4), BF16),
    "LSTM-proj-fp32-in": (lambda lib: lib.LSTM(4, 6, proj_size=2), (5, 3, 4), FP32),
    "LSTM-proj-bf16-in": (lambda lib: lib.LSTM(4, 6, proj_size=2), (5, 3, 4), BF16),
    "GRU-fp32-in": (lambda lib: lib.GRU(4, 6, bidirectional=True), (5, 3, 4), FP32),
    "GRU-bf16-in": (lambda lib: lib.GRU(4, 6, bidirectional=True), (5, 3, 4), BF16),
    "LSTMCell-fp32-in": (lambda lib: lib.LSTMCell(4, 6), (3, 4), FP32),
    "GRUCell-fp32-in": (lambda lib: lib.GRUCell(4, 6), (3, 4), FP32),
    # One step at B=64 with a gate width of 512 or more: inference takes bfloat16 products.
    "LSTM-T1-fp32-in": (lambda lib: lib.LSTM(16, 128, num_layers=2, bidirectional=True),
                        (1, 64, 16), FP32),
    "GRU-T1-fp32-in": (lambda lib: lib.GRU(16, 192, num_layers=2, bidirectional=True),
                       (1, 64, 16), FP32),
    "LSTMCell-B64-fp32-in": (lambda lib: lib.LSTMCell(16, 128), (64, 16), FP32),
    "GRUCell-B64-fp32-in": (lambda lib: lib.GRUCell(16, 192), (64, 16), FP32),
}


def _flat(out):
    flat = []
    for item in out if isinstance(out, tuple) else (out,):
        flat += list(item) if isinstance(item, tuple) else [item]
    return flat


def _sizes(module):
    extra = {"proj_size": module.proj_size} if getattr(module, "proj_size", 0) else {}
    if isinstance(module, torch.nn.RNNBase):
        return module.input_size, module.hidden_size, module.num_layers, module.bias, False, 0.0, \
            module.bidirectional, extra.get("proj_size", 0)
    return module.input_size, module.hidden_size, module.bias


def _dtypes(out):
    return [t.dtype for t in _flat(out)]


def _torch_nn_under_autocast(module, x):
    """torch.nn's output for x under bfloat16 autocast. On a CPU without AVX-512 (an AMD EPYC
    Zen 3) its oneDNN LSTM finds no bfloat16 primitive and raises ("could not create a primitive
    descriptor"); what that path computes where it runs, the module and x cast to bfloat16, then
    comes from torch.nn's own loop."""
    try:
        return module(x)
    except RuntimeError as error:
        if "could not create a primitive" not in str(error):
            raise
    with torch.autocast("cpu", enabled=False), torch.backends.mkldnn.flags(enabled=False):
        return copy.deepcopy(module).bfloat16()(x.bfloat16())


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("make,shape,input_dtype", CPU_CASES.values(), ids=CPU_CASES.keys())
def test_cpu_autocast_bf16_dtypes_match_torch_nn(make, shape, input_dtype, grad):
    torch.manual_seed(0)
    theirs = make(torch.nn)
    ours = type(make(gk)).from_torch(theirs, backend="cpp")
    x = torch.randn(shape).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        expected, actual = _torch_nn_under_autocast(theirs, x), ours(x)
    assert _dtypes(actual) == _dtypes(expected)
    # The values: against torch.nn in float64 without autocast, ours within the error rule of
    # gated_kernels.tolerance given torch.nn's own autocast error on the same output.
    reference = type(theirs)(*_sizes(theirs), dtype=torch.float64)
    reference.load_state_dict(theirs.state_dict())
    for a, e, r in zip(_flat(actual), _flat(expected), _flat(reference(x.double()))):
        allowed = allowed_error(a.dtype, "out", max_rel_error(e, r))
        assert max_rel_error(a, r) <= allowed


def test_cpu_bf16_autocast_computes_float32_gru_sequences_in_bfloat16():
    """A float32 GRU of more than one step returns float32 as torch.nn's does but computes in
    bfloat16 (as torch.nn's products do); one step, the cells, float16 CPU autocast, float64
    input and the LayerNorm modules keep the input's dtype. The LSTM computes and returns
    bfloat16."""
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=BF16):
        assert autocast.compute_dtype("GRU", x, T=2) == BF16
        assert autocast.compute_dtype("LSTM", x, T=1) == BF16
        for cell, T in (("GRU", 1), ("LSTMCell", 1), ("GRUCell", 1), ("LayerNormGRU", 5)):
            assert autocast.compute_dtype(cell, x, T) == FP32
        for cell in ("LSTM", "GRU", "LSTMCell", "GRUCell"):  # autocast leaves float64 alone
            assert autocast.compute_dtype(cell, x.double(), T=2) is None
        assert autocast.output_dtype("GRU", x, BF16) == FP32
        assert autocast.output_dtype("LSTM", x, BF16) == BF16
    with torch.autocast("cpu", dtype=torch.float16):
        assert autocast.compute_dtype("GRU", x, T=2) == FP32
    assert autocast.compute_dtype("GRU", x, T=2) is None
    # The module's outputs: the bfloat16 module's, in float32.
    gru, x = gk.GRU(4, 6, num_layers=2, backend="cpp"), torch.randn(5, 3, 4)
    with torch.autocast("cpu", dtype=BF16):
        actual = gru(x)
    expected = copy.deepcopy(gru).bfloat16()(x.bfloat16())
    for a, e in zip(actual, expected):
        assert a.dtype == FP32
        torch.testing.assert_close(a, e.float(), rtol=0, atol=0)


def _one_step_args(cell, B, H):
    """(module args for one step of `cell` at batch B, the states [B, H])."""
    x = torch.randn(B, 16)
    states = [torch.randn(B, H) for _ in range(2 if cell.startswith("LSTM") else 1)]
    if "Cell" in cell:
        return (x, tuple(states) if len(states) == 2 else states[0]), x, states
    hx = tuple(s[None] for s in states)
    return (x[None], hx if len(hx) == 2 else hx[0]), x, states


def _one_step_outputs(cell, out):
    """The states a one-step call returned: (h1, c1) of a cell, h_n (and c_n) of a layer."""
    if cell == "LSTMCell":
        return out
    if cell == "GRUCell":
        return (out,)
    return [s[0] for s in (out[1] if cell == "LSTM" else (out[1],))]


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "LSTM", "GRU"])
def test_cpu_bf16_autocast_one_step_inference_takes_bfloat16_products(cell):
    """One float32 step under bfloat16 autocast (dispatch.cpu_autocast_products): for inference
    at B=64 and a gate width of 512 the cell operator runs with W_ih and W_hh in bfloat16 and
    the state in float32; in training, and at B=63, with the float32 weights. The LSTM's and
    GRU's one step is their cell's, the LSTM's outputs then rounded to bfloat16 (torch.nn's);
    the LSTM trains in bfloat16 (gated_kernels.autocast)."""
    torch.manual_seed(0)
    H = 128 if cell.startswith("LSTM") else 171
    module = getattr(gk, cell)(16, H, backend="cpp")
    step = autograd.lstm_cell if cell.startswith("LSTM") else autograd.gru_cell
    cases = [(64, False, BF16, FP32), (63, False, FP32, FP32), (64, True, FP32, FP32)]
    if cell == "LSTM":
        cases[2] = (64, True, BF16, BF16)
    for B, grad, products, compute in cases:
        args, x, states = _one_step_args(cell, B, H)
        with torch.autocast("cpu", dtype=BF16), torch.set_grad_enabled(grad):
            actual = _one_step_outputs(cell, module(*args))
        w_ih, w_hh, b_ih, b_hh = (p.detach() for p in module.parameters())
        with torch.no_grad():
            inputs = autocast.cast([x, *states, b_ih, b_hh], compute)
            expected = step(*inputs[:-2], w_ih.to(products), w_hh.to(products), *inputs[-2:])
        expected = expected if isinstance(expected, tuple) else (expected,)
        dtype = BF16 if cell == "LSTM" else FP32  # torch.nn's LSTM under autocast: bfloat16
        for a, e in zip(actual, expected):
            assert a.dtype == dtype
            torch.testing.assert_close(a, e.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "LSTM", "GRU"])
@pytest.mark.parametrize("large", [True, False])
def test_cpu_bf16_autocast_steps_in_one_region_take_bfloat16_products(cell, large, monkeypatch):
    """Inference at B=8, where one call a region runs float32 products: within one region the
    second call finds its weights' casts cached (autocast.same_region) and runs the cell
    operator with W_ih and W_hh in bfloat16, exactly, where the weights outgrow the L2 cache
    (here made 1 KB); the first call of each region, every call when the weights require no
    grad (autocast caches no cast of them), and every call where the weights fit (L2 made
    1 GB), stays float32."""
    monkeypatch.setattr(autocast, "_l2_bytes", lambda: 1024 if large else 1 << 30)
    torch.manual_seed(0)
    H = 128 if cell.startswith("LSTM") else 171
    module = getattr(gk, cell)(16, H, backend="cpp")
    step = autograd.lstm_cell if cell.startswith("LSTM") else autograd.gru_cell
    args, x, states = _one_step_args(cell, 8, H)
    dtype = BF16 if cell == "LSTM" else FP32  # torch.nn's LSTM under autocast: bfloat16

    def expected(products):
        w_ih, w_hh, b_ih, b_hh = (p.detach() for p in module.parameters())
        out = step(x, *states, w_ih.to(products), w_hh.to(products), b_ih, b_hh)
        return [e.to(dtype) for e in (out if isinstance(out, tuple) else (out,))]

    def calls(regions):
        outs = []
        with torch.no_grad():
            if regions == 1:
                with torch.autocast("cpu", dtype=BF16):
                    outs = [module(*args) for _ in range(3)]
            else:
                for _ in range(regions):
                    with torch.autocast("cpu", dtype=BF16):
                        outs.append(module(*args))
        return [_one_step_outputs(cell, out) for out in outs]

    with torch.no_grad():
        fp32, bf16 = expected(FP32), expected(BF16)
    loop = bf16 if large else fp32
    for actual, products in zip(calls(regions=1), (fp32, loop, loop)):
        for a, e in zip(actual, products):
            assert a.dtype == dtype
            torch.testing.assert_close(a, e, rtol=0, atol=0)
    for actual in calls(regions=2):
        for a, e in zip(actual, fp32):
            torch.testing.assert_close(a, e, rtol=0, atol=0)
    module.requires_grad_(False)
    for actual in calls(regions=1):
        for a, e in zip(actual, fp32):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_autocast_weight_casts_once_a_region():
    """gated_kernels::_autocast_weight is autocast's cached cast: within a region the same
    tensor for a float32 leaf that requires grad, a new one after the region's exit, none cached
    for a weight that requires no grad; gradients of every use reach the weight."""
    weight = torch.nn.Parameter(torch.randn(5, 3))
    cast = torch.ops.gated_kernels._autocast_weight
    with torch.autocast("cpu", dtype=BF16):
        first, second = cast(weight, BF16), cast(weight, BF16)
        assert first is second and first.dtype == BF16
        (first.float() * 2).sum().backward()
        (second.float() * 3).sum().backward()
    torch.testing.assert_close(weight.grad, torch.full((5, 3), 5.0))
    with torch.autocast("cpu", dtype=BF16):
        assert cast(weight, BF16) is not first
    frozen = weight.detach()
    with torch.autocast("cpu", dtype=BF16):
        assert cast(frozen, BF16) is not cast(frozen, BF16)


def test_cpu_bf16_autocast_gru_called_twice_in_one_region_trains_within_torch_nns_error():
    """A bfloat16 GRU sequence called twice in one region (its weights cast once, both calls'
    weight gradients summed through that cast, as torch.nn's are), one backward: outputs and
    parameter gradients against float64 within the error rule given torch.nn's own."""
    torch.manual_seed(0)
    theirs = torch.nn.GRU(8, 16, num_layers=2)
    ours = gk.GRU.from_torch(theirs, backend="cpp")
    reference = copy.deepcopy(theirs).double()
    xs = [torch.randn(6, 4, 8) for _ in range(2)]

    def outputs(module, dtype, region):
        with torch.autocast("cpu", dtype=BF16, enabled=region):
            first, h = module(xs[0].to(dtype))
            second, _ = module(xs[1].to(dtype), h)
        return [first, second]

    actual, expected = outputs(ours, FP32, True), outputs(theirs, FP32, True)
    exact = outputs(reference, torch.float64, False)
    _assert_within_torch_nns_error((actual, ours), (expected, theirs), (exact, reference))


@pytest.mark.parametrize("layout", ["padded", "packed", "unbatched"])
def test_cpu_bf16_autocast_gru_outputs_and_gradients_within_torch_nns_error(layout):
    """The bfloat16 GRU sequence (batch_first, 2 layers, bidirectional, h0 given) against
    float64: outputs and parameter gradients within the error rule given torch.nn's own under
    the same autocast."""
    torch.manual_seed(0)
    theirs = torch.nn.GRU(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    ours = gk.GRU.from_torch(theirs, backend="cpp")
    reference = copy.deepcopy(theirs).double()
    x, h0 = torch.randn(5, 9, 8), torch.randn(4, 5, 16)
    if layout == "packed":
        x = pack_padded_sequence(x, torch.tensor([9, 3, 7, 1, 5]), batch_first=True,
                                 enforce_sorted=False)
    elif layout == "unbatched":
        x, h0 = x[0], h0[:, 0]

    def outputs(module, dtype):
        y, h_n = module(_map_data(x, dtype), h0.to(dtype))
        return [y.data if isinstance(y, PackedSequence) else y, h_n]

    with torch.autocast("cpu", dtype=BF16):
        actual, expected = outputs(ours, FP32), outputs(theirs, FP32)
    exact = outputs(reference, torch.float64)
    _assert_within_torch_nns_error((actual, ours), (expected, theirs), (exact, reference))


def _assert_within_torch_nns_error(ours, theirs, reference):
    """Each (outputs, module): ours' float32 outputs and parameter gradients (of the outputs'
    sum) against the float64 reference's, within the error rule given torch.nn's own."""
    for a, e, r in zip(ours[0], theirs[0], reference[0]):
        assert a.dtype == e.dtype == FP32
        assert max_rel_error(a, r) <= allowed_error(FP32, "out", max_rel_error(e, r))
    grads = [torch.autograd.grad(sum(o.sum() for o in outs), list(m.parameters()))
             for outs, m in (ours, theirs, reference)]
    for a, e, r in zip(*grads):
        assert a.dtype == FP32
        assert max_rel_error(a, r) <= allowed_error(FP32, "grad", max_rel_error(e, r))


def _map_data(x, dtype):
    return x._replace(data=x.data.to(dtype)) if isinstance(x, PackedSequence) else x.to(dtype)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_cpu_autocast_leaves_float64_modules_in_float64(cell):
    """torch.nn's float64 modules compute and return float64 under autocast (it casts no
    float64 tensor); ours did the LSTM in bfloat16 before."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cell)(4, 6, dtype=torch.float64)
    ours = getattr(gk, cell).from_torch(theirs, backend="cpp")
    x = torch.randn((5, 3, 4) if "Cell" not in cell else (3, 4), dtype=torch.float64)
    with torch.autocast("cpu", dtype=BF16):
        expected, actual = theirs(x), ours(x)
    assert _dtypes(actual) == _dtypes(expected) == [torch.float64] * len(_flat(expected))
    expected, actual = _flat(expected), _flat(actual)
    for a, e in zip(actual, expected):
        assert max_rel_error(a, e) <= allowed_error(torch.float64, "out")


def test_autocast_gradients_reach_float32_parameters():
    ours = gk.LSTM(4, 6, backend="cpp")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = ours(torch.randn(5, 3, 4))
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_cuda_autocast_computes_in_the_autocast_dtype(cell, dtype):
    theirs = getattr(torch.nn, cell)(32, 64, device="cuda")
    ours = getattr(gk, cell).from_torch(theirs, backend="triton")
    x = torch.randn((10, 4, 32) if "Cell" not in cell else (4, 32), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        expected, actual = _torch_nn_under_autocast(theirs, x), ours(x)
    assert _dtypes(actual) == _dtypes(expected)
