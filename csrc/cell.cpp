// One step of the LSTM and GRU cells on the CPU: the operators under LSTMCell, GRUCell and a
// one-layer T=1 call of LSTM / GRU. A model that calls a cell once per step (a decoder, an RL
// policy, streaming) pays a call's fixed cost every step, so one step here is two products and
// one fused pass, with no thread team, no weight packing and no input-gate chunks (the sequence
// operators' machinery, which a single step cannot repay: the LSTM's T=1 inference took 97 us at
// B=1 H=128 through lstm_inference, against 40 us for torch.nn.LSTMCell, on the EPYC Zen 4).
//
// lstm_cell_inference(x, h, c, w_ih, w_hh, b_ih, b_hh) -> (h1, c1)
//   x [B, I], h [B, H], c [B, H], w_ih [4H, I], w_hh [4H, H], b_ih / b_hh [4H] optional (both or
//   neither), gate order i, f, g, o. h1 [B, H], c1 [B, H] in x's dtype.
// lstm_cell_forward(same) -> (h1, c1, gates [B, 4H], c_saved [B, H])
//   gates: post-activation i, f, g, o; c_saved: c1 before rounding; both in the accumulation type
//   (float for bfloat16), saved for backward.
// lstm_cell_backward(dh1, dc1, x, h, c, w_ih, w_hh, gates, c_saved, bias)
//   -> (dx [B, I], dh [B, H], dc [B, H], dw_ih [4H, I], dw_hh [4H, H], db [4H] or [0])
//   db is the gradient of b_ih and of b_hh alike (both add to the same pre-activation).
// gru_cell_inference(x, h, w_ih, w_hh, b_ih, b_hh) -> h1
//   w_ih [3H, I], w_hh [3H, H], gate order r, z, n; n = tanh(x W_in^T + b_in + r (h W_hn^T +
//   b_hn)).
// gru_cell_forward(same) -> (h1, gates [B, 4H]): r, z, n and h W_hn^T + b_hn, in the
//   accumulation type.
// gru_cell_backward(dh1, x, h, w_ih, w_hh, gates, bias)
//   -> (dx, dh, dw_ih [3H, I], dw_hh [3H, H], db_ih [3H] or [0], db_hh [3H] or [0])
//
// The pointwise passes are the sequence operators' own (pointwise.h) run for one step, so a cell
// and a T=1 layer compute the same values. The products go to cell_product().
#include "common.h"
#include "matmul.h"
#include "panel.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

