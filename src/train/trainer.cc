// The synchronous data-parallel training loop.
//
// Works as follows. Every rank builds the same model from the same seed, then rank 0's parameters
// are broadcast and verified by checksum. Each epoch, every rank takes a disjoint, equal-size
// shard of a seeded permutation of the training set, so all ranks run the same number of steps.
// A step: forward and loss on each of --accumulate local micro-batches, and backward, which
// accumulates straight into the engine's bucket memory (each .grad is a view of it); during the
// last backward, the accumulator hooks hand full buckets to the communication thread, which
// averages them in place while backprop continues; engine.finish() waits for the last bucket and
// the optimizer steps on the averaged .grad. Because every rank applies the same averaged gradient
// to the same parameters, the replicas stay identical without further synchronisation. At each
// epoch's end the test set is evaluated in shards and the counts summed across ranks. Rank 0 writes
// metrics and checkpoints; a checkpoint records the position inside the epoch, so --resume replays
// the same batches and, with one intra-op thread, reaches bit-identical parameters.
#include "dtrain/train/trainer.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "data_source.h"
#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "dtrain/common/file.h"
#include "dtrain/common/hash.h"
#include "dtrain/data/shard.h"
#include "dtrain/engine/engine.h"
#include "dtrain/engine/mgwfbp.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/torch/bridge.h"
#include "dtrain/torch/grad_views.h"
#include "dtrain/torch/models.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/metrics.h"

namespace dtrain::train {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Pins LibTorch and OpenBLAS to `threads` threads (OpenBLAS through its runtime call when the
// BLAS in use is OpenBLAS).
void pin_threads(int threads) {
  torch::set_num_threads(threads);
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(threads);
  }
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o, torchx::Net& model) {
  if (o.optimizer == "adam") {
    return std::make_unique<torch::optim::Adam>(model.parameters(),
                                                torch::optim::AdamOptions(o.lr));
  }
  auto opts = torch::optim::SGDOptions(o.lr).momentum(o.optimizer == "momentum" ? o.momentum : 0);
  return std::make_unique<torch::optim::SGD>(model.parameters(), opts);
}

// Test accuracy and loss, each rank evaluating a contiguous slice and the sums combined.
std::pair<double, double> evaluate(torchx::Net& model, const TensorData& d, comm::Group& g) {
  torch::NoGradGuard guard;
  const int64_t n = d.x_test.size(0);
  const int64_t lo = n * g.rank() / g.size(), hi = n * (g.rank() + 1) / g.size();
  double sums[3] = {0, 0, double(hi - lo)};  // correct, loss sum, count
  for (int64_t b = lo; b < hi; b += 1024) {
    int64_t e = std::min(hi, b + 1024);
    auto logits = model.forward(d.x_test.slice(0, b, e));
    auto y = d.y_test.slice(0, b, e);
    sums[0] += logits.argmax(1).eq(y).sum().item<double>();
    sums[1] +=
        torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
  }
  collective::AllreduceOptions o(g);
  o.output = collective::View(sums, 3, collective::DataType::kFloat64);
  collective::allreduce(o);
  return {sums[0] / std::max(1.0, sums[2]), sums[1] / std::max(1.0, sums[2])};
}

double global_mean(double v, comm::Group& g) {
  collective::AllreduceOptions o(g);
  o.output = collective::View(&v, 1, collective::DataType::kFloat64);
  o.op = collective::ReduceOp::kAvg;
  collective::allreduce(o);
  return v;
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
                      {"reduce", o.reduce},
                      {"schedule", o.schedule},
                      {"on_nonfinite", o.on_nonfinite},
                      {"max_steps", o.max_steps},
                      {"train_subset", o.train_subset},
                      {"test_subset", o.test_subset},
                      {"threads", o.threads},
                      {"checkpoint_every", o.checkpoint_every},
                      {"resume", o.resume}};
  if (o.model == "embed") {
    j["fields"] = o.fields;
    j["vocab"] = o.vocab;
    j["embed_dim"] = o.embed_dim;
  }
  std::ofstream out(dir + "/config.json");
  out << j.dump(2) << "\n";
  if (!out) throw IoError("cannot write " + dir + "/config.json");
}

