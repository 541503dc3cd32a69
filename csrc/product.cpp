#include "product.h"

#include "common.h"
#include "panel.h"
#include "team.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <new>

// oneDNN's brgemm through ATen: float since torch 2.7 (the macro marks it); x86-64 only, since
// elsewhere ATen falls back to a BLAS call per product.
#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(CPUBLAS_BRGEMM_BF16BF16F32) && \
    (defined(__x86_64__) || defined(_M_X64))
#define GATED_KERNELS_BRGEMM 1
#endif

// MKL's packed GEMM and its Fortran sgemv, exported by libtorch_cpu in the x86 wheels that link
// MKL (its LP64 interface: int sizes). Declared weak so that the extension still loads against
// a torch without them (the pointers are then null).
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define GATED_KERNELS_MKL_PACKED 1
extern "C" {
__attribute__((weak)) size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
__attribute__((weak)) void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n,
                                            int k, float alpha, const float* src, int ld,
                                            float* dest);
__attribute__((weak)) void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n,
                                               int k, const float* a, int lda, const float* b,
                                               int ldb, float beta, float* c, int ldc);
__attribute__((weak)) void sgemv_(const char* trans, const int* m, const int* n,
                                  const float* alpha, const float* a, const int* lda,
                                  const float* x, const int* incx, const float* beta, float* y,
                                  const int* incy);
}
#endif

