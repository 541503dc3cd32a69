// The fastest of a few ways to compute one product, found by timing them on this machine.
//
// Which library multiplies small float32 matrices fastest depends on the CPU in ways no feature
// bit tells: ATen's product is MKL's, which runs AVX-512 code on an Intel Xeon and generic
// SSE / AVX2 code on an AMD EPYC (reference/cpu_portability.md, section 3); oneDNN compiles for
// the instruction set on both; our own kernels stream a weight for one or two rows. Measured for
// a cell's products (2 threads): on the EPYC Zen 4 our kernels and oneDNN beat ATen up to 3.8x
// at B=1 (csrc/cell.cpp), while on an Intel Xeon (AMX) ATen beat that choice by 5% or more at
// 65 of 96 shapes, by up to 3.3x (dG W at B=1, H=512: 43 against 142 us). So the choice is made
// on the machine that runs it: the first product of each kind times every candidate on the
// call's own operands and keeps the fastest for the life of the process.
//
// A kind is a ProductKey: the product's sizes (M rounded up to a power of two, so batches of
// one size class share one choice), layout, accumulation, dtype and thread count. Timing: one
// warm-up call each (oneDNN builds its primitive there), then three rounds that time each
// candidate in turn over enough repeats to last about 50 us, keeping each one's fastest round
// (the least disturbed). A choice thus costs a few dozen products once.
//
// GATED_KERNELS_CELL_GEMM forces one candidate (for A/B runs and for the tests that must reach
// every kernel wherever they run): auto (default), own, onednn or aten. Read on every call; a
// forced candidate that cannot take a product leaves it to the timed choice.
#pragma once

#include <array>
#include <cstdint>
#include <functional>

namespace gated_kernels {

enum class Candidate { kOwn, kOnednn, kAten };

constexpr int kCandidates = 3;

// What decides which candidate wins: a tag naming the caller, M's size class, N, K, the
// operands' layouts, whether the product accumulates, the dtype, the thread count.
using ProductKey = std::array<int64_t, 9>;

ProductKey product_key(int64_t tag, int64_t M, int64_t N, int64_t K, bool a_rows, bool b_rows,
                       bool accumulate, int64_t dtype);

// The candidate to run among `allowed` (true for each Candidate that can take this product, at
// least one): the forced one if allowed, the only one if just one is, else the fastest for
// `key`, timed once through run(candidate), which must compute the product into scratch memory.
Candidate fastest(const ProductKey& key, const std::array<bool, kCandidates>& allowed,
                  const std::function<void(Candidate)>& run);

}  // namespace gated_kernels
