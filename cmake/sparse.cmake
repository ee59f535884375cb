# sparse/ layer: OmniReduce (block-sparse allreduce with colocated aggregators) and the AGsparse
# baseline. No LibTorch.
target_sources(dtrain_core PRIVATE
  src/sparse/omnireduce.cc
  src/sparse/omnireduce_worker.cc
  src/sparse/omnireduce_aggregator.cc
  src/sparse/omnireduce_wire.cc
  src/sparse/allgather_sparse.cc
)
if(BUILD_TESTING)
  dtrain_test(test_sparse tests/test_sparse.cc)
endif()
