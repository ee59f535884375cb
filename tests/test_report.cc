// `dtrain report`: loading run directories, the table, the plots and the errors on bad input.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "dtrain/common/error.h"
#include "harness.h"
#include "report.h"

namespace dtrain::app {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

struct RunSpec {
  std::string config;  // config.json text
  double epoch_time_s;
  double final_accuracy;
  double bytes_per_epoch;
  double samples_per_s;
  bool final_record = true;
};

// A two-epoch run as the trainer writes it: steps every 40 of 234 per epoch, then epoch records,
// then the final record. Loss falls with time; accuracy rises with each epoch.
void write_run(const fs::path& dir, const RunSpec& spec) {
  fs::create_directories(dir);
  write(dir / "config.json", spec.config);
  std::ofstream m(dir / "metrics.jsonl");
  const int steps_per_epoch = 234;
  for (int epoch = 0; epoch < 2; ++epoch) {
    for (int s = 40; s <= steps_per_epoch; s += 40) {
      int step = epoch * steps_per_epoch + s;
      double frac = double(step) / (2 * steps_per_epoch);
      m << R"({"kind":"step","epoch":)" << epoch << R"(,"step":)" << step << R"(,"time_s":)"
        << frac * 2 * spec.epoch_time_s << R"(,"loss":)" << 2.3 * std::exp(-3 * frac)
        << R"(,"samples":)" << step * 256 << R"(,"bytes_sent":)" << frac * 2 * spec.bytes_per_epoch
        << R"(,"bytes_recv":)" << frac * 2 * spec.bytes_per_epoch << "}\n";
    }
    double acc = spec.final_accuracy - 0.05 * (1 - epoch);
    m << R"({"kind":"epoch","epoch":)" << epoch << R"(,"step":)" << (epoch + 1) * steps_per_epoch
      << R"(,"time_s":)" << (epoch + 1) * spec.epoch_time_s
      << R"(,"train_loss":0.55,"test_loss":0.48,"test_accuracy":)" << acc << R"(,"samples_per_s":)"
      << spec.samples_per_s << R"(,"bytes_sent":)" << (epoch + 1) * spec.bytes_per_epoch
      << R"(,"bytes_recv":)" << (epoch + 1) * spec.bytes_per_epoch
      << R"(,"phase_s":{"data":0.3,"forward":2.0,"backward":4.1,"comm_wait":)"
      << spec.epoch_time_s / 10 << R"(,"optimizer":0.5}})"
      << "\n";
  }
  if (spec.final_record) {
    m << R"({"kind":"final","time_s":)" << 2 * spec.epoch_time_s << R"(,"test_accuracy":)"
      << spec.final_accuracy << R"(,"samples_per_s":)" << spec.samples_per_s << R"(,"bytes_sent":)"
      << 2 * spec.bytes_per_epoch << R"(,"bytes_recv":)" << 2 * spec.bytes_per_epoch
      << R"(,"steps":468})"
      << "\n";
  }
}

// Two runs: a named dense baseline, and an unnamed top-k run that is faster and sends less.
class ReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dense_ = (fs::path(tmp_.path()) / "dense").string();
    topk_ = (fs::path(tmp_.path()) / "topk_run").string();
    write_run(dense_, {R"({"name":"dense 4w","model":"mlp","reduce":"dense","schedule":"fused:25",
                          "workers":4,"epochs":2,"batch_size":64,"lr":0.05,"seed":1})",
                       10.5, 0.86, 2.4e7, 5600});
    write_run(topk_, {R"({"model":"mlp","reduce":"topk:0.01","schedule":"fused:25","workers":4,
                          "epochs":2,"batch_size":64,"lr":0.05,"seed":1,"extra":{"a":1}})",
                      7.0, 0.84, 6e5, 8400});
  }

  template <typename E>
  std::string error_of(const std::vector<std::string>& dirs) {
    try {
      load_runs(dirs);
    } catch (const E& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
  }

  test::TempDir tmp_;
  std::string dense_, topk_;
};

