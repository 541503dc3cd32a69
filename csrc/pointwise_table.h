// A capability's table of pointwise passes (pointwise.h's PointwiseKernels): included only by the
// pointwise_<capability>.cpp files, after they define CPU_CAPABILITY (pointwise_kernels.h says
// how), with GATED_KERNELS_INSTANTIATE_POINTWISE() after it.
#pragma once

#include "layernorm_kernels.h"
#include "pointwise_kernels.h"

namespace gated_kernels {
namespace CPU_CAPABILITY {

template <typename scalar_t>
PointwiseKernels<scalar_t> pointwise_kernels() {
  using acc_t = at::opmath_type<scalar_t>;
  return {&lstm_forward<scalar_t, true>, &lstm_forward<scalar_t, false>, &lstm_backward<scalar_t>,
          &gru_forward<scalar_t, true>, &gru_forward<scalar_t, false>, &gru_backward<scalar_t>,
          &map_in_place<acc_t, vsigmoid>, &map_in_place<acc_t, vtanh>, &layer_norm_row<acc_t>,
          &layer_norm_row_backward<acc_t>, &layernorm_lstm_backward_row<acc_t>,
          &layernorm_gru_backward_row<acc_t>};
}

}  // namespace CPU_CAPABILITY
}  // namespace gated_kernels

// The tables each capability file provides: the three dtypes of the ops.
#define GATED_KERNELS_INSTANTIATE_POINTWISE()                                                   \
  namespace gated_kernels::CPU_CAPABILITY {                                                     \
  template PointwiseKernels<float> pointwise_kernels<float>();                                  \
  template PointwiseKernels<double> pointwise_kernels<double>();                                \
  template PointwiseKernels<c10::BFloat16> pointwise_kernels<c10::BFloat16>();                  \
  }
