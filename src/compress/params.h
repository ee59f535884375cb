// Parameters of a compressor spec ("topk:density=0.01", "topk:0.01"), internal to compress/.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

namespace dtrain::compress::detail {

struct ParamDef {
  std::string key;
  std::string default_value;
};

// Checks the keys of `args` (the text after "name:") against `defs` and fills in defaults.
// Getters parse a value and throw InvalidArgument naming compressor, key and value.
class Params {
 public:
  Params(std::string spec, std::string compressor, const std::string& args,
         std::vector<ParamDef> defs);

  double number(const std::string& key) const;
  int64_t integer(const std::string& key) const;
  bool flag(const std::string& key) const;  // 0 or 1
  std::string choice(const std::string& key, std::initializer_list<const char*> options) const;

  // Throws InvalidArgument "<compressor>: <key>=<value> <what> (in spec '<spec>')".
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;

 private:
  const std::string& raw(const std::string& key) const;
  std::string spec_;
  std::string compressor_;
  std::vector<ParamDef> defs_;
  std::map<std::string, std::string> values_;
};

// Splits "a=1,b,c=2" at commas (no empty items: throws naming the spec).
std::vector<std::string> split_args(const std::string& args, const std::string& spec);
// Shortest text that parses back to the same double ("0.01", "1e-05").
std::string format_number(double v);

}  // namespace dtrain::compress::detail
