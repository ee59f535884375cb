// Failures as a user of `dtrain --workers N` sees them: the launcher and every rank name the rank
// that failed and its cause (an error of its own, or a stop), never a peer that merely noticed,
// and nothing speaks of a timeout when nothing timed out. Runs the dtrain binary next to the tests.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <utility>

#include "harness.h"

namespace dtrain::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// The dtrain binary of this build: $DTRAIN_BINARY, else next to or above this test binary.
std::string dtrain_binary() {
  if (const char* env = std::getenv("DTRAIN_BINARY")) return env;
  fs::path self = fs::canonical("/proc/self/exe").parent_path();
  for (const auto& dir : {self, self.parent_path()}) {
    if (fs::exists(dir / "dtrain")) return (dir / "dtrain").string();
  }
  return "";
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Starts `dtrain args...` with stdout and stderr going to `log` and `env` added to its
// environment; returns the pid.
pid_t start(const std::vector<std::string>& args, const std::string& log,
            const std::vector<std::pair<std::string, std::string>>& env = {}) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::unsetenv("DTRAIN_RANK");
    ::unsetenv("DTRAIN_WORLD_SIZE");
    for (const auto& [name, value] : env) ::setenv(name.c_str(), value.c_str(), 1);
    std::vector<char*> argv;
    static std::string binary = dtrain_binary();
    argv.push_back(binary.data());
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for `pid` (SIGKILLs it after `give_up`); returns its wait status.
int finish(pid_t pid, std::chrono::seconds give_up) {
  auto until = std::chrono::steady_clock::now() + give_up;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << "dtrain did not end within " << give_up.count() << " s";
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  return status;
}

// The launcher's last word: the line with "job failed".
std::string job_failed_line(const std::string& log) {
  auto at = log.rfind("job failed");
  if (at == std::string::npos) return "";
  return log.substr(at, log.find('\n', at) - at);
}

// True when the binary was built with `dtrain train` (LibTorch).
bool has_train(const std::string& binary) {
  std::string cmd = binary + " --help 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return false;
  std::string text;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) text.append(buf, n);
  ::pclose(p);
  return text.find("\n  train ") != std::string::npos;
}

