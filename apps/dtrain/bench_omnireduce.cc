// `dtrain bench omnireduce`: the OmniReduce microbenchmark of the spec. A float tensor (default
// 100 MB) cut into blocks; each worker marks `density x blocks` random blocks non-zero (seed = its
// rank, so overlap is random) and the rest zero. Per density it times, interleaved iteration by
// iteration: OmniReduce, the AGsparse baseline (allgather of index/value lists), our dense ring and
// Gloo's ring, each as the slowest rank's time. Every method's first result is checked against
// the exact sum (the values are small integers, so every summation order gives the same bits).
//
// With --servers D, the last D ranks are dedicated aggregators: they take part in OmniReduce only,
// and the dense and AGsparse baselines run on a second group of the workers alone.
//
// The link bound of a placement is the busiest host link's bytes over B, from the actual block
// counts (own_w: worker w's non-zero blocks, U: the union, S: bytes per block, N workers):
//   colocated (A = N): host h sends (N-1)/N own_h (to the other aggregators) + (N-1)/N U (its
//     aggregated share, to N-1 workers), and receives (N-1)/N U + sum_{w != h} own_w / N;
//   dedicated (D servers): worker w sends own_w and receives U; a server receives sum_w own_w / D
//     and sends N U / D.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "bench_util.h"
#include "commands.h"
#include "dtrain/collective/collective.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "dtrain/sparse/omnireduce.h"
#include "flag_checks.h"
#include "group_flags.h"
#include "launcher.h"

