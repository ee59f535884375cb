// Downpour SGD: the replica's loop and the server rank's role (see dtrain/train/downpour.h).
#include "dtrain/train/downpour.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <span>
#include <thread>

#include "dtrain/collective/collective.h"
#include "dtrain/comm/group.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "dtrain/data/shard.h"
#include "dtrain/engine/engine.h"
#include "dtrain/ps/client.h"
#include "dtrain/ps/directory.h"
#include "dtrain/ps/server.h"
#include "dtrain/torch/partitioned_mlp.h"
#include "evaluation.h"
#include "ps_job.h"
#include "run.h"

namespace dtrain::train {
namespace {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;


// The distinct embedding rows of the batches of steps [from, to) of this epoch's shard.
std::vector<uint64_t> rows_of(const TensorData& d, const torch::Tensor& index, int64_t per_step,
                              int64_t from, int64_t to) {
  auto bi = index.slice(0, from * per_step, to * per_step);
  auto ids = std::get<0>(torch::_unique(d.x_train.index_select(0, bi).flatten(), true));
  ids = ids.contiguous();
  const int64_t* p = ids.data_ptr<int64_t>();
  return std::vector<uint64_t>(p, p + ids.numel());
}

// --- a replica -------------------------------------------------------------------------------

// `workers` ranks train; under --model-parallel K a replica is K consecutive ranks, lost as a
// unit: "ranks" gives each rank's state and "replicas_lost" the replicas one of whose ranks did
// not finish (with K = 1 "replicas" gives each replica's).
nlohmann::json summed_stats(const std::vector<ps::ServerStats>& stats, int workers, int k) {
  std::vector<uint64_t> hist(ps::kStalenessBuckets, 0);
  uint64_t updates = 0, pulls = 0;
  int64_t max_staleness = 0;
  for (const auto& s : stats) {
    updates += s.updates;
    pulls += s.pulls;
    max_staleness = std::max(max_staleness, s.max_staleness);
    for (size_t k = 0; k < s.staleness_histogram.size() && k < hist.size(); ++k) {
      hist[k] += s.staleness_histogram[k];
    }
  }
  while (hist.size() > 1 && hist.back() == 0) hist.pop_back();
  nlohmann::json lost = nlohmann::json::array(), states = nlohmann::json::object();
  if (!stats.empty()) {
    for (int w = 0; w < workers; ++w) {
      auto it = stats[0].states.find(w);
      const std::string state = it == stats[0].states.end() ? "never seen" : it->second;
      states[std::to_string(w)] = state;
      if (state != "done" && (lost.empty() || lost.back() != w / k)) lost.push_back(w / k);
    }
  }
  return {{"server_updates", updates},
          {"server_pulls", pulls},
          {"staleness_histogram", hist},
          {"max_staleness", max_staleness},
          {k == 1 ? "replicas" : "ranks", states},
          {"replicas_lost", lost}};
}

class Replica {
 public:
  Replica(const TrainOptions& o, const DownpourJob& job, int workers)
      : o_(o),
        job_(job),
        workers_(workers),
        me_(job.rank),
        k_(o.model_parallel),
        replicas_(workers / o.model_parallel),
        replica_(job.rank / o.model_parallel),
        lead_(job.rank == 0) {
    DT_ENFORCE(workers % k_ == 0, "--model-parallel ", k_, ": the ", workers,
               " replica ranks do not make whole replicas of ", k_, " ranks");
    pin_threads(o.threads);
    data_ = load_data(o);
    model_ = make_model(o, data_);
    full_ = std::make_shared<Layout>(*model_);
    layout_ = full_;
    if (k_ > 1) join_partitions();
    const int64_t n_train = data_.x_train.size(0);
    per_step_ = o.batch_size;
    steps_per_epoch_ = (n_train / replicas_) / per_step_;
    DT_ENFORCE(steps_per_epoch_ >= 1, "the training set (", n_train, " samples) is too small for ",
               replicas_, " replicas with --batch-size ", o.batch_size);
    total_ = int64_t(o.epochs) * steps_per_epoch_;
    if (o.max_steps >= 0) total_ = std::min(total_, o.max_steps);
    Store store(job);
    const auto endpoints =
        ps::find_shards(store.prefixed, job.nonce, o.servers, job.timeout);
    auto options = [&](int worker) {
      ps::ClientOptions co;
      co.worker = worker;
      co.endpoints = endpoints;
      co.length = layout_->length;
      co.timeout = job.timeout;
      return co;
    };
    fetcher_ = std::make_unique<ps::Client>(options(me_));
    pusher_ = std::make_unique<ps::Client>(options(me_));
    // An observer (negative id: never counted as a replica) for the warm start and the end.
    observer_ = std::make_unique<ps::Client>(options(-1 - me_));
    fetch_buf_.assign(layout_->length, 0.0f);
    push_buf_.assign(layout_->length, 0.0f);
    out_dir_ = !o.out_dir.empty() ? o.out_dir : o.resume;
  }

