#include "dtrain/engine/engine.h"

#include <algorithm>
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
  } else if (spec == "mgwfbp") {
    s.kind = Kind::kMgwfbp;
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
    throw InvalidArgument("--schedule '" + spec +
                          "' is not one of single, wfbp, fused[:MB], mgwfbp");
  }
  return s;
}

std::string Schedule::str() const {
  switch (kind) {
    case Kind::kSingle:
      return "single";
    case Kind::kWfbp:
      return "wfbp";
    case Kind::kMgwfbp:
      return "mgwfbp";
    default:
      return detail::concat("fused:", fused_mb);
  }
}

OnNonFinite parse_on_nonfinite(const std::string& s) {
  if (s == "abort") return OnNonFinite::kAbort;
  if (s == "skip") return OnNonFinite::kSkip;
  throw InvalidArgument("--on-nonfinite '" + s + "' is not one of abort, skip");
}

Buckets plan_buckets(const std::vector<ParamInfo>& params, const std::vector<size_t>& ready_order,
                     const Schedule& schedule) {
  Buckets buckets;
  if (ready_order.empty()) return buckets;
  if (schedule.kind == Schedule::Kind::kSingle || schedule.kind == Schedule::Kind::kMgwfbp) {
    return {ready_order};
  }
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

namespace {

std::vector<size_t> reverse_order(size_t n) {
  std::vector<size_t> order;
  for (size_t i = n; i-- > 0;) order.push_back(i);
  return order;
}

}  // namespace

GradientEngine::GradientEngine(std::vector<ParamInfo> params, const Schedule& schedule,
                               std::unique_ptr<reduce::GradientReducer> reducer,
                               OnNonFinite on_nonfinite, Timeline* timeline)
    : GradientEngine(params, plan_buckets(params, reverse_order(params.size()), schedule),
                     std::move(reducer), on_nonfinite, timeline) {}

GradientEngine::GradientEngine(std::vector<ParamInfo> params, Buckets buckets,
                               std::unique_ptr<reduce::GradientReducer> reducer,
                               OnNonFinite on_nonfinite, Timeline* timeline)
    : params_(std::move(params)),
      reducer_(std::move(reducer)),
      on_nonfinite_(on_nonfinite),
      timeline_(timeline) {
  seen_.assign(params_.size(), false);
  ready_s_.assign(params_.size(), -1.0);
  set_buckets(std::move(buckets));
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

void GradientEngine::set_buckets(Buckets list) {
  std::lock_guard<std::mutex> lock(mu_);
  DT_ENFORCE(!in_step_, "the engine's buckets cannot change inside step ", step_);
  std::vector<int> count(params_.size(), 0);
  std::vector<size_t> order;
  for (const auto& b : list) {
    for (size_t p : b) {
      DT_ENFORCE(p < params_.size(), "bucket layout names parameter ", p, " of ", params_.size());
      DT_ENFORCE(++count[p] == 1, "bucket layout lists parameter ", params_[p].name, " twice");
      order.push_back(p);
    }
  }
  DT_ENFORCE(order.size() == params_.size(), "bucket layout covers ", order.size(), " of ",
             params_.size(), " parameters");
  std::vector<size_t> old_order;
  for (const auto& b : buckets_list_) old_order.insert(old_order.end(), b.begin(), b.end());

  std::vector<size_t> offset(params_.size(), 0);
  size_t total = 0;
  for (size_t p : order) {
    offset[p] = total;
    total += params_[p].numel;
  }
  if (order != old_order) {
    // The parameters move: keep what they hold, in a new buffer.
    std::vector<float> memory(total, 0.0f);
    if (!memory_.empty()) {
      for (size_t p = 0; p < params_.size(); ++p) {
        std::copy_n(memory_.begin() + offset_of_[p], params_[p].numel, memory.begin() + offset[p]);
      }
    }
    memory_ = std::move(memory);
    ++memory_version_;
  }
  offset_of_ = std::move(offset);
  bucket_of_.assign(params_.size(), 0);
  buckets_.clear();
  reduce::Layout layout;
  for (const auto& b : list) {
    Bucket bucket;
    reduce::BucketLayout bl;
    bucket.begin = b.empty() ? (buckets_.empty() ? 0 : buckets_.back().end) : offset_of_[b.front()];
    bucket.end = bucket.begin;
    for (size_t p : b) {
      bucket_of_[p] = buckets_.size();
      bl.tensors.push_back(
          {params_[p].name, params_[p].shape, bucket.end - bucket.begin, params_[p].numel});
      bucket.end += params_[p].numel;
    }
    bl.numel = bucket.end - bucket.begin;
    layout.buckets.push_back(std::move(bl));
    buckets_.push_back(bucket);
  }
  buckets_list_ = std::move(list);
  reducer_->set_layout(layout);
}

std::span<float> GradientEngine::grad_memory(size_t index) {
  DT_ENFORCE(index < params_.size(), "no parameter ", index, " (the engine has ", params_.size(),
             ")");
  return {memory_.data() + offset_of_[index], params_[index].numel};
}

void GradientEngine::begin_step(int64_t step, int micro_batches, bool communicate) {
  DT_ENFORCE(micro_batches >= 1, "a step needs at least one micro-batch, got ", micro_batches);
  std::lock_guard<std::mutex> lock(mu_);
  DT_ENFORCE(!in_step_, "begin_step(", step, ") while step ", step_,
             " is still open (finish() was not called)");
  step_ = step;
  micro_batches_ = micro_batches;
  micro_ = 0;
  communicate_ = communicate;
  step_start_ = std::chrono::steady_clock::now();
  next_ = 0;
  done_count_ = 0;
  in_step_ = true;
  std::fill(memory_.begin(), memory_.end(), 0.0f);
  std::fill(seen_.begin(), seen_.end(), false);
  std::fill(ready_s_.begin(), ready_s_.end(), -1.0);
  ready_order_.clear();
  for (auto& b : buckets_) {
    b.pending = 0;
    b.ready = b.nonfinite = false;
  }
  for (size_t p = 0; p < params_.size(); ++p) ++buckets_[bucket_of_[p]].pending;
}

void GradientEngine::next_micro_batch() {
  std::lock_guard<std::mutex> lock(mu_);
  DT_ENFORCE(in_step_ && micro_ + 1 < micro_batches_, "next_micro_batch(): step ", step_, " has ",
             micro_batches_, " micro-batches and is at ", micro_ + 1);
  ++micro_;
  step_start_ = std::chrono::steady_clock::now();
}

void GradientEngine::backward_started() {
  std::lock_guard<std::mutex> lock(mu_);
  step_start_ = std::chrono::steady_clock::now();
}

void GradientEngine::check_accumulate(size_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  check_accumulate_locked(index);
}

void GradientEngine::check_accumulate_locked(size_t index) const {
  DT_ENFORCE(index < params_.size(), "gradient for unknown parameter ", index);
  DT_ENFORCE(in_step_, "gradient for ", params_[index].name,
             " outside a step (call begin_step before backward)");
  DT_ENFORCE(
      !(reducing() && seen_[index]), "gradient for ", params_[index].name,
      " arrived twice in step ", step_,
      ": its bucket was already handed to communication. Accumulate gradients over "
      "micro-batches with --accumulate N (next_micro_batch()), one backward per micro-batch");
}

void GradientEngine::note_ready(size_t index) {
  seen_[index] = true;
  ready_s_[index] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start_).count();
  ready_order_.push_back(index);
  Bucket& b = buckets_[bucket_of_[index]];
  if (--b.pending == 0) {
    b.ready = true;
    cv_.notify_all();
  }
}

void GradientEngine::mark_ready(size_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  check_accumulate_locked(index);
  if (reducing()) note_ready(index);
}

void GradientEngine::on_gradient(size_t index, std::span<const float> grad) {
  check_accumulate(index);
  DT_ENFORCE(grad.size() == params_[index].numel, "gradient of ", params_[index].name, " has ",
             grad.size(), " elements, the parameter has ", params_[index].numel);
  // The bucket is not handed over until this parameter is marked, so the memory is ours.
  float* dst = memory_.data() + offset_of_[index];
  for (size_t k = 0; k < grad.size(); ++k) dst[k] += grad[k];
  std::lock_guard<std::mutex> lock(mu_);
  if (reducing()) note_ready(index);
}

bool GradientEngine::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  DT_ENFORCE(in_step_ && last_micro_batch(), "finish() of step ", step_,
             " before its last micro-batch (", micro_ + 1, " of ", micro_batches_, ")");
  if (!communicate_) {
    // A local step: nothing was handed over; the verdict on non-finite values is this rank's.
    in_step_ = false;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      const Bucket& b = buckets_[i];
      buckets_[i].nonfinite = !std::all_of(memory_.begin() + b.begin, memory_.begin() + b.end,
                                           [](float v) { return std::isfinite(v); });
    }
    return check_finite();
  }
  // Parameters without a gradient in this micro-batch contribute what they hold; every rank
  // must reduce them.
  for (size_t p = 0; p < params_.size(); ++p) {
    if (!seen_[p]) note_ready(p);
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
  return check_finite();
}

