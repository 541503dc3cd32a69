// The panel product at the baseline ISA (at::vec's DEFAULT, and NEON on aarch64, where ATen
// compiles its DEFAULT capability with NEON vectors), and the run-time choice of variant.
#define CPU_CAPABILITY DEFAULT
#include "panel_kernels.h"

#include <ATen/Version.h>

#include <string>

namespace gated_kernels {

const PanelKernels& panel_kernels() {
  // As pointwise_kernels(): follow the capability ATen itself runs with.
  static const PanelKernels table = [] {
#ifdef GATED_KERNELS_CPU_VARIANTS
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return AVX512::panel_kernels();
    if (capability == "AVX2") return AVX2::panel_kernels();
#endif
    return DEFAULT::panel_kernels();
  }();
  return table;
}

at::Tensor pack_panels(const at::Tensor& w, int64_t panel) {
  const int64_t K = w.size(0), N = w.size(1);
  at::Tensor out = at::empty({(N + panel - 1) / panel, K, panel}, w.options());
  if (w.scalar_type() == at::kFloat) {
    panel_kernels().pack_f32(w.data_ptr<float>(), w.stride(0), w.stride(1), K, N, panel,
                             out.data_ptr<float>());
  } else if (w.scalar_type() == at::kBFloat16) {
    panel_kernels().pack_bf16(w.data_ptr<c10::BFloat16>(), w.stride(0), w.stride(1), K, N, panel,
                              out.data_ptr<c10::BFloat16>());
  } else {
    TORCH_CHECK(false, "pack_panels: float or bfloat16 weights, got ", w.scalar_type());
  }
  return out;
}

}  // namespace gated_kernels
