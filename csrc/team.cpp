#include "team.h"

#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstdlib>
#include <new>

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

// Column blocks of a blocked one-row product (ThreadProduct::operator()): 2, 4 and 8 did alike
// for a 2 MB w on one thread (52-54 us a step, against 58-62 us in order).
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

}  // namespace

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

UnitRange split_range(int64_t n, int tid, int nthreads) {
  const int64_t per = n / nthreads, extra = n % nthreads;
  const int64_t begin = tid * per + std::min<int64_t>(tid, extra);
  return {begin, begin + per + (tid < extra ? 1 : 0)};
}

template <typename acc_t>
ThreadProduct<acc_t>::ThreadProduct(const at::Tensor& w, std::vector<at::Tensor> h_buffers,
                                    PackSlot slot, const at::Tensor& bias)
    : w_(w), bias_(bias), h_(std::move(h_buffers)) {
  const int64_t B = h_.front().size(0), K = w_.size(0), N = w_.size(1);
  out_ = at::empty({B, N}, w_.options());
  for (const at::Tensor& h : h_) {
    TORCH_INTERNAL_ASSERT(h.size(0) == B && h.size(1) == K &&
                              (K <= 1 || h.stride(1) == 1) && (B <= 1 || h.stride(0) >= K),
                          "ThreadProduct: h buffers must be [B, K] with contiguous rows");
  }
#ifdef GATED_KERNELS_MKL_PACKED
  if constexpr (std::is_same_v<acc_t, float>) {
    if (slot != PackSlot::kNone && mkl_packed_available() && B > 0 && N > 0 && K > 0) {
      // w as MKL reads it: the transpose of contiguous [N, K] rows (how the forward gathers
      // its rows), else contiguous [K, N] rows. The leading dimensions are the row lengths, not
      // strides: torch gives a size-1 dimension any stride (a [1, N] view may have stride 1 for
      // its rows, which MKL rejects, leaving the buffer unpacked).
      const bool trans = w_.t().is_contiguous();
      if (!trans) w_ = w_.contiguous();
      float* packed = pack_buffer(slot, cblas_sgemm_pack_get_size(kBMatrix, B, N, K));
      cblas_sgemm_pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, B, N, K, 1.0f,
                       w_.data_ptr<float>(), trans ? K : N, packed);
      packed_ = packed;
    }
    // A thread of a team (MKL then runs on it alone) multiplying one row by w stored as
    // contiguous [N, K] rows too large to pack (see lstm.cpp): blocked, see operator().
    blocked_ = packed_ == nullptr && sgemv_ != nullptr && B == 1 && !bias_.defined() &&
               w_.t().is_contiguous() && at::in_parallel_region() &&
               static_cast<int64_t>(w_.nbytes()) > kHalfL2Bytes;
  }
#endif
}

template <typename acc_t>
const acc_t* ThreadProduct<acc_t>::operator()(int which) {
  acc_t* out = out_.data_ptr<acc_t>();
  if (out_.numel() == 0) return out;
  const at::Tensor& h = h_[which];
#ifdef GATED_KERNELS_MKL_PACKED
  if constexpr (std::is_same_v<acc_t, float>) {
    if (packed_ != nullptr) {
      const int B = out_.size(0), N = out_.size(1), K = w_.size(0);
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
      // One row against rows of W larger than half of a core's 2 MB L2: each step streams
      // them from L3, since in-order traversal evicts each row before the next step returns
      // to it. Walking the column blocks in reverse order every other step starts a step on
      // the rows the last one read most recently, still in L2. lstm_inference B=1 (2 threads,
      // medians of 38 calls interleaved in one process): H=512 T=500 31.0-32.0 -> 27.4-28.0 ms,
      // T=100 6.5-6.8 -> 5.8-6.0 ms, H=768 T=100 24.1 -> 20.6 ms; gru_inference H=512 T=500
      // 22.2 -> 20.7 ms, H=640 49.8 -> 38.2 ms. One sgemv_ call a block: ATen's mm_out per
      // block added more in dispatch than the blocks saved.
      const int K = w_.size(0), N = w_.size(1), blocks = std::min(kGemvBlocks, N);
      const bool backwards = calls_++ % 2 == 1;
      const float one = 1.0f, zero = 0.0f;
      const int inc = 1;
      for (const auto i : c10::irange(blocks)) {
        const UnitRange cols = split_range(N, backwards ? blocks - 1 - i : i, blocks);
        const int n = static_cast<int>(cols.size());
        // Column-major, w's [N, K] rows are a K x N matrix with leading dimension K: out = its
        // transpose times h.
        sgemv_("T", &K, &n, &one, w_.data_ptr<float>() + cols.begin * K, &K,
               h.data_ptr<float>(), &inc, &zero, out + cols.begin, &inc);
      }
      return out;
    }
  }
#endif
  if (bias_.defined()) {
    at::cpu::addmm_out(out_, bias_, h, w_);
  } else {
    at::cpu::mm_out(out_, h, w_);
  }
  return out;
}

template class ThreadProduct<float>;
template class ThreadProduct<double>;
template class ThreadProduct<c10::BFloat16>;

}  // namespace gated_kernels
