// GRU recurrence on the CPU (PyTorch's variant, n = tanh(W_in x + b_in + r * (W_hn h + b_hn))):
// one layer, one direction, the whole sequence.
//
// gru_forward(xg, w_hh, b_hh, h0, lengths, reverse) -> (y, h_n, gates)
//   xg      [T, B, 3H]  input gates x W_ih^T + b_ih, gate order r, z, n
//   w_hh    [3H, H]     recurrent weight
//   b_hh    [3H]        recurrent bias (zeros for bias=False); b_hn must stay inside r * (...)
//   h0      [B, H]
//   lengths [B] int64   optional, each in [1, T]: row b runs steps t < lengths[b] and carries its
//                       state through the rest; y is 0 there
//   reverse             run t = T-1 .. 0 (a row starts at lengths[b]-1)
//   y       [T, B, H], h_n [B, H]
//   gates   [T, B, 4H]  r, z, n and hn = W_hn h + b_hn, saved for backward (0 past a row's
//                       length), in xg's dtype (bfloat16 for bfloat16 inputs: the training
//                       peak; the state itself runs in float32)
//   No output aliases an input.
//
// gru_inference(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse) -> (y, h_n)
//   x [T, B, I], w_ih [3H, I], b_ih [3H] optional: gru_forward's first two outputs for
//   xg = x W_ih^T + b_ih, without gates and without making xg (as lstm_inference).
//
// gru_forward_from_input(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse) -> (y, h_n, gates)
//   gru_forward's outputs from the layer input, without making xg (as lstm_forward_from_input).
//
// gru_backward(dy, dh_n, w_hh, h0, lengths, reverse, y, gates)
//   -> (dxg [T, B, 3H], dw_hh [3H, H], db_hh [3H], dh0 [B, H])
//   dxg = [dr, dz, dn] (pre-activation); the recurrent side sees [dr, dz, dn * r] instead, which
//   gives dW_hh and db_hh.
#include "common.h"
#include "input_gates.h"
#include "product.h"
#include "team.h"

#include <torch/library.h>

namespace gated_kernels {
namespace {

struct GruSizes {
  int64_t T, B, H;
};

GruSizes check_gru_args(int64_t T, int64_t B, int64_t H, at::ScalarType dtype,
                        const at::Tensor& w_hh, const at::Tensor& h0) {
  GK_CHECK_DIM(w_hh, "w_hh", 2, "[3H, H]");
  GK_CHECK_SIZE(w_hh, "w_hh", 0, 3 * H, "3H (the gate width)");
  GK_CHECK_SIZE(w_hh, "w_hh", 1, H, "H (the hidden size)");
  GK_CHECK_DIM(h0, "h0", 2, "[B, H]");
  GK_CHECK_SIZE(h0, "h0", 0, B, "B (the batch size)");
  GK_CHECK_SIZE(h0, "h0", 1, H, "H (the hidden size)");
  GK_CHECK_DTYPE(w_hh, "w_hh", dtype);
  GK_CHECK_DTYPE(h0, "h0", dtype);
  GK_CHECK_CPU(w_hh, "w_hh");
  GK_CHECK_CPU(h0, "h0");
  return {T, B, H};
}

// One thread's part of the forward: its hidden units, its rows of W_hh (r, z, n of its units,
// side by side) and its copy of the pass arguments. See team.h.
template <typename scalar_t>
struct GruForwardThread {
  UnitRange units;
  InputGates<scalar_t> input;                          // x_t W_ih^T + b_ih for its units
  ThreadProduct<scalar_t> recurrent;  // h_{t-1} W_hh^T for its units
  GruForwardStep<scalar_t> step;
};

template <typename scalar_t>
void gru_forward_loop(const GruSizes& n, const GateInputs& in, const at::Tensor& w_hh,
                      const at::Tensor& b_hh, const at::Tensor& lengths, bool reverse,
                      at::Tensor& y, at::Tensor& h_state, at::Tensor& gates) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = n.T, B = n.B, H = n.H;
  const bool save = gates.defined();  // undefined: inference, nothing saved for backward
  // Step s reads h_{t-1} from h[s % 2] and writes h_t into the other buffer (see the LSTM).
  at::Tensor h = at::empty({2, B, H}, h_state.options());
  h[0].copy_(h_state);
  acc_t* h_p[2] = {h[0].data_ptr<acc_t>(), h[1].data_ptr<acc_t>()};
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  const std::vector<int64_t> running = running_rows(len, T, B);
  const auto& kernels = pointwise_kernels<scalar_t>();
  const auto pass = save ? kernels.gru_forward : kernels.gru_inference;

  const auto setup = [&](int tid, int nthreads) {
    const UnitRange units = team_units(H, tid, nthreads);
    // Packed for a team, as the LSTM decides (lstm.cpp).
    const bool pack = nthreads > 1 &&
                      (B > 1 || 3 * units.size() * H * w_hh.element_size() <= l2_bytes() / 2);
    const PackSlot slot = pack ? PackSlot::kRecurrent : PackSlot::kNone;
    GruForwardThread<scalar_t> thread{
        units, InputGates<scalar_t>::make(in, 3, units, nthreads > 1, running),
        ThreadProduct<scalar_t>(gate_columns(w_hh, 3, units), h, slot), {}};
    thread.step = {0, B, H, len, nullptr, 0, 0, 0, nullptr, units.begin, units.size(),
                   b_hh.data_ptr<acc_t>(), nullptr, nullptr,
                   save ? gates.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>()};
    return thread;
  };

