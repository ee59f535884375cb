// `dtrain bench compress`: sparsification and compression cost on one core, and the traffic per
// worker of top-k + allgather against ExDyna.
//
// Works as follows. One seeded gradient-like vector (N(0, 1e-3) with 0.1% of the elements drawn
// from N(0, 0.1)) is built once. Each method runs once untimed, then --iters timed runs on one
// thread; the median is reported with GB/s = bytes scanned / time. The baseline is exact top-k:
// magnitudes copied out, std::nth_element for the k-th largest, one pass collecting the indices at
// or above it. ExDyna's selection is its one-pass |g| >= lambda scan with lambda = that k-th
// magnitude (where its threshold controller settles on a stationary stream), over the whole vector
// and over one partition of d / n (what each of n workers scans per step). The compress/
// compressors run through make_compressor; each one's last payload is then decoded and added into
// a sum ("decode+add": what a receiver does once per sender). The traffic table is computed, not
// timed: n independently seeded worker vectors, each worker's exact top-k (allgather of k index +
// value pairs: each rank sends and receives (n - 1) k 8 bytes; the union of the n index sets is the
// build-up the receivers must sum) against ExDyna's selections in n even partitions (counts
// allgather + index allgatherv + value allreduce, the ring formulas of reduce/exdyna.cc, averaged
// over the ranks).
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "bench_util.h"
#include "commands.h"
#include "dtrain/comm/group.h"
#include "dtrain/common/error.h"
#include "dtrain/compress/compressor.h"
#include "dtrain/reduce/exdyna.h"

