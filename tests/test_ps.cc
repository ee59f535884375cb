// The parameter server: shards as threads on 127.0.0.1 (any free port), clients on threads.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <latch>
#include <limits>
#include <cstring>
#include <thread>
#include <zmq.hpp>

#include "dtrain/comm/rendezvous.h"
#include "dtrain/ps/client.h"
#include "dtrain/ps/directory.h"
#include "dtrain/ps/server.h"
#include "harness.h"
#include "ps/wire.h"

namespace dtrain::ps {
namespace {

using Millis = std::chrono::milliseconds;
using test::run_threads;
using test::throws_invalid;
using test::what;

// `count` shards of one job, each run() on its own thread.
class Shards {
 public:
  Shards(int count, uint64_t length, ServerOptions base = {}, bool resume = false) {
    base.shards = count;
    base.length = length;
    if (base.expected_workers == 1) base.expected_workers = 0;  // tests end them explicitly
    errors_.resize(static_cast<size_t>(count));
    for (int s = 0; s < count; ++s) {
      ServerOptions o = base;
      o.index = s;
      if (!base.checkpoint_path.empty()) o.checkpoint_path.append(".").append(std::to_string(s));
      servers_.push_back(std::make_unique<Server>(o, resume));
    }
    for (int s = 0; s < count; ++s) start(s);
  }
  ~Shards() {
    try {
      stop();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "a shard failed: " << e.what();
    }
  }