  const auto loop = [&](int, int, GruForwardThread<scalar_t>& thread, Team& team) {
    const UnitRange units = thread.units;
    GruForwardStep<scalar_t>& step = thread.step;
    for (const auto s : c10::irange(T)) {
      const int64_t t = time_index(s, T, reverse);
      acc_t* h_prev = h_p[s % 2];
      acc_t* h_next = h_p[(s + 1) % 2];
      team.work([&] {
        if (units.size() == 0) return;
        thread.input.prepare(t);
        step.gh = thread.recurrent(s % 2, running[t]);
        step.t = t;
        thread.input.point(step);
        step.h_prev = h_prev;
        step.h = h_next;
        for (const auto b : c10::irange(B)) {
          pass(step, b * H + units.begin, b * H + units.end);
          // Rows past their length carry h (the pass wrote only active rows).
          if (!row_active(len, b, t)) {
            std::copy(h_prev + b * H + units.begin, h_prev + b * H + units.end,
                      h_next + b * H + units.begin);
          }
        }
      });
      team.barrier();  // h_t complete before any thread multiplies by it
    }
  };

  Team::run(team_size(H), setup, loop);
  h_state.copy_(h[T % 2]);
}

// The forward of both ops, from the sizes already checked; `save` allocates and fills gates
// (else it stays undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_run(
    const GateInputs& in, const GruSizes& n, at::ScalarType dtype, const at::Tensor& w_hh,
    const at::Tensor& b_hh, const at::Tensor& h0, const std::optional<at::Tensor>& lengths,
    bool reverse, bool save) {
  GK_CHECK_DIM(b_hh, "b_hh", 1, "[3H]");
  GK_CHECK_SIZE(b_hh, "b_hh", 0, 3 * n.H, "3H (w_hh.size(0))");
  GK_CHECK_DTYPE(b_hh, "b_hh", dtype);
  GK_CHECK_CPU(b_hh, "b_hh");
  const at::Tensor lens = check_lengths(lengths, n.T, n.B);
  const auto options = h0.options().dtype(dtype);
  at::Tensor y = new_output({n.T, n.B, n.H}, options);
  at::Tensor gates = save ? new_output({n.T, n.B, 4 * n.H}, options) : at::Tensor();
  at::Tensor h_state = to_acc(h0, /*copy=*/true);  // the running state; becomes h_n

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "gru_forward_cpu", [&] {
    gru_forward_loop<scalar_t>(n, in, w_hh.contiguous(), to_acc(b_hh), lens, reverse, y, h_state,
                               gates);
  });
  return {y, h_state.to(dtype), gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  const KernelGuard guard;
  const int64_t H = check_input_gates(xg, 3, "r, z, n");
  const GruSizes n = check_gru_args(xg.size(0), xg.size(1), H, xg.scalar_type(), w_hh, h0);
  return gru_run({xg.contiguous()}, n, xg.scalar_type(), w_hh, b_hh, h0, lengths, reverse,
                 /*save=*/true);
}

// Both operators that take the layer input x (see the LSTM's).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_from_input(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih,
    const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  const KernelGuard guard;
  const int64_t H = check_input_projection(x, w_ih, b_ih, 3);
  const GruSizes n = check_gru_args(x.size(0), x.size(1), H, x.scalar_type(), w_hh, h0);
  return gru_run({at::Tensor(), x.contiguous(), w_ih, b_ih ? *b_ih : at::Tensor()}, n,
                 x.scalar_type(), w_hh, b_hh, h0, lengths, reverse, save);
}

std::tuple<at::Tensor, at::Tensor> gru_inference_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih,
    const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  auto [y, h_n, gates] =
      gru_from_input(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse, /*save=*/false);
  return {y, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_from_input_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih,
    const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return gru_from_input(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse, /*save=*/true);
}

