"""Backend choice and the package without its compiled extension."""

import subprocess
import sys

import pytest
import torch

from gated_kernels import backends
from gated_kernels.functional import gru_layer

CPU = torch.device("cpu")


def test_auto_picks_cpp_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("GATED_KERNELS_BACKEND", raising=False)
    assert backends.resolve_backend("auto", CPU) == "cpp"


def test_environment_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_BACKEND", "reference")
    assert backends.resolve_backend("auto", CPU) == "reference"
    assert backends.resolve_backend("cpp", CPU) == "cpp"


def test_unknown_backend_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of .* got 'cuda'"):
        backends.resolve_backend("cuda", CPU)
    monkeypatch.setenv("GATED_KERNELS_BACKEND", "fast")
    with pytest.raises(ValueError, match="GATED_KERNELS_BACKEND must be one of .* got 'fast'"):
        backends.resolve_backend("auto", CPU)


def test_cpp_refuses_other_devices():
    with pytest.raises(ValueError, match="backend 'cpp' runs on CPU tensors only, got device meta"):
        backends.resolve_backend("cpp", torch.device("meta"))


def test_triton_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend 'triton' runs on CUDA tensors"):
        backends.resolve_backend("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.resolve_backend("triton", CPU) == "triton"


def test_triton_refuses_other_devices():
    with pytest.raises(ValueError, match="got device meta"):
        backends.resolve_backend("triton", torch.device("meta"))


def test_missing_extension_gives_build_instructions(monkeypatch):
    monkeypatch.setattr(backends, "CPP_IMPORT_ERROR", ImportError("no module named _C"))
    x, h0 = torch.randn(3, 2, 4), torch.zeros(2, 5)
    w_ih, w_hh = torch.randn(15, 4), torch.randn(15, 5)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        gru_layer(x, h0, w_ih, w_hh, backend="cpp")


def test_package_imports_without_the_extension():
    """As where _C was never built: the import works, the reference backend runs, and asking
    for the C++ backend says how to build it. A fresh interpreter, with _C's import blocked."""
    script = (
        "import sys\n"
        "class NoExtension:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'gated_kernels._C':\n"
        "            raise ImportError('not built')\n"
        "sys.meta_path.insert(0, NoExtension())\n"
        "import torch, gated_kernels as gk\n"
        "assert not gk.cpp_available()\n"
        "x, h0 = torch.randn(3, 2, 4), torch.zeros(2, 5)\n"
        "w_ih, w_hh = torch.randn(15, 4), torch.randn(15, 5)\n"
        "gk.gru_layer(x, h0, w_ih, w_hh, backend='reference')\n"
        "try:\n"
        "    gk.gru_layer(x, h0, w_ih, w_hh, backend='cpp')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "gated_kernels._C could not be imported (not built)" in result.stdout
    assert "pip install --no-build-isolation" in result.stdout