namespace gated_kernels {
namespace {

// Hidden units a pass covers on one thread before a second one pays for its wake-up: the LSTM
// pass takes about 1 ns a unit (AVX-512), a fork-join of the intra-op pool some microseconds.
constexpr int64_t kPassGrain = 16384;

template <typename Pass, typename Step>
void run_pass(Pass pass, const Step& step, int64_t units) {
  at::parallel_for(0, units, kPassGrain,
                   [&](int64_t begin, int64_t end) { pass(step, begin, end); });
}

// ---- products ----
//
// A cell's products are small and run once, so their fixed cost decides (EPYC Zen 4, 2 threads,
// lstm_cell_inference): oneDNN's matmul costs about 17 us a call before any work (B=1 H=64:
// 45 us against 11 us on ATen's product) and took an outer product (the weight gradient at
// B=1) in 3.3 ms where ATen took 0.38 ms for the whole backward; ATen's float product is MKL's,
// which on AMD runs generic SSE code for one row (B=1 H=512: 185 us against oneDNN's 111 us).
// So: small batches on our own kernels over the weights in place (panel.h: dot, axpy), large
// products on oneDNN, the rest on ATen.

// Rows of a batch our own kernels take. They stream a weight faster than MKL's one-row code on
// AMD (B=1 H=1024: 228 against 863 us for x W^T, 274 against 898 for dG W), but a dot product
// per output ends in a horizontal sum, and from 4 rows on those sums cost more than the weight's
// stream: [4, 256] x [256, 1024] took 56 us, MKL's AVX2 GEMM 56; at 8 rows 108 against 58.
constexpr int64_t kOwnRows = 2;
// Multiply-adds from which oneDNN's speed (it compiles for the ISA) repays its fixed cost: at
// 2^22 ([64, 128] x [128, 512]) it took 62 us against ATen's 58, at 2^23 ([32, 256] x
// [256, 1024]) 111 against 135.
constexpr int64_t kOnednnWork = int64_t(1) << 23;
// Weight or output bytes a thread of our kernels takes before a second one joins.
constexpr int64_t kOwnBytesPerThread = int64_t(1) << 20;

// out = beta * out + a b, beta 0 or 1, for out [M, N] contiguous, a [M, K] and b [K, N] with any
// strides (b is w^T for the forward products, w itself or x for the backward ones).
void cell_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (out.numel() == 0) return;
  if (K == 0) {
    if (beta == 0.0f) out.zero_();
    return;
  }
  const bool own_float = out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat;
  // dot: b = w^T with w's rows contiguous, a's rows contiguous, a few rows of a.
  const bool dot = own_float && M <= kOwnRows && b.stride(0) == 1 && a.stride(1) == 1;
  // axpy: b's rows contiguous; a few rows of a, or a short sum (dG^T x at small B).
  const bool axpy = own_float && !dot && b.stride(1) == 1 && (M <= kOwnRows || K <= kOwnRows);
  if (dot || axpy) {
    RowProduct p{};
    p.a = a.const_data_ptr<float>();
    p.a_m = a.stride(0);
    p.a_k = a.stride(1);
    p.M = M;
    p.K = K;
    p.w = b.const_data_ptr<float>();
    p.ldw = dot ? b.stride(1) : b.stride(0);
    p.out = out.data_ptr<float>();
    p.ldo = N;
    p.accumulate = beta != 0.0f;
    const auto kernel = dot ? panel_kernels().dot : panel_kernels().axpy;
    const int64_t bytes = (dot || K > M ? N * K : M * N) * static_cast<int64_t>(sizeof(float));
    if (!dot && K <= M) {
      // Many output rows (dG^T x): the threads take whole rows, so each writes one contiguous
      // part of out (split by columns, two threads writing the halves of each 4 KB row, the
      // [4096, 1] x [1, 1024] product took 1.9 ms against 0.66 ms on one thread).
      const int64_t grain = std::max<int64_t>(1, M * kOwnBytesPerThread / bytes);
      at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
        RowProduct part = p;
        part.a = p.a + begin * p.a_m;
        part.out = p.out + begin * N;
        part.M = end - begin;
        part.n0 = 0;
        part.n1 = N;
        kernel(part);
      });
      return;
    }
    // Few output rows: the threads take blocks of 64 columns, each streaming its part of w.
    constexpr int64_t kUnit = 64;
    const int64_t units = (N + kUnit - 1) / kUnit;
    const int64_t grain = std::max<int64_t>(1, units * kOwnBytesPerThread / bytes);
    at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
      RowProduct part = p;
      part.n0 = begin * kUnit;
      part.n1 = std::min(N, end * kUnit);
      kernel(part);
    });
    return;
  }
  if (K >= 16 && M * N * K >= kOnednnWork) {
    matmul_into(out, a, b, beta);
  } else if (beta == 0.0f) {
    at::mm_out(out, a, b);
  } else {
    out.addmm_(a, b);
  }
}

// out = a w^T (+ bias) for a [M, K] and w [N, K] (a weight as torch.nn stores it), in a's
// dtype.
at::Tensor cell_product(const at::Tensor& a, const at::Tensor& w,
                        const std::optional<at::Tensor>& bias) {
  at::Tensor out = at::empty({a.size(0), w.size(0)}, a.options());
  if (bias.has_value()) out.copy_(bias->expand({a.size(0), w.size(0)}));
  cell_matmul(out, a, w.t(), bias.has_value() ? 1.0f : 0.0f);
  return out;
}

// The recurrent product in the accumulation type, which the pass reads. A bfloat16 product is
// rounded to bfloat16 first, as torch.nn's cell rounds it: ATen exports no bfloat16 x bfloat16
// -> float product (oneDNN's matmul refuses a float result for bfloat16 operands).
at::Tensor recurrent_product(const at::Tensor& h, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias) {
  return cell_product(h, w, bias).to(at::toOpMathType(h.scalar_type()));
}

