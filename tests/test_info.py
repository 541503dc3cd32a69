"""python -m gated_kernels.info: versions, backend availability with reasons, the Triton path."""

import subprocess
import sys

import torch

from gated_kernels import info


def test_reports_versions_backends_and_tf32(capsys):
    info.main([])
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out
    assert "allow_tf32" in out
    assert "LayerNorm / zoneout recurrences (torch.backends.cuda.matmul.allow_tf32)" in out
    for name in ("reference", "cpp", "triton"):
        assert f"backend {name}" in out


def test_reports_the_triton_path_for_a_shape(capsys):
    info.main(["--shape", "16,100,256,4096"])
    out = capsys.readouterr().out
    assert out.count("triton path for B=16 T=100 I=256 H=4096") == 3
    assert "per_step" in out  # 256 programs of 16 units: more than an H100's 132 SMs
    info.main(["--shape", "64,100,256,1024"])
    out = capsys.readouterr().out
    assert "persistent:4 tiles" in out  # 128 programs a tile: each loops over 4
    assert "backend='auto' on CUDA, one-layer LSTM: torch for inference" in out


def test_an_unavailable_backend_says_why(monkeypatch):
    from gated_kernels import backends

    monkeypatch.setattr(backends, "CPP_IMPORT_ERROR", ImportError("not built"))
    ok, reason = info.backend_status()["cpp"]
    assert not ok and "not built" in reason


def test_bad_shape_is_one_line_error():
    result = subprocess.run([sys.executable, "-m", "gated_kernels.info", "--shape", "1,2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "expected B,T,I,H" in result.stderr
    assert "Traceback" not in result.stderr


def test_reports_what_the_cpu_kernels_run_with(capsys, monkeypatch):
    monkeypatch.setenv("GATED_KERNELS_L2_BYTES", "768K")
    monkeypatch.setenv("GATED_KERNELS_CPU_GEMM", "own")
    info.main([])
    out = capsys.readouterr().out
    assert f"ATen capability {torch.backends.cpu.get_cpu_capability()}" in out
    assert "CPU L2 per core: 768 KB (GATED_KERNELS_L2_BYTES)" in out
    assert "fp32: own (1 row), own (16 rows); bf16: own (1 row), own (16 rows)" in out


def test_benchmark_header_names_the_cpu_and_its_product_kernels(monkeypatch):
    from gated_kernels import cpu
    from gated_kernels.bench import report

    monkeypatch.delenv("GATED_KERNELS_CPU_GEMM", raising=False)
    prov = report.provenance("cpu")
    assert prov["cpu_vendor"] == cpu.vendor() and prov["l2_bytes"] > 0
    header = report.header(prov)
    assert cpu.model() in header and prov["cpu_vendor"] in header
    assert "GATED_KERNELS_CPU_GEMM=auto: fp32: fastest of own, brgemm, mkl (timed)" in header
