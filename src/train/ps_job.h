// What the parameter-server schemes share (internal to train/): the job's rendezvous store, the
// model's parameters as one flat vector, and when a silent replica counts as dead.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/ps/keys.h"
#include "dtrain/torch/models.h"
#include "dtrain/train/downpour.h"

namespace dtrain::train {

// A replica not heard from for this long is dead to the shards (heartbeats come 4x as often).
// Half the timeout: a pull held for a dead replica is released well before it times out.
inline std::chrono::milliseconds dead_after(const DownpourJob& job) {
  return std::min(job.timeout / 2, std::chrono::milliseconds(10000));
}

struct Store {
  explicit Store(const DownpourJob& job)
      : base(comm::open_store(comm::RendezvousUrl::parse(job.rendezvous))),
        prefixed(job.run_id, *base) {}
  std::unique_ptr<comm::Store> base;
  comm::PrefixedStore prefixed;
};

// The model's parameters as one flat vector in registration order, and the embedding table's
// rows in it (embed).
struct Layout {
  std::vector<torch::Tensor> params;
  std::vector<uint64_t> offsets;
  uint64_t length = 0;
  int table = -1;  // index in params of the embedding table, or -1
  ps::Table rows;
  std::vector<ps::Range> dense;  // everything but the table, merged where contiguous

  explicit Layout(torchx::Net& model) {
    for (const auto& item : model.named_parameters()) {
      const auto& p = item.value();
      DT_ENFORCE(p.scalar_type() == torch::kFloat32 && p.is_contiguous(), "parameter ", item.key(),
                 " is not a contiguous float32 tensor");
      if (item.key() == "table.weight") {
        table = static_cast<int>(params.size());
        rows = {length, static_cast<uint64_t>(p.size(0)), static_cast<uint64_t>(p.size(1))};
      } else if (!dense.empty() && dense.back().end == length) {
        dense.back().end = length + static_cast<uint64_t>(p.numel());
      } else {
        dense.push_back({length, length + static_cast<uint64_t>(p.numel())});
      }
      params.push_back(p);
      offsets.push_back(length);
      length += static_cast<uint64_t>(p.numel());
    }
  }
  // --model-parallel: this rank's partition of the model, at the keys its slices have in
  // `full`'s vector (a slice of a parameter is a contiguous run of rows: one range each, merged
  // where they meet). `length` stays the whole vector's: the flat buffers are indexed by key.
  Layout(const Layout& full, torch::nn::Module& part,
         const std::function<torch::Tensor(const std::string&, const torch::Tensor&)>& slice_of,
         const torch::nn::Module& full_model)
      : length(full.length) {
    const auto whole = full_model.named_parameters();
    for (const auto& item : part.named_parameters()) {
      const torch::Tensor* t = whole.find(item.key());
      DT_ENFORCE(t != nullptr, "model parallel: the full model has no parameter ", item.key());
      const torch::Tensor s = slice_of(item.key(), *t);
      DT_ENFORCE(s.defined() && s.is_contiguous() && s.sizes() == item.value().sizes(),
                 "model parallel: parameter ", item.key(), " of the partition is not a contiguous "
                 "slice of the full model's");
      size_t i = 0;
      while (i < full.params.size() && !full.params[i].is_same(*t)) ++i;
      DT_ENFORCE(i < full.params.size(), "model parallel: parameter ", item.key(),
                 " is not in the full model's layout");
      const uint64_t at = full.offsets[i] + static_cast<uint64_t>(s.data_ptr<float>() -
                                                                  t->data_ptr<float>());
      const uint64_t end = at + static_cast<uint64_t>(s.numel());
      if (!dense.empty() && dense.back().end == at) {
        dense.back().end = end;
      } else {
        dense.push_back({at, end});
      }
      params.push_back(item.value());
      offsets.push_back(at);
    }
  }
  bool sparse() const { return table >= 0; }
  // Copies `flat` into the parameters (all but the table when sparse).
  void load(const std::vector<float>& flat) {
    for (size_t i = 0; i < params.size(); ++i) {
      if (static_cast<int>(i) == table && sparse()) continue;
      std::memcpy(params[i].data_ptr<float>(), flat.data() + offsets[i],
                  static_cast<size_t>(params[i].numel()) * sizeof(float));
    }
  }
  void load_all(const std::vector<float>& flat) {
    for (size_t i = 0; i < params.size(); ++i) {
      std::memcpy(params[i].data_ptr<float>(), flat.data() + offsets[i],
                  static_cast<size_t>(params[i].numel()) * sizeof(float));
    }
  }
  void store(std::vector<float>& flat) const {  // the parameters into `flat` (all of them)
    for (size_t i = 0; i < params.size(); ++i) {
      std::memcpy(flat.data() + offsets[i], params[i].data_ptr<float>(),
                  static_cast<size_t>(params[i].numel()) * sizeof(float));
    }
  }
  // The gradients (all but the table when sparse), scaled, into `flat`.
  void gradients(std::vector<float>& flat, float scale) const {
    for (size_t i = 0; i < params.size(); ++i) {
      if (static_cast<int>(i) == table && sparse()) continue;
      const auto& g = params[i].grad();
      float* out = flat.data() + offsets[i];
      const auto n = static_cast<size_t>(params[i].numel());
      if (!g.defined()) {
        std::fill(out, out + n, 0.0f);
        continue;
      }
      const float* in = g.data_ptr<float>();
      for (size_t k = 0; k < n; ++k) out[k] = in[k] * scale;
    }
  }
};

// Downpour's parameter-server rank `shard` of a job of `workers` replica ranks: serves until the
// job ends (downpour_server.cc); returns its update count and bytes.
TrainResult serve_downpour_shard(const TrainOptions& o, const DownpourJob& job, int workers,
                                 int shard);

}  // namespace dtrain::train
