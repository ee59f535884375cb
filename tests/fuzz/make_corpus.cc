// Writes the seed corpora of the fuzz targets: a few valid inputs of each, in the layout its
// fuzz_<name>.cc documents (parameter bytes, then the bytes under test), into DIR/<name>/.
//   build-fuzz/fuzz_make_corpus tests/fuzz/corpus
// Deterministic: rerunning it rewrites the same files (seed-<n>); corpus files merged in from
// fuzzing runs have libFuzzer's hash names and are left alone.
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "comm/group_wire.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/envelope.h"
#include "dtrain/compress/compressor.h"
#include "dtrain/compress/qcs.h"
#include "dtrain/reduce/exdyna_partition.h"
#include "ps/wire.h"
#include "sparse/omnireduce_internal.h"

namespace fs = std::filesystem;
using namespace dtrain;

namespace {

fs::path root;

void write(const std::string& target, int n, const std::vector<std::byte>& bytes) {
  fs::create_directories(root / target);
  std::ofstream out(root / target / ("seed-" + std::to_string(n)), std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::byte> text(const std::string& s) {
  ByteWriter w;
  w.raw(s.data(), s.size());
  return w.take();
}

std::vector<float> gradient(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> g(n);
  for (auto& x : g) x = dist(rng);
  return g;
}

void frame() {
  using namespace comm::internal;
  int n = 0;
  ByteWriter h;
  h.put<uint8_t>(4).put<uint8_t>(0).put(FrameHeader{kFrameMagic, 0, 100});
  write("frame", n++, h.take());
  auto control = [&](const ControlMsg& m) {
    ByteWriter w;
    w.put<uint8_t>(4).put<uint8_t>(1).put(m);
    write("frame", n++, w.take());
  };
  ControlMsg failure;
  failure.type = ControlMsg::kFailure;
  failure.kind = 3;
  failure.culprit = 2;
  std::snprintf(failure.message, sizeof(failure.message), "rank 2 failed: a test");
  control(failure);
  ControlMsg ping;
  ping.type = ControlMsg::kPing;
  ping.nonce = 42;
  control(ping);
  ControlMsg pong;
  pong.type = ControlMsg::kPong;
  pong.nonce = 42;
  pong.count = 2;
  pong.waiting_on[0] = 1;
  pong.waiting_on[1] = 3;
  control(pong);
}

void sparse_corpus() {
  // Same order as fuzz_sparse.cc's compressors.
  const char* specs[] = {"topk:0.1", "threshold:0.01", "none", "fp16", "randomk:0.25"};
  int n = 0;
  for (uint8_t which = 0; which < 5; ++which) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{37}, size_t{300}}) {
      auto c = compress::make_compressor(specs[which]);
      const auto g = gradient(count, 7 + which);
      const auto p = c->compress(g, 3);
      ByteWriter w;
      w.put(which).put<uint8_t>(count % 2).put(static_cast<uint16_t>(count)).put<uint8_t>(3);
      w.raw(p.bytes.data(), p.bytes.size());
      write("sparse", n++, w.take());
    }
  }
}

void qcs() {
  int n = 0;
  // log2 bucket, rows, levels index (1, 2, 3, 4, 7, 100, 65535), flags, count.
  struct Case {
    uint8_t log_bucket, rows, levels, flags;
    uint16_t count;
  };
  static constexpr int kLevels[] = {1, 2, 3, 4, 7, 100, 65535};
  for (const Case c : {Case{4, 4, 0, 0, 40}, Case{6, 15, 1, 2, 64}, Case{8, 31, 4, 0, 700},
                       Case{3, 7, 6, 4, 9}, Case{5, 9, 2, 1, 100}, Case{0, 0, 5, 0, 3}}) {
    compress::QcsOptions o;
    o.bucket = size_t{1} << c.log_bucket;
    o.rows = 1 + c.rows % o.bucket;
    o.levels = kLevels[c.levels];
    o.shared = c.flags & 1;
    o.mmse = c.flags & 2;
    compress::QcsCompressor q(o);
    q.set_worker(5);
    const auto p = q.compress(gradient(c.count, c.count), 2);
    ByteWriter w;
    w.put(c.log_bucket).put(c.rows).put(c.levels).put(c.flags).put(c.count);
    w.put<uint8_t>(2).put<uint8_t>(5);
    w.raw(p.bytes.data(), p.bytes.size());
    write("qcs", n++, w.take());
  }
}

