"""The wheel: built from the source tree, it holds the compiled extension and the Triton sources
but no tests, and it installs and runs its C++ backend in a virtual environment that has only
torch and no compiler on the PATH. Also an sdist."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SMOKE = """
import torch, gated_kernels
assert gated_kernels.cpp_available(), "the wheel's C++ extension did not load"
theirs = torch.nn.GRU(5, 7, num_layers=2)
ours = gated_kernels.GRU.from_torch(theirs, backend="cpp")
x = torch.randn(6, 3, 5)
err = (ours(x)[0] - theirs(x)[0]).abs().max().item()
assert err < 1e-5, err
print("smoke ok", gated_kernels.__version__, err)
"""


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", str(ROOT),
          "-w", str(out)])
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
          str(ROOT)])
    return out


def test_wheel_contents(dist):
    (wheel,) = dist.glob("gated_kernels-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("gated_kernels/_C") and n.endswith(".so") for n in names)
    for source in ("gated_kernels/triton_kernels/lstm.py", "gated_kernels/triton_kernels/gru.py",
                   "gated_kernels/bench/cli.py"):
        assert source in names
    assert not any(n.startswith("tests/") for n in names)
    (sdist,) = dist.glob("gated_kernels-*.tar.gz")
    assert sdist.stat().st_size > 0


def test_wheel_runs_without_a_compiler(dist, tmp_path):
    (wheel,) = dist.glob("gated_kernels-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    torch_version = torch.__version__.split("+")[0]
    _run([python, "-m", "pip", "install", "-q", f"torch=={torch_version}"])
    _run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    # Only the venv on the PATH: no gcc, no c++, no ninja.
    env = {"PATH": str(env_dir / "bin"), "HOME": str(tmp_path)}
    for compiler in ("gcc", "g++", "cc", "c++"):
        assert not (env_dir / "bin" / compiler).exists()
    result = _run([python, "-c", SMOKE], env=env, cwd=tmp_path)
    assert "smoke ok" in result.stdout
