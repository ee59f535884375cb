#include "loop.h"

#include <algorithm>
#include <cstdio>

#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"
#include "dtrain/data/shard.h"
#include "evaluation.h"

namespace dtrain::train {

TrainResult run_loop(Run& run, Scheme& scheme, const CheckpointMeta& start) {
  const TrainOptions& o = run.o;
  comm::Group& g = run.g;
  const int world = run.world;
  const int64_t n_train = run.data.x_train.size(0);
  Progress progress(o.quiet || !run.lead, run.steps_per_epoch);
  if (run.lead && !o.quiet) {
    std::printf(
        "training %s on %s: %d workers x batch %d x %d micro-batches, %lld steps/epoch, %s\n",
        o.model.c_str(), run.data.description.c_str(), world, o.batch_size, o.accumulate,
        (long long)run.steps_per_epoch, scheme.describe().c_str());
    std::fflush(stdout);
  }

  TrainResult result;
  TrainingClock clock;
  TargetTracker target(o.target_accuracy);
  int64_t step = start.step;
  // A resumed run continues the clocks and counters where the checkpoint left them.
  const nlohmann::json before =
      start.progress.is_object() ? start.progress : nlohmann::json::object();
  const double time0 = before.value("time_s", 0.0), eval0 = before.value("eval_s", 0.0);
  const uint64_t sent0 = before.value("bytes_sent", uint64_t{0});
  const uint64_t received0 = before.value("bytes_recv", uint64_t{0});
  if (before.contains("target")) target.restore(before["target"]);
  const auto elapsed_total = [&] { return time0 + clock.elapsed(); };
  const auto eval_total = [&] { return eval0 + clock.paused(); };
  const auto sent_total = [&] { return sent0 + scheme.bytes_sent(); };
  const auto received_total = [&] { return received0 + scheme.bytes_received(); };
  const auto samples = [&] { return step * run.per_step * world; };
  const auto progress_record = [&] {
    return nlohmann::json{{"time_s", elapsed_total()},
                          {"eval_s", eval_total()},
                          {"bytes_sent", sent_total()},
                          {"bytes_recv", received_total()},
                          {"target", target.state()}};
  };
  // Evaluates the test set (off the training clock) and tracks the target; all ranks call it.
  struct Evaluation {
    double accuracy, loss, time_s;
  };
  auto evaluation = [&](int epoch, const char* kind) -> Evaluation {
    clock.pause();
    std::pair<double, double> r;
    scheme.with_evaluation_model([&] { r = evaluate(*run.model, run.data, g); });
    clock.resume();
    const double t = elapsed_total();
    if (std::string(kind) == "eval") {
      run.metrics.write({{"kind", "eval"},
                         {"epoch", epoch},
                         {"step", step},
                         {"time_s", t},
                         {"eval_s", eval_total()},
                         {"samples", samples()},
                         {"test_accuracy", r.first},
                         {"test_loss", r.second},
                         {"rounds", scheme.rounds()},
                         {"bytes_sent", sent_total()}});
    }
    if (target.add(step, t, r.first)) {
      run.metrics.write({{"kind", "target"},
                         {"target_accuracy", target.target()},
                         {"step", step},
                         {"time_s", t},
                         {"eval_s", eval_total()},
                         {"samples", samples()},
                         {"rounds", scheme.rounds()},
                         {"bytes_sent", sent_total()}});
      if (run.lead && !o.quiet) {
        progress.epoch_done(detail::concat("reached ", o.target_accuracy * 100,
                                           "% test accuracy (second evaluation in a row) at step ",
                                           step, ", ", t, " s of training"));
      }
    }
    return {r.first, r.second, t};
  };

  scheme.on_start(start.step);
  clock.start();
  double phase[5] = {0, 0, 0, 0, 0};  // data, forward, backward, comm_wait, optimizer
  double loss_sum = 0;
  int64_t loss_count = 0;
  bool stop = false;
  int last_epoch = start.epoch;
  int64_t last_position = start.position;
  for (int epoch = start.epoch; epoch < o.epochs && !stop; ++epoch) {
    auto shard = data::shard_indices(n_train, g.rank(), world, o.seed, epoch);
    auto index = torch::from_blob(shard.data(), {int64_t(shard.size())}, torch::kInt64).clone();
    const double epoch_start = elapsed_total();
    // phase_s records are per epoch (a report sums them over epochs).
    std::fill(std::begin(phase), std::end(phase), 0.0);
    const double comm_before = scheme.comm_stats().comm_s,
                 hidden_before = scheme.comm_stats().hidden_s;
    const int64_t first = epoch == start.epoch ? start.position : 0;
    for (int64_t s = first; s < run.steps_per_epoch; ++s) {
      if (o.max_steps >= 0 && step >= o.max_steps) {
        stop = true;
        break;
      }
      const StepResult r = train_step(run, index, s, step, scheme.communicate(step));
      phase[0] += r.data_s;
      phase[1] += r.forward_s;
      phase[2] += r.backward_s;
      phase[3] += r.wait_s;
      phase[4] += r.optimizer_s;
      scheme.after_step(step, r);
      ++step;
      last_epoch = epoch;
      last_position = s + 1;
      loss_sum += r.loss;
      ++loss_count;
      const double elapsed = elapsed_total();
      progress.step(epoch, s, r.loss,
                    (step - start.step) * run.per_step * world / std::max(clock.elapsed(), 1e-9),
                    sent_total() / 1e6);
      // The reducers' figures of every step (rank 0's): cheap scalars, no collective.
      if (auto figures = scheme.step_figures(); figures.is_object()) {
        nlohmann::json record = {{"kind", "reduce"}, {"step", step}};
        record.update(figures);
        run.metrics.write(record);
      }
      if (step % o.log_every == 0) {
        run.metrics.write({{"kind", "step"},
                           {"epoch", epoch},
                           {"step", step},
                           {"time_s", elapsed},
                           {"loss", run.global_mean(r.loss)},
                           {"samples", samples()},
                           {"rounds", scheme.rounds()},
                           {"bytes_sent", sent_total()},
                           {"bytes_recv", received_total()}});
      }
      if (o.eval_every > 0 && step % o.eval_every == 0 && s + 1 < run.steps_per_epoch) {
        evaluation(epoch, "eval");
      }
      if (o.checkpoint_every > 0 && step % o.checkpoint_every == 0) {
        scheme.save(epoch, s + 1, step, progress_record());
      }
    }
    // Epoch summary (also for a partial epoch cut short by --max-steps).
    const auto [acc, test_loss, elapsed] = evaluation(epoch, "epoch");
    const double train_loss = run.global_mean(loss_count ? loss_sum / loss_count : 0.0);
    const double epoch_s = elapsed - epoch_start;
    const auto stats = scheme.comm_stats();
    run.metrics.write({{"kind", "epoch"},
                       {"epoch", epoch},
                       {"step", step},
                       {"time_s", elapsed},
                       {"eval_s", eval_total()},
                       {"train_loss", train_loss},
                       {"test_loss", test_loss},
                       {"test_accuracy", acc},
                       {"samples", samples()},
                       {"samples_per_s", samples() / std::max(elapsed, 1e-9)},
                       {"rounds", scheme.rounds()},
                       {"bytes_sent", sent_total()},
                       {"bytes_recv", received_total()},
                       {"phase_s",
                        {{"data", phase[0]},
                         {"forward", phase[1]},
                         {"backward", phase[2]},
                         {"comm_wait", phase[3]},
                         {"optimizer", phase[4]},
                         {"comm", stats.comm_s - comm_before},
                         {"comm_hidden", stats.hidden_s - hidden_before}}}});
    progress.epoch_done(detail::concat("epoch ", epoch + 1, "/", o.epochs, ": train loss ",
                                       train_loss, ", test accuracy ", acc * 100, "%, ", epoch_s,
                                       " s, ", sent_total() / 1e6, " MB sent/rank"));
    result.test_accuracy = acc;
    result.test_loss = test_loss;
    result.train_loss = train_loss;
    loss_sum = 0;
    loss_count = 0;
  }
  // The final checkpoint: at the end of the last epoch, or where --max-steps stopped.
  if (last_position == run.steps_per_epoch) {
    scheme.save(last_epoch + 1, 0, step, progress_record());
  } else {
    scheme.save(last_epoch, last_position, step, progress_record());
  }
  const auto stats = scheme.comm_stats();
  result.steps = step;
  result.time_s = elapsed_total();
  result.samples_per_s = samples() / std::max(result.time_s, 1e-9);
  result.bytes_sent = sent_total();
  result.bytes_received = received_total();
  result.comm_s = stats.comm_s;
  result.comm_wait_s = stats.wait_s;
  result.comm_hidden_s = stats.hidden_s;
  result.skipped_steps = stats.skipped_steps;
  result.eval_s = eval_total();
  result.time_to_target_s = target.reached() ? target.reached_time_s() : -1;
  result.rounds = scheme.rounds();
  Fnv1a hash;
  for (const auto& p : run.model->parameters()) {
    const auto t = p.detach().contiguous();
    hash.bytes(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
  }
  result.parameters_hash = hash.digest();
  nlohmann::json final_record = {{"kind", "final"},
                                 {"time_s", result.time_s},
                                 {"eval_s", result.eval_s},
                                 {"steps", step},
                                 {"rounds", result.rounds},
                                 {"test_accuracy", result.test_accuracy},
                                 {"samples_per_s", result.samples_per_s},
                                 {"bytes_sent", result.bytes_sent},
                                 {"bytes_recv", result.bytes_received},
                                 {"comm_s", result.comm_s},
                                 {"comm_wait_s", result.comm_wait_s},
                                 {"comm_hidden_s", result.comm_hidden_s},
                                 {"skipped_steps", result.skipped_steps}};
  if (target.enabled()) {
    final_record["target_accuracy"] = target.target();
    final_record["time_to_target_s"] =
        target.reached() ? nlohmann::json(target.reached_time_s()) : nlohmann::json(nullptr);
    final_record["target_step"] =
        target.reached() ? nlohmann::json(target.reached_step()) : nlohmann::json(nullptr);
  }
  scheme.finish(final_record);
  run.metrics.write(final_record);
  if (!o.timeline.empty()) run.write_timeline(o.timeline);
  return result;
}

}  // namespace dtrain::train
