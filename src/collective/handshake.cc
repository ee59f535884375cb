#include "handshake.h"

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"
#include "dtrain/common/random.h"

namespace dtrain::collective::detail {

const char* kind_name(uint32_t kind) {
  switch (kind) {
    case kAllreduce:
      return "allreduce";
    case kReduceScatter:
      return "reduce_scatter";
    case kAllgather:
      return "allgather";
    case kAllgatherv:
      return "allgatherv";
    case kBroadcast:
      return "broadcast";
    default:
      return "unknown collective";
  }
}

uint64_t hash_counts(std::span<const size_t> counts) {
  Fnv1a h;
  for (size_t c : counts) h.value(static_cast<uint64_t>(c));
  return h.digest();
}

namespace {

std::string describe(const CallDescriptor& d) {
  std::string s = dtrain::detail::concat(kind_name(d.kind), " of ", d.count, " ",
                                         name(static_cast<DataType>(d.dtype)));
  if (d.kind == kAllreduce || d.kind == kReduceScatter) {
    s += dtrain::detail::concat(" (", name(static_cast<ReduceOp>(d.op)), ")");
  }
  if (d.kind == kAllreduce) {
    s += dtrain::detail::concat(" by ", name(static_cast<AllreduceAlgorithm>(d.algorithm)));
  }
  if (d.segment != 0) s += dtrain::detail::concat(" in segments of ", d.segment, " elements");
  if (d.kind == kBroadcast) s += dtrain::detail::concat(" from root ", d.root);
  if (d.kind == kAllgatherv || d.kind == kReduceScatter) {
    s += dtrain::detail::concat(" with per-rank counts hash ", d.counts_hash);
  }
  return s;
}

}  // namespace

uint64_t call_salt(const CallDescriptor& d) {
  Fnv1a fnv;
  for (uint64_t v : {uint64_t{d.kind}, uint64_t{d.dtype}, uint64_t{d.op},
                     static_cast<uint64_t>(static_cast<int64_t>(d.root)), d.count, d.counts_hash,
                     uint64_t{d.algorithm}, d.segment}) {
    fnv.value(v);
  }
  // The finalizer, so that every input bit moves the 23 bits kept.
  const uint64_t h = mix64(fnv.digest());
  uint64_t salt = h & ((uint64_t{1} << 23) - 1);
  if (salt == 0) salt = 1;
  return salt << 40;
}

uint64_t agree(comm::Group& group, uint64_t tag, comm::Clock::time_point deadline,
               const CallDescriptor& mine, bool verify) {
  if (verify) {
    handshake(group, tag, deadline, mine);
    return 0;
  }
  group.check_usable();
  return call_salt(mine);
}

void handshake(comm::Group& group, uint64_t tag, comm::Clock::time_point deadline,
               const CallDescriptor& mine) {
  const int n = group.size();
  if (n == 1) return;
  const int right = (group.rank() + 1) % n;
  const int left = (group.rank() + n - 1) % n;
  CallDescriptor theirs{};
  CallDescriptor out = mine;
  auto rb = group.buffer(&theirs, sizeof(theirs));
  auto sb = group.buffer(&out, sizeof(out));
  const char* op = kind_name(mine.kind);
  int l[1] = {left};
  int r[1] = {right};
  rb->recv(left, comm::Group::slot(tag, 0), 0, sizeof(theirs));
  sb->send(right, comm::Group::slot(tag, 0), 0, sizeof(out));
  rb->wait_recv({op, tag, l, deadline});
  sb->wait_send({op, tag, r, deadline});
  if (!(theirs == mine)) {
    group.fail(comm::Group::FailKind::kProtocol, left,
               dtrain::detail::concat(op, " (tag ", tag, "): ranks disagree: rank ", left,
                                      " called ", describe(theirs), ", rank ", group.rank(),
                                      " called ", describe(mine)));
  }
}

}  // namespace dtrain::collective::detail
