// The pointwise passes, written once and compiled per CPU capability: included only by the
// pointwise_<capability>.cpp files, each of which defines CPU_CAPABILITY (and, for AVX2 and AVX512,
// CPU_CAPABILITY_AVX2 / CPU_CAPABILITY_AVX512) before this header, as ATen's build does. That
// selects at::vec's inline namespace: 8 floats per Vectorized with AVX2, 16 with AVX512, and
// exp / tanh from Sleef's vector functions (exported by libtorch_cpu, 1-ulp accurate).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) before including pointwise_kernels.h"
#endif

#include "pointwise.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace gated_kernels {
namespace CPU_CAPABILITY {
namespace {

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

template <typename acc_t>
inline Vec<acc_t> vsigmoid(const Vec<acc_t>& x) {
  // 1 / (1 + exp(-x)): exp overflows to inf for x < -88 (float), and 1 / inf = 0 is the limit.
  return (Vec<acc_t>(acc_t(1)) + x.neg().exp()).reciprocal();
}

#if defined(CPU_CAPABILITY_AVX512)
// The float sigmoid of the AVX-512 build, inline and without a division: Sleef's exp is a call
// and a zmm division issues about once every 16 cycles, where this is about 18 arithmetic
// instructions that pipeline (its effect was not measured apart from the team change of team.h,
// whose numbers include it). The exp is exp(r) 2^n with
// n = round(x log2 e), r = x - n ln 2 (ln 2 split in two for an exact product; |r| <= 0.35) and
// exp(r) from its Taylor series to r^7 (truncation below 1e-8 relative); the reciprocal is
// rcp14 (relative error below 2^-14) and one Newton step (error about 2^-28, under float's
// rounding). Inputs clamp to [-88, 88] so that 1 + exp(-x) stays finite (sigmoid(-88) is
// 6e-39, sigmoid(88) rounds to 1); a NaN input passes through the clamp and comes out NaN.
inline Vec<float> vsigmoid(const Vec<float>& x) {
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-88.0f), _mm512_min_ps(_mm512_set1_ps(88.0f), x));
  const __m512 a = _mm512_sub_ps(_mm512_setzero_ps(), v);  // exp(a), a = -x
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), a);  // ln 2, high 16 bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);        // ln 2, the rest
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(p, n));
  const __m512 y = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(d, y, _mm512_set1_ps(1.0f)), y, y);
}
#endif

template <typename acc_t>
inline Vec<acc_t> vtanh(const Vec<acc_t>& x) {
  // tanh(x) = 2 sigmoid(2x) - 1: one exp and one reciprocal, cheaper than Sleef's tanh; the
  // limits hold (exp(-2x) -> 0 gives 1, -> inf gives -1) and the absolute error stays at a few
  // ulp of 1.
  const Vec<acc_t> two(acc_t(2));
  return two * vsigmoid(two * x) - Vec<acc_t>(acc_t(1));
}

// Loads n <= Vec<acc_t>::size() values of storage type scalar_t as the accumulation type.
template <typename acc_t, typename scalar_t>
inline Vec<acc_t> load(const scalar_t* p, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vec<acc_t>::loadu(p, n);
  } else {
    // bfloat16 -> float is a 16-bit shift per lane; a Vectorized<BFloat16> holds two float vectors.
    if (n == Vec<acc_t>::size()) {
      Vec<acc_t> out;
      at::vec::load_to_float(p, out);
      return out;
    }
    return std::get<0>(at::vec::convert_to_float<scalar_t>(Vec<scalar_t>::loadu(p, n)));
  }
}

// Stores n <= Vec<acc_t>::size() values, rounding to scalar_t (to nearest even for bfloat16).
template <typename acc_t, typename scalar_t>
inline void store(scalar_t* p, const Vec<acc_t>& v, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
  }
}