void write_timeline(const engine::Timeline& timeline, const std::string& path, comm::Group& g) {
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

// The flags every rank must be given alike (they decide the model, the data order, the buckets
// and the collectives each step makes), as (flag, value) pairs.
std::vector<std::pair<const char*, std::string>> shared_flags(const TrainOptions& o) {
  std::string hidden;
  for (int64_t h : o.hidden) hidden += std::to_string(h) + ",";
  auto num = [](double x) { return nlohmann::json(x).dump(); };
  return {{"--model", o.model},
          {"--hidden", hidden},
          {"--train-subset", std::to_string(o.train_subset)},
          {"--test-subset", std::to_string(o.test_subset)},
          {"--fields", std::to_string(o.fields)},
          {"--vocab", std::to_string(o.vocab)},
          {"--embed-dim", std::to_string(o.embed_dim)},
          {"synthetic_train", std::to_string(o.synthetic_train)},
          {"synthetic_test", std::to_string(o.synthetic_test)},
          {"--epochs", std::to_string(o.epochs)},
          {"--batch-size", std::to_string(o.batch_size)},
          {"--accumulate", std::to_string(o.accumulate)},
          {"--lr", num(o.lr)},
          {"--momentum", num(o.momentum)},
          {"--optimizer", o.optimizer},
          {"--seed", std::to_string(o.seed)},
          {"--max-steps", std::to_string(o.max_steps)},
          {"--reduce", o.reduce},
          {"--schedule", o.schedule},
          {"--on-nonfinite", o.on_nonfinite},
          {"--checkpoint-every", std::to_string(o.checkpoint_every)},
          {"--log-every", std::to_string(o.log_every)}};
}

// Ranks started with different training flags would build different buckets and collectives
// and fail much later (a size mismatch aborts the transport). Every rank contributes a 64-bit
// FNV-1a hash per flag to one allgather (fixed size, whatever the values), and all ranks throw
// the same InvalidArgument naming the first flag and rank that differ from rank 0.
void check_same_flags(const TrainOptions& o, comm::Group& g) {
  if (g.size() == 1) return;
  const auto flags = shared_flags(o);
  const size_t k = flags.size();
  std::vector<int64_t> hashes(k * static_cast<size_t>(g.size()), 0);
  for (size_t i = 0; i < k; ++i) {
    const uint64_t h = Fnv1a().bytes(flags[i].second.data(), flags[i].second.size()).digest();
    hashes[static_cast<size_t>(g.rank()) * k + i] = static_cast<int64_t>(h);
  }
  collective::AllgatherOptions ag(g);
  ag.output = hashes;
  collective::allgather(ag);
  for (size_t i = 0; i < k; ++i) {
    for (int r = 1; r < g.size(); ++r) {
      if (hashes[static_cast<size_t>(r) * k + i] != hashes[i]) {
        throw InvalidArgument(
            detail::concat(flags[i].first, " differs between rank 0 and rank ", r,
                           ": every rank must be started with the same training flags (rank ",
                           g.rank(), " has ", flags[i].first, " '", flags[i].second, "')"));
      }
    }
  }
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

void validate(const TrainOptions& o) {
  const auto models = torchx::model_names();
  DT_ENFORCE(std::find(models.begin(), models.end(), o.model) != models.end(), "--model '", o.model,
             "' is not one of ", join(models));
  const std::string reducer = o.reduce.substr(0, o.reduce.find(':'));
  const auto reducers = reduce::reducer_names();
  DT_ENFORCE(std::find(reducers.begin(), reducers.end(), reducer) != reducers.end(), "--reduce '",
             o.reduce, "': unknown reducer '", reducer, "' (valid: ", join(reducers), ")");
  const auto schedule = engine::Schedule::parse(o.schedule);
  DT_ENFORCE(schedule.kind != engine::Schedule::Kind::kMgwfbp || o.reduce == "dense",
             "--schedule mgwfbp plans the dense allreduce (its cost model times it); --reduce ",
             o.reduce, " has other costs: use --schedule fused, wfbp or single with it");
  engine::parse_on_nonfinite(o.on_nonfinite);
  DT_ENFORCE(o.epochs >= 1, "--epochs must be >= 1, got ", o.epochs);
  DT_ENFORCE(o.batch_size >= 1, "--batch-size must be >= 1, got ", o.batch_size);
  DT_ENFORCE(o.accumulate >= 1, "--accumulate must be >= 1, got ", o.accumulate);
  DT_ENFORCE(o.lr > 0 && std::isfinite(o.lr), "--lr must be a positive number, got ", o.lr);
  DT_ENFORCE(o.momentum >= 0 && o.momentum < 1, "--momentum must be in [0, 1), got ", o.momentum);
  DT_ENFORCE(o.threads >= 1, "--threads must be >= 1, got ", o.threads);
  DT_ENFORCE(o.log_every >= 1, "--log-every must be >= 1, got ", o.log_every);
  DT_ENFORCE(o.checkpoint_every >= 0, "--checkpoint-every must be >= 0, got ", o.checkpoint_every);
  DT_ENFORCE(o.optimizer == "sgd" || o.optimizer == "momentum" || o.optimizer == "adam",
             "--optimizer '", o.optimizer, "' is not one of sgd, momentum, adam");
}

TrainResult train(const TrainOptions& o, comm::Group& g) {
  validate(o);
  check_same_flags(o, g);
  pin_threads(o.threads);
  const bool lead = g.rank() == 0;
  const int world = g.size();
  TensorData d = load_data(o);
  torchx::ModelSpec spec;
  spec.name = o.model;
  spec.input_dim = d.input_dim;
  spec.classes = d.classes;
  spec.hidden = o.hidden;
  spec.fields = o.fields;
  spec.vocab = o.vocab;
  spec.embed_dim = o.embed_dim;
  std::shared_ptr<torchx::Net> model;
  {
    // LibTorch initialises parameters from its one process-wide generator; ranks that share a
    // process (threads, in tests) must not interleave their draws, or the seed means nothing.
    static std::mutex torch_rng;
    std::lock_guard<std::mutex> lock(torch_rng);
    torch::manual_seed(o.seed);
    model = torchx::make_model(spec);
  }
  auto optimizer = make_optimizer(o, *model);

  engine::Timeline timeline(!o.timeline.empty());
  auto reducer = reduce::make_reducer(o.reduce, g);
  DT_ENFORCE(!reducer->applies_momentum() || o.optimizer == "sgd", "--reduce ", o.reduce,
             " applies momentum inside the reducer (momentum correction); use --optimizer sgd with "
             "it, not '",
             o.optimizer, "', or drop momentum= from --reduce");
  const engine::Schedule schedule = engine::Schedule::parse(o.schedule);
  engine::GradientEngine eng(torchx::param_infos(*model), schedule, std::move(reducer),
                             engine::parse_on_nonfinite(o.on_nonfinite), &timeline);
  std::unique_ptr<engine::MgwfbpScheduler> mgwfbp;
  if (schedule.kind == engine::Schedule::Kind::kMgwfbp) {
    mgwfbp = std::make_unique<engine::MgwfbpScheduler>(eng, g);
  }

  // Where to write, and where to continue from.
  const std::string out_dir = !o.out_dir.empty() ? o.out_dir : o.resume;
  CheckpointMeta start;
  if (!o.resume.empty()) {
    std::vector<std::byte> reducer_state;
    start = load_checkpoint(o.resume + "/checkpoint.pt", *model, *optimizer, &reducer_state);
    DT_ENFORCE(start.world_size == world, "--resume ", o.resume, ": the checkpoint was written by ",
               start.world_size, " workers, this job has ", world);
    DT_ENFORCE(start.model == o.model, "--resume ", o.resume, ": the checkpoint holds model '",
               start.model, "', not '", o.model, "'");
    restore_schedule(o.schedule, start.schedule, eng, mgwfbp.get(), o.resume + "/checkpoint.pt");
    eng.reducer().load_state(
        own_reducer_state(reducer_state, g.rank(), world, o.resume + "/checkpoint.pt"));
  }
  torchx::broadcast_parameters(*model, g);
  torchx::GradViews grad_views(*model, eng);

  MetricsLog metrics;
  if (lead && !out_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec || !std::filesystem::is_directory(out_dir)) {
      DT_THROW(IoError, "--out ", out_dir, ": cannot create the run directory: ",
               ec ? ec.message() : "a file of that name is in the way");
    }
    write_config(o, d, world, out_dir);
    metrics = MetricsLog(out_dir, !o.resume.empty());
  }
  auto checkpoint = [&](int epoch, int64_t position, int64_t step) {
    if (out_dir.empty()) return;
    const auto states = gather_reducer_states(g, eng.reducer().save_state());
    if (!lead) return;
    CheckpointMeta m{step,  epoch,   position, o.seed,
                     world, o.model, o.reduce, schedule_record(o.schedule, eng, mgwfbp.get())};
    save_checkpoint(out_dir + "/checkpoint.pt", m, *model, *optimizer, states);
  };

  const int64_t n_train = d.x_train.size(0);
  // Every rank takes an equal shard and the same number of whole steps (the remainder is left
  // out), so no rank runs out of data while the others wait on it.
  const int64_t per_step = int64_t(o.batch_size) * o.accumulate;
  const int64_t steps_per_epoch = (n_train / world) / per_step;
  DT_ENFORCE(steps_per_epoch >= 1, "the training set (", n_train, " samples) is too small for ",
             world, " workers with --batch-size ", o.batch_size, " and --accumulate ",
             o.accumulate);
  Progress progress(o.quiet || !lead, steps_per_epoch);
  if (lead && !o.quiet) {
    std::printf(
        "training %s on %s: %d workers x batch %d x %d micro-batches, %lld steps/epoch, "
        "reduce %s, schedule %s\n",
        o.model.c_str(), d.description.c_str(), world, o.batch_size, o.accumulate,
        (long long)steps_per_epoch, o.reduce.c_str(), o.schedule.c_str());
    std::fflush(stdout);
  }

  TrainResult result;
  int64_t step = start.step;
  const auto t_start = Clock::now();
  double phase[5] = {0, 0, 0, 0, 0};  // data, forward, backward, comm_wait, optimizer
  double loss_sum = 0;
  int64_t loss_count = 0;
  int64_t planned_steps = 0;  // mgwfbp: steps run on the plan, and their backward + wait time
  double planned_backward_comm_s = 0;
  bool stop = false;
  int last_epoch = start.epoch;
  int64_t last_position = start.position;
  for (int epoch = start.epoch; epoch < o.epochs && !stop; ++epoch) {
    auto shard = data::shard_indices(n_train, g.rank(), world, o.seed, epoch);
    auto index = torch::from_blob(shard.data(), {int64_t(shard.size())}, torch::kInt64).clone();
    const auto t_epoch = Clock::now();
    // phase_s records are per epoch (a report sums them over epochs).
    std::fill(std::begin(phase), std::end(phase), 0.0);
    const double comm_before = eng.stats().comm_s, hidden_before = eng.stats().hidden_s;
    const int64_t first = epoch == start.epoch ? start.position : 0;
    for (int64_t s = first; s < steps_per_epoch; ++s) {
      if (o.max_steps >= 0 && step >= o.max_steps) {
        stop = true;
        break;
      }
      // One step: `accumulate` micro-batches, each forward + backward into the bucket memory
      // (the loss scaled by 1/accumulate, so the step's gradient is the mean over all its
      // samples); the last backward hands the buckets to communication.
      auto t0 = Clock::now();
      auto t1 = t0, t2 = t0, t3 = t0;
      double data_s = 0, forward_s = 0, backward_s = 0, l = 0;
      eng.begin_step(step, o.accumulate);
      for (int m = 0; m < o.accumulate; ++m) {
        if (m > 0) eng.next_micro_batch();
        const int64_t at = s * per_step + m * o.batch_size;
        t0 = Clock::now();
        auto bi = index.slice(0, at, at + o.batch_size);
        auto x = d.x_train.index_select(0, bi);
        auto y = d.y_train.index_select(0, bi);
        t1 = Clock::now();
        auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
        t2 = Clock::now();
        eng.backward_started();
        (o.accumulate > 1 ? loss / double(o.accumulate) : loss).backward();
        t3 = Clock::now();
        data_s += secs(t0, t1);
        forward_s += secs(t1, t2);
        backward_s += secs(t2, t3);
        l += loss.item<double>() / o.accumulate;
      }
      bool apply = eng.finish();
      auto t4 = Clock::now();
      if (apply) optimizer->step();
      auto t5 = Clock::now();
      timeline.record("backward", engine::Timeline::kCompute, t2, t3, step);
      timeline.record("wait", engine::Timeline::kCompute, t3, t4, step);
      timeline.record("optimizer", engine::Timeline::kCompute, t4, t5, step);
      phase[0] += data_s;
      phase[1] += forward_s;
      phase[2] += backward_s;
      phase[3] += secs(t3, t4);
      phase[4] += secs(t4, t5);
      if (mgwfbp && mgwfbp->planned()) {
        planned_steps += 1;
        planned_backward_comm_s += secs(t2, t4);  // the last micro-batch's backward + the wait
      }
      if (mgwfbp && mgwfbp->after_step()) {
        grad_views.refresh();
        if (lead && !o.quiet) {
          std::printf("mgwfbp plan after %lld steps:\n%s", (long long)step + 1,
                      mgwfbp->describe().c_str());
          std::fflush(stdout);
        }
      }
      ++step;
      last_epoch = epoch;
      last_position = s + 1;
      loss_sum += l;
      ++loss_count;
      const double elapsed = since(t_start);
      const double mb = eng.reducer().bytes_sent() / 1e6;
      progress.step(epoch, s, l, step * double(per_step) * world / std::max(elapsed, 1e-9), mb);
      // The reducer's figures of every step (rank 0's: densities, thresholds, imbalance, ...):
      // cheap scalars, no collective; vectors (e.g. per-partition counts) when it returns them.
      if (auto figures = eng.reducer().step_metrics(); !figures.empty()) {
        nlohmann::json record = {{"kind", "reduce"}, {"step", step}};
        for (const auto& [key, value] : figures) record[key] = value;
        for (const auto& [key, values] : eng.reducer().step_vectors()) record[key] = values;
        metrics.write(record);
      }
      if (step % o.log_every == 0) {
        double mean_loss = global_mean(l, g);
        nlohmann::json record = {{"kind", "step"},
                                 {"epoch", epoch},
                                 {"step", step},
                                 {"time_s", elapsed},
                                 {"loss", mean_loss},
                                 {"samples", (step - start.step) * per_step * world},
                                 {"bytes_sent", eng.reducer().bytes_sent()},
                                 {"bytes_recv", eng.reducer().bytes_received()}};
        metrics.write(record);
      }
      if (o.checkpoint_every > 0 && step % o.checkpoint_every == 0) {
        checkpoint(epoch, s + 1, step);
      }
    }
    // Epoch summary (also for a partial epoch cut short by --max-steps).
    auto [acc, test_loss] = evaluate(*model, d, g);
    const double train_loss = global_mean(loss_count ? loss_sum / loss_count : 0.0, g);
    const double epoch_s = since(t_epoch);
    const double elapsed = since(t_start);
    const double sps = (step - start.step) * double(per_step) * world / std::max(elapsed, 1e-9);
    metrics.write({{"kind", "epoch"},
                   {"epoch", epoch},
                   {"step", step},
                   {"time_s", elapsed},
                   {"train_loss", train_loss},
                   {"test_loss", test_loss},
                   {"test_accuracy", acc},
                   {"samples_per_s", sps},
                   {"bytes_sent", eng.reducer().bytes_sent()},
                   {"bytes_recv", eng.reducer().bytes_received()},
                   {"phase_s",
                    {{"data", phase[0]},
                     {"forward", phase[1]},
                     {"backward", phase[2]},
                     {"comm_wait", phase[3]},
                     {"optimizer", phase[4]},
                     {"comm", eng.stats().comm_s - comm_before},
                     {"comm_hidden", eng.stats().hidden_s - hidden_before}}}});
    progress.epoch_done(detail::concat("epoch ", epoch + 1, "/", o.epochs, ": train loss ",
                                       train_loss, ", test accuracy ", acc * 100, "%, ", epoch_s,
                                       " s, ", eng.reducer().bytes_sent() / 1e6, " MB sent/rank"));
    result.test_accuracy = acc;
    result.test_loss = test_loss;
    result.train_loss = train_loss;
    loss_sum = 0;
    loss_count = 0;
  }
  // The final checkpoint: at the end of the last epoch, or where --max-steps stopped.
  if (last_position == steps_per_epoch) {
    checkpoint(last_epoch + 1, 0, step);
  } else {
    checkpoint(last_epoch, last_position, step);
  }
  result.steps = step;
  result.time_s = since(t_start);
  result.samples_per_s =
      (step - start.step) * double(per_step) * world / std::max(result.time_s, 1e-9);
  result.bytes_sent = eng.reducer().bytes_sent();
  result.bytes_received = eng.reducer().bytes_received();
  result.comm_s = eng.stats().comm_s;
  result.comm_wait_s = eng.stats().wait_s;
  result.comm_hidden_s = eng.stats().hidden_s;
  result.skipped_steps = eng.stats().skipped_steps;
  nlohmann::json final_extra = nlohmann::json::object();
  if (mgwfbp && mgwfbp->planned()) {
    // Predicted against measured backward + non-overlapped communication per step (the last
    // micro-batch's backward and finish()'s wait), over the steps that ran on the plan.
    const double measured = planned_steps > 0 ? planned_backward_comm_s / planned_steps : 0;
    nlohmann::json predicted = {{"mgwfbp", mgwfbp->predicted_s()}};
    for (const char* other : {"single", "wfbp", "fused:25"}) {
      predicted[other] = mgwfbp->predict(engine::Schedule::parse(other));
    }
    final_extra = {{"mgwfbp_predicted_s", mgwfbp->predicted_s()},
                   {"mgwfbp_measured_s", measured},
                   {"mgwfbp_planned_steps", planned_steps}};
    if (lead && !o.quiet) {
      std::printf(
          "mgwfbp: predicted backward+communication %.3f ms/step, measured %.3f ms/step over %lld "
          "steps (%+.1f%%); the same model predicts single %.3f, wfbp %.3f, fused:25 %.3f ms\n",
          1e3 * mgwfbp->predicted_s(), 1e3 * measured, (long long)planned_steps,
          measured > 0 ? 100.0 * (mgwfbp->predicted_s() / measured - 1) : 0.0,
          1e3 * predicted["single"].get<double>(), 1e3 * predicted["wfbp"].get<double>(),
          1e3 * predicted["fused:25"].get<double>());
    }
    if (lead && !out_dir.empty()) {
      nlohmann::json record = mgwfbp->record();
      record["predicted_s"] = predicted;
      record["measured_s"] = measured;
      record["measured_steps"] = planned_steps;
      const std::string text = record.dump(2) + "\n";
      write_file_atomic(out_dir + "/plan.json", text, /*durable=*/false);
    }
  }
  nlohmann::json final_record = {{"kind", "final"},
                                 {"time_s", result.time_s},
                                 {"steps", step},
                                 {"test_accuracy", result.test_accuracy},
                                 {"samples_per_s", result.samples_per_s},
                                 {"bytes_sent", result.bytes_sent},
                                 {"bytes_recv", result.bytes_received},
                                 {"comm_s", result.comm_s},
                                 {"comm_wait_s", result.comm_wait_s},
                                 {"comm_hidden_s", result.comm_hidden_s},
                                 {"skipped_steps", result.skipped_steps}};
  final_record.update(final_extra);
  metrics.write(final_record);
  if (!o.timeline.empty()) write_timeline(timeline, o.timeline, g);
  return result;
}

}  // namespace dtrain::train