namespace gated_kernels {
namespace {

// The most rows our panel kernel takes in `auto` mode for float; more go to brgemm. On the EPYC
// Zen 4 build machine (csrc/panel_kernels.h; benchmarks/product_bench.py, two threads at once)
// the panel kernel led at one row (in L2 by up to 10%, from L3 by 25-50%), brgemm at two and
// three rows in L2 (by 10-40%), and the two were within 5% from 4 rows on.
constexpr int64_t kOwnMaxRows = 1;

// brgemm reads w row after row at a stride of ld_b values. A stride of a multiple of 4 KB puts
// the rows a column block needs in the same L1 sets: a [1, 128] x [128, 1024] float product
// took 9.1 us at ld_b = 1024 and 4.9 us at 1040 (Zen 4). So such rows get 16 values of padding.
int64_t brgemm_ld(int64_t N) { return (4 * N) % 4096 == 0 ? N + 16 : N; }

// Column blocks of the mkl kernel's blocked one-row product: 2, 4 and 8 did alike for a 2 MB w
// on one thread of the Xeon (52-54 us a step, against 58-62 us in order).
constexpr int kGemvBlocks = 4;

// The CBLAS constants of mkl_cblas.h.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

bool mkl_packed_available() {
#ifdef GATED_KERNELS_MKL_PACKED
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
         cblas_sgemm_compute != nullptr;
#else
  return false;
#endif
}

// This thread's buffer for a slot's packed matrix, grown to `bytes` when smaller. Kept until
// the thread ends; of the reserved size only the part MKL writes becomes resident (about 0.5 MB
// of 7.9 MB for a 384 x 128 weight, measured with the process's resident set).
float* pack_buffer(PackSlot slot, size_t bytes) {
  struct Buffer {
    float* data = nullptr;
    size_t bytes = 0;
    ~Buffer() { std::free(data); }
  };
  static thread_local Buffer buffers[3];
  Buffer& buffer = buffers[static_cast<int>(slot) - 1];
  if (buffer.bytes < bytes) {
    std::free(buffer.data);
    buffer.bytes = 0;
    // 64-byte aligned, the size rounded up to a multiple of the alignment (aligned_alloc's rule).
    buffer.data = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.bytes = bytes;
  }
  return buffer.data;
}

// w [K, N] (blocks of columns, as pack_panels takes them) as brgemm reads it, rows of ld values,
// zero past N: for float, row k at k * ld (one panel of width ld); for bfloat16, K padded to
// even and rows taken in pairs, element (k, n) at ((k / 2) * ld + n) * 2 + k % 2 (oneDNN's VNNI
// layout for 16-bit inputs).
at::Tensor brgemm_weight(const std::vector<at::Tensor>& columns, int64_t ld) {
  const at::Tensor& first = columns.front();
  const int64_t K = first.size(0);
  if (first.scalar_type() == at::kFloat) return pack_panels(columns, ld).view({K, ld});
  at::Tensor pairs = at::empty({(K + 1) / 2, ld, 2}, first.options());
  auto* out = pairs.data_ptr<c10::BFloat16>();
  const PanelKernels& kernels = panel_kernels();
  const bool transposed_rows =
      K % 2 == 0 && std::all_of(columns.begin(), columns.end(), [](const at::Tensor& b) {
        return b.stride(0) == 1 && b.stride(1) % 2 == 0;
      });
  if (transposed_rows) {  // the forward's gate rows: one pass
    int64_t n0 = 0;
    for (const at::Tensor& block : columns) {
      kernels.pack_pairs(block.data_ptr<c10::BFloat16>(), block.stride(1), K, block.size(1), ld,
                         n0, out);
      n0 += block.size(1);
    }
    if (ld > n0) pairs.narrow(1, n0, ld - n0).zero_();
  } else if (columns.size() == 1 && (first.size(1) == 1 || first.stride(1) == 1)) {
    // Rows in place (the backward's W_hh, or a thread's columns of it): one pass.
    kernels.pair_rows(first.data_ptr<c10::BFloat16>(), first.stride(0), K, first.size(1), ld,
                      out);
  } else {
    const at::Tensor rows = pack_panels(columns, ld).view({K, ld});
    kernels.pair_rows(rows.data_ptr<c10::BFloat16>(), ld, K, ld, ld, out);
  }
  return pairs;
}

// The blocks of columns as one [K, N] tensor, for MKL and ATen: the blocks' rows side by side
// when there are several (the forward's rows of W_hh gathered, as MKL's packing expects them:
// the transpose of contiguous [N, K] rows).
at::Tensor joined(const std::vector<at::Tensor>& columns) {
  if (columns.size() == 1) return columns.front();
  std::vector<at::Tensor> rows;
  for (const at::Tensor& block : columns) rows.push_back(block.t());
  return at::cat(rows).t();
}

#ifdef GATED_KERNELS_BRGEMM
// One bfloat16 brgemm against float64 arithmetic on a 2 x 2 case: false where ATen refuses it
// (no AVX-512) or gets it wrong.
bool bf16_brgemm_works() {
  try {
    const c10::BFloat16 a[4] = {1.0f, 2.0f, 3.0f, 4.0f};   // [[1, 2], [3, 4]]
    const c10::BFloat16 b[4] = {5.0f, 7.0f, 6.0f, 8.0f};   // [[5, 6], [7, 8]] in VNNI pairs
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, /*is_vnni=*/true);
    at::native::cpublas::brgemm_release();
    return c[0] == 19.0f && c[1] == 22.0f && c[2] == 43.0f && c[3] == 50.0f;
  } catch (const std::exception&) {
    return false;
  }
}
#endif

}  // namespace

const char* kernel_name(ProductKernel kernel) {
  switch (kernel) {
    case ProductKernel::kOwn: return "own";
    case ProductKernel::kBrgemm: return "brgemm";
    case ProductKernel::kMkl: return "mkl";
    case ProductKernel::kAten: return "aten";
  }
  return "?";
}

bool brgemm_available(at::ScalarType dtype) {
#ifdef GATED_KERNELS_BRGEMM
  if (!at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn()) return false;
  // ATen sends float to oneDNN from AVX2 on (below, to a BLAS call); bfloat16 from AVX-512.
  static const bool f32 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool bf16 = bf16_brgemm_works();
  if (dtype == at::kFloat) return f32;
  if (dtype == at::kBFloat16) return bf16;
#endif
  return false;
}

