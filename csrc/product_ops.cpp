// Operators that expose one thread's product (product.h) to tests and to the product benchmark,
// outside any recurrence:
//
// _product(a, w, bias, calls) -> out
//   a [M, K] in w's dtype or its accumulation type, w [K, N], bias [N] optional; the product
//   made once and called `calls` times (so that a test sees both panel orders), the last result
//   returned as [M, N] in the accumulation type.
// _product_kernel(M, K, dtype) -> str
//   the kernel such a product runs on here, under GATED_KERNELS_CPU_GEMM.
// _l2_cache() -> (bytes, source)
//   the L2 size the kernels tune for (cpu_info.h) and where it came from.
// _product_bench(M, K, N, dtype, threads, calls) -> float
//   microseconds a call, the median over `calls` calls, on each of `threads` team threads at
//   once (each with its own a and w, as the threads of a recurrence run); the slowest thread's.
#include "common.h"
#include "cpu_info.h"
#include "product.h"
#include "team.h"

#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <vector>

namespace gated_kernels {
namespace {

at::Tensor product_cpu(const at::Tensor& a, const at::Tensor& w,
                       const std::optional<at::Tensor>& bias, int64_t calls) {
  const KernelGuard guard;
  GK_CHECK_DIM(w, "w", 2, "[K, N]");
  GK_CHECK_DIM(a, "a", 2, "[M, K]");
  GK_CHECK_SIZE(a, "a", 1, w.size(0), "K (w.size(0))");
  GK_CHECK_FLOAT_DTYPE(w, "w");
  GK_CHECK_CPU(w, "w");
  GK_CHECK_CPU(a, "a");
  TORCH_CHECK(a.scalar_type() == w.scalar_type() ||
                  a.scalar_type() == at::toOpMathType(w.scalar_type()),
              "a must have w's dtype (", w.scalar_type(), ") or its accumulation type, got ",
              a.scalar_type());
  TORCH_CHECK(calls >= 1, "calls must be at least 1, got ", calls);
  if (bias.has_value()) {
    GK_CHECK_DIM(*bias, "bias", 1, "[N]");
    GK_CHECK_SIZE(*bias, "bias", 0, w.size(1), "N (w.size(1))");
  }
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "product_cpu", [&] {
    ThreadProduct<scalar_t> product({w}, a.contiguous().unsqueeze(0), PackSlot::kRecurrent,
                                    bias ? *bias : at::Tensor());
    const auto* result = product(0);
    for (int64_t call = 1; call < calls; ++call) result = product(0);
    out = at::from_blob(const_cast<at::opmath_type<scalar_t>*>(result), {a.size(0), w.size(1)},
                        w.options().dtype(at::toOpMathType(w.scalar_type())))
              .clone();
  });
  return out;
}

std::string product_kernel_cpu(int64_t M, int64_t K, at::ScalarType dtype) {
  return kernel_name(choose_kernel(M, K, dtype));
}

std::tuple<int64_t, std::string> l2_cache_cpu() {
  const CacheSize l2 = l2_cache();
  return {l2.bytes, l2.source};
}

double product_bench_cpu(int64_t M, int64_t K, int64_t N, at::ScalarType dtype, int64_t threads,
                         int64_t calls) {
  TORCH_CHECK(M >= 1 && K >= 1 && N >= 1, "M, K and N must be positive, got ", M, ", ", K, ", ",
              N);
  TORCH_CHECK(threads >= 1 && calls >= 1, "threads and calls must be positive, got ", threads,
              ", ", calls);
  const auto options = at::TensorOptions().dtype(dtype);
  std::mutex mutex;
  double slowest = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "product_bench_cpu", [&] {
    const auto setup = [&](int, int) {
      const at::Tensor a = at::randn({M, K}, options.dtype(at::toOpMathType(dtype)));
      return std::make_pair(a, ThreadProduct<scalar_t>({at::randn({K, N}, options)}, a.unsqueeze(0),
                                                       team_pack(threads, PackSlot::kRecurrent)));
    };
    const auto loop = [&](int, int, auto& state, Team& team) {
      auto& product = state.second;
      for (int i = 0; i < 20; ++i) product(0);  // warm-up: JIT, first touch, caches
      team.barrier();
      std::vector<double> times;
      for (int64_t i = 0; i < calls; ++i) {
        const auto start = std::chrono::steady_clock::now();
        product(0);
        times.push_back(std::chrono::duration<double, std::micro>(
                            std::chrono::steady_clock::now() - start).count());
      }
      std::nth_element(times.begin(), times.begin() + calls / 2, times.end());
      const std::lock_guard<std::mutex> lock(mutex);
      slowest = std::max(slowest, times[calls / 2]);
    };
    Team::run(static_cast<int>(threads), setup, loop);
  });
  return slowest;
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("_product", &product_cpu);
}

TORCH_LIBRARY_IMPL(gated_kernels, CompositeExplicitAutograd, m) {
  m.impl("_product_kernel", &product_kernel_cpu);
  m.impl("_l2_cache", &l2_cache_cpu);
  m.impl("_product_bench", &product_bench_cpu);
}

}  // namespace gated_kernels
