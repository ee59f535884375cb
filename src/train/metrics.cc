#include "dtrain/train/metrics.h"

#include <unistd.h>

#include "dtrain/common/error.h"
#include "schemes.h"

namespace dtrain::train {

MetricsLog::MetricsLog(const std::string& dir, bool append) : path_(dir + "/metrics.jsonl") {
  out_.open(path_, append ? std::ios::app : std::ios::trunc);
  if (!out_) throw IoError("cannot write metrics file " + path_);
}

void MetricsLog::write(const nlohmann::json& record) {
  if (!out_.is_open()) return;
  out_ << record.dump() << "\n";
  out_.flush();
  if (!out_) throw IoError("writing metrics file " + path_ + " failed");
}

Progress::Progress(bool quiet, int64_t steps_per_epoch)
    : quiet_(quiet), tty_(::isatty(STDOUT_FILENO) == 1), steps_per_epoch_(steps_per_epoch) {}

void Progress::step(int epoch, int64_t s, double loss, double samples_per_s, double mb_sent) {
  if (quiet_) return;
  const int64_t done = s + 1;
  if (tty_) {
    const int width = 30;
    int filled = steps_per_epoch_ > 0 ? int(width * done / steps_per_epoch_) : width;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::printf("\repoch %d [%s] %lld/%lld  loss %.4f  %.0f samples/s  %.1f MB sent ", epoch + 1,
                bar.c_str(), (long long)done, (long long)steps_per_epoch_, loss, samples_per_s,
                mb_sent);
    std::fflush(stdout);
    return;
  }
  // Plain output: about ten lines per epoch.
  const int64_t every = std::max<int64_t>(1, steps_per_epoch_ / 10);
  if (done % every == 0 && done != last_plain_) {
    last_plain_ = done;
    std::printf("epoch %d step %lld/%lld loss %.4f %.0f samples/s %.1f MB sent\n", epoch + 1,
                (long long)done, (long long)steps_per_epoch_, loss, samples_per_s, mb_sent);
    std::fflush(stdout);
  }
}

void Progress::epoch_done(const std::string& line) {
  if (quiet_) return;
  if (tty_) std::printf("\r\033[K");
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

nlohmann::json reducer_figures(const reduce::GradientReducer& reducer) {
  const auto figures = reducer.step_metrics();
  if (figures.empty()) return nullptr;
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : figures) out[key] = value;
  for (const auto& [key, values] : reducer.step_vectors()) out[key] = values;
  return out;
}

}  // namespace dtrain::train
