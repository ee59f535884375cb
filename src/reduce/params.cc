#include "dtrain/reduce/params.h"

#include <cmath>

#include "dtrain/common/error.h"

namespace dtrain::reduce {
namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

Params parse_params(const std::string& owner, const std::string& text,
                    const std::vector<std::string>& valid, const std::string& flag) {
  std::map<std::string, std::string> values;
  size_t start = 0;
  bool first = true;
  // "a=1," ends in an empty item: an error like any other item that is not key=value.
  while (start < text.size() || (start == text.size() && !text.empty() && text.back() == ',')) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    const size_t eq = item.find('=');
    std::string key, value;
    if (eq == std::string::npos && first && !valid.empty()) {
      key = valid.front();
      value = item;
    } else {
      DT_ENFORCE(eq != std::string::npos, flag, " ", owner, ": '", item,
                 "' is not key=value (valid keys: ", join(valid), ")");
      key = item.substr(0, eq);
      value = item.substr(eq + 1);
    }
    bool known = false;
    for (const auto& v : valid) known |= v == key;
    DT_ENFORCE(known, flag, " ", owner, ": unknown parameter '", key, "' (valid: ", join(valid),
               ")");
    DT_ENFORCE(values.emplace(key, value).second, flag, " ", owner, ": parameter '", key,
               "' given twice");
    first = false;
    start = end + 1;
  }
  return Params(owner, std::move(values), flag);
}

size_t Params::get_size(const std::string& key, size_t fallback, size_t lo, size_t hi) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  const std::string& v = it->second;
  size_t pos = 0;
  unsigned long long x = 0;
  bool ok = !v.empty() && v[0] != '-';
  try {
    if (ok) x = std::stoull(v, &pos);
  } catch (const std::exception&) {
    ok = false;
  }
  ok = ok && pos == v.size() && x >= lo && x <= hi;
  DT_ENFORCE(ok, flag_, " ", owner_, ": ", key, "=", v, " is not an integer in [", lo, ", ", hi,
             "]");
  return static_cast<size_t>(x);
}

double Params::get_double(const std::string& key, double fallback, double lo, double hi,
                          bool lo_open, bool hi_open) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  const std::string& v = it->second;
  size_t pos = 0;
  double x = 0;
  bool ok = !v.empty();
  try {
    if (ok) x = std::stod(v, &pos);
  } catch (const std::exception&) {
    ok = false;
  }
  ok = ok && pos == v.size() && std::isfinite(x) && (lo_open ? x > lo : x >= lo) &&
       (hi_open ? x < hi : x <= hi);
  DT_ENFORCE(ok, flag_, " ", owner_, ": ", key, "=", v, " is not a number in ", lo_open ? "(" : "[",
             lo, ", ", hi, hi_open ? ")" : "]");
  return x;
}

std::string Params::get_string(const std::string& key, const std::string& fallback) const {
  auto it = values_.find(key);
  return it == values_.end() ? fallback : it->second;
}

}  // namespace dtrain::reduce
