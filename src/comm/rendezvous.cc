#include "dtrain/comm/rendezvous.h"

#include <gloo/config.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <random>
#include <thread>

#include "dtrain/comm/group.h"
#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"
#include "group_internal.h"
#include "session.h"

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
std::optional<std::vector<char>> PrefixedStore::try_get(const std::string& key) {
  return base_.try_get(prefix_ + "/" + key);
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
                                    {"RANK", "WORLD_SIZE"},  // torchrun's: see below
                                    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                    {"PMI_RANK", "PMI_SIZE"},
                                    {"SLURM_PROCID", "SLURM_NTASKS"}};
  // RANK/WORLD_SIZE are generic names: they count only in a torchrun worker (which also has
  // LOCAL_RANK and TORCHELASTIC_RUN_ID), and a half-set pair there is not an error.
  const bool torchrun = std::getenv("TORCHELASTIC_RUN_ID") != nullptr &&
                        std::getenv("LOCAL_RANK") != nullptr;
  for (const auto& pair : kPairs) {
    const bool generic = std::string_view(pair[0]) == "RANK";
    if (generic && !torchrun) continue;
    auto rank = env_int(pair[0]);
    auto size = env_int(pair[1]);
    if (!rank && !size) continue;
    if (!rank || !size) {
      if (generic) continue;
      throw InvalidArgument(detail::concat("environment has ", rank ? pair[0] : pair[1],
                                           " but not ", rank ? pair[1] : pair[0]));
    }
    return LaunchEnv{*rank, *size, detail::concat(pair[0], "/", pair[1])};
  }
  return std::nullopt;
}

std::string detect_run_id() {
  for (const char* name :
       {"DTRAIN_RUN_ID", "SLURM_JOB_ID", "OMPI_MCA_ess_base_jobid", "TORCHELASTIC_RUN_ID"}) {
    const char* v = std::getenv(name);
    // torchrun's run id is the literal "none" unless --rdzv_id is given: not a job's id.
    if (v != nullptr && *v != '\0' && std::string_view(v) != "none") return v;
  }
  return "dtrain";
}

std::string detect_job_nonce() {
  const char* v = std::getenv("DTRAIN_JOB_NONCE");
  return v != nullptr ? std::string(v) : std::string();
}

BuildInfo build_info() {
  BuildInfo b;
#if defined(__clang__)
  const char* compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  const char* compiler = "g++ " __VERSION__;
#else
  const char* compiler = "unknown compiler";
#endif
  b.text =
      detail::concat("dtrain ", kVersion, ", ", compiler, ", C++", __cplusplus, ", gloo ",
                     GLOO_VERSION, ", ", sizeof(void*) * 8, "-bit ",
                     std::endian::native == std::endian::little ? "little-endian" : "big-endian",
                     ", long ", sizeof(long), ", frame ", sizeof(internal::FrameHeader),
                     ", control ", sizeof(internal::ControlMsg));
  b.id = Fnv1a().str(b.text).digest();
  return b;
}

}  // namespace dtrain::comm

// ---------------------------------------------------------------------------------------------
// The session protocol (see rendezvous.h).