template <typename scalar_t>
void gru_backward_loop(const GruSizes& n, const at::Tensor& dy, const at::Tensor& w_hh,
                       const at::Tensor& y, const at::Tensor& h0, const at::Tensor& lengths,
                       bool reverse, const at::Tensor& gates, at::Tensor& dh, at::Tensor& dGx,
                       at::Tensor& dGhn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = n.T, B = n.B, H = n.H;
  // One step's recurrent-side gradient: only its n block differs from dGx, and that block is
  // kept per step in dGhn, so no [T, B, 3H] copy is held (backward's peak memory).
  at::Tensor dGh = at::empty({B, 3 * H}, dh.options());

  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  const std::vector<int64_t> running = running_rows(len, T, B);
  const scalar_t* gates_p = gates.data_ptr<scalar_t>();
  acc_t* dh_p = dh.data_ptr<acc_t>();
  const GruBackwardStep<scalar_t> step0{0, T, B, H, reverse, len, gates_p,
                                        dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                        h0.data_ptr<acc_t>(), dh_p, dGx.data_ptr<scalar_t>(),
                                        dGh.data_ptr<acc_t>(), dGhn.data_ptr<scalar_t>()};
  const auto pass = pointwise_kernels<scalar_t>().gru_backward;

  // As the LSTM backward: the threads split the batch rows and never wait for each other.
  const auto setup = [&](int tid, int nthreads) {
    const UnitRange rows = split_range(B, tid, nthreads);
    const at::Tensor dGh_rows = dGh.narrow(0, rows.begin, rows.size()).unsqueeze(0);
    return std::make_pair(rows, ThreadProduct<scalar_t>({w_hh}, dGh_rows,
                                                        team_pack(nthreads, PackSlot::kRecurrent)));
  };
  const auto backward_rows = [&](UnitRange rows, ThreadProduct<scalar_t>& recurrent) {
    GruBackwardStep<scalar_t> step = step0;
    for (int64_t s = T - 1; s >= 0; --s) {
      step.t = time_index(s, T, reverse);
      pass(step, rows.begin * H, rows.end * H);
      if (s > 0) {
        // The next step's saved gates, requested while the product runs (see the LSTM).
        const int64_t t_next = time_index(s - 1, T, reverse);
        prefetch(gates_p + (t_next * B + rows.begin) * 4 * H, rows.size() * 4 * H);
      }
      // dh_{t-1} += dGh_t W_hh (rows past their length have dGh = 0 and keep dh), on the
      // thread's rows up to the last one still running.
      const int64_t m = std::clamp<int64_t>(running[step.t] - rows.begin, 0, rows.size());
      const acc_t* product = recurrent(0, m);
      for (int64_t k = 0; k < m * H; ++k) dh_p[rows.begin * H + k] += product[k];
    }
  };
  const auto loop = [&](int, int, auto& thread, Team& team) {
    if (thread.first.size() > 0) team.work([&] { backward_rows(thread.first, thread.second); });
  };
  Team::run(row_team_size(B), setup, loop);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths_in, bool reverse, const at::Tensor& y,
    const at::Tensor& gates) {
  const KernelGuard guard;
  GK_CHECK_DIM(gates, "gates", 3, "[T, B, 4H]");
  GK_CHECK_FLOAT_DTYPE(h0, "h0");
  const GruSizes n = check_gru_args(gates.size(0), gates.size(1), gates.size(2) / 4,
                                    h0.scalar_type(), w_hh, h0);
  const at::Tensor lengths = check_lengths(lengths_in, n.T, n.B);
  const auto dtype = h0.scalar_type();
  check_saved("dy", dy, {n.T, n.B, n.H}, dtype);
  check_saved("y", y, {n.T, n.B, n.H}, dtype);
  check_saved("gates", gates, {n.T, n.B, 4 * n.H}, dtype);
  check_saved("dh_n", dh_n, {n.B, n.H}, dtype);

  // The gate gradients are written in the input's dtype, as the gates were saved: for
  // bfloat16 that halves them (training peak at T=100, B=64, H=512: with float32 gates and
  // gradients 145 MB, against torch.nn's 69 MB); the running dh stays in float32.
  at::Tensor dxg = new_output({n.T, n.B, 3 * n.H}, h0.options());
  at::Tensor dGhn = at::empty({n.T, n.B, n.H}, h0.options());
  at::Tensor dh = to_acc(dh_n, /*copy=*/true);
  const at::Tensor y_in = y.contiguous();
  const at::Tensor h0_in = h0.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "gru_backward_cpu", [&] {
    gru_backward_loop<scalar_t>(n, dy.contiguous(), w_hh.contiguous(), y_in, to_acc(h0), lengths,
                                reverse, gates.contiguous(), dh, dxg, dGhn);
  });

  // Weight and bias gradients once, over all T*B rows, after the loop: the recurrent side's
  // gate gradient is [dr, dz] (dG's first two blocks) and dn * r (dGhn).
  const at::Tensor dGrz = dxg.narrow(2, 0, 2 * n.H);
  // In bfloat16 the r and z rows of dW_hh come from all 3H columns of dG, a dense matrix that
  // oneDNN multiplies in place, and the n rows are dropped: ATen multiplied the strided 2H
  // columns through a float copy (0.8 MB at T=500, B=1, H=256, which set the training peak
  // above torch.nn's).
  const at::Tensor dw_rz =
      dtype == at::kBFloat16
          ? times_previous_hidden(dxg, y_in, h0_in, lengths, reverse).narrow(0, 0, 2 * n.H)
          : times_previous_hidden(dGrz, y_in, h0_in, lengths, reverse);
  at::Tensor dw_hh =
      at::cat({dw_rz, times_previous_hidden(dGhn, y_in, h0_in, lengths, reverse)});
  at::Tensor db_hh = at::cat({dGrz.sum({0, 1}), dGhn.sum({0, 1})});
  return {dxg, dw_hh, db_hh, dh.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_inference", &gru_inference_cpu);
  m.impl("gru_forward_from_input", &gru_forward_from_input_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace gated_kernels
