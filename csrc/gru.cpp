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
  using V = Vec<acc_t>;
  const int64_t T = n.T, B = n.B, H = n.H, G = 3 * H;
  at::Tensor gh = at::empty({B, G}, h_state.options());  // h_{t-1} W_hh^T, allocated once
  const at::Tensor w_hh_t = w_hh.t();  // [H, 3H] view: BLAS reads it transposed, no copy

  const scalar_t* xg_p = xg.data_ptr<scalar_t>();
  const acc_t* bias_p = b_hh.data_ptr<acc_t>();
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  scalar_t* y_p = y.data_ptr<scalar_t>();
  acc_t* h_p = h_state.data_ptr<acc_t>();
  acc_t* gates_p = gates.data_ptr<acc_t>();
  const acc_t* gh_p = gh.data_ptr<acc_t>();

  for (const auto s : c10::irange(T)) {
    const int64_t t = time_index(s, T, reverse);
    matmul(gh, h_state, w_hh_t);

    for_each_row_segment(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const int64_t row = t * B + b;
      acc_t* gates_row = gates_p + row * 4 * H;
      scalar_t* y_row = y_p + row * H;
      if (!row_active(len, b, t)) {
        // Past the row's length: state carried, gates 0, y 0.
        for (int64_t k = 0; k < 4; ++k) {
          std::fill(gates_row + k * H + j0, gates_row + k * H + j1, acc_t(0));
        }
        std::fill(y_row + j0, y_row + j1, scalar_t(0));
        return;
      }
      const scalar_t* xg_row = xg_p + row * G;
      const acc_t* gh_row = gh_p + b * G;
      acc_t* h_row = h_p + b * H;
      for (int64_t j = j0; j < j1; j += V::size()) {
        const int64_t w = std::min<int64_t>(V::size(), j1 - j);
        const V r = vsigmoid(load<acc_t>(xg_row + j, w) + V::loadu(gh_row + j, w) +
                             V::loadu(bias_p + j, w));
        const V z = vsigmoid(load<acc_t>(xg_row + H + j, w) + V::loadu(gh_row + H + j, w) +
                             V::loadu(bias_p + H + j, w));
        const V hn = V::loadu(gh_row + 2 * H + j, w) + V::loadu(bias_p + 2 * H + j, w);
        const V nv = vtanh(load<acc_t>(xg_row + 2 * H + j, w) + r * hn);
        // h = (1 - z) * n + z * h_prev, written as n + z * (h_prev - n).
        const V h = nv + z * (V::loadu(h_row + j, w) - nv);
        r.store(gates_row + j, w);
        z.store(gates_row + H + j, w);
        nv.store(gates_row + 2 * H + j, w);
        hn.store(gates_row + 3 * H + j, w);
        h.store(h_row + j, w);
        store<acc_t>(y_row + j, h, w);
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& xg_in, const at::Tensor& w_hh, const at::Tensor& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths_in, bool reverse) {
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
  at::Tensor gates = new_output({n.T, n.B, 4 * n.H}, acc_opts);
  at::Tensor h_state = to_acc(h0, /*copy=*/true);  // the running state; becomes h_n

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xg.scalar_type(), "gru_forward_cpu", [&] {
    gru_forward_loop<scalar_t>(n, xg, to_acc(w_hh), to_acc(b_hh), lengths, reverse, y, h_state,
                               gates);
  });
  return {y, h_state.to(xg.scalar_type()), gates};
}

template <typename scalar_t>
void gru_backward_loop(const GruSizes& n, const at::Tensor& dy, const at::Tensor& w_hh,
                       const at::Tensor& hprev, const at::Tensor& lengths, bool reverse,
                       const at::Tensor& gates, at::Tensor& dh, at::Tensor& dGx,
                       at::Tensor& dGh) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  const int64_t T = n.T, B = n.B, H = n.H, G = 3 * H;
  const std::vector<at::Tensor> dGh_steps = dGh.unbind(0);

  const scalar_t* dy_p = dy.data_ptr<scalar_t>();
  const acc_t* hprev_p = hprev.data_ptr<acc_t>();
  const acc_t* gates_p = gates.data_ptr<acc_t>();
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  acc_t* dh_p = dh.data_ptr<acc_t>();
  acc_t* dGx_p = dGx.data_ptr<acc_t>();
  acc_t* dGh_p = dGh.data_ptr<acc_t>();

  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_index(s, T, reverse);
    for_each_row_segment(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const int64_t row = t * B + b;
      acc_t* dGx_row = dGx_p + row * G;
      acc_t* dGh_row = dGh_p + row * G;
      if (!row_active(len, b, t)) {
        // Carried state: dh passes through unchanged, no gate gradient.
        for (int64_t k = 0; k < 3; ++k) {
          std::fill(dGx_row + k * H + j0, dGx_row + k * H + j1, acc_t(0));
          std::fill(dGh_row + k * H + j0, dGh_row + k * H + j1, acc_t(0));
        }
        return;
      }
      const acc_t* gates_row = gates_p + row * 4 * H;
      const scalar_t* dy_row = dy_p + row * H;
      const acc_t* hprev_row = hprev_p + row * H;
      acc_t* dh_row = dh_p + b * H;
      const V one(acc_t(1));
      for (int64_t j = j0; j < j1; j += V::size()) {
        const int64_t w = std::min<int64_t>(V::size(), j1 - j);
        const V r = V::loadu(gates_row + j, w);
        const V z = V::loadu(gates_row + H + j, w);
        const V nv = V::loadu(gates_row + 2 * H + j, w);
        const V hn = V::loadu(gates_row + 3 * H + j, w);
        const V dhv = V::loadu(dh_row + j, w) + load<acc_t>(dy_row + j, w);
        const V d_n = dhv * (one - z) * (one - nv * nv);
        const V d_z = dhv * (V::loadu(hprev_row + j, w) - nv) * z * (one - z);
        const V d_r = d_n * hn * r * (one - r);
        d_r.store(dGx_row + j, w);
        d_z.store(dGx_row + H + j, w);
        d_n.store(dGx_row + 2 * H + j, w);
        d_r.store(dGh_row + j, w);
        d_z.store(dGh_row + H + j, w);
        (d_n * r).store(dGh_row + 2 * H + j, w);
        // The direct path h_prev -> h; the product below adds dGh W_hh.
        (dhv * z).store(dh_row + j, w);
      }
    });
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
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace gated_kernels