namespace dtrain::comm::internal {
namespace {

using Record = std::map<std::string, std::string>;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// Far above any record dtrain writes (a roster of 10^5 ranks), far below harm.
constexpr size_t kMaxRecordBytes = size_t{16} << 20;
constexpr const char* kHint =
    "Start every rank of a job with the same --rendezvous, --run-id and world size, and give each "
    "job its own --run-id (or --rendezvous)";

std::vector<char> format_record(const Record& record) {
  std::string out;
  for (const auto& [key, value] : record) {
    std::string v = value;
    std::replace(v.begin(), v.end(), '\n', ' ');
    out += key + "=" + v + "\n";
  }
  return std::vector<char>(out.begin(), out.end());
}

std::optional<Record> read_record(Store& store, const std::string& key) {
  auto bytes = store.try_get(key);
  if (!bytes) return std::nullopt;
  return parse_record(std::string_view(bytes->data(), bytes->size()));
}

std::string field(const Record& r, const std::string& key) {
  auto it = r.find(key);
  return it == r.end() ? std::string() : it->second;
}

long long number(const Record& r, const std::string& key, long long fallback) {
  std::string v = field(r, key);
  long long x = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  return ec == std::errc() && ptr == v.data() + v.size() && !v.empty() ? x : fallback;
}

std::string random_hex() {
  std::random_device device;
  uint64_t v = (uint64_t(device()) << 32) ^ device();
  v ^= Fnv1a().value(::getpid()).value(SteadyClock::now().time_since_epoch().count()).digest();
  char out[17];
  std::snprintf(out, sizeof(out), "%016llx", static_cast<unsigned long long>(v));
  return out;
}

long long wall_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string seconds(long long ms) {
  char out[32];
  std::snprintf(out, sizeof(out), "%.1f s", ms / 1000.0);
  return out;
}

Record join_record(const Member& m) {
  return {{"rank", std::to_string(m.rank)},
          {"size", std::to_string(m.size)},
          {"host", m.host},
          {"pid", std::to_string(m.pid)},
          {"token", m.token},
          {"build", m.build},
          {"job", m.job}};
}

// a - b, saturated: both may come from a record in the store.
long long minus(long long a, long long b) {
  long long out;
  if (!__builtin_sub_overflow(a, b, &out)) return out;
  return b < 0 ? std::numeric_limits<long long>::max() : std::numeric_limits<long long>::min();
}

}  // namespace

// Records in the store are bytes another process wrote (or anything else that shares the store):
// every number is range-checked before it becomes an int.
std::optional<Member> member_of(const Record& r) {
  constexpr long long kMaxInt = std::numeric_limits<int>::max();
  const long long rank = number(r, "rank", -1);
  const long long size = number(r, "size", 0);
  if (rank < 0 || rank > kMaxInt || size < 1 || size > kMaxInt) return std::nullopt;
  Member m;
  m.rank = static_cast<int>(rank);
  m.size = static_cast<int>(size);
  m.host = field(r, "host");
  m.pid = number(r, "pid", 0);
  m.token = field(r, "token");
  m.build = field(r, "build");
  m.job = field(r, "job");
  if (m.token.empty()) return std::nullopt;
  return m;
}

// "rank 0 (host h, pid p) opened <what> 3.2 s ago (world size 2; expired 1.0 s ago)".
std::string describe_session(const Record& session, const std::string& what) {
  Member opener;
  opener.host = field(session, "host");
  opener.pid = number(session, "pid", 0);
  const long long now = wall_ms();
  const long long age = minus(now, number(session, "created_ms", now));
  const long long expired = minus(age, number(session, "timeout_ms", age));
  return detail::concat("rank 0 (", opener.who(), ") opened ", what, " ", seconds(age),
                        " ago (world size ", field(session, "size"),
                        expired > 0 ? detail::concat("; expired ", seconds(expired), " ago") : "",
                        ")");
}

int roster_culprit(const Record& roster, int size) {
  const long long culprit = number(roster, "culprit", -1);
  return culprit >= 0 && culprit < size ? static_cast<int>(culprit) : -1;
}

namespace {

// Rank 0: a session that another process has replaced is not ours any more.
void check_still_ours(Store& store, const MeetOptions& o, const std::string& id) {
  auto session = read_record(store, o.space + "/session");
  if (!session || field(*session, "id") == id) return;
  Member other;
  other.host = field(*session, "host");
  other.pid = number(*session, "pid", 0);
  throw GroupError<InvalidArgument>(
      detail::concat(o.where, ": another process (", other.who(), ", job nonce '",
                     field(*session, "job"),
                     "') opened this rendezvous as rank 0 too, replacing this rank 0's session: "
                     "another job shares this rendezvous and run id. ",
                     kHint),
      o.rank, o.rank, false);
}

Meeting lead(Store& store, const MeetOptions& o, const Member& me) {
  const std::string id = random_hex();
  const Meeting meeting{o.space + "/" + id, {}};
  store.set(o.space + "/session",
            format_record({{"id", id},
                           {"size", std::to_string(o.size)},
                           {"build", o.build},
                           {"job", o.job},
                           {"host", me.host},
                           {"pid", std::to_string(me.pid)},
                           {"created_ms", std::to_string(wall_ms())},
                           {"timeout_ms", std::to_string(o.timeout.count())}}));
  store.set(join_key(meeting, 0), format_record(join_record(me)));

  std::vector<int> missing;
  for (int r = 1; r < o.size; ++r) missing.push_back(r);
  auto pause = milliseconds(1);
  auto next_check = SteadyClock::now();
  while (true) {
    std::erase_if(missing, [&](int r) { return store.check({join_key(meeting, r)}); });
    if (missing.empty()) break;
    if (SteadyClock::now() >= next_check) {
      check_still_ours(store, o, id);
      next_check = SteadyClock::now() + milliseconds(100);
    }
    if (SteadyClock::now() >= o.deadline) {
      throw GroupError<TimeoutError>(
          detail::concat(o.where, ": rank(s) ", rank_list(missing), " did not join within ",
                         o.timeout.count(), " ms (world size ", o.size, "). ", kHint),
          o.rank, missing.size() == 1 ? missing[0] : -1, false);
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, milliseconds(50));
  }
  check_still_ours(store, o, id);

  // Everyone is here: do they belong together? The first mismatch fails them all.
  Record roster{{"id", id}, {"size", std::to_string(o.size)}};
  std::string error;
  int culprit = -1;
  roster["token.0"] = me.token;
  roster["who.0"] = me.who();
  for (int r = 1; r < o.size; ++r) {
    auto record = read_record(store, join_key(meeting, r));
    auto m = record ? member_of(*record) : std::nullopt;
    if (!m) {
      if (error.empty()) {
        error = detail::concat("the join record of rank ", r, " is unreadable");
        culprit = r;
      }
      continue;
    }
    roster["token." + std::to_string(r)] = m->token;
    roster["who." + std::to_string(r)] = m->who();
    if (!error.empty()) continue;
    const std::string them = detail::concat("rank ", r, " (", m->who(), ")");
    const std::string us = detail::concat("rank 0 (", me.who(), ")");
    if (m->build != o.build) {
      error =
          detail::concat(them, " runs another dtrain build than ", us, ": '", m->build, "' vs '",
                         o.build, "'. Every rank of a job must run the same dtrain build");
    } else if (m->job != o.job) {
      error = detail::concat(them, " belongs to another job than ", us, " (job nonce '", m->job,
                             "' vs '", o.job,
                             "'): two jobs share this rendezvous and run id; give each job its "
                             "own --run-id (or --rendezvous)");
    } else if (m->size != o.size) {
      error = detail::concat(them, " was started with world size ", m->size, ", ", us, " with ",
                             o.size, "; every rank of a job needs the same world size");
    } else if (m->rank != r) {
      error = detail::concat("the join record of rank ", r, " claims rank ", m->rank);
    }
    if (!error.empty()) culprit = r;
  }
  roster["status"] = error.empty() ? "ok" : "error";
  roster["error"] = error;
  roster["culprit"] = std::to_string(culprit);
  store.set(meeting.prefix + "/roster", format_record(roster));
  if (!error.empty()) {
    throw GroupError<InvalidArgument>(detail::concat(o.where, ": ", error), o.rank, culprit, false);
  }
  Meeting out = meeting;
  for (int r = 0; r < o.size; ++r) out.members.push_back(field(roster, "who." + std::to_string(r)));
  return out;
}

Meeting follow(Store& store, const MeetOptions& o, const Member& me) {
  const std::string my = std::to_string(o.rank);
  Meeting meeting;
  Record session;                      // the session this rank joined
  std::optional<Record> other_roster;  // its roster, if it admitted someone else as this rank
  auto pause = milliseconds(1);
  while (true) {
    auto latest = read_record(store, o.space + "/session");
    if (latest && !field(*latest, "id").empty() && field(*latest, "id") != field(session, "id")) {
      session = *latest;
      meeting = Meeting{o.space + "/" + field(session, "id"), {}};
      other_roster.reset();
      store.set(join_key(meeting, o.rank), format_record(join_record(me)));
      pause = milliseconds(1);
    }
    if (!meeting.prefix.empty()) {
      if (auto roster = read_record(store, meeting.prefix + "/roster")) {
        if (field(*roster, "token." + my) == me.token) {
          const int culprit = roster_culprit(*roster, o.size);
          if (field(*roster, "status") != "ok") {
            throw GroupError<InvalidArgument>(
                detail::concat(o.where, ": ", field(*roster, "error"), " (found by rank 0)"),
                o.rank, culprit, true);
          }
          for (int r = 0; r < o.size; ++r) {
            meeting.members.push_back(field(*roster, "who." + std::to_string(r)));
          }
          return meeting;
        }
        other_roster = roster;
      }
    }
    if (SteadyClock::now() >= o.deadline) break;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, milliseconds(50));
  }

