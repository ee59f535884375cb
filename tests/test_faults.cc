// Faults with real processes: one rank is SIGKILLed or SIGSTOPped in the middle of allreduces;
// every survivor must fail with an error of the right kind that names it, and the survivors must
// be able to reconnect without it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using namespace std::chrono_literals;

struct Outcome {
  std::string kind;  // "ok", "IoError", "TimeoutError", "ProtocolError", "Error", "crash"
  std::string message;
};

// Run in a child: connect, loop allreduces (touching `ready` after the first), report the error.
// After a failure with `reconnect_as` set, re-rendezvous as that rank of a smaller group and run
// one checked allreduce.
Outcome child_main(const TempDir& dir, int rank, int size, comm::Millis timeout,
                   std::optional<std::pair<int, int>> reconnect_as) {
  Outcome out{"ok", ""};
  try {
    auto g = comm::Group::connect(local_options(dir, rank, size, timeout));
    std::vector<float> data(1 << 18);
    try {
      for (int it = 0; it < 1000000; ++it) {
        std::fill(data.begin(), data.end(), 1.0f);
        collective::AllreduceOptions o(*g);
        o.output = data;
        collective::allreduce(o);
        if (it == 0) std::ofstream(dir.path() + "/ready." + std::to_string(rank)) << "1";
      }
    } catch (const Error&) {
      if (!reconnect_as) throw;
      out.message = what(std::current_exception());
      g->reconnect(reconnect_as->first, reconnect_as->second);
      std::vector<float> ok(1000, float(reconnect_as->first + 1));
      collective::AllreduceOptions o(*g);
      o.output = ok;
      collective::allreduce(o);
      int n = reconnect_as->second;
      float want = n * (n + 1) / 2.0f;
      out.kind = ok == std::vector<float>(1000, want) ? "reconnected" : "wrong result";
      return out;
    }
  } catch (const IoError& e) {
    out = {"IoError", e.what()};
  } catch (const TimeoutError& e) {
    out = {"TimeoutError", e.what()};
  } catch (const ProtocolError& e) {
    out = {"ProtocolError", e.what()};
  } catch (const std::exception& e) {
    out = {"Error", e.what()};
  }
  return out;
}

struct Child {
  pid_t pid;
  int fd;  // read end of the pipe the child reports on
};

// Forks `size` ranks; `victim` is signalled with `sig` once every rank has finished one
// allreduce. Returns each survivor's outcome (the victim's is empty).
std::vector<Outcome> run_fault(int size, int victim, int sig, comm::Millis timeout,
                               bool reconnect_survivors) {
  TempDir dir;
  std::vector<Child> children;
  for (int r = 0; r < size; ++r) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      std::optional<std::pair<int, int>> as;
      if (reconnect_survivors && r != victim) as = std::pair{r < victim ? r : r - 1, size - 1};
      Outcome o = child_main(dir, r, size, timeout, as);
      std::string text = o.kind + "\n" + o.message;
      (void)!::write(fds[1], text.data(), text.size());
      ::close(fds[1]);
      ::_exit(0);
    }
    ::close(fds[1]);
    children.push_back({pid, fds[0]});
  }
  // Wait until every rank has completed one allreduce, then strike.
  auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < size; ++r) {
    while (!std::filesystem::exists(dir.path() + "/ready." + std::to_string(r)) &&
           std::chrono::steady_clock::now() - start < 60s) {
      std::this_thread::sleep_for(5ms);
    }
  }
  std::this_thread::sleep_for(50ms);
  ::kill(children[victim].pid, sig);

  std::vector<Outcome> outcomes(size);
  for (int r = 0; r < size; ++r) {
    if (r == victim) continue;
    // A survivor that hangs is killed after a generous bound and reported as such.
    auto give_up = std::chrono::steady_clock::now() + timeout * 3 + 30s;
    int status = 0;
    while (::waitpid(children[r].pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > give_up) {
        ::kill(children[r].pid, SIGKILL);
        ::waitpid(children[r].pid, &status, 0);
        outcomes[r] = {"hang", "rank did not finish"};
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    if (outcomes[r].kind.empty()) {
      std::string text;
      char buf[4096];
      ssize_t n;
      while ((n = ::read(children[r].fd, buf, sizeof(buf))) > 0) text.append(buf, n);
      auto nl = text.find('\n');
      outcomes[r] = nl == std::string::npos ? Outcome{"crash", text}
                                            : Outcome{text.substr(0, nl), text.substr(nl + 1)};
    }
    ::close(children[r].fd);
  }
  ::kill(children[victim].pid, SIGKILL);
  ::waitpid(children[victim].pid, nullptr, 0);
  for (int r = 0; r < size; ++r) {
    if (r != victim)
      std::printf("rank %d: %s: %s\n", r, outcomes[r].kind.c_str(), outcomes[r].message.c_str());
  }
  ::close(children[victim].fd);
  return outcomes;
}

TEST(Faults, KilledRankIsNamedByEverySurvivor) {
  // The timeout is long: an IoError (not a TimeoutError) shows the failure was detected from the
  // broken connection, well before any deadline.
  auto outcomes = run_fault(4, 2, SIGKILL, comm::Millis(60000), false);
  for (int r : {0, 1, 3}) {
    EXPECT_EQ(outcomes[r].kind, "IoError") << "rank " << r << ": " << outcomes[r].message;
    EXPECT_NE(outcomes[r].message.find("rank(s) 2 failed"), std::string::npos)
        << "rank " << r << ": " << outcomes[r].message;
  }
}

TEST(Faults, StoppedRankIsNamedAtTheDeadline) {
  auto outcomes = run_fault(4, 2, SIGSTOP, comm::Millis(3000), false);
  for (int r : {0, 1, 3}) {
    EXPECT_EQ(outcomes[r].kind, "TimeoutError") << "rank " << r << ": " << outcomes[r].message;
    EXPECT_NE(outcomes[r].message.find("rank 2 does not respond"), std::string::npos)
        << "rank " << r << ": " << outcomes[r].message;
  }
}

TEST(Faults, SurvivorsReconnectWithoutTheDeadRank) {
  auto outcomes = run_fault(4, 1, SIGKILL, comm::Millis(60000), true);
  for (int r : {0, 2, 3}) {
    EXPECT_EQ(outcomes[r].kind, "reconnected") << "rank " << r << ": " << outcomes[r].message;
    EXPECT_NE(outcomes[r].message.find("rank(s) 1 failed"), std::string::npos)
        << "rank " << r << ": " << outcomes[r].message;
  }
}

}  // namespace
}  // namespace dtrain::test
