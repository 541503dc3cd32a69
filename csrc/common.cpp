#include "common.h"

#include "matmul.h"

#include <ATen/Parallel.h>
#include <c10/util/irange.h>


namespace gated_kernels {

int64_t check_input_gates(const at::Tensor& xg, int64_t num_gates, const char* gate_order) {
  TORCH_CHECK(xg.dim() == 3, "xg must be 3-D [T, B, ", num_gates, "H], got ", xg.dim(), "-D ",
              xg.sizes());
  GK_CHECK_FLOAT_DTYPE(xg, "xg");
  GK_CHECK_CPU(xg, "xg");
  TORCH_CHECK(xg.size(0) >= 1, "xg must have at least one step (T >= 1), got T = ", xg.size(0));
  TORCH_CHECK(xg.size(2) % num_gates == 0, "xg.size(2) must be ", num_gates, "H (gates ",
              gate_order, "), got ", xg.size(2));
  return xg.size(2) / num_gates;
}

int64_t check_input_projection(const at::Tensor& x, const at::Tensor& w_ih,
                               const std::optional<at::Tensor>& bias, int64_t num_gates) {
  GK_CHECK_DIM(x, "x", 3, "[T, B, I]");
  GK_CHECK_FLOAT_DTYPE(x, "x");
  GK_CHECK_CPU(x, "x");
  TORCH_CHECK(x.size(0) >= 1, "x must have at least one step (T >= 1), got T = ", x.size(0));
  TORCH_CHECK(w_ih.dim() == 2, "w_ih must be 2-D [", num_gates, "H, I], got ", w_ih.dim(),
              "-D ", w_ih.sizes());
  GK_CHECK_SIZE(w_ih, "w_ih", 1, x.size(2), "I (x.size(2))");
  TORCH_CHECK(w_ih.size(0) % num_gates == 0, "w_ih.size(0) must be ", num_gates, "H, got ",
              w_ih.size(0));
  TORCH_CHECK(w_ih.scalar_type() == x.scalar_type(), "w_ih must have dtype ", x.scalar_type(),
              " (the dtype of x), got ", w_ih.scalar_type());
  GK_CHECK_CPU(w_ih, "w_ih");
  if (bias.has_value()) {
    GK_CHECK_DIM(*bias, "bias", 1, "[G]");
    GK_CHECK_SIZE(*bias, "bias", 0, w_ih.size(0), "w_ih.size(0)");
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias must have dtype ",
                x.scalar_type(), " (the dtype of x), got ", bias->scalar_type());
    GK_CHECK_CPU(*bias, "bias");
  }
  return w_ih.size(0) / num_gates;
}

at::Tensor check_lengths(const std::optional<at::Tensor>& lengths, int64_t T, int64_t B) {
  if (!lengths.has_value()) return at::Tensor();
  const at::Tensor& len = *lengths;
  GK_CHECK_CPU(len, "lengths");
  TORCH_CHECK(len.scalar_type() == at::kLong, "lengths must have dtype int64, got ",
              len.scalar_type());
  GK_CHECK_DIM(len, "lengths", 1, "[B]");
  GK_CHECK_SIZE(len, "lengths", 0, B, "B (the batch size of xg)");
  at::Tensor out = len.contiguous();
  const int64_t* p = out.data_ptr<int64_t>();
  for (const auto b : c10::irange(B)) {
    TORCH_CHECK(p[b] >= 1 && p[b] <= T, "lengths[", b, "] must be in [1, T] = [1, ", T,
                "], got ", p[b]);
  }
  return out;
}

