// Sandblaster L-BFGS: the coordinator, a replica, and the server ranks (see
// dtrain/train/sandblaster.h).
#include "dtrain/train/sandblaster.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <zmq.hpp>

#include <unistd.h>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "dtrain/ps/client.h"
#include "dtrain/ps/directory.h"
#include "dtrain/ps/server.h"
#include "dtrain/train/sandblaster_lbfgs.h"
#include "dtrain/train/sandblaster_portions.h"
#include "evaluation.h"
#include "ps_job.h"
#include "run.h"

namespace dtrain::train {
namespace {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

constexpr const char* kCoordinator = "sandblaster coordinator";

// --- coordinator <-> replica messages ---------------------------------------------------------

enum class Kind : uint8_t {
  kReady = 1,  // replica -> coordinator: give me work
  kDone = 2,   // replica -> coordinator: a portion's gradient is in my shard vector
  kWork = 3,   // coordinator -> replica: compute a portion
  kInit = 4,   // coordinator -> replica: give the shards the initial parameters
  kStop = 5,   // coordinator -> replica: the job is over
  kWait = 6,   // coordinator -> an idle replica: no work yet, the coordinator is alive
};

struct Message {
  Kind kind = Kind::kReady;
  int32_t replica = 0;
  uint64_t batch = 0;
  int32_t portion = 0;         // kWork, kDone; in kReady: 1 after the replica's kInit
  int64_t begin = 0, end = 0;  // the portion's samples (kWork)
  double loss_sum = 0;         // summed loss of the portion (kDone)
  // The replica process's own random id: a restarted replica (same rank) is told apart from its
  // earlier incarnation, whose portions and late results no longer count.
  uint64_t incarnation = 0;
};

zmq::message_t encode(const Message& m) {
  ByteWriter w;
  w.put(static_cast<uint8_t>(m.kind)).put(m.replica).put(m.batch).put(m.portion);
  w.put(m.begin).put(m.end).put(m.loss_sum).put(m.incarnation);
  const auto bytes = w.take();
  return zmq::message_t(bytes.data(), bytes.size());
}

Message decode(const zmq::message_t& msg, const std::string& from) {
  ByteReader r(std::span<const std::byte>(static_cast<const std::byte*>(msg.data()), msg.size()),
               "sandblaster message from " + from);
  Message m;
  const auto kind = r.get<uint8_t>("kind");
  DT_ENFORCE(kind >= 1 && kind <= 6, "sandblaster message from ", from, ": unknown kind ",
             int(kind));
  m.kind = static_cast<Kind>(kind);
  m.replica = r.get<int32_t>("replica");
  m.batch = r.get<uint64_t>("batch");
  m.portion = r.get<int32_t>("portion");
  m.begin = r.get<int64_t>("begin");
  m.end = r.get<int64_t>("end");
  m.loss_sum = r.get<double>("loss_sum");
  m.incarnation = r.get<uint64_t>("incarnation");
  r.finish();
  return m;
}

// The shard vector a replica's incarnation writes its portion gradients to.
std::string pg_of(int replica, uint64_t incarnation) {
  return detail::concat("pg", replica, "-", incarnation);
}

}  // namespace

std::pair<int, double> parse_slow_rank(const std::string& spec) {
  if (spec.empty()) return {-1, 1.0};
  const auto colon = spec.find(':');
  try {
    size_t used = 0;
    const int r = std::stoi(spec.substr(0, colon), &used);
    DT_ENFORCE(used == colon && colon != std::string::npos, "");
    const double f = std::stod(spec.substr(colon + 1), &used);
    DT_ENFORCE(used == spec.size() - colon - 1, "");
    DT_ENFORCE(r >= 0 && f >= 1 && std::isfinite(f), "");
    return {r, f};
  } catch (const std::exception&) {
    DT_THROW(InvalidArgument, "--slow-rank '", spec,
             "': expected REPLICA:FACTOR, a replica id and a factor >= 1 (e.g. 2:3)");
  }
}

namespace {

int portions_of(const TrainOptions& o, int workers) {
  return o.portions > 0 ? o.portions : 8 * workers;
}

// ps::Client's vector operations as L-BFGS sees them.
struct ClientOps final : VectorOps {
  explicit ClientOps(ps::Client& c) : client(c) {}
  double dot(const std::string& a, const std::string& b) override { return client.dot(a, b); }
  void axpy(double alpha, const std::string& x, const std::string& y) override {
    client.axpy(alpha, x, y);
  }
  void scale(double alpha, const std::string& x) override { client.scale(alpha, x); }
  void copy(const std::string& from, const std::string& to) override { client.copy(from, to); }
  ps::Client& client;
};

// --- the coordinator --------------------------------------------------------------------------

class Coordinator {
 public:
  Coordinator(const TrainOptions& o, const DownpourJob& job, int workers, uint64_t length,
              int64_t samples, const std::vector<std::string>& shards)
      : o_(o),
        job_(job),
        workers_(workers),
        samples_(samples),
        scheduler_(portions_of(o, workers), !o.no_backup),
        socket_(ctx_, zmq::socket_type::router) {
    DT_ENFORCE(scheduler_.portions() <= samples_, "--portions ", scheduler_.portions(),
               o.portions > 0 ? "" : " (the default, 8 per replica)", " is more than the ",
               samples_, " samples of a batch");
    ps::ClientOptions co;
    co.worker = -1 - job.world;  // an observer: never counted as a replica
    co.endpoints = shards;
    co.length = length;
    co.timeout = job.timeout;
    client_ = std::make_unique<ps::Client>(co);
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::maxmsgsize, int64_t(1) << 16);
    socket_.bind("tcp://" + job.host + ":*");
    Store store(job);
    ps::publish_service(store.prefixed, job.nonce, kCoordinator,
                        socket_.get(zmq::sockopt::last_endpoint));
  }

