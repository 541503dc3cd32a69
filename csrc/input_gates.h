// Where a forward thread of the team (team.h) reads the input gates of its units at step t,
// xg_t = x_t W_ih^T + bias, for the pointwise pass:
//   - precomputed: the whole xg [T, B, num_gates * H] made before the op (lstm_forward and
//     gru_forward, whose callers also need it for nothing else but keep the op boundary of
//     DESIGN.md); the next step's rows are prefetched while the product runs;
//   - from the input: the inference ops take x [T, B, I] and W_ih, and each thread computes the
//     gates of its own units a chunk of steps at a time into a buffer that stays in its cache.
//     The [T, B, G] tensor is never made: at T=500, B=64, H=128 it is 65 MB of fresh pages a
//     call, whose page faults alone took 18 ms on the build machine (torch.mm of that size into
//     a new tensor 33.8 ms, into a reused one 16.1 ms), and adding the bias took another copy.
// The pass reads gate k of unit j of row b at
// data[((t - t0) * B + b) * G_t + k * units + j - first] with G_t = num_gates * units (see
// LstmForwardStep).
#pragma once

#include "product.h"
#include "team.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace gated_kernels {

// What a forward op was given for its input gates: xg, or x with W_ih and the bias (which, for
// the LSTM, is b_ih + b_hh: both act on the same pre-activation).
struct GateInputs {
  at::Tensor xg, x, w_ih, bias;
};

template <typename scalar_t>
class InputGates {
 public:
  // The thread's source of input gates for its units, from either form of GateInputs.
  // `pack`: the mkl kernel's packing (product.h). `running`: the rows each step's products
  // cover (running_rows in pointwise.h), which must outlive this.
  static InputGates make(const GateInputs& in, int64_t num_gates, UnitRange units, bool pack,
                         const std::vector<int64_t>& running) {
    return in.xg.defined() ? precomputed(in.xg, num_gates, units)
                           : from_input(in.x, in.w_ih, in.bias, num_gates, units, pack, running);
  }

 public:
  // xg [T, B, num_gates * H], contiguous.
  static InputGates precomputed(const at::Tensor& xg, int64_t num_gates, UnitRange units);
  // x [T, B, I] contiguous; w_ih [num_gates * H, I]; bias [num_gates * H] or undefined. The
  // thread's rows of W_ih (its units of each gate, side by side) are gathered here.
  static InputGates from_input(const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& bias, int64_t num_gates, UnitRange units,
                               bool pack, const std::vector<int64_t>& running);

  // Makes step t's gates readable (see point()); call once per step, in processing order.
  // Allocates nothing.
  void prepare(int64_t t);
  // Points a pass's step arguments (LstmForwardStep, GruForwardStep) at the gates of the step
  // last prepared. Packed rows: that step's rows start at its offset in the chunk, and the pass
  // reads them as a chunk of that one step.
  template <typename Step>
  void point(Step& step) const {
    const bool packed = !offset_.empty();
    step.xg = packed ? data_ + offset_[t_] * num_gates_ * units_ : data_;
    step.xg_t0 = packed ? t_ : t0_;
    step.xg_units = units_;
    step.xg_first = first_;
  }

 private:
  InputGates() = default;

  const scalar_t* data_ = nullptr;
  int64_t t0_ = 0, units_ = 0, first_ = 0, T_ = 0, B_ = 0, H_ = 0, num_gates_ = 0;
  UnitRange own_{0, 0};  // the thread's units
  // From the input only: steps per chunk, the number of whole chunks, the chunk now in data_,
  // and the products of whole chunks and of the shorter last one, if any. The products sum in
  // the accumulation type; for bfloat16 a chunk is rounded into `rounded_`, as the input
  // projection of the training ops rounds xg.
  int64_t chunk_steps_ = 0, whole_chunks_ = 0, chunk_ = -1;
  // Packed rows, for a batch of rows of several lengths: a chunk holds the running rows of
  // consecutive steps (step t's are its first running[t] rows), gathered from x into packed_
  // before its product, so the products cost in proportion to the real lengths. Per step: its
  // chunk, its first row there; per chunk: its first step and its rows.
  std::vector<int64_t> chunk_of_, offset_, chunk_begin_, chunk_rows_;
  const int64_t* running_ = nullptr;
  at::Tensor x_, packed_;
  int64_t t_ = 0;  // the step last prepared
  std::shared_ptr<ThreadProduct<scalar_t>> whole_, last_;
  at::Tensor rounded_;
};

}  // namespace gated_kernels
