// What the LayerNorm cells' forward (layernorm.cpp) and backward (layernorm_backward.cpp) share:
// the state a row starts a step from, the checks. A row's LayerNorm and its gradient are
// pointwise kernels (pointwise.h: layer_norm, layer_norm_backward), vectorised per CPU
// capability. float32 and float64 only: the statistics of a row are summed in its own type.
#pragma once

#include "common.h"

#include <initializer_list>
#include <optional>

namespace gated_kernels {

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

// Checks what both cells' forward and inference take besides their input (xn or x, its dtype
// float32 / float64 / bfloat16 checked here, `input_name` in the message) and LayerNorms:
// w_hh [G, H], h0 [B, H], G = num_gates * H.
void check_layernorm_args(const at::Tensor& input, const char* input_name, int64_t H,
                          const at::Tensor& w_hh, const at::Tensor& h0, int64_t num_gates);

// zoneout's weights of the previous state, keep [T, B, H] in the input's dtype (`like`), CPU,
// or none: returned contiguous, or undefined.
at::Tensor check_keep(const std::optional<at::Tensor>& keep, const char* name, int64_t T,
                      int64_t B, int64_t H, const at::Tensor& like);

// zoneout's state: keep of the old value and 1 - keep of the new one.
template <typename keep_t, typename acc_t>
inline acc_t zoned(keep_t keep, acc_t old_value, acc_t new_value) {
  const acc_t k = static_cast<acc_t>(keep);
  return k * old_value + (acc_t(1) - k) * new_value;
}

// A vector argument: shape [size], the input's dtype (`like`), CPU.
void check_vector(const at::Tensor& t, const char* name, int64_t size, const at::Tensor& like);

// The operators without LayerNorm (every ln_* argument None: the plain cells with zoneout) run
// the same passes with the identity in each LayerNorm's place. A LayerNorm's weight or bias as
// the passes read it: the argument (checked as check_vector does), or `fill` (weight 1, bias 0).
at::Tensor layer_norm_or(const std::optional<at::Tensor>& t, const char* name, int64_t size,
                         double fill, const at::Tensor& like);

// Whether an operator normalises: ln_hh_weight given. Its LayerNorm arguments must then all be
// given, or all be None (`names`, for the message).
bool check_normalised(std::initializer_list<const std::optional<at::Tensor>*> ln,
                      const char* names);

// The identity in a LayerNorm's place, with its affine part: v := v * weight + bias over
// v[0, n), and v to `norm` where not nullptr (what backward reads in place of the normalised
// values); returns 1, the rstd of no normalisation. The pointwise kernels' layer_norm signature.
template <typename acc_t>
acc_t affine_row(acc_t* v, int64_t n, const acc_t* weight, const acc_t* bias, acc_t* norm) {
  for (int64_t k = 0; k < n; ++k) {
    if (norm != nullptr) norm[k] = v[k];
    v[k] = v[k] * weight[k] + bias[k];
  }
  return acc_t(1);
}

// A state argument: shape [B, H], the input's dtype (`like`), CPU.
void check_state(const at::Tensor& t, const char* name, int64_t B, int64_t H,
                 const at::Tensor& like);

}  // namespace gated_kernels
