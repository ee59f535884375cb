// When a shard serves a pull: the consistency models of the parameter server.
//   bsp          a pull waits until every live worker has pushed as often as the puller (tau = 0)
//   async        a pull is served at once (tau = infinity)
//   bounded:T    a worker more than T clocks ahead of the slowest live worker waits on pull
// A worker's clock is the number of pushes it has made. Workers that finished, or that the shard
// has not heard from for its `dead_after`, no longer hold the others back.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace dtrain::ps {

struct Consistency {
  static constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();
  int64_t tau = kUnbounded;

  // "bsp", "async", "bounded:4" (also "bounded:tau=4"); InvalidArgument naming `flag` otherwise.
  static Consistency parse(const std::string& spec, const std::string& flag = "--consistency");
  std::string str() const;
  // Whether a pull by a worker at `clock` may be served when the slowest live worker is at
  // `slowest` (no live worker: always).
  bool may_serve(int64_t clock, int64_t slowest) const {
    return tau == kUnbounded || clock - slowest <= tau;
  }
};

}  // namespace dtrain::ps
