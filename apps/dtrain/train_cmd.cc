// `dtrain train`: data-parallel training of a LibTorch model with a chosen reducer and schedule.
// Without an external launcher it starts --workers local processes of itself.
#include <algorithm>
#include <cstdio>

#include "dtrain/common/error.h"

#include "commands.h"
#include "dtrain/common/logging.h"
#include "dtrain/engine/engine.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/torch/models.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/train/downpour.h"
#include "dtrain/train/sandblaster.h"
#include "dtrain/train/trainer.h"
#include "flag_checks.h"
#include "group_flags.h"
#include "launcher.h"
#include "resume_settings.h"

namespace dtrain::app {
namespace {

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// A rank of a parameter-server job (Downpour, Sandblaster): no group (replicas may die and
// join); roles by rank.
int run_ps_job(const train::TrainOptions& t, const GroupFlags& flags, int workers) {
  const std::string algorithm = "--algorithm " + t.algorithm;
  const comm::GroupOptions g = flags.resolve();
  train::DownpourJob job;
  if (g.rank) {
    job.rank = *g.rank;
    job.world = *g.size;
  } else {
    const auto env = comm::detect_launch_env();
    DT_ENFORCE(env.has_value(), algorithm, " needs its rank: start it with --workers N ",
               "--servers S (local), or under a launcher (DTRAIN_RANK/DTRAIN_WORLD_SIZE, mpirun, ",
               "srun)");
    job.rank = env->rank;
    job.world = env->size;
  }
  DT_ENFORCE(job.world == workers + t.servers, algorithm, ": this job has ", job.world,
             " ranks but --workers ", workers, " --servers ", t.servers, " make ",
             workers + t.servers, " (ranks 0..W-1 are replicas, the rest servers)");
  DT_ENFORCE(!g.rendezvous.empty(), algorithm, " needs --rendezvous (file:// or redis://)");
  job.rendezvous = g.rendezvous;
  job.run_id = g.run_id.empty() ? comm::detect_run_id() : g.run_id;
  job.nonce = comm::detect_job_nonce();
  job.host = g.host.empty() ? "127.0.0.1" : g.host;
  job.timeout = g.timeout;
  log::init(job.rank, job.world);
  if (train::is_sandblaster(t)) {
    train::train_sandblaster(t, job);
  } else {
    train::train_downpour(t, job);
  }
  return 0;
}

}  // namespace

void add_train(CLI::App& app, int argc, char** argv, int& exit_code) {
  struct Flags {
    GroupFlags group;
    train::TrainOptions train;
    int workers = 4;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("train", "Train a model data-parallel across worker processes");
  f->group.add_to(*cmd);
  auto& t = f->train;
  cmd->add_option("--workers", f->workers,
                  "Local worker processes to start when not launched externally")
      ->check(integer_in(1, 256))
      ->capture_default_str();
  cmd->add_option("--model", t.model, "Model: " + joined(torchx::model_names()))
      ->capture_default_str();
  cmd->add_option("--hidden", t.hidden, "MLP hidden widths, e.g. 512,256")->delimiter(',');
  cmd->add_option("--data", t.data_dir, "Fashion-MNIST directory (default: Debian's copy)");
  cmd->add_option("--train-subset", t.train_subset, "Use only the first N training samples");
  cmd->add_option("--test-subset", t.test_subset, "Use only the first N test samples");
  cmd->add_option("--fields", t.fields, "embed: categorical fields per sample")
      ->capture_default_str();
  cmd->add_option("--vocab", t.vocab, "embed: embedding table rows")->capture_default_str();
  cmd->add_option("--embed-dim", t.embed_dim, "embed: embedding width")->capture_default_str();
  cmd->add_option("--epochs", t.epochs, "Epochs")->capture_default_str();
  cmd->add_option("--batch-size", t.batch_size, "Samples per worker per step")
      ->capture_default_str();
  cmd->add_option("--accumulate", t.accumulate,
                  "Micro-batches per step: gradients summed, one reduction per step")
      ->capture_default_str();
  cmd->add_option("--lr", t.lr, "Learning rate")->capture_default_str();
  cmd->add_option("--momentum", t.momentum, "Momentum (optimizer momentum)")->capture_default_str();
  cmd->add_option("--optimizer", t.optimizer, "sgd, momentum or adam")->capture_default_str();
  cmd->add_option("--seed", t.seed, "Seed for model initialisation and data order")
      ->capture_default_str();
  cmd->add_option("--max-steps", t.max_steps, "Stop after this many steps in total");
  cmd->add_option("--algorithm", t.algorithm,
                  "Training scheme: sync (gradients averaged every step) or Local SGD, "
                  "local:H=8[,warmup=STEPS][,Hmax=M,double_every=STEPS] (models averaged every "
                  "H local steps; the first STEPS steps synchronous)")
      ->capture_default_str();
  cmd->add_option("--reduce", t.reduce, "Gradient reducer: " + joined(reduce::reducer_names()))
      ->capture_default_str();
  cmd->add_option("--average", t.average,
                  "Local SGD: the reducer that averages the models (default: --reduce's spec)");
  cmd->add_option("--schedule", t.schedule,
                  "Bucketing: single, wfbp, fused[:MB] or mgwfbp (merge plan from a measured "
                  "cost model; dense only)")
      ->capture_default_str();
  cmd->add_option("--on-nonfinite", t.on_nonfinite, "NaN/Inf gradients: abort or skip the step")
      ->capture_default_str();
  cmd->add_option("--out", t.out_dir, "Run directory: config.json, metrics.jsonl, checkpoint.pt");
  cmd->add_option("--checkpoint-every", t.checkpoint_every,
                  "Checkpoint every N steps (0: at the end)");
  cmd->add_option("--resume", t.resume, "Continue the run in this directory from its checkpoint");
  cmd->add_option("--timeline", t.timeline, "Write a Chrome trace of every rank's phases here");
  cmd->add_flag("--quiet", t.quiet, "No progress output");
  cmd->add_option("--log-every", t.log_every, "Steps between metrics records")
      ->capture_default_str();
  cmd->add_option("--eval-every", t.eval_every,
                  "Evaluate the test set every N steps as well as at epoch ends (off the "
                  "training clock)")
      ->capture_default_str();
  cmd->add_option("--target-accuracy", t.target_accuracy,
                  "Time to accuracy: the training time at which the second of two consecutive "
                  "evaluations reaches this test accuracy (a fraction, e.g. 0.85)");
  cmd->add_option("--threads", t.threads, "LibTorch/OpenBLAS threads per worker")
      ->capture_default_str();
  // Downpour (train/downpour.h).
  cmd->add_option("--servers", t.servers,
                  "downpour, sandblaster: parameter-server ranks (after the --workers replicas)");
  cmd->add_option("--n-fetch", t.n_fetch, "downpour: steps between parameter fetches")
      ->capture_default_str();
  cmd->add_option("--n-push", t.n_push, "downpour: steps between gradient pushes")
      ->capture_default_str();
  cmd->add_option("--consistency", t.consistency, "downpour: async, bsp or bounded:T")
      ->capture_default_str();
  cmd->add_option("--server-update", t.server_update,
                  "downpour: the shards' update rule, e.g. adagrad:lr=0.05, sgd:0.1, adam:lr=1e-3 "
                  "(default: adagrad with --lr)");
  cmd->add_option("--warm-start", t.warm_start,
                  "downpour: pushes replica 0 makes alone before the others start")
      ->capture_default_str();
  // Model parallelism (train/model_parallel.cc).
  cmd->add_option("--model-parallel", t.model_parallel,
                  "mlp: ranks per replica (K >= 2 splits each replica over K ranks; --workers must "
                  "be a multiple of K; the replicas average gradients every step)")
      ->capture_default_str();
  cmd->add_option("--partition", t.partition,
                  "with --model-parallel: neurons (a slice of every layer's units per rank) or "
                  "layers (a pipeline of stages of whole layers)")
      ->capture_default_str();
  cmd->add_option("--pipeline", t.pipeline,
                  "with --partition layers: micro-batches per step that follow each other through "
                  "the stages (GPipe), so the stages work at once; 1: they take turns")
      ->capture_default_str();
  // Sandblaster L-BFGS (train/sandblaster.h); --servers as for Downpour.
  cmd->add_option("--portions", t.portions,
                  "sandblaster: portions per batch, handed out on request (0: 8 per replica)")
      ->capture_default_str();
  cmd->add_flag("--no-backup", t.no_backup,
                "sandblaster: no backup copies of outstanding portions at a batch's end");
  cmd->add_option("--lbfgs-history", t.lbfgs_history,
                  "sandblaster: L-BFGS pairs kept (its --epochs: objective evaluations, "
                  "default 50)")
      ->capture_default_str();
  cmd->add_option("--l2", t.l2, "sandblaster: the objective's l2 term, l2/2 |w|^2")
      ->capture_default_str();
  cmd->add_option("--slow-rank", t.slow_rank,
                  "sandblaster testing aid: R:FACTOR slows replica R FACTOR times (it sleeps)");
  cmd->callback([f, cmd, argc, argv, &exit_code] {
    // --resume DIR: the settings the run was started with, unless given again.
    const auto taken = take_settings_from_run(*cmd, f->train, f->workers);
    if (!taken.empty() && !running_as_rank() && !f->train.quiet) {
      std::string flags;
      for (const auto& t : taken) flags += " " + t;
      std::printf("resuming %s with its settings (config.json):%s\n", f->train.resume.c_str(),
                  flags.c_str());
      std::fflush(stdout);
    }
    // Sandblaster's --epochs counts objective evaluations (one pass over the batch each): two,
    // the default for SGD, would stop L-BFGS before it starts.
    if (train::is_sandblaster(f->train) && cmd->count("--epochs") == 0) f->train.epochs = 50;
    // Check every flag before starting processes, so a mistake fails once and fast.
    train::validate(f->train);
    if (f->group.rank < 0 && !running_as_rank()) {
      DT_ENFORCE(f->workers % f->train.model_parallel == 0, "--workers ", f->workers,
                 " ranks do not make whole replicas of --model-parallel ",
                 f->train.model_parallel, " ranks each");
    }
    // Parameter-server jobs: replicas first, then the server ranks.
    const bool downpour = train::is_downpour(f->train) || train::is_sandblaster(f->train);
    if (!running_as_rank() && f->group.rank < 0 && (f->workers > 1 || downpour)) {
      LaunchOptions lo;
      lo.workers = f->workers + (downpour ? f->train.servers : 0);
      if (downpour) lo.replicas = f->workers;
      if (train::is_downpour(f->train)) lo.ranks_per_replica = f->train.model_parallel;
      lo.records_on_replica0 = train::is_downpour(f->train);
      exit_code = launch_local(lo, argc, argv);
      return;
    }
    if (downpour) {
      exit_code = run_ps_job(f->train, f->group, f->workers);
      return;
    }
    auto group = comm::Group::connect(f->group.resolve());
    log::init(group->rank(), group->size());
    train::TrainResult result;
    // Whatever ends this rank's training (its own error, or a reducer's on the engine's thread)
    // is announced to the others, who then fail at once naming this rank and the cause.
    comm::run_rank(*group, [&] { result = train::train(f->train, *group); });
    if (group->rank() == 0 && !f->train.quiet && f->train.model_parallel > 1) {
      // No gradient engine: the partitions exchange and average in line with the step.
      std::printf(
          "done: %lld steps in %.1f s, %.0f samples/s, test accuracy %.2f%%, %.1f MB sent by "
          "rank 0\n",
          (long long)result.steps, result.time_s, result.samples_per_s, result.test_accuracy * 100,
          result.bytes_sent / 1e6);
    } else if (group->rank() == 0 && !f->train.quiet) {
      std::printf(
          "done: %lld steps in %.1f s, %.0f samples/s, test accuracy %.2f%%, %.1f MB sent "
          "per rank; communication busy %.1f s (%.0f%% hidden behind backprop), training waited "
          "%.1f s for it\n",
          (long long)result.steps, result.time_s, result.samples_per_s, result.test_accuracy * 100,
          result.bytes_sent / 1e6, result.comm_s,
          result.comm_s > 0 ? 100.0 * result.comm_hidden_s / result.comm_s : 0.0,
          result.comm_wait_s);
      if (f->train.target_accuracy > 0) {
        if (result.time_to_target_s >= 0) {
          std::printf(
              "time to %.2f%% test accuracy: %.2f s of training (%.1f s spent evaluating "
              "is not counted)\n",
              f->train.target_accuracy * 100, result.time_to_target_s, result.eval_s);
        } else {
          std::printf("test accuracy %.2f%% was not reached (two evaluations in a row)\n",
                      f->train.target_accuracy * 100);
        }
      }
    }
  });
}

}  // namespace dtrain::app
