// ExDyna (Yoon & Oh, CCGrid'24): gradient sparsification with exclusive dynamic partitions and an
// online threshold. Each bucket is cut into fine-grained blocks grouped into one contiguous
// partition per worker; in step t worker r selects only inside partition (t + r) mod n, with a
// one-pass |g| >= lambda test, so the workers' index sets never overlap. Three collectives move a
// step: counts (allgather), indices (allgatherv), values at the union (allreduce). See
// ../shared/specs/exdyna.md and src/reduce/exdyna.cc.
//
// The pure pieces (blocks and partitions, threshold selection, the threshold controller) are
// exposed here for tests and for `dtrain bench compress`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtrain/reduce/reducer.h"

namespace dtrain::reduce {

struct ExDynaOptions {
  double density = 0.01;  // target k / d, in (0, 1]
  size_t blocks = 1024;   // B: fine-grained blocks per bucket (fewer for buckets < 32 B floats)
  double up = 1.005;      // threshold gain when too many were sent (r > band)
  double down = 0.995;    // threshold gain when too few were sent (r < 1 / band)
  double band = 1.1;      // dead band of r = k_sent / k around 1
  double balance = 1.05;  // boundaries move for counts outside [avg / balance, avg * balance]
  // Largest threshold step per iteration when r is outside the band: lambda moves by
  // r^(1/8) capped at [1/fast, fast] where that exceeds the fixed gains, so it catches up with a
  // residual that builds up over the first ~1/density steps (the spec's 0.5% per step needs
  // hundreds). 1: the spec's fixed gains only.
  double fast = 1.1;
  // First threshold: kAutoLambda (default) measures it on the first step: every worker takes the
  // (k/n)-th largest magnitude of its partition, and the workers average those (one extra
  // allreduce of one float, once per bucket), so the density is on target from the start;
  // 0 ("spec"): the spec's 1 / (2 sqrt(k)), which the gains take hundreds of steps to correct on
  // real gradients; > 0: that value.
  static constexpr double kAutoLambda = -1;
  double lambda0 = kAutoLambda;
  // Levels of the threshold tried per step (1: the spec's rule alone). With L > 1 the one
  // selection pass collects the candidates at the lowest of L thresholds lambda * spacing^j,
  // j = -L/2 .. L - 1 - L/2, and counts them at every level; the count allgather carries those L
  // counts, every rank picks the same level whose total is nearest to k, sends that level's
  // indices and starts the next step from it. Same single pass, no extra message: k_sent lands
  // within about one level of k each step instead of drifting by the gains, and the threshold
  // jumps straight to where the counts say (up to spacing^(L/2) = 17% per step by default; the
  // fine spacing matters: near the tail the count moves ~7x faster than lambda, so 1.005 steps
  // the count by ~3.5%).
  int levels = 64;
  double spacing = 1.005;
  // Momentum correction (Lin et al., "Deep Gradient Compression", ICLR 2018), in [0, 1): 0 (the
  // default) leaves momentum to the optimizer. m > 0 keeps a local velocity u = m u + g per rank
  // and feeds u (not g) into the residual; u is zeroed where the union was sent (momentum factor
  // masking), so a coordinate's delayed update is not amplified again by a momentum optimizer
  // that only sees it once. Train with --optimizer sgd then (the trainer refuses momentum twice).
  double momentum = 0;
};

// Parses what follows "exdyna:": "" (defaults), "0.01" (the density), or key=value pairs
// "density=0.01,blocks=1024,up=1.005,down=0.995,band=1.1,balance=1.05,fast=1.1,lambda0=auto|spec|X,
// levels=64,spacing=1.005,momentum=0". up, down, band and fast act only with levels=1.
// Throws InvalidArgument naming the bad parameter or value and listing the valid ones.
ExDynaOptions parse_exdyna_options(const std::string& params);

namespace exdyna {

// Blocks and partitions of a vector of d elements. Blocks hold block_size() elements (a multiple
// of 32, at least 32), the last block also the remainder; a vector shorter than 32 * max_blocks
// gets d / 32 blocks (one block when d < 64). Partition p owns the contiguous blocks
// [first_block(p), first_block(p + 1)); partitions start even and are never smaller than
// min_blocks() = max(1, blocks / (4n)). A bucket with fewer blocks than partitions leaves some
// partitions empty (min_blocks() is 0 then).
class Partitions {
 public:
  Partitions() = default;
  Partitions(size_t d, size_t max_blocks, int n);
  // Restores saved boundaries (n + 1 block indices); throws InvalidArgument unless they start at
  // 0, end at num_blocks and never decrease.
  Partitions(size_t d, size_t block_size, std::vector<size_t> boundaries);

  size_t size() const { return d_; }
  int count() const { return static_cast<int>(bounds_.size()) - 1; }
  size_t block_size() const { return block_size_; }
  size_t num_blocks() const { return num_blocks_; }
  size_t min_blocks() const { return min_blocks_; }
  size_t first_block(int p) const { return bounds_[p]; }
  size_t blocks_in(int p) const { return bounds_[p + 1] - bounds_[p]; }
  // Element range [begin(p), end(p)) of partition p.
  size_t begin(int p) const { return block_begin(bounds_[p]); }
  size_t end(int p) const { return block_begin(bounds_[p + 1]); }
  const std::vector<size_t>& boundaries() const { return bounds_; }

