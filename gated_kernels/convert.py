"""convert(model) swaps every torch.nn LSTM, GRU, LSTMCell and GRUCell inside a model for
gated_kernels' drop-in equivalent, in place; revert(model) swaps them back. Either way the new
module takes over the old one's Parameter objects, so an optimizer built before the swap keeps
training them (with its state), and hooks on the parameters or the module stay attached."""

import warnings

from torch import nn

from gated_kernels.cells import GRUCell, LSTMCell
from gated_kernels.rnn import GRU, LSTM

REPLACEMENTS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}
REVERSALS = {ours: theirs for theirs, ours in REPLACEMENTS.items()}
# A module's hook registries (nn.Module attributes); shared, so the handles still remove them.
_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
          "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
          "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _config(module):
    """The constructor arguments of an LSTM, GRU or cell, torch.nn's or ours."""
    names = ["bias"]
    if isinstance(module, nn.RNNBase):
        names += ["num_layers", "batch_first", "dropout", "bidirectional"]
        names += ["proj_size"] if module.mode == "LSTM" else []
    return {name: getattr(module, name) for name in names}


def _take_over(cls, module, **kwargs):
    """A `cls` module with `module`'s configuration, built on the meta device (no init drawn),
    that holds `module`'s Parameter objects, hook registries and training mode."""
    with warnings.catch_warnings():  # torch.nn already warned about dropout with 1 layer
        warnings.simplefilter("ignore", UserWarning)
        new = cls(module.input_size, module.hidden_size, **_config(module), device="meta",
                  **kwargs)
    for name, parameter in module.named_parameters(recurse=False):
        setattr(new, name, parameter)
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # the list torch.nn's forward reads, now of these Parameters
    for name in _HOOKS:
        if hasattr(module, name):
            setattr(new, name, getattr(module, name))
    return new.train(module.training)


def _swap(model, make):
    """Replaces, at any depth, each module for which make(module) is not None."""
    new = make(model)
    if new is not None:
        return new
    for name, child in model.named_children():
        replacement = _swap(child, make)
        if replacement is not child:
            setattr(model, name, replacement)
    return model


def convert(model, *, backend="auto"):
    """Replaces each torch.nn.LSTM / GRU / LSTMCell / GRUCell in `model` (at any depth) with
    gated_kernels' module of the same configuration, holding the same Parameter objects (so the
    same values, device, dtype, optimizer state and parameter hooks), module hooks and training
    mode; returns the model (or the replacement, if `model` itself is one).

    >>> import torch
    >>> model = nn.Sequential(nn.Embedding(100, 16), nn.LSTM(16, 32, batch_first=True))
    >>> optimizer = torch.optim.Adam(model.parameters())  # still trains the converted model
    >>> type(convert(model)[1]).__name__
    'LSTM'
    """
    def make(module):
        cls = REPLACEMENTS.get(type(module))
        return None if cls is None else _take_over(cls, module, backend=backend)

    return _swap(model, make)


def revert(model):
    """The inverse of convert(): each gated_kernels LSTM / GRU / LSTMCell / GRUCell in `model`
    becomes torch.nn's, holding the same Parameter objects and hooks.

    >>> type(revert(convert(nn.GRU(4, 8)))).__name__
    'GRU'
    """
    def make(module):
        cls = REVERSALS.get(type(module))
        if cls is None:
            return None
        for name in ("zoneout", "dropconnect"):
            if getattr(module, name, 0.0):
                raise ValueError(f"cannot revert {module!r}: torch.nn.{cls.__name__} has no "
                                 f"{name}; set it to 0 first to drop it")
        return _take_over(cls, module)

    return _swap(model, make)