// Calls fn(b, j0, j1) for the row segments that make up the flat range [begin, end) of B*H.
template <typename F>
inline void for_each_row_segment(int64_t begin, int64_t end, int64_t H, const F& fn) {
  for (int64_t idx = begin; idx < end;) {
    const int64_t b = idx / H;
    const int64_t j0 = idx - b * H;
    const int64_t j1 = std::min(H, j0 + (end - idx));
    fn(b, j0, j1);
    idx += j1 - j0;
  }
}

template <typename acc_t>
inline void fill(acc_t* p, int64_t j0, int64_t j1, acc_t value) {
  std::fill(p + j0, p + j1, value);
}

// kSave: write gates and c_all for backward (lstm_forward); without it (lstm_inference) both
// pointers are null and the pass stores only the state, m and y.
template <typename scalar_t, bool kSave>
void lstm_forward(const LstmForwardStep<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  const int64_t H = a.H, G = 4 * H;
  for_each_row_segment(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
    const int64_t row = a.t * a.B + b;
    acc_t* c_row = a.c + b * H;
    acc_t* c_all_row = kSave ? a.c_all + row * H : nullptr;
    acc_t* gates_row = kSave ? a.gates + row * G : nullptr;
    acc_t* m_row = a.m + b * H;
    scalar_t* y_row = a.y + row * a.P;
    if (!row_active(a.lengths, b, a.t)) {
      // Past the row's length: state carried, gates 0, y 0 (with projection, y is written
      // after the projection product, from m = 0).
      if constexpr (kSave) {
        std::copy(c_row + j0, c_row + j1, c_all_row + j0);
        for (int64_t k = 0; k < 4; ++k) fill(gates_row + k * H, j0, j1, acc_t(0));
      }
      if (a.proj) fill(m_row, j0, j1, acc_t(0));
      else fill(y_row, j0, j1, scalar_t(0));
      return;
    }
    const int64_t X = a.xg_units;
    const scalar_t* xg_row = a.xg + ((a.t - a.xg_t0) * a.B + b) * 4 * X;
    const int64_t U = a.gh_units;
    const acc_t* gh_row = a.gh + b * 4 * U;
    for (int64_t j = j0; j < j1; j += V::size()) {
      const int64_t w = std::min<int64_t>(V::size(), j1 - j);
      const int64_t x = j - a.xg_first, u = j - a.gh_first;
      const V i = vsigmoid(load<acc_t>(xg_row + x, w) + V::loadu(gh_row + u, w));
      const V f = vsigmoid(load<acc_t>(xg_row + X + x, w) + V::loadu(gh_row + U + u, w));
      const V g = vtanh(load<acc_t>(xg_row + 2 * X + x, w) + V::loadu(gh_row + 2 * U + u, w));
      const V o = vsigmoid(load<acc_t>(xg_row + 3 * X + x, w) + V::loadu(gh_row + 3 * U + u, w));
      const V c = f * V::loadu(c_row + j, w) + i * g;
      const V m = o * vtanh(c);
      c.store(c_row + j, w);
      if constexpr (kSave) {
        c.store(c_all_row + j, w);
        i.store(gates_row + j, w);
        f.store(gates_row + H + j, w);
        g.store(gates_row + 2 * H + j, w);
        o.store(gates_row + 3 * H + j, w);
      }
      m.store(m_row + j, w);
      if (!a.proj) store<acc_t>(y_row + j, m, w);
    }
  });
}

