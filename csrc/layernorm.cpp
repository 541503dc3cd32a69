// LayerNorm LSTM and GRU forward on the CPU (issue 17), zoneout included. Rows are split over
// the threads, and each thread runs all T steps of its rows: every LayerNorm here reduces over
// one row (its recurrent product's 4H or 3H columns, the LSTM's H cell units), so a row never
// waits on another thread. A step of a row block is one product, h W_hh^T (a ThreadProduct),
// and one pass per row: the LayerNorm of the product, the gates, the state. One-row inference
// with a large W_hh splits the row's hidden units over the team instead (run_units).
//
// layernorm_lstm_forward(xn [T,B,4H], w_hh [4H,H], ln_hh_weight [4H], ln_hh_bias [4H],
//     ln_c_weight [H], ln_c_bias [H], h0 [B,H], c0 [B,H], lengths [B]?, reverse)
//   -> y [T,B,H], h_n [B,H], c_n [B,H] and, for layernorm_lstm_backward:
//   gates [T,B,4H] (i, f, g, o), norm_hh [T,B,4H] (the product normalised, before ln_hh's
//   weight and bias), c_all [T,B,H] (c'), norm_c [T,B,H] (c' normalised), rstd [T,B,2] (the
//   two LayerNorms' 1 / sqrt(var + eps)). 0 past a row's length; c_all carries c there.
//   xn = LN(x W_ih^T; ln_ih) + b_ih + b_hh, made by the caller for all steps at once; gates
//   i, f, g, o; G = xn_t + LN(h W_hh^T; ln_hh), c' = f c + i g, h' = o tanh(LN(c'; ln_c)).
// layernorm_lstm_inference(x [T,B,I], w_ih [4H,I], ln_ih_weight [4H], ln_ih_bias [4H], w_hh,
//     ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0, lengths?, reverse)
//   -> y, h_n, c_n: the forward's first three for xn = LN(x W_ih^T; ln_ih), ln_ih_bias holding
//   ln_ih's bias plus b_ih + b_hh; xn is made a step at a time for a thread's rows and never
//   held for all steps, and nothing is saved.
// layernorm_gru_forward(xn [T,B,3H], w_hh [3H,H], b_hh [3H], ln_hh_weight [3H],
//     ln_hh_bias [3H], h0 [B,H], lengths [B]?, reverse)
//   -> y [T,B,H], h_n [B,H] and gates [T,B,4H] (r, z, n, R_n), norm_hh [T,B,3H], rstd [T,B,1]
//   (0 past a row's length). xn = LN(x W_ih^T; ln_ih) + b_ih; R = LN(h W_hh^T; ln_hh) + b_hh,
//   gates r, z, n: r = sigmoid(xn_r + R_r), z = sigmoid(xn_z + R_z), n = tanh(xn_n + r R_n),
//   h' = (1 - z) n + z h.
// layernorm_gru_inference(x [T,B,I], w_ih [3H,I], ln_ih_weight [3H], ln_ih_bias [3H], w_hh,
//     b_hh, ln_hh_weight, ln_hh_bias, h0, lengths?, reverse) -> y, h_n: as the LSTM's, with
//   ln_ih_bias holding ln_ih's bias plus b_ih.
// zoneout: every operator takes keep_h? (and the LSTM keep_c?) [T,B,H] last, zoneout's weights
// of the old state (reference.py): the state becomes keep old + (1 - keep) new, y the zoned h;
// the LSTM's h comes from the new cell before zoneout. c_all saves the zoned cell state,
// norm_c the new one's.
// Rows past their length carry their state and output 0 (reverse: they start at lengths[b]-1).
// float32, float64 and bfloat16: bfloat16 products on brgemm (float accumulation), the rows'
// passes, the running state and what the forward saves in float32 (at::opmath_type).
#include "layernorm.h"
#include "product.h"
#include "team.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

