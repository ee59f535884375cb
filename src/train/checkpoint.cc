#include "dtrain/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/common/file.h"
#include "dtrain/reduce/reducer.h"

namespace dtrain::train {
namespace {

torch::Tensor bytes_tensor(const void* data, size_t n) {
  auto t = torch::empty({static_cast<int64_t>(n)}, torch::kUInt8);
  if (n > 0) std::memcpy(t.data_ptr(), data, n);
  return t;
}

std::string tensor_string(const torch::Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.numel());
}

torch::serialize::InputArchive open_archive(const std::string& path) {
  if (!std::filesystem::exists(path)) throw IoError("checkpoint " + path + " does not exist");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw IoError("checkpoint " + path + " is not readable (corrupt or not a dtrain checkpoint): " +
                  e.what_without_backtrace());
  }
  return archive;
}

}  // namespace

void save_checkpoint(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                     torch::optim::Optimizer& optimizer,
                     const std::vector<std::byte>& reducer_state) {
  nlohmann::json j = {{"step", meta.step},
                      {"epoch", meta.epoch},
                      {"position", meta.position},
                      {"seed", meta.seed},
                      {"world_size", meta.world_size},
                      {"model", meta.model},
                      {"reduce", meta.reduce},
                      {"format", 1}};
  if (!meta.schedule.is_null()) j["schedule"] = meta.schedule;
  const std::string js = j.dump();
  torch::serialize::OutputArchive archive;
  archive.write("meta", bytes_tensor(js.data(), js.size()));
  torch::serialize::OutputArchive model_archive;
  model.save(model_archive);
  archive.write("model", model_archive);
  torch::serialize::OutputArchive optim_archive;
  optimizer.save(optim_archive);
  archive.write("optimizer", optim_archive);
  archive.write("reducer", bytes_tensor(reducer_state.data(), reducer_state.size()));
  archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
  std::ostringstream os;
  archive.save_to(os);
  const std::string bytes = os.str();
  write_file_atomic(path, bytes, /*durable=*/true);
}

CheckpointMeta load_checkpoint(const std::string& path, torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer,
                               std::vector<std::byte>* reducer_state) {
  auto archive = open_archive(path);
  CheckpointMeta meta;
  try {
    torch::Tensor js;
    archive.read("meta", js);
    auto j = nlohmann::json::parse(tensor_string(js));
    meta.step = j.at("step");
    meta.epoch = j.at("epoch");
    meta.position = j.at("position");
    meta.seed = j.at("seed");
    meta.world_size = j.at("world_size");
    meta.model = j.at("model");
    meta.reduce = j.at("reduce");
    if (j.contains("schedule")) meta.schedule = j.at("schedule");
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    model.load(model_archive);
    torch::serialize::InputArchive optim_archive;
    archive.read("optimizer", optim_archive);
    optimizer.load(optim_archive);
    torch::Tensor red;
    archive.read("reducer", red);
    if (reducer_state) {
      reducer_state->resize(red.numel());
      if (red.numel() > 0) std::memcpy(reducer_state->data(), red.data_ptr(), red.numel());
    }
    torch::Tensor rng;
    archive.read("rng", rng);
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng);
  } catch (const c10::Error& e) {
    throw InvalidArgument("checkpoint " + path +
                          " does not fit this model (was it written with "
                          "another --model or sizes?): " +
                          e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw IoError("checkpoint " + path + " has a corrupt header: " + e.what());
  }
  return meta;
}

namespace {
// Module archives nest one sub-archive per submodule; collect every tensor, depth first.
void collect_tensors(torch::serialize::InputArchive& archive, std::vector<torch::Tensor>& out) {
  for (const auto& key : archive.keys()) {
    torch::Tensor t;
    if (archive.try_read(key, t)) {
      out.push_back(t);
      continue;
    }
    torch::serialize::InputArchive sub;
    if (archive.try_read(key, sub)) collect_tensors(sub, out);
  }
}
}  // namespace

std::vector<torch::Tensor> load_checkpoint_parameters(const std::string& path) {
  auto archive = open_archive(path);
  torch::serialize::InputArchive model_archive;
  archive.read("model", model_archive);
  std::vector<torch::Tensor> out;
  collect_tensors(model_archive, out);
  return out;
}

