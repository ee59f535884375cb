#!/usr/bin/env bash
# Installs, idempotently, every Debian package dtrain needs to build, test and run.
# Only what is missing is installed; `apt-get update` runs only when something is missing.
#   scripts/setup.sh            everything (core + LibTorch training layer)
#   scripts/setup.sh --core     only what the communication layers and their tests need
set -euo pipefail

core_pkgs=(
  build-essential cmake pkg-config git
  libgloo-dev libhiredis-dev redis-server
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libzmq3-dev cppzmq-dev  # the parameter server's transport
  gnuplot-nox iproute2
  clang libclang-rt-14-dev  # libFuzzer and the sanitizer runtimes of the fuzz targets
)
torch_pkgs=(libtorch-dev libopenblas0-pthread dataset-fashion-mnist
  python3-torch python3-dev pybind11-dev)  # the Python package: DDP comm hooks

pkgs=("${core_pkgs[@]}")
if [[ "${1:-}" != "--core" ]]; then
  pkgs+=("${torch_pkgs[@]}")
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#pkgs[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
