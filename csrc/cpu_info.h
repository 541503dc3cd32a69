// What the CPU kernels tune for, found at run time rather than fixed for the machine they were
// first tuned on: the size of a core's L2, and which kernel runs the per-step products.
//
// Both have an environment override, for A/B runs and for tests:
//   GATED_KERNELS_L2_BYTES   a core's L2 in bytes (else sysfs, sysconf, then 512 KB)
//   GATED_KERNELS_CPU_GEMM   auto (default), own, brgemm or mkl (see product.h)
// Both are read on every call, so a test can switch them between calls.
#pragma once

#include <cstdint>
#include <string>

namespace gated_kernels {

// The L2 of one core in bytes, and where the number came from: "GATED_KERNELS_L2_BYTES", "sysfs"
// (Linux: /sys/devices/system/cpu/cpu0/cache/index*/ with level 2), "sysconf", or "default"
// (512 KB, what oneDNN assumes when it cannot tell: its src/cpu/platform.cpp).
struct CacheSize {
  int64_t bytes;
  std::string source;
};
CacheSize l2_cache();

inline int64_t l2_bytes() { return l2_cache().bytes; }

enum class GemmChoice { kAuto, kOwn, kBrgemm, kMkl };

// GATED_KERNELS_CPU_GEMM; an unknown value is an error that names the variable and the choices.
GemmChoice gemm_choice();

}  // namespace gated_kernels
