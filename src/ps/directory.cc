// Endpoints in the rendezvous store: "ps/shard/<s>" (and "ps/service/<name>") holds
// "<nonce>\n<endpoint>".
#include "dtrain/ps/directory.h"

#include <thread>

#include "dtrain/common/error.h"

namespace dtrain::ps {
namespace {

std::string key_of(int shard) {
  return "ps/shard/" + std::to_string(shard);
}

void publish(comm::Store& store, const std::string& key, const std::string& nonce,
             const std::string& endpoint) {
  DT_ENFORCE(nonce.find('\n') == std::string::npos, "parameter server: job nonce has a newline");
  const std::string value = nonce + "\n" + endpoint;
  store.set(key, std::vector<char>(value.begin(), value.end()));
}

}  // namespace

void publish_shard(comm::Store& store, const std::string& nonce, int shard,
                   const std::string& endpoint) {
  DT_ENFORCE(shard >= 0, "parameter server: shard index ", shard);
  publish(store, key_of(shard), nonce, endpoint);
}

void publish_service(comm::Store& store, const std::string& nonce, const std::string& name,
                     const std::string& endpoint) {
  publish(store, "ps/service/" + name, nonce, endpoint);
}

std::string find_service(comm::Store& store, const std::string& nonce, const std::string& name,
                         std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string foreign;
  while (true) {
    if (const auto value = store.try_get("ps/service/" + name)) {
      const std::string text(value->begin(), value->end());
      const size_t nl = text.find('\n');
      if (nl != std::string::npos && text.substr(0, nl) == nonce && nl + 1 < text.size()) {
        return text.substr(nl + 1);
      }
      foreign = text;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  DT_THROW(TimeoutError, "parameter server: the ", name, " did not publish its endpoint within ",
           timeout.count(), " ms (job '", nonce, "')",
           foreign.empty() ? "" : "; found an earlier job's record instead: ", foreign);
}

std::vector<std::string> find_shards(comm::Store& store, const std::string& nonce, int shards,
                                     std::chrono::milliseconds timeout) {
  DT_ENFORCE(shards >= 1, "parameter server: ", shards, " shards (need at least 1)");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<std::string> found(static_cast<size_t>(shards));
  std::vector<std::string> foreign(static_cast<size_t>(shards));  // another job's record
  while (true) {
    bool all = true;
    for (int s = 0; s < shards; ++s) {
      auto& ep = found[static_cast<size_t>(s)];
      if (!ep.empty()) continue;
      const auto value = store.try_get(key_of(s));
      if (value) {
        const std::string text(value->begin(), value->end());
        const size_t nl = text.find('\n');
        if (nl != std::string::npos && text.substr(0, nl) == nonce && nl + 1 < text.size()) {
          ep = text.substr(nl + 1);
          continue;
        }
        foreign[static_cast<size_t>(s)] = text;
      }
      all = false;
    }
    if (all) return found;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string missing, stale;
  for (int s = 0; s < shards; ++s) {
    if (!found[static_cast<size_t>(s)].empty()) continue;
    missing += (missing.empty() ? "" : ", ") + std::to_string(s);
    const auto& f = foreign[static_cast<size_t>(s)];
    if (!f.empty()) {
      const size_t nl = f.find('\n');
      stale += detail::concat(stale.empty() ? "" : "; ", "shard ", s, ": ",
                              nl == std::string::npos ? f : f.substr(nl + 1), " of job '",
                              nl == std::string::npos ? "?" : f.substr(0, nl), "'");
    }
  }
  DT_THROW(TimeoutError, "parameter server: shards ", missing, " of ", shards,
           " did not publish their endpoints within ", timeout.count(), " ms (job '", nonce, "')",
           stale.empty() ? "" : "; found an earlier job's endpoints instead: ", stale);
}

}  // namespace dtrain::ps
