"""gated_kernels.LSTMCell / GRUCell against torch.nn's cells: outputs, every gradient, errors."""

import copy

import pytest
import torch

import gated_kernels as gk
from common import assert_close

# id: (cell, bias, input shape, hx given)
CONFIGS = {
    "LSTMCell-B3-hx": ("LSTMCell", True, (3, 5), True),
    "LSTMCell-B1-nobias": ("LSTMCell", False, (1, 5), False),
    "LSTMCell-unbatched-hx": ("LSTMCell", True, (5,), True),
    "LSTMCell-B0": ("LSTMCell", True, (0, 5), False),
    "GRUCell-B3-hx": ("GRUCell", True, (3, 5), True),
    "GRUCell-B2-nobias-hx": ("GRUCell", False, (2, 5), True),
    "GRUCell-unbatched": ("GRUCell", True, (5,), False),
}
H = 7


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_cell_matches_torch_nn(config, backend, dtype):
    name, bias, shape, with_hx = config
    theirs = getattr(torch.nn, name)(5, H, bias=bias, dtype=dtype)
    for p in theirs.parameters():
        torch.nn.init.uniform_(p, -0.7, 0.7)
    ours = getattr(gk, name)(5, H, bias=bias, dtype=dtype, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    state_shape = (*shape[:-1], H)
    states = [torch.randn(state_shape, dtype=dtype, requires_grad=True)
              for _ in range(2 if name == "LSTMCell" else 1)] if with_hx else []
    hx = (tuple(states) if name == "LSTMCell" else states[0]) if with_hx else None
    expected, actual = theirs(x, hx), ours(x, hx)
    expected = list(expected) if name == "LSTMCell" else [expected]
    actual = list(actual) if name == "LSTMCell" else [actual]
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert_close(a, e.double(), dtype, "out", f"output {k}")
    weights = [torch.randn_like(e) for e in expected]
    leaves = [x, *states]
    grads_e = torch.autograd.grad(expected, leaves + list(theirs.parameters()), weights)
    grads_a = torch.autograd.grad(actual, leaves + list(ours.parameters()), weights)
    for k, (a, e) in enumerate(zip(grads_a, grads_e)):
        assert_close(a, e.double(), dtype, "grad", f"grad {k}")


# What needs a gradient: (x, the states, the weights). The backward skips the products of the
# rest (output_mask), as torch.nn's cell does.
PARTIAL = {"detached-state": (True, False, True), "input-and-state-constant": (False, False, True),
           "frozen-weights": (True, True, False)}


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("needs", PARTIAL.values(), ids=PARTIAL.keys())
def test_cell_gradients_of_some_inputs_match_torch_nn(name, needs):
    x_grad, state_grad, weight_grad = needs
    theirs = getattr(torch.nn, name)(5, H)
    ours = getattr(gk, name)(5, H, backend="cpp")
    ours.load_state_dict(theirs.state_dict())
    for module in (theirs, ours):
        module.weight_ih.requires_grad_(weight_grad)
        module.weight_hh.requires_grad_(weight_grad)
    x = torch.randn(3, 5, requires_grad=x_grad)
    states = [torch.randn(3, H, requires_grad=state_grad)
              for _ in range(2 if name == "LSTMCell" else 1)]
    hx = tuple(states) if name == "LSTMCell" else states[0]
    grads = {}
    for module in (theirs, ours):
        out = module(x, hx)
        out = list(out) if name == "LSTMCell" else [out]
        leaves = [t for t in (x, *states, *module.parameters()) if t.requires_grad]
        weights = [torch.ones_like(o) for o in out]
        grads[module is ours] = torch.autograd.grad(out, leaves, weights)
    assert len(grads[True]) == len(grads[False])
    for k, (a, e) in enumerate(zip(grads[True], grads[False])):
        assert_close(a, e.double(), torch.float32, "grad", f"grad {k}")


def _call(name, x, hx=None):
    return lambda lib: getattr(lib, name)(5, H)(x, hx)


ERRORS = {
    "LSTMCell-input-3D": _call("LSTMCell", torch.randn(2, 3, 5)),
    "GRUCell-input-3D": _call("GRUCell", torch.randn(2, 3, 5)),
    "LSTMCell-hx-3D": _call("LSTMCell", torch.randn(3, 5), (torch.zeros(1, 3, H), torch.zeros(1, 3, H))),
    "GRUCell-hx-3D": _call("GRUCell", torch.randn(3, 5), torch.zeros(1, 3, H)),
    "LSTMCell-input-size": _call("LSTMCell", torch.randn(3, 4)),
    "GRUCell-input-size": _call("GRUCell", torch.randn(3, 6)),
    "LSTMCell-h-batch": _call("LSTMCell", torch.randn(3, 5), (torch.zeros(2, H), torch.zeros(3, H))),
    "LSTMCell-c-hidden": _call("LSTMCell", torch.randn(3, 5), (torch.zeros(3, H), torch.zeros(3, H - 1))),
    "GRUCell-h-hidden": _call("GRUCell", torch.randn(3, 5), torch.zeros(3, H + 1)),
    "GRUCell-batched-input-unbatched-hx": _call("GRUCell", torch.randn(3, 5), torch.zeros(H)),
    "LSTMCell-unbatched-input-batched-hx": _call("LSTMCell", torch.randn(5), (torch.zeros(3, H), torch.zeros(3, H))),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_cell_error_matches_torch_nn(case):
    with pytest.raises(Exception) as theirs:
        case(torch.nn)
    with pytest.raises(type(theirs.value)) as ours:
        case(gk)
    assert str(ours.value) == str(theirs.value)


def test_lstm_cell_rejects_a_single_tensor_hx():
    with pytest.raises(TypeError):
        torch.nn.LSTMCell(5, H)(torch.randn(3, 5), torch.zeros(3, H))
    with pytest.raises(TypeError, match="hx must be a tuple of two Tensors"):
        gk.LSTMCell(5, H)(torch.randn(3, 5), torch.zeros(3, H))


def test_cells_keep_torch_nn_identity_and_init():
    torch.manual_seed(5)
    theirs = torch.nn.GRUCell(5, H)
    torch.manual_seed(5)
    ours = gk.GRUCell(5, H)
    assert isinstance(ours, torch.nn.GRUCell)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_cell_inference_matches_torch_nn(name, dtype):
    """Without grad the cells run the inference operators, which save nothing; bfloat16 by the
    shared rule (against torch.nn's own bfloat16 error)."""
    theirs = getattr(torch.nn, name)(5, 70, dtype=torch.float64)
    ours = getattr(gk, name).from_torch(theirs).to(dtype)
    x = torch.randn(9, 5, dtype=torch.float64)
    hx = torch.randn(9, 70, dtype=torch.float64)
    hx = (hx, hx.flip(0)) if name == "LSTMCell" else hx
    low = copy.deepcopy(theirs).to(dtype)
    cast = (lambda s: tuple(t.to(dtype) for t in s)) if name == "LSTMCell" else (lambda s: s.to(dtype))
    with torch.no_grad():
        expected = theirs(x, hx)
        actual = ours(x.to(dtype), cast(hx))
        low_precision = low(x.to(dtype), cast(hx))
    for a, e, t in zip(*(o if name == "LSTMCell" else (o,) for o in (actual, expected, low_precision))):
        assert a.dtype == dtype and not a.requires_grad
        err = (t.double() - e).abs().max().item() / e.abs().max().item()
        assert_close(a, e, dtype, "out", name, err)
