// Pieces shared by the compressors, internal to compress/.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dtrain/compress/compressor.h"
#include "dtrain/reduce/params.h"

namespace dtrain::compress::detail {

using reduce::Params;

// Factories the registry (compressor.cc) calls; each reads its parameters from `params` (parsed by
// reduce::parse_params against the registry's keys), with its defaults for absent keys, and
// range-checks them (InvalidArgument naming the key and value).
std::unique_ptr<Compressor> make_none(const Params& params);
std::unique_ptr<Compressor> make_fp16(const Params& params);
std::unique_ptr<Compressor> make_topk(const Params& params);
std::unique_ptr<Compressor> make_randomk(const Params& params);
std::unique_ptr<Compressor> make_threshold(const Params& params);
std::unique_ptr<Compressor> make_qcs(const Params& params);

// Shortest text that parses back to the same double ("0.01", "1e-05"), for canonical names.
std::string format_number(double v);

// Throws InvalidArgument naming the first NaN/Inf element of `in`.
void check_finite(std::span<const float> in, const char* compressor);
// Checks out.size() == p.count before decoding.
void check_output(const Payload& p, std::span<float> out, const char* compressor);
// Throws ProtocolError unless the payload holds exactly `expected` bytes.
void check_payload_size(const Payload& p, size_t expected, const char* compressor, int sender);

// Sparse payload of topk and threshold: k uint32 indices (ascending), then the k float values;
// k = bytes / 8, so no header. Inputs of 2^32 or more elements are rejected.
Payload encode_sparse(std::span<const float> in, std::span<const uint32_t> indices);
void decode_sparse(const Payload& p, std::span<float> out, bool accumulate, const char* compressor,
                   int sender);
// The indices of a sparse payload (as encoded; not checked).
void sparse_indices(const Payload& p, std::vector<uint32_t>& out);
// Number of kept elements for a density: round(density n), at least 1 when n > 0.
size_t kept_count(double density, size_t n);

}  // namespace dtrain::compress::detail
