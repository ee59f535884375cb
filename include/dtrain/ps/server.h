// One parameter-server shard: holds the key range KeyRanges(length, shards).shard(index) of the
// flat parameter vector (the vector named "w") and any further named vectors of the same range,
// applies the update rule to pushes, serves pulls under the consistency model, runs vector
// operations that return only scalars, tracks the workers' clocks and liveness, records every
// applied update's staleness, and checkpoints itself atomically.
//
// Transport: a ZeroMQ ROUTER socket bound to tcp://<host>:<port> (port 0: any free port). A
// fixed-membership Gloo context cannot outlive one dead peer; a ZeroMQ socket serves whoever
// connects, so workers may die, restart and join a running job. Requests and replies are the
// frames of ps/wire.h; a request the shard cannot decode is answered with an error reply naming
// what was wrong, never a crash.
//
// Liveness: a worker is live from its hello (or first request) until its `done`, or until the
// shard has heard nothing from it (requests or heartbeats) for `dead_after`; then it is logged by
// worker id as dead and its clock stops holding back bounded delay. A dead worker that speaks
// again is live again (a restarted worker says hello and is given a clock to start from: the
// slowest live worker's, so it neither waits for itself nor holds the others back).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/ps/consistency.h"
#include "dtrain/ps/keys.h"
#include "dtrain/ps/update_rule.h"

namespace dtrain::ps {

struct ServerOptions {
  int index = 0;        // this shard
  int shards = 1;       // of this many
  uint64_t length = 0;  // the flat vector's length (all shards)
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port; see Server::endpoint()
  UpdateRule rule;
  Consistency consistency;
  // A worker not heard from for this long is dead (heartbeats come every dead_after/4).
  std::chrono::milliseconds dead_after{10000};
  // Workers the job starts with (ids 0..expected_workers-1). The shard ends on its own (run()
  // returns) once each of them has been seen and every worker it knows is done or dead, and
  // none has spoken for dead_after; or at once on a shutdown request. 0: only on a shutdown
  // request or stop().
  int expected_workers = 1;
  // Checkpoint file ("" = none): written atomically every `checkpoint_every` updates (0: only at
  // the end) and when run() returns.
  std::string checkpoint_path;
  uint64_t checkpoint_every = 0;
};

// Counters a shard reports (ServerStats in a stats reply).
struct ServerStats {
  uint64_t updates = 0;  // pushes applied
  uint64_t pulls = 0;    // pulls served
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  // staleness_histogram[k]: applied updates of staleness k (the pushing worker's clock before
  // the push minus the clock of the parameters it computed on, as the pull that fetched them
  // reported); the last bucket also counts everything staler.
  std::vector<uint64_t> staleness_histogram;
  int64_t max_staleness = 0;
  // Per worker id: clock, and state ("live", "done", "dead").
  std::map<int, int64_t> clocks;
  std::map<int, std::string> states;
  // Per worker id: the clock ticks it pushed over the whole job, across its restarts (a worker's
  // progress; its clock may have been moved ahead by hello()).
  std::map<int, int64_t> pushed;
};

class Server {
 public:
  // Initial values: zeros, or the checkpoint at options.checkpoint_path when `resume` (a missing
  // or corrupt checkpoint, or one of another range or rule, is an InvalidArgument naming the file
  // and what differs). Binds the socket (IoError naming the address if it cannot).
  explicit Server(ServerOptions options, bool resume = false);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // tcp://host:port actually bound (the port filled in when 0 was asked for).
  std::string endpoint() const;
  const Range& range() const;
  // Serves until shutdown (a request, or stop()) or until the job is over (see expected_workers);
  // writes the final checkpoint. Call from one thread.
  void run();
  // From any thread: run() returns soon after.
  void stop();
  // A snapshot (thread-safe).
  ServerStats stats() const;
  // The values of vector "w" (thread-safe snapshot; for tests and the final checkpoint).
  std::vector<float> values() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The staleness histogram's buckets (0..kStalenessBuckets-1, the last one open-ended).
constexpr int kStalenessBuckets = 64;

}  // namespace dtrain::ps
