// One step of the LSTM and GRU cells on the CPU: the operators under LSTMCell, GRUCell and a
// one-layer T=1 call of LSTM / GRU. A model that calls a cell once per step (a decoder, an RL
// policy, streaming) pays a call's fixed cost every step, so one step here is two products and
// one fused pass, with no thread team, no weight packing and no input-gate chunks (the sequence
// operators' machinery, which a single step cannot repay: the LSTM's T=1 inference took 97 us at
// B=1 H=128 through lstm_inference, against 40 us for torch.nn.LSTMCell, on the EPYC Zen 4).
//
// lstm_cell_inference(x, h, c, w_ih, w_hh, b_ih, b_hh) -> (h1, c1)
//   x [B, I], h [B, H], c [B, H], w_ih [4H, I], w_hh [4H, H], b_ih / b_hh [4H] optional (both or
//   neither), gate order i, f, g, o. h1 [B, H], c1 [B, H] in x's dtype. The weights have x's
//   dtype, or bfloat16 under a float32 x (the cells under CPU autocast: products in bfloat16,
//   x and h rounded for them, the state and the pass in float32), as in every operator below.
// lstm_cell_forward(same) -> (h1, c1, gates [B, 4H], c_saved [B, H])
//   gates: post-activation i, f, g, o; c_saved: c1 before rounding; both in the accumulation type
//   (float for bfloat16), saved for backward.
// lstm_cell_backward(dh1, dc1, x, h, c, w_ih, w_hh, gates, c_saved, bias, output_mask)
//   -> (dx [B, I], dh [B, H], dc [B, H], dw_ih [4H, I], dw_hh [4H, H], db [4H] or [0])
//   db is the gradient of b_ih and of b_hh alike (both add to the same pre-activation);
//   output_mask [4] says which of dx, dh, dw_ih, dw_hh to compute (the others come back [0]).
// gru_cell_inference(x, h, w_ih, w_hh, b_ih, b_hh) -> h1
//   w_ih [3H, I], w_hh [3H, H], gate order r, z, n; n = tanh(x W_in^T + b_in + r (h W_hn^T +
//   b_hn)).
// gru_cell_forward(same) -> (h1, gates [B, 4H]): r, z, n and h W_hn^T + b_hn, in the
//   accumulation type.
// gru_cell_backward(dh1, x, h, w_ih, w_hh, gates, bias, output_mask)
//   -> (dx, dh, dw_ih [3H, I], dw_hh [3H, H], db_ih [3H] or [0], db_hh [3H] or [0]), output_mask
//   as the LSTM's.
//
// The pointwise passes are the sequence operators' own (pointwise.h) run for one step, so a cell
// and a T=1 layer compute the same values. The products go to cell_product() (forward) and
// product_grads() (backward), both over cell_matmul(), which picks the kernel by size.
#include "common.h"
#include "fastest.h"
#include "matmul.h"
#include "panel.h"
#include "product.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>

