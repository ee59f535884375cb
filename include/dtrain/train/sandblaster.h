// Sandblaster L-BFGS (DistBelief): a batch optimizer whose coordinator never holds the parameters
// and whose batches finish at the pace of the fast replicas.
//
// A job of W replicas and S servers (`dtrain train --algorithm sandblaster --workers W --servers
// S`) has ranks 0..W-1 as replicas and W..W+S-1 as parameter-server shards (ps/server.h); the
// coordinator runs in rank W's process, on its own thread, beside shard 0. Nobody joins a
// fixed-membership group: a replica finds the shards and the coordinator in the job's rendezvous
// store and talks to them over ZeroMQ, so a replica may die (or a new one join) mid-batch.
//
// The coordinator runs L-BFGS (train/sandblaster_lbfgs.h) on named vectors held by the shards:
// parameters "w", gradient "g", direction, history pairs; it sends dot/axpy/scale/copy commands
// and receives scalars. Each objective evaluation is one batch: the training set (or
// --train-subset) cut into --portions portions (train/sandblaster_portions.h). A replica asks for
// work, fetches "w" once per batch, computes the summed loss and gradient of its portion, writes
// the gradient to its own shard vector "pg<replica>" and reports the portion done. The first
// report of a portion counts: the coordinator has the shards add that replica's vector into "g"
// (axpy) before the replica may compute again; a later report of the same portion (a backup
// copy) is dropped. Near a batch's end idle replicas get copies of outstanding portions (unless
// --no-backup), so a slow or dead replica's portion is finished by another. A replica the shards
// count dead (no heartbeat for half the timeout) gives its portions back.
//
// The objective: mean cross-entropy over the batch plus --l2 / 2 * |w|^2 (every parameter).
// --epochs bounds the objective evaluations (each one pass over the batch). The coordinator
// writes the run directory: a "batch" record per evaluation (its time, portions counted per
// replica, backups, duplicates), a "step" record per L-BFGS iteration (objective, gradient
// norm, step length), and a final record with the test accuracy of the shards' parameters and
// the objective recomputed in float64. --slow-rank R:FACTOR makes replica R sleep (FACTOR - 1)
// times its compute time after each portion, a testing aid that leaves the core to the others.
#pragma once

#include <string>
#include <utility>

#include "dtrain/train/downpour.h"
#include "dtrain/train/trainer.h"

namespace dtrain::train {

bool is_sandblaster(const TrainOptions& options);

// --slow-rank R:FACTOR as {R, FACTOR} ({-1, 1} for ""); InvalidArgument naming the flag.
std::pair<int, double> parse_slow_rank(const std::string& spec);

// Runs this rank's role (a replica, or a shard; rank W also the coordinator). Rank W returns the
// run's result; a replica returns its own counts.
TrainResult train_sandblaster(const TrainOptions& options, const DownpourJob& job);

}  // namespace dtrain::train