TEST_F(ReportTest, LoadsSummaries) {
  auto runs = load_runs({dense_, topk_});
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].name, "dense 4w");
  EXPECT_EQ(runs[0].dir, dense_);
  EXPECT_EQ(runs[0].model, "mlp");
  EXPECT_EQ(runs[0].reduce, "dense");
  EXPECT_EQ(runs[0].schedule, "fused:25");
  EXPECT_EQ(runs[0].workers, 4);
  EXPECT_EQ(runs[0].epochs, 2);
  EXPECT_DOUBLE_EQ(runs[0].final_accuracy, 0.86);
  EXPECT_DOUBLE_EQ(runs[0].time_s, 21.0);
  EXPECT_DOUBLE_EQ(runs[0].bytes_sent, 4.8e7);
  EXPECT_DOUBLE_EQ(runs[0].samples_per_s, 5600);
  EXPECT_EQ(runs[1].name, "topk_run");  // no name: the directory's
  EXPECT_EQ(runs[1].reduce, "topk:0.01");
  EXPECT_DOUBLE_EQ(runs[1].time_s, 14.0);
  EXPECT_DOUBLE_EQ(runs[1].bytes_sent, 1.2e6);

  auto data = load_run(topk_);
  EXPECT_EQ(data.steps.size(), 10u);
  ASSERT_EQ(data.epochs.size(), 2u);
  EXPECT_DOUBLE_EQ(data.epochs[1].phase_s.at("comm_wait"), 0.7);
  ASSERT_TRUE(data.final.has_value());
}

TEST_F(ReportTest, TableHasNamesFiguresAndRatio) {
  std::string table = format_table(load_runs({dense_, topk_}));
  for (const char* want :
       {"dense 4w", "topk_run", "topk:0.01", "fused:25", "86.00", "84.00", "21.0", "14.0", "48.0",
        "1.2", "5600", "8400", "1.00x", "0.67x", "vs first", "MB sent/rank", "test acc %"}) {
    EXPECT_NE(table.find(want), std::string::npos) << want << " not in\n" << table;
  }
  // Header, rule, two rows; columns aligned: every line but the rule ends at the same width.
  std::vector<std::string> lines;
  std::istringstream in(table);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 4u) << table;
  EXPECT_EQ(lines[0].size(), lines[2].size()) << table;
  EXPECT_EQ(lines[2].size(), lines[3].size()) << table;
  EXPECT_EQ(lines[0].find("test acc %") + 10, lines[2].find("86.00") + 5) << table;
}

TEST_F(ReportTest, MissingOptionalConfigPrintsDash) {
  write(fs::path(topk_) / "config.json", R"({"model":"mlp"})");
  auto runs = load_runs({topk_});
  EXPECT_EQ(runs[0].reduce, "-");
  EXPECT_EQ(runs[0].workers, 0);
  std::string table = format_table(runs);
  std::istringstream row(table.substr(table.rfind("topk_run")));
  std::vector<std::string> cells;
  for (std::string c; row >> c;) cells.push_back(c);
  ASSERT_GE(cells.size(), 5u) << table;
  EXPECT_EQ(cells[1], "mlp");
  EXPECT_EQ(cells[2], "-");  // reduce
  EXPECT_EQ(cells[3], "-");  // schedule
  EXPECT_EQ(cells[4], "-");  // workers
}

TEST_F(ReportTest, RunWithoutFinalRecordReportsLastEpoch) {
  std::string dir = (fs::path(tmp_.path()) / "cut").string();
  write_run(dir, {R"({"name":"cut short"})", 5.0, 0.80, 1e6, 7000, /*final_record=*/false});
  auto runs = load_runs({dir});
  EXPECT_DOUBLE_EQ(runs[0].time_s, 10.0);
  EXPECT_DOUBLE_EQ(runs[0].final_accuracy, 0.80);
  EXPECT_DOUBLE_EQ(runs[0].bytes_sent, 2e6);
}

TEST_F(ReportTest, WritesPngAndSvgPlots) {
  // Names gnuplot would otherwise read as quotes, escapes or enhanced-text markup.
  write(fs::path(topk_) / "config.json",
        R"({"name":"it's \"top_k\" {1%} \\ @x","model":"mlp","reduce":"topk:0.01","workers":4})");
  const std::string out = (fs::path(tmp_.path()) / "out dir").string();
  std::vector<std::string> files;
  try {
    files = write_plots({dense_, topk_}, out);
  } catch (const IoError& e) {
    if (std::string(e.what()).find("gnuplot not found") != std::string::npos) {
      GTEST_SKIP() << e.what();
    }
    throw;
  }
  for (const char* stem : {"loss_vs_time", "accuracy_vs_bytes", "phase_time"}) {
    for (const char* ext : {".png", ".svg"}) {
      fs::path image = fs::path(out) / (std::string(stem) + ext);
      EXPECT_TRUE(fs::exists(image)) << image;
      EXPECT_GT(fs::file_size(image), 1000u) << image;
      EXPECT_NE(std::find(files.begin(), files.end(), image.string()), files.end()) << image;
    }
  }
  EXPECT_TRUE(fs::exists(fs::path(out) / "plots.gp"));
  std::ifstream svg(fs::path(out) / "loss_vs_time.svg");
  std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("dense 4w"), std::string::npos);
  EXPECT_NE(text.find("top_k"), std::string::npos);  // printed as typed, not as a subscript
}

