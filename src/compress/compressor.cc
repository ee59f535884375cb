// Compressor registry: a table of (name, parameters with defaults, factory). make_compressor
// splits "name:args", validates the keys against the table (params.cc) and hands the parsed
// parameters to the factory, which range-checks the values.
#include "dtrain/compress/compressor.h"

#include <cmath>

#include "dtrain/common/error.h"
#include "internal.h"

namespace dtrain::compress {
namespace {

struct Entry {
  const char* name;
  std::vector<detail::ParamDef> params;
  std::unique_ptr<Compressor> (*make)(const detail::Params&);
};

const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries = {
      {"none", {}, &detail::make_none},
      {"fp16", {}, &detail::make_fp16},
      {"topk", {{"density", "0.01"}}, &detail::make_topk},
      {"randomk", {{"density", "0.01"}, {"seed", "0"}, {"scale", "0"}}, &detail::make_randomk},
      {"threshold", {{"lambda", "0.001"}}, &detail::make_threshold},
      {"qcs",
       {{"bucket", "256"},
        {"rows", "32"},
        {"levels", "1"},
        {"seed", "0"},
        {"recon", "unbiased"},
        {"shared", "0"}},
       &detail::make_qcs},
  };
  return entries;
}

}  // namespace

std::vector<std::string> compressor_names() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.emplace_back(e.name);
  return names;
}

std::unique_ptr<Compressor> make_compressor(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  for (const auto& e : registry()) {
    if (name == e.name) return e.make(detail::Params(spec, name, args, e.params));
  }
  std::string valid;
  for (const auto& n : compressor_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw InvalidArgument("unknown compressor '" + name + "' in spec '" + spec +
                        "' (valid: " + valid + ")");
}

namespace detail {

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
