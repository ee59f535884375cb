// CompressedReducer: a compressor (compress/compressor.h), optionally under error feedback or
// Deep Gradient Compression's momentum correction, combined with the ring collectives.
//
//   CompressedReducer(comm::Group&, std::unique_ptr<compress::Compressor>, CompressedOptions);
//   CompressedSpec parse_compressed_spec(const std::string& spec);        // no Group needed
//   std::unique_ptr<GradientReducer> make_compressed_reducer(const std::string& spec, Group&);
//
// Spec: a compressor spec plus reducer-level parameters, parsed in one pass by reduce/params.h
// (the compressor's keys first, so "topk:0.01" is its density):
//   ef=0|1       error feedback; default 1, except 0 for none and fp16
//   beta=B       error-feedback weight in (0, 1], default 1, needs ef=1
//   via=allgather|omnireduce, block=N   for topk and threshold: the selections are summed by
//                OmniReduce instead of gathered, so only the blocks holding a selected entry
//                travel and no index lists do ("topk:0.01,via=omnireduce,block=16"; block
//                default 256, in [1, 2^24], needs via=omnireduce)
//   momentum=M   in [0, 1), default 0: momentum correction (Lin et al., "Deep Gradient
//                Compression", ICLR 2018; the same as exdyna's momentum=), for the sparsifiers
//                topk, threshold and randomk with scale=0 only. Per bucket the reducer keeps
//                u (the velocity) and v (the accumulated velocity, which is the residual):
//                  u = M u + g;  v = v + u;  send the selection of v;  v = 0 at the selection;
//                with masking also u = 0 there. The result is the average of the selections;
//                the reducer has applied momentum (applies_momentum()), so the optimizer must be
//                plain SGD (the trainer refuses --optimizer momentum with it). Needs ef=1 and
//                beta=1 (v replaces plain error feedback).
//   mask=0|1     momentum factor masking, default 1; needs momentum > 0
//   warmup=W     steps of density warm-up, default 0, for topk and randomk (compressors with a
//                density; threshold's density follows the data): step t sends at density
//                warmup_density(density, W, t) (reducer.h: 0.25 at step 0, falling
//                geometrically to the target at step W).
// e.g. "topk:0.01", "topk:density=0.01,ef=0", "qcs:rows=32,beta=0.05", "fp16",
// "topk:0.01,momentum=0.9,warmup=200". Unbiased QCS (recon=unbiased) under error feedback needs
// beta < 2/(1+gamma) (specs/qcs.md: plain EF can diverge when gamma > 1): a larger beta is
// rejected, and the default is 1/(1+gamma) when gamma >= 1.
//
// The bucket's index is the compressor's stream and the key of the residual (and velocity);
// sizes are checked against the layout. A new layout (set_layout) restarts the residuals and
// velocities from zero: a bucket of the old layout holds other parameters than the new one's.
// The result is the average over ranks, bit-identical on every rank:
//  - summable compressors: one ring allreduce (sum) of the payloads as summable_type(), then
//    decompress and multiply by 1/N;
//  - via=omnireduce: this rank's payload decoded in place (its selection, zeros elsewhere), then
//    one sparse::omnireduce (SUM; aggregators in the workers), and 1/N;
//  - others: allgather of the payload sizes (skipped when payload_size_fixed()), one ring
//    allgatherv of the payloads padded to 4-byte words (sent as kInt32), then every rank decodes
//    all payloads in rank order, accumulating, and multiplies by 1/N.
// bytes_sent/bytes_received count what the ring moves for this rank, with chunk c_j of a ring
// over N ranks (element counts as in the collectives: total/N, the first total%N one more):
//   allreduce:  sent 2 total - c_r - c_{r+1}, received 2 total - c_{r-1} - c_r (elements x size);
//   allgatherv: sent total - c_{r+1}, received total - c_r (padded bytes);
//   size exchange: 8 (N-1) bytes each way; omnireduce: its own counts (protocol payload).
//   Handshake descriptors are not counted.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dtrain/compress/compressor.h"
#include "dtrain/reduce/reducer.h"

namespace dtrain::reduce {

// Summing a sparsifier's selections with OmniReduce instead of gathering its payloads.
struct OmniReduceVia {
  bool enabled = false;
  size_t block = 256;  // elements per OmniReduce block
};

// The reducer-level parameters of a spec (see above).
struct CompressedOptions {
  bool error_feedback = true;
  double beta = 1.0;
  OmniReduceVia via;
  double momentum = 0;
  bool mask = true;
  uint64_t warmup = 0;
};

// Throws InvalidArgument (starting "compressed reducer: ") unless `options` suit `compressor`:
// via only for topk and threshold, block in [1, 2^24], beta in (0, 1] and 1 without error
// feedback, momentum in [0, 1) and only for a sparsifier with error feedback and beta 1, mask=0
// only with momentum, warmup only for a compressor with a density.
void check_compressed_options(const compress::Compressor& compressor,
                              const CompressedOptions& options);

class CompressedReducer : public GradientReducer {
 public:
  // Throws InvalidArgument as check_compressed_options.
  CompressedReducer(comm::Group& group, std::unique_ptr<compress::Compressor> compressor,
                    const CompressedOptions& options);
  CompressedReducer(comm::Group& group, std::unique_ptr<compress::Compressor> compressor,
                    bool error_feedback, double beta = 1.0, OmniReduceVia via = {});

