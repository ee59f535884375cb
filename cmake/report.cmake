# `dtrain report`: run comparison table and gnuplot plots (gnuplot is needed at run time only).
target_sources(dtrain_cli PRIVATE
  apps/dtrain/report.cc
  apps/dtrain/report_plot.cc
)
if(BUILD_TESTING)
  dtrain_test(test_report tests/test_report.cc)
  target_link_libraries(test_report PRIVATE dtrain_cli)
  # Regressions found by fuzzing the decoders (tests/fuzz/); reaches internal headers and the
  # report parser. Registered here, at the top level, where dtrain_cli's LibTorch targets are
  # visible (tests/ is configured before cmake/torch.cmake finds LibTorch).
  dtrain_test(test_decoders tests/test_decoders.cc)
  target_include_directories(test_decoders PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(test_decoders PRIVATE dtrain_cli)
endif()