  TrainResult run() {
    if (!row_) return train();
    // A partition's failure reaches its replica's other partitions at once (they stop too: a
    // replica is lost, and replaced, as a unit); the other replicas train on.
    TrainResult result;
    comm::run_rank(*row_, [&] { result = train(); });
    return result;
  }

 private:
  TrainResult train() {
    const bool fresh = o_.resume.empty();
    if (replica_ != 0 && fresh) wait_for_warm_start();
    // Where this replica's data stands: the steps its id pushed before (a replacement for a
    // killed replica, or a resumed job), read before hello() may move its clock ahead.
    int64_t pushed = pushed_before();
    const int64_t start_clock = fetcher_->hello();
    fetcher_->heartbeat(dead_after(job_) / 4);
    pusher_->set_clock(start_clock);
    clock_ = start_clock;
    // A replica 0 that replaces a lost one joins a job the shards already hold updates of.
    const bool untouched = fresh && shards_untouched();
    if (lead_ && untouched) {
      // Replica 0 gives the shards the initial parameters (every replica built the same ones).
      full_->store(fetch_buf_);
      fetcher_->wait(fetcher_->assign({0, full_->length}, fetch_buf_));
    }
    if (row_) {
      // The partitions of a replica take the same batches: they continue after the steps all
      // of them pushed (one killed mid-push may have pushed one fewer). This also holds replica
      // 0's partitions until rank 0 has given the shards the initial parameters.
      pushed = static_cast<int64_t>(least_over_row(static_cast<double>(pushed)));
    }
    int64_t step = std::min(total_, pushed * o_.n_push);
    spdlog::info("{} joins the job at step {} of {} (clock {})", who(), step, total_, clock_);
    if (step >= total_) spdlog::info("{}: its steps were all pushed before", who());
    if (lead_) open_run_dir(/*joining=*/fresh && !untouched);

    Progress progress(o_.quiet || !lead_, steps_per_epoch_);
    TargetTracker target(o_.target_accuracy);
    TrainingClock clock;
    clock.start();
    const int64_t first = step;
    double loss_sum = 0;
    int64_t loss_count = 0;
    torch::Tensor index;
    int index_epoch = -1;
    auto shard_of_epoch = [&](int epoch) {
      if (epoch != index_epoch) {
        auto shard =
            data::shard_indices(data_.x_train.size(0), replica_, replicas_, o_.seed, epoch);
        index = torch::from_blob(shard.data(), {int64_t(shard.size())}, torch::kInt64).clone();
        index_epoch = epoch;
      }
      return index;
    };
    // Evaluations stay on the training clock (unlike the synchronous schemes, where every rank
    // waits for them): the other replicas train on meanwhile, and pausing the clock would count
    // their progress as free. eval_s reports how much of the time they took.
    double eval_s = 0;
    auto evaluation = [&](int epoch, const char* kind) {
      const auto began = Clock::now();
      // embed: the replica holds only the rows its batches fetched; evaluate the shards' table.
      // --model-parallel: rank 0 holds one partition; evaluate the shards' parameters.
      if (layout_->sparse() || row_) load_everything();
      const auto [acc, loss] = evaluate(*model_, data_);
      eval_s += std::chrono::duration<double>(Clock::now() - began).count();
      const double t = clock.elapsed();
      if (std::string(kind) == "eval") {
        metrics_.write({{"kind", "eval"},
                        {"epoch", epoch},
                        {"step", step},
                        {"time_s", t},
                        {"eval_s", eval_s},
                        {"test_accuracy", acc},
                        {"test_loss", loss},
                        {"bytes_sent", bytes_sent()}});
      }
      if (target.add(step, t, acc)) {
        metrics_.write({{"kind", "target"},
                        {"target_accuracy", target.target()},
                        {"step", step},
                        {"time_s", t},
                        {"eval_s", eval_s},
                        {"bytes_sent", bytes_sent()}});
      }
      return std::pair<double, double>(acc, loss);
    };

    TrainResult result;
    start_fetch(step);
    while (step < total_) {
      const int epoch = static_cast<int>(step / steps_per_epoch_);
      const int64_t s = step % steps_per_epoch_;
      const auto& idx = shard_of_epoch(epoch);
      if (fetch_point(step) || step == first) take_fetch();
      auto bi = idx.slice(0, s * per_step_, (s + 1) * per_step_);
      auto x = data_.x_train.index_select(0, bi);
      auto y = data_.y_train.index_select(0, bi);
      if (layout_->sparse()) {
        window_rows_.push_back(x.flatten());
      }
      const double l = forward_backward(x, y);  // gradients accumulate in .grad until the push
      ++step;
      ++accumulated_;
      if (step % o_.n_push == 0 || step == total_) start_push();
      if (step < total_ && fetch_point(step)) start_fetch(step);
      loss_sum += l;
      ++loss_count;
      if (!lead_) continue;
      progress.step(epoch, s, l,
                    (step - first) * per_step_ * replicas_ / std::max(clock.elapsed(), 1e-9),
                    bytes_sent() / 1e6);
      if (step % o_.log_every == 0) {
        nlohmann::json record = {{"kind", "step"},
                                 {"epoch", epoch},
                                 {"step", step},
                                 {"time_s", clock.elapsed()},
                                 {"loss", l},
                                 {"clock", clock_},
                                 {"bytes_sent", bytes_sent()},
                                 {"bytes_recv", bytes_received()}};
        if (row_) record["bytes_crossing_partitions"] = crossing_;
        metrics_.write(record);
      }
      const bool epoch_end = step % steps_per_epoch_ == 0 || step == total_;
      if (o_.eval_every > 0 && step % o_.eval_every == 0 && !epoch_end) evaluation(epoch, "eval");
      if (epoch_end) {
        const auto [acc, test_loss] = evaluation(epoch, "epoch");
        const double train_loss = loss_count ? loss_sum / loss_count : 0.0;
        metrics_.write({{"kind", "epoch"},
                        {"epoch", epoch},
                        {"step", step},
                        {"time_s", clock.elapsed()},
                        {"eval_s", eval_s},
                        {"train_loss", train_loss},
                        {"test_loss", test_loss},
                        {"test_accuracy", acc},
                        {"bytes_sent", bytes_sent()},
                        {"bytes_recv", bytes_received()}});
        progress.epoch_done(detail::concat("epoch ", epoch + 1, "/", o_.epochs, ": train loss ",
                                           train_loss, ", test accuracy ", acc * 100,
                                           row_ ? "% (the shards' parameters), " : "% (replica 0's latest fetch), ", clock.elapsed(),
                                           " s, ", bytes_sent() / 1e6, " MB sent"));
        result.train_loss = train_loss;
        loss_sum = 0;
        loss_count = 0;
      }
    }
    finish_io();
    fetcher_->done();
    result.steps = step;
    result.time_s = clock.elapsed();
    result.samples_per_s = (step - first) * per_step_ / std::max(result.time_s, 1e-9);
    result.bytes_sent = bytes_sent();
    result.bytes_received = bytes_received();
    result.eval_s = eval_s;
    result.rounds = clock_;
    if (!lead_) return result;

    // The end: once every replica is done (or dead), the servers' parameters are the model.
    const nlohmann::json figures = wait_for_replicas();
    load_everything();
    const auto [acc, test_loss] = evaluate(*model_, data_);
    result.test_accuracy = acc;
    result.test_loss = test_loss;
    result.time_to_target_s = target.reached() ? target.reached_time_s() : -1;
    nlohmann::json final_record = {{"kind", "final"},
                                   {"time_s", result.time_s},
                                   {"eval_s", result.eval_s},
                                   {"steps", step},
                                   {"rounds", clock_},
                                   {"test_accuracy", acc},
                                   {"test_loss", test_loss},
                                   {"samples_per_s", result.samples_per_s * replicas_},
                                   {"bytes_sent", result.bytes_sent},
                                   {"bytes_recv", result.bytes_received},
                                   {"rows_pushed", rows_pushed_},
                                   {"dropped_pushes", dropped_pushes_},
                                   {"rows_pulled", rows_pulled_}};
    final_record.update(figures);
    if (row_) {
      final_record["model_parallel"] = k_;
      final_record["partition"] = o_.partition;
      final_record["bytes_crossing_partitions"] = crossing_;  // rank 0's
    }
    if (target.enabled()) {
      final_record["target_accuracy"] = target.target();
      final_record["time_to_target_s"] =
          target.reached() ? nlohmann::json(target.reached_time_s()) : nlohmann::json(nullptr);
    }
    metrics_.write(final_record);
    if (!o_.quiet) {
      std::printf("downpour: final parameters on the servers: test accuracy %.2f%%; replicas "
                  "lost: %s; max staleness %lld\n",
                  acc * 100, figures["replicas_lost"].dump().c_str(),
                  (long long)figures["max_staleness"].get<int64_t>());
    }
    observer_->shutdown();
    return result;
  }