// ---- checks: each names the argument, expected against got ----

struct CellSizes {
  int64_t B, I, H;
};

CellSizes check_cell_args(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                          const std::optional<at::Tensor>& b_hh, int64_t num_gates) {
  GK_CHECK_DIM(x, "x", 2, "[B, I]");
  GK_CHECK_FLOAT_DTYPE(x, "x");
  GK_CHECK_CPU(x, "x");
  const at::ScalarType dtype = x.scalar_type();
  GK_CHECK_DIM(w_hh, "w_hh", 2, "[G, H]");
  const int64_t H = w_hh.size(1);
  GK_CHECK_SIZE(w_hh, "w_hh", 0, num_gates * H, "the gate count times H (w_hh.size(1))");
  GK_CHECK_DIM(w_ih, "w_ih", 2, "[G, I]");
  GK_CHECK_SIZE(w_ih, "w_ih", 0, num_gates * H, "w_hh.size(0)");
  GK_CHECK_SIZE(w_ih, "w_ih", 1, x.size(1), "I (x.size(1))");
  GK_CHECK_DIM(h, "h", 2, "[B, H]");
  GK_CHECK_SIZE(h, "h", 0, x.size(0), "B (x.size(0))");
  GK_CHECK_SIZE(h, "h", 1, H, "H (w_hh.size(1))");
  GK_CHECK_DTYPE(w_ih, "w_ih", dtype);
  GK_CHECK_CPU(w_ih, "w_ih");
  GK_CHECK_DTYPE(w_hh, "w_hh", dtype);
  GK_CHECK_CPU(w_hh, "w_hh");
  GK_CHECK_DTYPE(h, "h", dtype);
  GK_CHECK_CPU(h, "h");
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
              "b_ih and b_hh must be given together or both be None");
  if (b_ih.has_value()) {
    GK_CHECK_DIM(*b_ih, "b_ih", 1, "[G]");
    GK_CHECK_SIZE(*b_ih, "b_ih", 0, num_gates * H, "w_hh.size(0)");
    GK_CHECK_DTYPE(*b_ih, "b_ih", dtype);
    GK_CHECK_CPU(*b_ih, "b_ih");
    GK_CHECK_DIM(*b_hh, "b_hh", 1, "[G]");
    GK_CHECK_SIZE(*b_hh, "b_hh", 0, num_gates * H, "w_hh.size(0)");
    GK_CHECK_DTYPE(*b_hh, "b_hh", dtype);
    GK_CHECK_CPU(*b_hh, "b_hh");
  }
  return {x.size(0), x.size(1), H};
}

void check_cell_state(const at::Tensor& c, const CellSizes& s, at::ScalarType dtype) {
  GK_CHECK_DIM(c, "c", 2, "[B, H]");
  GK_CHECK_SIZE(c, "c", 0, s.B, "B (x.size(0))");
  GK_CHECK_SIZE(c, "c", 1, s.H, "H (w_hh.size(1))");
  GK_CHECK_DTYPE(c, "c", dtype);
  GK_CHECK_CPU(c, "c");
}

// ---- LSTM ----

