#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>

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

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
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

at::Tensor previous_hidden(const at::Tensor& y, const at::Tensor& h0, const at::Tensor& lengths,
                           bool reverse) {
  const int64_t T = y.size(0);
  const int64_t B = y.size(1);
  at::Tensor hprev = at::empty_like(y);
  if (!reverse) {
    // Forward: step t reads y[t-1], step 0 reads h0. Past a row's length y is 0, and so is dG.
    hprev[0].copy_(h0);
    if (T > 1) hprev.narrow(0, 1, T - 1).copy_(y.narrow(0, 0, T - 1));
    return hprev;
  }
  // Reverse: step t reads y[t+1]; a row starts at t = lengths[b]-1 from h0.
  if (T > 1) hprev.narrow(0, 0, T - 1).copy_(y.narrow(0, 1, T - 1));
  hprev[T - 1].copy_(h0);
  if (lengths.defined()) {
    const int64_t* len = lengths.data_ptr<int64_t>();
    for (const auto b : c10::irange(B)) {
      hprev[len[b] - 1][b].copy_(h0[b]);
    }
  }
  return hprev;
}

namespace {

using MklLinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, int64_t);
using MklReorderFn = at::Tensor(const at::Tensor&, int64_t);

// The two operators, looked up once; absent (nullopt) where torch was built without MKL.
struct MklPacked {
  std::optional<c10::TypedOperatorHandle<MklReorderFn>> reorder;
  std::optional<c10::TypedOperatorHandle<MklLinearFn>> linear;
};

const MklPacked& mkl_packed() {
  static const MklPacked ops = [] {
    MklPacked found;
    auto& dispatcher = c10::Dispatcher::singleton();
    auto reorder = dispatcher.findSchema({"mkl::_mkl_reorder_linear_weight", ""});
    auto linear = dispatcher.findSchema({"mkl::_mkl_linear", ""});
    if (reorder && linear && reorder->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
        linear->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
      found.reorder = reorder->typed<MklReorderFn>();
      found.linear = linear->typed<MklLinearFn>();
    }
    return found;
  }();
  return ops;
}

// At B=1 the packed call loses about 1 us a step to the output allocation and the dispatcher
// (LSTM forward, T=500, H=256: 4.2 ms plain, 4.7 ms packed); from B=16 it wins clearly
// (B=16, T=200: 14.4 -> 7.7 ms). Batches in between were not measured.
constexpr int64_t kPackedMinBatch = 16;

}  // namespace

StepProduct::StepProduct(const at::Tensor& w, int64_t batch) : w_(w), batch_(batch) {
  const MklPacked& mkl = mkl_packed();
  if (w.scalar_type() == at::kFloat && mkl.reorder && w.numel() != 0 && batch >= kPackedMinBatch) {
    packed_ = mkl.reorder->call(w, batch);
  } else {
    w_t_ = w.t();  // [K, N] view: BLAS reads it transposed, no copy
    out_ = at::empty({batch, w.size(0)}, w.options());
  }
}

const at::Tensor& StepProduct::operator()(const at::Tensor& h) {
  if (packed_.defined()) {
    out_ = mkl_packed().linear->call(h, packed_, w_, std::nullopt, batch_);
  } else {
    matmul(out_, h, w_t_);
  }
  return out_;
}

}  // namespace gated_kernels
