# plan/: the MG-WFBP cost model (measured allreduce times) and merge rule. No LibTorch.
target_sources(dtrain_core PRIVATE
  src/plan/cost_model.cc
  src/plan/mgwfbp.cc
)
target_link_libraries(dtrain_core PUBLIC nlohmann_json::nlohmann_json)
if(BUILD_TESTING)
  dtrain_test(test_plan tests/test_plan.cc)
endif()
