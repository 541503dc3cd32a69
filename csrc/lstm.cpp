// LSTM recurrence on the CPU: one layer, one direction, the whole sequence.
//
// lstm_forward(xg, w_hh, w_hr, h0, c0, lengths, reverse) -> (y, h_n, c_n, gates, c_all)
//   xg      [T, B, 4H]  input gates x W_ih^T + b_ih + b_hh, gate order i, f, g, o
//   w_hh    [4H, P]     recurrent weight (P = proj_size if w_hr is given, else H)
//   w_hr    [P, H]      optional projection, h = W_hr (o * tanh(c))
//   h0      [B, P], c0 [B, H]
//   lengths [B] int64   optional, each in [1, T]: row b runs steps t < lengths[b] and carries its
//                       state through the rest; y is 0 there
//   reverse             run t = T-1 .. 0 (a row starts at lengths[b]-1)
//   y       [T, B, P], h_n [B, P], c_n [B, H]
//   gates   [T, B, 4H]  post-activation i, f, g, o, saved for backward (0 past a row's length)
//   c_all   [T, B, H]   cell state after each step (carried past a row's length)
//   gates and c_all are in the accumulation type (float for bfloat16 inputs). No output aliases
//   an input.
//
// lstm_inference(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse) -> (y, h_n, c_n)
//   x       [T, B, I]   the layer's input
//   w_ih    [4H, I]     input weight; bias [4H] optional, b_ih + b_hh
//   lstm_forward's first three outputs for xg = x W_ih^T + bias, without allocating or writing
//   gates and c_all, and without making xg: each thread computes its units' input gates a chunk
//   of steps at a time (input_gates.h). For callers that need no gradient. The values equal
//   lstm_forward's up to the summation order of the input products.
//
// lstm_forward_from_input(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse)
//   -> (y, h_n, c_n, gates, c_all)
//   lstm_forward's outputs from the layer input, its input gates made as lstm_inference makes
//   them: the training path never holds xg [T, B, 4H] (T=100 B=64 H=256: input projection and
//   lstm_forward 63.3 ms, this 34.6 ms on the EPYC; T=100 B=16 H=256 10.2 -> 9.2 ms).
//
// lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, reverse, y, gates, c_all)
//   -> (dxg [T, B, 4H], dw_hh [4H, P], dw_hr [P, H] or [0], dh0 [B, P], dc0 [B, H])
//   dxg is dG, the gradient of the pre-activation gates; the caller turns it into dx, dW_ih and
//   the bias gradients with matrix products.
#include "common.h"
#include "input_gates.h"
#include "product.h"
#include "team.h"

#include <torch/library.h>

