"""torch.export of an inference model, torch.func.functional_call and parametrized weights use
the operators and the parameters they are given."""

import torch

import gated_kernels as gk


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = gk.LSTM(4, 8, num_layers=2, batch_first=True, proj_size=3)
        self.gru = gk.GRU(3, 5, batch_first=True, bidirectional=True)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.gru(y)


def test_export_inference_model():
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(3, 7, 4)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        exported, eager = program.module()(x), model(x)
    targets = [str(n.target) for n in program.graph.nodes]
    # No grad: the layers export the operators that save nothing for backward.
    assert targets.count("gated_kernels.lstm_inference.default") == 2
    assert targets.count("gated_kernels.lstm_forward.default") == 0
    assert targets.count("gated_kernels.gru_inference.default") == 2
    assert targets.count("gated_kernels.gru_forward.default") == 0
    assert all(torch.equal(a, b) for a, b in zip(exported, eager))


def test_functional_call_uses_the_given_parameters():
    torch.manual_seed(0)
    model, x = Model(), torch.randn(3, 7, 4)
    doubled = {k: 2 * v for k, v in model.named_parameters()}
    reference = Model()
    reference.load_state_dict(doubled)
    out = torch.func.functional_call(model, doubled, (x,))
    assert all(torch.equal(a, b) for a, b in zip(out, reference(x)))


class _DropConnect(torch.nn.Module):
    """A fixed mask on a weight, as AWD-LSTM's weight drop applies one (by parametrization)."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, weight):
        return weight * self.mask


def test_parametrized_weights_are_read_at_each_call():
    """torch.nn.utils.parametrize moves weight_hh_l1 out of the module's parameters behind a
    property; the modules read it as torch.nn does, at every call."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    ours, theirs = gk.LSTM(4, 6, num_layers=2), torch.nn.LSTM(4, 6, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4)
    y_plain, _ = ours(x)
    mask = (torch.rand(24, 6) > 0.5).float()
    for module in (ours, theirs):
        parametrize.register_parametrization(module, "weight_hh_l1", _DropConnect(mask))
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = ours(x), theirs(x)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(y, y_plain)  # the mask changed the output
