#include "dtrain/engine/engine.h"

#include <chrono>
#include <cmath>
#include <cstring>

#include "dtrain/common/error.h"

namespace dtrain::engine {

Schedule Schedule::parse(const std::string& spec) {
  Schedule s;
  if (spec == "single") {
    s.kind = Kind::kSingle;
  } else if (spec == "wfbp") {
    s.kind = Kind::kWfbp;
  } else if (spec == "fused" || spec.rfind("fused:", 0) == 0) {
    s.kind = Kind::kFused;
    if (spec != "fused") {
      std::string mb = spec.substr(6);
      size_t pos = 0;
      try {
        s.fused_mb = std::stod(mb, &pos);
      } catch (const std::exception&) {
        pos = 0;
      }
      if (mb.empty() || pos != mb.size() || !(s.fused_mb > 0)) {
        throw InvalidArgument("--schedule '" + spec + "': bucket size '" + mb +
                              "' is not a positive number of MB");
      }
    }
  } else {
    throw InvalidArgument("--schedule '" + spec + "' is not one of single, wfbp, fused[:MB]");
  }
  return s;
}

std::string Schedule::str() const {
  switch (kind) {
    case Kind::kSingle:
      return "single";
    case Kind::kWfbp:
      return "wfbp";
    default:
      return detail::concat("fused:", fused_mb);
  }
}

OnNonFinite parse_on_nonfinite(const std::string& s) {
  if (s == "abort") return OnNonFinite::kAbort;
  if (s == "skip") return OnNonFinite::kSkip;
  throw InvalidArgument("--on-nonfinite '" + s + "' is not one of abort, skip");
}

std::vector<std::vector<size_t>> plan_buckets(const std::vector<ParamInfo>& params,
                                              const std::vector<size_t>& ready_order,
                                              const Schedule& schedule) {
  std::vector<std::vector<size_t>> buckets;
  if (ready_order.empty()) return buckets;
  if (schedule.kind == Schedule::Kind::kSingle) return {ready_order};
  if (schedule.kind == Schedule::Kind::kWfbp) {
    for (size_t p : ready_order) buckets.push_back({p});
    return buckets;
  }
  const double mb = 1024.0 * 1024.0;
  double cap = schedule.first_mb * mb;
  double filled = 0;
  buckets.emplace_back();
  for (size_t p : ready_order) {
    double bytes = params[p].numel * sizeof(float);
    if (!buckets.back().empty() && filled + bytes > cap) {
      buckets.emplace_back();
      filled = 0;
      cap = schedule.fused_mb * mb;
    }
    buckets.back().push_back(p);
    filled += bytes;
  }
  return buckets;
}

GradientEngine::GradientEngine(std::vector<ParamInfo> params, const Schedule& schedule,
                               std::unique_ptr<reduce::GradientReducer> reducer,
                               OnNonFinite on_nonfinite, Timeline* timeline)
    : params_(std::move(params)),
      reducer_(std::move(reducer)),
      on_nonfinite_(on_nonfinite),
      timeline_(timeline) {
  std::vector<size_t> ready_order;
  for (size_t i = params_.size(); i-- > 0;) ready_order.push_back(i);
  bucket_of_.resize(params_.size());
  offset_of_.resize(params_.size());
  seen_.assign(params_.size(), false);
  for (auto& list : plan_buckets(params_, ready_order, schedule)) {
    Bucket b;
    size_t off = 0;
    for (size_t p : list) {
      bucket_of_[p] = buckets_.size();
      offset_of_[p] = off;
      b.params.push_back(p);
      b.offsets.push_back(off);
      off += params_[p].numel;
    }
    b.data.assign(off, 0.0f);
    buckets_.push_back(std::move(b));
  }
  comm_ = std::thread([this] { comm_loop(); });
}

GradientEngine::~GradientEngine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  comm_.join();
}

void GradientEngine::begin_step(int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  step_ = step;
  step_start_ = std::chrono::steady_clock::now();
  next_ = 0;
  done_count_ = 0;
  in_step_ = true;
  std::fill(seen_.begin(), seen_.end(), false);
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.ready = b.done = b.nonfinite = false;
  }
}