namespace gated_kernels {
namespace {

// Hidden units a pass covers on one thread before a second one joins: a one-step pass is a few
// microseconds of work below this, about what a fork-join of the intra-op pool costs (not
// tuned: every cells-suite point up to B=8 H=1024 stays on one thread).
constexpr int64_t kPassGrain = 16384;

template <typename Pass, typename Step>
void run_pass(Pass pass, const Step& step, int64_t units) {
  at::parallel_for(0, units, kPassGrain,
                   [&](int64_t begin, int64_t end) { pass(step, begin, end); });
}

// ---- products ----
//
// A cell's products are small and run once, so their fixed cost decides, and which library is
// fastest depends on the CPU (EPYC Zen 4, 2 threads, lstm_cell_inference): oneDNN's matmul
// costs about 17 us a call before any work (B=1 H=64: 45 us against 11 us on ATen's product)
// and took an outer product (the weight gradient at B=1) in 3.3 ms where ATen took 0.38 ms for
// the whole backward; ATen's float product is MKL's, which on AMD runs generic SSE code for one
// row (B=1 H=512: 185 us against oneDNN's 111 us) and on an Intel Xeon AVX-512 code that beat
// both our kernels and oneDNN at most cell shapes (dG W at B=1, H=512: 43 against 142 us on
// ours; x W^T at B=32, H=256: 80 against 102 us on oneDNN). So a float product runs on whichever
// of our own kernels (one or two rows, the weights in place: panel.h's dot and axpy), oneDNN and
// ATen is fastest here for its kind (fastest.h); small bfloat16 weights go to brgemm, other
// bfloat16 products to the faster library.

// Rows of a batch our own kernels take. They stream a weight faster than MKL's one-row code on
// AMD (B=1 H=1024: 228 against 863 us for x W^T, 274 against 898 for dG W), but a dot product
// per output ends in a horizontal sum, and from 4 rows on those sums cost more than the weight's
// stream: [4, 256] x [256, 1024] took 56 us, MKL's AVX2 GEMM 56; at 8 rows 108 against 58.
constexpr int64_t kOwnRows = 2;
// bfloat16 weight values up to which a product of more rows than ours take goes to brgemm, the
// weight put into its pairs for the call (product.h, brgemm_product), with the product in
// float: ATen's bfloat16 product costs about 18 us before any work and rounds to bfloat16,
// which then costs a widening pass. [B, H] x [H, 4H] (EPYC Zen 4, 2 threads, B = 4 to 64):
// H=64 8-17 us against ATen's 18-24, H=128 16-37 against 24-44; at H=256 (2^18 values) 42-120
// against 40-108, and at H=512 102-406 against 77-372: the pairing pass outgrows what it saves.
constexpr int64_t kPairsMaxWeight = int64_t(1) << 17;
// Weight or output bytes a thread of our kernels takes before a second one joins.
constexpr int64_t kOwnBytesPerThread = int64_t(1) << 20;

template <typename w_t, typename out_t>
void own_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta, bool dot) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  RowProduct<w_t, out_t> p{};
  p.a = a.const_data_ptr<float>();
  p.a_m = a.stride(0);
  p.a_k = a.stride(1);
  p.M = M;
  p.K = K;
  p.w = b.const_data_ptr<w_t>();
  p.ldw = dot ? b.stride(1) : b.stride(0);
  p.out = out.data_ptr<out_t>();
  p.ldo = N;
  p.accumulate = beta != 0.0f;
  void (*kernel)(const RowProduct<w_t, out_t>&) = nullptr;
  const PanelKernels& kernels = panel_kernels();
  if constexpr (std::is_same_v<w_t, float> && std::is_same_v<out_t, float>) {
    kernel = dot ? kernels.dot : kernels.axpy;
  } else if constexpr (std::is_same_v<out_t, float>) {
    kernel = dot ? kernels.dot_bf16 : kernels.axpy_bf16;
  } else {
    kernel = kernels.axpy_to_bf16;
  }
  const int64_t bytes = (dot || K > M ? N * K : M * N) * static_cast<int64_t>(sizeof(float));
  if (!dot && K <= M) {
    // Many output rows (dG^T x): the threads take whole rows, so each writes one contiguous
    // part of out (split by columns, two threads writing the halves of each 4 KB row, the
    // [4096, 1] x [1, 1024] product took 1.9 ms against 0.66 ms on one thread).
    const int64_t grain = std::max<int64_t>(1, M * kOwnBytesPerThread / bytes);
    at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
      RowProduct<w_t, out_t> part = p;
      part.a = p.a + begin * p.a_m;
      part.out = p.out + begin * N;
      part.M = end - begin;
      part.n0 = 0;
      part.n1 = N;
      kernel(part);
    });
    return;
  }
  if constexpr (std::is_same_v<out_t, float>) {
    const int64_t parts = std::min<int64_t>(at::get_num_threads(), bytes / kOwnBytesPerThread);
    if (!dot && parts > 1) {
      // A long sum (dG W): the threads take contiguous blocks of w's rows, each into its own
      // partial rows, added up after. Taking blocks of columns instead, each thread read half of
      // every row of w: the bfloat16 LSTMCell's backward at B=2, H=1024, where w comes from
      // memory, took 1.6 ms, over half of it in this product, against 1.25 ms now (AMD EPYC
      // Zen 5, 2 threads).
      at::Tensor partial = at::empty({parts, M, N}, out.options());
      at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t k0 = i * K / parts, k1 = (i + 1) * K / parts;
          RowProduct<w_t, out_t> part = p;
          part.a = p.a + k0 * p.a_k;
          part.K = k1 - k0;
          part.w = p.w + k0 * p.ldw;
          part.out = partial[i].data_ptr<out_t>();
          part.accumulate = false;
          part.n0 = 0;
          part.n1 = N;
          kernel(part);
        }
      });
      if (beta == 0.0f) at::sum_out(out, partial, 0);
      else out.add_(partial.sum(0));
      return;
    }
  }
  // Few output rows: the threads take blocks of 64 columns, each streaming its part of w (every
  // output value is one thread's sum, so the split leaves the bits alike).
  constexpr int64_t kUnit = 64;
  const int64_t units = (N + kUnit - 1) / kUnit;
  const auto columns = [&](out_t* into, int64_t per_thread) {
    const int64_t grain = std::max<int64_t>(1, units * per_thread / bytes);
    at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
      RowProduct<w_t, out_t> part = p;
      part.out = into;
      part.n0 = begin * kUnit;
      part.n1 = std::min(N, end * kUnit);
      kernel(part);
    });
  };
  // From a quarter of kOwnBytesPerThread up to it, one thread or all, whichever timed faster
  // here: what a thread streams a second differs more between CPUs than a fork-join costs. On
  // an AMD EPYC Zen 3 (2 threads, about 11 GB/s a thread) the bfloat16 LSTMCell at B=1, H=256,
  // its two 0.5 MB products each on one thread, read 1.00x-1.03x torch.nn in the runner
  // (0.18 ms), and 1.17x split (0.12 ms); float 0.85x against 1.13x.
  int64_t per_thread = kOwnBytesPerThread;
  if (bytes >= kOwnBytesPerThread / 4 && bytes <= kOwnBytesPerThread &&
      at::get_num_threads() > 1) {
    at::Tensor scratch;
    const ProductKey key = product_key(/*tag=*/3, M, N, K, /*a_rows=*/true, dot, p.accumulate,
                                       static_cast<int64_t>(c10::CppTypeToScalarType<w_t>::value));
    const int split = fastest_of(key, {true, true}, [&](int i) {
      if (!scratch.defined()) scratch = at::zeros_like(out);
      columns(scratch.data_ptr<out_t>(), i == 1 ? kOwnBytesPerThread / 4 : kOwnBytesPerThread);
    });
    if (split == 1) per_thread = kOwnBytesPerThread / 4;
  }
  columns(p.out, per_thread);
}