void exdyna() {
  using reduce::exdyna::Partitions;
  int n = 0;
  {  // counts: 3 ranks x 2 levels
    ByteWriter w;
    w.put<uint8_t>(0).put<uint8_t>(1).put<uint16_t>(1000);
    for (int64_t c : {5, 3, 7, 2, 0, 0}) w.put(c);
    write("exdyna", n++, w.take());
  }
  // union: each rank sends a few indices of the partition it owns in this step.
  for (const auto& [ranks, d, blocks, contiguous, step] :
       {std::tuple{3, 1000, 16, 0, 4}, std::tuple{2, 4096, 64, 1, 1},
        std::tuple{5, 700, 9, 0, 0}}) {
    const auto order = contiguous ? reduce::exdyna::BlockOrder::kContiguous
                                  : reduce::exdyna::BlockOrder::kInterleaved;
    const Partitions parts(d, blocks, ranks, order, 9);
    ByteWriter w;
    w.put<uint8_t>(1).put(static_cast<uint8_t>(ranks - 1)).put(static_cast<uint16_t>(d));
    w.put(static_cast<uint8_t>(blocks - 1)).put(static_cast<uint8_t>(contiguous));
    w.put<uint8_t>(9).put(static_cast<uint8_t>(step));
    std::vector<std::vector<uint32_t>> sent(ranks);
    for (int r = 0; r < ranks; ++r) {
      const int p = (step + r) % ranks;
      for (const auto& [begin, end] : parts.runs(p)) {
        for (size_t i = begin; i < end && sent[r].size() < 4; i += 7) {
          sent[r].push_back(static_cast<uint32_t>(i));
        }
      }
      w.put(static_cast<uint16_t>(sent[r].size()));
    }
    for (const auto& s : sent) w.put_array(std::span<const uint32_t>(s));
    write("exdyna", n++, w.take());
  }
  // state: version 3, one rank, one bucket of 64 floats in 2 blocks of 32 (and one of version 1).
  for (uint32_t version : {3u, 1u}) {
    ByteWriter w;
    w.put<uint8_t>(2);
    w.put<uint32_t>(0x45584459).put(version).put<uint32_t>(1).put<uint64_t>(1);
    w.put<uint64_t>(64).put<uint64_t>(32);
    if (version >= 3) w.put<uint32_t>(1).put<uint64_t>(0);
    w.put<uint64_t>(0).put<uint64_t>(2);
    w.put(0.25).put<uint64_t>(6);
    w.put_array(std::span<const float>(gradient(64, 1)));
    if (version >= 2) w.put_vector(std::vector<float>{});
    write("exdyna", n++, w.take());
  }
}

