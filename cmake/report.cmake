# `dtrain report`: run comparison table and gnuplot plots (gnuplot is needed at run time only).
target_sources(dtrain_cli PRIVATE
  apps/dtrain/report.cc
  apps/dtrain/report_plot.cc
)
if(BUILD_TESTING)
  dtrain_test(test_report tests/test_report.cc)
  target_link_libraries(test_report PRIVATE dtrain_cli)
endif()