  // Out of time: say what the store held instead of this job's rank 0.
  std::string found;
  int culprit = 0;
  if (meeting.prefix.empty()) {
    found = "The store holds no session opened by a rank 0.";
  } else if (other_roster) {
    found = detail::concat(
        "The store holds only a session of an earlier job, or of another job with this run id: ",
        describe_session(session, "it"), " and closed it without this process (",
        field(*other_roster, "status") != "ok"
            ? "it failed: " + field(*other_roster, "error")
            : detail::concat("it admitted another process as rank ", o.rank, ": ",
                             field(*other_roster, "who." + my)),
        ").");
  } else {
    std::vector<int> missing;
    for (int r = 0; r < o.size; ++r) {
      if (!store.check({join_key(meeting, r)})) missing.push_back(r);
    }
    if (!missing.empty()) {
      culprit = missing.size() == 1 ? missing[0] : -1;
      throw GroupError<TimeoutError>(
          detail::concat(o.where, ": rank(s) ", rank_list(missing), " did not join within ",
                         o.timeout.count(), " ms (world size ", o.size, "; ",
                         describe_session(session, "the session"), "). ", kHint),
          o.rank, culprit, false);
    }
    found = detail::concat("The store holds a session that ", describe_session(session, "it"),
                           " and never confirmed though every rank joined: an earlier job's rank "
                           "0, now gone?");
  }
  throw GroupError<TimeoutError>(
      detail::concat(o.where, ": rank 0 of this job did not admit rank ", o.rank, " within ",
                     o.timeout.count(), " ms. ", found, " ", kHint),
      o.rank, culprit, false);
}

}  // namespace