  // The spec's dynamic allocation from last step's per-partition counts: with avg = sum / n, for
  // each adjacent pair (i, i + 1) in order, if c_i > balance * avg and c_{i+1} < avg / balance
  // partition i gives its last block to i + 1, and symmetrically; a partition never drops below
  // min_blocks(). Returns the number of boundaries moved.
  int rebalance(std::span<const uint64_t> counts, double balance = 1.05);

 private:
  size_t block_begin(size_t b) const { return b >= num_blocks_ ? d_ : b * block_size_; }

  size_t d_ = 0;
  size_t block_size_ = 0;
  size_t num_blocks_ = 0;
  size_t min_blocks_ = 0;
  std::vector<size_t> bounds_{0};
};

// Appends to `out` the indices i in [begin, end) with |values[i]| >= lambda, in increasing order,
// in one pass (NaN is never selected). `out` is not cleared.
void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint32_t>& out);
void select_threshold(std::span<const float> values, size_t begin, size_t end, float lambda,
                      std::vector<uint64_t>& out);

// The thresholds of the levels: lambda * spacing^j for j = -levels/2 .. levels - 1 - levels/2,
// increasing, as floats (what the selection compares with).
std::vector<float> level_thresholds(double lambda, int levels, double spacing);
// For candidates (indices into values, all with |values[i]| >= levels[0]) adds to counts[j] the
// number with |values[i]| >= levels[j], for every j.
template <typename Index>
void count_levels(std::span<const float> values, std::span<const Index> candidates,
                  std::span<const float> levels, std::span<int64_t> counts);
// The level whose total count is nearest to k; on ties the one nearest the middle level
// (totals.size() / 2, the current threshold), so counts that do not move with lambda (an
// all-zero bucket: every rank's forced single index) leave the threshold where it is.
int nearest_level(std::span<const int64_t> totals, double k);

// The index of the first element of largest magnitude in [begin, end) (begin < end).
size_t argmax_abs(std::span<const float> values, size_t begin, size_t end);

// lambda_0 = 1 / (2 sqrt(k)) with k = density * d (at least 1).
double initial_threshold(double density, size_t d);
// The online scaling rule: r = k_sent / k; lambda * up if r > band, lambda * down if
// r < 1 / band, else lambda.
double next_threshold(double lambda, uint64_t k_sent, double k, const ExDynaOptions& o);

}  // namespace exdyna

// The exdyna reducer. State is kept per bucket index of the layout; a new layout starts every
// bucket afresh (partitions, threshold, residual); a bucket whose size differs from its state's
// is an InvalidArgument. A worker whose partition has nothing above lambda sends the
// partition's largest-magnitude element alone. Non-finite gradients are not filtered here (NaN
// is never selected and stays in the residual): the engine checks every bucket before reduce.
// Bytes count the payload of the ring collectives per rank (see exdyna.cc). The threshold moves
// by the gains per step only, so a lambda_0 a factor f off needs about ln(f) / ln(up) steps to
// reach the target density: hence the measured first threshold (lambda0=auto) by default.
class ExDynaReducer : public GradientReducer {
 public:
  struct Bucket {
    exdyna::Partitions partitions;
    std::vector<float> residual;          // error feedback; after reduce, compensated minus sent
    std::vector<float> velocity;          // momentum correction's u (empty when momentum = 0)
    double threshold = 0;                 // lambda of the next step
    std::vector<uint64_t> worker_counts;  // indices each rank sent in the latest step
    uint64_t k_sent = 0;                  // their sum
  };

  ExDynaReducer(comm::Group& group, ExDynaOptions options);
  void begin_step(uint64_t step) override;
  void reduce(size_t bucket, std::span<float> grad) override;
  std::string name() const override { return "exdyna"; }
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> state) override;
  // Over the buckets of the latest step: "density" (k_sent / d), "density_target", "threshold"
  // (the lambda used, size-weighted mean over buckets), "imbalance" (n * sum of the per-bucket
  // maximum count / k_sent - 1) and "k_sent".
  std::vector<std::pair<std::string, double>> step_metrics() const override;
  bool applies_momentum() const override { return options_.momentum > 0; }

  const ExDynaOptions& options() const { return options_; }
  size_t num_buckets() const { return buckets_.size(); }
  const Bucket& bucket(size_t i) const { return buckets_.at(i); }

 private:
  void on_layout(const Layout& previous) override;
  double measured_threshold(std::span<const float> c, size_t begin, size_t end);
  template <typename Index>
  void reduce_bucket(Bucket& b, std::span<float> grad, uint64_t step, std::vector<Index>& mine,
                     std::vector<Index>& all);

  comm::Group& group_;
  ExDynaOptions options_;
  std::vector<Bucket> buckets_;
  // Scratch reused across calls: own and gathered indices (32-bit while d < 2^32), values.
  std::vector<uint32_t> mine32_, all32_;
  std::vector<uint64_t> mine64_, all64_;
  std::vector<float> values_;
  struct StepFigures {
    double d = 0, k_sent = 0, max_sum = 0, weighted_threshold = 0;
  } figures_;
};

std::unique_ptr<GradientReducer> make_exdyna_reducer(const std::string& params, comm::Group& group);

}  // namespace dtrain::reduce