bool GradientEngine::check_finite() {
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (!buckets_[i].nonfinite) continue;
    if (on_nonfinite_ == OnNonFinite::kSkip) {
      ++stats_.skipped_steps;
      return false;
    }
    std::string names;
    for (size_t p : buckets_list_[i]) names += (names.empty() ? "" : ", ") + params_[p].name;
    throw Error(detail::concat("non-finite gradient (NaN or Inf) at step ", step_, " in bucket ", i,
                               " (", names,
                               "); lower the learning rate, or pass "
                               "--on-nonfinite skip to drop such steps"));
  }
  return true;
}

std::span<const float> GradientEngine::reduced(size_t index) const {
  return {memory_.data() + offset_of_[index], params_[index].numel};
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
    const bool last = next_ == buckets_.size();
    Bucket& b = buckets_[i];
    const std::span<float> data(memory_.data() + b.begin, b.end - b.begin);
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    std::exception_ptr failure;
    bool nonfinite = false;
    try {
      if (i == 0) reducer_->begin_step(static_cast<uint64_t>(step));
      reducer_->reduce(i, data);
      if (last) reducer_->end_step();
      // NaN and Inf survive averaging, so every rank sees the same verdict for the same step.
      for (float v : data) {
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
    ++done_count_;
    if (failure && !error_) error_ = failure;
    cv_.notify_all();
  }
}

}  // namespace dtrain::engine
