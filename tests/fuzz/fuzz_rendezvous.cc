// Fuzzes the decoders of rendezvous store values (src/comm/rendezvous.cc, session.h): records as
// any process sharing the file or Redis store could have written them, read as a join record, a
// session record and a roster.
// Input: u8 group size (1 + x), then the record's bytes.
#include <string_view>

#include "comm/session.h"
#include "dtrain/common/error.h"
#include "fuzz_input.h"

using namespace dtrain;
using namespace dtrain::comm::internal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const int group_size = 1 + in.take<uint8_t>();
  const auto bytes = in.rest();
  const auto record =
      parse_record(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  if (const auto m = member_of(record)) {
    fuzz::check(m->rank >= 0 && m->size >= 1 && !m->token.empty());
    (void)m->who();
  }
  (void)describe_session(record, "the session");
  const int culprit = roster_culprit(record, group_size);
  fuzz::check(culprit >= -1 && culprit < group_size);
  return 0;
}
