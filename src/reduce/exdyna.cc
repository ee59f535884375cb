// The ExDyna reducer: one step of the spec's protocol per bucket.
//
// Works as follows, on every rank r of n, for bucket b in step t:
//  1. Compensate: residual += grad (the residual buffer then holds the compensated gradient c),
//     clearing grad in the same pass.
//  2. Select: indices i of partition (t + r) mod n with |c_i| >= lambda, one pass. If none, the
//     partition's largest-magnitude element is sent alone, so a worker with a non-empty partition
//     never sends nothing (a partition is empty only in buckets of fewer blocks than ranks).
//     With L > 1 levels the pass collects the candidates at the lowest level lambda_0 of
//     lambda * spacing^j and counts them at every level (a histogram of the few candidates).
//  3. Exchange: allgather of the counts (int64; L per rank, after which every rank picks the
//     level whose total is nearest to k and drops its candidates below it), allgatherv of the
//     indices (uint32 while
//     d < 2^32, else 64-bit) into the union U, laid out in rank order; the partitions are
//     disjoint, so U has no duplicates. Each rank gathers its own c at U, allreduce (SUM) of that
//     value vector, divide by n: every rank holds bit-identical averages.
//  4. Apply: grad[U] = average (zero elsewhere); residual[U] = 0 (error feedback).
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
#include "dtrain/common/error.h"

namespace dtrain::reduce {
namespace {

using collective::DataType;

const char* const kValidParams =
    "density, blocks, up, down, band, balance, fast, lambda0, levels, spacing, momentum";

double parse_number(const std::string& key, const std::string& value) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size() || !std::isfinite(x)) {
    throw InvalidArgument("exdyna: parameter " + key + "='" + value + "' is not a number");
  }
  return x;
}

void check_range(bool ok, const std::string& key, double x, const char* range) {
  if (!ok) {
    throw InvalidArgument(
        detail::concat("exdyna: parameter ", key, "=", x, " is out of range (", range, ")"));
  }
}

// Little-endian plain-old-data writer and bounds-checked reader for save_state/load_state.
struct Writer {
  std::vector<std::byte> bytes;
  void append(const void* p, size_t n) {
    const size_t at = bytes.size();
    bytes.resize(at + n);
    if (n > 0) std::memcpy(bytes.data() + at, p, n);
  }
  template <typename T>
  void put(const T& x) {
    append(&x, sizeof(T));
  }
  template <typename T>
  void put_all(const std::vector<T>& v) {
    append(v.data(), v.size() * sizeof(T));
  }
};

struct Reader {
  std::span<const std::byte> bytes;
  size_t at = 0;
  void need(size_t n, const char* what) {
    DT_ENFORCE(bytes.size() - at >= n, "exdyna state: truncated at byte ", at, " of ", bytes.size(),
               " while reading ", what);
  }
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T x;
    std::memcpy(&x, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return x;
  }
  template <typename T>
  std::vector<T> get_all(uint64_t count, const char* what) {
    DT_ENFORCE(count <= (bytes.size() - at) / sizeof(T), "exdyna state: ", what, " claims ", count,
               " elements, only ", bytes.size() - at, " bytes left");
    std::vector<T> v(count);
    if (count > 0) std::memcpy(v.data(), bytes.data() + at, count * sizeof(T));
    at += count * sizeof(T);
    return v;
  }
};

constexpr uint32_t kStateMagic = 0x45584459;  // "EXDY"
constexpr uint32_t kStateVersion = 2;         // 2 added the velocity; 1 is still read

template <typename Index>
constexpr DataType index_dtype() {
  return sizeof(Index) == 4 ? DataType::kInt32 : DataType::kInt64;
}

}  // namespace

ExDynaOptions parse_exdyna_options(const std::string& params) {
  ExDynaOptions o;
  if (params.empty()) return o;
  if (params.find('=') == std::string::npos && params.find(',') == std::string::npos) {
    o.density = parse_number("density", params);
    check_range(o.density > 0 && o.density <= 1, "density", o.density, "(0, 1]");
    return o;
  }
  size_t start = 0;
  while (start <= params.size()) {
    const size_t comma = std::min(params.find(',', start), params.size());
    const std::string item = params.substr(start, comma - start);
    start = comma + 1;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      throw InvalidArgument("exdyna: '" + item +
                            "' is not key=value (valid parameters: " + kValidParams + ")");
    }
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "lambda0" && (value == "auto" || value == "spec")) {
      o.lambda0 = value == "auto" ? ExDynaOptions::kAutoLambda : 0.0;
      continue;
    }
    const double x = parse_number(key, value);
    if (key == "density") {
      check_range(x > 0 && x <= 1, key, x, "(0, 1]");
      o.density = x;
    } else if (key == "blocks") {
      check_range(x >= 1 && x <= double(1 << 30) && x == std::floor(x), key, x,
                  "a whole number in [1, 2^30]");
      o.blocks = static_cast<size_t>(x);
    } else if (key == "up") {
      check_range(x >= 1, key, x, ">= 1");
      o.up = x;
    } else if (key == "down") {
      check_range(x > 0 && x <= 1, key, x, "(0, 1]");
      o.down = x;
    } else if (key == "band") {
      check_range(x >= 1, key, x, ">= 1");
      o.band = x;
    } else if (key == "fast") {
      check_range(x >= 1 && x <= 2, key, x, "[1, 2]");
      o.fast = x;
    } else if (key == "balance") {
      check_range(x >= 1, key, x, ">= 1");
      o.balance = x;
    } else if (key == "levels") {
      check_range(x >= 1 && x <= 64 && x == std::floor(x), key, x, "a whole number in [1, 64]");
      o.levels = static_cast<int>(x);
    } else if (key == "spacing") {
      check_range(x > 1 && x <= 2, key, x, "(1, 2]");
      o.spacing = x;
    } else if (key == "momentum") {
      check_range(x >= 0 && x < 1, key, x, "[0, 1)");
      o.momentum = x;
    } else if (key == "lambda0") {
      check_range(x >= 0, key, x, ">= 0, auto or spec (0 = spec: 1 / (2 sqrt(k)))");
      o.lambda0 = x;
    } else {
      throw InvalidArgument("exdyna: unknown parameter '" + key +
                            "' (valid parameters: " + kValidParams + ")");
    }
  }
  return o;
}

