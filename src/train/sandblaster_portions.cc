#include "dtrain/train/sandblaster_portions.h"

#include <algorithm>

#include "dtrain/common/error.h"

namespace dtrain::train {

PortionScheduler::PortionScheduler(int portions, bool backup) : backup_(backup) {
  DT_ENFORCE(portions >= 1, "sandblaster: --portions must be >= 1, got ", portions);
  done_.assign(static_cast<size_t>(portions), 0);
  holders_.resize(static_cast<size_t>(portions));
  start_batch();
}

void PortionScheduler::start_batch() {
  const int n = portions();
  pending_.resize(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) pending_[static_cast<size_t>(p)] = n - 1 - p;  // 0 first
  std::fill(done_.begin(), done_.end(), 0);
  for (auto& h : holders_) h.clear();
  done_count_ = 0;
  duplicates_ = 0;
  backups_ = 0;
  std::fill(counted_by_.begin(), counted_by_.end(), 0);
}

int PortionScheduler::next(int replica) {
  DT_ENFORCE(replica >= 0, "sandblaster: replica id ", replica);
  if (complete()) return -1;
  if (!pending_.empty()) {
    const int p = pending_.back();
    pending_.pop_back();
    holders_[static_cast<size_t>(p)].insert(replica);
    return p;
  }
  if (!backup_) return -1;
  int best = -1;
  size_t fewest = 0;
  for (int p = 0; p < portions(); ++p) {
    const auto& h = holders_[static_cast<size_t>(p)];
    if (done_[static_cast<size_t>(p)] || h.count(replica)) continue;
    if (best < 0 || h.size() < fewest) {
      best = p;
      fewest = h.size();
    }
  }
  if (best >= 0) {
    holders_[static_cast<size_t>(best)].insert(replica);
    ++backups_;
  }
  return best;
}

bool PortionScheduler::finish(int replica, int portion) {
  DT_ENFORCE(portion >= 0 && portion < portions(), "sandblaster: replica ", replica,
             " returned portion ", portion, " of a batch of ", portions());
  holders_[static_cast<size_t>(portion)].erase(replica);
  if (done_[static_cast<size_t>(portion)]) {
    ++duplicates_;
    return false;
  }
  done_[static_cast<size_t>(portion)] = 1;
  ++done_count_;
  if (static_cast<size_t>(replica) >= counted_by_.size()) {
    counted_by_.resize(static_cast<size_t>(replica) + 1, 0);
  }
  ++counted_by_[static_cast<size_t>(replica)];
  return true;
}

void PortionScheduler::forget(int replica) {
  for (int p = 0; p < portions(); ++p) {
    auto& h = holders_[static_cast<size_t>(p)];
    if (h.erase(replica) && h.empty() && !done_[static_cast<size_t>(p)]) pending_.push_back(p);
  }
}

}  // namespace dtrain::train
