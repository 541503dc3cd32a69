"""from_torch, convert(), torch.compile of a converted model, and DistributedDataParallel."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gated_kernels as gk
from common import FP64_ATOL, max_abs_error


class SmallModel(nn.Module):
    """Embedding -> LSTM -> GRU -> Linear, with an LSTMCell / GRUCell step on top."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(16, 5, batch_first=True)
        self.cells = nn.ModuleList([nn.LSTMCell(5, 4), nn.GRUCell(5, 3)])
        self.head = nn.Linear(5 + 4 + 3, 2)

    def forward(self, tokens):
        y, _ = self.lstm(self.embed(tokens))
        y, h = self.gru(y)
        h_cell, _ = self.cells[0](h[0])
        g = self.cells[1](h[0])
        return self.head(torch.cat([y[:, -1], h_cell, g], dim=1))


def _model():
    torch.manual_seed(0)
    return SmallModel().double()


def _outputs_and_grads(model, tokens):
    out = model(tokens)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    return [out, *grads]


def _assert_same(actual, expected):
    for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert max_abs_error(a, e) <= FP64_ATOL, f"tensor {k}: {max_abs_error(a, e):.3e}"


TOKENS = torch.randint(0, 20, (3, 7))


@pytest.mark.parametrize("cls,module", [
    (gk.LSTM, nn.LSTM(3, 5, num_layers=2, dropout=0.2, proj_size=2, batch_first=True)),
    (gk.GRU, nn.GRU(3, 5, bias=False, bidirectional=True).double().eval()),
    (gk.LSTMCell, nn.LSTMCell(3, 5)),
    (gk.GRUCell, nn.GRUCell(3, 5, bias=False).double()),
], ids=["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_from_torch(cls, module):
    ours = cls.from_torch(module, backend="reference")
    assert type(ours) is cls and ours.backend == "reference"
    assert ours.training == module.training
    for (n1, a), (n2, b) in zip(ours.named_parameters(), module.named_parameters(), strict=True):
        assert n1 == n2 and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    assert repr(ours).startswith(repr(module)[:-1])


def test_convert_reproduces_outputs_and_gradients():
    original = _model()
    converted = gk.convert(copy.deepcopy(original))
    assert type(converted.lstm) is gk.LSTM and type(converted.gru) is gk.GRU
    assert type(converted.cells[0]) is gk.LSTMCell and type(converted.cells[1]) is gk.GRUCell
    _assert_same(_outputs_and_grads(converted, TOKENS), _outputs_and_grads(original, TOKENS))


def test_compile_fullgraph_on_converted_model_matches_eager():
    model = gk.convert(_model())
    expected = _outputs_and_grads(model, TOKENS)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    _assert_same(_outputs_and_grads(compiled, TOKENS), expected)


def _ddp_worker(rank, world_size, init_file, tokens, targets, result_file):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the two ranks talk over loopback only
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    model = nn.parallel.DistributedDataParallel(gk.convert(_model()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shard = slice(rank * 2, rank * 2 + 2)
    loss = (model(tokens[shard]) - targets[shard]).square().mean()
    loss.backward()
    optimizer.step()
    if rank == 0:
        torch.save([p.detach() for p in model.module.parameters()], result_file)
    # Both ranks finish talking before either tears gloo down: a rank that exits while its peer
    # still holds the connection can abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    # Leave without running interpreter-exit destructors: gloo's threads have intermittently
    # aborted there ("terminate called without an active exception", 2 runs in ~60) after the
    # work above had finished; the result is already on disk.
    os._exit(0)


def test_ddp_one_step_equals_single_process_on_the_combined_batch(tmp_path):
    torch.manual_seed(1)
    tokens, targets = torch.randint(0, 20, (4, 7)), torch.randn(4, 2, dtype=torch.float64)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), tokens, targets,
                                str(tmp_path / "params.pt")), nprocs=2, join=True)
    model = gk.convert(_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(tokens) - targets).square().mean().backward()
    optimizer.step()
    _assert_same(torch.load(tmp_path / "params.pt"), [p.detach() for p in model.parameters()])


def test_an_optimizer_built_before_convert_still_trains_the_model():
    """Training frameworks build the optimizer first: convert() must keep its parameters. Two
    Adam steps on the converted model land where they land on torch.nn's."""
    reference, model = _model(), _model()
    reference_opt = torch.optim.Adam(reference.parameters(), lr=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.lstm.parameters()]
    gk.convert(model)
    assert type(model.lstm) is gk.LSTM
    for net, opt in ((reference, reference_opt), (model, optimizer)):
        for _ in range(2):
            opt.zero_grad()
            net(TOKENS).square().sum().backward()
            opt.step()
    moved = [not torch.equal(p, b) for p, b in zip(model.lstm.parameters(), before)]
    assert len(moved) == 16 and all(moved), moved
    _assert_same(list(model.parameters()), list(reference.parameters()))


def test_convert_and_revert_keep_parameter_objects_and_hooks():
    model = _model()
    lstm, cell = model.lstm, model.cells[0]
    ids = [id(p) for p in model.parameters()]
    calls = []
    lstm.register_forward_hook(lambda module, args, out: calls.append(type(module).__name__))
    cell.weight_hh.register_hook(lambda grad: calls.append("grad"))
    gk.convert(model)
    assert [id(p) for p in model.parameters()] == ids
    assert model.lstm._flat_weights[0] is lstm.weight_ih_l0
    model(TOKENS).sum().backward()
    assert calls == ["LSTM", "grad"] and type(model.lstm) is gk.LSTM
    reverted = gk.revert(model)
    assert reverted is model and [id(p) for p in model.parameters()] == ids
    assert type(model.lstm) is nn.LSTM and type(model.cells[0]) is nn.LSTMCell
    assert model.lstm._flat_weights[0] is lstm.weight_ih_l0
    _assert_same(_outputs_and_grads(model, TOKENS), _outputs_and_grads(_model(), TOKENS))


def test_convert_and_revert_keep_training_mode_and_configuration():
    module = nn.LSTM(3, 5, num_layers=2, dropout=0.2, proj_size=2, batch_first=True).eval()
    ours = gk.convert(module, backend="reference")
    assert (ours.backend, ours.training, ours.proj_size, ours.dropout) == ("reference", False, 2,
                                                                           0.2)
    back = gk.revert(ours)
    assert type(back) is nn.LSTM and back.batch_first and not back.training
    assert repr(back) == repr(module)
