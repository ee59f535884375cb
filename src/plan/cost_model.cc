// The allreduce cost model: fitting, lookup, measurement.
//
// Fitting works as follows. Samples of one size are averaged into one point (x = bytes,
// y = seconds). The line y = alpha + beta * x is fitted by weighted least squares with weights
// 1 / y^2, i.e. minimising the relative error: measured sizes span several decades, and plain
// least squares would let the millisecond times of the largest sizes swamp the microseconds that
// determine alpha. The fit is done on centred sums (x - mean, y - mean) so that sizes of 1e9
// bytes do not cancel catastrophically. When the free solution has alpha < 0 or beta < 0 (noise
// on a flat curve), the constrained optimum lies on an edge: the best line through the origin
// (alpha = 0) or the best constant (beta = 0), whichever has the smaller weighted residual.
//
// Lookup interpolates linearly between the table's points (see cost_model.h for the ends).
//
// Measurement times each call between a barrier and its return on every rank, takes the maximum
// over ranks of each call (the slowest rank is what a synchronous step waits for) and, per size,
// the mean over calls without the slowest tenth. A mean, not a median: the plan predicts the
// average step, and where call times are bimodal (on a loaded box a call either finishes in its
// time slice or waits a scheduler tick, 0.2 ms against 4 ms here) the median picks one mode and
// mispredicts every step; the slowest tenth (page faults, preemptions) is left out. Every rank fits
// the same numbers with the same code, so every rank ends with the same model.
#include "dtrain/plan/cost_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"

