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

#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "dtrain/data/shard.h"
#include "dtrain/engine/engine.h"
#include "dtrain/ps/client.h"
#include "dtrain/ps/directory.h"
#include "dtrain/ps/server.h"
#include "evaluation.h"
#include "ps_job.h"
#include "run.h"

namespace dtrain::train {
namespace {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;


std::string shard_file(const std::string& dir, int s) {
  return dir.empty() ? std::string() : dir + "/shard-" + std::to_string(s) + ".ps";
}

ps::UpdateRule server_rule(const TrainOptions& o) {
  return ps::UpdateRule::parse(
      // The shortest text that reads back as the same double (not 6 significant digits).
      o.server_update.empty() ? "adagrad:lr=" + nlohmann::json(o.lr).dump() : o.server_update,
      "--server-update");
}



// The distinct embedding rows of the batches of steps [from, to) of this epoch's shard.
std::vector<uint64_t> rows_of(const TensorData& d, const torch::Tensor& index, int64_t per_step,
                              int64_t from, int64_t to) {
  auto bi = index.slice(0, from * per_step, to * per_step);
  auto ids = std::get<0>(torch::_unique(d.x_train.index_select(0, bi).flatten(), true));
  ids = ids.contiguous();
  const int64_t* p = ids.data_ptr<int64_t>();
  return std::vector<uint64_t>(p, p + ids.numel());
}

// --- the server rank -------------------------------------------------------------------------

TrainResult serve(const TrainOptions& o, const DownpourJob& job, int workers, int shard) {
  pin_threads(o.threads);
  const TensorData data = load_data(o);
  auto model = make_model(o, data);
  const Layout layout(*model);
  const std::string dir = !o.out_dir.empty() ? o.out_dir : o.resume;
  if (!dir.empty()) std::filesystem::create_directories(dir);
  ps::ServerOptions so;
  so.index = shard;
  so.shards = o.servers;
  so.length = layout.length;
  so.host = job.host.empty() ? "127.0.0.1" : job.host;
  so.rule = server_rule(o);
  so.consistency = ps::Consistency::parse(o.consistency);
  so.dead_after = dead_after(job);
  so.expected_workers = workers;
  so.checkpoint_path = shard_file(dir, shard);
  // --checkpoint-every counts a replica's steps; a shard counts the update requests of every
  // replica's pushes (one per dense range, and one for the table's rows, per push).
  const int64_t requests = static_cast<int64_t>(layout.dense.size()) + (layout.sparse() ? 1 : 0);
  so.checkpoint_every = o.checkpoint_every > 0
                            ? static_cast<uint64_t>(std::max<int64_t>(
                                  1, o.checkpoint_every * workers * requests /
                                         std::max(1, o.n_push)))
                            : 0;
  ps::Server server(so, !o.resume.empty());
  Store store(job);
  ps::publish_shard(store.prefixed, job.nonce, shard, server.endpoint());
  spdlog::info("parameter server shard {} of {}: keys [{}, {}) of {}, {} ({}), at {}", shard,
            o.servers, server.range().begin, server.range().end, layout.length, so.rule.str(),
            so.consistency.str(), server.endpoint());
  server.run();
  const ps::ServerStats st = server.stats();
  spdlog::info("parameter server shard {}: {} updates, {} pulls, max staleness {}", shard, st.updates,
            st.pulls, st.max_staleness);
  TrainResult r;
  r.steps = static_cast<int64_t>(st.updates);
  r.bytes_sent = st.bytes_sent;
  r.bytes_received = st.bytes_received;
  return r;
}

// --- a replica -------------------------------------------------------------------------------

nlohmann::json summed_stats(const std::vector<ps::ServerStats>& stats, int workers) {
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
      if (state != "done") lost.push_back(w);
    }
  }
  return {{"server_updates", updates},
          {"server_pulls", pulls},
          {"staleness_histogram", hist},
          {"max_staleness", max_staleness},
          {"replicas", states},
          {"replicas_lost", lost}};
}

