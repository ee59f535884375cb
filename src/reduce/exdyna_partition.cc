// ExDyna's pure pieces: blocks and partitions, one-pass threshold selection, threshold control.
//
// Works as follows. A bucket of d floats is cut into at most B blocks whose size is a multiple of
// 32 (cache-line and SIMD friendly; the last block takes the remainder). The n partitions are runs
// of contiguous blocks, stored as n + 1 block boundaries; moving a boundary by one block is the
// only change rebalance() makes, so partitions stay disjoint and covering by construction.
//
// Selection is the hot loop (every worker runs it over d / n floats every step). It reads 16
// floats at a time and compares their magnitudes with lambda in SIMD registers; at the densities
// that matter (<= a few percent) most groups have no hit, so one test of the or-ed comparisons
// skips them, and the loop runs near memory bandwidth. A group with hits folds its four masks
// into one 16-bit mask decoded bit by bit, which keeps the indices in increasing order.
// The scalar loop handles the tail (and whole ranges where SSE2 is not available).
#include <algorithm>
#include <bit>
#include <cmath>

#include "dtrain/common/error.h"
#include "dtrain/reduce/exdyna.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dtrain::reduce::exdyna {
namespace {

constexpr size_t kAlign = 32;

template <typename Index>
void select_impl(std::span<const float> values, size_t begin, size_t end, float lambda,
                 std::vector<Index>& out) {
  DT_ENFORCE(begin <= end && end <= values.size(), "select_threshold: range [", begin, ", ", end,
             ") is outside a vector of ", values.size());
  const float* v = values.data();
  size_t i = begin;
#if defined(__SSE2__)
  const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  const __m128 threshold = _mm_set1_ps(lambda);
  for (; i + 16 <= end; i += 16) {
    auto hits = [&](size_t at) {
      return _mm_cmpge_ps(_mm_and_ps(_mm_loadu_ps(v + at), abs_mask), threshold);
    };
    const __m128 h0 = hits(i), h1 = hits(i + 4), h2 = hits(i + 8), h3 = hits(i + 12);
    if (_mm_movemask_ps(_mm_or_ps(_mm_or_ps(h0, h1), _mm_or_ps(h2, h3))) == 0) continue;
    unsigned mask = static_cast<unsigned>(_mm_movemask_ps(h0) | _mm_movemask_ps(h1) << 4 |
                                          _mm_movemask_ps(h2) << 8 | _mm_movemask_ps(h3) << 12);
    while (mask != 0) {
      out.push_back(static_cast<Index>(i + std::countr_zero(mask)));
      mask &= mask - 1;
    }
  }
#endif
  for (; i < end; ++i) {
    if (std::fabs(v[i]) >= lambda) out.push_back(static_cast<Index>(i));
  }
}

}  // namespace

Partitions::Partitions(size_t d, size_t max_blocks, int n) : d_(d) {
  DT_ENFORCE(max_blocks >= 1, "exdyna: blocks must be >= 1, got ", max_blocks);
  DT_ENFORCE(n >= 1, "exdyna: partitions need n >= 1, got ", n);
  block_size_ = std::max(kAlign, d / max_blocks / kAlign * kAlign);
  num_blocks_ = d == 0 ? 0 : std::clamp<size_t>(d / block_size_, 1, max_blocks);
  const size_t parts = static_cast<size_t>(n);
  min_blocks_ = num_blocks_ >= parts ? std::max<size_t>(1, num_blocks_ / (4 * parts)) : 0;
  bounds_.resize(parts + 1);
  for (size_t p = 0; p <= parts; ++p) bounds_[p] = p * num_blocks_ / parts;
}

Partitions::Partitions(size_t d, size_t block_size, std::vector<size_t> boundaries)
    : d_(d), block_size_(block_size), bounds_(std::move(boundaries)) {
  DT_ENFORCE(block_size_ >= kAlign && block_size_ % kAlign == 0, "exdyna partitions: block size ",
             block_size_, " is not a positive multiple of 32");
  DT_ENFORCE(bounds_.size() >= 2, "exdyna partitions: need at least 2 boundaries, got ",
             bounds_.size());
  num_blocks_ = d == 0 ? 0 : std::max<size_t>(1, std::min(d / block_size_, bounds_.back()));
  const size_t parts = bounds_.size() - 1;
  min_blocks_ = num_blocks_ >= parts ? std::max<size_t>(1, num_blocks_ / (4 * parts)) : 0;
  DT_ENFORCE(bounds_.front() == 0 && bounds_.back() == num_blocks_,
             "exdyna partitions: ", "boundaries run from ", bounds_.front(), " to ", bounds_.back(),
             ", expected 0 to ", num_blocks_);
  for (size_t p = 0; p < parts; ++p) {
    DT_ENFORCE(bounds_[p] <= bounds_[p + 1] && bounds_[p + 1] - bounds_[p] >= min_blocks_,
               "exdyna partitions: partition ", p, " spans blocks [", bounds_[p], ", ",
               bounds_[p + 1], "), fewer than ", min_blocks_);
  }
}

