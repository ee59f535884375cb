#include "dtrain/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dtrain/collective/collective.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/envelope.h"
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

// A checkpoint file is LibTorch's archive inside our envelope (common/envelope.h): its length and
// checksum are checked before LibTorch reads a byte. Files written before the envelope existed
// (no magic) are read as bare archives.
torch::serialize::InputArchive open_archive(const std::string& path) {
  if (!std::filesystem::exists(path)) throw IoError("checkpoint " + path + " does not exist");
  std::ifstream in(path, std::ios::binary);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw IoError("cannot read checkpoint " + path);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(file.data()),
                                         file.size());
  torch::serialize::InputArchive archive;
  try {
    if (envelope::is_sealed(bytes)) {
      const auto body = envelope::open(bytes, "checkpoint", "checkpoint " + path);
      std::istringstream stream(
          std::string(reinterpret_cast<const char*>(body.data()), body.size()));
      archive.load_from(stream);
    } else {
      archive.load_from(path);
    }
  } catch (const c10::Error& e) {
    throw IoError("checkpoint " + path + " is not readable (corrupt or not a dtrain checkpoint): " +
                  e.what_without_backtrace());
  }
  return archive;
}

}  // namespace

std::string optimizer_name(torch::optim::Optimizer& optimizer) {
  if (dynamic_cast<torch::optim::Adam*>(&optimizer)) return "adam";
  if (auto* sgd = dynamic_cast<torch::optim::SGD*>(&optimizer)) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(sgd->defaults());
    return o.momentum() > 0 ? "momentum" : "sgd";
  }
  return "other";
}

void save_checkpoint(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                     torch::optim::Optimizer& optimizer,
                     const std::vector<std::byte>& reducer_state,
                     const std::vector<torch::Tensor>& extra) {
  nlohmann::json j = {{"step", meta.step},
                      {"epoch", meta.epoch},
                      {"position", meta.position},
                      {"seed", meta.seed},
                      {"world_size", meta.world_size},
                      {"model", meta.model},
                      {"reduce", meta.reduce},
                      {"format", 1}};
  if (!meta.schedule.is_null()) j["schedule"] = meta.schedule;
  if (!meta.optimizer.empty()) j["optimizer"] = meta.optimizer;
  if (!meta.progress.is_null()) j["progress"] = meta.progress;
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
  if (!extra.empty()) {
    torch::serialize::OutputArchive extra_archive;
    for (size_t i = 0; i < extra.size(); ++i) extra_archive.write(std::to_string(i), extra[i]);
    archive.write("extra", extra_archive);
    archive.write("extra_count", torch::tensor(static_cast<int64_t>(extra.size())));
  }
  std::ostringstream os;
  archive.save_to(os);
  const std::string body = os.str();
  const auto sealed = envelope::seal(
      {reinterpret_cast<const std::byte*>(body.data()), body.size()}, "checkpoint");
  write_file_atomic(path, {reinterpret_cast<const char*>(sealed.data()), sealed.size()},
                    /*durable=*/true);
}

