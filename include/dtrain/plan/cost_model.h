// The communication cost model MG-WFBP plans with: t_c(M) = alpha + beta * M for an allreduce of
// M bytes, fitted on the actual group, plus the measured size -> time table it was fitted from.
//
// time() answers from the table when there is one (piecewise-linear in bytes between measured
// points; the first point's time below it; beyond the last point, the last time plus beta per
// extra byte), else from the line. The table follows the real curve where the line does not
// (protocol switches, segment pipelining); alpha stays the start-up cost the merge rule weighs.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtrain/comm/group.h"

namespace dtrain::plan {

struct CostModel {
  double alpha_s = 0;          // start-up seconds
  double beta_s_per_byte = 0;  // seconds per byte
  // (bytes, seconds: mean of the calls without the slowest tenth), strictly increasing in bytes;
  // empty: time() uses the line.
  std::vector<std::pair<uint64_t, double>> table;

  // Predicted seconds to allreduce `bytes`.
  double time(uint64_t bytes) const;

  // Least-squares fit of alpha and beta (both clamped at >= 0) over the samples, weighted by
  // relative error so that small sizes (which fix alpha) count as much as large ones (which fix
  // beta). Samples of the same size are averaged; the result is kept as the table. Needs at
  // least two distinct sizes and finite, non-negative times; throws InvalidArgument otherwise.
  static CostModel fit(std::vector<std::pair<uint64_t, double>> samples);

  // {"alpha_s": .., "beta_s_per_byte": .., "table": [[bytes, seconds], ..]}. Doubles round-trip
  // exactly. from_json validates and throws InvalidArgument naming the bad field.
  nlohmann::json to_json() const;
  static CostModel from_json(const nlohmann::json& j);
};

// Times `run` (an allreduce of a float span, e.g. the reducer's dense path) on every size in
// `sizes_bytes` (rounded up to whole floats): `warmup` untimed calls, then `iters` timed calls,
// each started right after a barrier. Each call's time is the maximum over ranks (one
// allreduce(max) at the end), each size's time the mean of its calls without the slowest tenth, and
// the model is fitted from those, so every rank returns the same model. Collective: every rank must
// call it with the same sizes and iteration counts.
CostModel measure(comm::Group& group, const std::vector<uint64_t>& sizes_bytes, int iters,
                  const std::function<void(std::span<float>)>& run, int warmup = 2);
// The same with an iteration count per size (large sizes, slow and steady, need fewer calls).
CostModel measure(comm::Group& group, const std::vector<uint64_t>& sizes_bytes,
                  const std::vector<int>& iters, const std::function<void(std::span<float>)>& run,
                  int warmup = 2);

}  // namespace dtrain::plan
