// MG-WFBP merge rule, and the timing model that predicts any grouping.
//
// The rule works as follows (specs/mgwfbp.md). ready[l] = tau_b[l] + tb[l] is when backprop has
// produced layer l's gradient, tc[l] the cost of the group layer l currently leads (0 once l is
// merged into l-1) and tau_c[l] when that communication may start:
//   tau_c[L-1] = ready[L-1],  tau_c[l] = max(tau_c[l+1] + tc[l+1], ready[l]).
// Walking l = L-1 down to 1, let r = ready[l-1]. If layer l's communication would still be running
// at r (r < tau_c[l] + tc[l]) and either it has not started yet (tau_c[l] > r) or the wait for
// l-1 is shorter than the start-up it saves (r - tau_c[l] < alpha), l joins l-1's group: l-1's
// bytes grow by l's (p[l-1] += p[l]), tc[l] = 0 and tc[l-1] = t_c(p[l-1]).
// With a measured size->time table the start-up saved is tc[l] + tc[l-1] - t_c(p[l-1] + p[l]),
// what two messages cost beyond one of their joint size: exactly alpha when t_c is the line, and
// on real transports (where per-byte cost falls with size, e.g. pipelining that only starts on
// large messages) the saving the table actually measured.
// The spec recomputes tau_c after each merge; only tau_c[l-1..0] can change, and tau_c[l-1] is
// the next value the walk reads, so the walk extends tau_c one layer per step instead: the same
// numbers, in O(L) rather than O(L^2).
// The result is the rule's output only: it is never compared against other schedules.
//
// predict() simulates the FIFO stream group by group (start = max(previous end, ready of the
// group's last-produced layer)); on the rule's own groups it performs the same additions and
// maxima in the same order as the recurrence, so the two agree to the last bit.
#include "dtrain/plan/mgwfbp.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "dtrain/common/error.h"

