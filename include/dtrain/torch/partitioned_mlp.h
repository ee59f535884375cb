// Model parallelism (DistBelief): one MLP replica spread over the ranks of a group, partitioned
// by layers (a pipeline of stages, each holding whole consecutive layers) or by neurons (every
// rank holds a slice of every layer's units). Only what crosses a partition boundary travels:
//  - layers: the activations leaving a stage (forward) and their gradients (backward), sent once
//    to the next or previous stage. With micro_batches M > 1 the batch is cut into M parts that
//    follow each other through the stages (GPipe's schedule: all forwards, then all backwards),
//    so that stage s works on part m while stage s+1 works on part m-1; without it the stages
//    take turns and a pipeline is no faster than one rank;
//  - neurons: each layer's outputs, allgathered so that every partition holds the full input of
//    the next layer (each value reaches each other partition once, however many weights connect
//    them), and in backward the partial gradients of those inputs, reduce-scattered so that each
//    partition receives the summed gradient of its own units only.
// The loss (cross-entropy, mean over the batch) is computed where the logits are: on the last
// stage, or on every rank (neurons). step() leaves each partition's parameter gradients in .grad,
// equal (up to float rounding order) to the slices of an unpartitioned Mlp's gradients.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::torchx {

enum class Partitioning { kLayers, kNeurons };
// "layers" or "neurons"; InvalidArgument naming the flag value otherwise.
Partitioning parse_partitioning(const std::string& s);
const char* name(Partitioning p);

// Which units of layer `layer` (rows of its weight) partition `part` of `parts` holds under
// kNeurons: an even split, the first (width % parts) partitions one more.
struct UnitRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
UnitRange unit_range(int64_t width, int part, int parts);

// Under kLayers, the first layer of each stage and, last, the layer count: contiguous stages that
// minimise the largest stage's weight count (in*out). Needs parts <= layers.
std::vector<int> stage_bounds(const std::vector<int64_t>& widths, int parts);

struct MlpStepResult {
  double loss = 0;  // on every rank (the last stage passes it back with the gradients)
  // Payload bytes this rank handed to the transport during the step (activations and their
  // gradients; under kNeurons what the ring allgather and reduce-scatter send from this rank).
  uint64_t bytes_sent = 0;
};

// widths: input, hidden..., classes (as ModelSpec: {784, 512, 256, 10}). The layers are named as
// in the unpartitioned Mlp ("fc0", ..., "out"); a partition registers only the layers it holds
// part of, with the weight and bias rows of its slice.
class PartitionedMlp : public torch::nn::Module {
 public:
  PartitionedMlp(std::vector<int64_t> widths, Partitioning how, std::shared_ptr<comm::Group> group,
                 int micro_batches = 1);

  // Copies this partition's slice of an unpartitioned Mlp's parameters (same widths; names
  // "fc<i>.weight", "fc<i>.bias", "out.weight", "out.bias"). InvalidArgument naming a parameter
  // that is missing or has another shape.
  void load_slices(const torch::nn::Module& full);
  // This partition's slice of a tensor of the unpartitioned Mlp's parameter `name` (its rows for
  // kNeurons; the whole tensor for a layer this stage holds under kLayers); undefined if this
  // partition holds none of it.
  torch::Tensor slice_of(const std::string& name, const torch::Tensor& full) const;

  // Forward and backward of cross_entropy(mlp(x), y) (mean over the batch). Every rank of the
  // group calls it with the same batch (x: [B, widths[0]] float, y: [B] int64); parameter
  // gradients are accumulated into .grad.
  MlpStepResult step(const torch::Tensor& x, const torch::Tensor& y);
  // Logits [B, classes] of a batch on every rank (no gradients).
  torch::Tensor infer(const torch::Tensor& x);

  int micro_batches() const { return micro_batches_; }
  int parts() const { return group_->size(); }
  int part() const { return group_->rank(); }
  Partitioning partitioning() const { return how_; }
  const std::vector<int64_t>& widths() const { return widths_; }
  // kLayers: the layers [first, last) this stage holds; kNeurons: all.
  int first_layer() const { return first_; }
  int last_layer() const { return last_; }
  comm::Group& group() { return *group_; }

 private:
  struct Forward;
  // Runs the layers this rank holds; keeps what backward needs in `f`.
  torch::Tensor forward_neurons(const torch::Tensor& x, bool train, Forward* f, uint64_t* sent);
  torch::Tensor forward_layers(const torch::Tensor& x, bool train, Forward* f, uint64_t* sent,
                               uint64_t tag);
  MlpStepResult step_layers(const torch::Tensor& x, const torch::Tensor& y);

  std::vector<int64_t> widths_;
  Partitioning how_;
  std::shared_ptr<comm::Group> group_;
  int micro_batches_ = 1;
  int first_ = 0, last_ = 0;
  std::vector<torch::Tensor> weight_, bias_;  // indexed by layer; undefined where not held
};

// Synchronous data parallelism across replicas of a partitioned model: averages this
// partition's parameter gradients over `replicas` (the group of the ranks holding the same
// partition in every replica; Group::split by partition), in one allreduce. Returns the bytes
// of the averaged buffer.
uint64_t average_gradients(torch::nn::Module& partition, comm::Group& replicas);

// The name of layer i of an Mlp with `layers` linear layers ("fc<i>", the last "out").
std::string mlp_layer_name(int i, int layers);

}  // namespace dtrain::torchx