namespace dtrain::plan {
namespace {

struct Point {
  double x = 0, y = 0, w = 0;
};

double weighted_sse(const std::vector<Point>& pts, double alpha, double beta) {
  double sse = 0;
  for (const auto& p : pts) {
    const double e = alpha + beta * p.x - p.y;
    sse += p.w * e * e;
  }
  return sse;
}

double number(const nlohmann::json& j, const char* key) {
  DT_ENFORCE(j.contains(key) && j.at(key).is_number(), "cost model json: '", key,
             "' is missing or not a number");
  const double v = j.at(key).get<double>();
  DT_ENFORCE(std::isfinite(v) && v >= 0, "cost model json: '", key, "' is ", v,
             ", expected a finite value >= 0");
  return v;
}

// The mean of the fastest 90% of the calls (at least one).
double trimmed_mean(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t keep = std::max<size_t>(1, v.size() - v.size() / 10);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += v[i];
  return sum / static_cast<double>(keep);
}

}  // namespace

double CostModel::time(uint64_t bytes) const {
  if (table.empty()) return alpha_s + beta_s_per_byte * static_cast<double>(bytes);
  if (bytes <= table.front().first) return table.front().second;
  if (bytes >= table.back().first) {
    return table.back().second + beta_s_per_byte * static_cast<double>(bytes - table.back().first);
  }
  auto hi = std::upper_bound(table.begin(), table.end(), bytes,
                             [](uint64_t b, const auto& point) { return b < point.first; });
  auto lo = hi - 1;
  const double f =
      static_cast<double>(bytes - lo->first) / static_cast<double>(hi->first - lo->first);
  return lo->second + f * (hi->second - lo->second);
}

CostModel CostModel::fit(std::vector<std::pair<uint64_t, double>> samples) {
  std::map<uint64_t, std::pair<double, int>> by_size;  // bytes -> (sum of seconds, count)
  for (const auto& [bytes, seconds] : samples) {
    DT_ENFORCE(std::isfinite(seconds) && seconds >= 0, "cost model fit: the time of ", bytes,
               " bytes is ", seconds, ", expected a finite value >= 0");
    auto& [sum, count] = by_size[bytes];
    sum += seconds;
    ++count;
  }
  DT_ENFORCE(by_size.size() >= 2,
             "cost model fit: needs samples of at least 2 distinct sizes, got ", by_size.size());

  CostModel model;
  std::vector<Point> pts;
  for (const auto& [bytes, acc] : by_size) {
    const double y = acc.first / acc.second;
    model.table.emplace_back(bytes, y);
    const double floor_y = std::max(y, 1e-12);  // a zero time must not get infinite weight
    pts.push_back({static_cast<double>(bytes), y, 1.0 / (floor_y * floor_y)});
  }

  double sw = 0, sx = 0, sy = 0;
  for (const auto& p : pts) {
    sw += p.w;
    sx += p.w * p.x;
    sy += p.w * p.y;
  }
  const double mx = sx / sw, my = sy / sw;
  double sxx = 0, sxy = 0;
  for (const auto& p : pts) {
    sxx += p.w * (p.x - mx) * (p.x - mx);
    sxy += p.w * (p.x - mx) * (p.y - my);
  }
  double beta = sxx > 0 ? sxy / sxx : 0;
  double alpha = my - beta * mx;
  if (alpha < 0 || beta < 0) {
    double wxx = 0, wxy = 0;
    for (const auto& p : pts) {
      wxx += p.w * p.x * p.x;
      wxy += p.w * p.x * p.y;
    }
    const double through_origin = wxx > 0 ? std::max(0.0, wxy / wxx) : 0;
    const double constant = my;
    if (weighted_sse(pts, 0, through_origin) <= weighted_sse(pts, constant, 0)) {
      alpha = 0;
      beta = through_origin;
    } else {
      alpha = constant;
      beta = 0;
    }
  }
  model.alpha_s = alpha;
  model.beta_s_per_byte = beta;
  return model;
}

nlohmann::json CostModel::to_json() const {
  nlohmann::json points = nlohmann::json::array();
  for (const auto& [bytes, seconds] : table) points.push_back({bytes, seconds});
  return {{"alpha_s", alpha_s}, {"beta_s_per_byte", beta_s_per_byte}, {"table", points}};
}

CostModel CostModel::from_json(const nlohmann::json& j) {
  DT_ENFORCE(j.is_object(), "cost model json: expected an object, got ", j.type_name());
  CostModel model;
  model.alpha_s = number(j, "alpha_s");
  model.beta_s_per_byte = number(j, "beta_s_per_byte");
  if (j.contains("table")) {
    const auto& t = j.at("table");
    DT_ENFORCE(t.is_array(), "cost model json: 'table' is not an array");
    for (size_t i = 0; i < t.size(); ++i) {
      const auto& p = t[i];
      DT_ENFORCE(p.is_array() && p.size() == 2 && p[0].is_number_integer() &&
                     (p[0].is_number_unsigned() || p[0].get<int64_t>() >= 0) && p[1].is_number(),
                 "cost model json: table entry ", i, " is ", p.dump(),
                 ", expected [bytes >= 0, seconds]");
      const uint64_t bytes = p[0].get<uint64_t>();
      const double seconds = p[1].get<double>();
      DT_ENFORCE(std::isfinite(seconds) && seconds >= 0, "cost model json: table entry ", i,
                 " has time ", seconds, ", expected a finite value >= 0");
      DT_ENFORCE(model.table.empty() || bytes > model.table.back().first,
                 "cost model json: table entry ", i, " (", bytes,
                 " bytes) is not after the previous one; sizes must strictly increase");
      model.table.emplace_back(bytes, seconds);
    }
  }
  return model;
}

CostModel measure(comm::Group& group, const std::vector<uint64_t>& sizes_bytes, int iters,
                  const std::function<void(std::span<float>)>& run, int warmup) {
  return measure(group, sizes_bytes, std::vector<int>(sizes_bytes.size(), iters), run, warmup);
}

CostModel measure(comm::Group& group, const std::vector<uint64_t>& sizes_bytes,
                  const std::vector<int>& iters, const std::function<void(std::span<float>)>& run,
                  int warmup) {
  DT_ENFORCE(iters.size() == sizes_bytes.size(), "measure: ", iters.size(),
             " iteration counts for ", sizes_bytes.size(), " sizes");
  for (int i : iters) DT_ENFORCE(i >= 1, "measure: iters is ", i, ", expected >= 1");
  DT_ENFORCE(warmup >= 0, "measure: warmup is ", warmup, ", expected >= 0");
  DT_ENFORCE(static_cast<bool>(run), "measure: no allreduce to time");
  std::vector<size_t> counts;
  for (uint64_t bytes : sizes_bytes) counts.push_back((bytes + sizeof(float) - 1) / sizeof(float));
  std::vector<size_t> distinct = counts;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  DT_ENFORCE(distinct.size() >= 2,
             "measure: needs at least 2 distinct sizes (in whole floats), got ", distinct.size());

  std::vector<float> buffer(distinct.back());
  std::vector<size_t> first(counts.size() + 1, 0);  // times of size s: [first[s], first[s+1])
  for (size_t s = 0; s < counts.size(); ++s)
    first[s + 1] = first[s] + static_cast<size_t>(iters[s]);
  std::vector<double> times(first.back());
  for (size_t s = 0; s < counts.size(); ++s) {
    const std::span<float> data(buffer.data(), counts[s]);
    for (int k = 0; k < warmup + iters[s]; ++k) {
      // Refill so that repeated sums cannot overflow into infinities (slow paths on some CPUs).
      std::fill(data.begin(), data.end(), 1.0f);
      collective::barrier(collective::BarrierOptions(group));
      const auto start = std::chrono::steady_clock::now();
      run(data);
      const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
      if (k >= warmup) times[first[s] + static_cast<size_t>(k - warmup)] = took.count();
    }
  }
  collective::AllreduceOptions agree(group);
  agree.output = collective::View(times);
  agree.op = collective::ReduceOp::kMax;
  collective::allreduce(agree);

  std::vector<std::pair<uint64_t, double>> samples;
  for (size_t s = 0; s < counts.size(); ++s) {
    std::vector<double> calls(times.begin() + first[s], times.begin() + first[s + 1]);
    samples.emplace_back(counts[s] * sizeof(float), trimmed_mean(std::move(calls)));
  }
  return CostModel::fit(std::move(samples));
}

}  // namespace dtrain::plan
