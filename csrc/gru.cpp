// GRU recurrence on the CPU (PyTorch's variant, n = tanh(W_in x + b_in + r * (W_hn h + b_hn))):
// one layer, one direction, the whole sequence.
//
// gru_forward(xg, w_hh, b_hh, h0, lengths, reverse) -> (y, h_n, gates)
//   xg      [T, B, 3H]  input gates x W_ih^T + b_ih, gate order r, z, n
//   w_hh    [3H, H]     recurrent weight
//   b_hh    [3H]        recurrent bias (zeros for bias=False); b_hn must stay inside r * (...)
//   h0      [B, H]
//   lengths [B] int64   optional, each in [1, T]: row b runs steps t < lengths[b] and carries its
//                       state through the rest; y is 0 there
//   reverse             run t = T-1 .. 0 (a row starts at lengths[b]-1)
//   y       [T, B, H], h_n [B, H]
//   gates   [T, B, 4H]  r, z, n and hn = W_hn h + b_hn, saved for backward (0 past a row's
//                       length), in the accumulation type (float for bfloat16 inputs)
//   No output aliases an input.
//
// gru_inference(xg, w_hh, b_hh, h0, lengths, reverse) -> (y, h_n)
//   gru_forward's first two outputs, bitwise the same, without allocating or writing gates.
//
// gru_backward(dy, dh_n, w_hh, h0, lengths, reverse, y, gates)
//   -> (dxg [T, B, 3H], dw_hh [3H, H], db_hh [3H], dh0 [B, H])
//   dxg = [dr, dz, dn] (pre-activation); the recurrent side sees [dr, dz, dn * r] instead, which
//   gives dW_hh and db_hh.
#include "common.h"

#include <torch/library.h>

namespace gated_kernels {
namespace {

struct GruSizes {
  int64_t T, B, H;
};

GruSizes check_gru_args(int64_t T, int64_t B, int64_t H, at::ScalarType dtype,
                        const at::Tensor& w_hh, const at::Tensor& h0) {
  GK_CHECK_DIM(w_hh, "w_hh", 2, "[3H, H]");
  GK_CHECK_SIZE(w_hh, "w_hh", 0, 3 * H, "3H (xg.size(2))");
  GK_CHECK_SIZE(w_hh, "w_hh", 1, H, "H (xg.size(2) / 3)");
  GK_CHECK_DIM(h0, "h0", 2, "[B, H]");
  GK_CHECK_SIZE(h0, "h0", 0, B, "B (xg.size(1))");
  GK_CHECK_SIZE(h0, "h0", 1, H, "H (xg.size(2) / 3)");
  GK_CHECK_DTYPE(w_hh, "w_hh", dtype);
  GK_CHECK_DTYPE(h0, "h0", dtype);
  GK_CHECK_CPU(w_hh, "w_hh");
  GK_CHECK_CPU(h0, "h0");
  return {T, B, H};
}

template <typename scalar_t>
void gru_forward_loop(const GruSizes& n, const at::Tensor& xg, const at::Tensor& w_hh,
                      const at::Tensor& b_hh, const at::Tensor& lengths, bool reverse,
                      at::Tensor& y, at::Tensor& h_state, at::Tensor& gates) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = n.T, B = n.B, H = n.H;
  StepProduct recurrent(w_hh, B);  // h_{t-1} W_hh^T
  const bool save = gates.defined();  // undefined: inference, nothing saved for backward

  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  GruForwardStep<scalar_t> step{0, B, H, len, xg.data_ptr<scalar_t>(), nullptr,
                                b_hh.data_ptr<acc_t>(), h_state.data_ptr<acc_t>(),
                                save ? gates.data_ptr<acc_t>() : nullptr,
                                y.data_ptr<scalar_t>()};
  const auto& kernels = pointwise_kernels<scalar_t>();
  const auto pass = save ? kernels.gru_forward : kernels.gru_inference;