// dot applies: b = w^T with w's rows contiguous, a's rows contiguous, a few rows of a.
bool dot_takes(const at::Tensor& a, const at::Tensor& b) {
  return a.size(0) <= kOwnRows && b.stride(0) == 1 && a.stride(1) == 1;
}

// Whether brgemm takes a @ b for a bfloat16 b (where brgemm runs for bfloat16): a with contiguous
// rows (dG^T x, with its rows strided, stays on the libraries: the copy to rows made it slower
// than ATen from H=128 on).
bool pairs_take(const at::Tensor& a, const at::Tensor& b) {
  return b.scalar_type() == at::kBFloat16 && a.stride(1) == 1 && brgemm_available(at::kBFloat16);
}

// Whether our own kernels take out = a b: a in float with a few rows (or a short sum, dG^T x),
// b and out in the combinations panel.h provides.
bool own_takes(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1);
  const at::ScalarType w = b.scalar_type(), o = out.scalar_type();
  if (a.scalar_type() != at::kFloat || (w != at::kFloat && w != at::kBFloat16)) return false;
  if (dot_takes(a, b) || (b.stride(1) == 1 && K > M && M <= kOwnRows)) return o == at::kFloat;
  return b.stride(1) == 1 && K <= kOwnRows && K <= M && w == at::kFloat &&
         (o == at::kFloat || o == at::kBFloat16);
}

// Whether brgemm takes a float a b (where it runs for float): a with contiguous rows; b any (its
// columns are packed for the call where brgemm cannot read it in place).
bool float_brgemm_takes(const at::Tensor& a) {
  return (a.size(1) <= 1 || a.stride(1) == 1) && brgemm_available(at::kFloat);
}

