// `dtrain report`: loading run directories, the comparison table and the subcommand. The plots are
// in report_plot.cc.
//
// A run directory holds config.json (what was trained: model, reducer, schedule, workers...) and
// metrics.jsonl, one record per line told apart by "kind": "step" (loss every few steps), "epoch"
// (test figures, throughput, bytes and per-phase times) and "final" (end of training). A run killed
// before its final record still reports, from its last epoch record; a run without any epoch
// record has nothing to compare and is refused, naming the directory.
#include "report.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "dtrain/common/error.h"

namespace dtrain::app {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The last component of a directory path, also for "runs/a/" and ".".
std::string base_name(const std::string& dir) {
  fs::path p = fs::absolute(fs::path(dir)).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

json parse_config_json(std::istream& in, const std::string& file) {
  try {
    json config = json::parse(in);
    if (!config.is_object()) DT_THROW(InvalidArgument, file, ": not a JSON object");
    return config;
  } catch (const json::exception& e) {
    // Not only parse_error: a number beyond double (1e999) is an out_of_range from the parser.
    DT_THROW(InvalidArgument, file, ": malformed JSON: ", e.what());
  }
}

// A config entry as text: "-" when missing, numbers as written.
std::string config_text(const json& config, const char* key, const std::string& file) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number() || it->is_boolean()) return it->dump();
  DT_THROW(InvalidArgument, file, ": \"", key, "\" should be a string, got ", it->dump());
}

int config_int(const json& config, const char* key, const std::string& file) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return 0;
  // An integer beyond int (JSON allows any) is refused rather than wrapped.
  const bool in_range =
      (it->is_number_unsigned() &&
       it->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int>::max())) ||
      (it->is_number_integer() && !it->is_number_unsigned() &&
       it->get<int64_t>() >= std::numeric_limits<int>::min() &&
       it->get<int64_t>() <= std::numeric_limits<int>::max());
  if (!in_range) {
    DT_THROW(InvalidArgument, file, ": \"", key, "\" should be an integer, got ", it->dump());
  }
  return it->get<int>();
}

// A number of a record; NaN when absent or null unless required. `where` is "file:line".
double number(const json& record, const char* key, const std::string& where, bool required) {
  auto it = record.find(key);
  if (it == record.end()) {
    if (required) DT_THROW(InvalidArgument, where, ": record lacks \"", key, "\"");
    return kNaN;
  }
  if (it->is_null()) return kNaN;
  if (!it->is_number()) {
    DT_THROW(InvalidArgument, where, ": \"", key, "\" should be a number, got ", it->dump());
  }
  return it->get<double>();
}

EpochRecord parse_epoch(const json& r, const std::string& where, int index) {
  EpochRecord e;
  double epoch = number(r, "epoch", where, false);
  // Converting a double outside int's range is undefined: such an epoch is a malformed record.
  if (!std::isnan(epoch) && !(epoch >= 0 && epoch <= std::numeric_limits<int>::max())) {
    DT_THROW(InvalidArgument, where, ": \"epoch\" should be a count, got ", epoch);
  }
  e.epoch = std::isnan(epoch) ? index : static_cast<int>(epoch);
  e.time_s = number(r, "time_s", where, true);
  e.train_loss = number(r, "train_loss", where, false);
  e.test_loss = number(r, "test_loss", where, false);
  e.test_accuracy = number(r, "test_accuracy", where, true);
  e.samples_per_s = number(r, "samples_per_s", where, false);
  e.bytes_sent = number(r, "bytes_sent", where, false);
  auto phases = r.find("phase_s");
  if (phases != r.end() && !phases->is_null()) {
    if (!phases->is_object()) DT_THROW(InvalidArgument, where, ": \"phase_s\" is not an object");
    for (const auto& [phase, value] : phases->items()) {
      e.phase_s[phase] = number(*phases, phase.c_str(), where, true);
    }
  }
  return e;
}

std::string fixed(double v, int decimals, const char* suffix = "") {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f%s", decimals, v, suffix);
  return buf;
}

}  // namespace

void parse_metrics(std::istream& in, const std::string& file, RunData& run) {
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = file + ":" + std::to_string(line_no);
    json r;
    try {
      r = json::parse(line);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
      DT_THROW(InvalidArgument, where, ": malformed JSON: ", e.what());
    }
    if (!r.is_object() || !r.contains("kind") || !r["kind"].is_string()) {
      DT_THROW(InvalidArgument, where, ": not a JSON object with a string \"kind\"");
    }
    const std::string kind = r["kind"];
    if (kind == "step") {
      run.steps.push_back({number(r, "time_s", where, true), number(r, "loss", where, true),
                           number(r, "rounds", where, false)});
    } else if (kind == "epoch") {
      run.epochs.push_back(parse_epoch(r, where, static_cast<int>(run.epochs.size())));
      run.evaluations.push_back({run.epochs.back().time_s, run.epochs.back().test_accuracy});
    } else if (kind == "eval") {
      run.evaluations.push_back(
          {number(r, "time_s", where, true), number(r, "test_accuracy", where, true)});
    } else if (kind == "final") {
      run.final = FinalRecord{
          number(r, "time_s", where, true), number(r, "test_accuracy", where, true),
          number(r, "samples_per_s", where, false), number(r, "bytes_sent", where, false)};
      run.summary.target_accuracy = number(r, "target_accuracy", where, false);
      run.summary.time_to_target_s = number(r, "time_to_target_s", where, false);
    }
    // Other kinds are newer trainers' additions; a report does not need them.
  }
  if (in.bad()) DT_THROW(IoError, "error reading ", file);
}

