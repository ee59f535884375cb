// The shards' update rules. Arithmetic runs in double per key and is stored as float, so a
// rule's result does not depend on how a push was cut into pieces.
#include "dtrain/ps/update_rule.h"

#include <fmt/format.h>

#include <cmath>

#include "dtrain/common/error.h"
#include "dtrain/reduce/params.h"

namespace dtrain::ps {
namespace {

constexpr double kHuge = 1e30;

// One key's step. `s0`, `s1`: the rule's state planes at this key (unused ones null).
inline void step(const UpdateRule& r, float& w, float g, float* s0, float* s1, double bias1,
                 double bias2) {
  switch (r.kind) {
    case UpdateRule::Kind::kSum:
      w = static_cast<float>(double(w) + g);
      return;
    case UpdateRule::Kind::kSgd:
      w = static_cast<float>(double(w) - r.lr * g);
      return;
    case UpdateRule::Kind::kAdagrad: {
      const double acc = double(*s0) + double(g) * g;
      *s0 = static_cast<float>(acc);
      // g == 0 leaves w alone (and avoids 0/0 when eps and the accumulator are both 0).
      if (g != 0.0f) w = static_cast<float>(double(w) - r.lr * g / (std::sqrt(acc) + r.eps));
      return;
    }
    case UpdateRule::Kind::kAdam: {
      const double m = r.beta1 * *s0 + (1.0 - r.beta1) * g;
      const double v = r.beta2 * *s1 + (1.0 - r.beta2) * double(g) * g;
      *s0 = static_cast<float>(m);
      *s1 = static_cast<float>(v);
      const double denom = std::sqrt(v / bias2) + r.eps;
      if (denom > 0) w = static_cast<float>(double(w) - r.lr * (m / bias1) / denom);
      return;
    }
  }
}

}  // namespace

UpdateRule UpdateRule::parse(const std::string& spec, const std::string& flag) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  UpdateRule r;
  if (name == "sum") {
    r.kind = Kind::kSum;
    reduce::parse_params(name, args, {}, flag);
    r.lr = 1;
    return r;
  }
  if (name == "sgd") {
    r.kind = Kind::kSgd;
    const auto p = reduce::parse_params(name, args, {"lr"}, flag);
    r.lr = p.get_double("lr", r.lr, 0, kHuge, true);
    return r;
  }
  if (name == "adagrad") {
    r.kind = Kind::kAdagrad;
    const auto p = reduce::parse_params(name, args, {"lr", "eps", "init"}, flag);
    r.lr = p.get_double("lr", r.lr, 0, kHuge, true);
    r.eps = p.get_double("eps", r.eps, 0, 1);
    r.initial_accumulator = p.get_double("init", r.initial_accumulator, 0, kHuge);
    return r;
  }
  if (name == "adam") {
    r.kind = Kind::kAdam;
    r.lr = 0.001;
    const auto p = reduce::parse_params(name, args, {"lr", "beta1", "beta2", "eps"}, flag);
    r.lr = p.get_double("lr", r.lr, 0, kHuge, true);
    r.beta1 = p.get_double("beta1", r.beta1, 0, 1, false, true);
    r.beta2 = p.get_double("beta2", r.beta2, 0, 1, false, true);
    r.eps = p.get_double("eps", r.eps, 0, 1);
    return r;
  }
  DT_THROW(InvalidArgument, flag, ": unknown update rule '", name, "' in '", spec,
           "' (valid: sum, sgd:lr=X, adagrad:lr=X,eps=X,init=X, adam:lr=X,beta1=X,beta2=X,eps=X)");
}

std::string UpdateRule::str() const {
  switch (kind) {
    case Kind::kSum:
      return "sum";
    case Kind::kSgd:
      return fmt::format("sgd:lr={}", lr);
    case Kind::kAdagrad:
      return fmt::format("adagrad:lr={},eps={},init={}", lr, eps, initial_accumulator);
    case Kind::kAdam:
      return fmt::format("adam:lr={},beta1={},beta2={},eps={}", lr, beta1, beta2, eps);
  }
  return "?";
}

int UpdateRule::state_per_key() const {
  switch (kind) {
    case Kind::kAdagrad:
      return 1;
    case Kind::kAdam:
      return 2;
    default:
      return 0;
  }
}

void UpdateRule::apply(std::span<float> w, std::span<const float> g, std::span<float> state,
                       uint64_t count) const {
  const size_t n = w.size();
  DT_ENFORCE(g.size() == n, "update rule ", str(), ": ", g.size(), " gradient values for ", n,
             " parameters");
  DT_ENFORCE(state.size() == n * static_cast<size_t>(state_per_key()), "update rule ", str(),
             ": state of ", state.size(), " floats for ", n, " parameters");
  DT_ENFORCE(count >= 1, "update rule ", str(), ": update count 0");
  const double bias1 = 1.0 - std::pow(beta1, double(count));
  const double bias2 = 1.0 - std::pow(beta2, double(count));
  float* s0 = state_per_key() >= 1 ? state.data() : nullptr;
  float* s1 = state_per_key() >= 2 ? state.data() + n : nullptr;
  for (size_t i = 0; i < n; ++i) {
    step(*this, w[i], g[i], s0 ? s0 + i : nullptr, s1 ? s1 + i : nullptr, bias1, bias2);
  }
}

void UpdateRule::apply_sparse(std::span<float> w, std::span<const uint64_t> idx, uint64_t base,
                              std::span<const float> g, std::span<float> state,
                              uint64_t count) const {
  const size_t n = w.size();
  DT_ENFORCE(g.size() == idx.size(), "update rule ", str(), ": ", g.size(), " gradient values for ",
             idx.size(), " keys");
  DT_ENFORCE(state.size() == n * static_cast<size_t>(state_per_key()), "update rule ", str(),
             ": state of ", state.size(), " floats for ", n, " parameters");
  DT_ENFORCE(count >= 1, "update rule ", str(), ": update count 0");
  const double bias1 = 1.0 - std::pow(beta1, double(count));
  const double bias2 = 1.0 - std::pow(beta2, double(count));
  float* s0 = state_per_key() >= 1 ? state.data() : nullptr;
  float* s1 = state_per_key() >= 2 ? state.data() + n : nullptr;
  for (size_t j = 0; j < idx.size(); ++j) {
    DT_ENFORCE(idx[j] >= base && idx[j] - base < n, "update rule ", str(), ": key ", idx[j],
               " is outside [", base, ", ", base + n, ")");
    const size_t i = static_cast<size_t>(idx[j] - base);
    step(*this, w[i], g[j], s0 ? s0 + i : nullptr, s1 ? s1 + i : nullptr, bias1, bias2);
  }
}

}  // namespace dtrain::ps
