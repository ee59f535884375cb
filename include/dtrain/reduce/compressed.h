// CompressedReducer: a compressor (compress/compressor.h), optionally under error feedback,
// combined with the ring collectives.
//
//   CompressedReducer(comm::Group&, std::unique_ptr<compress::Compressor>, bool error_feedback,
//                     double beta = 1.0, OmniReduceVia via = {});
//   std::unique_ptr<GradientReducer> make_compressed_reducer(const std::string& spec, Group&);
//
// Spec: a compressor spec plus the reducer-level parameters `ef=0|1` (error feedback; default 1,
// except 0 for none and fp16) and `beta=` (error-feedback weight in (0, 1], default 1, needs ef=1),
// e.g. "topk:0.01", "topk:density=0.01,ef=0", "qcs:rows=32,beta=0.05", "fp16"; and, for the
// sparsifiers topk and threshold, `via=omnireduce` (with `block=`, default 256): the selection is
// summed by OmniReduce instead of gathered, so only the blocks holding a selected entry travel and
// no index lists do ("topk:0.01,via=omnireduce,block=16"). Unbiased QCS
// (recon=unbiased) under error feedback needs beta < 2/(1+gamma) (specs/qcs.md: plain EF can
// diverge when gamma > 1): a larger beta is rejected, and the default is 1/(1+gamma) when
// gamma >= 1.
//
// The bucket's index is the compressor's stream and the error-feedback residual's key; sizes are
// checked against the layout. A new layout (set_layout) restarts the residuals from zero: a bucket
// of the old layout holds other parameters than the new one's. The result is the average
// over ranks, bit-identical on every rank:
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

#include <memory>
#include <set>
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

class CompressedReducer : public GradientReducer {
 public:
  // Throws InvalidArgument when `via` is enabled for a compressor other than topk or threshold.
  CompressedReducer(comm::Group& group, std::unique_ptr<compress::Compressor> compressor,
                    bool error_feedback, double beta = 1.0, OmniReduceVia via = {});

  void begin_step(uint64_t step) override;
  void reduce(size_t bucket, std::span<float> grad) override;
  // Canonical spec, e.g. "topk:density=0.01,ef=1"; make_compressed_reducer(name()) rebuilds it.
  std::string name() const override;
  // Error-feedback residuals (empty without error feedback), tagged with name(): loading state of
  // another reducer, or of a changed layout, throws InvalidArgument saying so.
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> state) override;
  // Latest step: "compress_ratio" (dense bytes / payload bytes of this rank) and "payload_bytes";
  // via=omnireduce also "union_density" and "local_density" (fractions of OmniReduce blocks).
  std::vector<std::pair<std::string, double>> step_metrics() const override;

  const compress::Compressor& compressor() const { return *codec_; }
  bool error_feedback() const { return feedback_ != nullptr; }

 private:
  void on_layout(const Layout& previous) override;
  void allreduce_payload(compress::Payload& payload);
  void gather_and_decode(const compress::Payload& payload, std::span<float> grad, uint64_t step,
                         uint64_t stream);
  void omnireduce_selection(const compress::Payload& payload, std::span<float> grad, uint64_t step,
                            uint64_t stream);

  comm::Group& group_;
  std::unique_ptr<compress::Compressor> compressor_;   // set without error feedback
  std::unique_ptr<compress::ErrorFeedback> feedback_;  // owns the compressor with it
  compress::Compressor* codec_;                        // whichever of the two is in use
  uint64_t step_dense_bytes_ = 0;
  uint64_t step_payload_bytes_ = 0;
  OmniReduceVia via_;
  std::set<size_t> verified_;  // bucket sizes whose OmniReduce call was handshaken
  uint64_t step_blocks_ = 0, step_union_ = 0, step_local_ = 0;
};

// The compressor names a spec may start with.
std::vector<std::string> compressed_reducer_names();
// Builds a CompressedReducer from a spec (see above). Throws InvalidArgument naming the problem.
std::unique_ptr<GradientReducer> make_compressed_reducer(const std::string& spec,
                                                         comm::Group& group);

}  // namespace dtrain::reduce
