// Parameters of a reducer spec: "omnireduce:block=256,slots=2" -> {block: 256, slots: 2}. A bare
// first value ("topk:0.01") is stored under the first valid key.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace dtrain::reduce {

class Params {
 public:
  Params(std::string owner, std::map<std::string, std::string> values,
         std::string flag = "--reduce")
      : owner_(std::move(owner)), values_(std::move(values)), flag_(std::move(flag)) {}
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  // The value of key as an integer in [lo, hi], or fallback when absent; InvalidArgument naming
  // the reducer, the key and the value otherwise.
  size_t get_size(const std::string& key, size_t fallback, size_t lo, size_t hi) const;
  // ... as a finite number in [lo, hi] (lo_open, hi_open: excluding lo, hi).
  double get_double(const std::string& key, double fallback, double lo, double hi,
                    bool lo_open = false, bool hi_open = false) const;
  // By value: the fallback is often a temporary.
  std::string get_string(const std::string& key, const std::string& fallback) const;

 private:
  std::string owner_;
  std::map<std::string, std::string> values_;
  std::string flag_;  // the command-line flag the spec came from, for errors
};

// Splits "k=v,k=v" (or "v" for the first valid key); unknown or repeated keys throw
// InvalidArgument listing the valid ones. Errors name `flag` and `owner` ("--reduce topk: ...").
Params parse_params(const std::string& owner, const std::string& text,
                    const std::vector<std::string>& valid, const std::string& flag = "--reduce");

}  // namespace dtrain::reduce
