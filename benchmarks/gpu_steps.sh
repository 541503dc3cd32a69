# What the GPU checks (gpu_check.sh, gpu_layernorm.sh) share, sourced with the output folder and
# the log's name: the run from the source tree on the Triton path only (the GPU machines cannot
# load the C++ extension built elsewhere), everything printed teed into OUT_DIR/LOG, and `run`.
#   source benchmarks/gpu_steps.sh OUT_DIR LOG
out=$1
mkdir -p "$out"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
status=0

run() {  # run LIMIT_SECONDS COMMAND...: a step that fails or runs over is recorded, not fatal
  local limit=$1
  shift
  echo "== $* (limit ${limit}s)"
  timeout "$limit" "$@" || { echo "== FAILED ($?): $*"; status=1; }
}

exec > >(tee "$out/$2") 2>&1
