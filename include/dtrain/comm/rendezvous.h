// Rendezvous: where ranks meet (a key-value store named by a URL) and who they are (rank and world
// size from flags or a launcher's environment variables).
#pragma once

#include <gloo/rendezvous/store.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dtrain::comm {

// A parsed rendezvous URL: file:///abs/dir or redis://host[:port].
struct RendezvousUrl {
  enum class Kind { kFile, kRedis };
  Kind kind = Kind::kFile;
  std::string path;  // kFile: directory
  std::string host;  // kRedis
  int port = 6379;   // kRedis

  // Throws InvalidArgument naming the URL and what is wrong with it.
  static RendezvousUrl parse(const std::string& url);
  std::string str() const;
};

// A store dtrain can also clean up after itself: keys of a finished rendezvous are removed so a
// re-used directory or Redis database never sees stale addresses. `set` overwrites atomically.
class Store : public gloo::rendezvous::Store {
 public:
  // True if every key is present now (no waiting).
  virtual bool check(const std::vector<std::string>& keys) = 0;
  virtual void remove(const std::vector<std::string>& keys) = 0;
  // Gloo's interface: waits, throwing TimeoutError naming the missing keys.
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;
};

// Opens the store a URL names. Redis: connects now and throws IoError naming host:port if it
// cannot.
std::unique_ptr<Store> open_store(const RendezvousUrl& url);

// Keys under "prefix/" of another store (Gloo's PrefixStore, but with check/remove).
class PrefixedStore : public Store {
 public:
  PrefixedStore(std::string prefix, Store& base) : prefix_(std::move(prefix)), base_(base) {}
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  bool check(const std::vector<std::string>& keys) override;
  void remove(const std::vector<std::string>& keys) override;

 private:
  std::vector<std::string> join(const std::vector<std::string>& keys) const;
  std::string prefix_;
  Store& base_;
};

// Rank and size from the environment: DTRAIN_RANK/DTRAIN_WORLD_SIZE, else
// OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE, SLURM_PROCID/SLURM_NTASKS. Returns nothing if none
// is set; throws InvalidArgument naming the variable if one is set but malformed or only half of a
// pair is set.
struct LaunchEnv {
  int rank = 0;
  int size = 1;
  std::string source;  // e.g. "DTRAIN_RANK/DTRAIN_WORLD_SIZE"
};
std::optional<LaunchEnv> detect_launch_env();

// A run id shared by all ranks of one job: DTRAIN_RUN_ID, else the launcher's job id (SLURM_JOB_ID,
// OMPI_MCA_ess_base_jobid), else "dtrain".
std::string detect_run_id();

}  // namespace dtrain::comm
