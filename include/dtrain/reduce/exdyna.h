// ExDyna (Yoon & Oh, CCGrid'24): gradient sparsification with exclusive dynamic partitions and an
// online threshold. Each bucket is cut into fine-grained blocks grouped into one partition per
// worker (runs of a fixed block order, see exdyna_partition.h); in step t worker r selects only
// inside partition (t + r) mod n, with a one-pass |g| >= lambda test, so the workers' index sets
// never overlap. Three collectives move a step: counts (allgather), indices (allgatherv), values at
// the union (allreduce). See
// ../shared/specs/exdyna.md and src/reduce/exdyna.cc.
//
// The pure pieces are exposed for tests and `dtrain bench compress`: blocks and partitions in
// exdyna_partition.h, threshold selection and control in exdyna_threshold.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtrain/reduce/exdyna_partition.h"
#include "dtrain/reduce/exdyna_threshold.h"
#include "dtrain/reduce/reducer.h"

namespace dtrain::reduce {

struct ExDynaOptions {
  double density = 0.01;  // target k / d, in (0, 1]
  // B: fine-grained blocks per bucket (fewer for buckets < 32 B floats). The spec's 1024 leaves
  // a small layer (the MLP's 10x256 output weights) in 5 blocks of 512, which 4 partitions cannot
  // share evenly; 4096 blocks of 128 do (imbalance medians 0.069 vs 0.025 on a layered stream,
  // tests/test_exdyna.cc; docs/results/2026-12-02/exdyna.md for real training).
  size_t blocks = 4096;
  // How blocks are laid out before the layout is cut into partitions: interleaved (default), so
  // each partition samples every layer of the bucket, or the spec's contiguous ranges.
  exdyna::BlockOrder order = exdyna::BlockOrder::kInterleaved;
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
  // Density warm-up (DGC): for the first `warmup` steps the density aimed at is
  // warmup_density(density, warmup, step) (reducer.h: 0.25 at step 0, falling geometrically to
  // `density` at step `warmup`, about 1.4% a step for warmup=235 and density 0.01, which the
  // threshold levels follow); 0 (the default): `density` from the start.
  uint64_t warmup = 0;
};

// Parses what follows "exdyna:": "" (defaults), "0.01" (the density), or key=value pairs
// "density=0.01,blocks=4096,order=interleaved|contiguous,up=1.005,down=0.995,band=1.1,balance=1.05,fast=1.1,lambda0=auto|spec|X,
// levels=64,spacing=1.005,momentum=0,warmup=0". up, down, band and fast act only with levels=1.
// Throws InvalidArgument naming the bad parameter or value and listing the valid ones.
ExDynaOptions parse_exdyna_options(const std::string& params);

// The exdyna reducer. State is kept per bucket index of the layout; a new layout starts every
// bucket afresh (partitions, threshold, residual); a bucket whose size differs from its state's
// is an InvalidArgument. A worker whose partition has nothing above lambda sends the
// partition's largest-magnitude element alone. Non-finite gradients are not filtered here (NaN
// is never selected and stays in the residual): the engine checks every bucket before reduce.
// Bytes count the payload of the ring collectives per rank (see exdyna.cc). The step reads and
// writes each element of grad, the residual (and the velocity) once: the selection is fused
// into the error-feedback pass; everything else touches only the selected indices.
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
  // Over the buckets of the latest step: "density" (k_sent / d), "density_target" (the
  // configured density; during warm-up the step aims at step_density()), "threshold" (the
  // lambda used, size-weighted mean over buckets), "imbalance" (n * sum of the per-bucket
  // maximum count / k_sent - 1), "k_sent" and "mean_density" (the mean of "density" over the
  // steps so far; kept in the state, so a resumed run continues it).
  std::vector<std::pair<std::string, double>> step_metrics() const override;
  // Every kPartitionCountsEvery steps: "partition_counts/<bucket>", the indices each partition
  // sent in the latest step (partition order, not rank order).
  std::vector<std::pair<std::string, std::vector<double>>> step_vectors() const override;
  static constexpr uint64_t kPartitionCountsEvery = 50;
  bool applies_momentum() const override { return options_.momentum > 0; }

  const ExDynaOptions& options() const { return options_; }
  // The density the current step aims at (warm-up), else options().density.
  double step_density() const { return density_; }
  size_t num_buckets() const { return buckets_.size(); }
  const Bucket& bucket(size_t i) const { return buckets_.at(i); }

 private:
  void on_layout(const Layout& previous) override;
  double measured_threshold(const Bucket& b, int part);
  template <typename Index>
  void reduce_bucket(Bucket& b, std::span<float> grad, uint64_t step, std::vector<Index>& mine,
                     std::vector<Index>& all);

  comm::Group& group_;
  ExDynaOptions options_;
  double density_ = 0;  // of the current step (warm-up)
  std::vector<Bucket> buckets_;
  // Scratch reused across calls: own and gathered indices (32-bit while d < 2^32), values.
  std::vector<uint32_t> mine32_, all32_;
  std::vector<uint64_t> mine64_, all64_;
  std::vector<float> values_;
  struct StepFigures {
    double d = 0, k_sent = 0, max_sum = 0, weighted_threshold = 0;
  } figures_;
  // The per-step densities of the steps before the latest: their count and sum.
  uint64_t density_steps_ = 0;
  double density_sum_ = 0;
  // (bucket, count per partition) of the latest step.
  std::vector<std::pair<size_t, std::vector<uint64_t>>> partition_counts_;
};

std::unique_ptr<GradientReducer> make_exdyna_reducer(const std::string& params, comm::Group& group);

}  // namespace dtrain::reduce
