#!/usr/bin/env bash
# One SHA-1 over the package, kernel and test sources as they are on disk, with their paths:
# printed by gpu_check.sh, whose machines may carry stale git metadata, and comparable with the
# same command run in a checkout of any commit.
cd "$(dirname "$0")/.."
find gated_kernels csrc tests benchmarks -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.sh' \) \
  -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12
