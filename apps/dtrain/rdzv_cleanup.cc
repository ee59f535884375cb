#include "rdzv_cleanup.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

namespace dtrain::app {
namespace fs = std::filesystem;

namespace {

// The launcher pid recorded in `dir`, or -1 when there is none (yet) or it is unreadable.
pid_t recorded_pid(const fs::path& dir) {
  std::ifstream in(dir / kLauncherPidFile);
  long long pid = -1;
  if (!(in >> pid) || pid <= 0 || pid > (1LL << 22)) return -1;  // Linux pids are below 2^22
  return static_cast<pid_t>(pid);
}

// False only when no process `pid` exists. EPERM (another user's process) counts as alive.
bool alive(pid_t pid) {
  return ::kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace

void write_launcher_pid(const fs::path& dir) {
  std::ofstream(dir / kLauncherPidFile) << ::getpid() << "\n";
}

int remove_stale_rendezvous_dirs(const fs::path& temp_dir, const fs::path& keep,
                                 std::chrono::seconds unclaimed_after) {
  const std::string prefix = kRendezvousDirPrefix;
  std::error_code ec;
  int removed = 0;
  for (fs::directory_iterator it(temp_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& dir = it->path();
    if (dir.filename().string().rfind(prefix, 0) != 0) continue;
    std::error_code same_ec;
    if (!keep.empty() && fs::equivalent(dir, keep, same_ec)) continue;
    // Only our own real directories (not a link planted in a shared /tmp).
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) {
      continue;
    }
    const pid_t pid = recorded_pid(dir);
    if (pid > 0) {
      if (alive(pid)) continue;
    } else {
      const auto age =
          std::chrono::system_clock::now() - std::chrono::system_clock::from_time_t(st.st_mtime);
      if (age < unclaimed_after) continue;
    }
    std::error_code remove_ec;
    fs::remove_all(dir, remove_ec);
    if (!remove_ec) ++removed;
  }
  return removed;
}

}  // namespace dtrain::app
