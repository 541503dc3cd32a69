// One thread's matrix product with a weight fixed for the whole recurrence (the per-step
// h_{t-1} W_hh^T of a team thread, the projection, the backward's dG_t W_hh, a chunk of input
// gates): out[M, N] = a[M, K] w[K, N] (+ bias), with a read from one of a few [M, K] buffers
// fixed up front. The weight is put in its kernel's form once, before the time loop; a call
// allocates nothing.
//
// The kernels, chosen for a float weight per kind of product (sizes, dtypes, packing, threads) by
// timing them (ThreadProduct::timed_kernel, fastest.h), for bfloat16 by choose_kernel, or forced:
//   own     our panel kernel (panel.h): weight in panels, rows a few at a time, compiled per
//           CPU capability. The one-row (GEMV) regime, where speed is how fast the weight
//           streams in, and every dtype where brgemm is missing (aarch64: NEON through at::vec).
//   brgemm  oneDNN's batch-reduce GEMM as ATen exports it (at::native::cpublas::brgemm),
//           JIT-compiled for the instruction set and never asking the vendor. float, and
//           bfloat16 with the weight in VNNI pairs, a rounded to bfloat16, float accumulation
//           (avx512_bf16 or AMX).
//   mkl     MKL's packed GEMM (cblas_sgemm_pack / compute) and its sgemv, as tuned on an Intel
//           Xeon (benchmarks/cpu_profile.md). MKL checks the CPU vendor: on AMD these run
//           generic SSE and AVX2 code (reference/cpu_portability.md) and lose the timing; on
//           the Xeon they won the float32 LSTM at H=512 (fastest.h). bfloat16 weights run in
//           float there.
//   aten    at::cpu::mm_out in the accumulation type: float64 (and a product with K = 0).
//
// GATED_KERNELS_CPU_GEMM (cpu_info.h) forces own, brgemm or mkl for every float and bfloat16
// product; float64 always runs on aten.
#pragma once

#include "cpu_info.h"
#include "fastest.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace gated_kernels {

enum class ProductKernel { kOwn, kBrgemm, kMkl, kAten };

const char* kernel_name(ProductKernel kernel);

// The kernel for a product of M rows by a weight of `dtype` [K, N] under a forced
// GATED_KERNELS_CPU_GEMM, or auto's where there is nothing to time (float64, K = 0, one
// candidate); else auto's default before timing: own for one float row, brgemm otherwise.
ProductKernel choose_kernel(int64_t M, int64_t K, at::ScalarType dtype);

// Whether oneDNN's brgemm runs here for `dtype`: an x86-64 torch built with oneDNN, oneDNN
// enabled (torch.backends.mkldnn.enabled), and for bfloat16 an AVX-512 CPU (checked once by a
// trial product).
bool brgemm_available(at::ScalarType dtype);

// out [M, N] (float, contiguous) = a [M, K] w [K, N] (+ out where `add`) on brgemm
// (brgemm_available for w's dtype must hold), for a float or bfloat16 w of any strides and a in
// float or w's dtype (rounded to bfloat16 for a bfloat16 w). For a product that runs once (a
// cell's): each thread puts its columns of w into brgemm's form (rows, or pairs for bfloat16)
// for this call alone, or reads a float w's rows in place where brgemm can; the columns are
// split over the threads where the work repays a fork.
void brgemm_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& w, bool add);

// One product that runs once, with no packing to repay (csrc/cell.cpp: the cells' and one-step
// calls' products, the kernel picked by size): out = beta * out + a b, beta 0 or 1, for out
// [M, N] contiguous, a [M, K] and b [K, N] with any strides (b is w^T for a forward product,
// w itself for a backward one).
void cell_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta);

// a w^T (+ bias) in the accumulation type, for a [M, K] and w [N, K] (a weight as torch.nn
// stores it), on cell_matmul; a bfloat16 product rounded as torch.nn's cell rounds it.
at::Tensor cell_product(const at::Tensor& a, const at::Tensor& w,
                        const std::optional<at::Tensor>& bias);

