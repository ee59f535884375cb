// Group: rendezvous, framed point-to-point, tags, bad input.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>

#include "dtrain/common/error.h"
#include "harness.h"

namespace dtrain::test {
namespace {

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7 + 3) & 0xff);
  return v;
}

TEST(Group, SizeOneNeedsNoRendezvous) {
  comm::GroupOptions o;
  o.rank = 0;
  o.size = 1;
  auto g = comm::Group::connect(o);
  EXPECT_EQ(g->rank(), 0);
  EXPECT_EQ(g->size(), 1);
}

TEST(Group, SendRecvVariableSizes) {
  // Sizes the receiver does not know in advance, larger and smaller than the previous one.
  const std::vector<size_t> sizes = {0, 1, 7, 1000, (size_t{1} << 20) + 3, 5, 0, 3 << 20};
  spawn(2, [&](comm::Group& g) {
    uint64_t tag = g.next_tag();
    if (g.rank() == 0) {
      for (size_t i = 0; i < sizes.size(); ++i) g.send(1, tag, pattern(sizes[i], int(i)));
    } else {
      for (size_t i = 0; i < sizes.size(); ++i) {
        auto m = g.recv(0, tag);
        EXPECT_EQ(m.src, 0);
        ASSERT_EQ(m.bytes.size(), sizes[i]);
        EXPECT_TRUE(m.bytes == pattern(sizes[i], int(i))) << "message " << i;
      }
    }
  });
}

TEST(Group, RecvFromAnySource) {
  spawn(5, [&](comm::Group& g) {
    uint64_t tag = g.next_tag();
    if (g.rank() == 0) {
      std::vector<int> seen(5, 0);
      for (int i = 0; i < 4; ++i) {
        auto m = g.recv(comm::AnyOf{{1, 2, 3, 4}}, tag);
        ASSERT_GE(m.src, 1);
        ASSERT_LE(m.src, 4);
        EXPECT_TRUE(m.bytes == pattern(100 * m.src, m.src));
        seen[m.src]++;
      }
      EXPECT_EQ(seen, (std::vector<int>{0, 1, 1, 1, 1}));
    } else {
      g.send(0, tag, pattern(100 * g.rank(), g.rank()));
    }
  });
}

TEST(Group, RecvIntoWrongSizeIsProtocolErrorAndGroupStaysUsable) {
  spawn(2, [&](comm::Group& g) {
    uint64_t tag = g.next_tag();
    if (g.rank() == 0) {
      g.send(1, tag, pattern(64, 1));  // larger than expected
      g.send(1, tag, pattern(16, 2));  // smaller than expected
      g.send(1, tag, pattern(32, 3));  // as expected
    } else {
      std::vector<std::byte> buf(32);
      try {
        g.recv_into(0, tag, buf);
        FAIL() << "no error for a 64-byte message into 32 bytes";
      } catch (const ProtocolError& e) {
        EXPECT_NE(std::string(e.what()).find("rank 0 sent 64 bytes, expected 32"),
                  std::string::npos)
            << e.what();
      }
      EXPECT_THROW(g.recv_into(0, tag, buf), ProtocolError);
      g.recv_into(0, tag, buf);
      EXPECT_TRUE(buf == pattern(32, 3));
      EXPECT_FALSE(g.poisoned());
    }
  });
}

TEST(Group, LyingFrameLengthIsRefusedNamingThePeer) {
  // Rank 0 forges a frame header (the wire layout of src/comm/group_wire.h) claiming 1 TiB; rank 1
  // must fail with a ProtocolError naming rank 0 and the claim, allocating nothing for it.
  struct {
    uint32_t magic = 0x4454524e;
    uint32_t flags = 0;
    uint64_t length = uint64_t{1} << 40;
  } forged;
  static_assert(sizeof(forged) == 16);
  TempDir dir;
  auto errors = run_threads(2, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 2, comm::Millis(10000)));
    const uint64_t tag = g->next_tag();
    if (r == 0) {
      auto header = g->buffer(&forged, sizeof(forged));
      header->send(1, comm::Group::slot(tag, 0), 0, sizeof(forged));
      int peer[1] = {1};
      header->wait_send(comm::WaitInfo{"forge", tag, peer, g->deadline()});
      g->recv(1, g->next_tag());  // ends with rank 1's failure notice
    } else {
      g->recv(0, tag);
    }
  });
  ASSERT_TRUE(errors[1]);
  EXPECT_THROW(std::rethrow_exception(errors[1]), ProtocolError);
  EXPECT_NE(what(errors[1]).find("rank 0 announced a frame of 1099511627776 bytes"),
            std::string::npos)
      << what(errors[1]);
  ASSERT_TRUE(errors[0]);
  EXPECT_NE(what(errors[0]).find("1099511627776"), std::string::npos) << what(errors[0]);
}