  for (const auto s : c10::irange(T)) {
    step.t = time_index(s, T, reverse);
    step.gh = recurrent(h_state).data_ptr<acc_t>();
    at::parallel_for(0, B * H, kPointwiseGrain,
                     [&](int64_t begin, int64_t end) { pass(step, begin, end); });
  }
}

// The forward of both ops; `save` allocates and fills gates (else it stays undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_run(
    const at::Tensor& xg_in, const at::Tensor& w_hh, const at::Tensor& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths_in, bool reverse, bool save) {
  const KernelGuard guard;
  const int64_t H = check_input_gates(xg_in, 3, "r, z, n");
  const GruSizes n = check_gru_args(xg_in.size(0), xg_in.size(1), H,
                                    xg_in.scalar_type(), w_hh, h0);
  GK_CHECK_DIM(b_hh, "b_hh", 1, "[3H]");
  GK_CHECK_SIZE(b_hh, "b_hh", 0, 3 * n.H, "3H (xg.size(2))");
  GK_CHECK_DTYPE(b_hh, "b_hh", xg_in.scalar_type());
  GK_CHECK_CPU(b_hh, "b_hh");
  const at::Tensor lengths = check_lengths(lengths_in, n.T, n.B);
  const at::Tensor xg = xg_in.contiguous();
  const auto acc_opts = xg.options().dtype(at::toOpMathType(xg.scalar_type()));

  at::Tensor y = new_output({n.T, n.B, n.H}, xg.options());
  at::Tensor gates = save ? new_output({n.T, n.B, 4 * n.H}, acc_opts) : at::Tensor();
  at::Tensor h_state = to_acc(h0, /*copy=*/true);  // the running state; becomes h_n

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xg.scalar_type(), "gru_forward_cpu", [&] {
    gru_forward_loop<scalar_t>(n, xg, to_acc(w_hh), to_acc(b_hh), lengths, reverse, y, h_state,
                               gates);
  });
  return {y, h_state.to(xg.scalar_type()), gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return gru_run(xg, w_hh, b_hh, h0, lengths, reverse, /*save=*/true);
}

std::tuple<at::Tensor, at::Tensor> gru_inference_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  auto [y, h_n, gates] = gru_run(xg, w_hh, b_hh, h0, lengths, reverse, /*save=*/false);
  return {y, h_n};
}

template <typename scalar_t>
void gru_backward_loop(const GruSizes& n, const at::Tensor& dy, const at::Tensor& w_hh,
                       const at::Tensor& hprev, const at::Tensor& lengths, bool reverse,
                       const at::Tensor& gates, at::Tensor& dh, at::Tensor& dGx,
                       at::Tensor& dGh) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = n.T, B = n.B, H = n.H;
  const std::vector<at::Tensor> dGh_steps = dGh.unbind(0);

  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  GruBackwardStep<scalar_t> step{0, B, H, len, gates.data_ptr<acc_t>(), dy.data_ptr<scalar_t>(),
                                 hprev.data_ptr<acc_t>(), dh.data_ptr<acc_t>(),
                                 dGx.data_ptr<acc_t>(), dGh.data_ptr<acc_t>()};
  const auto pass = pointwise_kernels<scalar_t>().gru_backward;

  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_index(s, T, reverse);
    step.t = t;
    at::parallel_for(0, B * H, kPointwiseGrain,
                     [&](int64_t begin, int64_t end) { pass(step, begin, end); });
    // dh_{t-1} += dGh_t W_hh (rows past their length have dGh = 0 and keep dh).
    matmul_add(dh, dGh_steps[t], w_hh);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths_in, bool reverse, const at::Tensor& y,
    const at::Tensor& gates) {
  const KernelGuard guard;
  GK_CHECK_DIM(gates, "gates", 3, "[T, B, 4H]");
  GK_CHECK_FLOAT_DTYPE(h0, "h0");
  const GruSizes n = check_gru_args(gates.size(0), gates.size(1), gates.size(2) / 4,
                                    h0.scalar_type(), w_hh, h0);
  const at::Tensor lengths = check_lengths(lengths_in, n.T, n.B);
  const auto dtype = h0.scalar_type();
  const auto acc_type = at::toOpMathType(dtype);
  check_saved("dy", dy, {n.T, n.B, n.H}, dtype);
  check_saved("y", y, {n.T, n.B, n.H}, dtype);
  check_saved("gates", gates, {n.T, n.B, 4 * n.H}, acc_type);
  check_saved("dh_n", dh_n, {n.B, n.H}, dtype);

  const auto acc_opts = h0.options().dtype(acc_type);
  const at::Tensor hprev = to_acc(previous_hidden(y, h0, lengths, reverse));
  // dGx in the accumulation type; for float and double it is the output itself.
  at::Tensor dxg = new_output({n.T, n.B, 3 * n.H}, h0.options());
  at::Tensor dGx = acc_type == dtype ? dxg : at::empty({n.T, n.B, 3 * n.H}, acc_opts);
  at::Tensor dGh = at::empty({n.T, n.B, 3 * n.H}, acc_opts);
  at::Tensor dh = to_acc(dh_n, /*copy=*/true);

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "gru_backward_cpu", [&] {
    gru_backward_loop<scalar_t>(n, dy.contiguous(), to_acc(w_hh), hprev, lengths, reverse,
                                gates.contiguous(), dh, dGx, dGh);
  });
  if (!dGx.is_same(dxg)) dxg.copy_(dGx);

  // Weight and bias gradients once, over all T*B rows, after the loop.
  const at::Tensor dGh_2d = dGh.view({n.T * n.B, 3 * n.H});
  at::Tensor dw_hh = at::mm(dGh_2d.t(), hprev.view({n.T * n.B, n.H})).to(dtype);
  at::Tensor db_hh = dGh_2d.sum(0).to(dtype);
  return {dxg, dw_hh, db_hh, dh.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_inference", &gru_inference_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace gated_kernels