// Reducer states differ per rank (error-feedback residuals are each rank's own), so a checkpoint
// keeps all of them: rank 0 collects every rank's state into one blob,
//   "DTRS" u32 magic, u32 version 1, u64 world, then per rank u64 size + bytes,
// or an empty blob when no rank has state (dense). Every rank calls this at the same points.
constexpr uint32_t kReducerStatesMagic = 0x53525444;  // "DTRS" little-endian

std::vector<std::byte> gather_reducer_states(comm::Group& g, const std::vector<std::byte>& mine) {
  const uint64_t tag = g.next_tag();
  if (g.rank() != 0) {
    g.send(0, tag, mine);
    return {};
  }
  std::vector<std::vector<std::byte>> all(g.size());
  all[0] = mine;
  bool any = !mine.empty();
  for (int r = 1; r < g.size(); ++r) {
    all[r] = g.recv(r, tag).bytes;
    any |= !all[r].empty();
  }
  if (!any) return {};
  ByteWriter w;
  w.put(kReducerStatesMagic).put(uint32_t{1}).put(static_cast<uint64_t>(g.size()));
  for (const auto& s : all) w.put_vector(s);
  return w.take();
}

// This rank's part of a blob written by gather_reducer_states (empty blob: no state).
std::vector<std::byte> own_reducer_state(const std::vector<std::byte>& blob, int rank, int world,
                                         const std::string& path) {
  if (blob.empty()) return {};
  ByteReader r(blob, "--resume " + path + ": the reducer state");
  DT_ENFORCE(r.get<uint32_t>("magic") == kReducerStatesMagic && r.get<uint32_t>("version") == 1,
             "--resume ", path, ": the reducer state is not in a format this version reads");
  const auto n_ranks = r.get<uint64_t>("rank count");
  DT_ENFORCE(n_ranks == static_cast<uint64_t>(world), "--resume ", path,
             ": the reducer state holds ", n_ranks, " ranks, this job has ", world);
  std::vector<std::byte> mine;
  for (int rk = 0; rk < world; ++rk) {
    auto state = r.get_vector<std::byte>("a rank's state");
    if (rk == rank) mine = std::move(state);
  }
  r.finish();
  return mine;
}

// What the checkpoint keeps of the bucketing (CheckpointMeta::schedule).
nlohmann::json schedule_record(const std::string& schedule, const engine::GradientEngine& eng,
                               const engine::MgwfbpScheduler* mgwfbp) {
  nlohmann::json j = {{"spec", schedule}, {"buckets", eng.buckets()}};
  if (mgwfbp && mgwfbp->planned()) j["mgwfbp"] = mgwfbp->record();
  if (const auto* dense = dynamic_cast<const reduce::DenseReducer*>(&eng.reducer())) {
    j["allreduce"] = dense->size_switch().str();
  }
  return j;
}

// Reinstalls the checkpoint's buckets when it was written with the same --schedule (a resumed
// run then sums in the same order; an mgwfbp plan is not measured again). A checkpoint of an
// mgwfbp run still in its warm-up holds no plan: the warm-up starts again.
void restore_schedule(const std::string& schedule, const nlohmann::json& j,
                      engine::GradientEngine& eng, engine::MgwfbpScheduler* mgwfbp,
                      const std::string& path) {
  if (j.is_null()) return;
  try {
    auto* dense = dynamic_cast<reduce::DenseReducer*>(&eng.reducer());
    if (dense && j.contains("allreduce")) {
      dense->set_size_switch(collective::AllreduceSwitch::parse(j.at("allreduce")));
    }
    if (j.value("spec", std::string()) != schedule) return;
    if (mgwfbp && j.contains("mgwfbp")) {
      mgwfbp->restore(j.at("mgwfbp"));
    } else if (!mgwfbp) {
      eng.set_buckets(j.at("buckets").get<engine::Buckets>());
    }
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument("--resume " + path + ": the bucket layout is malformed: " + e.what());
  }
}

}  // namespace dtrain::train
