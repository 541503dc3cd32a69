// The per-step pointwise passes of the recurrences: gate activations, state update and their
// derivatives, one step at a time, between the recurrent products.
//
// They are compiled once per CPU capability (pointwise_default.cpp, pointwise_avx2.cpp,
// pointwise_avx512.cpp, all from the templates in pointwise_kernels.h), the way ATen compiles its
// own kernels: at the baseline x86-64 ISA, at::vec::Vectorized falls back to one std::exp or
// std::tanh call per element, which made the gate pass of an LSTM step (B=32, H=256) cost about
// 0.5 ms next to a 78 us recurrent product. pointwise_kernels() picks the variant at run time.
//
// This header holds only plain structs and function pointers (no at::vec), so that code compiled
// for different instruction sets shares no inline functions through it.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace gated_kernels {

// LayerNorm's epsilon in the LayerNorm cells (reference.py's LN_EPS, torch's default).
constexpr double kLayerNormEps = 1e-5;

// Row b takes part in step t when t < lengths[b]; with no lengths every row always does.
inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// How many leading rows a step's products must cover: rows[t] = 1 + the last row b still
// running at step t (t < lengths[b]), 0 when none is; B at every step without lengths. For a
// batch sorted by decreasing length, as a PackedSequence gives it, that is exactly the rows still
// running, so a step's products cost in proportion to them; rows past it take no product, and
// the passes never read a product row of a row that has ended.
inline std::vector<int64_t> running_rows(const int64_t* lengths, int64_t T, int64_t B) {
  if (lengths == nullptr) return std::vector<int64_t>(T, B);
  // last[t]: 1 + the last row whose final step is t; then a running maximum from the end.
  std::vector<int64_t> rows(T, 0);
  for (int64_t b = 0; b < B; ++b) rows[lengths[b] - 1] = b + 1;
  for (int64_t t = T - 2; t >= 0; --t) rows[t] = std::max(rows[t], rows[t + 1]);
  return rows;
}

// The step a row starts from: its first step in processing order.
inline int64_t first_step(const int64_t* lengths, int64_t b, int64_t T, bool reverse) {
  if (!reverse) return 0;
  return lengths == nullptr ? T - 1 : lengths[b] - 1;
}

// The arguments of one step of each pass: the time index t, the sizes, and base pointers of the
// contiguous buffers named in lstm.cpp / gru.cpp (the pass offsets them by t and the row).
// `lengths` is nullptr when every row runs every step. acc_t is float for bfloat16.

template <typename scalar_t>
struct LstmForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t t, B, H, P;
  const int64_t* lengths;
  // Input gates x_t W_ih^T + b_ih + b_hh: gate k of unit j of row b at
  // xg[((t - xg_t0) * B + b) * 4 * xg_units + k * xg_units + j - xg_first] (see input_gates.h:
  // the whole [T, B, 4H], or one thread's chunk of steps with its units' gates side by side).
  const scalar_t* xg;
  int64_t xg_t0, xg_units, xg_first;
  // h_{t-1} W_hh^T for the units [gh_first, gh_first + gh_units) the pass is called on: gate k
  // of unit j of row b at gh[b * 4 * gh_units + k * gh_units + j - gh_first] (one thread's
  // product, gates side by side; see team.h).
  const acc_t* gh;
  int64_t gh_first, gh_units;
  acc_t* c;            // [B, H] running cell state, updated in place
  acc_t* c_all;        // [T, B, H]; nullptr for the inference pass
  acc_t* gates;        // [T, B, 4H] post-activation i, f, g, o; nullptr for the inference pass
  acc_t* m;            // [B, H] o * tanh(c): the running h, or the projection's input
  scalar_t* y;         // [T, B, P] written here only without projection
  bool proj;
};

template <typename scalar_t>
struct LstmBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t t, T, B, H;
  bool reverse, proj;
  const int64_t* lengths;
  const acc_t* gates;  // [T, B, 4H]
  const acc_t* c_all;  // [T, B, H]
  const acc_t* c0;     // [B, H]
  const acc_t* dm;     // [B, H] gradient of o * tanh(c)
  acc_t* dc;           // [B, H] running cell gradient, updated in place
  scalar_t* dG;        // [T, B, 4H] pre-activation gate gradient, in the input's dtype
  acc_t* m_all;        // [T, B, H] o * tanh(c) per step, written with projection only
};

