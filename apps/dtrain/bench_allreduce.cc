// `dtrain bench allreduce`: times our allreduce (the size switch's pick, or an algorithm forced)
// against Gloo's ring (and MPI_Allreduce when built) in the same run, on the same group,
// interleaving the algorithms iteration by iteration so that machine noise hits all of them alike.
// Every figure is the slowest rank's time of that iteration (ranks start together after a
// barrier). The first call of each algorithm and size is verified (the ranks check they agree on
// the call) and checked against the exact expected sum; the timed calls of ours then skip that
// check (verify=false), as a training loop does once its bucket layout has been checked.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "commands.h"
#include "dtrain/collective/collective.h"
#ifdef DTRAIN_WITH_MPI
#include "dtrain/collective/mpi_baseline.h"
#endif
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "flag_checks.h"
#include "group_flags.h"
#include "launcher.h"

namespace dtrain::app {
namespace {

using collective::AllreduceAlgorithm;

struct BenchFlags {
  GroupFlags group;
  int workers = 4;
  std::vector<std::string> sizes = {"4K", "64K", "256K", "2M", "8M", "64M"};
  std::vector<std::string> algos = {"auto", "gloo"};
  int iters = 20;
  int warmup = 3;
  double link_gbps = 0;
  size_t segment_bytes = 0;
  std::string json;
};

using RunFn = void (*)(const collective::AllreduceOptions&);

struct Algo {
  std::string name;
  RunFn fn;
  bool ours = false;  // dtrain's allreduce: `algorithm` applies, timed calls skip verification
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::kAuto;
};

Algo algo_for(const std::string& name) {
  if (name == "auto") return {name, &collective::allreduce, true, AllreduceAlgorithm::kAuto};
  if (name == "ring") return {name, &collective::allreduce, true, AllreduceAlgorithm::kRing};
  if (name == "hd") {
    return {name, &collective::allreduce, true, AllreduceAlgorithm::kHalvingDoubling};
  }
  if (name == "rd") {
    return {name, &collective::allreduce, true, AllreduceAlgorithm::kRecursiveDoubling};
  }
  if (name == "gloo") return {name, &collective::gloo_allreduce};
#ifdef DTRAIN_WITH_MPI
  if (name == "mpi") return {name, &collective::mpi_allreduce};
#endif
  throw InvalidArgument("--algos: '" + name + "' is not one of auto, ring, hd, rd, gloo" +
#ifdef DTRAIN_WITH_MPI
                        ", mpi"
#else
                        " (mpi needs a build with -DDTRAIN_WITH_MPI=ON)"
#endif
  );
}

void run_rank(const BenchFlags& f) {
  std::vector<size_t> sizes;
  for (const auto& s : f.sizes) sizes.push_back(parse_size(s, "--sizes"));
  std::vector<Algo> algos;
  for (const auto& a : f.algos) algos.push_back(algo_for(a));
  DT_ENFORCE(f.iters >= 1, "--iters must be >= 1, got ", f.iters);
  DT_ENFORCE(f.warmup >= 0, "--warmup must be >= 0, got ", f.warmup);

  auto group = comm::Group::connect(f.group.resolve());
  comm::Group& g = *group;
  log::init(g.rank(), g.size());
  const int n = g.size();
  nlohmann::json results = nlohmann::json::array();
  if (g.rank() == 0) {
    const collective::AllreduceSwitch by_size;
    std::printf(
        "allreduce float32, %d ranks, %d iterations (+%d warm-up), algorithms interleaved; "
        "times are the slowest rank's\n"
        "ours (auto, ring, hd, rd): first call per size verified, timed calls verify=false; "
        "auto = size switch %s\n",
        n, f.iters, f.warmup, by_size.str().c_str());
    std::printf("%-8s %-9s %10s %10s %10s %10s %10s %9s%s\n", "size", "algo", "min ms", "median ms",
                "p99 ms", "algbw GB/s", "busbw GB/s", "vs gloo",
                f.link_gbps > 0 ? "  of bound" : "");
  }
  for (size_t bytes : sizes) {
    const size_t count = bytes / sizeof(float);
    std::vector<float> data(count);
    std::map<std::string, std::vector<double>> times;
    for (size_t a = 0; a < algos.size(); ++a) {
      // Correctness first: rank-unique integers, whose float sums are exact. This call checks
      // that the ranks agree on it (verify), which licenses the unverified timed calls.
      for (size_t i = 0; i < count; ++i) data[i] = float(i % 13 + g.rank());
      collective::AllreduceOptions o(g);
      o.output = data;
      o.segment_bytes = f.segment_bytes;
      o.algorithm = algos[a].algorithm;
      algos[a].fn(o);
      for (size_t i = 0; i < count; ++i) {
        float want = float(n * (i % 13) + n * (n - 1) / 2);
        if (data[i] != want) {
          throw Error(detail::concat("bench: ", f.algos[a], " allreduce of ", count,
                                     " floats is wrong at element ", i, " on rank ", g.rank(), ": ",
                                     data[i], " != ", want));
        }
      }
    }
    for (int it = 0; it < f.warmup + f.iters; ++it) {
      for (size_t k = 0; k < algos.size(); ++k) {
        // Alternate the order so neither algorithm always runs first after the barrier.
        size_t a = (it % 2 == 0) ? k : algos.size() - 1 - k;
        collective::barrier(collective::BarrierOptions(g));
        collective::AllreduceOptions o(g);
        o.output = data;
        o.segment_bytes = f.segment_bytes;
        o.algorithm = algos[a].algorithm;
        o.verify = !algos[a].ours;
        auto t0 = comm::Clock::now();
        algos[a].fn(o);
        double secs = std::chrono::duration<double>(comm::Clock::now() - t0).count();
        // The slowest rank's time is the collective's time.
        secs = slowest(g, secs);
        if (it >= f.warmup) times[f.algos[a]].push_back(secs);
      }
    }
    if (g.rank() != 0) continue;
    double gloo_median = times.count("gloo") ? percentile(times["gloo"], 0.5) : 0;
    for (const auto& name : f.algos) {
      const auto& t = times[name];
      std::string shown = name;
      if (name == "auto") {
        auto picked = collective::AllreduceSwitch().pick(bytes, n);
        shown += picked == AllreduceAlgorithm::kRing              ? ":ring"
                 : picked == AllreduceAlgorithm::kHalvingDoubling ? ":hd"
                                                                  : ":rd";
      }
      double mn = percentile(t, 0), med = percentile(t, 0.5), p99 = percentile(t, 0.99);
      double algbw = bytes / med / 1e9;
      double busbw = algbw * 2.0 * (n - 1) / n;
      double bound = f.link_gbps > 0 ? 2.0 * (n - 1) / n * bytes * 8 / (f.link_gbps * 1e9) : 0;
      char vsbuf[32];
      std::snprintf(vsbuf, sizeof(vsbuf), gloo_median > 0 ? "%.3fx" : "-", med / gloo_median);
      std::printf("%-8s %-9s %10.3f %10.3f %10.3f %10.3f %10.3f %9s", human_size(bytes).c_str(),
                  shown.c_str(), mn * 1e3, med * 1e3, p99 * 1e3, algbw, busbw, vsbuf);
      if (bound > 0) std::printf("  %7.1f%%", 100.0 * bound / med);
      std::printf("\n");
      results.push_back({{"size_bytes", bytes},
                         {"algo", shown},
                         {"ranks", n},
                         {"min_s", mn},
                         {"median_s", med},
                         {"p99_s", p99},
                         {"algbw_GBps", algbw},
                         {"busbw_GBps", busbw},
                         {"ratio_to_gloo", gloo_median > 0 ? med / gloo_median : 0.0},
                         {"fraction_of_link_bound", bound > 0 ? bound / med : 0.0}});
    }
    std::fflush(stdout);
  }
  if (g.rank() == 0 && !f.json.empty()) write_json_file(f.json, results);
}

}  // namespace

void add_bench_allreduce(CLI::App& bench, int argc, char** argv, int& exit_code) {
  auto flags = std::make_shared<BenchFlags>();
  auto* cmd = bench.add_subcommand("allreduce", "Our allreduce vs Gloo's ring (and MPI)");
  flags->group.add_to(*cmd);
  cmd->add_option("--workers", flags->workers,
                  "Local ranks to start when not launched externally (default 4)")
      ->check(integer_in(1, 256));
  cmd->add_option("--sizes", flags->sizes, "Message sizes, e.g. 4K,1M,64M")
      ->delimiter(',')
      ->check(size_at_least(sizeof(float), "4 bytes (one float)"));
  cmd->add_option("--algos", flags->algos,
                  "Algorithms: auto (ours, picked by size), ring, hd (halving-doubling), rd "
                  "(recursive doubling), gloo (Gloo's ring), mpi (when built); default auto,gloo")
      ->delimiter(',');
  cmd->add_option("--iters", flags->iters, "Timed iterations per size and algorithm");
  cmd->add_option("--warmup", flags->warmup, "Untimed iterations first");
  cmd->add_option("--link-gbps", flags->link_gbps,
                  "Per-host link rate; prints the fraction of the ring bound 2(N-1)/N*S/B reached");
  cmd->add_option("--segment-bytes", flags->segment_bytes, "Ring pipelining segment (0: by size)");
  cmd->add_option("--json", flags->json, "Also write the results as JSON to this file");
  cmd->callback([flags, argc, argv, &exit_code] {
    if (!running_as_rank() && flags->group.rank < 0 && flags->workers > 1) {
      LaunchOptions lo;
      lo.workers = flags->workers;
      exit_code = launch_local(lo, argc, argv);
      return;
    }
    run_rank(*flags);
  });
}

}  // namespace dtrain::app
