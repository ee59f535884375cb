// Local kernels under Google Benchmark: the reduction loops the ring runs between receives.
#include <benchmark/benchmark.h>

#include <vector>

#include "dtrain/collective/types.h"

namespace {

using dtrain::collective::DataType;
using dtrain::collective::ReduceOp;

void BM_ReduceSumFloat(benchmark::State& state) {
  const size_t n = state.range(0);
  std::vector<float> dst(n, 1.0f), src(n, 2.0f);
  auto fn = dtrain::collective::reduce_fn(DataType::kFloat32, ReduceOp::kSum);
  for (auto _ : state) {
    fn(dst.data(), src.data(), n);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * 2);
}
BENCHMARK(BM_ReduceSumFloat)->Range(1 << 10, 1 << 22);

void BM_ReduceMaxDouble(benchmark::State& state) {
  const size_t n = state.range(0);
  std::vector<double> dst(n, 1.0), src(n, 2.0);
  auto fn = dtrain::collective::reduce_fn(DataType::kFloat64, ReduceOp::kMax);
  for (auto _ : state) {
    fn(dst.data(), src.data(), n);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(double) * 2);
}
BENCHMARK(BM_ReduceMaxDouble)->Range(1 << 10, 1 << 22);

}  // namespace
