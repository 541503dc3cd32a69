#include "matmul.h"

#include <ATen/Context.h>

// oneDNN's matmul as ATen exports it (ATen/native/mkldnn/Matmul.h, not among the installed
// headers): result = beta * result + alpha * mat1 @ mat2. Declared weak, so that the extension
// still loads against a torch without it (the address is then null and ATen's mm runs).
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2,
                                         const at::Tensor& result, float beta, float alpha);
}

namespace gated_kernels {
namespace {

// One small product against ATen's; false where ATen refuses oneDNN float32 here (it asks for
// AVX-512 or avx_ne_convert on x86) or the symbol is missing.
bool onednn_matmul_works() {
#if defined(__x86_64__) || defined(_M_X64)
  if (&at::native::mkldnn_matmul == nullptr || !at::hasMKLDNN()) return false;
  try {
    const at::Tensor a = at::arange(6, at::kFloat).view({2, 3});
    const at::Tensor b = at::arange(12, at::kFloat).view({3, 4});
    at::Tensor out = at::empty({2, 4}, at::kFloat);
    at::native::mkldnn_matmul(a, b, out, 0.0f, 1.0f);
    return at::equal(out, at::mm(a, b));
  } catch (const std::exception&) {
    return false;
  }
#else
  return false;
#endif
}

// A matrix ATen hands to oneDNN as it is: rows or columns contiguous. Anything else it copies
// first (the GRU's dW_hh reads 2H of every 3H columns of dG: a [T*B, 2H] copy, 6.5 MB at T=100,
// B=32, H=256, which raised the training peak above torch.nn's), so that goes to ATen's product.
bool dense(const at::Tensor& t) { return t.is_contiguous() || t.t().is_contiguous(); }

}  // namespace

bool onednn_matmul_available() {
  static const bool works = onednn_matmul_works();
  return works && at::globalContext().userEnabledMkldnn();
}

bool onednn_takes(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const bool onednn_dtype = out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16;
  return onednn_dtype && a.size(1) > 0 && dense(a) && dense(b) && onednn_matmul_available();
}

void library_matmul(Candidate library, at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                    float beta) {
  if (library == Candidate::kOnednn) {
    at::native::mkldnn_matmul(a, b, out, beta, 1.0f);
  } else if (beta == 0.0f) {
    at::mm_out(out, a, b);
  } else {
    out.addmm_(a, b, beta, 1.0f);
  }
}

void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  if (out.numel() == 0) return;
  at::Tensor scratch;
  const auto run = [&](Candidate c) {
    if (!scratch.defined()) scratch = at::zeros_like(out);
    library_matmul(c, scratch, a, b, beta);
  };
  const ProductKey key = product_key(/*tag=*/1, a.size(0), b.size(1), a.size(1),
                                     a.stride(1) == 1, b.stride(1) == 1, beta != 0.0f,
                                     static_cast<int64_t>(out.scalar_type()));
  library_matmul(fastest(key, {false, onednn_takes(out, a, b), true}, run), out, a, b, beta);
}

}  // namespace gated_kernels
