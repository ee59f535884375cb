#include "dtrain/train/local_sgd_schedule.h"

#include <algorithm>
#include <limits>

#include "dtrain/common/error.h"
#include "dtrain/reduce/params.h"

namespace dtrain::train {

LocalSgdSchedule LocalSgdSchedule::parse(const std::string& spec) {
  LocalSgdSchedule s;
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  if (name == "sync") {
    DT_ENFORCE(colon == std::string::npos, "--algorithm sync takes no parameters, got '", spec,
               "'");
    return s;
  }
  DT_ENFORCE(name == "local", "--algorithm '", spec, "': unknown algorithm '", name,
             "' (valid: sync, local)");
  const std::string text = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const auto p =
      reduce::parse_params("local", text, {"H", "warmup", "Hmax", "double_every"}, "--algorithm");
  constexpr size_t kMax = size_t(1) << 40;
  s.local = true;
  s.period = static_cast<int64_t>(p.get_size("H", 8, 1, kMax));
  s.warmup = static_cast<int64_t>(p.get_size("warmup", 0, 0, kMax));
  s.max_period = static_cast<int64_t>(p.get_size("Hmax", 0, 0, kMax));
  s.double_every = static_cast<int64_t>(p.get_size("double_every", 0, 0, kMax));
  DT_ENFORCE(s.max_period == 0 || s.max_period >= s.period, "--algorithm ", spec,
             ": Hmax=", s.max_period, " is below H=", s.period);
  DT_ENFORCE((s.max_period == 0) == (s.double_every == 0), "--algorithm ", spec,
             ": Hmax and double_every go together (the period doubles every double_every steps "
             "up to Hmax)");
  return s;
}

std::string LocalSgdSchedule::str() const {
  if (!local) return "sync";
  std::string out = "local:H=" + std::to_string(period);
  if (warmup > 0) out += ",warmup=" + std::to_string(warmup);
  if (max_period > 0) {
    out += ",Hmax=" + std::to_string(max_period) + ",double_every=" + std::to_string(double_every);
  }
  return out;
}

int64_t LocalSgdSchedule::period_at(int64_t step) const {
  if (max_period == 0 || step < warmup) return period;
  int64_t h = period;
  for (int64_t d = (step - warmup) / double_every; d > 0 && h < max_period; --d) h *= 2;
  return std::min(h, max_period);
}

int64_t LocalSgdSchedule::next_average(int64_t done) const {
  DT_ENFORCE(local, "next_average on a synchronous schedule");
  int64_t t = std::max<int64_t>(done, warmup);
  if (max_period == 0) {
    // Averaging times warmup + k H: the first one at or after `done` (none at warmup itself).
    const int64_t k = std::max<int64_t>(1, (t - warmup + period - 1) / period);
    return warmup + k * period;
  }
  // Averaging times: at_0 = warmup, at_{k+1} = at_k + period_at(at_k). The period changes only
  // every double_every steps, so jump over each stretch of equal periods at once.
  int64_t at = warmup;
  do {
    const int64_t p = period_at(at);
    const int64_t stretch_end = p >= max_period
                                    ? std::numeric_limits<int64_t>::max()
                                    : warmup + ((at - warmup) / double_every + 1) * double_every;
    // Averagings of period p until the first one at or past min(t, stretch_end).
    const int64_t goal = std::min(t, stretch_end);
    const int64_t k = std::max<int64_t>(1, (goal - at + p - 1) / p);
    at += k * p;
  } while (at < t);
  return at;
}

bool LocalSgdSchedule::average_after(int64_t step) const {
  if (synchronous(step)) return false;
  return next_average(step + 1) == step + 1;
}

}  // namespace dtrain::train