// glibc serves a block of 32 MB or more (its largest mmap threshold on 64-bit) straight from
// mmap: fresh pages that fault on first touch. The passes write rows whose halves belong to
// different threads, so both threads fault on the same pages (1.6 faults a page for lstm_forward
// at T=500, B=64, H=512). One write a page, the pages split between the threads before the
// kernel starts, makes it one fault a page without contention: that forward 386-413 ms ->
// 344-376 ms, three runs each. (Transparent huge pages, madvise(MADV_HUGEPAGE), were faster in
// the median, 311-364 ms, but took 760-1070 ms on some calls, in the kernel's compaction.)
namespace {

constexpr size_t kFreshPagesBytes = size_t(32) << 20;
constexpr int64_t kPageBytes = 4096;

void touch_pages(const at::Tensor& out) {
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t pages = (static_cast<int64_t>(out.nbytes()) + kPageBytes - 1) / kPageBytes;
  at::parallel_for(0, pages, 1, [&](int64_t begin, int64_t end) {
    for (const auto p : c10::irange(begin, end)) base[p * kPageBytes] = 0;
  });
}

}  // namespace

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (out.nbytes() >= kFreshPagesBytes) touch_pages(out);
  // Read on every call (a getenv costs well under a microsecond) so a test can switch it on.
  const char* poison = std::getenv("GATED_KERNELS_POISON_OUTPUTS");
  if (poison != nullptr && std::strcmp(poison, "1") == 0) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

at::Tensor to_acc(const at::Tensor& t, bool copy) {
  // .contiguous() separately: to() with MemoryFormat::Contiguous keeps a transposed or strided
  // view whose suggested format is already "contiguous".
  const at::Tensor out = t.to(at::toOpMathType(t.scalar_type()), /*non_blocking=*/false, copy);
  return out.contiguous();
}

void check_saved(const char* name, const at::Tensor& t, at::IntArrayRef sizes,
                 at::ScalarType dtype) {
  TORCH_CHECK(t.sizes() == sizes, name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

at::Tensor sparse_running_rows(const at::Tensor& lengths, int64_t first, int64_t steps) {
  const at::Tensor s = at::arange(first, first + steps, lengths.options()).unsqueeze(1);
  const at::Tensor rows = (s < lengths.unsqueeze(0)).flatten().nonzero().squeeze(1);
  return rows.numel() < 0.9 * static_cast<double>(steps * lengths.size(0)) ? rows : at::Tensor();
}

at::Tensor times_previous_hidden(const at::Tensor& d, const at::Tensor& y, const at::Tensor& h0,
                                 const at::Tensor& lengths, bool reverse) {
  const int64_t T = d.size(0);
  const int64_t B = d.size(1);
  at::Tensor out = at::empty({d.size(2), y.size(2)}, d.options());
  if (T > 1) {
    // Forward: step t >= 1 reads y[t-1]. Reverse: step t <= T-2 reads y[t+1], which is 0 at a
    // row's first step (t = lengths[b] - 1 < T - 1): that row reads h0, counted below.
    at::Tensor d_rest = d.narrow(0, reverse ? 0 : 1, T - 1).flatten(0, 1);
    at::Tensor y_prev = y.narrow(0, reverse ? 1 : 0, T - 1).flatten(0, 1);
    // Row (s, b) of both, s in [0, T-1), pairs a nonzero d with a nonzero y only while
    // s + 1 < lengths[b].
    if (const at::Tensor rows = lengths.defined() ? sparse_running_rows(lengths, 1, T - 1)
                                                  : at::Tensor();
        rows.defined()) {
      d_rest = d_rest.index_select(0, rows);
      y_prev = y_prev.index_select(0, rows);
    }
    matmul_into(out, d_rest.t(), y_prev, 0.0f);
  } else {
    out.zero_();
  }
  // Each row's first step reads h0: step 0, or lengths[b] - 1 (T - 1 without lengths) in reverse.
  at::Tensor first;
  if (!reverse) {
    first = d[0];
  } else {
    const at::Tensor steps =
        lengths.defined() ? lengths - 1 : at::full({B}, T - 1, h0.options().dtype(at::kLong));
    first = d.index({steps, at::arange(B, steps.options())});
  }
  out.addmm_(first.t(), h0);
  return out;
}

}  // namespace gated_kernels
