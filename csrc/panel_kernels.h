// Our own small-batch product, written once and compiled per CPU capability like the pointwise
// passes (pointwise_kernels.h): included only by the panel_<capability>.cpp files, which define
// CPU_CAPABILITY first. It multiplies a few rows of a (float) by a weight stored as panels
// (panel.h): for each panel, each row keeps 4 vector accumulators (64 columns on AVX-512, 32 on
// AVX2), every line of the panel is loaded once and multiplied by a broadcast value of each row
// (up to 4 rows at a time), and the panel is read front to back, which the hardware prefetcher
// follows even from L3.
//
// Why not a library GEMM: a one-row product reads the whole weight for 2 flops a value, so its
// speed is the rate at which the weight streams in. On the EPYC Zen 4 build machine (one thread of
// two running at once, medians of 400 calls), a [1, 512] x [512, 1024] float product (2 MB, beyond
// the 1 MB L2) took 21 us here against 41 us for oneDNN's brgemm on the same weight in row-major
// order (98 against 52 GB/s) and 36 us for MKL, whose vendor check sends AMD to an SSE GEMV; at
// 0.5 MB (in L2) all three read 105-111 GB/s. bfloat16 panels are widened to float in registers:
// half the bytes to stream, and a (the running h) stays in float.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) before including panel_kernels.h"
#endif

#include "panel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace gated_kernels {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVecs = 4;  // vectors a panel line holds
constexpr int64_t kPanel = kVecs * Vec::size();
// Rows multiplied per pass over a panel: with AVX-512's 32 vector registers, 4 rows x 4 vectors
// = 16 accumulators next to the 4 panel vectors; AVX2 has 16 registers, so 2 rows (8).
constexpr int64_t kTileRows = Vec::size() >= 16 ? 4 : 2;

// Line k of a panel as float vectors.
template <typename w_t>
inline void load_line(const w_t* line, Vec (&w)[kVecs]) {
  if constexpr (std::is_same_v<w_t, float>) {
    for (int64_t v = 0; v < kVecs; ++v) w[v] = Vec::loadu(line + v * Vec::size());
  } else {
    for (int64_t v = 0; v < kVecs; v += 2) {
      at::vec::load_to_float<w_t>(line + v * Vec::size(), w[v], w[v + 1]);
    }
  }
}

// Rows [m0, m0 + kRows) of a times panel p: out[m, p*kPanel + j] for the panel's valid columns.
template <int64_t kRows, typename w_t>
inline void tile(const PanelProduct<w_t>& a, int64_t m0, int64_t p) {
  const w_t* panel = a.panels + p * a.K * kPanel;
  const int64_t n0 = p * kPanel, valid = std::min(kPanel, a.N - n0);
  Vec acc[kRows][kVecs];
  for (int64_t v = 0; v < kVecs; ++v) {
    // The bias, if any, is where the sums start; the panel's padding columns start at 0.
    const int64_t n = std::clamp<int64_t>(valid - v * Vec::size(), 0, Vec::size());
    const Vec start = a.bias != nullptr && n > 0 ? Vec::loadu(a.bias + n0 + v * Vec::size(), n)
                                                 : Vec(0.0f);
    for (int64_t m = 0; m < kRows; ++m) acc[m][v] = start;
  }
  const float* rows[kRows];
  for (int64_t m = 0; m < kRows; ++m) rows[m] = a.a + (m0 + m) * a.lda;
  for (int64_t k = 0; k < a.K; ++k) {
    Vec w[kVecs];
    load_line(panel + k * kPanel, w);
    for (int64_t m = 0; m < kRows; ++m) {
      const Vec x(rows[m][k]);
      for (int64_t v = 0; v < kVecs; ++v) acc[m][v] = at::vec::fmadd(x, w[v], acc[m][v]);
    }
  }
  for (int64_t m = 0; m < kRows; ++m) {
    float* out = a.out + (m0 + m) * a.ldo + n0;
    for (int64_t v = 0; v < kVecs; ++v) {
      const int64_t n = std::clamp<int64_t>(valid - v * Vec::size(), 0, Vec::size());
      if (n == Vec::size()) acc[m][v].store(out + v * Vec::size());
      else if (n > 0) acc[m][v].store(out + v * Vec::size(), n);
    }
  }
}