ProductKernel choose_kernel(int64_t M, int64_t K, at::ScalarType dtype) {
  if (dtype == at::kDouble || K == 0) return ProductKernel::kAten;
  switch (gemm_choice()) {
    case GemmChoice::kOwn: return ProductKernel::kOwn;
    case GemmChoice::kMkl: return ProductKernel::kMkl;
    case GemmChoice::kBrgemm:
      TORCH_CHECK(brgemm_available(dtype), "GATED_KERNELS_CPU_GEMM=brgemm, but oneDNN's brgemm ",
                  "does not run here for ", dtype, " (it needs an x86-64 torch with oneDNN "
                  "enabled, AVX2 for float and AVX-512 for bfloat16)");
      return ProductKernel::kBrgemm;
    case GemmChoice::kAuto: break;
  }
  if (!brgemm_available(dtype)) return ProductKernel::kOwn;
  // bfloat16 always on brgemm where it runs: its dot-product instructions take the pairs in
  // one step, where our kernel widens every value first (one row, [256, 512]: 3.3 against
  // 5.9 us).
  return dtype == at::kFloat && M <= kOwnMaxRows ? ProductKernel::kOwn : ProductKernel::kBrgemm;
}

void brgemm_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& w, bool add) {
#ifdef GATED_KERNELS_BRGEMM
  const bool pairs = w.scalar_type() == at::kBFloat16;
  const int64_t M = a.size(0), K = a.size(1), N = w.size(1), K2 = pairs ? (K + 1) / 2 * 2 : K;
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.scalar_type() == at::kFloat &&
                        (pairs || w.scalar_type() == at::kFloat) && K > 0);
  // a as brgemm reads it: rows of w's dtype with contiguous values, padded to w's pairs.
  const at::ScalarType row_type = w.scalar_type();
  at::Tensor rows = a;
  if (a.scalar_type() != row_type || K2 != K || (K > 1 && a.stride(1) != 1)) {
    rows = at::empty({M, K2}, a.options().dtype(row_type));
    if (K2 != K) rows.select(1, K).zero_();
    rows.narrow(1, 0, K).copy_(a);
  }
  const int64_t lda = M == 1 ? K2 : rows.stride(0);
  // A float w whose rows brgemm reads in place (dG W, W as torch.nn stores it): no copy.
  const int64_t w_ld = w.stride(0);
  const bool in_place = !pairs && (N == 1 || w.stride(1) == 1) && w_ld >= N &&
                        brgemm_ld(w_ld) == w_ld;
  // Columns in units of 64, a thread for every kBrgemmWork multiply-adds (2^18; AMD EPYC Zen 5,
  // 2 threads, interleaved medians: [16, 128] x [128, 512] in float took 16 us on two threads
  // against 28 on one, [32, 128] x [128, 512] 23 against 38, in bfloat16 12 against 16 and 16
  // against 24; [8, 64] x [64, 256] (2^17) stays on one).
  constexpr int64_t kUnit = 64, kBrgemmWork = int64_t(1) << 18;
  const int64_t units = (N + kUnit - 1) / kUnit;
  const int64_t grain = std::max<int64_t>(1, units * kBrgemmWork / std::max<int64_t>(1, M * N * K));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    const int64_t n0 = begin * kUnit, n = std::min(N, end * kUnit) - n0;
    float* c = out.data_ptr<float>() + n0;
    if (in_place) {
      at::native::cpublas::brgemm(M, n, K, lda, w_ld, N, add, rows.const_data_ptr<float>(),
                                  w.const_data_ptr<float>() + n0, c);
      return;
    }
    // This thread's columns of w in brgemm's form: [K, ld] rows, or VNNI pairs for bfloat16.
    const int64_t ld = brgemm_ld(n);
    const at::Tensor packed = brgemm_weight({w.narrow(1, n0, n)}, ld);
    if (pairs) {
      at::native::cpublas::brgemm(M, n, K2, lda, ld, N, add, rows.const_data_ptr<c10::BFloat16>(),
                                  packed.const_data_ptr<c10::BFloat16>(), c, /*is_vnni=*/true);
      at::native::cpublas::brgemm_release();
    } else {
      at::native::cpublas::brgemm(M, n, K, lda, ld, N, add, rows.const_data_ptr<float>(),
                                  packed.const_data_ptr<float>(), c);
    }
  });
#else
  TORCH_INTERNAL_ASSERT(false, "brgemm_product: brgemm is not built in");
#endif
}

