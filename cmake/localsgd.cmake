# `dtrain bench localsgd`: Stich's convex Local SGD experiment (simulated workers, logistic
# regression, f* by Newton's method). Part of the LibTorch training layer: built when it is.
if(TARGET dtrain_torch)
  target_sources(dtrain_torch PRIVATE src/train/local_sgd_convex.cc)
  target_sources(dtrain_cli PRIVATE apps/dtrain/bench_localsgd.cc)
  if(BUILD_TESTING)
    dtrain_test(test_localsgd_convex LABEL torch tests/test_localsgd_convex.cc)
    target_link_libraries(test_localsgd_convex PRIVATE dtrain_torch)
  endif()
endif()
