#include "fastest.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gated_kernels {
namespace {

// Time one timed round aims at: long against the clock's resolution and a call's jitter (a
// small cell product takes 3 us), short enough that a choice costs little.
constexpr double kRoundSeconds = 50e-6;
constexpr int kRounds = 3;
constexpr int kMaxRepeats = 64;

std::mutex choices_mutex;
std::map<ProductKey, int>& choices() {
  static std::map<ProductKey, int> table;
  return table;
}

double seconds_of(const std::function<void(int)>& run, int c, int repeats) {
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) run(c);
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / repeats;
}

// GATED_KERNELS_CELL_GEMM, or -1 for auto.
int forced_candidate() {
  const char* text = std::getenv("GATED_KERNELS_CELL_GEMM");
  if (text == nullptr || *text == '\0' || std::strcmp(text, "auto") == 0) return -1;
  if (std::strcmp(text, "own") == 0) return static_cast<int>(Candidate::kOwn);
  if (std::strcmp(text, "onednn") == 0) return static_cast<int>(Candidate::kOnednn);
  if (std::strcmp(text, "aten") == 0) return static_cast<int>(Candidate::kAten);
  if (std::strcmp(text, "float") == 0) return static_cast<int>(Candidate::kFloat);
  TORCH_CHECK(false,
              "GATED_KERNELS_CELL_GEMM must be one of auto, own, onednn, aten, float, got '", text,
              "'");
}

int time_candidates(const std::vector<bool>& allowed, const std::function<void(int)>& run) {
  const int count = static_cast<int>(allowed.size());
  std::vector<double> best(count, 1e30);
  std::vector<int> repeats(count, 0);
  for (int c = 0; c < count; ++c) {
    if (!allowed[c]) continue;
    seconds_of(run, c, 1);  // set-up: packing, JIT, first touch
    const double warm = seconds_of(run, c, 1);
    repeats[c] = std::clamp(static_cast<int>(kRoundSeconds / std::max(warm, 1e-9)), 1,
                            kMaxRepeats);
  }
  for (int round = 0; round < kRounds; ++round) {
    for (int c = 0; c < count; ++c) {
      if (allowed[c]) best[c] = std::min(best[c], seconds_of(run, c, repeats[c]));
    }
  }
  int winner = -1;
  for (int c = 0; c < count; ++c) {
    if (allowed[c] && (winner < 0 || best[c] < best[winner])) winner = c;
  }
  return winner;
}

// The threads that run products at the same time as this one: its team's size inside a parallel
// region (team.h), else ATen's thread count, which a library product may use. Not
// at::get_num_threads() inside a region: that is omp_get_max_threads(), which read 2 on a team's
// first thread and 1 on its second (2 threads, the EPYC), so the two keyed one product
// differently and each kept the kernel it timed.
int64_t threads_at_once() {
#ifdef _OPENMP
  if (at::in_parallel_region()) return omp_get_num_threads();
#endif
  return at::get_num_threads();
}

}  // namespace

ProductKey product_key(int64_t tag, int64_t M, int64_t N, int64_t K, bool a_rows, bool b_rows,
                       bool accumulate, int64_t dtype) {
  int64_t size_class = 1;
  while (size_class < M) size_class *= 2;
  return {tag, size_class, N, K, a_rows, b_rows, accumulate, dtype, threads_at_once()};
}

int fastest_of(const ProductKey& key, const std::vector<bool>& allowed,
               const std::function<void(int)>& run) {
  if (std::count(allowed.begin(), allowed.end(), true) == 1) {
    return static_cast<int>(std::find(allowed.begin(), allowed.end(), true) - allowed.begin());
  }
  {
    const std::lock_guard<std::mutex> lock(choices_mutex);
    const auto found = choices().find(key);
    if (found != choices().end()) return found->second;
  }
  // Timed outside the lock: the threads of a recurrence set up their products at once, so two
  // threads meeting the same new kind both time it, each while the others run theirs, as they
  // will in the loop. The first choice stored stands and both run it: had each kept its own, the
  // first call would mix kernels (which round differently) where later calls do not, and repeated
  // calls would differ in their last bits (tests/test_determinism.py).
  const int winner = time_candidates(allowed, run);
  const std::lock_guard<std::mutex> lock(choices_mutex);
  return choices().emplace(key, winner).first->second;
}

Candidate fastest(const ProductKey& key, const std::array<bool, kCandidates>& allowed,
                  const std::function<void(Candidate)>& run) {
  const int forced = forced_candidate();
  if (forced >= 0 && allowed[forced]) return static_cast<Candidate>(forced);
  return static_cast<Candidate>(
      fastest_of(key, std::vector<bool>(allowed.begin(), allowed.end()),
                 [&](int c) { run(static_cast<Candidate>(c)); }));
}

}  // namespace gated_kernels
