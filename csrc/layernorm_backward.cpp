// LayerNorm LSTM and GRU backward on the CPU, over what layernorm_lstm_forward /
// layernorm_gru_forward saved (layernorm.cpp). As the forward, rows are split over the threads
// and each runs all T steps of its rows backwards: a step of a row block is one pass per row (the
// gates' gradient, then the gradient through LN(h W_hh^T; ln_hh)) and one product, dgh W_hh for
// the block's rows. The gradients of W_hh and of the LayerNorms' weights and biases sum over
// every step and row: one product and column sums after the loop.
//
// layernorm_lstm_backward(dy [T,B,H], dh_n [B,H], dc_n [B,H], w_hh [4H,H], ln_hh_weight [4H],
//     ln_c_weight [H], ln_c_bias [H], h0, c0, lengths?, reverse, y, gates, norm_hh, c_all,
//     norm_c, rstd, keep_h?, keep_c?)
//   -> dxn [T,B,4H] (the gates' pre-activation gradient, also the gradient of xn),
//      dw_hh [4H,H], dln_hh_weight [4H], dln_hh_bias [4H], dln_c_weight [H], dln_c_bias [H],
//      dh0 [B,H], dc0 [B,H]
// layernorm_gru_backward(dy, dh_n, w_hh [3H,H], ln_hh_weight [3H], h0, lengths?, reverse, y,
//     gates, norm_hh, rstd, keep_h?)
//   -> dxn [T,B,3H], dw_hh [3H,H], db_hh [3H] (also the gradient of ln_hh's bias, which adds
//      to the same R), dln_hh_weight [3H], dh0 [B,H]
// 0 in dxn past a row's length, where the state's gradient carries. float32, float64 and
// bfloat16 (the saved tensors, the running gradients and the rows' passes in float32; the
// outputs in the input's dtype).
#include "layernorm.h"
#include "product.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

namespace gated_kernels {
namespace {

// Runs the steps of every row backwards, a block of rows per task: `row_step(t, b, dh_row,
// sums)` for each running row, with dh_row [H] its state gradient (dy[t, b] already added),
// which the step must leave as the part of dh_{t-1} that does not go through W_hh (0 for the
// LSTM), and whose dxn and dgh [T, B, G] rows it writes; then dh_{t-1} = that part + dgh W_hh.
// dh [B, H] starts as dh_n and ends as dh0. Past a row's length the gradient carries, and dxn
// and dgh are 0. `sums` is the row of `partial_sums` [threads, K] of the thread running the
// task, where the step adds its terms of the LayerNorm parameters' gradients (a thread's rows
// are the same at every call, so the sums come out the same).
template <typename scalar_t, typename RowStep>
void run_rows_backward(const at::Tensor& dy, const at::Tensor& w_hh, at::Tensor& dh,
                       at::Tensor& dxn, at::Tensor& dgh, at::Tensor& partial_sums,
                       const at::Tensor& lengths, bool reverse, const RowStep& row_step) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = dgh.size(0), B = dgh.size(1), G = dgh.size(2), H = dh.size(1);
  const int64_t K = partial_sums.size(1);
  const int64_t* len = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  const scalar_t* dy_p = dy.const_data_ptr<scalar_t>();
  acc_t* dh_p = dh.data_ptr<acc_t>();
  scalar_t* dxn_p = dxn.data_ptr<scalar_t>();
  scalar_t* dgh_p = dgh.data_ptr<scalar_t>();
  // One step (the LayerNorm cells): dgh W_hh once for all rows after the passes, on the cells'
  // product, with no weight put in a kernel's form per thread (as the forward).
  const bool one_step = T == 1;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    acc_t* sums = partial_sums.data_ptr<acc_t>() + at::get_thread_num() * K;
    // dgh's rows of the block at every step, [T, rows, G]: call t multiplies step t's by W_hh.
    std::optional<ThreadProduct<scalar_t>> product;
    if (!one_step) {
      product.emplace(std::vector<at::Tensor>{w_hh}, dgh.narrow(1, b0, b1 - b0),
                      PackSlot::kNone);
    }
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_index(s, T, reverse);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        if (len != nullptr && t >= len[b]) {
          std::fill(dxn_p + row * G, dxn_p + (row + 1) * G, scalar_t(0));
          std::fill(dgh_p + row * G, dgh_p + (row + 1) * G, scalar_t(0));
          continue;
        }
        acc_t* dh_row = dh_p + b * H;
        const scalar_t* dy_row = dy_p + row * H;
        for (const auto u : c10::irange(H)) dh_row[u] += static_cast<acc_t>(dy_row[u]);
        row_step(t, b, dh_row, sums);
      }
      if (one_step) break;
      const acc_t* through_w = (*product)(t);
      for (int64_t b = b0; b < b1; ++b) {
        if (len != nullptr && t >= len[b]) continue;
        acc_t* dh_row = dh_p + b * H;
        const acc_t* d = through_w + (b - b0) * H;
        for (const auto u : c10::irange(H)) dh_row[u] += d[u];
      }
    }
  });
  if (one_step) {
    // dgh is 0 on rows past their length, whose dh carries: the product adds nothing there.
    cell_matmul(dh, dgh[0], w_hh, 1.0f);
  }
}

