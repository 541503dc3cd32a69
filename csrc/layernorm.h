// What the LayerNorm cells' forward (layernorm.cpp) and backward (layernorm_backward.cpp) share:
// the LayerNorm of one row and its gradient, the state a row starts a step from, the checks.
// LN(v; w, b) = (v - mean(v)) * rstd * w + b over the row's n values, rstd = 1 / sqrt(var(v) +
// 1e-5), the variance biased (reference.py's layer_norm). float32 and float64 only: the
// statistics of a row are summed in its own type.
#pragma once

#include "common.h"

#include <cmath>

namespace gated_kernels {

constexpr double kLnEps = 1e-5;

// v[0, n) := LN(v; weight, bias), two passes over the row; (v - mean) * rstd goes to `norm`
// too where given (what backward reads). Returns rstd.
template <typename scalar_t>
scalar_t layer_norm_row(scalar_t* v, int64_t n, const scalar_t* weight, const scalar_t* bias,
                        scalar_t* norm = nullptr) {
  scalar_t mean = 0;
  for (const auto k : c10::irange(n)) mean += v[k];
  mean /= scalar_t(n);
  scalar_t var = 0;
  for (const auto k : c10::irange(n)) var += (v[k] - mean) * (v[k] - mean);
  var /= scalar_t(n);
  const scalar_t rstd = scalar_t(1) / std::sqrt(var + scalar_t(kLnEps));
  for (const auto k : c10::irange(n)) {
    const scalar_t normed = (v[k] - mean) * rstd;
    if (norm != nullptr) norm[k] = normed;
    v[k] = normed * weight[k] + bias[k];
  }
  return rstd;
}

// dv[0, n) := the gradient of v from dout, that of LN(v) = norm * weight + bias:
// rstd * (d - mean(d) - norm * mean(d * norm)) with d = dout * weight. dv may be dout.
template <typename scalar_t>
void layer_norm_row_backward(const scalar_t* dout, const scalar_t* norm, const scalar_t* weight,
                             scalar_t rstd, int64_t n, scalar_t* dv) {
  scalar_t mean_d = 0, mean_dn = 0;
  for (const auto k : c10::irange(n)) {
    const scalar_t d = dout[k] * weight[k];
    mean_d += d;
    mean_dn += d * norm[k];
  }
  mean_d /= scalar_t(n);
  mean_dn /= scalar_t(n);
  for (const auto k : c10::irange(n)) {
    dv[k] = rstd * (dout[k] * weight[k] - mean_d - norm[k] * mean_dn);
  }
}

// Row b's n-wide state before step t, from `all` [T, B, n] (the state after each step) or
// `initial` [B, n]: the step before in processing order (t - 1, or t + 1 in reverse) where the
// row ran it, else the initial state. For a step t the row runs (t < lengths[b]).
template <typename scalar_t>
const scalar_t* previous_state(const scalar_t* all, const scalar_t* initial, int64_t t,
                               int64_t b, int64_t T, int64_t B, int64_t n, bool reverse,
                               const int64_t* len) {
  const int64_t before = reverse ? t + 1 : t - 1;
  const int64_t end = len != nullptr ? len[b] : T;
  const bool ran = reverse ? before < end : before >= 0;
  return ran ? all + (before * B + b) * n : initial + b * n;
}

// Checks both cells' shared arguments: xn [T, B, G] float32 / float64, w_hh [G, H], ln_hh's
// weight and bias [G], h0 [B, H]; returns H.
int64_t check_layernorm_args(const at::Tensor& xn, const at::Tensor& w_hh,
                             const at::Tensor& ln_hh_weight, const at::Tensor& ln_hh_bias,
                             const at::Tensor& h0, int64_t num_gates, const char* gate_order);

// A vector argument: shape [size], xn's dtype (`like`), CPU.
void check_vector(const at::Tensor& t, const char* name, int64_t size, const at::Tensor& like);

// A state argument: shape [B, H], xn's dtype (`like`), CPU.
void check_state(const at::Tensor& t, const char* name, int64_t B, int64_t H,
                 const at::Tensor& like);

}  // namespace gated_kernels
