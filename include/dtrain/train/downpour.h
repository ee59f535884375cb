// Downpour SGD (DistBelief): replicas train asynchronously against a sharded parameter server.
//
// A job of W workers and S servers has ranks 0..W-1 as replicas and W..W+S-1 as the shards of
// ps/server.h. No rank joins a fixed-membership group: a replica finds the shards in the job's
// rendezvous store (ps/directory.h) and talks to them over ZeroMQ, so a replica may die and a
// replacement may join while the others train.
//
// A replica, each step: every n_fetch steps it takes the parameters it fetched in the background
// (the fetch for the next period starts as soon as the current one is taken), computes the
// gradient of its mini-batch, adds it to its accumulator, and every n_push steps hands the mean of
// the accumulated gradients to its push thread and carries on. Its local model changes only by
// fetches: the shards apply the update rule (Adagrad by default, DistBelief's
// eta_i = gamma / sqrt(sum g_i^2)). `embed` pulls and pushes only the embedding rows its batches
// touch (and the dense layers whole). Replicas other than 0 start once replica 0 has pushed
// --warm-start times (DistBelief's warm start). A replica's data position and its clock are kept
// apart: it continues its shard's schedule after the steps its id already pushed (the shards count
// them; 0 for a fresh replica), while its clock starts at the slowest live replica's (a joiner
// does not hold the others back under bounded delay).
//
// With --model-parallel K a replica is K consecutive ranks, each training its partition of the
// mlp (torch/partitioned_mlp.h) in a group of the replica's own, met in the job's store; each
// partition is a worker to the shards and fetches and pushes only its own keys (push_ranges:
// one request per shard). A partition's failure ends its replica (the group tells its partners);
// a replacement replica is all K ranks started again, and continues after the steps every one of
// its partitions had pushed.
//
// Replica 0 writes the run directory: step, eval and epoch records of its own view, and a final
// record with the shards' staleness histogram, update counts and which replicas were lost. At the
// end it waits until every replica is done (or dead), evaluates the servers' final parameters,
// and shuts the shards down; they checkpoint themselves (shard-<s>.ps in the run directory) every
// --checkpoint-every steps' worth of updates and at the end. --resume DIR restarts the shards from
// those files and every replica after the steps it had pushed. Each shard's file is its own
// snapshot: together they are not one consistent cut of the job (as in any asynchronous parameter
// server, updates in flight at a shard's snapshot may be in another shard's and not in its own).
#pragma once

#include <chrono>
#include <string>

#include "dtrain/train/trainer.h"

namespace dtrain::train {

// Where this process stands in a Downpour job (from the launcher's environment).
struct DownpourJob {
  int rank = 0;
  int world = 1;                // workers + servers
  std::string rendezvous;       // file:///dir or redis://host:port
  std::string run_id;
  std::string nonce;            // the job nonce (an earlier job's shards are never used)
  std::string host = "127.0.0.1";
  std::chrono::milliseconds timeout{60000};
};

bool is_downpour(const TrainOptions& options);

// Runs this rank's role. A replica returns its view of the run (replica 0: the final evaluation
// of the servers' parameters); a server returns after the job ended (steps = its updates).
TrainResult train_downpour(const TrainOptions& options, const DownpourJob& job);

}  // namespace dtrain::train