TEST_F(ReportTest, PlotsWithoutDataAreLeftOut) {
  // Epoch records only, without phase times: the loss comes from the epochs, no phase plot.
  write(fs::path(topk_) / "metrics.jsonl",
        "{\"kind\":\"epoch\",\"time_s\":5,\"train_loss\":0.9,\"test_accuracy\":0.7,"
        "\"bytes_sent\":1e6}\n{\"kind\":\"epoch\",\"time_s\":10,\"train_loss\":null,"
        "\"test_accuracy\":0.8,\"bytes_sent\":2e6}\n");
  const std::string out = (fs::path(tmp_.path()) / "out").string();
  std::vector<std::string> files;
  try {
    files = write_plots({topk_}, out);
  } catch (const IoError& e) {
    if (std::string(e.what()).find("gnuplot not found") != std::string::npos) {
      GTEST_SKIP() << e.what();
    }
    throw;
  }
  EXPECT_GT(fs::file_size(fs::path(out) / "loss_vs_time.png"), 1000u);
  EXPECT_GT(fs::file_size(fs::path(out) / "accuracy_vs_bytes.svg"), 1000u);
  EXPECT_FALSE(fs::exists(fs::path(out) / "phase_time.png"));
  for (const auto& f : files) EXPECT_EQ(f.find("phase_time"), std::string::npos) << f;
}

TEST_F(ReportTest, TimeToTargetColumnAndAccuracyVsTimePlot) {
  write(fs::path(topk_) / "metrics.jsonl",
        "{\"kind\":\"eval\",\"time_s\":2,\"test_accuracy\":0.6}\n"
        "{\"kind\":\"eval\",\"time_s\":4,\"test_accuracy\":0.81}\n"
        "{\"kind\":\"epoch\",\"time_s\":5,\"train_loss\":0.9,\"test_accuracy\":0.82,"
        "\"bytes_sent\":1e6}\n"
        "{\"kind\":\"final\",\"time_s\":5.5,\"test_accuracy\":0.82,\"target_accuracy\":0.8,"
        "\"time_to_target_s\":5}\n");
  const auto data = load_run(topk_);
  ASSERT_EQ(data.evaluations.size(), 3u);
  EXPECT_DOUBLE_EQ(data.evaluations[1].time_s, 4);
  EXPECT_DOUBLE_EQ(data.evaluations[2].test_accuracy, 0.82);
  const std::string table = format_table(load_runs({topk_, dense_}));
  EXPECT_NE(table.find("to 80.0% s"), std::string::npos) << table;
  EXPECT_NE(table.find("5.0"), std::string::npos) << table;
  // The run without a target shows "-" in that column.
  const std::string dense_row = table.substr(table.rfind('\n', table.size() - 2) + 1);
  EXPECT_EQ(dense_row.substr(dense_row.find_last_not_of(" \n"), 1), "-") << table;
  const std::string out = (fs::path(tmp_.path()) / "out").string();
  try {
    write_plots({topk_, dense_}, out);
  } catch (const IoError& e) {
    if (std::string(e.what()).find("gnuplot not found") != std::string::npos) {
      GTEST_SKIP() << e.what();
    }
    throw;
  }
  EXPECT_GT(fs::file_size(fs::path(out) / "accuracy_vs_time.png"), 1000u);
  // No step records with rounds: no loss-vs-rounds plot.
  EXPECT_FALSE(fs::exists(fs::path(out) / "loss_vs_rounds.png"));
  std::ofstream(fs::path(topk_) / "metrics.jsonl", std::ios::app)
      << "{\"kind\":\"step\",\"time_s\":1,\"loss\":1.5,\"rounds\":4}\n"
      << "{\"kind\":\"step\",\"time_s\":2,\"loss\":1.2,\"rounds\":8}\n";
  EXPECT_DOUBLE_EQ(load_run(topk_).steps.back().rounds, 8);
  write_plots({topk_, dense_}, out);
  EXPECT_GT(fs::file_size(fs::path(out) / "loss_vs_rounds.png"), 1000u);
}

