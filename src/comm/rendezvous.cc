#include "dtrain/comm/rendezvous.h"

#include <charconv>
#include <cstdlib>
#include <thread>

#include "dtrain/common/error.h"

namespace dtrain::comm {

RendezvousUrl RendezvousUrl::parse(const std::string& url) {
  RendezvousUrl out;
  auto fail = [&](const std::string& why) -> RendezvousUrl {
    throw InvalidArgument(
        detail::concat("--rendezvous '", url, "': ", why,
                       " (expected file:///absolute/dir or redis://host[:port])"));
  };
  const std::string file_scheme = "file://";
  const std::string redis_scheme = "redis://";
  if (url.rfind(file_scheme, 0) == 0) {
    out.kind = Kind::kFile;
    out.path = url.substr(file_scheme.size());
    if (out.path.empty() || out.path[0] != '/')
      return fail("the directory must be an absolute path");
    while (out.path.size() > 1 && out.path.back() == '/') out.path.pop_back();
    return out;
  }
  if (url.rfind(redis_scheme, 0) == 0) {
    out.kind = Kind::kRedis;
    std::string rest = url.substr(redis_scheme.size());
    while (!rest.empty() && rest.back() == '/') rest.pop_back();
    auto colon = rest.rfind(':');
    out.host = rest.substr(0, colon);
    if (colon != std::string::npos) {
      std::string port = rest.substr(colon + 1);
      int p = 0;
      auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
      if (ec != std::errc() || ptr != port.data() + port.size() || p <= 0 || p > 65535) {
        return fail("port '" + port + "' is not a number in 1..65535");
      }
      out.port = p;
    }
    if (out.host.empty()) return fail("missing host");
    return out;
  }
  return fail("unknown scheme");
}

std::string RendezvousUrl::str() const {
  if (kind == Kind::kFile) return "file://" + path;
  return detail::concat("redis://", host, ":", port);
}

void Store::wait(const std::vector<std::string>& keys) {
  wait(keys, kDefaultTimeout);
}

void Store::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  while (!check(keys)) {
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string missing;
      for (const auto& k : keys) {
        if (!check({k})) missing += (missing.empty() ? "" : ", ") + k;
      }
      throw TimeoutError(detail::concat("rendezvous: waited ", timeout.count(),
                                        " ms for key(s) that never appeared: ", missing));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

std::vector<std::string> PrefixedStore::join(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(prefix_ + "/" + k);
  return out;
}

void PrefixedStore::set(const std::string& key, const std::vector<char>& data) {
  base_.set(prefix_ + "/" + key, data);
}
std::vector<char> PrefixedStore::get(const std::string& key) {
  return base_.get(prefix_ + "/" + key);
}
bool PrefixedStore::check(const std::vector<std::string>& keys) {
  return base_.check(join(keys));
}
void PrefixedStore::remove(const std::vector<std::string>& keys) {
  base_.remove(join(keys));
}

namespace {

std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  int x = 0;
  std::string s(v);
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
  if (ec != std::errc() || ptr != s.data() + s.size()) {
    throw InvalidArgument(
        detail::concat("environment variable ", name, "='", s, "' is not an integer"));
  }
  return x;
}

}  // namespace

std::optional<LaunchEnv> detect_launch_env() {
  static const char* kPairs[][2] = {{"DTRAIN_RANK", "DTRAIN_WORLD_SIZE"},
                                    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                    {"PMI_RANK", "PMI_SIZE"},
                                    {"SLURM_PROCID", "SLURM_NTASKS"}};
  for (const auto& pair : kPairs) {
    auto rank = env_int(pair[0]);
    auto size = env_int(pair[1]);
    if (!rank && !size) continue;
    if (!rank || !size) {
      throw InvalidArgument(detail::concat("environment has ", rank ? pair[0] : pair[1],
                                           " but not ", rank ? pair[1] : pair[0]));
    }
    return LaunchEnv{*rank, *size, detail::concat(pair[0], "/", pair[1])};
  }
  return std::nullopt;
}

std::string detect_run_id() {
  for (const char* name : {"DTRAIN_RUN_ID", "SLURM_JOB_ID", "OMPI_MCA_ess_base_jobid"}) {
    const char* v = std::getenv(name);
    if (v != nullptr && *v != '\0') return v;
  }
  return "dtrain";
}

}  // namespace dtrain::comm

namespace dtrain::comm {

std::unique_ptr<Store> make_file_store(const std::string& dir);
std::unique_ptr<Store> make_redis_store(const std::string& host, int port);

std::unique_ptr<Store> open_store(const RendezvousUrl& url) {
  if (url.kind == RendezvousUrl::Kind::kFile) return make_file_store(url.path);
  return make_redis_store(url.host, url.port);
}

}  // namespace dtrain::comm
