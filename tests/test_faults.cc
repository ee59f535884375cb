// Faults with real processes: one rank is SIGKILLed or SIGSTOPped in the middle of allreduces;
// every survivor must fail with an error of the right kind that names it, and the survivors must
// be able to reconnect without it. A rank whose own work fails (a full disk, a reducer that finds
// a malformed message on the engine's thread) is named at once by every other rank, with no talk
// of timeouts.
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
#include "dtrain/engine/engine.h"
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

// Ranks 0 and 2 wait in an allreduce for rank 1, whose own work (run by run_rank, as every
// command runs a rank's work) fails before it gets there: they name rank 1 and the cause at once.
TEST(Faults, LocalErrorOnOneRankIsNamedByEveryRankWithoutTimeout) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(30000)));
    comm::run_rank(*g, [&] {
      if (r == 1)
        throw IoError("cannot write checkpoint /x/checkpoint.pt: No space left on device");
      std::vector<float> data(1000, 1.0f);
      collective::AllreduceOptions o(*g);
      o.output = data;
      collective::allreduce(o);
    });
  });
  ASSERT_TRUE(errors[1]);
  EXPECT_THROW(std::rethrow_exception(errors[1]), IoError);
  for (int r : {0, 2}) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    const std::string msg = what(errors[r]);
    EXPECT_NE(msg.find("rank 1 failed: cannot write checkpoint"), std::string::npos)
        << "rank " << r << ": " << msg;
    EXPECT_EQ(msg.find("timed out"), std::string::npos) << "rank " << r << ": " << msg;
    try {
      std::rethrow_exception(errors[r]);
    } catch (const IoError& e) {
      const auto* f = dynamic_cast<const comm::GroupFailure*>(&e);
      ASSERT_NE(f, nullptr) << msg;
      EXPECT_EQ(f->culprit(), 1);
      EXPECT_TRUE(f->peer_failed());
    } catch (...) {
      ADD_FAILURE() << "not an IoError: " << msg;
    }
  }
}

// Every rank finds the same mismatch after an exchange; whichever announces first, every rank ends
// with an InvalidArgument that carries the mismatch.
TEST(Faults, ErrorFoundByEveryRankKeepsItsKindAndCause) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(30000)));
    comm::run_rank(*g, [&] {
      std::vector<float> data(1000, float(r));
      collective::AllreduceOptions o(*g);
      o.output = data;
      collective::allreduce(o);
      throw InvalidArgument("--reduce differs between rank 0 and rank 2");
    });
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    const std::string msg = what(errors[r]);
    EXPECT_NE(msg.find("--reduce differs between rank 0 and rank 2"), std::string::npos) << msg;
    EXPECT_THROW(std::rethrow_exception(errors[r]), InvalidArgument) << msg;
  }
}

// A reducer that finds a malformed message on rank `victim` at step 1 (as ExDyna does with an
// index outside its bucket); otherwise it averages with a dense allreduce.
class MalformedOnOneRank : public reduce::GradientReducer {
 public:
  MalformedOnOneRank(comm::Group& g, int victim) : g_(g), victim_(victim) {}
  void reduce(size_t bucket, std::span<float> grad) override {
    if (g_.rank() == victim_ && step() == 1) {
      throw ProtocolError("exdyna: rank 0 sent index 4096 outside bucket 0 (0..999)");
    }
    collective::AllreduceOptions o(g_);
    o.output = grad;
    collective::allreduce(o);
  }
  std::string name() const override { return "malformed-on-one-rank"; }

 private:
  comm::Group& g_;
  int victim_;
};

TEST(Faults, ReducerErrorOnTheEngineThreadIsNamedByEveryRank) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(30000)));
    comm::run_rank(*g, [&] {
      engine::GradientEngine eng({{"w", 1000, {}}}, engine::Schedule::parse("single"),
                                 std::make_unique<MalformedOnOneRank>(*g, 1),
                                 engine::OnNonFinite::kAbort, nullptr);
      std::vector<float> grad(1000, float(r));
      for (int64_t step = 0; step < 3; ++step) {
        eng.begin_step(step);
        eng.on_gradient(0, grad);
        eng.finish();
      }
    });
  });
  ASSERT_TRUE(errors[1]);
  EXPECT_THROW(std::rethrow_exception(errors[1]), ProtocolError);
  for (int r : {0, 2}) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    const std::string msg = what(errors[r]);
    EXPECT_NE(msg.find("rank 1 failed: exdyna: rank 0 sent index 4096"), std::string::npos)
        << "rank " << r << ": " << msg;
    EXPECT_EQ(msg.find("timed out"), std::string::npos) << "rank " << r << ": " << msg;
    EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError) << msg;
  }
}

}  // namespace
}  // namespace dtrain::test
