// Downpour SGD: a parameter-server rank's role (see dtrain/train/downpour.h). The shard serves
// its key range of the model's flat vector, applies the update rule, and checkpoints itself.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "dtrain/ps/directory.h"
#include "dtrain/ps/server.h"
#include "evaluation.h"
#include "ps_job.h"
#include "run.h"

namespace dtrain::train {
namespace {

std::string shard_file(const std::string& dir, int s) {
  return dir.empty() ? std::string() : dir + "/shard-" + std::to_string(s) + ".ps";
}

ps::UpdateRule server_rule(const TrainOptions& o) {
  return ps::UpdateRule::parse(
      // The shortest text that reads back as the same double (not 6 significant digits).
      o.server_update.empty() ? "adagrad:lr=" + nlohmann::json(o.lr).dump() : o.server_update,
      "--server-update");
}

}  // namespace

TrainResult serve_downpour_shard(const TrainOptions& o, const DownpourJob& job, int workers,
                                 int shard) {
  pin_threads(o.threads);
  const TensorData data = load_data(o);
  auto model = make_model(o, data);
  const Layout layout(*model);
  const std::string dir = !o.out_dir.empty() ? o.out_dir : o.resume;
  if (!dir.empty()) std::filesystem::create_directories(dir);
  ps::ServerOptions so;
  so.index = shard;
  so.shards = o.servers;
  so.length = layout.length;
  so.host = job.host.empty() ? "127.0.0.1" : job.host;
  so.rule = server_rule(o);
  so.consistency = ps::Consistency::parse(o.consistency);
  so.dead_after = dead_after(job);
  so.expected_workers = workers;
  so.checkpoint_path = shard_file(dir, shard);
  // --checkpoint-every counts a replica's steps; a shard counts the update requests of every
  // replica's pushes: one per push of each of the `workers` ranks (push_ranges sends the dense
  // layers and the embedding rows together; under --model-parallel every partition pushes).
  so.checkpoint_every = o.checkpoint_every > 0
                            ? static_cast<uint64_t>(std::max<int64_t>(
                                  1, o.checkpoint_every * workers / std::max(1, o.n_push)))
                            : 0;
  ps::Server server(so, !o.resume.empty());
  Store store(job);
  ps::publish_shard(store.prefixed, job.nonce, shard, server.endpoint());
  spdlog::info("parameter server shard {} of {}: keys [{}, {}) of {}, {} ({}), at {}", shard,
            o.servers, server.range().begin, server.range().end, layout.length, so.rule.str(),
            so.consistency.str(), server.endpoint());
  server.run();
  const ps::ServerStats st = server.stats();
  spdlog::info("parameter server shard {}: {} updates, {} pulls, max staleness {}", shard, st.updates,
            st.pulls, st.max_staleness);
  TrainResult r;
  r.steps = static_cast<int64_t>(st.updates);
  r.bytes_sent = st.bytes_sent;
  r.bytes_received = st.bytes_received;
  return r;
}

}  // namespace dtrain::train
