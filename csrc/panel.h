// Our own product for small batches over a weight stored as panels (the kernel and the reason
// are in panel_kernels.h). This header holds only plain structs and function pointers, as
// pointwise.h does, so that code compiled for different instruction sets shares no inline
// function through it.
//
// Panel layout of a weight w [K, N]: panel p holds columns [p * panel, (p + 1) * panel) for every
// k, line after line: panels[(p * K + k) * panel + j] = w[k, p * panel + j], zero past N.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace gated_kernels {

// out[M, N] = a[M, K] w[K, N] (+ bias[N]), w as panels of the kernel's width.
template <typename w_t>
struct PanelProduct {
  const float* a;  // row m at a + m * lda
  int64_t lda, M, K, N;
  const w_t* panels;
  const float* bias;  // [N] or nullptr
  float* out;         // row m at out + m * ldo
  int64_t ldo;
  bool reverse;  // visit the panels last to first (see ThreadProduct in product.h)
};

// The cell operators' small-batch products (cell.cpp), over weights as torch.nn stores them, no
// packing: out[m, n] = (out[m, n] if accumulate, else 0) + sum_k a(m, k) w(k, n) for m < M, n in
// [n0, n1), with a(m, k) = a[m * a_m + k * a_k] (float) and out row m at out + m * ldo. The sums
// run in float; a bfloat16 weight is widened as it is read, a bfloat16 output rounded as it is
// stored.
//   dot:  w(k, n) = w[n * ldw + k], the rows of w are the outputs (x W^T), a_k = 1: 4 weight
//         rows at a time, each a dot product over contiguous k with up to 4 rows of a.
//   axpy: w(k, n) = w[k * ldw + n]. With K > M (dG W) w streams row after row into the output
//         rows; with K <= M (dG^T x) each output row is K scaled rows of w.
template <typename w_t, typename out_t>
struct RowProduct {
  const float* a;
  int64_t a_m, a_k, M, K;
  const w_t* w;
  int64_t ldw;
  out_t* out;
  int64_t ldo, n0, n1;
  bool accumulate;
};

struct PanelKernels {
  int64_t panel;  // columns per panel: 4 vectors of float
  void (*f32)(const PanelProduct<float>&);
  void (*bf16)(const PanelProduct<c10::BFloat16>&);
  // dst[i] = src[i] rounded to bfloat16 (to nearest even), and back, for i < n: the conversions
  // of a product's rows, vectorised like the product.
  void (*round_bf16)(const float* src, c10::BFloat16* dst, int64_t n);
  void (*widen_bf16)(const c10::BFloat16* src, float* dst, int64_t n);
  // A block of columns w [K, N] (element (k, n) at w[k * stride_k + n * stride_n]) into
  // columns [n0, n0 + N) of panels of `panel` columns, [panels, K, panel] (pack_panels).
  void (*pack_f32)(const float* w, int64_t stride_k, int64_t stride_n, int64_t K, int64_t N,
                   int64_t panel, int64_t n0, float* out);
  void (*pack_bf16)(const c10::BFloat16* w, int64_t stride_k, int64_t stride_n, int64_t K,
                    int64_t N, int64_t panel, int64_t n0, c10::BFloat16* out);
  // Rows of bfloat16 w [K, N] (element (k, n) at w[k * ldw + n]) into brgemm's VNNI pairs
  // [ceil(K / 2), ld, 2], zero-padded past K and N.
  void (*pair_rows)(const c10::BFloat16* w, int64_t ldw, int64_t K, int64_t N, int64_t ld,
                    c10::BFloat16* out);
  // A block of columns that are rows of bfloat16 (element (k, n) at w[k + n * stride_n], K and
  // stride_n even) into columns [n0, n0 + N) of the VNNI pairs [K / 2, ld, 2].
  void (*pack_pairs)(const c10::BFloat16* w, int64_t stride_n, int64_t K, int64_t N, int64_t ld,
                     int64_t n0, c10::BFloat16* out);
  // The row products (RowProduct) for the weight and output types the cells use: float; a
  // bfloat16 weight into float (x W^T and dG W of a bfloat16 cell); float rows into a bfloat16
  // output (its dG^T x).
  void (*dot)(const RowProduct<float, float>&);
  void (*axpy)(const RowProduct<float, float>&);
  void (*dot_bf16)(const RowProduct<c10::BFloat16, float>&);
  void (*axpy_bf16)(const RowProduct<c10::BFloat16, float>&);
  void (*axpy_to_bf16)(const RowProduct<float, c10::BFloat16>&);
};

// The variant for the capability ATen runs with (at::get_cpu_capability()), as
// pointwise_kernels() chooses. Chosen once.
const PanelKernels& panel_kernels();

// The weight w [K, N], given as blocks of columns [K, N_i] (any strides, side by side: a
// thread's rows of each gate, transposed), in panels of `panel` columns, [ceil(N / panel), K,
// panel], contiguous, zero past N. With panel >= N it is w row-major in rows of `panel` values
// (brgemm's float form).
at::Tensor pack_panels(const std::vector<at::Tensor>& columns, int64_t panel);

namespace DEFAULT {
PanelKernels panel_kernels();
}
#ifdef GATED_KERNELS_CPU_VARIANTS
namespace AVX2 {
PanelKernels panel_kernels();
}
namespace AVX512 {
PanelKernels panel_kernels();
}
#endif

}  // namespace gated_kernels
