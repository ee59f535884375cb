#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test.
#   scripts/test.sh            set-up, release build + all tests, then the sanitizer build
#                              (address,undefined) + the communication-layer tests, the fuzz
#                              targets (clang, libFuzzer) replaying their corpora, and the
#                              ThreadSanitizer build + the core tests
#   scripts/test.sh --quick    set-up, release build + all tests only
# Build trees: build/, build-asan/, build-fuzz/ and build-tsan/ (reused when present).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: scripts/test.sh [--quick]" >&2; exit 2 ;;
  esac
done

jobs=$(nproc)
scripts/setup.sh

echo "== release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
echo "== tests"
# A test that fails is re-run (up to 3 times) and stays visible in the log: a guard for rare
# timing failures of multi-rank tests under full load (8 ranks as threads on 2 cores); a real
# failure fails all three runs.
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600 --repeat until-pass:3

if [[ $quick -eq 0 ]]; then
  echo "== sanitizer build (address,undefined)"
  # LibTorch itself is not built with sanitizers: the training layer is tested in the release
  # build; here everything below it (comm, collectives, data, engine, reducers).
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDTRAIN_SANITIZE=address,undefined \
    -DDTRAIN_BUILD_BENCH=OFF -DDTRAIN_WITH_TORCH=OFF
  cmake --build build-asan -j "$jobs"
  echo "== tests under address,undefined sanitizers"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -L core \
    --repeat until-pass:3

  echo "== fuzz targets (clang: libFuzzer + address,undefined)"
  # Each decoder of peer or file bytes has a libFuzzer target (tests/fuzz/); here each replays
  # its corpus (tests/fuzz/corpus/<name>), so an input that once crashed or tripped a sanitizer
  # stays fixed. Fuzzing itself is by hand (cmake/fuzz.cmake says how).
  cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDTRAIN_FUZZ=ON -DBUILD_TESTING=OFF -DDTRAIN_BUILD_BENCH=OFF -DDTRAIN_WITH_TORCH=OFF
  cmake --build build-fuzz -j "$jobs" --target fuzz_all
  ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-fuzz --output-on-failure -j "$jobs" -L fuzz

  echo "== thread sanitizer build"
  # The core tests under TSan. Debian's Gloo and spdlog are not instrumented: tests/tsan.supp
  # names their frames (third-party only, never dtrain's). TSan slows the multi-rank tests
  # 5-15x: tests/CMakeLists.txt raises their timeout to 1800 s in this build; none is skipped.
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDTRAIN_SANITIZE=thread \
    -DDTRAIN_BUILD_BENCH=OFF -DDTRAIN_WITH_TORCH=OFF
  cmake --build build-tsan -j "$jobs"
  echo "== core tests under thread sanitizer"
  TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp:halt_on_error=1:second_deadlock_stack=1" \
    ctest --test-dir build-tsan --output-on-failure -j "$jobs" -L core \
    --repeat until-pass:3
fi
echo "== all tests passed"
