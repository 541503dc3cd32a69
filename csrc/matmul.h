// The large products outside the time loop (the input projection's gradients dx = dG W_ih,
// dW_ih = dG^T x, and dW_hh = dG^T h_prev): on oneDNN's matmul or on ATen's, whichever this
// machine runs faster for the shape (fastest.h).
//
// Why not ATen's alone: ATen sends a float32 matmul to MKL, and MKL checks the CPU vendor: on
// AMD it runs a generic AVX2 kernel. On the EPYC Zen 4 build machine (2 threads, medians of 15)
// oneDNN's matmul, which compiles for the instruction set, took [6400, 256] x [256, 1024] in
// 16.5 against 19.3 ms (203 against 174 GFLOP/s), [6400, 1024] x [1024, 256] 15.3 against
// 17.8 ms, and the weight-gradient shape [1024, 6400] x [6400, 256] 18.4 against 18.8 ms. On an
// Intel Xeon MKL runs AVX-512 code and wins many shapes (cell sizes: csrc/fastest.h). float64
// goes to ATen.
//
// A bfloat16 product may also run as a float product of its operands widened to float, rounded
// once as ATen rounds: where ATen's bfloat16 product has no oneDNN path (a CPU without AVX-512,
// such as an AMD EPYC Zen 3) it runs a generic loop at about 1.6 GFLOP/s, timed against the
// widened product only for products small enough to time (a few rows by a large weight, which
// the widening reads and writes whole, can go to it); elsewhere all are timed.
#pragma once

#include "fastest.h"

#include <ATen/ATen.h>

namespace gated_kernels {

// out = beta * out + a @ b for 2-D a [M, K], b [K, N] (any strides) and out [M, N] contiguous,
// beta 0 or 1, on oneDNN's matmul or ATen's product, whichever is faster here for this kind of
// product (fastest.h; on an Intel Xeon ATen's is MKL's AVX-512 code, on AMD its generic code).
void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta);

// Whether oneDNN's matmul takes out = a @ b with out in out_dtype: float or bfloat16, a non-empty
// sum, a and b with rows or columns contiguous, oneDNN available.
bool onednn_takes(at::ScalarType out_dtype, const at::Tensor& a, const at::Tensor& b);

// The candidates (fastest.h) that may take out = beta * out + a @ b, out in out_dtype, on a
// library: oneDNN where onednn_takes; ATen's product, its generic bfloat16 loop only where short
// enough to time; the widened product (kFloat) where a, b and out are bfloat16. kOwn is false.
std::array<bool, kCandidates> library_candidates(at::ScalarType out_dtype, const at::Tensor& a,
                                                 const at::Tensor& b);

// The candidate fastest() picks among `allowed` for out = beta * out + a @ b, keyed by `tag` (the
// caller) and the product's sizes, layouts and b's dtype. When the choice is timed,
// product(c, into) computes the product on c into scratch memory shaped like out.
Candidate fastest_matmul(int64_t tag, const at::Tensor& out, const at::Tensor& a,
                         const at::Tensor& b, float beta,
                         const std::array<bool, kCandidates>& allowed,
                         const std::function<void(Candidate, at::Tensor&)>& product);

// out = beta * out + a @ b on one library: Candidate::kOnednn, kAten or kFloat, where
// library_candidates allows it.
void library_matmul(Candidate library, at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                    float beta);

// Whether float32 products go to oneDNN here: an x86-64 torch with oneDNN enabled
// (torch.backends.mkldnn.enabled) on a CPU where ATen lets oneDNN run float32 (AVX-512).
bool onednn_matmul_available();

// Whether ATen's bfloat16 product runs on oneDNN here (AVX-512 or avx_ne_convert on x86-64),
// oneDNN enabled; elsewhere it runs a generic loop.
bool onednn_bf16_available();

}  // namespace gated_kernels
