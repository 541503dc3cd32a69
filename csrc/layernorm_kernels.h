// The LayerNorm cells' per-row passes (csrc/layernorm.cpp, layernorm_backward.cpp), written once
// and compiled per CPU capability beside the LSTM / GRU passes: included, after
// pointwise_kernels.h (whose vector helpers they use), by pointwise_table.h alone. A LayerNorm
// reduces over one row, so these passes take a row at a time.
#pragma once

#include "pointwise_kernels.h"

namespace gated_kernels {
namespace CPU_CAPABILITY {
namespace {

// The sum of a vector's lanes.
template <typename acc_t>
inline acc_t lane_sum(const Vec<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](const Vec<acc_t>& a, const Vec<acc_t>& b) { return a + b; },
                                        v);
}

// A row's LayerNorm (layernorm.h gives the contract): the mean, then the biased variance from
// the centred values (two passes, as torch's layer_norm: one pass of sum and sum of squares
// loses digits when the mean is large), then the output. Lanes past n load as 0 and are
// masked out of the variance.
template <typename acc_t>
acc_t layer_norm_row(acc_t* v, int64_t n, const acc_t* weight, const acc_t* bias, acc_t* norm) {
  using V = Vec<acc_t>;
  V sum(acc_t(0));
  for (int64_t j = 0; j < n; j += V::size()) sum += V::loadu(v + j, std::min<int64_t>(V::size(), n - j));
  const V mean(lane_sum(sum) / acc_t(n));
  V squares(acc_t(0));
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), n - j);
    V d = V::loadu(v + j, w) - mean;
    if (w < V::size()) d = V::set(V(acc_t(0)), d, w);
    squares = at::vec::fmadd(d, d, squares);
  }
  const acc_t rstd = acc_t(1) / std::sqrt(lane_sum(squares) / acc_t(n) + acc_t(kLayerNormEps));
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), n - j);
    const V normed = (V::loadu(v + j, w) - mean) * V(rstd);
    if (norm != nullptr) normed.store(norm + j, w);
    at::vec::fmadd(normed, V::loadu(weight + j, w), V::loadu(bias + j, w)).store(v + j, w);
  }
  return rstd;
}

// The gradient of a row's LayerNorm (layernorm.h gives the contract).
template <typename acc_t>
void layer_norm_row_backward(const acc_t* dout, const acc_t* norm, const acc_t* weight,
                             acc_t rstd, int64_t n, acc_t* dv) {
  using V = Vec<acc_t>;
  V sum_d(acc_t(0)), sum_dn(acc_t(0));
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), n - j);
    const V d = V::loadu(dout + j, w) * V::loadu(weight + j, w);  // 0 past n
    sum_d += d;
    sum_dn = at::vec::fmadd(d, V::loadu(norm + j, w), sum_dn);
  }
  const V mean_d(lane_sum(sum_d) / acc_t(n)), mean_dn(lane_sum(sum_dn) / acc_t(n));
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), n - j);
    const V d = V::loadu(dout + j, w) * V::loadu(weight + j, w);
    (V(rstd) * (d - mean_d - V::loadu(norm + j, w) * mean_dn)).store(dv + j, w);
  }
}

// The share of a state's gradient that reaches its new value under zoneout, (1 - keep) d, and
// d without it; `keep_part` gets keep d (0 without), the share that reaches the old value.
template <typename acc_t>
inline Vec<acc_t> through_zoneout(const acc_t* keep, const Vec<acc_t>& d, int64_t j, int64_t w,
                                  Vec<acc_t>* keep_part) {
  if (keep == nullptr) {
    *keep_part = Vec<acc_t>(acc_t(0));
    return d;
  }
  const Vec<acc_t> k = Vec<acc_t>::loadu(keep + j, w);
  *keep_part = k * d;
  return d - *keep_part;
}

