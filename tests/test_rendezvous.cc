// Rendezvous hygiene: what an earlier, failed job leaves in a rendezvous cannot break the next one,
// the error of a rendezvous that does not complete says what it found, and processes that do not
// belong together (another job sharing the rendezvous and run id, another dtrain build, a second
// process claiming a rank) are refused with an error naming them.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 37 + seed * 11 + 1) & 0xff);
  return v;
}

struct Outcome {
  std::string kind;  // "ok", "InvalidArgument", "TimeoutError", "IoError", "ProtocolError", ...
  std::string message;
};

// A rank in a forked process, so that it can have its own environment (DTRAIN_JOB_NONCE) and can
// be killed like a crashed job.
class ForkedRank {
 public:
  ForkedRank(const comm::GroupOptions& options, const std::string& job_nonce) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(fds[0]);
      if (job_nonce.empty()) {
        ::unsetenv("DTRAIN_JOB_NONCE");
      } else {
        ::setenv("DTRAIN_JOB_NONCE", job_nonce.c_str(), 1);
      }
      Outcome o{"ok", ""};
      try {
        auto g = comm::Group::connect(options);
        // One exchange proves the group works; partners are rank 0 and 1.
        uint64_t tag = g->next_tag();
        if (g->rank() == 0 && g->size() > 1) g->send(1, tag, pattern(8, 1));
        if (g->rank() == 1) g->recv(0, tag);
      } catch (const InvalidArgument& e) {
        o = {"InvalidArgument", e.what()};
      } catch (const TimeoutError& e) {
        o = {"TimeoutError", e.what()};
      } catch (const IoError& e) {
        o = {"IoError", e.what()};
      } catch (const ProtocolError& e) {
        o = {"ProtocolError", e.what()};
      } catch (const std::exception& e) {
        o = {"Error", e.what()};
      }
      std::string text = o.kind + "\n" + o.message;
      (void)!::write(fds[1], text.data(), text.size());
      ::_exit(0);
    }
    ::close(fds[1]);
    fd_ = fds[0];
  }
  ~ForkedRank() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  void kill() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  // Waits for the child's report (killing it after `give_up`).
  Outcome outcome(std::chrono::seconds give_up) {
    auto until = std::chrono::steady_clock::now() + give_up;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > until) {
        kill();
        return {"hang", "did not finish"};
      }
      std::this_thread::sleep_for(10ms);
    }
    pid_ = -1;
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd_, buf, sizeof(buf))) > 0) text.append(buf, n);
    auto nl = text.find('\n');
    if (nl == std::string::npos) return {"crash", text};
    return {text.substr(0, nl), text.substr(nl + 1)};
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
};

// Leaves what a failed job leaves: ranks started with different world sizes (rank 0 of 2, rank 1
// of 3) get as far as they can, then crash. Returns once they are gone.
void leave_a_failed_rendezvous(const TempDir& dir) {
  ForkedRank a(local_options(dir, 0, 2, comm::Millis(30000)), "");
  ForkedRank b(local_options(dir, 1, 3, comm::Millis(30000)), "");
  // Let them write what they write (joins, addresses), then crash them.
  auto until = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < until) {
    size_t files = 0;
    for (auto& e : std::filesystem::directory_iterator(dir.path())) files += !e.is_directory();
    if (files >= 3) break;
    std::this_thread::sleep_for(10ms);
  }
  std::this_thread::sleep_for(300ms);
  a.kill();
  b.kill();
}

TEST(Rendezvous, LeftoversOfAFailedJobDoNotBreakTheNext) {
  TempDir dir;
  leave_a_failed_rendezvous(dir);
  // The next job, same directory and run id. Rank 1 comes first and meets only the leftovers;
  // rank 0 comes a moment later.
  auto errors = run_threads(2, [&](int r) {
    if (r == 0) std::this_thread::sleep_for(700ms);
    auto g = comm::Group::connect(local_options(dir, r, 2, comm::Millis(8000)));
    uint64_t tag = g->next_tag();
    if (r == 0) {
      g->send(1, tag, pattern(100, 7));
    } else {
      EXPECT_TRUE(g->recv(0, tag).bytes == pattern(100, 7));
    }
  });
  for (int r = 0; r < 2; ++r) EXPECT_FALSE(errors[r]) << "rank " << r << ": " << what(errors[r]);
}

