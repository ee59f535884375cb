# PowerSGD: low-rank gradient compression as a reducer (reduce/). No LibTorch.
target_sources(dtrain_core PRIVATE src/reduce/powersgd.cc)
if(BUILD_TESTING)
  dtrain_test(test_powersgd tests/test_powersgd.cc)
endif()