std::string Member::who() const {
  return detail::concat("host ", host.empty() ? "?" : host, ", pid ", pid);
}

std::string join_key(const Meeting& meeting, int rank) {
  return detail::concat(meeting.prefix, "/join/", rank);
}

std::map<std::string, std::string> parse_record(std::string_view text) {
  Record out;
  if (text.size() > kMaxRecordBytes) return out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    size_t eq = line.find('=');
    if (eq != std::string_view::npos && eq > 0) {
      out.emplace(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
    }
    pos = end + 1;
  }
  return out;
}

Meeting meet(Store& store, const MeetOptions& o) {
  Member me;
  me.rank = o.rank;
  me.size = o.size;
  me.host = o.host;
  me.pid = ::getpid();
  me.token = random_hex();
  me.build = o.build;
  me.job = o.job;
  return o.rank == 0 ? lead(store, o, me) : follow(store, o, me);
}

}  // namespace dtrain::comm::internal

namespace dtrain::comm {

std::unique_ptr<Store> make_file_store(const std::string& dir);
std::unique_ptr<Store> make_redis_store(const std::string& host, int port);

std::unique_ptr<Store> open_store(const RendezvousUrl& url) {
  if (url.kind == RendezvousUrl::Kind::kFile) return make_file_store(url.path);
  return make_redis_store(url.host, url.port);
}

}  // namespace dtrain::comm
