// The rendezvous session protocol (described in include/dtrain/comm/rendezvous.h), implemented in
// rendezvous.cc; Group::rendezvous() runs it before Gloo connects the ranks it admitted.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/comm/rendezvous.h"

namespace dtrain::comm::internal {

struct MeetOptions {
  std::string where;  // "rendezvous at URL (run 'X', generation g)": opens every error
  std::string space;  // "<run id>/g<generation>": this group's keys
  int rank = 0;
  int size = 1;
  std::string build;  // BuildInfo text
  std::string job;    // job nonce, may be empty
  std::string host;   // this host's name, for messages
  std::chrono::milliseconds timeout{0};
  std::chrono::steady_clock::time_point deadline;
};

// A rank as its join record describes it.
struct Member {
  int rank = -1;
  int size = 0;
  std::string host;
  long long pid = 0;
  std::string token;
  std::string build;
  std::string job;
  std::string who() const;  // "host h, pid p"
};

struct Meeting {
  std::string prefix;  // "<space>/<session id>": where the admitted ranks put their keys
  std::vector<std::string> members;  // who() of each rank, by rank
};

// Meets the other ranks of the group by the deadline. Throws GroupError<TimeoutError> naming the
// ranks missing and what the store held instead, or GroupError<InvalidArgument> naming a rank of
// another build, job or world size.
Meeting meet(Store& store, const MeetOptions& options);

// The key this rank's join record has in a meeting (removed once the group is connected).
std::string join_key(const Meeting& meeting, int rank);

// A record in the store: "key=value" lines. Unknown keys are ignored, malformed lines skipped, and
// a record larger than any dtrain writes is refused (empty result), so a record of another program
// or an older format reads as incomplete rather than as anything else.
std::map<std::string, std::string> parse_record(std::string_view text);

// Decoders of parsed records, which any process sharing the store may have written: they accept
// any record. A join record's member (nullopt unless rank is in [0, 2^31), size in [1, 2^31) and
// the token is not empty); a session record described for an error message (ages saturate);
// the culprit a roster names (-1 unless a rank of a group of `size`).
std::optional<Member> member_of(const std::map<std::string, std::string>& record);
std::string describe_session(const std::map<std::string, std::string>& session,
                             const std::string& what);
int roster_culprit(const std::map<std::string, std::string>& roster, int size);

}  // namespace dtrain::comm::internal