template <typename scalar_t>
ThreadProduct<scalar_t>::ThreadProduct(const std::vector<at::Tensor>& columns, const at::Tensor& a,
                                       PackSlot slot, const at::Tensor& bias,
                                       std::optional<ProductKernel> kernel)
    : a_(a) {
  const at::Tensor& w = columns.front();
  M_ = a.size(1), K_ = w.size(0), N_ = 0;
  for (const at::Tensor& block : columns) N_ += block.size(1);
  const at::ScalarType acc = c10::CppTypeToScalarType<acc_t>::value;
  const at::ScalarType a_type = a.scalar_type();
  TORCH_INTERNAL_ASSERT(a.dim() == 3 && a.size(2) == K_ && (K_ <= 1 || a.stride(2) == 1) &&
                            (M_ <= 1 || a.stride(1) >= K_),
                        "ThreadProduct: a must be [count, M, K] with contiguous rows");
  // Rows of one row may carry any stride (a size-1 dimension's); they are K apart then.
  a_ld_ = M_ <= 1 ? K_ : a.stride(1);
  // NaN-poisoned under GATED_KERNELS_POISON_OUTPUTS=1, like the ops' outputs (common.h).
  out_ = new_output({M_, N_}, w.options().dtype(acc));
  if (bias.defined()) bias_ = bias.to(acc).contiguous();
  if (out_.numel() == 0) {
    kernel_ = choose_kernel(M_, K_, w.scalar_type());
    return;
  }
  if (kernel.has_value()) {
    kernel_ = *kernel;
  } else {
    kernel_ = choose_kernel(M_, K_, w.scalar_type());
    // float32 only: bfloat16 stays on brgemm (choose_kernel), whose rounding of a to bfloat16
    // the tests' error bounds were set on; own and mkl keep a in float, and at T=6, B=2, H=1
    // the GRU's db_hh came out at 1.1x the bound with them.
    if (gemm_choice() == GemmChoice::kAuto && w.scalar_type() == at::kFloat) {
      kernel_ = timed_kernel(columns, a, slot, bias);
    }
  }
  const auto a_buffer = [&](at::ScalarType dtype, int64_t columns) {
    return a_type == dtype && columns == K_ ? at::Tensor()
                                            : at::zeros({M_, columns}, w.options().dtype(dtype));
  };
  switch (kernel_) {
    case ProductKernel::kOwn:
      w_ = pack_panels(columns, panel_kernels().panel);
      a_cast_ = a_buffer(at::kFloat, K_);
      if (w.scalar_type() == at::kBFloat16 && a_type == at::kFloat) {
        // Float rows by a bfloat16 weight are rounded to bfloat16 first, as brgemm and
        // torch.nn's bfloat16 products take them: kept in float, a GRU's db_hh at T=6, B=2,
        // H=1 came out at 1.1x its bound (test_input_projection), on an AVX2 CPU where this
        // kernel takes every bfloat16 product.
        a_cast_ = at::empty({M_, K_}, w.options().dtype(at::kFloat));
        a_round_ = at::empty({K_}, w.options());
      }
      break;
    case ProductKernel::kBrgemm:
      if (const int64_t ld = K_ == 1 ? N_ : w.stride(0);
          columns.size() == 1 && w.scalar_type() == at::kFloat &&
          (N_ == 1 || w.stride(1) == 1) && ld >= N_ && brgemm_ld(ld) == ld) {
        // Rows brgemm can read in place (the backward's W_hh): every thread of the team reads
        // the one weight, with no copy of its own.
        ld_ = ld;
        w_ = w;
      } else {
        ld_ = brgemm_ld(N_);
        w_ = brgemm_weight(columns, ld_);
      }
      if (w.scalar_type() == at::kFloat) {
        a_cast_ = a_buffer(at::kFloat, K_);
      } else {
        a_cast_ = a_buffer(at::kBFloat16, 2 * w_.size(0));
        tiles_.active = true;
      }
      break;
    case ProductKernel::kMkl:
      // float; a bfloat16 weight is widened once.
      w_ = joined(columns).to(at::kFloat);
      a_cast_ = a_buffer(at::kFloat, K_);
#ifdef GATED_KERNELS_MKL_PACKED
      if (slot != PackSlot::kNone && mkl_packed_available()) {
        // w as MKL reads it: the transpose of contiguous [N, K] rows (how the forward gathers
        // its rows), else contiguous [K, N] rows. The leading dimensions are the row lengths,
        // not strides: torch gives a size-1 dimension any stride (a [1, N] view may have stride
        // 1 for its rows, which MKL rejects, leaving the buffer unpacked).
        const bool trans = w_.t().is_contiguous();
        if (!trans) w_ = w_.contiguous();
        float* packed = pack_buffer(slot, cblas_sgemm_pack_get_size(kBMatrix, M_, N_, K_));
        cblas_sgemm_pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, M_, N_, K_, 1.0f,
                         w_.data_ptr<float>(), trans ? K_ : N_, packed);
        packed_ = packed;
      }
      // A thread of a team (MKL then runs on it alone) multiplying one row by w stored as
      // contiguous [N, K] rows too large to pack (see lstm.cpp): blocked, see mkl().
      blocked_ = packed_ == nullptr && sgemv_ != nullptr && M_ == 1 && !bias_.defined() &&
                 w_.t().is_contiguous() && at::in_parallel_region() &&
                 static_cast<int64_t>(w_.nbytes()) > l2_bytes() / 2;
#endif
      break;
    case ProductKernel::kAten:
      w_ = joined(columns).to(acc);
      a_cast_ = a_buffer(acc, K_);
      break;
  }
}

