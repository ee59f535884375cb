# libFuzzer targets for every decoder of bytes that come from a peer or a file (DTRAIN_FUZZ=ON,
# clang only; configure with -DCMAKE_CXX_COMPILER=clang++ -DDTRAIN_WITH_TORCH=OFF
# -DDTRAIN_BUILD_BENCH=OFF, BUILD_TESTING may be OFF).
#
# fuzz_<name> is built from tests/fuzz/fuzz_<name>.cc with -fsanitize=fuzzer,address,undefined
# (UBSan findings abort, so the fuzzer reports them); dtrain_core and dtrain_cli get the same
# sanitizers and the fuzzer's coverage instrumentation, so the decoders' branches guide it. Each
# target has a seed corpus in tests/fuzz/corpus/<name>/ and a ctest, fuzz_<name>_corpus (label
# "fuzz"), that replays it (`fuzz_<name> -runs=0 DIR`). A long run, from the build directory:
#   ./fuzz_<name> -max_total_time=600 -print_final_stats=1 NEW_DIR ../tests/fuzz/corpus/<name>
# Included last from the top-level CMakeLists.txt, after every fragment added its sources.
option(DTRAIN_FUZZ "Build the libFuzzer targets (clang) and their corpus replay tests" OFF)
if(NOT DTRAIN_FUZZ)
  return()
endif()
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "DTRAIN_FUZZ=ON needs clang (-DCMAKE_CXX_COMPILER=clang++), not "
                      "${CMAKE_CXX_COMPILER_ID}")
endif()
if(DTRAIN_SANITIZE)
  message(FATAL_ERROR "DTRAIN_FUZZ=ON brings its own sanitizers (address,undefined): leave "
                      "DTRAIN_SANITIZE empty")
endif()

set(DTRAIN_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                           -fno-omit-frame-pointer)
foreach(lib dtrain_core dtrain_cli)
  target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link ${DTRAIN_FUZZ_SANITIZERS})
endforeach()
# Whatever links the instrumented library needs the sanitizer runtimes.
target_link_options(dtrain_core PUBLIC -fsanitize=address,undefined)

# One target per decoder; see the comment at the top of each source for what it feeds.
set(DTRAIN_FUZZ_TARGETS
  frame          # comm/: frame headers and control messages (group_wire.h)
  sparse         # compress/: index+value payloads of topk and threshold
  qcs            # compress/: QCS payloads
  exdyna         # reduce/: ExDyna's gathered counts and indices, and its checkpoint state
  omnireduce     # sparse/: OmniReduce requests, replies and the call descriptor's size
  idx            # data/: IDX files, plain and gzip
  metrics        # apps/dtrain: metrics.jsonl and config.json of `dtrain report`
  rendezvous     # comm/: rendezvous store records
  envelope       # common/: the file envelope of checkpoints
  ps             # ps/: parameter-server requests, replies and stats (ps/wire.h)
)
enable_testing()
add_custom_target(fuzz_all)
foreach(name IN LISTS DTRAIN_FUZZ_TARGETS)
  add_executable(fuzz_${name} tests/fuzz/fuzz_${name}.cc)
  target_compile_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${DTRAIN_FUZZ_SANITIZERS})
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${DTRAIN_FUZZ_SANITIZERS})
  # Internal headers (comm/group_wire.h, sparse/omnireduce_internal.h, compress/internal.h).
  target_include_directories(fuzz_${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(fuzz_${name} PRIVATE dtrain_core)
  add_dependencies(fuzz_all fuzz_${name})
  add_test(NAME fuzz_${name}_corpus
           COMMAND fuzz_${name} -runs=0 ${CMAKE_CURRENT_SOURCE_DIR}/tests/fuzz/corpus/${name})
  set_tests_properties(fuzz_${name}_corpus PROPERTIES LABELS fuzz TIMEOUT 600)
endforeach()
target_link_libraries(fuzz_metrics PRIVATE dtrain_cli)

# Writes the seed corpora (tests/fuzz/make_corpus.cc): fuzz_make_corpus tests/fuzz/corpus
add_executable(fuzz_make_corpus tests/fuzz/make_corpus.cc)
target_compile_options(fuzz_make_corpus PRIVATE ${DTRAIN_FUZZ_SANITIZERS})
target_include_directories(fuzz_make_corpus PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(fuzz_make_corpus PRIVATE dtrain_core ZLIB::ZLIB)
add_dependencies(fuzz_all fuzz_make_corpus)