template <typename scalar_t>
std::vector<at::Tensor> lstm_cell_run(const at::Tensor& x, const at::Tensor& h,
                                      const at::Tensor& c, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& b_ih,
                                      const std::optional<at::Tensor>& b_hh, int64_t H,
                                      bool save) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0);
  const auto acc = at::toOpMathType(x.scalar_type());
  const at::Tensor xg = cell_product(x, w_ih, b_ih);
  const at::Tensor gh = recurrent_product(h, w_hh, b_hh);
  // The pass updates the cell state in place: it starts as c, in the accumulation type.
  at::Tensor c_run = to_acc(c, /*copy=*/true);
  at::Tensor m = at::empty({B, H}, x.options().dtype(acc));
  at::Tensor h1 = new_output({B, H}, x.options());
  at::Tensor gates = save ? new_output({B, 4 * H}, x.options().dtype(acc)) : at::Tensor();
  LstmForwardStep<scalar_t> step{};
  step.t = 0;
  step.B = B;
  step.H = step.P = H;
  step.xg = xg.const_data_ptr<scalar_t>();
  step.xg_units = step.gh_units = H;
  step.gh = gh.const_data_ptr<acc_t>();
  step.c = c_run.data_ptr<acc_t>();
  // Saved: c_all is the running state itself (the pass stores the same value to both).
  step.c_all = save ? step.c : nullptr;
  step.gates = save ? gates.data_ptr<acc_t>() : nullptr;
  step.m = m.data_ptr<acc_t>();
  step.y = h1.data_ptr<scalar_t>();
  const auto& kernels = pointwise_kernels<scalar_t>();
  run_pass(save ? kernels.lstm_forward : kernels.lstm_inference, step, B * H);
  // Inference hands the running state back as c1 where it already has x's dtype; training keeps
  // it as c_saved, and outputs never alias each other.
  if (!save && c_run.scalar_type() == x.scalar_type()) return {h1, c_run};
  at::Tensor c1 = new_output({B, H}, x.options());
  c1.copy_(c_run);
  if (!save) return {h1, c1};
  return {h1, c1, gates, c_run};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_inference_cpu(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, b_ih, b_hh, 4);
  check_cell_state(c, s, x.scalar_type());
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lstm_cell_inference", [&] {
    out = lstm_cell_run<scalar_t>(x.contiguous(), h.contiguous(), c, w_ih, w_hh, b_ih, b_hh,
                                  s.H, false);
  });
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, b_ih, b_hh, 4);
  check_cell_state(c, s, x.scalar_type());
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lstm_cell_forward", [&] {
    out = lstm_cell_run<scalar_t>(x.contiguous(), h.contiguous(), c, w_ih, w_hh, b_ih, b_hh,
                                  s.H, true);
  });
  return {out[0], out[1], out[2], out[3]};
}

// The weight gradients and input gradients of both products from the pre-activation gradient
// dG [B, G] (in x's dtype): dx = dG w_ih, dh += dG w_hh (dh_in: the pass's direct part or
// nothing), dw_ih = dG^T x, dw_hh = dG^T h.
struct ProductGrads {
  at::Tensor dx, dh, dw_ih, dw_hh;
};

ProductGrads product_grads(const at::Tensor& dGx, const at::Tensor& dGh, const at::Tensor& x,
                           const at::Tensor& h, const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const at::Tensor& dh_in) {
  ProductGrads g;
  g.dx = new_output(x.sizes(), x.options());
  cell_matmul(g.dx, dGx, w_ih, 0.0f);
  g.dw_ih = new_output(w_ih.sizes(), w_ih.options());
  cell_matmul(g.dw_ih, dGx.t(), x, 0.0f);
  g.dw_hh = new_output(w_hh.sizes(), w_hh.options());
  cell_matmul(g.dw_hh, dGh.t(), h, 0.0f);
  g.dh = new_output(h.sizes(), h.options());
  if (dh_in.defined()) {
    g.dh.copy_(dh_in);
    cell_matmul(g.dh, dGh, w_hh, 1.0f);
  } else {
    cell_matmul(g.dh, dGh, w_hh, 0.0f);
  }
  return g;
}

