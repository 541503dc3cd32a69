// Shared pieces of the CPU recurrence kernels: argument checks, output allocation, the weight
// gradient of a recurrent product, the processing order. The thread team and its products live
// in team.h, the pointwise passes in pointwise.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/irange.h>

#include "pointwise.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

namespace gated_kernels {

// ---- argument checks: every message names the argument and gives expected vs got ----

#define GK_CHECK_DIM(t, name, n, shape)                                                      \
  TORCH_CHECK((t).dim() == (n), name " must be " #n "-D " shape ", got ", (t).dim(), "-D ",   \
              (t).sizes())

#define GK_CHECK_SIZE(t, name, d, expected, what)                                            \
  TORCH_CHECK((t).size(d) == (expected), name ".size(" #d ") must be " what " = ", (expected), \
              ", got ", (t).size(d), " (shape ", (t).sizes(), ")")

#define GK_CHECK_DTYPE(t, name, dtype)                                                       \
  TORCH_CHECK((t).scalar_type() == (dtype), name " must have dtype ", (dtype),                \
              " (the dtype of the input, xg or x), got ", (t).scalar_type())

#define GK_CHECK_CPU(t, name) \
  TORCH_CHECK((t).device().is_cpu(), name " must be a CPU tensor, got device ", (t).device())

#define GK_CHECK_FLOAT_DTYPE(t, name)                                                        \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble ||         \
                  (t).scalar_type() == at::kBFloat16,                                        \
              name " must be float32, float64 or bfloat16, got ", (t).scalar_type())

// Every op body runs under this guard: the kernel's internal ATen calls must not be recorded by
// autograd (the autograd layer is LSTMFunction / GRUFunction, above the operators).
using KernelGuard = at::AutoDispatchBelowADInplaceOrView;

// Checks the input gates xg [T, B, num_gates * H] (rank, float dtype, CPU, T >= 1) and returns H.
int64_t check_input_gates(const at::Tensor& xg, int64_t num_gates, const char* gate_order);

// Checks the input projection of an inference op: x [T, B, I] (float dtype, CPU, T >= 1), w_ih
// [num_gates * H, I] and the optional bias [num_gates * H] in x's dtype; returns H.
int64_t check_input_projection(const at::Tensor& x, const at::Tensor& w_ih,
                               const std::optional<at::Tensor>& bias, int64_t num_gates);

// Checks `lengths` (int64 [B], every value in [1, T]) and returns it contiguous, or an undefined
// tensor when no lengths were given.
at::Tensor check_lengths(const std::optional<at::Tensor>& lengths, int64_t T, int64_t B);

// Outputs come from here. With GATED_KERNELS_POISON_OUTPUTS=1 they start as NaN, so that a test
// catches any element a kernel forgets to write (at::empty would hide it behind stale memory).
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// t as a contiguous tensor in the accumulation type (float32 for bfloat16); `copy` forces a
// fresh buffer, for state the kernel updates in place.
at::Tensor to_acc(const at::Tensor& t, bool copy = false);

// A tensor handed back to a backward op (saved by forward or an incoming gradient): shape and
// dtype as expected.
void check_saved(const char* name, const at::Tensor& t, at::IntArrayRef sizes,
                 at::ScalarType dtype);

// The flat indices s * B + b of rows (s, b), s in [0, steps), that run, s + first < lengths[b]
// (lengths [B] int64, checked), where under 90% of the steps x B rows do; else undefined, and a
// product over every row costs about as much as the gather. Products whose rows past each
// length are 0 take these rows alone, in proportion to the real lengths.
at::Tensor sparse_running_rows(const at::Tensor& lengths, int64_t first, int64_t steps);

// sum_t d_t^T h_{t-1}: the weight gradient dW = dG^T h_prev of a recurrent product, for d
// [T, B, k] (strided rows allowed), y [T, B, P] and h0 [B, P], all in the accumulation type.
// h_{t-1} is y at the step before, or h0 at a row's first step; it is read in place rather
// than gathered into a [T, B, P] copy (backward's peak memory). Rows past their length have
// d = 0, so the 0 in y there never counts.
at::Tensor times_previous_hidden(const at::Tensor& d, const at::Tensor& y, const at::Tensor& h0,
                                 const at::Tensor& lengths, bool reverse);

// Processing order: step s of the loop handles time index t.
inline int64_t time_index(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

}  // namespace gated_kernels
