// ExDyna's threshold selection (see include/dtrain/reduce/exdyna_threshold.h).
//
// Selection is the hot loop (every worker runs it over d / n floats every step). It reads 16
// floats at a time and compares their magnitudes with lambda in SIMD registers; at the densities
// that matter (<= a few percent) most groups have no hit, so one test of the or-ed comparisons
// skips them, and the loop runs near memory bandwidth. A group with hits folds its four masks
// into one 16-bit mask decoded bit by bit, which keeps the indices in increasing order.
// compensate_select() runs the same test on the freshly compensated values while they are in
// registers, so the reducer's step reads and writes each element once (c, g and u: the streams of
// the error-feedback update itself). Scalar loops handle the tails (and whole ranges where SSE2
// is not available).
#include "dtrain/reduce/exdyna_threshold.h"

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

#if defined(__SSE2__)
// Appends i + (bit positions of mask), in increasing order.
template <typename Index>
inline void push_hits(unsigned mask, size_t i, std::vector<Index>& out) {
  while (mask != 0) {
    out.push_back(static_cast<Index>(i + std::countr_zero(mask)));
    mask &= mask - 1;
  }
}
#endif

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
    push_hits(static_cast<unsigned>(_mm_movemask_ps(h0) | _mm_movemask_ps(h1) << 4 |
                                    _mm_movemask_ps(h2) << 8 | _mm_movemask_ps(h3) << 12),
              i, out);
  }
#endif
  for (; i < end; ++i) {
    if (std::fabs(v[i]) >= lambda) out.push_back(static_cast<Index>(i));
  }
}

// One pass; Momentum and Select are compile-time so the loop carries no branches on them.
template <bool Momentum, bool Select, typename Index>
void compensate_impl(float* c, float* g, float* u, float m, size_t begin, size_t end, float lambda,
                     std::vector<Index>* out) {
  size_t i = begin;
#if defined(__SSE2__)
  const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  const __m128 threshold = _mm_set1_ps(lambda);
  const __m128 zero = _mm_setzero_ps();
  const __m128 mm = _mm_set1_ps(m);
  for (; i + 16 <= end; i += 16) {
    __m128 h[4];
    for (int q = 0; q < 4; ++q) {
      const size_t at = i + 4 * q;
      __m128 add = _mm_loadu_ps(g + at);
      if constexpr (Momentum) {
        add = _mm_add_ps(_mm_mul_ps(mm, _mm_loadu_ps(u + at)), add);
        _mm_storeu_ps(u + at, add);
      }
      const __m128 x = _mm_add_ps(_mm_loadu_ps(c + at), add);
      _mm_storeu_ps(c + at, x);
      _mm_storeu_ps(g + at, zero);
      if constexpr (Select) h[q] = _mm_cmpge_ps(_mm_and_ps(x, abs_mask), threshold);
    }
    if constexpr (Select) {
      if (_mm_movemask_ps(_mm_or_ps(_mm_or_ps(h[0], h[1]), _mm_or_ps(h[2], h[3]))) == 0) continue;
      push_hits(static_cast<unsigned>(_mm_movemask_ps(h[0]) | _mm_movemask_ps(h[1]) << 4 |
                                      _mm_movemask_ps(h[2]) << 8 | _mm_movemask_ps(h[3]) << 12),
                i, *out);
    }
  }
#endif
  for (; i < end; ++i) {
    float add = g[i];
    if constexpr (Momentum) add = u[i] = m * u[i] + add;
    c[i] += add;
    g[i] = 0.0f;
    if constexpr (Select) {
      if (std::fabs(c[i]) >= lambda) out->push_back(static_cast<Index>(i));
    }
  }
}

}  // namespace

void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint32_t>& out) {
  select_impl(values, begin, end, lambda, out);
}

void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint64_t>& out) {
  select_impl(values, begin, end, lambda, out);
}

template <typename Index>
void compensate_select(float* c, float* g, float* u, float m, size_t begin, size_t end,
                       float lambda, std::vector<Index>* out) {
  if (u != nullptr) {
    if (out != nullptr) return compensate_impl<true, true>(c, g, u, m, begin, end, lambda, out);
    return compensate_impl<true, false>(c, g, u, m, begin, end, lambda, out);
  }
  if (out != nullptr) return compensate_impl<false, true>(c, g, u, m, begin, end, lambda, out);
  compensate_impl<false, false>(c, g, u, m, begin, end, lambda, out);
}
template void compensate_select<uint32_t>(float*, float*, float*, float, size_t, size_t, float,
                                          std::vector<uint32_t>*);
template void compensate_select<uint64_t>(float*, float*, float*, float, size_t, size_t, float,
                                          std::vector<uint64_t>*);

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
  // A histogram by the highest level each candidate reaches, then suffix sums. The level is
  // found by a branch-free binary search (the comparisons become conditional moves): candidates'
  // magnitudes are random, so a branching search mispredicts about half its steps, which made
  // this loop cost 3x the whole compensate-and-select pass.
  std::vector<int64_t> highest(levels.size(), 0);
  const float* first = levels.data();
  for (Index i : candidates) {
    const float m = std::fabs(values[i]);
    DT_ENFORCE(m >= first[0], "count_levels: candidate ", i, " (|", values[i],
               "|) is below the lowest level ", first[0]);
    const float* base = first;
    for (size_t len = levels.size(); len > 1;) {  // invariant: *base <= m
      const size_t half = len / 2;
      base = base[half] <= m ? base + half : base;
      len -= half;
    }
    ++highest[base - first];
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