template <typename w_t>
void panel_product(const PanelProduct<w_t>& a) {
  const int64_t panels = (a.N + kPanel - 1) / kPanel;
  for (int64_t i = 0; i < panels; ++i) {
    const int64_t p = a.reverse ? panels - 1 - i : i;
    int64_t m = 0;
    for (; m + kTileRows <= a.M; m += kTileRows) tile<kTileRows>(a, m, p);
    // The last rows: fewer than a tile.
    if (a.M - m == 3) tile<3>(a, m, p);
    else if (a.M - m == 2) tile<2>(a, m, p);
    else if (a.M - m == 1) tile<1>(a, m, p);
  }
}

void round_bf16(const float* src, c10::BFloat16* dst, int64_t n) { at::vec::convert(src, dst, n); }

void widen_bf16(const c10::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec v;
    at::vec::load_to_float(src + i, v);
    v.store(dst + i);
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// Packing a weight: a thread's rows of W_hh arrive as the transpose of contiguous [N, K] rows,
// so a panel is a transpose, done 16 x 16 values at a time with at::vec's transpose (a copy
// value by value, with every value of a line from another row, ran at 1 GB/s: 0.6 ms for the
// 2 MB of a thread's rows at H=512, 20% of an LSTM inference at B=1, T=100). Rows that are
// already [K, N] copy line by line. The block's columns land at [n0, n0 + N) of the panels.
template <typename T>
void pack(const T* w, int64_t stride_k, int64_t stride_n, int64_t K, int64_t N, int64_t panel,
          int64_t n0, T* out) {
  constexpr int64_t kTile = 16;
  for (int64_t n = 0; n < N;) {
    // The block's columns in panel (n0 + n) / panel.
    const int64_t j0 = (n0 + n) % panel, width = std::min(N - n, panel - j0);
    T* dst = out + (n0 + n) / panel * K * panel + j0;
    const T* src = w + n * stride_n;
    if (stride_k == 1 && stride_n != 1) {
      for (int64_t j = 0; j < width; j += kTile) {
        for (int64_t k = 0; k < K; k += kTile) {
          at::vec::transpose_mxn<T>(src + j * stride_n + k, stride_n, dst + k * panel + j, panel,
                                    std::min(kTile, width - j), std::min(kTile, K - k));
        }
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = 0; j < width; ++j) dst[k * panel + j] = src[k * stride_k + j * stride_n];
      }
    }
    n += width;
  }
}

// Rows k and k + 1 of a [K, N] bfloat16 matrix (rows ldw apart) interleaved value by value:
// out[(k / 2) * ld * 2 + 2 n + k % 2], the VNNI pairs brgemm reads (an odd K pairs its last row
// with zeros; columns N to ld are zeros).
void pair_rows(const c10::BFloat16* w, int64_t ldw, int64_t K, int64_t N, int64_t ld,
               c10::BFloat16* out) {
  const auto* in = reinterpret_cast<const uint16_t*>(w);
  auto* pairs = reinterpret_cast<uint16_t*>(out);
  for (int64_t k = 0; k < K; k += 2) {
    const uint16_t* even = in + k * ldw;
    const uint16_t* odd = in + (k + 1) * ldw;
    uint16_t* dst = pairs + k * ld;
    if (k + 1 < K) {
      for (int64_t n = 0; n < N; ++n) {
        dst[2 * n] = even[n];
        dst[2 * n + 1] = odd[n];
      }
    } else {
      for (int64_t n = 0; n < N; ++n) {
        dst[2 * n] = even[n];
        dst[2 * n + 1] = 0;
      }
    }
    std::fill(dst + 2 * N, dst + 2 * ld, uint16_t(0));
  }
}

