// Ranks as threads over real Gloo TCP on 127.0.0.1, sharing a fresh file rendezvous directory.
// Each thread's exception is collected and rethrown after all have joined.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/common/error.h"

namespace dtrain::test {

// A unique, empty directory under $TMPDIR, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string url() const { return "file://" + path_; }

 private:
  std::string path_;
};

comm::GroupOptions local_options(const TempDir& dir, int rank, int size,
                                 comm::Millis timeout = comm::Millis(20000));

// Runs fn(group) on `size` threads, each with its own connected Group. Rethrows the first
// exception (by rank) after joining all threads.
void spawn(int size, const std::function<void(comm::Group&)>& fn,
           comm::Millis timeout = comm::Millis(20000));

// Runs fn(rank) on `size` threads; returns each thread's exception (null if none).
std::vector<std::exception_ptr> run_threads(int size, const std::function<void(int)>& fn);

// The message of an exception_ptr of a std::exception, else "".
std::string what(const std::exception_ptr& e);

// Success when `fn` throws InvalidArgument whose message contains `fragment`.
template <typename Fn>
::testing::AssertionResult throws_invalid(Fn fn, const std::string& fragment) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    if (std::string(e.what()).find(fragment) != std::string::npos) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "message '" << e.what() << "' lacks '" << fragment << "'";
  }
  return ::testing::AssertionFailure() << "no InvalidArgument (wanted '" << fragment << "')";
}

#define EXPECT_INVALID(expr, fragment) EXPECT_TRUE(throws_invalid([&] { (void)(expr); }, fragment))

// The pid of the child of `parent` (a launcher) whose environment has DTRAIN_RANK=rank, from
// /proc; -1 if there is none (yet).
int child_with_rank(int parent, int rank);

}  // namespace dtrain::test