namespace gated_kernels {

void check_vector(const at::Tensor& t, const char* name, int64_t size, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, name, " must have shape [", size, "], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), " (the input's), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

void check_state(const at::Tensor& t, const char* name, int64_t B, int64_t H,
                 const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == H, name, " must have shape [", B,
              ", ", H, "] ([B, H]), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), " (the input's), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

at::Tensor check_keep(const std::optional<at::Tensor>& keep, const char* name, int64_t T,
                      int64_t B, int64_t H, const at::Tensor& like) {
  if (!keep.has_value()) return at::Tensor();
  const at::Tensor& k = *keep;
  TORCH_CHECK(k.dim() == 3 && k.size(0) == T && k.size(1) == B && k.size(2) == H, name,
              " must have shape [", T, ", ", B, ", ", H, "] ([T, B, H]), got ", k.sizes());
  TORCH_CHECK(k.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), " (the input's), got ", k.scalar_type());
  TORCH_CHECK(k.device().is_cpu(), name, " must be a CPU tensor, got device ", k.device());
  return k.contiguous();
}

at::Tensor layer_norm_or(const std::optional<at::Tensor>& t, const char* name, int64_t size,
                         double fill, const at::Tensor& like) {
  if (!t.has_value()) return at::full({size}, fill, like.options());
  check_vector(*t, name, size, like);
  return *t;
}

bool check_normalised(std::initializer_list<const std::optional<at::Tensor>*> ln,
                      const char* names) {
  const bool normalised = (*ln.begin())->has_value();
  for (const std::optional<at::Tensor>* t : ln) {
    TORCH_CHECK(t->has_value() == normalised, names,
                " must all be given (LayerNorm) or all be None (none), got some of each");
  }
  return normalised;
}

void check_layernorm_args(const at::Tensor& input, const char* input_name, int64_t H,
                          const at::Tensor& w_hh, const at::Tensor& h0, int64_t num_gates) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble ||
                  input.scalar_type() == at::kBFloat16,
              input_name, " must be float32, float64 or bfloat16, got ", input.scalar_type());
  GK_CHECK_DIM(w_hh, "w_hh", 2, "[G, H]");
  GK_CHECK_SIZE(w_hh, "w_hh", 0, num_gates * H, "G");
  GK_CHECK_SIZE(w_hh, "w_hh", 1, H, "H");
  GK_CHECK_DTYPE(w_hh, "w_hh", input.scalar_type());
  GK_CHECK_CPU(w_hh, "w_hh");
  check_state(h0, "h0", input.size(1), H, input);
}

namespace {

// The tensors a training forward saves for backward (undefined for inference).
struct LnSaved {
  at::Tensor gates, norm_hh, rstd;  // both cells
  at::Tensor c_all, norm_c;         // the LSTM
};

// Where the rows' xn come from: given for all steps (the training forward's xn [T, B, G]), or
// made a step at a time for a thread's rows from the layer input (inference: x [T, B, I]
// contiguous, xn_t = LN(x_t W_ih^T; ln_ih), ln_ih's bias holding the biases that add to it).
struct LnInput {
  at::Tensor xn;                                 // or undefined
  at::Tensor x, w_ih, ln_ih_weight, ln_ih_bias;  // where xn is undefined
  // Whether the operator normalises: else the identity in each LayerNorm's place (affine_row),
  // its weights 1 and biases 0 (ln_ih_bias: the biases that add to the input side, or 0).
  bool normalised = true;
};

// The row function in a LayerNorm's place: the pointwise kernels' layer_norm, or affine_row.
template <typename scalar_t>
auto row_norm(bool normalised) {
  using acc_t = at::opmath_type<scalar_t>;
  return normalised ? pointwise_kernels<scalar_t>().layer_norm : &affine_row<acc_t>;
}

// The most values of x W_ih^T an inference task makes for all steps at once (16 MB in float).
constexpr int64_t kWholeInput = int64_t(1) << 22;

// Runs `row_step(t, b, g, xr, y_row)` for every row b at every step t, with xr its xn[t, b]
// [G] and y_row its y[t, b] [H]; g is the row's LN(h W_hh^T; ln_hh) [G] (the caller's to
// overwrite), or nullptr past the row's length, where y_row is already 0 (and xr unset). g and
// xr are in the accumulation type acc_t, y in scalar_t. h [B, H] (acc_t) holds the running
// state. With `saved` defined, writes its norm_hh and the first column of its rstd.
template <typename scalar_t, typename RowStep>
void run_rows(const LnInput& in, const at::Tensor& w_hh, const at::Tensor& ln_hh_weight,
              const at::Tensor& ln_hh_bias, at::Tensor& h, at::Tensor& y,
              const at::Tensor& lengths, bool reverse, const LnSaved& saved,
              const RowStep& row_step) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = y.size(0), B = y.size(1), H = h.size(1), G = w_hh.size(0);
  const int64_t* len = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  const bool from_x = !in.xn.defined();
  const scalar_t* xn_all = from_x ? nullptr : in.xn.const_data_ptr<scalar_t>();
  const at::Tensor ln_w = to_acc(ln_hh_weight), ln_b = to_acc(ln_hh_bias);
  const acc_t* w_g = ln_w.const_data_ptr<acc_t>();
  const acc_t* b_g = ln_b.const_data_ptr<acc_t>();
  const at::Tensor ln_ih_w = from_x ? to_acc(in.ln_ih_weight) : at::Tensor();
  const at::Tensor ln_ih_b = from_x ? to_acc(in.ln_ih_bias) : at::Tensor();
  const acc_t* w_i = from_x ? ln_ih_w.const_data_ptr<acc_t>() : nullptr;
  const acc_t* b_i = from_x ? ln_ih_b.const_data_ptr<acc_t>() : nullptr;
  acc_t* norm_all = saved.norm_hh.defined() ? saved.norm_hh.data_ptr<acc_t>() : nullptr;
  acc_t* rstd_all = saved.rstd.defined() ? saved.rstd.data_ptr<acc_t>() : nullptr;
  const int64_t R = saved.rstd.defined() ? saved.rstd.size(2) : 0;
  const auto layer_norm = row_norm<scalar_t>(in.normalised);
  // One step (the LayerNorm cells): both products known up front, each once on the cells'
  // product, with no weight put in a kernel's form per thread (LayerNormLSTMCell inference,
  // B=32, H=256, float32 on the EPYC: 864 us in the operator with ThreadProducts, against the
  // reference backend's 752 us for the whole call).
  const bool one_step = T == 1;
  const at::Tensor gh_once =
      one_step ? cell_product(h.to(w_hh.scalar_type()), w_hh, std::nullopt) : at::Tensor();
  const at::Tensor xn_once =
      one_step && from_x ? cell_product(in.x[0], in.w_ih, std::nullopt) : at::Tensor();
  // One row a task at least: the work of a row's T steps repays a fork many times over.
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    // The block's product on the sequence operators' kernels (product.h), the weight put in
    // their form once for all T steps: on ATen's product (MKL's generic code on AMD) the
    // LayerNormLSTM inference at T=100, B=32, H=128 took 19.3 ms.
    std::optional<ThreadProduct<scalar_t>> product;
    if (!one_step) {
      product.emplace(std::vector<at::Tensor>{w_hh.t()}, h.narrow(0, b0, b1 - b0).unsqueeze(0),
                      PackSlot::kNone);
    }
    // x_t W_ih^T for the block's rows: a task that holds the whole batch (B=1, or one
    // thread) makes every step's at once, one product of T*B rows, where they take at most
    // kWholeInput values (the weight then streams once, not once a step: LayerNormGRU
    // inference at T=100, B=1, H=256, bfloat16 on the EPYC, 1.08-1.11 -> 0.84-0.87 ms, our plain
    // GRU's 0.55-0.60); other tasks one step a call.
    const bool whole = from_x && !one_step && b0 == 0 && b1 == B && T * B * G <= kWholeInput;
    std::optional<ThreadProduct<scalar_t>> input;
    if (from_x && !one_step) {
      input.emplace(std::vector<at::Tensor>{in.w_ih.t()},
                    whole ? in.x.view({1, T * B, in.x.size(2)}) : in.x.narrow(1, b0, b1 - b0),
                    PackSlot::kNone);
    }
    acc_t* xn_made = whole ? const_cast<acc_t*>((*input)(0)) : nullptr;
    // A row of a given xn in acc_t, where scalar_t is not (bfloat16).
    std::vector<acc_t> xn_row(std::is_same_v<scalar_t, acc_t> || from_x ? 0 : G);
    for (const auto s : c10::irange(T)) {
      const int64_t t = time_index(s, T, reverse);
      acc_t* xn_rows = !from_x  ? nullptr
                       : one_step ? xn_once.data_ptr<acc_t>() + b0 * G
                       : whole    ? xn_made + t * B * G
                                  : const_cast<acc_t*>((*input)(t));
      // gh = h W_hh^T for the block's rows, [b1 - b0, G]; the passes overwrite it in place.
      acc_t* gh_rows = one_step ? gh_once.data_ptr<acc_t>() + b0 * G
                                : const_cast<acc_t*>((*product)(0));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        scalar_t* y_row = y.data_ptr<scalar_t>() + row * H;
        acc_t* norm = norm_all != nullptr ? norm_all + row * G : nullptr;
        if (len != nullptr && t >= len[b]) {
          std::fill(y_row, y_row + H, scalar_t(0));
          if (norm != nullptr) std::fill(norm, norm + G, acc_t(0));
          if (rstd_all != nullptr) rstd_all[row * R] = 0;
          row_step(t, b, nullptr, nullptr, y_row);
          continue;
        }
        const acc_t* xr;
        if (from_x) {
          acc_t* made = xn_rows + (b - b0) * G;
          layer_norm(made, G, w_i, b_i, nullptr);
          xr = made;
        } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
          xr = xn_all + row * G;
        } else {
          std::copy(xn_all + row * G, xn_all + (row + 1) * G, xn_row.begin());
          xr = xn_row.data();
        }
        acc_t* g = gh_rows + (b - b0) * G;
        const acc_t rstd = layer_norm(g, G, w_g, b_g, norm);
        if (rstd_all != nullptr) rstd_all[row * R] = rstd;
        row_step(t, b, g, xr, y_row);
      }
    }
  });
}