void GradientEngine::mark_ready(size_t bucket) {
  buckets_[bucket].ready = true;
  cv_.notify_all();
}

void GradientEngine::on_gradient(size_t index, std::span<const float> grad) {
  DT_ENFORCE(index < params_.size(), "gradient for unknown parameter ", index);
  DT_ENFORCE(grad.size() == params_[index].numel, "gradient of ", params_[index].name, " has ",
             grad.size(), " elements, the parameter has ", params_[index].numel);
  Bucket& b = buckets_[bucket_of_[index]];
  std::memcpy(b.data.data() + offset_of_[index], grad.data(), grad.size_bytes());
  std::lock_guard<std::mutex> lock(mu_);
  DT_ENFORCE(in_step_, "gradient for ", params_[index].name, " outside a step");
  if (seen_[index]) return;  // a second hook call for the same step carries the same gradient
  seen_[index] = true;
  if (--b.pending == 0) mark_ready(bucket_of_[index]);
}

bool GradientEngine::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  for (size_t p = 0; p < params_.size(); ++p) {
    if (seen_[p]) continue;
    // No gradient this step (unused parameter): contribute zeros, as every rank must reduce it.
    Bucket& b = buckets_[bucket_of_[p]];
    std::fill_n(b.data.begin() + offset_of_[p], params_[p].numel, 0.0f);
    seen_[p] = true;
    if (--b.pending == 0) mark_ready(bucket_of_[p]);
  }
  cv_.wait(lock, [&] { return done_count_ == buckets_.size() || error_ != nullptr; });
  in_step_ = false;
  // Communication hidden behind backprop: the part of each bucket's reduction that ran before
  // backprop ended (finish() is called when it ends).
  for (const auto& b : buckets_) {
    auto from = std::max(b.comm_start, step_start_);
    auto to = std::min(b.comm_end, t0);
    if (to > from) stats_.hidden_s += std::chrono::duration<double>(to - from).count();
  }
  stats_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (error_) std::rethrow_exception(error_);
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (!buckets_[i].nonfinite) continue;
    if (on_nonfinite_ == OnNonFinite::kSkip) {
      ++stats_.skipped_steps;
      return false;
    }
    std::string names;
    for (size_t p : buckets_[i].params) names += (names.empty() ? "" : ", ") + params_[p].name;
    throw Error(detail::concat("non-finite gradient (NaN or Inf) at step ", step_, " in bucket ", i,
                               " (", names,
                               "); lower the learning rate, or pass "
                               "--on-nonfinite skip to drop such steps"));
  }
  return true;
}

std::span<const float> GradientEngine::reduced(size_t index) const {
  const Bucket& b = buckets_[bucket_of_[index]];
  return {b.data.data() + offset_of_[index], params_[index].numel};
}

void GradientEngine::comm_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] {
      return stop_ ||
             (in_step_ && error_ == nullptr && next_ < buckets_.size() && buckets_[next_].ready);
    });
    if (stop_) return;
    const size_t i = next_++;
    const int64_t step = step_;
    Bucket& b = buckets_[i];
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    std::exception_ptr failure;
    bool nonfinite = false;
    try {
      reducer_->reduce(b.data, static_cast<uint64_t>(step));
      // NaN and Inf survive averaging, so every rank sees the same verdict for the same step.
      for (float v : b.data) {
        if (!std::isfinite(v)) {
          nonfinite = true;
          break;
        }
      }
    } catch (...) {
      failure = std::current_exception();  // rethrown by finish() on the training thread
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (timeline_) timeline_->record("communicate", Timeline::kComm, t0, t1, step, int(i));
    lock.lock();
    stats_.comm_s += std::chrono::duration<double>(t1 - t0).count();
    b.nonfinite = nonfinite;
    b.comm_start = t0;
    b.comm_end = t1;
    b.done = true;
    ++done_count_;
    if (failure && !error_) error_ = failure;
    cv_.notify_all();
  }
}

}  // namespace dtrain::engine
