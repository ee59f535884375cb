# `cmake --install build [--prefix DIR]`: headers, the static libraries (position-independent),
# the dtrain binary and a CMake package, so a separate project does
#   find_package(dtrain REQUIRED)
#   target_link_libraries(app PRIVATE dtrain::dtrain)
# dtrain::dtrain is everything there is (the LibTorch layer when it was built); dtrain::core is the
# layers below LibTorch. dtrainConfig.cmake finds dtrain's own dependencies (Gloo, spdlog, fmt,
# hiredis, ZeroMQ, zlib, nlohmann_json, Torch).
include(CMakePackageConfigHelpers)

set_target_properties(dtrain_core PROPERTIES EXPORT_NAME core)
set(dtrain_export_targets dtrain_core)
add_library(dtrain_all INTERFACE)
set_target_properties(dtrain_all PROPERTIES EXPORT_NAME dtrain)
if(TARGET dtrain_torch)
  set_target_properties(dtrain_torch PROPERTIES EXPORT_NAME torch)
  list(APPEND dtrain_export_targets dtrain_torch)
  target_link_libraries(dtrain_all INTERFACE dtrain_torch)
  set(DTRAIN_HAS_TORCH ON)
else()
  target_link_libraries(dtrain_all INTERFACE dtrain_core)
  set(DTRAIN_HAS_TORCH OFF)
endif()
add_library(dtrain::dtrain ALIAS dtrain_all)

install(TARGETS ${dtrain_export_targets} dtrain_all EXPORT dtrainTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS dtrain RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/dtrain DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
set(DTRAIN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/dtrain)
install(EXPORT dtrainTargets NAMESPACE dtrain:: DESTINATION ${DTRAIN_CMAKE_DIR})
configure_package_config_file(cmake/dtrainConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/dtrainConfig.cmake
                              INSTALL_DESTINATION ${DTRAIN_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/dtrainConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/dtrainConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/dtrainConfigVersion.cmake
        DESTINATION ${DTRAIN_CMAKE_DIR})

if(BUILD_TESTING AND DTRAIN_HAS_TORCH)
  # Installs into a directory of the build tree, builds tests/installed_project (the residual CNN
  # example as a separate project: find_package(dtrain), dtrain::dtrain) against it, and runs it
  # as 2 ranks.
  add_test(NAME Install.SeparateProjectBuildsAndTrains
           COMMAND ${PROJECT_SOURCE_DIR}/tests/installed_project/run.sh ${CMAKE_BINARY_DIR}
                   ${PROJECT_SOURCE_DIR} ${CMAKE_COMMAND})
  set_tests_properties(Install.SeparateProjectBuildsAndTrains PROPERTIES LABELS torch TIMEOUT 900)
endif()