// A LayerNorm's statistics over the parts of a row that the team's threads hold: each thread
// puts its part's count, mean and sum of squared deviations (two passes over its values);
// merged in thread order (Chan et al.'s pairwise update), the same on every thread.
template <typename acc_t>
struct PartStats {
  acc_t count, mean, m2;
};

template <typename acc_t>
PartStats<acc_t> part_stats(const acc_t* v, int64_t n) {
  acc_t mean = 0, m2 = 0;
  for (const auto k : c10::irange(n)) mean += v[k];
  mean = n > 0 ? mean / acc_t(n) : acc_t(0);
  for (const auto k : c10::irange(n)) m2 += (v[k] - mean) * (v[k] - mean);
  return {acc_t(n), mean, m2};
}

// (mean, rstd) of the whole row from every thread's part.
template <typename acc_t>
std::pair<acc_t, acc_t> merged_stats(const std::vector<PartStats<acc_t>>& parts) {
  PartStats<acc_t> all{0, 0, 0};
  for (const PartStats<acc_t>& p : parts) {
    if (p.count == 0) continue;
    const acc_t count = all.count + p.count, delta = p.mean - all.mean;
    all.mean += delta * p.count / count;
    all.m2 += p.m2 + delta * delta * all.count * p.count / count;
    all.count = count;
  }
  return {all.mean, acc_t(1) / std::sqrt(all.m2 / all.count + acc_t(kLayerNormEps))};
}

// v[k] := (v[k] - mean) * rstd * weight[k] + bias[k] (+ extra[k] where given).
template <typename acc_t>
void normalise(acc_t* v, int64_t n, acc_t mean, acc_t rstd, const acc_t* weight,
               const acc_t* bias, const acc_t* extra = nullptr) {
  for (const auto k : c10::irange(n)) {
    v[k] = (v[k] - mean) * rstd * weight[k] + bias[k] + (extra != nullptr ? extra[k] : acc_t(0));
  }
}