namespace dtrain::app {
namespace {

struct CompressFlags {
  std::string size = "25M";
  double density = 0.01;
  int iters = 5;
  std::vector<int> workers = {2, 4, 8};
  uint64_t seed = 1;
  std::string json;
};

// Decimal megabytes, like GB/s.
std::string megabytes(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MB", bytes / 1e6);
  return buf;
}

// "25M" -> 25,000,000 elements: K, M, G are decimal here (counts, not bytes).
size_t parse_count(const std::string& s) {
  size_t pos = 0;
  double v = -1;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  const std::string unit = s.substr(pos);
  const double mult = unit.empty()  ? 1
                      : unit == "K" ? 1e3
                      : unit == "M" ? 1e6
                      : unit == "G" ? 1e9
                                    : 0;
  if (pos == 0 || mult == 0 || v < 1 || v * mult > 4e9) {
    throw InvalidArgument("--size: '" + s + "' is not an element count in [1, 4G] (e.g. 25M)");
  }
  return static_cast<size_t>(v * mult);
}

std::vector<float> make_gradient(size_t d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> small(0.0f, 1e-3f), large(0.0f, 1e-1f);
  std::bernoulli_distribution is_large(0.001);
  std::vector<float> g(d);
  for (auto& x : g) x = is_large(rng) ? large(rng) : small(rng);
  return g;
}

// Exact top-k by magnitude: the k-th largest magnitude, then the indices at or above it (the
// first k of them when there are ties). `scratch` holds the magnitudes.
float topk_select(std::span<const float> g, size_t k, std::vector<float>& scratch,
                  std::vector<uint32_t>& out) {
  scratch.resize(g.size());
  for (size_t i = 0; i < g.size(); ++i) scratch[i] = std::fabs(g[i]);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<>());
  const float kth = scratch[k - 1];
  out.clear();
  reduce::exdyna::select_threshold(g, 0, g.size(), kth, out);
  out.resize(std::min(out.size(), k));
  return kth;
}

// `setup` runs before each call, untimed.
double median_seconds(
    int iters, const std::function<void(int)>& fn, const std::function<void()>& setup = [] {}) {
  setup();
  fn(-1);  // warm-up: page faults, allocations
  std::vector<double> t;
  for (int it = 0; it < iters; ++it) {
    setup();
    const auto t0 = std::chrono::steady_clock::now();
    fn(it);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return percentile(t, 0.5);
}

struct Row {
  std::string method;
  double seconds = 0;
  size_t bytes_scanned = 0;
  size_t payload_bytes = 0;  // 0: not a wire format
};

void run(const CompressFlags& f) {
  const size_t d = parse_count(f.size);
  DT_ENFORCE(f.density > 0 && f.density <= 1, "--density must be in (0, 1], got ", f.density);
  DT_ENFORCE(f.iters >= 1, "--iters must be >= 1, got ", f.iters);
  for (int n : f.workers) DT_ENFORCE(n >= 1 && n <= 1024, "--workers: ", n, " is not in [1, 1024]");
  const size_t k = std::max<size_t>(1, std::llround(f.density * d));
  const size_t bytes = d * sizeof(float);
  const auto g = make_gradient(d, f.seed);

  std::vector<Row> rows;
  std::vector<float> scratch;
  std::vector<uint32_t> picked;
  picked.reserve(2 * k);
  float lambda = 0;
  const double topk_s =
      median_seconds(f.iters, [&](int) { lambda = topk_select(g, k, scratch, picked); });
  rows.push_back({"topk exact (nth_element)", topk_s, bytes, k * 8});
  rows.push_back({"sort (std::sort, reference)",
                  median_seconds(f.iters,
                                 [&](int) {
                                   scratch.resize(d);
                                   for (size_t i = 0; i < d; ++i) scratch[i] = std::fabs(g[i]);
                                   std::sort(scratch.begin(), scratch.end(), std::greater<>());
                                 }),
                  bytes, 0});
  // What "near memory bandwidth" means here: one pass reading the vector and nothing else.
  // (An integer xor of the bits vectorizes; a float sum would be bound by the add latency.)
  volatile uint32_t sink = 0;
  rows.push_back({"read pass (xor, bandwidth reference)",
                  median_seconds(f.iters,
                                 [&](int) {
                                   uint32_t acc = 0;
                                   for (float x : g) acc ^= std::bit_cast<uint32_t>(x);
                                   sink = acc;
                                 }),
                  bytes, 0});
  const double exdyna_s = median_seconds(f.iters, [&](int) {
    picked.clear();
    reduce::exdyna::select_threshold(g, 0, d, lambda, picked);
  });
  rows.push_back({"exdyna select, whole vector", exdyna_s, bytes, picked.size() * 8});
  std::vector<std::pair<int, double>> partition_s;
  for (int n : f.workers) {
    const reduce::exdyna::Partitions parts(d, 1024, n);
    const auto runs = parts.runs(n / 2);
    const double s = median_seconds(f.iters, [&](int) {
      picked.clear();
      for (const auto& [begin, end] : runs) {
        reduce::exdyna::select_threshold(g, begin, end, lambda, picked);
      }
    });
    partition_s.emplace_back(n, s);
    rows.push_back({"exdyna select, 1 partition of " + std::to_string(n), s,
                    parts.elements_in(n / 2) * sizeof(float), picked.size() * 8});
  }
  // The whole reducer step on one rank: compensate, select, exchange (no peers), apply. Each
  // timed step starts from the state after an all-zero first step (restored with load_state,
  // untimed), so every timed step sees the same compensated vector, on a reducer whose scratch
  // buffers already had a step of this size, as in training's steady state. Its reference is the
  // error-feedback update alone, the fewest memory streams such a step can have: "c += g; g = 0"
  // (and with momentum correction "u = m u + g; c += u; g = 0") over the same vector.
  double step_s = 0, reference_s = 0;
  std::vector<std::pair<double, double>> step_vs_reference;  // per momentum setting
  for (const double momentum : {0.0, 0.9}) {
    comm::GroupOptions single;
    single.rank = 0;
    single.size = 1;
    auto group = comm::Group::connect(single);
    reduce::ExDynaOptions opts;
    opts.density = f.density;
    opts.lambda0 = lambda;
    opts.momentum = momentum;
    std::vector<float> grad(d, 0.0f), c(d, 0.0f), u(momentum > 0 ? d : 0, 0.0f);
    auto reducer = std::make_unique<reduce::ExDynaReducer>(*group, opts);
    reducer->reduce_step(0, grad);
    const std::vector<std::byte> after_zero_step = reducer->save_state();
    const char* suffix = momentum > 0 ? ", momentum" : "";
    const double s = median_seconds(
        f.iters, [&](int) { reducer->reduce_step(1, grad); },
        [&] {
          grad.assign(g.begin(), g.end());
          reducer->reduce_step(0, grad);  // warms the scratch buffers
          reducer->load_state(after_zero_step);
          grad.assign(g.begin(), g.end());
        });
    rows.push_back({std::string("exdyna reducer step, 1 rank") + suffix, s, bytes,
                    reducer->bucket(0).k_sent * 8});
    const auto m = static_cast<float>(momentum);
    const double ref = median_seconds(
        f.iters,
        [&](int) {
          float* cp = c.data();
          float* gp = grad.data();
          if (momentum > 0) {
            float* up = u.data();
            for (size_t i = 0; i < d; ++i) {
              up[i] = m * up[i] + gp[i];
              cp[i] += up[i];
              gp[i] = 0.0f;
            }
          } else {
            for (size_t i = 0; i < d; ++i) {
              cp[i] += gp[i];
              gp[i] = 0.0f;
            }
          }
        },
        [&] { grad.assign(g.begin(), g.end()); });
    rows.push_back({std::string(momentum > 0 ? "reference: u = m u + g; c += u; g = 0"
                                             : "reference: c += g; g = 0"),
                    ref, bytes, 0});
    step_vs_reference.emplace_back(s, ref);
    if (momentum == 0) {
      step_s = s;
      reference_s = ref;
    }
  }
  auto with = [](const char* spec, double x) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%s%.9g", spec, x);
    return std::string(buf);
  };
  for (const std::string& spec :
       {with("topk:density=", f.density), with("threshold:lambda=", lambda),
        with("randomk:density=", f.density), std::string("fp16"),
        std::string("qcs:bucket=256,rows=32,levels=1")}) {
    auto c = compress::make_compressor(spec);
    compress::Payload payload;
    const double s = median_seconds(
        f.iters, [&](int it) { payload = c->compress(g, static_cast<uint64_t>(it + 1)); });
    rows.push_back({spec + " (compress/)", s, bytes, payload.bytes.size()});
    // What every receiver does once per sender: decode the payload and add it to a sum.
    std::vector<float> sum(d, 0.0f);
    const uint64_t last_step = static_cast<uint64_t>(f.iters);
    const double ds = median_seconds(
        f.iters, [&](int) { c->decompress(payload, sum, /*accumulate=*/true, last_step); });
    rows.push_back({spec + " decode+add", ds, bytes, 0});
  }

  std::printf(
      "compress: %zu floats (%s), density %g (k = %zu), 1 thread, median of %d (+1 "
      "warm-up)\n",
      d, megabytes(bytes).c_str(), f.density, k, f.iters);
  std::printf("%-44s %10s %8s %11s %9s\n", "method", "median ms", "GB/s", "payload", "vs topk");
  nlohmann::json out = {{"size", d}, {"density", f.density}, {"k", k}, {"iters", f.iters}};
  for (const auto& r : rows) {
    const double gbps = r.bytes_scanned / r.seconds / 1e9;
    std::printf("%-44s %10.2f %8.2f %11s %8.2fx\n", r.method.c_str(), r.seconds * 1e3, gbps,
                r.payload_bytes ? megabytes(r.payload_bytes).c_str() : "-", topk_s / r.seconds);
    out["timings"].push_back({{"method", r.method},
                              {"median_s", r.seconds},
                              {"GBps", gbps},
                              {"bytes_scanned", r.bytes_scanned},
                              {"payload_bytes", r.payload_bytes},
                              {"speedup_vs_topk", topk_s / r.seconds}});
  }
  std::printf("exdyna selection speedup over exact top-k: %.1fx on the whole vector",
              topk_s / exdyna_s);
  for (auto [n, s] : partition_s) std::printf(", %.1fx per worker at n=%d", topk_s / s, n);
  std::printf(" (acceptance: >= 5x)\n");
  std::printf("exdyna reducer step: %.2fx the reference pass (acceptance: <= 2x)",
              step_s / reference_s);
  std::printf(", with momentum %.2fx",
              step_vs_reference.back().first / step_vs_reference.back().second);
  std::printf("; %.1fx faster than exact top-k (acceptance: >= 6x)\n\n", topk_s / step_s);
  out["exdyna_speedup_whole_vector"] = topk_s / exdyna_s;
  out["exdyna_step_over_reference"] = step_s / reference_s;
  out["exdyna_step_over_reference_momentum"] =
      step_vs_reference.back().first / step_vs_reference.back().second;
  out["exdyna_step_speedup_vs_topk"] = topk_s / step_s;

  // Traffic: n independent workers, computed from their actual selections.
  std::printf("traffic per worker and step (payload each way, ring collectives), lambda = %.4g\n",
              lambda);
  std::printf("%-4s %12s %9s %16s %14s %12s %12s %10s\n", "n", "topk union", "build-up",
              "topk+allgather", "exdyna k_sent", "exdyna", "topk/exdyna", "imbalance");
  for (int n : f.workers) {
    std::vector<uint8_t> in_union(d, 0);
    std::vector<uint64_t> counts(n);
    const reduce::exdyna::Partitions parts(d, 1024, n);
    for (int w = 0; w < n; ++w) {
      const auto gw = make_gradient(d, f.seed * 1000003 + w + 1);
      topk_select(gw, k, scratch, picked);
      for (uint32_t i : picked) in_union[i] = 1;
      picked.clear();
      for (const auto& [begin, end] : parts.runs(w)) {
        reduce::exdyna::select_threshold(gw, begin, end, lambda, picked);
      }
      // A worker that finds nothing still sends one index (its partition's largest).
      const bool nothing = picked.empty() && parts.blocks_in(w) > 0;
      counts[w] = nothing ? 1 : picked.size();
    }
    const size_t union_size = std::count(in_union.begin(), in_union.end(), uint8_t{1});
    uint64_t k_sent = 0, max_count = 0;
    for (uint64_t c : counts) {
      k_sent += c;
      max_count = std::max(max_count, c);
    }
    const double topk_bytes = double(n - 1) * k * 8;
    const double exdyna_bytes =
        double(n - 1) * 8 + double(n - 1) / n * k_sent * 4 + 2.0 * (n - 1) / n * k_sent * 4;
    const double imbalance = double(n) * max_count / k_sent - 1;
    const double ratio = exdyna_bytes > 0 ? topk_bytes / exdyna_bytes : 1.0;  // n = 1: none
    std::printf("%-4d %12zu %8.2fx %16s %14lu %12s %11.2fx %10.4f\n", n, union_size,
                double(union_size) / k, megabytes(topk_bytes).c_str(),
                static_cast<unsigned long>(k_sent), megabytes(exdyna_bytes).c_str(), ratio,
                imbalance);
    out["traffic"].push_back({{"workers", n},
                              {"topk_union", union_size},
                              {"topk_buildup", double(union_size) / k},
                              {"topk_allgather_bytes", topk_bytes},
                              {"exdyna_k_sent", k_sent},
                              {"exdyna_bytes", exdyna_bytes},
                              {"topk_over_exdyna", ratio},
                              {"exdyna_imbalance", imbalance}});
  }
  if (!f.json.empty()) write_json_file(f.json, out);
}

}  // namespace

void add_bench_compress(CLI::App& bench, int /*argc*/, char** /*argv*/, int& /*exit_code*/) {
  auto flags = std::make_shared<CompressFlags>();
  auto* cmd = bench.add_subcommand(
      "compress",
      "Sparsification/compression cost on one core (ExDyna vs exact top-k and the "
      "compress/ compressors) and traffic of top-k+allgather vs ExDyna");
  cmd->add_option("--size", flags->size, "Elements in the vector; K/M/G = 10^3/10^6/10^9 (25M)");
  cmd->add_option("--density", flags->density, "Target density k/d (0.01)");
  cmd->add_option("--iters", flags->iters, "Timed runs per method; the median is reported (5)");
  cmd->add_option("--workers", flags->workers, "Worker counts of the traffic table (2,4,8)")
      ->delimiter(',');
  cmd->add_option("--seed", flags->seed, "Seed of the synthetic gradient (1)");
  cmd->add_option("--json", flags->json, "Also write the results as JSON to this file");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace dtrain::app
