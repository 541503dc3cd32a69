"""Which implementation runs the recurrence: `cpp`, `triton`, `torch` or `reference`.

`auto` picks by device (C++ for CPU tensors, Triton for CUDA tensors; the modules then refine
the CUDA choice shape by shape, gated_kernels.dispatch); the environment variable
GATED_KERNELS_BACKEND overrides `auto`. `torch` runs torch.nn's own code on the module's
parameters (cuDNN on CUDA, oneDNN/ATen on the CPU); it exists for the modules only. A backend
that cannot run raises a clear error: nothing falls back silently.
"""

import os

BACKENDS = ("auto", "cpp", "triton", "torch", "reference")

try:
    from gated_kernels import _C  # noqa: F401  (importing it registers the CPU kernels)

    CPP_IMPORT_ERROR = None
except ImportError as error:  # a source tree that was never built, or a wheel for another torch
    CPP_IMPORT_ERROR = error


# os.environ's `in` raises and catches a KeyError when the variable is absent (the usual case),
# which placed before a native call of ~90 us costs ~4 us of it (benchmarks/cpu_profile.md); the
# mapping's own dict, where CPython has one, answers without the exception.
_ENVIRON = getattr(os.environ, "_data", None)
_BACKEND_KEY = os.environ.encodekey("GATED_KERNELS_BACKEND") if _ENVIRON is not None else None


def backend_forced():
    """Whether GATED_KERNELS_BACKEND is set (it overrides `auto`)."""
    if _ENVIRON is None:
        return "GATED_KERNELS_BACKEND" in os.environ
    return _BACKEND_KEY in _ENVIRON


def cpp_available():
    return CPP_IMPORT_ERROR is None


def require_cpp():
    if CPP_IMPORT_ERROR is not None:
        raise RuntimeError(
            "the C++ backend of gated_kernels is not available: gated_kernels._C could not be "
            f"imported ({CPP_IMPORT_ERROR}). Build it against the installed torch with "
            "`pip install --no-build-isolation .` in the source tree (needs a C++ compiler), "
            "or choose backend='reference'."
        )


def resolve_backend(name, device):
    """The backend that will run for tensors on `device`, given the requested `name`."""
    if (name == "auto" and device.type == "cpu" and CPP_IMPORT_ERROR is None
            and not backend_forced()):
        return "cpp"  # the common case, first: a cell call pays this once a step
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        name = os.environ.get("GATED_KERNELS_BACKEND", "auto")
        if name not in BACKENDS:
            raise ValueError(
                f"GATED_KERNELS_BACKEND must be one of {BACKENDS}, got {name!r}"
            )
    if name == "auto":
        name = "cpp" if device.type == "cpu" else "triton"
    if name == "cpp":
        require_cpp()
        if device.type != "cpu":
            raise ValueError(f"backend 'cpp' runs on CPU tensors only, got device {device}")
    if name == "triton":
        require_triton(device)
    return name


def require_triton(device):
    """Triton runs CUDA tensors, and CPU tensors only in its interpreter (TRITON_INTERPRET=1,
    how the kernels are tested without a GPU)."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"backend 'triton' needs Triton ({error}): pip install 'gated-kernels[triton]'"
        ) from None
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (device.type == "cpu" and interpreting):
        raise ValueError(
            f"backend 'triton' runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
            f"got device {device}"
        )
