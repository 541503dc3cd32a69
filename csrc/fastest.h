// The fastest of a few ways to compute one product, found by timing them on this machine.
//
// Which library multiplies small float32 matrices fastest depends on the CPU in ways no feature
// bit tells: ATen's product is MKL's, which runs AVX-512 code on an Intel Xeon and generic
// SSE / AVX2 code on an AMD EPYC (reference/cpu_portability.md, section 3); oneDNN compiles for
// the instruction set on both; our own kernels stream a weight for one or two rows, and for
// more rows brgemm (oneDNN's microkernel as ATen exports it) skips the matmul's setup. Measured
// for a cell's products (2 threads): on the EPYC Zen 4 our kernels and oneDNN beat ATen up to
// 3.8x at B=1 (csrc/cell.cpp), while on an Intel Xeon (AMX) ATen beat that choice by 5% or more at
// 65 of 96 shapes, by up to 3.3x (dG W at B=1, H=512: 43 against 142 us). So the choice is made
// on the machine that runs it: the first product of each kind times every candidate on the
// call's own operands and keeps the fastest for the life of the process: repeated calls run the
// same kernels and give the same bits, while two processes may choose differently where two
// candidates time alike, and then differ in the last bits (force one, below, to pin them).
//
// A kind is a ProductKey: the product's sizes (M rounded up to a power of two, so batches of
// one size class share one choice), layout, accumulation, dtype and thread count. Timing: one
// warm-up call each (oneDNN builds its primitive there), then three rounds that time each
// candidate in turn over enough repeats to last about 50 us, keeping each one's fastest round
// (the least disturbed). A choice thus costs a few dozen products once.
//
// Two families of products choose this way: the products that run once (cells, T=1 layers, the
// input projection and weight gradients: cell.cpp, matmul.cpp), among our kernels, oneDNN's
// matmul and ATen's product; and a recurrence thread's products (product.h), among own, brgemm
// and mkl, where the same Xeon ran the float32 LSTM at T=100, B=64, H=512 in 128 ms on brgemm
// and 92 on MKL's packed GEMM (torch.nn: 90), while on the EPYC MKL's generic code lost.
//
// GATED_KERNELS_CELL_GEMM forces one candidate of the first family (for A/B runs and for the
// tests that must reach every kernel wherever they run): auto (default), own, onednn, aten or
// float.
// Read on every call; a forced candidate that cannot take a product leaves it to the timed
// choice. GATED_KERNELS_CPU_GEMM does the same for the second (cpu_info.h).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

namespace gated_kernels {

// kFloat: a bfloat16 product as ATen's float product of the operands widened to float, rounded
// once (matmul.h).
enum class Candidate { kOwn, kOnednn, kAten, kFloat };

constexpr int kCandidates = 4;

// What decides which candidate wins: a tag naming the caller, M's size class, N, K, the
// operands' layouts, whether the product accumulates, the dtype, the threads running at once.
using ProductKey = std::array<int64_t, 9>;

ProductKey product_key(int64_t tag, int64_t M, int64_t N, int64_t K, bool a_rows, bool b_rows,
                       bool accumulate, int64_t dtype);

// The index of the candidate to run among `allowed` (true for each that can take this product, at
// least one): the only one if just one is, else the fastest for `key`, timed once through
// run(index), which must compute the product into scratch memory (its first call may also set
// the candidate up: it is not timed).
int fastest_of(const ProductKey& key, const std::vector<bool>& allowed,
               const std::function<void(int)>& run);

// fastest_of for the products that run once, GATED_KERNELS_CELL_GEMM's choice first.
Candidate fastest(const ProductKey& key, const std::array<bool, kCandidates>& allowed,
                  const std::function<void(Candidate)>& run);

}  // namespace gated_kernels
