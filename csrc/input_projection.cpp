// The input projection of a layer and its gradients, for the training path on the CPU: the
// recurrence ops keep DESIGN.md's boundary and take xg; these make it, and turn the gate gradient
// back into dx, dW_ih and the bias gradient, each as one product over all T*B rows on oneDNN's
// matmul (matmul.h: ATen's own float32 product runs MKL's generic code on AMD).
//
// input_projection(x, w_ih, bias) -> xg
//   x [T, B, I], w_ih [G, I], bias [G] optional: xg [T, B, G] = x w_ih^T + bias.
// input_projection_backward(dxg, x, w_ih, bias) -> (dx, dw_ih, dbias)
//   dxg [T, B, G]: dx [T, B, I] = dxg w_ih, dw_ih [G, I] = dxg^T x, dbias [G] = dxg summed over
//   T and B, or [0] when `bias` is false. No output aliases an input.
#include "common.h"
#include "matmul.h"

#include <torch/library.h>

namespace gated_kernels {
namespace {

at::Tensor input_projection_cpu(const at::Tensor& x, const at::Tensor& w_ih,
                                const std::optional<at::Tensor>& bias) {
  const KernelGuard guard;
  const int64_t G = check_input_projection(x, w_ih, bias, 1);
  const int64_t T = x.size(0), B = x.size(1);
  at::Tensor xg = new_output({T, B, G}, x.options());
  at::Tensor rows = xg.view({T * B, G});
  // The bias goes in first and the product is added to it (beta = 1), as ATen's addmm does.
  if (bias.has_value()) rows.copy_(bias->expand({T * B, G}));
  matmul_into(rows, x.reshape({T * B, x.size(2)}), w_ih.t(), bias.has_value() ? 1.0f : 0.0f);
  return xg;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> input_projection_backward_cpu(
    const at::Tensor& dxg, const at::Tensor& x, const at::Tensor& w_ih, bool bias) {
  const KernelGuard guard;
  const int64_t G = check_input_projection(x, w_ih, std::nullopt, 1);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  check_saved("dxg", dxg, {T, B, G}, x.scalar_type());
  const at::Tensor d = dxg.reshape({T * B, G});
  at::Tensor dx = new_output({T, B, I}, x.options());
  at::Tensor dx_rows = dx.view({T * B, I});
  matmul_into(dx_rows, d, w_ih, 0.0f);
  at::Tensor dw_ih = new_output({G, I}, x.options());
  matmul_into(dw_ih, d.t(), x.reshape({T * B, I}), 0.0f);
  at::Tensor dbias = bias ? d.sum(0) : at::empty({0}, x.options());
  return {dx, dw_ih, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("input_projection", &input_projection_cpu);
  m.impl("input_projection_backward", &input_projection_backward_cpu);
}

}  // namespace gated_kernels
