#!/usr/bin/env bash
# The install test: `cmake --install` of the build tree BUILD into BUILD/install-test/prefix,
# then tests/installed_project configured and built against that prefix alone (find_package(dtrain),
# dtrain::dtrain; dtrain's source tree is not on its include path), and its program run as 2 ranks.
#   tests/installed_project/run.sh BUILD SOURCE [CMAKE]
set -euo pipefail
build=$(realpath "$1")
src=$(realpath "$2")
cmake=${3:-cmake}
work=$build/install-test
rm -rf "$work"
mkdir -p "$work"
echo "== cmake --install $build --prefix $work/prefix"
"$cmake" --install "$build" --prefix "$work/prefix" >"$work/install.log"
test -f "$work/prefix/lib/cmake/dtrain/dtrainConfig.cmake"
test -f "$work/prefix/include/dtrain/dtrain.h"
echo "== a separate project against it"
"$cmake" -S "$src/tests/installed_project" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DDTRAIN_EXAMPLES="$src/examples"
"$cmake" --build "$work/build" -j 2
# dtrain's headers must come from the prefix, never from the source tree (whatever the generator
# writes its flags and dependency lists into; binaries are skipped: the installed libraries carry
# their own source paths in their debug information).
if grep -rqIF -- "$src/include" "$work/build"; then
  echo "installed_project: compiled against dtrain's source tree, not the installed headers" >&2
  exit 1
fi
echo "== its program, 2 ranks"
"$src/examples/run_ranks.sh" 2 "$work/build/residual_cnn" --reduce exdyna:0.01 --max-steps 30 \
  --batch-size 32