  // Runs L-BFGS to its end; returns the final objective's figures.
  LbfgsResult run(MetricsLog& metrics, TrainingClock& clock) {
    metrics_ = &metrics;
    clock_ = &clock;
    LbfgsOptions lo;
    lo.history = o_.lbfgs_history;
    lo.max_evaluations = o_.epochs;
    ClientOps ops(*client_);
    auto r = minimize_lbfgs(
        ops, [&] { return evaluate(); }, lo,
        [&](const LbfgsIteration& it) {
          metrics.write({{"kind", "step"},
                         {"step", it.iteration},
                         {"evaluations", it.evaluations},
                         {"time_s", clock.elapsed()},
                         {"loss", it.f},
                         {"grad_norm", it.grad_norm},
                         {"step_length", it.step},
                         {"bytes_sent", client_->bytes_sent()},
                         {"bytes_recv", client_->bytes_received()}});
          if (!o_.quiet) {
            std::printf(
                "iteration %d: objective %.9g, |g| %.3g, step %.3g (%d evaluations, "
                "%.1f s)\n",
                it.iteration, it.f, it.grad_norm, it.step, it.evaluations, clock.elapsed());
            std::fflush(stdout);
          }
        });
    return r;
  }

  // Tells every replica that speaks (or waits) to stop; those still computing (backup copies)
  // hear it when they report, waited for up to `patience`.
  void stop_replicas(Millis patience) {
    for (const auto& id : idle_) send(id.identity, {Kind::kStop});
    idle_.clear();
    const auto until = Clock::now() + patience;
    while (!busy_.empty() && Clock::now() < until) {
      if (!poll(Millis(100))) continue;
      auto [identity, m] = receive();
      if (identity.empty()) continue;
      send(identity, {Kind::kStop});
      busy_.erase(m.replica);
    }
  }

  // Idle replicas hear from the coordinator at least every timeout/4 (they wait on --timeout).
  void keep_alive() {
    const auto now = Clock::now();
    if (now - last_keepalive_ < job_.timeout / 4) return;
    last_keepalive_ = now;
    for (const auto& w : idle_) send(w.identity, {Kind::kWait});
  }

  ps::Client& client() { return *client_; }
  int batches() const { return static_cast<int>(batch_); }
  double batch_seconds_total() const { return batch_s_total_; }

 private:
  struct Waiting {
    std::string identity;
    int replica;
  };