class Replica {
 public:
  Replica(const TrainOptions& o, const DownpourJob& job, int workers)
      : o_(o), job_(job), workers_(workers), me_(job.rank), lead_(job.rank == 0) {
    pin_threads(o.threads);
    data_ = load_data(o);
    model_ = make_model(o, data_);
    layout_ = std::make_unique<Layout>(*model_);
    const int64_t n_train = data_.x_train.size(0);
    per_step_ = o.batch_size;
    steps_per_epoch_ = (n_train / workers_) / per_step_;
    DT_ENFORCE(steps_per_epoch_ >= 1, "the training set (", n_train, " samples) is too small for ",
               workers_, " replicas with --batch-size ", o.batch_size);
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
    const bool fresh = o_.resume.empty();
    if (!lead_ && fresh) wait_for_warm_start();
    // Where this replica's data stands: the steps its id pushed before (a replacement for a
    // killed replica, or a resumed job), read before hello() may move its clock ahead.
    const int64_t pushed = pushed_before();
    const int64_t start_clock = fetcher_->hello();
    fetcher_->heartbeat(dead_after(job_) / 4);
    pusher_->set_clock(start_clock);
    clock_ = start_clock;
    // A replica 0 that replaces a lost one joins a job the shards already hold updates of.
    const bool untouched = fresh && shards_untouched();
    if (lead_ && untouched) {
      // Replica 0 gives the shards the initial parameters (every replica built the same ones).
      layout_->store(fetch_buf_);
      fetcher_->wait(fetcher_->assign({0, layout_->length}, fetch_buf_));
    }
    int64_t step = std::min(total_, pushed * o_.n_push);
    spdlog::info("replica {} joins the job at step {} of {} (clock {})", me_, step, total_, clock_);
    if (step >= total_) spdlog::info("replica {}: its steps were all pushed before", me_);
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
            data::shard_indices(data_.x_train.size(0), me_, workers_, o_.seed, epoch);
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
      if (layout_->sparse()) load_everything();
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
      auto loss = torch::nn::functional::cross_entropy(model_->forward(x), y);
      loss.backward();  // gradients accumulate in .grad until the push
      const double l = loss.item<double>();
      ++step;
      ++accumulated_;
      if (step % o_.n_push == 0 || step == total_) start_push();
      if (step < total_ && fetch_point(step)) start_fetch(step);
      loss_sum += l;
      ++loss_count;
      if (!lead_) continue;
      progress.step(epoch, s, l, (step - first) * per_step_ * workers_ / std::max(clock.elapsed(), 1e-9),
                    bytes_sent() / 1e6);
      if (step % o_.log_every == 0) {
        metrics_.write({{"kind", "step"},
                        {"epoch", epoch},
                        {"step", step},
                        {"time_s", clock.elapsed()},
                        {"loss", l},
                        {"clock", clock_},
                        {"bytes_sent", bytes_sent()},
                        {"bytes_recv", bytes_received()}});
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
                                           "% (replica 0's latest fetch), ", clock.elapsed(),
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
                                   {"samples_per_s", result.samples_per_s * workers_},
                                   {"bytes_sent", result.bytes_sent},
                                   {"bytes_recv", result.bytes_received},
                                   {"rows_pushed", rows_pushed_},
                                   {"dropped_pushes", dropped_pushes_},
                                   {"rows_pulled", rows_pulled_}};
    final_record.update(figures);
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

 private:
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
      bool ready = true;
      for (const auto& s : stats) {
        auto c = s.clocks.find(0);
        auto st = s.states.find(0);
        const bool gone = st != s.states.end() && st->second != "live";
        ready &= gone || (c != s.clocks.end() && c->second >= need);
      }
      if (ready) return;
      const bool seen = !stats.empty() && stats[0].states.count(0) > 0;
      if (!seen && Clock::now() - since > job_.timeout) {
        DT_THROW(TimeoutError, "replica ", me_, ": replica 0 did not join the parameter servers ",
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
      if (over) return summed_stats(stats, workers_);
      std::this_thread::sleep_for(Millis(100));
    }
  }

  // The shards' whole parameter vector into the model, through the observer (served at once,
  // whatever the consistency model; the replica's own fetch may be in flight meanwhile).
  void load_everything() {
    std::vector<float> all(layout_->length);
    observer_->wait(observer_->pull({0, layout_->length}, all));
    layout_->load_all(all);
  }

  void start_fetch(int64_t from) {
    if (fetch_.valid()) return;
    if (layout_->sparse()) {
      const int epoch = static_cast<int>(from / steps_per_epoch_);
      const int64_t s = from % steps_per_epoch_;
      auto shard = data::shard_indices(data_.x_train.size(0), me_, workers_, o_.seed, epoch);
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
      for (const auto& r : layout_->dense) {
        tickets.push_back(fetcher_->pull(
            r, std::span<float>(fetch_buf_.data() + r.begin, static_cast<size_t>(r.size()))));
      }
      if (layout_->sparse() && !fetch_rows_.empty()) {
        tickets.push_back(fetcher_->pull_rows(layout_->rows, fetch_rows_, fetch_row_values_));
      }
      for (auto t : tickets) fetcher_->wait(t);
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
      DT_THROW(Error, "replica ", me_, ": non-finite gradient (NaN or Inf) in the ", what,
               " to push at clock ", clock_, "; not pushed (--on-nonfinite skip drops such "
               "pushes instead)");
    }
    spdlog::warn("replica {}: non-finite gradient in the {} at clock {}; push dropped "
                 "(--on-nonfinite skip)", me_, what, clock_);
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
      for (const auto& r : layout_->dense) {
        pusher_->set_clock(tick);  // one step's requests carry one clock
        tickets.push_back(pusher_->push(
            r, std::span<const float>(push_buf_.data() + r.begin, static_cast<size_t>(r.size()))));
      }
      if (layout_->sparse()) {
        pusher_->set_clock(tick);
        tickets.push_back(pusher_->push_rows(layout_->rows, push_rows_, push_row_values_));
      }
      for (auto t : tickets) pusher_->wait(t);
    });
  }

  void finish_io() {
    if (push_.valid()) push_.get();
    if (fetch_.valid()) fetch_.get();
  }

  const TrainOptions& o_;
  const DownpourJob& job_;
  const int workers_, me_;
  const bool lead_;
  TensorData data_;
  std::shared_ptr<torchx::Net> model_;
  std::unique_ptr<Layout> layout_;
  int64_t per_step_ = 0, steps_per_epoch_ = 0, total_ = 0;
  std::unique_ptr<ps::Client> fetcher_, pusher_, observer_;
  std::vector<float> fetch_buf_, push_buf_;
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
  if (job.rank >= workers) return serve(o, job, workers, job.rank - workers);
  Replica replica(o, job, workers);
  return replica.run();
}

}  // namespace dtrain::train
