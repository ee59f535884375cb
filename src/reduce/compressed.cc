// Compressed gradient reduction (see dtrain/reduce/compressed.h for the protocol, the spec and
// the byte accounting).
//
// Works as follows. reduce() takes the bucket's index as its stream, checks its size against the
// layout and compresses it with the step's compressor (a copy at the warm-up density while the
// warm-up lasts): through error feedback when on (the residual keeps what this rank's payload
// left out), or, with momentum correction, as DGC does: u = M u + g and v += u in one pass (the
// same fused loop as ExDyna's, exdyna::compensate_select), v compressed, and v (with masking also
// u) zeroed at the indices the payload keeps. Summable payloads are summed in place by the ring
// allreduce, as summable_type() values, and decoded once. Other payloads are gathered: their
// sizes first, unless the compressor fixes them a priori, then the payloads themselves as 4-byte
// words (the collectives have no byte type; at most 3 bytes of padding per rank). Every rank
// decodes the gathered payloads in rank order with the same float operations, so all ranks end
// bit-identical, and the sum is scaled by 1/N.
//
// State (save_state), native byte order through common/bytes.h: "DTCR" magic, u32 version (2),
// the reducer's name, u64 steps and f64 sum of the per-step densities (mean_density), the
// error-feedback state as a u64-length blob (empty with momentum or without error feedback), u64
// momentum buckets and per bucket u and v as u64-length float vectors. Version 1 had no magic:
// the name (u64 length, characters), then the error-feedback state; it still loads.
#include "dtrain/reduce/compressed.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>

#include "dtrain/collective/allgather.h"
#include "dtrain/collective/allreduce.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/compress/qcs.h"
#include "dtrain/reduce/exdyna_threshold.h"
#include "dtrain/reduce/params.h"
#include "dtrain/sparse/omnireduce.h"

