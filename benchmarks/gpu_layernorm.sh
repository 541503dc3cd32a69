#!/usr/bin/env bash
# The LayerNorm cells' check on a GPU machine (issue 17), after gpu_check.sh where device time
# allows (its 7-minute budget has no room for these compiles):
#   bash benchmarks/gpu_layernorm.sh OUT_DIR
# Runs from the source tree on the Triton path only, as gpu_check.sh does. Writes into OUT_DIR:
# gpu_layernorm.log; the result of the Triton LayerNorm operators' tests (every dtype, bfloat16
# included, which the interpreter cannot check; opcheck, compile fullgraph, zoneout in the
# plain modules); the runner's `layernorm` suite against the Python loop users write today (the
# issue's 5x target) and our plain LSTM / GRU, and its `zoneout` suite. Budget: about 7
# minutes, most of it compiling the kernels' variants (dtype, saving or not, LayerNorm or not,
# zoneout).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_layernorm.sh OUT_DIR}
source "$(dirname "$0")/gpu_steps.sh" "$out" gpu_layernorm.log
echo "== gpu_layernorm $(date -u +%Y-%m-%dT%H:%M:%SZ) sources digest $(bash benchmarks/source_digest.sh)"
run 240 python -m pytest -q -x -m cuda tests/test_layernorm_ops.py tests/test_regularizers.py \
  --junitxml "$out/gpu_layernorm_tests.xml"
run 90 python -m gated_kernels.bench --suite layernorm --device cuda --backend triton \
  --min-seconds 0.05 --json "$out/layernorm_suite.json" --markdown "$out/layernorm_suite.md"
run 60 python -m gated_kernels.bench --suite zoneout --device cuda --backend triton \
  --min-seconds 0.05 --json "$out/zoneout_suite.json" --markdown "$out/zoneout_suite.md"
echo "== gpu_layernorm finished with status $status"
exit "$status"
