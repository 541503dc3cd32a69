"""gated_kernels.LSTM / GRU against torch.nn.LSTM / GRU: outputs, final states and every gradient
over a hand-picked list of configurations, on the cpp, torch and reference backends."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gated_kernels as gk
from common import assert_close

BACKENDS = ["cpp", "torch", "reference"]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}

# id: (cell, module kwargs, T, B, input kind, hx given). Input kinds: "tensor", "unbatched",
# "packed-sorted", "packed-unsorted" (lengths include 1 and T).
CONFIGS = {
    "LSTM-L1-T1-B3": ("LSTM", dict(input_size=4, hidden_size=6), 1, 3, "tensor", False),
    "LSTM-L2-bi-T1-B3-hx": ("LSTM", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True), 1, 3, "tensor", True),
    "LSTM-L1-nobias-unbatched-T1-hx": ("LSTM", dict(input_size=4, hidden_size=6, bias=False), 1, 1, "unbatched", True),
    "LSTM-L2-bi-T7-B4-hx": ("LSTM", dict(input_size=5, hidden_size=8, num_layers=2, bidirectional=True), 7, 4, "tensor", True),
    "LSTM-L3-batch_first-I7-H13-T9-B2": ("LSTM", dict(input_size=7, hidden_size=13, num_layers=3, batch_first=True), 9, 2, "tensor", True),
    "LSTM-L2-bi-P5-T6-B3-hx": ("LSTM", dict(input_size=4, hidden_size=10, num_layers=2, bidirectional=True, proj_size=5), 6, 3, "tensor", True),
    "LSTM-L1-nobias-P2-T5-B2": ("LSTM", dict(input_size=3, hidden_size=6, bias=False, proj_size=2), 5, 2, "tensor", False),
    "LSTM-L2-unbatched-T6-hx": ("LSTM", dict(input_size=4, hidden_size=5, num_layers=2), 6, 1, "unbatched", True),
    "LSTM-L2-bi-packed-sorted": ("LSTM", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True), 7, 3, "packed-sorted", False),
    "LSTM-L2-bi-P3-packed-unsorted-hx": ("LSTM", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, proj_size=3), 7, 4, "packed-unsorted", True),
    "LSTM-L1-batch_first-B0-T4": ("LSTM", dict(input_size=4, hidden_size=6, batch_first=True), 4, 0, "tensor", False),
    "GRU-L1-T1-B3": ("GRU", dict(input_size=4, hidden_size=6), 1, 3, "tensor", False),
    "GRU-L2-bi-batch_first-T1-B2-hx": ("GRU", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, batch_first=True), 1, 2, "tensor", True),
    "GRU-L1-nobias-T1-B3-hx": ("GRU", dict(input_size=4, hidden_size=6, bias=False), 1, 3, "tensor", True),
    "GRU-L2-bi-T7-B4-hx": ("GRU", dict(input_size=5, hidden_size=8, num_layers=2, bidirectional=True), 7, 4, "tensor", True),
    "GRU-L3-batch_first-I7-H13-T9-B2": ("GRU", dict(input_size=7, hidden_size=13, num_layers=3, batch_first=True), 9, 2, "tensor", True),
    "GRU-L1-nobias-T5-B2": ("GRU", dict(input_size=3, hidden_size=6, bias=False), 5, 2, "tensor", False),
    "GRU-L2-bi-unbatched-T6-hx": ("GRU", dict(input_size=4, hidden_size=5, num_layers=2, bidirectional=True), 6, 1, "unbatched", True),
    "GRU-L2-packed-sorted-hx": ("GRU", dict(input_size=4, hidden_size=6, num_layers=2), 7, 3, "packed-sorted", True),
    "GRU-L2-bi-packed-unsorted": ("GRU", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True), 7, 4, "packed-unsorted", False),
    # B >= 8 rows of a third of the steps: the products take each step's running rows alone
    # (input gates a step at a time, the weight gradients over the running rows), on a
    # two-thread team at H=40.
    "LSTM-L2-bi-H40-packed-longtail": ("LSTM", dict(input_size=4, hidden_size=40, num_layers=2, bidirectional=True), 9, 12, "packed-longtail", True),
    "LSTM-L1-bi-P3-packed-longtail-sorted": ("LSTM", dict(input_size=5, hidden_size=8, bidirectional=True, proj_size=3), 9, 12, "packed-longtail-sorted", False),
    "GRU-L2-bi-H40-packed-longtail": ("GRU", dict(input_size=4, hidden_size=40, num_layers=2, bidirectional=True), 9, 12, "packed-longtail", False),
    "GRU-L1-packed-longtail-sorted-hx": ("GRU", dict(input_size=5, hidden_size=8), 9, 12, "packed-longtail-sorted", True),
    "GRU-L2-B0-T3-hx": ("GRU", dict(input_size=4, hidden_size=6, num_layers=2), 3, 0, "tensor", True),
}
LENGTHS = {"packed-sorted": [7, 5, 1], "packed-unsorted": [3, 7, 1, 5],
           "packed-longtail": [9, 1, 2, 1, 3, 1, 1, 2, 9, 1, 4, 1],
           "packed-longtail-sorted": [9, 9, 4, 3, 2, 2, 1, 1, 1, 1, 1, 1]}


def make_pair(cell, kwargs, dtype, backend):
    """A torch.nn module and ours with the same parameters (init stretched so gates saturate)."""
    theirs = getattr(torch.nn, cell)(**kwargs, dtype=dtype)
    for p in theirs.parameters():
        torch.nn.init.uniform_(p, -0.7, 0.7)
    ours = getattr(gk, cell)(**kwargs, dtype=dtype, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_inputs(cell, kwargs, T, B, kind, with_hx, dtype):
    """(input, hx, leaves that need gradients)."""
    I, H = kwargs["input_size"], kwargs["hidden_size"]
    P = kwargs.get("proj_size", 0) or H
    LD = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    batch_first = kwargs.get("batch_first", False)
    if kind == "unbatched":
        x = torch.randn(T, I, dtype=dtype, requires_grad=True)
        state_shape = lambda size: (LD, size)
    else:
        x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=dtype, requires_grad=True)
        state_shape = lambda size: (LD, B, size)
    hx, states = None, []
    if with_hx:
        states = [torch.randn(state_shape(P), dtype=dtype, requires_grad=True)]
        if cell == "LSTM":
            states.append(torch.randn(state_shape(H), dtype=dtype, requires_grad=True))
        hx = tuple(states) if cell == "LSTM" else states[0]
    input = x
    if kind.startswith("packed"):
        input = pack_padded_sequence(x, torch.tensor(LENGTHS[kind]), batch_first=batch_first,
                                     enforce_sorted=kind in ("packed-sorted", "packed-longtail-sorted"))
    return input, hx, [x, *states]


def flatten(out):
    """(output, hidden) -> list of tensors, packed data included."""
    output, hidden = out
    data = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    return [data, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def check_parity(theirs, ours, input, hx, leaves, dtype):
    expected_out, actual_out = theirs(input, hx), ours(input, hx)
    if isinstance(expected_out[0], torch.nn.utils.rnn.PackedSequence):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            e, a = getattr(expected_out[0], field), getattr(actual_out[0], field)
            assert (e is None and a is None) or torch.equal(e, a), field
    expected, actual = flatten(expected_out), flatten(actual_out)
    assert isinstance(actual_out[1], type(expected_out[1]))
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"output {k}: {a.shape} vs {e.shape}"
        assert_close(a, e.double(), dtype, "out", f"output {k}")
    weights = [torch.randn_like(e) for e in expected]
    inputs_e = leaves + list(theirs.parameters())
    inputs_a = leaves + list(ours.parameters())
    # retain_graph: a packed input shares its packing graph between both modules.
    grads_e = torch.autograd.grad(expected, inputs_e, weights, allow_unused=True, retain_graph=True)
    grads_a = torch.autograd.grad(actual, inputs_a, weights, allow_unused=True)
    names = ["input", "h0", "c0"][: len(leaves)] + [n for n, _ in ours.named_parameters()]
    for name, a, e in zip(names, grads_a, grads_e):
        assert_close(a, e.double(), dtype, "grad", f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_module_matches_torch_nn(config, backend, dtype):
    cell, kwargs, T, B, kind, with_hx = config
    theirs, ours = make_pair(cell, kwargs, dtype, backend)
    input, hx, leaves = make_inputs(cell, kwargs, T, B, kind, with_hx, dtype)
    check_parity(theirs, ours, input, hx, leaves, dtype)


# Sizes of one at H=40 in float32, where the kernels run on a two-thread team with MKL's packed
# products: torch gives a size-1 dimension any stride, and a leading dimension taken from such a
# stride made MKL refuse the product (wrong results, or SIGFPE). (cell, kwargs, B, hx with
# strides (1, 1, 1))
SIZE_ONE = {
    "LSTM-I1-H40-B3": ("LSTM", dict(input_size=1, hidden_size=40), 3, False),
    "LSTM-I8-H40-P1-B3": ("LSTM", dict(input_size=8, hidden_size=40, proj_size=1), 3, False),
    "LSTM-I8-H40-B1-hx-strided": ("LSTM", dict(input_size=8, hidden_size=40), 1, True),
    "GRU-I1-H40-B3": ("GRU", dict(input_size=1, hidden_size=40), 3, False),
    "GRU-I8-H40-B1-hx-strided": ("GRU", dict(input_size=8, hidden_size=40), 1, True),
}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("config", SIZE_ONE.values(), ids=SIZE_ONE.keys())
def test_sizes_of_one_match_torch_nn(config, grad):
    cell, kwargs, B, strided_hx = config
    dtype = torch.float32
    theirs, ours = make_pair(cell, kwargs, dtype, "cpp")
    P = kwargs.get("proj_size", 0) or kwargs["hidden_size"]

    def state(size):
        # [1, B, size]; with B=1, a permuted [size, 1, 1] whose strides are all 1.
        if strided_hx:
            return torch.randn(size, 1, 1).permute(1, 2, 0).requires_grad_()
        return torch.randn(1, B, size, requires_grad=True)

    states = [state(P)] + ([state(kwargs["hidden_size"])] if cell == "LSTM" else [])
    hx = tuple(states) if cell == "LSTM" else states[0]
    x = torch.randn(7, B, kwargs["input_size"], requires_grad=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if grad:
            check_parity(theirs, ours, x, hx, [x, *states], dtype)
        else:
            with torch.no_grad():
                expected, actual = flatten(theirs(x, hx)), flatten(ours(x, hx))
            for k, (a, e) in enumerate(zip(actual, expected)):
                assert_close(a, e.double(), dtype, "out", f"output {k}")
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_dropout(cell):
    kwargs = dict(input_size=4, hidden_size=6, num_layers=3, dropout=0.5)
    theirs, ours = make_pair(cell, kwargs, torch.float64, "cpp")
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    # Eval: no dropout anywhere, so equal to torch.nn.
    theirs.eval(), ours.eval()
    assert_close(ours(x)[0], theirs(x)[0], torch.float64, "out", "eval output")
    # Training: the same seed gives the same result; it differs from eval (dropout is active).
    ours.train()
    torch.manual_seed(7)
    first = ours(x)[0]
    torch.manual_seed(7)
    assert torch.equal(ours(x)[0], first)
    assert not torch.allclose(first, ours.eval()(x)[0])
    # dropout=0 in training equals eval.
    no_dropout = getattr(gk, cell)(4, 6, num_layers=3, dtype=torch.float64)
    no_dropout.load_state_dict(ours.state_dict())
    assert torch.equal(no_dropout.train()(x)[0], no_dropout.eval()(x)[0])


@pytest.mark.parametrize("cell,kwargs", [
    ("LSTM", dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2)),
    ("GRU", dict(input_size=3, hidden_size=5, num_layers=2, bias=False)),
], ids=["LSTM", "GRU"])
def test_parameters_and_state_dict_are_torch_nns(cell, kwargs):
    torch.manual_seed(3)
    theirs = getattr(torch.nn, cell)(**kwargs)
    torch.manual_seed(3)
    ours = getattr(gk, cell)(**kwargs)
    # Same names, shapes, order and initial values (the same random draws).
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for a, b in zip(ours.all_weights, theirs.all_weights):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    # Round trips both ways.
    x = torch.randn(4, 2, 3)
    fresh = getattr(gk, cell)(**kwargs)
    fresh.load_state_dict(theirs.state_dict())
    other = getattr(torch.nn, cell)(**kwargs)
    other.load_state_dict(fresh.state_dict())
    assert torch.equal(flatten(fresh(x))[0], flatten(ours(x))[0])
    assert_close(flatten(other(x))[0], flatten(ours(x))[0].double(), torch.float32, "out", "y")


def test_pickle_deepcopy_and_dtype_conversion(tmp_path):
    import copy
    import pickle

    ours = gk.LSTM(3, 5, num_layers=2, proj_size=2, backend="cpp")
    x = torch.randn(4, 2, 3)
    expected = flatten(ours(x))
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert clone.backend == "cpp"
        for a, e in zip(flatten(clone(x)), expected):
            assert torch.equal(a, e)
    torch.save(ours, tmp_path / "lstm.pt")
    loaded = torch.load(tmp_path / "lstm.pt", weights_only=False)
    assert torch.equal(flatten(loaded(x))[0], expected[0])
    theirs = torch.nn.LSTM(3, 5, num_layers=2, proj_size=2)
    theirs.load_state_dict(ours.state_dict())
    for convert in (lambda m: m.double(), lambda m: m.to(torch.float64)):
        a, e = convert(copy.deepcopy(ours)), convert(copy.deepcopy(theirs))
        assert all(p.dtype == torch.float64 for p in a.parameters())
        for got, want in zip(flatten(a(x.double())), flatten(e(x.double()))):
            assert_close(got, want, torch.float64, "out", "float64 output")