// Columns [n0, n0 + N) of brgemm's VNNI pairs [K / 2, ld, 2] from a block whose columns are
// rows of bfloat16 (element (k, n) at w[k + n * stride_n]; K and stride_n even): the pair (k,
// k + 1) of column n sits side by side in its row, so the pairs are a transpose of 32-bit
// values, one pass instead of a transpose to rows and an interleave.
void pack_pairs(const c10::BFloat16* w, int64_t stride_n, int64_t K, int64_t N, int64_t ld,
                int64_t n0, c10::BFloat16* out) {
  const int64_t Q = K / 2, stride = stride_n / 2;  // in pairs
#if defined(CPU_CAPABILITY_AVX512)
  // The transpose loads and stores through intrinsics, which may alias any type.
  constexpr int64_t kTile = 16;
  const float* src = reinterpret_cast<const float*>(w);
  float* dst = reinterpret_cast<float*>(out) + n0;
  for (int64_t n = 0; n < N; n += kTile) {
    for (int64_t q = 0; q < Q; q += kTile) {
      at::vec::transpose_mxn<float>(src + n * stride + q, stride, dst + q * ld + n, ld,
                                    std::min(kTile, N - n), std::min(kTile, Q - q));
    }
  }
#else
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t q = 0; q < Q; ++q) {
      std::memcpy(out + 2 * (q * ld + n0 + n), w + n * stride_n + 2 * q, 2 * sizeof(w[0]));
    }
  }
#endif
  (void)stride;
}

// ---- the cell operators' products over unpacked weights (RowProduct in panel.h) ----

// n <= Vec::size() values as floats (widened from bfloat16), zero past n.
template <typename T>
inline Vec load_floats(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p, n);
  } else {
    if (n == Vec::size()) {
      Vec out;
      at::vec::load_to_float(p, out);
      return out;
    }
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, n)));
  }
}

// Stores n <= 2 * Vec::size() values, lo's then hi's, rounded to bfloat16 where T is. A full
// bfloat16 vector holds both, so a full pair is one plain store. Stored a half at a time through
// a mask, the [4096, 1] x [1, 1024] product into bfloat16 took 0.7-1.1 ms, 0.23-0.46 ms now
// (ATen's 0.2; AMD EPYC Zen 5, 2 threads, medians of noisy runs).
template <typename T>
inline void store_pair(T* p, const Vec& lo, const Vec& hi, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    lo.store(p, std::min<int64_t>(n, Vec::size()));
    if (n > Vec::size()) hi.store(p + Vec::size(), n - Vec::size());
  } else {
    at::vec::convert_from_float<T>(lo, hi).store(p, n);
  }
}

// Weight rows per step of dot() with kRows rows of a: kDotRows * kRows accumulators plus the
// kDotRows weight vectors fit AVX-512's 32 registers at 4 x 4 and AVX2's 16 at 4 x 2 or 2 x 4.
// Each accumulator is a chain of FMAs, 4 cycles apart: at 2 x 1, AVX2's one-row product of a
// bfloat16 weight ran at 2.9 values a ns (1 x 256 by 256 x 1024: 89 us, ATen's bfloat16
// product 53; AMD EPYC Zen 3, 2 threads).
constexpr int64_t dot_weight_rows(int64_t rows) { return Vec::size() >= 16 || rows <= 2 ? 4 : 2; }

template <int64_t kRows, typename w_t>
void dot_rows(const RowProduct<w_t, float>& p) {
  constexpr int64_t kDotRows = dot_weight_rows(kRows);
  for (int64_t n = p.n0; n < p.n1; n += kDotRows) {
    const int64_t rows = std::min(kDotRows, p.n1 - n);
    Vec acc[kDotRows][kRows];
    for (int64_t r = 0; r < kDotRows; ++r) {
      for (int64_t m = 0; m < kRows; ++m) acc[r][m] = Vec(0.0f);
    }
    for (int64_t k = 0; k < p.K; k += Vec::size()) {
      const int64_t width = std::min<int64_t>(Vec::size(), p.K - k);  // zero-filled past it
      Vec x[kRows];
      for (int64_t m = 0; m < kRows; ++m) x[m] = Vec::loadu(p.a + m * p.a_m + k, width);
      for (int64_t r = 0; r < rows; ++r) {
        const Vec w = load_floats(p.w + (n + r) * p.ldw + k, width);
        for (int64_t m = 0; m < kRows; ++m) acc[r][m] = at::vec::fmadd(x[m], w, acc[r][m]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t m = 0; m < kRows; ++m) {
        float& out = p.out[m * p.ldo + n + r];
        const float sum =
            at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc[r][m]);
        out = p.accumulate ? out + sum : sum;
      }
    }
  }
}