// out = beta * out + a b in float: the fastest here of ours (our kernels where own_takes, else
// brgemm), oneDNN and ATen. oneDNN only from 16 terms a sum: at B=1 the weight gradient is an
// outer product, which it took 9x ATen's time over (above). brgemm, its weight read in place or
// packed by each thread for the call, costs less before any work than oneDNN's matmul (AMD EPYC
// Zen 5, 2 threads, interleaved medians, brgemm / oneDNN / ATen): x W^T at B=32, H=128 29 / 43 /
// 39 us, dG W 15 / 35 / 37 us; at B=64, H=512 packing the weight outgrows that (x W^T 610 / 463
// / 931 us).
void float_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  const bool own = own_takes(out, a, b);
  const auto product = [&](Candidate c, at::Tensor& into) {
    if (c != Candidate::kOwn) {
      library_matmul(c, into, a, b, beta);
    } else if (own) {
      own_matmul<float, float>(into, a, b, beta, dot_takes(a, b));
    } else {
      brgemm_product(into, a, b, beta != 0.0f);
    }
  };
  const bool onednn = a.size(1) >= 16 && onednn_takes(at::kFloat, a, b);
  const bool ours = own || float_brgemm_takes(a);
  product(fastest_matmul(/*tag=*/0, out, a, b, beta, {ours, onednn, true, false}, product), out);
}

// out = beta * out + a b, out in float or b's dtype, on `c`: kOwn is brgemm over b's pairs made
// for the call, with the sums in float; a library computes in b's dtype (from a_low, a in that
// dtype, converted once by the caller: a pass over a costs ~3 us at B=8, H=256) and rounds
// there, as torch.nn's cell does.
void weight_product(Candidate c, at::Tensor& out, const at::Tensor& a, const at::Tensor& a_low,
                    const at::Tensor& b, float beta) {
  const bool pairs = c == Candidate::kOwn;
  const at::ScalarType dtype = pairs ? at::kFloat : b.scalar_type();
  if (out.scalar_type() == dtype) {
    if (pairs) brgemm_product(out, a, b, beta != 0.0f);
    else library_matmul(c, out, a_low, b, beta);
    return;
  }
  at::Tensor part = at::empty(out.sizes(), out.options().dtype(dtype));
  weight_product(c, part, a, a_low, b, 0.0f);
  if (beta == 0.0f) out.copy_(part);
  else out.add_(part);
}

// A product by a weight in bfloat16 (or float64) beyond our own kernels' rows. A small bfloat16
// weight goes to brgemm, a larger one to the faster here of brgemm and the libraries: pairing it
// for each call costs more than brgemm saves at some sizes and less at others. AMD EPYC Zen 5,
// 2 threads, bfloat16 forward, medians of 15 interleaved runs, brgemm against oneDNN alone: at
// B=64, H=256 LSTMCell 1.17x torch.nn against 1.02x, GRUCell 1.34x against 1.06x; at B=32,
// H=1024 0.55x against 0.98x and 0.53x against 1.05x.
void bf16_weight_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  const bool pairs = pairs_take(a, b);
  if (pairs && b.size(0) * b.size(1) <= kPairsMaxWeight) {
    weight_product(Candidate::kOwn, out, a, a, b, beta);
    return;
  }
  const at::Tensor a_low = a.to(b.scalar_type());
  std::array<bool, kCandidates> allowed = library_candidates(b.scalar_type(), a_low, b);
  allowed[static_cast<int>(Candidate::kOwn)] = pairs;
  const auto product = [&](Candidate c, at::Tensor& into) {
    weight_product(c, into, a, a_low, b, beta);
  };
  product(fastest_matmul(/*tag=*/2, out, a, b, beta, allowed, product), out);
}

}  // namespace

// float products on float_matmul; a float a with a bfloat16 b or out on our kernels where
// own_takes(); else bf16_weight_matmul: brgemm or a library in b's dtype.
void cell_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  if (out.numel() == 0) return;
  if (a.size(1) == 0) {
    if (beta == 0.0f) out.zero_();
    return;
  }
  if (a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
      out.scalar_type() == at::kFloat) {
    float_matmul(out, a, b, beta);
    return;
  }
  if (own_takes(out, a, b)) {
    if (b.scalar_type() == at::kBFloat16) {
      own_matmul<c10::BFloat16, float>(out, a, b, beta, dot_takes(a, b));
    } else {
      own_matmul<float, c10::BFloat16>(out, a, b, beta, false);
    }
    return;
  }
  bf16_weight_matmul(out, a, b, beta);
}