template <typename scalar_t>
struct GruForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t t, B, H;
  const int64_t* lengths;
  // Input gates x_t W_ih^T + b_ih and h_{t-1} W_hh^T, laid out as in LstmForwardStep with
  // three gates r, z, n.
  const scalar_t* xg;
  int64_t xg_t0, xg_units, xg_first;
  const acc_t* gh;
  int64_t gh_first, gh_units;
  const acc_t* b_hh;    // [3H]
  const acc_t* h_prev;  // [B, H] h_{t-1}
  acc_t* h;             // [B, H] h_t, written for active rows
  // [T, B, 4H] r, z, n, hn, in the input's dtype (bfloat16 halves what training keeps);
  // nullptr for the inference pass
  scalar_t* gates;
  scalar_t* y;          // [T, B, H]
};

template <typename scalar_t>
struct GruBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t t, T, B, H;
  bool reverse;
  const int64_t* lengths;
  const scalar_t* gates;  // [T, B, 4H]
  const scalar_t* dy;  // [T, B, H]
  const scalar_t* y;   // [T, B, H] h_{t-1} of a row's later steps
  const acc_t* h0;     // [B, H] h_{t-1} of a row's first step
  acc_t* dh;           // [B, H] running gradient, updated in place
  scalar_t* dGx;       // [T, B, 3H] input-side gate gradient [dr, dz, dn]
  acc_t* dGh;          // [B, 3H] this step's recurrent-side gradient [dr, dz, dn * r]
  scalar_t* dGhn;      // [T, B, H] its last block, dn * r, for every step
};

// One running row of one step of the LayerNorm cells' backward (csrc/layernorm_backward.cpp
// gives the math), in the accumulation type: every pointer is the row's own.
template <typename acc_t>
struct LayerNormLstmBackwardRow {
  int64_t H;
  const acc_t* gates;         // [4H] i, f, g, o
  const acc_t* c_prev;        // [H] c_{t-1}
  const acc_t* norm_c;        // [H] c_t normalised
  const acc_t* norm_hh;       // [4H] h_{t-1} W_hh^T normalised
  acc_t rstd_c, rstd_hh;      // the two LayerNorms' 1 / sqrt(var + eps)
  const acc_t* ln_c_weight;   // [H]
  const acc_t* ln_c_bias;     // [H]
  const acc_t* ln_hh_weight;  // [4H]
  const acc_t* keep_h;  // [H] zoneout's weight of h_{t-1} in h_t, or nullptr (none)
  const acc_t* keep_c;  // [H] and of c_{t-1} in c_t
  acc_t* dh;       // [H] in: the gradient of h_t; out: its part of dh_{t-1} outside W_hh
                   // (keep_h dh; 0 without zoneout)
  acc_t* dc;       // [H] in: of c_t; out: of c_{t-1}
  acc_t* dxn;      // [4H] out: dG, the pre-activation gates' gradient
  acc_t* dgh;      // [4H] out: the gradient of h_{t-1} W_hh^T
  acc_t* sums;     // [10H] += dG norm_hh [4H], dG [4H], dl norm_c [H], dl [H] (ln_hh's, ln_c's)
  acc_t* scratch;  // [2H]
  bool normalised;  // false: the identity in each LayerNorm's place (layernorm.h, affine_row)
};

template <typename acc_t>
struct LayerNormGruBackwardRow {
  int64_t H;
  const acc_t* gates;         // [4H] r, z, n, R_n
  const acc_t* h_prev;        // [H] h_{t-1}
  const acc_t* norm_hh;       // [3H] h_{t-1} W_hh^T normalised
  acc_t rstd_hh;
  const acc_t* ln_hh_weight;  // [3H]
  const acc_t* keep_h;        // [H] zoneout's weight of h_{t-1} in h_t, or nullptr (none)
  acc_t* dh;    // [H] in: the gradient of h_t; out: its part of dh_{t-1} outside W_hh,
                // dh_new z + keep_h dh with dh_new = (1 - keep_h) dh
  acc_t* dxn;   // [3H] out: the gradient of A = xn
  acc_t* dgh;   // [3H] out: the gradient of h_{t-1} W_hh^T
  acc_t* sums;  // [6H] += dR [3H], dR norm_hh [3H] (b_hh's and ln_hh's bias; ln_hh's weight)
  bool normalised;  // false: the identity in LN(gh)'s place
};