// Runs a row step's kernel, `kernel(dxn_row, dgh_row)`, on the rows of dxn and dgh [G] it
// writes in the accumulation type: the outputs' own rows in float and double; in bfloat16 float
// rows of `scratch`, then rounded into the outputs (dgh in the model's dtype, as the plain
// backward keeps its dG: the per-step product and dW_hh's read half the bytes; LayerNormLSTM
// training at B=32, H=256 in bfloat16 on the EPYC wrote and read both in float before).
template <typename scalar_t, typename Kernel>
void in_gradient_rows(scalar_t* dxn, scalar_t* dgh, int64_t G,
                      std::vector<at::opmath_type<scalar_t>>& scratch, const Kernel& kernel) {
  if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    kernel(dxn, dgh);
  } else {
    scratch.resize(2 * G);
    kernel(scratch.data(), scratch.data() + G);
    std::copy(scratch.data(), scratch.data() + G, dxn);
    std::copy(scratch.data() + G, scratch.data() + 2 * G, dgh);
  }
}

// t in the accumulation type, or undefined where t is.
at::Tensor acc_or_none(const at::Tensor& t) { return t.defined() ? to_acc(t) : t; }

// partial_sums [threads, K] summed over the threads, cut into tensors of the given sizes in
// `dtype` (each its own memory: an operator's outputs must not alias).
std::vector<at::Tensor> summed_over_threads(const at::Tensor& partial_sums,
                                            at::IntArrayRef sizes, at::ScalarType dtype) {
  std::vector<at::Tensor> parts;
  for (const at::Tensor& part : partial_sums.sum(0).split_with_sizes(sizes)) {
    parts.push_back(part.to(dtype, /*non_blocking=*/false, /*copy=*/true));
  }
  return parts;
}

// Checks the saved gates [T, B, 4H] (both cells save 4H) and, against them, w_hh [G, H] and
// h0 [B, H] in h0's dtype (float32, float64 or bfloat16; the saved tensors in its accumulation
// type); returns H.
int64_t check_backward_args(const at::Tensor& gates, const at::Tensor& w_hh, const at::Tensor& h0,
                            int64_t num_gates) {
  const auto dtype = h0.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "h0 must be float32, float64 or bfloat16, got ", dtype);
  GK_CHECK_DIM(gates, "gates", 3, "[T, B, 4H]");
  TORCH_CHECK(gates.size(2) % 4 == 0, "gates.size(2) must be 4H, got ", gates.size(2));
  TORCH_CHECK(gates.scalar_type() == at::toOpMathType(dtype), "gates must have dtype ",
              at::toOpMathType(dtype), " (saved for h0's ", dtype, "), got ",
              gates.scalar_type());
  const int64_t B = gates.size(1), H = gates.size(2) / 4, G = num_gates * H;
  check_saved("w_hh", w_hh, {G, H}, dtype);
  check_saved("h0", h0, {B, H}, dtype);
  return H;
}