  uint64_t bytes_sent() const {
    return fetcher_->bytes_sent() + pusher_->bytes_sent() + observer_->bytes_sent();
  }
  uint64_t bytes_received() const {
    return fetcher_->bytes_received() + pusher_->bytes_received() + observer_->bytes_received();
  }

  // `joining`: a replacement for a lost replica 0 adds to the records of the running job.
  void open_run_dir(bool joining) {
    if (out_dir_.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(out_dir_, ec);
    if (ec || !std::filesystem::is_directory(out_dir_)) {
      DT_THROW(IoError, "--out ", out_dir_, ": cannot create the run directory: ",
               ec ? ec.message() : "a file of that name is in the way");
    }
    if (!joining) write_config(o_, data_, workers_, out_dir_);
    metrics_ = MetricsLog(out_dir_, !o_.resume.empty() || joining);
  }

  // Replicas other than 0 wait until replica 0 has pushed --warm-start times (at least once, so
  // the shards hold its initial parameters), or is gone.
  void wait_for_warm_start() {
    const int64_t need = std::max<int64_t>(1, o_.warm_start);
    const auto since = Clock::now();
    while (true) {
      const auto stats = observer_->stats();
      bool ready = true;  // (under --model-parallel, rank 0 is replica 0's partition 0)
      for (const auto& s : stats) {
        auto c = s.clocks.find(0);
        auto st = s.states.find(0);
        const bool gone = st != s.states.end() && st->second != "live";
        ready &= gone || (c != s.clocks.end() && c->second >= need);
      }
      if (ready) return;
      const bool seen = !stats.empty() && stats[0].states.count(0) > 0;
      if (!seen && Clock::now() - since > job_.timeout) {
        DT_THROW(TimeoutError, who(), ": replica 0 did not join the parameter servers ",
                 "within ", job_.timeout.count(), " ms (replicas other than 0 start after its ",
                 "warm start)");
      }
      std::this_thread::sleep_for(Millis(50));
    }
  }

  // Steps that take a fetch: every n_fetch steps, and each epoch's first (embed fetches the rows
  // of the steps up to the next fetch point, and an epoch's batches come from a new order).
  bool fetch_point(int64_t step) const {
    return step % o_.n_fetch == 0 || step % steps_per_epoch_ == 0;
  }

  // Whether no shard has applied an update yet (a fresh job).
  bool shards_untouched() {
    for (const auto& s : observer_->stats()) {
      if (s.updates > 0) return false;
    }
    return true;
  }

  // The clock ticks the shards saw pushed under this replica's id (0 for a fresh one).
  int64_t pushed_before() {
    int64_t least = -1;
    for (const auto& s : observer_->stats()) {
      auto it = s.pushed.find(me_);
      const int64_t p = it == s.pushed.end() ? 0 : it->second;
      least = least < 0 ? p : std::min(least, p);
    }
    return std::max<int64_t>(least, 0);
  }

  // Replica 0, after its own last step: waits until every replica the shards know is done or
  // dead (one never seen is waited for up to the timeout), and returns the shards' figures.
  nlohmann::json wait_for_replicas() {
    const auto since = Clock::now();
    while (true) {
      const auto stats = observer_->stats();
      bool over = true;
      for (int w = 0; w < workers_ && !stats.empty(); ++w) {
        auto it = stats[0].states.find(w);
        if (it == stats[0].states.end()) {
          over &= Clock::now() - since > job_.timeout;
        } else {
          over &= it->second != "live";
        }
      }
      if (over) return summed_stats(stats, workers_, k_);
      std::this_thread::sleep_for(Millis(100));
    }
  }

  // The shards' whole parameter vector into the model, through the observer (served at once,
  // whatever the consistency model; the replica's own fetch may be in flight meanwhile).
  void load_everything() {
    std::vector<float> all(full_->length);
    observer_->wait(observer_->pull({0, full_->length}, all));
    full_->load_all(all);
  }

  void start_fetch(int64_t from) {
    if (fetch_.valid()) return;
    if (layout_->sparse()) {
      const int epoch = static_cast<int>(from / steps_per_epoch_);
      const int64_t s = from % steps_per_epoch_;
      auto shard = data::shard_indices(data_.x_train.size(0), replica_, replicas_, o_.seed, epoch);
      auto idx = torch::from_blob(shard.data(), {int64_t(shard.size())}, torch::kInt64);
      // The rows of the steps until the next fetch point (never past the epoch's end).
      const int64_t to = std::min<int64_t>(s + (o_.n_fetch - from % o_.n_fetch), steps_per_epoch_);
      fetch_rows_ = rows_of(data_, idx, per_step_, s, to);
      fetch_row_values_.resize(fetch_rows_.size() * layout_->rows.width);
      rows_pulled_ += fetch_rows_.size();
    }
    fetcher_->set_clock(clock_);
    fetch_ = std::async(std::launch::async, [this] {
      std::vector<ps::Ticket> tickets;
      if (layout_->dense.size() > 1 && !layout_->sparse()) {
        // A partition's slices: one request per shard, into their places in the buffer.
        fetch_dense_.resize(dense_size());
        tickets.push_back(fetcher_->pull_ranges(layout_->dense, fetch_dense_));
      } else {
        for (const auto& r : layout_->dense) {
          tickets.push_back(fetcher_->pull(
              r, std::span<float>(fetch_buf_.data() + r.begin, static_cast<size_t>(r.size()))));
        }
      }
      if (layout_->sparse() && !fetch_rows_.empty()) {
        tickets.push_back(fetcher_->pull_rows(layout_->rows, fetch_rows_, fetch_row_values_));
      }
      for (auto t : tickets) fetcher_->wait(t);
      if (!fetch_dense_.empty()) {
        size_t at = 0;
        for (const auto& r : layout_->dense) {
          std::copy_n(fetch_dense_.data() + at, r.size(), fetch_buf_.data() + r.begin);
          at += r.size();
        }
      }
      return fetcher_->pulled_clock();
    });
  }

  void take_fetch() {
    if (!fetch_.valid()) return;
    const int64_t pulled = fetch_.get();
    pulled_clock_ = pulled;  // read by start_push on this thread, handed to the push task
    torch::NoGradGuard guard;
    layout_->load(fetch_buf_);
    if (layout_->sparse()) {
      const auto& t = layout_->params[static_cast<size_t>(layout_->table)];
      float* table = t.data_ptr<float>();
      const uint64_t width = layout_->rows.width;
      for (size_t j = 0; j < fetch_rows_.size(); ++j) {
        std::memcpy(table + fetch_rows_[j] * width, fetch_row_values_.data() + j * width,
                    width * sizeof(float));
      }
    }
  }

  // Whether `values` may be pushed; a non-finite value fails this replica (--on-nonfinite abort)
  // or drops the push (skip): a diverged replica must not poison the shards every other replica
  // trains on.
  bool may_push(std::span<const float> values, const char* what) {
    if (std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); })) {
      return true;
    }
    if (engine::parse_on_nonfinite(o_.on_nonfinite) == engine::OnNonFinite::kAbort) {
      DT_THROW(Error, who(), ": non-finite gradient (NaN or Inf) in the ", what,
               " to push at clock ", clock_, "; not pushed (--on-nonfinite skip drops such "
               "pushes instead)");
    }
    spdlog::warn("{}: non-finite gradient in the {} at clock {}; push dropped "
                 "(--on-nonfinite skip)", who(), what, clock_);
    return false;
  }