// A small bfloat16 batch runs on our kernels from float rows (the weight widened as it is read);
// a larger one on brgemm into float or on a library in bfloat16, rounded there as torch.nn's
// cell rounds it, then widened (ATen exports no bfloat16 x bfloat16 -> float product).
at::Tensor cell_product(const at::Tensor& a, const at::Tensor& w,
                        const std::optional<at::Tensor>& bias) {
  const auto acc = at::toOpMathType(a.scalar_type());
  const int64_t M = a.size(0), N = w.size(0), K = a.size(1);
  const bool own = M <= kOwnRows && acc == at::kFloat;
  // Where brgemm may take the product, into float: brgemm sums there, a library rounds first.
  const bool pairs = !own && K > 0 && pairs_take(a, w.t());
  at::Tensor out = at::empty({M, N}, a.options().dtype(own || pairs ? acc : a.scalar_type()));
  if (bias.has_value()) out.copy_(bias->expand({M, N}));
  cell_matmul(out, own ? to_acc(a) : a, w.t(), bias.has_value() ? 1.0f : 0.0f);
  return out.to(acc);
}

namespace {

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
  // The weights have x's dtype, or bfloat16 under a float32 x: products in bfloat16 with the
  // state and the pass in float, the cells under CPU autocast (gated_kernels.autocast).
  const at::ScalarType w_dtype = w_hh.scalar_type();
  TORCH_CHECK(w_dtype == dtype || (dtype == at::kFloat && w_dtype == at::kBFloat16),
              "w_hh must have dtype ", dtype, " (the dtype of x)",
              dtype == at::kFloat ? " or BFloat16" : "", ", got ", w_dtype);
  GK_CHECK_CPU(w_hh, "w_hh");
  TORCH_CHECK(w_ih.scalar_type() == w_dtype, "w_ih must have dtype ", w_dtype,
              " (the dtype of w_hh), got ", w_ih.scalar_type());
  GK_CHECK_CPU(w_ih, "w_ih");
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

// Both cells run their pass in the accumulation type: a bfloat16 cell widens its products (see
// cell_product) and keeps what it saves in float (B x 4H, small for one step), and rounds its
// outputs at the end. With the GRU's gates saved in bfloat16, as the sequence operator keeps
// them, the backward read a rounded r where the forward used the exact one: a B=1, H=1 cell's
// w_hh gradient came out at 4.5x torch.nn's own bfloat16 error.

// y (the pass's output in the accumulation type) as an output in x's dtype.
at::Tensor as_output(const at::Tensor& y, const at::Tensor& x) {
  if (y.scalar_type() == x.scalar_type()) return y;
  at::Tensor out = new_output(y.sizes(), x.options());
  out.copy_(y);
  return out;
}

// A buffer the pass fills in the accumulation type that is returned as is where x has that
// dtype (so poisoned, to show an unwritten element), else rounded by as_output.
at::Tensor pass_output(at::IntArrayRef sizes, const at::Tensor& x) {
  const auto acc = at::toOpMathType(x.scalar_type());
  return acc == x.scalar_type() ? new_output(sizes, x.options())
                                : at::empty(sizes, x.options().dtype(acc));
}

template <typename acc_t>
std::vector<at::Tensor> lstm_cell_run(const at::Tensor& x, const at::Tensor& h,
                                      const at::Tensor& c, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& b_ih,
                                      const std::optional<at::Tensor>& b_hh, int64_t H,
                                      bool save) {
  const int64_t B = x.size(0);
  const at::Tensor xg = cell_product(x, w_ih, b_ih);
  const at::Tensor gh = cell_product(h, w_hh, b_hh);
  // The pass updates the cell state in place: it starts as c, in the accumulation type.
  at::Tensor c_run = to_acc(c, /*copy=*/true);
  at::Tensor m = at::empty({B, H}, xg.options());
  at::Tensor y = pass_output({B, H}, x);
  at::Tensor gates = save ? new_output({B, 4 * H}, xg.options()) : at::Tensor();
  LstmForwardStep<acc_t> step{};
  step.t = 0;
  step.B = B;
  step.H = step.P = H;
  step.xg = xg.const_data_ptr<acc_t>();
  step.xg_units = step.gh_units = H;
  step.gh = gh.const_data_ptr<acc_t>();
  step.c = c_run.data_ptr<acc_t>();
  // Saved: c_all is the running state itself (the pass stores the same value to both).
  step.c_all = save ? step.c : nullptr;
  step.gates = save ? gates.data_ptr<acc_t>() : nullptr;
  step.m = m.data_ptr<acc_t>();
  step.y = y.data_ptr<acc_t>();
  const auto& kernels = pointwise_kernels<acc_t>();
  run_pass(save ? kernels.lstm_forward : kernels.lstm_inference, step, B * H);
  const at::Tensor h1 = as_output(y, x);
  // Inference hands the running state back as c1 where it already has x's dtype; training keeps
  // it as c_saved, and outputs never alias each other.
  if (!save && c_run.scalar_type() == x.scalar_type()) return {h1, c_run};
  at::Tensor c1 = new_output({B, H}, x.options());
  c1.copy_(c_run);
  if (!save) return {h1, c1};
  return {h1, c1, gates, c_run};
}

std::vector<at::Tensor> lstm_cell(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh, bool save) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, b_ih, b_hh, 4);
  check_cell_state(c, s, x.scalar_type());
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(at::toOpMathType(x.scalar_type()), "lstm_cell", [&] {
    out = lstm_cell_run<scalar_t>(x.contiguous(), h.contiguous(), c, w_ih, w_hh, b_ih, b_hh,
                                  s.H, save);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_inference_cpu(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const std::vector<at::Tensor> out = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, false);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const std::vector<at::Tensor> out = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, true);
  return {out[0], out[1], out[2], out[3]};
}