template <typename scalar_t>
ProductKernel ThreadProduct<scalar_t>::timed_kernel(const std::vector<at::Tensor>& columns,
                                                    const at::Tensor& a, PackSlot slot,
                                                    const at::Tensor& bias) {
  const at::Tensor& w = columns.front();
  int64_t N = 0;
  for (const at::Tensor& block : columns) N += block.size(1);
  const int64_t M = a.size(1), K = w.size(0);
  const at::ScalarType dtype = w.scalar_type();
  // Zero rows: the values of a's buffers are not set yet, and zeros hold no subnormals to slow
  // a kernel down.
  const at::Tensor rows = at::zeros({1, M, K}, a.options());
  // Indexed by ProductKernel: own, brgemm, mkl. Each candidate is made on its first call and
  // dropped on return, before the caller sets its own up (mkl's packing buffer is one per slot
  // and thread).
  std::array<std::optional<ThreadProduct>, 3> made;
  const auto run = [&](int k) {
    if (!made[k].has_value()) made[k].emplace(columns, rows, slot, bias, ProductKernel(k));
    (*made[k])(0);
  };
  // Tags 0-3 are the cells' products (cell.cpp, matmul.cpp), whose choices index Candidate.
  const ProductKey key = product_key(/*tag=*/8 + static_cast<int64_t>(slot), M, N, K,
                                     a.scalar_type() == dtype, bias.defined(), false,
                                     static_cast<int64_t>(dtype));
  return ProductKernel(fastest_of(key, {true, brgemm_available(dtype), true}, run));
}

template <typename scalar_t>
ThreadProduct<scalar_t>::TileRelease::~TileRelease() {
#ifdef GATED_KERNELS_BRGEMM
  if (active) at::native::cpublas::brgemm_release();
#endif
}

template <typename scalar_t>
const typename ThreadProduct<scalar_t>::acc_t* ThreadProduct<scalar_t>::operator()(int64_t which,
                                                                                int64_t rows) {
  acc_t* out = out_.data_ptr<acc_t>();
  const int64_t M = rows < 0 ? M_ : rows;
  TORCH_INTERNAL_ASSERT(M <= M_, "ThreadProduct: ", M, " rows asked of ", M_);
  if (out_.numel() == 0 || M == 0) return out;
  // Buffer `which` by pointer: a view per call (or per step, made up front) cost about a
  // microsecond each, 1000 of them for a T=500 backward on two threads.
  const char* a_rows =
      static_cast<const char*>(a_.data_ptr()) + which * a_.stride(0) * a_.element_size();
  switch (kernel_) {
    case ProductKernel::kOwn: return own(a_rows, M, out);
    case ProductKernel::kBrgemm: return brgemm(a_rows, M, out);
    case ProductKernel::kMkl: return mkl(a_.select(0, which).narrow(0, 0, M), out);
    case ProductKernel::kAten: break;
  }
  const at::Tensor a = a_.select(0, which).narrow(0, 0, M);
  // A value, not a reference: copy_ returns the temporary view it was called on.
  const at::Tensor rows_t = a_cast_.defined() ? a_cast_.narrow(0, 0, M).copy_(a) : a;
  at::Tensor out_rows = out_.narrow(0, 0, M);
  if (bias_.defined()) {
    at::cpu::addmm_out(out_rows, bias_, rows_t, w_);
  } else {
    at::cpu::mm_out(out_rows, rows_t, w_);
  }
  return out;
}

