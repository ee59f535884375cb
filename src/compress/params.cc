// Spec parameter parsing. The first item may omit its key, and then binds to the compressor's
// first parameter; every other item is key=value. Unknown keys and repeated keys are errors that
// list the valid keys, so a typo never silently falls back to a default.
#include "params.h"

#include <charconv>
#include <cmath>

#include "dtrain/common/error.h"

namespace dtrain::compress::detail {

std::vector<std::string> split_args(const std::string& args, const std::string& spec) {
  std::vector<std::string> items;
  if (args.empty()) return items;
  size_t begin = 0;
  while (true) {
    const size_t end = args.find(',', begin);
    std::string item = args.substr(begin, end == std::string::npos ? end : end - begin);
    DT_ENFORCE(!item.empty(), "compressor spec '", spec, "' has an empty parameter");
    items.push_back(std::move(item));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return items;
}

std::string format_number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

Params::Params(std::string spec, std::string compressor, const std::string& args,
               std::vector<ParamDef> defs)
    : spec_(std::move(spec)), compressor_(std::move(compressor)), defs_(std::move(defs)) {
  const auto items = split_args(args, spec_);
  DT_ENFORCE(!defs_.empty() || items.empty(), compressor_, " takes no parameters (in spec '", spec_,
             "')");
  std::string valid;
  for (const auto& d : defs_) valid += (valid.empty() ? "" : ", ") + d.key;
  for (size_t i = 0; i < items.size(); ++i) {
    const size_t eq = items[i].find('=');
    std::string key, value;
    if (eq == std::string::npos) {
      DT_ENFORCE(i == 0, compressor_, ": parameter '", items[i], "' in spec '", spec_,
                 "' has no key (only the first may omit it; valid keys: ", valid, ")");
      key = defs_.front().key;
      value = items[i];
    } else {
      key = items[i].substr(0, eq);
      value = items[i].substr(eq + 1);
    }
    bool known = false;
    for (const auto& d : defs_) known = known || d.key == key;
    DT_ENFORCE(known, compressor_, ": unknown parameter '", key, "' in spec '", spec_,
               "' (valid: ", valid, ")");
    DT_ENFORCE(!value.empty(), compressor_, ": parameter '", key, "' has no value in spec '", spec_,
               "'");
    DT_ENFORCE(values_.emplace(key, value).second, compressor_, ": parameter '", key,
               "' given twice in spec '", spec_, "'");
  }
  for (const auto& d : defs_) values_.emplace(d.key, d.default_value);
}

const std::string& Params::raw(const std::string& key) const {
  auto it = values_.find(key);
  DT_ENFORCE(it != values_.end(), compressor_, ": no parameter '", key, "'");
  return it->second;
}

void Params::fail(const std::string& key, const std::string& what) const {
  throw InvalidArgument(compressor_ + ": " + key + "=" + raw(key) + " " + what + " (in spec '" +
                        spec_ + "')");
}

double Params::number(const std::string& key) const {
  const std::string& s = raw(key);
  double v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v)) {
    fail(key, "is not a finite number");
  }
  return v;
}

int64_t Params::integer(const std::string& key) const {
  const std::string& s = raw(key);
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) fail(key, "is not an integer");
  return v;
}

bool Params::flag(const std::string& key) const {
  const std::string& s = raw(key);
  if (s != "0" && s != "1") fail(key, "is not 0 or 1");
  return s == "1";
}

std::string Params::choice(const std::string& key,
                           std::initializer_list<const char*> options) const {
  const std::string& s = raw(key);
  std::string valid;
  for (const char* o : options) {
    if (s == o) return s;
    valid += (valid.empty() ? "" : ", ") + std::string(o);
  }
  fail(key, "is not one of " + valid);
}

}  // namespace dtrain::compress::detail
