// `dtrain report` plots, drawn by gnuplot, which works as follows here:
//
// One script, plots.gp, and one data file per plot go into the output directory, so that a user
// can edit the script and re-run `gnuplot plots.gp` there. A data file holds one block per run
// (blocks apart by two blank lines, addressed by gnuplot's `index`); a run without points for a
// plot gets no block and no legend entry. Each plot is drawn twice, to PNG (pngcairo when gnuplot
// has it, else libgd's png) and to SVG, from the same commands.
//
// Run names reach the script only as single-quoted gnuplot strings, in which nothing but a doubled
// quote is special, and every terminal is `noenhanced`, so that _ ^ { } @ & in a name print as
// typed. Names never go into data files.
//
// gnuplot runs as a child (posix_spawnp, started in the output directory, output to gnuplot.log),
// under a deadline; a failure quotes the end of its log.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "dtrain/common/error.h"
#include "report.h"

namespace dtrain::app {
namespace {

namespace fs = std::filesystem;

constexpr std::array<const char*, 5> kPhases = {"data", "forward", "backward", "comm_wait",
                                                "optimizer"};
constexpr std::chrono::seconds kGnuplotDeadline{120};
constexpr const char* kScript = "plots.gp";
constexpr size_t kMaxLabel = 40;

// A gnuplot single-quoted string literal; control characters become spaces.
std::string gp_string(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "''";
    else
      q += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
  }
  return q + "'";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "NaN";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

// Legend labels: run names cut to kMaxLabel bytes (on a UTF-8 character boundary), and numbered
// by position where two runs would show the same label.
std::vector<std::string> labels(const std::vector<RunData>& runs) {
  std::vector<std::string> out;
  for (const auto& r : runs) {
    std::string name = r.summary.name;
    if (name.size() > kMaxLabel) {
      size_t cut = kMaxLabel - 3;
      while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;
      name = name.substr(0, cut) + "...";
    }
    out.push_back(name);
  }
  std::multiset<std::string> seen(out.begin(), out.end());
  for (size_t i = 0; i < out.size(); ++i) {
    if (seen.count(out[i]) > 1) out[i] += " #" + std::to_string(i + 1);
  }
  return out;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) DT_THROW(IoError, "cannot write ", path.string());
}

// One plot: its data file and the commands that draw it, both images from the same commands.
struct Plot {
  std::string stem;
  std::string data;
  std::string commands;
};

// Lines of (x, y) per run, one gnuplot `index` block per run with points.
Plot line_plot(const std::string& stem, const std::vector<std::string>& names,
               const std::vector<std::vector<std::pair<double, double>>>& points,
               const std::string& settings, const std::string& style) {
  Plot p{stem, "", settings};
  std::string plot_cmd;
  int block = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    // A null loss (diverged) or a missing figure is no point; a run of only those is no line.
    std::string rows;
    for (auto [x, y] : points[i]) {
      if (std::isfinite(x) && std::isfinite(y)) rows += num(x) + " " + num(y) + "\n";
    }
    if (rows.empty()) continue;
    if (block > 0) p.data += "\n\n";
    p.data += "# run " + std::to_string(i + 1) + "\n" + rows;
    plot_cmd += std::string(block > 0 ? ", \\\n     " : "plot ") + gp_string(stem + ".dat") +
                " index " + std::to_string(block) + " using 1:2 " + style + " linetype " +
                std::to_string(i % 8 + 1) + " dashtype " + std::to_string(i / 8 + 1) + " title " +
                gp_string(names[i]);
    ++block;
  }
  if (block == 0) return Plot{};  // nothing to draw
  p.commands += plot_cmd + "\n";
  return p;
}

Plot loss_plot(const std::vector<RunData>& runs, const std::vector<std::string>& names) {
  std::vector<std::vector<std::pair<double, double>>> points(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    for (const auto& s : runs[i].steps) points[i].push_back({s.time_s, s.loss});
    // A trainer that logs no steps still has per-epoch training losses.
    if (points[i].empty()) {
      for (const auto& e : runs[i].epochs) points[i].push_back({e.time_s, e.train_loss});
    }
  }
  return line_plot("loss_vs_time", names, points,
                   "set title 'Training loss vs time'\n"
                   "set xlabel 'time since start of training (s)'\n"
                   "set ylabel 'training loss'\n",
                   "with lines linewidth 2");
}

