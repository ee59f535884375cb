#include "run.h"

#include <dlfcn.h>
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/torch/bridge.h"

namespace dtrain::train {

// Pins LibTorch and OpenBLAS to `threads` threads (OpenBLAS through its runtime call when the
// BLAS in use is OpenBLAS).
void pin_threads(int threads) {
  torch::set_num_threads(threads);
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(threads);
  }
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o,
                                                        torch::nn::Module& model) {
  if (o.optimizer == "adam") {
    return std::make_unique<torch::optim::Adam>(model.parameters(),
                                                torch::optim::AdamOptions(o.lr));
  }
  auto opts = torch::optim::SGDOptions(o.lr).momentum(o.optimizer == "momentum" ? o.momentum : 0);
  return std::make_unique<torch::optim::SGD>(model.parameters(), opts);
}

std::shared_ptr<torchx::Net> make_model(const TrainOptions& o, const TensorData& d) {
  torchx::ModelSpec spec;
  spec.name = o.model;
  spec.input_dim = d.input_dim;
  spec.classes = d.classes;
  spec.hidden = o.hidden;
  spec.fields = o.fields;
  spec.vocab = o.vocab;
  spec.embed_dim = o.embed_dim;
  // LibTorch initialises parameters from its one process-wide generator; ranks that share a
  // process (threads, in tests) must not interleave their draws, or the seed means nothing.
  static std::mutex torch_rng;
  std::lock_guard<std::mutex> lock(torch_rng);
  torch::manual_seed(o.seed);
  return torchx::make_model(spec);
}

void write_config(const TrainOptions& o, const TensorData& d, int world, const std::string& dir) {
  nlohmann::json j = {{"model", o.model},
                      {"hidden", o.hidden},
                      {"data", d.description},
                      {"workers", world},
                      {"epochs", o.epochs},
                      {"batch_size", o.batch_size},
                      {"accumulate", o.accumulate},
                      {"global_batch", o.batch_size * o.accumulate * world},
                      {"lr", o.lr},
                      {"momentum", o.momentum},
                      {"optimizer", o.optimizer},
                      {"seed", o.seed},
                      {"algorithm", o.algorithm},
                      {"reduce", o.reduce},
                      {"average", o.average.empty() ? o.reduce : o.average},
                      {"schedule", o.schedule},
                      {"on_nonfinite", o.on_nonfinite},
                      {"max_steps", o.max_steps},
                      {"train_subset", o.train_subset},
                      {"test_subset", o.test_subset},
                      {"threads", o.threads},
                      {"checkpoint_every", o.checkpoint_every},
                      {"eval_every", o.eval_every},
                      {"target_accuracy", o.target_accuracy},
                      {"resume", o.resume}};
  if (o.algorithm == "downpour") {
    j["servers"] = o.servers;
    j["n_fetch"] = o.n_fetch;
    j["n_push"] = o.n_push;
    j["consistency"] = o.consistency;
    j["server_update"] = o.server_update.empty() ? "adagrad:lr=" + nlohmann::json(o.lr).dump()
                                                 : o.server_update;
    j["warm_start"] = o.warm_start;
  }
  if (o.algorithm == "sandblaster") {
    j["servers"] = o.servers;
    j["portions"] = o.portions > 0 ? o.portions : 8 * world;
    j["backup"] = !o.no_backup;
    j["lbfgs_history"] = o.lbfgs_history;
    j["l2"] = o.l2;
    j["slow_rank"] = o.slow_rank;
  }
  if (o.model_parallel > 1) {
    j["model_parallel"] = o.model_parallel;
    j["partition"] = o.partition;
    j["pipeline"] = o.pipeline;
    j["replicas"] = world / o.model_parallel;
  }
  if (o.model == "embed") {
    j["fields"] = o.fields;
    j["vocab"] = o.vocab;
    j["embed_dim"] = o.embed_dim;
  }
  std::ofstream out(dir + "/config.json");
  out << j.dump(2) << "\n";
  if (!out) throw IoError("cannot write " + dir + "/config.json");
}

namespace {

// write_file_atomic's temporary files are "<name>.tmp.<pid>.<random>": one whose writer is no
// longer alive was left by a run stopped mid-write (a checkpoint can be tens of MB). Removed at
// the next start; a live writer's file (another job sharing the directory) is left alone.
void remove_stale_temp_files(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const size_t at = name.find(".tmp.");
    if (at == std::string::npos || name.rfind("checkpoint", 0) != 0) continue;
    const long pid = std::strtol(name.c_str() + at + 5, nullptr, 10);
    // Only a writer that no longer exists (ESRCH); a live one, or one we may not signal, stays.
    if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    if (std::filesystem::remove(entry.path(), rm)) {
      std::fprintf(stderr, "removed %s, a temporary file left by an interrupted run\n",
                   entry.path().c_str());
    }
  }
}

}  // namespace