void parse_config(std::istream& in, const std::string& file, RunSummary& s) {
  const json config = parse_config_json(in, file);
  s.name = config_text(config, "name", file);
  s.model = config_text(config, "model", file);
  s.reduce = config_text(config, "reduce", file);
  s.schedule = config_text(config, "schedule", file);
  s.workers = config_int(config, "workers", file);
  s.algorithm = config_text(config, "algorithm", file);
}

RunData load_run(const std::string& dir) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) DT_THROW(IoError, "run directory ", dir, " does not exist");
  const fs::path config_file = root / "config.json";
  const fs::path metrics_file = root / "metrics.jsonl";
  if (!fs::exists(config_file)) DT_THROW(IoError, "missing ", config_file.string());
  if (!fs::exists(metrics_file)) DT_THROW(IoError, "missing ", metrics_file.string());

  RunData run;
  RunSummary& s = run.summary;
  {
    std::ifstream in(config_file);
    if (!in) DT_THROW(IoError, "cannot read ", config_file.string());
    parse_config(in, config_file.string(), s);
  }
  s.dir = dir;
  if (s.name == "-" || s.name.empty()) s.name = base_name(dir);
  {
    std::ifstream in(metrics_file);
    if (!in) DT_THROW(IoError, "cannot read ", metrics_file.string());
    parse_metrics(in, metrics_file.string(), run);
  }
  if (run.epochs.empty()) {
    DT_THROW(InvalidArgument, "run ", dir, " has no epoch record in ", metrics_file.string(),
             " (did it finish an epoch?)");
  }
  const EpochRecord& last = run.epochs.back();
  s.epochs = static_cast<int>(run.epochs.size());
  s.final_accuracy = run.final ? run.final->test_accuracy : last.test_accuracy;
  s.time_s = run.final ? run.final->time_s : last.time_s;
  s.bytes_sent = run.final ? run.final->bytes_sent : last.bytes_sent;
  s.samples_per_s = run.final ? run.final->samples_per_s : last.samples_per_s;
  return run;
}

std::vector<RunSummary> load_runs(const std::vector<std::string>& dirs) {
  DT_ENFORCE(!dirs.empty(), "report: no run directories given");
  std::vector<RunSummary> runs;
  for (const auto& dir : dirs) runs.push_back(load_run(dir).summary);
  return runs;
}

std::string format_table(const std::vector<RunSummary>& runs) {
  static constexpr size_t kTextColumns = 4;  // left-aligned; the numbers after are right-aligned
  std::vector<std::vector<std::string>> rows = {{"run", "model", "reduce", "schedule", "workers",
                                                 "epochs", "test acc %", "time s", "MB sent/rank",
                                                 "samples/s", "vs first", "to target s"}};
  bool any_target = false;
  for (const auto& r : runs) any_target |= !std::isnan(r.target_accuracy);
  const double first_time = runs.empty() ? kNaN : runs.front().time_s;
  for (const auto& r : runs) {
    double ratio = first_time > 0 ? r.time_s / first_time : kNaN;
    const double mb = r.bytes_sent / 1e6;  // small figures keep 3 significant digits
    const std::string reduce =
        r.algorithm == "-" || r.algorithm == "sync" ? r.reduce : r.reduce + ", " + r.algorithm;
    rows.push_back({r.name, r.model, reduce, r.schedule,
                    r.workers > 0 ? std::to_string(r.workers) : "-", std::to_string(r.epochs),
                    fixed(100 * r.final_accuracy, 2), fixed(r.time_s, 1),
                    fixed(mb, mb >= 10  ? 1
                              : mb >= 1 ? 2
                                        : 3),
                    fixed(r.samples_per_s, 0), fixed(ratio, 2, "x"),
                    std::isnan(r.target_accuracy)    ? "-"
                    : std::isnan(r.time_to_target_s) ? "not reached"
                                                     : fixed(r.time_to_target_s, 1)});
    if (!any_target) rows.back().pop_back();
  }
  if (!any_target) {
    rows[0].pop_back();
  } else {
    for (const auto& r : runs) {
      if (!std::isnan(r.target_accuracy)) {
        rows[0].back() = "to " + fixed(100 * r.target_accuracy, 1) + "% s";
        break;
      }
    }
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  auto emit = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      std::string pad(width[c] - row[c].size(), ' ');
      if (c > 0) line += "  ";
      line += c < kTextColumns ? row[c] + pad : pad + row[c];
    }
    out += line.substr(0, line.find_last_not_of(' ') + 1) + "\n";
  };
  emit(rows[0]);
  size_t total = rows[0].size() * 2 - 2;
  for (size_t w : width) total += w;
  out += std::string(total, '-') + "\n";
  for (size_t i = 1; i < rows.size(); ++i) emit(rows[i]);
  return out;
}

void run_report(const ReportOptions& options) {
  const auto runs = load_runs(options.runs);
  std::fputs(format_table(runs).c_str(), stdout);
  if (options.plots) {
    std::string out_dir = options.out_dir;
    if (out_dir.empty()) out_dir = (fs::path(options.runs.front()) / "report").string();
    const auto files = write_plots(options.runs, out_dir);
    std::printf("\nwrote %zu files to %s:\n", files.size(), out_dir.c_str());
    for (const auto& f : files) std::printf("  %s\n", f.c_str());
  }
  std::fflush(stdout);
}

void add_report(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ReportOptions>();
  auto* cmd = app.add_subcommand("report", "Compare training runs: a table and plots");
  cmd->add_option("dirs", options->runs, "Run directories (config.json + metrics.jsonl)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--out", options->out_dir, "Where plots go (default: <first run>/report)");
  cmd->add_flag_callback(
      "--no-plots", [options] { options->plots = false; }, "Print the table only");
  cmd->callback([options, &exit_code] {
    run_report(*options);
    exit_code = 0;
  });
}

}  // namespace dtrain::app