  // One objective evaluation at "w": the batch's mean loss (plus the l2 term); "g" holds its
  // gradient.
  double evaluate() {
    const auto began = Clock::now();
    ++batch_;
    scheduler_.start_batch();
    // Zeros, not g *= 0: a rejected trial point may have left NaN in "g" ("zero" is never
    // written, so it holds the zeros it was created with).
    client_->copy("zero", "g");
    double loss_sum = 0;
    int late = 0;
    auto last_progress = Clock::now();
    auto last_liveness = Clock::now();
    hand_out();
    while (!scheduler_.complete()) {
      if (poll(Millis(100))) {
        auto [identity, m] = receive();
        if (identity.empty()) continue;
        if (m.kind == Kind::kDone) {
          busy_.erase(m.replica);
          if (m.batch == batch_ && scheduler_.finish(m.replica, m.portion)) {
            client_->axpy(1.0, pg_of(m.replica, m.incarnation), "g");
            loss_sum += m.loss_sum;
            last_progress = Clock::now();
          } else if (m.batch != batch_) {
            ++late;
          }
        }
        if (m.kind == Kind::kReady || m.kind == Kind::kDone) {
          idle_.push_back({identity, m.replica});
          hand_out();
        }
      }
      const auto now = Clock::now();
      if (now - last_liveness > Millis(500)) {
        last_liveness = now;
        forget_dead();
        hand_out();
      }
      keep_alive();
      if (now - last_progress > job_.timeout) {
        DT_THROW(TimeoutError, "sandblaster: batch ", batch_, " made no progress for ",
                 job_.timeout.count(), " ms; replicas alive: ", alive_text());
      }
    }
    client_->scale(1.0 / double(samples_), "g");
    double f = loss_sum / double(samples_);
    if (o_.l2 > 0) {
      client_->axpy(o_.l2, "w", "g");
      f += 0.5 * o_.l2 * client_->dot("w", "w");
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - began).count();
    batch_s_total_ += seconds;
    nlohmann::json counted = nlohmann::json::array();
    for (int r = 0; r < workers_; ++r) {
      const auto& c = scheduler_.counted_by();
      counted.push_back(static_cast<size_t>(r) < c.size() ? c[static_cast<size_t>(r)] : 0);
    }
    metrics_->write({{"kind", "batch"},
                     {"batch", batch_},
                     {"time_s", clock_->elapsed()},
                     {"batch_s", seconds},
                     {"objective", f},
                     {"portions", scheduler_.portions()},
                     {"counted_by_replica", counted},
                     {"backups", scheduler_.backups()},
                     {"duplicates", scheduler_.duplicates()},
                     {"late_results", late}});
    return f;
  }

  // Gives idle replicas work: the initial parameters first, then the batch's portions.
  void hand_out() {
    std::deque<Waiting> still;
    for (auto& w : idle_) {
      if (!initialised_) {
        if (!initialising_) {
          initialising_ = true;
          send(w.identity, {Kind::kInit});
          busy_.insert(w.replica);
          continue;
        }
        still.push_back(w);
        continue;
      }
      const int p = scheduler_.next(w.replica);
      if (p < 0) {
        still.push_back(w);
        continue;
      }
      Message m{Kind::kWork};
      m.batch = batch_;
      m.portion = p;
      m.begin = samples_ * p / scheduler_.portions();
      m.end = samples_ * (p + 1) / scheduler_.portions();
      send(w.identity, m);
      busy_.insert(w.replica);
    }
    idle_ = std::move(still);
  }

  // Replicas the shards count dead give their portions back.
  void forget_dead() {
    const auto stats = client_->stats();
    if (stats.empty()) return;
    for (const auto& [id, state] : stats[0].states) {
      if (id < 0 || state != "dead" || !busy_.count(id)) continue;
      spdlog::warn("sandblaster: replica {} is dead (no heartbeat); its portions go to others", id);
      scheduler_.forget(id);
      busy_.erase(id);
      if (initialising_ && !initialised_) initialising_ = false;  // someone else initialises
    }
  }

  std::string alive_text() {
    std::string out;
    const auto stats = client_->stats();
    if (!stats.empty()) {
      for (const auto& [id, state] : stats[0].states) {
        if (id >= 0) out += detail::concat(out.empty() ? "" : ", ", id, " ", state);
      }
    }
    return out.empty() ? "none seen" : out;
  }

  bool poll(Millis timeout) {
    zmq::pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
    return zmq::poll(&item, 1, timeout) > 0;
  }