namespace dtrain::reduce {
namespace {

using collective::DataType;

constexpr uint32_t kStateMagic = 0x52435444;  // "DTCR"; as a version-1 name length: 1.4e9
constexpr uint32_t kStateVersion = 2;

// The reducer-level keys of a spec, after the compressor's own.
const std::vector<std::string>& reducer_keys() {
  static const std::vector<std::string> keys = {"ef",       "beta", "via",   "block",
                                                "momentum", "mask", "warmup"};
  return keys;
}

// Ring chunk j of `total` elements over n ranks (as the collectives lay them out).
uint64_t chunk(uint64_t total, int n, int j) {
  const int wrapped = (j % n + n) % n;
  return total / n + (static_cast<uint64_t>(wrapped) < total % n ? 1 : 0);
}

std::string format_number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

void scale(std::span<float> grad, int n) {
  const float inv = 1.0f / static_cast<float>(n);
  for (float& g : grad) g *= inv;
}

}  // namespace

void check_compressed_options(const compress::Compressor& compressor, const CompressedOptions& o) {
  const std::string kind = compressor.name().substr(0, compressor.name().find(':'));
  if (o.via.enabled) {
    DT_ENFORCE(kind == "topk" || kind == "threshold", "compressed reducer: via=omnireduce takes ",
               "the sparsifiers topk and threshold (their selections are sparse), not '", kind,
               "'");
    DT_ENFORCE(o.via.block >= 1 && o.via.block <= (size_t{1} << 24),
               "compressed reducer: block=", o.via.block, " is outside [1, 2^24]");
  }
  DT_ENFORCE(o.beta > 0 && o.beta <= 1, "compressed reducer: beta=", o.beta, " is outside (0, 1]");
  DT_ENFORCE(o.error_feedback || o.beta == 1.0, "compressed reducer: beta=", o.beta,
             " has no effect without error feedback");
  DT_ENFORCE(o.momentum >= 0 && o.momentum < 1, "compressed reducer: momentum=", o.momentum,
             " is outside [0, 1)");
  if (o.momentum > 0) {
    DT_ENFORCE(compressor.sparsifier(), "compressed reducer: momentum=", o.momentum,
               " (momentum correction) needs a sparsifier that sends entries as they are (topk, ",
               "threshold, randomk with scale=0), not '", compressor.name(), "'");
    DT_ENFORCE(o.error_feedback, "compressed reducer: momentum=", o.momentum,
               " keeps what is not sent in the accumulated velocity v, its error feedback; it "
               "cannot go with ef=0");
    DT_ENFORCE(o.beta == 1.0, "compressed reducer: momentum=", o.momentum,
               " accumulates the velocity in v, which replaces plain error feedback: beta=", o.beta,
               " does not apply");
  }
  DT_ENFORCE(o.mask || o.momentum > 0, "compressed reducer: mask=0 needs momentum > 0");
  DT_ENFORCE(o.warmup == 0 || compressor.density() > 0, "compressed reducer: warmup=", o.warmup,
             " needs a compressor with a density (topk, randomk), not '", compressor.name(),
             "' (threshold's density follows the data)");
}

CompressedReducer::CompressedReducer(comm::Group& group,
                                     std::unique_ptr<compress::Compressor> compressor,
                                     const CompressedOptions& options)
    : group_(group), options_(options) {
  DT_ENFORCE(compressor != nullptr, "compressed reducer: no compressor");
  check_compressed_options(*compressor, options_);
  compressor->set_worker(group.rank());
  codec_ = compressor.get();
  if (options_.error_feedback && options_.momentum == 0) {
    feedback_ = std::make_unique<compress::ErrorFeedback>(std::move(compressor), options_.beta);
  } else {
    compressor_ = std::move(compressor);  // momentum correction keeps its own residual (v)
  }
}

CompressedReducer::CompressedReducer(comm::Group& group,
                                     std::unique_ptr<compress::Compressor> compressor,
                                     bool error_feedback, double beta, OmniReduceVia via)
    : CompressedReducer(
          group, std::move(compressor),
          CompressedOptions{.error_feedback = error_feedback, .beta = beta, .via = via}) {}

std::string CompressedReducer::name() const {
  const CompressedOptions& o = options_;
  std::string spec = codec_->name();
  spec += spec.find(':') == std::string::npos ? ":" : ",";
  spec += o.error_feedback ? "ef=1" : "ef=0";
  if (o.error_feedback && o.beta != 1.0) spec += ",beta=" + format_number(o.beta);
  if (o.momentum > 0) spec += ",momentum=" + format_number(o.momentum);
  if (o.momentum > 0 && !o.mask) spec += ",mask=0";
  if (o.warmup > 0) spec += ",warmup=" + std::to_string(o.warmup);
  if (o.via.enabled) spec += ",via=omnireduce,block=" + std::to_string(o.via.block);
  return spec;
}

void CompressedReducer::begin_step(uint64_t step) {
  GradientReducer::begin_step(step);
  commit_density();
  step_dense_bytes_ = 0;
  step_payload_bytes_ = 0;
  step_blocks_ = step_union_ = step_local_ = 0;
  // Warm-up: a copy of the compressor at this step's density, kept while the density holds.
  const double target = codec_->density();
  const double density = warmup_density(target, options_.warmup, step);
  if (options_.warmup == 0 || density == target) {
    warm_codec_.reset();
  } else if (warm_codec_ == nullptr || warm_codec_->density() != density) {
    warm_codec_ = codec_->with_density(density);
  }
}

double CompressedReducer::step_density() const {
  return warm_codec_ != nullptr ? warm_codec_->density() : codec_->density();
}

void CompressedReducer::commit_density() {
  if (step_elements_ > 0) {
    density_sum_ += static_cast<double>(step_kept_) / static_cast<double>(step_elements_);
    ++density_steps_;
  }
  step_kept_ = step_elements_ = 0;
}

void CompressedReducer::on_layout(const Layout& previous) {
  // Residuals (and velocities) are kept per bucket (the compressor's stream); a bucket of the old
  // layout is not a bucket of the new one, so they restart from zero. Said in the header.
  if (previous.buckets.empty()) return;
  if (feedback_) feedback_->reset();
  momentum_.clear();
}

std::span<const float> CompressedReducer::residual(size_t bucket) const {
  if (options_.momentum > 0) {
    return bucket < momentum_.size() ? std::span<const float>(momentum_[bucket].residual)
                                     : std::span<const float>();
  }
  return feedback_ ? feedback_->residual(bucket) : std::span<const float>();
}

std::span<const float> CompressedReducer::velocity(size_t bucket) const {
  return bucket < momentum_.size() ? std::span<const float>(momentum_[bucket].velocity)
                                   : std::span<const float>();
}

compress::Payload CompressedReducer::compress_with_momentum(size_t bucket, std::span<float> grad,
                                                            compress::Compressor& codec) {
  if (momentum_.size() <= bucket) momentum_.resize(layout().buckets.size());
  Momentum& s = momentum_[bucket];
  const size_t n = grad.size();
  if (s.velocity.empty() && s.residual.empty()) {
    s.velocity.assign(n, 0.0f);
    s.residual.assign(n, 0.0f);
  }
  DT_ENFORCE(s.velocity.size() == n && s.residual.size() == n, "compressed reducer: bucket ",
             bucket, " has ", n, " elements now but its velocity ", s.velocity.size(),
             " (did the bucket layout change?)");
  // u = M u + g; v += u; g = 0 (the reduction overwrites it).
  exdyna::compensate_select<uint32_t>(s.residual.data(), grad.data(), s.velocity.data(),
                                      static_cast<float>(options_.momentum), 0, n, 0.0f, nullptr);
  compress::Payload payload = codec.compress(s.residual, step(), bucket);
  codec.kept_indices(payload, step(), bucket, kept_);
  for (uint32_t i : kept_) s.residual[i] = 0.0f;
  if (options_.mask) {
    for (uint32_t i : kept_) s.velocity[i] = 0.0f;
  }
  return payload;
}

void CompressedReducer::reduce(size_t bucket, std::span<float> grad) {
  check_bucket(bucket, grad.size());
  const uint64_t step = this->step();
  const size_t stream = bucket;
  compress::Compressor& codec = step_codec();
  compress::Payload payload;
  if (options_.momentum > 0) {
    payload = compress_with_momentum(bucket, grad, codec);  // leaves kept_ filled
  } else {
    payload = feedback_ ? feedback_->compress(grad, step, stream, warm_codec_.get())
                        : codec.compress(grad, step, stream);
    if (codec.sparsifier()) codec.kept_indices(payload, step, stream, kept_);
  }
  if (codec.sparsifier()) {
    step_kept_ += kept_.size();
    step_elements_ += grad.size();
  }
  step_dense_bytes_ += grad.size_bytes();
  step_payload_bytes_ += payload.bytes.size();
  if (options_.via.enabled) {
    omnireduce_selection(codec, payload, grad, step, stream);
  } else if (codec.summable()) {
    allreduce_payload(codec, payload);
    codec.decompress(payload, grad, false, step, stream, group_.rank());
  } else {
    gather_and_decode(codec, payload, grad, step, stream);
  }
  scale(grad, group_.size());
}

void CompressedReducer::allreduce_payload(compress::Compressor& codec, compress::Payload& payload) {
  const DataType type = codec.summable_type();
  const size_t elem = collective::element_size(type);
  DT_ENFORCE(payload.bytes.size() % elem == 0, "compressed reducer: payload of ",
             payload.bytes.size(), " bytes is not a whole number of ", collective::name(type));
  const size_t count = payload.bytes.size() / elem;
  collective::AllreduceOptions o(group_);
  o.output = collective::View(payload.bytes.data(), count, type);
  o.op = collective::ReduceOp::kSum;
  collective::allreduce(o);
  const int n = group_.size(), r = group_.rank();
  if (n == 1) return;
  bytes_sent_ += (2 * count - chunk(count, n, r) - chunk(count, n, r + 1)) * elem;
  bytes_received_ += (2 * count - chunk(count, n, r - 1) - chunk(count, n, r)) * elem;
}

void CompressedReducer::gather_and_decode(compress::Compressor& codec,
                                          const compress::Payload& payload, std::span<float> grad,
                                          uint64_t step, uint64_t stream) {
  const int n = group_.size(), r = group_.rank();
  std::vector<int64_t> sizes(n, static_cast<int64_t>(payload.bytes.size()));
  if (!codec.payload_size_fixed()) {
    const auto mine = static_cast<int64_t>(payload.bytes.size());
    collective::AllgatherOptions o(group_);
    o.input = collective::ConstView(&mine, 1, DataType::kInt64);
    o.output = sizes;
    collective::allgather(o);
    bytes_sent_ += sizeof(int64_t) * (n - 1);
    bytes_received_ += sizeof(int64_t) * (n - 1);
    // No compressor sends more than 8 bytes per element (index + value); more is corruption.
    for (int w = 0; w < n; ++w) {
      DT_ENFORCE_AS(ProtocolError,
                    sizes[w] >= 0 && static_cast<uint64_t>(sizes[w]) <= 8 * grad.size(),
                    "compressed reducer: rank ", w, " announced a payload of ", sizes[w],
                    " bytes for a bucket of ", grad.size(), " elements");
    }
  }
  std::vector<size_t> words(n);
  std::vector<size_t> offset(n + 1, 0);
  for (int w = 0; w < n; ++w) {
    words[w] = (static_cast<size_t>(sizes[w]) + 3) / 4;
    offset[w + 1] = offset[w] + words[w];
  }
  std::vector<int32_t> own(words[r], 0);
  if (!payload.bytes.empty()) std::memcpy(own.data(), payload.bytes.data(), payload.bytes.size());
  std::vector<int32_t> gathered(offset[n]);
  collective::AllgathervOptions o(group_);
  o.input = own;
  o.output = gathered;
  o.counts = words;
  collective::allgatherv(o);
  if (n > 1) {
    bytes_sent_ += 4 * (offset[n] - words[(r + 1) % n]);
    bytes_received_ += 4 * (offset[n] - words[r]);
  }

  compress::Payload peer;
  peer.count = grad.size();
  for (int w = 0; w < n; ++w) {
    const auto* begin = reinterpret_cast<const std::byte*>(gathered.data() + offset[w]);
    peer.bytes.assign(begin, begin + sizes[w]);
    codec.decompress(peer, grad, w > 0, step, stream, w);
  }
}

void CompressedReducer::omnireduce_selection(compress::Compressor& codec,
                                             const compress::Payload& payload,
                                             std::span<float> grad, uint64_t step,
                                             uint64_t stream) {
  // What this rank sends, as a dense vector: its selected values, exact zeros elsewhere.
  codec.decompress(payload, grad, false, step, stream, group_.rank());
  sparse::OmniReduceOptions o(group_);
  o.data = grad;
  o.block = options_.via.block;
  // Buckets keep their sizes step after step (checked above): the handshake checks each size once.
  o.verify = verified_.insert(grad.size()).second;
  const sparse::OmniReduceStats st = sparse::omnireduce(o);
  bytes_sent_ += st.bytes_sent;
  bytes_received_ += st.bytes_received;
  step_blocks_ += (grad.size() + options_.via.block - 1) / options_.via.block;
  step_union_ += st.blocks_union;
  step_local_ += st.blocks_nonzero_local;
}

std::vector<std::byte> CompressedReducer::save_state() const {
  const bool sparsifier = codec_->sparsifier();
  if (!options_.error_feedback && !sparsifier) return {};
  // The mean density with the latest step included (the next begin_step would add it).
  uint64_t steps = density_steps_;
  double sum = density_sum_;
  if (step_elements_ > 0) {
    sum += static_cast<double>(step_kept_) / static_cast<double>(step_elements_);
    ++steps;
  }
  ByteWriter w;
  w.put(kStateMagic).put(kStateVersion).put_string(name()).put(steps).put(sum);
  w.put_vector(feedback_ ? feedback_->save_state() : std::vector<std::byte>());
  w.put(static_cast<uint64_t>(momentum_.size()));
  for (const Momentum& m : momentum_) w.put_vector(m.velocity).put_vector(m.residual);
  return w.take();
}

void CompressedReducer::load_state(std::span<const std::byte> state) {
  const bool sparsifier = codec_->sparsifier();
  if (!options_.error_feedback && !sparsifier) return GradientReducer::load_state(state);
  // A sparsifier without error feedback kept no state before version 2: start its figures afresh.
  if (state.empty() && !options_.error_feedback) return;
  DT_ENFORCE(state.size() >= sizeof(uint64_t), "reducer '", name(),
             "' expects its state (residuals) but the checkpoint holds ", state.size(),
             " bytes (was it written with another --reduce?)");
  const std::string what = "reducer '" + name() + "': checkpoint state";
  auto check_tag = [&](const std::string& tag) {
    DT_ENFORCE(tag == name(), "checkpoint holds the state of reducer '", tag,
               "' but this run uses '", name(), "'");
  };
  uint32_t magic = 0;
  std::memcpy(&magic, state.data(), sizeof(magic));
  if (magic != kStateMagic) {  // version 1: the name, then the error-feedback state
    ByteReader r(state, what);
    check_tag(r.get_string("reducer name"));
    DT_ENFORCE(feedback_ != nullptr, what, ": holds error-feedback state, this reducer keeps none");
    feedback_->load_state(r.rest());
    density_steps_ = 0;
    density_sum_ = 0;
    step_kept_ = step_elements_ = 0;
    return;
  }
  ByteReader r(state, what);
  r.expect(kStateMagic, "magic");
  const auto version = r.get<uint32_t>("version");
  DT_ENFORCE(version == kStateVersion, what, ": version ", version, " is not one of 1, ",
             kStateVersion, " (written by a newer dtrain?)");
  check_tag(r.get_string("reducer name"));
  const auto steps = r.get<uint64_t>("density steps");
  const auto sum = r.get<double>("density sum");
  const auto feedback = r.get_vector<std::byte>("error-feedback state");
  const auto count = r.get<uint64_t>("momentum buckets");
  DT_ENFORCE(count <= r.left() / (2 * sizeof(uint64_t)), what, " is truncated: ", count,
             " momentum buckets in ", r.left(), " bytes");
  std::vector<Momentum> momentum(count);
  for (uint64_t b = 0; b < count; ++b) {
    momentum[b].velocity = r.get_vector<float>("velocity u");
    momentum[b].residual = r.get_vector<float>("residual v");
    const size_t n = momentum[b].residual.size();
    DT_ENFORCE(momentum[b].velocity.size() == n, what, ": bucket ", b, " has a velocity of ",
               momentum[b].velocity.size(), " elements and a residual of ", n);
    DT_ENFORCE(n == 0 || (b < layout().buckets.size() && layout().buckets[b].numel == n), what,
               ": bucket ", b, " holds ", n, " elements; ",
               b < layout().buckets.size()
                   ? "in the layout it has " + std::to_string(layout().buckets[b].numel)
                   : std::string("the layout has no such bucket"),
               " (restore the layout first; was it written with other buckets?)");
  }
  r.finish();
  DT_ENFORCE(feedback.empty() == (feedback_ == nullptr), what, ": error-feedback state of ",
             feedback.size(), " bytes does not fit this reducer");
  if (feedback_) feedback_->load_state(feedback);
  momentum_ = std::move(momentum);
  density_steps_ = steps;
  density_sum_ = sum;
  step_kept_ = step_elements_ = 0;
}

std::vector<std::pair<std::string, double>> CompressedReducer::step_metrics() const {
  std::vector<std::pair<std::string, double>> m;
  m.emplace_back("payload_bytes", static_cast<double>(step_payload_bytes_));
  if (step_payload_bytes_ > 0) {
    m.emplace_back("compress_ratio", static_cast<double>(step_dense_bytes_) /
                                         static_cast<double>(step_payload_bytes_));
  }
  if (options_.via.enabled && step_blocks_ > 0) {
    m.emplace_back("union_density", double(step_union_) / double(step_blocks_));
    m.emplace_back("local_density", double(step_local_) / double(step_blocks_));
  }
  if (step_elements_ > 0) {
    const double density = double(step_kept_) / double(step_elements_);
    m.emplace_back("density", density);
    m.emplace_back("mean_density", (density_sum_ + density) / double(density_steps_ + 1));
  }
  return m;
}

std::vector<std::string> compressed_reducer_names() {
  return compress::compressor_names();
}

CompressedSpec parse_compressed_spec(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  std::vector<std::string> keys;
  try {
    keys = compress::compressor_params(name);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument("--reduce '" + spec + "': " + e.what());
  }
  // One pass over the compressor's keys and the reducer's; a bare first value is the
  // compressor's first parameter, so a compressor without parameters takes none.
  if (keys.empty() && !args.empty()) {
    const std::string first = args.substr(0, args.find(','));
    DT_ENFORCE(first.find('=') != std::string::npos, "--reduce ", name, ": '", first,
               "' is not key=value (", name,
               " has no parameters of its own; the reducer's: ", join(reducer_keys()), ")");
  }
  keys.insert(keys.end(), reducer_keys().begin(), reducer_keys().end());
  const Params p = parse_params(name, args, keys);
  CompressedSpec out;
  out.compressor = compress::make_compressor(name, p);
  CompressedOptions& o = out.options;
  o.error_feedback = p.get_size("ef", name != "none" && name != "fp16" ? 1 : 0, 0, 1) == 1;
  o.beta = p.get_double("beta", 1.0, 0, 1, /*lo_open=*/true);
  DT_ENFORCE(!p.has("beta") || o.error_feedback, "--reduce ", name,
             ": beta needs error feedback (ef=1)");
  const std::string& via = p.get_string("via", "allgather");
  DT_ENFORCE(via == "allgather" || via == "omnireduce", "--reduce ", name, ": via=", via,
             " is not allgather or omnireduce");
  o.via.enabled = via == "omnireduce";
  DT_ENFORCE(!p.has("block") || o.via.enabled, "--reduce ", name, ": block= needs via=omnireduce");
  o.via.block = p.get_size("block", o.via.block, 1, size_t{1} << 24);
  o.momentum = p.get_double("momentum", 0, 0, 1, false, /*hi_open=*/true);
  DT_ENFORCE(!p.has("mask") || o.momentum > 0, "--reduce ", name, ": mask= needs momentum > 0");
  o.mask = p.get_size("mask", 1, 0, 1) == 1;
  o.warmup = p.get_size("warmup", 0, 0, std::numeric_limits<size_t>::max());
  // Unbiased QCS under error feedback converges only for beta < 2/(1+gamma) (specs/qcs.md).
  const auto* qcs = dynamic_cast<const compress::QcsCompressor*>(out.compressor.get());
  if (o.error_feedback && qcs != nullptr && !qcs->options().mmse) {
    const double gamma = qcs->gamma();
    if (!p.has("beta")) {
      o.beta = gamma >= 1 ? 1 / (1 + gamma) : 1.0;
    } else {
      DT_ENFORCE(o.beta < 2 / (1 + gamma), "--reduce '", spec, "': beta=", p.get_string("beta", ""),
                 " must be below 2/(1+gamma) = ", 2 / (1 + gamma),
                 " for unbiased QCS under error feedback (or use recon=mmse)");
    }
  }
  try {
    check_compressed_options(*out.compressor, o);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("--reduce '") + spec + "': " + e.what());
  }
  return out;
}

std::unique_ptr<GradientReducer> make_compressed_reducer(const std::string& spec,
                                                         comm::Group& group) {
  CompressedSpec parsed = parse_compressed_spec(spec);
  return std::make_unique<CompressedReducer>(group, std::move(parsed.compressor), parsed.options);
}

}  // namespace dtrain::reduce