TEST(Rendezvous, TimeoutSaysWhatItFoundAndWhatToDo) {
  TempDir dir;
  leave_a_failed_rendezvous(dir);
  // Rank 1 of a new job whose rank 0 never comes: it must not take the leftovers for rank 0.
  try {
    comm::Group::connect(local_options(dir, 1, 2, comm::Millis(1500)));
    FAIL() << "connected to nobody";
  } catch (const TimeoutError& e) {
    std::string msg = e.what();
    std::printf("%s\n", msg.c_str());
    EXPECT_NE(msg.find("rank 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("earlier job"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--run-id"), std::string::npos) << msg;
  } catch (const std::exception& e) {
    FAIL() << "not a TimeoutError: " << e.what();
  }
}

TEST(Rendezvous, TwoJobsSharingRendezvousAndRunIdAreRefused) {
  TempDir dir;
  // Rank 0 of one launched job and rank 1 of another, same directory and run id.
  ForkedRank a(local_options(dir, 0, 2, comm::Millis(8000)), "job-a");
  ForkedRank b(local_options(dir, 1, 2, comm::Millis(8000)), "job-b");
  for (auto* rank : {&a, &b}) {
    Outcome o = rank->outcome(60s);
    std::printf("%s: %s\n", o.kind.c_str(), o.message.c_str());
    EXPECT_EQ(o.kind, "InvalidArgument") << o.message;
    EXPECT_NE(o.message.find("another job"), std::string::npos) << o.message;
    EXPECT_NE(o.message.find("--run-id"), std::string::npos) << o.message;
  }
}

TEST(Rendezvous, SecondProcessClaimingARankIsNamed) {
  TempDir dir;
  ForkedRank r0(local_options(dir, 0, 2, comm::Millis(4000)), "");
  ForkedRank r1(local_options(dir, 1, 2, comm::Millis(4000)), "");
  std::this_thread::sleep_for(300ms);
  ForkedRank dup(local_options(dir, 1, 2, comm::Millis(4000)), "");
  // Whichever of the two claimants rank 0 admitted works; the other is told who took its rank.
  Outcome a = r1.outcome(60s);
  Outcome b = dup.outcome(60s);
  Outcome first = r0.outcome(60s);
  EXPECT_EQ(first.kind, "ok") << first.message;
  const Outcome& refused = a.kind == "ok" ? b : a;
  std::printf("%s: %s\n", refused.kind.c_str(), refused.message.c_str());
  EXPECT_TRUE(a.kind == "ok" || b.kind == "ok") << a.message << " / " << b.message;
  EXPECT_NE(refused.message.find("another process"), std::string::npos) << refused.message;
  EXPECT_NE(refused.message.find("rank 1"), std::string::npos) << refused.message;
}

TEST(Rendezvous, DifferentBuildsAreRefused) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto o = local_options(dir, r, 3, comm::Millis(8000));
    if (r == 2) o.build = comm::build_info().text + ", patched";  // acts as another build
    comm::Group::connect(o);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " connected";
    const std::string msg = what(errors[r]);
    EXPECT_THROW(std::rethrow_exception(errors[r]), InvalidArgument) << msg;
    EXPECT_NE(msg.find("rank 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("another dtrain build"), std::string::npos) << msg;
  }
  std::printf("%s\n", what(errors[0]).c_str());
}

TEST(Rendezvous, BuildIdIsTheHashOfItsText) {
  auto b = comm::build_info();
  EXPECT_NE(b.text.find(std::string("dtrain ") + comm::kVersion), std::string::npos) << b.text;
  EXPECT_EQ(b.id, Fnv1a().str(b.text).digest());
  EXPECT_EQ(b.id, comm::build_info().id);
}

TEST(Rendezvous, TwoRankZerosAreNamed) {
  TempDir dir;
  ForkedRank a(local_options(dir, 0, 2, comm::Millis(3000)), "");
  ForkedRank b(local_options(dir, 0, 2, comm::Millis(3000)), "");
  Outcome oa = a.outcome(60s);
  Outcome ob = b.outcome(60s);
  const Outcome& named = oa.kind == "InvalidArgument" ? oa : ob;
  std::printf("%s: %s\n", named.kind.c_str(), named.message.c_str());
  EXPECT_EQ(named.kind, "InvalidArgument") << oa.message << " / " << ob.message;
  EXPECT_NE(named.message.find("as rank 0 too"), std::string::npos) << named.message;
  EXPECT_NE(named.message.find("--run-id"), std::string::npos) << named.message;
}

}  // namespace
}  // namespace dtrain::test
