// MG-WFBP: which layers' gradients to merge into one allreduce (specs/mgwfbp.md, "Merge rule").
//
// Layers are indexed l = 0..L-1 in forward order; backprop produces layer L-1's gradient first.
// Timing model (one communication stream, FIFO): layer l's gradient is ready at
// tau_b[l] + tb[l], where tau_b[L-1] = 0 and tau_b[l] = tau_b[l+1] + tb[l+1]; a group's
// allreduce starts when the previous group's has finished and its last-produced layer (its
// lowest index) is ready, and takes cost.time(bytes of the group). A group of 0 bytes sends
// nothing and takes no time.
//
// Merged layers in the rule's recurrences: when layer l is merged into l-1, tc[l] becomes 0 and
// tc[l-1] the cost of the whole merged group, so tau_c[l] + tc[l] = tau_c[l] passes straight on
// and tau_c[l-1] = max(tau_c[l], ready of l-1) is the group's start, as in the timing model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtrain/plan/cost_model.h"

namespace dtrain::plan {

struct Layer {
  std::string name;
  uint64_t bytes = 0;     // gradient bytes communicated for this layer
  double backward_s = 0;  // tb: seconds backprop spends producing this layer's gradient

  // {"name": .., "bytes": .., "backward_s": ..}; from_json throws InvalidArgument.
  nlohmann::json to_json() const;
  static Layer from_json(const nlohmann::json& j);
};

struct MergePlan {
  // Groups of layer indices in the order their communication starts: the first holds layer L-1.
  // Each group is a contiguous range of layers, listed from its highest index down.
  std::vector<std::vector<size_t>> groups;
  // tau_c[0] + tc[0]: backward plus non-overlapped communication, from the start of backward.
  double predicted_s = 0;

  // {"groups": [[..], ..], "predicted_s": ..}; from_json throws InvalidArgument.
  nlohmann::json to_json() const;
  static MergePlan from_json(const nlohmann::json& j);
};

// The spec's merge rule on these inputs (tc from cost.time(), the rule's alpha is cost.alpha_s).
// Deterministic: the same inputs give the same plan on every rank. Throws InvalidArgument for a
// negative or non-finite backward time.
MergePlan mgwfbp_plan(const std::vector<Layer>& layers, const CostModel& cost);

// Backward plus non-overlapped communication time of any grouping (e.g. wfbp: one group per
// layer; single: one group) under the timing model above, groups communicated in the order
// given. `groups` must name every layer exactly once; groups need not be contiguous (a group is
// ready when the last of its layers is). mgwfbp_plan's groups predict its predicted_s exactly.
double predict(const std::vector<Layer>& layers, const std::vector<std::vector<size_t>>& groups,
               const CostModel& cost);

// A table of the plan, one row per group: its layers (names), bytes, when it is ready, when its
// communication starts and ends; then backward time, predicted time and the non-overlapped rest.
std::string describe(const std::vector<Layer>& layers, const MergePlan& plan,
                     const CostModel& cost);

}  // namespace dtrain::plan
