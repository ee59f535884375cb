// OmniReduce entry point: call agreement, block geometry, and the two roles of a rank.
//
// Works as follows. The tensor is cut into blocks of `block` floats; a message carries one block
// from each of `columns` (blocks_per_message) columns. Message rows are dealt round-robin to lanes
// (aggregator, slot), lane L to aggregator L % A, so each aggregator owns every A-th row and each
// of its slots walks its own columns. Aggregator a runs on worker a % N (colocated: a thread
// beside the worker) or on dedicated rank N + a % servers. Per lane the protocol is a
// self-clocked stream of rounds:
//   - round 0: each worker sends, unconditionally, its look-ahead per column (first non-zero
//     block, or kEnd); the aggregator replies with the targets: the minimum look-ahead per column.
//   - round k: a worker whose look-ahead equals a column's target sends that block and its next
//     look-ahead in the column; the others send nothing for it (the aggregator knows they are not
//     involved, their look-ahead is larger). The aggregator sums the contributions in rank order
//     into a zeroed block, and replies to every worker with the sums and the next targets.
//   - the lane ends when every target is kEnd. Blocks zero everywhere are never targeted, never
//     travel, and keep their local zeros.
// A worker talks to the aggregators on other ranks only: a colocated aggregator reads its own
// rank's blocks from memory and writes the sums back. The calling thread draws the tag once;
// requests and replies of lane L use their own sub-channels, so the two threads never share a
// slot. A dedicated aggregator learns the tensor size from the call handshake.
#include "dtrain/sparse/omnireduce.h"

#include <cstring>
#include <exception>
#include <thread>

#include "dtrain/common/error.h"
#include "omnireduce_internal.h"

namespace dtrain::sparse {
namespace detail {

Layout::Layout(size_t n_, size_t block_, size_t columns_, int workers_, int aggregators_,
               int servers_, int slots_)
    : n(n_),
      block(block_),
      columns(columns_),
      workers(workers_),
      aggregators(aggregators_),
      servers(servers_),
      slots(slots_) {
  // Rounded up without n + block - 1, which wraps for an n near 2^64 (a dedicated aggregator
  // takes n from rank 0's call descriptor).
  blocks = n / block + (n % block != 0);
  const uint64_t rows = blocks / columns + (blocks % columns != 0);
  const uint64_t lane_count = static_cast<uint64_t>(aggregators) * slots;
  lanes = std::min(rows, lane_count);
  stride = lane_count * columns;
}

bool Layout::valid_pointer(uint64_t lane, size_t c, uint64_t p, uint64_t after) const {
  if (p == kEnd) return true;
  const uint64_t first = first_block(lane, c);
  if (p >= blocks || p < first || (p - first) % stride != 0) return false;
  return after == kEnd || p > after;
}

// Whether any of the len floats is non-zero (-0.0 counts as zero, NaN as non-zero): an OR of the
// bit patterns without the sign, which the compiler vectorises.
bool any_nonzero(const float* p, size_t len) {
  uint32_t acc = 0;
  for (size_t i = 0; i < len; ++i) {
    uint32_t u;
    std::memcpy(&u, p + i, sizeof(u));
    acc |= u << 1;
  }
  return acc != 0;
}

uint64_t Context::next_nonzero(uint64_t b, uint64_t& found) const {
  for (; b < layout->blocks; b += layout->stride) {
    const uint64_t row = b / layout->columns;
    if (!row_scanned[row]) {
      const uint64_t last = std::min<uint64_t>((row + 1) * layout->columns, layout->blocks);
      for (uint64_t x = row * layout->columns; x < last; ++x) {
        nonzero[x] = any_nonzero(data.data() + x * layout->block, layout->elems(x));
      }
      row_scanned[row] = 1;
    }
    if (nonzero[b]) {
      ++found;
      return b;
    }
  }
  return kEnd;
}

void Context::read_block(uint64_t b, float* out) const {
  const size_t len = layout->elems(b);
  std::memcpy(out, data.data() + b * layout->block, len * sizeof(float));
  std::fill(out + len, out + layout->block, 0.0f);
}

void Context::write_block(uint64_t b, const float* in) const {
  std::memcpy(data.data() + b * layout->block, in, layout->elems(b) * sizeof(float));
}

}  // namespace detail

namespace {

// What a rank brings to a call. A dedicated aggregator does not know n (kUnknown) and adopts
// the workers'.
struct CallDescriptor {
  static constexpr uint64_t kUnknown = UINT64_MAX;
  uint64_t n = 0;
  uint64_t block = 0;
  uint64_t columns = 0;
  uint64_t slots = 0;
  uint64_t aggregators = 0;
  uint64_t servers = 0;
  bool agrees_with(const CallDescriptor& o) const {
    return (n == o.n || n == kUnknown || o.n == kUnknown) && block == o.block &&
           columns == o.columns && slots == o.slots && aggregators == o.aggregators &&
           servers == o.servers;
  }
};

std::string describe(const CallDescriptor& d) {
  return dtrain::detail::concat(
      "omnireduce of ",
      d.n == CallDescriptor::kUnknown ? std::string("? (dedicated aggregator)")
                                      : std::to_string(d.n),
      " floats (block ", d.block, ", ", d.columns, " blocks per message, ", d.slots, " slots, ",
      d.aggregators, " aggregators, ", d.servers, " dedicated)");
}

// Every rank sends its descriptor to every peer and compares all it receives, so each rank of a
// disagreeing call finds the mismatch itself (a ring check would let a rank with nothing to do
// return before the others' notice arrives). Returns the tensor size (rank 0's, a worker's).
uint64_t handshake(comm::Group& g, uint64_t tag, comm::Clock::time_point deadline,
                   const CallDescriptor& mine) {
  const int n = g.size();
  const int me = g.rank();
  CallDescriptor out = mine;
  std::vector<CallDescriptor> theirs(n);
  auto send_buf = g.buffer(&out, sizeof(out));
  std::vector<std::unique_ptr<comm::Buffer>> recv_bufs(n);
  const uint64_t slot = comm::Group::slot(tag, 0);
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    recv_bufs[p] = g.buffer(&theirs[p], sizeof(CallDescriptor));
    recv_bufs[p]->recv(p, slot, 0, sizeof(CallDescriptor));
    send_buf->send(p, slot, 0, sizeof(out));
  }
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    int peer[1] = {p};
    recv_bufs[p]->wait_recv({"omnireduce", tag, peer, deadline});
    send_buf->wait_send({"omnireduce", tag, peer, deadline});
  }
  for (int p = 0; p < n; ++p) {
    if (p == me || theirs[p].agrees_with(mine)) continue;
    g.fail(
        comm::Group::FailKind::kProtocol, p,
        dtrain::detail::concat("omnireduce (tag ", tag, "): ranks disagree: rank ", p, " called ",
                               describe(theirs[p]), ", rank ", me, " called ", describe(mine)));
  }
  return me == 0 ? mine.n : theirs[0].n;
}

