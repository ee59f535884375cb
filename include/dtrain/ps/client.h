// A worker's connection to every parameter-server shard (ps-lite's KVWorker, in our words).
//
//   ps::Client c({.worker = 2, .endpoints = eps, .length = n});
//   c.hello();                                   // joins; returns the clock to start from
//   auto t = c.pull({0, n}, w);                  // w: span<float> of n values, filled on wait
//   c.wait(t);
//   c.wait(c.push({0, n}, g));                   // the shards apply their update rule
//   c.wait(c.pull_rows(table, rows, out));       // only the rows a batch touched
//   double d = c.dot("s0", "y0");                // summed over the shards; only scalars travel
//
// Requests are asynchronous: push/pull return a ticket at once, wait(ticket) returns when every
// shard involved has answered (and a pull's values are in place). A push is acknowledged after
// the shard applied it, so a pull issued after wait(push) sees it. A pull may be held by the
// shard under bounded delay (ps/consistency.h); the wait then lasts as long as the consistency
// model requires, up to the timeout.
//
// Failures: a shard that does not answer within `timeout` is a TimeoutError naming the shard,
// its endpoint and the request; a shard's error reply is rethrown with the shard named. A Client
// is used from one thread (like a ZeroMQ socket); a worker that pushes and fetches from separate
// threads opens one Client per thread with the same worker id (clock(), pulled_clock(), their
// setters and the byte counters may be called from another thread). heartbeat() starts a
// background thread (its own sockets) that tells every shard the worker is alive while it computes.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dtrain/ps/keys.h"
#include "dtrain/ps/server.h"

namespace dtrain::ps {

struct ClientOptions {
  // The worker id; a negative id is an observer (a tool, or a worker's end-of-job queries): the
  // shards never count it as a worker (no liveness, no clock) and serve its pulls at once.
  int worker = 0;
  std::vector<std::string> endpoints;  // shard s at endpoints[s]
  uint64_t length = 0;                 // the flat vector's length (must match the shards')
  std::chrono::milliseconds timeout{60000};
};

using Ticket = uint64_t;

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const KeyRanges& keys() const;
  int worker() const;

  // Joins the job on every shard and returns the clock to start from (0 for a fresh job; for a
  // worker joining a running job, the slowest live worker's clock). Also checks that every
  // shard holds the range this client expects (InvalidArgument naming the shard otherwise).
  int64_t hello();
  // This worker finished: it no longer holds back bounded delay.
  void done();
  // The clock this client's pushes carry; push() advances it by one (on every shard, also those
  // the push does not touch, so the shards agree on the clock).
  int64_t clock() const;
  void set_clock(int64_t clock);

  // Dense ranges. `values`/`out` hold r.size() floats and must stay alive until wait().
  Ticket push(const Range& r, std::span<const float> values);
  Ticket pull(const Range& r, std::span<float> out);
  // Rows of a table: `values`/`out` hold rows.size()*table.width floats (row j at j*width).
  // Row ids must be < table.rows (InvalidArgument naming the row otherwise); repeats are summed
  // on push.
  Ticket push_rows(const Table& table, std::span<const uint64_t> rows,
                   std::span<const float> values);
  Ticket pull_rows(const Table& table, std::span<const uint64_t> rows, std::span<float> out);
  // Several dense ranges (increasing, disjoint) as one request per shard, their values one range
  // after another: a shard applies such a push whole before the worker's clock moves on, so a
  // pull served at that clock never sees part of it (several push() calls would each tick).
  Ticket push_ranges(std::span<const Range> ranges, std::span<const float> values);
  Ticket pull_ranges(std::span<const Range> ranges, std::span<float> out);
  // Sets the values of `vector` in range r without the update rule (initial parameters).
  Ticket assign(const Range& r, std::span<const float> values, const std::string& vector = "w");
  void wait(Ticket t);
  // The clock of the parameters the latest completed pull returned: the slowest live worker's
  // clock on the shards when they served it (the minimum over the shards). A push carries it,
  // and the shard records the push's staleness as the pusher's clock minus it.
  int64_t pulled_clock() const;
  // The clock this client's pushes say they computed on (a worker that fetches on another
  // Client sets it from that one's pulled_clock()).
  void set_pulled_clock(int64_t clock);

  // Vector operations on named vectors held by the shards (each of length `length`, created as
  // zeros on first use; "w" is the parameters). Each shard works on its own range; dot sums the
  // shards' partial results. They wait for their answers.
  double dot(const std::string& a, const std::string& b);
  void axpy(double alpha, const std::string& x, const std::string& y);  // y += alpha * x
  void scale(double alpha, const std::string& x);                       // x *= alpha
  void copy(const std::string& from, const std::string& to);            // to = from
  // Adds `values` into named vector `vector` over range r (no update rule: an accumulator).
  Ticket accumulate(const Range& r, std::span<const float> values, const std::string& vector);
  // Reads range r of a named vector.
  Ticket read(const Range& r, std::span<float> out, const std::string& vector);

  // Each shard's counters.
  std::vector<ServerStats> stats();
  // Asks every shard to checkpoint and end (their run() returns).
  void shutdown();

  // Starts the heartbeat thread (idempotent): every `interval` it tells each shard this worker is
  // alive. Stopped by the destructor.
  void heartbeat(std::chrono::milliseconds interval);

  // Bytes this client sent and received (payloads and headers).
  uint64_t bytes_sent() const;
  uint64_t bytes_received() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::ps
