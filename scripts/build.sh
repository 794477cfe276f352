#!/usr/bin/env bash
# Configures and builds Tandem into build/ (Release, warnings as errors). Extra arguments go to
# CMake's configure step, e.g. scripts/build.sh -DTANDEM_CUDA=OFF. Set TANDEM_BUILD_TARGET to build
# one target only.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_WERROR=ON "$@"
cmake --build build -j"$(nproc)" ${TANDEM_BUILD_TARGET:+--target "$TANDEM_BUILD_TARGET"}
