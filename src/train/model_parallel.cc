// --model-parallel K: model parallelism within a replica, synchronous data parallelism across
// replicas (DistBelief's two levels on one job).
//
// Works as follows. The W ranks form W / K replicas of K consecutive ranks: rank r is partition
// r % K of replica r / K. Two splits of the job's group give each rank its replica's group (the
// partitions that exchange activations) and its partition's group across replicas (where that
// partition's gradients are averaged). Every rank builds the whole mlp from --seed, as the other
// schemes do, and keeps its slice. A replica reads the shard of replica index r / K out of W / K,
// so the run sees the data a data-parallel run of W / K workers sees, step for step. All
// partitions of a replica take the same batch; each step runs forward and backward across the
// partitions, averages each partition's gradients over the replicas (one dense allreduce), and
// applies the optimizer to the partition's own parameters (its state stays with the partition,
// exactly as a data-parallel rank keeps the state of all parameters). Replica 0 evaluates the
// test set at each epoch's end; rank 0 writes the records.
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "dtrain/data/shard.h"
#include "dtrain/torch/partitioned_mlp.h"
#include "evaluation.h"
#include "schemes.h"

namespace dtrain::train {
namespace {

// Accuracy and mean loss of the test set, on every rank of a replica (all of them take part).
std::pair<double, double> evaluate_partitioned(torchx::PartitionedMlp& pm, const TensorData& d) {
  const int64_t n = d.x_test.size(0);
  int64_t correct = 0;
  double loss_sum = 0;
  constexpr int64_t kChunk = 1000;
  for (int64_t b = 0; b < n; b += kChunk) {
    const int64_t e = std::min(n, b + kChunk);
    const auto logits = pm.infer(d.x_test.slice(0, b, e));
    const auto y = d.y_test.slice(0, b, e);
    correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    loss_sum +=
        torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
  }
  return {double(correct) / double(std::max<int64_t>(n, 1)),
          loss_sum / double(std::max<int64_t>(n, 1))};
}

// Bytes of the gradient buffer a partition averages each step.
size_t averaged_per_step(torch::nn::Module& partition) {
  size_t n = 0;
  for (const auto& p : partition.parameters()) n += static_cast<size_t>(p.numel());
  return n * sizeof(float);
}

double mean_over(comm::Group& g, double v) {
  collective::AllreduceOptions o(g);
  o.output = collective::View(&v, 1, collective::DataType::kFloat64);
  o.op = collective::ReduceOp::kAvg;
  collective::allreduce(o);
  return v;
}

}  // namespace

TrainResult train_model_parallel(const TrainOptions& o, comm::Group& g) {
  const int k = o.model_parallel;
  const int world = g.size();
  DT_ENFORCE(world % k == 0, "--model-parallel ", k, ": the ", world,
             " ranks do not make whole replicas of ", k, " ranks (--workers must be a multiple)");
  const int replicas = world / k, replica = g.rank() / k, part = g.rank() % k;
  const bool lead = g.rank() == 0;
  pin_threads(o.threads);
  std::shared_ptr<comm::Group> row = g.split(replica, part);
  std::shared_ptr<comm::Group> column = g.split(part, replica);
  TrainResult result;
  // A rank's failure reaches its partners in both sub-groups at once (they hear nothing of the
  // job group's notices), then the job group (the caller's run_rank).
  comm::run_rank(*row, [&] {
    comm::run_rank(*column, [&] {
      const TensorData data = load_data(o);
      std::vector<int64_t> widths = {data.input_dim};
      widths.insert(widths.end(), o.hidden.begin(), o.hidden.end());
      widths.push_back(data.classes);
      torchx::PartitionedMlp pm(widths, torchx::parse_partitioning(o.partition), row, o.pipeline);
      pm.load_slices(*make_model(o, data));  // the same initial model as every other scheme
      auto optimizer = make_optimizer(o, pm);

      const int64_t n_train = data.x_train.size(0);
      const int64_t steps_per_epoch = (n_train / replicas) / o.batch_size;
      DT_ENFORCE(steps_per_epoch >= 1, "the training set (", n_train, " samples) is too small for ",
                 replicas, " replicas with --batch-size ", o.batch_size);

      MetricsLog metrics;
      if (lead && !o.out_dir.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(o.out_dir, ec);
        DT_ENFORCE(!ec && std::filesystem::is_directory(o.out_dir), "--out ", o.out_dir,
                   ": cannot create the run directory");
        write_config(o, data, world, o.out_dir);
        metrics = MetricsLog(o.out_dir, false);
      }
      Progress progress(o.quiet || !lead, steps_per_epoch);
      if (lead && !o.quiet) {
        std::printf(
            "training mlp on %s: %d replicas x %d partitions (by %s) x batch %d, %lld "
            "steps/epoch\n",
            data.description.c_str(), replicas, k, torchx::name(pm.partitioning()), o.batch_size,
            (long long)steps_per_epoch);
        std::fflush(stdout);
      }

      TrainingClock clock;
      uint64_t crossing = 0;  // bytes this rank sent to the other partitions of its replica
      uint64_t averaged = 0;  // bytes of the gradient buffers this rank averaged across replicas
      // What this rank sent: the partitions' exchanges, and what the allreduce the size switch
      // picks for the averaged buffer sends from a rank: 2 (R - 1) / R of it for the ring and
      // halving-doubling, log2(R) times it for recursive doubling (a world that is not a power of
      // two adds a fold: not counted).
      const double per_byte = [&] {
        if (replicas == 1) return 0.0;
        const size_t buffer = averaged_per_step(pm);
        const auto a = collective::AllreduceSwitch().pick(buffer, replicas);
        if (a == collective::AllreduceAlgorithm::kRecursiveDoubling) {
          return std::floor(std::log2(double(replicas)));
        }
        return 2.0 * (replicas - 1) / replicas;
      }();
      const auto sent = [&] {
        return crossing + static_cast<uint64_t>(per_byte * double(averaged));
      };
      int64_t step = 0;
      clock.start();
      for (int epoch = 0; epoch < o.epochs; ++epoch) {
        auto shard = data::shard_indices(n_train, replica, replicas, o.seed, epoch);
        auto index = torch::from_blob(shard.data(), {int64_t(shard.size())}, torch::kInt64).clone();
        double loss_sum = 0;
        int64_t loss_count = 0;
        bool stop = false;
        for (int64_t s = 0; s < steps_per_epoch; ++s) {
          if (o.max_steps >= 0 && step >= o.max_steps) {
            stop = true;
            break;
          }
          const auto bi = index.slice(0, s * o.batch_size, (s + 1) * o.batch_size);
          optimizer->zero_grad();
          const auto r =
              pm.step(data.x_train.index_select(0, bi), data.y_train.index_select(0, bi));
          crossing += r.bytes_sent;
          averaged += torchx::average_gradients(pm, *column);
          optimizer->step();
          ++step;
          loss_sum += r.loss;
          ++loss_count;
          progress.step(epoch, s, r.loss,
                        double(step) * o.batch_size * replicas / std::max(clock.elapsed(), 1e-9),
                        sent() / 1e6);
          if (step % o.log_every == 0) {
            const double loss = mean_over(*column, r.loss);  // every partition knows its replica's
            metrics.write({{"kind", "step"},
                           {"epoch", epoch},
                           {"step", step},
                           {"time_s", clock.elapsed()},
                           {"loss", loss},
                           {"samples", step * o.batch_size * replicas},
                           {"rounds", step},
                           {"bytes_sent", sent()},
                           {"bytes_crossing_partitions", crossing}});
          }
        }
        clock.pause();
        std::pair<double, double> eval{0, 0};
        if (replica == 0) eval = evaluate_partitioned(pm, data);
        clock.resume();
        const double train_loss = mean_over(*column, loss_count ? loss_sum / loss_count : 0.0);
        const double elapsed = clock.elapsed();
        const int64_t samples = step * o.batch_size * replicas;
        metrics.write({{"kind", "epoch"},
                       {"epoch", epoch},
                       {"step", step},
                       {"time_s", elapsed},
                       {"eval_s", clock.paused()},
                       {"train_loss", train_loss},
                       {"test_loss", eval.second},
                       {"test_accuracy", eval.first},
                       {"samples", samples},
                       {"samples_per_s", samples / std::max(elapsed, 1e-9)},
                       {"rounds", step},
                       {"bytes_sent", sent()},
                       {"bytes_crossing_partitions", crossing}});
        progress.epoch_done(detail::concat("epoch ", epoch + 1, "/", o.epochs, ": train loss ",
                                           train_loss, ", test accuracy ", eval.first * 100, "%, ",
                                           crossing / 1e6, " MB crossed partitions from rank 0"));
        result.test_accuracy = eval.first;
        result.test_loss = eval.second;
        result.train_loss = train_loss;
        if (stop) break;
      }
      result.steps = step;
      result.rounds = step;
      result.time_s = clock.elapsed();
      result.eval_s = clock.paused();
      result.samples_per_s = double(step) * o.batch_size * replicas / std::max(result.time_s, 1e-9);
      result.bytes_sent = sent();
      metrics.write({{"kind", "final"},
                     {"time_s", result.time_s},
                     {"eval_s", result.eval_s},
                     {"steps", step},
                     {"rounds", step},
                     {"test_accuracy", result.test_accuracy},
                     {"samples_per_s", result.samples_per_s},
                     {"bytes_sent", result.bytes_sent},
                     {"bytes_crossing_partitions", crossing},
                     {"model_parallel", k},
                     {"partition", torchx::name(pm.partitioning())}});
    });
  });
  return result;
}

}  // namespace dtrain::train
