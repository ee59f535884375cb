#include "dtrain/engine/mgwfbp.h"

#include <algorithm>
#include <set>

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"

namespace dtrain::engine {
namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Rank 0's text to every rank (framed messages; every rank draws the same tag).
std::string broadcast_text(comm::Group& g, const std::string& text) {
  const uint64_t tag = g.next_tag();
  if (g.rank() == 0) {
    const auto* p = reinterpret_cast<const std::byte*>(text.data());
    for (int r = 1; r < g.size(); ++r) g.send(r, tag, {p, text.size()});
    return text;
  }
  auto m = g.recv(0, tag);
  return std::string(reinterpret_cast<const char*>(m.bytes.data()), m.bytes.size());
}

}  // namespace

MgwfbpScheduler::MgwfbpScheduler(GradientEngine& engine, comm::Group& group, MgwfbpOptions options)
    : engine_(engine),
      group_(group),
      options_(options),
      dense_(dynamic_cast<const reduce::DenseReducer*>(&engine.reducer())) {
  DT_ENFORCE(
      options_.skip_steps >= 0 && options_.warmup_steps >= 1 && options_.allreduce_iters >= 1,
      "mgwfbp: skip ", options_.skip_steps, ", warm-up ", options_.warmup_steps,
      " and allreduce iterations ", options_.allreduce_iters, " must be >= 0, 1, 1");
  DT_ENFORCE(dense_ != nullptr,
             "--schedule mgwfbp plans the dense allreduce (its cost model "
             "times our allreduce); --reduce ",
             engine_.reducer().name(),
             " has other costs: use --schedule fused, wfbp or single with it");
  gaps_.resize(engine_.num_params());
}

bool MgwfbpScheduler::after_step() {
  if (planned_) return false;
  const int step = steps_seen_++;
  if (step < options_.skip_steps) return false;
  // This step's readiness gaps, in this rank's hook order.
  const auto& order = engine_.ready_order();
  const auto& ready = engine_.ready_seconds();
  double prev = 0;
  for (size_t p : order) {
    gaps_[p].push_back(std::max(0.0, ready[p] - prev));
    prev = std::max(prev, ready[p]);
  }
  if (step + 1 < options_.skip_steps + options_.warmup_steps) return false;

  // The cost model, measured on the group with the dense reducer's path.
  uint64_t total_bytes = 0;
  for (size_t p = 0; p < engine_.num_params(); ++p) total_bytes += engine_.param(p).numel * 4;
  std::vector<uint64_t> sizes;
  for (uint64_t s = 4096; s < total_bytes; s *= 4) sizes.push_back(s);
  sizes.push_back(std::max<uint64_t>(total_bytes, 4));
  std::set<size_t> verified;
  const collective::AllreduceSwitch size_switch = dense_->size_switch();
  // Up to 256 KiB every size gets allreduce_iters calls; above, proportionally fewer (at least
  // 5): large calls vary less relative to their time, and on a slow link 40 calls of the whole
  // model would cost seconds.
  std::vector<int> iters;
  for (uint64_t s : sizes) {
    const double scaled = double(options_.allreduce_iters) * double(256 << 10) / double(s);
    iters.push_back(std::clamp(static_cast<int>(scaled), std::min(5, options_.allreduce_iters),
                               options_.allreduce_iters));
  }
  cost_ = plan::measure(group_, sizes, iters, [&](std::span<float> data) {
    collective::AllreduceOptions o(group_);
    o.output = data;
    o.op = collective::ReduceOp::kAvg;
    o.size_switch = size_switch;
    o.verify = verified.insert(data.size()).second;
    collective::allreduce(o);
  });

  // Rank 0 plans from its own measurements; everyone installs its plan.
  std::string text;
  if (group_.rank() == 0) {
    nlohmann::json r;
    r["order"] = order;
    std::vector<plan::Layer> layers(order.size());
    const size_t L = order.size();
    for (size_t k = 0; k < L; ++k) {
      const size_t p = order[k];
      plan::Layer& layer = layers[L - 1 - k];
      layer.name = engine_.param(p).name;
      layer.bytes = engine_.param(p).numel * sizeof(float);
      layer.backward_s = median(gaps_[p]);
    }
    nlohmann::json lj = nlohmann::json::array();
    for (const auto& l : layers) lj.push_back(l.to_json());
    r["layers"] = lj;
    r["cost"] = cost_.to_json();
    r["plan"] = plan::mgwfbp_plan(layers, cost_).to_json();
    text = r.dump();
  }
  restore(nlohmann::json::parse(broadcast_text(group_, text)));
  return true;
}

void MgwfbpScheduler::restore(const nlohmann::json& r) {
  try {
    order_ = r.at("order").get<std::vector<size_t>>();
    layers_.clear();
    for (const auto& l : r.at("layers")) layers_.push_back(plan::Layer::from_json(l));
    cost_ = plan::CostModel::from_json(r.at("cost"));
    plan_ = plan::MergePlan::from_json(r.at("plan"));
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(std::string("mgwfbp plan record is malformed: ") + e.what());
  }
  const size_t L = engine_.num_params();
  DT_ENFORCE(order_.size() == L && layers_.size() == L, "mgwfbp plan is for ", layers_.size(),
             " layers, the model has ", L, " parameters");
  for (size_t k = 0; k < L; ++k) {
    const size_t p = order_[k];
    DT_ENFORCE(p < L && layers_[L - 1 - k].name == engine_.param(p).name, "mgwfbp plan: layer ",
               L - 1 - k, " is '", layers_[L - 1 - k].name, "', the model's parameter there is '",
               p < L ? engine_.param(p).name : std::string("?"), "'");
  }
  const Buckets buckets = buckets_of(plan_);
  engine_.set_buckets(buckets);
  record_ = r;
  record_["buckets"] = buckets;
  planned_ = true;
}

Buckets MgwfbpScheduler::buckets_of(const plan::MergePlan& plan) const {
  const size_t L = order_.size();
  Buckets out;
  for (const auto& group : plan.groups) {
    std::vector<size_t> layers = group;
    // Backprop order inside a bucket: the highest layer index is produced first.
    std::sort(layers.begin(), layers.end(), std::greater<size_t>());
    std::vector<size_t> bucket;
    for (size_t l : layers) {
      DT_ENFORCE(l < L, "mgwfbp plan names layer ", l, " of ", L);
      bucket.push_back(order_[L - 1 - l]);
    }
    out.push_back(std::move(bucket));
  }
  return out;
}

double MgwfbpScheduler::predict(const Schedule& schedule) const {
  DT_ENFORCE(planned_, "mgwfbp: no plan yet");
  if (schedule.kind == Schedule::Kind::kMgwfbp) return plan_.predicted_s;
  std::vector<ParamInfo> params(engine_.num_params());
  for (size_t p = 0; p < params.size(); ++p) params[p] = engine_.param(p);
  const size_t L = order_.size();
  std::vector<size_t> position(L);
  for (size_t k = 0; k < L; ++k) position[order_[k]] = k;
  std::vector<std::vector<size_t>> groups;
  for (const auto& bucket : plan_buckets(params, order_, schedule)) {
    std::vector<size_t> g;
    for (size_t p : bucket) g.push_back(L - 1 - position[p]);
    groups.push_back(std::move(g));
  }
  return plan::predict(layers_, groups, cost_);
}

std::string MgwfbpScheduler::describe() const {
  return planned_ ? plan::describe(layers_, plan_, cost_) : std::string("(no plan yet)");
}

}  // namespace dtrain::engine