Plot accuracy_plot(const std::vector<RunData>& runs, const std::vector<std::string>& names) {
  std::vector<std::vector<std::pair<double, double>>> points(runs.size());
  double min_mb = INFINITY, max_mb = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    for (const auto& e : runs[i].epochs) {
      if (std::isfinite(e.bytes_sent)) {
        points[i].push_back({e.bytes_sent / 1e6, 100 * e.test_accuracy});
        if (e.bytes_sent > 0) min_mb = std::min(min_mb, e.bytes_sent / 1e6);
        max_mb = std::max(max_mb, e.bytes_sent / 1e6);
      }
    }
  }
  // Compressed runs send 100x to 1000x less than dense ones; on a linear axis they sit on zero.
  const bool log_x = max_mb > 100 * min_mb;
  return line_plot(
      "accuracy_vs_bytes", names, points,
      std::string("set title 'Test accuracy vs data sent (after each epoch)'\n") +
          (log_x ? "set logscale x\nset xlabel 'data sent by one rank (MB, log scale)'\n"
                 : "set xlabel 'data sent by one rank (MB)'\n") +
          "set ylabel 'test accuracy (%)'\n",
      "with linespoints linewidth 2 pointtype 7 pointsize 1.3");
}

// Training loss against communication rounds (gradient averagings + model averagings): what
// Local SGD saves. Left out when no run logged rounds.
Plot loss_rounds_plot(const std::vector<RunData>& runs, const std::vector<std::string>& names) {
  std::vector<std::vector<std::pair<double, double>>> points(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    for (const auto& s : runs[i].steps) {
      if (std::isfinite(s.rounds)) points[i].push_back({s.rounds, s.loss});
    }
  }
  return line_plot("loss_vs_rounds", names, points,
                   "set title 'Training loss vs communication rounds'\n"
                   "set logscale x\n"
                   "set xlabel 'communication rounds (log scale)'\n"
                   "set ylabel 'training loss'\n",
                   "with lines linewidth 2");
}

// Test accuracy against training time, at every evaluation (--eval-every and epoch ends): the
// time-to-accuracy race.
Plot accuracy_time_plot(const std::vector<RunData>& runs, const std::vector<std::string>& names) {
  std::vector<std::vector<std::pair<double, double>>> points(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    for (const auto& e : runs[i].evaluations) {
      if (std::isfinite(e.time_s)) points[i].push_back({e.time_s, 100 * e.test_accuracy});
    }
  }
  return line_plot("accuracy_vs_time", names, points,
                   "set title 'Test accuracy vs training time (evaluations excluded)'\n"
                   "set xlabel 'training time (s)'\n"
                   "set ylabel 'test accuracy (%)'\n",
                   "with linespoints linewidth 2 pointtype 7 pointsize 0.8");
}

// Stacked bars, one per run, of each phase's time summed over the epochs.
Plot phase_plot(const std::vector<RunData>& runs, const std::vector<std::string>& names) {
  Plot p{"phase_time", "# run", ""};
  for (const char* phase : kPhases) p.data += std::string(" ") + phase;
  p.data += "\n";
  std::string xtics, totals;
  size_t longest = 0;
  double all_phases = 0, max_total = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    p.data += std::to_string(i);
    double run_total = 0;
    for (const char* phase : kPhases) {
      double total = 0;
      for (const auto& e : runs[i].epochs) {
        auto it = e.phase_s.find(phase);
        if (it != e.phase_s.end() && std::isfinite(it->second)) total += it->second;
      }
      p.data += " " + num(total);
      run_total += total;
    }
    p.data += "\n";
    char total_label[128];
    std::snprintf(total_label, sizeof(total_label),
                  "set label '%.1f s' at %zu,%.9g center offset 0,0.8\n", run_total, i, run_total);
    totals += total_label;
    all_phases += run_total;
    max_total = std::max(max_total, run_total);
    // Tic labels are printf formats to gnuplot: a % must be doubled.
    std::string label;
    for (char ch : names[i]) label += ch == '%' ? std::string("%%") : std::string(1, ch);
    xtics += (i > 0 ? ", " : "") + gp_string(label) + " " + std::to_string(i);
    longest = std::max(longest, names[i].size());
  }
  if (all_phases <= 0) return Plot{};  // no run recorded phase times
  const bool rotate = longest * runs.size() > 60 || longest > 24;
  std::ostringstream c;
  c << "set title 'Time per training phase (summed over epochs)'\n"
    << "set ylabel 'time (s)'\n"
    << "set style data histograms\n"
    << "set style histogram rowstacked\n"
    << "set style fill solid 0.85 border -1\n"
    << "set boxwidth 0.6 relative\n"
    << "set yrange [0:" << num(max_total * 1.12) << "]\n"  // room for the totals
    << "set xrange [-0.6:" << runs.size() - 0.4 << "]\n"
    << "set grid noxtics\n"
    << "set xtics (" << xtics << ") scale 0" << (rotate ? " rotate by 30 right" : "") << "\n"
    << "set key outside right top vertical Left reverse title 'phase'\n"
    << totals << "plot ";
  for (size_t k = 0; k < kPhases.size(); ++k) {
    c << (k > 0 ? ", \\\n     " : "") << "'phase_time.dat' using " << k + 2 << " title "
      << gp_string(kPhases[k]);
  }
  c << "\n";
  p.commands = c.str();
  return p;
}