// A LayerNorm's weight or bias in the accumulation type, checked against h0's dtype: the
// argument, or `fill` [size] where the operator has no LayerNorm (layernorm.h).
at::Tensor saved_layer_norm(const std::optional<at::Tensor>& t, const char* name, int64_t size,
                            double fill, const at::Tensor& h0) {
  if (!t.has_value()) {
    return at::full({size}, fill, h0.options().dtype(at::toOpMathType(h0.scalar_type())));
  }
  check_saved(name, *t, {size}, h0.scalar_type());
  return to_acc(*t);
}

// The gradients of LayerNorm parameters of `sizes` summed over the threads or, without
// LayerNorm, empty tensors (there are no such parameters).
std::vector<at::Tensor> layer_norm_gradients(const at::Tensor& partial_sums, at::IntArrayRef sizes,
                                             at::ScalarType dtype, bool normalised) {
  if (normalised) return summed_over_threads(partial_sums, sizes, dtype);
  std::vector<at::Tensor> none;  // each its own tensor: outputs must not alias
  for (size_t k = 0; k < sizes.size(); ++k) {
    none.push_back(at::empty({0}, partial_sums.options().dtype(dtype)));
  }
  return none;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
layernorm_lstm_backward_cpu(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                            const at::Tensor& w_hh_in,
                            const std::optional<at::Tensor>& ln_hh_weight,
                            const std::optional<at::Tensor>& ln_c_weight,
                            const std::optional<at::Tensor>& ln_c_bias,
                            const at::Tensor& h0, const at::Tensor& c0,
                            const std::optional<at::Tensor>& lengths_in, bool reverse,
                            const at::Tensor& y, const at::Tensor& gates_in,
                            const at::Tensor& norm_hh_in, const at::Tensor& c_all_in,
                            const at::Tensor& norm_c_in, const at::Tensor& rstd_in,
                            const std::optional<at::Tensor>& keep_h_in,
                            const std::optional<at::Tensor>& keep_c_in) {
  const KernelGuard guard;
  const int64_t H = check_backward_args(gates_in, w_hh_in, h0, 4);
  const int64_t T = gates_in.size(0), B = gates_in.size(1), G = 4 * H;
  const auto dtype = h0.scalar_type(), acc = gates_in.scalar_type();
  const bool normalised = check_normalised({&ln_hh_weight, &ln_c_weight, &ln_c_bias},
                                           "ln_hh_weight, ln_c_weight and ln_c_bias");
  const at::Tensor ln_hh_w = saved_layer_norm(ln_hh_weight, "ln_hh_weight", G, 1.0, h0);
  const at::Tensor ln_c_w = saved_layer_norm(ln_c_weight, "ln_c_weight", H, 1.0, h0);
  const at::Tensor ln_c_b = saved_layer_norm(ln_c_bias, "ln_c_bias", H, 0.0, h0);
  check_saved("c0", c0, {B, H}, dtype);
  const at::Tensor lengths = check_lengths(lengths_in, T, B);
  check_saved("dy", dy, {T, B, H}, dtype);
  check_saved("dh_n", dh_n, {B, H}, dtype);
  check_saved("dc_n", dc_n, {B, H}, dtype);
  check_saved("y", y, {T, B, H}, dtype);
  check_saved("norm_hh", norm_hh_in, {T, B, G}, acc);
  check_saved("c_all", c_all_in, {T, B, H}, acc);
  check_saved("norm_c", norm_c_in, {T, B, H}, acc);
  check_saved("rstd", rstd_in, {T, B, 2}, acc);
  const at::Tensor keep_h = acc_or_none(check_keep(keep_h_in, "keep_h", T, B, H, h0));
  const at::Tensor keep_c = acc_or_none(check_keep(keep_c_in, "keep_c", T, B, H, h0));
  const at::Tensor gates = gates_in.contiguous(), norm_hh = norm_hh_in.contiguous();
  const at::Tensor c_all = c_all_in.contiguous(), norm_c = norm_c_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor c0_acc = to_acc(c0);
  const auto options = gates.options();
  at::Tensor dxn = new_output({T, B, G}, h0.options());
  at::Tensor dgh = at::empty({T, B, G}, h0.options());
  // Per thread: the sums over its rows and steps of dG norm_hh, dG (ln_hh's weight and bias)
  // and of dl norm_c, dl (ln_c's), dl the gradient of LN(c'; ln_c).
  at::Tensor partial_sums = at::zeros({at::get_num_threads(), 2 * G + 2 * H}, options);
  at::Tensor dh = to_acc(dh_n, /*copy=*/true), dc = to_acc(dc_n, /*copy=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "layernorm_lstm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* gates_p = gates.const_data_ptr<acc_t>();
    const acc_t* norm_hh_p = norm_hh.const_data_ptr<acc_t>();
    const acc_t* c_all_p = c_all.const_data_ptr<acc_t>();
    const acc_t* norm_c_p = norm_c.const_data_ptr<acc_t>();
    const acc_t* rstd_p = rstd.const_data_ptr<acc_t>();
    const acc_t* c0_p = c0_acc.const_data_ptr<acc_t>();
    const acc_t* w_g = ln_hh_w.const_data_ptr<acc_t>();
    const acc_t* w_c = ln_c_w.const_data_ptr<acc_t>();
    const acc_t* b_c = ln_c_b.const_data_ptr<acc_t>();
    const int64_t* len = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
    scalar_t* dxn_p = dxn.data_ptr<scalar_t>();
    scalar_t* dgh_p = dgh.data_ptr<scalar_t>();
    acc_t* dc_p = dc.data_ptr<acc_t>();
    const acc_t* keep_h_p = keep_h.defined() ? keep_h.const_data_ptr<acc_t>() : nullptr;
    const acc_t* keep_c_p = keep_c.defined() ? keep_c.const_data_ptr<acc_t>() : nullptr;
    const auto& kernels = pointwise_kernels<scalar_t>();
    const auto row_step = [&](int64_t t, int64_t b, acc_t* dh_row, acc_t* sums) {
      const int64_t row = t * B + b;
      thread_local std::vector<acc_t> scratch, rows;
      scratch.resize(2 * H);
      in_gradient_rows(dxn_p + row * G, dgh_p + row * G, G, rows, [&](acc_t* dxn_row,
                                                                      acc_t* dgh_row) {
        kernels.layernorm_lstm_backward_row(
            {H, gates_p + row * G, previous_state(c_all_p, c0_p, t, b, T, B, H, reverse, len),
             norm_c_p + row * H, norm_hh_p + row * G, rstd_p[row * 2 + 1], rstd_p[row * 2], w_c,
             b_c, w_g, keep_h_p != nullptr ? keep_h_p + row * H : nullptr,
             keep_c_p != nullptr ? keep_c_p + row * H : nullptr, dh_row, dc_p + b * H, dxn_row,
             dgh_row, sums, scratch.data(), normalised});
      });
    };
    run_rows_backward<scalar_t>(dy.contiguous(), w_hh, dh, dxn, dgh, partial_sums, lengths,
                                reverse, row_step);
  });
  at::Tensor dw_hh = times_previous_hidden(dgh, y.contiguous(), h0.contiguous(), lengths,
                                          reverse);
  const std::vector<at::Tensor> sums =
      layer_norm_gradients(partial_sums, {G, G, H, H}, dtype, normalised);
  return {dxn, dw_hh, sums[0], sums[1], sums[2], sums[3], dh.to(dtype), dc.to(dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> layernorm_gru_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh_in,
    const std::optional<at::Tensor>& ln_hh_weight, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths_in, bool reverse, const at::Tensor& y,
    const at::Tensor& gates_in, const at::Tensor& norm_hh_in, const at::Tensor& rstd_in,
    const std::optional<at::Tensor>& keep_h_in) {
  const KernelGuard guard;
  const int64_t H = check_backward_args(gates_in, w_hh_in, h0, 3);
  const int64_t T = gates_in.size(0), B = gates_in.size(1), G = 3 * H;
  const auto dtype = h0.scalar_type(), acc = gates_in.scalar_type();
  const bool normalised = ln_hh_weight.has_value();
  const at::Tensor ln_hh_w = saved_layer_norm(ln_hh_weight, "ln_hh_weight", G, 1.0, h0);
  check_saved("norm_hh", norm_hh_in, {T, B, G}, acc);
  const at::Tensor lengths = check_lengths(lengths_in, T, B);
  check_saved("dy", dy, {T, B, H}, dtype);
  check_saved("dh_n", dh_n, {B, H}, dtype);
  check_saved("y", y, {T, B, H}, dtype);
  check_saved("rstd", rstd_in, {T, B, 1}, acc);
  const at::Tensor keep_h = acc_or_none(check_keep(keep_h_in, "keep_h", T, B, H, h0));
  const at::Tensor gates = gates_in.contiguous(), norm_hh = norm_hh_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor y_acc = to_acc(y), h0_acc = to_acc(h0);
  const auto options = gates.options();
  at::Tensor dxn = new_output({T, B, G}, h0.options());
  at::Tensor dgh = at::empty({T, B, G}, h0.options());
  // Per thread: the sums over its rows and steps of dR and dR norm_hh, dR the gradient of
  // R = LN(gh; ln_hh) + b_hh (b_hh's and ln_hh's bias gradient, ln_hh's weight gradient).
  at::Tensor partial_sums = at::zeros({at::get_num_threads(), 2 * G}, options);
  at::Tensor dh = to_acc(dh_n, /*copy=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "layernorm_gru_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* gates_p = gates.const_data_ptr<acc_t>();
    const acc_t* norm_hh_p = norm_hh.const_data_ptr<acc_t>();
    const acc_t* rstd_p = rstd.const_data_ptr<acc_t>();
    const acc_t* y_p = y_acc.const_data_ptr<acc_t>();
    const acc_t* h0_p = h0_acc.const_data_ptr<acc_t>();
    const acc_t* w_g = ln_hh_w.const_data_ptr<acc_t>();
    const int64_t* len = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
    scalar_t* dxn_p = dxn.data_ptr<scalar_t>();
    scalar_t* dgh_p = dgh.data_ptr<scalar_t>();
    const acc_t* keep_h_p = keep_h.defined() ? keep_h.const_data_ptr<acc_t>() : nullptr;
    const auto backward_row = pointwise_kernels<scalar_t>().layernorm_gru_backward_row;
    const auto row_step = [&](int64_t t, int64_t b, acc_t* dh_row, acc_t* sums) {
      const int64_t row = t * B + b;
      thread_local std::vector<acc_t> rows;
      in_gradient_rows(dxn_p + row * G, dgh_p + row * G, G, rows, [&](acc_t* dxn_row,
                                                                      acc_t* dgh_row) {
        backward_row({H, gates_p + row * 4 * H,
                      previous_state(y_p, h0_p, t, b, T, B, H, reverse, len),
                      norm_hh_p + row * G, rstd_p[row], w_g,
                      keep_h_p != nullptr ? keep_h_p + row * H : nullptr, dh_row, dxn_row,
                      dgh_row, sums, normalised});
      });
    };
    run_rows_backward<scalar_t>(dy.contiguous(), w_hh, dh, dxn, dgh, partial_sums, lengths,
                                reverse, row_step);
  });
  at::Tensor dw_hh = times_previous_hidden(dgh, y.contiguous(), h0.contiguous(), lengths,
                                          reverse);
  // b_hh's gradient, the sums of dR, stands with or without LayerNorm; ln_hh's weight's only
  // with.
  const std::vector<at::Tensor> sums = summed_over_threads(partial_sums, {G, G}, dtype);
  const at::Tensor dln_hh_weight = normalised ? sums[1] : at::empty({0}, sums[1].options());
  return {dxn, dw_hh, sums[0], dln_hh_weight, dh.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("layernorm_lstm_backward", &layernorm_lstm_backward_cpu);
  m.impl("layernorm_gru_backward", &layernorm_gru_backward_cpu);
}

}  // namespace gated_kernels
