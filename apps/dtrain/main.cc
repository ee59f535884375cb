// dtrain: communication-efficient distributed training. Entry point of the CLI.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "commands.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "launcher.h"
#include "report.h"

int main(int argc, char** argv) {
  CLI::App app{"dtrain: communication-efficient distributed training"};
  int exit_code = 0;
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("dtrain ") + dtrain::comm::kVersion);
#ifdef DTRAIN_WITH_TORCH
  dtrain::app::add_train(app, argc, argv, exit_code);
#endif
  dtrain::app::add_report(app, exit_code);
  auto* bench =
      app.add_subcommand("bench", "Measure collectives and compressors against baselines");
  bench->require_subcommand(1);
  dtrain::app::add_bench_allreduce(*bench, argc, argv, exit_code);
  dtrain::app::add_bench_compress(*bench, argc, argv, exit_code);
  dtrain::app::add_bench_omnireduce(*bench, argc, argv, exit_code);
#ifdef DTRAIN_WITH_TORCH
  dtrain::app::add_bench_localsgd(*bench, argc, argv, exit_code);
  dtrain::app::add_bench_model_parallel(*bench, argc, argv, exit_code);
#endif
  try {
    dtrain::log::init(-1, 0);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dtrain::Error& e) {
    // A rank's failure: kExitFailed for its own error, kExitPeerFailed when another rank failed
    // (the launcher tells them apart to name the rank that failed).
    return dtrain::app::report_failure(e, true);
  } catch (const std::exception& e) {
    return dtrain::app::report_failure(e, false);
  }
  return exit_code;
}