TEST(CliFaults, StoppedWorkerIsNamedByTheLauncher) {
  if (dtrain_binary().empty()) GTEST_SKIP() << "no dtrain binary next to the tests";
  TempDir dir;
  const std::string log = dir.path() + "/log.txt";
  pid_t launcher = start({"bench", "allreduce", "--workers", "3", "--sizes", "4K", "--algos",
                          "ring", "--iters", "100000000", "--warmup", "0", "--timeout", "3"},
                         log);
  pid_t victim = -1;
  auto until = std::chrono::steady_clock::now() + 60s;
  while (victim < 0 && std::chrono::steady_clock::now() < until) {
    victim = child_with_rank(launcher, 2);
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_GT(victim, 0) << "rank 2 never started";
  std::this_thread::sleep_for(500ms);
  ::kill(victim, SIGSTOP);
  int status = finish(launcher, 120s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "status " << status;
  const std::string text = slurp(log);
  const std::string last = job_failed_line(text);
  EXPECT_NE(last.find("rank 2 was stopped"), std::string::npos) << text;
}

TEST(CliFaults, LocalErrorOnOneWorkerIsNamedByEveryRankAndTheLauncher) {
  const std::string binary = dtrain_binary();
  if (binary.empty() || !has_train(binary)) GTEST_SKIP() << "dtrain train is not built";
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  const std::string not_a_dir = dir.path() + "/file";
  std::ofstream(not_a_dir) << "a regular file\n";
  const std::string log = dir.path() + "/log.txt";
  pid_t launcher = start({"train", "--workers", "3", "--epochs", "1", "--train-subset", "600",
                          "--test-subset", "100", "--out", not_a_dir, "--timeout", "30", "--quiet"},
                         log);
  int status = finish(launcher, 120s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "status " << status;
  const std::string text = slurp(log);
  EXPECT_NE(job_failed_line(text).find("job failed: rank 0 failed"), std::string::npos) << text;
  EXPECT_EQ(text.find("timed out"), std::string::npos) << text;
  // Both other ranks name rank 0.
  size_t named = 0;
  for (size_t at = text.find("rank 0 failed"); at != std::string::npos;
       at = text.find("rank 0 failed", at + 1)) {
    ++named;
  }
  EXPECT_GE(named, 3u) << text;  // ranks 1 and 2, and the launcher
}

TEST(CliFaults, IbverbsTransportIsRefused) {
  if (dtrain_binary().empty()) GTEST_SKIP() << "no dtrain binary next to the tests";
  TempDir dir;
  const std::string log = dir.path() + "/log.txt";
  pid_t pid = start({"bench", "allreduce", "--workers", "1", "--sizes", "4K", "--iters", "1",
                     "--warmup", "0", "--transport", "ibverbs"},
                    log);
  int status = finish(pid, 60s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "status " << status;
  const std::string text = slurp(log);
  EXPECT_NE(text.find("--transport"), std::string::npos) << text;
  EXPECT_NE(text.find("ibverbs"), std::string::npos) << text;
}

// Runs `dtrain args...` to its end; returns its output, and expects it to have failed.
std::string failing_run(const std::vector<std::string>& args) {
  TempDir dir;
  const std::string log = dir.path() + "/log.txt";
  int status = finish(start(args, log), 60s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "status " << status;
  return slurp(log);
}

TEST(CliFaults, NumericFlagErrorsSayWhatIsWrong) {
  if (dtrain_binary().empty()) GTEST_SKIP() << "no dtrain binary next to the tests";
  std::string text = failing_run({"bench", "allreduce", "--workers", "abc"});
  EXPECT_NE(text.find("--workers: must be an integer from 1 to 256 (got abc)"), std::string::npos)
      << text;
  text = failing_run({"bench", "omnireduce", "--servers", "-1"});
  EXPECT_NE(text.find("--servers: must be an integer from 0 to 256 (got -1)"), std::string::npos)
      << text;
  text = failing_run({"bench", "omnireduce", "--block", "0"});
  EXPECT_NE(text.find("--block: must be a positive integer (got 0)"), std::string::npos) << text;
  text = failing_run({"bench", "allreduce", "--timeout", "0"});
  EXPECT_NE(text.find("--timeout: must be a positive number"), std::string::npos) << text;
  EXPECT_NE(text.find("(got 0)"), std::string::npos) << text;
  EXPECT_EQ(text.find("not in range"), std::string::npos) << text;  // CLI11's own wording
}

TEST(CliFaults, BenchSizesBelowOneElementAreRefused) {
  if (dtrain_binary().empty()) GTEST_SKIP() << "no dtrain binary next to the tests";
  for (const char* size : {"0", "1", "3B"}) {
    std::string text = failing_run({"bench", "omnireduce", "--size", size});
    EXPECT_NE(text.find(std::string("--size: must be at least 4 bytes (one float) (got ") + size),
              std::string::npos)
        << text;
  }
  std::string text = failing_run({"bench", "omnireduce", "--size", "lots"});
  EXPECT_NE(text.find("--size: must be a size such as 4K"), std::string::npos) << text;
  text = failing_run({"bench", "allreduce", "--sizes", "4K,0"});
  EXPECT_NE(text.find("--sizes: must be at least 4 bytes (one float) (got 0)"), std::string::npos)
      << text;
  text = failing_run({"bench", "compress", "--size", "0"});
  EXPECT_NE(text.find("--size: '0' is not an element count"), std::string::npos) << text;
}

// A launcher killed with SIGKILL leaves its rendezvous directory behind: the next launch removes
// those whose launcher is gone (or, without a pid file, that are older than an hour), and keeps
// those of live launchers and fresh ones still being set up.
TEST(CliFaults, StaleRendezvousDirectoriesAreRemovedAtLaunch) {
  if (dtrain_binary().empty()) GTEST_SKIP() << "no dtrain binary next to the tests";
  TempDir tmp;
  const fs::path root = tmp.path();
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  auto make = [&](const std::string& name, pid_t pid) {
    fs::create_directory(root / name);
    std::ofstream(root / name / "0") << "a rendezvous key\n";
    if (pid > 0) std::ofstream(root / name / "launcher.pid") << pid << "\n";
    return root / name;
  };
  const auto of_dead = make("dtrain-rdzv-dead01", dead);
  const auto of_live = make("dtrain-rdzv-live01", ::getpid());
  const auto unclaimed_old = make("dtrain-rdzv-old001", -1);
  fs::last_write_time(unclaimed_old, fs::file_time_type::clock::now() - std::chrono::hours(2));
  const auto unclaimed_new = make("dtrain-rdzv-new001", -1);
  const auto other = make("not-dtrain-rdzv", dead);

  const std::string log = (root / "log.txt").string();
  pid_t pid = start({"bench", "allreduce", "--workers", "2", "--sizes", "4K", "--algos", "ring",
                     "--iters", "1", "--warmup", "0"},
                    log, {{"TMPDIR", root.string()}});
  int status = finish(pid, 120s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  EXPECT_FALSE(fs::exists(of_dead));
  EXPECT_FALSE(fs::exists(unclaimed_old));
  EXPECT_TRUE(fs::exists(of_live));
  EXPECT_TRUE(fs::exists(unclaimed_new));
  EXPECT_TRUE(fs::exists(other));
  // The launcher's own directory is gone as well: only the two kept are left.
  int left = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    left += e.path().filename().string().rfind("dtrain-rdzv-", 0) == 0;
  }
  EXPECT_EQ(left, 2);
}

}  // namespace
}  // namespace dtrain::test
