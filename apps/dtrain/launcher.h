// Local launch: `dtrain <cmd> --workers N` on one machine starts N copies of itself as ranks
// 0..N-1 (like torchrun --standalone), with a fresh file rendezvous and run id in the environment.
#pragma once

#include <string>
#include <vector>

namespace dtrain::app {

struct LaunchOptions {
  int workers = 1;
  std::string host = "127.0.0.1";
  int grace_seconds = 5;  // after the first failure, SIGTERM the rest, then SIGKILL after this
};

// True when this process is already one rank of a launched job (a launcher set rank variables).
bool running_as_rank();

// Re-executes this program (same arguments) as `workers` ranks and waits for them. Output is
// inherited. Returns 0 if all succeed; otherwise logs which rank failed and how, stops the others
// and returns 1.
int launch_local(const LaunchOptions& options, int argc, char** argv);

}  // namespace dtrain::app
