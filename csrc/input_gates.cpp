#include "input_gates.h"

#include "panel.h"

#include <c10/util/irange.h>

#include <algorithm>
#include <cstring>

namespace gated_kernels {
namespace {

// Input rows per chunk product: about 128 (B=1: 128 steps, B=16: 8, B=64: 2), enough for an
// efficient GEMM, while the chunk of gates stays within a core's L2 next to the thread's rows
// of W_hh (at H=512, B=64: 2 steps x 64 rows x 4 x 256 units x 4 bytes = 0.5 MB). Tried on the
// EPYC Zen 4 (1 MB L2), lstm_inference, best of three medians for 32 / 64 / 128 rows: T=100
// B=16 H=256 9.05 / 9.01 / 8.90 ms, T=500 B=16 H=128 12.4 / 11.8 / 11.8, T=500 B=1 H=256
// 4.56 / 4.61 / 4.66, T=100 B=16 H=128 2.33 / 2.32 / 2.37; T=100 B=16 H=512 took 35.4 / 35.0 /
// 38.5 but T=100 B=1 H=512 5.44 / 5.45 / 4.69. No rule from the L2 size fitted both ends, so
// the count stays.
constexpr int64_t kChunkRows = 128;

}  // namespace

template <typename scalar_t>
InputGates<scalar_t> InputGates<scalar_t>::precomputed(const at::Tensor& xg, int64_t num_gates,
                                                       UnitRange units) {
  InputGates gates;
  gates.data_ = xg.data_ptr<scalar_t>();
  gates.B_ = xg.size(1);
  gates.H_ = xg.size(2) / num_gates;
  gates.num_gates_ = num_gates;
  gates.units_ = gates.H_;
  gates.own_ = units;
  return gates;
}

template <typename scalar_t>
InputGates<scalar_t> InputGates<scalar_t>::from_input(const at::Tensor& x, const at::Tensor& w_ih,
                                                      const at::Tensor& bias, int64_t num_gates,
                                                      UnitRange units, bool pack,
                                                      const std::vector<int64_t>& running) {
  InputGates gates;
  const int64_t T = x.size(0), B = x.size(1);
  gates.B_ = B;
  gates.T_ = T;
  gates.H_ = w_ih.size(0) / num_gates;
  gates.num_gates_ = num_gates;
  gates.units_ = units.size();
  gates.first_ = units.begin;
  gates.own_ = units;
  const std::vector<at::Tensor> w = gate_columns(w_ih, num_gates, units);
  const at::Tensor b = bias.defined() ? gate_rows(bias, num_gates, units) : at::Tensor();
  const int64_t I = x.size(2);
  const auto pack_slot = pack ? PackSlot::kInput : PackSlot::kNone;
  if (*std::min_element(running.begin(), running.end()) < B) {
    // Rows of several lengths: chunks of consecutive steps' running rows, up to kChunkRows (or
    // one step's B) each.
    const int64_t cap = std::max(kChunkRows, B);
    gates.chunk_of_.resize(T);
    gates.offset_.resize(T);
    for (const auto t : c10::irange(T)) {
      if (gates.chunk_rows_.empty() || gates.chunk_rows_.back() + running[t] > cap) {
        gates.chunk_begin_.push_back(t);
        gates.chunk_rows_.push_back(0);
      }
      gates.chunk_of_[t] = static_cast<int64_t>(gates.chunk_rows_.size()) - 1;
      gates.offset_[t] = gates.chunk_rows_.back();
      gates.chunk_rows_.back() += running[t];
    }
    gates.running_ = running.data();
    gates.x_ = x;
    gates.packed_ = at::empty({1, cap, I}, x.options());
    gates.whole_ = std::make_shared<ThreadProduct<scalar_t>>(w, gates.packed_, pack_slot, b);
    if constexpr (!std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      gates.rounded_ = at::empty({cap, num_gates * units.size()}, x.options());
    }
    return gates;
  }
  const int64_t steps = std::clamp<int64_t>((kChunkRows + B - 1) / std::max<int64_t>(B, 1), 1, T);
  gates.chunk_steps_ = steps;
  gates.whole_chunks_ = T / steps;
  // The input rows of every whole chunk, [whole_chunks, steps * B, I]; MKL's packed product is
  // specific to the row count, so a shorter last chunk gets a product of its own.
  if (gates.whole_chunks_ > 0) {
    const at::Tensor whole =
        x.narrow(0, 0, gates.whole_chunks_ * steps).view({gates.whole_chunks_, steps * B, I});
    gates.whole_ = std::make_shared<ThreadProduct<scalar_t>>(w, whole, pack_slot, b);
  }
  if (T % steps != 0) {
    const at::Tensor rest = x.narrow(0, gates.whole_chunks_ * steps, T % steps).flatten(0, 1);
    gates.last_ = std::make_shared<ThreadProduct<scalar_t>>(w, rest.unsqueeze(0),
                                                            PackSlot::kNone, b);
  }
  if constexpr (!std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    gates.rounded_ = at::empty({steps * B, num_gates * units.size()}, x.options());
  }
  return gates;
}

template <typename scalar_t>
void InputGates<scalar_t>::prepare(int64_t t) {
  t_ = t;
  if (chunk_steps_ == 0 && offset_.empty()) {
    // Precomputed: ask for step t's rows of its units now; they arrive while the recurrent
    // product runs (loaded in the pass instead, the waits were about 40% of the LSTM pass at
    // T=100, B=64, H=256, where xg is 26 MB).
    const int64_t G = num_gates_ * H_;
    for (const auto b : c10::irange(B_)) {
      for (const auto k : c10::irange(num_gates_)) {
        prefetch(data_ + (t * B_ + b) * G + k * H_ + own_.begin, own_.size());
      }
    }
    return;
  }
  const bool packed = !offset_.empty();
  const int64_t chunk = packed ? chunk_of_[t] : t / chunk_steps_;
  if (chunk == chunk_) return;
  chunk_ = chunk;
  int64_t rows = 0;
  const at::opmath_type<scalar_t>* sums = nullptr;
  if (packed) {
    // Gather the chunk's running rows: step s's first running[s] rows of x, one block each.
    rows = chunk_rows_[chunk];
    const int64_t I = x_.size(2);
    const auto* x = static_cast<const char*>(x_.data_ptr());
    auto* to = static_cast<char*>(packed_.data_ptr());
    const int64_t row_bytes = I * x_.element_size();
    for (int64_t s = chunk_begin_[chunk]; s < T_ && chunk_of_[s] == chunk; ++s) {
      std::memcpy(to + offset_[s] * row_bytes, x + s * B_ * row_bytes, running_[s] * row_bytes);
    }
    sums = (*whole_)(0, rows);
  } else {
    t0_ = chunk * chunk_steps_;
    rows = std::min(chunk_steps_, T_ - t0_) * B_;
    sums = chunk < whole_chunks_ ? (*whole_)(chunk) : (*last_)(0);
  }
  if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    data_ = sums;
  } else {
    scalar_t* rounded = rounded_.data_ptr<scalar_t>();
    panel_kernels().round_bf16(sums, rounded, rows * num_gates_ * units_);
    data_ = rounded;
  }
}

template class InputGates<float>;
template class InputGates<double>;
template class InputGates<c10::BFloat16>;

}  // namespace gated_kernels