int Partitions::rebalance(std::span<const uint64_t> counts, double balance) {
  const int n = count();
  DT_ENFORCE(counts.size() == static_cast<size_t>(n), "exdyna rebalance: ", counts.size(),
             " counts for ", n, " partitions");
  double sum = 0;
  for (uint64_t c : counts) sum += static_cast<double>(c);
  const double avg = sum / n;
  const double high = balance * avg, low = avg / balance;
  int moved = 0;
  for (int i = 0; i + 1 < n; ++i) {
    const auto left = static_cast<double>(counts[i]), right = static_cast<double>(counts[i + 1]);
    if (left > high && right < low && blocks_in(i) > min_blocks_) {
      --bounds_[i + 1];
      ++moved;
    } else if (right > high && left < low && blocks_in(i + 1) > min_blocks_) {
      ++bounds_[i + 1];
      ++moved;
    }
  }
  return moved;
}

void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint32_t>& out) {
  select_impl(values, begin, end, lambda, out);
}

void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint64_t>& out) {
  select_impl(values, begin, end, lambda, out);
}

size_t argmax_abs(std::span<const float> values, size_t begin, size_t end) {
  DT_ENFORCE(begin < end && end <= values.size(), "argmax_abs: bad range [", begin, ", ", end,
             ") of ", values.size());
  size_t best = begin;
  float best_magnitude = std::fabs(values[begin]);
  for (size_t i = begin + 1; i < end; ++i) {
    const float m = std::fabs(values[i]);
    if (m > best_magnitude) {
      best_magnitude = m;
      best = i;
    }
  }
  return best;
}

double initial_threshold(double density, size_t d) {
  const double k = std::max(1.0, density * static_cast<double>(d));
  return 1.0 / (2.0 * std::sqrt(k));
}

double next_threshold(double lambda, uint64_t k_sent, double k, const ExDynaOptions& o) {
  const double r = static_cast<double>(k_sent) / std::max(1.0, k);
  // Outside the band: the spec's fixed gain, or the proportional catch-up r^(1/8) capped at
  // `fast` when that moves further (r^(1/8): with the count's elasticity to lambda of about -6 for
  // Gaussian tails, each step removes ~3/4 of the log error, without overshooting).
  const double catch_up = std::clamp(std::pow(r, 0.125), 1.0 / o.fast, o.fast);
  if (r > o.band) return lambda * std::max(o.up, catch_up);
  if (r < 1.0 / o.band) return lambda * std::min(o.down, catch_up);
  return lambda;
}

std::vector<float> level_thresholds(double lambda, int levels, double spacing) {
  DT_ENFORCE(levels >= 1 && spacing > 1, "exdyna: need levels >= 1 and spacing > 1, got ", levels,
             " and ", spacing);
  std::vector<float> out(levels);
  for (int j = 0; j < levels; ++j) {
    out[j] = static_cast<float>(lambda * std::pow(spacing, j - levels / 2));
  }
  return out;
}

template <typename Index>
void count_levels(std::span<const float> values, std::span<const Index> candidates,
                  std::span<const float> levels, std::span<int64_t> counts) {
  DT_ENFORCE(counts.size() == levels.size(), "count_levels: ", counts.size(), " counts for ",
             levels.size(), " levels");
  // A histogram by the highest level each candidate reaches, then suffix sums.
  std::vector<int64_t> highest(levels.size(), 0);
  for (Index i : candidates) {
    const float m = std::fabs(values[i]);
    const auto reached = std::upper_bound(levels.begin(), levels.end(), m) - levels.begin();
    DT_ENFORCE(reached >= 1, "count_levels: candidate ", i, " (|", values[i],
               "|) is below the lowest level ", levels[0]);
    ++highest[reached - 1];
  }
  int64_t above = 0;
  for (size_t j = levels.size(); j-- > 0;) {
    above += highest[j];
    counts[j] += above;
  }
}
template void count_levels<uint32_t>(std::span<const float>, std::span<const uint32_t>,
                                     std::span<const float>, std::span<int64_t>);
template void count_levels<uint64_t>(std::span<const float>, std::span<const uint64_t>,
                                     std::span<const float>, std::span<int64_t>);

int nearest_level(std::span<const int64_t> totals, double k) {
  const int middle = static_cast<int>(totals.size()) / 2;
  int best = middle;
  for (int j = 0; j < static_cast<int>(totals.size()); ++j) {
    const double error = std::fabs(double(totals[j]) - k);
    const double best_error = std::fabs(double(totals[best]) - k);
    if (error < best_error ||
        (error == best_error && std::abs(j - middle) < std::abs(best - middle))) {
      best = j;
    }
  }
  return best;
}

}  // namespace dtrain::reduce::exdyna