// The weight gradients and input gradients of both products from the pre-activation gradients
// dGx, dGh [B, G] in the accumulation type: dx = dGx w_ih, dh = dh_in + dGh w_hh (dh_in: the
// pass's direct part, or undefined), dw_ih = dGx^T x, dw_hh = dGh^T h, each in its input's dtype,
// each only where `wanted` (CellGrads) asks for it, else empty [0]: torch.nn's cell skips the product
// of an input that needs no gradient (a state passed detached, or none: dh at B=1, H=1024 reads
// the 16 MB w_hh). A small batch runs on our kernels from float rows (a bfloat16 weight widened
// as it is read, a bfloat16 weight gradient rounded as it is stored); a larger one in x's dtype
// on a library.
struct ProductGrads {
  at::Tensor dx, dh, dw_ih, dw_hh;
};

// Which of dx, dh, dw_ih, dw_hh a cell's backward returns (the schemas' output_mask).
using CellGrads = std::array<bool, 4>;

ProductGrads product_grads(const at::Tensor& dGx, const at::Tensor& dGh, const at::Tensor& x,
                           const at::Tensor& h, const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const at::Tensor& dh_in, const CellGrads& wanted) {
  // The products' dtype: the weights', which is x's or, under a float x, bfloat16 (the cells
  // under CPU autocast: there a library takes every product in bfloat16, x, h and dG rounded to
  // it, as torch.nn's cell does under autocast; in float the weight gradients of the LSTMCell
  // at B=8, H=512 made its training 0.70x torch.nn's, AMD EPYC Zen 4, 2 threads).
  const at::ScalarType dtype = w_ih.scalar_type();
  const bool own = x.size(0) <= kOwnRows && dGx.scalar_type() == at::kFloat;
  // The LSTM's dG serves both sides: converted once.
  const at::Tensor gx = own ? dGx : dGx.to(dtype);
  const at::Tensor gh = own ? dGh : dGh.is_same(dGx) ? gx : dGh.to(dtype);
  // Our kernels write dx and dh in float, rounded after; a library writes them in the products'
  // dtype (a float buffer there would be one more copy each way), as_output then gives them x's.
  // dh_in, in float, stays float.
  const auto input_grad = [&](const at::Tensor& like) {
    return own ? pass_output(like.sizes(), x) : new_output(like.sizes(), x.options().dtype(dtype));
  };
  const auto rows = [&](const at::Tensor& t) { return own ? to_acc(t) : t.to(dtype).contiguous(); };
  // [0] in each input's dtype; no two outputs alias.
  const auto none = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  ProductGrads g{none(x), none(h), none(w_ih), none(w_hh)};
  if (wanted[0]) {
    at::Tensor dx = input_grad(x);
    cell_matmul(dx, gx, w_ih, 0.0f);
    g.dx = as_output(dx, x);
  }
  if (wanted[1]) {
    at::Tensor dh = dh_in.defined() ? dh_in.clone() : input_grad(h);
    cell_matmul(dh, gh, w_hh, dh_in.defined() ? 1.0f : 0.0f);
    g.dh = as_output(dh, x);
  }
  if (wanted[2]) {
    g.dw_ih = new_output(w_ih.sizes(), w_ih.options());
    cell_matmul(g.dw_ih, gx.t(), rows(x), 0.0f);
  }
  if (wanted[3]) {
    g.dw_hh = new_output(w_hh.sizes(), w_hh.options());
    cell_matmul(g.dw_hh, gh.t(), rows(h), 0.0f);
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
                       const at::Tensor& c_saved, bool bias, CellGrads output_mask) {
  const KernelGuard guard;
  const CellSizes s = check_cell_args(x, h, w_ih, w_hh, std::nullopt, std::nullopt, 4);
  const at::ScalarType dtype = x.scalar_type(), acc = at::toOpMathType(dtype);
  check_cell_state(c, s, dtype);
  check_saved("dh1", dh1, {s.B, s.H}, dtype);
  check_saved("dc1", dc1, {s.B, s.H}, dtype);
  check_saved("gates", gates, {s.B, 4 * s.H}, acc);
  check_saved("c_saved", c_saved, {s.B, s.H}, acc);
  at::Tensor dG = new_output({s.B, 4 * s.H}, x.options().dtype(acc));
  at::Tensor dc = to_acc(dc1, /*copy=*/true);  // updated in place to the gradient of c
  AT_DISPATCH_FLOATING_TYPES(acc, "lstm_cell_backward", [&] {
    using acc_t = scalar_t;
    const at::Tensor dm = to_acc(dh1);
    const at::Tensor c_acc = to_acc(c);
    LstmBackwardStep<acc_t> step{};
    step.t = 0;
    step.T = 1;
    step.B = s.B;
    step.H = s.H;
    step.gates = gates.contiguous().const_data_ptr<acc_t>();
    step.c_all = c_saved.contiguous().const_data_ptr<acc_t>();
    step.c0 = c_acc.const_data_ptr<acc_t>();
    step.dm = dm.const_data_ptr<acc_t>();
    step.dc = dc.data_ptr<acc_t>();
    step.dG = dG.data_ptr<acc_t>();
    run_pass(pointwise_kernels<acc_t>().lstm_backward, step, s.B * s.H);
  });
  ProductGrads g = product_grads(dG, dG, x, h, w_ih, w_hh, at::Tensor(), output_mask);
  at::Tensor dc_out = new_output({s.B, s.H}, x.options());
  dc_out.copy_(dc);
  return {g.dx, g.dh, dc_out, g.dw_ih, g.dw_hh, bias_grad(dG, bias, dtype)};
}

// ---- GRU ----

template <typename acc_t>
std::vector<at::Tensor> gru_cell_run(const at::Tensor& x, const at::Tensor& h,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh, int64_t H, bool save) {
  const int64_t B = x.size(0);
  const at::Tensor xg = cell_product(x, w_ih, b_ih);
  // b_hh goes into the pass: b_hn sits inside r * (h W_hn^T + b_hn).
  const at::Tensor gh = cell_product(h, w_hh, std::nullopt);
  const at::Tensor bias = b_hh.has_value() ? to_acc(*b_hh) : at::zeros({3 * H}, gh.options());
  const at::Tensor h_prev = to_acc(h);
  at::Tensor h_run = at::empty({B, H}, gh.options());
  at::Tensor y = pass_output({B, H}, x);
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
  const at::Tensor h1 = as_output(y, x);
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
                      bool bias, CellGrads output_mask) {
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
  ProductGrads g = product_grads(dGx, dGh, x, h, w_ih, w_hh, dh_direct, output_mask);
  return {g.dx, g.dh, g.dw_ih, g.dw_hh, bias_grad(dGx, bias, dtype), bias_grad(dGh, bias, dtype)};
}

// _cell_matmul(a, b, c, out_dtype) -> c + a b (or a b) in out_dtype (a's by default):
// cell_matmul on its own, for the tests and the product benchmark.
at::Tensor cell_matmul_cpu(const at::Tensor& a, const at::Tensor& b,
                           const std::optional<at::Tensor>& c,
                           std::optional<at::ScalarType> out_dtype) {
  const KernelGuard guard;
  GK_CHECK_DIM(a, "a", 2, "[M, K]");
  GK_CHECK_DIM(b, "b", 2, "[K, N]");
  GK_CHECK_SIZE(b, "b", 0, a.size(1), "K (a.size(1))");
  GK_CHECK_FLOAT_DTYPE(a, "a");
  GK_CHECK_FLOAT_DTYPE(b, "b");
  GK_CHECK_CPU(a, "a");
  GK_CHECK_CPU(b, "b");
  at::Tensor out =
      new_output({a.size(0), b.size(1)}, a.options().dtype(out_dtype.value_or(a.scalar_type())));
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
