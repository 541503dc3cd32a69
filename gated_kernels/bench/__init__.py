"""The benchmark runner: correctness-gated speed of gated_kernels against torch.nn.

    python -m gated_kernels.bench --suite quick        (or: gated-kernels-bench)

See benchmarks/README.md for the method and how to read the table.
"""