void omnireduce_corpus() {
  using namespace sparse::detail;
  int n = 0;
  struct Case {
    bool reply;
    uint64_t round;
    uint32_t size;
    uint8_t block, columns, workers, aggregators, slots, lane;
  };
  for (const Case c :
       {Case{false, 0, 1000, 15, 3, 2, 0, 1, 0}, Case{true, 0, 1000, 15, 3, 2, 0, 1, 0},
        Case{false, 1, 5000, 31, 3, 3, 1, 1, 1}, Case{true, 1, 5000, 31, 3, 3, 1, 1, 1},
        Case{true, 3, 640, 7, 1, 1, 0, 0, 0}}) {
    const size_t block = 1 + c.block % 64, columns = 1 + c.columns % 16;
    const int workers = 1 + c.workers % 8, aggregators = 1 + c.aggregators % 4;
    const int slots = 1 + c.slots % 4;
    const Layout l(c.size, block, columns, workers, aggregators, 0, slots);
    const uint64_t lane = c.lane % l.lanes;
    ByteWriter w;
    const uint8_t mode = static_cast<uint8_t>((c.reply ? 1 : 0) | (c.round > 0 ? 2 : 0) |
                                              (c.round > 0 ? (c.round - 1) << 2 : 0));
    w.put(mode).put(c.size).put(c.block).put(c.columns).put(c.workers).put(c.aggregators);
    w.put(c.slots).put(c.lane).put<uint64_t>(c.size);
    // Target: the column's block 1; look-ahead: block 1 for a request (the worker contributes),
    // block 2 for a reply (the next target lies between them).
    const uint8_t ahead_k = c.reply ? 2 : 1;
    std::vector<uint64_t> ahead(columns), target(columns);
    for (size_t col = 0; col < columns; ++col) {
      w.put(ahead_k).put<uint8_t>(1);
      auto at = [&](uint64_t k) {
        const uint64_t p = l.first_block(lane, col) + k * l.stride;
        return p < l.blocks ? p : kEnd;
      };
      ahead[col] = at(ahead_k);
      target[col] = c.round == 0 ? kEnd : std::min(ahead[col], at(1));
    }
    // A valid message: every pointer moves one block on (or ends).
    auto later = [&](size_t, uint64_t p) {
      return p == kEnd || p + l.stride >= l.blocks ? kEnd : p + l.stride;
    };
    if (!c.reply) {
      if (c.round == 0) {
        for (size_t col = 0; col < columns; ++col) w.put(ahead[col]);
      } else {
        size_t k = 0;
        for (size_t col = 0; col < columns; ++col) {
          if (target[col] != kEnd && ahead[col] == target[col]) w.put(later(col, ahead[col])), ++k;
        }
        w.put_array(std::span<const float>(gradient(k * block, 3)));
      }
    } else {
      size_t active = 0;
      for (size_t col = 0; col < columns; ++col) {
        const uint64_t next = c.round == 0          ? ahead[col]
                              : target[col] == kEnd ? kEnd
                                                    : std::min(ahead[col], later(col, target[col]));
        w.put(next);
        active += c.round > 0 && target[col] != kEnd;
      }
      w.put_array(std::span<const float>(gradient(active * block, 4)));
    }
    write("omnireduce", n++, w.take());
  }
}

std::vector<std::byte> idx_file(uint8_t type, std::vector<uint32_t> dims, size_t elem) {
  ByteWriter w;
  w.put<uint8_t>(0).put<uint8_t>(0).put(type).put(static_cast<uint8_t>(dims.size()));
  size_t count = 1;
  for (uint32_t d : dims) {
    count *= d;
    const uint8_t be[4] = {uint8_t(d >> 24), uint8_t(d >> 16), uint8_t(d >> 8), uint8_t(d)};
    w.raw(be, 4);
  }
  for (size_t i = 0; i < count * elem; ++i) w.put(static_cast<uint8_t>(i * 37));
  return w.take();
}

