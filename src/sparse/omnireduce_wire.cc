// Decoders of OmniReduce's requests and replies (see omnireduce_internal.h for the wire format).
// The worker and the aggregator receive with the exact sizes their shared state predicts, so a
// size check here fails only for a caller that passes the wrong span (or the fuzzer); the
// pointers are what a faulty peer can get wrong, and each is checked against the layout before
// the protocol follows it.
#include <cstring>

#include "dtrain/common/error.h"
#include "omnireduce_internal.h"

namespace dtrain::sparse::detail {
namespace {

uint64_t word(std::span<const std::byte> msg, size_t i) {
  uint64_t v;
  std::memcpy(&v, msg.data() + i * sizeof(uint64_t), sizeof(v));
  return v;
}

void check_state(const Layout& l, std::span<const uint64_t> target, std::span<const uint64_t> ahead,
                 std::span<uint64_t> next) {
  DT_ENFORCE(target.size() == l.columns && ahead.size() == l.columns && next.size() == l.columns,
             "omnireduce: decoder state of ", target.size(), "/", ahead.size(), "/", next.size(),
             " columns for a layout of ", l.columns);
}

[[noreturn]] void bad_size(const char* what, size_t got, size_t want, uint64_t lane, uint64_t round,
                           const WireParty& who) {
  throw ProtocolError(dtrain::detail::concat(
      "omnireduce (tag ", who.tag, "): rank ", who.from, " sent a ", what, " of ", got,
      " bytes for lane ", lane, " in round ", round, " to rank ", who.me, ", expected ", want));
}

}  // namespace

void decode_request(const Layout& l, uint64_t lane, uint64_t round,
                    std::span<const uint64_t> target, std::span<const uint64_t> ahead,
                    std::span<const std::byte> msg, const WireParty& who,
                    std::span<uint64_t> next) {
  check_state(l, target, ahead, next);
  auto bad_pointer = [&](size_t c, uint64_t p, uint64_t after) {
    throw ProtocolError(dtrain::detail::concat(
        "omnireduce (tag ", who.tag, "): rank ", who.from, " sent look-ahead ", p, " for column ",
        c, " of lane ", lane, " in round ", round, " to aggregator rank ", who.me,
        ", not a block of that column after ", after));
  };
  std::copy(ahead.begin(), ahead.end(), next.begin());
  if (round == 0) {
    if (msg.size() != l.first_request_bytes()) {
      bad_size("request", msg.size(), l.first_request_bytes(), lane, round, who);
    }
    for (size_t c = 0; c < l.columns; ++c) {
      const uint64_t p = word(msg, c);
      if (!l.valid_pointer(lane, c, p, kEnd)) bad_pointer(c, p, kEnd);
      next[c] = p;
    }
    return;
  }
  size_t contributed = 0;
  for (size_t c = 0; c < l.columns; ++c) contributed += target[c] != kEnd && ahead[c] == target[c];
  if (msg.size() != l.request_bytes(contributed)) {
    bad_size("request", msg.size(), l.request_bytes(contributed), lane, round, who);
  }
  size_t i = 0;
  for (size_t c = 0; c < l.columns; ++c) {
    if (target[c] == kEnd || ahead[c] != target[c]) continue;
    const uint64_t p = word(msg, i++);
    if (!l.valid_pointer(lane, c, p, target[c])) bad_pointer(c, p, target[c]);
    next[c] = p;
  }
}

void decode_reply(const Layout& l, uint64_t lane, uint64_t round, std::span<const uint64_t> target,
                  std::span<const uint64_t> ahead, std::span<const std::byte> msg,
                  const WireParty& who, std::span<uint64_t> next) {
  check_state(l, target, ahead, next);
  size_t active = 0;
  for (size_t c = 0; c < l.columns && round > 0; ++c) active += target[c] != kEnd;
  if (msg.size() != l.reply_bytes(active)) {
    bad_size("reply", msg.size(), l.reply_bytes(active), lane, round, who);
  }
  for (size_t c = 0; c < l.columns; ++c) {
    const uint64_t p = word(msg, c);
    const bool ok = (round == 0 || target[c] != kEnd)
                        ? l.valid_pointer(lane, c, p, target[c]) && p <= ahead[c]
                        : p == kEnd;
    if (!ok) {
      throw ProtocolError(dtrain::detail::concat(
          "omnireduce (tag ", who.tag, "): aggregator rank ", who.from, " named block ", p,
          " as the next target of column ", c, " of lane ", lane, " in round ", round,
          " (previous target ", target[c], ", look-ahead of rank ", who.me, " ", ahead[c], ")"));
    }
    next[c] = p;
  }
}

}  // namespace dtrain::sparse::detail
