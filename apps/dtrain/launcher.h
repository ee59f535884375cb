// Local launch: `dtrain <cmd> --workers N` on one machine starts N copies of itself as ranks
// 0..N-1 (like torchrun --standalone), with a fresh file rendezvous, run id and job nonce in the
// environment, and names the rank that failed when the job fails.
#pragma once

#include <exception>
#include <string>
#include <vector>

namespace dtrain::app {

// Exit status of a dtrain process that failed: kExitFailed when its own error ended it (or its
// peers blamed it), kExitPeerFailed when it stopped because another rank failed. The launcher
// tells them apart to name the rank that failed, not the ranks that noticed.
constexpr int kExitFailed = 1;
constexpr int kExitPeerFailed = 3;

struct LaunchOptions {
  int workers = 1;
  std::string host = "127.0.0.1";
  // After the first failure the others get this long to end on their own (they learn of it from
  // the group and name the failed rank); then SIGTERM, and SIGKILL after as long again.
  int grace_seconds = 5;
  // Downpour: ranks 0..replicas-1 are replicas whose end does not end the job (the others keep
  // training; the launcher prints how to start a replacement into the job), ranks from
  // `replicas` on are parameter servers. 0: every rank's failure fails the job.
  int replicas = 0;
  // Downpour with --model-parallel K: a replica is K consecutive ranks (its partitions), lost and
  // replaced as a unit.
  int ranks_per_replica = 1;
  // Downpour: replica 0 writes the run's records (a warning says so when it is lost).
  bool records_on_replica0 = false;
};

// True when this process is already one rank of a launched job (a launcher set rank variables).
bool running_as_rank();

// Re-executes this program (same arguments) as `workers` ranks and waits for them. Output is
// inherited. Returns 0 if all succeed; otherwise stops the others, logs "job failed: <who and
// why>" naming the rank that failed first on its own (its error, a signal that killed it, a stop
// it never continued from) rather than ranks that stopped because of it, and returns 1.
int launch_local(const LaunchOptions& options, int argc, char** argv);

// The last word of a dtrain process that failed with `e`: prints it (naming the rank when it is
// one), leaves a note for the launcher that started it ($DTRAIN_STATUS_DIR), and returns the exit
// status (kExitFailed or kExitPeerFailed). `expected`: a dtrain::Error rather than a surprise.
int report_failure(const std::exception& e, bool expected);

}  // namespace dtrain::app
