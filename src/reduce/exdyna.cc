// The ExDyna reducer: one step of the spec's protocol per bucket.
//
// Works as follows, on every rank r of n, for bucket b in step t:
//  1. Compensate and select, in one pass over the bucket: residual += grad (the residual then
//     holds the compensated gradient c; with momentum correction u = m u + grad first and
//     residual += u), grad = 0, and for the blocks of partition (t + r) mod n the candidates
//     |c_i| >= lambda_0, the lowest of L threshold levels lambda * spacing^j, are collected while
//     c_i is in registers. Each element of grad, residual (and velocity) is read and written once.
//  2. Count the candidates at every level (a histogram of the few candidates, not of the bucket).
//  3. Exchange: allgather of the counts (int64; L per rank, after which every rank picks the
//     level whose total is nearest to k and drops its candidates below it), allgatherv of the
//     indices (uint32 while d < 2^32, else 64-bit) into the union U, laid out in rank order; the
//     partitions are disjoint, so U has no duplicates (checked: every index must lie in its
//     sender's partition). Each rank gathers its own c at U, allreduce (SUM) of that value
//     vector, divide by n: every rank holds bit-identical averages. A worker whose partition has
//     nothing above lambda sends its partition's largest-magnitude element alone.
//  4. Apply: grad[U] = average (grad is zero elsewhere since step 1); residual[U] = 0 (error
//     feedback); velocity[U] = 0 (momentum factor masking).
//  5. Adapt, identically everywhere from the gathered counts: lambda follows the online scaling
//     rule (L = 1) or becomes the level picked (L > 1); the partitions rebalance from the
//     per-partition counts (partition (t + w) mod n sent worker w's count).
// Bytes (payload, per rank, our ring collectives): counts (n - 1) * L * 8 each way; indices: sent
// the union less rank r + 1's block, received the union less its own; values 2 (n - 1) / n * |U| *
// 4 each way, as DenseReducer counts a ring allreduce.
#include "dtrain/reduce/exdyna.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "dtrain/collective/allgather.h"
#include "dtrain/collective/allreduce.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/exdyna_wire.h"
#include "dtrain/reduce/params.h"