// Inference of one row (B=1) on a team that splits its hidden units, as the plain operators'
// forward does, where the rows split would leave every thread but one idle: each thread
// multiplies h by its units' columns of W_hh (all gates), and the threads meet once for each
// LayerNorm's statistics (ln_hh's over G, the LSTM's ln_c over H) and once for h_t.
// xn_all [T, G] (acc_t) is every step's LN(x W_ih^T; ln_ih) + biases, made before; `lstm`
// picks the cell (c: its state [1, H]); keep_*: zoneout's, or undefined. Rows past the length
// (len, or T) output 0.
template <typename scalar_t>
void run_units(bool lstm, bool normalised, const at::Tensor& xn_all, const at::Tensor& w_hh,
               const at::Tensor& ln_hh_weight, const at::Tensor& ln_hh_bias,
               const at::Tensor& ln_c_weight, const at::Tensor& ln_c_bias,
               const at::Tensor& b_hh, at::Tensor& h, at::Tensor& c, at::Tensor& y,
               int64_t length, bool reverse, const at::Tensor& keep_h, const at::Tensor& keep_c) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = y.size(0), H = h.size(1), NG = lstm ? 4 : 3;
  const int nthreads = team_size(H);
  // Step s reads h_{t-1} from hbuf[s % 2] and writes h_t into the other (as lstm.cpp).
  at::Tensor hbuf = at::empty({2, 1, H}, h.options());
  hbuf[0].copy_(h);
  acc_t* h_p[2] = {hbuf[0].data_ptr<acc_t>(), hbuf[1].data_ptr<acc_t>()};
  const acc_t* xn = xn_all.const_data_ptr<acc_t>();
  scalar_t* y_p = y.data_ptr<scalar_t>();
  acc_t* c_p = lstm ? c.data_ptr<acc_t>() : nullptr;
  const scalar_t* kh = keep_h.defined() ? keep_h.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* kc = keep_c.defined() ? keep_c.const_data_ptr<scalar_t>() : nullptr;
  const at::Tensor w_c = lstm ? to_acc(ln_c_weight) : at::Tensor();
  const at::Tensor b_c = lstm ? to_acc(ln_c_bias) : at::Tensor();
  std::vector<PartStats<acc_t>> hh_parts(nthreads), c_parts(nthreads);
  const auto& kernels = pointwise_kernels<scalar_t>();
  struct Thread {
    UnitRange units;
    ThreadProduct<scalar_t> product;
    at::Tensor ln_w, ln_b, bias;  // its units' rows of each gate, side by side (acc_t)
  };
  const auto setup = [&](int tid, int n) {
    const UnitRange units = team_units(H, tid, n);
    const at::Tensor zeros = at::zeros({NG * H}, xn_all.options());
    return Thread{units, ThreadProduct<scalar_t>(gate_columns(w_hh, NG, units), hbuf,
                                                 PackSlot::kNone),
                  gate_rows(to_acc(ln_hh_weight), NG, units).contiguous(),
                  gate_rows(to_acc(ln_hh_bias), NG, units).contiguous(),
                  gate_rows(b_hh.defined() ? to_acc(b_hh) : zeros, NG, units).contiguous()};
  };
  const auto loop = [&](int tid, int, Thread& thread, Team& team) {
    const int64_t u0 = thread.units.begin, U = thread.units.size();
    const acc_t* w_g = thread.ln_w.template const_data_ptr<acc_t>();
    const acc_t* b_g = thread.ln_b.template const_data_ptr<acc_t>();
    const acc_t* b_r = thread.bias.template const_data_ptr<acc_t>();
    // The step's gate row, [NG * U]: the product's own output, overwritten in place (valid
    // until the next step's product).
    acc_t* g = nullptr;
    for (const auto s : c10::irange(T)) {
      const int64_t t = time_index(s, T, reverse);
      scalar_t* y_row = y_p + t * H;
      if (t >= length) {  // the row has ended (or, in reverse, not begun): the state carries
        team.work([&] {
          std::fill(y_row + u0, y_row + u0 + U, scalar_t(0));
          std::copy(h_p[s % 2] + u0, h_p[s % 2] + u0 + U, h_p[(s + 1) % 2] + u0);
        });
        team.barrier();
        continue;
      }
      const acc_t* x_row = xn + t * NG * H;
      team.work([&] {
        hh_parts[tid] = {0, 0, 0};
        if (U == 0) return;
        g = const_cast<acc_t*>(thread.product(s % 2));
        hh_parts[tid] = part_stats(g, NG * U);
      });
      team.barrier();  // every part of LN(h W_hh^T)'s statistics
      team.work([&] {
        if (U == 0) return;
        const auto [mean, rstd] =
            normalised ? merged_stats(hh_parts) : std::pair<acc_t, acc_t>(0, 1);
        normalise(g, NG * U, mean, rstd, w_g, b_g, b_r);
        const acc_t* h_prev = h_p[s % 2];
        acc_t* h_next = h_p[(s + 1) % 2];
        acc_t* gi = g;
        for (const auto k : c10::irange(lstm ? NG : 2)) {  // + xn, but the GRU's n adds later
          for (const auto j : c10::irange(U)) gi[k * U + j] += x_row[k * H + u0 + j];
        }
        if (lstm) {
          kernels.sigmoid(gi, 2 * U);
          kernels.tanh(gi + 2 * U, U);
          kernels.sigmoid(gi + 3 * U, U);
          for (const auto j : c10::irange(U)) {  // c' into f's block; the state c zoned
            const acc_t c_old = c_p[u0 + j];
            const acc_t c_new = gi[U + j] * c_old + gi[j] * gi[2 * U + j];
            c_p[u0 + j] = kc != nullptr ? zoned(kc[t * H + u0 + j], c_old, c_new) : c_new;
            gi[U + j] = c_new;
          }
          c_parts[tid] = part_stats(gi + U, U);
        } else {
          kernels.sigmoid(gi, 2 * U);
          for (const auto j : c10::irange(U)) {
            gi[2 * U + j] = x_row[2 * H + u0 + j] + gi[j] * gi[2 * U + j];
          }
          kernels.tanh(gi + 2 * U, U);
          for (const auto j : c10::irange(U)) {
            const acc_t z = gi[U + j], h_new = (acc_t(1) - z) * gi[2 * U + j] + z * h_prev[u0 + j];
            h_next[u0 + j] =
                kh != nullptr ? zoned(kh[t * H + u0 + j], h_prev[u0 + j], h_new) : h_new;
            y_row[u0 + j] = static_cast<scalar_t>(h_next[u0 + j]);
          }
        }
      });
      if (lstm) {
        team.barrier();  // every part of LN(c')'s statistics
        team.work([&] {
          if (U == 0) return;
          const auto [mean, rstd] =
              normalised ? merged_stats(c_parts) : std::pair<acc_t, acc_t>(0, 1);
          acc_t* gi = g;
          normalise(gi + U, U, mean, rstd, w_c.const_data_ptr<acc_t>() + u0,
                    b_c.const_data_ptr<acc_t>() + u0);
          kernels.tanh(gi + U, U);
          const acc_t* h_prev = h_p[s % 2];
          acc_t* h_next = h_p[(s + 1) % 2];
          for (const auto j : c10::irange(U)) {
            const acc_t h_new = gi[3 * U + j] * gi[U + j];
            h_next[u0 + j] =
                kh != nullptr ? zoned(kh[t * H + u0 + j], h_prev[u0 + j], h_new) : h_new;
            y_row[u0 + j] = static_cast<scalar_t>(h_next[u0 + j]);
          }
        });
      }
      team.barrier();  // h_t complete before any thread multiplies by it
    }
  };
  Team::run(nthreads, setup, loop);
  h.copy_(hbuf[T % 2]);
}

