#include "launcher.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"

namespace dtrain::app {
namespace {

volatile sig_atomic_t g_interrupted = 0;
void on_signal(int sig) {
  g_interrupted = sig;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return detail::concat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return detail::concat("was killed by signal ", WTERMSIG(status), " (",
                          strsignal(WTERMSIG(status)), ")");
  }
  return "ended abnormally";
}

}  // namespace

bool running_as_rank() {
  return comm::detect_launch_env().has_value();
}

int launch_local(const LaunchOptions& options, int argc, char** argv) {
  DT_ENFORCE(options.workers >= 1, "--workers must be >= 1, got ", options.workers);
  std::string tmpl = (std::filesystem::temp_directory_path() / "dtrain-rdzv-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw IoError("cannot create a rendezvous directory under " +
                  std::filesystem::temp_directory_path().string() + ": " + std::strerror(errno));
  }
  const std::string dir = tmpl;
  const std::string run_id = detail::concat("local-", ::getpid(), "-", std::random_device{}());

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::vector<pid_t> pids;
  for (int r = 0; r < options.workers; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) throw IoError(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the launcher
      ::setenv("DTRAIN_RANK", std::to_string(r).c_str(), 1);
      ::setenv("DTRAIN_WORLD_SIZE", std::to_string(options.workers).c_str(), 1);
      ::setenv("DTRAIN_RENDEZVOUS", ("file://" + dir).c_str(), 1);
      ::setenv("DTRAIN_RUN_ID", run_id.c_str(), 1);
      ::setenv("DTRAIN_HOST", options.host.c_str(), 1);
      ::execv("/proc/self/exe", argv);
      std::fprintf(stderr, "dtrain: cannot re-execute itself: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    pids.push_back(pid);
  }

  int result = 0;
  size_t alive = pids.size();
  std::string first_failure;
  auto stop_all = [&](int sig) {
    for (pid_t p : pids) {
      if (p > 0) ::kill(p, sig);
    }
  };
  std::chrono::steady_clock::time_point kill_at{};
  while (alive > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      auto it = std::find(pids.begin(), pids.end(), pid);
      if (it == pids.end()) continue;
      int rank = static_cast<int>(it - pids.begin());
      *it = -1;
      --alive;
      bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && result == 0) {
        result = 1;
        first_failure = detail::concat("rank ", rank, " ", describe_status(status));
        spdlog::error("{}; stopping the other ranks", first_failure);
        stop_all(SIGTERM);
        kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(options.grace_seconds);
      }
      continue;
    }
    if (g_interrupted && result == 0) {
      result = 1;
      first_failure = detail::concat("interrupted by signal ", int(g_interrupted));
      spdlog::error("{}; stopping all ranks", first_failure);
      stop_all(SIGTERM);
      kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(options.grace_seconds);
    }
    if (result != 0 && std::chrono::steady_clock::now() > kill_at) stop_all(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (result != 0) spdlog::error("job failed: {}", first_failure);
  return result;
}

}  // namespace dtrain::app
