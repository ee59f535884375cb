#pragma once

#include "dtrain/collective/types.h"

namespace dtrain::collective {

struct BroadcastOptions : CommonOptions {
  using CommonOptions::CommonOptions;
  View data;  // root: the source; others: overwritten
  int root = 0;
};

// Pipelined chain from the root around the ring: each rank forwards a segment as soon as it has
// it, so the time is about (one copy of the data + N segments) over one link.
void broadcast(const BroadcastOptions& options);

struct BarrierOptions : CommonOptions {
  using CommonOptions::CommonOptions;
};

// Dissemination barrier: ceil(log2 N) rounds; in round k rank r signals r + 2^k and waits for
// r - 2^k. No rank leaves before every rank has entered.
void barrier(const BarrierOptions& options);

}  // namespace dtrain::collective
