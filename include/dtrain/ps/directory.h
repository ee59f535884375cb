// Where workers find the shards: each server writes its endpoint to the job's rendezvous store
// under "ps/shard/<s>" (the value carries the job nonce, so an earlier job's endpoints left in the
// same store are recognised as such, never connected to), and a worker waits for all of them.
// A worker that joins a running job reads the same keys.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "dtrain/comm/rendezvous.h"

namespace dtrain::ps {

void publish_shard(comm::Store& store, const std::string& nonce, int shard,
                   const std::string& endpoint);
// Waits until every shard 0..shards-1 has published under `nonce`; TimeoutError naming the
// missing shards (and any endpoint of another job found in their place) after `timeout`.
std::vector<std::string> find_shards(comm::Store& store, const std::string& nonce, int shards,
                                     std::chrono::milliseconds timeout);

// Another service of the job (e.g. Sandblaster's coordinator) under "ps/service/<name>", with
// the same nonce check; find_service waits up to `timeout` (TimeoutError naming the service).
void publish_service(comm::Store& store, const std::string& nonce, const std::string& name,
                     const std::string& endpoint);
std::string find_service(comm::Store& store, const std::string& nonce, const std::string& name,
                         std::chrono::milliseconds timeout);

}  // namespace dtrain::ps