// The bias gradient: dG summed over the batch, in the accumulation type, then x's dtype.
at::Tensor bias_grad(const at::Tensor& dG, bool bias, at::ScalarType dtype) {
  if (!bias) return at::empty({0}, dG.options().dtype(dtype));
  return dG.sum(0, /*keepdim=*/false, at::toOpMathType(dtype)).to(dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_cpu(const at::Tensor& dh1, const at::Tensor& dc1, const at::Tensor& x,
                       const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const at::Tensor& gates,
                       const at::Tensor& c_saved, bool bias) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, std::nullopt, std::nullopt, 4);
  const at::ScalarType dtype = x.scalar_type(), acc = at::toOpMathType(dtype);
  check_cell_state(c, s, dtype);
  check_saved("dh1", dh1, {s.B, s.H}, dtype);
  check_saved("dc1", dc1, {s.B, s.H}, dtype);
  check_saved("gates", gates, {s.B, 4 * s.H}, acc);
  check_saved("c_saved", c_saved, {s.B, s.H}, acc);
  at::Tensor dG = new_output({s.B, 4 * s.H}, x.options());
  at::Tensor dc = to_acc(dc1, /*copy=*/true);  // updated in place to the gradient of c
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "lstm_cell_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor dm = to_acc(dh1);
    const at::Tensor c_acc = to_acc(c);
    LstmBackwardStep<scalar_t> step{};
    step.t = 0;
    step.T = 1;
    step.B = s.B;
    step.H = s.H;
    step.gates = gates.contiguous().const_data_ptr<acc_t>();
    step.c_all = c_saved.contiguous().const_data_ptr<acc_t>();
    step.c0 = c_acc.const_data_ptr<acc_t>();
    step.dm = dm.const_data_ptr<acc_t>();
    step.dc = dc.data_ptr<acc_t>();
    step.dG = dG.data_ptr<scalar_t>();
    run_pass(pointwise_kernels<scalar_t>().lstm_backward, step, s.B * s.H);
  });
  const at::Tensor xc = x.contiguous(), hc = h.contiguous();
  ProductGrads g = product_grads(dG, dG, xc, hc, w_ih, w_hh, at::Tensor());
  at::Tensor dc_out = new_output({s.B, s.H}, x.options());
  dc_out.copy_(dc);
  return {g.dx, g.dh, dc_out, g.dw_ih, g.dw_hh, bias_grad(dG, bias, dtype)};
}

// ---- GRU ----
//
// The GRU's pass runs in the accumulation type: a bfloat16 cell widens its products and keeps
// its saved gates in float (B x 4H, small for one step). With gates saved in bfloat16, as the
// sequence operator keeps them, the backward read a rounded r where the forward used the exact
// one: a B=1, H=1 cell's w_hh gradient came out at 4.5x torch.nn's own bfloat16 error.

template <typename acc_t>
std::vector<at::Tensor> gru_cell_run(const at::Tensor& x, const at::Tensor& h,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh, int64_t H, bool save) {
  const int64_t B = x.size(0);
  const at::Tensor xg = to_acc(cell_product(x, w_ih, b_ih));
  // b_hh goes into the pass: b_hn sits inside r * (h W_hn^T + b_hn).
  const at::Tensor gh = recurrent_product(h, w_hh, std::nullopt);
  const at::Tensor bias = b_hh.has_value() ? to_acc(*b_hh) : at::zeros({3 * H}, gh.options());
  const at::Tensor h_prev = to_acc(h);
  at::Tensor h_run = at::empty({B, H}, gh.options());
  const bool widened = x.scalar_type() != gh.scalar_type();
  at::Tensor y = widened ? at::empty({B, H}, gh.options()) : new_output({B, H}, x.options());
  at::Tensor gates = save ? new_output({B, 4 * H}, gh.options()) : at::Tensor();
  GruForwardStep<acc_t> step{};
  step.t = 0;
  step.B = B;
  step.H = H;
  step.xg = xg.const_data_ptr<acc_t>();
  step.xg_units = step.gh_units = H;
  step.gh = gh.const_data_ptr<acc_t>();
  step.b_hh = bias.const_data_ptr<acc_t>();
  step.h_prev = h_prev.const_data_ptr<acc_t>();
  step.h = h_run.data_ptr<acc_t>();
  step.gates = save ? gates.data_ptr<acc_t>() : nullptr;
  step.y = y.data_ptr<acc_t>();
  const auto& kernels = pointwise_kernels<acc_t>();
  run_pass(save ? kernels.gru_forward : kernels.gru_inference, step, B * H);
  at::Tensor h1 = y;
  if (widened) {
    h1 = new_output({B, H}, x.options());
    h1.copy_(y);
  }
  if (!save) return {h1};
  return {h1, gates};
}

std::vector<at::Tensor> gru_cell(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                                 const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                 const std::optional<at::Tensor>& b_hh, bool save) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, b_ih, b_hh, 3);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(at::toOpMathType(x.scalar_type()), "gru_cell", [&] {
    out = gru_cell_run<scalar_t>(x.contiguous(), h, w_ih, w_hh, b_ih, b_hh, s.H, save);
  });
  return out;
}

