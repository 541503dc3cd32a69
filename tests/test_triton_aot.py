"""Every Triton kernel configuration the launchers can pick compiles ahead of time for sm_80 and
sm_90, without a GPU: no local-memory spills, shared memory within the chip's limit, and the
grid barrier's release and acquire atomics present where a kernel has one."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def records():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "gated_kernels.triton_kernels.aot", "--json"],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_configuration_compiles_for_its_targets(records):
    by_config, expected = {}, {}
    for r in records:
        by_config.setdefault(r["config"], set()).add(r["arch"])
        expected[r["config"]] = set(r["targets"])
    assert by_config == expected
    assert sum("sm_80" in archs for archs in by_config.values()) > len(by_config) // 2
    names = " ".join(by_config)
    for path in ("small", "persistent", "per_step"):
        assert path in names, f"no {path} configuration compiled"


def test_no_local_memory_spills(records):
    spilled = [(r["config"], r["arch"], r["local"]) for r in records if r["local"] or r["stack"]]
    assert not spilled, spilled


def test_shared_memory_within_the_limit(records):
    over = [(r["config"], r["arch"], r["shared"]) for r in records if r["shared"] > r["shared_limit"]]
    assert not over, over


def test_persistent_kernels_hold_the_barrier_atomics(records):
    persistent = [r for r in records if "persistent" in r["config"]]
    assert persistent
    missing = [(r["config"], r["arch"]) for r in persistent if not (r["release"] and r["acquire"])]
    assert not missing, missing


def test_barrier_benchmark_kernels_compile_with_their_atomics():
    """gpu_check.sh times the grid barrier's two waits (bench/barrier.py); both compile for
    sm_80 and sm_90, the acquire poll as a plain ld.acquire.gpu load."""
    code = """
import json, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gated_kernels.bench import barrier
from gated_kernels.triton_kernels import common
out = {}
signature = {"counter_ptr": "*i32", "sink_ptr": "*fp32", "steps": "i32", "MODE": "constexpr",
             "STORES": "constexpr"}
for mode in ("rmw", "acquire"):
    for cc in (80, 90):
        source = ASTSource(fn=barrier._barrier_kernel, signature=signature,
                           constexprs={"MODE": mode, "STORES": 8192})
        ptx = triton.compile(source, target=GPUTarget("cuda", cc, 32),
                             options=dict(num_warps=4, **common.persistent_options())).asm["ptx"]
        out[f"{mode}{cc}"] = ["ld.acquire.gpu" in ptx, "atom.release" in ptx or ".release." in ptx]
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    for cc in (80, 90):
        assert found[f"acquire{cc}"] == [True, True]
        assert found[f"rmw{cc}"] == [False, True]
