"""Triton kernels for the recurrence operators (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

Importing this package imports Triton: gated_kernels.backends does so only when the `triton`
backend is asked for, so the rest of the package works without Triton installed.
"""
