// `dtrain bench model-parallel`: one MLP replica split over 1, 2, 4... ranks (by neurons, and by
// layers where the model has enough layers), in one run: the job's ranks split into a sub-group
// of the first K ranks for each K while the others wait. Per setting: the median step time
// (forward and backward of a batch, the slowest partition's time), the speedup over one rank and
// the bytes the partitions' transfers sent per step (payload, all partitions together). The
// partition by layers is measured without micro-batches (a stage's weight gradients overlap the
// stages before it, nothing else does) and with --micro-batches (pipelined).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "commands.h"
#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "dtrain/torch/partitioned_mlp.h"
#include "dtrain/train/trainer.h"
#include "flag_checks.h"
#include "group_flags.h"
#include "launcher.h"

namespace dtrain::app {
namespace {

struct BenchFlags {
  GroupFlags group;
  int workers = 4;
  int64_t width = 8192;
  std::vector<int> depths = {1, 4};
  int64_t batch = 64;
  int iters = 5;
  int warmup = 1;
  int threads = 1;
  int micro_batches = 4;
  std::string json;
};

void run_rank(const BenchFlags& f) {
  DT_ENFORCE(f.iters >= 1, "--iters must be >= 1, got ", f.iters);
  DT_ENFORCE(f.warmup >= 0, "--warmup must be >= 0, got ", f.warmup);
  train::pin_threads(f.threads);
  auto group = comm::Group::connect(f.group.resolve());
  comm::Group& g = *group;
  log::init(g.rank(), g.size());
  std::vector<int> sizes;
  for (int k = 1; k <= g.size(); k *= 2) sizes.push_back(k);
  if (g.rank() == 0) {
    std::printf(
        "model parallelism: MLP of width %lld, batch %lld, %d iterations (+%d warm-up), %d "
        "thread(s) per rank; step = forward + backward, the slowest partition's time;\n"
        "ranks 1: the unsplit model through the same code (neurons: LibTorch autograd; layers: "
        "backward by hand), the baseline of that split's speedup\n",
        (long long)f.width, (long long)f.batch, f.iters, f.warmup, f.threads);
    std::printf("%-8s %-10s %5s %12s %9s %16s %14s\n", "layers", "split", "ranks", "step ms (med)",
                "speedup", "MB crossing/step", "weights/rank M");
  }
  nlohmann::json results = nlohmann::json::array();
  DT_ENFORCE(f.width >= sizes.back(), "--width ", f.width, ": a split by neurons over ",
             sizes.back(), " ranks needs at least that many units per layer");
  for (int depth : f.depths) {
    DT_ENFORCE(depth >= 1, "--depths: a model needs at least one layer, got ", depth);
    const std::vector<int64_t> widths(depth + 1, f.width);
    // Every rank the same batch (the partitions' initialisations drew different amounts).
    torch::manual_seed(1);
    const auto x = torch::randn({f.batch, f.width});
    const auto y = torch::randint(f.width, {f.batch}, torch::kLong);
    double one_rank[2] = {0, 0};  // by neurons' code (autograd), by layers' (backward by hand)
    struct Setting {
      torchx::Partitioning how;
      int micro_batches;
    };
    const std::vector<Setting> settings = {{torchx::Partitioning::kNeurons, 1},
                                           {torchx::Partitioning::kLayers, 1},
                                           {torchx::Partitioning::kLayers, f.micro_batches}};
    for (size_t si = 0; si < settings.size(); ++si) {
      const auto [how, micro] = settings[si];
      if (si == 2 && micro == 1) continue;
      for (int k : sizes) {
        // One rank (the unsplit model) through each code path; a pipeline needs a layer per
        // stage.
        if (k == 1 && si == 2) continue;
        if (how == torchx::Partitioning::kLayers && k > depth) continue;
        auto sub = g.split(g.rank() < k ? 0 : -1, g.rank());
        std::vector<double> times;
        uint64_t bytes = 0;
        int64_t weights = 0;
        if (sub) {
          torchx::PartitionedMlp pm(widths, how, sub, k == 1 ? 1 : micro);
          for (const auto& p : pm.parameters()) weights += p.numel();
          for (int it = 0; it < f.warmup + f.iters; ++it) {
            collective::barrier(collective::BarrierOptions(*sub));
            pm.zero_grad();
            const auto t0 = comm::Clock::now();
            const auto r = pm.step(x, y);
            double secs = std::chrono::duration<double>(comm::Clock::now() - t0).count();
            secs = slowest(*sub, secs);
            if (it >= f.warmup) {
              times.push_back(secs);
              bytes = r.bytes_sent;
            }
          }
          // All partitions' bytes together.
          std::vector<int64_t> all = {static_cast<int64_t>(bytes), weights};
          collective::AllreduceOptions o(*sub);
          o.output = all;
          o.op = collective::ReduceOp::kMax;
          std::vector<int64_t> sum = {static_cast<int64_t>(bytes)};
          collective::AllreduceOptions s(*sub);
          s.output = sum;
          collective::allreduce(s);
          collective::allreduce(o);
          bytes = static_cast<uint64_t>(sum[0]);
          weights = all[1];
        }
        // The ranks outside the sub-group wait here for as long as the setting runs.
        collective::BarrierOptions wait_all(g);
        wait_all.timeout = comm::Millis(24 * 3600 * 1000);
        collective::barrier(wait_all);
        if (g.rank() != 0) continue;
        const double med = percentile(times, 0.5);
        double& base = one_rank[how == torchx::Partitioning::kLayers ? 1 : 0];
        if (k == 1) base = med;
        std::string split = torchx::name(how);
        if (k > 1 && micro > 1) split += "/" + std::to_string(micro);
        std::printf("%-8d %-10s %5d %12.1f %8.2fx %16.2f %14.1f\n", depth, split.c_str(), k,
                    med * 1e3, base > 0 ? base / med : 0.0, double(bytes) / 1e6, weights / 1e6);
        std::fflush(stdout);
        results.push_back({{"layers", depth},
                           {"width", f.width},
                           {"batch", f.batch},
                           {"split", split},
                           {"micro_batches", k == 1 ? 1 : micro},
                           {"ranks", k},
                           {"median_step_s", med},
                           {"speedup", base > 0 ? base / med : 0.0},
                           {"bytes_crossing_per_step", bytes},
                           {"max_weights_per_rank", weights},
                           {"threads_per_rank", f.threads}});
      }
    }
  }
  if (g.rank() == 0 && !f.json.empty()) write_json_file(f.json, results);
}

}  // namespace

void add_bench_model_parallel(CLI::App& bench, int argc, char** argv, int& exit_code) {
  auto flags = std::make_shared<BenchFlags>();
  auto* cmd = bench.add_subcommand(
      "model-parallel", "One MLP replica split by neurons or layers over 1, 2, 4... ranks");
  flags->group.add_to(*cmd);
  cmd->add_option("--workers", flags->workers,
                  "Local ranks to start when not launched externally; partitions of 1, 2, 4... "
                  "up to it are measured (default 4)")
      ->check(integer_in(1, 64));
  cmd->add_option("--width", flags->width, "Units of every layer, input included (default 8192)")
      ->check(integer_in(1, 65536));
  cmd->add_option("--depths", flags->depths, "Layer counts of the models measured (default 1,4)")
      ->delimiter(',');
  cmd->add_option("--batch", flags->batch, "Samples per step (default 64)")
      ->check(integer_in(1, 1 << 20));
  cmd->add_option("--iters", flags->iters, "Timed steps per setting (default 5)");
  cmd->add_option("--warmup", flags->warmup, "Untimed steps first (default 1)");
  cmd->add_option("--threads", flags->threads, "LibTorch/OpenBLAS threads per rank (default 1)")
      ->check(integer_in(1, 256));
  cmd->add_option("--micro-batches", flags->micro_batches,
                  "Partition by layers: also measured with this many micro-batches per step "
                  "(pipelined; default 4)")
      ->check(integer_in(1, 1 << 20));
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
