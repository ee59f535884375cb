#include "dtrain/common/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "dtrain/common/error.h"

namespace dtrain {

void write_file_atomic(const std::string& path, std::span<const char> bytes, bool durable) {
  // Unique per writer: several processes may replace the same file at once (rendezvous keys).
  const std::string tmp = detail::concat(path, ".tmp.", ::getpid(), ".", std::random_device{}());
  auto fail = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    throw IoError(detail::concat(what, " ", tmp, " (for ", path, "): ", std::strerror(err)));
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot create", errno);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      fail("write to", err);
    }
    done += static_cast<size_t>(n);
  }
  if (durable && ::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    fail("fsync of", err);
  }
  if (::close(fd) != 0) fail("close of", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename of", errno);
  if (durable) {
    std::string dir = std::filesystem::path(path).parent_path().string();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
}

}  // namespace dtrain