namespace dtrain::plan {
namespace {

void check_layers(const std::vector<Layer>& layers) {
  for (size_t l = 0; l < layers.size(); ++l) {
    DT_ENFORCE(std::isfinite(layers[l].backward_s) && layers[l].backward_s >= 0, "layer ", l, " ('",
               layers[l].name, "') has backward_s ", layers[l].backward_s,
               ", expected a finite value >= 0");
  }
}

// ready[l] = tau_b[l] + tb[l]; tau_b[l] = ready[l+1], tau_b[L-1] = 0.
std::vector<double> ready_times(const std::vector<Layer>& layers) {
  std::vector<double> ready(layers.size());
  double tau_b = 0;
  for (size_t l = layers.size(); l-- > 0;) {
    ready[l] = tau_b + layers[l].backward_s;
    tau_b = ready[l];
  }
  return ready;
}

double comm_time(const CostModel& cost, uint64_t bytes) {
  return bytes ? cost.time(bytes) : 0;
}

// JSON from a file holds non-negative integers as unsigned, JSON built in code as signed.
bool is_index(const nlohmann::json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
}

struct GroupTiming {
  uint64_t bytes = 0;
  double ready = 0, start = 0, end = 0;
};

std::vector<GroupTiming> simulate(const std::vector<Layer>& layers,
                                  const std::vector<std::vector<size_t>>& groups,
                                  const CostModel& cost) {
  check_layers(layers);
  std::vector<int> seen(layers.size(), 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    DT_ENFORCE(!groups[g].empty(), "group ", g, " is empty");
    for (size_t l : groups[g]) {
      DT_ENFORCE(l < layers.size(), "group ", g, " names layer ", l, " but there are ",
                 layers.size(), " layers");
      DT_ENFORCE(seen[l]++ == 0, "layer ", l, " is in more than one group");
    }
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    DT_ENFORCE(seen[l] == 1, "layer ", l, " ('", layers[l].name, "') is in no group");
  }
  const std::vector<double> ready = ready_times(layers);
  std::vector<GroupTiming> out;
  double stream_free = 0;
  for (const auto& group : groups) {
    GroupTiming t;
    for (size_t l : group) {
      t.bytes += layers[l].bytes;
      t.ready = std::max(t.ready, ready[l]);
    }
    t.start = std::max(stream_free, t.ready);
    t.end = t.start + comm_time(cost, t.bytes);
    stream_free = t.end;
    out.push_back(t);
  }
  return out;
}

std::string group_names(const std::vector<Layer>& layers, const std::vector<size_t>& group) {
  auto name = [&](size_t l) {
    return layers[l].name.empty() ? fmt::format("#{}", l) : layers[l].name;
  };
  if (group.size() > 3) {
    return fmt::format("{} .. {} ({} layers)", name(group.front()), name(group.back()),
                       group.size());
  }
  std::string out;
  for (size_t l : group) out += (out.empty() ? "" : ", ") + name(l);
  return out;
}

}  // namespace

nlohmann::json Layer::to_json() const {
  return {{"name", name}, {"bytes", bytes}, {"backward_s", backward_s}};
}

Layer Layer::from_json(const nlohmann::json& j) {
  DT_ENFORCE(j.is_object() && j.contains("name") && j.at("name").is_string() &&
                 j.contains("bytes") && is_index(j.at("bytes")) && j.contains("backward_s") &&
                 j.at("backward_s").is_number(),
             "layer json: expected {\"name\": string, \"bytes\": integer >= 0, \"backward_s\": "
             "number}, got ",
             j.dump());
  Layer layer;
  layer.name = j.at("name").get<std::string>();
  layer.bytes = j.at("bytes").get<uint64_t>();
  layer.backward_s = j.at("backward_s").get<double>();
  DT_ENFORCE(std::isfinite(layer.backward_s) && layer.backward_s >= 0, "layer json: '", layer.name,
             "' has backward_s ", layer.backward_s, ", expected a finite value >= 0");
  return layer;
}

nlohmann::json MergePlan::to_json() const {
  return {{"groups", groups}, {"predicted_s", predicted_s}};
}

MergePlan MergePlan::from_json(const nlohmann::json& j) {
  DT_ENFORCE(j.is_object() && j.contains("groups") && j.at("groups").is_array() &&
                 j.contains("predicted_s") && j.at("predicted_s").is_number(),
             "merge plan json: expected {\"groups\": [[..], ..], \"predicted_s\": number}");
  MergePlan plan;
  for (const auto& g : j.at("groups")) {
    DT_ENFORCE(g.is_array(), "merge plan json: group ", g.dump(), " is not an array");
    std::vector<size_t> group;
    for (const auto& l : g) {
      DT_ENFORCE(is_index(l), "merge plan json: layer index ", l.dump(), " is not an integer >= 0");
      group.push_back(l.get<size_t>());
    }
    plan.groups.push_back(std::move(group));
  }
  plan.predicted_s = j.at("predicted_s").get<double>();
  DT_ENFORCE(std::isfinite(plan.predicted_s) && plan.predicted_s >= 0,
             "merge plan json: predicted_s is ", plan.predicted_s,
             ", expected a finite value >= 0");
  return plan;
}

MergePlan mgwfbp_plan(const std::vector<Layer>& layers, const CostModel& cost) {
  check_layers(layers);
  MergePlan plan;
  const size_t num_layers = layers.size();
  if (num_layers == 0) return plan;
  const double alpha = cost.alpha_s;
  const std::vector<double> ready = ready_times(layers);

  std::vector<uint64_t> p(num_layers);
  std::vector<double> tc(num_layers), tau_c(num_layers);
  std::vector<bool> merged_into_next(num_layers, false);  // l joined l-1's group
  for (size_t l = 0; l < num_layers; ++l) {
    p[l] = layers[l].bytes;
    tc[l] = comm_time(cost, p[l]);
  }
  tau_c[num_layers - 1] = ready[num_layers - 1];
  for (size_t l = num_layers - 1; l >= 1; --l) {
    const double r = ready[l - 1];
    // The start-up merging saves: alpha under the line; under a measured table, what two
    // messages cost beyond one of their joint size (which is alpha again when the table is a line).
    const double saved =
        cost.table.empty() ? alpha : tc[l] + tc[l - 1] - comm_time(cost, p[l - 1] + p[l]);
    if (r < tau_c[l] + tc[l] && (tau_c[l] > r || r - tau_c[l] < saved)) {
      p[l - 1] += p[l];
      p[l] = 0;
      tc[l] = 0;
      tc[l - 1] = comm_time(cost, p[l - 1]);
      merged_into_next[l] = true;
    }
    tau_c[l - 1] = std::max(tau_c[l] + tc[l], ready[l - 1]);
  }
  plan.predicted_s = tau_c[0] + tc[0];

  std::vector<size_t> group;
  for (size_t l = num_layers; l-- > 0;) {
    group.push_back(l);
    if (l == 0 || !merged_into_next[l]) {
      plan.groups.push_back(std::move(group));
      group.clear();
    }
  }
  return plan;
}

double predict(const std::vector<Layer>& layers, const std::vector<std::vector<size_t>>& groups,
               const CostModel& cost) {
  const auto timings = simulate(layers, groups, cost);
  return timings.empty() ? 0 : timings.back().end;
}

std::string describe(const std::vector<Layer>& layers, const MergePlan& plan,
                     const CostModel& cost) {
  const auto timings = simulate(layers, plan.groups, cost);
  const double backward = layers.empty() ? 0 : ready_times(layers).front();
  const double total = timings.empty() ? 0 : timings.back().end;
  std::string out = fmt::format("{:>5}  {:>12}  {:>10}  {:>10}  {:>10}  {}\n", "group", "bytes",
                                "ready ms", "start ms", "end ms", "layers");
  for (size_t g = 0; g < timings.size(); ++g) {
    const auto& t = timings[g];
    out +=
        fmt::format("{:>5}  {:>12}  {:>10.3f}  {:>10.3f}  {:>10.3f}  {}\n", g, t.bytes,
                    t.ready * 1e3, t.start * 1e3, t.end * 1e3, group_names(layers, plan.groups[g]));
  }
  out += fmt::format(
      "{} layers in {} groups; backward {:.3f} ms, predicted {:.3f} ms, communication not "
      "overlapped {:.3f} ms (alpha {:.1f} us, beta {:.3f} ms/MB)\n",
      layers.size(), timings.size(), backward * 1e3, total * 1e3, (total - backward) * 1e3,
      cost.alpha_s * 1e6, cost.beta_s_per_byte * 1e9);
  if (std::abs(total - plan.predicted_s) > 1e-9 * std::max(1.0, total)) {
    out += fmt::format("note: the plan was made predicting {:.3f} ms (another cost model?)\n",
                       plan.predicted_s * 1e3);
  }
  return out;
}

}  // namespace dtrain::plan