// Makes sure a failure on one thread of this rank stops the other one: a failed group aborts
// every wait registered with it.
void poison(comm::Group& g, const std::exception_ptr& error) {
  if (g.poisoned()) return;
  auto kind = comm::Group::FailKind::kIo;
  std::string message;
  try {
    std::rethrow_exception(error);
  } catch (const ProtocolError& e) {
    kind = comm::Group::FailKind::kProtocol;
    message = e.what();
  } catch (const TimeoutError& e) {
    kind = comm::Group::FailKind::kTimeout;
    message = e.what();
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
    message = "unknown exception";
  }
  try {
    g.fail(kind, -1, dtrain::detail::concat("omnireduce on rank ", g.rank(), ": ", message));
  } catch (...) {
    // fail() always throws; the caller rethrows the original error.
  }
}

// Joins on every path out of omnireduce(), so the aggregator never outlives the data it uses.
struct Joiner {
  std::thread thread;
  ~Joiner() {
    if (thread.joinable()) thread.join();
  }
};

}  // namespace

OmniReduceStats omnireduce(const OmniReduceOptions& o) {
  DT_ENFORCE(o.group != nullptr, "omnireduce: no group");
  comm::Group& g = *o.group;
  const int size = g.size();
  DT_ENFORCE(o.block > 0 && o.block <= (size_t{1} << 24), "omnireduce: block is ", o.block,
             ", expected 1 .. 2^24 elements");
  DT_ENFORCE(o.blocks_per_message > 0 && o.blocks_per_message <= (size_t{1} << 16),
             "omnireduce: blocks_per_message is ", o.blocks_per_message, ", expected 1 .. 65536");
  DT_ENFORCE(o.slots > 0 && o.slots <= (1 << 16), "omnireduce: slots is ", o.slots,
             ", expected 1 .. 65536");
  DT_ENFORCE(o.servers >= 0 && o.servers < size, "omnireduce: ", o.servers,
             " dedicated aggregators in a group of ", size,
             " ranks (at least one must be a worker)");
  DT_ENFORCE(o.aggregators >= 0 && o.aggregators <= (1 << 16), "omnireduce: aggregators is ",
             o.aggregators, ", expected 0 (one per worker or server) .. 65536");
  DT_ENFORCE(o.data.data() != nullptr || o.data.empty(), "omnireduce: data is null");
  const int workers = size - o.servers;
  const bool is_server = g.rank() >= workers;
  DT_ENFORCE(!is_server || o.data.empty(), "omnireduce: rank ", g.rank(),
             " is a dedicated aggregator (the last ", o.servers, " of ", size,
             " ranks) but was given ", o.data.size(), " floats; aggregators take no data");
  const int aggregators = o.aggregators ? o.aggregators : (o.servers ? o.servers : workers);
  const uint64_t max_lanes = static_cast<uint64_t>(aggregators) * o.slots;
  DT_ENFORCE(detail::Layout::reply_sub(max_lanes) <= comm::Group::kMaxSub,
             "omnireduce: ", aggregators, " aggregators x ", o.slots,
             " slots need more sub-channels than a tag has");

  const uint64_t tag = o.tag ? o.tag : g.next_tag();
  const auto deadline = g.deadline(o.timeout);
  uint64_t n = is_server ? o.server_count : o.data.size();
  if (size > 1 && o.verify) {
    const CallDescriptor mine{is_server ? CallDescriptor::kUnknown : n,
                              o.block,
                              o.blocks_per_message,
                              static_cast<uint64_t>(o.slots),
                              static_cast<uint64_t>(aggregators),
                              static_cast<uint64_t>(o.servers)};
    n = handshake(g, tag, deadline, mine);
  }

  const detail::Layout layout(n, o.block, o.blocks_per_message, workers, aggregators, o.servers,
                              o.slots);
  OmniReduceStats stats;
  // Non-zero map of the input, filled lazily a message row at a time (see Context).
  std::vector<uint8_t> nonzero, row_scanned;
  if (!is_server && size > 1) {
    nonzero.resize(layout.blocks);
    row_scanned.assign((layout.blocks + layout.columns - 1) / layout.columns, 0);
  }
  const detail::Context ctx{&g, tag, deadline, &layout, o.data, nonzero, row_scanned};
  if (size == 1) {
    for (uint64_t b = 0; b < layout.blocks; ++b) {
      stats.blocks_nonzero_local +=
          detail::any_nonzero(o.data.data() + b * o.block, layout.elems(b));
    }
    stats.blocks_union = stats.blocks_nonzero_local;
    return stats;
  }

  detail::Counters worker_counters, aggregator_counters;
  std::exception_ptr worker_error, aggregator_error;
  bool hosts_lanes = false;
  for (uint64_t lane = 0; lane < layout.lanes && !hosts_lanes; ++lane) {
    hosts_lanes = layout.host_of_lane(lane) == g.rank();
  }
  auto aggregate = [&] {
    try {
      detail::run_aggregator(ctx, aggregator_counters);
    } catch (...) {
      aggregator_error = std::current_exception();
      poison(g, aggregator_error);
    }
  };
  if (is_server) {
    if (hosts_lanes) aggregate();
  } else {
    Joiner aggregator;
    if (hosts_lanes) aggregator.thread = std::thread(aggregate);
    try {
      detail::run_worker(ctx, worker_counters);
    } catch (...) {
      worker_error = std::current_exception();
      poison(g, worker_error);
    }
  }
  if (worker_error) std::rethrow_exception(worker_error);
  if (aggregator_error) std::rethrow_exception(aggregator_error);
  stats.blocks_union = is_server ? aggregator_counters.blocks_union
                                 : worker_counters.blocks_union + aggregator_counters.blocks_union;
  stats.blocks_nonzero_local = worker_counters.blocks_nonzero + aggregator_counters.blocks_nonzero;
  stats.bytes_sent = worker_counters.bytes_sent + aggregator_counters.bytes_sent;
  stats.bytes_received = worker_counters.bytes_received + aggregator_counters.bytes_received;
  return stats;
}

}  // namespace dtrain::sparse