void idx() {
  int n = 0;
  const std::vector<std::vector<std::byte>> files = {
      idx_file(0x08, {2, 3, 4}, 1), idx_file(0x0D, {5}, 4), idx_file(0x0B, {3, 2}, 2),
      idx_file(0x0E, {1, 1, 1, 2}, 8), idx_file(0x08, {0, 28}, 1)};
  for (const auto& f : files) {
    ByteWriter w;
    w.put<uint8_t>(0).raw(f.data(), f.size());
    write("idx", n++, w.take());
  }
  // The first two gzip-compressed, under a ".gz" name.
  for (size_t i = 0; i < 2; ++i) {
    const fs::path tmp = fs::temp_directory_path() / "dtrain_make_corpus.gz";
    gzFile gz = gzopen(tmp.c_str(), "wb");
    gzwrite(gz, files[i].data(), static_cast<unsigned>(files[i].size()));
    gzclose(gz);
    std::ifstream in(tmp, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    fs::remove(tmp);
    ByteWriter w;
    w.put<uint8_t>(1).raw(bytes.data(), bytes.size());
    write("idx", n++, w.take());
  }
}

void metrics() {
  int n = 0;
  write("metrics", n++,
        text(std::string("\0", 1) +
             "{\"kind\":\"step\",\"step\":10,\"time_s\":0.5,\"loss\":2.1}\n"
             "{\"kind\":\"epoch\",\"epoch\":0,\"time_s\":3.2,\"train_loss\":1.2,\"test_loss\":1.1,"
             "\"test_accuracy\":0.61,\"samples_per_s\":5000,\"bytes_sent\":1.5e6,"
             "\"phase_s\":{\"data\":0.1,\"forward\":0.9,\"backward\":1.5,\"comm_wait\":0.4}}\n"
             "\n"
             "{\"kind\":\"epoch\",\"epoch\":1,\"time_s\":6.1,\"test_accuracy\":0.7,\"bytes_sent\":"
             "null}\n"
             "{\"kind\":\"final\",\"time_s\":6.2,\"test_accuracy\":0.7,\"samples_per_s\":4900}\n"));
  write("metrics", n++,
        text(std::string("\0", 1) +
             "{\"kind\":\"reducer\",\"k_sent\":12}\n{\"kind\":\"epoch\",\"time_s\":1,"
             "\"test_accuracy\":0.5}\n"));
  write("metrics", n++,
        text("\x01{\"name\":\"topk\",\"model\":\"mlp\",\"reduce\":\"topk:0.01+allgather\","
             "\"schedule\":\"sync\",\"workers\":4,\"seed\":1}\n"));
  write("metrics", n++, text("\x01{\"model\":null,\"workers\":2,\"lr\":0.1}"));
}

void rendezvous() {
  int n = 0;
  write("rendezvous", n++,
        text("\x03"
             "build=dtrain 0.1.0\nhost=node1\njob=\npid=4242\nrank=1\nsize=4\n"
             "token=0123456789abcdef\n"));
  write("rendezvous", n++,
        text("\x03"
             "build=b\ncreated_ms=1700000000000\nhost=node0\nid=deadbeef\njob=j\n"
             "pid=1\nsize=4\ntimeout_ms=60000\n"));
  write("rendezvous", n++,
        text("\x03"
             "culprit=2\nerror=rank 2 runs another build\nid=deadbeef\nsize=4\n"
             "status=error\ntoken.0=a\ntoken.1=b\nwho.0=host x, pid 1\n"));
}

void envelope_corpus() {
  int n = 0;
  for (const auto& [kind, body] :
       {std::pair{uint8_t{1}, std::string("model and optimizer")},
        std::pair{uint8_t{0}, std::string()}, std::pair{uint8_t{1}, std::string(200, 'x')}}) {
    const auto sealed = envelope::seal(text(body), kind ? "checkpoint" : "k");
    ByteWriter w;
    w.put(kind).raw(sealed.data(), sealed.size());
    write("envelope", n++, w.take());
  }
}

void ps_corpus() {
  using namespace ps::wire;
  int n = 0;
  auto seed = [&](uint8_t which, const std::vector<std::byte>& frame) {
    ByteWriter w;
    w.put(which).raw(frame.data(), frame.size());
    write("ps", n++, w.take());
  };
  RequestHead push;
  push.op = Op::kPush;
  push.id = 7;
  push.worker = 2;
  push.clock = 5;
  push.pulled_clock = 3;
  push.keys = {10, 14};
  seed(0, encode_request(push, {}, gradient(4, 1)));
  RequestHead rows = push;
  rows.op = Op::kPushRows;
  rows.keys = {};
  const std::vector<Segment> segments = {{12, 3}, {20, 2}};
  seed(0, encode_request(rows, segments, gradient(5, 2)));
  rows.op = Op::kPullRows;
  seed(0, encode_request(rows, segments, {}));
  RequestHead axpy;
  axpy.op = Op::kAxpy;
  axpy.alpha = -0.5;
  axpy.a = "s0";
  axpy.b = "w";
  seed(0, encode_request(axpy, {}, {}));
  ReplyHead pulled;
  pulled.op = Op::kPull;
  pulled.id = 8;
  pulled.clock = 4;
  seed(0, encode_reply(pulled, gradient(6, 3)));
  ReplyHead error;
  error.op = Op::kPush;
  error.status = Status::kInvalidArgument;
  error.message = "ps shard 0: push of keys [6, 10) outside the shard's range [0, 4)";
  seed(0, encode_reply(error, {}));
  ps::ServerStats st;
  st.updates = 12;
  st.staleness_histogram = {3, 2, 1};
  st.clocks = {{0, 4}, {1, 6}};
  st.states = {{0, "live"}, {1, "dead"}};
  st.pushed = {{0, 4}, {1, 5}};
  ReplyHead stats;
  stats.op = Op::kStats;
  stats.blob = encode_stats(st);
  seed(0, encode_reply(stats, {}));
  seed(1, encode_stats(st));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  frame();
  sparse_corpus();
  qcs();
  exdyna();
  omnireduce_corpus();
  idx();
  metrics();
  rendezvous();
  envelope_corpus();
  ps_corpus();
  return 0;
}
