// `--reduce omnireduce[:block=256,aggregators=A,colocate=1,slots=S,fusion=F]`: averages each
// bucket with sparse::omnireduce, so only the blocks that are non-zero at some worker travel.
// Dense gradients (MLP, CNN) gain nothing; embedding gradients, where a batch touches few rows,
// are mostly zero blocks.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "dtrain/reduce/reducer.h"
#include "dtrain/sparse/omnireduce.h"

namespace dtrain::reduce {

class OmniReduceReducer : public GradientReducer {
 public:
  // `options.group` and `options.data` are filled per call; the rest is used as given.
  OmniReduceReducer(comm::Group& group, const sparse::OmniReduceOptions& options);
  void begin_step(uint64_t step) override;
  void reduce(size_t bucket, std::span<float> grad) override;
  void end_step() override;
  std::string name() const override;
  // Per step, over all buckets: "union_density" (blocks non-zero at some worker / blocks) and
  // "local_density" (this rank's non-zero blocks / blocks).
  std::vector<std::pair<std::string, double>> step_metrics() const override;

 private:
  comm::Group& group_;
  sparse::OmniReduceOptions options_;
  std::set<size_t> verified_;  // bucket sizes whose call handshake passed: verified at first use
  uint64_t blocks_ = 0, union_ = 0, local_ = 0;                 // of the current step
  uint64_t last_blocks_ = 0, last_union_ = 0, last_local_ = 0;  // of the last finished step
};

// The spec's parameters (defaults as sparse::OmniReduceOptions's).
struct OmniReduceSettings {
  size_t block = 256;   // block=
  int aggregators = 0;  // aggregators= (0: one per worker)
  int slots = 2;        // slots=
  size_t fusion = 256;  // fusion= (blocks_per_message)
  void apply(sparse::OmniReduceOptions& o) const;
};

// Parses the parameters after "omnireduce:" ("" for the defaults). Throws InvalidArgument naming
// the bad parameter and listing the valid ones.
OmniReduceSettings parse_omnireduce_options(const std::string& params);
// The reducer with those settings.
std::unique_ptr<GradientReducer> make_omnireduce_reducer(const std::string& params,
                                                         comm::Group& group);

}  // namespace dtrain::reduce
