// A shard's checkpoint (see checkpoint.h).
#include "checkpoint.h"

#include <fstream>
#include <iterator>

#include "dtrain/common/bytes.h"
#include "dtrain/common/envelope.h"
#include "dtrain/common/error.h"
#include "dtrain/common/file.h"

namespace dtrain::ps::internal {
namespace {

constexpr uint32_t kMagic = 0x43535044;  // "DPSC"
constexpr uint32_t kFormat = 2;  // 2: a worker's pushed ticks beside its clock
constexpr const char* kKind = "ps shard";

}  // namespace

void write_checkpoint(const ServerOptions& o, const Range& range, const ShardState& state) {
  ByteWriter w;
  w.put(kMagic).put(kFormat).put(int32_t(o.index)).put(int32_t(o.shards)).put(o.length);
  w.put(range.begin).put(range.end);
  const UpdateRule& r = o.rule;
  w.put(static_cast<uint8_t>(r.kind)).put(r.lr).put(r.eps).put(r.beta1).put(r.beta2);
  w.put(r.initial_accumulator).put(state.updates);
  static const std::vector<float> none;
  auto it = state.vectors.find("w");
  w.put_vector(it == state.vectors.end() ? none : it->second).put_vector(state.rule_state);
  w.put(static_cast<uint64_t>(state.vectors.size() - (it == state.vectors.end() ? 0 : 1)));
  for (const auto& [name, v] : state.vectors) {
    if (name != "w") w.put_string(name).put_vector(v);
  }
  w.put(static_cast<uint64_t>(state.clocks.size()));
  for (const auto& [worker, clock] : state.clocks) {
    auto pushed = state.pushed.find(worker);
    w.put(int32_t(worker)).put(clock).put(pushed == state.pushed.end() ? int64_t{0} : pushed->second);
  }
  const auto body = w.take();
  const auto file = envelope::seal(body, kKind);
  write_file_atomic(o.checkpoint_path, {reinterpret_cast<const char*>(file.data()), file.size()},
                    true);
}

ShardState read_checkpoint(const ServerOptions& o, const Range& range) {
  const std::string& path = o.checkpoint_path;
  const std::string what = "ps checkpoint " + path;
  DT_ENFORCE(!path.empty(), "parameter server shard ", o.index,
             ": resume asked for, but no checkpoint file is set");
  std::ifstream in(path, std::ios::binary);
  DT_ENFORCE(in.good(), what, ": cannot be read (missing?)");
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(raw.data()), raw.size());
  std::span<const std::byte> body;
  try {
    body = envelope::open(file, kKind, what);
  } catch (const IoError& e) {
    throw InvalidArgument(e.what());  // a damaged file is bad input to --resume
  }
  ByteReader r(body, what);
  r.expect(kMagic, "magic");
  r.expect(kFormat, "format version");
  const auto index = r.get<int32_t>("shard");
  const auto shards = r.get<int32_t>("shards");
  const auto length = r.get<uint64_t>("length");
  DT_ENFORCE(index == o.index && shards == o.shards && length == o.length, what,
             ": written by shard ", index, " of ", shards, " over ", length,
             " keys; this is shard ", o.index, " of ", o.shards, " over ", o.length);
  Range saved;
  saved.begin = r.get<uint64_t>("begin");
  saved.end = r.get<uint64_t>("end");
  DT_ENFORCE(saved == range, what, ": holds keys [", saved.begin, ", ", saved.end,
             "), this shard's range is [", range.begin, ", ", range.end, ")");
  UpdateRule rule;
  const auto kind = r.get<uint8_t>("rule kind");
  DT_ENFORCE(kind <= 3, what, ": rule kind ", int(kind), " is unknown");
  rule.kind = static_cast<UpdateRule::Kind>(kind);
  rule.lr = r.get<double>("lr");
  rule.eps = r.get<double>("eps");
  rule.beta1 = r.get<double>("beta1");
  rule.beta2 = r.get<double>("beta2");
  rule.initial_accumulator = r.get<double>("initial_accumulator");
  DT_ENFORCE(rule.str() == o.rule.str(), what, ": written with update rule ", rule.str(),
             ", this shard runs ", o.rule.str());
  ShardState s;
  s.updates = r.get<uint64_t>("updates");
  const uint64_t n = range.size();
  auto vec = [&](const char* field, uint64_t want) {
    auto v = r.get_vector<float>(field);
    DT_ENFORCE(v.size() == want, what, ": ", field, " holds ", v.size(), " values, expected ",
               want);
    return v;
  };
  s.vectors["w"] = vec("w", n);
  s.rule_state = vec("rule state", n * static_cast<uint64_t>(o.rule.state_per_key()));
  const auto nvec = r.get<uint64_t>("named vectors");
  DT_ENFORCE(nvec <= r.left() / 16, what, ": claims ", nvec, " named vectors in ", r.left(),
             " bytes");
  for (uint64_t i = 0; i < nvec; ++i) {
    auto name = r.get_string("vector name");
    DT_ENFORCE(!name.empty() && name != "w" && !s.vectors.count(name), what,
               ": bad or repeated vector name '", name, "'");
    s.vectors[name] = vec("named vector", n);
  }
  const auto nclocks = r.get<uint64_t>("clocks");
  DT_ENFORCE(nclocks <= r.left() / 20, what, ": claims ", nclocks, " clocks in ", r.left(),
             " bytes");
  for (uint64_t i = 0; i < nclocks; ++i) {
    const auto worker = r.get<int32_t>("worker");
    s.clocks[worker] = r.get<int64_t>("clock");
    s.pushed[worker] = r.get<int64_t>("pushed");
  }
  r.finish();
  return s;
}

}  // namespace dtrain::ps::internal
