// A layer's input projection xg = x W_ih^T + bias on the CPU where a caller needs xg itself (the
// LayerNorm cells normalise it; the plain cells' forward makes its input gates inside the
// recurrence), and its gradients for every training path: one product each over all T*B rows,
// on the kernel cell_matmul finds fastest here for the shape (product.h, fastest.h): oneDNN's
// matmul, ATen's (MKL's, generic code on AMD) or ours; oneDNN's fixed cost is not repaid on
// small products (a LayerNormLSTMCell training step at B=1, H=64 took 615 us with oneDNN for its
// input product and gradients, 457 us on the reference backend's ATen products).
//
// input_projection(x [T, B, I], w_ih [G, I]) -> xg [T, B, G] = x W_ih^T (no bias: the callers
//   add it where it costs no pass over xg).
// input_projection_backward(dxg, x, w_ih, bias, lengths) -> (dx, dw_ih, dbias)
//   dxg [T, B, G]: dx [T, B, I] = dxg w_ih, dw_ih [G, I] = dxg^T x, dbias [G] = dxg summed over
//   T and B, or [0] when `bias` is false. lengths [B] int64, optional: dxg is 0 past each
//   row's length (the recurrence's backward writes it so), and the products skip those rows.
//   No output aliases an input.
#include "common.h"
#include "product.h"

#include <torch/library.h>

namespace gated_kernels {
namespace {

at::Tensor input_projection_cpu(const at::Tensor& x, const at::Tensor& w_ih) {
  const KernelGuard guard;
  const int64_t G = check_input_projection(x, w_ih, std::nullopt, 1);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  at::Tensor xg = new_output({T, B, G}, x.options());
  at::Tensor xg_rows = xg.view({T * B, G});
  cell_matmul(xg_rows, x.reshape({T * B, I}), w_ih.t(), 0.0f);
  return xg;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> input_projection_backward_cpu(
    const at::Tensor& dxg, const at::Tensor& x, const at::Tensor& w_ih, bool bias,
    const std::optional<at::Tensor>& lengths) {
  const KernelGuard guard;
  const int64_t G = check_input_projection(x, w_ih, std::nullopt, 1);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  check_saved("dxg", dxg, {T, B, G}, x.scalar_type());
  const at::Tensor lens = check_lengths(lengths, T, B);
  at::Tensor d = dxg.reshape({T * B, G});
  at::Tensor x_rows = x.reshape({T * B, I});
  at::Tensor dx = new_output({T, B, I}, x.options());
  at::Tensor dx_rows = dx.view({T * B, I});
  // dxg is 0 past each row's length: the products may take the running rows alone, dx being
  // 0 elsewhere.
  const at::Tensor rows = lens.defined() ? sparse_running_rows(lens, 0, T) : at::Tensor();
  if (rows.defined()) {
    d = d.index_select(0, rows);
    x_rows = x_rows.index_select(0, rows);
    at::Tensor running = at::empty({rows.numel(), I}, x.options());
    cell_matmul(running, d, w_ih, 0.0f);
    dx_rows.zero_().index_copy_(0, rows, running);
  } else {
    cell_matmul(dx_rows, d, w_ih, 0.0f);
  }
  at::Tensor dw_ih = new_output({G, I}, x.options());
  cell_matmul(dw_ih, d.t(), x_rows, 0.0f);
  at::Tensor dbias = bias ? d.sum(0) : at::empty({0}, x.options());
  return {dx, dw_ih, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("input_projection", &input_projection_cpu);
  m.impl("input_projection_backward", &input_projection_backward_cpu);
}

}  // namespace gated_kernels