  void start_push() {
    if (accumulated_ == 0) return;
    if (push_.valid()) push_.get();  // one push in flight; its errors surface here
    const float scale = 1.0f / static_cast<float>(accumulated_);
    layout_->gradients(push_buf_, scale);
    bool keep = may_push(push_buf_, "parameters");
    if (layout_->sparse()) {
      auto ids = std::get<0>(torch::_unique(torch::cat(window_rows_), true)).contiguous();
      window_rows_.clear();
      const int64_t* p = ids.data_ptr<int64_t>();
      push_rows_.assign(p, p + ids.numel());
      auto& grad = layout_->params[static_cast<size_t>(layout_->table)].mutable_grad();
      auto values = (grad.index_select(0, ids) * scale).contiguous();
      push_row_values_.assign(values.data_ptr<float>(), values.data_ptr<float>() + values.numel());
      keep = keep && may_push(push_row_values_, "embedding rows");
      grad.index_fill_(0, ids, 0.0f);
      if (keep) rows_pushed_ += push_rows_.size();
    }
    for (size_t i = 0; i < layout_->params.size(); ++i) {
      if (static_cast<int>(i) == layout_->table) continue;
      auto& g = layout_->params[i].mutable_grad();
      if (g.defined()) g.zero_();
    }
    accumulated_ = 0;
    if (!keep) {
      ++dropped_pushes_;
      return;  // no clock tick either
    }
    const int64_t tick = clock_++;
    // The clock of the parameters this gradient was computed on, read on this thread (the
    // fetch taken next may change it before the push task runs).
    const int64_t computed_on = pulled_clock_;
    push_ = std::async(std::launch::async, [this, tick, computed_on] {
      pusher_->set_pulled_clock(computed_on);
      std::vector<ps::Ticket> tickets;
      if (layout_->dense.size() == 1 && !layout_->sparse()) {
        const auto& r = layout_->dense[0];
        pusher_->set_clock(tick);
        tickets.push_back(pusher_->push(
            r, std::span<const float>(push_buf_.data() + r.begin, static_cast<size_t>(r.size()))));
      } else {
        // Several ranges (a partition's slices; the dense layers and the embedding rows) as one
        // push per shard: a shard applies all of it before this worker's clock moves on there,
        // so a pull served at the next clock never sees part of it.
        std::vector<std::pair<ps::Range, const float*>> parts;
        for (const auto& r : layout_->dense) parts.push_back({r, push_buf_.data() + r.begin});
        for (size_t j = 0; j < push_rows_.size(); ++j) {
          parts.push_back({layout_->rows.row(push_rows_[j]),
                           push_row_values_.data() + j * layout_->rows.width});
        }
        std::sort(parts.begin(), parts.end(),
                  [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
        push_ranges_.clear();
        push_dense_.clear();
        for (const auto& [r, from] : parts) {
          push_ranges_.push_back(r);
          push_dense_.insert(push_dense_.end(), from, from + r.size());
        }
        pusher_->set_clock(tick);
        tickets.push_back(pusher_->push_ranges(push_ranges_, push_dense_));
      }
      for (auto t : tickets) pusher_->wait(t);
    });
  }

  void finish_io() {
    if (push_.valid()) push_.get();
    if (fetch_.valid()) fetch_.get();
  }

  // --model-parallel K: joins this replica's other partitions (ranks K*replica .. +K-1) in a
  // group of their own, met in the job's store under "<run id>/replica-<q>" (a replacement
  // replica meets there again: the rendezvous recognises the lost one's keys as stale), and
  // trains this rank's partition of the mlp at its keys on the shards.
  void join_partitions() {
    comm::GroupOptions g;
    g.store = std::shared_ptr<comm::Store>(
        comm::open_store(comm::RendezvousUrl::parse(job_.rendezvous)));
    g.rank = me_ % k_;
    g.size = k_;
    g.run_id = detail::concat(job_.run_id, "/replica-", replica_);
    g.job = job_.nonce;
    g.host = job_.host;
    g.timeout = job_.timeout;
    row_ = comm::Group::connect(g);
    std::vector<int64_t> widths = {data_.input_dim};
    widths.insert(widths.end(), o_.hidden.begin(), o_.hidden.end());
    widths.push_back(data_.classes);
    partition_ = std::make_unique<torchx::PartitionedMlp>(
        widths, torchx::parse_partitioning(o_.partition), row_, o_.pipeline);
    partition_->load_slices(*model_);
    torchx::PartitionedMlp& pm = *partition_;
    layout_ = std::make_shared<Layout>(
        *full_, pm, [&pm](const std::string& n, const torch::Tensor& t) { return pm.slice_of(n, t); },
        *model_);
  }

  // The step's loss; its gradients are added to .grad (of this rank's partition).
  double forward_backward(const torch::Tensor& x, const torch::Tensor& y) {
    if (partition_) {
      const auto r = partition_->step(x, y);
      crossing_ += r.bytes_sent;
      return r.loss;
    }
    auto loss = torch::nn::functional::cross_entropy(model_->forward(x), y);
    loss.backward();
    return loss.item<double>();
  }

  size_t dense_size() const {
    size_t n = 0;
    for (const auto& r : layout_->dense) n += r.size();
    return n;
  }

  // "replica 2", or under --model-parallel "replica 1 (rank 3, partition 1)".
  std::string who() const {
    if (k_ == 1) return detail::concat("replica ", me_);
    return detail::concat("replica ", replica_, " (rank ", me_, ", partition ", me_ % k_, ")");
  }

  double least_over_row(double v) {
    collective::AllreduceOptions o(*row_);
    o.output = collective::View(&v, 1, collective::DataType::kFloat64);
    o.op = collective::ReduceOp::kMin;
    collective::allreduce(o);
    return v;
  }

  const TrainOptions& o_;
  const DownpourJob& job_;
  const int workers_, me_;
  const int k_;         // ranks per replica (--model-parallel)
  const int replicas_;  // workers_ / k_
  const int replica_;   // this rank's replica
  const bool lead_;
  TensorData data_;
  std::shared_ptr<torchx::Net> model_;  // the whole model (rank 0 evaluates it)
  std::shared_ptr<Layout> full_;        // the whole model's parameters, at their keys
  std::shared_ptr<Layout> layout_;      // what this rank trains: full_, or its partition's
  std::shared_ptr<comm::Group> row_;    // this replica's partitions (--model-parallel)
  std::unique_ptr<torchx::PartitionedMlp> partition_;
  uint64_t crossing_ = 0;  // bytes this rank sent to its replica's other partitions
  int64_t per_step_ = 0, steps_per_epoch_ = 0, total_ = 0;
  std::unique_ptr<ps::Client> fetcher_, pusher_, observer_;
  std::vector<float> fetch_buf_, push_buf_;  // indexed by key
  std::vector<float> fetch_dense_, push_dense_;  // several ranges' values, one after another
  std::vector<ps::Range> push_ranges_;
  std::vector<uint64_t> fetch_rows_, push_rows_;
  std::vector<float> fetch_row_values_, push_row_values_;
  std::vector<torch::Tensor> window_rows_;  // ids of the batches since the last push
  std::future<int64_t> fetch_;
  std::future<void> push_;
  int64_t accumulated_ = 0;
  int64_t pulled_clock_ = 0;  // the clock of the parameters the latest taken fetch holds
  int64_t dropped_pushes_ = 0;  // --on-nonfinite skip
  int64_t clock_ = 0;  // pushes this replica has made
  uint64_t rows_pushed_ = 0, rows_pulled_ = 0;
  std::string out_dir_;
  MetricsLog metrics_;
};

}  // namespace

bool is_downpour(const TrainOptions& o) { return o.algorithm == "downpour"; }

TrainResult train_downpour(const TrainOptions& o, const DownpourJob& job) {
  validate(o);
  DT_ENFORCE(o.servers >= 1, "--algorithm downpour needs --servers S >= 1 parameter-server ranks");
  const int workers = job.world - o.servers;
  DT_ENFORCE(workers >= 1, "--algorithm downpour with --servers ", o.servers, " needs more than ",
             o.servers, " ranks (ranks 0..W-1 are replicas, the last ", o.servers,
             " are servers); this job has ", job.world);
  if (job.rank >= workers) return serve_downpour_shard(o, job, workers, job.rank - workers);
  Replica replica(o, job, workers);
  return replica.run();
}

}  // namespace dtrain::train
