# compress/ layer (compressors, error feedback) and the compressed reducer in reduce/. No LibTorch.
target_sources(dtrain_core PRIVATE
  src/compress/compressor.cc
  src/compress/sparse_format.cc
  src/compress/dense.cc
  src/compress/topk.cc
  src/compress/randomk.cc
  src/compress/threshold.cc
  src/compress/qcs.cc
  src/compress/error_feedback.cc
  src/reduce/compressed.cc
)
if(BUILD_TESTING)
  dtrain_test(test_compress tests/test_compress.cc)
  dtrain_test(test_compressed_reducer tests/test_compressed_reducer.cc)
  dtrain_test(test_compressed_momentum tests/test_compressed_momentum.cc)
endif()
