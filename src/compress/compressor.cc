// Compressor registry: a table of (name, parameter keys, factory). make_compressor splits
// "name:args" and parses the arguments with the tree's one spec parser (reduce/params.h) against
// the table's keys; the factory reads the values with its defaults and range-checks them.
#include "dtrain/compress/compressor.h"

#include <charconv>
#include <cmath>

#include "dtrain/common/error.h"
#include "internal.h"

namespace dtrain::compress {
namespace {

struct Entry {
  const char* name;
  std::vector<std::string> params;  // keys in spec order; the first may be given without its key
  std::unique_ptr<Compressor> (*make)(const detail::Params&);
};

const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries = {
      {"none", {}, &detail::make_none},
      {"fp16", {}, &detail::make_fp16},
      {"topk", {"density"}, &detail::make_topk},
      {"randomk", {"density", "seed", "scale"}, &detail::make_randomk},
      {"threshold", {"lambda"}, &detail::make_threshold},
      {"qcs", {"bucket", "rows", "levels", "seed", "recon", "shared"}, &detail::make_qcs},
  };
  return entries;
}

const Entry& entry(const std::string& name, const std::string& spec) {
  for (const auto& e : registry()) {
    if (name == e.name) return e;
  }
  std::string valid;
  for (const auto& n : compressor_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw InvalidArgument("unknown compressor '" + name + "' in spec '" + spec +
                        "' (valid: " + valid + ")");
}

}  // namespace

std::vector<std::string> compressor_names() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.emplace_back(e.name);
  return names;
}

std::vector<std::string> compressor_params(const std::string& name) {
  return entry(name, name).params;
}

std::unique_ptr<Compressor> make_compressor(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const Entry& e = entry(name, spec);
  DT_ENFORCE(!e.params.empty() || args.empty(), "compressor ", name,
             " takes no parameters (in spec '", spec, "')");
  return e.make(reduce::parse_params(name, args, e.params, "compressor"));
}

std::unique_ptr<Compressor> make_compressor(const std::string& name, const reduce::Params& params) {
  return entry(name, name).make(params);
}

void Compressor::kept_indices(const Payload&, uint64_t, uint64_t, std::vector<uint32_t>&) const {
  DT_THROW(InvalidArgument, "compressor ", name(),
           " is not a sparsifier: its payload keeps no subset of indices");
}

std::unique_ptr<Compressor> Compressor::with_density(double) const {
  DT_THROW(InvalidArgument, "compressor ", name(), " has no density to change");
}

namespace detail {

std::string format_number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

void check_finite(std::span<const float> in, const char* compressor) {
  for (size_t i = 0; i < in.size(); ++i) {
    if (!std::isfinite(in[i])) {
      DT_THROW(InvalidArgument, compressor, ": input element ", i, " of ", in.size(), " is ", in[i],
               " (non-finite gradients cannot be compressed)");
    }
  }
}

void check_output(const Payload& p, std::span<float> out, const char* compressor) {
  DT_ENFORCE(out.size() == p.count, compressor, ": output has ", out.size(),
             " elements but the payload encodes ", p.count);
}

void check_payload_size(const Payload& p, size_t expected, const char* compressor, int sender) {
  DT_ENFORCE_AS(ProtocolError, p.bytes.size() == expected, compressor, ": payload from rank ",
                sender, " has ", p.bytes.size(), " bytes, expected ", expected, " for ", p.count,
                " elements");
}

}  // namespace detail
}  // namespace dtrain::compress
