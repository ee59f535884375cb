// Fuzzes the checkpoint envelope (src/common/envelope.cc) on files of any content; a file that
// opens must be exactly what seal() writes for its body.
// Input: u8 kind (bit 0: "checkpoint", else "k"), then the file's bytes.
#include <cstring>

#include "dtrain/common/envelope.h"
#include "dtrain/common/error.h"
#include "fuzz_input.h"

using namespace dtrain;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const char* kind = (in.take<uint8_t>() & 1) ? "checkpoint" : "k";
  const auto file = in.rest();
  try {
    const auto body = envelope::open(file, kind, "fuzz.ckpt");
    const auto again = envelope::seal(body, kind);
    fuzz::check(again.size() == file.size() &&
                std::memcmp(again.data(), file.data(), file.size()) == 0);
  } catch (const Error&) {
  }
  return 0;
}
