// Model parallelism for the MLP, partitioned by layers or by neurons (partitioned_mlp.h).
//
// Works as follows. Backward is run by hand, one partition-local piece at a time, rather than
// through one autograd graph: every message that crosses a partition boundary detaches the graph,
// and the gradient that comes back for it is fed to the local piece's backward.
//  - kNeurons: layer l's local output rows a_l (relu applied, except for the logits) are gathered
//    transposed ([units, B] blocks in rank order, so the gathered buffer is the next layer's input
//    transposed, with no reordering). In backward, the gradient of the gathered input on each rank
//    holds only the contributions through this rank's rows of the next layer; the reduce-scatter
//    sums them and hands each rank the rows of its own units. The logits' gradient is computed on
//    every rank from the same replicated loss, so it is complete there: each rank takes its rows.
//  - kLayers: stage s receives its input from s-1, runs its layers (relu after the last one unless
//    it holds the output layer) and sends the activations to s+1; the last stage computes the loss.
//    Backward sends the input's gradient to s-1, the batch loss (a double) appended. With M
//    micro-batches every stage runs the M forwards in order, then the M backwards in reverse
//    order; each part's loss is weighted by its share of the batch, so the gradients sum to the
//    batch mean's. Each part's messages have their own tags, drawn alike on every stage.
#include "dtrain/torch/partitioned_mlp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"

