"""What gated_kernels will run on this machine.

    python -m gated_kernels.info                       # versions, backends, CPU kernels, TF32
    python -m gated_kernels.info --shape B,T,I,H        # + the Triton path for that shape

For each backend it says whether it is available here and, if not, why; for the CPU, the model
and vendor, the instruction set, the L2 size and the product kernels (gated_kernels.cpu).
"""

import argparse
import importlib.metadata
import os
import sys
from types import SimpleNamespace

import torch

import gated_kernels
from gated_kernels import backends, cpu, dispatch
from gated_kernels.bench.cli import sizes


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backend_status():
    """{backend: (available, reason)} for this machine."""
    status = {"reference": (True, "plain PyTorch, any device and float dtype")}
    if backends.cpp_available():
        status["cpp"] = (True, "C++ extension gated_kernels._C loaded (CPU tensors)")
    else:
        status["cpp"] = (False, f"gated_kernels._C could not be imported: {backends.CPP_IMPORT_ERROR}")
    if _version("triton") == "not installed":
        status["triton"] = (False, "Triton is not installed (pip install 'gated-kernels[triton]')")
    elif torch.cuda.is_available():
        status["triton"] = (True, f"CUDA tensors on {torch.cuda.get_device_name()}")
    elif os.environ.get("TRITON_INTERPRET") == "1":
        status["triton"] = (True, "CPU tensors in Triton's interpreter (TRITON_INTERPRET=1)")
    else:
        status["triton"] = (False, "no CUDA GPU (CPU tensors only with TRITON_INTERPRET=1)")
    return status


# Without a GPU, paths and choices are given for an H100 SXM: sm_90, 132 SMs, 227 KB of shared
# memory a program.
H100 = SimpleNamespace(major=9, minor=0, multi_processor_count=132,
                       shared_memory_per_block_optin=227 * 1024)


def _props():
    return torch.cuda.get_device_properties(0) if torch.cuda.is_available() else H100


def triton_path(B, H, dtype):
    """The forward path the Triton heuristic picks for this shape on this machine's GPU, or on
    an H100."""
    return dispatch.triton_paths(_props(), "LSTM", dtype, B, H)[0]


def auto_choice(cell, B, T, I, H, dtype):
    """What backend='auto' runs for a one-layer `cell` on this machine's GPU (or an H100):
    (inference, training)."""
    return tuple(dispatch.cuda_backend(_props(), cell, dtype, T, B, I, H, training=training)
                 for training in (False, True))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gated_kernels.info")
    parser.add_argument("--shape", type=sizes("B,T,I,H"), metavar="B,T,I,H",
                        help="also print the Triton path the heuristic picks for this shape")
    args = parser.parse_args(argv)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    print(f"gated_kernels {gated_kernels.__version__}")
    print(f"torch {torch.__version__}, triton {_version('triton')}, cudnn {cudnn}, "
          f"python {sys.version.split()[0]}, {torch.get_num_threads()} CPU threads")
    print(f"TF32 for fp32 recurrences (torch.backends.cudnn.allow_tf32): "
          f"{torch.backends.cudnn.allow_tf32}")
    # The LayerNorm and zoneout kernels replace a loop of torch ops, whose products follow
    # torch's matmul setting (triton_kernels/layernorm.py, matmul_precision).
    print(f"TF32 for fp32 LayerNorm / zoneout recurrences (torch.backends.cuda.matmul."
          f"allow_tf32): {torch.backends.cuda.matmul.allow_tf32}")
    for name, (ok, reason) in backend_status().items():
        print(f"backend {name:9s} {'available' if ok else 'unavailable':11s} {reason}")
    config = cpu.config()
    print(f"CPU: {config['cpu_model']}, vendor {config['cpu_vendor']}, "
          f"flags {config['cpu_flags'] or '-'}; ATen capability {config['cpu_capability']}")
    if config["l2_bytes"] is not None:
        print(f"CPU L2 per core: {config['l2_bytes'] // 1024} KB ({config['l2_source']})")
        print(f"CPU product kernels (GATED_KERNELS_CPU_GEMM={config['cpu_gemm']}): "
              f"{config['products']}")
    if args.shape:
        B, T, I, H = args.shape
        if _version("triton") == "not installed":
            print("triton path: Triton is not installed")
            return
        where = (torch.cuda.get_device_name() if torch.cuda.is_available()
                 else "an H100 (no GPU here)")
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            print(f"triton path for B={B} T={T} I={I} H={H} {dtype} on {where}: "
                  f"{triton_path(B, H, dtype)}")
            for cell in ("LSTM", "GRU"):
                infer, train = auto_choice(cell, B, T, I, H, dtype)
                print(f"  backend='auto' on CUDA, one-layer {cell}: {infer} for inference, "
                      f"{train} for training")


if __name__ == "__main__":
    main()
