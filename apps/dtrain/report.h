// `dtrain report DIR [DIR...]`: reads the run directories the trainer leaves (config.json and
// metrics.jsonl), prints one comparison table and draws the comparison plots with gnuplot.
#pragma once

#include <CLI/CLI.hpp>

#include <iosfwd>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace dtrain::app {

struct ReportOptions {
  std::vector<std::string> runs;
  std::string out_dir;  // empty: "<first run>/report"
  bool plots = true;
};

// One row of the table. Figures come from the "final" record, or from the last "epoch" record of a
// run that has none (interrupted). Missing config strings are "-", a missing worker count is 0.
struct RunSummary {
  std::string dir, name, model, reduce, schedule;
  int workers = 0;
  double final_accuracy = 0;  // fraction, 0..1
  double time_s = 0;
  double bytes_sent = 0;  // by rank 0
  double samples_per_s = 0;
  int epochs = 0;         // epoch records present
  std::string algorithm;  // "sync", "local:H=8", ... ("-" in older runs)
  // Time to accuracy (--target-accuracy): the target and the training time it was reached at;
  // NaN when the run had no target or never reached it (target set, time NaN).
  double target_accuracy = std::numeric_limits<double>::quiet_NaN();
  double time_to_target_s = std::numeric_limits<double>::quiet_NaN();
};

// A test-set evaluation ("eval" records and epoch ends), in the order they ran.
struct EvalRecord {
  double time_s, test_accuracy;
};

// Records of metrics.jsonl. Numbers a record leaves out (or writes as null) are NaN.
struct StepRecord {
  double time_s, loss;
  double rounds;  // communication rounds so far (NaN in older runs)
};

struct EpochRecord {
  int epoch;
  double time_s, train_loss, test_loss, test_accuracy, samples_per_s, bytes_sent;
  std::map<std::string, double> phase_s;  // data, forward, backward, comm_wait, optimizer, ...
};

struct FinalRecord {
  double time_s, test_accuracy, samples_per_s, bytes_sent;
};

struct RunData {
  RunSummary summary;
  std::vector<StepRecord> steps;
  std::vector<EpochRecord> epochs;  // at least one
  std::vector<EvalRecord> evaluations;
  std::optional<FinalRecord> final;
};

// The parsers behind load_run, over streams; `file` names the source in errors
// ("DIR/metrics.jsonl"). parse_metrics appends the records of a metrics.jsonl to `run` and throws
// InvalidArgument naming file:line of a malformed record (IoError when the stream fails).
// parse_config fills name, model, reduce, schedule and workers from a config.json and throws
// InvalidArgument naming the file.
void parse_metrics(std::istream& in, const std::string& file, RunData& run);
void parse_config(std::istream& in, const std::string& file, RunSummary& summary);

// Parses and validates one run directory. Throws IoError naming a missing directory or file,
// InvalidArgument naming file:line of a malformed record, or the directory when it has no epoch
// record.
RunData load_run(const std::string& dir);

std::vector<RunSummary> load_runs(const std::vector<std::string>& dirs);

// Aligned text table, one row per run, with each run's time as a ratio to the first run's.
std::string format_table(const std::vector<RunSummary>& runs);

// Writes plots.gp, its .dat files and loss_vs_time, accuracy_vs_bytes and phase_time as .png and
// .svg into out_dir (created if needed) by running gnuplot. Returns the paths written, images
// first. Throws IoError when gnuplot is missing or fails.
std::vector<std::string> write_plots(const std::vector<std::string>& dirs,
                                     const std::string& out_dir);

// Runs `gnuplot SCRIPT` in dir (output to dir/gnuplot.log, removed when empty), waiting at most
// 120 s. Throws IoError naming the script and quoting the log's end when gnuplot is missing or
// fails, TimeoutError past the deadline. Shared by the report and the benches that plot.
void run_gnuplot(const std::string& dir, const std::string& script);

// What the subcommand does once parsed: prints the table and, with plots, the files written.
void run_report(const ReportOptions& options);

// Registers `report`: positional DIRs (existing, 1 or more), --out DIR, --no-plots.
void add_report(CLI::App& app, int& exit_code);

}  // namespace dtrain::app
