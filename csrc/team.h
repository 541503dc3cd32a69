// The thread team that runs one whole recurrence. In the forward each thread owns a slice of the
// hidden units for every step: it multiplies h_{t-1} by its own rows of W_hh, runs the pointwise
// pass on its own units, and the threads meet at one barrier a step. In the backward each
// thread owns a range of batch rows, which never depend on each other.
//
// Before, each step was a parallel product (MKL's fork-join) followed by a parallel pass
// (at::parallel_for's): two fork-joins a step, and each weight row visited by both cores in
// turn. Op times on the 2-core build machine, medians of 20, old -> new
// (benchmarks/cpu_profile.md): lstm_inference T=100 B=16 H=128 1.65-1.99 -> 1.30-1.46 ms,
// T=500 B=1 H=256 5.0-5.3 -> 3.1-3.6 ms; lstm_backward T=100 B=16 H=256 8.2-9.2 -> 6.1-6.6 ms,
// B=64 H=256 29.9-31.0 -> 25.0-26.4 ms.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <optional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gated_kernels {

// A thread's share of N units (hidden units, or projected units): [begin, end).
struct UnitRange {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

// Units are handed out in blocks of 16 (one AVX-512 vector of float), so that no vector of the
// pointwise pass straddles two threads and each slice of a weight row starts 64-byte aligned.
constexpr int64_t kUnitBlock = 16;

// How many threads a recurrence of H units runs on: torch's thread count, at most one thread per
// block of units, and 1 inside another parallel region.
int team_size(int64_t H);

// The same for a split of B batch rows (the backward): at most one thread per row.
int row_team_size(int64_t B);

// Thread `tid` of `nthreads`' share of n items (batch rows), as even as can be.
UnitRange split_range(int64_t n, int tid, int nthreads);

// Thread `tid` of `nthreads`' share of n units, in whole blocks (the last thread takes the rest;
// a thread may get none when n is small).
UnitRange team_units(int64_t n, int tid, int nthreads);

// Asks the cache for n values at p, one request per 64-byte line, without waiting for them.
template <typename T>
inline void prefetch(const T* p, int64_t n) {
  const char* begin = reinterpret_cast<const char*>(p);
  const char* end = reinterpret_cast<const char*>(p + n);
  for (const char* q = begin; q < end; q += 64) __builtin_prefetch(q, /*rw=*/0, /*locality=*/3);
}

// The rows of t [num_gates * H, ...] for `units` of every gate, side by side: a thread's rows
// of a bias, in the gate layout its product and pass use.
at::Tensor gate_rows(const at::Tensor& t, int64_t num_gates, UnitRange units);

// The same rows of a weight w [num_gates * H, K] as blocks of columns of w^T, one [K, units]
// view per gate (ThreadProduct's form: nothing is copied until it packs them).
std::vector<at::Tensor> gate_columns(const at::Tensor& w, int64_t num_gates, UnitRange units);

// One OpenMP team of `nthreads` threads (the runtime may give fewer; the callbacks get the real
// count) running a recurrence: on each thread, state = setup(tid, nthreads), then, once every
// thread's setup has succeeded, loop(tid, nthreads, state, team). The loop puts each step's work
// inside team.work(...) and meets the others at team.barrier(). The caller's thread-local state
// (grad mode, the dispatch guards of the op) is set on every thread, as at::parallel_for does.
// An exception in setup or in a step's work is rethrown on the caller's thread after the team
// ends; after one, every thread skips its remaining work but still meets the barriers, so none
// waits forever.
class Team {
 public:
  template <typename Setup, typename Loop>
  static void run(int nthreads, const Setup& setup, const Loop& loop) {
    Team team;
    const at::ThreadLocalState caller;
#ifdef _OPENMP
    // A team of one runs on the caller's thread: inside even a one-thread parallel region, every
    // product MKL parallelises opens a nested team of its own, which cost about 200 us a step
    // (LSTM backward, B=1, H=256).
    if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
      {
        const at::ThreadLocalStateGuard state(caller);
        team.call(setup, loop, omp_get_thread_num(), omp_get_num_threads());
      }
    } else {
      team.call(setup, loop, 0, 1);
    }
#else
    team.call(setup, loop, 0, 1);
#endif
    if (team.error_) std::rethrow_exception(team.error_);
  }

  void barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
  }

  // Runs f unless a thread has failed; an exception from f is recorded instead of escaping.
  template <typename F>
  void work(const F& f) {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      record(std::current_exception());
    }
  }

 private:
  template <typename Setup, typename Loop>
  void call(const Setup& setup, const Loop& loop, int tid, int nthreads) {
    std::optional<decltype(setup(tid, nthreads))> state;
    work([&] { state.emplace(setup(tid, nthreads)); });
    barrier();
    if (!failed_.load()) loop(tid, nthreads, *state, *this);
  }

  void record(std::exception_ptr error) {
#ifdef _OPENMP
#pragma omp critical(gated_kernels_team_error)
#endif
    if (!error_) error_ = error;
    failed_.store(true);
  }

  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

}  // namespace gated_kernels