  void begin_step(uint64_t step) override;
  void reduce(size_t bucket, std::span<float> grad) override;
  // Canonical spec, e.g. "topk:density=0.01,ef=1,momentum=0.9"; make_compressed_reducer(name())
  // rebuilds it.
  std::string name() const override;
  // Residuals (error feedback, or momentum correction's u and v) and the mean-density figures,
  // tagged with name(): loading state of another reducer, or of a changed layout, throws
  // InvalidArgument saying so. Empty for a reducer that keeps none (no error feedback, no
  // momentum, not a sparsifier). Checkpoints of earlier versions (name and error feedback only)
  // still load into a reducer of the same name; the mean density then restarts.
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> state) override;
  // Latest step: "compress_ratio" (dense bytes / payload bytes of this rank) and "payload_bytes";
  // via=omnireduce also "union_density" and "local_density" (fractions of OmniReduce blocks);
  // sparsifiers also "density" (entries this rank sent / entries of the step's buckets) and
  // "mean_density" (the mean of "density" over the steps so far).
  std::vector<std::pair<std::string, double>> step_metrics() const override;
  bool applies_momentum() const override { return options_.momentum > 0; }

  const compress::Compressor& compressor() const { return *codec_; }
  bool error_feedback() const { return options_.error_feedback; }
  const CompressedOptions& options() const { return options_; }
  // The residual of `bucket` (under momentum correction v, the accumulated velocity) and, with
  // momentum, its velocity u; empty before the bucket's first step.
  std::span<const float> residual(size_t bucket) const;
  std::span<const float> velocity(size_t bucket) const;
  // The density the current step sends at (warm-up), or the compressor's; 0 for a compressor
  // without a density.
  double step_density() const;

 private:
  // Momentum correction's state of one bucket.
  struct Momentum {
    std::vector<float> velocity;  // u
    std::vector<float> residual;  // v
  };

  void on_layout(const Layout& previous) override;
  compress::Compressor& step_codec() { return warm_codec_ ? *warm_codec_ : *codec_; }
  compress::Payload compress_with_momentum(size_t bucket, std::span<float> grad,
                                           compress::Compressor& codec);
  void allreduce_payload(compress::Compressor& codec, compress::Payload& payload);
  void gather_and_decode(compress::Compressor& codec, const compress::Payload& payload,
                         std::span<float> grad, uint64_t step, uint64_t stream);
  void omnireduce_selection(compress::Compressor& codec, const compress::Payload& payload,
                            std::span<float> grad, uint64_t step, uint64_t stream);
  void commit_density();

  comm::Group& group_;
  CompressedOptions options_;
  std::unique_ptr<compress::Compressor> compressor_;   // set without error feedback
  std::unique_ptr<compress::ErrorFeedback> feedback_;  // owns the compressor with it
  compress::Compressor* codec_;                        // whichever of the two is in use
  std::unique_ptr<compress::Compressor> warm_codec_;   // at this step's warm-up density, if other
  std::vector<Momentum> momentum_;                     // per bucket, with momentum > 0
  std::vector<uint32_t> kept_;                         // scratch: indices a payload keeps
  uint64_t step_dense_bytes_ = 0;
  uint64_t step_payload_bytes_ = 0;
  std::set<size_t> verified_;  // bucket sizes whose OmniReduce call was handshaken
  uint64_t step_blocks_ = 0, step_union_ = 0, step_local_ = 0;
  // Sparsifiers: entries kept and offered in the current step; the densities of earlier steps.
  uint64_t step_kept_ = 0, step_elements_ = 0;
  uint64_t density_steps_ = 0;
  double density_sum_ = 0;
};

// A parsed and checked spec: the compressor and the reducer-level options.
struct CompressedSpec {
  std::unique_ptr<compress::Compressor> compressor;
  CompressedOptions options;
};
// Parses a spec (see above) without a Group; throws InvalidArgument naming the parameter.
CompressedSpec parse_compressed_spec(const std::string& spec);

// The compressor names a spec may start with.
std::vector<std::string> compressed_reducer_names();
// Builds a CompressedReducer from a spec (parse_compressed_spec). Throws InvalidArgument naming
// the problem.
std::unique_ptr<GradientReducer> make_compressed_reducer(const std::string& spec,
                                                         comm::Group& group);

}  // namespace dtrain::reduce