std::string script_for(const std::vector<Plot>& plots) {
  std::ostringstream s;
  s << "# Written by `dtrain report`. Re-draw with: gnuplot " << kScript
    << " (in this directory)\n";
  for (const auto& p : plots) {
    for (const char* ext : {"png", "svg"}) {
      s << "\n";
      if (std::string(ext) == "png") {
        s << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
          << "  set terminal pngcairo size 1000,620 noenhanced font 'Sans,11' linewidth 1\n"
          << "} else {\n"
          << "  set terminal png size 1000,620 noenhanced\n"
          << "}\n";
      } else {
        s << "set terminal svg size 1000,620 noenhanced font 'Sans,11' background '#ffffff'\n";
      }
      s << "set output " << gp_string(p.stem + "." + ext) << "\n"
        << "reset\n"
        << "set grid\n"
        << "set title font ',14'\n"
        << "set key outside right top vertical Left reverse\n"
        << p.commands << "unset output\n";
    }
  }
  return s.str();
}

std::string tail_of(const fs::path& file, size_t max_chars) {
  std::ifstream in(file, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > max_chars ? "..." + text.substr(text.size() - max_chars) : text;
}

// Runs `gnuplot script` in dir, waiting at most kGnuplotDeadline.
void spawn_gnuplot(const fs::path& dir, const std::string& script_name) {
  const fs::path log = dir / "gnuplot.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "gnuplot.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::string prog = "gnuplot", script = script_name;
  char* argv[] = {prog.data(), script.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc == ENOENT) {
    DT_THROW(IoError, "gnuplot not found: install gnuplot-nox (scripts/setup.sh does)");
  }
  if (rc != 0) DT_THROW(IoError, "cannot start gnuplot in ", dir.string(), ": ", strerror(rc));

  const auto deadline = std::chrono::steady_clock::now() + kGnuplotDeadline;
  int status = 0;
  for (;;) {
    pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) DT_THROW(IoError, "waitpid(gnuplot): ", strerror(errno));
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      DT_THROW(TimeoutError, "gnuplot ran past ", kGnuplotDeadline.count(), " s on ",
               (dir / script_name).string());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string how = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                        : "signal " + std::to_string(WTERMSIG(status));
    DT_THROW(IoError, "gnuplot failed (", how, ") on ", (dir / script_name).string(),
             "; the end of ", log.string(), ":\n", tail_of(log, 2000));
  }
  std::error_code ec;
  if (fs::file_size(log, ec) == 0) fs::remove(log, ec);
}

}  // namespace

void run_gnuplot(const std::string& dir, const std::string& script) {
  spawn_gnuplot(dir, script);
}

std::vector<std::string> write_plots(const std::vector<std::string>& dirs,
                                     const std::string& out_dir) {
  DT_ENFORCE(!dirs.empty(), "report: no run directories to plot");
  std::vector<RunData> runs;
  for (const auto& d : dirs) runs.push_back(load_run(d));
  const auto names = labels(runs);

  std::vector<Plot> plots;
  for (Plot p :
       {loss_plot(runs, names), accuracy_plot(runs, names), accuracy_time_plot(runs, names),
        loss_rounds_plot(runs, names), phase_plot(runs, names)}) {
    if (!p.stem.empty()) plots.push_back(std::move(p));
  }

  const fs::path dir(out_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    DT_THROW(IoError, "cannot create report directory ", out_dir, ": ", ec.message());
  }
  std::vector<std::string> images, sources;
  for (const auto& p : plots) {
    write_file(dir / (p.stem + ".dat"), p.data);
    sources.push_back((dir / (p.stem + ".dat")).string());
  }
  write_file(dir / kScript, script_for(plots));
  sources.insert(sources.begin(), (dir / kScript).string());
  spawn_gnuplot(dir, kScript);

  for (const auto& p : plots) {
    for (const char* ext : {".png", ".svg"}) {
      const fs::path image = dir / (p.stem + ext);
      if (!fs::exists(image) || fs::file_size(image) == 0) {
        DT_THROW(IoError, "gnuplot did not write ", image.string());
      }
      images.push_back(image.string());
    }
  }
  images.insert(images.end(), sources.begin(), sources.end());
  return images;
}

}  // namespace dtrain::app