Run::Run(const TrainOptions& options, comm::Group& group)
    : o(options),
      g(group),
      lead(group.rank() == 0),
      world(group.size()),
      timeline(!options.timeline.empty()),
      schedule(engine::Schedule::parse(options.schedule)) {
  pin_threads(o.threads);
  data = load_data(o);
  model = make_model(o, data);
  optimizer = make_optimizer(o, *model);
  auto reducer = reduce::make_reducer(o.reduce, g);
  DT_ENFORCE(!reducer->applies_momentum() || o.optimizer == "sgd", "--reduce ", o.reduce,
             " applies momentum inside the reducer (momentum correction); use --optimizer sgd with "
             "it, not '",
             o.optimizer, "', or drop momentum= from --reduce");
  eng = std::make_unique<engine::GradientEngine>(
      torchx::param_infos(*model), schedule, std::move(reducer),
      engine::parse_on_nonfinite(o.on_nonfinite), &timeline);
  out_dir = !o.out_dir.empty() ? o.out_dir : o.resume;
  const int64_t n_train = data.x_train.size(0);
  // Every rank takes an equal shard and the same number of whole steps (the remainder is left
  // out), so no rank runs out of data while the others wait on it.
  per_step = int64_t(o.batch_size) * o.accumulate;
  steps_per_epoch = (n_train / world) / per_step;
  DT_ENFORCE(steps_per_epoch >= 1, "the training set (", n_train, " samples) is too small for ",
             world, " workers with --batch-size ", o.batch_size, " and --accumulate ",
             o.accumulate);
}

void Run::start(bool broadcast) {
  if (broadcast) torchx::broadcast_parameters(*model, g);
  grad_views = std::make_unique<torchx::GradViews>(*model, *eng);
  if (!out_dir.empty() && std::filesystem::is_directory(out_dir)) {
    remove_stale_temp_files(out_dir);
  }
  if (!lead || out_dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec || !std::filesystem::is_directory(out_dir)) {
    DT_THROW(IoError, "--out ", out_dir, ": cannot create the run directory: ",
             ec ? ec.message() : "a file of that name is in the way");
  }
  write_config(o, data, world, out_dir);
  metrics = MetricsLog(out_dir, !o.resume.empty());
}

double Run::global_mean(double v) {
  collective::AllreduceOptions ao(g);
  ao.output = collective::View(&v, 1, collective::DataType::kFloat64);
  ao.op = collective::ReduceOp::kAvg;
  collective::allreduce(ao);
  return v;
}

void Run::write_timeline(const std::string& path) {
  // Gather every rank's events on rank 0 and write one trace (pid = rank).
  std::string mine = timeline.events_json(g.rank());
  std::vector<int64_t> sizes(g.size());
  int64_t my_size = static_cast<int64_t>(mine.size());
  collective::AllgatherOptions ag(g);
  ag.input = collective::ConstView(&my_size, 1, collective::DataType::kInt64);
  ag.output = sizes;
  collective::allgather(ag);
  // allgatherv over int32 words: pad each rank's text to a multiple of 4 bytes.
  std::vector<size_t> counts;
  for (int64_t s : sizes) counts.push_back((s + 3) / 4);
  mine.resize(counts[g.rank()] * 4, ' ');
  size_t total = 0;
  for (size_t c : counts) total += c;
  std::string all(total * 4, ' ');
  collective::AllgathervOptions av(g);
  av.input = collective::ConstView(mine.data(), counts[g.rank()], collective::DataType::kInt32);
  av.output = collective::View(all.data(), total, collective::DataType::kInt32);
  av.counts = counts;
  collective::allgatherv(av);
  if (g.rank() != 0) return;
  std::ofstream out(path);
  out << "{\"traceEvents\": [\n";
  size_t off = 0;
  bool first = true;
  for (int r = 0; r < g.size(); ++r) {
    std::string part = all.substr(off, sizes[r]);
    off += counts[r] * 4;
    if (part.empty()) continue;
    out << (first ? "" : ",\n") << part;
    first = false;
  }
  out << "\n], \"displayTimeUnit\": \"ms\"}\n";
  if (!out) throw IoError("cannot write --timeline file " + path);
}

}  // namespace dtrain::train
