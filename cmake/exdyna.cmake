# ExDyna: sparsification with exclusive dynamic partitions (reduce/), and `dtrain bench compress`.
target_sources(dtrain_core PRIVATE
  src/reduce/exdyna.cc
  src/reduce/exdyna_partition.cc
  src/reduce/exdyna_threshold.cc
  src/reduce/exdyna_wire.cc
)
if(BUILD_TESTING)
  dtrain_test(test_exdyna tests/test_exdyna.cc)
endif()
target_sources(dtrain_cli PRIVATE apps/dtrain/bench_compress.cc)
