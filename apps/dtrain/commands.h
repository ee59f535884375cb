// Subcommands of the dtrain CLI. Each registers its flags and a callback.
#pragma once

#include <CLI/CLI.hpp>

namespace dtrain::app {

// `dtrain bench allreduce`: our ring vs Gloo's ring (and MPI when built) on the same group.
// `exit_code` receives the command's status (a failed local launch sets it non-zero).
void add_bench_allreduce(CLI::App& bench, int argc, char** argv, int& exit_code);

// `dtrain bench omnireduce`: the OmniReduce microbenchmark against AGsparse and dense rings.
void add_bench_omnireduce(CLI::App& bench, int argc, char** argv, int& exit_code);

// `dtrain bench compress`: ExDyna selection vs exact top-k and the compressors, one core.
void add_bench_compress(CLI::App& bench, int argc, char** argv, int& exit_code);

// `dtrain bench localsgd`: Stich's convex Local SGD experiment, K workers simulated in one
// process (built with LibTorch, as the training layer it belongs to).
void add_bench_localsgd(CLI::App& bench, int argc, char** argv, int& exit_code);

// `dtrain bench model-parallel`: one MLP split by neurons or layers over 1, 2, 4... ranks
// (built with LibTorch).
void add_bench_model_parallel(CLI::App& bench, int argc, char** argv, int& exit_code);

// `dtrain train` (built with LibTorch).
void add_train(CLI::App& app, int argc, char** argv, int& exit_code);

}  // namespace dtrain::app
