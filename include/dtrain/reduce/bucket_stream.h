// BucketStream: a reducer fed the way a bucketing framework hands out its gradients, as PyTorch
// DDP's comm hooks do: one bucket at a time, in bucket order, each with its tensors' shapes and
// whether it is the step's last. The whole layout is not known in advance, and it may change:
// DDP rebuilds its buckets after the first iteration (in the order gradients became ready).
//
// The stream learns the layout as it goes. A bucket goes through the reducer (with its error
// feedback, momentum, warm-started factors) only while the step's buckets are the layout installed
// at the end of the previous step. Buckets of a layout not seen before are averaged dense with our
// allreduce (the call agreement checked on every such call): the whole first step, and after a
// rebuild the step's buckets from the first one that differs. At the end of such a step the layout
// it saw is installed (set_layout: the reducer resets or re-keys its per-bucket state) and used
// from the next step on. PyTorch's own PowerSGD hook likewise stays dense until DDP has rebuilt
// its buckets. Every rank sees the same buckets (DDP agrees on the rebuild), so every rank makes
// the same choice.
//
// One thread at a time; the group is the stream's from the first reduce() to the last.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/reduce/reducer.h"

namespace dtrain::reduce {

class BucketStream {
 public:
  // `spec` is any --reduce spec (InvalidArgument naming it if it is not one). `start_step` is the
  // number of steps already taken (a resumed run), for reducers that vary with the step.
  BucketStream(comm::Group& group, const std::string& spec, uint64_t start_step = 0);

  // Averages bucket `index` in place. `tensors` are the bucket's tensors in order (their names
  // may be empty: "b<index>.<j>" is used; a numel of 0 is taken from the shape, 1 for a
  // scalar's {}); their sizes must add up to grad.size(); no tensors: one flat tensor. Buckets come
  // in order 0, 1, ..., with `last` on the step's final one; anything else is an InvalidArgument
  // naming the bucket. A call that throws (a bad bucket, a failed collective) ends the step: the
  // next call starts a step at bucket 0.
  void reduce(size_t index, std::span<float> grad, std::vector<TensorSlot> tensors, bool last);

  GradientReducer& reducer() { return *reducer_; }
  const GradientReducer& reducer() const { return *reducer_; }
  uint64_t steps() const { return steps_; }  // steps completed (the last bucket reduced)
  // Steps in which at least one bucket was averaged dense while a layout was being learnt.
  uint64_t learning_steps() const { return learning_steps_; }
  // Bytes on the wire, the reducer's and the dense learning steps' together.
  uint64_t bytes_sent() const { return reducer_->bytes_sent() + dense_bytes_; }
  uint64_t bytes_received() const { return reducer_->bytes_received() + dense_bytes_; }

 private:
  void reduce_bucket(size_t index, std::span<float> grad, std::vector<TensorSlot> tensors,
                     bool last);
  void average_dense(size_t index, std::span<float> grad);
  void finish_step();
  void abort_step();

  comm::Group& group_;
  std::unique_ptr<GradientReducer> reducer_;
  uint64_t step_;  // the reducer's step number for the current step
  uint64_t steps_ = 0;
  uint64_t learning_steps_ = 0;
  uint64_t dense_bytes_ = 0;
  size_t next_ = 0;     // the bucket index expected next
  bool known_ = false;  // the step's buckets so far match the installed layout
  bool reducer_in_step_ = false;
  bool learning_ = false;  // a bucket of this step was averaged dense
  Layout seen_;            // the buckets of the current step so far
};

}  // namespace dtrain::reduce
