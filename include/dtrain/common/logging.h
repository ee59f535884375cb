// Rank-prefixed logging over spdlog. Each process logs as "[rank r/n]"; set once after rendezvous.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace dtrain::log {

// Sets the pattern to include "[rank r/n]" (or "[launcher]" when rank < 0) and the level from
// DTRAIN_LOG_LEVEL (trace, debug, info, warn, error, off; default info).
void init(int rank, int size);

}  // namespace dtrain::log
