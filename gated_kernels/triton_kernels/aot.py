"""Ahead-of-time compilation of every Triton kernel configuration the launchers can pick, for real
GPUs, on any machine (no GPU needed): the compile-time resource table and its checks.

    python -m gated_kernels.triton_kernels.aot            # table
    python -m gated_kernels.triton_kernels.aot --json     # one JSON record per (config, arch)

Must run without TRITON_INTERPRET (the interpreter has nothing to compile). For each
configuration and target it records registers, local memory (spills), shared memory and, for
kernels with a grid barrier, whether the PTX holds the barrier's release and acquire atomics.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Shared memory one program may use: 227 KB on sm_90 (H100), 163 KB on sm_80 (A100).
TARGETS = {"sm_80": (80, 163 * 1024), "sm_90": (90, 227 * 1024)}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def all_configs():
    """(name, kernel, signature, constexprs, options[, archs]) from every kernel file,
    without duplicates (several H can pick the same compiled configuration)."""
    from gated_kernels.triton_kernels import gru, layernorm, lstm

    seen, configs = set(), []
    for config in lstm.aot_configs() + gru.aot_configs() + layernorm.aot_configs():
        name, kernel, signature, constexprs, options = config[:5]
        key = (kernel.__name__, tuple(sorted(signature.items())),
               tuple(sorted(constexprs.items())), tuple(sorted(options.items())))
        if key not in seen:
            seen.add(key)
            configs.append(config)
    return configs


def _resource_usage(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_one(index, arch):
    """Compile configuration `index` of all_configs() for `arch`; a record of its resources."""
    config = all_configs()[index]
    name, kernel, signature, constexprs, options = config[:5]
    cc, shared_limit = TARGETS[arch]
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", cc, 32), options=options)
    ptx = compiled.asm["ptx"]
    return {
        "config": name, "kernel": kernel.__name__, "arch": arch, "targets": list(_archs(config)),
        **_resource_usage(compiled.asm["cubin"]),
        "shared": compiled.metadata.shared, "shared_limit": shared_limit,
        "release": bool(re.search(r"\.release\.", ptx)),
        "acquire": bool(re.search(r"\.acquire\.|fence\.acq", ptx)),
        "num_warps": options.get("num_warps"),
    }


def _archs(config):
    """The targets a configuration can run on: an optional sixth entry names them (a config the
    heuristic only picks where there is enough shared memory, say), else all."""
    return config[5] if len(config) > 5 else tuple(TARGETS)


def compile_all(workers=2):
    jobs = [(i, arch) for i, config in enumerate(all_configs()) for arch in _archs(config)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_one, *zip(*jobs)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gated_kernels.triton_kernels.aot")
    parser.add_argument("--json", action="store_true", help="JSON records instead of a table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("aot: unset TRITON_INTERPRET: the interpreter compiles nothing")
    records = compile_all()
    if args.json:
        print(json.dumps(records))
        return
    print(f"{'config':48s} {'arch':6s} {'regs':>4s} {'local':>5s} {'shared KB':>9s} barrier")
    for r in records:
        barrier = "release+acquire" if r["release"] and r["acquire"] else "-"
        print(f"{r['config']:48s} {r['arch']:6s} {r['reg']:4d} {r['local']:5d} "
              f"{r['shared'] / 1024:9.1f} {barrier}")


if __name__ == "__main__":
    main()
