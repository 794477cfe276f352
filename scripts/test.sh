#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the C++ suites (ctest) and the Python
# suites (pytest: HF differential tests, CLI contracts, gRPC clients). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The embedded default model (SmolLM2-135M-Instruct GGUF) for the GGUF and end-to-end tests.
scripts/fetch-default-model.sh >/dev/null
scripts/build.sh "$@"
export TANDEM_BIN="$PWD/build/tandem"
export TANDEM_TESTDATA="${TANDEM_TESTDATA:-$PWD/../shared/testdata}"
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider
