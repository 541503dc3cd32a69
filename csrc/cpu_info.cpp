#include "cpu_info.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace gated_kernels {
namespace {

constexpr int64_t kDefaultL2Bytes = int64_t(512) << 10;

// sysfs writes sizes as "1024K" (or "2M"); returns 0 when the text is not such a size.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || value <= 0) return 0;
  if (*end == 'K') return value << 10;
  if (*end == 'M') return value << 20;
  return value;
}

std::string read_line(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

// The level-2 data or unified cache of CPU 0, from Linux sysfs; 0 if there is none to read.
int64_t sysfs_l2_bytes() {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    if (read_line(dir + "/level") != "2") continue;
    if (read_line(dir + "/type") == "Instruction") continue;
    return parse_size(read_line(dir + "/size"));
  }
  return 0;
}

// glibc's sysconf reads cpuid; it is right for L2 on the machines we checked (for L3 it can be
// far off: 320 MB on the 32 MB EPYC), so it comes after sysfs.
int64_t sysconf_l2_bytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  const long value = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return value > 0 ? value : 0;
#else
  return 0;
#endif
}

}  // namespace

CacheSize l2_cache() {
  const char* text = std::getenv("GATED_KERNELS_L2_BYTES");
  if (text != nullptr && *text != '\0') {
    const int64_t bytes = parse_size(text);
    TORCH_CHECK(bytes > 0, "GATED_KERNELS_L2_BYTES must be a positive size in bytes (or with K "
                "or M), got '", text, "'");
    return {bytes, "GATED_KERNELS_L2_BYTES"};
  }
  static const CacheSize detected = [] {
    if (const int64_t bytes = sysfs_l2_bytes()) return CacheSize{bytes, "sysfs"};
    if (const int64_t bytes = sysconf_l2_bytes()) return CacheSize{bytes, "sysconf"};
    return CacheSize{kDefaultL2Bytes, "default"};
  }();
  return detected;
}

GemmChoice gemm_choice() {
  const char* text = std::getenv("GATED_KERNELS_CPU_GEMM");
  if (text == nullptr || *text == '\0' || std::strcmp(text, "auto") == 0) return GemmChoice::kAuto;
  if (std::strcmp(text, "own") == 0) return GemmChoice::kOwn;
  if (std::strcmp(text, "brgemm") == 0) return GemmChoice::kBrgemm;
  if (std::strcmp(text, "mkl") == 0) return GemmChoice::kMkl;
  TORCH_CHECK(false, "GATED_KERNELS_CPU_GEMM must be one of auto, own, brgemm, mkl, got '", text,
              "'");
}

}  // namespace gated_kernels