  // The next message ({} identity when it could not be decoded: logged and dropped).
  std::pair<std::string, Message> receive() {
    zmq::message_t identity, body;
    (void)socket_.recv(identity);
    if (!identity.more()) return {};
    (void)socket_.recv(body);
    while (body.more()) (void)socket_.recv(body);
    try {
      Message m = decode(body, "a replica");
      DT_ENFORCE(m.replica >= 0 && m.replica < workers_, "sandblaster: a message names replica ",
                 m.replica, " of ", workers_);
      DT_ENFORCE(m.kind != Kind::kDone || (m.portion >= 0 && m.portion < scheduler_.portions()),
                 "sandblaster: replica ", m.replica, " reports portion ", m.portion, " of ",
                 scheduler_.portions());
      if (retired_.count(m.incarnation)) return {};  // an earlier incarnation's late word
      auto [it, first] = incarnation_.try_emplace(m.replica, m.incarnation);
      if (!first && it->second != m.incarnation) {
        spdlog::warn("sandblaster: replica {} restarted; what its earlier process held goes to "
                     "others", m.replica);
        retired_.insert(it->second);
        it->second = m.incarnation;
        scheduler_.forget(m.replica);
        busy_.erase(m.replica);
        std::erase_if(idle_, [&](const Waiting& w) { return w.replica == m.replica; });
      }
      if (m.kind == Kind::kReady && m.portion == 1 && !initialised_) {
        // The initial parameters (the seeded model every replica builds) are on the shards.
        client_->copy("w_init", "w");
        initialised_ = true;
      }
      return {identity.to_string(), m};
    } catch (const Error& e) {
      spdlog::warn("{} (dropped; from ZeroMQ peer '{}')", e.what(), identity.to_string());
      return {};
    }
  }

  void send(const std::string& identity, const Message& m) {
    zmq::message_t id(identity.data(), identity.size());
    auto body = encode(m);
    (void)socket_.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    (void)socket_.send(body, zmq::send_flags::dontwait);
  }

