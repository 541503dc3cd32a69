"""torch.export of an inference model and torch.func.functional_call use the operators and the
parameters they are given."""

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
