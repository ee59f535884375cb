// validate(): every training option checked before any worker starts; check_same_flags(): the
// ranks agree on them.
#include "flags.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"
#include "dtrain/engine/engine.h"
#include "dtrain/ps/consistency.h"
#include "dtrain/torch/partitioned_mlp.h"
#include "dtrain/ps/update_rule.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/torch/models.h"
#include "dtrain/train/local_sgd_schedule.h"
#include "dtrain/train/sandblaster.h"

namespace dtrain::train {
namespace {

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// (flag, value) pairs of the flags that decide the model, the data order, the buckets and the
// collectives each step makes.
std::vector<std::pair<const char*, std::string>> shared_flags(const TrainOptions& o) {
  std::string hidden;
  for (int64_t h : o.hidden) hidden += std::to_string(h) + ",";
  auto num = [](double x) { return nlohmann::json(x).dump(); };
  return {{"--model", o.model},
          {"--hidden", hidden},
          {"--train-subset", std::to_string(o.train_subset)},
          {"--test-subset", std::to_string(o.test_subset)},
          {"--fields", std::to_string(o.fields)},
          {"--vocab", std::to_string(o.vocab)},
          {"--embed-dim", std::to_string(o.embed_dim)},
          {"synthetic_train", std::to_string(o.synthetic_train)},
          {"synthetic_test", std::to_string(o.synthetic_test)},
          {"--epochs", std::to_string(o.epochs)},
          {"--batch-size", std::to_string(o.batch_size)},
          {"--accumulate", std::to_string(o.accumulate)},
          {"--lr", num(o.lr)},
          {"--momentum", num(o.momentum)},
          {"--optimizer", o.optimizer},
          {"--seed", std::to_string(o.seed)},
          {"--max-steps", std::to_string(o.max_steps)},
          {"--algorithm", o.algorithm},
          {"--reduce", o.reduce},
          {"--average", o.average},
          {"--schedule", o.schedule},
          {"--on-nonfinite", o.on_nonfinite},
          {"--checkpoint-every", std::to_string(o.checkpoint_every)},
          {"--resume", o.resume.empty() ? "" : "given"},
          {"--log-every", std::to_string(o.log_every)},
          {"--eval-every", std::to_string(o.eval_every)},
          {"--target-accuracy", num(o.target_accuracy)},
          {"--model-parallel", std::to_string(o.model_parallel)},
          {"--partition", o.partition},
          {"--pipeline", std::to_string(o.pipeline)}};
}

// --algorithm downpour's own flags, and the ones it does not take.
void validate_downpour(const TrainOptions& o) {
  DT_ENFORCE(o.servers >= 1, "--algorithm downpour needs --servers S (S >= 1 parameter-server ",
             "ranks), got ", o.servers);
  DT_ENFORCE(o.n_fetch >= 1, "--n-fetch must be >= 1 (steps between parameter fetches), got ",
             o.n_fetch);
  DT_ENFORCE(o.n_push >= 1, "--n-push must be >= 1 (steps between gradient pushes), got ",
             o.n_push);
  DT_ENFORCE(o.warm_start >= 0, "--warm-start must be >= 0 (replica 0's pushes before the "
             "others start), got ", o.warm_start);
  ps::Consistency::parse(o.consistency, "--consistency");
  // The shards resume from and keep checkpointing into one directory.
  DT_ENFORCE(o.resume.empty() || o.out_dir.empty() ||
                 std::filesystem::path(o.resume).lexically_normal() ==
                     std::filesystem::path(o.out_dir).lexically_normal(),
             "--algorithm downpour resumes in place: the shards continue their checkpoints in "
             "--resume ", o.resume, "; give it without --out (or --out the same directory), not "
             "--out ", o.out_dir);
  if (!o.server_update.empty()) ps::UpdateRule::parse(o.server_update, "--server-update");
  DT_ENFORCE(o.accumulate == 1, "--accumulate ", o.accumulate, " is not taken by --algorithm ",
             "downpour: use --n-push to accumulate gradients over steps");
  DT_ENFORCE(o.reduce == "dense" && o.average.empty(), "--algorithm downpour sends gradients to ",
             "the parameter servers; --reduce/--average choose the reducers of sync and local ",
             "training and are not taken with it");
  DT_ENFORCE(o.timeline.empty(), "--timeline is not recorded by --algorithm downpour");
}

// --algorithm sandblaster's own flags, and the ones it does not take.
void validate_sandblaster(const TrainOptions& o) {
  DT_ENFORCE(o.servers >= 1, "--algorithm sandblaster needs --servers S (S >= 1 parameter-server ",
             "ranks; the coordinator runs beside shard 0), got ", o.servers);
  DT_ENFORCE(o.portions >= 0, "--portions must be >= 0 (0: 8 per replica), got ", o.portions);
  // Each pair is two named vectors on the shards, which hold at most 1024 (ps/server.cc).
  DT_ENFORCE(o.lbfgs_history >= 1 && o.lbfgs_history <= 256,
             "--lbfgs-history must be in [1, 256], got ", o.lbfgs_history);
  DT_ENFORCE(o.n_fetch == 1 && o.n_push == 1 && o.consistency == "async" &&
                 o.server_update.empty() && o.warm_start == 0,
             "--n-fetch, --n-push, --consistency, --server-update and --warm-start are "
             "Downpour's; --algorithm sandblaster fetches once per batch and sums portions");
  DT_ENFORCE(o.l2 >= 0 && std::isfinite(o.l2), "--l2 must be >= 0, got ", o.l2);
  DT_ENFORCE(o.model != "embed", "--algorithm sandblaster trains logreg, mlp or cnn (full-batch ",
             "L-BFGS over dense parameters), not embed");
  DT_ENFORCE(o.resume.empty(), "--algorithm sandblaster does not resume (--resume ", o.resume,
             "): its L-BFGS history lives on the shards, which do not checkpoint it");
  DT_ENFORCE(o.reduce == "dense" && o.average.empty() && o.timeline.empty() && o.accumulate == 1,
             "--algorithm sandblaster sends portion gradients to the parameter servers; --reduce, ",
             "--average, --timeline and --accumulate are not taken with it");
  parse_slow_rank(o.slow_rank);
}

// --model-parallel's combinations: the partitioned MLP trains with synchronous data parallelism
// across replicas, or with Downpour (each partition pushes and pulls its own keys).
void validate_model_parallel(const TrainOptions& o) {
  DT_ENFORCE(o.model_parallel >= 1, "--model-parallel must be >= 1 (ranks per replica), got ",
             o.model_parallel);
  const auto how = torchx::parse_partitioning(o.partition);
  DT_ENFORCE(o.pipeline >= 1 && o.pipeline <= o.batch_size, "--pipeline must be in [1, ",
             "--batch-size ", o.batch_size, "] (micro-batches per step), got ", o.pipeline);
  DT_ENFORCE(o.pipeline == 1 || (o.model_parallel > 1 && how == torchx::Partitioning::kLayers),
             "--pipeline ", o.pipeline, " pipelines the stages of --model-parallel K ",
             "--partition layers; it is not taken otherwise");
  if (o.model_parallel == 1) {
    DT_ENFORCE(o.partition == "neurons", "--partition ", o.partition,
               " splits a replica over ranks; it needs --model-parallel K with K >= 2");
    return;
  }
  const std::string mp = "--model-parallel " + std::to_string(o.model_parallel);
  DT_ENFORCE(o.model == "mlp", mp, " partitions the mlp (by neurons or layers), not --model ",
             o.model);
  const int layers = static_cast<int>(o.hidden.size()) + 1;
  DT_ENFORCE(how == torchx::Partitioning::kNeurons || o.model_parallel <= layers, mp,
             " --partition layers needs a layer per stage; the mlp has ", layers,
             " (--hidden adds more)");
  for (int64_t h : o.hidden) {
    DT_ENFORCE(how == torchx::Partitioning::kLayers || h >= o.model_parallel, mp,
               " --partition neurons needs at least ", o.model_parallel,
               " units in every layer; --hidden has one of ", h);
  }
  DT_ENFORCE(o.algorithm == "sync" || o.algorithm == "downpour", mp,
             " trains replicas synchronously (--algorithm sync) or against parameter servers ",
             "(--algorithm downpour), not --algorithm ", o.algorithm);
  if (o.algorithm == "downpour") return;  // its shards checkpoint and evaluate (validate_downpour)
  DT_ENFORCE(o.reduce == "dense" && o.schedule == "fused:25",
             mp, " averages each partition's gradients in one dense allreduce per step; --reduce ",
             "and --schedule are not taken with it");
  DT_ENFORCE(o.resume.empty() && o.checkpoint_every == 0, mp,
             " does not checkpoint (each partition would need its own file): --resume and "
             "--checkpoint-every are not taken with it (--algorithm downpour's shards do)");
  DT_ENFORCE(o.accumulate == 1 && o.timeline.empty() && o.eval_every == 0 &&
                 o.target_accuracy == 0,
             mp, ": --accumulate, --timeline, --eval-every and --target-accuracy are not taken ",
             "with it (the test set is evaluated at each epoch's end)");
}

}  // namespace

void validate(const TrainOptions& o) {
  const auto models = torchx::model_names();
  DT_ENFORCE(std::find(models.begin(), models.end(), o.model) != models.end(), "--model '", o.model,
             "' is not one of ", join(models));
  const std::string reducer = o.reduce.substr(0, o.reduce.find(':'));
  const auto reducers = reduce::reducer_names();
  DT_ENFORCE(std::find(reducers.begin(), reducers.end(), reducer) != reducers.end(), "--reduce '",
             o.reduce, "': unknown reducer '", reducer, "' (valid: ", join(reducers), ")");
  reduce::validate_reducer_spec(o.reduce);  // its parameters, with make_reducer's messages
  const auto schedule = engine::Schedule::parse(o.schedule);
  DT_ENFORCE(schedule.kind != engine::Schedule::Kind::kMgwfbp || o.reduce == "dense",
             "--schedule mgwfbp plans the dense allreduce (its cost model times it); --reduce ",
             o.reduce, " has other costs: use --schedule fused, wfbp or single with it");
  validate_model_parallel(o);
  const bool parameter_server = o.algorithm == "downpour" || o.algorithm == "sandblaster";
  if (o.algorithm == "downpour") {
    validate_downpour(o);
  } else if (o.algorithm == "sandblaster") {
    validate_sandblaster(o);
  } else {
    DT_ENFORCE(o.servers == 0, "--servers ", o.servers, " dedicates parameter-server ranks; it ",
               "needs --algorithm downpour or sandblaster");
  }
  if (o.algorithm != "sandblaster") {
    DT_ENFORCE(o.portions == 0 && !o.no_backup && o.l2 == 0 && o.slow_rank.empty() &&
                   o.lbfgs_history == 10,
               "--portions, --no-backup, --lbfgs-history, --l2 and --slow-rank are ",
               "Sandblaster's; they need ",
               "--algorithm sandblaster");
  }
  const auto algorithm = parameter_server ? LocalSgdSchedule{} : LocalSgdSchedule::parse(o.algorithm);
  if (!o.average.empty()) {
    DT_ENFORCE(algorithm.local, "--average ", o.average,
               " chooses the reducer of Local SGD's model averaging; it needs --algorithm local");
    const std::string name = o.average.substr(0, o.average.find(':'));
    DT_ENFORCE(std::find(reducers.begin(), reducers.end(), name) != reducers.end(), "--average '",
               o.average, "': unknown reducer '", name, "' (valid: ", join(reducers), ")");
    try {
      reduce::validate_reducer_spec(o.average);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(detail::concat("--average ", o.average,
                                           " (a reducer spec, as --reduce ", "takes): ", e.what()));
    }
  }
  DT_ENFORCE(!algorithm.local || schedule.kind != engine::Schedule::Kind::kMgwfbp,
             "--schedule mgwfbp plans per-step gradient reduction; --algorithm ", o.algorithm,
             " averages models every few steps: use --schedule fused with it");
  engine::parse_on_nonfinite(o.on_nonfinite);
  DT_ENFORCE(o.epochs >= 1, "--epochs must be >= 1, got ", o.epochs);
  DT_ENFORCE(o.batch_size >= 1, "--batch-size must be >= 1, got ", o.batch_size);
  DT_ENFORCE(o.accumulate >= 1, "--accumulate must be >= 1, got ", o.accumulate);
  DT_ENFORCE(o.lr > 0 && std::isfinite(o.lr), "--lr must be a positive number, got ", o.lr);
  DT_ENFORCE(o.momentum >= 0 && o.momentum < 1, "--momentum must be in [0, 1), got ", o.momentum);
  DT_ENFORCE(o.threads >= 1, "--threads must be >= 1, got ", o.threads);
  DT_ENFORCE(o.log_every >= 1, "--log-every must be >= 1, got ", o.log_every);
  DT_ENFORCE(o.checkpoint_every >= 0, "--checkpoint-every must be >= 0, got ", o.checkpoint_every);
  DT_ENFORCE(o.eval_every >= 0, "--eval-every must be >= 0 (0: at each epoch's end only), got ",
             o.eval_every);
  DT_ENFORCE(o.target_accuracy >= 0 && o.target_accuracy <= 1,
             "--target-accuracy must be a fraction in [0, 1] (0: none), got ", o.target_accuracy);
  DT_ENFORCE(o.optimizer == "sgd" || o.optimizer == "momentum" || o.optimizer == "adam",
             "--optimizer '", o.optimizer, "' is not one of sgd, momentum, adam");
}

void check_same_flags(const TrainOptions& o, comm::Group& g) {
  if (g.size() == 1) return;
  const auto flags = shared_flags(o);
  const size_t k = flags.size();
  std::vector<int64_t> hashes(k * static_cast<size_t>(g.size()), 0);
  for (size_t i = 0; i < k; ++i) {
    const uint64_t h = Fnv1a().bytes(flags[i].second.data(), flags[i].second.size()).digest();
    hashes[static_cast<size_t>(g.rank()) * k + i] = static_cast<int64_t>(h);
  }
  collective::AllgatherOptions ag(g);
  ag.output = hashes;
  collective::allgather(ag);
  for (size_t i = 0; i < k; ++i) {
    for (int r = 1; r < g.size(); ++r) {
      if (hashes[static_cast<size_t>(r) * k + i] != hashes[i]) {
        throw InvalidArgument(
            detail::concat(flags[i].first, " differs between rank 0 and rank ", r,
                           ": every rank must be started with the same training flags (rank ",
                           g.rank(), " has ", flags[i].first, " '", flags[i].second, "')"));
      }
    }
  }
}

}  // namespace dtrain::train
