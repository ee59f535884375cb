#include "dtrain/reduce/reducer.h"

#include <algorithm>
#include <cmath>

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/compressed.h"
#include "dtrain/reduce/exdyna.h"
#include "dtrain/reduce/omnireduce.h"
#include "dtrain/reduce/powersgd.h"

namespace dtrain::reduce {

Layout Layout::flat(std::span<const size_t> bucket_sizes) {
  Layout l;
  for (size_t i = 0; i < bucket_sizes.size(); ++i) {
    BucketLayout b;
    b.numel = bucket_sizes[i];
    b.tensors.push_back({"bucket" + std::to_string(i), {}, 0, bucket_sizes[i]});
    l.buckets.push_back(std::move(b));
  }
  return l;
}

void GradientReducer::set_layout(const Layout& layout) {
  DT_ENFORCE(!in_step_, "reducer '", name(), "': the bucket layout changed inside step ", step_);
  for (size_t b = 0; b < layout.buckets.size(); ++b) {
    size_t end = 0;
    for (const auto& t : layout.buckets[b].tensors) {
      DT_ENFORCE(t.offset == end, "reducer layout: tensor ", t.name, " of bucket ", b,
                 " starts at ", t.offset, ", expected ", end, " (tensors must tile the bucket)");
      end += t.numel;
    }
    DT_ENFORCE(end == layout.buckets[b].numel, "reducer layout: bucket ", b, " has ",
               layout.buckets[b].numel, " elements but its tensors cover ", end);
  }
  if (layout == layout_) return;
  Layout previous = std::move(layout_);
  layout_ = layout;
  on_layout(previous);
}

void GradientReducer::begin_step(uint64_t step) {
  step_ = step;
  in_step_ = true;
}

void GradientReducer::end_step() {
  in_step_ = false;
}

void GradientReducer::check_bucket(size_t bucket, size_t grad_size) const {
  DT_ENFORCE(bucket < layout_.buckets.size(), "reducer '", name(), "': bucket ", bucket,
             " of step ", step_, " is not in the layout (", layout_.buckets.size(), " buckets)");
  DT_ENFORCE(layout_.buckets[bucket].numel == grad_size, "reducer '", name(), "': bucket ", bucket,
             " of step ", step_, " has ", grad_size, " elements but the layout has ",
             layout_.buckets[bucket].numel,
             " (buckets must keep their order and sizes until the layout changes)");
}

void GradientReducer::reduce_step(uint64_t step, std::span<const std::span<float>> buckets) {
  if (layout_.buckets.empty() && !buckets.empty()) {
    std::vector<size_t> sizes;
    for (const auto& b : buckets) sizes.push_back(b.size());
    set_layout(Layout::flat(sizes));
  }
  DT_ENFORCE(buckets.size() == layout_.buckets.size(), "reducer '", name(), "': step ", step,
             " has ", buckets.size(), " buckets but the layout has ", layout_.buckets.size());
  begin_step(step);
  try {
    for (size_t b = 0; b < buckets.size(); ++b) reduce(b, buckets[b]);
  } catch (...) {
    in_step_ = false;
    throw;
  }
  end_step();
}

void GradientReducer::reduce_step(uint64_t step, std::span<float> bucket) {
  const std::span<float> one[1] = {bucket};
  reduce_step(step, one);
}

void GradientReducer::load_state(std::span<const std::byte> state) {
  DT_ENFORCE(state.empty(), "reducer '", name(), "' keeps no state, but the checkpoint holds ",
             state.size(), " bytes of it (was it written with another --reduce?)");
}

void DenseReducer::on_layout(const Layout& /*previous*/) {
  verified_.assign(layout().buckets.size(), false);
}

void DenseReducer::set_size_switch(const collective::AllreduceSwitch& s) {
  DT_ENFORCE(!in_step(), "dense reducer: the allreduce switch changed inside step ", step());
  if (s == switch_) return;
  switch_ = s;
  verified_.assign(layout().buckets.size(), false);  // the calls change: agree on them again
}

void DenseReducer::reduce(size_t bucket, std::span<float> grad) {
  check_bucket(bucket, grad.size());
  if (group_.generation() != verified_generation_) {  // reconnect(): agree again
    verified_.assign(layout().buckets.size(), false);
    verified_generation_ = group_.generation();
  }
  collective::AllreduceOptions o(group_);
  o.output = grad;
  o.op = collective::ReduceOp::kAvg;
  o.size_switch = switch_;
  o.verify = !verified_[bucket];
  collective::allreduce(o);
  verified_[bucket] = true;
  const int n = group_.size();
  const uint64_t moved = n > 1 ? grad.size_bytes() * 2 * (n - 1) / n : 0;
  bytes_sent_ += moved;
  bytes_received_ += moved;
}

std::vector<std::string> reducer_names() {
  std::vector<std::string> names = {"dense", "omnireduce", "exdyna"};
  for (const auto& n : compressed_reducer_names()) names.push_back(n);
  names.push_back("powersgd");
  return names;
}

namespace {

// The one dispatch behind make_reducer and validate_reducer_spec: each reducer's spec is parsed
// by its own parse function (the one its factory calls), so both paths throw the same errors.
// Returns the reducer when given a group, else null once the spec has been checked.
std::unique_ptr<GradientReducer> parse_reducer(const std::string& spec, comm::Group* group) {
  std::string name = spec.substr(0, spec.find(':'));
  if (name == "dense") {
    DT_ENFORCE(spec == "dense", "--reduce '", spec, "': dense takes no parameters");
    return group != nullptr ? std::make_unique<DenseReducer>(*group) : nullptr;
  }
  const std::string params =
      spec.find(':') == std::string::npos ? "" : spec.substr(spec.find(':') + 1);
  if (name == "omnireduce") {
    if (group == nullptr) {
      parse_omnireduce_options(params);
      return nullptr;
    }
    return make_omnireduce_reducer(params, *group);
  }
  if (name == "exdyna") {
    if (group == nullptr) {
      parse_exdyna_options(params);
      return nullptr;
    }
    return make_exdyna_reducer(params, *group);
  }
  if (name == "powersgd") {
    if (group == nullptr) {
      parse_powersgd_options(params);
      return nullptr;
    }
    return make_powersgd_reducer(params, *group);
  }
  for (const auto& n : compressed_reducer_names()) {
    if (name != n) continue;
    if (group == nullptr) {
      parse_compressed_spec(spec);
      return nullptr;
    }
    return make_compressed_reducer(spec, *group);
  }
  std::string valid;
  for (const auto& n : reducer_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw InvalidArgument("--reduce '" + spec + "': unknown reducer '" + name + "' (valid: " + valid +
                        ")");
}

}  // namespace

std::unique_ptr<GradientReducer> make_reducer(const std::string& spec, comm::Group& group) {
  return parse_reducer(spec, &group);
}

void validate_reducer_spec(const std::string& spec) {
  parse_reducer(spec, nullptr);
}

double warmup_density(double target, uint64_t warmup, uint64_t step) {
  const double start = std::max(kWarmupStart, target);
  if (warmup == 0 || step >= warmup || start == target) return target;
  return start * std::pow(target / start, static_cast<double>(step) / static_cast<double>(warmup));
}

}  // namespace dtrain::reduce
