"""What the CPU kernels see of this machine and what they chose: the CPU model and vendor, the
instruction set the kernels run with, the L2 size they tune for, and the kernel of the per-step
products. `python -m gated_kernels.info` prints it and every benchmark result carries it, so a
number can be traced to the path that produced it (on AMD, MKL's vendor check sends its GEMMs to
generic code: csrc/product.h).

The product kernel can be forced with GATED_KERNELS_CPU_GEMM (auto, own, brgemm, mkl) and the L2
size with GATED_KERNELS_L2_BYTES; both are read on every call.
"""

import os
import platform

import torch

from gated_kernels import backends

# The batch rows per thread at which the product kernels are reported: one row (streaming
# inference) and a training batch's share.
REPORTED_ROWS = (1, 16)


def _cpuinfo():
    """The first CPU's fields of /proc/cpuinfo (Linux), else {}."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def model():
    """The CPU's model name, as the OS reports it."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def vendor():
    """GenuineIntel, AuthenticAMD, an Arm implementer code ("arm 0x41"), or the machine type."""
    fields = _cpuinfo()
    if "vendor_id" in fields:
        return fields["vendor_id"]
    if "CPU implementer" in fields:
        return f"arm {fields['CPU implementer']}"
    return platform.machine()


def isa_flags():
    """The instruction-set extensions among those the kernels care about that the CPU has."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16",
              "asimd", "sve")
    flags = set((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())
    return [f for f in wanted if f in flags]


def config():
    """A dict of what the CPU kernels run with here. Fields from the C++ extension are None
    where it is not built (the GPU machines)."""
    info = {
        "cpu_model": model(),
        "cpu_vendor": vendor(),
        "cpu_flags": " ".join(isa_flags()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_gemm": os.environ.get("GATED_KERNELS_CPU_GEMM") or "auto",
        "l2_bytes": None,
        "l2_source": None,
        "products": None,
    }
    if backends.cpp_available():
        info["l2_bytes"], info["l2_source"] = torch.ops.gated_kernels._l2_cache()
        info["products"] = products()
    return info


def products():
    """The product kernel per dtype and rows per thread, e.g. "fp32: own (1 row), own (16 rows);
    bf16: brgemm (1 row), brgemm (16 rows)"; under GATED_KERNELS_CPU_GEMM=auto float32's is
    timed per kind of product where it is first made (csrc/fastest.h), so it reads "fp32:
    fastest of own, brgemm, mkl (timed)"."""
    parts = []
    timed = (os.environ.get("GATED_KERNELS_CPU_GEMM") or "auto") == "auto"
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.float32 and timed:
            parts.append("fp32: fastest of own, brgemm, mkl (timed)")
            continue
        kernels = ", ".join(
            f"{torch.ops.gated_kernels._product_kernel(m, 256, dtype)} ({m} row{'s' * (m > 1)})"
            for m in REPORTED_ROWS)
        parts.append(f"{name}: {kernels}")
    return "; ".join(parts)


def summary(info=None):
    """One line: model, vendor, capability, L2 and the product kernels."""
    info = info or config()
    line = (f"{info['cpu_model']} ({info['cpu_vendor']}; {info['cpu_flags'] or 'no AVX2'}); "
            f"ATen capability {info['cpu_capability']}")
    if info["l2_bytes"] is not None:
        line += (f"; L2 {info['l2_bytes'] // 1024} KB ({info['l2_source']}); "
                 f"GATED_KERNELS_CPU_GEMM={info['cpu_gemm']}: {info['products']}")
    return line