template <typename scalar_t>
void lstm_backward(const LstmBackwardStep<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  const int64_t H = a.H, G = 4 * H;
  const int64_t t_prev = a.reverse ? a.t + 1 : a.t - 1;  // the step that ran just before t
  const V one(acc_t(1));
  for_each_row_segment(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
    const int64_t row = a.t * a.B + b;
    scalar_t* dG_row = a.dG + row * G;
    if (!row_active(a.lengths, b, a.t)) {
      // Carried state: dh and dc pass through unchanged, no gate gradient.
      for (int64_t k = 0; k < 4; ++k) fill(dG_row + k * H, j0, j1, scalar_t(0));
      if (a.proj) fill(a.m_all + row * H, j0, j1, acc_t(0));
      return;
    }
    const acc_t* gates_row = a.gates + row * G;
    const acc_t* c_row = a.c_all + row * H;
    const acc_t* c_prev_row = a.t == first_step(a.lengths, b, a.T, a.reverse)
                                  ? a.c0 + b * H
                                  : a.c_all + (t_prev * a.B + b) * H;
    const acc_t* dm_row = a.dm + b * H;
    acc_t* dc_row = a.dc + b * H;
    for (int64_t j = j0; j < j1; j += V::size()) {
      const int64_t w = std::min<int64_t>(V::size(), j1 - j);
      const V i = V::loadu(gates_row + j, w);
      const V f = V::loadu(gates_row + H + j, w);
      const V g = V::loadu(gates_row + 2 * H + j, w);
      const V o = V::loadu(gates_row + 3 * H + j, w);
      const V tc = vtanh(V::loadu(c_row + j, w));
      const V dm = V::loadu(dm_row + j, w);
      const V dc = V::loadu(dc_row + j, w) + dm * o * (one - tc * tc);
      store<acc_t>(dG_row + j, dc * g * i * (one - i), w);
      store<acc_t>(dG_row + H + j, dc * V::loadu(c_prev_row + j, w) * f * (one - f), w);
      store<acc_t>(dG_row + 2 * H + j, dc * i * (one - g * g), w);
      store<acc_t>(dG_row + 3 * H + j, dm * tc * o * (one - o), w);
      (dc * f).store(dc_row + j, w);
      if (a.proj) (o * tc).store(a.m_all + row * H + j, w);
    }
  });
}

// kSave: write gates for backward (gru_forward); without it (gru_inference) a.gates is null.
template <typename scalar_t, bool kSave>
void gru_forward(const GruForwardStep<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  const int64_t H = a.H, G = 3 * H;
  const acc_t* bias = a.b_hh;
  for_each_row_segment(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
    const int64_t row = a.t * a.B + b;
    scalar_t* gates_row = kSave ? a.gates + row * 4 * H : nullptr;
    scalar_t* y_row = a.y + row * H;
    if (!row_active(a.lengths, b, a.t)) {
      // Past the row's length: state carried, gates 0, y 0.
      if constexpr (kSave) {
        for (int64_t k = 0; k < 4; ++k) fill(gates_row + k * H, j0, j1, scalar_t(0));
      }
      fill(y_row, j0, j1, scalar_t(0));
      return;
    }
    const int64_t X = a.xg_units;
    const scalar_t* xg_row = a.xg + ((a.t - a.xg_t0) * a.B + b) * 3 * X;
    const int64_t U = a.gh_units;
    const acc_t* gh_row = a.gh + b * 3 * U;
    const acc_t* h_prev_row = a.h_prev + b * H;
    acc_t* h_row = a.h + b * H;
    for (int64_t j = j0; j < j1; j += V::size()) {
      const int64_t w = std::min<int64_t>(V::size(), j1 - j);
      const int64_t x = j - a.xg_first, u = j - a.gh_first;
      const V r = vsigmoid(load<acc_t>(xg_row + x, w) + V::loadu(gh_row + u, w) +
                           V::loadu(bias + j, w));
      const V z = vsigmoid(load<acc_t>(xg_row + X + x, w) + V::loadu(gh_row + U + u, w) +
                           V::loadu(bias + H + j, w));
      const V hn = V::loadu(gh_row + 2 * U + u, w) + V::loadu(bias + 2 * H + j, w);
      const V n = vtanh(load<acc_t>(xg_row + 2 * X + x, w) + r * hn);
      // h = (1 - z) * n + z * h_prev, written as n + z * (h_prev - n).
      const V h = n + z * (V::loadu(h_prev_row + j, w) - n);
      if constexpr (kSave) {
        store<acc_t>(gates_row + j, r, w);
        store<acc_t>(gates_row + H + j, z, w);
        store<acc_t>(gates_row + 2 * H + j, n, w);
        store<acc_t>(gates_row + 3 * H + j, hn, w);
      }
      h.store(h_row + j, w);
      store<acc_t>(y_row + j, h, w);
    }
  });
}

