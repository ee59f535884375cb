// Sandblaster's load balancing: one batch cut into many portions, handed out on request, with
// backup tasks at the end of the batch (DistBelief; MapReduce's backup tasks).
//
//   PortionScheduler s(64, /*backup=*/true);
//   s.start_batch();
//   int p = s.next(replica);        // -1: nothing to give this replica now
//   if (s.finish(replica, p)) ...   // true for the first result of p only: count it
//   s.complete();                   // every portion has its one counted result
//
// A replica asks for the next portion when it finished one, so fast replicas do more. Once every
// portion is handed out, an idle replica gets a copy of one still outstanding (with backup on):
// the one with the fewest copies in flight, never one it holds already. The first result of a
// portion counts; any later one is a duplicate and is dropped (counted in duplicates()). A replica
// that died holding a portion needs nothing else: its portion is outstanding, and an idle replica
// takes a backup copy of it. Pure logic, no I/O: the coordinator drives it (train/sandblaster.cc).
#pragma once

#include <cstdint>
#include <set>
#include <vector>

namespace dtrain::train {

class PortionScheduler {
 public:
  PortionScheduler(int portions, bool backup);

  int portions() const { return static_cast<int>(done_.size()); }
  // A new batch: every portion pending, none done; the batch's counters restart.
  void start_batch();
  // The portion replica `r` computes next, or -1 when none is to be given now (the batch is
  // complete, or everything is handed out and backups are off or already held by `r`).
  int next(int replica);
  // Replica `r` returned portion `p` of this batch: true when this is p's first result.
  bool finish(int replica, int portion);
  // Replica `r` is gone (the shards count it dead): it holds nothing any more, and a portion
  // only it held is pending again (so the batch completes with backups off too).
  void forget(int replica);
  bool complete() const { return done_count_ == portions(); }
  bool done(int portion) const { return done_.at(static_cast<size_t>(portion)) != 0; }

  // This batch: results dropped as duplicates, backup copies handed out, and counted results
  // per replica.
  int duplicates() const { return duplicates_; }
  int backups() const { return backups_; }
  const std::vector<int>& counted_by() const { return counted_by_; }

 private:
  bool backup_;
  std::vector<int> pending_;  // not yet handed out, in order (back = next)
  std::vector<char> done_;
  std::vector<std::set<int>> holders_;  // replicas computing each portion
  int done_count_ = 0;
  int duplicates_ = 0;
  int backups_ = 0;
  std::vector<int> counted_by_;  // indexed by replica id
};

}  // namespace dtrain::train