// W_hh bytes from which one-row inference splits the hidden units: the split's two or three
// barriers a step cost more than it saves below. T=100, B=1, time over our plain LSTM / GRU's,
// three runs each on the EPYC, rows -> units: 384 KB (GRU bfloat16 H=256) 1.40x-1.71x ->
// 1.31x-1.39x, 1 MB (LSTM float32 H=256) 1.47x-2.01x -> 1.16x-1.34x; but 256 KB (LSTM float32
// H=128) 1.07x-1.29x -> 1.49x-1.62x, 96 KB (GRU bfloat16 H=128) 1.09x-1.26x -> 1.25x-1.38x.
constexpr int64_t kSplitUnitsWeightBytes = 3 * (int64_t(1) << 17);

// Whether one-row inference takes run_units: B=1, a team of two threads or more, and a W_hh
// of kSplitUnitsWeightBytes or more.
bool splits_units(int64_t B, const at::Tensor& w_hh, bool save) {
  return !save && B == 1 && team_size(w_hh.size(1)) > 1 &&
         static_cast<int64_t>(w_hh.nbytes()) >= kSplitUnitsWeightBytes;
}

// Every step's xn = LN(x W_ih^T; ln_ih) for a one-row inference, [T, G] in acc_t.
at::Tensor one_row_inputs(const LnInput& in) {
  at::Tensor xn = cell_product(in.x.select(1, 0), in.w_ih, std::nullopt);
  const at::Tensor w = to_acc(in.ln_ih_weight), b = to_acc(in.ln_ih_bias);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.x.scalar_type(), "one_row_inputs", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto layer_norm = row_norm<scalar_t>(in.normalised);
    const int64_t G = xn.size(1);
    acc_t* p = xn.data_ptr<acc_t>();
    at::parallel_for(0, xn.size(0), 16, [&](int64_t t0, int64_t t1) {
      for (const auto t : c10::irange(t0, t1)) {
        layer_norm(p + t * G, G, w.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(), nullptr);
      }
    });
  });
  return xn;
}

// The input of a forward (its xn, checked) or of an inference (x, w_ih and ln_ih, checked):
// returns it with H.
std::pair<LnInput, int64_t> check_input(const at::Tensor& xn_or_x, const at::Tensor* w_ih,
                                        const std::optional<at::Tensor>& ln_ih_weight,
                                        const std::optional<at::Tensor>& ln_ih_bias,
                                        int64_t num_gates, const char* gate_order,
                                        bool normalised) {
  if (w_ih == nullptr) {
    const int64_t H = check_input_gates(xn_or_x, num_gates, gate_order);
    return {LnInput{xn_or_x.contiguous(), {}, {}, {}, {}, normalised}, H};
  }
  const int64_t H = check_input_projection(xn_or_x, *w_ih, std::nullopt, num_gates);
  const int64_t G = num_gates * H;
  return {LnInput{at::Tensor(), xn_or_x.contiguous(), *w_ih,
                  layer_norm_or(ln_ih_weight, "ln_ih_weight", G, 1.0, xn_or_x),
                  layer_norm_or(ln_ih_bias, "ln_ih_bias", G, 0.0, xn_or_x), normalised},
          H};
}

