// Fuzzes the IDX reader (src/data/idx.cc) on files of any content, plain or gzip.
// Input: u8 flags (bit 0: the file's name ends in ".gz"), then the file's bytes.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "dtrain/common/error.h"
#include "dtrain/data/idx.h"
#include "fuzz_input.h"

using namespace dtrain;

namespace {

std::string scratch(bool gz) {
  static const std::string base = [] {
    const char* shm = "/dev/shm";
    const std::filesystem::path dir =
        std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path();
    return (dir / ("dtrain_fuzz_idx." + std::to_string(::getpid()))).string();
  }();
  return gz ? base + ".gz" : base;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const bool gz = in.take<uint8_t>() & 1;
  const auto bytes = in.rest();
  const std::string path = scratch(gz);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
  try {
    const data::IdxArray a = data::read_idx(path);
    fuzz::check(a.data.size() == a.count() * data::element_size(a.type));
    fuzz::check(!a.dims.empty() && a.dims.size() <= 4);
  } catch (const Error&) {
  }
  std::remove(path.c_str());
  return 0;
}