namespace gated_kernels {
namespace {

struct LstmSizes {
  int64_t T, B, H, P;
};

// Checks the weights and initial states against T, B, H (taken from xg or the saved gates) and
// the dtype of xg; returns the sizes with P.
LstmSizes check_lstm_args(int64_t T, int64_t B, int64_t H, at::ScalarType dtype,
                          const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                          const at::Tensor& h0, const at::Tensor& c0) {
  int64_t P = H;
  if (w_hr.has_value()) {
    const at::Tensor& w = *w_hr;
    GK_CHECK_DIM(w, "w_hr", 2, "[P, H]");
    GK_CHECK_SIZE(w, "w_hr", 1, H, "H (the hidden size)");
    GK_CHECK_DTYPE(w, "w_hr", dtype);
    GK_CHECK_CPU(w, "w_hr");
    P = w.size(0);
  }
  GK_CHECK_DIM(w_hh, "w_hh", 2, "[4H, P]");
  GK_CHECK_SIZE(w_hh, "w_hh", 0, 4 * H, "4H (the gate width)");
  GK_CHECK_SIZE(w_hh, "w_hh", 1, P, "P (w_hr.size(0), or H without projection)");
  GK_CHECK_DIM(h0, "h0", 2, "[B, P]");
  GK_CHECK_SIZE(h0, "h0", 0, B, "B (the batch size)");
  GK_CHECK_SIZE(h0, "h0", 1, P, "P (w_hr.size(0), or H without projection)");
  GK_CHECK_DIM(c0, "c0", 2, "[B, H]");
  GK_CHECK_SIZE(c0, "c0", 0, B, "B (the batch size)");
  GK_CHECK_SIZE(c0, "c0", 1, H, "H (the hidden size)");
  GK_CHECK_DTYPE(w_hh, "w_hh", dtype);
  GK_CHECK_DTYPE(h0, "h0", dtype);
  GK_CHECK_DTYPE(c0, "c0", dtype);
  GK_CHECK_CPU(w_hh, "w_hh");
  GK_CHECK_CPU(h0, "h0");
  GK_CHECK_CPU(c0, "c0");
  return {T, B, H, P};
}

// One thread's part of the forward: its hidden units and projected units, its rows of W_hh
// (i, f, g, o of its units, side by side) and of W_hr, and its copy of the pass arguments.
template <typename scalar_t>
struct LstmForwardThread {
  using acc_t = at::opmath_type<scalar_t>;
  UnitRange units, proj_units;
  InputGates<scalar_t> input;                      // x_t W_ih^T + bias for its units
  ThreadProduct<scalar_t> recurrent;                  // h_{t-1} W_hh^T for its units
  std::optional<ThreadProduct<scalar_t>> projection;  // m W_hr^T for its projected units
  LstmForwardStep<scalar_t> step;
};

template <typename scalar_t>
void lstm_forward_loop(const LstmSizes& n, const GateInputs& in, const at::Tensor& w_hh,
                       const at::Tensor& w_hr, const at::Tensor& lengths, bool reverse,
                       at::Tensor& y, at::Tensor& h_state, at::Tensor& c_state, at::Tensor& gates,
                       at::Tensor& c_all) {
  // gates and c_all undefined: inference, nothing saved for backward.
  const bool save = gates.defined();
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = n.T, B = n.B, H = n.H, P = n.P;
  const bool proj = w_hr.defined();
  // Step s reads h_{t-1} from h[s % 2] and writes h_t into the other buffer: a thread may start
  // writing its units of h_t while another still multiplies by h_{t-1}.
  at::Tensor h = at::empty({2, B, P}, h_state.options());
  h[0].copy_(h_state);
  // o * tanh(c) for the whole batch: the projection's input (without projection it is h_t).
  at::Tensor m = proj ? at::zeros({B, H}, h_state.options()) : at::Tensor();

  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  const std::vector<int64_t> running = running_rows(len, T, B);
  scalar_t* y_p = y.data_ptr<scalar_t>();
  acc_t* h_p[2] = {h[0].data_ptr<acc_t>(), h[1].data_ptr<acc_t>()};
  const auto& kernels = pointwise_kernels<scalar_t>();
  const auto pass = save ? kernels.lstm_forward : kernels.lstm_inference;

  const auto setup = [&](int tid, int nthreads) {
    const UnitRange units = team_units(H, tid, nthreads);
    // The mkl kernel packs a team's products, but not a B=1 product whose rows outgrow half of
    // a core's L2 (Xeon, 2 MB L2, T=100, B=1: H=256, 0.5 MB a thread, packed 3.4 vs 4.7 ms;
    // H=512, 2 MB, packed 5.8 vs 4.5 ms). The other kernels ignore the slot.
    const bool pack = nthreads > 1 &&
                      (B > 1 || 4 * units.size() * P * w_hh.element_size() <= l2_bytes() / 2);
    const PackSlot slot = pack ? PackSlot::kRecurrent : PackSlot::kNone;
    LstmForwardThread<scalar_t> thread{
        units, team_units(P, tid, nthreads), InputGates<scalar_t>::make(in, 4, units, nthreads > 1,
                                                               running),
        ThreadProduct<scalar_t>(gate_columns(w_hh, 4, units), h, slot), std::nullopt, {}};
    if (proj) {
      thread.projection.emplace(
          std::vector<at::Tensor>{
              w_hr.narrow(0, thread.proj_units.begin, thread.proj_units.size()).t()},
          m.unsqueeze(0), team_pack(nthreads, PackSlot::kProjection));
    }
    thread.step = {0, B, H, P, len, nullptr, 0, 0, 0, nullptr, units.begin, units.size(),
                   c_state.data_ptr<acc_t>(), save ? c_all.data_ptr<acc_t>() : nullptr,
                   save ? gates.data_ptr<acc_t>() : nullptr, nullptr, y_p, proj};
    return thread;
  };

  const auto loop = [&](int, int, LstmForwardThread<scalar_t>& thread, Team& team) {
    const UnitRange units = thread.units, pu = thread.proj_units;
    LstmForwardStep<scalar_t>& step = thread.step;
    for (const auto s : c10::irange(T)) {
      const int64_t t = time_index(s, T, reverse);
      acc_t* h_prev = h_p[s % 2];
      acc_t* h_next = h_p[(s + 1) % 2];
      team.work([&] {
        if (units.size() == 0) return;
        // G_t = xg_t + h_{t-1} W_hh^T: the product here, the sum inside the pointwise pass.
        thread.input.prepare(t);
        step.gh = thread.recurrent(s % 2, running[t]);
        step.t = t;
        thread.input.point(step);
        step.m = proj ? m.data_ptr<acc_t>() : h_next;
        for (const auto b : c10::irange(B)) {
          pass(step, b * H + units.begin, b * H + units.end);
          // Without projection, rows past their length carry h (the pass wrote active rows).
          if (!proj && !row_active(len, b, t)) {
            std::copy(h_prev + b * H + units.begin, h_prev + b * H + units.end,
                      h_next + b * H + units.begin);
          }
        }
      });
      if (proj) {
        team.barrier();  // every unit of m written
        // h_t = (o * tanh(c)) W_hr^T on its projected units; only active rows take it.
        team.work([&] {
          if (pu.size() == 0) return;
          const acc_t* hp = (*thread.projection)(0, running[t]);
          for (const auto b : c10::irange(B)) {
            scalar_t* y_row = y_p + (t * B + b) * P;
            if (row_active(len, b, t)) {
              const acc_t* hp_row = hp + b * pu.size();
              std::copy(hp_row, hp_row + pu.size(), h_next + b * P + pu.begin);
              for (const auto k : c10::irange(pu.size())) {
                y_row[pu.begin + k] = static_cast<scalar_t>(hp_row[k]);
              }
            } else {
              std::copy(h_prev + b * P + pu.begin, h_prev + b * P + pu.end,
                        h_next + b * P + pu.begin);
              std::fill(y_row + pu.begin, y_row + pu.end, scalar_t(0));
            }
          }
        });
      }
      team.barrier();  // h_t complete before any thread multiplies by it
    }
  };

  Team::run(team_size(H), setup, loop);
  h_state.copy_(h[T % 2]);
}

// The forward of both ops, from the sizes already checked; `save` allocates and fills gates and
// c_all (else they stay undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_run(
    const GateInputs& in, const LstmSizes& n, at::ScalarType dtype, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, bool reverse, bool save) {
  const auto options = h0.options().dtype(dtype);
  const auto acc_opts = options.dtype(at::toOpMathType(dtype));
  at::Tensor y = new_output({n.T, n.B, n.P}, options);
  at::Tensor gates = save ? new_output({n.T, n.B, 4 * n.H}, acc_opts) : at::Tensor();
  at::Tensor c_all = save ? new_output({n.T, n.B, n.H}, acc_opts) : at::Tensor();
  // The running state in the accumulation type; it becomes h_n and c_n.
  at::Tensor h_state = to_acc(h0, /*copy=*/true);
  at::Tensor c_state = to_acc(c0, /*copy=*/true);

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "lstm_forward_cpu", [&] {
    lstm_forward_loop<scalar_t>(n, in, w_hh.contiguous(), w_hr ? w_hr->contiguous() : at::Tensor(),
                                lengths, reverse, y, h_state, c_state, gates, c_all);
  });
  return {y, h_state.to(dtype), c_state.to(dtype), gates, c_all};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    bool reverse) {
  const KernelGuard guard;
  const int64_t H = check_input_gates(xg, 4, "i, f, g, o");
  const LstmSizes n = check_lstm_args(xg.size(0), xg.size(1), H, xg.scalar_type(), w_hh, w_hr,
                                      h0, c0);
  return lstm_run({xg.contiguous()}, n, xg.scalar_type(), w_hh, w_hr, h0, c0,
                  check_lengths(lengths, n.T, n.B), reverse, /*save=*/true);
}