// The LSTM forward; saves for backward where `save`. Returns y, h_n, c_n and the saved tensors
// (undefined without `save`).
std::tuple<at::Tensor, at::Tensor, at::Tensor, LnSaved> layernorm_lstm(
    const LnInput& in, int64_t H, const at::Tensor& w_hh_in,
    const std::optional<at::Tensor>& ln_hh_weight_in,
    const std::optional<at::Tensor>& ln_hh_bias_in,
    const std::optional<at::Tensor>& ln_c_weight_in,
    const std::optional<at::Tensor>& ln_c_bias_in, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths_in,
    bool reverse, const std::optional<at::Tensor>& keep_h_in,
    const std::optional<at::Tensor>& keep_c_in, bool save) {
  const at::Tensor& xn = in.xn.defined() ? in.xn : in.x;  // the input: its sizes and dtype
  check_layernorm_args(xn, in.xn.defined() ? "xn" : "x", H, w_hh_in, h0, 4);
  const at::Tensor w_hh = w_hh_in.contiguous();
  const int64_t T = xn.size(0), B = xn.size(1);
  const at::Tensor ln_hh_weight = layer_norm_or(ln_hh_weight_in, "ln_hh_weight", 4 * H, 1.0, xn);
  const at::Tensor ln_hh_bias = layer_norm_or(ln_hh_bias_in, "ln_hh_bias", 4 * H, 0.0, xn);
  const at::Tensor ln_c_weight = layer_norm_or(ln_c_weight_in, "ln_c_weight", H, 1.0, xn);
  const at::Tensor ln_c_bias = layer_norm_or(ln_c_bias_in, "ln_c_bias", H, 0.0, xn);
  check_state(c0, "c0", B, H, xn);
  const at::Tensor lengths = check_lengths(lengths_in, T, B);
  const at::Tensor keep_h = check_keep(keep_h_in, "keep_h", T, B, H, xn);
  const at::Tensor keep_c = check_keep(keep_c_in, "keep_c", T, B, H, xn);
  at::Tensor y = new_output({T, B, H}, xn.options());
  at::Tensor h = to_acc(h0, /*copy=*/true), c = to_acc(c0, /*copy=*/true);
  const auto acc = xn.options().dtype(at::toOpMathType(xn.scalar_type()));
  LnSaved saved;
  if (save) {
    saved = {new_output({T, B, 4 * H}, acc), new_output({T, B, 4 * H}, acc),
             new_output({T, B, 2}, acc), new_output({T, B, H}, acc), new_output({T, B, H}, acc)};
  }
  if (in.x.defined() && splits_units(B, w_hh, save)) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xn.scalar_type(), "layernorm_lstm_units", [&] {
      run_units<scalar_t>(true, in.normalised, one_row_inputs(in), w_hh, ln_hh_weight,
                          ln_hh_bias, ln_c_weight, ln_c_bias, at::Tensor(), h, c, y,
                          lengths.defined() ? lengths.item<int64_t>() : T, reverse, keep_h,
                          keep_c);
    });
    return {y, h.to(xn.scalar_type()), c.to(xn.scalar_type()), saved};
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xn.scalar_type(), "layernorm_lstm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor ln_c_w = to_acc(ln_c_weight), ln_c_b = to_acc(ln_c_bias);
    const acc_t* w_c = ln_c_w.const_data_ptr<acc_t>();
    const acc_t* b_c = ln_c_b.const_data_ptr<acc_t>();
    acc_t* h_all = h.data_ptr<acc_t>();
    acc_t* c_now = c.data_ptr<acc_t>();
    acc_t* gates_all = save ? saved.gates.data_ptr<acc_t>() : nullptr;
    acc_t* c_all = save ? saved.c_all.data_ptr<acc_t>() : nullptr;
    acc_t* norm_c_all = save ? saved.norm_c.data_ptr<acc_t>() : nullptr;
    acc_t* rstd_all = save ? saved.rstd.data_ptr<acc_t>() : nullptr;
    const scalar_t* keep_h_p = keep_h.defined() ? keep_h.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* keep_c_p = keep_c.defined() ? keep_c.const_data_ptr<scalar_t>() : nullptr;
    const auto& kernels = pointwise_kernels<scalar_t>();
    const auto layer_norm = row_norm<scalar_t>(in.normalised);
    run_rows<scalar_t>(in, w_hh, ln_hh_weight, ln_hh_bias, h, y, lengths, reverse, saved,
                       [&](int64_t t, int64_t b, acc_t* g, const acc_t* xr, scalar_t* y_row) {
      const int64_t row = t * B + b;
      acc_t* c_row = c_now + b * H;
      if (g == nullptr) {  // past the row's length: the state carries
        if (save) {
          std::fill(gates_all + row * 4 * H, gates_all + (row + 1) * 4 * H, acc_t(0));
          std::copy(c_row, c_row + H, c_all + row * H);
          std::fill(norm_c_all + row * H, norm_c_all + (row + 1) * H, acc_t(0));
          rstd_all[row * 2 + 1] = 0;
        }
        return;
      }
      // The gate row becomes G = xn_t + LN(gh), then in place i, f, g, o; f's quarter then
      // holds c' and LN(c'), o's stays.
      for (const auto k : c10::irange(4 * H)) g[k] += xr[k];
      kernels.sigmoid(g, 2 * H);
      kernels.tanh(g + 2 * H, H);
      kernels.sigmoid(g + 3 * H, H);
      if (save) {
        std::copy(g, g + 4 * H, gates_all + row * 4 * H);
      }
      // c' into f's quarter, the state c the zoned c' (zoneout keeps keep_c of the old one).
      const scalar_t* kc = keep_c_p != nullptr ? keep_c_p + row * H : nullptr;
      for (const auto u : c10::irange(H)) {
        const acc_t c_new = g[H + u] * c_row[u] + g[u] * g[2 * H + u];
        c_row[u] = kc != nullptr ? zoned(kc[u], c_row[u], c_new) : c_new;
        g[H + u] = c_new;
      }
      if (save) {
        std::copy(c_row, c_row + H, c_all + row * H);
        rstd_all[row * 2 + 1] = layer_norm(g + H, H, w_c, b_c, norm_c_all + row * H);
      } else {
        layer_norm(g + H, H, w_c, b_c, nullptr);
      }
      kernels.tanh(g + H, H);
      acc_t* h_row = h_all + b * H;
      const scalar_t* kh = keep_h_p != nullptr ? keep_h_p + row * H : nullptr;
      for (const auto u : c10::irange(H)) {
        const acc_t h_new = g[3 * H + u] * g[H + u];
        h_row[u] = kh != nullptr ? zoned(kh[u], h_row[u], h_new) : h_new;
        y_row[u] = static_cast<scalar_t>(h_row[u]);
      }
    });
  });
  return {y, h.to(xn.scalar_type()), c.to(xn.scalar_type()), saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_lstm_inference_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& ln_ih_weight,
    const std::optional<at::Tensor>& ln_ih_bias, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const std::optional<at::Tensor>& ln_c_weight, const std::optional<at::Tensor>& ln_c_bias,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    bool reverse, const std::optional<at::Tensor>& keep_h,
    const std::optional<at::Tensor>& keep_c) {
  const KernelGuard guard;
  const bool normalised = check_normalised(
      {&ln_hh_weight, &ln_ih_weight, &ln_hh_bias, &ln_c_weight, &ln_c_bias},
      "ln_ih_weight, ln_hh_weight, ln_hh_bias, ln_c_weight and ln_c_bias");
  const auto [in, H] =
      check_input(x, &w_ih, ln_ih_weight, ln_ih_bias, 4, "i, f, g, o", normalised);
  auto [y, h_n, c_n, saved] =
      layernorm_lstm(in, H, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0,
                     lengths, reverse, keep_h, keep_c, false);
  return {y, h_n, c_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
layernorm_lstm_forward_cpu(const at::Tensor& xn, const at::Tensor& w_hh,
                           const std::optional<at::Tensor>& ln_hh_weight,
                           const std::optional<at::Tensor>& ln_hh_bias,
                           const std::optional<at::Tensor>& ln_c_weight,
                           const std::optional<at::Tensor>& ln_c_bias, const at::Tensor& h0,
                           const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
                           bool reverse, const std::optional<at::Tensor>& keep_h,
                           const std::optional<at::Tensor>& keep_c) {
  const KernelGuard guard;
  const bool normalised =
      check_normalised({&ln_hh_weight, &ln_hh_bias, &ln_c_weight, &ln_c_bias},
                       "ln_hh_weight, ln_hh_bias, ln_c_weight and ln_c_bias");
  const auto [in, H] =
      check_input(xn, nullptr, std::nullopt, std::nullopt, 4, "i, f, g, o", normalised);
  auto [y, h_n, c_n, s] = layernorm_lstm(in, H, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight,
                                         ln_c_bias, h0, c0, lengths, reverse, keep_h, keep_c,
                                         true);
  return {y, h_n, c_n, s.gates, s.norm_hh, s.c_all, s.norm_c, s.rstd};
}

// The GRU forward; saves for backward where `save`.
std::tuple<at::Tensor, at::Tensor, LnSaved> layernorm_gru(
    const LnInput& in, int64_t H, const at::Tensor& w_hh_in, const at::Tensor& b_hh,
    const std::optional<at::Tensor>& ln_hh_weight_in,
    const std::optional<at::Tensor>& ln_hh_bias_in, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths_in, bool reverse,
    const std::optional<at::Tensor>& keep_h_in, bool save) {
  const at::Tensor& xn = in.xn.defined() ? in.xn : in.x;  // the input: its sizes and dtype
  check_layernorm_args(xn, in.xn.defined() ? "xn" : "x", H, w_hh_in, h0, 3);
  const at::Tensor w_hh = w_hh_in.contiguous();
  const int64_t T = xn.size(0), B = xn.size(1);
  const at::Tensor ln_hh_weight = layer_norm_or(ln_hh_weight_in, "ln_hh_weight", 3 * H, 1.0, xn);
  const at::Tensor ln_hh_bias = layer_norm_or(ln_hh_bias_in, "ln_hh_bias", 3 * H, 0.0, xn);
  check_vector(b_hh, "b_hh", 3 * H, xn);
  const at::Tensor lengths = check_lengths(lengths_in, T, B);
  const at::Tensor keep_h = check_keep(keep_h_in, "keep_h", T, B, H, xn);
  at::Tensor y = new_output({T, B, H}, xn.options());
  at::Tensor h = to_acc(h0, /*copy=*/true);
  const auto acc = xn.options().dtype(at::toOpMathType(xn.scalar_type()));
  LnSaved saved;
  if (save) {
    saved = {new_output({T, B, 4 * H}, acc), new_output({T, B, 3 * H}, acc),
             new_output({T, B, 1}, acc)};
  }
  if (in.x.defined() && splits_units(B, w_hh, save)) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xn.scalar_type(), "layernorm_gru_units", [&] {
      at::Tensor no_c;
      run_units<scalar_t>(false, in.normalised, one_row_inputs(in), w_hh, ln_hh_weight,
                          ln_hh_bias, at::Tensor(), at::Tensor(), b_hh, h, no_c, y,
                          lengths.defined() ? lengths.item<int64_t>() : T, reverse, keep_h,
                          at::Tensor());
    });
    return {y, h.to(xn.scalar_type()), saved};
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xn.scalar_type(), "layernorm_gru", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor b_hh_acc = to_acc(b_hh);
    const acc_t* bias = b_hh_acc.const_data_ptr<acc_t>();
    acc_t* h_all = h.data_ptr<acc_t>();
    acc_t* gates_all = save ? saved.gates.data_ptr<acc_t>() : nullptr;
    const scalar_t* keep_h_p = keep_h.defined() ? keep_h.const_data_ptr<scalar_t>() : nullptr;
    const auto& kernels = pointwise_kernels<scalar_t>();
    run_rows<scalar_t>(in, w_hh, ln_hh_weight, ln_hh_bias, h, y, lengths, reverse, saved,
                       [&](int64_t t, int64_t b, acc_t* g, const acc_t* xr, scalar_t* y_row) {
      acc_t* gates = save ? gates_all + (t * B + b) * 4 * H : nullptr;
      if (g == nullptr) {  // past the row's length: the state carries
        if (save) std::fill(gates, gates + 4 * H, acc_t(0));
        return;
      }
      // The gate row becomes R = LN(gh) + b_hh, then r and z in place of R_r and R_z, and n in
      // place of R_n (R_n saved first).
      for (const auto k : c10::irange(3 * H)) g[k] += bias[k];
      if (save) std::copy(g + 2 * H, g + 3 * H, gates + 3 * H);
      for (const auto k : c10::irange(2 * H)) g[k] += xr[k];
      kernels.sigmoid(g, 2 * H);
      for (const auto u : c10::irange(H)) g[2 * H + u] = xr[2 * H + u] + g[u] * g[2 * H + u];
      kernels.tanh(g + 2 * H, H);
      if (save) std::copy(g, g + 3 * H, gates);
      acc_t* h_row = h_all + b * H;
      const scalar_t* kh = keep_h_p != nullptr ? keep_h_p + (t * B + b) * H : nullptr;
      for (const auto u : c10::irange(H)) {
        const acc_t z = g[H + u], n = g[2 * H + u];
        const acc_t h_new = (acc_t(1) - z) * n + z * h_row[u];
        h_row[u] = kh != nullptr ? zoned(kh[u], h_row[u], h_new) : h_new;
        y_row[u] = static_cast<scalar_t>(h_row[u]);
      }
    });
  });
  return {y, h.to(xn.scalar_type()), saved};
}

