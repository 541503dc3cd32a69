"""The per-step product kernels of the CPU backend side by side (csrc/product.h).

    python -m gated_kernels.bench.products                 # float32, torch's thread count
    python -m gated_kernels.bench.products --dtype bf16 --hidden 256,512

For each shape a recurrence multiplies by every step, and each kernel that runs here (own,
brgemm, mkl), the median microseconds of one call with every thread of a team multiplying at
once (each its own rows and weight, as the threads of a recurrence do), the weight's streaming
rate (GB/s) and the arithmetic rate (GFLOP/s), and the kernel `auto` picks. The shapes are one
thread's share at hidden size H on `threads` threads: the forward's [M, H] x [H, 4H / threads]
(LSTM, G = 4H) and the backward's [M, 4H] x [4H, H].
"""

import argparse
import os

import torch

from gated_kernels import backends, cpu

KERNELS = ("own", "brgemm", "mkl")
ROWS = (1, 2, 3, 4, 8, 16, 32, 64)


def _ints(text):
    return tuple(int(v) for v in text.split(","))


def shapes(hidden, threads):
    """(name, K, N) of one thread's products at each hidden size."""
    out = []
    for H in hidden:
        out.append((f"fwd H={H}", H, 4 * H // threads))
        out.append((f"bwd H={H}", 4 * H, H))
    return out


def time_call(M, K, N, dtype, threads, calls, kernel):
    """Median microseconds of one call on `kernel`, or None where it does not run here."""
    saved = os.environ.get("GATED_KERNELS_CPU_GEMM")
    os.environ["GATED_KERNELS_CPU_GEMM"] = kernel
    try:
        return torch.ops.gated_kernels._product_bench(M, K, N, dtype, threads, calls)
    except RuntimeError:  # brgemm where oneDNN does not run this dtype
        return None
    finally:
        if saved is None:
            del os.environ["GATED_KERNELS_CPU_GEMM"]
        else:
            os.environ["GATED_KERNELS_CPU_GEMM"] = saved


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gated_kernels.bench.products")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--hidden", type=_ints, default=(128, 256, 512), metavar="H,H,...")
    p.add_argument("--rows", type=_ints, default=ROWS, metavar="M,M,...")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args(argv)
    backends.require_cpp()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    size = torch.finfo(dtype).bits // 8
    print(f"CPU kernels: {cpu.summary()}")
    print(f"{args.dtype}, {args.threads} threads at once, median of {args.calls} calls; "
          "us (GB/s of weight, GFLOP/s)")
    print(f"{'shape':12s} {'M':>3s}  " + "  ".join(f"{k:>22s}" for k in KERNELS) + "  auto")
    for name, K, N in shapes(args.hidden, args.threads):
        for M in args.rows:
            cells = []
            for kernel in KERNELS:
                us = time_call(M, K, N, dtype, args.threads, args.calls, kernel)
                if us is None:
                    cells.append("-")
                    continue
                gbs, gflops = K * N * size / us / 1e3, 2 * M * K * N / us / 1e3
                cells.append(f"{us:8.2f} ({gbs:4.0f}, {gflops:4.0f})")
            auto = torch.ops.gated_kernels._product_kernel(M, K, dtype)
            print(f"{name:12s} {M:3d}  " + "  ".join(f"{c:>22s}" for c in cells) + f"  {auto}",
                  flush=True)


if __name__ == "__main__":
    main()