at::Tensor gru_cell_inference_cpu(const at::Tensor& x, const at::Tensor& h,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh) {
  return gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, false)[0];
}

std::tuple<at::Tensor, at::Tensor> gru_cell_forward_cpu(const at::Tensor& x, const at::Tensor& h,
                                                        const at::Tensor& w_ih,
                                                        const at::Tensor& w_hh,
                                                        const std::optional<at::Tensor>& b_ih,
                                                        const std::optional<at::Tensor>& b_hh) {
  std::vector<at::Tensor> out = gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, true);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_cell_backward_cpu(const at::Tensor& dh1, const at::Tensor& x, const at::Tensor& h,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& gates,
                      bool bias) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, std::nullopt, std::nullopt, 3);
  const at::ScalarType dtype = x.scalar_type(), acc = at::toOpMathType(dtype);
  check_saved("dh1", dh1, {s.B, s.H}, dtype);
  check_saved("gates", gates, {s.B, 4 * s.H}, acc);
  const int64_t B = s.B, H = s.H;
  const auto acc_options = x.options().dtype(acc);
  at::Tensor dGx = at::empty({B, 3 * H}, acc_options);
  at::Tensor dGh = at::empty({B, 3 * H}, acc_options);
  at::Tensor dGhn = at::empty({B, H}, acc_options);
  at::Tensor dh_direct = at::zeros({B, H}, acc_options);  // the pass adds dh1 to it
  AT_DISPATCH_FLOATING_TYPES(acc, "gru_cell_backward", [&] {
    const at::Tensor dy = to_acc(dh1);
    const at::Tensor h_acc = to_acc(h);
    GruBackwardStep<scalar_t> step{};
    step.t = 0;
    step.T = 1;
    step.B = B;
    step.H = H;
    step.gates = gates.contiguous().const_data_ptr<scalar_t>();
    step.dy = dy.const_data_ptr<scalar_t>();
    step.y = dy.const_data_ptr<scalar_t>();  // h of an earlier step: never read at T = 1
    step.h0 = h_acc.const_data_ptr<scalar_t>();
    step.dh = dh_direct.data_ptr<scalar_t>();
    step.dGx = dGx.data_ptr<scalar_t>();
    step.dGh = dGh.data_ptr<scalar_t>();
    step.dGhn = dGhn.data_ptr<scalar_t>();
    run_pass(pointwise_kernels<scalar_t>().gru_backward, step, B * H);
  });
  // The products run in x's dtype.
  ProductGrads g = product_grads(dGx.to(dtype), dGh.to(dtype), x.contiguous(), h.contiguous(),
                                 w_ih, w_hh, dh_direct);
  return {g.dx, g.dh, g.dw_ih, g.dw_hh, bias_grad(dGx, bias, dtype), bias_grad(dGh, bias, dtype)};
}

// _cell_matmul(a, b, c) -> c + a b (or a b): cell_matmul on its own, for the tests and the
// product benchmark.
at::Tensor cell_matmul_cpu(const at::Tensor& a, const at::Tensor& b,
                           const std::optional<at::Tensor>& c) {
  const KernelGuard guard;
  GK_CHECK_DIM(a, "a", 2, "[M, K]");
  GK_CHECK_DIM(b, "b", 2, "[K, N]");
  GK_CHECK_SIZE(b, "b", 0, a.size(1), "K (a.size(1))");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "b must have a's dtype ", a.scalar_type(),
              ", got ", b.scalar_type());
  at::Tensor out = new_output({a.size(0), b.size(1)}, a.options());
  if (c.has_value()) out.copy_(*c);
  cell_matmul(out, a, b, c.has_value() ? 1.0f : 0.0f);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("_cell_matmul", &cell_matmul_cpu);
  m.impl("lstm_cell_inference", &lstm_cell_inference_cpu);
  m.impl("lstm_cell_forward", &lstm_cell_forward_cpu);
  m.impl("lstm_cell_backward", &lstm_cell_backward_cpu);
  m.impl("gru_cell_inference", &gru_cell_inference_cpu);
  m.impl("gru_cell_forward", &gru_cell_forward_cpu);
  m.impl("gru_cell_backward", &gru_cell_backward_cpu);
}

}  // namespace gated_kernels