std::tuple<at::Tensor, at::Tensor> layernorm_gru_inference_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& ln_ih_weight,
    const std::optional<at::Tensor>& ln_ih_bias, const at::Tensor& w_hh, const at::Tensor& b_hh,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    const std::optional<at::Tensor>& keep_h) {
  const KernelGuard guard;
  const bool normalised = check_normalised({&ln_hh_weight, &ln_ih_weight, &ln_hh_bias},
                                           "ln_ih_weight, ln_hh_weight and ln_hh_bias");
  const auto [in, H] =
      check_input(x, &w_ih, ln_ih_weight, ln_ih_bias, 3, "r, z, n", normalised);
  auto [y, h_n, saved] = layernorm_gru(in, H, w_hh, b_hh, ln_hh_weight, ln_hh_bias, h0, lengths,
                                       reverse, keep_h, false);
  return {y, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> layernorm_gru_forward_cpu(
    const at::Tensor& xn, const at::Tensor& w_hh, const at::Tensor& b_hh,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    const std::optional<at::Tensor>& keep_h) {
  const KernelGuard guard;
  const bool normalised =
      check_normalised({&ln_hh_weight, &ln_hh_bias}, "ln_hh_weight and ln_hh_bias");
  const auto [in, H] =
      check_input(xn, nullptr, std::nullopt, std::nullopt, 3, "r, z, n", normalised);
  auto [y, h_n, s] = layernorm_gru(in, H, w_hh, b_hh, ln_hh_weight, ln_hh_bias, h0, lengths,
                                   reverse, keep_h, true);
  return {y, h_n, s.gates, s.norm_hh, s.rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CPU, m) {
  m.impl("layernorm_lstm_inference", &layernorm_lstm_inference_cpu);
  m.impl("layernorm_lstm_forward", &layernorm_lstm_forward_cpu);
  m.impl("layernorm_gru_inference", &layernorm_gru_inference_cpu);
  m.impl("layernorm_gru_forward", &layernorm_gru_forward_cpu);
}

}  // namespace gated_kernels
