// The trainer: every rank trains a replica on its shard. With --algorithm sync the engine's
// reducer averages the gradients every step; with Local SGD the ranks take local steps and
// average their models every few steps. Rank 0 logs metrics; checkpoints are atomic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::train {

struct TrainOptions {
  // Model and data
  std::string model = "mlp";
  std::vector<int64_t> hidden = {512, 256};
  std::string data_dir;     // empty: Debian's Fashion-MNIST
  size_t train_subset = 0;  // >0: only the first n training samples
  size_t test_subset = 0;   // >0: only the first n test samples
  // embed model / synthetic click-through data
  int64_t fields = 8;
  int64_t vocab = 100000;
  int64_t embed_dim = 16;
  size_t synthetic_train = 200000;
  size_t synthetic_test = 20000;
  // Optimisation
  int epochs = 2;
  int batch_size = 64;  // per worker and micro-batch
  int accumulate = 1;   // micro-batches per step (gradients summed, one reduction per step)
  double lr = 0.001;
  double momentum = 0.9;           // for optimizer "momentum"
  std::string optimizer = "adam";  // sgd | momentum | adam
  uint64_t seed = 1;
  int64_t max_steps = -1;  // stop after this many steps in total (tests, quick looks)
  // Training scheme: "sync" (gradients averaged every step) or Local SGD,
  // "local:H=8[,warmup=STEPS][,Hmax=M,double_every=STEPS]" (train/local_sgd_schedule.h).
  std::string algorithm = "sync";
  // Downpour (--algorithm downpour, train/downpour.h): `servers` parameter-server ranks after the
  // workers; a replica fetches parameters every n_fetch steps and pushes its accumulated gradient
  // every n_push steps; the shards apply server_update (empty: "adagrad:lr=<lr>") under
  // `consistency` (async | bsp | bounded:T); replicas other than 0 start after replica 0 has
  // pushed warm_start times.
  int servers = 0;
  int n_fetch = 1;
  int n_push = 1;
  std::string consistency = "async";
  std::string server_update;
  int64_t warm_start = 0;
  // Sandblaster L-BFGS (--algorithm sandblaster, train/sandblaster.h), with `servers` as above:
  // each objective evaluation (at most `epochs` of them) is one pass over the training set cut
  // into `portions` (0: 8 per replica), with backup copies of outstanding portions at a batch's
  // end unless no_backup; `lbfgs_history` pairs; the objective adds l2 / 2 * |w|^2; slow_rank
  // "R:FACTOR" slows replica R by FACTOR (a testing aid: it sleeps).
  int portions = 0;
  bool no_backup = false;
  int lbfgs_history = 10;
  double l2 = 0;
  std::string slow_rank;
  // Model parallelism (train/model_parallel.cc): each replica of the mlp spans model_parallel
  // consecutive ranks, partitioned by "neurons" or "layers" (torch/partitioned_mlp.h); the
  // world / model_parallel replicas average their gradients every step (synchronous).
  int model_parallel = 1;
  std::string partition = "neurons";
  int pipeline = 1;  // layers: micro-batches that follow each other through the stages
  // Communication
  std::string reduce = "dense";
  std::string average;  // Local SGD: the reducer of the model averaging (empty: as --reduce)
  std::string schedule = "fused:25";  // single | wfbp | fused[:MB] | mgwfbp
  std::string on_nonfinite = "abort";
  // Output
  std::string out_dir;           // config.json, metrics.jsonl, checkpoint.pt
  int64_t checkpoint_every = 0;  // steps; 0: only at the end
  std::string resume;            // run directory to continue from
  std::string timeline;          // Chrome trace file
  bool quiet = false;
  int log_every = 20;  // steps between step records
  // Time to accuracy: the test set is evaluated every eval_every steps (0: at epoch ends only)
  // and at each epoch's end; the target counts as reached at the second of two consecutive
  // evaluations at or above target_accuracy (0: no target). Evaluation time is kept off the
  // training clock and reported apart.
  int64_t eval_every = 0;
  double target_accuracy = 0;
  int threads = 1;  // LibTorch/OpenBLAS threads per worker
};

struct TrainResult {
  double test_accuracy = 0;
  double test_loss = 0;
  double train_loss = 0;
  int64_t steps = 0;
  double time_s = 0;
  double samples_per_s = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  double comm_s = 0;         // communication-thread busy time, summed over steps
  double comm_wait_s = 0;    // time the training thread waited for it after backprop
  double comm_hidden_s = 0;  // communication that overlapped backprop
  uint64_t skipped_steps = 0;
  double eval_s = 0;             // time spent evaluating (not in time_s)
  double time_to_target_s = -1;  // training-clock time the target was reached (-1: never)
  uint64_t parameters_hash = 0;    // FNV-1a of this rank's final parameters (replicas compare)
  int64_t rounds = 0;            // communication rounds (steps with gradients averaged plus
                                 // model averagings)
};

// Pins LibTorch and OpenBLAS to `threads` threads in this process (OpenBLAS through its runtime
// call when the BLAS in use is OpenBLAS).
void pin_threads(int threads);

// Checks every option (names, ranges, combinations) and throws InvalidArgument naming the flag.
// Rank-independent: the CLI calls it once before starting any worker.
void validate(const TrainOptions& options);

// Validates options (InvalidArgument naming the flag), then trains. All ranks must call it.
TrainResult train(const TrainOptions& options, comm::Group& group);

}  // namespace dtrain::train
