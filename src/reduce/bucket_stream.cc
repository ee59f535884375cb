// BucketStream: a reducer fed one bucket at a time, learning the layout (bucket_stream.h).
#include "dtrain/reduce/bucket_stream.h"

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"

namespace dtrain::reduce {

BucketStream::BucketStream(comm::Group& group, const std::string& spec, uint64_t start_step)
    : group_(group), reducer_(make_reducer(spec, group)), step_(start_step) {}

void BucketStream::reduce(size_t index, std::span<float> grad, std::vector<TensorSlot> tensors,
                          bool last) {
  // Whatever fails ends the step here, so the next step starts afresh at bucket 0 (its peers
  // learn of a failed collective from the group; a bad call is the caller's to fix).
  try {
    DT_ENFORCE_AS(InvalidArgument, index == next_, "bucket stream: bucket ", index,
                  " arrived where bucket ", next_,
                  " was expected (buckets come in order 0, 1, ..., the step's last one marked)");
    reduce_bucket(index, grad, std::move(tensors), last);
  } catch (...) {
    abort_step();
    throw;
  }
}

void BucketStream::abort_step() {
  if (reducer_in_step_) {
    reducer_in_step_ = false;
    try {
      reducer_->end_step();
    } catch (...) {  // the error that aborted the step is the one to report
    }
  }
  next_ = 0;
  known_ = false;
  learning_ = false;
  seen_.buckets.clear();
}

void BucketStream::reduce_bucket(size_t index, std::span<float> grad,
                                 std::vector<TensorSlot> tensors, bool last) {
  size_t total = 0;
  for (size_t j = 0; j < tensors.size(); ++j) {
    TensorSlot& t = tensors[j];
    if (t.name.empty()) t.name = detail::concat("b", index, ".", j);
    if (t.numel == 0) {  // from the shape; a scalar's shape {} holds one element
      t.numel = 1;
      for (int64_t d : t.shape) {
        DT_ENFORCE_AS(InvalidArgument, d >= 0, "bucket ", index, ": tensor ", t.name,
                      " has a negative dimension ", d);
        t.numel *= static_cast<size_t>(d);
      }
    }
    t.offset = total;
    total += t.numel;
  }
  if (tensors.empty()) {
    tensors.push_back({detail::concat("b", index), {}, 0, grad.size()});
  } else {
    DT_ENFORCE_AS(InvalidArgument, total == grad.size(), "bucket ", index, ": its tensors hold ",
                  total, " elements but its buffer ", grad.size());
  }

  if (index == 0) {
    seen_.buckets.clear();
    known_ = !reducer_->layout().buckets.empty();
    learning_ = false;
  }
  BucketLayout bucket{grad.size(), std::move(tensors)};
  const auto& installed = reducer_->layout().buckets;
  if (known_ && (index >= installed.size() || installed[index] != bucket ||
                 (last && index + 1 != installed.size()))) {
    known_ = false;  // a new layout: this bucket and the rest of the step go dense
  }
  seen_.buckets.push_back(std::move(bucket));
  if (known_) {
    if (index == 0) {
      reducer_->begin_step(step_);
      reducer_in_step_ = true;
    }
    reducer_->reduce(index, grad);
  } else {
    learning_ = true;
    average_dense(index, grad);
  }
  next_ = index + 1;
  if (last) finish_step();
}

void BucketStream::average_dense(size_t index, std::span<float> grad) {
  collective::AllreduceOptions o(group_);
  o.output = grad;
  o.op = collective::ReduceOp::kAvg;
  o.verify = true;  // the ranks have not agreed on this layout yet
  collective::allreduce(o);
  const int n = group_.size();
  dense_bytes_ += n > 1 ? grad.size_bytes() * 2 * (n - 1) / n : 0;
}

void BucketStream::finish_step() {
  if (reducer_in_step_) {
    reducer_in_step_ = false;
    reducer_->end_step();
  }
  next_ = 0;
  ++steps_;
  ++step_;
  if (learning_) {
    ++learning_steps_;
    learning_ = false;
    reducer_->set_layout(seen_);  // from the next step on, through the reducer
  }
}

}  // namespace dtrain::reduce