template <typename scalar_t>
const typename ThreadProduct<scalar_t>::acc_t* ThreadProduct<scalar_t>::own(const char* a,
                                                                            int64_t M,
                                                                            acc_t* out) {
  if constexpr (std::is_same_v<acc_t, float>) {
    const PanelKernels& kernels = panel_kernels();
    const float* rows = nullptr;
    int64_t lda = K_;
    if (a_round_.defined()) {  // float rows rounded to bfloat16 values (see the constructor)
      float* cast = a_cast_.data_ptr<float>();
      c10::BFloat16* rounded = a_round_.data_ptr<c10::BFloat16>();
      const auto* src = reinterpret_cast<const float*>(a);
      for (const auto m : c10::irange(M)) {
        kernels.round_bf16(src + m * a_ld_, rounded, K_);
        kernels.widen_bf16(rounded, cast + m * K_, K_);
      }
      rows = cast;
    } else if (a_cast_.defined()) {  // bfloat16 rows (the input gates' x), widened
      float* cast = a_cast_.data_ptr<float>();
      const auto* src = reinterpret_cast<const c10::BFloat16*>(a);
      for (const auto m : c10::irange(M)) kernels.widen_bf16(src + m * a_ld_, cast + m * K_, K_);
      rows = cast;
    } else {
      rows = reinterpret_cast<const float*>(a);
      lda = a_ld_;
    }
    // Every other call walks the panels last to first, so that a call starts on the panels the
    // last one read most recently: at B=1 the next step's product follows right after.
    const bool reverse = calls_++ % 2 == 1;
    const float* bias = bias_.defined() ? bias_.data_ptr<float>() : nullptr;
    if constexpr (std::is_same_v<scalar_t, float>) {
      kernels.f32({rows, lda, M, K_, N_, w_.data_ptr<float>(), bias, out, N_, reverse});
    } else {
      kernels.bf16({rows, lda, M, K_, N_, w_.data_ptr<c10::BFloat16>(), bias, out, N_, reverse});
    }
  } else {
    TORCH_INTERNAL_ASSERT(false, "ThreadProduct: the own kernel is float and bfloat16 only");
  }
  return out;
}

template <typename scalar_t>
const typename ThreadProduct<scalar_t>::acc_t* ThreadProduct<scalar_t>::brgemm(const char* a,
                                                                               int64_t M,
                                                                               acc_t* out) {
#ifdef GATED_KERNELS_BRGEMM
  if constexpr (std::is_same_v<acc_t, float>) {
    // The bias goes into the output first and brgemm adds the product to it.
    const bool add = bias_.defined();
    if (add) {
      const float* b = bias_.data_ptr<float>();
      for (const auto m : c10::irange(M)) std::copy(b, b + N_, out + m * N_);
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      // a is float here (a float weight's rows come in float).
      at::native::cpublas::brgemm(M, N_, K_, a_ld_, ld_, N_, add,
                                  reinterpret_cast<const float*>(a), w_.data_ptr<float>(), out);
    } else {
      // bfloat16: a rounded (or, for an odd K, copied) into a row buffer padded to w's pairs.
      const int64_t K2 = 2 * w_.size(0);
      const c10::BFloat16* rows = nullptr;
      int64_t lda = K2;
      if (a_cast_.defined()) {
        c10::BFloat16* cast = a_cast_.data_ptr<c10::BFloat16>();
        if (a_.scalar_type() == at::kFloat) {
          const auto* src = reinterpret_cast<const float*>(a);
          for (const auto m : c10::irange(M)) {
            panel_kernels().round_bf16(src + m * a_ld_, cast + m * K2, K_);
          }
        } else {
          const auto* src = reinterpret_cast<const c10::BFloat16*>(a);
          for (const auto m : c10::irange(M)) {
            std::copy(src + m * a_ld_, src + m * a_ld_ + K_, cast + m * K2);
          }
        }
        rows = cast;
      } else {
        rows = reinterpret_cast<const c10::BFloat16*>(a);
        lda = M_ == 1 ? K2 : a_ld_;
      }
      at::native::cpublas::brgemm(M, N_, K2, lda, ld_, N_, add, rows,
                                  w_.data_ptr<c10::BFloat16>(), out, /*is_vnni=*/true);
    }
    return out;
  }
#endif
  TORCH_INTERNAL_ASSERT(false, "ThreadProduct: brgemm is not built in");
}