// One running row of the LayerNorm LSTM's backward (pointwise.h gives the contract). Per unit:
// the gradient of the new h and c' past zoneout, tc = tanh(LN(c')) again from the saved
// normalised c', dl = dh_new o (1 - tc^2) the gradient of LN(c'), then through that LayerNorm
// into c', the four gates, and through LN(gh) into gh.
template <typename acc_t>
void layernorm_lstm_backward_row(const LayerNormLstmBackwardRow<acc_t>& r) {
  using V = Vec<acc_t>;
  const int64_t H = r.H, G = 4 * H;
  const V one(acc_t(1));
  acc_t* tc = r.scratch;
  acc_t* dl = r.scratch + H;
  for (int64_t j = 0; j < H; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), H - j);
    const V norm_c = V::loadu(r.norm_c + j, w);
    const V t = vtanh(at::vec::fmadd(norm_c, V::loadu(r.ln_c_weight + j, w),
                                     V::loadu(r.ln_c_bias + j, w)));
    t.store(tc + j, w);
    V unused;
    const V dh_new = through_zoneout(r.keep_h, V::loadu(r.dh + j, w), j, w, &unused);
    const V d = dh_new * V::loadu(r.gates + 3 * H + j, w) * (one - t * t);
    d.store(dl + j, w);
    at::vec::fmadd(d, norm_c, V::loadu(r.sums + 2 * G + j, w)).store(r.sums + 2 * G + j, w);
    (d + V::loadu(r.sums + 2 * G + H + j, w)).store(r.sums + 2 * G + H + j, w);
  }
  // dl := dc' through LN(c'; ln_c)
  if (r.normalised) layer_norm_row_backward(dl, r.norm_c, r.ln_c_weight, r.rstd_c, H, dl);
  for (int64_t j = 0; j < H; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), H - j);
    const V i = V::loadu(r.gates + j, w), f = V::loadu(r.gates + H + j, w);
    const V g = V::loadu(r.gates + 2 * H + j, w), o = V::loadu(r.gates + 3 * H + j, w);
    V dh_old, dc_old;  // the shares of h_{t-1} and c_{t-1} through zoneout
    const V dh_new = through_zoneout(r.keep_h, V::loadu(r.dh + j, w), j, w, &dh_old);
    const V dc = through_zoneout(r.keep_c, V::loadu(r.dc + j, w), j, w, &dc_old) +
                 V::loadu(dl + j, w);
    (dc * g * i * (one - i)).store(r.dxn + j, w);
    (dc * V::loadu(r.c_prev + j, w) * f * (one - f)).store(r.dxn + H + j, w);
    (dc * i * (one - g * g)).store(r.dxn + 2 * H + j, w);
    (dh_new * V::loadu(tc + j, w) * o * (one - o)).store(r.dxn + 3 * H + j, w);
    at::vec::fmadd(dc, f, dc_old).store(r.dc + j, w);
    dh_old.store(r.dh + j, w);  // the rest of dh_{t-1} goes through W_hh
  }
  for (int64_t j = 0; j < G; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), G - j);
    const V d = V::loadu(r.dxn + j, w);
    at::vec::fmadd(d, V::loadu(r.norm_hh + j, w), V::loadu(r.sums + j, w)).store(r.sums + j, w);
    (d + V::loadu(r.sums + G + j, w)).store(r.sums + G + j, w);
  }
  if (r.normalised) {
    layer_norm_row_backward(r.dxn, r.norm_hh, r.ln_hh_weight, r.rstd_hh, G, r.dgh);
  } else {
    std::copy(r.dxn, r.dxn + G, r.dgh);
  }
}

// One running row of the LayerNorm GRU's backward (pointwise.h gives the contract): the
// gradient of the new h past zoneout, those of A = xn (dA) and of R = LN(gh) + b_hh (dR, in
// dgh until its LayerNorm's gradient overwrites it), then through LN(gh) into gh; without
// LayerNorm (r.normalised false) dgh stays dR.
template <typename acc_t>
void layernorm_gru_backward_row(const LayerNormGruBackwardRow<acc_t>& r) {
  using V = Vec<acc_t>;
  const int64_t H = r.H, G = 3 * H;
  const V one(acc_t(1));
  for (int64_t j = 0; j < H; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), H - j);
    const V rr = V::loadu(r.gates + j, w), z = V::loadu(r.gates + H + j, w);
    const V n = V::loadu(r.gates + 2 * H + j, w), R_n = V::loadu(r.gates + 3 * H + j, w);
    V dh_old;  // the share of h_{t-1} through zoneout
    const V dh = through_zoneout(r.keep_h, V::loadu(r.dh + j, w), j, w, &dh_old);
    const V dn = dh * (one - z) * (one - n * n);
    const V dr = dn * R_n * rr * (one - rr);
    const V dz = dh * (V::loadu(r.h_prev + j, w) - n) * z * (one - z);
    dr.store(r.dxn + j, w);
    dz.store(r.dxn + H + j, w);
    dn.store(r.dxn + 2 * H + j, w);
    dr.store(r.dgh + j, w);
    dz.store(r.dgh + H + j, w);
    (dn * rr).store(r.dgh + 2 * H + j, w);
    at::vec::fmadd(dh, z, dh_old).store(r.dh + j, w);  // h's own part of h' = (1 - z) n + z h
  }
  for (int64_t j = 0; j < G; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), G - j);
    const V d = V::loadu(r.dgh + j, w);
    (d + V::loadu(r.sums + j, w)).store(r.sums + j, w);
    at::vec::fmadd(d, V::loadu(r.norm_hh + j, w), V::loadu(r.sums + G + j, w))
        .store(r.sums + G + j, w);
  }
  if (r.normalised) {
    layer_norm_row_backward(r.dgh, r.norm_hh, r.ln_hh_weight, r.rstd_hh, G, r.dgh);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace gated_kernels