namespace dtrain::reduce {
namespace {

using collective::DataType;

constexpr uint32_t kStateMagic = 0x45584459;  // "EXDY"
constexpr uint32_t kStateVersion = 4;  // 4: mean density; 3: block order; 2: velocity; all read

template <typename Index>
constexpr DataType index_dtype() {
  return sizeof(Index) == 4 ? DataType::kInt32 : DataType::kInt64;
}

}  // namespace

ExDynaOptions parse_exdyna_options(const std::string& params) {
  const Params p = parse_params("exdyna", params,
                                {"density", "blocks", "order", "up", "down", "band", "balance",
                                 "fast", "lambda0", "levels", "spacing", "momentum", "warmup"});
  ExDynaOptions o;
  o.density = p.get_double("density", o.density, 0, 1, /*lo_open=*/true);
  o.blocks = p.get_size("blocks", o.blocks, 1, size_t{1} << 30);
  const std::string order = p.get_string("order", exdyna::name(o.order));
  DT_ENFORCE(order == "interleaved" || order == "contiguous", "--reduce exdyna: order=", order,
             " is not interleaved or contiguous");
  o.order =
      order == "interleaved" ? exdyna::BlockOrder::kInterleaved : exdyna::BlockOrder::kContiguous;
  o.up = p.get_double("up", o.up, 1, 2);
  o.down = p.get_double("down", o.down, 0, 1, /*lo_open=*/true);
  o.band = p.get_double("band", o.band, 1, 10);
  o.balance = p.get_double("balance", o.balance, 1, 10);
  o.fast = p.get_double("fast", o.fast, 1, 2);
  o.levels = static_cast<int>(p.get_size("levels", static_cast<size_t>(o.levels), 1, 64));
  o.spacing = p.get_double("spacing", o.spacing, 1, 2, /*lo_open=*/true);
  o.momentum = p.get_double("momentum", o.momentum, 0, 1, false, /*hi_open=*/true);
  o.warmup = p.get_size("warmup", o.warmup, 0, std::numeric_limits<size_t>::max());
  const std::string lambda0 = p.get_string("lambda0", "auto");
  if (lambda0 == "auto") {
    o.lambda0 = ExDynaOptions::kAutoLambda;
  } else if (lambda0 == "spec") {
    o.lambda0 = 0;
  } else {
    o.lambda0 = p.get_double("lambda0", 0, 0, 1e30);
  }
  return o;
}

ExDynaReducer::ExDynaReducer(comm::Group& group, ExDynaOptions options)
    : group_(group), options_(options), density_(options.density) {}

double ExDynaReducer::measured_threshold(const Bucket& b, int part) {
  // The (k/n)-th largest magnitude of this worker's partition, averaged over the workers.
  const int n = group_.size();
  const std::vector<float>& c = b.residual;
  std::vector<float> mag;
  mag.reserve(b.partitions.elements_in(part));
  for (const auto& [begin, end] : b.partitions.runs(part)) {
    for (size_t i = begin; i < end; ++i) mag.push_back(std::fabs(c[i]));
  }
  double lambda = 0;
  if (!mag.empty()) {
    const double want = density_ * double(c.size()) / n;
    const size_t kth = std::min(mag.size() - 1, static_cast<size_t>(std::max(want, 1.0)) - 1);
    std::nth_element(mag.begin(), mag.begin() + kth, mag.end(), std::greater<float>());
    lambda = mag[kth];
  }
  collective::AllreduceOptions ar(group_);
  ar.output = collective::View(&lambda, 1, DataType::kFloat64);
  ar.op = collective::ReduceOp::kAvg;
  collective::allreduce(ar);
  // An all-zero start would select everything: fall back to the spec's value.
  return lambda > 0 ? lambda : exdyna::initial_threshold(density_, c.size());
}

void ExDynaReducer::begin_step(uint64_t step) {
  GradientReducer::begin_step(step);
  if (figures_.d > 0) {  // the previous step's density joins the mean
    density_sum_ += figures_.k_sent / figures_.d;
    ++density_steps_;
  }
  figures_ = {};
  partition_counts_.clear();
  density_ = warmup_density(options_.density, options_.warmup, step);
}

void ExDynaReducer::on_layout(const Layout& previous) {
  // Partitions, thresholds and residuals belong to a bucket of the old layout: start afresh.
  if (!previous.buckets.empty()) buckets_.clear();
}

void ExDynaReducer::reduce(size_t index, std::span<float> grad) {
  check_bucket(index, grad.size());
  const uint64_t step = this->step();
  DT_ENFORCE(index <= buckets_.size(), "exdyna: bucket ", index, " of step ", step,
             " comes before bucket ", buckets_.size(), " was ever reduced");
  if (index == buckets_.size()) {
    Bucket b;
    // Each bucket its own block order (seeded by its index), the same on every rank.
    b.partitions = exdyna::Partitions(grad.size(), options_.blocks, group_.size(), options_.order,
                                      /*seed=*/index);
    b.residual.assign(grad.size(), 0.0f);
    if (options_.momentum > 0) b.velocity.assign(grad.size(), 0.0f);
    b.threshold = options_.lambda0 > 0    ? options_.lambda0
                  : options_.lambda0 == 0 ? exdyna::initial_threshold(density_, grad.size())
                                          : 0.0;  // measured on the first step (reduce_bucket)
    b.worker_counts.assign(group_.size(), 0);
    buckets_.push_back(std::move(b));
  }
  Bucket& b = buckets_[index];
  DT_ENFORCE(b.residual.size() == grad.size(), "exdyna: bucket ", index, " of step ", step, " has ",
             grad.size(), " elements, but its state (residual, partitions) was made for ",
             b.residual.size(), "; buckets must keep their sizes and order across steps");
  DT_ENFORCE(b.velocity.empty() || b.velocity.size() == grad.size(), "exdyna: bucket ", index,
             " has a velocity of ", b.velocity.size(), " elements for ", grad.size());
  if (options_.momentum > 0 && b.velocity.empty()) b.velocity.assign(grad.size(), 0.0f);
  if (grad.empty()) return;  // every rank has the same bucket sizes, so none communicates
  if (grad.size() <= std::numeric_limits<uint32_t>::max()) {
    reduce_bucket(b, grad, step, mine32_, all32_);
  } else {
    reduce_bucket(b, grad, step, mine64_, all64_);
  }
}

template <typename Index>
void ExDynaReducer::reduce_bucket(Bucket& b, std::span<float> grad, uint64_t step,
                                  std::vector<Index>& mine, std::vector<Index>& all) {
  const int n = group_.size();
  const int rank = group_.rank();
  const size_t d = grad.size();
  exdyna::Partitions& parts = b.partitions;
  float* c = b.residual.data();
  float* u = b.velocity.empty() ? nullptr : b.velocity.data();
  const auto m = static_cast<float>(options_.momentum);
  const int part = static_cast<int>((step % n + rank) % n);
  const bool first = b.threshold == 0.0;  // lambda0=auto: measured after compensating
  const int levels = options_.levels;
  std::vector<float> thresholds;
  if (!first) thresholds = exdyna::level_thresholds(b.threshold, levels, options_.spacing);

  // Step 1: one pass; the own partition's runs also collect the candidates at the lowest level.
  mine.clear();
  parts.for_each_run(part, [&](size_t begin, size_t end, bool owned) {
    exdyna::compensate_select<Index>(c, grad.data(), u, m, begin, end, first ? 0.0f : thresholds[0],
                                     !first && owned ? &mine : nullptr);
  });
  if (first) {
    b.threshold = measured_threshold(b, part);
    thresholds = exdyna::level_thresholds(b.threshold, levels, options_.spacing);
    for (const auto& [begin, end] : parts.runs(part)) {
      exdyna::select_threshold(b.residual, begin, end, thresholds[0], mine);
    }
  }

  // Step 2: counts at every level.
  std::vector<int64_t> level_counts(static_cast<size_t>(n) * levels, 0);
  std::span<int64_t> own_counts(level_counts.data() + static_cast<size_t>(rank) * levels, levels);
  exdyna::count_levels<Index>(b.residual, mine, thresholds, own_counts);
  if (parts.blocks_in(part) > 0) {  // every partition sends at least one index
    for (int64_t& count : own_counts) count = std::max<int64_t>(count, 1);
  }

  // Step 3: exchange counts, pick the level, exchange indices, sum values.
  collective::AllgatherOptions ag(group_);
  ag.output = level_counts;
  collective::allgather(ag);
  exdyna::check_level_counts(level_counts, levels, d);
  std::vector<int64_t> totals(levels, 0);
  for (int w = 0; w < n; ++w) {
    for (int j = 0; j < levels; ++j) totals[j] += level_counts[static_cast<size_t>(w) * levels + j];
  }
  const int level = exdyna::nearest_level(totals, density_ * static_cast<double>(d));
  const float lambda = thresholds[level];
  if (level > 0) {
    std::erase_if(mine, [&](Index i) { return !(std::fabs(c[i]) >= lambda); });
  }
  const bool has_partition = parts.blocks_in(part) > 0;
  if (mine.empty() && has_partition) {  // a worker with a partition sends at least one index
    size_t best = 0;
    float best_magnitude = -1;
    for (const auto& [begin, end] : parts.runs(part)) {
      const size_t i = exdyna::argmax_abs(b.residual, begin, end);
      if (std::fabs(c[i]) > best_magnitude) best_magnitude = std::fabs(c[best = i]);
    }
    mine.push_back(static_cast<Index>(best));
  }
  std::vector<int64_t> counts(n);
  uint64_t k_sent = 0;
  for (int w = 0; w < n; ++w) {
    counts[w] = level_counts[static_cast<size_t>(w) * levels + level];
    k_sent += static_cast<uint64_t>(counts[w]);
  }
  DT_ENFORCE(counts[rank] == static_cast<int64_t>(mine.size()), "exdyna: rank ", rank, " counted ",
             counts[rank], " indices at level ", level, " but selected ", mine.size());
  collective::AllgathervOptions agv(group_);
  agv.input = collective::ConstView(mine.data(), mine.size(), index_dtype<Index>());
  agv.counts.assign(counts.begin(), counts.end());
  all.resize(k_sent);
  agv.output = collective::View(all.data(), all.size(), index_dtype<Index>());
  collective::allgatherv(agv);
  // Each rank's indices must lie in the partition it owned: that is what makes U duplicate-free.
  exdyna::check_union<Index>(all, counts, parts, step);

  values_.resize(k_sent);
  for (size_t j = 0; j < k_sent; ++j) values_[j] = c[all[j]];
  collective::AllreduceOptions ar(group_);
  ar.output = values_;
  collective::allreduce(ar);

  // Step 4: apply; error feedback and momentum factor masking at the union.
  for (size_t j = 0; j < k_sent; ++j) {
    grad[all[j]] = values_[j] / static_cast<float>(n);
    c[all[j]] = 0.0f;
  }
  if (u != nullptr) {
    for (size_t j = 0; j < k_sent; ++j) u[all[j]] = 0.0f;
  }

  // Step 5: figures of this step, then the adaptation for the next one.
  uint64_t max_count = 0;
  std::vector<uint64_t> partition_counts(n);
  for (int w = 0; w < n; ++w) {
    b.worker_counts[w] = static_cast<uint64_t>(counts[w]);
    max_count = std::max(max_count, b.worker_counts[w]);
    partition_counts[(step % n + w) % n] = b.worker_counts[w];
  }
  b.k_sent = k_sent;
  figures_.d += static_cast<double>(d);
  figures_.k_sent += static_cast<double>(k_sent);
  figures_.max_sum += static_cast<double>(n) * static_cast<double>(max_count);
  figures_.weighted_threshold += static_cast<double>(lambda) * static_cast<double>(d);
  b.threshold = levels > 1 ? static_cast<double>(lambda)
                           : exdyna::next_threshold(b.threshold, k_sent, density_ * d, options_);
  parts.rebalance(partition_counts, options_.balance);
  partition_counts_.emplace_back(static_cast<size_t>(&b - buckets_.data()),
                                 std::move(partition_counts));

  if (n > 1) {
    const uint64_t index_bytes = sizeof(Index);
    const uint64_t counts_bytes = static_cast<uint64_t>(n - 1) * levels * sizeof(int64_t);
    const uint64_t value_bytes = k_sent * sizeof(float) * 2 * (n - 1) / n;
    bytes_sent_ +=
        counts_bytes + value_bytes + (k_sent - b.worker_counts[(rank + 1) % n]) * index_bytes;
    bytes_received_ += counts_bytes + value_bytes + (k_sent - b.worker_counts[rank]) * index_bytes;
  }
}

std::vector<std::pair<std::string, double>> ExDynaReducer::step_metrics() const {
  if (figures_.d == 0) return {};
  const double k = figures_.k_sent;
  const double density = k / figures_.d;
  return {{"density", density},
          {"density_target", options_.density},
          {"threshold", figures_.weighted_threshold / figures_.d},
          {"imbalance", k > 0 ? figures_.max_sum / k - 1.0 : 0.0},
          {"k_sent", k},
          {"mean_density", (density_sum_ + density) / double(density_steps_ + 1)}};
}

std::vector<std::pair<std::string, std::vector<double>>> ExDynaReducer::step_vectors() const {
  std::vector<std::pair<std::string, std::vector<double>>> out;
  if (step() % kPartitionCountsEvery != 0) return out;
  for (const auto& [bucket, counts] : partition_counts_) {
    out.emplace_back("partition_counts/" + std::to_string(bucket),
                     std::vector<double>(counts.begin(), counts.end()));
  }
  return out;
}

// Layout: magic, version, n, bucket count; per bucket: d, block size, block order and seed
// (u32, u64; since version 3, before: contiguous), n + 1 boundaries, threshold, n worker counts,
// d residual floats, u64 velocity size (0 or d; since version 2) and the velocity floats; then
// (since version 4) u64 steps and f64 sum of the per-step densities, the latest step included.
std::vector<std::byte> ExDynaReducer::save_state() const {
  ByteWriter w;
  w.put(kStateMagic).put(kStateVersion);
  w.put(static_cast<uint32_t>(group_.size())).put(static_cast<uint64_t>(buckets_.size()));
  for (const Bucket& b : buckets_) {
    w.put(static_cast<uint64_t>(b.residual.size()));
    w.put(static_cast<uint64_t>(b.partitions.block_size()));
    w.put(static_cast<uint32_t>(b.partitions.order())).put(b.partitions.seed());
    for (size_t x : b.partitions.boundaries()) w.put(static_cast<uint64_t>(x));
    w.put(b.threshold);
    w.put_array(std::span<const uint64_t>(b.worker_counts));
    w.put_array(std::span<const float>(b.residual));
    w.put_vector(b.velocity);
  }
  uint64_t steps = density_steps_;
  double sum = density_sum_;
  if (figures_.d > 0) {  // the latest step, as the next begin_step would add it
    sum += figures_.k_sent / figures_.d;
    ++steps;
  }
  w.put(steps).put(sum);
  return w.take();
}

void ExDynaReducer::load_state(std::span<const std::byte> state) {
  ByteReader r(state, "exdyna state");
  const auto magic = r.get<uint32_t>("magic");
  const auto version = r.get<uint32_t>("version");
  DT_ENFORCE(magic == kStateMagic && version >= 1 && version <= kStateVersion,
             "exdyna state: not an exdyna checkpoint of version 1 to ", kStateVersion,
             " (was it written with another --reduce?)");
  const uint32_t n = r.get<uint32_t>("world size");
  DT_ENFORCE(n == static_cast<uint32_t>(group_.size()), "exdyna state: written by ", n,
             " ranks, this run has ", group_.size());
  const uint64_t count = r.get<uint64_t>("bucket count");
  std::vector<Bucket> buckets;
  for (uint64_t i = 0; i < count; ++i) {
    Bucket b;
    const auto d = r.get<uint64_t>("bucket size");
    // The residual's d floats follow: a d the file cannot hold must not size the partitions.
    DT_ENFORCE(d <= r.left() / sizeof(float), "exdyna state: bucket ", i, " claims ", d,
               " elements, only ", r.left(), " bytes are left");
    const auto block_size = r.get<uint64_t>("block size");
    auto order = exdyna::BlockOrder::kContiguous;
    uint64_t seed = 0;
    if (version >= 3) {
      order = static_cast<exdyna::BlockOrder>(r.get<uint32_t>("block order"));
      seed = r.get<uint64_t>("block order seed");
    }
    auto bounds = r.get_array<uint64_t>(n + 1, "partition boundaries");
    b.partitions = exdyna::Partitions(d, block_size, order, seed,
                                      std::vector<size_t>(bounds.begin(), bounds.end()));
    b.threshold = r.get<double>("threshold");
    b.worker_counts = r.get_array<uint64_t>(n, "worker counts");
    for (uint64_t k : b.worker_counts) b.k_sent += k;
    b.residual = r.get_array<float>(d, "residual");
    if (version >= 2) {
      b.velocity = r.get_vector<float>("velocity");
      DT_ENFORCE(b.velocity.empty() || b.velocity.size() == d, "exdyna state: bucket ", i,
                 " has a velocity of ", b.velocity.size(), " elements for ", d);
    }
    buckets.push_back(std::move(b));
  }
  uint64_t steps = 0;
  double sum = 0;
  if (version >= 4) {
    steps = r.get<uint64_t>("density steps");
    sum = r.get<double>("density sum");
  }
  r.finish();
  buckets_ = std::move(buckets);
  density_steps_ = steps;
  density_sum_ = sum;
  figures_ = {};
  partition_counts_.clear();
}

std::unique_ptr<GradientReducer> make_exdyna_reducer(const std::string& params,
                                                     comm::Group& group) {
  return std::make_unique<ExDynaReducer>(group, parse_exdyna_options(params));
}

}  // namespace dtrain::reduce
