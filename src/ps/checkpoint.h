// A shard's checkpoint file: an envelope (common/envelope.h, kind "ps shard") around
//   u32 magic "DPSC", u32 version, i32 shard, i32 shards, u64 length, u64 begin, u64 end,
//   u8 rule kind, f64 lr, eps, beta1, beta2, initial_accumulator, u64 updates,
//   vector w, vector rule state, u64 n + n x (string name, vector values), u64 n + n x
//   (i32 worker, i64 clock)
// (vectors as common/bytes.h writes them: u64 count, then the floats).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dtrain/ps/server.h"

namespace dtrain::ps::internal {

struct ShardState {
  std::map<std::string, std::vector<float>> vectors;  // "w" and the named vectors
  std::vector<float> rule_state;
  uint64_t updates = 0;
  std::map<int, int64_t> clocks;
  std::map<int, int64_t> pushed;  // clock ticks each worker pushed (ServerStats::pushed)
};

// Writes atomically (temp file, fsync, rename); IoError naming the file.
void write_checkpoint(const ServerOptions& o, const Range& range, const ShardState& state);
// InvalidArgument naming the file and what is wrong or differs from `o`.
ShardState read_checkpoint(const ServerOptions& o, const Range& range);

}  // namespace dtrain::ps::internal
