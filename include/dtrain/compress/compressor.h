// Gradient compressors: the interface, the registry and the error-feedback wrapper.
//
// A Compressor turns a float vector into a Payload (the bytes one rank puts on the wire) and back.
// It knows nothing about communication; reduce/compressed.h combines it with a collective.
//
//   Payload compress(span<const float> in, uint64_t step, uint64_t stream = 0);
//   void decompress(const Payload&, span<float> out, bool accumulate, uint64_t step,
//                   uint64_t stream = 0, int sender = 0) const;
//   bool summable() const;                    // payloads add elementwise as summable_type()
//   collective::DataType summable_type() const;
//   bool payload_size_fixed() const;          // payload_bytes(n) known before the data is seen
//   size_t payload_bytes(size_t n) const;     // throws InvalidArgument when not fixed
//   void set_worker(int rank); int worker() const;  // keys per-worker randomness (QCS)
//
// `step` and `stream` (the bucket index within a step) key every piece of shared randomness, so
// all ranks draw the same random-k positions and a receiver regenerates a sender's QCS signs and
// dither from (seed, bucket, step, stream, sender) instead of receiving them.
//
// Registry specs: "name" or "name:key=value,key=value", parsed by the tree's one spec parser
// (reduce::parse_params, reduce/params.h); the first parameter may be given without its key
// ("topk:0.01"). Names and parameters (defaults in brackets):
//   none                                   float32 copy (summable, exact)
//   fp16                                   IEEE half (summable as kFloat16; |x| >= 65520 -> inf)
//   topk:density=[0.01]                    k = round(density n) largest |x|, ties to lower index
//   randomk:density=[0.01],seed=[0],scale=[0]   k shared random positions, values only (summable);
//                                          scale=1 multiplies by n/k (unbiased), 0 does not
//   threshold:lambda=[0.001]               every |x| >= lambda (payload size data-dependent)
//   qcs:bucket=[256],rows=[32],levels=[1],seed=[0],recon=[unbiased]|mmse,shared=[0]
//                                          quantized compressive sampling, see compress/qcs.h
// Exact a priori payload sizes (payload_size_fixed): all but threshold, whose size is
// bytes.size() of the payload itself. Sparsifiers (sparsifier(): topk, threshold, randomk with
// scale=0) send a subset of their input's entries as they are; reduce/compressed.h builds momentum
// correction and density warm-up on that (kept_indices, density, with_density).
//
// Non-finite input: topk, threshold and qcs reject NaN/Inf with InvalidArgument naming the element
// index (NaN breaks their selection or scale); none, fp16 and randomk pass values through
// elementwise, leaving non-finite values for the trainer's own check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dtrain/collective/types.h"

namespace dtrain::reduce {
class Params;
}

namespace dtrain::compress {

struct Payload {
  std::vector<std::byte> bytes;  // exactly what travels on the wire for this rank
  size_t count = 0;              // elements of the original (uncompressed) vector
};

class Compressor {
 public:
  virtual ~Compressor() = default;
  // Canonical spec with every parameter, e.g. "topk:density=0.01"; make_compressor(name())
  // builds an identical compressor.
  virtual std::string name() const = 0;
  virtual Payload compress(std::span<const float> in, uint64_t step, uint64_t stream = 0) = 0;
  // out.size() must equal p.count. accumulate: out += decoded, else out = decoded. `sender` is
  // the worker whose payload this is (QCS regenerates its signs and dither). A payload of the
  // wrong size or with out-of-range indices throws ProtocolError naming the sender.
  virtual void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t step,
                          uint64_t stream = 0, int sender = 0) const = 0;
  // True when payloads of all ranks can be combined elementwise as summable_type() values and the
  // sum decompresses to the sum of the inputs (fp16, randomk, qcs with shared=1, none).
  virtual bool summable() const = 0;
  virtual collective::DataType summable_type() const { return collective::DataType::kFloat32; }
  virtual bool payload_size_fixed() const { return true; }
  // Exact payload size for n input elements; throws InvalidArgument when !payload_size_fixed().
  virtual size_t payload_bytes(size_t n) const = 0;

  // True when a payload is a subset of the input's entries, decoded to exactly their values
  // (zeros elsewhere): topk, threshold, randomk with scale=0.
  virtual bool sparsifier() const { return false; }
  // Sparsifiers: appends to `out` (cleared first) the indices payload `p` keeps, ascending, as
  // decompress would place them (the same step and stream). InvalidArgument for the others.
  virtual void kept_indices(const Payload& p, uint64_t step, uint64_t stream,
                            std::vector<uint32_t>& out) const;
  // The fraction of entries kept when it is fixed in advance (topk, randomk), else 0.
  virtual double density() const { return 0; }
  // A copy at another density in (0, 1] (same seed and worker), for density warm-up;
  // InvalidArgument when density() is 0.
  virtual std::unique_ptr<Compressor> with_density(double density) const;

  // The rank this compressor compresses for (keys per-worker randomness); default 0.
  void set_worker(int worker) { worker_ = worker; }
  int worker() const { return worker_; }

 protected:
  int worker_ = 0;
};

std::vector<std::string> compressor_names();
// The parameter keys of compressor `name`, in spec order (empty for none and fp16). Throws
// InvalidArgument listing the valid names when `name` is unknown.
std::vector<std::string> compressor_params(const std::string& name);
// Builds a compressor from a spec (see above). Throws InvalidArgument listing the valid names,
// or the valid parameters of that compressor, or naming the bad value ("compressor topk: ...").
std::unique_ptr<Compressor> make_compressor(const std::string& spec);
// Builds compressor `name` from parameters already parsed by reduce::parse_params, which may
// hold other keys as well (a reducer parses its own and its compressor's in one pass); absent
// keys take the defaults above. Throws InvalidArgument naming the bad value.
std::unique_ptr<Compressor> make_compressor(const std::string& name, const reduce::Params& params);

// Error feedback around a compressor, one residual r per stream (bucket):
//   z = g + beta r;  payload = compress(z);  r_next = (1 - beta) r + (z - decompress(payload)).
// beta = 1 is plain error feedback (r_next = z - z_hat); 0 < beta < 1 is the weighted variant QCS
// asks for. Either way sum of decompressed payloads + final residual = sum of inputs + r_0.
class ErrorFeedback {
 public:
  // beta in (0, 1].
  explicit ErrorFeedback(std::unique_ptr<Compressor> compressor, double beta = 1.0);

  // Compresses g with the stream's residual folded in and updates the residual. A stream keeps
  // the size of its first input; another size throws InvalidArgument. `with`, when given,
  // compresses and decodes in place of the wrapped compressor (a copy of it at another density:
  // density warm-up); its worker must be set like the wrapped one's.
  Payload compress(std::span<const float> g, uint64_t step, uint64_t stream = 0,
                   Compressor* with = nullptr);

  Compressor& compressor() { return *compressor_; }
  const Compressor& compressor() const { return *compressor_; }
  double beta() const { return beta_; }
  // The stream's residual (empty if the stream has not been seen).
  std::span<const float> residual(uint64_t stream) const;
  void reset() { residuals_.clear(); }

  // Residuals for checkpoints. load_state checks the layout and sizes and throws InvalidArgument
  // describing the mismatch; on error the current residuals are kept.
  std::vector<std::byte> save_state() const;
  void load_state(std::span<const std::byte> state);

 private:
  std::unique_ptr<Compressor> compressor_;
  double beta_;
  std::map<uint64_t, std::vector<float>> residuals_;
  std::vector<float> z_;
  std::vector<float> z_hat_;
};

}  // namespace dtrain::compress
