#!/usr/bin/env bash
# The prepared check for a GPU machine, run on a fresh copy of the working tree:
#   bash benchmarks/gpu_check.sh OUT_DIR
# Those machines carry Python 3.12, torch 2.11 and Triton 3.6, can install nothing and cannot load
# the C++ extension built elsewhere, so everything here runs from the source tree on the Triton
# path only. It writes into OUT_DIR: gpu_check.log (everything printed), the GPU tests' result,
# the markdown and JSON of the runner's `gpu` and `flashrnn` suites (torch.nn measured in the
# same process) and the barrier benchmark's JSON. Budget: under 7 minutes on an H100 (the H200
# runs of 2026-11-30: 39 s of tests, about 230 s of gpu suite before it timed the GPU's work alone
# too, which the 87-case run of d03e6a2 put at about 20% more). Then, where device time allows,
# benchmarks/gpu_layernorm.sh (issue 17's LayerNorm cells and zoneout, about 7 minutes).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
source "$(dirname "$0")/gpu_steps.sh" "$out" gpu_check.log
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
# The commit above can be stale on a copied tree; the digest of the sources is not: run
# benchmarks/source_digest.sh in a checkout to tell which commit ran.
echo "== sources digest $(bash benchmarks/source_digest.sh)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python - <<'PY'
import torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, cudnn {torch.backends.cudnn.version()}, "
    f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)")
PY
# The Triton LayerNorm operators' GPU tests (and zoneout's, on the same kernels) belong to
# gpu_layernorm.sh: their compiles alone would overrun this budget.
run 60 python -m pytest -q -m cuda tests --ignore tests/test_layernorm_ops.py \
  --ignore tests/test_regularizers.py \
  --junitxml "$out/gpu_tests.xml"
# Our kernels forced (--backend triton), torch.nn as users have it (weights flattened), and what
# backend='auto' runs timed beside them where it picks torch.nn's code. 240 cases; the JSON and
# markdown are rewritten after each case, so a run cut off at its limit keeps what it measured.
run 300 python -m gated_kernels.bench --suite gpu --device cuda --backend triton --min-seconds 0.1 \
  --json "$out/gpu_suite.json" --markdown "$out/gpu_suite.md"
# The fixed cost a persistent kernel pays per step: the grid barrier's two waits, and a launch.
run 30 python -m gated_kernels.bench.barrier --json "$out/barrier.json"
run 45 python -m gated_kernels.bench --suite flashrnn --device cuda --backend triton --min-seconds 0.5 \
  --json "$out/flashrnn_suite.json" --markdown "$out/flashrnn_suite.md"
echo "== gpu_check finished with status $status"
exit "$status"