CheckpointMeta load_checkpoint(const std::string& path, torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer,
                               std::vector<std::byte>* reducer_state,
                               std::vector<torch::Tensor>* extra) {
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
    if (j.contains("progress")) meta.progress = j.at("progress");
    if (j.contains("optimizer")) {
      meta.optimizer = j.at("optimizer");
      const std::string mine = optimizer_name(optimizer);
      DT_ENFORCE(meta.optimizer == mine, "checkpoint ", path, " was written with --optimizer ",
                 meta.optimizer, "; this run uses --optimizer ", mine,
                 ": resume with the optimizer the run started with");
    }
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
    if (extra) {
      torch::Tensor count;
      DT_ENFORCE(archive.try_read("extra_count", count), "checkpoint ", path,
                 " holds no per-rank tensors (it was not written by this training scheme)");
      torch::serialize::InputArchive extra_archive;
      archive.read("extra", extra_archive);
      extra->resize(static_cast<size_t>(count.item<int64_t>()));
      for (size_t i = 0; i < extra->size(); ++i) extra_archive.read(std::to_string(i), (*extra)[i]);
    }
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

namespace {

std::string rank_file(int64_t step, int rank) {
  return "checkpoint-" + std::to_string(step) + ".rank" + std::to_string(rank) + ".pt";
}

void barrier(comm::Group& g) {
  collective::BarrierOptions b(g);
  collective::barrier(b);
}

}  // namespace

void save_rank_checkpoint(comm::Group& g, const std::string& dir, const CheckpointMeta& meta,
                          torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                          const std::vector<std::byte>& state,
                          const std::vector<torch::Tensor>& extra) {
  namespace fs = std::filesystem;
  if (g.rank() != 0) {
    // Rank 0 made the directory at the start; another host may need its own.
    std::error_code ec;
    fs::create_directories(dir, ec);
  }
  const std::string mine = rank_file(meta.step, g.rank());
  save_checkpoint(dir + "/" + mine, meta, model, optimizer, state, extra);
  barrier(g);  // every rank's file is complete
  if (g.rank() == 0) {
    nlohmann::json files = nlohmann::json::array();
    for (int r = 0; r < g.size(); ++r) files.push_back(rank_file(meta.step, r));
    const nlohmann::json manifest = {{"format", "dtrain rank checkpoint set"},
                                     {"version", 1},
                                     {"step", meta.step},
                                     {"world_size", g.size()},
                                     {"files", files}};
    write_file_atomic(dir + "/checkpoint.json", manifest.dump(2) + "\n", /*durable=*/true);
  }
  barrier(g);  // the manifest names the new set: older ones may go
  std::error_code ec;
  const std::string suffix = ".rank" + std::to_string(g.rank()) + ".pt";
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 && name != mine) {
      fs::remove(entry.path(), ec);
    }
  }
}

CheckpointMeta load_rank_checkpoint(int rank, int world, const std::string& dir,
                                    torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                    std::vector<std::byte>* state,
                                    std::vector<torch::Tensor>* extra) {
  namespace fs = std::filesystem;
  const std::string manifest_path = dir + "/checkpoint.json";
  if (!fs::exists(manifest_path)) {
    if (fs::exists(dir + "/checkpoint.pt")) {
      DT_THROW(InvalidArgument, "--resume ", dir,
               ": it holds a synchronous checkpoint (checkpoint.pt) and no per-rank set "
               "(checkpoint.json); resume it with the --algorithm it was written with");
    }
    DT_THROW(IoError, "--resume ", dir, ": no checkpoint manifest ", manifest_path);
  }
  nlohmann::json manifest;
  std::string file;
  try {
    std::ifstream in(manifest_path);
    manifest = nlohmann::json::parse(in);
    DT_ENFORCE(manifest.at("world_size").get<int>() == world, "--resume ", dir,
               ": the checkpoint was written by ", manifest.at("world_size").get<int>(),
               " workers, this job has ", world);
    file = manifest.at("files").at(static_cast<size_t>(rank)).get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    DT_THROW(IoError, "checkpoint manifest ", manifest_path, " is corrupt: ", e.what());
  }
  DT_ENFORCE(file.find('/') == std::string::npos, "checkpoint manifest ", manifest_path,
             " names a file outside its directory: ", file);
  const std::string path = dir + "/" + file;
  if (!fs::exists(path)) {
    DT_THROW(IoError, "--resume ", dir, ": rank ", rank, "'s checkpoint file ", path,
             " is missing (the manifest ", manifest_path, " lists it)");
  }
  CheckpointMeta meta = load_checkpoint(path, model, optimizer, state, extra);
  DT_ENFORCE(meta.step == manifest.at("step").get<int64_t>(), "checkpoint ", path, " holds step ",
             meta.step, ", its manifest ", manifest_path, " step ",
             manifest.at("step").get<int64_t>());
  return meta;
}

void check_resumable(const CheckpointMeta& meta, int world, const std::string& model,
                     const std::string& dir) {
  DT_ENFORCE(meta.world_size == world, "--resume ", dir, ": the checkpoint was written by ",
             meta.world_size, " workers, this job has ", world);
  DT_ENFORCE(meta.model == model, "--resume ", dir, ": the checkpoint holds model '", meta.model,
             "', not '", model, "'");
}

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
