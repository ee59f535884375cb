// Rendezvous: where ranks meet (a key-value store named by a URL) and who they are (rank and world
// size from flags or a launcher's environment variables).
//
// A rendezvous works as follows. Keys live under "<run id>/g<generation>/". Rank 0 opens a session:
// it writes a fresh random session id, with its world size, build, job nonce, host, pid and the
// time, to the key "session", overwriting whatever an earlier job left there (a rename or a Redis
// SET: nothing is ever deleted that a job starting at the same moment may be writing). Every other
// rank follows the latest session it reads and writes a join record (rank, world size, build, job
// nonce, host, pid and a random token) under "<session id>/join/<rank>". Once all have joined,
// rank 0 checks that they belong together (one build, one job, one world size) and writes the
// roster: the token it admitted for each rank, or the mismatch that fails them all. A rank goes on
// only when the roster of its session holds its own token, so the keys of an earlier job (a dead
// rank 0's session, its joins and addresses) can delay it but never become its peers: stale keys
// are recognised, not guessed at. Gloo's addresses are exchanged under the session's own prefix.
// The whole rendezvous, Gloo's connections included, ends within the group's timeout; its error
// names the missing ranks and what the store held instead (an earlier job's session, another
// process admitted as this rank), and what to do.
#pragma once

#include <gloo/rendezvous/store.h>

#include <chrono>
#include <cstdint>
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

// A store dtrain can also clean up after itself: the joins and addresses of a finished rendezvous
// are removed (the small session and roster records stay: they are recognised as an earlier job's
// by their session id). `set` overwrites atomically.
class Store : public gloo::rendezvous::Store {
 public:
  // True if every key is present now (no waiting).
  virtual bool check(const std::vector<std::string>& keys) = 0;
  // The key's value if it is present now, else nothing (no waiting; `get` waits, as Gloo wants).
  virtual std::optional<std::vector<char>> try_get(const std::string& key) = 0;
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
  std::optional<std::vector<char>> try_get(const std::string& key) override;
  bool check(const std::vector<std::string>& keys) override;
  void remove(const std::vector<std::string>& keys) override;

 private:
  std::vector<std::string> join(const std::vector<std::string>& keys) const;
  std::string prefix_;
  Store& base_;
};

// Rank and size from the environment: DTRAIN_RANK/DTRAIN_WORLD_SIZE, else torchrun's
// RANK/WORLD_SIZE (only in a torchrun worker: with LOCAL_RANK and TORCHELASTIC_RUN_ID set), else
// OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE, SLURM_PROCID/SLURM_NTASKS. Returns nothing if none
// is set; throws InvalidArgument naming the variable if one is set but malformed or only half of a
// pair is set.
struct LaunchEnv {
  int rank = 0;
  int size = 1;
  std::string source;  // e.g. "DTRAIN_RANK/DTRAIN_WORLD_SIZE"
};
std::optional<LaunchEnv> detect_launch_env();

// A run id shared by all ranks of one job: DTRAIN_RUN_ID, else the launcher's job id
// (SLURM_JOB_ID, OMPI_MCA_ess_base_jobid, torchrun's TORCHELASTIC_RUN_ID unless "none"), else "dtrain". Ranks started by hand on several hosts are one job
// through their run id: two such jobs in one store need different run ids.
std::string detect_run_id();

// The nonce `dtrain --workers N` gives every rank it starts (DTRAIN_JOB_NONCE), else "". Ranks of
// different nonces never form a group, whatever their rendezvous and run id.
std::string detect_job_nonce();

// dtrain's version (`dtrain --version`).
inline constexpr const char* kVersion = "0.1.0";

// What ranks must share to work together: dtrain's version, the compiler, the C++ standard, the
// Gloo version, and the sizes the wire formats depend on. `id` is the Fnv1a hash of `text`.
struct BuildInfo {
  uint64_t id = 0;
  std::string text;  // e.g. "dtrain 0.1.0, g++ 12.2.0, C++202002, gloo 500, 64-bit little-endian"
};
BuildInfo build_info();

}  // namespace dtrain::comm