  void start(int s) {
    threads_.emplace_back([this, s] {
      try {
        servers_[static_cast<size_t>(s)]->run();
      } catch (...) {
        errors_[static_cast<size_t>(s)] = std::current_exception();
      }
    });
  }
  // Stops every shard and joins; rethrows a shard's failure.
  void stop() {
    for (auto& s : servers_) s->stop();
    join();
  }
  void join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    for (auto& e : errors_) {
      if (e) std::rethrow_exception(std::exchange(e, nullptr));
    }
  }
  Server& operator[](int s) { return *servers_[static_cast<size_t>(s)]; }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> eps;
    for (const auto& s : servers_) eps.push_back(s->endpoint());
    return eps;
  }
  std::vector<float> values() const {
    std::vector<float> all;
    for (const auto& s : servers_) {
      const auto v = s->values();
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  }
  ClientOptions client(int worker, Millis timeout = Millis(10000)) const {
    ClientOptions c;
    c.worker = worker;
    c.endpoints = endpoints();
    c.length = length();
    c.timeout = timeout;
    return c;
  }
  uint64_t length() const {
    uint64_t n = 0;
    for (const auto& s : servers_) n += s->range().size();
    return n;
  }

 private:
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::thread> threads_;
  std::vector<std::exception_ptr> errors_;
};

void rethrow_first(const std::vector<std::exception_ptr>& errors) {
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// --- keys --------------------------------------------------------------------------------------

TEST(PsKeys, BalancedAndSplitEdgeCases) {
  EXPECT_INVALID(KeyRanges(10, 0), "shards");
  for (uint64_t length : {0, 1, 2, 3, 5, 10, 17}) {
    for (int shards : {1, 2, 3, 4, 7}) {
      const KeyRanges k(length, shards);
      ASSERT_EQ(k.shards(), shards);
      uint64_t at = 0;
      for (int s = 0; s < shards; ++s) {
        const Range& r = k.shard(s);
        EXPECT_EQ(r.begin, at);
        const uint64_t want = length / shards + (uint64_t(s) < length % shards ? 1 : 0);
        EXPECT_EQ(r.size(), want) << length << "/" << shards << " shard " << s;
        for (uint64_t key = r.begin; key < r.end; ++key) EXPECT_EQ(k.shard_of(key), s);
        at = r.end;
      }
      EXPECT_EQ(at, length);
      EXPECT_INVALID(k.shard_of(length), "outside");
      // Every sub-range splits into pieces that tile it, each inside its shard.
      for (uint64_t b = 0; b <= length; ++b) {
        for (uint64_t e = b; e <= length; ++e) {
          uint64_t next = b;
          for (const auto& p : k.split({b, e})) {
            EXPECT_FALSE(p.keys.empty());
            EXPECT_EQ(p.keys.begin, next);
            EXPECT_GE(p.keys.begin, k.shard(p.shard).begin);
            EXPECT_LE(p.keys.end, k.shard(p.shard).end);
            next = p.keys.end;
          }
          EXPECT_EQ(next, e);
        }
      }
      EXPECT_INVALID(k.split({0, length + 1}), "not a range");
    }
  }
  const KeyRanges one(1, 3);
  EXPECT_EQ(one.shard(0), (Range{0, 1}));
  EXPECT_TRUE(one.shard(1).empty());
  EXPECT_TRUE(one.shard(2).empty());
  EXPECT_TRUE(KeyRanges(0, 3).split({0, 0}).empty());
}

// --- rules and consistency specs ------------------------------------------------------------

TEST(PsRules, ParseAndName) {
  EXPECT_EQ(UpdateRule::parse("sum").kind, UpdateRule::Kind::kSum);
  const auto sgd = UpdateRule::parse("sgd:0.1");
  EXPECT_EQ(sgd.kind, UpdateRule::Kind::kSgd);
  EXPECT_DOUBLE_EQ(sgd.lr, 0.1);
  const auto ada = UpdateRule::parse("adagrad:lr=0.05,eps=1e-8");
  EXPECT_EQ(ada.kind, UpdateRule::Kind::kAdagrad);
  EXPECT_DOUBLE_EQ(ada.eps, 1e-8);
  const auto adam = UpdateRule::parse("adam:lr=0.001,beta1=0.8,beta2=0.99");
  EXPECT_DOUBLE_EQ(adam.beta1, 0.8);
  EXPECT_DOUBLE_EQ(adam.beta2, 0.99);
  for (const auto& r : {sgd, ada, adam, UpdateRule::parse("adagrad:init=0")}) {
    EXPECT_EQ(UpdateRule::parse(r.str()).str(), r.str());
  }
  EXPECT_INVALID(UpdateRule::parse("momentum:0.1", "--server-update"), "--server-update");
  EXPECT_INVALID(UpdateRule::parse("sgd:lr=-1"), "lr");
  EXPECT_INVALID(UpdateRule::parse("adam:beta1=1"), "beta1");
  EXPECT_INVALID(UpdateRule::parse("sgd:rate=1"), "rate");
  EXPECT_INVALID(UpdateRule::parse("sum:1"), "sum");

  EXPECT_EQ(Consistency::parse("bsp").tau, 0);
  EXPECT_EQ(Consistency::parse("async").tau, Consistency::kUnbounded);
  EXPECT_EQ(Consistency::parse("bounded:4").tau, 4);
  EXPECT_EQ(Consistency::parse("bounded:tau=3").str(), "bounded:3");
  EXPECT_INVALID(Consistency::parse("bounded", "--consistency"), "--consistency");
  EXPECT_INVALID(Consistency::parse("bounded:x"), "bounded");
  EXPECT_INVALID(Consistency::parse("ssp"), "ssp");
  EXPECT_TRUE(Consistency::parse("bounded:2").may_serve(5, 3));
  EXPECT_FALSE(Consistency::parse("bounded:2").may_serve(6, 3));
}

// Each rule against its formula, key by key in double.
TEST(PsRules, MathAgainstScalarComputation) {
  const std::vector<std::vector<float>> grads = {
      {0.5f, -1.0f, 0.0f, 2.0f}, {0.25f, 0.5f, -3.0f, 0.0f}, {-1.5f, 0.125f, 1.0f, 0.75f}};
  for (const std::string spec :
       {"sgd:lr=0.1", "adagrad:lr=0.05,eps=1e-6,init=0.1", "adam:lr=0.01,beta1=0.9,beta2=0.99"}) {
    const auto rule = UpdateRule::parse(spec);
    const size_t n = 4;
    std::vector<float> w = {1.0f, -2.0f, 0.5f, 3.0f}, ws = w;
    std::vector<float> state(n * rule.state_per_key(),
                             rule.kind == UpdateRule::Kind::kAdagrad ? 0.1f : 0.0f);
    std::vector<float> states = state;
    std::vector<double> ref(w.begin(), w.end()), acc(n, 0.1), m(n, 0), v(n, 0);
    uint64_t count = 0;
    for (const auto& g : grads) {
      ++count;
      rule.apply(w, g, state, count);
      const std::vector<uint64_t> idx = {13, 10, 12, 11};  // base 10, out of order
      std::vector<float> gs = {g[3], g[0], g[2], g[1]};
      rule.apply_sparse(ws, idx, 10, gs, states, count);
      for (size_t i = 0; i < n; ++i) {
        const double gi = g[i];
        if (spec.starts_with("sgd")) {
          ref[i] -= 0.1 * gi;
        } else if (spec.starts_with("adagrad")) {
          acc[i] += gi * gi;
          if (gi != 0) ref[i] -= 0.05 * gi / (std::sqrt(acc[i]) + 1e-6);
        } else {
          m[i] = 0.9 * m[i] + 0.1 * gi;
          v[i] = 0.99 * v[i] + 0.01 * gi * gi;
          const double mh = m[i] / (1 - std::pow(0.9, double(count)));
          const double vh = v[i] / (1 - std::pow(0.99, double(count)));
          if (vh > 0) ref[i] -= 0.01 * mh / (std::sqrt(vh) + 1e-8);
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      EXPECT_NEAR(w[i], ref[i], 1e-5 * (1 + std::abs(ref[i]))) << spec << " key " << i;
      EXPECT_EQ(ws[i], w[i]) << spec << " key " << i << " (sparse)";
    }
  }
  const auto sgd = UpdateRule::parse("sgd:0.1");
  std::vector<float> w(3);
  const std::vector<uint64_t> bad = {7};
  const std::vector<float> g = {1.0f};
  EXPECT_INVALID(sgd.apply_sparse(w, bad, 0, g, {}, 1), "outside");
}

// --- the wire ----------------------------------------------------------------------------------

TEST(PsWire, RoundTripAndTruncation) {
  wire::RequestHead h;
  h.op = wire::Op::kPushRows;
  h.id = 77;
  h.worker = 3;
  h.clock = 9;
  h.pulled_clock = 7;
  h.a = "w";
  const std::vector<wire::Segment> segs = {{4, 2}, {10, 1}};
  const std::vector<float> vals = {1, 2, 3};
  const auto frame = wire::encode_request(h, segs, vals);
  const auto q = wire::decode_request(frame);
  EXPECT_EQ(q.head.id, 77u);
  EXPECT_EQ(q.head.worker, 3);
  EXPECT_EQ(q.head.clock, 9);
  EXPECT_EQ(q.head.pulled_clock, 7);
  ASSERT_EQ(q.segments.size(), 2u);
  EXPECT_EQ(q.segments[1].begin, 10u);
  EXPECT_EQ(std::vector<float>(q.values.begin(), q.values.end()), vals);
  EXPECT_EQ(wire::peek_id(frame), 77u);
  for (size_t cut = 0; cut < frame.size(); ++cut) {
    EXPECT_THROW(wire::decode_request(std::span(frame).first(cut)), ProtocolError) << cut;
  }
  // Unaligned frames decode too (the values are copied then).
  std::vector<std::byte> shifted(frame.size() + 1);
  std::memcpy(shifted.data() + 1, frame.data(), frame.size());
  const auto q2 = wire::decode_request(std::span(shifted).subspan(1));
  EXPECT_EQ(std::vector<float>(q2.values.begin(), q2.values.end()), vals);

  ServerStats st;
  st.updates = 5;
  st.staleness_histogram = {1, 2, 3};
  st.clocks = {{0, 4}, {2, 9}};
  st.states = {{0, "live"}, {2, "dead"}};
  st.pushed = {{0, 4}, {2, 7}};
  wire::ReplyHead r;
  r.op = wire::Op::kStats;
  r.id = 8;
  r.blob = wire::encode_stats(st);
  const std::vector<float> out = {5, 6};
  const auto rf = wire::encode_reply(r, out);
  const auto back = wire::decode_reply(rf);
  EXPECT_EQ(back.value_count, 2u);
  const auto st2 = wire::decode_stats(back.head.blob);
  EXPECT_EQ(st2.updates, 5u);
  EXPECT_EQ(st2.states.at(2), "dead");
  EXPECT_EQ(st2.clocks.at(2), 9);
  EXPECT_EQ(st2.pushed.at(2), 7);
  for (size_t cut = 0; cut < rf.size(); ++cut) {
    EXPECT_THROW(wire::decode_reply(std::span(rf).first(cut)), ProtocolError) << cut;
  }
  // A push whose values do not match its keys.
  wire::RequestHead p;
  p.op = wire::Op::kPush;
  p.keys = {0, 5};
  try {
    wire::decode_request(wire::encode_request(p, {}, vals));
    ADD_FAILURE() << "no ProtocolError";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("values"), std::string::npos) << e.what();
  }
}

// --- (1) many pushers ----------------------------------------------------------------------------

TEST(PsServer, ConcurrentPushersSumExactly) {
  const uint64_t n = 1000;  // 334 + 333 + 333
  const int workers = 8, rounds = 50;
  ServerOptions o;
  o.rule = UpdateRule::parse("sum");
  o.consistency = Consistency::parse("async");
  Shards shards(3, n, o);
  const KeyRanges keys(n, 3);
  // Odd rounds push a rank-dependent part that straddles the shard boundaries.
  auto range_of = [&](int rank, int round) -> Range {
    if (round % 2 == 0) return {0, n};
    return {uint64_t(10 + 37 * rank), uint64_t(n - 5 - 41 * rank)};
  };
  auto value = [](int rank, uint64_t key, int round) {
    return float((rank + 1) * int(key % 7 + 1) + (round % 3));
  };
  std::vector<double> expected(n, 0.0);
  std::vector<uint64_t> updates(3, 0);
  for (int rank = 0; rank < workers; ++rank) {
    for (int round = 0; round < rounds; ++round) {
      const Range r = range_of(rank, round);
      for (uint64_t k = r.begin; k < r.end; ++k) expected[k] += value(rank, k, round);
      for (const auto& p : keys.split(r)) ++updates[static_cast<size_t>(p.shard)];
    }
  }
  auto errors = run_threads(workers, [&](int rank) {
    // No hello: a worker is registered by its first request, at clock 0 (a hello could start it
    // from the clock of workers that started earlier).
    Client c(shards.client(rank));
    std::vector<double> mine(n, 0.0);
    std::vector<float> got(n);
    for (int round = 0; round < rounds; ++round) {
      const Range r = range_of(rank, round);
      std::vector<float> g(r.size());
      for (uint64_t k = r.begin; k < r.end; ++k) {
        g[k - r.begin] = value(rank, k, round);
        mine[k] += g[k - r.begin];
      }
      c.wait(c.push(r, g));
      if (round % 10 == 9) {
        // Every acknowledged push is visible: the sum holds at least this worker's part.
        c.wait(c.pull({0, n}, got));
        for (uint64_t k = 0; k < n; ++k) ASSERT_GE(got[k], mine[k]) << "key " << k;
      }
    }
    c.done();
  });
  rethrow_first(errors);
  const auto values = shards.values();
  ASSERT_EQ(values.size(), n);
  for (uint64_t k = 0; k < n; ++k) ASSERT_EQ(values[k], float(expected[k])) << "key " << k;
  for (int s = 0; s < 3; ++s) {
    const auto st = shards[s].stats();
    EXPECT_EQ(st.updates, updates[static_cast<size_t>(s)]) << "shard " << s;
    for (int rank = 0; rank < workers; ++rank) {
      EXPECT_EQ(st.clocks.at(rank), rounds);
      EXPECT_EQ(st.pushed.at(rank), rounds);
      EXPECT_EQ(st.states.at(rank), "done");
    }
  }
  // A pull after the pushes returns exactly the sums, from one client.
  Client c(shards.client(-1));
  std::vector<float> got(n);
  c.wait(c.pull({0, n}, got));
  for (uint64_t k = 0; k < n; ++k) ASSERT_EQ(got[k], float(expected[k]));
}

// --- (2) consistency models ------------------------------------------------------------------

// 3 workers pull-then-push 16 times; worker 0 sleeps between pushes. Returns each shard's stats.
std::vector<ServerStats> run_with_slow_worker(const std::string& consistency) {
  ServerOptions o;
  o.rule = UpdateRule::parse("sgd:0.01");
  o.consistency = Consistency::parse(consistency);
  o.dead_after = Millis(3000);
  Shards shards(2, 9, o);
  const int workers = 3, rounds = 16;
  std::latch joined(workers);  // all are live before any pushes: none starts ahead
  auto errors = run_threads(workers, [&](int rank) {
    Client c(shards.client(rank, Millis(20000)));
    c.heartbeat(Millis(50));
    try {
      EXPECT_EQ(c.hello(), 0);
    } catch (...) {
      joined.count_down();  // the others must not wait for this one
      throw;
    }
    joined.arrive_and_wait();
    std::vector<float> w(9), g(9, 1.0f);
    for (int round = 0; round < rounds; ++round) {
      c.wait(c.pull({0, 9}, w));
      if (rank == 0) std::this_thread::sleep_for(Millis(25));
      c.wait(c.push({0, 9}, g));
    }
    c.done();
  });
  rethrow_first(errors);
  return {shards[0].stats(), shards[1].stats()};
}

int64_t max_bucket(const ServerStats& s) {
  int64_t top = -1;
  for (size_t k = 0; k < s.staleness_histogram.size(); ++k) {
    if (s.staleness_histogram[k] > 0) top = static_cast<int64_t>(k);
  }
  return top;
}

TEST(PsServer, BoundedDelayKeepsStalenessWithinTau) {
  for (const auto& s : run_with_slow_worker("bounded:2")) {
    EXPECT_EQ(s.updates, 48u);
    EXPECT_LE(s.max_staleness, 2);
    EXPECT_LE(max_bucket(s), 2);
  }
}

TEST(PsServer, BspHasNoStaleness) {
  for (const auto& s : run_with_slow_worker("bsp")) {
    EXPECT_EQ(s.updates, 48u);
    EXPECT_EQ(s.max_staleness, 0);
    EXPECT_EQ(max_bucket(s), 0);
  }
}

// A worker that fetches on one socket and pushes on another (as a Downpour replica does): under
// BSP its pull at clock 1 waits for its own push of clock 0, which may arrive after it.
TEST(PsServer, BspPullWaitsForThePullersOwnPush) {
  ServerOptions o;
  o.rule = UpdateRule::parse("sum");
  o.consistency = Consistency::parse("bsp");
  Shards shards(1, 4, o);
  Client fetcher(shards.client(0)), pusher(shards.client(0));
  EXPECT_EQ(fetcher.hello(), 0);
  std::vector<float> w(4), g(4, 2.0f);
  fetcher.set_clock(1);
  const Ticket t = fetcher.pull({0, 4}, w);
  auto pulled = std::async(std::launch::async, [&] { fetcher.wait(t); });
  EXPECT_EQ(pulled.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
      << "served before the puller's own push";
  pusher.wait(pusher.push({0, 4}, g));
  ASSERT_EQ(pulled.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  pulled.get();
  EXPECT_EQ(w, g);
  EXPECT_EQ(fetcher.pulled_clock(), 1);
}

TEST(PsServer, AsyncLetsFastWorkersRunAhead) {
  const auto stats = run_with_slow_worker("async");
  for (const auto& s : stats) {
    EXPECT_EQ(s.updates, 48u);
    EXPECT_GT(s.max_staleness, 2);  // the fast workers ran far ahead of the slow one
    EXPECT_EQ(max_bucket(s), s.max_staleness);
  }
}

// --- (3) sparse rows ---------------------------------------------------------------------------

TEST(PsServer, RowsMatchTheDenseComputation) {
  const uint64_t n = 50;  // shards [0,17) [17,34) [34,50)
  ServerOptions o;
  o.rule = UpdateRule::parse("sgd:0.5");
  o.consistency = Consistency::parse("async");
  Shards sparse(3, n, o), dense(3, n, o);
  const Table table{5, 9, 5};  // rows 2 ([15,20)) and 5 ([30,35)) straddle boundaries
  std::vector<float> init(n);
  for (uint64_t k = 0; k < n; ++k) init[k] = float(k) * 0.25f - 3.0f;
  Client a(sparse.client(0)), b(dense.client(0));
  a.wait(a.assign({0, n}, init));
  b.wait(b.assign({0, n}, init));

  const std::vector<uint64_t> rows = {2, 5, 2, 0, 8, 5, 2};
  std::vector<float> values(rows.size() * table.width);
  for (size_t j = 0; j < values.size(); ++j) values[j] = float(j % 11) - 4.5f + 0.125f * j;
  std::vector<float> g(n, 0.0f);
  for (size_t j = 0; j < rows.size(); ++j) {
    for (uint64_t k = 0; k < table.width; ++k) {
      g[table.row(rows[j]).begin + k] += values[j * table.width + k];
    }
  }
  a.wait(a.push_rows(table, rows, values));
  b.wait(b.push({0, n}, g));
  EXPECT_EQ(a.clock(), 1);
  const auto got = sparse.values(), want = dense.values();
  for (uint64_t k = 0; k < n; ++k) {
    EXPECT_EQ(got[k], want[k]) << "key " << k;
    EXPECT_EQ(got[k], float(double(init[k]) - 0.5 * g[k])) << "key " << k;
  }
  // Each shard got one push (a clock tick for all, an update where rows fell).
  for (int s = 0; s < 3; ++s) EXPECT_EQ(sparse[s].stats().clocks.at(0), 1);

  const std::vector<uint64_t> ask = {5, 2, 5, 8, 0};
  std::vector<float> out(ask.size() * table.width, -1.0f);
  a.wait(a.pull_rows(table, ask, out));
  for (size_t j = 0; j < ask.size(); ++j) {
    for (uint64_t k = 0; k < table.width; ++k) {
      EXPECT_EQ(out[j * table.width + k], want[table.row(ask[j]).begin + k]) << j << "," << k;
    }
  }
  const std::vector<uint64_t> outside = {9};
  std::vector<float> one(table.width);
  EXPECT_INVALID(a.pull_rows(table, outside, one), "row 9");
}

// A model-parallel partition's slices: several ranges as one request per shard.
TEST(PsServer, RangesMatchTheDenseComputation) {
  const uint64_t n = 50;  // shards [0,17) [17,34) [34,50)
  ServerOptions o;
  o.rule = UpdateRule::parse("sgd:0.5");
  o.consistency = Consistency::parse("async");
  Shards ranged(3, n, o), dense(3, n, o);
  std::vector<float> init(n);
  for (uint64_t k = 0; k < n; ++k) init[k] = float(k) * 0.25f - 3.0f;
  Client a(ranged.client(0)), b(dense.client(0));
  a.wait(a.assign({0, n}, init));
  b.wait(b.assign({0, n}, init));
  // The second range straddles no boundary, the first and third do; 20 is a gap.
  const std::vector<Range> ranges = {{3, 19}, {21, 30}, {30, 40}};
  std::vector<float> values, g(n, 0.0f);
  for (const auto& r : ranges) {
    for (uint64_t k = r.begin; k < r.end; ++k) {
      values.push_back(float(k % 7) - 2.5f);
      g[k] = values.back();
    }
  }
  a.wait(a.push_ranges(ranges, values));
  b.wait(b.push({0, n}, g));
  EXPECT_EQ(a.clock(), 1);
  const auto got = ranged.values(), want = dense.values();
  for (uint64_t k = 0; k < n; ++k) EXPECT_EQ(got[k], want[k]) << "key " << k;
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(ranged[s].stats().clocks.at(0), 1);  // one clock tick everywhere
    EXPECT_EQ(ranged[s].stats().updates, 1u);      // one update request per shard
  }
  std::vector<float> out(values.size(), -1.0f);
  a.wait(a.pull_ranges(ranges, out));
  size_t j = 0;
  for (const auto& r : ranges) {
    for (uint64_t k = r.begin; k < r.end; ++k, ++j) EXPECT_EQ(out[j], want[k]) << "key " << k;
  }
  const std::vector<Range> overlapping = {{3, 10}, {8, 12}};
  std::vector<float> nine(9);
  EXPECT_INVALID(a.pull_ranges(overlapping, nine), "increasing, disjoint");
  const std::vector<Range> beyond = {{45, 51}};
  std::vector<float> six(6);
  EXPECT_INVALID(a.push_ranges(beyond, six), "inside the vector of 50");
  EXPECT_INVALID(a.push_ranges(ranges, nine), "with 9 values");
}

// --- (4) vector operations -------------------------------------------------------------------

TEST(PsServer, VectorOpsMatchLocalComputation) {
  const uint64_t n = 23;
  Shards shards(3, n);
  Client c(shards.client(-1));
  std::vector<float> x(n), y(n);
  for (uint64_t k = 0; k < n; ++k) {
    x[k] = float(k) * 0.5f - 2.0f;
    y[k] = 1.0f / float(k + 1);
  }
  c.wait(c.assign({0, n}, x, "x"));
  c.wait(c.assign({0, n}, y, "y"));
  double dot = 0;
  for (uint64_t k = 0; k < n; ++k) dot += double(x[k]) * y[k];
  EXPECT_NEAR(c.dot("x", "y"), dot, 1e-12 * std::abs(dot) + 1e-12);
  EXPECT_EQ(c.dot("fresh", "fresh"), 0.0);
  c.axpy(-0.75, "x", "y");
  for (uint64_t k = 0; k < n; ++k) y[k] = float(double(y[k]) + -0.75 * x[k]);
  c.scale(3.0, "x");
  for (auto& v : x) v = float(3.0 * v);
  c.copy("x", "z");
  std::vector<float> z = x, extra(10);
  for (uint64_t k = 0; k < 10; ++k) extra[k] = float(k);
  c.wait(c.accumulate({6, 16}, extra, "z"));
  for (uint64_t k = 0; k < 10; ++k) z[6 + k] += extra[k];
  std::vector<float> got(n);
  c.wait(c.read({0, n}, got, "y"));
  EXPECT_EQ(got, y);
  c.wait(c.read({0, n}, got, "x"));
  EXPECT_EQ(got, x);
  c.wait(c.read({0, n}, got, "z"));
  EXPECT_EQ(got, z);
  std::vector<float> part(7);
  c.wait(c.read({5, 12}, part, "z"));
  EXPECT_EQ(part, std::vector<float>(z.begin() + 5, z.begin() + 12));
  // The parameters were never touched.
  for (float v : shards.values()) EXPECT_EQ(v, 0.0f);
}

// --- (6) checkpoints -------------------------------------------------------------------------

TEST(PsServer, CheckpointRestoresValuesCountAndAdagradState) {
  test::TempDir dir;
  const uint64_t n = 11;
  ServerOptions o;
  o.rule = UpdateRule::parse("adagrad:lr=0.1,eps=1e-8,init=0.1");
  o.consistency = Consistency::parse("async");
  o.checkpoint_path = dir.path() + "/shard";
  std::vector<double> ref(n, 0.0), acc(n, 0.1);
  auto step = [&](Client& c, float scale) {
    std::vector<float> g(n);
    for (uint64_t k = 0; k < n; ++k) {
      g[k] = scale * (float(k) - 4.0f);
      acc[k] += double(g[k]) * g[k];
      if (g[k] != 0) ref[k] -= 0.1 * g[k] / (std::sqrt(acc[k]) + 1e-8);
    }
    c.wait(c.push({0, n}, g));
  };
  std::vector<float> before;
  {
    Shards shards(2, n, o);
    Client c(shards.client(4));
    c.hello();
    step(c, 1.0f);
    step(c, 0.5f);
    std::vector<float> x(n, 2.5f);
    c.wait(c.assign({0, n}, x, "x"));
    c.shutdown();
    shards.join();  // run() returned on the shutdown request
    before = shards.values();
  }
  {
    Shards shards(2, n, o, /*resume=*/true);
    EXPECT_EQ(shards.values(), before);
    for (int s = 0; s < 2; ++s) {
      const auto st = shards[s].stats();
      EXPECT_EQ(st.updates, 2u);
      EXPECT_EQ(st.clocks.at(4), 2);
      EXPECT_EQ(st.pushed.at(4), 2);
      EXPECT_EQ(st.states.at(4), "dead");  // not heard from since the restart
    }
    Client c(shards.client(4));
    EXPECT_EQ(c.hello(), 2);  // alone: its own last clock
    step(c, -2.0f);           // uses the restored accumulator
    const auto after = shards.values();
    for (uint64_t k = 0; k < n; ++k) EXPECT_NEAR(after[k], ref[k], 1e-5) << "key " << k;
    std::vector<float> x(n);
    c.wait(c.read({0, n}, x, "x"));
    EXPECT_EQ(x, std::vector<float>(n, 2.5f));
    c.shutdown();
    shards.join();
  }
  // Damaged, missing or mismatched files name the file.
  const std::string file = o.checkpoint_path + ".1";
  ServerOptions one = o;
  one.index = 1;
  one.shards = 2;
  one.length = n;
  one.checkpoint_path = file;
  EXPECT_NO_THROW(Server(one, true));
  ServerOptions other_rule = one;
  other_rule.rule = UpdateRule::parse("sgd:0.1");
  EXPECT_INVALID(Server(other_rule, true), file);
  ServerOptions other_shards = one;
  other_shards.shards = 3;
  EXPECT_INVALID(Server(other_shards, true), file);
  const auto size = std::filesystem::file_size(file);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 3));
    f.put('\x7f');
  }
  EXPECT_INVALID(Server(one, true), file);
  std::filesystem::resize_file(file, size / 2);
  EXPECT_INVALID(Server(one, true), file);
  ServerOptions missing = one;
  missing.checkpoint_path = dir.path() + "/nothing";
  EXPECT_INVALID(Server(missing, true), "nothing");
}

// --- (7) liveness ------------------------------------------------------------------------------

TEST(PsServer, SilentWorkerIsDeadAndStopsBlockingThenRejoins) {
  ServerOptions o;
  o.rule = UpdateRule::parse("sum");
  o.consistency = Consistency::parse("bsp");
  o.dead_after = Millis(300);
  Shards shards(1, 4, o);
  Client alive(shards.client(0)), silent(shards.client(1));
  alive.heartbeat(Millis(50));
  EXPECT_EQ(alive.hello(), 0);
  EXPECT_EQ(silent.hello(), 0);
  std::vector<float> g(4, 1.0f), w(4);
  alive.wait(alive.push({0, 4}, g));
  // Worker 1 is at clock 0 and says nothing more: bsp holds this pull until it is dead.
  alive.wait(alive.pull({0, 4}, w));
  EXPECT_EQ(alive.pulled_clock(), 1);
  auto st = shards[0].stats();
  EXPECT_EQ(st.states.at(1), "dead");
  EXPECT_EQ(st.states.at(0), "live");
  EXPECT_EQ(w, g);
  // It comes back: it starts from the live worker's clock and is live again.
  EXPECT_EQ(silent.hello(), 1);
  EXPECT_EQ(silent.clock(), 1);
  st = shards[0].stats();
  EXPECT_EQ(st.states.at(1), "live");
  EXPECT_EQ(st.clocks.at(1), 1);
  // Its clock moved ahead, its progress did not: one push is one tick pushed.
  silent.wait(silent.push({0, 4}, g));
  st = shards[0].stats();
  EXPECT_EQ(st.clocks.at(1), 2);
  EXPECT_EQ(st.pushed.at(1), 1);
  EXPECT_EQ(st.pushed.at(0), 1);
}

TEST(PsServer, EndsOnItsOwnWhenEveryWorkerIsDone) {
  ServerOptions o;
  o.shards = 1;
  o.length = 3;
  o.dead_after = Millis(200);
  o.expected_workers = 2;
  Server server(o);
  std::thread t([&] { server.run(); });
  {
    ClientOptions co;
    co.endpoints = {server.endpoint()};
    co.length = 3;
    co.timeout = Millis(5000);
    for (int w : {0, 1}) {
      co.worker = w;
      Client c(co);
      c.hello();
      c.done();
    }
  }
  t.join();  // returns without stop(): both expected workers are done
  EXPECT_EQ(server.stats().states.at(1), "done");
}

// --- (8) a stopped shard -------------------------------------------------------------------------

TEST(PsClient, StoppedShardIsATimeoutNamingIt) {
  Shards shards(2, 10);
  Client c(shards.client(0, Millis(600)));
  c.hello();
  const std::string endpoint = shards[1].endpoint();
  shards[1].stop();
  std::this_thread::sleep_for(Millis(100));  // run() returns and closes the socket
  std::vector<float> g(10, 1.0f);
  const auto start = std::chrono::steady_clock::now();
  try {
    c.wait(c.push({0, 10}, g));
    ADD_FAILURE() << "no TimeoutError";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("ps shard 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find(endpoint), std::string::npos) << msg;
    EXPECT_NE(msg.find("push"), std::string::npos) << msg;
    EXPECT_NE(msg.find("600 ms"), std::string::npos) << msg;
  }
  // Within the timeout plus generous slack (a bound on hanging, not a performance figure).
  EXPECT_LT(std::chrono::steady_clock::now() - start, Millis(600 + 10000));
  // The live shard still answers.
  std::vector<float> w(5);
  c.wait(c.pull({0, 5}, w));
}

// --- (9) malformed frames ----------------------------------------------------------------------

TEST(PsServer, MalformedFramesGetErrorRepliesAndTheShardServesOn) {
  ServerOptions o;
  o.rule = UpdateRule::parse("sum");
  Shards shards(1, 8, o);
  zmq::context_t ctx(1);
  zmq::socket_t raw(ctx, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.set(zmq::sockopt::rcvtimeo, 5000);
  raw.connect(shards[0].endpoint());
  auto ask = [&](std::vector<std::vector<std::byte>> parts) {
    for (size_t i = 0; i < parts.size(); ++i) {
      zmq::message_t m(parts[i].data(), parts[i].size());
      raw.send(m, i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    zmq::message_t reply;
    EXPECT_TRUE(raw.recv(reply, zmq::recv_flags::none)) << "no reply";
    return wire::decode_reply({static_cast<const std::byte*>(reply.data()), reply.size()});
  };
  auto bytes = [](const std::string& s) {
    std::vector<std::byte> b(s.size());
    std::memcpy(b.data(), s.data(), s.size());
    return b;
  };
  struct Case {
    std::vector<std::vector<std::byte>> parts;
    std::string fragment;
    wire::Status status = wire::Status::kProtocolError;
  };
  wire::RequestHead push;
  push.op = wire::Op::kPush;
  push.id = 31;
  push.keys = {0, 4};
  const std::vector<float> four(4, 1.0f);
  auto valid = wire::encode_request(push, {}, four);
  auto truncated = valid;
  truncated.resize(valid.size() - 3);
  auto huge = wire::encode_request(push, {}, four);
  const uint64_t claim = uint64_t(1) << 60;
  // The values count sits just before the padding: find it by encoding with a marker count.
  {
    const auto head = wire::encode_request_head(push, 0, 4);
    const auto head_marked = wire::encode_request_head(push, 0, 0x55aa55aa);
    for (size_t i = 0; i + 8 <= head.size(); ++i) {
      uint64_t v;
      std::memcpy(&v, head_marked.data() + i, 8);
      if (v == 0x55aa55aa) std::memcpy(huge.data() + i, &claim, 8);
    }
  }
  auto bad_magic = valid;
  bad_magic[0] = std::byte{0};
  auto bad_op = valid;
  bad_op[5] = std::byte{99};
  wire::RequestHead outside = push;
  outside.keys = {6, 10};
  // Rows asked for more often than the shard has keys (a reply of unbounded size).
  wire::RequestHead rows;
  rows.op = wire::Op::kPullRows;
  rows.id = 32;
  const std::vector<wire::Segment> repeated(3, wire::Segment{0, 4});
  wire::RequestHead late = push;
  late.clock = std::numeric_limits<int64_t>::max();  // would overflow the shard's clock + 1
  const std::vector<float> nan_push = {1.0f, std::nanf(""), 1.0f, 1.0f};
  std::vector<Case> cases = {
      {{wire::encode_request(rows, repeated, {})}, "more than the shard's", wire::Status::kInvalidArgument},
      {{wire::encode_request(late, {}, four)}, "outside [0, 2^62)"},
      {{wire::encode_request(push, {}, nan_push)}, "non-finite", wire::Status::kInvalidArgument},
      {{bytes("hello")}, "magic"},
      {{std::vector<std::byte>{}}, "magic"},
      {{bad_magic}, "magic"},
      {{bad_op}, "op"},
      {{truncated}, "values claims"},
      {{huge}, "values"},
      {{valid, bytes("x")}, "parts"},
      {{wire::encode_request(outside, {}, four)}, "outside", wire::Status::kInvalidArgument},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto r = ask(cases[i].parts);
    EXPECT_EQ(r.head.status, cases[i].status) << "case " << i << ": " << r.head.message;
    EXPECT_NE(r.head.message.find(cases[i].fragment), std::string::npos)
        << "case " << i << ": " << r.head.message;
  }
  // An intact push is still served, from the raw socket and from a client.
  EXPECT_EQ(ask({valid}).head.status, wire::Status::kOk);
  Client c(shards.client(0));
  std::vector<float> w(8);
  c.wait(c.pull({0, 8}, w));
  EXPECT_EQ(w, (std::vector<float>{1, 1, 1, 1, 0, 0, 0, 0}));
}

// --- joining, directory ------------------------------------------------------------------------

TEST(PsClient, HelloChecksTheShardsRange) {
  Shards shards(2, 10);
  ClientOptions co = shards.client(0);
  co.length = 12;
  Client c(co);
  EXPECT_INVALID(c.hello(), "ps shard 0");
}

TEST(PsDirectory, FindsThisJobsShardsOnly) {
  test::TempDir dir;
  auto store = comm::open_store(comm::RendezvousUrl::parse(dir.url()));
  publish_shard(*store, "job-a", 0, "tcp://127.0.0.1:1000");
  publish_shard(*store, "job-a", 1, "tcp://127.0.0.1:1001");
  EXPECT_EQ(find_shards(*store, "job-a", 2, Millis(1000)),
            (std::vector<std::string>{"tcp://127.0.0.1:1000", "tcp://127.0.0.1:1001"}));
  try {
    find_shards(*store, "job-b", 3, Millis(200));
    ADD_FAILURE() << "no TimeoutError";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("0, 1, 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("job-a"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace dtrain::ps