TEST_F(ReportTest, MissingGnuplotIsNamed) {
  const char* old = std::getenv("PATH");
  std::string saved = old ? old : "";
  ::setenv("PATH", tmp_.path().c_str(), 1);
  try {
    write_plots({dense_}, (fs::path(tmp_.path()) / "out").string());
    ADD_FAILURE() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("gnuplot not found: install gnuplot-nox"),
              std::string::npos)
        << e.what();
  }
  ::setenv("PATH", saved.c_str(), 1);
}

TEST_F(ReportTest, MalformedLineNamesFileAndLine) {
  std::ofstream(fs::path(dense_) / "metrics.jsonl", std::ios::app) << "{\"kind\":\"step\",\n";
  auto msg = error_of<InvalidArgument>({topk_, dense_});
  EXPECT_NE(msg.find(dense_ + "/metrics.jsonl:14"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;

  write(fs::path(topk_) / "metrics.jsonl", "\n[1,2]\n");
  msg = error_of<InvalidArgument>({topk_});
  EXPECT_NE(msg.find("metrics.jsonl:2"), std::string::npos) << msg;

  write(fs::path(topk_) / "metrics.jsonl", R"({"kind":"epoch","time_s":"late"})");
  msg = error_of<InvalidArgument>({topk_});
  EXPECT_NE(msg.find("metrics.jsonl:1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("time_s"), std::string::npos) << msg;

  write(fs::path(topk_) / "metrics.jsonl", R"({"kind":"step","time_s":1.0})");
  msg = error_of<InvalidArgument>({topk_});
  EXPECT_NE(msg.find("lacks \"loss\""), std::string::npos) << msg;

  write(fs::path(topk_) / "config.json", R"({"workers":"four"})");
  msg = error_of<InvalidArgument>({topk_});
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("workers"), std::string::npos) << msg;
}

TEST_F(ReportTest, MissingFilesAreNamed) {
  fs::remove(fs::path(topk_) / "metrics.jsonl");
  auto msg = error_of<IoError>({dense_, topk_});
  EXPECT_NE(msg.find(topk_ + "/metrics.jsonl"), std::string::npos) << msg;

  fs::remove(fs::path(dense_) / "config.json");
  msg = error_of<IoError>({dense_});
  EXPECT_NE(msg.find(dense_ + "/config.json"), std::string::npos) << msg;

  msg = error_of<IoError>({dense_ + "/nope"});
  EXPECT_NE(msg.find(dense_ + "/nope"), std::string::npos) << msg;
}

TEST_F(ReportTest, RunWithoutEpochRecordIsRefused) {
  write(fs::path(topk_) / "metrics.jsonl",
        "{\"kind\":\"step\",\"time_s\":1.0,\"loss\":2.2}\n\n{\"kind\":\"note\",\"text\":\"hi\"}\n");
  auto msg = error_of<InvalidArgument>({topk_});
  EXPECT_NE(msg.find("run " + topk_ + " has no epoch record"), std::string::npos) << msg;
}

TEST_F(ReportTest, CommandPrintsTable) {
  CLI::App app;
  int exit_code = -1;
  add_report(app, exit_code);
  std::vector<std::string> args = {"dtrain", "report", dense_, topk_, "--no-plots"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  ::testing::internal::CaptureStdout();
  app.parse(static_cast<int>(argv.size()), argv.data());
  std::string printed = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(exit_code, 0);
  EXPECT_NE(printed.find("dense 4w"), std::string::npos) << printed;
  EXPECT_NE(printed.find("0.67x"), std::string::npos) << printed;
  EXPECT_EQ(printed.find("wrote"), std::string::npos) << printed;
  EXPECT_FALSE(fs::exists(fs::path(dense_) / "report"));
}

TEST_F(ReportTest, CommandRejectsMissingDirectory) {
  CLI::App app;
  int exit_code = -1;
  add_report(app, exit_code);
  std::vector<std::string> args = {"dtrain", "report", dense_ + "/nope"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  EXPECT_THROW(app.parse(static_cast<int>(argv.size()), argv.data()), CLI::ValidationError);
}

}  // namespace
}  // namespace dtrain::app
