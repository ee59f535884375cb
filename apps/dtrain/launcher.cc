#include "launcher.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include "dtrain/comm/group.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "rdzv_cleanup.h"

namespace dtrain::app {
namespace {

using SteadyClock = std::chrono::steady_clock;

volatile sig_atomic_t g_interrupted = 0;
void on_signal(int sig) {
  g_interrupted = sig;
}

std::string signal_text(int sig) {
  return detail::concat(sig, " (", strsignal(sig), ")");
}

// What a failed rank left for the launcher (report_failure writes it).
struct Note {
  int code = 0;
  int culprit = -1;
  std::string message;
};

std::string note_path(const std::string& dir, pid_t pid) {
  return detail::concat(dir, "/failure.", pid);
}

std::optional<Note> read_note(const std::string& dir, pid_t pid) {
  std::ifstream in(note_path(dir, pid));
  Note n;
  if (!(in >> n.code >> n.culprit)) return std::nullopt;
  in.get();
  n.message.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  while (!n.message.empty() && n.message.back() == '\n') n.message.pop_back();
  return n;
}

struct Worker {
  pid_t pid = -1;
  bool running = true;   // not reaped yet
  bool stopped = false;  // stopped by a signal and not continued (kept when it is then killed)
  int stop_signal = 0;
  SteadyClock::time_point stopped_at;
  int status = 0;  // wait status once reaped
  SteadyClock::time_point ended_at;
  bool signalled = false;  // the launcher sent it SIGTERM or SIGKILL
};

std::string list(const std::vector<int>& ranks) {
  std::string out;
  for (int r : ranks) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return out;
}

// Who failed, and how: the first rank that failed on its own (a stop it never continued from, a
// signal the launcher did not send, an error of its own), then the ranks that stopped because of
// it. Ranks that only report a failed peer name it through their notes.
std::string blame(const std::vector<Worker>& workers, const std::string& dir) {
  struct Fault {
    SteadyClock::time_point when;
    int rank;
    std::string what;
  };
  std::vector<Fault> faults;
  std::vector<int> followers;
  for (int r = 0; r < static_cast<int>(workers.size()); ++r) {
    const Worker& w = workers[r];
    if (w.stopped) {
      faults.push_back({w.stopped_at, r,
                        detail::concat("rank ", r, " was stopped by signal ",
                                       signal_text(w.stop_signal), " and never continued")});
    } else if (w.running || (WIFSIGNALED(w.status) && w.signalled)) {
      continue;  // still there, or ended by the launcher
    } else if (WIFSIGNALED(w.status)) {
      faults.push_back(
          {w.ended_at, r,
           detail::concat("rank ", r, " was killed by signal ", signal_text(WTERMSIG(w.status)))});
    } else if (WIFEXITED(w.status) && WEXITSTATUS(w.status) == kExitPeerFailed) {
      followers.push_back(r);
    } else if (WIFEXITED(w.status) && WEXITSTATUS(w.status) != 0) {
      auto note = read_note(dir, w.pid);
      faults.push_back(
          {w.ended_at, r,
           note ? detail::concat("rank ", r, " failed: ", note->message)
                : detail::concat("rank ", r, " exited with status ", WEXITSTATUS(w.status))});
    }
  }
  std::sort(faults.begin(), faults.end(),
            [](const Fault& a, const Fault& b) { return a.when < b.when; });
  if (!faults.empty()) {
    std::string out = faults[0].what;
    std::vector<int> others;
    for (size_t i = 1; i < faults.size(); ++i) others.push_back(faults[i].rank);
    if (!others.empty()) out += detail::concat("; rank(s) ", list(others), " failed as well");
    if (!followers.empty()) {
      out += detail::concat("; rank(s) ", list(followers), " stopped because of it");
    }
    return out;
  }
  if (followers.empty()) return "";
  // Only ranks that stopped because of a peer: name the peer they name.
  std::map<int, int> votes;
  std::map<int, std::string> said;
  for (int r : followers) {
    if (auto note = read_note(dir, workers[r].pid)) {
      ++votes[note->culprit];
      said.emplace(note->culprit, note->message);
    }
  }
  int culprit = -1;
  int most = 0;
  for (auto [c, n] : votes) {
    if (c >= 0 && n > most) culprit = c, most = n;
  }
  if (culprit >= 0) {
    return detail::concat("rank ", culprit, " failed, as rank(s) ", list(followers),
                          " report: ", said[culprit]);
  }
  return detail::concat("rank(s) ", list(followers), " stopped because a peer failed",
                        said.empty() ? "" : ": " + said.begin()->second);
}

}  // namespace

bool running_as_rank() {
  return comm::detect_launch_env().has_value();
}

int report_failure(const std::exception& e, bool expected) {
  const auto* failure = dynamic_cast<const comm::GroupFailure*>(&e);
  const int code = failure != nullptr && failure->peer_failed() ? kExitPeerFailed : kExitFailed;
  int rank = failure != nullptr ? failure->rank() : -1;
  if (rank < 0) {
    try {
      if (auto env = comm::detect_launch_env()) rank = env->rank;
    } catch (const std::exception&) {
    }
  }
  const std::string who = rank >= 0 ? detail::concat("rank ", rank, ": ") : "";
  std::fprintf(stderr, "dtrain: %s%s: %s\n", who.c_str(), expected ? "error" : "unexpected error",
               e.what());
  std::fflush(stderr);
  if (const char* dir = std::getenv("DTRAIN_STATUS_DIR"); dir != nullptr && *dir != '\0') {
    std::ofstream note(note_path(dir, ::getpid()));
    note << code << "\n"
         << (failure != nullptr ? failure->culprit() : -1) << "\n"
         << e.what() << "\n";
  }
  return code;
}

int launch_local(const LaunchOptions& options, int argc, char** argv) {
  DT_ENFORCE(options.workers >= 1, "--workers must be >= 1, got ", options.workers);
  std::string tmpl = (std::filesystem::temp_directory_path() / "dtrain-rdzv-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw IoError("cannot create a rendezvous directory under " +
                  std::filesystem::temp_directory_path().string() + ": " + std::strerror(errno));
  }
  // The rendezvous, and the notes failed ranks leave (report_failure).
  const std::string dir = tmpl;
  write_launcher_pid(dir);  // so that the next launch can tell it from a killed launcher's
  remove_stale_rendezvous_dirs(std::filesystem::temp_directory_path(), dir);
  std::random_device random;
  const std::string run_id = detail::concat("local-", ::getpid(), "-", random());
  char nonce[17];
  std::snprintf(nonce, sizeof(nonce), "%08x%08x", random(), random());

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::vector<Worker> workers;
  for (int r = 0; r < options.workers; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) throw IoError(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the launcher
      ::setenv("DTRAIN_RANK", std::to_string(r).c_str(), 1);
      ::setenv("DTRAIN_WORLD_SIZE", std::to_string(options.workers).c_str(), 1);
      ::setenv("DTRAIN_RENDEZVOUS", ("file://" + dir).c_str(), 1);
      ::setenv("DTRAIN_RUN_ID", run_id.c_str(), 1);
      ::setenv("DTRAIN_JOB_NONCE", nonce, 1);
      ::setenv("DTRAIN_STATUS_DIR", dir.c_str(), 1);
      ::setenv("DTRAIN_HOST", options.host.c_str(), 1);
      ::execv("/proc/self/exe", argv);
      std::fprintf(stderr, "dtrain: cannot re-execute itself: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    Worker w;
    w.pid = pid;
    workers.push_back(w);
  }

  const auto grace = std::chrono::seconds(options.grace_seconds);
  std::vector<int> lost;  // Downpour replicas that ended early
  // Downpour: when the last replica ended (the shards end on their own within their dead-worker
  // interval, at most 10 s, after that).
  SteadyClock::time_point replicas_over_at{};
  constexpr auto kServersEndAfterReplicas = std::chrono::seconds(15);
  size_t alive = workers.size();
  bool failed = false;
  bool terminating = false;
  int interrupted = 0;
  SteadyClock::time_point term_at, kill_at;
  auto signal = [](Worker& w, int sig) {
    if (!w.running) return;
    ::kill(w.pid, sig);
    w.signalled = true;
  };
  while (alive > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG | WUNTRACED | WCONTINUED);
    if (pid < 0 && errno == ECHILD) break;
    const auto now = SteadyClock::now();
    if (pid > 0) {
      auto it = std::find_if(workers.begin(), workers.end(),
                             [&](const Worker& w) { return w.pid == pid && w.running; });
      if (it == workers.end()) continue;
      const int rank = static_cast<int>(it - workers.begin());
      Worker& w = *it;
      if (WIFSTOPPED(status)) {
        w.stopped = true;
        w.stop_signal = WSTOPSIG(status);
        w.stopped_at = now;
        spdlog::warn("rank {} was stopped by signal {}", rank, signal_text(w.stop_signal));
        continue;
      }
      if (WIFCONTINUED(status)) {
        w.stopped = false;
        continue;
      }
      w.running = false;
      w.status = status;
      w.ended_at = now;
      --alive;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && rank < options.replicas && !w.signalled && !failed) {
        // A Downpour replica: the others train on; say how to put a replacement in its place.
        lost.push_back(rank);
        auto note = WIFEXITED(status) ? read_note(dir, w.pid) : std::nullopt;
        const std::string what =
            WIFSIGNALED(status) ? detail::concat("was killed by signal ", signal_text(WTERMSIG(status)))
            : note              ? "failed: " + note->message
                                : detail::concat("exited with status ", WEXITSTATUS(status));
        std::string command;
        for (int i = 0; argv[i] != nullptr; ++i) command += std::string(i ? " " : "") + argv[i];
        const int k = std::max(1, options.ranks_per_replica), replica = rank / k;
        const std::string unit =
            k == 1 ? detail::concat("replica ", rank, " (rank ", rank, ") ", what,
                                    "; the job goes on without it")
                   : detail::concat("rank ", rank, " (partition ", rank % k, " of replica ",
                                    replica, ") ", what, "; the job goes on without replica ",
                                    replica, ", whose ranks ", replica * k, "..",
                                    replica * k + k - 1, " stop together (a replica is replaced "
                                    "as a unit: start one such command for each of its ranks)");
        spdlog::warn(
            "{}. To start a replacement into this job: DTRAIN_RANK={} DTRAIN_WORLD_SIZE={} "
            "DTRAIN_RENDEZVOUS=file://{} DTRAIN_RUN_ID={} DTRAIN_JOB_NONCE={} DTRAIN_HOST={} {}",
            unit, rank, options.workers, dir, run_id, nonce, options.host, command);
        continue;
      }
      if (!ok && !failed && !w.signalled) {
        failed = true;
        term_at = now + grace;
        std::string what =
            WIFSIGNALED(status)
                ? detail::concat("was killed by signal ", signal_text(WTERMSIG(status)))
            : WEXITSTATUS(status) == kExitPeerFailed ? std::string("stopped because a peer failed")
                                                     : std::string("failed");
        spdlog::error("rank {} {}; the other ranks have {} s to end", rank, what,
                      options.grace_seconds);
      }
      continue;
    }
    if (g_interrupted && !interrupted) {
      interrupted = g_interrupted;
      failed = true;
      spdlog::error("interrupted by signal {}; stopping all ranks", interrupted);
      for (auto& w : workers) signal(w, w.stopped ? SIGKILL : SIGTERM);
      terminating = true;
      kill_at = now + grace;
    }
    if (options.replicas > 0 && !failed) {
      // Downpour: once the servers are gone the job is over; a replica stopped for good (the
      // servers counted it dead) is ended rather than waited for.
      bool servers_done = true, only_stopped = true, replicas_over = true, finished = false;
      bool server_stopped = false;
      for (int r = 0; r < static_cast<int>(workers.size()); ++r) {
        const Worker& w = workers[r];
        if (r >= options.replicas) {
          servers_done &= !w.running;
          server_stopped |= w.running && w.stopped;
        } else {
          replicas_over &= !w.running;
          finished |= !w.running && WIFEXITED(w.status) && WEXITSTATUS(w.status) == 0;
        }
        only_stopped &= !w.running || w.stopped;
      }
      if (servers_done && only_stopped) {
        for (int r = 0; r < options.replicas; ++r) {
          if (workers[r].running && !workers[r].signalled) {
            lost.push_back(r);
            signal(workers[r], SIGKILL);
          }
        }
      }
      if (replicas_over && !servers_done) {
        if (replicas_over_at == SteadyClock::time_point{}) replicas_over_at = now;
        if (!finished) {
          // No replica finished its training: the job failed (named by blame(): the first
          // fault, e.g. a stopped server the replicas timed out on, or the replicas' own error).
          failed = true;
          term_at = now;
          spdlog::error("no replica finished; stopping the servers");
        } else if (now - replicas_over_at > kServersEndAfterReplicas + grace) {
          // The shards end on their own once every replica is done or dead; one that does not
          // is stopped (a failure when it was stopped by a signal: blame() names it).
          if (server_stopped) {
            failed = true;
            term_at = now;
          } else {
            spdlog::warn("the servers did not end {} s after the last replica; stopping them",
                         std::chrono::duration_cast<std::chrono::seconds>(now - replicas_over_at)
                             .count());
            for (int r = options.replicas; r < static_cast<int>(workers.size()); ++r) {
              signal(workers[r], SIGTERM);
            }
          }
        }
      }
    }
    if (failed) {
      // A stopped rank cannot end by itself: once the job has failed and only stopped ranks are
      // left, end them.
      bool only_stopped = true;
      for (const auto& w : workers) only_stopped &= !w.running || w.stopped;
      if (only_stopped) {
        for (auto& w : workers) {
          if (w.running && !w.signalled) signal(w, SIGKILL);
        }
      }
      if (!terminating && now >= term_at) {
        for (auto& w : workers) signal(w, w.stopped ? SIGKILL : SIGTERM);
        terminating = true;
        kill_at = now + grace;
      }
      if (terminating && now >= kill_at) {
        for (auto& w : workers) signal(w, SIGKILL);
        kill_at = now + grace;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int result = failed ? 1 : 0;
  if (!failed && !lost.empty()) {
    if (options.ranks_per_replica > 1) {
      spdlog::warn("job finished without rank(s) {} (see above)", list(lost));
    } else {
      spdlog::warn("job finished without replica(s) {} (see above)", list(lost));
    }
    if (options.records_on_replica0 &&
        std::any_of(lost.begin(), lost.end(),
                    [&](int r) { return r < std::max(1, options.ranks_per_replica); })) {
      spdlog::warn("replica 0 writes the run's records and evaluates the final model: unless "
                   "a replacement for it finished, metrics.jsonl has no final record; the "
                   "shards' checkpoints (--out) hold the parameters, --resume continues from "
                   "them");
    }
  }
  if (failed) {
    std::string who = blame(workers, dir);
    if (interrupted) {
      who = detail::concat("interrupted by signal ", interrupted, who.empty() ? "" : "; " + who);
    }
    spdlog::error("job failed: {}", who.empty() ? "a rank failed" : who);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return result;
}

}  // namespace dtrain::app