template <typename scalar_t>
const typename ThreadProduct<scalar_t>::acc_t* ThreadProduct<scalar_t>::mkl(const at::Tensor& a,
                                                                            acc_t* out) {
  // a: the rows asked for (product.h), M <= M_ of them.
  const int64_t M = a.size(0);
  const at::Tensor h = a_cast_.defined() ? a_cast_.narrow(0, 0, M).copy_(a) : a;  // see above
#ifdef GATED_KERNELS_MKL_PACKED
  if constexpr (std::is_same_v<acc_t, float>) {
    // Packed for M_ rows: a call with fewer runs unpacked, below.
    if (packed_ != nullptr && M == M_) {
      const int B = M, N = N_, K = K_;
      if (bias_.defined()) {
        const float* b = bias_.data_ptr<float>();
        for (const auto row : c10::irange(B)) std::copy(b, b + N, out + row * N);
      }
      // h's rows are contiguous (see the constructor); one row may carry any stride.
      const int lda = B == 1 ? K : h.stride(0);
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, B, N, K, h.data_ptr<float>(), lda,
                          packed_, N, bias_.defined() ? 1.0f : 0.0f, out, N);
      return out;
    }
    if (blocked_) {
      // One row against rows of W larger than half of a core's L2: each step streams them
      // from L3, since in-order traversal evicts each row before the next step returns to it.
      // Walking the column blocks in reverse order every other step starts a step on the rows
      // the last one read most recently, still in L2. lstm_inference B=1 on the Xeon (2
      // threads, medians of 38 calls interleaved in one process): H=512 T=500 31.0-32.0 ->
      // 27.4-28.0 ms, T=100 6.5-6.8 -> 5.8-6.0 ms, H=768 T=100 24.1 -> 20.6 ms; gru_inference
      // H=512 T=500 22.2 -> 20.7 ms, H=640 49.8 -> 38.2 ms. One sgemv_ call a block: ATen's
      // mm_out per block added more in dispatch than the blocks saved.
      const int K = K_, N = N_, blocks = std::min<int>(kGemvBlocks, N);
      const bool backwards = calls_++ % 2 == 1;
      const float one = 1.0f, zero = 0.0f;
      const int inc = 1;
      for (const auto i : c10::irange(blocks)) {
        const UnitRange cols = split_range(N, backwards ? blocks - 1 - i : i, blocks);
        const int n = static_cast<int>(cols.size());
        // Column-major, w's [N, K] rows are a K x N matrix with leading dimension K: out = its
        // transpose times h.
        sgemv_("T", &K, &n, &one, w_.data_ptr<float>() + cols.begin * K, &K, h.data_ptr<float>(),
               &inc, &zero, out + cols.begin, &inc);
      }
      return out;
    }
  }
#endif
  at::Tensor out_rows = out_.narrow(0, 0, M);
  if (bias_.defined()) {
    at::cpu::addmm_out(out_rows, bias_, h, w_);
  } else {
    at::cpu::mm_out(out_rows, h, w_);
  }
  return out;
}

template class ThreadProduct<float>;
template class ThreadProduct<double>;
template class ThreadProduct<c10::BFloat16>;

}  // namespace gated_kernels