// For the mkl kernel: MKL's packed copy of a weight lives in a buffer of the calling thread, one
// per slot, kept from call to call (outside torch's allocator): MKL asks 8-13 MB of address space
// per packed matrix whatever its size, and allocating that per call cost a fresh mapping each
// time. A thread may hold one live product per slot. kNone: not packed.
enum class PackSlot { kNone, kRecurrent, kProjection, kInput };

// `slot` for a product of a team of `nthreads`: packed only when the team has several threads.
inline PackSlot team_pack(int nthreads, PackSlot slot) {
  return nthreads > 1 ? slot : PackSlot::kNone;
}

template <typename scalar_t>
class ThreadProduct {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  // w [K, N] in scalar_t, any strides, given as blocks of columns [K, N_i] side by side (the
  // forward's rows of each gate for the thread's units, transposed: packed from where they
  // are, never gathered). a [count, M, K], in scalar_t or acc_t: a[i] is the buffer call i
  // multiplies (h_{t-1}'s two buffers, dG_t of every step, a chunk of x), rows contiguous.
  // slot: the mkl kernel's packing (kNone for unpacked). bias [N] in scalar_t or acc_t,
  // optional: the product returns a @ w + bias.
  // kernel: this one rather than GATED_KERNELS_CPU_GEMM's (auto: the fastest here for this
  // kind of product, timed on the first of its kind, fastest.h).
  ThreadProduct(const std::vector<at::Tensor>& w, const at::Tensor& a, PackSlot slot,
                const at::Tensor& bias = at::Tensor(),
                std::optional<ProductKernel> kernel = std::nullopt);

  // a[which] @ w (+ bias), [M, N] contiguous in acc_t, valid until the next call. With
  // `rows` in [0, M], only the first `rows` rows of a[which] (the rows still running at a step
  // of a batch sorted by length): the rest of the output is left as it was.
  const acc_t* operator()(int64_t which, int64_t rows = -1);

  ProductKernel kernel() const { return kernel_; }

 private:
  const acc_t* own(const char* a, int64_t M, acc_t* out);
  const acc_t* brgemm(const char* a, int64_t M, acc_t* out);
  const acc_t* mkl(const at::Tensor& a, acc_t* out);
  // auto's kernel for a float weight: own, brgemm (where it runs) or mkl, whichever this thread
  // ran fastest over zero rows shaped like a, each set up as the constructor would.
  static ProductKernel timed_kernel(const std::vector<at::Tensor>& w, const at::Tensor& a,
                                    PackSlot slot, const at::Tensor& bias);

  ProductKernel kernel_;
  int64_t M_, K_, N_;
  int64_t ld_ = 0;  // brgemm: the row length of w_
  // The weight in its kernel's form: panels (own), row-major [K, N] or VNNI pairs (brgemm),
  // acc_t (mkl, aten).
  at::Tensor w_, bias_, out_;
  at::Tensor a_;
  int64_t a_ld_ = 0;  // between rows of a buffer
  // A row buffer for a in the kernel's dtype, when a comes in another (or, for bfloat16 brgemm,
  // with an odd K, padded to even).
  at::Tensor a_cast_;
  at::Tensor a_round_;  // own with a bfloat16 weight: a row of a rounded to bfloat16
  const float* packed_ = nullptr;  // mkl: the packed weight
  bool blocked_ = false;           // mkl: one row over a weight beyond half of L2, in blocks
  int64_t calls_ = 0;              // which way the panels or blocks go this call

  // brgemm in bfloat16 may hold AMX tile state on the thread (Intel); it is released when the
  // product that last used it ends, as ATen's own users of brgemm do.
  struct TileRelease {
    bool active = false;
    TileRelease() = default;
    TileRelease(TileRelease&& other) noexcept : active(other.active) { other.active = false; }
    TileRelease& operator=(TileRelease&&) = delete;
    ~TileRelease();
  } tiles_;
};

}  // namespace gated_kernels
