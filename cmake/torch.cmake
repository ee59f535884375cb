# The LibTorch training layer: torch/, reduce/, engine/, train/ and `dtrain train`.
# DTRAIN_WITH_TORCH: ON (required), OFF, or AUTO (built when LibTorch is found).

# reduce/ and engine/ do not need LibTorch.
target_sources(dtrain_core PRIVATE
  src/reduce/reducer.cc
  src/reduce/params.cc
  src/reduce/omnireduce_reducer.cc
  src/reduce/bucket_stream.cc
  src/engine/engine.cc
  src/engine/timeline.cc
  src/engine/mgwfbp.cc
)
target_link_libraries(dtrain_core PUBLIC nlohmann_json::nlohmann_json)

if(NOT DTRAIN_WITH_TORCH STREQUAL "OFF")
  if(DTRAIN_WITH_TORCH STREQUAL "ON")
    find_package(Torch REQUIRED)
  else()
    find_package(Torch QUIET)
  endif()
endif()

if(BUILD_TESTING)
  dtrain_test(test_engine tests/test_engine.cc)
  dtrain_test(test_bucket_stream tests/test_bucket_stream.cc)
endif()

if(Torch_FOUND OR TORCH_FOUND)
  message(STATUS "dtrain: building the LibTorch training layer (${TORCH_LIBRARIES})")
  add_library(dtrain_torch STATIC
    src/torch/models.cc
    src/torch/partitioned_mlp.cc
    src/torch/distributed_model.cc
    src/torch/bridge.cc
    src/torch/grad_views.cc
    src/train/checkpoint.cc
    src/train/metrics.cc
    src/train/data_source.cc
    src/train/trainer.cc
    src/train/flags.cc
    src/train/run.cc
    src/train/step.cc
    src/train/evaluation.cc
    src/train/loop.cc
    src/train/sync_sgd.cc
    src/train/local_sgd.cc
    src/train/model_parallel.cc
    src/train/downpour.cc
    src/train/downpour_server.cc
    src/train/sandblaster.cc
    src/train/sandblaster_lbfgs.cc
    src/train/sandblaster_portions.cc
    src/train/local_sgd_schedule.cc
  )
  target_link_libraries(dtrain_torch PUBLIC dtrain_core ${TORCH_LIBRARIES} ${CMAKE_DL_LIBS})
  target_compile_options(dtrain_torch PUBLIC -Wno-unused-parameter -Wno-sign-compare)
  # torch/torch.h dominates compile time; parse it once for the whole library.
  target_precompile_headers(dtrain_torch PRIVATE <torch/torch.h>)
  target_sources(dtrain_cli PRIVATE apps/dtrain/train_cmd.cc apps/dtrain/resume_settings.cc
                                    apps/dtrain/bench_model_parallel.cc)
  target_link_libraries(dtrain_cli PUBLIC dtrain_torch)
  target_compile_definitions(dtrain_cli PUBLIC DTRAIN_WITH_TORCH=1)
  if(BUILD_TESTING)
    dtrain_test(test_train LABEL torch tests/test_train.cc)
    target_link_libraries(test_train PRIVATE dtrain_cli)
    target_compile_definitions(test_train PRIVATE DTRAIN_BINARY="$<TARGET_FILE:dtrain>")
    add_dependencies(test_train dtrain)
    dtrain_test(test_local_sgd LABEL torch tests/test_local_sgd.cc)
    target_link_libraries(test_local_sgd PRIVATE dtrain_torch)
    dtrain_test(test_time_to_accuracy LABEL torch tests/test_time_to_accuracy.cc)
    target_link_libraries(test_time_to_accuracy PRIVATE dtrain_torch)
    target_include_directories(test_time_to_accuracy PRIVATE ${PROJECT_SOURCE_DIR}/src)
    # The library API (dtrain/dtrain.h) around a user's own module.
    dtrain_test(test_api LABEL torch tests/test_api.cc)
    target_link_libraries(test_api PRIVATE dtrain_torch)
    # Model parallelism: partitions of one MLP as threads, against the unpartitioned model.
    dtrain_test(test_model_parallel LABEL torch tests/test_model_parallel.cc)
    target_link_libraries(test_model_parallel PRIVATE dtrain_torch)
    # Downpour: replicas and parameter servers as processes of the dtrain binary.
    dtrain_test(test_downpour LABEL torch tests/test_downpour.cc)
    target_compile_definitions(test_downpour PRIVATE DTRAIN_BINARY="$<TARGET_FILE:dtrain>")
    add_dependencies(test_downpour dtrain)
    # Sandblaster: the coordinator's pieces, and whole jobs of the dtrain binary.
    dtrain_test(test_sandblaster LABEL torch tests/test_sandblaster.cc)
    target_link_libraries(test_sandblaster PRIVATE dtrain_torch)
    target_compile_definitions(test_sandblaster PRIVATE DTRAIN_BINARY="$<TARGET_FILE:dtrain>")
    add_dependencies(test_sandblaster dtrain)
  endif()
  # Programs a user would copy (examples/): built here, run briefly by the tests as 2 ranks.
  foreach(example residual_cnn minimal_mlp)
    add_executable(${example} examples/${example}.cc)
    target_link_libraries(${example} PRIVATE dtrain_torch)
  endforeach()
  if(BUILD_TESTING)
    add_test(NAME Examples.ResidualCnnWithExdyna
             COMMAND ${PROJECT_SOURCE_DIR}/examples/run_ranks.sh 2 $<TARGET_FILE:residual_cnn>
                     --reduce exdyna:0.01 --max-steps 100 --batch-size 32 --min-accuracy 0.2)
    add_test(NAME Examples.ResidualCnnDense
             COMMAND ${PROJECT_SOURCE_DIR}/examples/run_ranks.sh 2 $<TARGET_FILE:residual_cnn>
                     --reduce dense --max-steps 100 --batch-size 32 --min-accuracy 0.3)
    add_test(NAME Examples.MinimalMlp
             COMMAND ${PROJECT_SOURCE_DIR}/examples/run_ranks.sh 2 $<TARGET_FILE:minimal_mlp> 100)
    set_tests_properties(Examples.ResidualCnnWithExdyna Examples.ResidualCnnDense
                         Examples.MinimalMlp PROPERTIES LABELS torch TIMEOUT 600)
  endif()
else()
  message(STATUS "dtrain: LibTorch not found; `dtrain train` is not built")
endif()
