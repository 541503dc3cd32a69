"""Bad constructor and forward arguments: the same exception type as torch.nn, and the same
message where torch.nn's comes from Python (ours is never less informative)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gated_kernels as gk


def _forward(cell, x, hx=None, **kwargs):
    return lambda lib: getattr(lib, cell)(**{"input_size": 4, "hidden_size": 6, **kwargs})(x, hx)


def _build(cell, *args, **kwargs):
    return lambda lib: getattr(lib, cell)(*args, **kwargs)


X = torch.randn(5, 3, 4)
CASES = {
    "LSTM-seq-len-0": _forward("LSTM", torch.randn(0, 3, 4)),
    "GRU-seq-len-0-unbatched": _forward("GRU", torch.randn(0, 4)),
    "LSTM-input-size": _forward("LSTM", torch.randn(5, 3, 7)),
    "GRU-input-size": _forward("GRU", torch.randn(5, 3, 7)),
    "LSTM-input-1D": _forward("LSTM", torch.randn(4)),
    "GRU-input-4D": _forward("GRU", torch.randn(2, 5, 3, 4)),
    "LSTM-h0-batch": _forward("LSTM", X, (torch.zeros(1, 2, 6), torch.zeros(1, 3, 6))),
    "LSTM-c0-hidden": _forward("LSTM", X, (torch.zeros(1, 3, 6), torch.zeros(1, 3, 5))),
    "LSTM-h0-layers": _forward("LSTM", X, (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6)), num_layers=2),
    "LSTM-proj-h0-size-H": _forward("LSTM", X, (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6)), proj_size=2),
    "LSTM-hx-2D-for-3D-input": _forward("LSTM", X, (torch.zeros(3, 6), torch.zeros(3, 6))),
    "LSTM-hx-3D-for-2D-input": _forward("LSTM", torch.randn(5, 4), (torch.zeros(1, 1, 6), torch.zeros(1, 1, 6))),
    "LSTM-three-states": _forward("LSTM", X, (torch.zeros(1, 3, 6),) * 3),
    "GRU-h0-batch": _forward("GRU", X, torch.zeros(1, 2, 6)),
    "GRU-h0-hidden": _forward("GRU", X, torch.zeros(1, 3, 5)),
    "GRU-hx-2D-for-3D-input": _forward("GRU", X, torch.zeros(3, 6)),
    "GRU-hx-3D-for-2D-input": _forward("GRU", torch.randn(5, 4), torch.zeros(1, 1, 6)),
    "GRU-packed-3D-data": _forward("GRU", pack_padded_sequence(torch.randn(5, 2, 3, 4), torch.tensor([5, 3]))),
    "LSTM-input-dtype": _forward("LSTM", X.double()),
    "GRU-input-dtype": _forward("GRU", X.to(torch.bfloat16)),
    "GRU-proj_size": _build("GRU", 4, 6, proj_size=2),
    "GRU-proj_size-0": _build("GRU", 4, 6, proj_size=0),
    "LSTM-proj_size-ge-hidden": _build("LSTM", 4, 6, proj_size=6),
    "LSTM-proj_size-negative": _build("LSTM", 4, 6, proj_size=-1),
    "LSTM-dropout-above-1": _build("LSTM", 4, 6, 2, dropout=1.5),
    "GRU-dropout-negative": _build("GRU", 4, 6, 2, dropout=-0.1),
    "GRU-dropout-bool": _build("GRU", 4, 6, 2, dropout=True),
    "LSTM-hidden_size-0": _build("LSTM", 4, 0),
    "GRU-num_layers-0": _build("GRU", 4, 6, 0),
    "LSTM-bias-not-bool": _build("LSTM", 4, 6, bias=1),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_same_error_as_torch_nn(case):
    with pytest.raises(Exception) as theirs:
        case(torch.nn)
    with pytest.raises(type(theirs.value)) as ours:
        case(gk)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


def test_lstm_packed_wrong_hx_is_caught_before_the_kernel():
    """torch.nn gives an index_select error here; ours names the expected and actual size."""
    x = pack_padded_sequence(torch.randn(5, 2, 4), torch.tensor([5, 3]))
    hx = (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6))
    with pytest.raises(RuntimeError):
        torch.nn.LSTM(4, 6)(x, hx)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 6\), got \[1, 3, 6\]"):
        gk.LSTM(4, 6)(x, hx)


@pytest.mark.parametrize("cls", [gk.LSTM, gk.GRU, gk.LSTMCell, gk.GRUCell])
def test_unknown_backend(cls):
    with pytest.raises(ValueError, match="backend must be one of .* got 'gpu'"):
        cls(4, 6, backend="gpu")


@pytest.mark.parametrize("cls", [gk.LSTM, gk.GRUCell])
def test_forced_backend_that_cannot_run(cls, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    module = cls(4, 6, backend="triton")
    x = torch.randn(5, 3, 4) if cls is gk.LSTM else torch.randn(3, 4)
    with pytest.raises(ValueError, match="backend 'triton' runs on CUDA tensors"):
        module(x)
