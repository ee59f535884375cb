// A rendezvous store in a directory (a shared file system across hosts, or /tmp on one host).
// One file per key; a key's '/' becomes '%' so prefixes never need sub-directories. Writes go to a
// temporary name and are renamed into place, so a reader sees a whole value or none, and a key that
// already exists (a re-used directory) is overwritten instead of aborting.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/file.h"

namespace dtrain::comm {
namespace {

class FileStore : public Store {
 public:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {
    struct stat st {};
    if (::stat(dir_.c_str(), &st) != 0) {
      if (::mkdir(dir_.c_str(), 0777) != 0 && errno != EEXIST) {
        throw IoError(
            detail::concat("rendezvous directory ", dir_,
                           " does not exist and cannot be created: ", std::strerror(errno)));
      }
    } else if (!S_ISDIR(st.st_mode)) {
      throw InvalidArgument(detail::concat("rendezvous path ", dir_, " is not a directory"));
    }
  }

  void set(const std::string& key, const std::vector<char>& data) override {
    write_file_atomic(path(key), data, /*durable=*/false);
  }

  std::vector<char> get(const std::string& key) override {
    wait({key});
    auto value = try_get(key);
    if (!value) throw IoError(detail::concat("rendezvous: cannot read ", path(key)));
    return *value;
  }

  std::optional<std::vector<char>> try_get(const std::string& key) override {
    std::ifstream in(path(key), std::ios::binary);
    if (!in) return std::nullopt;
    return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  bool check(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) {
      if (::access(path(k).c_str(), R_OK) != 0) return false;
    }
    return true;
  }

  void remove(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) ::unlink(path(k).c_str());
  }

 private:
  std::string path(const std::string& key) const {
    std::string name = key;
    for (char& c : name) {
      if (c == '/') c = '%';
    }
    return dir_ + "/" + name;
  }
  std::string dir_;
};

}  // namespace

std::unique_ptr<Store> make_file_store(const std::string& dir) {
  return std::make_unique<FileStore>(dir);
}

}  // namespace dtrain::comm
