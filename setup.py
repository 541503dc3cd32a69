"""Builds gated_kernels._C, the C++ CPU kernels, with torch.utils.cpp_extension.

Install with `pip install --no-build-isolation .`: the extension must be compiled against the torch
already installed (an isolated build would fetch another torch and produce an ABI mismatch).

Environment knobs:
  GATED_KERNELS_DEBUG=1   build with -O0 -g instead of -O3.
"""

import glob
import os
import platform
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

# csrc/*_avx2.cpp and csrc/*_avx512.cpp hold code compiled once more per instruction set, with
# the flags ATen uses for its own kernels; the rest stays baseline x86-64. Which variant runs is
# decided at run time (csrc/pointwise_default.cpp), so the build machine's CPU does not matter.
# GCC and Clang spell the flags this way; other targets (MSVC, ARM) build the baseline only.
ISA_FLAGS = {
    "_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
}
variants = sys.platform != "win32" and platform.machine().lower() in ("x86_64", "amd64")
sources = sorted(glob.glob("csrc/*.cpp"))
if variants:
    cxx_flags.append("-DGATED_KERNELS_CPU_VARIANTS")
else:
    sources = [s for s in sources if not s.endswith(tuple(ISA_FLAGS))]


class BuildExtensionPerISA(BuildExtension):
    """BuildExtension that compiles each ISA group of sources with its own extra flags
    (setuptools applies extra_compile_args to every source). Objects link in ascending ISA order,
    baseline first, and the linker keeps the first copy of an inline function that several groups
    emit, so no caller gets a copy built for a wider ISA than its own. (At -O3 the ISA objects
    emit no such copies at all; at -O0 they do, e.g. std::pow<double, long>.)"""

    def build_extension(self, ext):
        compile_all = self.compiler.compile

        def compile_by_isa(sources, *args, extra_postargs, **kwargs):
            groups = [([s for s in sources if not s.endswith(tuple(ISA_FLAGS))], [])]
            groups += [([s for s in sources if s.endswith(end)], f) for end, f in ISA_FLAGS.items()]
            objects = []
            for group, flags in groups:
                if group:
                    post = dict(extra_postargs, cxx=extra_postargs["cxx"] + flags)
                    objects += compile_all(group, *args, extra_postargs=post, **kwargs)
            return objects

        self.compiler.compile = compile_by_isa
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_all


setup(
    ext_modules=[
        CppExtension(
            "gated_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ],
    cmdclass={"build_ext": BuildExtensionPerISA},
)
