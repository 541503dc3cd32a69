#include "team.h"

#include <c10/util/irange.h>

#include <algorithm>

namespace gated_kernels {

int team_size(int64_t H) {
  if (at::in_parallel_region()) return 1;
  const int64_t blocks = (H + kUnitBlock - 1) / kUnitBlock;
  return static_cast<int>(std::clamp<int64_t>(blocks, 1, at::get_num_threads()));
}

int row_team_size(int64_t B) {
  if (at::in_parallel_region()) return 1;
  return static_cast<int>(std::clamp<int64_t>(B, 1, at::get_num_threads()));
}

UnitRange team_units(int64_t n, int tid, int nthreads) {
  const int64_t blocks = (n + kUnitBlock - 1) / kUnitBlock;
  const int64_t per = blocks / nthreads, extra = blocks % nthreads;
  const int64_t first = tid * per + std::min<int64_t>(tid, extra);
  const int64_t count = per + (tid < extra ? 1 : 0);
  return {std::min(n, first * kUnitBlock), std::min(n, (first + count) * kUnitBlock)};
}

at::Tensor gate_rows(const at::Tensor& t, int64_t num_gates, UnitRange units) {
  const int64_t H = t.size(0) / num_gates;
  std::vector<at::Tensor> parts;
  for (const auto k : c10::irange(num_gates)) {
    parts.push_back(t.narrow(0, k * H + units.begin, units.size()));
  }
  return at::cat(parts);
}

std::vector<at::Tensor> gate_columns(const at::Tensor& w, int64_t num_gates, UnitRange units) {
  const int64_t H = w.size(0) / num_gates;
  std::vector<at::Tensor> columns;
  for (const auto k : c10::irange(num_gates)) {
    columns.push_back(w.narrow(0, k * H + units.begin, units.size()).t());
  }
  return columns;
}

UnitRange split_range(int64_t n, int tid, int nthreads) {
  const int64_t per = n / nthreads, extra = n % nthreads;
  const int64_t begin = tid * per + std::min<int64_t>(tid, extra);
  return {begin, begin + per + (tid < extra ? 1 : 0)};
}

}  // namespace gated_kernels
