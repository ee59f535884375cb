// What a shard does with a pushed gradient g on its values w (per key i):
//   sum      w_i += g_i                           (an accumulator: Sandblaster's gradients)
//   sgd      w_i -= lr * g_i
//   adagrad  G_i += g_i^2;  w_i -= lr * g_i / (sqrt(G_i) + eps)   (DistBelief's eta_i =
//   gamma/sqrt(G_i)) adam     m_i, v_i with beta1, beta2, bias correction by the shard's update
//   count for key i's
//            range (one count per shard: every push to a shard advances it)
// Spec strings use the one reducer-spec parser: "adagrad:lr=0.05,eps=1e-8", "sgd:0.1", "sum",
// "adam:lr=0.001,beta1=0.9,beta2=0.999".
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace dtrain::ps {

struct UpdateRule {
  enum class Kind : uint8_t { kSum = 0, kSgd = 1, kAdagrad = 2, kAdam = 3 };
  Kind kind = Kind::kAdagrad;
  double lr = 0.05;
  double eps = 1e-8;
  double beta1 = 0.9;
  double beta2 = 0.999;
  // Adagrad's G_i starts at this value (DistBelief warm-starts it; 0 makes the first step lr*sign).
  double initial_accumulator = 0.1;

  // Throws InvalidArgument naming `flag`, the rule and the bad key or value.
  static UpdateRule parse(const std::string& spec, const std::string& flag = "--server-update");
  std::string str() const;
  // Floats of per-key state the rule keeps (0 for sum and sgd, 1 for adagrad, 2 for adam).
  int state_per_key() const;
  // Applies one push: w and g have the same length; state has state_per_key()*w.size() floats
  // (adagrad: G; adam: m then v); `count` is the shard's update count after this push (>= 1).
  void apply(std::span<float> w, std::span<const float> g, std::span<float> state,
             uint64_t count) const;
  // Applies a sparse push: value j of g goes to key idx[j] - base of w (and of state's planes).
  void apply_sparse(std::span<float> w, std::span<const uint64_t> idx, uint64_t base,
                    std::span<const float> g, std::span<float> state, uint64_t count) const;
};

}  // namespace dtrain::ps