ExDynaReducer::ExDynaReducer(comm::Group& group, ExDynaOptions options)
    : group_(group), options_(options) {}

double ExDynaReducer::measured_threshold(std::span<const float> c, size_t begin, size_t end) {
  // The (k/n)-th largest magnitude of this worker's partition, averaged over the workers.
  const int n = group_.size();
  double lambda = 0;
  if (end > begin) {
    std::vector<float> mag(c.begin() + begin, c.begin() + end);
    for (float& v : mag) v = std::fabs(v);
    const double want = options_.density * double(c.size()) / n;
    const size_t kth = std::min(mag.size() - 1, static_cast<size_t>(std::max(want, 1.0)) - 1);
    std::nth_element(mag.begin(), mag.begin() + kth, mag.end(), std::greater<float>());
    lambda = mag[kth];
  }
  collective::AllreduceOptions ar(group_);
  ar.output = collective::View(&lambda, 1, DataType::kFloat64);
  ar.op = collective::ReduceOp::kAvg;
  collective::allreduce(ar);
  // An all-zero start would select everything: fall back to the spec's value.
  return lambda > 0 ? lambda : exdyna::initial_threshold(options_.density, c.size());
}

void ExDynaReducer::begin_step(uint64_t step) {
  GradientReducer::begin_step(step);
  figures_ = {};
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
    b.partitions = exdyna::Partitions(grad.size(), options_.blocks, group_.size());
    b.residual.assign(grad.size(), 0.0f);
    if (options_.momentum > 0) b.velocity.assign(grad.size(), 0.0f);
    b.threshold = options_.lambda0 > 0    ? options_.lambda0
                  : options_.lambda0 == 0 ? exdyna::initial_threshold(options_.density, grad.size())
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
  float* c = b.residual.data();
  float* u = b.velocity.empty() ? nullptr : b.velocity.data();
  if (u != nullptr) {  // momentum correction: the residual accumulates the velocity
    const auto m = static_cast<float>(options_.momentum);
    for (size_t i = 0; i < d; ++i) {
      u[i] = m * u[i] + grad[i];
      c[i] += u[i];
      grad[i] = 0.0f;
    }
  } else {
    for (size_t i = 0; i < d; ++i) {  // grad is cleared in the same pass; the update lands later
      c[i] += grad[i];
      grad[i] = 0.0f;
    }
  }

  const int part = static_cast<int>((step % n + rank) % n);
  const size_t begin = b.partitions.begin(part), end = b.partitions.end(part);
  if (b.threshold == 0.0) b.threshold = measured_threshold(b.residual, begin, end);
  // One pass collects the candidates at the lowest level; each level's count goes to the others.
  const int levels = options_.levels;
  const std::vector<float> thresholds =
      exdyna::level_thresholds(b.threshold, levels, options_.spacing);
  mine.clear();
  exdyna::select_threshold(b.residual, begin, end, thresholds[0], mine);
  std::vector<int64_t> level_counts(static_cast<size_t>(n) * levels, 0);
  std::span<int64_t> own_counts(level_counts.data() + static_cast<size_t>(rank) * levels, levels);
  exdyna::count_levels<Index>(b.residual, mine, thresholds, own_counts);
  if (begin < end) {  // a worker with a partition sends at least its largest element
    for (int64_t& count : own_counts) count = std::max<int64_t>(count, 1);
  }
  collective::AllgatherOptions ag(group_);
  ag.output = level_counts;
  collective::allgather(ag);
  std::vector<int64_t> totals(levels, 0);
  for (int w = 0; w < n; ++w) {
    for (int j = 0; j < levels; ++j) {
      const int64_t count = level_counts[static_cast<size_t>(w) * levels + j];
      DT_ENFORCE_AS(ProtocolError, count >= 0 && static_cast<uint64_t>(count) <= d, "exdyna: rank ",
                    w, " announced ", count, " indices for a bucket of ", d);
      totals[j] += count;
    }
  }
  const int level = exdyna::nearest_level(totals, options_.density * static_cast<double>(d));
  const float lambda = thresholds[level];
  if (level > 0) {
    std::erase_if(mine, [&](Index i) { return !(std::fabs(c[i]) >= lambda); });
  }
  if (mine.empty() && begin < end) {
    mine.push_back(static_cast<Index>(exdyna::argmax_abs(b.residual, begin, end)));
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
  size_t at = 0;
  for (int w = 0; w < n; ++w) {
    const int owned = static_cast<int>((step % n + w) % n);
    const size_t lo = b.partitions.begin(owned), hi = b.partitions.end(owned);
    for (size_t j = at; j < at + static_cast<size_t>(counts[w]); ++j) {
      DT_ENFORCE_AS(ProtocolError, all[j] >= lo && all[j] < hi, "exdyna: rank ", w, " sent index ",
                    all[j], " outside its partition [", lo, ", ", hi, ") (partitions disagree?)");
    }
    at += static_cast<size_t>(counts[w]);
  }

  values_.resize(k_sent);
  for (size_t j = 0; j < k_sent; ++j) values_[j] = c[all[j]];
  collective::AllreduceOptions ar(group_);
  ar.output = values_;
  collective::allreduce(ar);
  for (size_t j = 0; j < k_sent; ++j) {
    grad[all[j]] = values_[j] / static_cast<float>(n);
    c[all[j]] = 0.0f;
  }
  if (u != nullptr) {  // momentum factor masking
    for (size_t j = 0; j < k_sent; ++j) u[all[j]] = 0.0f;
  }

  // Figures of this step, then the adaptation for the next one.
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
  b.threshold = levels > 1
                    ? static_cast<double>(lambda)
                    : exdyna::next_threshold(b.threshold, k_sent, options_.density * d, options_);
  b.partitions.rebalance(partition_counts, options_.balance);

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
  return {{"density", k / figures_.d},
          {"density_target", options_.density},
          {"threshold", figures_.weighted_threshold / figures_.d},
          {"imbalance", k > 0 ? figures_.max_sum / k - 1.0 : 0.0},
          {"k_sent", k}};
}

// Layout: magic, version, n, bucket count; per bucket: d, block size, n + 1 boundaries,
// threshold, n worker counts, d residual floats, u64 velocity size (0 or d; since version 2) and
// the velocity floats. Native byte order (checkpoints are read back on
// the machine kind that wrote them).
std::vector<std::byte> ExDynaReducer::save_state() const {
  Writer w;
  w.put(kStateMagic);
  w.put(kStateVersion);
  w.put(static_cast<uint32_t>(group_.size()));
  w.put(static_cast<uint64_t>(buckets_.size()));
  for (const Bucket& b : buckets_) {
    w.put(static_cast<uint64_t>(b.residual.size()));
    w.put(static_cast<uint64_t>(b.partitions.block_size()));
    for (size_t x : b.partitions.boundaries()) w.put(static_cast<uint64_t>(x));
    w.put(b.threshold);
    w.put_all(b.worker_counts);
    w.put_all(b.residual);
    w.put(static_cast<uint64_t>(b.velocity.size()));
    w.put_all(b.velocity);
  }
  return std::move(w.bytes);
}

void ExDynaReducer::load_state(std::span<const std::byte> state) {
  Reader r{state};
  const auto magic = r.get<uint32_t>("magic");
  const auto version = r.get<uint32_t>("version");
  DT_ENFORCE(magic == kStateMagic && (version == 1 || version == kStateVersion),
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
    const auto block_size = r.get<uint64_t>("block size");
    auto bounds = r.get_all<uint64_t>(n + 1, "partition boundaries");
    b.partitions =
        exdyna::Partitions(d, block_size, std::vector<size_t>(bounds.begin(), bounds.end()));
    b.threshold = r.get<double>("threshold");
    b.worker_counts = r.get_all<uint64_t>(n, "worker counts");
    for (uint64_t k : b.worker_counts) b.k_sent += k;
    b.residual = r.get_all<float>(d, "residual");
    if (version >= 2) {
      const auto v = r.get<uint64_t>("velocity size");
      DT_ENFORCE(v == 0 || v == d, "exdyna state: bucket ", i, " has a velocity of ", v,
                 " elements for ", d);
      b.velocity = r.get_all<float>(v, "velocity");
    }
    buckets.push_back(std::move(b));
  }
  DT_ENFORCE(r.at == state.size(), "exdyna state: ", state.size() - r.at, " bytes left over after ",
             count, " buckets (", state.size(), " bytes in all)");
  buckets_ = std::move(buckets);
  figures_ = {};
}

std::unique_ptr<GradientReducer> make_exdyna_reducer(const std::string& params,
                                                     comm::Group& group) {
  return std::make_unique<ExDynaReducer>(group, parse_exdyna_options(params));
}

}  // namespace dtrain::reduce