template <typename scalar_t>
void gru_backward(const GruBackwardStep<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  const int64_t H = a.H, G = 3 * H;
  const int64_t t_prev = a.reverse ? a.t + 1 : a.t - 1;  // the step that ran just before t
  const V one(acc_t(1));
  for_each_row_segment(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
    const int64_t row = a.t * a.B + b;
    scalar_t* dGx_row = a.dGx + row * G;
    acc_t* dGh_row = a.dGh + b * G;
    scalar_t* dGhn_row = a.dGhn + row * H;
    if (!row_active(a.lengths, b, a.t)) {
      // Carried state: dh passes through unchanged, no gate gradient.
      for (int64_t k = 0; k < 3; ++k) {
        fill(dGx_row + k * H, j0, j1, scalar_t(0));
        fill(dGh_row + k * H, j0, j1, acc_t(0));
      }
      fill(dGhn_row, j0, j1, scalar_t(0));
      return;
    }
    const scalar_t* gates_row = a.gates + row * 4 * H;
    const scalar_t* dy_row = a.dy + row * H;
    // h_{t-1}: h0 at the row's first step, else y of the step before (for bfloat16, h rounded
    // as y stores it; the forward itself ran on the float state).
    const bool first = a.t == first_step(a.lengths, b, a.T, a.reverse);
    const acc_t* h0_row = a.h0 + b * H;
    const scalar_t* y_prev_row = first ? nullptr : a.y + (t_prev * a.B + b) * H;
    acc_t* dh_row = a.dh + b * H;
    for (int64_t j = j0; j < j1; j += V::size()) {
      const int64_t w = std::min<int64_t>(V::size(), j1 - j);
      const V r = load<acc_t>(gates_row + j, w);
      const V z = load<acc_t>(gates_row + H + j, w);
      const V n = load<acc_t>(gates_row + 2 * H + j, w);
      const V hn = load<acc_t>(gates_row + 3 * H + j, w);
      const V h_prev = first ? V::loadu(h0_row + j, w) : load<acc_t>(y_prev_row + j, w);
      const V dh = V::loadu(dh_row + j, w) + load<acc_t>(dy_row + j, w);
      const V d_n = dh * (one - z) * (one - n * n);
      const V d_z = dh * (h_prev - n) * z * (one - z);
      const V d_r = d_n * hn * r * (one - r);
      const V d_hn = d_n * r;
      store<acc_t>(dGx_row + j, d_r, w);
      store<acc_t>(dGx_row + H + j, d_z, w);
      store<acc_t>(dGx_row + 2 * H + j, d_n, w);
      d_r.store(dGh_row + j, w);
      d_z.store(dGh_row + H + j, w);
      d_hn.store(dGh_row + 2 * H + j, w);
      store<acc_t>(dGhn_row + j, d_hn, w);
      // The direct path h_prev -> h; the recurrent product adds dGh W_hh afterwards.
      (dh * z).store(dh_row + j, w);
    }
  });
}

// v[0, n) := f(v) a vector at a time, for f = vsigmoid or vtanh.
template <typename acc_t, Vec<acc_t> (*f)(const Vec<acc_t>&)>
void map_in_place(acc_t* v, int64_t n) {
  using V = Vec<acc_t>;
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t w = std::min<int64_t>(V::size(), n - j);
    f(V::loadu(v + j, w)).store(v + j, w);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace gated_kernels