template <typename w_t>
void dot(const RowProduct<w_t, float>& p) {
  RowProduct<w_t, float> part = p;
  for (int64_t m = 0; m < p.M; m += 4) {
    part.a = p.a + m * p.a_m;
    part.out = p.out + m * p.ldo;
    switch (std::min<int64_t>(4, p.M - m)) {
      case 4: dot_rows<4>(part); break;
      case 3: dot_rows<3>(part); break;
      case 2: dot_rows<2>(part); break;
      default: dot_rows<1>(part); break;
    }
  }
}

// Many output rows, a short sum (dG^T x at a small batch): each output row is a few scaled rows
// of w, which stay in L1, written two vectors at a time. (A block of 4 vectors with its widths
// worked out per block ran at half the speed of a fill of the output: instruction-bound.)
template <typename w_t, typename out_t>
void axpy_blocks(const RowProduct<w_t, out_t>& p) {
  constexpr int64_t kPair = 2 * Vec::size();
  const int64_t N = p.n1 - p.n0;
  for (int64_t m = 0; m < p.M; ++m) {
    const float* a_row = p.a + m * p.a_m;
    out_t* out = p.out + m * p.ldo + p.n0;
    const w_t* w = p.w + p.n0;
    for (int64_t n = 0; n < N; n += kPair) {
      const int64_t width = std::min(kPair, N - n);
      const int64_t lo_width = std::min<int64_t>(width, Vec::size());
      const int64_t hi_width = width - lo_width;
      Vec lo(0.0f), hi(0.0f);
      if (p.accumulate) {
        lo = load_floats(out + n, lo_width);
        if (hi_width > 0) hi = load_floats(out + n + Vec::size(), hi_width);
      }
      for (int64_t k = 0; k < p.K; ++k) {
        const Vec x(a_row[k * p.a_k]);
        const w_t* w_row = w + k * p.ldw + n;
        lo = at::vec::fmadd(x, load_floats(w_row, lo_width), lo);
        if (hi_width > 0) hi = at::vec::fmadd(x, load_floats(w_row + Vec::size(), hi_width), hi);
      }
      store_pair(out + n, lo, hi, width);
    }
  }
}

// A few output rows, a long sum (dG W at a small batch): w streams row after row, front to back,
// and the output rows ([n0, n1) of them, a few KB) take each row in turn from L1. Taking w a block
// of columns at a time instead, down all K rows, read it 2 KB apart and ran at a third of this.
template <typename w_t>
void axpy_rows(const RowProduct<w_t, float>& p) {
  const int64_t N = p.n1 - p.n0;
  for (int64_t m = 0; m < p.M; ++m) {
    float* out = p.out + m * p.ldo + p.n0;
    if (!p.accumulate) std::fill(out, out + N, 0.0f);
  }
  for (int64_t k = 0; k < p.K; ++k) {
    const w_t* w = p.w + k * p.ldw + p.n0;
    for (int64_t m = 0; m < p.M; ++m) {
      const Vec x(p.a[m * p.a_m + k * p.a_k]);
      float* out = p.out + m * p.ldo + p.n0;
      for (int64_t n = 0; n < N; n += Vec::size()) {
        const int64_t width = std::min<int64_t>(Vec::size(), N - n);
        at::vec::fmadd(x, load_floats(w + n, width), Vec::loadu(out + n, width))
            .store(out + n, width);
      }
    }
  }
}

template <typename w_t>
void axpy(const RowProduct<w_t, float>& p) {
  if (p.K > p.M) axpy_rows(p);
  else axpy_blocks(p);
}

}  // namespace

PanelKernels panel_kernels() {
  return {kPanel,       &panel_product<float>, &panel_product<c10::BFloat16>,
          &round_bf16,  &widen_bf16,           &pack<float>,
          &pack<c10::BFloat16>, &pair_rows,    &pack_pairs,
          &dot<float>,  &axpy<float>,          &dot<c10::BFloat16>,
          &axpy<c10::BFloat16>, &axpy_blocks<float, c10::BFloat16>};
}

}  // namespace CPU_CAPABILITY
}  // namespace gated_kernels