TEST(Group, FrameLimitIsKeptBySenderAndReceiver) {
  TempDir dir;
  auto errors = run_threads(2, [&](int r) {
    auto options = local_options(dir, r, 2, comm::Millis(10000));
    options.max_frame_bytes = r == 0 ? 100 : 50;
    auto g = comm::Group::connect(options);
    const uint64_t tag = g->next_tag();
    if (r == 0) {
      // Over its own limit: refused before anything is sent, and the group stays usable.
      EXPECT_INVALID(g->send(1, tag, pattern(101, 1)), "exceed the frame limit of 100 bytes");
      EXPECT_FALSE(g->poisoned());
      g->send(1, tag, pattern(100, 2));  // within rank 0's limit, over rank 1's
    } else {
      g->recv(0, tag);
    }
  });
  ASSERT_TRUE(errors[1]);
  EXPECT_THROW(std::rethrow_exception(errors[1]), ProtocolError);
  EXPECT_NE(what(errors[1]).find("rank 0 announced a frame of 100 bytes, over the limit of 50"),
            std::string::npos)
      << what(errors[1]);
}

TEST(Group, TagsKeepMessagesApart) {
  spawn(2, [&](comm::Group& g) {
    uint64_t a = g.next_tag();
    uint64_t b = g.next_tag();
    if (g.rank() == 0) {
      // Sends complete when the receiver takes them: send on b from a second thread while the
      // receiver first waits on a, so only tag matching can pair them up correctly.
      std::thread tb([&] { g.send(1, b, pattern(10, 20)); });
      g.send(1, a, pattern(11, 10));
      tb.join();
    } else {
      auto ma = g.recv(0, a);
      auto mb = g.recv(0, b);
      EXPECT_TRUE(ma.bytes == pattern(11, 10));
      EXPECT_TRUE(mb.bytes == pattern(10, 20));
    }
  });
}

TEST(Group, RecvTimeoutNamesSilentRank) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(1500)));
    uint64_t tag = g->next_tag();
    if (r == 0) {
      g->recv(comm::AnyOf{{1, 2}}, tag);  // nobody sends
    } else {
      // Stay alive until rank 0 gives up, then expect its notice.
      EXPECT_THROW(g->recv(0, g->next_tag(), comm::Millis(10000)), TimeoutError);
    }
  });
  ASSERT_TRUE(errors[0]);
  std::string msg = what(errors[0]);
  EXPECT_NE(msg.find("rank(s) 1, 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tag 1"), std::string::npos) << msg;
  EXPECT_THROW(std::rethrow_exception(errors[0]), TimeoutError);
  EXPECT_FALSE(errors[1]) << what(errors[1]);
  EXPECT_FALSE(errors[2]) << what(errors[2]);
}

TEST(Group, MissingRankIsNamedAtRendezvous) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    comm::Group::connect(local_options(dir, r, 4, comm::Millis(1000)));  // rank 3 never comes
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    EXPECT_THROW(std::rethrow_exception(errors[r]), TimeoutError);
    EXPECT_NE(what(errors[r]).find("rank(s) 3 did not join"), std::string::npos) << what(errors[r]);
  }
}

TEST(Group, ReusedDirectoryWorks) {
  TempDir dir;
  for (int round = 0; round < 3; ++round) {
    auto errors = run_threads(3, [&](int r) {
      auto g = comm::Group::connect(local_options(dir, r, 3));
      uint64_t tag = g->next_tag();
      if (r == 0) {
        g->send(1, tag, pattern(5, round));
      } else if (r == 1) {
        EXPECT_TRUE(g->recv(0, tag).bytes == pattern(5, round));
      }
    });
    for (auto& e : errors) ASSERT_FALSE(e) << what(e);
  }
}

