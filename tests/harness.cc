#include "harness.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "dtrain/common/error.h"

namespace dtrain::test {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/dtrain-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw IoError("mkdtemp failed for " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

comm::GroupOptions local_options(const TempDir& dir, int rank, int size, comm::Millis timeout) {
  comm::GroupOptions o;
  o.rendezvous = dir.url();
  o.rank = rank;
  o.size = size;
  o.host = "127.0.0.1";
  o.run_id = "test";
  o.timeout = timeout;
  return o;
}

std::vector<std::exception_ptr> run_threads(int size, const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

void spawn(int size, const std::function<void(comm::Group&)>& fn, comm::Millis timeout) {
  TempDir dir;
  auto errors = run_threads(size, [&](int r) {
    auto group = comm::Group::connect(local_options(dir, r, size, timeout));
    fn(*group);
  });
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

std::string what(const std::exception_ptr& e) {
  if (!e) return "";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "(non-std exception)";
  }
}

int child_with_rank(int parent, int rank) {
  namespace fs = std::filesystem;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string comm, state;
    int pid = 0, ppid = 0;
    stat >> pid >> comm >> state >> ppid;
    if (ppid != parent) continue;
    std::ifstream env(entry.path() / "environ");
    const std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    if (all.find("DTRAIN_RANK=" + std::to_string(rank) + '\0') != std::string::npos) return pid;
  }
  return -1;
}

}  // namespace dtrain::test
