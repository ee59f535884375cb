// ExDyna's threshold selection: the one-pass |x| >= lambda test (alone, or fused with the error-
// feedback update), the counted threshold levels every rank picks from, and the spec's online
// threshold rule. Pure functions, exposed for tests and `dtrain bench compress`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace dtrain::reduce {
struct ExDynaOptions;
}

namespace dtrain::reduce::exdyna {

// Appends to `out` the indices i in [begin, end) with |values[i]| >= lambda, in increasing order,
// in one pass (NaN is never selected). `out` is not cleared.
void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint32_t>& out);
void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint64_t>& out);

// The error-feedback update of elements [begin, end) in one pass, reading and writing each of c,
// g (and u) once: with u, u = m u + g and c += u; without, c += g; then g = 0. With `out`, also
// appends the indices where the new |c| >= lambda, in increasing order (the selection fused into
// the same pass). The arrays must not overlap.
template <typename Index>
void compensate_select(float* c, float* g, float* u, float m, size_t begin, size_t end,
                       float lambda, std::vector<Index>* out);

// The thresholds of the levels: lambda * spacing^j for j = -levels/2 .. levels - 1 - levels/2,
// increasing, as floats (what the selection compares with).
std::vector<float> level_thresholds(double lambda, int levels, double spacing);
// For candidates (indices into values, all with |values[i]| >= levels[0]) adds to counts[j] the
// number with |values[i]| >= levels[j], for every j.
template <typename Index>
void count_levels(std::span<const float> values, std::span<const Index> candidates,
                  std::span<const float> levels, std::span<int64_t> counts);
// The level whose total count is nearest to k; on ties the one nearest the middle level
// (totals.size() / 2, the current threshold), so counts that do not move with lambda (an
// all-zero bucket: every rank's forced single index) leave the threshold where it is.
int nearest_level(std::span<const int64_t> totals, double k);

// The index of the first element of largest magnitude in [begin, end) (begin < end).
size_t argmax_abs(std::span<const float> values, size_t begin, size_t end);

// lambda_0 = 1 / (2 sqrt(k)) with k = density * d (at least 1).
double initial_threshold(double density, size_t d);
// The online scaling rule: r = k_sent / k; lambda * up if r > band, lambda * down if
// r < 1 / band, else lambda.
double next_threshold(double lambda, uint64_t k_sent, double k, const ExDynaOptions& o);

}  // namespace dtrain::reduce::exdyna