TEST(Group, ReconnectUnderNewGeneration) {
  spawn(3, [&](comm::Group& g) {
    uint64_t gen = g.generation();
    g.reconnect();
    EXPECT_EQ(g.generation(), gen + 1);
    uint64_t tag = g.next_tag();
    int next = (g.rank() + 1) % 3;
    int prev = (g.rank() + 2) % 3;
    std::vector<std::byte> in(8);
    auto out = pattern(8, g.rank());
    if (g.rank() == 0) {
      g.send(next, tag, out);
      g.recv_into(prev, tag, in);
    } else {
      g.recv_into(prev, tag, in);
      g.send(next, tag, out);
    }
    EXPECT_TRUE(in == pattern(8, prev));
  });
}

TEST(GroupBadInput, RankOutsideWorld) {
  comm::GroupOptions o;
  o.rendezvous = "file:///tmp";
  o.rank = 4;
  o.size = 4;
  try {
    comm::Group::connect(o);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("rank 4 is outside 0..3"), std::string::npos) << e.what();
  }
}

TEST(GroupBadInput, NonPositiveSize) {
  comm::GroupOptions o;
  o.rank = 0;
  o.size = -2;
  EXPECT_THROW(comm::Group::connect(o), InvalidArgument);
  o.size = 0;
  EXPECT_THROW(comm::Group::connect(o), InvalidArgument);
}

TEST(GroupBadInput, MissingRendezvous) {
  comm::GroupOptions o;
  o.rank = 0;
  o.size = 2;
  EXPECT_THROW(comm::Group::connect(o), InvalidArgument);
}

TEST(GroupBadInput, MalformedUrl) {
  for (std::string url : {"http://x", "file://relative/dir", "redis://", "redis://h:0",
                          "redis://h:port", "redis://h:70000", ""}) {
    if (url.empty()) continue;
    comm::GroupOptions o;
    o.rendezvous = url;
    o.rank = 0;
    o.size = 2;
    try {
      comm::Group::connect(o);
      FAIL() << url;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(url), std::string::npos) << e.what();
    }
  }
}

TEST(GroupBadInput, UnreachableRedis) {
  comm::GroupOptions o;
  o.rendezvous = "redis://127.0.0.1:1";  // nothing listens on port 1
  o.rank = 0;
  o.size = 2;
  try {
    comm::Group::connect(o);
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:1"), std::string::npos) << e.what();
  }
}

TEST(GroupBadInput, SendToSelfOrOutside) {
  spawn(2, [&](comm::Group& g) {
    EXPECT_THROW(g.send(g.rank(), 1, {}), InvalidArgument);
    EXPECT_THROW(g.send(7, 1, {}), InvalidArgument);
    EXPECT_THROW(g.recv(-1, 1), InvalidArgument);
  });
}

}  // namespace
}  // namespace dtrain::test

namespace dtrain::test {
namespace {

// A private redis-server on a loopback port, stopped on destruction.
class RedisServer {
 public:
  RedisServer() {
    port_ = 20000 + ::getpid() % 20000;
    pid_ = ::fork();
    if (pid_ == 0) {
      std::string port = std::to_string(port_);
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--loglevel", "warning", nullptr);
      ::_exit(127);
    }
    // Up when a store can connect.
    for (int i = 0; i < 200; ++i) {
      try {
        comm::open_store(comm::RendezvousUrl::parse(url()));
        return;
      } catch (const IoError&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
    }
  }
  ~RedisServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

TEST(GroupRedis, RendezvousThroughRedisTwice) {
  if (std::system("command -v redis-server > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "redis-server is not installed (scripts/setup.sh installs it)";
  }
  RedisServer redis;
  for (int round = 0; round < 2; ++round) {  // the second round meets keys of the first
    auto errors = run_threads(3, [&](int r) {
      comm::GroupOptions o;
      o.rendezvous = redis.url();
      o.rank = r;
      o.size = 3;
      o.host = "127.0.0.1";
      o.run_id = "redis-test";
      o.timeout = comm::Millis(20000);
      auto g = comm::Group::connect(o);
      uint64_t tag = g->next_tag();
      if (r != 0) {
        g->send(0, tag, pattern(10 + r, r));
      } else {
        for (int i = 0; i < 2; ++i) {
          auto m = g->recv(comm::AnyOf{{1, 2}}, tag);
          EXPECT_TRUE(m.bytes == pattern(10 + m.src, m.src));
        }
      }
    });
    for (auto& e : errors) ASSERT_FALSE(e) << what(e);
  }
}

}  // namespace
}  // namespace dtrain::test
