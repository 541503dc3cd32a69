"""The Triton launchers under the operator names (lstm_forward, ...), one place for the autograd
layer and the CUDA operator registration to find them."""

from gated_kernels.triton_kernels.gru import gru_backward_triton as gru_backward
from gated_kernels.triton_kernels.gru import gru_forward_triton as gru_forward
from gated_kernels.triton_kernels.layernorm import (
    layernorm_gru_backward,
    layernorm_gru_forward,
    layernorm_gru_inference,
    layernorm_lstm_backward,
    layernorm_lstm_forward,
    layernorm_lstm_inference,
)
from gated_kernels.triton_kernels.lstm import lstm_backward_triton as lstm_backward
from gated_kernels.triton_kernels.lstm import lstm_forward_triton as lstm_forward

__all__ = ["gru_backward", "gru_forward", "layernorm_gru_backward", "layernorm_gru_forward",
           "layernorm_gru_inference", "layernorm_lstm_backward", "layernorm_lstm_forward",
           "layernorm_lstm_inference", "lstm_backward", "lstm_forward"]
