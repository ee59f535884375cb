// Rendezvous directories left by local launchers that died without cleaning up (SIGKILL, power
// loss). launch_local() makes one per job under the temp directory ("dtrain-rdzv-XXXXXX"), records
// its own pid in it (launcher.pid), and removes it at the end; a launcher killed with SIGKILL
// cannot. The next launch sweeps the leftovers: a directory whose launcher is no longer alive, or
// one without a readable pid file that is older than an hour (a launcher writes its pid right
// after creating the directory, so a fresh one without it may be a launcher starting now). A
// directory of a live launcher, or of another user, is never touched.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>

namespace dtrain::app {

// Name prefix of a launcher's rendezvous directory, and the file holding its pid.
inline constexpr char kRendezvousDirPrefix[] = "dtrain-rdzv-";
inline constexpr char kLauncherPidFile[] = "launcher.pid";

// Writes this process's pid into `dir`/launcher.pid (best effort: a directory without it is
// swept only once older than an hour).
void write_launcher_pid(const std::filesystem::path& dir);

// Removes the stale rendezvous directories under `temp_dir` (see above), never `keep` (the
// caller's own). Errors are ignored: this is tidying, never a reason to fail a launch. Returns
// how many directories were removed.
int remove_stale_rendezvous_dirs(const std::filesystem::path& temp_dir,
                                 const std::filesystem::path& keep = {},
                                 std::chrono::seconds unclaimed_after = std::chrono::hours(1));

}  // namespace dtrain::app