// Both operators that take the layer input x: lstm_run with the input gates made a chunk at a
// time from x, saving gates and c_all or not.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_from_input(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  const KernelGuard guard;
  const int64_t H = check_input_projection(x, w_ih, bias, 4);
  const LstmSizes n = check_lstm_args(x.size(0), x.size(1), H, x.scalar_type(), w_hh, w_hr, h0,
                                      c0);
  return lstm_run({at::Tensor(), x.contiguous(), w_ih, bias ? *bias : at::Tensor()}, n,
                  x.scalar_type(), w_hh, w_hr, h0, c0, check_lengths(lengths, n.T, n.B), reverse,
                  save);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_inference_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& lengths, bool reverse) {
  auto [y, h_n, c_n, gates, c_all] =
      lstm_from_input(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse, /*save=*/false);
  return {y, h_n, c_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_forward_from_input_cpu(const at::Tensor& x, const at::Tensor& w_ih,
                            const std::optional<at::Tensor>& bias, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                            const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
                            bool reverse) {
  return lstm_from_input(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse, /*save=*/true);
}

// One thread's part of the backward: a range of batch rows, and the products on those rows.
template <typename scalar_t>
struct LstmBackwardThread {
  UnitRange rows;
  ThreadProduct<scalar_t> recurrent;                  // dG_t W_hh on its rows
  std::optional<ThreadProduct<scalar_t>> projection;  // dh W_hr on its rows
};

template <typename scalar_t>
void lstm_backward_loop(const LstmSizes& n, const at::Tensor& dy, const at::Tensor& w_hh,
                        const at::Tensor& w_hr, const at::Tensor& c0, const at::Tensor& lengths,
                        bool reverse, const at::Tensor& gates, const at::Tensor& c_all,
                        at::Tensor& dh, at::Tensor& dc, at::Tensor& dG, at::Tensor& dh_all,
                        at::Tensor& m_all) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = n.T, B = n.B, H = n.H, P = n.P, G = 4 * H;
  const bool proj = w_hr.defined();
  at::Tensor dm = proj ? at::empty({B, H}, dh.options()) : at::Tensor();  // dh W_hr

  const scalar_t* dy_p = dy.data_ptr<scalar_t>();
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  const std::vector<int64_t> running = running_rows(len, T, B);
  acc_t* dh_p = dh.data_ptr<acc_t>();
  acc_t* dm_p = proj ? dm.data_ptr<acc_t>() : nullptr;
  acc_t* dh_all_p = proj ? dh_all.data_ptr<acc_t>() : nullptr;
  const acc_t* gates_p = gates.data_ptr<acc_t>();
  const acc_t* c_all_p = c_all.data_ptr<acc_t>();
  const LstmBackwardStep<scalar_t> step0{0, T, B, H, reverse, proj, len, gates_p, c_all_p,
                                         c0.data_ptr<acc_t>(), proj ? dm_p : dh_p,
                                         dc.data_ptr<acc_t>(), dG.data_ptr<scalar_t>(),
                                         proj ? m_all.data_ptr<acc_t>() : nullptr};
  const auto pass = pointwise_kernels<scalar_t>().lstm_backward;

  // Every step of a batch row depends only on that row: the threads split the batch and never
  // wait for each other. (Splitting the hidden units instead, as the forward does, needs all of
  // dG_t on every thread each step; measured slower at B=64, H=256: 33 vs 27 ms.)
  const auto setup = [&](int tid, int nthreads) {
    const UnitRange rows = split_range(B, tid, nthreads);
    // dG_t's rows of every step, [T, rows, 4H]: call t multiplies step t's.
    const at::Tensor dG_rows = dG.narrow(1, rows.begin, rows.size());
    LstmBackwardThread<scalar_t> thread{
        rows, ThreadProduct<scalar_t>({w_hh}, dG_rows, team_pack(nthreads, PackSlot::kRecurrent)),
        std::nullopt};
    if (proj) {
      thread.projection.emplace(
          std::vector<at::Tensor>{w_hr},
          dh.narrow(0, rows.begin, rows.size()).unsqueeze(0),
          team_pack(nthreads, PackSlot::kProjection));
    }
    return thread;
  };

  const auto backward_rows = [&](LstmBackwardThread<scalar_t>& thread) {
    const UnitRange rows = thread.rows;
    if (rows.size() == 0) return;
    LstmBackwardStep<scalar_t> step = step0;
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_index(s, T, reverse);
      // The thread's rows up to the last one still running: all its products need.
      const int64_t m = std::clamp<int64_t>(running[t] - rows.begin, 0, rows.size());
      // dh += dy_t on active rows (y is a constant 0 past a row's length).
      for (int64_t b = rows.begin; b < rows.end; ++b) {
        if (!row_active(len, b, t)) continue;
        const scalar_t* dy_row = dy_p + (t * B + b) * P;
        for (const auto k : c10::irange(P)) dh_p[b * P + k] += static_cast<acc_t>(dy_row[k]);
      }
      if (proj) {
        // dW_hr = sum_t dh_t^T m_t needs dh_t, kept per step; dm = dh W_hr.
        std::copy(dh_p + rows.begin * P, dh_p + rows.end * P, dh_all_p + (t * B + rows.begin) * P);
        const acc_t* dm_rows = (*thread.projection)(0, m);
        std::copy(dm_rows, dm_rows + m * H, dm_p + rows.begin * H);
      }
      step.t = t;
      pass(step, rows.begin * H, rows.end * H);
      if (s > 0) {
        // The next step's saved gates and cell states come from memory (26 MB of gates at
        // T=100, B=64, H=256): requested now, they arrive while the product runs.
        const int64_t t_next = time_index(s - 1, T, reverse);
        prefetch(gates_p + (t_next * B + rows.begin) * G, rows.size() * G);
        prefetch(c_all_p + (t_next * B + rows.begin) * H, rows.size() * H);
      }
      // dh_{t-1} = dG_t W_hh on active rows; carried rows keep dh (their dG row is 0).
      const acc_t* dh_rows = thread.recurrent(t, m);
      for (int64_t b = rows.begin; b < rows.begin + m; ++b) {
        if (!row_active(len, b, t)) continue;
        const acc_t* src = dh_rows + (b - rows.begin) * P;
        std::copy(src, src + P, dh_p + b * P);
      }
    }
  };

  // No barrier: each thread's whole loop is one piece of work.
  const auto loop = [&](int, int, LstmBackwardThread<scalar_t>& thread, Team& team) {
    team.work([&] { backward_rows(thread); });
  };
  // One batch row cannot be split: the threads split the hidden units instead, as the forward
  // does, and meet once a step, when all of dG_t is written and before anyone multiplies by it.
  // Each thread then reads only its columns of W_hh. lstm_backward B=1 on the EPYC Zen 4 (1 MB
  // L2), op medians, one thread against the split: T=100 H=256 1.52 -> 0.95 ms, T=500 H=256
  // 7.66 -> 4.59 ms, T=100 H=512 6.13 -> 4.03 ms. With MKL's products (GATED_KERNELS_CPU_GEMM=
  // mkl) the split stays where it gained on the Xeon, W_hh under half of L2: there one thread
  // let MKL fork two for every step's product, and at H=384 the split lost (16.4 against
  // 10.4-12.3 ms, T=500), against a gain at H=128 (T=500: 3.1 -> 2.2 ms).
  const bool split_units =
      B == 1 && !proj && team_size(H) > 1 &&
      (gemm_choice() != GemmChoice::kMkl ||
       static_cast<int64_t>(w_hh.nbytes()) < l2_bytes() / 2);
  if (!split_units) {
    Team::run(row_team_size(B), setup, loop);
    return;
  }
  const auto unit_setup = [&](int tid, int nthreads) {
    const UnitRange units = team_units(H, tid, nthreads);
    // Its columns of W_hh as [4H, units], packed.
    const at::Tensor w = w_hh.narrow(1, units.begin, units.size());
    return std::make_pair(
        units, ThreadProduct<scalar_t>({w}, dG, team_pack(nthreads, PackSlot::kRecurrent)));
  };
  const auto unit_loop = [&](int, int, auto& thread, Team& team) {
    auto& [units, recurrent] = thread;
    LstmBackwardStep<scalar_t> step = step0;
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_index(s, T, reverse);
      const bool active = row_active(len, 0, t);
      team.work([&] {
        if (units.size() == 0) return;
        if (active) {
          for (const auto k : c10::irange(units.begin, units.end)) {
            dh_p[k] += static_cast<acc_t>(dy_p[t * H + k]);
          }
        }
        step.t = t;
        pass(step, units.begin, units.end);
      });
      team.barrier();  // dG_t complete
      team.work([&] {
        if (units.size() == 0 || !active) return;  // a carried row keeps dh
        const acc_t* d = recurrent(t);
        std::copy(d, d + units.size(), dh_p + units.begin);
      });
    }
  };
  Team::run(team_size(H), unit_setup, unit_loop);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& dh_n, const at::Tensor& dc_n,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& lengths_in, bool reverse,
    const at::Tensor& y, const at::Tensor& gates_in, const at::Tensor& c_all_in) {
  const KernelGuard guard;
  GK_CHECK_DIM(gates_in, "gates", 3, "[T, B, 4H]");
  GK_CHECK_FLOAT_DTYPE(h0, "h0");
  const LstmSizes n = check_lstm_args(gates_in.size(0), gates_in.size(1), gates_in.size(2) / 4,
                                      h0.scalar_type(), w_hh, w_hr, h0, c0);
  const at::Tensor lengths = check_lengths(lengths_in, n.T, n.B);
  const auto dtype = h0.scalar_type();
  const auto acc_type = at::toOpMathType(dtype);
  check_saved("dy", dy_in, {n.T, n.B, n.P}, dtype);
  check_saved("y", y, {n.T, n.B, n.P}, dtype);
  check_saved("gates", gates_in, {n.T, n.B, 4 * n.H}, acc_type);
  check_saved("c_all", c_all_in, {n.T, n.B, n.H}, acc_type);
  check_saved("dh_n", dh_n, {n.B, n.P}, dtype);
  check_saved("dc_n", dc_n, {n.B, n.H}, dtype);

  const bool proj = w_hr.has_value();
  const auto acc_opts = h0.options().dtype(acc_type);
  // dG is written in the input's dtype, straight into the output: for bfloat16 the recurrent
  // product (brgemm) reads it in bfloat16 anyway, and dW_hh becomes a bfloat16 product at twice
  // the float rate; the running dh and dc stay in float32.
  at::Tensor dG = new_output({n.T, n.B, 4 * n.H}, h0.options());
  at::Tensor dh = to_acc(dh_n, /*copy=*/true);
  at::Tensor dc = to_acc(dc_n, /*copy=*/true);
  at::Tensor dh_all = proj ? at::empty({n.T, n.B, n.P}, acc_opts) : at::Tensor();
  at::Tensor m_all = proj ? at::empty({n.T, n.B, n.H}, acc_opts) : at::Tensor();
  const at::Tensor w_hh_in = w_hh.contiguous();
  const at::Tensor w_hr_in = proj ? w_hr->contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "lstm_backward_cpu", [&] {
    lstm_backward_loop<scalar_t>(n, dy_in.contiguous(), w_hh_in, w_hr_in, to_acc(c0), lengths,
                                 reverse, gates_in.contiguous(), c_all_in.contiguous(), dh, dc,
                                 dG, dh_all, m_all);
  });

  // The weight gradients as one product each over all T*B rows, after the loop.
  const int64_t TB = n.T * n.B;
  at::Tensor dw_hh = times_previous_hidden(dG, y.contiguous(), h0.contiguous(), lengths, reverse);
  at::Tensor dw_hr = proj ? at::mm(dh_all.view({TB, n.P}).t(), m_all.view({TB, n.H})).to(dtype)
                          : at::empty({0}, h0.options());
  return {dG, dw_hh, dw_hr, dh.to(dtype), dc.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_inference", &lstm_inference_cpu);
  m.impl("lstm_forward_from_input", &lstm_forward_from_input_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace gated_kernels
