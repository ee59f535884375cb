// Jobs of the dtrain binary started as a user starts them (fork + exec, output to a log file),
// for the tests of the parameter-server schemes: each test gets its own directory, and every
// process it started is killed at its end.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace dtrain_process {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// All records of `kind` in DIR/metrics.jsonl.
inline std::vector<nlohmann::json> records(const std::string& out, const std::string& kind) {
  std::istringstream in(slurp(out + "/metrics.jsonl"));
  std::string line;
  std::vector<nlohmann::json> found;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("kind", "") == kind) found.push_back(j);
  }
  return found;
}

class JobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("dtrain-job-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    for (pid_t p : extra_) ::kill(p, SIGKILL);
    fs::remove_all(dir_);
  }

  // Starts dtrain with `args`, output to `log`, extra environment `env` ("K=V").
  pid_t start(const std::vector<std::string>& args, const std::string& log,
              const std::vector<std::string>& env = {}) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::unsetenv("DTRAIN_RANK");
      ::unsetenv("DTRAIN_WORLD_SIZE");
      for (const auto& kv : env) {
        const auto eq = kv.find('=');
        ::setenv(kv.substr(0, eq).c_str(), kv.substr(eq + 1).c_str(), 1);
      }
      std::vector<char*> argv;
      static std::string binary = DTRAIN_BINARY;
      argv.push_back(binary.data());
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(binary.c_str(), argv.data());
      ::_exit(127);
    }
    return pid;
  }

  int finish(pid_t pid, std::chrono::seconds give_up) {
    const auto until = Clock::now() + give_up;
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (Clock::now() > until) {
        ::kill(-pid, SIGKILL);
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        ADD_FAILURE() << "dtrain did not end within " << give_up.count() << " s";
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    return status;
  }

  // The pid of the launcher's child that is rank `rank` (from its environment), or -1.
  static pid_t child_rank(pid_t launcher, int rank) {
    std::ifstream children("/proc/" + std::to_string(launcher) + "/task/" +
                           std::to_string(launcher) + "/children");
    pid_t child;
    while (children >> child) {
      const std::string env = slurp("/proc/" + std::to_string(child) + "/environ");
      std::string want = "DTRAIN_RANK=" + std::to_string(rank);
      for (size_t at = 0; at < env.size();) {
        const size_t end = env.find('\0', at);
        if (env.compare(at, end - at, want) == 0) return child;
        if (end == std::string::npos) break;
        at = end + 1;
      }
    }
    return -1;
  }
  static nlohmann::json final_record(const std::string& out) {
    std::istringstream in(slurp(out + "/metrics.jsonl"));
    std::string line;
    nlohmann::json last;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.value("kind", "") == "final") last = j;
    }
    return last;
  }

  fs::path dir_;
  std::vector<pid_t> extra_;
};

}  // namespace dtrain_process