  const TrainOptions& o_;
  const DownpourJob& job_;
  const int workers_;
  const int64_t samples_;
  PortionScheduler scheduler_;
  zmq::context_t ctx_{1};
  zmq::socket_t socket_;
  std::unique_ptr<ps::Client> client_;
  std::deque<Waiting> idle_;
  std::set<int> busy_;
  std::map<int, uint64_t> incarnation_;  // each replica's current process
  std::set<uint64_t> retired_;           // processes replaced by a restarted one
  Clock::time_point last_keepalive_ = Clock::now();
  bool initialised_ = false, initialising_ = false;
  uint64_t batch_ = 0;
  double batch_s_total_ = 0;
  MetricsLog* metrics_ = nullptr;
  TrainingClock* clock_ = nullptr;
};

// --- a replica --------------------------------------------------------------------------------

TrainResult replica(const TrainOptions& o, const DownpourJob& job, int workers) {
  pin_threads(o.threads);
  const TensorData data = load_data(o);
  auto model = make_model(o, data);
  Layout layout(*model);
  const auto [slow, factor] = parse_slow_rank(o.slow_rank);
  Store store(job);
  ps::ClientOptions co;
  co.worker = job.rank;
  co.endpoints = ps::find_shards(store.prefixed, job.nonce, o.servers, job.timeout);
  co.length = layout.length;
  co.timeout = job.timeout;
  ps::Client client(co);
  client.hello();
  client.heartbeat(dead_after(job) / 4);
  const std::string coordinator =
      ps::find_service(store.prefixed, job.nonce, kCoordinator, job.timeout);
  zmq::context_t ctx{1};
  zmq::socket_t socket(ctx, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::maxmsgsize, int64_t(1) << 16);
  socket.connect(coordinator);
  const uint64_t incarnation = (uint64_t(std::random_device{}()) << 32) ^
                               uint64_t(std::random_device{}()) ^ uint64_t(::getpid());
  const std::string my_pg = pg_of(job.rank, incarnation);
  auto tell = [&](Message m) {
    m.replica = job.rank;
    m.incarnation = incarnation;
    auto body = encode(m);
    (void)socket.send(body, zmq::send_flags::none);
  };
  std::vector<float> flat(layout.length);
  uint64_t fetched = 0;  // the batch whose parameters the model holds
  TrainResult result;
  const auto began = Clock::now();
  tell({Kind::kReady});
  while (true) {
    zmq::pollitem_t item{static_cast<void*>(socket), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, job.timeout) == 0) {
      DT_THROW(TimeoutError, "replica ", job.rank, ": no word from the ", kCoordinator, " (rank ",
               workers, ", at ", coordinator, ") within ", job.timeout.count(), " ms");
    }
    zmq::message_t msg;
    (void)socket.recv(msg);
    const Message m = decode(msg, "the coordinator");
    if (m.kind == Kind::kStop) break;
    if (m.kind == Kind::kWait) continue;
    if (m.kind == Kind::kInit) {
      layout.store(flat);
      // Into "w_init": the coordinator copies it to "w" once (a late second one is harmless).
      client.wait(client.assign({0, layout.length}, flat, "w_init"));
      Message ready{Kind::kReady};
      ready.portion = 1;  // the parameters are on the shards
      tell(ready);
      continue;
    }
    DT_ENFORCE(
        m.kind == Kind::kWork && m.begin >= 0 && m.begin < m.end && m.end <= data.x_train.size(0),
        "replica ", job.rank, ": a malformed work order from the coordinator (kind ",
               int(m.kind), ", portion ", m.portion, ", samples [", m.begin, ", ", m.end,
               ") of ", data.x_train.size(0), ")");
    const auto t0 = Clock::now();
    if (m.batch != fetched) {  // parameters once per batch
      client.wait(client.pull({0, layout.length}, flat));
      layout.load_all(flat);
      fetched = m.batch;
    }
    model->zero_grad();
    double loss_sum = 0;
    constexpr int64_t kChunk = 1024;  // bounds the activations' memory
    for (int64_t b = m.begin; b < m.end; b += kChunk) {
      const int64_t e = std::min(m.end, b + kChunk);
      auto loss = torch::nn::functional::cross_entropy(
          model->forward(data.x_train.slice(0, b, e)), data.y_train.slice(0, b, e),
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
      loss.backward();
      loss_sum += loss.item<double>();
    }
    if (job.rank == slow && factor > 1) {
      std::this_thread::sleep_for(std::chrono::duration<double>(
          (factor - 1) * std::chrono::duration<double>(Clock::now() - t0).count()));
    }
    layout.gradients(flat, 1.0f);
    client.wait(client.assign({0, layout.length}, flat, my_pg));
    Message done{Kind::kDone};
    done.batch = m.batch;
    done.portion = m.portion;
    done.loss_sum = loss_sum;
    tell(done);
    ++result.steps;
    result.samples_per_s += double(m.end - m.begin);  // samples, divided below
  }
  // No client.done(): the shards serve until the coordinator's shutdown (expected_workers 0),
  // which follows its kStop at once, so a request now would wait for a shard that is gone.
  result.time_s = std::chrono::duration<double>(Clock::now() - began).count();
  result.samples_per_s /= std::max(result.time_s, 1e-9);
  result.bytes_sent = client.bytes_sent();
  result.bytes_received = client.bytes_received();
  spdlog::info("replica {}: {} portions computed", job.rank, result.steps);
  return result;
}

// --- the server ranks -------------------------------------------------------------------------

// The objective at the shards' final parameters, in float64 (mean cross-entropy + l2 term).
double objective_f64(torchx::Net& model, const TensorData& d, double l2) {
  torch::NoGradGuard no_grad;
  model.to(torch::kFloat64);
  double sum = 0;
  const int64_t n = d.x_train.size(0);
  for (int64_t b = 0; b < n; b += 4096) {
    const int64_t e = std::min(n, b + 4096);
    auto x = d.x_train.slice(0, b, e);
    if (x.is_floating_point()) x = x.to(torch::kFloat64);
    sum += torch::nn::functional::cross_entropy(
               model.forward(x), d.y_train.slice(0, b, e),
               torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
               .item<double>();
  }
  double f = sum / double(n);
  if (l2 > 0) {
    double ww = 0;
    for (const auto& p : model.parameters()) ww += p.pow(2).sum().item<double>();
    f += 0.5 * l2 * ww;
  }
  model.to(torch::kFloat32);
  return f;
}

TrainResult serve(const TrainOptions& o, const DownpourJob& job, int workers, int shard) {
  pin_threads(o.threads);
  const TensorData data = load_data(o);
  auto model = make_model(o, data);
  Layout layout(*model);
  ps::ServerOptions so;
  so.index = shard;
  so.shards = o.servers;
  so.length = layout.length;
  so.host = job.host.empty() ? "127.0.0.1" : job.host;
  so.rule = ps::UpdateRule::parse("sum", "sandblaster");
  so.consistency = ps::Consistency::parse("async");
  so.dead_after = dead_after(job);
  so.expected_workers = 0;  // ends on the coordinator's shutdown
  ps::Server server(so);
  Store store(job);
  ps::publish_shard(store.prefixed, job.nonce, shard, server.endpoint());
  spdlog::info("sandblaster: parameter server shard {} of {}: keys [{}, {}) of {} at {}", shard,
               o.servers, server.range().begin, server.range().end, layout.length,
               server.endpoint());
  if (shard != 0) {
    server.run();
    TrainResult r;
    r.bytes_sent = server.stats().bytes_sent;
    r.bytes_received = server.stats().bytes_received;
    return r;
  }
  // Shard 0's process also runs the coordinator, on this thread; the shard serves on another.
  std::exception_ptr serving_error;
  std::thread serving([&] {
    try {
      server.run();
    } catch (...) {
      serving_error = std::current_exception();
    }
  });
  TrainResult result;
  std::unique_ptr<Coordinator> coordinator;
  try {
    const std::string dir = o.out_dir;
    MetricsLog metrics;
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      DT_ENFORCE(!ec && std::filesystem::is_directory(dir), "--out ", dir,
                 ": cannot create the run directory");
      write_config(o, data, workers, dir);
      metrics = MetricsLog(dir, false);
    }
    const auto shards = ps::find_shards(store.prefixed, job.nonce, o.servers, job.timeout);
    coordinator =
        std::make_unique<Coordinator>(o, job, workers, layout.length, data.x_train.size(0), shards);
    Coordinator& c = *coordinator;
    TrainingClock clock;
    clock.start();
    const LbfgsResult r = c.run(metrics, clock);
    result.time_s = clock.elapsed();
    c.keep_alive();
    // The end: the shards' parameters are the model (read once, for the figures).
    std::vector<float> w(layout.length);
    c.client().wait(c.client().pull({0, layout.length}, w));
    layout.load_all(w);
    const auto [acc, test_loss] = evaluate(*model, data);
    const double f64 = objective_f64(*model, data, o.l2);
    result.test_accuracy = acc;
    result.test_loss = test_loss;
    result.train_loss = r.f;
    result.steps = r.iterations;
    result.bytes_sent = c.client().bytes_sent();
    result.bytes_received = c.client().bytes_received();
    // One evaluation of the test set, at the end (the coordinator holds no parameters while
    // it optimises): the run's only epoch record, for `dtrain report`.
    metrics.write({{"kind", "epoch"},
                   {"epoch", std::max(0, r.evaluations - 1)},
                   {"time_s", result.time_s},
                   {"train_loss", r.f},
                   {"test_loss", test_loss},
                   {"test_accuracy", acc},
                   {"bytes_sent", result.bytes_sent}});
    result.samples_per_s =
        double(r.evaluations) * double(data.x_train.size(0)) / std::max(result.time_s, 1e-9);
    metrics.write({{"kind", "final"},
                   {"time_s", result.time_s},
                   {"iterations", r.iterations},
                   {"evaluations", r.evaluations},
                   {"stop", r.stop},
                   {"objective", r.f},
                   {"objective_f64", f64},
                   {"grad_norm", r.grad_norm},
                   {"mean_batch_s", c.batches() ? c.batch_seconds_total() / c.batches() : 0.0},
                   {"samples_per_s", result.samples_per_s},
                   {"test_accuracy", acc},
                   {"test_loss", test_loss},
                   {"bytes_sent", result.bytes_sent},
                   {"bytes_recv", result.bytes_received}});
    if (!o.quiet) {
      std::printf(
          "sandblaster: %d iterations, %d evaluations (stopped: %s), objective %.9g "
          "(float64 %.9g), test accuracy %.2f%%, %.1f s\n",
          r.iterations, r.evaluations, r.stop.c_str(), r.f, f64, acc * 100, result.time_s);
      std::fflush(stdout);
    }
    // The replicas end after the records are written (the launcher then ends the servers soon).
    c.stop_replicas(job.timeout / 2);
    c.client().shutdown();
  } catch (...) {
    if (coordinator) {  // best effort: the replicas and the other shards end now, not on timeouts
      try {
        coordinator->stop_replicas(Millis(0));
        coordinator->client().shutdown();
      } catch (...) {
      }
    }
    server.stop();
    serving.join();
    throw;
  }
  serving.join();
  if (serving_error) std::rethrow_exception(serving_error);
  return result;
}

}  // namespace

bool is_sandblaster(const TrainOptions& o) {
  return o.algorithm == "sandblaster";
}

TrainResult train_sandblaster(const TrainOptions& o, const DownpourJob& job) {
  validate(o);
  const int workers = job.world - o.servers;
  DT_ENFORCE(workers >= 1, "--algorithm sandblaster: ", job.world, " ranks with --servers ",
             o.servers, " leave no replica");
  const int slow = parse_slow_rank(o.slow_rank).first;
  DT_ENFORCE(slow < workers, "--slow-rank ", o.slow_rank, ": replica ", slow, " is not one of the ",
             workers, " replicas (0..", workers - 1, ")");
  if (job.rank < workers) return replica(o, job, workers);
  return serve(o, job, workers, job.rank - workers);
}

}  // namespace dtrain::train