// Each pass covers the flat range [begin, end) of step t's B*H hidden units, so that callers can
// split a step over threads at any point, mid-row included.
template <typename scalar_t>
struct PointwiseKernels {
  void (*lstm_forward)(const LstmForwardStep<scalar_t>&, int64_t begin, int64_t end);
  // lstm_forward without the stores of gates and c_all (for lstm_inference).
  void (*lstm_inference)(const LstmForwardStep<scalar_t>&, int64_t begin, int64_t end);
  void (*lstm_backward)(const LstmBackwardStep<scalar_t>&, int64_t begin, int64_t end);
  void (*gru_forward)(const GruForwardStep<scalar_t>&, int64_t begin, int64_t end);
  // gru_forward without the stores of gates (for gru_inference).
  void (*gru_inference)(const GruForwardStep<scalar_t>&, int64_t begin, int64_t end);
  void (*gru_backward)(const GruBackwardStep<scalar_t>&, int64_t begin, int64_t end);
  // v[0, n) := sigmoid(v) or tanh(v), in the accumulation type: the LayerNorm cells' passes
  // (csrc/layernorm.cpp), whose rows are normalised between the gate functions.
  void (*sigmoid)(at::opmath_type<scalar_t>* v, int64_t n);
  void (*tanh)(at::opmath_type<scalar_t>* v, int64_t n);
  // A row's LayerNorm, LN(v; w, b) = (v - mean) * rstd * w + b over v[0, n), rstd =
  // 1 / sqrt(var + kLayerNormEps), the variance biased (reference.py's layer_norm): v := LN(v),
  // (v - mean) * rstd to `norm` where not nullptr (what backward reads); returns rstd.
  at::opmath_type<scalar_t> (*layer_norm)(at::opmath_type<scalar_t>* v, int64_t n,
                                          const at::opmath_type<scalar_t>* weight,
                                          const at::opmath_type<scalar_t>* bias,
                                          at::opmath_type<scalar_t>* norm);
  // Its gradient: dv := rstd * (d - mean(d) - norm * mean(d * norm)), d = dout * weight, the
  // gradient of v from dout, that of LN(v). dv may be dout.
  void (*layer_norm_backward)(const at::opmath_type<scalar_t>* dout,
                              const at::opmath_type<scalar_t>* norm,
                              const at::opmath_type<scalar_t>* weight,
                              at::opmath_type<scalar_t> rstd, int64_t n,
                              at::opmath_type<scalar_t>* dv);
  // One running row of a LayerNorm cell's backward step (the structs above).
  void (*layernorm_lstm_backward_row)(const LayerNormLstmBackwardRow<at::opmath_type<scalar_t>>&);
  void (*layernorm_gru_backward_row)(const LayerNormGruBackwardRow<at::opmath_type<scalar_t>>&);
};

// The variant for the capability ATen itself runs with (at::get_cpu_capability(): the best the
// CPU supports, or the one the ATEN_CPU_CAPABILITY environment variable names). Chosen once.
template <typename scalar_t>
const PointwiseKernels<scalar_t>& pointwise_kernels();

// Each capability's table, in a namespace of its own (ATen's names), so that the same templates
// compiled three times never clash. AVX2 and AVX512 exist where setup.py compiles them (x86-64).
namespace DEFAULT {
template <typename scalar_t>
PointwiseKernels<scalar_t> pointwise_kernels();
}
#ifdef GATED_KERNELS_CPU_VARIANTS
namespace AVX2 {
template <typename scalar_t>
PointwiseKernels<scalar_t> pointwise_kernels();
}
namespace AVX512 {
template <typename scalar_t>
PointwiseKernels<scalar_t> pointwise_kernels();
}
#endif

}  // namespace gated_kernels
