"""Builds gated_kernels._C, the C++ CPU kernels, with torch.utils.cpp_extension.

Install with `pip install --no-build-isolation .`: the extension must be compiled against the torch
already installed (an isolated build would fetch another torch and produce an ABI mismatch).

Environment knobs:
  GATED_KERNELS_DEBUG=1   build with -O0 -g instead of -O3.
"""

import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

debug = os.environ.get("GATED_KERNELS_DEBUG") == "1"
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
link_flags = []
# at::parallel_for is OpenMP in the Linux torch wheels; without -fopenmp it runs on one thread.
if sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")

setup(
    ext_modules=[
        CppExtension(
            "gated_kernels._C",
            sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
