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

at::Tensor pack_panels(const std::vector<at::Tensor>& columns, int64_t panel) {
  const at::Tensor& first = columns.front();
  const int64_t K = first.size(0);
  int64_t N = 0;
  for (const at::Tensor& block : columns) N += block.size(1);
  const int64_t panels = (N + panel - 1) / panel;
  at::Tensor out = at::empty({panels, K, panel}, first.options());
  int64_t n0 = 0;
  for (const at::Tensor& block : columns) {
    if (first.scalar_type() == at::kFloat) {
      panel_kernels().pack_f32(block.data_ptr<float>(), block.stride(0), block.stride(1), K,
                               block.size(1), panel, n0, out.data_ptr<float>());
    } else {
      TORCH_CHECK(first.scalar_type() == at::kBFloat16,
                  "pack_panels: float or bfloat16 weights, got ", first.scalar_type());
      panel_kernels().pack_bf16(block.data_ptr<c10::BFloat16>(), block.stride(0),
                                block.stride(1), K, block.size(1), panel, n0,
                                out.data_ptr<c10::BFloat16>());
    }
    n0 += block.size(1);
  }
  if (panels * panel > N) {  // the last panel's columns past N
    out.select(0, panels - 1).narrow(1, N % panel, panels * panel - N).zero_();
  }
  return out;
}

}  // namespace gated_kernels
