// Compressed gradient reduction (see dtrain/reduce/compressed.h for the protocol and the byte
// accounting).
//
// Works as follows. reduce() takes the bucket's index as its stream, checks its size against the
// layout and compresses it (through error feedback when on; the residual keeps what this rank's
// payload left out). Summable payloads are summed in place by the ring allreduce, as
// summable_type() values, and decoded once. Other payloads are gathered: their sizes first, unless
// the compressor fixes them a priori, then the payloads themselves as 4-byte words (the
// collectives have no byte type; at most 3 bytes of padding per rank). Every rank decodes the
// gathered payloads in rank order with the same float operations, so all ranks end bit-identical,
// and the sum is scaled by 1/N.
#include "dtrain/reduce/compressed.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>

#include "dtrain/collective/allgather.h"
#include "dtrain/collective/allreduce.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/compress/qcs.h"
#include "dtrain/sparse/omnireduce.h"

namespace dtrain::reduce {
namespace {

using collective::DataType;

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

void scale(std::span<float> grad, int n) {
  const float inv = 1.0f / static_cast<float>(n);
  for (float& g : grad) g *= inv;
}

}  // namespace

CompressedReducer::CompressedReducer(comm::Group& group,
                                     std::unique_ptr<compress::Compressor> compressor,
                                     bool error_feedback, double beta, OmniReduceVia via)
    : group_(group), via_(via) {
  DT_ENFORCE(compressor != nullptr, "compressed reducer: no compressor");
  if (via_.enabled) {
    const std::string kind = compressor->name().substr(0, compressor->name().find(':'));
    DT_ENFORCE(kind == "topk" || kind == "threshold", "compressed reducer: via=omnireduce takes ",
               "the sparsifiers topk and threshold (their selections are sparse), not '", kind,
               "'");
    DT_ENFORCE(via_.block >= 1 && via_.block <= (size_t{1} << 24),
               "compressed reducer: block=", via_.block, " is outside [1, 2^24]");
  }
  compressor->set_worker(group.rank());
  codec_ = compressor.get();
  if (error_feedback) {
    feedback_ = std::make_unique<compress::ErrorFeedback>(std::move(compressor), beta);
  } else {
    DT_ENFORCE(beta == 1.0, "compressed reducer: beta=", beta,
               " has no effect without error feedback");
    compressor_ = std::move(compressor);
  }
}

std::string CompressedReducer::name() const {
  std::string spec = codec_->name();
  spec += spec.find(':') == std::string::npos ? ":" : ",";
  spec += feedback_ ? "ef=1" : "ef=0";
  if (feedback_ && feedback_->beta() != 1.0) spec += ",beta=" + format_number(feedback_->beta());
  if (via_.enabled) spec += ",via=omnireduce,block=" + std::to_string(via_.block);
  return spec;
}

void CompressedReducer::begin_step(uint64_t step) {
  GradientReducer::begin_step(step);
  step_dense_bytes_ = 0;
  step_payload_bytes_ = 0;
  step_blocks_ = step_union_ = step_local_ = 0;
}

void CompressedReducer::on_layout(const Layout& previous) {
  // Residuals are kept per bucket (the compressor's stream); a bucket of the old layout is not a
  // bucket of the new one, so they restart from zero. Said in the header.
  if (feedback_ && !previous.buckets.empty()) feedback_->reset();
}

void CompressedReducer::reduce(size_t bucket, std::span<float> grad) {
  check_bucket(bucket, grad.size());
  const uint64_t step = this->step();
  const size_t stream = bucket;
  compress::Payload payload =
      feedback_ ? feedback_->compress(grad, step, stream) : codec_->compress(grad, step, stream);
  step_dense_bytes_ += grad.size_bytes();
  step_payload_bytes_ += payload.bytes.size();
  if (via_.enabled) {
    omnireduce_selection(payload, grad, step, stream);
  } else if (codec_->summable()) {
    allreduce_payload(payload);
    codec_->decompress(payload, grad, false, step, stream, group_.rank());
  } else {
    gather_and_decode(payload, grad, step, stream);
  }
  scale(grad, group_.size());
}

void CompressedReducer::allreduce_payload(compress::Payload& payload) {
  const DataType type = codec_->summable_type();
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

void CompressedReducer::gather_and_decode(const compress::Payload& payload, std::span<float> grad,
                                          uint64_t step, uint64_t stream) {
  const int n = group_.size(), r = group_.rank();
  std::vector<int64_t> sizes(n, static_cast<int64_t>(payload.bytes.size()));
  if (!codec_->payload_size_fixed()) {
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
    codec_->decompress(peer, grad, w > 0, step, stream, w);
  }
}

void CompressedReducer::omnireduce_selection(const compress::Payload& payload,
                                             std::span<float> grad, uint64_t step,
                                             uint64_t stream) {
  // What this rank sends, as a dense vector: its selected values, exact zeros elsewhere.
  codec_->decompress(payload, grad, false, step, stream, group_.rank());
  sparse::OmniReduceOptions o(group_);
  o.data = grad;
  o.block = via_.block;
  // Buckets keep their sizes step after step (checked above): the handshake checks each size once.
  o.verify = verified_.insert(grad.size()).second;
  const sparse::OmniReduceStats st = sparse::omnireduce(o);
  bytes_sent_ += st.bytes_sent;
  bytes_received_ += st.bytes_received;
  step_blocks_ += (grad.size() + via_.block - 1) / via_.block;
  step_union_ += st.blocks_union;
  step_local_ += st.blocks_nonzero_local;
}

std::vector<std::byte> CompressedReducer::save_state() const {
  if (!feedback_) return {};
  // The reducer's name (u64 length, characters), then the error-feedback state.
  const auto residuals = feedback_->save_state();
  return ByteWriter().put_string(name()).raw(residuals.data(), residuals.size()).take();
}

void CompressedReducer::load_state(std::span<const std::byte> state) {
  if (!feedback_) return GradientReducer::load_state(state);
  DT_ENFORCE(state.size() >= sizeof(uint64_t), "reducer '", name(),
             "' expects error-feedback state but the checkpoint holds ", state.size(),
             " bytes (was it written with another --reduce?)");
  ByteReader r(state, "reducer '" + name() + "': checkpoint state");
  const std::string tag = r.get_string("reducer name");
  DT_ENFORCE(tag == name(), "checkpoint holds the state of reducer '", tag, "' but this run uses '",
             name(), "'");
  feedback_->load_state(r.rest());
}

std::vector<std::pair<std::string, double>> CompressedReducer::step_metrics() const {
  std::vector<std::pair<std::string, double>> m;
  m.emplace_back("payload_bytes", static_cast<double>(step_payload_bytes_));
  if (step_payload_bytes_ > 0) {
    m.emplace_back("compress_ratio", static_cast<double>(step_dense_bytes_) /
                                         static_cast<double>(step_payload_bytes_));
  }
  if (via_.enabled && step_blocks_ > 0) {
    m.emplace_back("union_density", double(step_union_) / double(step_blocks_));
    m.emplace_back("local_density", double(step_local_) / double(step_blocks_));
  }
  return m;
}

std::vector<std::string> compressed_reducer_names() {
  return compress::compressor_names();
}

std::unique_ptr<GradientReducer> make_compressed_reducer(const std::string& spec,
                                                         comm::Group& group) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  // Peel the reducer-level parameters off; the rest is the compressor's spec.
  std::string rest;
  std::optional<std::string> ef_text, beta_text, via_text, block_text;
  if (colon != std::string::npos) {
    const std::string args = spec.substr(colon + 1);
    size_t begin = 0;
    while (true) {
      const size_t end = std::min(args.find(',', begin), args.size());
      const std::string item = args.substr(begin, end - begin);
      DT_ENFORCE(!item.empty(), "--reduce '", spec, "' has an empty parameter");
      if (item.starts_with("ef=")) {
        ef_text = item.substr(3);
      } else if (item.starts_with("beta=")) {
        beta_text = item.substr(5);
      } else if (item.starts_with("via=")) {
        via_text = item.substr(4);
      } else if (item.starts_with("block=")) {
        block_text = item.substr(6);
      } else {
        rest += (rest.empty() ? "" : ",") + item;
      }
      if (end == args.size()) break;
      begin = end + 1;
    }
  }
  bool ef = name != "none" && name != "fp16";
  if (ef_text) {
    DT_ENFORCE(*ef_text == "0" || *ef_text == "1", "--reduce '", spec, "': ef=", *ef_text,
               " is not 0 or 1");
    ef = *ef_text == "1";
  }
  double beta = 1.0;
  if (beta_text) {
    const char* first = beta_text->data();
    const char* last = first + beta_text->size();
    auto [end, ec] = std::from_chars(first, last, beta);
    DT_ENFORCE(ec == std::errc() && end == last && beta > 0 && beta <= 1, "--reduce '", spec,
               "': beta=", *beta_text, " is not a number in (0, 1]");
    DT_ENFORCE(ef, "--reduce '", spec, "': beta needs error feedback (ef=1)");
  }
  OmniReduceVia via;
  if (via_text) {
    DT_ENFORCE(*via_text == "allgather" || *via_text == "omnireduce", "--reduce '", spec,
               "': via=", *via_text, " is not allgather or omnireduce");
    via.enabled = *via_text == "omnireduce";
  }
  if (block_text) {
    DT_ENFORCE(via.enabled, "--reduce '", spec, "': block= needs via=omnireduce");
    uint64_t block = 0;
    const char* first = block_text->data();
    const char* last = first + block_text->size();
    auto [end, ec] = std::from_chars(first, last, block);
    DT_ENFORCE(ec == std::errc() && end == last, "--reduce '", spec, "': block=", *block_text,
               " is not an integer");
    via.block = static_cast<size_t>(block);  // range checked by the reducer
  }
  std::unique_ptr<compress::Compressor> compressor;
  try {
    compressor = compress::make_compressor(rest.empty() ? name : name + ":" + rest);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("--reduce '") + spec + "': " + e.what() +
                          " (reducer parameters: ef, beta, via, block)");
  }
  // Unbiased QCS under error feedback converges only for beta < 2/(1+gamma) (specs/qcs.md).
  const auto* qcs = dynamic_cast<const compress::QcsCompressor*>(compressor.get());
  if (ef && qcs != nullptr && !qcs->options().mmse) {
    const double gamma = qcs->gamma();
    if (!beta_text) {
      beta = gamma >= 1 ? 1 / (1 + gamma) : 1.0;
    } else {
      DT_ENFORCE(beta < 2 / (1 + gamma), "--reduce '", spec, "': beta=", *beta_text,
                 " must be below 2/(1+gamma) = ", 2 / (1 + gamma),
                 " for unbiased QCS under error feedback (or use recon=mmse)");
    }
  }
  try {
    return std::make_unique<CompressedReducer>(group, std::move(compressor), ef, beta, via);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("--reduce '") + spec + "': " + e.what());
  }
}

}  // namespace dtrain::reduce