namespace dtrain::app {
namespace {

struct Flags {
  GroupFlags group;
  int workers = 4;
  int servers = 0;
  std::string size = "100M";
  std::vector<double> densities = {1.0, 0.4, 0.1, 0.04, 0.01};
  std::vector<std::string> algos = {"omni", "ring", "gloo"};
  size_t block = 256;
  size_t blocks_per_message = 0;  // 0: the collective's default
  int slots = 0;
  int iters = 5;
  int warmup = 1;
  double link_gbps = 0;
  std::string json;
};

// Worker `rank`'s input: round(density x blocks) distinct random blocks set to rank + 1 + (i % 3).
std::vector<uint8_t> pick_blocks(uint64_t blocks, double density, int rank) {
  std::vector<uint64_t> order(blocks);
  for (uint64_t b = 0; b < blocks; ++b) order[b] = b;
  std::mt19937_64 rng(static_cast<uint64_t>(rank));
  const auto k = static_cast<uint64_t>(std::llround(density * double(blocks)));
  for (uint64_t i = 0; i < k; ++i) {
    std::uniform_int_distribution<uint64_t> pick(i, blocks - 1);
    std::swap(order[i], order[pick(rng)]);
  }
  std::vector<uint8_t> chosen(blocks, 0);
  for (uint64_t i = 0; i < k; ++i) chosen[order[i]] = 1;
  return chosen;
}

void fill(std::vector<float>& data, const std::vector<uint8_t>& chosen, size_t block, int rank) {
  std::fill(data.begin(), data.end(), 0.0f);
  for (size_t b = 0; b < chosen.size(); ++b) {
    if (!chosen[b]) continue;
    const size_t end = std::min(data.size(), (b + 1) * block);
    for (size_t i = b * block; i < end; ++i) data[i] = float(rank + 1 + int(i % 3));
  }
}

struct Placement {
  double busiest_bytes = 0;  // of the busiest host link, one direction
};

Placement link_bytes(const std::vector<uint64_t>& own, uint64_t uni, size_t block, int servers) {
  const double s = double(block) * sizeof(float);
  const int n = static_cast<int>(own.size());
  double total_own = 0;
  for (uint64_t o : own) total_own += double(o);
  double busiest = 0;
  if (servers == 0) {
    for (int h = 0; h < n; ++h) {
      const double out = (n - 1.0) / n * (double(own[h]) + double(uni));
      const double in = (n - 1.0) / n * double(uni) + (total_own - double(own[h])) / n;
      busiest = std::max({busiest, out, in});
    }
  } else {
    for (int w = 0; w < n; ++w) busiest = std::max({busiest, double(own[w]), double(uni)});
    busiest = std::max({busiest, total_own / servers, double(n) * double(uni) / servers});
  }
  return {busiest * s};
}

void run_rank(const Flags& f) {
  DT_ENFORCE(f.iters >= 1, "--iters must be >= 1, got ", f.iters);
  DT_ENFORCE(f.warmup >= 0, "--warmup must be >= 0, got ", f.warmup);
  for (double d : f.densities)
    DT_ENFORCE(d >= 0 && d <= 1, "--densities: ", d, " is not in [0, 1]");
  for (const auto& a : f.algos) {
    DT_ENFORCE(a == "omni" || a == "agsparse" || a == "ring" || a == "gloo", "--algos: '", a,
               "' is not one of omni, agsparse, ring, gloo");
  }
  const size_t count = parse_size(f.size, "--size") / sizeof(float);

  comm::GroupOptions go = f.group.resolve();
  auto group = comm::Group::connect(go);
  comm::Group& g = *group;
  log::init(g.rank(), g.size());
  DT_ENFORCE(f.servers >= 0 && f.servers < g.size(), "--servers ", f.servers, " with ", g.size(),
             " ranks: at least one rank must be a worker");
  const int workers = g.size() - f.servers;
  const bool is_server = g.rank() >= workers;
  // The dense baselines run among the workers alone.
  std::shared_ptr<comm::Group> worker_group;
  if (f.servers > 0 && !is_server) {
    comm::GroupOptions wo = go;
    wo.rank = g.rank();
    wo.size = workers;
    wo.run_id = (go.run_id.empty() ? comm::detect_run_id() : go.run_id) + "-workers";
    worker_group = comm::Group::connect(wo);
  }
  comm::Group& dense_group = worker_group ? *worker_group : g;

  const uint64_t blocks = (count + f.block - 1) / f.block;
  std::vector<float> data(is_server ? 0 : count);
  nlohmann::json results = nlohmann::json::array();
  if (g.rank() == 0) {
    std::printf(
        "omnireduce of %zu floats (%s), block %zu, %d workers, %s, %d iterations (+%d warm-up); "
        "times are the slowest rank's medians\n",
        count, human_size(count * sizeof(float)).c_str(), f.block, workers,
        f.servers ? detail::concat(f.servers, " dedicated aggregators").c_str()
                  : "colocated aggregators",
        f.iters, f.warmup);
    std::printf("%-8s %-9s %10s %10s %10s %10s %9s%s\n", "density", "algo", "median ms", "min ms",
                "d_own", "d_union", "vs ring", f.link_gbps > 0 ? "  vs bound" : "");
  }
  for (double density : f.densities) {
    const auto chosen = is_server ? std::vector<uint8_t>() : pick_blocks(blocks, density, g.rank());
    std::map<std::string, std::vector<double>> times;
    sparse::OmniReduceStats omni_stats;
    for (int it = -1; it < f.warmup + f.iters; ++it) {
      for (size_t k = 0; k < f.algos.size(); ++k) {
        const std::string& algo = f.algos[(it % 2 == 0) ? k : f.algos.size() - 1 - k];
        if (is_server && algo != "omni") continue;
        comm::Group& cg = algo == "omni" ? g : dense_group;
        if (!is_server) fill(data, chosen, f.block, g.rank());
        collective::barrier(collective::BarrierOptions(cg));
        const auto t0 = comm::Clock::now();
        if (algo == "omni" || algo == "agsparse") {
          sparse::OmniReduceOptions o(cg);
          o.data = data;
          o.block = f.block;
          if (algo == "omni") o.servers = f.servers;
          // The call handshake runs at the first (checked) use of the shape, as in training.
          o.verify = it < 0;
          o.server_count = count;
          if (f.blocks_per_message) o.blocks_per_message = f.blocks_per_message;
          if (f.slots) o.slots = f.slots;
          auto st = algo == "omni" ? sparse::omnireduce(o) : sparse::allgather_sparse(o);
          if (algo == "omni") omni_stats = st;
        } else {
          collective::AllreduceOptions o(cg);
          o.output = data;
          (algo == "ring" ? collective::allreduce : collective::gloo_allreduce)(o);
        }
        const double secs =
            slowest(cg, std::chrono::duration<double>(comm::Clock::now() - t0).count());
        if (it < 0 && !is_server) {
          // Check the first result: element i sums rank + 1 + i % 3 over the workers that chose
          // its block. The chosen sets are recomputed here from the seeds.
          std::vector<std::vector<uint8_t>> all;
          for (int r = 0; r < workers; ++r) all.push_back(pick_blocks(blocks, density, r));
          for (size_t i = 0; i < count; ++i) {
            float want = 0;
            for (int r = 0; r < workers; ++r) {
              if (all[r][i / f.block]) want += float(r + 1 + int(i % 3));
            }
            if (data[i] != want) {
              throw Error(detail::concat("bench: ", algo, " at density ", density,
                                         " is wrong at element ", i, " on rank ", g.rank(), ": ",
                                         data[i], " != ", want));
            }
          }
        }
        if (it >= f.warmup) times[algo].push_back(secs);
      }
    }
    // Block counts for the table and the bound: every rank's own count, the union from the stats.
    std::vector<int64_t> own(g.size(), 0);
    own[g.rank()] = static_cast<int64_t>(omni_stats.blocks_nonzero_local);
    collective::AllreduceOptions ao(g);
    ao.output = own;
    collective::allreduce(ao);
    if (g.rank() != 0) continue;
    std::vector<uint64_t> own_w(own.begin(), own.begin() + workers);
    const uint64_t uni = omni_stats.blocks_union;
    const uint64_t max_own = *std::max_element(own_w.begin(), own_w.end());
    const double bound_s =
        f.link_gbps > 0
            ? link_bytes(own_w, uni, f.block, f.servers).busiest_bytes * 8 / (f.link_gbps * 1e9)
            : 0;
    const double ring_med = times.count("ring") ? percentile(times["ring"], 0.5) : 0;
    for (const auto& algo : f.algos) {
      const auto& t = times[algo];
      const double med = percentile(t, 0.5), mn = percentile(t, 0);
      const double d_own = blocks ? double(max_own) / blocks : 0;
      const double d_uni = blocks ? double(uni) / blocks : 0;
      char vs_ring[32] = "-", vs_bound[32] = "";
      if (ring_med > 0) std::snprintf(vs_ring, sizeof(vs_ring), "%.3fx", med / ring_med);
      const bool bounded = algo == "omni" && bound_s > 0;
      if (bounded) std::snprintf(vs_bound, sizeof(vs_bound), "  %8.2fx", med / bound_s);
      std::printf("%-8g %-9s %10.2f %10.2f %10.4f %10.4f %9s%s\n", density, algo.c_str(), med * 1e3,
                  mn * 1e3, d_own, d_uni, vs_ring, vs_bound);
      results.push_back({{"density", density},
                         {"algo", algo},
                         {"workers", workers},
                         {"servers", f.servers},
                         {"floats", count},
                         {"block", f.block},
                         {"median_s", med},
                         {"min_s", mn},
                         {"d_own_max", d_own},
                         {"d_union", d_uni},
                         {"ratio_to_ring", ring_med > 0 ? med / ring_med : 0.0},
                         {"bound_s", bounded ? bound_s : 0.0},
                         {"ratio_to_bound", bounded ? med / bound_s : 0.0}});
    }
    std::fflush(stdout);
  }
  if (g.rank() == 0 && !f.json.empty()) write_json_file(f.json, results);
}

}  // namespace

void add_bench_omnireduce(CLI::App& bench, int argc, char** argv, int& exit_code) {
  auto flags = std::make_shared<Flags>();
  auto* cmd = bench.add_subcommand(
      "omnireduce", "OmniReduce vs AGsparse vs dense ring and Gloo on block-sparse tensors");
  flags->group.add_to(*cmd);
  cmd->add_option("--workers", flags->workers,
                  "Local worker ranks to start when not launched externally (default 4)")
      ->check(integer_in(1, 256));
  cmd->add_option("--servers", flags->servers,
                  "Dedicated aggregator ranks (the last ones); 0: aggregators colocated in the "
                  "workers (default)")
      ->check(integer_in(0, 256));
  cmd->add_option("--size", flags->size, "Tensor size (default 100M = 26,214,400 floats)")
      ->check(size_at_least(sizeof(float), "4 bytes (one float)"));
  cmd->add_option("--densities", flags->densities, "Fractions of non-zero blocks per worker")
      ->delimiter(',');
  cmd->add_option("--algos", flags->algos,
                  "omni, agsparse (allgather of index/value lists), ring, gloo (default: "
                  "omni,ring,gloo)")
      ->delimiter(',');
  cmd->add_option("--block", flags->block, "Elements per block (default 256)")
      ->check(positive_integer());
  cmd->add_option("--blocks-per-message", flags->blocks_per_message,
                  "Block fusion: blocks per message (0: default)");
  cmd->add_option("--slots", flags->slots,
                  "Messages in flight per (worker, aggregator) (0: default)");
  cmd->add_option("--iters", flags->iters, "Timed iterations per density and method");
  cmd->add_option("--warmup", flags->warmup, "Untimed iterations after the checked one");
  cmd->add_option("--link-gbps", flags->link_gbps,
                  "Per-host link rate; prints OmniReduce's time over its placement's link bound");
  cmd->add_option("--json", flags->json, "Also write the results as JSON to this file");
  cmd->callback([flags, argc, argv, &exit_code] {
    if (!running_as_rank() && flags->group.rank < 0 && flags->workers + flags->servers > 1) {
      LaunchOptions lo;
      lo.workers = flags->workers + flags->servers;
      exit_code = launch_local(lo, argc, argv);
      return;
    }
    run_rank(*flags);
  });
}

}  // namespace dtrain::app
