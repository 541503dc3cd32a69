#include "matmul.h"

#include <ATen/Context.h>

#include <algorithm>

// oneDNN's matmul as ATen exports it (ATen/native/mkldnn/Matmul.h, not among the installed
// headers): result = beta * result + alpha * mat1 @ mat2. Declared weak, so that the extension
// still loads against a torch without it (the address is then null and ATen's mm runs).
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2,
                                         const at::Tensor& result, float beta, float alpha);
}

namespace gated_kernels {
namespace {

// One small product in `dtype` (float or bfloat16) against ATen's float product; false where
// ATen refuses oneDNN for that dtype here or the symbol is missing. ATen asks for AVX-512 or
// avx_ne_convert on x86 for either, and runs a generic loop for bfloat16 without: on an AMD EPYC
// Zen 3 (AVX2, 2 threads) a bfloat16 LSTMCell at B=32, H=1024 took 1.05 s a training step in
// torch.nn and in ours, its products at about 1.6 GFLOP/s.
bool onednn_matmul_works(at::ScalarType dtype) {
#if defined(__x86_64__) || defined(_M_X64)
  if (&at::native::mkldnn_matmul == nullptr || !at::hasMKLDNN()) return false;
  try {
    // Small integers: every value and sum is exact in bfloat16 too.
    const at::Tensor a = at::arange(6, at::kFloat).view({2, 3});
    const at::Tensor b = at::arange(12, at::kFloat).view({3, 4});
    at::Tensor out = at::empty({2, 4}, a.options().dtype(dtype));
    at::native::mkldnn_matmul(a.to(dtype), b.to(dtype), out, 0.0f, 1.0f);
    return at::equal(out, at::mm(a, b).to(dtype));
  } catch (const std::exception&) {
    return false;
  }
#else
  return false;
#endif
}

// Values of float a block of the widened product holds (4 MB): each block's float product is
// large enough to run at the library's speed, and the widened copies stay small beside the
// operands (an input projection's x at T=500, B=64, I=512 would take 64 MB whole).
constexpr int64_t kWidenedBlock = int64_t(1) << 20;

// out = beta * out + a @ b for bfloat16 a, b and out, as float products of blocks of a and b
// widened to float: each block of rows of out sums in float over blocks of K and is rounded once,
// as ATen rounds its bfloat16 product.
void widened_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const int64_t rows = std::clamp<int64_t>(kWidenedBlock / std::max<int64_t>(N, 1), 1, M);
  const int64_t depth = std::clamp<int64_t>(kWidenedBlock / std::max(rows, N), 1,
                                            std::max<int64_t>(K, 1));
  at::Tensor sums = at::empty({rows, N}, out.options().dtype(at::kFloat));
  for (int64_t m = 0; m < M; m += rows) {
    const int64_t count = std::min(rows, M - m);
    at::Tensor part = sums.narrow(0, 0, count);
    at::Tensor out_rows = out.narrow(0, m, count);
    if (beta != 0.0f) part.copy_(out_rows);
    else part.zero_();
    for (int64_t k = 0; k < K; k += depth) {
      const int64_t d = std::min(depth, K - k);
      matmul_into(part, a.narrow(0, m, count).narrow(1, k, d).to(at::kFloat),
                  b.narrow(0, k, d).to(at::kFloat), 1.0f);
    }
    out_rows.copy_(part);
  }
}

// Multiply-adds up to which ATen's generic bfloat16 loop is timed against the widened product:
// 2^27, about 80 ms a call at its 1.6 GFLOP/s, so a choice costs well under a second once.
constexpr int64_t kGenericLoopMaxProducts = int64_t(1) << 27;

// A matrix ATen hands to oneDNN as it is: rows or columns contiguous. Anything else it copies
// first (the GRU's dW_hh reads 2H of every 3H columns of dG: a [T*B, 2H] copy, 6.5 MB at T=100,
// B=32, H=256, which raised the training peak above torch.nn's), so that goes to ATen's product.
bool dense(const at::Tensor& t) { return t.is_contiguous() || t.t().is_contiguous(); }

}  // namespace

bool onednn_matmul_available() {
  static const bool works = onednn_matmul_works(at::kFloat);
  return works && at::globalContext().userEnabledMkldnn();
}

bool onednn_takes(at::ScalarType out_dtype, const at::Tensor& a, const at::Tensor& b) {
  const bool onednn_dtype = out_dtype == at::kFloat ||
                            (out_dtype == at::kBFloat16 && onednn_bf16_available());
  return onednn_dtype && a.size(1) > 0 && dense(a) && dense(b) && onednn_matmul_available();
}

bool onednn_bf16_available() {
  static const bool works = onednn_matmul_works(at::kBFloat16);
  return works && at::globalContext().userEnabledMkldnn();
}

std::array<bool, kCandidates> library_candidates(at::ScalarType out_dtype, const at::Tensor& a,
                                                 const at::Tensor& b) {
  // ATen's own bfloat16 product where it runs on oneDNN, or where its generic loop stays short:
  // a few rows by a large weight, which widening would read and write whole (GRUCell B=8,
  // H=1024 forward, EPYC Zen 3: 6.2 ms in torch.nn, 10.4 ours widened). Timing that loop on a
  // large product (T=500, B=64, H=512) would cost minutes.
  const bool widened = out_dtype == at::kBFloat16 && a.scalar_type() == at::kBFloat16 &&
                       b.scalar_type() == at::kBFloat16;
  const bool aten = !widened || onednn_bf16_available() ||
                    a.size(0) * a.size(1) * b.size(1) <= kGenericLoopMaxProducts;
  return {false, onednn_takes(out_dtype, a, b), aten, widened};
}

void library_matmul(Candidate library, at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                    float beta) {
  if (library == Candidate::kOnednn) {
    at::native::mkldnn_matmul(a, b, out, beta, 1.0f);
  } else if (library == Candidate::kFloat) {
    widened_matmul(out, a, b, beta);
  } else if (beta == 0.0f) {
    at::mm_out(out, a, b);
  } else {
    out.addmm_(a, b, beta, 1.0f);
  }
}

Candidate fastest_matmul(int64_t tag, const at::Tensor& out, const at::Tensor& a,
                         const at::Tensor& b, float beta,
                         const std::array<bool, kCandidates>& allowed,
                         const std::function<void(Candidate, at::Tensor&)>& product) {
  at::Tensor scratch;
  const auto run = [&](Candidate c) {
    if (!scratch.defined()) scratch = at::zeros_like(out);
    product(c, scratch);
  };
  const ProductKey key = product_key(tag, a.size(0), b.size(1), a.size(1), a.stride(1) == 1,
                                     b.stride(1) == 1, beta != 0.0f,
                                     static_cast<int64_t>(b.scalar_type()));
  return fastest(key, allowed, run);
}

void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  if (out.numel() == 0) return;
  const auto product = [&](Candidate c, at::Tensor& into) { library_matmul(c, into, a, b, beta); };
  product(fastest_matmul(/*tag=*/1, out, a, b, beta, library_candidates(out.scalar_type(), a, b),
                         product),
          out);
}

}  // namespace gated_kernels