namespace dtrain::torchx {

Partitioning parse_partitioning(const std::string& s) {
  if (s == "layers") return Partitioning::kLayers;
  if (s == "neurons") return Partitioning::kNeurons;
  throw InvalidArgument("--partition: '" + s + "' is not one of layers, neurons");
}

const char* name(Partitioning p) {
  return p == Partitioning::kLayers ? "layers" : "neurons";
}

UnitRange unit_range(int64_t width, int part, int parts) {
  const int64_t base = width / parts, extra = width % parts;
  const int64_t begin = part * base + std::min<int64_t>(part, extra);
  return {begin, begin + base + (part < extra ? 1 : 0)};
}

std::vector<int> stage_bounds(const std::vector<int64_t>& widths, int parts) {
  const int layers = static_cast<int>(widths.size()) - 1;
  DT_ENFORCE(parts >= 1 && parts <= layers, "a partition by layers of an MLP with ", layers,
             " layers needs 1..", layers, " partitions, got ", parts);
  std::vector<double> prefix(layers + 1, 0);  // weight counts
  for (int l = 0; l < layers; ++l) prefix[l + 1] = prefix[l] + double(widths[l]) * widths[l + 1];
  // best[k][j]: the smallest largest stage over the first j layers cut into k stages.
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(parts + 1, std::vector<double>(layers + 1, kInf));
  std::vector<std::vector<int>> cut(parts + 1, std::vector<int>(layers + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= parts; ++k) {
    for (int j = k; j <= layers; ++j) {
      for (int i = k - 1; i < j; ++i) {
        const double v = std::max(best[k - 1][i], prefix[j] - prefix[i]);
        if (v < best[k][j]) {
          best[k][j] = v;
          cut[k][j] = i;
        }
      }
    }
  }
  std::vector<int> bounds(parts + 1);
  bounds[parts] = layers;
  for (int k = parts, j = layers; k >= 1; --k) {
    bounds[k - 1] = cut[k][j];
    j = cut[k][j];
  }
  return bounds;
}

std::string mlp_layer_name(int i, int layers) {
  return i == layers - 1 ? "out" : "fc" + std::to_string(i);
}

// What backward needs of a forward.
struct PartitionedMlp::Forward {
  // neurons: per layer, its input (a leaf needing grad, but for the data) and local output.
  // layers: per held layer, its input and its output (relu applied), no autograd graph.
  std::vector<torch::Tensor> inputs;
  std::vector<torch::Tensor> outputs;
};

PartitionedMlp::PartitionedMlp(std::vector<int64_t> widths, Partitioning how,
                               std::shared_ptr<comm::Group> group, int micro_batches)
    : widths_(std::move(widths)),
      how_(how),
      group_(std::move(group)),
      micro_batches_(micro_batches) {
  DT_ENFORCE(group_ != nullptr, "PartitionedMlp: no group");
  DT_ENFORCE(micro_batches_ >= 1, "micro-batches must be >= 1, got ", micro_batches_);
  DT_ENFORCE(micro_batches_ == 1 || how_ == Partitioning::kLayers,
             "micro-batches pipeline a partition by layers; a partition by neurons has every rank "
             "busy on every layer already");
  DT_ENFORCE(widths_.size() >= 2, "PartitionedMlp: widths need an input and an output, got ",
             widths_.size());
  const int layers = static_cast<int>(widths_.size()) - 1;
  const int k = group_->size(), me = group_->rank();
  weight_.resize(layers);
  bias_.resize(layers);
  if (how_ == Partitioning::kLayers) {
    const auto bounds = stage_bounds(widths_, k);
    first_ = bounds[me];
    last_ = bounds[me + 1];
  } else {
    for (int l = 0; l < layers; ++l) {
      DT_ENFORCE(widths_[l + 1] >= k, "a partition by neurons over ", k, " ranks needs at least ",
                 k, " units in every layer; layer ", mlp_layer_name(l, layers), " has ",
                 widths_[l + 1]);
    }
    first_ = 0;
    last_ = layers;
  }
  for (int l = first_; l < last_; ++l) {
    const int64_t rows =
        how_ == Partitioning::kLayers ? widths_[l + 1] : unit_range(widths_[l + 1], me, k).size();
    // Initialised as torch::nn::Linear does (load_slices replaces it with the full model's).
    const double bound = 1.0 / std::sqrt(double(widths_[l]));
    auto holder = register_module(mlp_layer_name(l, layers), std::make_shared<torch::nn::Module>());
    weight_[l] = holder->register_parameter(
        "weight", torch::empty({rows, widths_[l]}).uniform_(-bound, bound));
    bias_[l] = holder->register_parameter("bias", torch::empty({rows}).uniform_(-bound, bound));
  }
}

torch::Tensor PartitionedMlp::slice_of(const std::string& pname, const torch::Tensor& full) const {
  const int layers = static_cast<int>(widths_.size()) - 1;
  for (int l = first_; l < last_; ++l) {
    const std::string layer = mlp_layer_name(l, layers);
    if (pname != layer + ".weight" && pname != layer + ".bias") continue;
    if (how_ == Partitioning::kLayers) return full;
    const auto r = unit_range(widths_[l + 1], group_->rank(), group_->size());
    return full.slice(0, r.begin, r.end);
  }
  return {};
}

void PartitionedMlp::load_slices(const torch::nn::Module& full) {
  torch::NoGradGuard no_grad;
  const auto params = full.named_parameters();
  const int layers = static_cast<int>(widths_.size()) - 1;
  for (int l = first_; l < last_; ++l) {
    const std::string layer = mlp_layer_name(l, layers);
    for (const char* what : {"weight", "bias"}) {
      const std::string pname = layer + "." + what;
      const torch::Tensor* t = params.find(pname);
      DT_ENFORCE(t != nullptr, "load_slices: the full model has no parameter '", pname, "'");
      auto& mine = std::string(what) == "weight" ? weight_[l] : bias_[l];
      const auto slice = slice_of(pname, *t);
      DT_ENFORCE(slice.sizes() == mine.sizes(), "load_slices: parameter '", pname, "' has shape ",
                 t->sizes(), ", partition ", group_->rank(), " expects a slice of shape ",
                 mine.sizes());
      mine.copy_(slice);
    }
  }
}

torch::Tensor PartitionedMlp::forward_neurons(const torch::Tensor& x, bool train, Forward* f,
                                              uint64_t* sent) {
  const int layers = static_cast<int>(widths_.size()) - 1;
  const int k = group_->size();
  const int64_t batch = x.size(0);
  torch::Tensor h = x;
  for (int l = 0; l < layers; ++l) {
    torch::Tensor in = h;
    if (train && l > 0) in = h.detach().requires_grad_(true);
    auto y = torch::addmm(bias_[l], in, weight_[l].t());
    if (l + 1 < layers) y = torch::relu(y);
    if (f) {
      f->inputs.push_back(in);
      f->outputs.push_back(y);
    }
    // Gather the layer's outputs, transposed: block r is rank r's units x batch.
    std::vector<size_t> counts(k);
    for (int r = 0; r < k; ++r) {
      counts[r] = static_cast<size_t>(unit_range(widths_[l + 1], r, k).size() * batch);
    }
    auto local = y.detach().t().contiguous();
    auto gathered = torch::empty({widths_[l + 1], batch});
    if (k > 1) {
      collective::AllgathervOptions o(*group_);
      o.input = collective::ConstView(local.data_ptr<float>(), local.numel(),
                                      collective::DataType::kFloat32);
      o.output = collective::View(gathered.data_ptr<float>(), gathered.numel(),
                                  collective::DataType::kFloat32);
      o.counts = counts;
      collective::allgatherv(o);
      // Ring allgather: rank r sends every block but that of rank r + 1.
      *sent += (gathered.numel() - counts[(group_->rank() + 1) % k]) * sizeof(float);
    } else {
      gathered.copy_(local);
    }
    h = gathered.t();
  }
  return h;
}

torch::Tensor PartitionedMlp::forward_layers(const torch::Tensor& x, bool train, Forward* f,
                                             uint64_t* sent, uint64_t tag) {
  const int layers = static_cast<int>(widths_.size()) - 1;
  const int k = group_->size(), me = group_->rank();
  const int64_t batch = x.size(0);
  // Backward is computed by hand (step_layers), so no graph is recorded.
  torch::NoGradGuard no_grad;
  torch::Tensor h = x;
  if (me > 0) {
    h = torch::empty({batch, widths_[first_]});
    group_->recv_into(
        me - 1, tag,
        std::span(reinterpret_cast<std::byte*>(h.data_ptr<float>()), h.numel() * sizeof(float)));
  }
  for (int l = first_; l < last_; ++l) {
    if (f) f->inputs.push_back(h);
    h = torch::addmm(bias_[l], h, weight_[l].t());
    if (l + 1 < layers) h.relu_();
    if (f) f->outputs.push_back(h);
  }
  if (me + 1 < k) {
    auto out = h.detach().contiguous();
    group_->send(me + 1, tag,
                 std::span(reinterpret_cast<const std::byte*>(out.data_ptr<float>()),
                           out.numel() * sizeof(float)));
    *sent += out.numel() * sizeof(float);
  }
  return h;
}

MlpStepResult PartitionedMlp::step(const torch::Tensor& x, const torch::Tensor& y) {
  DT_ENFORCE(x.dim() == 2 && x.size(1) == widths_[0] && x.scalar_type() == torch::kFloat,
             "PartitionedMlp::step: x must be [batch, ", widths_[0], "] float, got ", x.sizes());
  DT_ENFORCE(y.dim() == 1 && y.size(0) == x.size(0), "PartitionedMlp::step: y must be [", x.size(0),
             "], got ", y.sizes());
  MlpStepResult result;
  const int k = group_->size(), me = group_->rank();
  const int64_t batch = x.size(0);
  Forward f;
  if (how_ == Partitioning::kNeurons) {
    auto logits = forward_neurons(x, true, &f, &result.bytes_sent).detach().requires_grad_(true);
    auto loss = torch::nn::functional::cross_entropy(logits, y);
    loss.backward();
    result.loss = loss.item<double>();
    const int layers = static_cast<int>(widths_.size()) - 1;
    const auto out_rows = unit_range(widths_[layers], me, k);
    torch::Tensor grad = logits.grad().slice(1, out_rows.begin, out_rows.end);
    for (int l = layers - 1; l >= 0; --l) {
      f.outputs[l].backward(grad);
      if (l == 0) break;
      // The input's gradient through this rank's rows; summed over ranks, each keeping its own.
      auto partial = f.inputs[l].grad().t().contiguous();  // [units, batch]
      const auto mine = unit_range(widths_[l], me, k);
      auto own = torch::empty({mine.size(), batch});
      if (k > 1) {
        std::vector<size_t> counts(k);
        for (int r = 0; r < k; ++r) {
          counts[r] = static_cast<size_t>(unit_range(widths_[l], r, k).size() * batch);
        }
        collective::ReduceScatterOptions o(*group_);
        o.input = collective::ConstView(partial.data_ptr<float>(), partial.numel(),
                                        collective::DataType::kFloat32);
        o.output =
            collective::View(own.data_ptr<float>(), own.numel(), collective::DataType::kFloat32);
        o.counts = counts;
        collective::reduce_scatter(o);
        // Ring reduce-scatter: rank r sends every block but its own.
        result.bytes_sent += (partial.numel() - counts[me]) * sizeof(float);
      } else {
        own.copy_(partial);
      }
      grad = own.t();
    }
    return result;
  }

  return step_layers(x, y);
}

MlpStepResult PartitionedMlp::step_layers(const torch::Tensor& x, const torch::Tensor& y) {
  MlpStepResult result;
  const int k = group_->size(), me = group_->rank();
  const int64_t batch = x.size(0);
  const int parts = static_cast<int>(std::min<int64_t>(micro_batches_, batch));
  std::vector<uint64_t> forward_tags(parts), backward_tags(parts);
  for (auto& t : forward_tags) t = group_->next_tag();
  for (auto& t : backward_tags) t = group_->next_tag();
  std::vector<Forward> fs(parts);
  std::vector<int64_t> begin(parts + 1);
  for (int m = 0; m <= parts; ++m) begin[m] = batch * m / parts;
  std::vector<torch::Tensor> logits_grad(parts);
  for (int m = 0; m < parts; ++m) {
    const auto xm = x.slice(0, begin[m], begin[m + 1]);
    auto out = forward_layers(xm, true, &fs[m], &result.bytes_sent, forward_tags[m]);
    if (me + 1 == k) {
      // This part's share of the batch mean, and its gradient.
      auto logits = out.detach().requires_grad_(true);
      auto loss = torch::nn::functional::cross_entropy(logits, y.slice(0, begin[m], begin[m + 1])) *
                  (double(begin[m + 1] - begin[m]) / double(batch));
      loss.backward();
      logits_grad[m] = logits.grad();
      result.loss += loss.item<double>();
    }
  }
  // Backward by hand, so that each micro-batch computes only the gradients of activations (what
  // the previous stage waits for) and the weight gradients are one product over the whole batch
  // at the end: per micro-batch, they would rewrite the full weight gradient M times.
  const int layers = static_cast<int>(widths_.size()) - 1;
  const int held = last_ - first_;
  std::vector<std::vector<torch::Tensor>> pre_grad(held, std::vector<torch::Tensor>(parts));
  torch::NoGradGuard no_grad;
  for (int m = parts - 1; m >= 0; --m) {
    const int64_t rows = begin[m + 1] - begin[m];
    torch::Tensor g;
    if (me + 1 == k) {
      g = logits_grad[m];
    } else {
      // The gradient of this stage's output, and the batch loss behind the floats.
      const int64_t n = rows * widths_[last_];
      auto msg = torch::empty({n + 2});
      group_->recv_into(me + 1, backward_tags[m],
                        std::span(reinterpret_cast<std::byte*>(msg.data_ptr<float>()),
                                  msg.numel() * sizeof(float)));
      std::memcpy(&result.loss, msg.data_ptr<float>() + n, sizeof(double));
      g = msg.narrow(0, 0, n).view({rows, widths_[last_]});
    }
    for (int l = last_ - 1; l >= first_; --l) {
      const int j = l - first_;
      if (l + 1 < layers) g = torch::threshold_backward(g, fs[m].outputs[j], 0);
      pre_grad[j][m] = g;
      if (l > first_ || me > 0) g = g.mm(weight_[l]);
    }
    if (me > 0) {
      const int64_t n = rows * widths_[first_];
      auto msg = torch::empty({n + 2});
      msg.narrow(0, 0, n).view({rows, widths_[first_]}).copy_(g);
      std::memcpy(msg.data_ptr<float>() + n, &result.loss, sizeof(double));
      group_->send(me - 1, backward_tags[m],
                   std::span(reinterpret_cast<const std::byte*>(msg.data_ptr<float>()),
                             msg.numel() * sizeof(float)));
      result.bytes_sent += msg.numel() * sizeof(float);
    }
  }
  for (int l = first_; l < last_; ++l) {
    const int j = l - first_;
    std::vector<torch::Tensor> xs(parts);
    for (int m = 0; m < parts; ++m) xs[m] = fs[m].inputs[j];
    const auto grad_pre = parts == 1 ? pre_grad[j][0] : torch::cat(pre_grad[j]);
    const auto input = parts == 1 ? xs[0] : torch::cat(xs);
    const auto dw = grad_pre.t().mm(input);
    const auto db = grad_pre.sum(0);
    for (auto [param, grad] : {std::pair{weight_[l], dw}, std::pair{bias_[l], db}}) {
      if (param.grad().defined()) {
        param.mutable_grad().add_(grad);
      } else {
        param.mutable_grad() = grad;
      }
    }
  }
  return result;
}

torch::Tensor PartitionedMlp::infer(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  uint64_t sent = 0;
  if (how_ == Partitioning::kNeurons) return forward_neurons(x, false, nullptr, &sent);
  auto out = forward_layers(x, false, nullptr, &sent, group_->next_tag());
  // The last stage's logits to every stage.
  const int k = group_->size();
  auto logits = torch::empty({x.size(0), widths_.back()});
  if (group_->rank() + 1 == k) logits.copy_(out);
  if (k > 1) {
    collective::BroadcastOptions o(*group_);
    o.data =
        collective::View(logits.data_ptr<float>(), logits.numel(), collective::DataType::kFloat32);
    o.root = k - 1;
    collective::broadcast(o);
  }
  return logits;
}

uint64_t average_gradients(torch::nn::Module& partition, comm::Group& replicas) {
  auto params = partition.parameters();
  int64_t total = 0;
  for (const auto& p : params) total += p.numel();
  if (replicas.size() == 1 || total == 0) return 0;
  auto flat = torch::empty({total});
  int64_t at = 0;
  for (auto& p : params) {
    auto part = flat.narrow(0, at, p.numel());
    if (p.grad().defined()) {
      part.copy_(p.grad().reshape({-1}));
    } else {
      part.zero_();
    }
    at += p.numel();
  }
  collective::AllreduceOptions o(replicas);
  o.output = collective::View(flat.data_ptr<float>(), flat.numel(), collective::DataType::kFloat32);
  o.op = collective::ReduceOp::kAvg;
  collective::allreduce(o);
  at = 0;
  for (auto& p : params) {
    auto part = flat.narrow(0, at, p.numel()).view(p.sizes());
    if (p.grad().defined()) {
      p.mutable_grad().copy_(part);
    } else {
      p.mutable_grad() = part.clone();
    }
    at += p.numel();
  }
  return static_cast<uint64_t>(total) * sizeof(float);
}

}  // namespace dtrain::torchx
