// The pointwise passes at the baseline ISA (at::vec's DEFAULT: scalar exp / tanh per element),
// for CPUs without AVX2 and for ATEN_CPU_CAPABILITY=default; and the run-time choice of variant.
#define CPU_CAPABILITY DEFAULT
#include "pointwise_table.h"

#include <ATen/Version.h>

#include <string>

GATED_KERNELS_INSTANTIATE_POINTWISE()

namespace gated_kernels {

template <typename scalar_t>
const PointwiseKernels<scalar_t>& pointwise_kernels() {
  // ATen decides once per process from the CPU and ATEN_CPU_CAPABILITY; following it keeps our
  // kernels on the instruction set torch's own use. at::get_cpu_capability() is the exported
  // form (at::native::get_cpu_capability() is not visible outside libtorch_cpu).
  static const PointwiseKernels<scalar_t> table = [] {
#ifdef GATED_KERNELS_CPU_VARIANTS
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return AVX512::pointwise_kernels<scalar_t>();
    if (capability == "AVX2") return AVX2::pointwise_kernels<scalar_t>();
#endif
    return DEFAULT::pointwise_kernels<scalar_t>();
  }();
  return table;
}

template const PointwiseKernels<float>& pointwise_kernels<float>();
template const PointwiseKernels<double>& pointwise_kernels<double>();
template const PointwiseKernels<c10::BFloat16>& pointwise_kernels<c10::BFloat16>();

}  // namespace gated_kernels
